"""Time per training step: one multi-task model (T tasks) vs one single-task model, same trunk.

A step is what ``Trainer`` does per mini-batch: ``data.batch(index)`` → ``model(x_num, x_cat,
packed=True)`` → ``TaskLosses`` → ``balancer.backward`` → ``optimizer.step()`` (Adam). The
benchmark times the library's own loop, ``Trainer._train_epoch``, over an epoch of a fixed
number of batches and divides by the number of steps; nothing of the loop is copied here. (The
epoch's own work, drawing the order and reading the summed losses back once, is spread over its
steps; it is what makes GPU timings honest, as the read-back waits for the device.)

The single-task (STL) model is the same architecture (encoder, trunk, head widths) with one
task; it is timed in alternation with each multi-task (MTL) model, so drift in the machine's
speed hits both alike. Each variant reports, per T: the median ms/step of both, their ratio,
and ``work``: the multiply-adds per row of the MTL model over those of the STL model (the head
layers grow with T, so a wide head makes the MTL step more arithmetic, not only more overhead).

    python benchmarks/step_cost.py            # full run, JSON in benchmarks/results/
    python benchmarks/step_cost.py --quick    # fewer repeats, well under a minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # measure this checkout's polytask, installed or not
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import polytask  # noqa: E402
from polytask.config import ModelConfig, TrainConfig  # noqa: E402
from polytask.data import TaskData  # noqa: E402
from polytask.models import build_model  # noqa: E402
from polytask.tasks import Task  # noqa: E402
from polytask.train import Trainer  # noqa: E402

GOAL = 1.2  # the target: an MTL step costs at most 1.2x one STL step, for every T
TASK_COUNTS = (1, 2, 4, 8, 16, 32)
N_CLASSES = 4  # multiclass tasks of the mixed variant
# The mixed variant's tasks take these kinds in turn. Its STL model has one task of the first
# kind: the cheapest single task, so the comparison is not flattered by a costly STL loss.
MIXED_CYCLE = ("regression", "binary", "count", "multiclass")


@dataclass(frozen=True)
class Setup:
    features: int = 100
    shared: tuple[int, ...] = (256, 256)
    batch_size: int = 256
    steps: int = 16  # batches per timed epoch
    warmup: int = 3  # untimed epochs per model before timing
    repeats: int = 15  # timed epochs per model (and per T)
    missing: float = 0.3  # fraction of unlabelled rows per task
    device: str = "cpu"


def make_tasks(n_tasks: int, kind: str) -> list[Task]:
    kinds = [kind] * n_tasks if kind != "mixed" else [MIXED_CYCLE[i % 4] for i in range(n_tasks)]
    return [Task(name=f"task{i}", kind=k) for i, k in enumerate(kinds)]


def make_data(tasks: list[Task], setup: Setup, seed: int = 0) -> tuple[TaskData, dict[str, int]]:
    """Encoded data like ``TaskData.from_frame`` makes: float targets (class codes for
    multiclass), every task with its own random missing labels."""
    g = torch.Generator().manual_seed(seed)
    n = setup.batch_size * setup.steps
    x_num = torch.randn(n, setup.features, generator=g)
    targets, masks, out_dims = {}, {}, {}
    for task in tasks:
        mask = torch.rand(n, generator=g) >= setup.missing
        if task.kind == "multiclass":
            target = torch.randint(0, N_CLASSES, (n,), generator=g)
            out_dims[task.name] = N_CLASSES
        else:
            if task.kind == "binary":
                target = (torch.rand(n, generator=g) < 0.5).float()
            elif task.kind == "count":
                target = torch.poisson(torch.full((n,), 2.0), generator=g)
            else:
                target = torch.randn(n, generator=g)
            target = torch.where(mask, target, torch.zeros(()))  # as the preprocessor fills
            out_dims[task.name] = 1
        targets[task.name], masks[task.name] = target, mask
    x_cat = torch.zeros(n, 0, dtype=torch.long)
    return TaskData(x_num=x_num, x_cat=x_cat, targets=targets, masks=masks), out_dims


class Timed:
    """One model with its trainer and data; ``epoch()`` runs and times one epoch of steps."""

    def __init__(self, n_tasks: int, kind: str, head: list[int], setup: Setup) -> None:
        torch.manual_seed(0)
        self.tasks = make_tasks(n_tasks, kind)
        data, out_dims = make_data(self.tasks, setup)
        spec = ModelConfig(shared=list(setup.shared), head=head)
        model = build_model(spec, n_numeric=setup.features, cardinalities=[], out_dims=out_dims)
        config = TrainConfig(
            optimizer="adam", batch_size=setup.batch_size, epochs=1, device=setup.device
        )
        self.trainer = Trainer(model, self.tasks, config)
        self.data = data.to(self.trainer.device)  # as Trainer.fit does
        self.generator = torch.Generator().manual_seed(0)
        self.steps = setup.steps
        # Multiply-adds per row of the forward pass: one per weight of the linear layers (the
        # stacked heads counted with their padding to the widest output, as they are computed).
        self.macs = sum(p.numel() for name, p in model.named_parameters() if "bias" not in name)

    def epoch(self) -> tuple[float, float]:
        """Seconds per step of one epoch of ``Trainer._train_epoch`` (the training loop): wall
        time, and this process's CPU time (all threads) to tell a busy machine apart."""
        started, cpu = time.perf_counter(), time.process_time()
        self.trainer._train_epoch(self.data, self.generator)  # ends by reading the losses back
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        return wall / self.steps, cpu / self.steps


