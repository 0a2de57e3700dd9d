"""The vectorized STL baseline: T single-task networks trained as one stacked ensemble, against
one STL network of the same shape and against the T networks fitted one after another.

Synthetic tasks, School-like: T tasks alternating regression and binary, each with its own
rows (a row carries one task's label, as a pupil carries their school's), the same inputs, and
per task a fixed 70 / 15 / 15% train / validation / test split. Every network has the same
shape, Adam, batch 128 and a fixed number of epochs (no early stopping, so every method trains
the same epochs). Measured with ``polytask.baselines.fit_stl``:

- ``one``: ``fit_stl`` of one of the tasks (a plain ``fit``);
- ``ensemble``: ``fit_stl`` of the T tasks (``vectorize="exact"``: stacked ensembles);
- ``separate``: ``fit_stl`` of the T tasks with ``vectorize="off"``: T ``fit`` runs.

``total`` is the wall time of ``fit_stl`` (per-task preprocessing, training, scoring on the
validation and test splits: what ``compare`` pays); ``train`` the training alone (the runs'
``train_seconds``; the ensemble's includes stacking the networks). The methods are run in
turn, repeatedly, and the median (min–max) is reported; ``max |Δw|`` is the largest weight
difference between the ensemble's and the separate runs' networks. Peak memory is the growth
of the process's resident set during one ``fit_stl`` call above its level just before (Linux:
the peak is reset through /proc/self/clear_refs), each in a fresh process.

``--school`` adds the STL part of ``compare`` on School (160 schools; benchmarks/quality.py's
settings, dropout 0.2, 5 seeds): separate runs against the exact ensemble (each member drawing
its separate run's dropout masks) and ``vectorize="dropout"`` (stacked, each member's masks
drawn by ``vmap``: other draws), and, with dropout 0, separate runs against the exact ensemble
(the separate runs of each dropout rate are timed once). Each stacked mode is measured
twice: one ``fit_stl`` call per seed (160 members each) and one ``fit_stl_seeds`` call for all
seeds (800 members in one ensemble, what ``compare`` runs); ``max |Δw|`` compares the latter's
networks with the per-seed calls' (and, exact, with the separate runs').

    python benchmarks/stl_ensemble.py                 # T = 10, 100; two shapes (a few minutes)
    python benchmarks/stl_ensemble.py --quick         # T = 10, 100; one shape, fewer repeats
    python benchmarks/stl_ensemble.py --school        # adds School, 5 seeds (a few minutes)
    python benchmarks/stl_ensemble.py --shapes= --school \\
        --out benchmarks/results/stl_ensemble_seeds.json  # School only
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # measure this checkout's polytask, installed or not
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from step_cost import machine as step_cost_machine  # noqa: E402

import polytask as pt  # noqa: E402
from polytask.baselines import fit_stl, fit_stl_seeds  # noqa: E402

GOAL = 3.0  # the target: the ensemble of T = 100 within 3x one STL network's time
METHODS = ("one", "ensemble", "separate")


@dataclass(frozen=True)
class Shape:
    features: int
    shared: tuple[int, ...]
    rows: int  # rows per task, before the split
    epochs: int
    batch_size: int = 128


SHAPES = {
    # School's size: 5 inputs, one 64-wide layer, ~31 training rows per task (one batch)
    "school_like": Shape(features=5, shared=(64,), rows=45, epochs=30),
    # a wider network and three batches per epoch
    "wide": Shape(features=32, shared=(128, 128), rows=400, epochs=10),
}


def make_problem(shape: Shape, n_tasks: int, seed: int = 0) -> tuple[pt.Config, pt.Splits]:
    """T tasks on their own rows; the config of all T (slice ``config.tasks`` for fewer)."""
    rng = np.random.default_rng(seed)
    n = shape.rows * n_tasks
    x = rng.normal(size=(n, shape.features))
    owner = np.repeat(np.arange(n_tasks), shape.rows)
    y = (x * rng.normal(size=(n_tasks, shape.features))[owner]).sum(1) + 0.3 * rng.normal(size=n)
    columns: dict[str, Any] = {f"x{j}": x[:, j] for j in range(shape.features)}
    tasks = []
    for t in range(n_tasks):
        name, regression = f"task{t:04d}", t % 2 == 0
        column = np.full(n, np.nan)
        mine = owner == t
        column[mine] = y[mine] if regression else (y[mine] > 0).astype(float)
        columns[name] = column
        tasks.append(pt.Task(name=name, kind="regression" if regression else "binary"))
    frame = pd.DataFrame(columns)
    place = np.tile(np.arange(shape.rows), n_tasks) / shape.rows  # position within its task
    splits = pt.Splits(
        frame[place < 0.7], frame[(place >= 0.7) & (place < 0.85)], frame[place >= 0.85]
    )
    config = pt.Config(
        data=pt.DataConfig(features=[f"x{j}" for j in range(shape.features)]),
        tasks=tasks,
        model=pt.ModelConfig(shared=list(shape.shared)),
        train=pt.TrainConfig(
            epochs=shape.epochs, batch_size=shape.batch_size, patience=None, device="cpu"
        ),
    )
    return config, splits


def run_method(method: str, config: pt.Config, splits: pt.Splits) -> tuple[dict, dict]:
    """One ``fit_stl`` call: its runs and ``{"total", "train"}`` seconds."""
    if method == "one":
        config = config.model_copy(update={"tasks": config.tasks[:1]})
    started = time.perf_counter()
    runs = fit_stl(config, splits, vectorize="off" if method == "separate" else "exact")
    total = time.perf_counter() - started
    if method == "ensemble" and len(runs) > 1:  # one network alone is never stacked
        assert all("stl_ensemble_size" in r.metrics for r in runs.values()), "not stacked"
    train = sum(r.metrics["train_seconds"] for r in runs.values())
    return runs, {"total": total, "train": train}


def max_weight_difference(a: dict[str, pt.Run], b: dict[str, pt.Run]) -> float:
    worst = 0.0
    for name, run in a.items():
        mine, theirs = run.model.state_dict(), b[name].model.state_dict()
        worst = max(worst, *((mine[k] - theirs[k]).abs().max().item() for k in mine))
    return worst


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def peak_memory(shape_name: str, n_tasks: int, method: str) -> float:
    """MiB the peak resident set grows by during one ``fit_stl`` call, in a fresh process."""
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", shape_name, str(n_tasks), method],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def memory_child(shape_name: str, n_tasks: int, method: str) -> None:
    """Print the MiB the resident set peaks above its level before one ``fit_stl`` call."""
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    config, splits = make_problem(SHAPES[shape_name], n_tasks)
    for warm_up in ("one", "ensemble"):  # lazy imports and first-call allocations, not counted
        run_method(warm_up, *make_problem(SHAPES[shape_name], 2, seed=1))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident set
    before = _status_kib("VmRSS")
    run_method(method, config, splits)
    print((_status_kib("VmHWM") - before) / 1024)


def bench_shape(name: str, counts: list[int], repeats: int, memory: bool) -> list[dict]:
    shape = SHAPES[name]
    print(
        f"\n{name}: {shape.features} inputs -> {list(shape.shared)} -> 1, {shape.rows} rows per "
        f"task (70% training), batch {shape.batch_size}, Adam, {shape.epochs} epochs"
    )
    header = (
        f"{'T':>5} {'':>6} {'one s':>14} {'ensemble s':>14} {'ens/one':>8} "
        f"{'separate s':>16} {'sep/ens':>8}"
    )
    print(header)
    rows = []
    for n_tasks in counts:
        config, splits = make_problem(shape, n_tasks)
        run_method("one", config, splits)  # warm-up: imports, first-call costs
        times: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
        difference = 0.0
        for r in range(repeats):
            order = METHODS[r % 3 :] + METHODS[: r % 3]  # rotate, so drift hits all alike
            runs = {}
            for method in order:
                runs[method], seconds = run_method(method, config, splits)
                times[method].append(seconds)
            difference = max(difference, max_weight_difference(runs["ensemble"], runs["separate"]))
        row: dict[str, Any] = {"tasks": n_tasks, "max_weight_difference": difference}
        for part in ("total", "train"):
            stats = {m: spread([t[part] for t in times[m]]) for m in METHODS}
            one, ens, sep = (stats[m]["median"] for m in METHODS)
            row[part] = {
                **stats,
                "ensemble_over_one": ens / one,
                "separate_over_ensemble": sep / ens,
            }
            print(
                f"{n_tasks:>5} {part:>6} {_fmt(stats['one']):>14} {_fmt(stats['ensemble']):>14} "
                f"{ens / one:>7.1f}x {_fmt(stats['separate']):>16} {sep / ens:>7.1f}x"
            )
        if memory:
            row["peak_mib"] = {m: peak_memory(name, n_tasks, m) for m in METHODS}
            peaks = row["peak_mib"]
            print(
                f"{'':>5} {'MiB':>6} {peaks['one']:>14.0f} {peaks['ensemble']:>14.0f} "
                f"{'':>8} {peaks['separate']:>16.0f}"
            )
        print(f"{'':>5} max |Δw| ensemble vs separate: {difference:.1e}")
        rows.append(row)
    return rows


def _fmt(stats: dict[str, float]) -> str:
    return f"{stats['median']:.3f} ({stats['min']:.2f}–{stats['max']:.2f})"


# ---- School ---------------------------------------------------------------------------------
def school_config(dropout: float) -> pt.Config:
    """benchmarks/quality.py's School settings."""
    return pt.Config(
        data=pt.DataConfig(dataset="school"),
        model=pt.ModelConfig(shared=[64], head=[], dropout=dropout),
        train=pt.TrainConfig(
            epochs=100, batch_size=128, lr=1e-3, weight_decay=1e-4, patience=10, device="cpu"
        ),
    )


