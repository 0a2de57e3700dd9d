"""Many tasks on one trunk: epoch time vs T = 1, 10, 100, 1,000 for the balancers, and the
stacked STL ensemble vs one STL network and vs T separate runs; peak memory.

MTL part. T binary tasks on one hard-sharing network (50 inputs → shared [128, 128] → T linear
heads), a fixed number of rows (2,048: 8 batches of 256 per epoch), 30% of each task's labels
missing, Adam. One epoch is the library's own training loop, ``Trainer._train_epoch``, with the
balancer set through ``TrainConfig(balancer=..., balancer_options=...)``; nothing of the loop is
copied here. Methods: ``fixed``, the loss weighting ``dwa``, and the aggregators ``upgrad``,
``mgda`` and ``nash_mtl`` at both levels (``params``: ``level: parameters``, ``repr``:
``level: representation``), plus at T = 1,000 the many-task options ``every: 16`` and
``subset: 32`` (docs/balancers.md). After one warm-up epoch per method, the methods of one T
run one epoch each in turn (rotating order, so drift in the machine's speed hits all alike);
the median epoch is reported, and its ratio to the same method's T = 1 epoch. A method whose
warm-up step says an epoch would take more than ``--cap`` seconds is *capped*: its epochs are
timed on ``--cap-steps`` batches and scaled to the 8-batch epoch, with fewer repeats (marked
``*`` in the table, ``capped_steps`` in the JSON).

STL part. The same tasks as a DataFrame (70 / 15 / 15% split by row), fitted with
``polytask.baselines.fit_stl`` (networks 50 → [128, 128] → 1, each on its task's labelled
rows, fixed epochs, no early stopping): ``one`` (one task), ``ensemble`` (T tasks,
``vectorize="exact"``: one stacked ensemble) and ``separate`` (``vectorize="off"``: T ``fit``
runs; only up to ``--sequential-max`` tasks, nothing is extrapolated). ``train`` is the runs'
``train_seconds``, ``total`` the wall time of ``fit_stl`` (per-task preprocessing and scoring
included).

Peak memory (MTL at ``--memory-tasks``, STL at ``--stl-memory-tasks``): each configuration in a
fresh process, the growth of the resident set's peak during one training step (one batch) or
one ``fit_stl`` call above the level before it (Linux: peak reset through
/proc/self/clear_refs), and that process's peak resident set. At the MTL memory T this one-step
process is also a probe: a method whose step does not finish within ``probe_timeout`` seconds
is skipped there, with that reason.

    python benchmarks/many_tasks.py            # T = 1, 10, 100, 1000 (about 12 minutes)
    python benchmarks/many_tasks.py --quick    # T = 1, 10, 100, fewer repeats (about 1 minute)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # measure this checkout's polytask, installed or not
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from step_cost import machine as step_cost_machine  # noqa: E402
from stl_ensemble import run_method  # noqa: E402

import polytask as pt  # noqa: E402
from polytask.config import ModelConfig, TrainConfig  # noqa: E402
from polytask.data import TaskData  # noqa: E402
from polytask.models import build_model  # noqa: E402
from polytask.tasks import Task  # noqa: E402
from polytask.train import Trainer  # noqa: E402

TASK_COUNTS = (1, 10, 100, 1000)
GOAL_FIXED = 2.0  # fixed at T = 1,000 within 2x its T = 1 epoch
GOAL_REPR = 5.0  # representation-level aggregators at T = 1,000 within 5x
GOAL_STL = 3.0  # STL ensemble of T = 100 within 3x one STL network
AGGREGATORS = ("upgrad", "mgda", "nash_mtl")
LEVELS = {"params": "parameters", "repr": "representation"}


@dataclass(frozen=True)
class Setup:
    features: int = 50
    shared: tuple[int, ...] = (128, 128)
    batch_size: int = 256
    rows: int = 2048
    missing: float = 0.3
    repeats: int = 5  # timed epochs per method and T (capped methods: fewer)
    cap: float = 4.0  # seconds: an epoch estimated above this is timed on cap_steps batches
    cap_steps: int = 1
    probe_timeout: float = 20.0  # seconds for one step (at the memory T): else skipped
    capped_repeats: int = 2
    stl_epochs: int = 3
    stl_repeats: int = 3
    sequential_max: int = 100


@dataclass(frozen=True)
class Method:
    label: str
    balancer: str
    options: dict[str, Any]
    min_tasks: int = 1  # the many-task options only where they matter


def methods() -> list[Method]:
    out = [Method("fixed", "fixed", {}), Method("dwa", "dwa", {})]
    for name in AGGREGATORS:
        for short, level in LEVELS.items():
            out.append(Method(f"{name}@{short}", name, {"level": level}))
    for name in AGGREGATORS:
        for short, level in LEVELS.items():
            for extra in ({"every": 16}, {"subset": 32}):
                key, value = next(iter(extra.items()))
                label = f"{name}@{short} {key}={value}"
                out.append(Method(label, name, {"level": level, **extra}, min_tasks=1000))
    return out


def make_tasks(n_tasks: int) -> list[Task]:
    return [Task(name=f"task{i:04d}", kind="binary") for i in range(n_tasks)]


def make_arrays(n_tasks: int, setup: Setup, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (rows × features) and binary labels (rows × T, NaN = missing) of T related tasks:
    each task a noisy sign of its own random direction in a shared 8-dim projection."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(setup.rows, setup.features)).astype(np.float32)
    z = np.tanh(x @ rng.normal(size=(setup.features, 8)) / np.sqrt(setup.features))
    logits = z @ rng.normal(size=(8, n_tasks)) + 0.5 * rng.normal(size=(setup.rows, n_tasks))
    y = (logits > 0).astype(np.float64)
    y[rng.random(size=y.shape) < setup.missing] = np.nan
    return x, y


def make_data(tasks: list[Task], setup: Setup, rows: int | None = None) -> TaskData:
    """Encoded data as ``TaskData.from_frame`` makes it (missing targets filled with 0)."""
    x, y = make_arrays(len(tasks), setup)
    rows = rows or setup.rows
    targets, masks = {}, {}
    for i, task in enumerate(tasks):
        column = torch.from_numpy(y[:rows, i])
        masks[task.name] = ~torch.isnan(column)
        targets[task.name] = torch.nan_to_num(column, nan=0.0).float()
    return TaskData(
        x_num=torch.from_numpy(x[:rows]),
        x_cat=torch.zeros(rows, 0, dtype=torch.long),
        targets=targets,
        masks=masks,
    )


class Timed:
    """One model, trainer and balancer; ``epoch()`` times one training epoch of the Trainer."""

    def __init__(self, n_tasks: int, method: Method, setup: Setup) -> None:
        torch.manual_seed(0)
        tasks = make_tasks(n_tasks)
        self.data = make_data(tasks, setup)
        self.steps = setup.rows // setup.batch_size
        spec = ModelConfig(shared=list(setup.shared), head=[])
        model = build_model(
            spec, n_numeric=setup.features, cardinalities=[], out_dims={t.name: 1 for t in tasks}
        )
        config = TrainConfig(
            balancer=method.balancer,
            balancer_options=method.options,
            optimizer="adam",
            batch_size=setup.batch_size,
            epochs=1,
            device="cpu",
        )
        self.trainer = Trainer(model, tasks, config)
        self.generator = torch.Generator().manual_seed(0)
        self.capped_steps: int | None = None
        self.setup = setup
        self.options = method.options
        self.small = TaskData(
            x_num=self.data.x_num[: setup.batch_size * setup.cap_steps],
            x_cat=self.data.x_cat[: setup.batch_size * setup.cap_steps],
            targets={
                k: v[: setup.batch_size * setup.cap_steps] for k, v in self.data.targets.items()
            },
            masks={k: v[: setup.batch_size * setup.cap_steps] for k, v in self.data.masks.items()},
        )

    def warm_up(self) -> None:
        """A short epoch (``cap_steps`` batches); caps the method when a full epoch would take
        more than ``setup.cap`` seconds, else runs one full warm-up epoch."""
        started = time.perf_counter()
        self.trainer._train_epoch(self.small, self.generator)
        per_step = (time.perf_counter() - started) / self.setup.cap_steps
        # every: k solves once per k steps, so only whole epochs time it fairly: never capped
        if per_step * self.steps > self.setup.cap and "every" not in self.options:
            self.capped_steps = self.setup.cap_steps
        else:
            self.trainer._train_epoch(self.data, self.generator)

    def epoch(self) -> float:
        """Seconds of one epoch (capped: the short epoch scaled to the full one)."""
        data = self.small if self.capped_steps else self.data
        started = time.perf_counter()
        self.trainer._train_epoch(data, self.generator)  # ends by reading the losses back
        seconds = time.perf_counter() - started
        return seconds * self.steps / self.capped_steps if self.capped_steps else seconds


def bench_mtl(counts: list[int], setup: Setup, memory_tasks: set[int]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n_tasks in counts:
        active = [m for m in methods() if n_tasks >= m.min_tasks]
        timed, probes, skipped = {}, {}, []
        started = time.perf_counter()
        for m in active:
            if n_tasks in memory_tasks:  # memory, and one step's time, in a fresh process
                probes[m.label] = child_memory(["mtl", str(n_tasks), m.label], setup)
                if "skipped" in probes[m.label]:
                    skipped.append(m)
                    print(f"T={n_tasks} {m.label}: {probes[m.label]['skipped']}", flush=True)
                    continue
            timed[m.label] = Timed(n_tasks, m, setup)
            timed[m.label].warm_up()
        for m in skipped:
            rows.append(
                {
                    "tasks": n_tasks,
                    "method": m.label,
                    "balancer": m.balancer,
                    "options": m.options,
                    "skipped": probes[m.label]["skipped"],
                    "memory": probes[m.label],
                }
            )
        active = [m for m in active if m not in skipped]
        times: dict[str, list[float]] = {m.label: [] for m in active}
        for r in range(setup.repeats):
            order = active[r % len(active) :] + active[: r % len(active)]
            for m in order:
                t = timed[m.label]
                if t.capped_steps and r >= setup.capped_repeats:
                    continue
                times[m.label].append(t.epoch())
        for m in active:
            t = timed[m.label]
            row: dict[str, Any] = {
                "tasks": n_tasks,
                "method": m.label,
                "balancer": m.balancer,
                "options": m.options,
                "epoch_s": statistics.median(times[m.label]),
                "epoch_s_min": min(times[m.label]),
                "epoch_s_max": max(times[m.label]),
                "repeats": len(times[m.label]),
                "capped_steps": t.capped_steps,
                "steps_per_epoch": t.steps,
            }
            if m.label in probes:
                row["memory"] = probes[m.label]
            rows.append(row)
        del timed
        print(
            f"T={n_tasks}: {len(active)} methods, {time.perf_counter() - started:.0f} s", flush=True
        )
    base = {r["method"]: r.get("epoch_s") for r in rows if r["tasks"] == min(counts)}
    for r in rows:
        if "skipped" in r:
            r["vs_t1"] = None
            continue
        ref = base.get(r["method"].split(" ")[0])  # options variants: vs the method's T = 1
        r["vs_t1"] = r["epoch_s"] / ref if ref else None
    return rows


# ---- STL ------------------------------------------------------------------------------------
def stl_problem(n_tasks: int, setup: Setup) -> tuple[pt.Config, pt.Splits]:
    x, y = make_arrays(n_tasks, setup)
    columns: dict[str, Any] = {f"x{j}": x[:, j] for j in range(setup.features)}
    tasks = make_tasks(n_tasks)
    for i, task in enumerate(tasks):
        columns[task.name] = y[:, i]
    frame = pd.DataFrame(columns)
    place = np.arange(setup.rows) / setup.rows
    splits = pt.Splits(
        frame[place < 0.7], frame[(place >= 0.7) & (place < 0.85)], frame[place >= 0.85]
    )
    config = pt.Config(
        data=pt.DataConfig(features=[f"x{j}" for j in range(setup.features)]),
        tasks=tasks,
        model=pt.ModelConfig(shared=list(setup.shared)),
        train=pt.TrainConfig(
            epochs=setup.stl_epochs, batch_size=setup.batch_size, patience=None, device="cpu"
        ),
    )
    return config, splits


def stl_call(method: str, config: pt.Config, splits: pt.Splits) -> dict[str, float]:
    """stl_ensemble.py's ``fit_stl`` call: ``{"total", "train"}`` seconds."""
    return run_method(method, config, splits)[1]


