"""Architectures, per-task selection and fine-tuning vs STL on real data (issue 10).

The protocol of ``quality.py`` (same data sets, splits, epoch budgets, early stopping, seeds and
Δm% / CI / paired-test code), with equal weights (balancer ``fixed``) throughout, and the sharing
scheme changed instead of the balancer. Per seed:

- ``stl``: one hard-sharing network per main task, from each data set's base config whatever
  the option (the same baseline for every row);
- ``hard_sharing`` (= quality.py's ``fixed``), ``hard_sharing+linear_path``;
- ``mmoe``, ``cgc``, ``ple``, ``cross_stitch``, ``soft_sharing`` with default options, and
  the linear path, with ``model.shared`` scaled (every width by one factor) so that the
  parameter count is the closest to hard sharing's; an architecture that cannot get within
  ±10% on a data set is not run there (the reason is recorded);
- ``soft_sharing``'s λ is picked from ``PENALTIES`` on seed 0's *validation* Δm, then used for
  every seed (seed 0's run at that λ is reused);
- ``per_task``: hard sharing with ``train.select: per_task``;
- ``finetune``: hard sharing with ``train.finetune`` (``FINETUNE``, lr = train.lr / 10).

Test scores are never used to choose anything. ``per_task`` and ``finetune`` choose weights on
the validation split, so their validation Δm is optimistic by construction.

    python benchmarks/architectures.py                      # full: 5 seeds, every data set
    python benchmarks/architectures.py --datasets macro star  # full run of some data sets
    python benchmarks/architectures.py --quick              # 2 seeds, macro (about a minute)
    python benchmarks/architectures.py --render             # doc section from the JSON
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality as q  # noqa: E402
import torch  # noqa: E402

from polytask.config import Config, FinetuneConfig  # noqa: E402
from polytask.evaluate import HIGHER_IS_BETTER, delta_m  # noqa: E402
from polytask.models import build_model  # noqa: E402
from polytask.train import load_splits, prepare, resolve_tasks  # noqa: E402

ROOT = q.ROOT
MIXTURES = ["mmoe", "cgc", "ple", "cross_stitch", "soft_sharing"]
OPTIONS = [
    "hard_sharing", "hard_sharing+linear_path", *MIXTURES, "per_task", "finetune",
]  # fmt: skip
PENALTIES = [0.001, 0.01, 0.1, 1.0, 10.0]
FINETUNE = {"epochs": 20, "patience": 5}  # lr: train.lr / 10
TOLERANCE = 0.10
QUICK = {"datasets": ["macro"], "seeds": 2}


def _count(config: Config, pre: Any) -> int:
    model = build_model(
        config.model,
        n_numeric=pre.n_numeric,
        cardinalities=pre.cardinalities,
        out_dims=pre.output_dims(),
    )
    return sum(p.numel() for p in model.parameters())


def _with_model(config: Config, **update: Any) -> Config:
    return config.model_copy(update={"model": config.model.model_copy(update=update)})


def matched(config: Config, pre: Any, **model: Any) -> Config:
    """``config`` with ``model`` changed and ``model.shared`` (all widths scaled by one factor)
    giving the parameter count closest to hard sharing's with the original widths."""
    base = list(config.model.shared)
    target = _count(config, pre)
    best: tuple[list[int], int] | None = None
    for first in range(1, 4 * base[0] + 1):
        widths = [max(1, round(b * first / base[0])) for b in base]
        n = _count(_with_model(config, shared=widths, **model), pre)
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (widths, n)
        if n > target * (1 + TOLERANCE):
            break
    assert best is not None
    return _with_model(config, shared=best[0], **model)


