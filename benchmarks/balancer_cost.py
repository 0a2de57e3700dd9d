"""Step cost of every balancer relative to ``fixed``, vs the number of tasks T, both levels.

One step = forward, masked losses, ``balancer.backward``, optimizer step, on an MLP trunk with
synthetic regression tasks. Prints a table (median step time ÷ the ``fixed`` step's, same T)
and writes ``benchmarks/results/balancer_cost.json``.

    python benchmarks/balancer_cost.py            # T = 2, 4, 8, 10, 16, 32
    python benchmarks/balancer_cost.py --quick    # T = 2, 10; fewer steps (< 1 min)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's polytask

import polytask as pt  # noqa: E402
from polytask.balancing import BALANCERS, make_balancer  # noqa: E402
from polytask.models import HardSharing  # noqa: E402
from polytask.models.layers import MLP, TabularInput  # noqa: E402


class Stepper:
    """One model + balancer + optimizer on a fixed synthetic batch; ``step()`` times one step."""

    def __init__(self, name: str, options: dict, n_tasks: int, args) -> None:
        torch.manual_seed(0)
        self.names = [f"t{i}" for i in range(n_tasks)]
        tasks = [pt.Task(name=n, kind="regression") for n in self.names]
        self.model = HardSharing(
            encoder=TabularInput(args.features, [], None),
            trunk=MLP(args.features, [args.width] * args.depth),
            out_dims={n: 1 for n in self.names},
        )
        self.balancer = make_balancer(name, tasks, options)
        params = list(self.model.parameters()) + self.balancer.parameters()
        self.opt = torch.optim.Adam(params, lr=1e-3)
        self.x = torch.randn(args.batch, args.features)
        self.y = torch.randn(args.batch, n_tasks)

    def step(self) -> float:
        started = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        out, h = self.model(self.x, packed=True, features=True)
        losses = dict(
            zip(self.names, (out[:, :, 0] - self.y).pow(2).mean(0).unbind(0), strict=True)
        )
        self.balancer.backward(losses, model=self.model, features=h, outputs=out)
        self.opt.step()
        return time.perf_counter() - started


def paired_times(
    name: str, options: dict, n_tasks: int, *, steps: int, args
) -> tuple[list[float], list[float]]:
    """Step times of ``fixed`` and of the method, taken in alternation (after 3 warm-up steps
    each) so that drift in the machine's speed hits both alike."""
    fixed, method = Stepper("fixed", {}, n_tasks, args), Stepper(name, options, n_tasks, args)
    base, times = [], []
    for i in range(steps + 3):
        b, t = fixed.step(), method.step()
        if i >= 3:
            base.append(b)
            times.append(t)
    return base, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tasks", type=int, nargs="+")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/balancer_cost.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*not DPP.*")
    sizes = args.tasks or ([2, 10] if args.quick else [2, 4, 8, 10, 16, 32])
    steps = args.steps or (5 if args.quick else 20)
    runs: list[tuple[str, str, dict]] = []
    for name, cls in BALANCERS.items():
        if cls.sets_grads:
            for level in ("parameters", "representation"):
                runs.append((name, level, {"level": level}))
        else:
            runs.append((name, "-", {}))
    results = []
    for n_tasks in sizes:
        for name, level, options in runs:
            base, times = paired_times(name, options, n_tasks, steps=steps, args=args)
            med, base_med = statistics.median(times), statistics.median(base)
            results.append(
                {
                    "balancer": name,
                    "level": level,
                    "tasks": n_tasks,
                    "median_ms": 1e3 * med,
                    "fixed_ms": 1e3 * base_med,
                    "ratio": med / base_med,
                }
            )
            print(f"T={n_tasks:<3} {name:<12} {level:<15} {med / base_med:6.2f}", flush=True)
    header = f"{'balancer':<12} {'level':<15}" + "".join(f"{'T=' + str(t):>8}" for t in sizes)
    print(f"step time ÷ fixed step time, interleaved (median of {steps} steps, CPU,", end=" ")
    print(f"{args.threads} threads,")
    print(
        f"MLP {args.features}→{args.width}×{args.depth}, batch {args.batch}, "
        f"torch {torch.__version__})"
    )
    print(header)
    for name, level, _ in runs:
        row = {
            r["tasks"]: r["ratio"] for r in results if (r["balancer"], r["level"]) == (name, level)
        }
        print(f"{name:<12} {level:<15}" + "".join(f"{row[t]:>8.2f}" for t in sizes))
    fixed = {r["tasks"]: r["fixed_ms"] for r in results if r["balancer"] == "fixed"}
    print(f"{'fixed (ms)':<28}" + "".join(f"{fixed[t]:>8.2f}" for t in sizes))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in vars(args).items() if k != "out"}
    meta.update(steps=steps, torch=torch.__version__, machine=platform.machine())
    out.write_text(json.dumps({"settings": meta, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
