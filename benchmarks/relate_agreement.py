"""How well each cheap relatedness measure predicts ``transfer`` (the pair-vs-alone ground truth).

For each problem and seed, ``pt.relate`` records gradient, lookahead, hidden and transfer
(one training run for the first three, T(T−1)/2 pair runs + T STL runs for transfer). Each
cheap measure's symmetrized normalized affinity over the pairs i < j is compared with the
symmetrized −transfer (negative change = helps, so −transfer is an affinity) by Spearman's ρ.
Prints ρ per measure (mean ± std over seeds) and writes
``benchmarks/results/relate_agreement.json``.

Problems: ``planted`` (tests/test_relate.py's 7 tasks: two clusters on disjoint latents and a
noise task, mixed kinds, 10% labels missing; 300 training rows) and ``yeast6`` (Yeast's
Class1–Class6, the other classes dropped from the inputs, examples/yeast.yaml's settings) and
``yeast14`` (all 14 classes: 91 pair runs per seed; ``--workers 2`` trains them in parallel) and
``school12`` (School's 12 largest schools and their pupils: 66 pairs).

    python benchmarks/relate_agreement.py                  # all, 3 seeds
    python benchmarks/relate_agreement.py --problems planted --seeds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's polytask
sys.path.insert(0, str(ROOT / "tests"))  # the planted problem

import polytask as pt  # noqa: E402
from polytask.relate import normalized_affinity, relate  # noqa: E402

CHEAP = ("gradient", "lookahead", "hidden")


def planted(seed: int) -> tuple[pt.Config, pt.Splits]:
    from test_relate import planted_config, planted_frame, planted_splits

    frame = planted_frame(seed=seed)
    return planted_config(frame, seed=seed), planted_splits(frame)


def yeast6(seed: int) -> tuple[pt.Config, pt.Splits]:
    config = pt.load_config(ROOT / "examples" / "yeast.yaml")
    kept = [f"Class{i}" for i in range(1, 7)]
    config = config.model_copy(
        update={
            "tasks": [pt.Task(name=n, kind="binary") for n in kept],
            "data": config.data.model_copy(update={"drop": [f"Class{i}" for i in range(7, 15)]}),
            "train": config.train.model_copy(update={"seed": seed, "device": "cpu"}),
        }
    )
    return config, pt.load_splits(config)


def yeast14(seed: int) -> tuple[pt.Config, pt.Splits]:
    config = pt.load_config(ROOT / "examples" / "yeast.yaml")
    config = config.model_copy(
        update={"train": config.train.model_copy(update={"seed": seed, "device": "cpu"})}
    )
    return config, pt.load_splits(config)


def school12(seed: int) -> tuple[pt.Config, pt.Splits]:
    """The 12 schools with the most pupils (quality.py's School settings), their pupils only:
    all 12,720 School pairs are out of reach, these 66 are not."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from quality import SETTINGS

    config = SETTINGS["school"]()
    frame = pt.load_dataset("school").frame
    names = [t.name for t in pt.load_dataset("school").tasks]
    kept = frame[names].notna().sum().sort_values(ascending=False, kind="stable").index[:12]
    inputs = ["minority", "female", "ses", "school_mean_ses"]
    config = config.model_copy(
        update={
            "tasks": [pt.Task(name=n, kind="regression") for n in kept],
            "data": config.data.model_copy(update={"features": inputs}),
            "train": config.train.model_copy(update={"seed": seed, "device": "cpu"}),
        }
    )
    splits = pt.load_splits(config).map(
        lambda t: t[t[list(kept)].notna().any(axis=1)].reset_index(drop=True)
    )
    return config, splits


PROBLEMS = {
    "planted": planted,
    "yeast6": yeast6,
    "yeast14": yeast14,
    "school12": school12,
}


def _pairs(matrix: np.ndarray) -> np.ndarray:
    sym = (matrix + matrix.T) / 2
    return sym[np.triu_indices(len(sym), k=1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="processes for the pair runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result: dict[str, dict] = {}
    for problem in args.problems:
        rhos: dict[str, list[float]] = {m: [] for m in CHEAP}
        runs = []
        started = time.perf_counter()
        for seed in range(args.seeds):
            config, splits = PROBLEMS[problem](seed)
            found = relate(
                config,
                splits=splits,
                measures=(*CHEAP, "transfer"),
                every=args.every,
                workers=args.workers,
            )
            truth = _pairs(normalized_affinity("transfer", found.measures["transfer"]))
            for m in CHEAP:
                rho = spearmanr(_pairs(found.affinity(m)), truth).statistic
                rhos[m].append(float(rho))
            runs.append(found.to_json())
        result[problem] = {
            "spearman_with_transfer": rhos,
            "seconds": time.perf_counter() - started,
            "runs": runs,
        }
        print(
            f"{problem}: Spearman ρ of each measure with transfer over the pairs i < j, "
            f"{args.seeds} seeds (mean ± std)"
        )
        for m in CHEAP:
            values = rhos[m]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            print(
                f"  {m:10s} {statistics.mean(values):+.2f} ± {std:.2f}   per seed "
                + ", ".join(f"{v:+.2f}" for v in values)
            )
        print(f"  groups by gradient (last seed): {runs[-1]['groups']}")
        last = runs[-1]["measures"]["transfer"]
        print(f"  transfer, last seed (row i helps column j if negative, %): {np.round(last, 1)}")
    path = ROOT / "benchmarks" / "results" / "relate_agreement.json"
    kept = json.loads(path.read_text()) if path.is_file() else {}  # other problems' results
    path.write_text(json.dumps({**kept, **result}, indent=1))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
