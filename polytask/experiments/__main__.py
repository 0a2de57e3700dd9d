"""``python -m polytask.experiments NAME [--seeds N] [--out DIR] [--quick] [--threads K]``: the
experiment command on its own, with torch limited to ``--threads`` CPU threads."""

import torch
import typer

from .command import experiment


def main(threads: int = typer.Option(1, min=1, help="torch CPU threads.")) -> None:
    torch.set_num_threads(threads)


app = typer.Typer(add_completion=False, callback=main)
app.command()(experiment)

if __name__ == "__main__":
    app(prog_name="python -m polytask.experiments")