def bench_stl(counts: list[int], setup: Setup, memory_tasks: set[int]) -> list[dict[str, Any]]:
    rows = []
    for n_tasks in counts:
        started = time.perf_counter()
        config, splits = stl_problem(n_tasks, setup)
        stl_call("one", config, splits)  # warm-up
        active = ["one", "ensemble"] + (["separate"] if n_tasks <= setup.sequential_max else [])
        times: dict[str, list[dict[str, float]]] = {m: [] for m in active}
        for r in range(setup.stl_repeats):
            order = active[r % len(active) :] + active[: r % len(active)]
            for m in order:
                if m != "one" and n_tasks >= 1000 and r >= 1:
                    continue  # one call of the big ones
                times[m].append(stl_call(m, config, splits))
        row: dict[str, Any] = {"tasks": n_tasks, "calls": {m: len(times[m]) for m in active}}
        for part in ("train", "total"):
            med = {m: statistics.median(t[part] for t in times[m]) for m in active}
            row[part] = {
                **{f"{m}_s": v for m, v in med.items()},
                "ensemble_over_one": med["ensemble"] / med["one"],
                "separate_over_ensemble": (
                    med["separate"] / med["ensemble"] if "separate" in med else None
                ),
            }
        if n_tasks in memory_tasks:
            row["memory"] = {m: child_memory(["stl", str(n_tasks), m], setup) for m in active}
        if n_tasks > setup.sequential_max:
            row["separate_skipped"] = f"T > {setup.sequential_max}: not run, not extrapolated"
        rows.append(row)
        print(f"STL T={n_tasks}: {time.perf_counter() - started:.0f} s", flush=True)
    return rows


