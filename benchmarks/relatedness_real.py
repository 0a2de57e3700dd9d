"""Relatedness on small real data sets: the measures, the suggested groups, and whether they help.

For each data set (benchmarks/quality.py's model and training settings for it, CPU, 1 thread):

1. ``pt.relate`` with the three cheap measures (gradient, lookahead, hidden), averaged over
   ``--relate-seeds`` training runs; groups from ``gradient`` (the default) by the silhouette
   rule, and the groups each other measure would give;
2. ``pt.validate_groups`` on the gradient groups: grouped (one trunk per group), all-in-one
   and STL, same splits and budget, seeds 0 … ``--seeds``−1, Δm% on the **validation** split
   (negative = better than STL), mean ± std and 95% t-interval;
3. with ``--transfer NAME``: on that data set, per seed (``--transfer-seeds``), relate with the
   cheap measures and ``transfer`` (T(T−1)/2 pair runs + T STL runs) and Spearman ρ over the
   pairs i < j of each measure's symmetrized affinity with the symmetrized −transfer (as in
   benchmarks/relate_agreement.py).

Prints a table per data set and merges the results into
``benchmarks/results/relatedness_real.json`` (one entry per data set, so it can run in parts).

    python benchmarks/relatedness_real.py --datasets macro star --seeds 5 --transfer macro \
        --transfer-seeds 5
    python benchmarks/relatedness_real.py --datasets star --transfer star --transfer-only
    python benchmarks/relatedness_real.py --datasets      # only the transfer summaries
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's polytask
sys.path.insert(0, str(ROOT / "benchmarks"))  # quality.SETTINGS

import numpy as np  # noqa: E402
import torch  # noqa: E402
from quality import SETTINGS  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

import polytask as pt  # noqa: E402
from polytask.relate import normalized_affinity, relate, suggest_groups  # noqa: E402

CHEAP = ("gradient", "lookahead", "hidden")
OUT = ROOT / "benchmarks" / "results" / "relatedness_real.json"


def _pairs(matrix: np.ndarray) -> np.ndarray:
    sym = (matrix + matrix.T) / 2
    return sym[np.triu_indices(len(sym), k=1)]


def config_for(dataset: str, seed: int = 0) -> pt.Config:
    config = SETTINGS[dataset]()
    return config.model_copy(
        update={"train": config.train.model_copy(update={"seed": seed, "device": "cpu"})}
    )


def measure(dataset: str, relate_seeds: int, every: int) -> dict[str, Any]:
    config = config_for(dataset)
    splits = pt.load_splits(config)
    started = time.perf_counter()
    found = relate(config, seeds=relate_seeds, measures=CHEAP, every=every, splits=splits)
    seconds = time.perf_counter() - started
    by_measure = {m: suggest_groups(found.affinity(m), found.tasks, found.main) for m in CHEAP}
    agreement = {
        f"{a}-{b}": float(spearmanr(_pairs(found.affinity(a)), _pairs(found.affinity(b))).statistic)
        for i, a in enumerate(CHEAP)
        for b in CHEAP[i + 1 :]
    }
    sym = (found.affinity("gradient") + found.affinity("gradient").T) / 2
    upper = np.triu_indices(len(sym), k=1)
    order = np.argsort(-sym[upper])
    strongest = [
        [found.tasks[upper[0][k]], found.tasks[upper[1][k]], float(sym[upper][k])]
        for k in order[:6]
    ]
    return {
        "relate": found.to_json(),
        "groups_by_measure": by_measure,
        "measure_agreement_spearman": agreement,
        "strongest_gradient_pairs": strongest,
        "relate_seconds": seconds,
        "splits": splits,
    }


def validate(dataset: str, groups: list[list[str]], seeds: int, splits: Any) -> dict[str, Any]:
    started = time.perf_counter()
    out = pt.validate_groups(config_for(dataset), groups, seeds=seeds, splits=splits)
    out["wall_seconds"] = time.perf_counter() - started
    return out


def transfer_agreement(dataset: str, seeds: int, every: int) -> dict[str, Any]:
    rhos: dict[str, list[float]] = {m: [] for m in CHEAP}
    matrices = []
    started = time.perf_counter()
    for seed in range(seeds):
        config = config_for(dataset, seed)
        found = relate(config, measures=(*CHEAP, "transfer"), every=every)
        truth = _pairs(normalized_affinity("transfer", found.measures["transfer"]))
        for m in CHEAP:
            rhos[m].append(float(spearmanr(_pairs(found.affinity(m)), truth).statistic))
        matrices.append(found.measures["transfer"].tolist())
    return {
        "seeds": seeds,
        "pairs": len(truth),
        "spearman_with_transfer": rhos,
        "transfer_matrices": matrices,
        "seconds": time.perf_counter() - started,
    }


def transfer_summary(matrices: list[list[list[float]]]) -> dict[str, float]:
    """The transfer matrix averaged over seeds, its off-diagonal entries (% change, + = worse)."""
    mean = np.nanmean(np.array(matrices, dtype=float), axis=0)
    off = mean[~np.eye(len(mean), dtype=bool)]
    return {
        "mean": float(off.mean()),
        "min": float(off.min()),
        "max": float(off.max()),
        "fraction_helps": float((off < 0).mean()),
    }


def _ms(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):+.2f} ± {std:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="*", default=["macro", "star"])
    parser.add_argument("--relate-seeds", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=5, help="validate_groups seeds")
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--transfer", nargs="*", default=[], help="data sets to run transfer on")
    parser.add_argument("--transfer-seeds", type=int, default=1)
    parser.add_argument(
        "--transfer-only",
        action="store_true",
        help="only the transfer agreement, added to the data set's earlier entry",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    for dataset in args.datasets:
        if args.transfer_only:
            t = transfer_agreement(dataset, args.transfer_seeds, args.every)
            results.setdefault(dataset, {})["transfer_agreement"] = t
            print(f"{dataset}: Spearman with transfer ({t['pairs']} pairs, {t['seeds']} seeds)")
            for name in CHEAP:
                print(f"    {name:10s} {_ms(t['spearman_with_transfer'][name])}")
            OUT.write_text(json.dumps(results, indent=1, default=float))
            continue
        m = measure(dataset, args.relate_seeds, args.every)
        groups = m["relate"]["groups"]
        print(
            f"\n## {dataset}: {len(m['relate']['tasks'])} tasks, relate {m['relate_seconds']:.0f} s"
        )
        for name, g in m["groups_by_measure"].items():
            print(f"  groups by {name:9s}: {g}")
        print(f"  strongest gradient pairs: {m['strongest_gradient_pairs']}")
        print(
            f"  agreement between measures (Spearman over pairs): {m['measure_agreement_spearman']}"
        )
        v = validate(dataset, groups, args.seeds, m.pop("splits"))
        print(
            f"  validate_groups, {args.seeds} seeds, validation Δm% vs STL "
            f"({v['wall_seconds']:.0f} s)"
        )
        print("  | arm | Δm % | 95% CI | per seed |")
        for arm, r in v["arms"].items():
            ci = r.get("delta_m_ci95")
            ci_s = f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "—"
            per = ", ".join(f"{x:+.2f}" for x in r["delta_m_per_seed"])
            print(
                f"  | {arm} | {r['delta_m_percent']:+.2f} ± {r['delta_m_std']:.2f} "
                f"| {ci_s} | {per} |"
            )
        entry = {**m, "validation": v, "settings": vars(args)}
        if dataset in args.transfer:
            t = transfer_agreement(dataset, args.transfer_seeds, args.every)
            entry["transfer_agreement"] = t
            print(
                f"  Spearman with transfer ({t['pairs']} pairs, {t['seeds']} seeds, "
                f"{t['seconds']:.0f} s):"
            )
            for name in CHEAP:
                print(f"    {name:10s} {_ms(t['spearman_with_transfer'][name])}")
        results[dataset] = entry
        OUT.write_text(json.dumps(results, indent=1, default=float))
    for dataset, entry in results.items():
        if "transfer_agreement" in entry:
            summary = transfer_summary(entry["transfer_agreement"]["transfer_matrices"])
            entry["transfer_agreement"]["off_diagonal_mean_over_seeds"] = summary
            print(
                f"{dataset}: transfer (mean over seeds, off-diagonal, %): mean "
                f"{summary['mean']:+.2f}, range [{summary['min']:+.2f}, {summary['max']:+.2f}], "
                f"{summary['fraction_helps']:.0%} of the entries < 0 (pair helps)"
            )
    OUT.write_text(json.dumps(results, indent=1, default=float))
    print(f"written: {OUT}")


if __name__ == "__main__":
    main()
