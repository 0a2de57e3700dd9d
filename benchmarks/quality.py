"""Quality on real data: STL vs MTL (equal weights) vs every balancer, plus outside anchors.

For each data set the split is the loader's fixed one and every method gets the same model,
optimizer, epoch budget and early-stopping rule (the main tasks' validation loss). Per seed:

- ``stl``: one network per main task (``polytask.baselines.fit_stl``);
- ``fixed``: one shared network, equal weights (the plain MTL baseline);
- every other registered balancer; gradient aggregators at the ``representation`` level, plus
  ``upgrad`` and ``mgda`` at the ``parameters`` level;
- ``torchjd_upgrad`` (anchor): the same network trained through torchjd's own
  ``mtl_backward`` + ``jac_to_grad(UPGrad())``, to compare with polytask's engine;
- linear anchors, fitted once (deterministic): ``Ridge`` / ``LogisticRegression`` per task with
  the penalty chosen on the validation split, and ``MultiTaskElasticNetCV`` on data sets whose
  tasks are all regression.

Δm% compares each method with STL of the same seed over the main tasks' primary metrics
(negative = better than STL). "Best (val.)" is the MTL method with the best mean Δm on the
*validation* split; its test Δm is what a user choosing honestly would get. Test scores are never
used to choose anything.

    python benchmarks/quality.py            # full run: 5 seeds, writes docs/benchmarks.md tables
    python benchmarks/quality.py --quick    # 2 seeds, 2 data sets, 6 methods (a few minutes)
    python benchmarks/quality.py --datasets star school   # full run of some data sets only
    python benchmarks/quality.py --datasets yeast --methods stl fixed dwa --seeds 3
    python benchmarks/quality.py --render   # rewrite docs/benchmarks.md from quality.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # measure this checkout's polytask, installed or not
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import polytask as pt  # noqa: E402
from polytask.balancing.base import Balancer, register_balancer  # noqa: E402
from polytask.baselines import fit_stl  # noqa: E402
from polytask.config import Config, DataConfig, ModelConfig, TrainConfig  # noqa: E402
from polytask.datasets import DATASETS  # noqa: E402
from polytask.demo import demo_config  # noqa: E402
from polytask.evaluate import (  # noqa: E402
    HIGHER_IS_BETTER,
    confidence_interval,
    delta_m,
    mean_std,
    paired_test,
    task_scores,
)
from polytask.train import load_splits, prepare, resolve_tasks  # noqa: E402

# --------------------------------------------------------------------------------------------
# Settings per data set. Chosen once, a priori or on validation (never on test), and the same
# for every method: a method that needs a different budget to shine does not get it here.


def _config(dataset: str, shared: list[int], dropout: float, **train: Any) -> Config:
    return Config(
        data=DataConfig(dataset=dataset),
        model=ModelConfig(shared=shared, head=[], dropout=dropout),
        train=TrainConfig(**train),
    )


SETTINGS: dict[str, Callable[[], Config]] = {
    "yeast": demo_config,
    "macro": lambda: _config(
        "macro", [64], 0.1, epochs=300, batch_size=32, lr=1e-3, weight_decay=1e-3, patience=30
    ),
    "qm9_small": lambda: _config(
        "qm9_small", [256, 256], 0.0, epochs=60, batch_size=256, lr=1e-3, patience=10
    ),
    "multidigits": lambda: _config(
        "multidigits", [256, 128], 0.2, epochs=30, batch_size=128, lr=1e-3, patience=5
    ),
    "star": lambda: _config(
        "star", [64], 0.2, epochs=100, batch_size=128, lr=1e-3, weight_decay=1e-4, patience=10
    ),
    "school": lambda: _config(
        "school", [64], 0.2, epochs=100, batch_size=128, lr=1e-3, weight_decay=1e-4, patience=10
    ),
}

WEIGHTINGS = ["uncertainty", "imtl_l", "dwa", "gradnorm", "rlw", "famo", "geometric"]
AGGREGATORS = [
    "mgda", "pcgrad", "cagrad", "imtl_g", "graddrop", "gradvac", "nash_mtl", "aligned_mtl",
    "upgrad", "fairgrad",
]  # fmt: skip


def method_table() -> dict[str, tuple[str, dict[str, Any]]]:
    """Method label → (balancer, options)."""
    methods: dict[str, tuple[str, dict[str, Any]]] = {"fixed": ("fixed", {})}
    methods.update({name: (name, {}) for name in WEIGHTINGS})
    methods.update({name: (name, {"level": "representation"}) for name in AGGREGATORS})
    methods["upgrad@params"] = ("upgrad", {"level": "parameters"})
    methods["mgda@params"] = ("mgda", {"level": "parameters"})
    methods["torchjd_upgrad"] = ("torchjd_upgrad", {})
    return methods


# Methods left out on a data set, and why (printed in the report).
SKIP: dict[str, tuple[set[str], str]] = {}

QUICK = {
    "datasets": ["yeast", "macro"],
    "methods": ["stl", "fixed", "uncertainty", "dwa", "imtl_g", "upgrad"],
    "seeds": 2,
}


# --------------------------------------------------------------------------------------------
# The torchjd anchor: the same step through torchjd's own API.


@register_balancer
class TorchJDUPGrad(Balancer):
    """UPGrad through ``torchjd.autojac.mtl_backward`` and ``jac_to_grad`` (benchmark anchor)."""

    name = "torchjd_upgrad"
    description = "anchor: torchjd's mtl_backward + UPGrad over the shared parameters"
    reference = "Quinton & Rey 2024 (torchjd)"
    needs_features = True
    sets_grads = True

    def backward(
        self,
        losses: Mapping[str, Tensor],
        *,
        model: nn.Module,
        features: Tensor | None = None,
        outputs: Tensor | None = None,
    ) -> dict[str, float]:
        from torchjd.aggregation import UPGrad
        from torchjd.autojac import jac_to_grad, mtl_backward

        names = list(losses)
        values = [losses[n] for n in names]
        # The task-specific parameters (heads: one stacked tensor, each task owning a slice)
        # get the plain sum's gradient, taken first; torchjd then does the Jacobian of the
        # joint (shared and other) parameters through the representation.
        heads, shared = model.split_parameters()
        head_grads = torch.autograd.grad(sum(values), heads, retain_graph=True, allow_unused=True)
        mtl_backward(
            values,
            features,
            tasks_params=[[] for _ in values],
            shared_params=shared,
            retain_graph=True,
        )
        weights = jac_to_grad(shared, UPGrad())
        for p, g in zip(heads, head_grads, strict=True):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
        if weights is None:
            return {n: 1.0 for n in names}
        return dict(zip(names, weights.detach().tolist(), strict=True))


# --------------------------------------------------------------------------------------------
# Runs


def primary(tasks: list[pt.Task]) -> dict[str, str]:
    return {t.name: t.primary_metric for t in tasks if t.is_main}


def run_method(config: Config, method: str, splits: Any, seed: int) -> dict[str, Any]:
    """Fit one method with one seed: validation and test scores, seconds, epochs."""
    seeded_train = config.train.model_copy(update={"seed": seed})
    started = time.perf_counter()
    if method == "stl":
        runs = fit_stl(config.model_copy(update={"train": seeded_train}), splits)
        seconds = time.perf_counter() - started
        epochs = sum(len(r.history) for r in runs.values())
        return {
            "validation": {n: r.metrics["validation"][n] for n, r in runs.items()},
            "test": {n: r.metrics["test"][n] for n, r in runs.items()},
            "seconds": seconds,
            "epochs": epochs,
            "seconds_per_epoch": seconds / max(epochs, 1),
        }
    balancer, options = method_table()[method]
    train = seeded_train.model_copy(update={"balancer": balancer, "balancer_options": options})
    run = pt.fit(config.model_copy(update={"train": train}), splits=splits)
    seconds = time.perf_counter() - started
    return {
        "validation": run.metrics["validation"],
        "test": run.metrics["test"],
        "seconds": seconds,
        "epochs": len(run.history),
        "seconds_per_epoch": run.metrics["train_seconds"] / max(len(run.history), 1),
    }


def _design(data: pt.TaskData, cardinalities: list[int]) -> np.ndarray:
    """Scaled numeric features plus one-hot categories: the linear models' inputs."""
    parts = [data.x_num.numpy()]
    for j, card in enumerate(cardinalities):
        parts.append(np.eye(card, dtype=np.float32)[data.x_cat[:, j].numpy()])
    return np.concatenate(parts, axis=1)


