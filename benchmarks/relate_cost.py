"""Cost of ``polytask relate`` against a plain ``fit`` on Yeast (14 tasks), and its groups.

After an untimed warm-up, each arm trains ``examples/yeast.yaml`` once per seed (same
epochs: the recorder does not change the training trajectory): a plain ``pt.fit``, then
``pt.relate`` with ``gradient`` + ``hidden``, with ``lookahead`` alone, and with all three
(every ``--every`` steps). Prints a table (wall seconds, mean ± std over seeds, the ratio to
the plain fit, and where relate's time went: ``train`` includes the recording of gradient
and lookahead, which are also shown alone) and writes ``benchmarks/results/relate_cost.json``
with the matrices and groups of the last arm; the heatmaps of the last seed go to ``--out``.

    python benchmarks/relate_cost.py                 # 3 seeds, every 10 steps
    python benchmarks/relate_cost.py --quick         # 1 seed, 20 epochs
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's polytask

import polytask as pt  # noqa: E402
from polytask.relate import relate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARMS = {
    "gradient+hidden": ("gradient", "hidden"),
    "lookahead": ("lookahead",),
    "gradient+lookahead+hidden": ("gradient", "lookahead", "hidden"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "relate_yeast")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = pt.load_config(ROOT / "examples" / "yeast.yaml")
    config = config.model_copy(update={"train": config.train.model_copy(update={"device": "cpu"})})
    if args.quick:
        args.seeds = 1
        config = config.model_copy(update={"train": config.train.model_copy(update={"epochs": 20})})
    splits = pt.load_splits(config)
    warm = config.model_copy(update={"train": config.train.model_copy(update={"epochs": 1})})
    pt.fit(warm, splits=splits)  # imports and first-call costs, untimed
    relate(warm, splits=splits, every=args.every)
    seconds: dict[str, list[float]] = {"fit": [], **{arm: [] for arm in ARMS}}
    parts: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    epochs: list[int] = []
    last = None
    for s in range(args.seeds):
        cfg = config.model_copy(
            update={"train": config.train.model_copy(update={"seed": config.train.seed + s})}
        )
        started = time.perf_counter()
        run = pt.fit(cfg, splits=splits)
        seconds["fit"].append(time.perf_counter() - started)
        epochs.append(len(run.history))
        for arm, measures in ARMS.items():
            started = time.perf_counter()
            last = relate(
                cfg,
                splits=splits,
                measures=measures,
                every=args.every,
                out=args.out if arm == "gradient+lookahead+hidden" else None,
            )
            seconds[arm].append(time.perf_counter() - started)
            parts[arm].append(last.settings["seconds"])
    assert last is not None
    fit_mean = statistics.mean(seconds["fit"])
    rows = []
    print(
        f"relate cost on Yeast (T = 14, {len(splits.train)} training rows), CPU "
        f"({args.threads} thread), {args.seeds} seed(s), record every {args.every} steps, "
        f"epochs per run {epochs}"
    )
    print(f"{'arm':28s} {'seconds (mean ± std)':>22s} {'× fit':>7s}")
    for arm, values in seconds.items():
        mean = statistics.mean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        row = {"arm": arm, "seconds": values, "mean": mean, "ratio": mean / fit_mean}
        if arm in parts:  # where the time went: training (with recording) and each measure
            row["parts"] = parts[arm]
        rows.append(row)
        split = ""
        if arm in parts:
            keys = parts[arm][0]
            split = (
                "  ("
                + ", ".join(f"{k} {statistics.mean(p[k] for p in parts[arm]):.1f} s" for k in keys)
                + ")"
            )
        print(f"{arm:28s} {mean:14.1f} ± {std:5.1f} s {mean / fit_mean:7.2f}{split}")
    print("groups (gradient):", last.groups)
    result = {
        "config": "examples/yeast.yaml" + (" (epochs 20)" if args.quick else ""),
        "device": "cpu",
        "threads": args.threads,
        "every": args.every,
        "seeds": args.seeds,
        "epochs": epochs,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "rows": rows,
        "relatedness": last.to_json(),
    }
    path = ROOT / "benchmarks" / "results" / ("quick" if args.quick else "") / "relate_cost.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"written: {path} and the heatmaps in {args.out}")


if __name__ == "__main__":
    main()