def bench_school(seeds: list[int]) -> dict[str, Any]:
    print(f"\nSchool (160 tasks), STL of compare: seeds {seeds}, patience 10, up to 100 epochs")
    print(f"{'dropout':>7} {'method':>22} {'seconds':>9} {'epochs':>7} {'mean RMSE':>10}")
    result: dict[str, Any] = {"seeds": seeds, "variants": []}
    separate: dict[float, dict[str, Any]] = {}  # by dropout rate
    for dropout, stacked in ((0.2, "exact"), (0.2, "dropout"), (0.0, "exact")):
        config = school_config(dropout)
        splits = pt.load_splits(config)
        entries = {}
        together = f"{stacked}, seeds in one"
        for method in ("off", stacked, together):
            if method == "off" and dropout in separate:
                entries[method] = separate[dropout]
                continue
            started = time.perf_counter()
            if method == together:
                by_seed = fit_stl_seeds(config, splits, seeds, vectorize=stacked)  # type: ignore[arg-type]
                runs_by_seed = [by_seed[seed] for seed in seeds]
            else:
                runs_by_seed = []
                for seed in seeds:
                    seeded = config.model_copy(
                        update={"train": config.train.model_copy(update={"seed": seed})}
                    )
                    runs_by_seed.append(fit_stl(seeded, splits, vectorize=method))  # type: ignore[arg-type]
            seconds = time.perf_counter() - started
            epochs = sum(len(r.history) for runs in runs_by_seed for r in runs.values())
            rmse = [
                np.mean([r.metrics["test"][n]["rmse"] for n, r in runs.items()])
                for runs in runs_by_seed
            ]
            entries[method] = {
                "seconds": seconds,
                "epochs": epochs,
                "mean_test_rmse": float(np.mean(rmse)),
                "runs": runs_by_seed,
            }
            print(f"{dropout:>7} {method:>22} {seconds:>9.1f} {epochs:>7} {np.mean(rmse):>10.4f}")
        separate[dropout] = entries["off"]
        off, on, one = entries["off"], entries[stacked], entries[together]
        variant = {
            "dropout": dropout,
            "stacked": stacked,
            **{k: {m: v for m, v in e.items() if m != "runs"} for k, e in entries.items()},
            "speedup": off["seconds"] / on["seconds"],
            "seeds_in_one_speedup": on["seconds"] / one["seconds"],
        }

        def worst(a: list[dict[str, pt.Run]], b: list[dict[str, pt.Run]]) -> float:
            return max(max_weight_difference(x, y) for x, y in zip(a, b, strict=True))

        if stacked == "exact":
            variant["max_weight_difference"] = worst(off["runs"], on["runs"])
            variant["seeds_in_one_max_weight_difference"] = worst(off["runs"], one["runs"])
            print(
                f"{'':>7} max |Δw| vs separate: per-seed ensembles "
                f"{variant['max_weight_difference']:.1e}, seeds in one "
                f"{variant['seeds_in_one_max_weight_difference']:.1e}"
            )
        variant["seeds_in_one_vs_per_seed_max_weight_difference"] = worst(on["runs"], one["runs"])
        print(
            f"{'':>7} max |Δw| seeds in one vs per-seed ensembles: "
            f"{variant['seeds_in_one_vs_per_seed_max_weight_difference']:.1e}"
        )
        print(f"{'':>7} separate / per-seed stacked: {variant['speedup']:.1f}x")
        print(f"{'':>7} per-seed stacked / seeds in one: {variant['seeds_in_one_speedup']:.1f}x")
        print(f"{'':>7} separate / seeds in one: {off['seconds'] / one['seconds']:.1f}x")
        result["variants"].append(variant)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="school_like only, 2 repeats")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "stl_ensemble.json",
        help="where to write the JSON results (default: %(default)s)",
    )
    parser.add_argument("--tasks", default="10,100", help="task counts T (%(default)s)")
    parser.add_argument("--shapes", help=f"comma-separated, of {', '.join(SHAPES)} (all)")
    parser.add_argument("--repeats", type=int, help="timed fit_stl calls per method and T (3)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--school", action="store_true", help="add School's compare STL")
    parser.add_argument("--school-seeds", type=int, help="School seeds (5; --quick: 1)")
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        shape_name, n_tasks, method = args.memory_child
        memory_child(shape_name, int(n_tasks), method)
        return 0

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # polytask's notes on tiny test splits, once per task
    if args.shapes is not None:  # --shapes= : none
        shapes = [name for name in args.shapes.split(",") if name]
    else:
        shapes = ["school_like"] if args.quick else [*SHAPES]
    repeats = args.repeats or (2 if args.quick else 3)
    counts = [int(t) for t in args.tasks.split(",")]
    info = step_cost_machine()
    print(
        f"polytask {info['polytask']}, torch {info['torch']}, {info['threads']} thread, "
        f"{info['cpu']} ({info['cpu_count']} CPUs, shared with other jobs); median (min–max) "
        f"of {repeats} fit_stl calls per method, methods in turn; seed 0"
    )
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "stl_ensemble",
        "goal_ensemble_over_one": GOAL,
        "command": " ".join(["python", "benchmarks/stl_ensemble.py", *(argv or sys.argv[1:])]),
        "quick": args.quick,
        "machine": info,
        "repeats": repeats,
        "shapes": {},
    }
    for name in shapes:
        rows = bench_shape(name, counts, repeats, memory=not args.no_memory)
        result["shapes"][name] = {"shape": asdict(SHAPES[name]), "rows": rows}
    if args.school:
        seeds = list(range(args.school_seeds or (1 if args.quick else 5)))
        result["school"] = bench_school(seeds)
    result["seconds"] = time.perf_counter() - started
    print(f"\ngoal: the ensemble of T = 100 within {GOAL}x the time of one STL network")
    for name, entry in result["shapes"].items():
        for row in entry["rows"]:
            if row["tasks"] == 100:
                print(
                    f"{name}: training {row['train']['ensemble_over_one']:.1f}x, "
                    f"fit_stl in all {row['total']['ensemble_over_one']:.1f}x"
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
