"""The ``polytask`` command line: a thin layer over the library."""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import PolytaskError, PolytaskWarning, RunError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Multi-task learning on PyTorch: fit, predict, evaluate and compare against STL.",
)
console = Console()
errors = Console(stderr=True)

QUIET = typer.Option(False, "--quiet", "-q", help="Print only the results, no progress.")


def _epoch_progress(total: int, quiet: bool, label: str):
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
        transient=True,
    )
    bar = progress.add_task(label, total=total, info="")

    def callback(record: dict[str, float]) -> None:
        objective = record.get("val_objective", math.nan)
        info = f"val loss {objective:.4f}" if not math.isnan(objective) else ""
        progress.update(bar, completed=record["epoch"], info=info)

    return progress, callback


def _fmt(value: float, digits: int = 4) -> str:
    return (
        "nan"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}f}"
    )


def _scores_table(title: str, scores: dict[str, dict[str, float]], tasks: list[Any]) -> Table:
    table = Table(title=title)
    for col in ("task", "role", "labelled rows", "metrics"):
        table.add_column(col, justify="right" if col == "labelled rows" else "left")
    roles = {t.name: t.role for t in tasks}
    for name, values in scores.items():
        metrics = "  ".join(f"{m} {_fmt(v)}" for m, v in values.items() if m != "n")
        table.add_row(name, roles.get(name, ""), str(values.get("n", "")), metrics)
    return table