def option_configs(name: str) -> tuple[Config, dict[str, Config], dict[str, dict[str, Any]]]:
    """The base config, each option's config (soft_sharing without its λ) and its size."""
    base = q.SETTINGS[name]()
    splits = load_splits(base)
    pre, _ = prepare(base, splits, resolve_tasks(base))
    hard = _count(base, pre)
    configs: dict[str, Config] = {"hard_sharing": base}
    configs["hard_sharing+linear_path"] = matched(base, pre, linear_path=True)
    for arch in MIXTURES:
        configs[arch] = matched(base, pre, architecture=arch)
    configs["per_task"] = base.with_train(select="per_task")
    finetune = FinetuneConfig(lr=base.train.lr / 10, **FINETUNE)
    configs["finetune"] = base.with_train(finetune=finetune)
    sizes = {}
    for label, config in configs.items():
        n = _count(config, pre)
        sizes[label] = {
            "architecture": config.model.architecture,
            "shared": list(config.model.shared),
            "parameters": n,
            "ratio": n / hard,
            "matched": abs(n / hard - 1) <= TOLERANCE,
        }
    return base, configs, sizes


def _not_matched_reason(size: dict[str, Any]) -> str:
    return (
        f"no width within ±{TOLERANCE:.0%} of hard sharing's count: the closest is "
        f"{size['parameters']:,} ({size['ratio']:.2f}×) at shared {size['shared']}"
    )


def _val_delta(metrics: dict[str, str], run: dict[str, Any], stl: dict[str, Any]) -> float:
    return delta_m(
        metrics,
        {t: run["validation"][t][m] for t, m in metrics.items()},
        {t: stl["validation"][t][m] for t, m in metrics.items()},
    )


def run_dataset(
    name: str, options: list[str], seeds: list[int], log: Callable[[str], None]
) -> dict[str, Any]:
    base, configs, sizes = option_configs(name)
    splits = load_splits(base)
    tasks = resolve_tasks(base)
    metrics = q.primary(tasks)
    skipped = {
        o: _not_matched_reason(sizes[o])
        for o in options
        if o in MIXTURES and not sizes[o]["matched"]
    }
    options = [o for o in options if o not in skipped]
    per: dict[str, list[dict[str, Any]]] = {"stl": [], **{o: [] for o in options}}
    grid: dict[str, float] = {}
    penalty: float | None = None
    for seed in seeds:
        # STL from the base (hard sharing) config: one baseline for every option.
        stl = q.run_method(base, "stl", splits, seed)
        per["stl"].append(stl)
        log(f"{name:<12} seed {seed} {'stl':<25} {stl['seconds']:7.1f}s")
        for option in options:
            config = configs[option]
            if option == "soft_sharing":
                if penalty is None:  # λ on seed 0's validation split
                    runs = {}
                    for lam in PENALTIES:
                        cfg = _with_model(config, options={"penalty": lam})
                        runs[lam] = q.run_method(cfg, "fixed", splits, seed)
                        grid[str(lam)] = _val_delta(metrics, runs[lam], stl)
                        log(f"{name:<12} seed {seed} soft_sharing λ={lam:<9} "
                            f"val Δm {grid[str(lam)]:+.2f}%")  # fmt: skip
                    penalty = min(PENALTIES, key=lambda lam: grid[str(lam)])
                    result = runs[penalty]
                else:
                    cfg = _with_model(config, options={"penalty": penalty})
                    result = q.run_method(cfg, "fixed", splits, seed)
            else:
                result = q.run_method(config, "fixed", splits, seed)
            per[option].append(result)
            log(f"{name:<12} seed {seed} {option:<25} {result['seconds']:7.1f}s")
    table = q.summarize(tasks, per)
    if penalty is not None:
        sizes["soft_sharing"]["penalty"] = penalty
        sizes["soft_sharing"]["penalty_grid_validation_delta_m"] = grid
    return {
        "config": base.model_dump(mode="json"),
        "rows": {k: len(getattr(splits, k)) for k in ("train", "validation", "test")},
        "main_tasks": metrics,
        "sizes": sizes,
        "skipped": skipped,
        "finetune": {**FINETUNE, "lr": base.train.lr / 10},
        "methods": table,
    }


# --------------------------------------------------------------------------------------------
# Report


def _fmt(value: float | None, digits: int = 2, sign: bool = False) -> str:
    return q._fmt(value, digits, sign)


def _better_worse(entry: dict[str, Any], stl: dict[str, Any]) -> tuple[int, int]:
    better = worse = 0
    for t, v in entry["tasks"].items():
        p = v["p_vs_stl"]
        if math.isnan(p) or p >= 0.05:
            continue
        up = v["mean"] > stl[t]["mean"]
        good = up if HIGHER_IS_BETTER[v["metric"]] else not up
        better, worse = better + good, worse + (not good)
    return better, worse


