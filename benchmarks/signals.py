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

import numpy as np
import torch

import polytask as pt
from polytask.evaluate import mean_std, paired_test

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "signals"
EXPERIMENTS = {
    "auxiliary_from": "auxiliary.yaml",
    "auxiliary_from/qm9": "qm9_auxiliary.yaml",
    "promote": "promote.yaml",
    "horizons": "horizons.yaml",
    "represent": "represent.yaml",
    "represent/qm9": "qm9_represent.yaml",
    "focus": "focus.yaml",
    "focus/qm9": "qm9_focus.yaml",
    "teacher": "teacher.yaml",
}
DATA = {
    "horizons": "statsmodels macrodata, 1959Q1-2009Q3",
    "auxiliary_from/qm9": "qm9_small",
    "represent/qm9": "qm9_small",
    "focus/qm9": "qm9_small",
}


def _config(name: str, workdir: Path) -> pt.Config:
    if name == "horizons" and not (EXAMPLES / "macro.csv").is_file():
        raise SystemExit(
            "run: python examples/signals/make_macro_csv.py examples/signals/macro.csv"
        )
    config = pt.load_config(EXAMPLES / EXPERIMENTS[name])
    if name == "teacher":
        # the teacher is trained here, on the same split, instead of read from runs/
        source = pt.load_config(EXAMPLES / "teacher_source.yaml")
        pt.fit(source, out=workdir / "teacher")
        signals = config.signals.model_copy(update={"teacher": workdir / "teacher"})
        config = config.model_copy(update={"signals": signals})
    return config


def _on_focus_rows(config: pt.Config, seeds: int) -> dict:
    """RMSE of the main task on the test rows the focus rule flags, with and without the task."""
    splits = pt.load_splits(config)
    expanded = pt.signals.expand(config, splits, config.tasks)
    flagged = (expanded.splits.test[expanded.state["focus"][0]["task"]] == 1).to_numpy()
    task = next(t.name for t in config.tasks if t.is_main)
    truth = splits.test[task].to_numpy()[flagged]
    arms: dict[str, list[float]] = {"without": [], "with": []}
    for seed in range(config.train.seed, config.train.seed + seeds):
        train = config.train.model_copy(update={"seed": seed})
        for arm, signals in (("without", None), ("with", config.signals)):
            seeded = config.model_copy(update={"train": train, "signals": signals})
            predicted = pt.fit(seeded, splits=splits).predict(splits.test)[task].to_numpy()
            arms[arm].append(float(np.sqrt(np.mean((predicted[flagged] - truth) ** 2))))
    return {
        "rows": int(flagged.sum()),
        "metric": "rmse",
        **{
            arm: dict(zip(("mean", "std"), mean_std(v), strict=True), per_seed=v)
            for arm, v in arms.items()
        },
        "p_value": paired_test(arms["with"], arms["without"]),
    }


def _train_mean_rmse(config: pt.Config) -> dict[str, float]:
    """Test RMSE of the constant forecast "the training mean", per main task: the floor to beat."""
    splits = pt.load_splits(config)
    tasks = pt.signals.horizon_tasks(config.signals.horizons)
    return {
        t.name: float(np.sqrt(np.nanmean((splits.test[t.name] - splits.train[t.name].mean()) ** 2)))
        for t in tasks
        if t.is_main
    }


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
            if name == "horizons":
                results[name]["train_mean_forecast"] = _train_mean_rmse(config)
            if name.startswith("focus"):
                results[name]["focus_rows"] = _on_focus_rows(config, seeds)
                results[name]["seconds"] = time.perf_counter() - started
    return results


def _spread(values: dict) -> str:
    return f"{values['mean']:.4g} ± {values['std']:.2g}"


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
                f"{_spread(without)} | {_spread(with_)} | "
                f"{entry['relative_change_percent']:+.1f}% | {entry['p_value']:.3f} |"
            )
        for task, value in result.get("train_mean_forecast", {}).items():
            lines.append(f"| {name}, training-mean forecast | {task} | rmse | {value:.4g} | | | |")
        rows = result.get("focus_rows")
        if rows:
            change = (rows["with"]["mean"] - rows["without"]["mean"]) / rows["without"]["mean"]
            lines.append(
                f"| {name}, flagged test rows only (n={rows['rows']}) | {task} | rmse | "
                f"{_spread(rows['without'])} | {_spread(rows['with'])} | {100 * change:+.1f}% | "
                f"{rows['p_value']:.3f} |"
            )
    total = sum(r["seconds"] for r in results.values())
    lines += ["", f"total {total:.0f} s on {torch.get_num_threads()} thread(s)"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--only", nargs="*", choices=list(EXPERIMENTS), default=None)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "signals.json"
    )
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