# ---- memory ---------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def child_memory(spec: list[str], setup: Setup) -> dict[str, Any]:
    """Peak memory of one configuration in a fresh process (MTL: one training step on one
    batch, whose seconds it reports too); ``{"skipped": why}`` when it fails or runs past
    ``setup.probe_timeout``."""
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", json.dumps(asdict(setup)), *spec],
            capture_output=True,
            text=True,
            timeout=setup.probe_timeout if spec[0] == "mtl" else None,  # STL: no limit
        )
    except subprocess.TimeoutExpired:
        return {"skipped": f"one step did not finish within {setup.probe_timeout:.0f} s"}
    if out.returncode != 0:
        return {"skipped": "failed: " + " ".join(out.stderr.strip().splitlines()[-1:])}
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_child(setup_json: str, part: str, n_tasks: int, name: str) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    fields = json.loads(setup_json)
    setup = Setup(**{**fields, "shared": tuple(fields["shared"])})
    if part == "mtl":
        method = next(m for m in methods() if m.label == name)
        Timed(1, Method("fixed", "fixed", {}), setup).warm_up()  # first-call allocations
        timed = Timed(n_tasks, method, setup)

        def run() -> None:
            timed.trainer._train_epoch(timed.small, timed.generator)  # one step, one batch

    else:
        stl_call("ensemble", *stl_problem(2, replace(setup, rows=256)))  # first-call costs
        config, splits = stl_problem(n_tasks, setup)

        def run() -> None:
            stl_call(name, config, splits)

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident set
    before = _status_kib("VmRSS")
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    peak = _status_kib("VmHWM")
    # (ru_maxrss is not used: a forked child starts from its parent's high-water mark)
    print(
        json.dumps(
            {"growth_mib": (peak - before) / 1024, "peak_mib": peak / 1024, "seconds": seconds}
        )
    )