def quantiles(samples: list[tuple[float, float]]) -> dict[str, float]:
    wall = [w for w, _ in samples]
    q = statistics.quantiles(wall, n=4) if len(wall) > 1 else wall * 3
    return {
        "median_ms": 1e3 * statistics.median(wall),
        "q1_ms": 1e3 * q[0],
        "q3_ms": 1e3 * q[2],
        "cpu_median_ms": 1e3 * statistics.median(c for _, c in samples),
    }


def run_variant(
    kind: str, head: list[int], counts: list[int], setup: Setup, log: Any
) -> list[dict[str, Any]]:
    stl = Timed(1, kind, head, setup)
    for _ in range(setup.warmup):
        stl.epoch()
    rows = []
    for n_tasks in counts:
        mtl = Timed(n_tasks, kind, head, setup)
        for _ in range(setup.warmup):
            mtl.epoch()
            stl.epoch()
        stl_s, mtl_s = [], []
        for _ in range(setup.repeats):  # alternate, so both see the same machine
            stl_s.append(stl.epoch())
            mtl_s.append(mtl.epoch())
        s, m = quantiles(stl_s), quantiles(mtl_s)
        ratio = m["median_ms"] / s["median_ms"]
        # With one thread, wall time well above CPU time means the process was waiting for a
        # core: another program was busy and the timings are noisier than usual.
        wall_over_cpu = sum(w for w, _ in stl_s + mtl_s) / sum(c for _, c in stl_s + mtl_s)
        busy = torch.get_num_threads() == 1 and wall_over_cpu > 1.1
        rows.append(
            {
                "tasks": n_tasks,
                "stl": s,
                "mtl": m,
                "ratio": ratio,
                "paired_ratio": statistics.median(
                    [b[0] / a[0] for a, b in zip(stl_s, mtl_s, strict=True)]
                ),
                "wall_over_cpu": wall_over_cpu,
                "work": mtl.macs / stl.macs,
                "meets_goal": ratio <= GOAL,
                "stl_task_kind": stl.tasks[0].kind,
                "mtl_task_kinds": sorted({t.kind for t in mtl.tasks}),
            }
        )
        log(
            f"{n_tasks:>4}  {s['median_ms']:>8.3f}  {m['median_ms']:>8.3f}  {ratio:>6.2f}x"
            f"  {mtl.macs / stl.macs:>6.2f}x{'' if ratio <= GOAL else '  > goal'}"
            f"{f'  (machine busy: wall/CPU {wall_over_cpu:.2f})' if busy else ''}"
        )
    return rows


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "polytask": polytask.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "step_cost.json",
        help="where to write the JSON results (default: %(default)s)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1)")
    parser.add_argument("--device", default="cpu", help="train.device for both models (cpu)")
    parser.add_argument(
        "--tasks", default=",".join(map(str, TASK_COUNTS)), help="task counts T (%(default)s)"
    )
    parser.add_argument(
        "--kinds",
        default="binary,mixed",
        help="binary, mixed (regression, binary, count, multiclass in turn) (%(default)s)",
    )
    parser.add_argument(
        "--heads", default="none,32", help="head hidden widths per variant: none, 32, 64x32, ..."
    )
    parser.add_argument("--repeats", type=int, help="timed epochs per model and T")
    parser.add_argument("--steps", type=int, help="batches per timed epoch")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    setup = Setup(device=args.device)
    if args.quick:  # short epochs, but enough of them for a median that shrugs off a hiccup
        setup = replace(setup, steps=4, warmup=2, repeats=11)
    setup = replace(setup, steps=args.steps or setup.steps, repeats=args.repeats or setup.repeats)
    counts = [int(t) for t in args.tasks.split(",")]
    heads = [[] if h == "none" else [int(w) for w in h.split("x")] for h in args.heads.split(",")]
    kinds = args.kinds.split(",")

    info = machine()
    print(
        f"polytask {info['polytask']}, torch {info['torch']}, {info['threads']} thread(s), "
        f"{info['cpu']} ({info['cpu_count']} CPUs), device {setup.device}"
    )
    print(
        f"trunk {setup.features} -> {list(setup.shared)}, batch {setup.batch_size}, Adam; "
        f"median of {setup.repeats} epochs of {setup.steps} steps after {setup.warmup} warm-up"
    )
    started = time.perf_counter()
    variants = []
    for kind in kinds:
        for head in heads:
            stl_kind = make_tasks(1, kind)[0].kind
            print(f"\n{kind} tasks, head {head or '[] (linear)'}; STL: one {stl_kind} task")
            print(f"{'T':>4}  {'STL':>8}  {'MTL':>8}  {'ratio':>7}  {'work':>7}")
            print(f"{'':>4}  {'ms/step':>8}  {'ms/step':>8}  {'MTL/STL':>7}  {'MACs':>7}")
            rows = run_variant(kind, head, counts, setup, print)
            variants.append({"kind": kind, "head": head, "rows": rows})
    elapsed = time.perf_counter() - started

    failing = [
        f"{v['kind']}/head{v['head']}: T={r['tasks']} ({r['ratio']:.2f}x)"
        for v in variants
        for r in v["rows"]
        if not r["meets_goal"]
    ]
    print(f"\ngoal: MTL step <= {GOAL}x one STL step for every T")
    print("met for every variant" if not failing else "not met for " + "; ".join(failing))
    result = {
        "benchmark": "step_cost",
        "goal_ratio": GOAL,
        "command": " ".join(["python", "benchmarks/step_cost.py", *(argv or sys.argv[1:])]),
        "quick": args.quick,
        "setup": {**setup.__dict__, "shared": list(setup.shared)},
        "machine": info,
        "seconds": elapsed,
        "variants": variants,
        "goal_met": not failing,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
