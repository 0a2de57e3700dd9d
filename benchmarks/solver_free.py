"""Epoch and step cost of the Gramian-solved aggregators (Nash-MTL, CAGrad) vs ``upgrad``.

Two measurements, each method timed in alternation with the others so that drift in the
machine's speed hits all alike (one thread):

- **yeast**: the side-by-side protocol of issue 13 — Yeast's training split (1,450 rows),
  MLP 103 → 256 → 256, 14 linear heads, BCE, Adam 1e-3, batch 128, fixed batch order; one
  epoch = every batch once; median over ``--rounds`` epochs after one warm-up epoch;
- **synthetic T=10**: ``benchmarks/balancer_cost.py``'s step (MLP 32 → 256 × 3, batch 256,
  10 regression tasks), median step time ÷ the ``fixed`` step's.

The protocol's pieces (``yeast_training``, ``make_model``, ``fixed_batches``, ``Run``,
``timed``) are shared with ``benchmarks/side_by_side.py``.

``--polytask DIR`` measures another checkout (e.g. a ``git worktree`` of the commit before the
solvers moved into torch), so before and after run on the same machine:

    python benchmarks/solver_free.py                          # this checkout
    git archive COMMIT polytask | tar -x -C /tmp/before-checkout
    python benchmarks/solver_free.py --polytask /tmp/before-checkout --label COMMIT \
        --out benchmarks/results/solver_free_before.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

METHODS = [
    ("fixed", {}),
    ("upgrad@params", {"level": "parameters"}),
    ("nash_mtl@params", {"level": "parameters"}),
    ("cagrad@params", {"level": "parameters"}),
    ("nash_mtl@repr", {"level": "representation"}),
    ("cagrad@repr", {"level": "representation"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polytask", default=str(ROOT), help="checkout whose polytask to time")
    parser.add_argument("--label", help="what --polytask is (default: its git commit)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/solver_free.json")
    args = parser.parse_args()
    sys.path.insert(0, args.polytask)
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    commit = args.label or _commit(Path(args.polytask))

    x, y = yeast_training()
    runs = {k: Run(k, o, x, y, [256, 256], 128) for k, o in METHODS}
    yeast = medians(timed(runs, args.rounds))

    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(256, 32, generator=g), torch.randn(256, 10, generator=g)
    synthetic_runs = {k: Run(k, o, xs, ys, [256] * 3, 256) for k, o in METHODS}
    # one batch per "epoch": a step; regression targets through BCE's logits are fine for cost
    synthetic = medians(timed(synthetic_runs, args.steps))

    solves = _solve_times(torch)

    print(f"polytask at {args.polytask} ({commit}); torch {torch.__version__}, ", end="")
    print(f"{args.threads} thread(s), medians of {args.rounds} epochs / {args.steps} steps")
    print(f"{'method':<18}{'yeast epoch (s)':>16}{'÷ upgrad@params':>17}{'T=10 step ÷ fixed':>19}")
    for k, _ in METHODS:
        print(
            f"{k:<18}{yeast[k]:>16.3f}{yeast[k] / yeast['upgrad@params']:>17.2f}"
            f"{synthetic[k] / synthetic['fixed']:>19.2f}"
        )
    for k, v in solves.items():
        print(f"one solve on a 14×14 Gramian, {k}: {1e3 * v:.2f} ms (median of 20)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    settings.update(commit=commit, torch=torch.__version__, machine=platform.machine())
    results = {
        "yeast_epoch_s": yeast,
        "synthetic_T10_step_s": synthetic,
        "yeast_vs_upgrad_params": {k: v / yeast["upgrad@params"] for k, v in yeast.items()},
        "synthetic_vs_fixed": {k: v / synthetic["fixed"] for k, v in synthetic.items()},
        "solve_s": solves,
    }
    out.write_text(json.dumps({"settings": settings, "results": results}, indent=2))
    print(f"wrote {out}")


def yeast_training() -> tuple[Any, Any]:
    """Yeast's training split as float tensors: standardized features x (1,450 × 103) and the
    14 labels y (1,450 × 14)."""
    import torch

    from polytask.datasets import load_dataset

    ds = load_dataset("yeast")
    frame = ds.frame.iloc[ds.splits["train"]]
    labels = [t.name for t in ds.tasks]
    x = torch.tensor(frame.drop(columns=labels).to_numpy(), dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0).clamp(min=1e-6)
    y = torch.tensor(frame[labels].to_numpy(), dtype=torch.float32)
    return x, y


def make_model(n_features: int, n_tasks: int, hidden: list[int]) -> Any:
    """The protocol's hard-sharing MLP (trunk ``hidden``, one linear head per task ``t{i}``),
    from seed 0: every call gives the same initial weights."""
    import torch

    from polytask.models import HardSharing
    from polytask.models.layers import MLP, TabularInput

    torch.manual_seed(0)
    return HardSharing(
        encoder=TabularInput(n_features, [], None),
        trunk=MLP(n_features, hidden),
        out_dims={f"t{i}": 1 for i in range(n_tasks)},
    )


def fixed_batches(x: Any, y: Any, batch: int) -> list[tuple[Any, Any]]:
    """The protocol's batches: one shuffle from seed 0, the same for every method."""
    import torch

    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return [(x[i], y[i]) for i in order.split(batch)]


