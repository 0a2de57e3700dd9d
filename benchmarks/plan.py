"""``plan`` on every data set of the suite: plan vs STL and vs all-in-one on test (issue 12).

Each data set's settings are ``quality.py``'s (same splits, budgets, stopping rule, seeds 0–4);
``pt.plan`` trains its default candidates with the test rows held back, chooses per main task on
validation, and only then scores STL, all-in-one and the plan on test. One JSON per data set
in ``benchmarks/results/plan/``; ``--render`` writes the ``plan`` block of docs/benchmarks.md.

    python benchmarks/plan.py                       # every data set, 5 seeds, 2 workers
    python benchmarks/plan.py --datasets macro yeast
    python benchmarks/plan.py --quick               # macro, 2 seeds (about a minute)
    python benchmarks/plan.py --render              # doc section from the JSON files
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality as q  # noqa: E402
import torch  # noqa: E402

from polytask.io import write_json  # noqa: E402
from polytask.plan import DEFAULT_CANDIDATES, RULE, plan  # noqa: E402

ROOT = q.ROOT
RESULTS = ROOT / "benchmarks" / "results" / "plan"
ORDER = ["yeast", "macro", "qm9_small", "multidigits", "star", "school"]
QUICK = {"datasets": ["macro"], "seeds": 2}


def run_dataset(name: str, seeds: int, workers: int, keep: Path | None) -> dict[str, Any]:
    config = q.SETTINGS[name]()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = (keep / name) if keep is not None else Path(tmp) / name
        result = plan(config, seeds=seeds, workers=workers, out=out, overwrite=True,
                      on_progress=lambda m: print(f"  {name}: {m}", flush=True))  # fmt: skip
        comparison = json.loads((out / "comparison.json").read_text())
        report = json.loads((out / "plan.json").read_text())
    return {
        "dataset": name,
        "settings": json.loads(config.model_dump_json()),
        "seeds": seeds,
        "workers": workers,
        "candidates": list(DEFAULT_CANDIDATES),
        "wall_seconds": time.perf_counter() - started,
        "plan": report,
        "comparison": comparison,
        "choices": dict(Counter(c["candidate"] for c in result.report["choice"].values())),
        "machine": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }


def _fmt(value: float | None, digits: int = 2, sign: bool = True) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _num(value: float | None) -> float:
    """JSON writes NaN as null."""
    return math.nan if value is None else float(value)


def _ci(values: list[float]) -> str:
    return f"[{_fmt(values[0])}, {_fmt(values[1])}]"


def _counts(tasks: dict[str, Any]) -> str:
    better = sum(t["verdict"] == "MTL significantly better" for t in tasks.values())
    worse = sum(t["verdict"] == "MTL significantly worse" for t in tasks.values())
    return f"{better} / {worse}"


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "**Summary: test Δm% of the plan, mean [95% CI] over seeds (negative = the plan is "
        "better).** *better / worse*: main tasks where the paired t-test over seeds gives "
        "p < 0.05 and the CI of the relative change excludes 0. *choices*: how many main "
        "tasks went to each candidate.",
        "",
        "| data set | main tasks | plan vs STL | better / worse vs STL | plan vs all-in-one | "
        "better / worse vs all-in-one | all-in-one vs STL (from the same runs) | choices | "
        "wall time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c, a = r["comparison"], r["comparison"]["vs_all_in_one"]
        aio_vs_stl = _all_in_one_vs_stl(c)
        choices = ", ".join(f"{k} {v}" for k, v in sorted(r["choices"].items(), key=_by_count))
        lines.append(
            f"| {r['dataset']} | {len(c['tasks'])} | {_fmt(c['delta_m_percent'])} "
            f"{_ci(c['delta_m_ci95'])} | {_counts(c['tasks'])} | {_fmt(a['delta_m_percent'])} "
            f"{_ci(a['delta_m_ci95'])} | {_counts(a['tasks'])} | {_fmt(aio_vs_stl)} | "
            f"{choices} | {r['wall_seconds'] / 60:.1f} min |"
        )
    lines += ["", f"Rule: {RULE}.", ""]
    for r in results:
        lines += _dataset_section(r)
    return "\n".join(lines)


def _by_count(item: tuple[str, int]) -> tuple[int, str]:
    return (-item[1], item[0])


def _all_in_one_vs_stl(c: dict[str, Any]) -> float:
    """Δm of all-in-one vs STL from the two comparisons' per-task means (a mean of means)."""
    from polytask.evaluate import relative_change

    changes = []
    for name, t in c["tasks"].items():
        aio = c["vs_all_in_one"]["tasks"][name]["stl"]["per_seed"]
        stl = t["stl"]["per_seed"]
        per_seed = [
            relative_change(t["metric"], _num(x), _num(s)) for x, s in zip(aio, stl, strict=True)
        ]
        changes += [sum(per_seed) / len(per_seed)]
    finite = [c for c in changes if not math.isnan(c)]
    return sum(finite) / len(finite) if finite else math.nan


