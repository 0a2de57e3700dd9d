"""Cost and quality of the aggregators' many-task options, ``every: k`` and ``subset: m``.

Each aggregator at the parameter level (the exact, expensive one) is trained with its default
step (``every: 1``, all tasks), with weights recomputed every 4 or 16 steps, and on a random
subset of tasks per step; ``fixed`` (equal weights) is the reference. Same model, data, batch
order and epochs for all; one thread; seeds vary the initialization and batch order.

- ``synthetic``: T = 40 regression tasks on 16 features, y_t = a_tᵀ tanh(Bx) + noise with
  task vectors a_t drawn around 4 cluster centres (some clusters opposed, so gradients
  conflict); 2,000 training and 2,000 test rows; MLP 16 → 64 → 64, linear heads; score: mean
  test MSE ÷ the task's variance (lower is better);
- ``yeast``: the side-by-side protocol (MLP 103 → 256 → 256, 14 linear heads, Adam 1e-3,
  batch 128) on Yeast's split; score: mean test AUC over the 14 tasks (higher is better).

The methods of one seed train side by side, one epoch each in turn (drift in the machine's
speed hits all alike). Epoch time is the median training epoch (seconds); prints a table with
mean ± std over seeds and writes JSON.

    python benchmarks/many_task_options.py                      # both, 3 seeds
    python benchmarks/many_task_options.py --data yeast --seeds 2
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

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's polytask

import polytask as pt  # noqa: E402
from polytask.balancing import make_balancer  # noqa: E402
from polytask.datasets import load_dataset  # noqa: E402
from polytask.models import HardSharing  # noqa: E402
from polytask.models.layers import MLP, TabularInput  # noqa: E402

AGGREGATORS = ["upgrad", "nash_mtl", "cagrad"]


def variants(n_tasks: int) -> list[tuple[str, dict]]:
    subset = max(3, n_tasks // 4)
    out: list[tuple[str, dict]] = [("-", {})]
    out += [(f"every={k}", {"every": k}) for k in (4, 16)]
    out += [
        (f"subset={subset}", {"subset": subset}),
        (f"subset={subset},every=4", {"subset": subset, "every": 4}),
    ]
    return out


def synthetic(seed: int = 0, n_tasks: int = 40, rows: int = 4000, features: int = 16):
    g = np.random.default_rng(seed)
    basis = g.normal(size=(features, 8)) / np.sqrt(features)
    centres = g.normal(size=(4, 8))
    centres[1] = -centres[0]  # two opposed clusters: conflicting gradients
    task_vectors = centres[np.arange(n_tasks) % 4] + 0.5 * g.normal(size=(n_tasks, 8))
    x = g.normal(size=(rows, features))
    y = np.tanh(x @ basis) @ task_vectors.T + 0.3 * g.normal(size=(rows, n_tasks))
    half = rows // 2
    return x[:half], y[:half], x[half:], y[half:]


def yeast():
    ds = load_dataset("yeast")
    labels = [t.name for t in ds.tasks]
    parts = []
    for split in ("train", "test"):
        frame = ds.frame.iloc[ds.splits[split]]
        parts += [frame.drop(columns=labels).to_numpy(float), frame[labels].to_numpy(float)]
    return tuple(parts)


class Training:
    """One method's model, balancer, optimizer and batch order; ``epoch()`` trains one epoch
    and returns its seconds, ``score()`` the test score."""

    def __init__(self, data, name, options, *, kind, hidden, epochs, batch, seed) -> None:
        x_train, y_train, x_test, y_test = (torch.tensor(a, dtype=torch.float32) for a in data)
        mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
        self.x_train, self.x_test = (x_train - mean) / std, (x_test - mean) / std
        self.y_mean, self.y_std = y_train.mean(0), y_train.std(0)
        if kind == "regression":
            y_train = (y_train - self.y_mean) / self.y_std
        self.y_train, self.y_test, self.kind, self.batch = y_train, y_test, kind, batch
        self.names = [f"t{i}" for i in range(y_train.shape[1])]
        torch.manual_seed(seed)
        self.model = HardSharing(
            encoder=TabularInput(x_train.shape[1], [], None),
            trunk=MLP(x_train.shape[1], hidden),
            out_dims={n: 1 for n in self.names},
        )
        tasks = [pt.Task(name=n, kind=kind) for n in self.names]
        self.balancer = make_balancer(name, tasks, options)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.order = torch.Generator().manual_seed(seed)

    def epoch(self) -> float:
        started = time.perf_counter()
        for idx in torch.randperm(len(self.x_train), generator=self.order).split(self.batch):
            self.opt.zero_grad(set_to_none=True)
            out, h = self.model(self.x_train[idx], packed=True, features=True)
            if self.kind == "regression":
                per_task = (out[:, :, 0] - self.y_train[idx]).pow(2).mean(0)
            else:
                per_task = torch.nn.functional.binary_cross_entropy_with_logits(
                    out[:, :, 0], self.y_train[idx], reduction="none"
                ).mean(0)
            losses = dict(zip(self.names, per_task.unbind(0), strict=True))
            self.balancer.backward(losses, model=self.model, features=h, outputs=out)
            self.opt.step()
        return time.perf_counter() - started

    def score(self) -> float:
        with torch.no_grad():
            pred = self.model(self.x_test, packed=True)[:, :, 0]
        if self.kind == "regression":
            pred = pred * self.y_std + self.y_mean
            return float(((pred - self.y_test).pow(2).mean(0) / self.y_test.var(0)).mean())
        from sklearn.metrics import roc_auc_score

        y = self.y_test.numpy()
        return float(np.mean([roc_auc_score(y[:, t], pred[:, t]) for t in range(y.shape[1])]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["synthetic", "yeast"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--methods", nargs="+", default=AGGREGATORS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/many_task_options.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    setups = {
        "synthetic": dict(kind="regression", hidden=[64, 64], epochs=args.epochs or 20, batch=128),
        "yeast": dict(kind="binary", hidden=[256, 256], epochs=args.epochs or 15, batch=128),
    }
    results = []
    for data_name in args.data:
        data = synthetic() if data_name == "synthetic" else yeast()
        setup = setups[data_name]
        n_tasks = data[1].shape[1]
        runs = [("fixed", "-", {})] + [
            (m, label, {"level": "parameters", **o})
            for m in args.methods
            for label, o in variants(n_tasks)
        ]
        for seed in range(args.seeds):
            # every method of one seed trained side by side, one epoch each in turn, so that
            # drift in the (shared) machine's speed hits all alike
            trainings = [Training(data, n, o, seed=seed, **setup) for n, _, o in runs]
            times: list[list[float]] = [[] for _ in runs]
            for _ in range(setup["epochs"]):
                for k, training in enumerate(trainings):
                    times[k].append(training.epoch())
            for (name, label, _), training, t in zip(runs, trainings, times, strict=True):
                epoch, score = statistics.median(t), training.score()
                results.append(
                    {
                        "data": data_name,
                        "tasks": n_tasks,
                        "method": name,
                        "variant": label,
                        "seed": seed,
                        "epoch_s": epoch,
                        "score": score,
                    }
                )
                print(
                    f"{data_name} {name} {label} seed {seed}: {epoch:.3f} s/epoch, "
                    f"score {score:.4f}",
                    flush=True,
                )
    print(
        f"\none thread, torch {torch.__version__}; mean ± std over {args.seeds} seeds; "
        "epoch: median"
    )
    print("epoch seconds; ÷ default: the method's own every=1 epoch; score: synthetic = mean")
    print("normalized test MSE (lower better), yeast = mean test AUC (higher better)")
    print(
        f"{'data':<10}{'method':<10}{'variant':<20}{'epoch (s)':>16}{'÷ default':>10}{'score':>20}"
    )
    for data_name in args.data:
        for name in ["fixed", *args.methods]:
            base = None
            for label in dict.fromkeys(
                r["variant"] for r in results if r["data"] == data_name and r["method"] == name
            ):
                rows = [
                    r
                    for r in results
                    if (r["data"], r["method"], r["variant"]) == (data_name, name, label)
                ]
                e = [r["epoch_s"] for r in rows]
                s = [r["score"] for r in rows]
                base = base or float(np.mean(e))
                print(
                    f"{data_name:<10}{name:<10}{label:<20}{np.mean(e):>9.3f} ± {np.std(e):.3f}"
                    f"{np.mean(e) / base:>10.2f}{np.mean(s):>13.4f} ± {np.std(s):.4f}"
                )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    settings.update(setups=setups, torch=torch.__version__, machine=platform.machine())
    out.write_text(json.dumps({"settings": settings, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