class Run:
    """Model + balancer + Adam on fixed batches; ``epoch()`` times one pass over them."""

    def __init__(self, label, options, x, y, hidden, batch) -> None:
        import torch

        import polytask as pt
        from polytask.balancing import make_balancer

        self.model = make_model(x.shape[1], y.shape[1], hidden)
        self.names = list(self.model.task_names)
        tasks = [pt.Task(name=n, kind="binary") for n in self.names]
        self.balancer = make_balancer(label.split("@")[0], tasks, options)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.batches = fixed_batches(x, y, batch)

    def backward(self, xb, yb) -> dict[str, float]:
        """One step's gradients (into ``.grad``), the balancer's weights returned."""
        import torch

        self.opt.zero_grad(set_to_none=True)
        out, h = self.model(xb, packed=True, features=True)
        per_task = torch.nn.functional.binary_cross_entropy_with_logits(
            out[:, :, 0], yb, reduction="none"
        ).mean(0)
        losses = dict(zip(self.names, per_task.unbind(0), strict=True))
        return self.balancer.backward(losses, model=self.model, features=h, outputs=out)

    def epoch(self, limit: int | None = None) -> float:
        started = time.perf_counter()
        for xb, yb in self.batches[:limit]:
            self.backward(xb, yb)
            self.opt.step()
        return time.perf_counter() - started


def timed(runs: Mapping[str, Any], rounds: int, limit: int | None = None) -> dict[str, list[float]]:
    """Each run's epoch times (s) over ``rounds`` rounds after one warm-up epoch, the runs taking
    turns within every round so that drift in the machine's speed hits all alike."""
    for run in runs.values():
        run.epoch(limit)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, run in runs.items():
            times[k].append(run.epoch(limit))
    return times


def medians(times: Mapping[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in times.items()}


def _solve_times(torch) -> dict[str, float]:
    """Median time of one weighting solve on the Gramian of a random 14 × 93,000 Jacobian
    (Yeast's parameter count): torchjd's cvxpy solves, and polytask's where it has them
    (Nash-MTL from a cold start each time: an upper bound of a training step's solve)."""
    from torchjd.aggregation import CAGrad, NashMTL

    jac = torch.randn(14, 93_000, generator=torch.Generator().manual_seed(0))
    gram = jac @ jac.T
    nash = NashMTL(n_tasks=14)  # one instance, as in training: its problem is compiled once
    solvers = {
        "torchjd nash_mtl (cvxpy, compiled, warm)": lambda: nash.weighting(jac),
        "torchjd cagrad (cvxpy)": lambda: CAGrad(c=0.4).gramian_weighting(gram),
    }
    try:
        from polytask.balancing import gramian
    except ImportError:  # a checkout before the Gramian solvers
        gramian = None
    if gramian is not None:
        options = dict(max_norm=1.0, update_weights_every=1, max_iter=50, ridge=1e-6)
        solvers["polytask nash_mtl (cold start)"] = lambda: gramian.NashMTL(14, **options).weights(
            gram
        )
        solvers["polytask cagrad"] = lambda: gramian.CAGrad(0.4).weights(gram)
    times = {}
    for name, solve in solvers.items():
        solve()
        runs = []
        for _ in range(20):
            started = time.perf_counter()
            solve()
            runs.append(time.perf_counter() - started)
        times[name] = statistics.median(runs)
    return times


def _commit(path: Path) -> str:
    import subprocess

    done = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


if __name__ == "__main__":
    main()
