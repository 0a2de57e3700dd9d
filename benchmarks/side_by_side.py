"""Every polytask aggregator's Yeast epoch vs ``upgrad@params`` and vs LibMTL's same method.

The side-by-side protocol of issue 13 (built by ``benchmarks/solver_free.py``): Yeast's training
split (1,450 rows), MLP 103 → 256 → 256, 14 linear heads, BCE, Adam 1e-3, batch 128, one fixed
batch order; one epoch = every batch once; one thread; every method's epoch taken in turn within
each round (polytask's and LibMTL's runs alike), median over ``--rounds`` rounds after one
warm-up epoch. Two goals:

- **A**: every aggregator's epoch at ``level: parameters`` ≤ 1.5× the ``upgrad@params`` epoch
  (``fixed`` and the representation level are reported for reference);
- **B**: every aggregator ≥ 2× faster than LibMTL 1.1.5's epoch for the same method: LibMTL's
  ``weighting.backward(losses, **kwargs)`` and ``optimizer.step()`` on the same model (its ``HPS``
  architecture around the same trunk and heads, the same initial weights), data, batches and
  hyperparameters from ``LibMTL/config.py``, the step its ``Trainer.train`` takes per batch
  without its data loaders and metrics.

LibMTL is optional (``pip install --no-deps LibMTL==1.1.5``; its package ``__init__`` needs
torchvision, which this script never imports: it loads LibMTL's ``weighting`` and
``architecture`` modules alone). Without it only polytask's part runs.

    python benchmarks/side_by_side.py                 # full run, JSON in benchmarks/results/
    python benchmarks/side_by_side.py --quick         # 2 rounds, 4 methods (well under a minute)
    python benchmarks/side_by_side.py --check         # the harness check alone
    python benchmarks/side_by_side.py --commit HEAD   # polytask as committed, not the work tree
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from solver_free import Run, fixed_batches, make_model, medians, timed, yeast_training

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = [256, 256]
BATCH = 128
INSTALL = "pip install --no-deps LibMTL==1.1.5"
AGGREGATORS = [
    "mgda", "pcgrad", "cagrad", "imtl_g", "graddrop", "gradvac", "nash_mtl", "aligned_mtl",
    "upgrad", "fairgrad",
]  # fmt: skip  # benchmarks/quality.py's AGGREGATORS
QUICK = ["fixed", "upgrad", "mgda", "pcgrad"]
LEVELS = {"params": "parameters", "repr": "representation"}

# polytask balancer → LibMTL 1.1.5's weighting, its kwargs (LibMTL/config.py's defaults) and the
# levels it supports (rep_grad False / True). LibMTL's IMTL is IMTL-L + IMTL-G: at its initial
# loss scales (0) its step is IMTL-G's, and the scales then learn.
LIBMTL: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "fixed": ("EW", {}, ("params",)),
    "mgda": ("MGDA", {"mgda_gn": "none"}, ("params", "repr")),
    "pcgrad": ("PCGrad", {}, ("params",)),
    "cagrad": ("CAGrad", {"calpha": 0.5, "rescale": 1}, ("params",)),
    "imtl_g": ("IMTL", {}, ("params", "repr")),
    "graddrop": ("GradDrop", {"leak": 0.0}, ("repr",)),
    "gradvac": ("GradVac", {"beta": 0.5}, ("params",)),
}
# LibMTL 1.1.5's CAGrad objective reshapes the weights to (1, 3): it runs with 3 tasks only.
# The harness also times that backward with the task count in place of the 3 ("CAGrad_T").
CAGRAD_T = "cagrad@params (LibMTL's 3 → T)"

# Harness check, one batch, fresh models: (polytask balancer, its options, LibMTL weighting,
# task count). Deterministic at these T: MGDA; PCGrad and GradVac (first step) with two tasks
# (their random order is then irrelevant); IMTL-G; CAGrad is LibMTL's at T = 3 with c = 0.5.
# MGDA at T = 14 twice: polytask's default Frank-Wolfe tolerance (torchjd's epsilon 1e-3, 100
# steps) and a tight one, to tell the tolerance from a difference of method.
CHECKS: list[tuple[str, dict[str, Any], str, int]] = [
    ("fixed", {}, "EW", 14),
    ("mgda", {"level": "parameters"}, "MGDA", 14),
    ("mgda", {"level": "parameters", "epsilon": 1e-8, "max_iters": 10_000}, "MGDA", 14),
    ("mgda", {"level": "parameters"}, "MGDA", 2),
    ("pcgrad", {"level": "parameters"}, "PCGrad", 2),
    ("imtl_g", {"level": "parameters"}, "IMTL", 14),
    ("gradvac", {"level": "parameters"}, "GradVac", 2),
    ("cagrad", {"level": "parameters", "c": 0.5}, "CAGrad", 3),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"2 rounds, methods {QUICK}")
    parser.add_argument("--check", action="store_true", help="only the harness check")
    parser.add_argument("--rounds", type=int, help="timed epochs per method (5; --quick 2)")
    parser.add_argument("--commit", help="time polytask as committed at this revision")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="JSON (benchmarks/results/side_by_side.json)")
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    out = args.out or ROOT / "benchmarks/results" / (
        "quick/side_by_side.json" if args.quick else "side_by_side.json"
    )
    source, commit = _polytask_source(args.commit)
    _import_polytask(source)  # before step_cost, which would import ROOT's
    import torch
    from step_cost import machine

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    lib = load_libmtl()
    if lib is None:
        print(f"LibMTL is not importable: polytask's part only (install it with: {INSTALL})")
    x, y = yeast_training()
    checks = check(lib, x, y) if lib is not None else []
    if args.check:
        return

    names = QUICK if args.quick else ["fixed", *AGGREGATORS]
    rows = _rows(names)
    runs: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for label, balancer, level, libmtl in rows:
        runs[label] = _polytask_run(balancer, level, x, y)
        if lib is not None and libmtl is not None:
            try:  # a trial step on a throwaway run: a method LibMTL cannot run is reported
                LibMTLRun(lib, libmtl, x, y).backward(*LibMTLRun.batches_of(x, y)[0])
            except Exception as exc:  # noqa: BLE001  (LibMTL's own failure, reported as such)
                failed[libmtl] = f"fails: {type(exc).__name__}: {exc}"
                if balancer == "cagrad":
                    runs[CAGRAD_T] = LibMTLRun(lib, "CAGrad_T@params", x, y)
                continue
            runs[libmtl] = LibMTLRun(lib, libmtl, x, y)
    load_before = os.getloadavg()
    times = timed(runs, rounds)
    load_after = os.getloadavg()
    epoch = medians(times)

    table = _table(rows, times, failed, lib is not None)
    print(f"polytask {commit}, torch {torch.__version__}, {args.threads} thread(s); Yeast")
    print(f"epochs (12 batches of ≤ {BATCH}): median ± median absolute deviation over {rounds}")
    print("rounds after a warm-up epoch; a ratio is the median over rounds of the ratio of the")
    print("two epochs within a round (range: its min–max over rounds)")
    print(f"load average before/after: {_load(load_before)} / {_load(load_after)}")
    _print_table(table)
    verdicts = _verdicts(table)
    for goal, verdict in verdicts.items():
        print(f"goal {goal}: {verdict['text']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "rounds": rounds,
        "quick": args.quick,
        "threads": args.threads,
        "hidden": HIDDEN,
        "batch": BATCH,
        "commit": commit,
        "libmtl": _libmtl_version() if lib is not None else None,
        "libmtl_kwargs": {v[0]: v[1] for v in LIBMTL.values()},
    }
    result = {
        "settings": settings,
        "machine": machine(),
        "load_average_before_after": [load_before, load_after],
        "epoch_s": epoch,
        "rounds_s": times,
        "table": table,
        "verdicts": verdicts,
        "checks": checks,
    }
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


def load_libmtl() -> dict[str, Any] | None:
    """LibMTL's weighting classes, ``HPS`` and ``AbsLoss``, loaded without running its package
    ``__init__`` (which imports torchvision); None when LibMTL is not installed."""
    spec = importlib.util.find_spec("LibMTL")  # finds, does not import, a top-level package
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    for name, path in [
        ("LibMTL", root),
        ("LibMTL.weighting", root / "weighting"),
        ("LibMTL.architecture", root / "architecture"),
    ]:
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules.setdefault(name, module)
    lib = {
        "HPS": importlib.import_module("LibMTL.architecture.HPS").HPS,
        "AbsLoss": importlib.import_module("LibMTL.loss").AbsLoss,
    }
    for _, (cls, _, _) in LIBMTL.items():
        lib[cls] = getattr(importlib.import_module(f"LibMTL.weighting.{cls}"), cls)
    lib["CAGrad_T"] = _cagrad_any_t(lib["CAGrad"])
    return lib


class LibMTLRun:
    """LibMTL's per-batch step on the protocol's model, data and batches.

    As ``LibMTL.Trainer``: the model is ``class MTLmodel(HPS, Weighting)`` (encoder: the
    protocol's trunk; decoders: its heads as ``nn.Linear``, the same initial weights as
    polytask's runs), the optimizer Adam over all its parameters, and a step is forward →
    per-task losses into a ``torch.zeros(T)`` vector (``AbsLoss._update_loss``, which also reads
    each loss back) → ``optimizer.zero_grad()`` → ``model.backward(losses, **weight_args)`` →
    ``optimizer.step()``.

    LibMTL 1.1.5 was written for torch 1.x, whose ``zero_grad`` zeroed gradients in place; torch
    2's sets them to None, and LibMTL's parameter-level methods then fail writing ``param.grad
    .data``. The run zeroes in place, as LibMTL's torch did.
    """

    def __init__(self, lib: Mapping[str, Any], label: str, x: Any, y: Any) -> None:
        import torch

        method, level = label.split("@")
        # CAGrad_T: LibMTL's CAGrad with the task count fixed, its kwargs
        kwargs = {v[0]: v[1] for v in LIBMTL.values()}.get(method, LIBMTL["cagrad"][1])
        source = make_model(x.shape[1], y.shape[1], HIDDEN)
        self.names = list(source.task_names)
        weight, bias = source.heads.groups[0].weights[0], source.heads.groups[0].biases[0]
        decoders = torch.nn.ModuleDict()
        with torch.no_grad():
            for t, name in enumerate(self.names):
                head = torch.nn.Linear(weight.shape[1], weight.shape[2])
                head.weight.copy_(weight[t].T)
                head.bias.copy_(bias[t])
                decoders[name] = head

        class MTLmodel(lib["HPS"], lib[method]):  # as LibMTL.Trainer._prepare_model
            def __init__(self, **options: Any) -> None:
                super().__init__(**options)
                self.init_param()

            def zero_grad_share_params(self) -> None:
                self.encoder.zero_grad(set_to_none=False)

        self.model = MTLmodel(
            task_name=self.names,
            encoder_class=lambda: source.trunk,
            decoders=decoders,
            rep_grad=LEVELS[level] == "representation",
            multi_input=False,
            device=torch.device("cpu"),
        )
        self.kwargs = kwargs
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.losses = {n: _bce_loss(lib["AbsLoss"]) for n in self.names}
        self.batches = self.batches_of(x, y)
        random.seed(0)  # PCGrad's and GradVac's task orders

    @staticmethod
    def batches_of(x: Any, y: Any) -> list[tuple[Any, dict[str, Any]]]:
        """The protocol's batches, labels as LibMTL's loaders give them (a dict by task)."""
        return [
            (xb, {f"t{t}": yb[:, t : t + 1] for t in range(yb.shape[1])})
            for xb, yb in fixed_batches(x, y, BATCH)
        ]

    def backward(self, xb: Any, labels: Mapping[str, Any]) -> Any:
        import torch

        preds = self.model(xb)
        losses = torch.zeros(len(self.names))
        for t, name in enumerate(self.names):
            losses[t] = self.losses[name]._update_loss(preds[name], labels[name])
        self.opt.zero_grad()
        return self.model.backward(losses, **self.kwargs)

    def epoch(self, limit: int | None = None) -> float:
        started = time.perf_counter()
        for xb, labels in self.batches[:limit]:
            self.backward(xb, labels)
            self.opt.step()
        for loss in self.losses.values():
            loss._reinit()  # as the Trainer's meter, once an epoch
        return time.perf_counter() - started


def _bce_loss(base: type) -> Any:
    import torch.nn.functional as F

    class BCELoss(base):  # as LibMTL.loss.CELoss, with BCE on logits
        def compute_loss(self, pred: Any, gt: Any) -> Any:
            return F.binary_cross_entropy_with_logits(pred, gt)

    return BCELoss()


def _cagrad_any_t(cagrad: type) -> type:
    """LibMTL 1.1.5's ``CAGrad.backward`` (parameter level) with its hard-coded task count 3
    replaced by T; nothing else changed."""
    import numpy as np
    import torch
    from scipy.optimize import minimize

    class CAGradT(cagrad):
        def backward(self, losses: Any, **kwargs: Any) -> Any:
            calpha, rescale = kwargs["calpha"], kwargs["rescale"]
            self._compute_grad_dim()
            grads = self._compute_grad(losses, mode="backward")
            GG = torch.matmul(grads, grads.t()).cpu()
            g0_norm = (GG.mean() + 1e-8).sqrt()
            x_start = np.ones(self.task_num) / self.task_num
            bnds = tuple((0, 1) for _ in x_start)
            cons = {"type": "eq", "fun": lambda x: 1 - sum(x)}
            A = GG.numpy()
            b = x_start.copy()
            c = (calpha * g0_norm + 1e-8).item()
            n = self.task_num

            def objfn(x: Any) -> Any:
                xa = x.reshape(1, n).dot(A)
                return (xa.dot(b.reshape(n, 1)) + c * np.sqrt(xa.dot(x.reshape(n, 1)) + 1e-8)).sum()

            w_cpu = minimize(objfn, x_start, bounds=bnds, constraints=cons).x
            ww = torch.Tensor(w_cpu).to(self.device)
            gw = (grads * ww.view(-1, 1)).sum(0)
            lmbda = c / (gw.norm() + 1e-8)
            g = grads.mean(0) + lmbda * gw
            new_grads = {0: g, 1: g / (1 + calpha**2), 2: g / (1 + calpha)}[rescale]
            self._reset_grad(new_grads)
            return w_cpu

    return CAGradT


def check(lib: Mapping[str, Any], x: Any, y: Any) -> list[dict[str, Any]]:
    """Both libraries' gradients on the protocol's first batch from the same initial weights:
    the shared (trunk) parameters' gradient, polytask's vs LibMTL's, for each of ``CHECKS``;
    ``fixed`` vs ``EW`` also over the heads. Prints and returns the comparisons."""
    import torch

    print("harness check: one batch, same initial weights; shared-gradient agreement")
    print(f"{'polytask':<24}{'LibMTL':<9}{'T':>3}{'rel. diff':>11}{'cosine':>10}{'‖lib‖/‖pt‖':>12}")
    results = []
    for balancer, options, method, n_tasks in CHECKS:
        xs, ys = x, y[:, :n_tasks]
        ours = Run(balancer, options, xs, ys, HIDDEN, BATCH)
        ours.backward(*ours.batches[0])
        theirs = LibMTLRun(lib, f"{method}@params", xs, ys)
        theirs.backward(*theirs.batches[0])
        params = [(ours.model.trunk, theirs.model.encoder)]
        if method == "EW":
            params += [(ours.model.heads, theirs.model.decoders)]
        a = torch.cat([_flat_grads(m) for m, _ in params]).double()
        b = torch.cat([_flat_grads(m, transpose_heads=True) for _, m in params]).double()
        tight = " (tight)" if "epsilon" in options else ""
        row = {
            "polytask": (f"{balancer}@params" if balancer != "fixed" else "fixed") + tight,
            "options": options,
            "libmtl": method,
            "tasks": n_tasks,
            "relative_difference": float((b - a).norm() / a.norm()),
            "cosine": float(torch.nn.functional.cosine_similarity(a, b, dim=0)),
            "norm_ratio": float(b.norm() / a.norm()),
            "compared": "trunk and heads" if method == "EW" else "trunk",
        }
        results.append(row)
        print(
            f"{row['polytask']:<24}{method:<9}{n_tasks:>3}{row['relative_difference']:>11.1e}"
            f"{row['cosine']:>10.6f}{row['norm_ratio']:>12.4f}"
        )
    return results


def _flat_grads(module: Any, *, transpose_heads: bool = False) -> Any:
    """Gradients of ``module``'s parameters as one vector; LibMTL's per-task ``nn.Linear``
    decoders are laid out as polytask's stacked heads (weights (T, d, 1), then biases)."""
    import torch

    if transpose_heads and isinstance(module, torch.nn.ModuleDict):
        heads = list(module.values())
        weights = torch.stack([h.weight.grad.T for h in heads])
        biases = torch.stack([h.bias.grad for h in heads])
        return torch.cat([weights.flatten(), biases.flatten()])
    return torch.cat([p.grad.flatten() for p in module.parameters()])


def _rows(names: list[str]) -> list[tuple[str, str, str, str | None]]:
    """(label, balancer, level, LibMTL run label or None) per table row: ``fixed``, the
    aggregators at the parameter level, then at the representation level."""
    rows = []
    for level in ("params", "repr"):
        for name in names:
            if name == "fixed" and level == "repr":
                continue
            label = "fixed" if name == "fixed" else f"{name}@{level}"
            libmtl = None
            if name in LIBMTL and level in LIBMTL[name][2]:
                libmtl = f"{LIBMTL[name][0]}@{level}"
            rows.append((label, name, level, libmtl))
    return rows


def _polytask_run(balancer: str, level: str, x: Any, y: Any) -> Any:
    options = {} if balancer == "fixed" else {"level": LEVELS[level]}
    return Run(balancer, options, x, y, HIDDEN, BATCH)


def _table(
    rows: list[tuple[str, str, str, str | None]],
    times: Mapping[str, list[float]],
    failed: Mapping[str, str],
    have_libmtl: bool,
) -> list[dict[str, Any]]:
    """One row per method: epoch medians ± median absolute deviations over the rounds; a ratio
    is the median over rounds of the two epochs' ratio within a round (the interleaving makes
    these pairs), with its range over rounds."""
    table = []
    for label, balancer, level, libmtl in rows:
        row = {"method": label, **_times("polytask", times[label])}
        row.update(_ratio("vs_upgrad_params", times[label], times.get("upgrad@params")))
        row["libmtl"] = libmtl
        row.update(_times("libmtl", None))
        row.update(_ratio("libmtl_vs_polytask", None, None))
        if not have_libmtl:
            row["libmtl_note"] = "LibMTL not installed"
        elif libmtl in times:
            row.update(_times("libmtl", times[libmtl]))
            row.update(_ratio("libmtl_vs_polytask", times[libmtl], times[label]))
        elif libmtl in failed:
            row["libmtl_note"] = failed[libmtl]
        elif balancer not in LIBMTL:
            row["libmtl_note"] = "not in LibMTL 1.1.5"
        else:
            other = "representation" if level == "params" else "parameter"
            row["libmtl_note"] = f"LibMTL 1.1.5 has it at the {other} level only"
        table.append(row)
        if libmtl in failed and CAGRAD_T in times:
            patched = {**row, "method": CAGRAD_T, "libmtl": "CAGrad_T@params"}
            del patched["libmtl_note"]
            patched.update(_times("libmtl", times[CAGRAD_T]))
            patched.update(_ratio("libmtl_vs_polytask", times[CAGRAD_T], times[label]))
            table.append(patched)
    return table


def _times(prefix: str, times: list[float] | None) -> dict[str, float | None]:
    if times is None:
        return {f"{prefix}_epoch_s": None, f"{prefix}_mad_s": None}
    median = statistics.median(times)
    mad = statistics.median(abs(t - median) for t in times)
    return {f"{prefix}_epoch_s": median, f"{prefix}_mad_s": mad}


def _ratio(name: str, a: list[float] | None, b: list[float] | None) -> dict[str, Any]:
    if a is None or b is None:
        return {name: None, f"{name}_range": None}
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    return {name: statistics.median(ratios), f"{name}_range": [min(ratios), max(ratios)]}


def _print_table(table: list[dict[str, Any]]) -> None:
    print(
        f"{'method':<32}{'polytask epoch (s)':>20}{'÷ upgrad@params':>16}"
        f"{'LibMTL epoch (s)':>20}{'LibMTL ÷ polytask':>19}{'(range)':>14}"
    )
    for row in table:
        ratio = row["vs_upgrad_params"]
        ours = f"{row['polytask_epoch_s']:.3f} ± {row['polytask_mad_s']:.3f}"
        line = f"{row['method']:<32}{ours:>20}"
        line += f"{ratio:>16.2f}" if ratio is not None else f"{'—':>16}"
        if row["libmtl_epoch_s"] is not None:
            theirs = f"{row['libmtl_epoch_s']:.3f} ± {row['libmtl_mad_s']:.3f}"
            low, high = row["libmtl_vs_polytask_range"]
            line += f"{theirs:>20}{row['libmtl_vs_polytask']:>19.2f}{f'{low:.2f}–{high:.2f}':>14}"
        else:
            line += f"  {row['libmtl_note']}"
        print(line)


def _verdicts(table: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    aggregators = [
        r for r in table if r["method"].endswith("@params") and r["method"] != "upgrad@params"
    ]
    slow = [r["method"] for r in aggregators if (r["vs_upgrad_params"] or 0) > 1.5]
    timed_pairs = [
        r for r in table if r["libmtl_vs_polytask"] is not None and r["method"] != "fixed"
    ]
    short = [r["method"] for r in timed_pairs if r["libmtl_vs_polytask"] < 2]
    a = "met" if not slow else f"not met by {', '.join(slow)}"
    b = "met" if not short else f"not met by {', '.join(short)}"
    if not timed_pairs:
        b = f"not measured (LibMTL not installed: {INSTALL})"
    return {
        "A": {
            "met": not slow,
            "not_met_by": slow,
            "text": f"every aggregator@params ≤ 1.5× upgrad@params: {a}",
        },
        "B": {
            "met": not short if timed_pairs else None,
            "not_met_by": short,
            "compared": [r["method"] for r in timed_pairs],
            "text": f"≥ 2× faster than LibMTL ({len(timed_pairs)} pairs timed): {b}",
        },
    }


def _polytask_source(revision: str | None) -> tuple[Path, str]:
    """Where to import polytask from and what it is: the work tree (its commit, ``+dirty``
    when polytask/ has uncommitted changes), or ``revision`` exported to a temporary folder."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    if revision is None:
        dirty = "+dirty" if git("status", "--porcelain", "--", "polytask") else ""
        return ROOT, git("rev-parse", "--short", "HEAD") + dirty
    folder = Path(tempfile.mkdtemp(prefix="side_by_side_"))
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "polytask"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder, git("rev-parse", "--short", revision)


def _import_polytask(source: Path) -> None:
    sys.path.insert(0, str(source))
    importlib.import_module("polytask")


def _libmtl_version() -> str:
    from importlib.metadata import version

    return version("LibMTL")


def _load(load: tuple[float, float, float]) -> str:
    return ", ".join(f"{v:.2f}" for v in load)


if __name__ == "__main__":
    main()
