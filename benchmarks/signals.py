"""Each extra training signal against the same network without it, on real data.

For every config in ``examples/signals/`` this runs ``polytask.compare``: the no-signal arm is the
single-task network (one per main task, same inputs, budget, fixed split and early stopping on
validation), the signal arm the multi-task network with the signal's auxiliary tasks. Scores are
on the test split, over seeds (init and batch order), with a paired t-test.

    python benchmarks/signals.py                 # 5 seeds, writes benchmarks/results/signals.json
    python benchmarks/signals.py --seeds 2 --only focus
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import polytask as pt

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "signals"
EXPERIMENTS = {
    "auxiliary_from": "auxiliary.yaml",
    "promote": "promote.yaml",
    "horizons": "horizons.yaml",
    "represent": "represent.yaml",
    "focus": "focus.yaml",
    "teacher": "teacher.yaml",
}
DATA = {
    "horizons": "statsmodels macrodata, 1959Q1-2009Q3",
}


def _config(name: str, workdir: Path) -> pt.Config:
    if name == "horizons" and not (EXAMPLES / "macro.csv").is_file():
        raise SystemExit("run: python examples/signals/make_macro_csv.py examples/signals/macro.csv")
    config = pt.load_config(EXAMPLES / EXPERIMENTS[name])
    if name == "teacher":
        # the teacher is trained here, on the same split, instead of read from runs/
        source = pt.load_config(EXAMPLES / "teacher_source.yaml")
        pt.fit(source, out=workdir / "teacher")
        signals = config.signals.model_copy(update={"teacher": workdir / "teacher"})
        config = config.model_copy(update={"signals": signals})
    return config


def run(names: list[str], seeds: int) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            started = time.perf_counter()
            config = _config(name, Path(tmp))
            comparison = pt.compare(config, seeds=seeds).to_json()
            results[name] = {
                "config": f"examples/signals/{EXPERIMENTS[name]}",
                "data": DATA.get(name, "scikit-learn diabetes (examples/diabetes.csv)"),
                "seconds": time.perf_counter() - started,
                "tasks": {
                    task: {
                        "metric": entry["metric"],
                        "without": entry["stl"],
                        "with": entry["mtl"],
                        "relative_change_percent": entry["relative_change_percent"],
                        "p_value": entry["p_value"],
                        "verdict": entry["verdict"].replace("MTL", "signal"),
                    }
                    for task, entry in comparison["tasks"].items()
                },
            }
    return results


def table(results: dict, seeds: int) -> str:
    lines = [
        f"test-split metric over {seeds} seeds (mean ± std); change < 0 means the signal helps",
        "",
        "| signal | main task | metric | without signal | with signal | change | p (paired t) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        for task, entry in result["tasks"].items():
            without, with_ = entry["without"], entry["with"]
            lines.append(
                f"| {name} | {task} | {entry['metric']} | "
                f"{without['mean']:.3f} ± {without['std']:.3f} | "
                f"{with_['mean']:.3f} ± {with_['std']:.3f} | "
                f"{entry['relative_change_percent']:+.1f}% | {entry['p_value']:.3f} |"
            )
    total = sum(r["seconds"] for r in results.values())
    lines += ["", f"total {total:.0f} s on {torch.get_num_threads()} thread(s)"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--only", nargs="*", choices=list(EXPERIMENTS), default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "signals.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = args.only or list(EXPERIMENTS)
    results = run(names, args.seeds)
    print(table(results, args.seeds))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seeds": args.seeds, "results": results}, indent=2))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
