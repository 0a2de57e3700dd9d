"""The ``polytask report`` and ``polytask init`` commands (Typer functions, registered in
``cli.py``): thin wrappers over ``report_html`` and ``init``."""

from __future__ import annotations

from pathlib import Path

import typer


def report_command(
    directory: Path = typer.Argument(
        ...,
        metavar="DIR",
        help="A run, compare, plan or relate directory (the kind is read from its files).",
    ),
    out: Path = typer.Option(
        None, "--out", "-o", help="HTML file to write (default: DIR/report.html)."
    ),
) -> None:
    """One self-contained HTML page of a run, comparison, plan or relatedness directory:
    plots inline, no scripts, nothing fetched over a network."""
    from .report_html import detect_kind, write_report

    kind = detect_kind(directory)
    path = write_report(directory, out)
    size = path.stat().st_size / 1024
    typer.echo(f"{kind} report written to {path} ({size:.0f} KiB, self-contained)")


def init_command(
    data: Path = typer.Argument(..., metavar="DATA", help="CSV or Parquet table."),
    out: Path = typer.Option(
        Path("config.yaml"), "--out", "-o", help="YAML file to write (never over a file)."
    ),
    target: list[str] = typer.Option(
        None,
        "--target",
        "-t",
        help="A task's target column (repeat; default: the last column).",
    ),
) -> None:
    """Write a commented starter config from a table's columns: task kinds guessed from the
    targets' values, the other columns as inputs, likely leaks in data.drop."""
    from .init import write_starter_config

    path = write_starter_config(data, out=out, targets=list(target) if target else None)
    typer.echo(f"starter config written to {path}; check it, then: polytask fit {path} --out RUN")


__all__ = ["init_command", "report_command"]