def _dataset_section(r: dict[str, Any]) -> list[str]:
    c, p = r["comparison"], r["plan"]
    lines = [
        f"### {r['dataset']} (plan)",
        "",
        f"{len(c['tasks'])} main tasks; {r['seeds']} seeds, {r['workers']} worker processes, "
        f"{r['wall_seconds'] / 60:.1f} min in all. {c['summary']}",
        "",
        "| candidate | status | validation Δm% vs STL (mean of tasks) | train time (s, all "
        "seeds) |",
        "|---|---|---|---|",
    ]
    from polytask.evaluate import relative_change

    stl = p["candidates"]["stl"]["validation"]
    for name, entry in p["candidates"].items():
        if entry["status"] != "trained":
            lines.append(f"| {name} | {entry['status']}: {entry.get('reason', '')} | — | — |")
            continue
        changes = [
            relative_change(v["metric"], _num(v["mean"]), _num(stl[task]["mean"]))
            for task, v in entry["validation"].items()
        ]
        finite = [x for x in changes if not math.isnan(x)]
        dm = sum(finite) / len(finite) if finite else math.nan
        lines.append(
            f"| {name} | trained | {_fmt(dm)} | {entry['train_seconds']:.0f} |"
        )
    lines += [
        "",
        "<details><summary>per-task choices and test scores (mean ± std over seeds)</summary>",
        "",
        "| task (metric) | chosen | validation gain ± spread | STL test | all-in-one test | "
        "plan test | change vs STL % | verdict vs STL |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, t in c["tasks"].items():
        choice = p["choice"][name]
        aio = c["vs_all_in_one"]["tasks"][name]["stl"]
        gain = (
            "—"
            if choice["candidate"] == "stl"
            else f"{choice['gain']:.4f} ± {choice['spread']:.4f}"
        )

        def score(s: dict[str, Any]) -> str:
            return f"{_fmt(s['mean'], 4, False)} ± {_fmt(s['std'], 4, False)}"

        lines.append(
            f"| {name} ({t['metric']}) | {choice['candidate']} | {gain} | {score(t['stl'])} | "
            f"{score(aio)} | {score(t['mtl'])} | {_fmt(t['relative_change_percent'])} | "
            f"{t['verdict']} |"
        )
    lines += ["", "</details>", ""]
    return lines


def groups_markdown(results: list[dict[str, Any]]) -> str:
    """The groups candidate of each data set's plan: what relate suggested and how it scored."""
    lines = [
        "| data set | main tasks | groups (sizes) | validation Δm% vs STL: groups | "
        "all-in-one | tasks that chose groups |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        p = r["plan"]
        groups = p["relatedness"].get("groups") or []
        sizes = sorted((len(g) for g in groups), reverse=True)
        shown = ", ".join(map(str, sizes[:10])) + (", …" if len(sizes) > 10 else "")
        delta = p["validation_delta_m_percent"]
        entry = p["candidates"]["groups"]
        scored = _fmt(delta.get("groups")) if entry["status"] == "trained" else entry["status"]
        chosen = sum(c["candidate"] == "groups" for c in p["choice"].values())
        lines.append(
            f"| {r['dataset']} | {len(p['choice'])} | {len(groups)} ({shown}) | {scored} | "
            f"{_fmt(delta.get('all_in_one'))} | {chosen} |"
        )
    return "\n".join(lines)


def load_results(names: list[str]) -> list[dict[str, Any]]:
    found = []
    for name in names:
        path = RESULTS / f"{name}.json"
        if path.is_file():
            found.append(json.loads(path.read_text()))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=ORDER, choices=ORDER)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--render", action="store_true")
    parser.add_argument("--keep", type=Path, default=None, help="keep the plan directories here")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the workers use one thread each; tiny models gain nothing from more
    results_dir = args.out or (RESULTS.parent / "quick" / "plan" if args.quick else RESULTS)
    if args.render:
        results = load_results(ORDER)
        text = markdown(results)
        q.write_doc(ROOT / "docs" / "benchmarks.md", text, block="plan")
        q.write_doc(ROOT / "docs" / "relatedness.md", groups_markdown(results), block="plan-groups")
        print(text)
        return 0
    datasets, seeds = (QUICK["datasets"], QUICK["seeds"]) if args.quick else (
        args.datasets, args.seeds)  # fmt: skip
    results_dir.mkdir(parents=True, exist_ok=True)
    for name in datasets:
        print(f"{name}: plan with {seeds} seeds", flush=True)
        result = run_dataset(name, seeds, args.workers, args.keep)
        write_json(results_dir / f"{name}.json", result)
        c = result["comparison"]
        print(
            f"{name}: plan vs STL Δm {_fmt(c['delta_m_percent'])} {_ci(c['delta_m_ci95'])}, "
            f"vs all-in-one {_fmt(c['vs_all_in_one']['delta_m_percent'])}, "
            f"choices {result['choices']}, {result['wall_seconds'] / 60:.1f} min",
            flush=True,
        )
    print(markdown([json.loads((results_dir / f"{n}.json").read_text()) for n in datasets]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
