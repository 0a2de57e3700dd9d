"""Caruana's peaks functions: does backprop MTL share hidden units between tasks that share
inputs?

Six variables A–F, uniform on [0, 1]. A peaks function is IF (?1 > ½) THEN ?2 ELSE ?3 with
?1, ?2, ?3 three distinct variables. The task set is the 20 three-variable subsets of A–F, one
function each (roles rotated through the subsets), so a pair of tasks shares 0 (10 pairs), 1
(90) or 2 (90) variables. One hard-sharing network (one hidden layer, linear heads) learns all
20 regression tasks jointly; then, on held-out rows:

- hidden-unit sharing of tasks i, j = the Spearman correlation of their sensitivity profiles
  S[t, k] = mean |∂y_t/∂h_k| over hidden units k (``polytask.relate.hidden_sensitivity`` and
  ``rank_correlation``, what ``polytask relate --measure hidden`` reports);
- per seed, the Spearman rank correlation ρ over the 190 pairs between hidden-unit sharing and
  the number of variables the two functions share; as a control, the same ρ for the network
  before training (same seed), where nothing is learned yet.

With linear heads ∂y_t/∂h_k is task t's head weight on unit k, so a profile is |W_t|.

Caruana (1997) reports that sharing rises with the variables two functions share: ρ > 0. We
report ρ's mean ± std and 95% t-interval over seeds, the mean sharing at each shared count and
the held-out fit (R² of each task, averaged), whatever they show. Seed s sets the data and the
network's initialization.

    python benchmarks/relatedness_peaks.py              # 5 seeds (a few minutes on a CPU)
    python benchmarks/relatedness_peaks.py --quick      # 2 seeds, fewer rows and epochs
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # measure this checkout's polytask, installed or not
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

import polytask as pt  # noqa: E402
from polytask.data import TaskData  # noqa: E402
from polytask.evaluate import confidence_interval, mean_std  # noqa: E402
from polytask.relate import hidden_sensitivity, rank_correlation  # noqa: E402

VARIABLES = "ABCDEF"


def peaks_functions() -> list[tuple[str, str, str]]:
    """(condition, then, else) for each 3-subset of A–F, roles rotated subset by subset."""
    functions = []
    for i, subset in enumerate(itertools.combinations(VARIABLES, 3)):
        r = i % 3
        functions.append(tuple(subset[r:] + subset[:r]))
    return functions  # type: ignore[return-value]


def task_name(f: tuple[str, str, str]) -> str:
    return f"if{f[0]}_{f[1]}_{f[2]}"


def make_frame(n: int, functions: list[tuple[str, str, str]], seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.uniform(0, 1, size=(n, len(VARIABLES))), columns=list(VARIABLES))
    for f in functions:
        cond, then, other = (frame[v].to_numpy() for v in f)
        frame[task_name(f)] = np.where(cond > 0.5, then, other)
    return frame


def shared_variables(functions: list[tuple[str, str, str]]) -> np.ndarray:
    return np.array([[len(set(a) & set(b)) for b in functions] for a in functions])


def one_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    functions = peaks_functions()
    names = [task_name(f) for f in functions]
    train = make_frame(args.rows, functions, seed)
    held_out = make_frame(args.held_out, functions, seed + 10_000)
    config = pt.Config(
        data=pt.DataConfig(
            train=train, features=list(VARIABLES), validation_fraction=0.15, test_fraction=0.0
        ),
        tasks=[pt.Task(name=n, kind="regression") for n in names],
        model=pt.ModelConfig(shared=[args.hidden], activation=args.activation),
        train=pt.TrainConfig(
            epochs=args.epochs, batch_size=64, lr=args.lr, patience=None, seed=seed, device="cpu"
        ),
    )
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    run = pt.fit(config)
    seconds = time.perf_counter() - started
    data = TaskData.from_frame(held_out, run.preprocessor)
    profiles = hidden_sensitivity(run.model, data)
    sharing = rank_correlation(profiles)
    shared = shared_variables(functions)
    upper = np.triu_indices(len(names), k=1)
    rho = float(stats.spearmanr(sharing[upper], shared[upper]).statistic)
    torch.manual_seed(seed)  # the network fit started from: the control, nothing learned yet
    initial = pt.build_model(
        config.model,
        n_numeric=run.preprocessor.n_numeric,
        cardinalities=run.preprocessor.cardinalities,
        out_dims=run.preprocessor.output_dims(),
    )
    at_init = rank_correlation(hidden_sensitivity(initial, data))
    rho_init = float(stats.spearmanr(at_init[upper], shared[upper]).statistic)
    by_count = {
        int(k): float(sharing[upper][shared[upper] == k].mean()) for k in np.unique(shared[upper])
    }
    scores = run.score(data)
    r2 = float(np.mean([scores[n]["r2"] for n in names]))
    return {
        "seed": seed,
        "rho": rho,
        "rho_at_init": rho_init,
        "sharing_by_shared_variables": by_count,
        "held_out_r2": r2,
        "train_seconds": seconds,
        "dead_units": int((profiles.max(axis=0) == 0).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=2000, help="training rows (15%% validation)")
    parser.add_argument("--held-out", type=int, default=1000)
    parser.add_argument("--hidden", type=int, default=40, help="hidden units of the one layer")
    parser.add_argument("--activation", default="tanh")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2 seeds, 1000 rows, 30 epochs")
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "relatedness_peaks.json",
        help="where to write the JSON results (default: %(default)s)",
    )
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.rows, args.epochs = 2, 1000, 30
    per_seed = []
    for seed in range(args.seeds):
        per_seed.append(one_seed(args, seed))
        r = per_seed[-1]
        print(
            f"seed {seed}: ρ = {r['rho']:+.3f} (at init {r['rho_at_init']:+.3f}), held-out R² "
            f"{r['held_out_r2']:.3f}, "
            f"{r['train_seconds']:.1f} s",
            flush=True,
        )
    rhos = [r["rho"] for r in per_seed]
    mean, std = mean_std(rhos)
    ci = confidence_interval(rhos, 0.95)
    counts = sorted({k for r in per_seed for k in r["sharing_by_shared_variables"]})
    by_count = {
        k: mean_std([r["sharing_by_shared_variables"][k] for r in per_seed]) for k in counts
    }
    print()
    print(f"Peaks functions: 20 tasks over A–F, {args.hidden} {args.activation} hidden units, ")
    print(f"{args.rows} training rows, {args.epochs} epochs, {args.seeds} seeds")
    print("| variables shared | pairs | hidden-unit sharing (Spearman, mean ± std over seeds) |")
    print("|---|---|---|")
    shared = shared_variables(peaks_functions())
    upper = np.triu_indices(len(shared), k=1)
    for k in counts:
        n_pairs = int((shared[upper] == k).sum())
        m, s = by_count[k]
        print(f"| {k} | {n_pairs} | {m:+.3f} ± {s:.3f} |")
    r2_mean, r2_std = mean_std([r["held_out_r2"] for r in per_seed])
    init = [r["rho_at_init"] for r in per_seed]
    init_mean, init_std = mean_std(init)
    init_ci = confidence_interval(init, 0.95)
    print(
        f"\nρ(sharing, variables shared) = {mean:+.3f} ± {std:.3f}, 95% CI "
        f"[{ci[0]:+.3f}, {ci[1]:+.3f}] over {args.seeds} seeds; held-out R² {r2_mean:.3f} ± "
        f"{r2_std:.3f}\ncontrol, the same networks before training: ρ = {init_mean:+.3f} ± "
        f"{init_std:.3f}, 95% CI [{init_ci[0]:+.3f}, {init_ci[1]:+.3f}]"
    )
    result = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "functions": [list(f) for f in peaks_functions()],
        "rho_mean": mean,
        "rho_std": std,
        "rho_ci95": list(ci),
        "rho_at_init": [init_mean, init_std],
        "rho_at_init_ci95": list(init_ci),
        "sharing_by_shared_variables": {str(k): list(v) for k, v in by_count.items()},
        "held_out_r2": [r2_mean, r2_std],
        "per_seed": per_seed,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "command": "python benchmarks/relatedness_peaks.py " + " ".join(sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