@app.command()
def fit(
    config: Path = typer.Argument(..., metavar="CONFIG", help="YAML config file."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory to write."),
    resume: bool = typer.Option(False, help="Continue from the checkpoint in --out."),
    overwrite: bool = typer.Option(False, help="Replace the run already in --out."),
    quiet: bool = QUIET,
) -> None:
    """Train the multi-task model of CONFIG and write a run directory."""
    from .config import load_config
    from .io import check_run_dir
    from .train import fit as fit_run

    cfg = load_config(config)
    check_run_dir(out, resume=resume, overwrite=overwrite)  # before any training
    lead = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports
    progress, callback = _epoch_progress(cfg.train.epochs, quiet or not lead, "training")
    with progress:
        run = fit_run(cfg, out=out, callback=callback, resume=resume, overwrite=overwrite)
    if not lead:
        return
    features = run.preprocessor.features
    if not quiet:
        console.print(
            f"inputs ({len(features)} columns, saved in preprocess.json): "
            + escape(", ".join(features[:30]) + (", ..." if len(features) > 30 else ""))
        )
    if not quiet:
        console.print(
            f"best epoch {run.metrics['best_epoch']} "
            f"({'early stop' if run.metrics['stopped_early'] else 'budget used'}), "
            f"{run.metrics['train_seconds']:.1f} s"
        )
    split = "test" if "test" in run.metrics else "validation"
    if split in run.metrics:
        console.print(_scores_table(f"{split} scores", run.metrics[split], run.tasks))
    console.print(f"run written to {out}")


def _check_output_file(path: Path) -> None:
    """A file can be written at ``path`` (its folder is created); checked before any work."""
    if path.is_dir():
        raise RunError(f"--out {str(path)!r} is a directory; give a file name such as pred.csv")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        folder = str(path.parent)
        raise RunError(f"--out: cannot create the folder {folder!r}: {exc.strerror}") from None
    if not os.access(path.parent, os.W_OK):
        raise RunError(f"--out: the folder {str(path.parent)!r} is not writable")


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="Run directory written by `fit`."),
    data: Path = typer.Argument(
        ..., metavar="DATA", help="CSV or Parquet file with the feature columns."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="CSV file to write."),
) -> None:
    """Predict every main task for the rows of DATA (row order kept). For a run trained with
    signals.horizons, DATA is the raw series: one prediction per time with a full history."""
    from .data import read_table
    from .io import load

    _check_output_file(out)
    run = load(run_dir)
    frame = read_table(data)
    horizons = run.config.signals.horizons if run.config.signals is not None else None
    if horizons is not None:
        from .signals import forecast_inputs

        frame = forecast_inputs(run, frame)
    predictions = run.predict(frame)
    # a forecast row is named by its time (the ``time`` column, else the row of DATA)
    label = (horizons.time or "row") if horizons is not None else None
    predictions.to_csv(out, index=horizons is not None, index_label=label)
    console.print(f"{len(predictions)} rows × {predictions.shape[1]} columns written to {out}")


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="Run directory written by `fit`."),
    data: Path = typer.Argument(
        ..., metavar="DATA", help="CSV or Parquet file with features and labels (any task)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Score a saved run on labelled data (each task over its labelled rows)."""
    from .data import read_table
    from .io import load

    run = load(run_dir)
    scores = run.evaluate(read_table(data))
    if as_json:
        print(json.dumps(scores, indent=2, default=lambda v: None))
    else:
        console.print(_scores_table(f"scores on {data.name}", scores, run.tasks))


def _comparison_table(result: dict[str, Any]) -> Table:
    n = len(result["seeds"])
    table = Table(
        title=f"STL vs MTL on the test split, mean ± std over {n} seed(s)",
        caption="n: labelled test rows; change %: relative change vs STL, negative = MTL better "
        "(the sign of Δm); p: paired t-test over seeds",
    )
    for col in ("task", "metric", "n", "STL", "MTL", "change %", "p", "verdict"):
        left = col in ("task", "metric", "verdict")
        table.add_column(col, justify="left" if left else "right", no_wrap=col == "verdict")
    for name, t in result["tasks"].items():
        arrow = "↑" if t["higher_is_better"] else "↓"
        change = t["relative_change_percent"]
        table.add_row(
            name,
            f"{t['metric']} {arrow}",
            str(t.get("n_test", "")),
            f"{_fmt(t['stl']['mean'])} ± {_fmt(t['stl']['std'])}",
            f"{_fmt(t['mtl']['mean'])} ± {_fmt(t['mtl']['std'])}",
            f"{change:+.2f}" if not math.isnan(change) else "—",
            "—" if math.isnan(t["p_value"]) else _fmt(t["p_value"], 3),
            t["verdict"],
        )
    return table


def _print_comparison(result: dict[str, Any]) -> None:
    console.print(_comparison_table(result))
    lo, hi = result["delta_m_ci95"]
    ci = f", 95% CI [{lo:+.2f}, {hi:+.2f}]" if not math.isnan(lo) else ""
    console.print(
        f"Δm = {result['delta_m_percent']:+.2f}% ± {_fmt(result['delta_m_std'], 2)}{ci}: "
        f"{result.get('delta_m_verdict', '')} "
        "(mean relative change of the primary metrics vs STL; negative = MTL better)"
    )
    console.print(
        f"wall time: STL {result['seconds']['stl']:.1f} s, MTL {result['seconds']['mtl']:.1f} s "
        "(all seeds)"
    )
    console.print(f"[bold]{escape(result['summary'])}[/bold]")


def _run_comparison(
    cfg: Any,
    seeds: int,
    out: Path | None,
    quiet: bool,
    stl_vectorize: str = "exact",
    workers: int | None = None,
) -> dict[str, Any]:
    from .compare import compare as compare_runs
    from .io import write_json
    from .report import plot_comparison

    with console.status("comparing", spinner="dots") if not quiet else _Null() as status:

        def note(message: str) -> None:
            if status is not None:
                status.update(message)

        result = compare_runs(
            cfg,
            seeds=seeds,
            on_progress=note,
            stl_vectorize=stl_vectorize,  # type: ignore[arg-type]
            workers=workers,
        ).to_json()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "comparison.json", result)
        (out / "config.yaml").write_text(cfg.to_yaml())
        plot_comparison(result, out / "comparison.png")
    _print_comparison(result)
    if out is not None:
        console.print(f"written: {out / 'comparison.json'}, {out / 'comparison.png'}")
    return result


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@app.command()
def compare(
    config: Path = typer.Argument(..., metavar="CONFIG", help="YAML config file."),
    seeds: int = typer.Option(3, min=1, help="Number of seeds (train.seed, train.seed+1, ...)."),
    out: Path = typer.Option(
        None, "--out", "-o", help="Directory for comparison.json and the plot."
    ),
    stl_ensemble: str = typer.Option(
        "exact",
        help="How the STL networks train: exact (stacked where that reproduces separate runs, "
        "dropout masks included), dropout (stacked, vmap drawing other masks) or off (one by "
        "one).",
    ),
    workers: int = typer.Option(
        None,
        min=1,
        help="Processes that train the seeds, one torch thread each (default: one per core, "
        "at most one per seed; 1 on a GPU).",
    ),
    quiet: bool = QUIET,
) -> None:
    """Train STL and MTL on the same splits for several seeds and compare them on the test split."""
    from .baselines import VECTORIZE
    from .config import load_config

    if stl_ensemble not in VECTORIZE:
        raise typer.BadParameter(f"{stl_ensemble!r} is not one of {', '.join(VECTORIZE)}")
    _run_comparison(load_config(config), seeds, out, quiet, stl_ensemble, workers)


