"""The ``experiment`` command: list the experiments, or run one and print its contrasts and
verdict. A Typer command function that also works called as a plain Python function."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .base import EXPERIMENTS, run_experiment

console = Console()


def _plain(value: Any) -> Any:
    """A parameter's value, or its declared default when called as a plain function."""
    if isinstance(value, typer.models.ParameterInfo):
        return value.default
    return value


def _number(value: float | None, digits: int = 4) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _signed(value: float | None, digits: int = 4) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:+.{digits}f}"


def contrasts_table(result: dict[str, Any]) -> Table:
    """The contrasts of a result: each arm's mean ± std over seeds, the paired difference with
    its 95% CI, the paired t-test and the outcome."""
    table = Table(
        title=f"{result['experiment']}: mean ± std over {len(result['seeds'])} seed(s)",
        caption="difference: treatment − baseline per seed (mean, 95% t-interval); p: paired "
        "t-test over seeds; ↓ lower is better, ↑ higher is better",
    )
    for col in ("contrast", "metric", "baseline", "treatment", "difference [95% CI]", "p"):
        table.add_column(col, justify="left" if col in ("contrast", "metric") else "right")
    table.add_column("outcome", no_wrap=True)
    for c in result["contrasts"]:
        lo, hi = (v if v is not None else math.nan for v in c["difference_ci95"])
        ci = f" [{_signed(lo)}, {_signed(hi)}]" if not math.isnan(lo) else ""
        table.add_row(
            escape(c["label"]),
            f"{c['metric']} {'↓' if c['lower_is_better'] else '↑'}",
            f"{escape(c['baseline'])} {_number(c['baseline_mean'])} ± {_number(c['baseline_std'])}",
            f"{escape(c['treatment'])} {_number(c['treatment_mean'])} ± "
            f"{_number(c['treatment_std'])}",
            f"{_signed(c['difference_mean'])}{ci}",
            _number(c["p_value"], 3),
            c["outcome"],
        )
    return table


def experiments_table() -> Table:
    table = Table(title="experiments (polytask experiment NAME)")
    for col in ("name", "what", "claim tested"):
        table.add_column(col)
    for _, exp in sorted(EXPERIMENTS.items()):
        table.add_row(exp.name, escape(exp.description), escape(exp.claim))
    return table


def experiment(
    name: str | None = typer.Argument(None, help="Experiment to run (see --list)."),
    seeds: int = typer.Option(10, min=1, help="Number of seeds (0, 1, …, N-1)."),
    out: Path = typer.Option(
        Path("experiments"), "--out", "-o", help="Directory for result.json and the plots."
    ),
    quick: bool = typer.Option(False, "--quick", help="A small version that runs in seconds."),
    list_: bool = typer.Option(False, "--list", help="List the experiments and exit."),
) -> None:
    """Run one of the reproducible MTL experiments and print its table and verdict."""
    name, seeds, out, quick, list_ = (_plain(v) for v in (name, seeds, out, quick, list_))
    if list_ or name is None:
        console.print(experiments_table())
        return
    result = run_experiment(name, seeds=seeds, out=out, quick=quick)
    console.print(contrasts_table(result))
    for note in result.get("notes", []):
        console.print(escape(note))
    console.print(f"[bold]verdict:[/bold] {escape(result['verdict'])}")
    written = ", ".join(str(Path(out) / p) for p in ["result.json", *result["plots"]])
    console.print(f"written: {escape(written)} ({result['seconds']:.0f} s)")
