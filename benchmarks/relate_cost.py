"""Cost of ``polytask relate`` against a plain ``fit`` on Yeast (14 tasks), and its groups.

After an untimed warm-up, each arm trains ``examples/yeast.yaml`` once per seed (same
epochs: the recorder does not change the training trajectory): a plain ``pt.fit``, then
``pt.relate`` with ``gradient`` + ``hidden``, with ``lookahead`` alone, and with all three
(recorded every ``--every`` steps). Prints a table (CPU seconds of this process, which a
shared machine disturbs far less than wall seconds, mean ± std over seeds; the ratio to the
plain fit; wall seconds; and where relate's time went: ``train`` is the training loop with
the recording of gradient and lookahead, which are also shown alone) and writes
``benchmarks/results/relate_cost.json`` with the matrices and groups of the last arm; the
heatmaps of the last seed go to ``--out``.

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


def _timed(fn):
    """``fn()``, its CPU seconds (this process, all threads) and its wall seconds."""
    cpu, wall = time.process_time(), time.perf_counter()
    value = fn()
    return value, time.process_time() - cpu, time.perf_counter() - wall


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


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
    train = {"device": "cpu", **({"epochs": 20} if args.quick else {})}
    config = config.model_copy(update={"train": config.train.model_copy(update=train)})
    seeds = 1 if args.quick else args.seeds
    splits = pt.load_splits(config)
    warm = config.model_copy(update={"train": config.train.model_copy(update={"epochs": 1})})
    pt.fit(warm, splits=splits)  # imports and first-call costs, untimed
    relate(warm, splits=splits, every=args.every)
    cpu: dict[str, list[float]] = {"fit": [], **{arm: [] for arm in ARMS}}
    wall: dict[str, list[float]] = {arm: [] for arm in cpu}
    parts: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    epochs: list[int] = []
    last = None
    for s in range(seeds):
        cfg = config.model_copy(
            update={"train": config.train.model_copy(update={"seed": config.train.seed + s})}
        )
        run, c, w = _timed(lambda cfg=cfg: pt.fit(cfg, splits=splits))
        cpu["fit"].append(c)
        wall["fit"].append(w)
        epochs.append(len(run.history))
        for arm, measures in ARMS.items():
            last, c, w = _timed(
                lambda cfg=cfg, measures=measures: relate(
                    cfg, splits=splits, measures=measures, every=args.every
                )
            )
            cpu[arm].append(c)
            wall[arm].append(w)
            parts[arm].append(last.settings["seconds"])
    assert last is not None
    last.save(args.out)  # the heatmaps of the last seed, all three measures (untimed)
    fit_cpu = statistics.mean(cpu["fit"])
    print(
        f"relate cost on Yeast (T = 14, {len(splits.train)} training rows), examples/yeast.yaml, "
        f"CPU ({args.threads} thread), {seeds} seed(s), gradient and lookahead recorded every "
        f"{args.every} steps, epochs per run {epochs}; CPU seconds of this process (the "
        "machine may be shared: wall seconds are shown too), mean ± std over seeds"
    )
    print(f"{'arm':28s} {'CPU s':>14s} {'× fit':>6s} {'wall s':>14s}   relate's parts (wall s)")
    rows = []
    for arm in cpu:
        c_mean, c_std = _mean_std(cpu[arm])
        w_mean, w_std = _mean_std(wall[arm])
        row = {
            "arm": arm,
            "cpu_seconds": cpu[arm],
            "wall_seconds": wall[arm],
            "cpu_ratio_to_fit": c_mean / fit_cpu,
        }
        split = ""
        if arm in parts:  # training (recording included) and each measure's own share
            row["parts"] = parts[arm]
            keys = parts[arm][0]
            split = ", ".join(f"{k} {statistics.mean(p[k] for p in parts[arm]):.1f}" for k in keys)
        rows.append(row)
        print(
            f"{arm:28s} {c_mean:7.1f} ± {c_std:4.1f} {c_mean / fit_cpu:6.2f} "
            f"{w_mean:7.1f} ± {w_std:4.1f}   {split}"
        )
    print("groups (gradient):", last.groups)
    result = {
        "config": "examples/yeast.yaml" + (" (epochs 20)" if args.quick else ""),
        "device": "cpu",
        "threads": args.threads,
        "every": args.every,
        "seeds": seeds,
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