def _linear_predict(pre: Any, task: pt.Task, model: Any, x: np.ndarray) -> np.ndarray:
    """A fitted scikit-learn model's prediction in the form polytask's metrics expect."""
    if task.kind == "regression":
        return pre.decode(task, torch.from_numpy(model.predict(x)[:, None].astype(np.float32)))
    proba = model.predict_proba(x)
    classes = model.classes_.astype(int)
    full = np.zeros((len(x), max(pre.output_dims()[task.name], 2)))
    full[:, classes] = proba
    return full[:, 1] if task.kind == "binary" else full


def _linear_score(pre: Any, task: pt.Task, model: Any, data: pt.TaskData, x: np.ndarray) -> dict:
    mask = data.masks[task.name]
    truth = pre.decode_target(task, data.targets[task.name], mask)
    return task_scores(task, truth, _linear_predict(pre, task, model, x[mask.numpy()]))


def linear_anchors(config: Config, splits: Any) -> dict[str, dict[str, Any]]:
    """Ridge / logistic regression per task (penalty on validation), MultiTaskElasticNetCV."""
    from sklearn.linear_model import LogisticRegression, MultiTaskElasticNetCV, Ridge

    tasks = resolve_tasks(config)
    pre, encoded = prepare(config, splits, tasks)
    X = {k: _design(v, pre.cardinalities) for k, v in encoded.items()}
    train, val, test = encoded["train"], encoded["validation"], encoded["test"]
    out: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    scores: dict[str, dict[str, float]] = {}
    for task in tasks:
        if not task.is_main or task.kind not in ("regression", "binary", "multiclass"):
            continue
        mask = train.masks[task.name].numpy()
        x, y = X["train"][mask], train.targets[task.name].numpy()[mask]
        metric = task.primary_metric
        sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
        best = None
        for penalty in [1e-3, 1e-2, 1e-1, 1, 10, 100, 1000]:
            if task.kind == "regression":
                model = Ridge(alpha=penalty).fit(x, y)
            else:
                model = LogisticRegression(C=1 / penalty, max_iter=2000).fit(x, y)
            value = sign * _linear_score(pre, task, model, val, X["validation"])[metric]
            if best is None or value > best[0]:
                best = (value, penalty, model)
        assert best is not None
        scores[task.name] = {
            **_linear_score(pre, task, best[2], test, X["test"]),
            "penalty": best[1],
        }
    out["ridge/logistic"] = {"test": scores, "seconds": time.perf_counter() - started}

    main = [t for t in tasks if t.is_main]
    masks = np.stack([train.masks[t.name].numpy() for t in main], axis=1)
    rows = masks.all(axis=1)  # MultiTaskElasticNet needs every label of a row
    if all(t.kind == "regression" for t in main) and rows.sum() >= 50:
        started = time.perf_counter()
        Y = np.stack([train.targets[t.name].numpy() for t in main], axis=1)[rows]
        model = MultiTaskElasticNetCV(l1_ratio=[0.1, 0.5, 0.9, 1.0], cv=3, max_iter=20000)
        model.fit(X["train"][rows], Y)
        pred = model.predict(X["test"]).astype(np.float32)
        enet = {}
        for j, task in enumerate(main):
            mask = test.masks[task.name]
            truth = pre.decode_target(task, test.targets[task.name], mask)
            value = pre.decode(task, torch.from_numpy(pred[:, j : j + 1]))[mask.numpy()]
            enet[task.name] = task_scores(task, truth, value)
        out["multitask_elasticnet"] = {
            "test": enet,
            "seconds": time.perf_counter() - started,
            "train_rows": int(rows.sum()),
        }
    return out