# ---- report ---------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """step_cost.py's machine facts, and the load while measuring."""
    return {**step_cost_machine(), "load_average": os.getloadavg()}


def _mem(row: dict[str, Any] | None) -> str:
    return f"{row['growth_mib']:.0f}" if row and "growth_mib" in row else "-"


def print_mtl(rows: list[dict[str, Any]], counts: list[int]) -> None:
    print("\nMTL epoch (8 batches of 256), median seconds, and ÷ the same method's T = 1 epoch")
    print("(* capped: timed on a few batches, scaled to the epoch)")
    head = f"{'method':<26}" + "".join(f"{'T=' + str(t):>17}" for t in counts)
    print(head + f"{'peak MiB':>12}")
    for label in dict.fromkeys(r["method"] for r in rows):
        cells, mem = [], []
        for t in counts:
            r = next((r for r in rows if r["method"] == label and r["tasks"] == t), None)
            if r is None or "skipped" in r:
                cells.append(f"{'' if r is None else 'skipped':>17}")
                if r is not None:
                    mem.append(_mem(r["memory"]))
                continue
            ratio = f"{r['vs_t1']:.1f}x" if r["vs_t1"] is not None else ""
            star = "*" if r["capped_steps"] else " "
            cells.append(f"{r['epoch_s']:>9.3f}{star}{ratio:>7}")
            if "memory" in r:
                mem.append(_mem(r["memory"]))
        print(f"{label:<26}" + "".join(cells) + f"{'/'.join(mem):>12}")


