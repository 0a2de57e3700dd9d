"""STL vs MTL on the same splits over several seeds: per-task metrics, Δm%, paired tests."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .baselines import fit_stl
from .config import Config
from .errors import DataError
from .evaluate import (
    HIGHER_IS_BETTER,
    confidence_interval,
    delta_m,
    mean_std,
    paired_test,
    relative_change,
)
from .signals import expand
from .tasks import Task
from .train import Splits, fit, load_splits, resolve_tasks


@dataclass
class Comparison:
    """Results of ``compare``: per seed, per task, per method (``stl``, ``mtl``)."""

    tasks: list[Task]
    seeds: list[int]
    scores: dict[str, dict[str, list[dict[str, float]]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def main_tasks(self) -> list[Task]:
        return [t for t in self.tasks if t.is_main]

    def values(self, method: str, task: Task) -> list[float]:
        return [s[task.primary_metric] for s in self.scores[method][task.name]]

    def delta_m_per_seed(self) -> list[float]:
        metrics = {t.name: t.primary_metric for t in self.main_tasks}
        return [
            delta_m(
                metrics,
                {t.name: self.values("mtl", t)[i] for t in self.main_tasks},
                {t.name: self.values("stl", t)[i] for t in self.main_tasks},
            )
            for i in range(len(self.seeds))
        ]

    def to_json(self) -> dict[str, Any]:
        per_seed = self.delta_m_per_seed()
        dm_mean, dm_std = mean_std(per_seed)
        tasks: dict[str, Any] = {}
        for task in self.main_tasks:
            stl, mtl = self.values("stl", task), self.values("mtl", task)
            (stl_mean, stl_std), (mtl_mean, mtl_std) = mean_std(stl), mean_std(mtl)
            change = relative_change(task.primary_metric, mtl_mean, stl_mean)
            p = paired_test(mtl, stl)
            tasks[task.name] = {
                "metric": task.primary_metric,
                "higher_is_better": HIGHER_IS_BETTER[task.primary_metric],
                "stl": {"per_seed": stl, "mean": stl_mean, "std": stl_std},
                "mtl": {"per_seed": mtl, "mean": mtl_mean, "std": mtl_std},
                "relative_change_percent": change,
                "p_value": p,
                "verdict": _verdict(change, p),
                "all_metrics": {m: self.scores[m][task.name] for m in ("stl", "mtl")},
            }
        return {
            "delta_m_percent": dm_mean,
            "delta_m_std": dm_std,
            "delta_m_ci95": list(confidence_interval(per_seed)),
            "delta_m_per_seed": per_seed,
            "delta_m_definition": "mean over main tasks of the relative change of the primary "
            "metric vs STL in %, signed so that negative means MTL is better",
            "seeds": self.seeds,
            "seconds": self.seconds,
            "tasks": tasks,
            "summary": summary(tasks, dm_mean),
        }


def _verdict(change: float, p: float) -> str:
    if math.isnan(change) or abs(change) < 1e-9:
        return "tie"
    word = "better" if change < 0 else "worse"
    strength = "significantly " if not math.isnan(p) and p < 0.05 else ""
    return f"MTL {strength}{word}"


def summary(tasks: dict[str, Any], dm: float) -> str:
    """Plain-language verdict, saying so when MTL is worse."""
    n = len(tasks)
    worse = [k for k, v in tasks.items() if "worse" in v["verdict"]]
    better = [k for k, v in tasks.items() if "better" in v["verdict"]]
    sig_worse = [k for k, v in tasks.items() if v["verdict"] == "MTL significantly worse"]
    if math.isnan(dm):
        overall = "Δm could not be computed"
    elif dm < 0:
        overall = f"on average MTL is better than STL (Δm = {dm:+.2f}%)"
    else:
        overall = f"on average MTL is WORSE than STL (Δm = {dm:+.2f}%)"
    text = f"{overall}; MTL better on {len(better)}/{n} main tasks, worse on {len(worse)}/{n}"
    if sig_worse:
        text += f" (significantly worse, p<0.05: {', '.join(sig_worse)})"
    return text + "."


def compare(
    config: Config,
    *,
    seeds: int | Sequence[int] = 3,
    frame: pd.DataFrame | None = None,
    splits: Splits | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> Comparison:
    """Train STL and MTL with the same splits, budget and early stopping for each seed and
    score both on the test split. Seed ``s`` sets ``train.seed`` (init and batch order); the
    split stays fixed. Signals are applied once; their tasks are auxiliary (no baseline) except
    the main ``horizons`` tasks, so with one main task STL is the no-signal model."""
    seed_list = (
        list(range(config.train.seed, config.train.seed + seeds))
        if isinstance(seeds, int)
        else list(seeds)
    )
    if splits is None:
        splits = load_splits(config, frame)
    tasks = resolve_tasks(config)
    if config.signals is not None:
        # applied once: every MTL seed and every STL baseline sees the same tables
        expanded = expand(config, splits, tasks)
        config, splits = expanded.config, expanded.splits
        tasks = resolve_tasks(config)
    if len(splits.test) == 0:
        raise DataError("compare needs a test split: give data.test or data.test_fraction > 0")
    result = Comparison(tasks=tasks, seeds=seed_list)
    result.scores = {m: {t.name: [] for t in tasks if t.is_main} for m in ("stl", "mtl")}
    result.seconds = {"stl": 0.0, "mtl": 0.0}
    for seed in seed_list:
        seeded = config.model_copy(update={"train": config.train.model_copy(update={"seed": seed})})
        if on_progress:
            on_progress(f"seed {seed}: MTL")
        started = time.perf_counter()
        mtl = fit(seeded, splits=splits)
        result.seconds["mtl"] += time.perf_counter() - started
        for task in result.main_tasks:
            result.scores["mtl"][task.name].append(mtl.metrics["test"][task.name])
        started = time.perf_counter()
        stl = fit_stl(
            seeded,
            splits,
            on_task=(lambda t, s=seed: on_progress(f"seed {s}: STL {t.name}"))
            if on_progress
            else None,
        )
        result.seconds["stl"] += time.perf_counter() - started
        for name, run in stl.items():
            result.scores["stl"][name].append(run.metrics["test"][name])
    return result