def summarize(
    tasks: list[pt.Task], per_method: dict[str, list[dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """Δm% vs STL per seed (test and validation), per-task mean ± std, time, p-values."""
    metrics = primary(tasks)
    stl = per_method["stl"]
    table: dict[str, dict[str, Any]] = {}
    for method, seeds in per_method.items():
        entry: dict[str, Any] = {}
        for split in ("test", "validation"):
            per_seed = [
                delta_m(
                    metrics,
                    {t: s[split][t][m] for t, m in metrics.items()},
                    {t: b[split][t][m] for t, m in metrics.items()},
                )
                for s, b in zip(seeds, stl, strict=True)
            ]
            mean, std = mean_std(per_seed)
            entry[f"delta_m_{split}"] = {
                "mean": mean,
                "std": std,
                "ci95": list(confidence_interval(per_seed)),
                "per_seed": per_seed,
            }
        entry["tasks"] = {}
        for t, m in metrics.items():
            values = [s["test"][t][m] for s in seeds]
            mean, std = mean_std(values)
            entry["tasks"][t] = {
                "metric": m,
                "mean": mean,
                "std": std,
                "per_seed": values,
                "p_vs_stl": paired_test(values, [b["test"][t][m] for b in stl]),
            }
        entry["seconds"] = mean_std([s["seconds"] for s in seeds])[0]
        entry["seconds_per_epoch"] = mean_std([s["seconds_per_epoch"] for s in seeds])[0]
        entry["epochs"] = mean_std([s["epochs"] for s in seeds])[0]
        table[method] = entry
    return table


def run_dataset(
    name: str, methods: list[str], seeds: list[int], log: Callable[[str], None]
) -> dict[str, Any]:
    config = SETTINGS[name]()
    splits = load_splits(config)
    tasks = resolve_tasks(config)
    metrics = primary(tasks)
    skipped, why = SKIP.get(name, (set(), ""))
    methods = [m for m in methods if m not in skipped]
    per_method: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for seed in seeds:
        for method in methods:
            result = run_method(config, method, splits, seed)
            per_method[method].append(result)
            log(f"{name:<12} seed {seed} {method:<15} {result['seconds']:7.1f}s")
    table = summarize(tasks, per_method)
    mtl_methods = [m for m in methods if m != "stl"]
    best = (
        min(mtl_methods, key=lambda m: table[m]["delta_m_validation"]["mean"])
        if mtl_methods
        else None
    )
    anchors = linear_anchors(config, splits)
    stl_means = {t: table["stl"]["tasks"][t]["mean"] for t in metrics}
    for anchor in anchors.values():
        anchor["delta_m_vs_stl_mean"] = delta_m(
            metrics, {t: anchor["test"][t][m] for t, m in metrics.items()}, stl_means
        )
    if name == "school":  # the School literature's figure: explained variance, pooled
        labels = np.concatenate([splits.test[t].dropna().to_numpy() for t in metrics])
        sst = float(((labels - labels.mean()) ** 2).sum())
        for method, runs in per_method.items():
            sse = [
                sum(r["test"][t]["n"] * r["test"][t]["rmse"] ** 2 for t in metrics) for r in runs
            ]
            table[method]["pooled_explained_variance"] = mean_std([1 - e / sst for e in sse])
    return {
        "skipped": {"methods": sorted(skipped & set(method_table())), "why": why},
        "config": config.model_dump(mode="json"),
        "rows": {k: len(getattr(splits, k)) for k in ("train", "validation", "test")},
        "main_tasks": metrics,
        "methods": table,
        "best_on_validation": best,
        "anchors": anchors,
    }


# --------------------------------------------------------------------------------------------
# Report


def _fmt(value: float, digits: int = 2, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    """The tables of docs/benchmarks.md for one run of this script."""
    lines = []
    for name, ds in result["datasets"].items():
        metrics = ds["main_tasks"]
        kinds = sorted(set(metrics.values()))
        rows = ds["rows"]
        lines += [
            f"### {name}",
            "",
            f"{len(metrics)} main tasks (primary metric: {', '.join(kinds)}); "
            f"{rows['train']:,} / {rows['validation']:,} / {rows['test']:,} rows; "
            f"{len(ds['seeds'])} seeds, {ds['seconds'] / 60:.0f} min in all. "
            f"Best MTL method on validation: "
            f"**{ds['best_on_validation']}**.",
            "",
            "| method | Δm% test (mean ± std) | 95% CI | Δm% val. | tasks better / worse "
            "(p<0.05) | s/epoch | epochs |",
            "|---|---|---|---|---|---|---|",
        ]
        stl = ds["methods"]["stl"]["tasks"]
        ordered = sorted(ds["methods"].items(), key=lambda kv: kv[1]["delta_m_test"]["mean"])
        for method, entry in ordered:
            dm = entry["delta_m_test"]
            better = worse = 0
            for t, v in entry["tasks"].items():
                p = v["p_vs_stl"]
                if method == "stl" or math.isnan(p) or p >= 0.05:
                    continue
                up = v["mean"] > stl[t]["mean"]
                good = up if HIGHER_IS_BETTER[v["metric"]] else not up
                better, worse = better + good, worse + (not good)
            label = f"**{method}**" if method == ds["best_on_validation"] else method
            ci = dm["ci95"]
            lines.append(
                f"| {label} | {_fmt(dm['mean'], sign=True)} ± {_fmt(dm['std'])} | "
                f"[{_fmt(ci[0], sign=True)}, {_fmt(ci[1], sign=True)}] | "
                f"{_fmt(entry['delta_m_validation']['mean'], sign=True)} | "
                f"{better} / {worse} | {_fmt(entry['seconds_per_epoch'], 3)} | "
                f"{_fmt(entry['epochs'], 0)} |"
            )
        for anchor, a in ds["anchors"].items():
            lines.append(
                f"| *{anchor}* (linear anchor) | {_fmt(a['delta_m_vs_stl_mean'], sign=True)} "
                f"(vs STL mean) | – | – | – | {_fmt(a['seconds'], 2)} s total | – |"
            )
        if ds.get("skipped", {}).get("methods"):
            skipped = ds["skipped"]
            lines += ["", f"Not run here: {', '.join(skipped['methods'])} — {skipped['why']}."]
        if "pooled_explained_variance" in ds["methods"].get("stl", {}):
            pooled = ", ".join(
                f"{m} {_fmt(e['pooled_explained_variance'][0], 3)}" for m, e in ordered
            )
            lines += ["", f"Pooled explained variance on test (mean over seeds): {pooled}."]
        lines += ["", "<details><summary>per-task test scores (mean ± std)</summary>", ""]
        methods = [m for m, _ in ordered]
        lines.append(
            "| task (metric) | " + " | ".join(methods) + " | " + " | ".join(ds["anchors"]) + " |"
        )
        lines.append("|---" * (1 + len(methods) + len(ds["anchors"])) + "|")
        for t, m in metrics.items():
            cells = [
                f"{_fmt(ds['methods'][x]['tasks'][t]['mean'], 3)} ± "
                f"{_fmt(ds['methods'][x]['tasks'][t]['std'], 3)}"
                for x in methods
            ]
            cells += [_fmt(a["test"][t][m], 3) for a in ds["anchors"].values()]
            lines.append(f"| {t} ({m}) | " + " | ".join(cells) + " |")
        lines += ["", "</details>", ""]
    return "\n".join(lines)


def write_doc(path: Path, text: str, *, block: str = "quality") -> None:
    """Replace a generated block of docs/benchmarks.md (between its ``block`` markers)."""
    begin, end = f"<!-- {block}:begin -->", f"<!-- {block}:end -->"
    doc = path.read_text() if path.is_file() else f"# Benchmarks\n\n{begin}\n{end}\n"
    if begin not in doc:
        doc += f"\n{begin}\n{end}\n"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    path.write_text(pattern.sub(lambda _: f"{begin}\n{text}\n{end}", doc))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, yeast + macro, 6 methods")
    parser.add_argument("--datasets", nargs="+", default=None)
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--doc", type=Path, default=None, help="markdown file to update")
    parser.add_argument(
        "--render", action="store_true", help="only rewrite the doc from the JSON at --out"
    )
    args = parser.parse_args(argv)
    if args.render:
        out = args.out or ROOT / "benchmarks" / "results" / "quality.json"
        doc = args.doc or ROOT / "docs" / "benchmarks.md"
        write_doc(doc, markdown(json.loads(out.read_text())))
        print(f"tables from {out} written into {doc}")
        return 0
    torch.set_num_threads(args.threads)

    available = [d for d in SETTINGS if d in DATASETS]
    datasets = args.datasets or (QUICK["datasets"] if args.quick else available)
    methods = args.methods or (QUICK["methods"] if args.quick else ["stl", *method_table()])
    if "stl" not in methods:
        methods = ["stl", *methods]
    n_seeds = args.seeds or (QUICK["seeds"] if args.quick else 5)
    for d in datasets:
        if d not in SETTINGS:
            parser.error(f"unknown data set {d!r}; known: {', '.join(SETTINGS)}")
    for m in methods:
        if m != "stl" and m not in method_table():
            parser.error(f"unknown method {m!r}; known: stl, {', '.join(method_table())}")
    # The full run (all methods, 5 seeds) updates quality.json data set by data set, so the
    # suite can be run in parts: --datasets star school adds those to the earlier ones.
    full = not (args.quick or args.methods or args.seeds)
    out = args.out or ROOT / "benchmarks" / "results" / (
        "quality.json" if full else "quick/quality.json"
    )
    doc = args.doc or (ROOT / "docs" / "benchmarks.md" if full else None)

    seeds = list(range(n_seeds))
    result: dict[str, Any] = {"datasets": {}}
    if full and out.is_file():
        result = json.loads(out.read_text())
    machine = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
    }
    for name in datasets:
        started = time.perf_counter()
        entry = run_dataset(name, methods, seeds, lambda s: print(s, flush=True))
        entry.update(seeds=seeds, seconds=time.perf_counter() - started, machine=machine)
        result["datasets"][name] = entry
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    text = markdown(result)
    print(text)
    print(f"\nJSON: {out}")
    if doc is not None:
        write_doc(doc, text)
        print(f"tables written into {doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
