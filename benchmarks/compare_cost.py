"""Wall time of the full School ``compare`` (160 tasks, 5 seeds): this checkout vs another.

Each run is ``pt.compare`` on ``benchmarks/quality.py``'s School settings in a fresh process
(imports done before the clock starts), the variants in turn within each round so that drift in
the machine's speed hits all alike:

- ``--before DIR``: a checkout's ``polytask`` package to compare with, run with its defaults
  (for issue 13's baseline: ``git archive 478487b polytask | tar -x -C DIR``);
- this checkout with ``stl_vectorize`` ``exact`` (the default: School's dropout makes the STL
  networks separate runs) and ``dropout`` (stacked, all seeds in one ensemble), default workers.

    python benchmarks/compare_cost.py --before /tmp/before13 --rounds 2
    python benchmarks/compare_cost.py --quick    # 2 seeds, one round, this checkout only
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def child(package: str, vectorize: str, seeds: int) -> None:
    """One compare in this process; prints its wall time and Δm as JSON."""
    sys.path.insert(0, package)
    import torch

    import polytask as pt
    from polytask.config import Config, DataConfig, ModelConfig, TrainConfig

    torch.set_num_threads(1)
    config = Config(  # benchmarks/quality.py's School settings, spelled for old checkouts too
        data=DataConfig(dataset="school"),
        model=ModelConfig(shared=[64], head=[], dropout=0.2),
        train=TrainConfig(
            epochs=100, batch_size=128, lr=1e-3, weight_decay=1e-4, patience=10
        ),
    )
    kwargs = {} if vectorize == "default" else {"stl_vectorize": vectorize}
    started = time.perf_counter()
    result = pt.compare(config, seeds=seeds, **kwargs).to_json()
    wall = time.perf_counter() - started
    print(json.dumps({"wall": wall, "delta_m": result["delta_m_percent"], "file": pt.__file__}))


def run(package: str, vectorize: str, seeds: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", package, vectorize, str(seeds)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="another checkout's directory (holding polytask/)")
    parser.add_argument("--before-label", default="before")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/compare_cost.json"))
    parser.add_argument("--quick", action="store_true", help="2 seeds, 1 round (make bench)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.rounds = 2, 1
    if args.child:
        package, vectorize, seeds = args.child
        child(package, vectorize, int(seeds))
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from step_cost import machine

    variants = [("this checkout, exact", str(ROOT), "exact")]
    variants.append(("this checkout, dropout", str(ROOT), "dropout"))
    if args.before:
        variants.insert(0, (args.before_label, args.before, "default"))
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in variants}
    for r in range(args.rounds):
        for label, package, vectorize in variants:
            runs[label].append(run(package, vectorize, args.seeds))
            print(f"round {r + 1} {label:<28} {runs[label][-1]['wall']:6.1f} s", flush=True)
    walls = {label: statistics.median(x["wall"] for x in rs) for label, rs in runs.items()}
    first = variants[0][0]
    print(f"\nSchool compare, {args.seeds} seeds, median of {args.rounds} rounds (wall seconds)")
    print(f"{'variant':<30}{'wall':>8}{'÷ ' + first:>28}{'Δm%':>10}")
    for label, rs in runs.items():
        ratio = walls[first] / walls[label]
        print(f"{label:<30}{walls[label]:8.1f}{ratio:27.1f}x{rs[0]['delta_m']:10.2f}")
    Path(args.out).write_text(
        json.dumps(
            {
                "benchmark": "compare_cost",
                "command": " ".join(sys.argv),
                "machine": machine(),
                "seeds": args.seeds,
                "runs": runs,
                "median_wall": walls,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