def _size_note(label: str, size: dict[str, Any]) -> str:
    note = f"{size['architecture']} {size['shared']}"
    if "penalty" in size:
        note += f", λ = {size['penalty']:g}"
    if label == "per_task":
        note += ", select: per_task"
    if label == "finetune":
        note += ", finetune"
    if label.endswith("linear_path"):
        note += ", linear_path"
    return note


def validation_pick(ds: dict[str, Any]) -> str:
    """The option (not per_task / finetune, which select on validation) with the best mean
    validation Δm."""
    fair = [o for o in OPTIONS if o in ds["methods"] and o not in ("per_task", "finetune")]
    return min(fair, key=lambda o: ds["methods"][o]["delta_m_validation"]["mean"])


def markdown(result: dict[str, Any]) -> str:
    """The generated part of docs/benchmarks.md's architectures section."""
    order = [d for d in q.SETTINGS if d in result["datasets"]]
    lines = [
        "**Summary: Δm% vs STL on test, mean [95% CI] over seeds (negative = better than "
        "STL).** Parameter counts and widths: each data set's table below.",
        "",
        "| option | " + " | ".join(order) + " |",
        "|---" * (1 + len(order)) + "|",
    ]
    for option in OPTIONS:
        cells = []
        for d in order:
            ds = result["datasets"][d]
            entry = ds["methods"].get(option)
            if entry is None:
                cells.append("not run" if option in ds["skipped"] else "–")
                continue
            dm = entry["delta_m_test"]
            cell = (
                f"{_fmt(dm['mean'], sign=True)} [{_fmt(dm['ci95'][0], sign=True)}, "
                f"{_fmt(dm['ci95'][1], sign=True)}]"
            )
            if dm["ci95"][1] < 0:
                cell = f"**{cell}**"
            cells.append(cell)
        lines.append(f"| {option} | " + " | ".join(cells) + " |")
    cells = []
    for d in order:
        pick = validation_pick(result["datasets"][d])
        dm = result["datasets"][d]["methods"][pick]["delta_m_test"]["mean"]
        cells.append(f"{pick}: {_fmt(dm, sign=True)}")
    lines.append("| *pick on validation* | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Bold: the whole CI below 0. *Pick on validation*: the architecture with the best mean "
        "validation Δm (per_task and finetune left out: they choose on that split) and its test "
        "Δm, what a user choosing honestly gets.",
        "",
    ]
    for d in order:
        ds = result["datasets"][d]
        rows = ds["rows"]
        seeds = ds["seeds"]
        kinds = ", ".join(sorted(set(ds["main_tasks"].values())))
        lines += [
            f"### {d} (architectures)",
            "",
            f"{len(ds['main_tasks'])} main tasks ({kinds}); "
            f"{rows['train']:,} / {rows['validation']:,} / {rows['test']:,} rows; "
            f"{len(seeds)} seeds, {ds['seconds'] / 60:.0f} min in all. STL: "
            f"{len(ds['main_tasks'])} hard-sharing networks of shared "
            f"{ds['config']['model']['shared']} (one per task).",
            "",
            "| option | model | parameters (÷ hard) | Δm% test (mean ± std) | 95% CI | "
            "Δm% val. | tasks better / worse (p<0.05) | s/epoch | epochs |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        stl = ds["methods"]["stl"]["tasks"]
        for option in ["stl", *OPTIONS]:
            entry = ds["methods"].get(option)
            if entry is None:
                continue
            dm = entry["delta_m_test"]
            if option == "stl":
                model, params = "hard_sharing, one per task", "–"
                bw = "–"
            else:
                size = ds["sizes"][option]
                model = _size_note(option, size)
                params = f"{size['parameters']:,} ({size['ratio']:.2f})"
                bw = "{} / {}".format(*_better_worse(entry, stl))
            lines.append(
                f"| {option} | {model} | {params} | {_fmt(dm['mean'], sign=True)} ± "
                f"{_fmt(dm['std'])} | [{_fmt(dm['ci95'][0], sign=True)}, "
                f"{_fmt(dm['ci95'][1], sign=True)}] | "
                f"{_fmt(entry['delta_m_validation']['mean'], sign=True)} | {bw} | "
                f"{_fmt(entry['seconds_per_epoch'], 3)} | {_fmt(entry['epochs'], 0)} |"
            )
        size = ds["sizes"].get("soft_sharing", {})
        if "penalty_grid_validation_delta_m" in size:
            grid = ", ".join(
                f"λ = {float(k):g}: {_fmt(v, sign=True)}%"
                for k, v in size["penalty_grid_validation_delta_m"].items()
            )
            lines += ["", f"soft_sharing λ, picked on seed 0's validation Δm: {grid}."]
        for option in ds["skipped"]:
            lines += ["", f"Not run: {option} — {_not_matched_reason(ds['sizes'][option])}."]
        if "pooled_explained_variance" in ds["methods"]["stl"]:
            pooled = ", ".join(
                f"{m} {_fmt(e['pooled_explained_variance'][0], 3)}"
                for m, e in ds["methods"].items()
            )
            lines += ["", f"Pooled explained variance on test (mean over seeds): {pooled}."]
        lines += ["", "<details><summary>per-task test scores (mean ± std)</summary>", ""]
        methods = [m for m in ["stl", *OPTIONS] if m in ds["methods"]]
        lines.append("| task (metric) | " + " | ".join(methods) + " |")
        lines.append("|---" * (1 + len(methods)) + "|")
        for t, m in ds["main_tasks"].items():
            cells = [
                f"{_fmt(ds['methods'][x]['tasks'][t]['mean'], 3)} ± "
                f"{_fmt(ds['methods'][x]['tasks'][t]['std'], 3)}"
                for x in methods
            ]
            lines.append(f"| {t} ({m}) | " + " | ".join(cells) + " |")
        lines += ["", "</details>", ""]
    return "\n".join(lines)


def _merge(out: Path, name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Add one data set to the JSON at ``out`` (locked: data sets may run in parallel)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(out.parent, os.O_RDONLY)  # the lock: no stray lock file
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        result = json.loads(out.read_text()) if out.is_file() else {"datasets": {}}
        result["datasets"][name] = entry
        out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    finally:
        os.close(folder)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, macro, every option")
    parser.add_argument("--datasets", nargs="+", default=None)
    parser.add_argument("--options", nargs="+", default=None, choices=OPTIONS)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--doc", type=Path, default=None, help="markdown file to update")
    parser.add_argument(
        "--render", action="store_true", help="only rewrite the doc from the JSON at --out"
    )
    args = parser.parse_args(argv)
    full = not (args.quick or args.options or args.seeds)
    out = args.out or ROOT / "benchmarks" / "results" / (
        "architectures.json" if full else "quick/architectures.json"
    )
    doc = args.doc or (ROOT / "docs" / "benchmarks.md" if full or args.render else None)
    if args.render:
        q.write_doc(doc, markdown(json.loads(out.read_text())), block="architectures")
        print(f"tables from {out} written into {doc}")
        return 0
    torch.set_num_threads(args.threads)
    datasets = args.datasets or (QUICK["datasets"] if args.quick else list(q.SETTINGS))
    for d in datasets:
        if d not in q.SETTINGS:
            parser.error(f"unknown data set {d!r}; known: {', '.join(q.SETTINGS)}")
    options = args.options or OPTIONS
    seeds = list(range(args.seeds or (QUICK["seeds"] if args.quick else 5)))
    machine = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
    }
    result: dict[str, Any] = {"datasets": {}}
    for name in datasets:
        started = time.perf_counter()
        entry = run_dataset(name, options, seeds, lambda s: print(s, flush=True))
        entry.update(seeds=seeds, seconds=time.perf_counter() - started, machine=machine)
        result = _merge(out, name, entry)
    text = markdown(result)
    print(text)
    print(f"\nJSON: {out}")
    if doc is not None:
        q.write_doc(doc, text, block="architectures")
        print(f"tables written into {doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