def print_stl(rows: list[dict[str, Any]]) -> None:
    print("\nSTL via fit_stl, median seconds: one network, the stacked ensemble of T, T separate")
    print(
        f"{'T':>5} {'part':>6} {'one':>8} {'ensemble':>9} {'ens/one':>8} {'separate':>9} "
        f"{'sep/ens':>8} {'peak MiB one/ens/sep':>21}"
    )
    for row in rows:
        for part in ("train", "total"):
            p = row[part]
            sep = p.get("separate_s")
            mem = ""
            ratio = f"{p['separate_over_ensemble']:.1f}x" if sep else "-"
            if part == "train" and "memory" in row:
                mem = "/".join(_mem(row["memory"].get(m)) for m in ("one", "ensemble", "separate"))
            print(
                f"{row['tasks']:>5} {part:>6} {p['one_s']:>8.3f} {p['ensemble_s']:>9.3f} "
                f"{p['ensemble_over_one']:>7.1f}x "
                f"{(f'{sep:.3f}' if sep else 'not run'):>9} "
                f"{ratio:>8} {mem:>21}"
            )


def goals(mtl: list[dict[str, Any]], stl: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    big = max(r["tasks"] for r in mtl)
    fixed = next(r for r in mtl if r["method"] == "fixed" and r["tasks"] == big)
    out[f"fixed_T{big}_vs_T1"] = {"ratio": fixed["vs_t1"], "goal": GOAL_FIXED}
    for name in AGGREGATORS:
        r = next(r for r in mtl if r["method"] == f"{name}@repr" and r["tasks"] == big)
        out[f"{name}@repr_T{big}_vs_T1"] = {"ratio": r["vs_t1"], "goal": GOAL_REPR}
    for row in stl:
        if row["tasks"] == 100:
            out["stl_ensemble_T100_vs_one_train"] = {
                "ratio": row["train"]["ensemble_over_one"],
                "goal": GOAL_STL,
            }
            out["stl_ensemble_T100_vs_one_total"] = {
                "ratio": row["total"]["ensemble_over_one"],
                "goal": GOAL_STL,
            }
    for v in out.values():
        v["met"] = v["ratio"] is not None and v["ratio"] <= v["goal"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="T = 1, 10, 100, fewer repeats")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "many_tasks.json",
        help="where to write the JSON results (default: %(default)s)",
    )
    parser.add_argument("--tasks", help="task counts T (1,10,100,1000; --quick: 1,10,100)")
    parser.add_argument("--repeats", type=int, help="timed epochs per method and T (5; quick 3)")
    parser.add_argument("--cap", type=float, help="seconds per epoch above which to cap (4)")
    parser.add_argument("--sequential-max", type=int, help="largest T of separate STL runs")
    parser.add_argument(
        "--memory-tasks", help="T at which to measure MTL peak memory (1000; --quick: none)"
    )
    parser.add_argument(
        "--stl-memory-tasks", help="T at which to measure STL peak memory (100,1000; quick: 10)"
    )
    parser.add_argument("--no-stl", action="store_true", help="skip the STL part")
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        setup_json, part, n_tasks, name = args.memory_child
        memory_child(setup_json, part, int(n_tasks), name)
        return 0

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    setup = Setup()
    if args.quick:
        setup = replace(
            setup, repeats=3, capped_repeats=1, stl_repeats=2, cap=1.0, sequential_max=10
        )
    setup = replace(
        setup,
        repeats=args.repeats or setup.repeats,
        cap=args.cap or setup.cap,
        sequential_max=args.sequential_max or setup.sequential_max,
    )
    default_counts = "1,10,100" if args.quick else ",".join(map(str, TASK_COUNTS))
    counts = [int(t) for t in (args.tasks or default_counts).split(",")]
    memory_tasks = {
        int(t) for t in (args.memory_tasks or ("" if args.quick else "1000")).split(",") if t
    }
    stl_memory = args.stl_memory_tasks or ("10" if args.quick else "100,1000")
    stl_memory_tasks = {int(t) for t in stl_memory.split(",") if t}
    info = machine()
    print(
        f"polytask {info['polytask']}, torch {info['torch']}, 1 thread, {info['cpu']} "
        f"({info['cpu_count']} CPUs, load {info['load_average'][0]:.1f}); "
        f"{setup.features} inputs -> {list(setup.shared)} -> T linear heads, {setup.rows} rows, "
        f"batch {setup.batch_size}, {setup.missing:.0%} labels missing, Adam",
        flush=True,
    )
    started = time.perf_counter()
    mtl = bench_mtl(counts, setup, memory_tasks)
    stl = [] if args.no_stl else bench_stl(counts, setup, stl_memory_tasks)
    elapsed = time.perf_counter() - started
    print_mtl(mtl, counts)
    if stl:
        print_stl(stl)
    met = goals(mtl, stl)
    print("\ngoals:")
    for key, v in met.items():
        ratio = "skipped" if v["ratio"] is None else f"{v['ratio']:.2f}x"
        print(f"  {key}: {ratio} (goal <= {v['goal']}x) {'met' if v['met'] else 'NOT met'}")
    result = {
        "benchmark": "many_tasks",
        "command": " ".join(["python", "benchmarks/many_tasks.py", *(argv or sys.argv[1:])]),
        "quick": args.quick,
        "setup": {**asdict(setup), "shared": list(setup.shared)},
        "machine": info,
        "seconds": elapsed,
        "mtl": mtl,
        "stl": stl,
        "goals": met,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