@app.command()
def relate(
    config: Path = typer.Argument(..., metavar="CONFIG", help="YAML config file."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for relatedness.json and plots."),
    seeds: int = typer.Option(1, min=1, help="Number of seeds (train.seed, train.seed+1, ...)."),
    measure: list[str] = typer.Option(
        None,
        "--measure",
        "-m",
        help="gradient, lookahead, hidden or transfer (repeat; default: the first three; "
        "the first one given makes the groups).",
    ),
    groups: int = typer.Option(None, "--groups", min=1, help="Number of groups (default: chosen)."),
    every: int = typer.Option(10, min=1, help="Record gradient/lookahead every N steps."),
    workers: int = typer.Option(
        1, min=1, help="Processes for the transfer measure's pair runs (one thread each)."
    ),
    validate: bool = typer.Option(
        False,
        "--validate",
        help="Then train the suggested groups, all-in-one and STL (--seeds seeds) and report "
        "each one's validation Δm%.",
    ),
    quiet: bool = QUIET,
) -> None:
    """Which tasks help each other: train as `fit` would, measure relatedness, suggest groups."""
    from .config import load_config
    from .relate import DEFAULT_MEASURES
    from .relate import relate as relate_tasks

    cfg = load_config(config)
    measures = list(measure) if measure else list(DEFAULT_MEASURES)
    grouping = "gradient" if not measure and "gradient" in measures else measures[0]
    with console.status("training and measuring", spinner="dots") if not quiet else _Null():
        result = relate_tasks(
            cfg,
            seeds=seeds,
            measures=measures,
            groups=groups,
            out=out,
            every=every,
            grouping_measure=grouping,
            workers=workers,
        )
    _print_relatedness(result)
    if validate:
        from .grouping import validate_groups
        from .io import write_json

        with console.status("validating the groups", spinner="dots") if not quiet else _Null():
            checked = validate_groups(cfg, result.groups, seeds=seeds)
        write_json(out / "relatedness.json", {**result.to_json(), "validation": checked})
        _print_validation(checked)
    console.print(f"written: {out / 'relatedness.json'} and one relatedness_MEASURE.png each")


@app.command()
def plan(
    config: Path = typer.Argument(..., metavar="CONFIG", help="YAML config file."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Directory for plan.json, comparison.json and run/."
    ),
    seeds: int = typer.Option(3, min=1, help="Number of seeds (train.seed, train.seed+1, ...)."),
    budget: str = typer.Option(
        None, help="Cap on the total wall time, e.g. 600, 90s, 20m, 1.5h (default: none)."
    ),
    candidate: list[str] = typer.Option(
        None,
        "--candidate",
        "-c",
        help="A candidate to try (repeat; default: the standard set, see `polytask "
        "candidates`). stl and all_in_one are always trained.",
    ),
    workers: int = typer.Option(
        None, min=1, help="Processes training seeds in parallel (default: cores, at most seeds)."
    ),
    overwrite: bool = typer.Option(False, help="Replace the plan already in --out."),
    quiet: bool = QUIET,
) -> None:
    """Find what to train together: candidates per seed, a per-task choice on validation, one
    run directory, and the plan vs STL and vs all-in-one on test."""
    from .config import load_config

    _run_plan(
        load_config(config),
        seeds=seeds,
        candidates=list(candidate) if candidate else None,
        budget=budget,
        workers=workers,
        out=out,
        overwrite=overwrite,
        quiet=quiet,
    )
    console.print(
        f"written: {out / 'plan.json'}, {out / 'comparison.json'}, {out / 'comparison.png'} "
        f"and the model in {out / 'run'} (polytask predict {out / 'run'} DATA.csv -o pred.csv)"
    )


def _run_plan(
    cfg: Any,
    *,
    seeds: int,
    candidates: Any,
    workers: int | None,
    out: Path | None,
    quiet: bool,
    budget: str | None = None,
    overwrite: bool = False,
) -> None:
    from .plan import plan as make_plan

    with console.status("planning", spinner="dots") if not quiet else _Null() as status:

        def note(message: str) -> None:
            if status is not None:
                status.update(f"training {message}")

        result = make_plan(
            cfg,
            seeds=seeds,
            candidates=candidates,
            budget=budget,
            workers=workers,
            out=out,
            overwrite=overwrite,
            on_progress=note,
        )
    _print_plan(result.report, result.comparison_json())


def _print_plan(report: dict[str, Any], result: dict[str, Any]) -> None:
    n = len(result["seeds"])
    table = Table(
        title=f"plan: the candidate chosen per task on validation, test scores (mean ± std "
        f"over {n} seed(s))",
        caption="change %: relative change vs STL, negative = the plan is better; verdict: "
        "paired t-test over seeds vs STL",
    )
    for col in ("task", "metric", "chosen", "STL", "all-in-one", "plan", "change %", "verdict"):
        left = col in ("task", "metric", "chosen", "verdict")
        table.add_column(col, justify="left" if left else "right", no_wrap=col == "verdict")
    for name, t in result["tasks"].items():
        arrow = "↑" if t["higher_is_better"] else "↓"
        aio = result["vs_all_in_one"]["tasks"][name]["stl"]
        change = t["relative_change_percent"]
        table.add_row(
            name,
            f"{t['metric']} {arrow}",
            t["chosen"],
            f"{_fmt(t['stl']['mean'])} ± {_fmt(t['stl']['std'])}",
            f"{_fmt(aio['mean'])} ± {_fmt(aio['std'])}",
            f"{_fmt(t['mtl']['mean'])} ± {_fmt(t['mtl']['std'])}",
            f"{change:+.2f}" if not math.isnan(change) else "—",
            t["verdict"].replace("MTL", "plan"),
        )
    console.print(table)
    trained = {k: v for k, v in report["candidates"].items() if v["status"] == "trained"}
    times = ", ".join(f"{k} {v['wall_seconds']:.0f} s" for k, v in trained.items())
    console.print(f"wall time per candidate (all seeds): {times}")
    for name, entry in report["candidates"].items():
        if entry["status"] != "trained":
            console.print(f"{name}: {entry['status']} ({escape(entry.get('reason', ''))})")
    for key, label in ((None, "STL"), ("vs_all_in_one", "all-in-one")):
        part = result if key is None else result[key]
        lo, hi = part["delta_m_ci95"]
        ci = f", 95% CI [{lo:+.2f}, {hi:+.2f}]" if not math.isnan(lo) else ""
        console.print(
            f"plan vs {label}: Δm = {part['delta_m_percent']:+.2f}%{ci} "
            f"({part['delta_m_verdict'].replace('MTL', 'plan')})"
        )
    console.print(f"[bold]{escape(result['summary'])}[/bold]")


@app.command()
def candidates() -> None:
    """List the candidates `plan` can try."""
    from .plan import CANDIDATES, DEFAULT_CANDIDATES

    table = Table(title="plan candidates (polytask plan CONFIG -c NAME ...)")
    for col in ("name", "what", "default"):
        table.add_column(col)
    for entry in CANDIDATES.values():
        table.add_row(
            entry.name, entry.description, "yes" if entry.name in DEFAULT_CANDIDATES else ""
        )
    console.print(table)


def _print_validation(checked: dict[str, Any]) -> None:
    table = Table(
        title=f"validation Δm% vs STL over {len(checked['seeds'])} seed(s)",
        caption="negative = better than STL; scores on the validation split (selection scores)",
    )
    for col in ("arm", "Δm % (mean ± std)", "95% CI"):
        table.add_column(col)
    for arm, values in checked["arms"].items():
        lo, hi = values["delta_m_ci95"]
        ci = f"[{lo:+.2f}, {hi:+.2f}]" if not math.isnan(lo) else "—"
        mean, std = values["delta_m_percent"], values["delta_m_std"]
        table.add_row(arm, f"{_fmt(mean, 2)} ± {_fmt(std, 2)}", ci)
    console.print(table)
    console.print(f"best on validation: {checked['best']}")


def _print_relatedness(result: Any) -> None:
    measure = result.settings["grouping_measure"]
    helpers = result.helpers(measure)
    affinity = result.affinity(measure)
    index = {n: i for i, n in enumerate(result.tasks)}
    table = Table(
        title=f"strongest helpers by {measure} (normalized affinity, row task → this task)",
        caption=f"{len(result.settings['seeds'])} seed(s); affinity in [-1, 1], 1 = same task",
    )
    for col in ("task", "role", "helped most by", "group"):
        table.add_column(col)
    main = set(result.main)
    for name in result.tasks:
        found = ", ".join(f"{h} {affinity[index[h], index[name]]:+.2f}" for h in helpers[name])
        group = next(
            (f"{g + 1}" for g, members in enumerate(result.groups) if name in members), "none"
        )
        table.add_row(name, "main" if name in main else "auxiliary", found or "—", group)
    console.print(table)
    for g, members in enumerate(result.groups):
        console.print(f"group {g + 1}: {escape(', '.join(members))}")
    alone = result.alone()
    console.print(
        "train alone: "
        + (escape(", ".join(alone)) if alone else "none (every main task has a group)")
    )


@app.command()
def demo(
    seeds: int = typer.Option(3, min=1, help="Number of seeds."),
    out: Path = typer.Option(
        None, "--out", "-o", help="Directory for plan.json, comparison.json and run/."
    ),
    workers: int = typer.Option(
        None, min=1, help="Processes training seeds in parallel (default: cores, at most seeds)."
    ),
    quiet: bool = QUIET,
) -> None:
    """`plan` on the built-in Yeast data (14 binary tasks, real labels): which tasks to train
    together, against one shared network and one network per task."""
    from .demo import DEMO_CANDIDATES, demo_config

    cfg = demo_config()
    if not quiet:
        console.print(
            "Yeast: 2,417 genes, 103 features, 14 functional classes as 14 binary tasks (fixed "
            f"split 60/15/25). plan trains {', '.join(DEMO_CANDIDATES)} for {seeds} seed(s), "
            "chooses per task on validation rows no model stopped on, then tests."
        )
    _run_plan(cfg, seeds=seeds, candidates=DEMO_CANDIDATES, workers=workers, out=out, quiet=quiet)
    if out is not None:
        console.print(f"written: {out / 'plan.json'}, {out / 'comparison.json'}, {out / 'run'}")


@app.command()
def datasets() -> None:
    """List the built-in data sets."""
    from .datasets import DATASETS

    table = Table(title="data sets (data: {dataset: NAME})")
    for col in ("name", "what", "source", "licence"):
        table.add_column(col)
    for info in DATASETS.values():
        # escaped: "polytask[benchmarks]" would otherwise be read as Rich markup and vanish
        table.add_row(*(escape(v) for v in (info.name, info.summary, info.source, info.licence)))
    console.print(table)


@app.command()
def balancers() -> None:
    """List the joint-optimization strategies (train.balancer)."""
    from .balancing import BALANCERS

    table = Table(title="balancers (train: {balancer: NAME, balancer_options: {...}})")
    for col in ("name", "what", "options", "reference"):
        table.add_column(col)
    for cls in BALANCERS.values():
        table.add_row(
            cls.name, cls.description, ", ".join(cls.Options.model_fields) or "-", cls.reference
        )
    console.print(table)


@app.command()
def architectures() -> None:
    """List the model architectures (model.architecture)."""
    from .models import ARCHITECTURES

    table = Table(title="architectures (model: {architecture: NAME, options: {...}})")
    for col in ("name", "what", "options"):
        table.add_column(col)
    for arch in ARCHITECTURES.values():
        options = ", ".join(
            f"{name}={field.default}" for name, field in arch.Options.model_fields.items()
        )
        table.add_row(arch.name, arch.description, options or "-")
    console.print(table)


from .commands_extra import init_command, report_command  # noqa: E402
from .experiments.command import experiment  # noqa: E402

app.command(name="report")(report_command)
app.command(name="init")(init_command)
app.command()(experiment)


def _version(value: bool) -> None:
    if value:
        from . import __version__

        console.print(f"polytask {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Multi-task learning on PyTorch: fit, predict, evaluate and compare against STL."""
    warnings.showwarning = _show_warning


_default_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """polytask's warnings as one yellow line each, without the source location."""
    if issubclass(category, PolytaskWarning):
        errors.print(
            f"[yellow]warning:[/yellow] {escape(str(message))}", highlight=False, soft_wrap=True
        )
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


def _print_error(exc: BaseException) -> None:
    # soft_wrap: one line however long; escape: brackets in the message are not markup.
    errors.print(
        f"[bold red]error:[/bold red] {type(exc).__name__}: {escape(str(exc))}",
        highlight=False,
        soft_wrap=True,
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point. Usage mistakes print the usage and exit 2 (Typer's standalone mode does
    that); polytask's own errors become one red line and exit 2; Ctrl-C exits 130."""
    code: int | str | None = 0
    try:
        app(args=argv, prog_name="polytask")
    except SystemExit as exc:
        code = exc.code
    except PolytaskError as exc:
        _print_error(exc)
        code = 2
    except KeyboardInterrupt:
        errors.print("interrupted", highlight=False)
        code = 130
    if "torch.distributed" in sys.modules:  # under torchrun: all ranks leave together
        from .train import shutdown_distributed

        shutdown_distributed()
    sys.exit(code)
