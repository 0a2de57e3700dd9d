"""STL vs MTL on the same splits over several seeds: per-task metrics, Δm%, paired tests.

One sign convention throughout: a relative change (per task, ``relative_change_percent``) and
Δm (their mean over main tasks) are in % of the STL value, signed so that **negative means MTL
is better**, whatever the metric's direction. A difference is called significant only when the
two-sided paired t-test over seeds gives p < ``ALPHA`` *and* the 95% Student-t interval of the
per-seed relative change excludes 0 (for Δm: its interval over seeds excludes 0).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .baselines import Vectorize, fit_stl_seeds, sequential_reason
from .config import NO_LOG, Config
from .errors import DataError
from .evaluate import (
    HIGHER_IS_BETTER,
    confidence_interval,
    delta_m,
    mean_std,
    paired_test,
    relative_change,
)
from .parallel import Pool, default_workers
from .tasks import Task
from .train import Splits, fit, seed_list, shared_setup

#: Significance level of the per-task paired test; intervals are at level 1 - ALPHA.
ALPHA = 0.05
#: A main task with fewer labelled test rows than this draws a warning.
FEW_TEST_ROWS = 30

SIGN_CONVENTION = (
    "relative change of the primary metric vs STL in % of the STL value, signed so that "
    "negative means MTL is better; used by delta_m_percent and every relative_change_percent"
)
SIGNIFICANCE_RULE = (
    f"significant when the two-sided paired t-test over seeds gives p < {ALPHA} and the "
    f"{1 - ALPHA:.0%} t-interval of the per-seed relative change excludes 0; Δm is significant "
    "when its interval over seeds excludes 0"
)

BETTER = "MTL significantly better"
WORSE = "MTL significantly worse"
NO_DIFFERENCE = "no significant difference"
TIE = "tie"
NOT_SCORED = "not comparable (metric undefined)"


def not_enough_seeds(n: int) -> str:
    """The verdict when fewer than two seeds give a score: nothing can be tested."""
    return f"not enough seeds to test (n={n})"


@dataclass
class Comparison:
    """Results of ``compare``: per seed, per task, per method (``stl``, ``mtl``)."""

    tasks: list[Task]
    seeds: list[int]
    scores: dict[str, dict[str, list[dict[str, float]]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    #: What the ``stl`` and ``mtl`` slots hold, in words (``plan`` also compares itself with
    #: the all-in-one model in these slots: the schema stays the same).
    labels: tuple[str, str] = ("STL", "MTL")

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

    def test_rows(self, task: Task) -> int | None:
        """Labelled test rows the task was scored on (the fewest over seeds and methods)."""
        counts = [s["n"] for m in ("stl", "mtl") for s in self.scores[m][task.name] if "n" in s]
        return int(min(counts)) if counts else None

    def to_json(self) -> dict[str, Any]:
        per_seed = self.delta_m_per_seed()
        finite = [v for v in per_seed if not math.isnan(v)]
        dm_mean, dm_std = mean_std(per_seed)
        dm_ci = confidence_interval(finite, 1 - ALPHA)
        tasks = {task.name: self._task_json(task) for task in self.main_tasks}
        result = {
            "delta_m_percent": dm_mean,
            "delta_m_std": dm_std,
            "delta_m_ci95": list(dm_ci),
            "delta_m_per_seed": per_seed,
            "delta_m_verdict": _delta_m_verdict(finite, dm_ci),
            "delta_m_definition": "mean over main tasks of the relative change of the primary "
            "metric vs STL in %, signed so that negative means MTL is better",
            "sign_convention": SIGN_CONVENTION,
            "significance": SIGNIFICANCE_RULE,
            "alpha": ALPHA,
            "few_test_rows_threshold": FEW_TEST_ROWS,
            "seeds": self.seeds,
            "seconds": self.seconds,
            "baseline": self.labels[0],
            "method": self.labels[1],
            "tasks": tasks,
        }
        result["warnings"] = _warnings(tasks, len(self.seeds))
        result["summary"] = summary(result)
        return result

    def _task_json(self, task: Task) -> dict[str, Any]:
        metric = task.primary_metric
        stl, mtl = self.values("stl", task), self.values("mtl", task)
        (stl_mean, stl_std), (mtl_mean, mtl_std) = mean_std(stl), mean_std(mtl)
        changes = [relative_change(metric, m, s) for m, s in zip(mtl, stl, strict=True)]
        scored = [(m, s) for m, s in zip(mtl, stl, strict=True) if not math.isnan(m + s)]
        finite = [c for c in changes if not math.isnan(c)]
        ci = confidence_interval(finite, 1 - ALPHA)
        p = paired_test([m for m, _ in scored], [s for _, s in scored])
        verdict = _verdict(finite, p, ci)
        return {
            "metric": metric,
            "higher_is_better": HIGHER_IS_BETTER[metric],
            "n_test": self.test_rows(task),
            "stl": {"per_seed": stl, "mean": stl_mean, "std": stl_std},
            "mtl": {"per_seed": mtl, "mean": mtl_mean, "std": mtl_std},
            "relative_change_percent": mean_std(changes)[0],
            "relative_change_per_seed": changes,
            "relative_change_ci95": list(ci),
            "p_value": p,
            "significant": verdict in (BETTER, WORSE),
            "verdict": verdict,
            "all_metrics": {m: self.scores[m][task.name] for m in ("stl", "mtl")},
        }


def _excludes_zero(ci: Sequence[float]) -> bool:
    return ci[0] > 0 or ci[1] < 0  # False for a NaN interval


def _verdict(changes: Sequence[float], p: float, ci: Sequence[float]) -> str:
    """``changes``: the finite per-seed relative changes (negative: MTL better)."""
    if not changes:
        return NOT_SCORED
    if all(abs(c) < 1e-9 for c in changes):
        return TIE
    if len(changes) < 2:
        return not_enough_seeds(len(changes))
    if p < ALPHA and _excludes_zero(ci):
        return BETTER if ci[1] < 0 else WORSE
    return NO_DIFFERENCE


def _delta_m_verdict(per_seed: Sequence[float], ci: Sequence[float]) -> str:
    """``per_seed``: the finite per-seed Δm values."""
    if not per_seed:
        return NOT_SCORED
    if all(abs(v) < 1e-9 for v in per_seed):
        return TIE
    if len(per_seed) < 2:
        return not_enough_seeds(len(per_seed))
    if _excludes_zero(ci):
        return BETTER if ci[1] < 0 else WORSE
    return NO_DIFFERENCE


def _warnings(tasks: dict[str, Any], seeds: int, *, compact: bool = False) -> list[str]:
    """What limits the verdicts, task by task (``compact``: one line for each kind of problem
    when more than ``_LISTED`` tasks have it, as the summary prints them)."""
    notes = []
    if seeds == 1:
        notes.append("only 1 seed: no difference can be tested; use 3 or more seeds")
    elif seeds == 2:
        notes.append(
            "only 2 seeds: the t-test has 1 degree of freedom and rarely detects a difference; "
            "use 3 or more seeds"
        )
    few = {n: t["n_test"] for n, t in tasks.items() if t["n_test"] is not None}
    few = {n: rows for n, rows in few.items() if rows < FEW_TEST_ROWS}
    missing = {
        n: sum(math.isnan(c) for c in t["relative_change_per_seed"]) for n, t in tasks.items()
    }
    missing = {n: count for n, count in missing.items() if count}
    if compact and len(few) > _LISTED:
        fewest = min(few.values())
        notes.append(
            f"{len(few)} of {len(tasks)} tasks have fewer than {FEW_TEST_ROWS} labelled test rows "
            f"(as few as {fewest}){_named(list(few))}: their scores and verdicts rest on very "
            "few examples"
        )
        few = {}
    if compact and len(missing) > _LISTED:
        notes.append(
            f"{len(missing)} of {len(tasks)} tasks could not be compared in some seeds"
            f"{_named(list(missing))} (their metric is undefined on the test rows, e.g. AUC "
            "with one class)"
        )
        missing = {}
    for name, t in tasks.items():
        if name in few:
            notes.append(
                f"task {name!r} has only {t['n_test']} labelled test rows (fewer than "
                f"{FEW_TEST_ROWS}): its scores and verdict rest on very few examples"
            )
        if name in missing:
            notes.append(
                f"task {name!r}: {t['metric']} could not be compared in {missing[name]} of "
                f"{seeds} seed(s) (undefined on the test rows, e.g. AUC with one class)"
            )
    return notes


#: Above this many tasks with the same problem, the summary names a few in one warning.
_LISTED = 3

_COUNTED = (BETTER, WORSE, NO_DIFFERENCE, TIE, NOT_SCORED)


def _named(names: list[str], limit: int = 5) -> str:
    if not names:
        return ""
    shown = ", ".join(names[:limit]) + (", …" if len(names) > limit else "")
    return f" ({shown})"


def summary(result: dict[str, Any]) -> str:
    """Plain-language verdict of a ``Comparison.to_json()`` result: it claims MTL better or
    worse only where the test says so, and ends with the warnings."""
    dm, (lo, hi) = result["delta_m_percent"], result["delta_m_ci95"]
    verdict, seeds = result["delta_m_verdict"], len(result["seeds"])
    level = f"{1 - result['alpha']:.0%}"
    b, m = result.get("baseline", "STL"), result.get("method", "MTL")
    interval = f"Δm = {dm:+.2f}%, {level} CI [{lo:+.2f}, {hi:+.2f}] over {seeds} seeds"
    if verdict == NOT_SCORED:
        overall = "Δm could not be computed (no main task has a defined relative change)"
    elif verdict == BETTER:
        overall = f"on average {m} is significantly better than {b} ({interval})"
    elif verdict == WORSE:
        overall = f"on average {m} is significantly WORSE than {b} ({interval})"
    elif verdict == TIE:
        overall = f"{m} and {b} scored identically in every seed (Δm = {dm:+.2f}%)"
    elif verdict == NO_DIFFERENCE:
        overall = f"no significant difference between {m} and {b} on average ({interval}; "
        overall += "the interval includes 0)"
    else:
        overall = f"Δm = {dm:+.2f}% from a single seed: {verdict}"
    parts = [overall]
    tasks = result["tasks"]
    n = len(tasks)
    by = {v: [k for k, t in tasks.items() if t["verdict"] == v] for v in _COUNTED}
    if by[BETTER] or by[WORSE] or by[NO_DIFFERENCE]:
        counts = [
            f"{m} significantly better on {len(by[BETTER])}/{n}{_named(by[BETTER])}",
            f"significantly worse on {len(by[WORSE])}/{n}{_named(by[WORSE])}",
            f"no significant difference on {len(by[NO_DIFFERENCE])}/{n}",
        ]
        if by[TIE]:
            counts.append(f"identical scores on {len(by[TIE])}/{n}")
        if by[NOT_SCORED]:
            counts.append(f"not comparable on {len(by[NOT_SCORED])}/{n}{_named(by[NOT_SCORED])}")
        untested = n - sum(len(v) for v in by.values())
        if untested:
            counts.append(f"too few scored seeds to test on {untested}/{n}")
        parts.append(
            f"per task (paired t-test over seeds, p < {result['alpha']} and CI excluding 0): "
            + ", ".join(counts)
        )
    text = "; ".join(parts) + "."
    text = text[0].upper() + text[1:]
    compact = _warnings(result["tasks"], len(result["seeds"]), compact=True)
    return text + "".join(f" Warning: {w}." for w in compact)


@dataclass(frozen=True)
class _MtlJob:
    """The MTL model of one seed (``config.train.seed``)."""

    config: Config
    splits: Splits
    main: tuple[str, ...]


@dataclass(frozen=True)
class _StlJob:
    """The STL networks of ``seeds``, stacked across them where ``fit_stl_seeds`` can."""

    config: Config
    splits: Splits
    seeds: tuple[int, ...]
    vectorize: Vectorize


@dataclass
class _Done:
    """A job's test scores ``{seed: {task: scores}}`` for one side, and its training time."""

    side: str
    scores: dict[int, dict[str, dict[str, float]]]
    seconds: float


def _run_job(job: _MtlJob | _StlJob, on_progress: Callable[[str], None] | None = None) -> _Done:
    """One job of ``compare`` (in a worker process when it has several)."""
    started = time.perf_counter()
    if isinstance(job, _MtlJob):
        seed = job.config.train.seed
        if on_progress:
            on_progress(f"seed {seed}: MTL")
        mtl = fit(job.config, splits=job.splits)
        scores = {seed: {name: mtl.metrics["test"][name] for name in job.main}}
        return _Done("mtl", scores, time.perf_counter() - started)
    runs = fit_stl_seeds(
        job.config,
        job.splits,
        job.seeds,
        vectorize=job.vectorize,
        on_task=(lambda s, t: on_progress(f"seed {s}: STL {t.name}")) if on_progress else None,
    )
    scores = {
        seed: {name: run.metrics["test"][name] for name, run in by_task.items()}
        for seed, by_task in runs.items()
    }
    return _Done("stl", scores, time.perf_counter() - started)


def _jobs(
    config: Config, splits: Splits, seeds: list[int], main: tuple[str, ...], vectorize: Vectorize
) -> list[_MtlJob | _StlJob]:
    """The STL networks of all seeds as one job where they stack (one ensemble trains them
    faster than several processes train their shares), one per seed where they are separate
    runs anyway; then one MTL job per seed. The jobs do not depend on the number of workers,
    so neither do the scores (a dropout ensemble's masks depend on its members)."""
    seeded = [config.with_train(seed=s, **NO_LOG) for s in seeds]
    base = seeded[0] if seeded else config
    stl: list[_MtlJob | _StlJob]
    if sequential_reason(base, vectorize) is None:
        stl = [_StlJob(base, splits, tuple(seeds), vectorize)]
    else:
        stl = [_StlJob(c, splits, (c.train.seed,), vectorize) for c in seeded]
    return [*stl, *(_MtlJob(c, splits, main) for c in seeded)]


def compare(
    config: Config,
    *,
    seeds: int | Sequence[int] = 3,
    frame: pd.DataFrame | None = None,
    splits: Splits | None = None,
    on_progress: Callable[[str], None] | None = None,
    stl_vectorize: Vectorize = "exact",
    workers: int | None = None,
) -> Comparison:
    """Train STL and MTL with the same splits, budget and early stopping for each seed and
    score both on the test split. Seed ``s`` sets ``train.seed`` (init and batch order); the
    split stays fixed. Signals are applied once; their tasks are auxiliary (no baseline) except
    the main ``horizons`` tasks, so with one main task STL is the no-signal model.
    ``stl_vectorize``: how ``fit_stl`` trains the STL networks (``"exact"``: stacked, each
    network as its separate run trains it, dropout masks included; ``"dropout"``: stacked with
    other dropout draws; ``"off"``: one by one).
    ``workers``: processes that train the jobs (each seed's MTL model; the STL networks of all
    seeds as one stacked job, or one per seed where they are fitted run by run), one torch
    thread each (default: one per core, at most one per job; 1 on a GPU); the scores do not
    depend on it."""
    seeds_used = seed_list(config, seeds)
    config, splits, tasks = shared_setup(config, splits, frame)
    if len(splits.test) == 0:
        raise DataError("compare needs a test split: give data.test or data.test_fraction > 0")
    result = Comparison(tasks=tasks, seeds=seeds_used)
    result.scores = {m: {t.name: [] for t in tasks if t.is_main} for m in ("stl", "mtl")}
    result.seconds = {"stl": 0.0, "mtl": 0.0}
    main = tuple(t.name for t in result.main_tasks)
    jobs = _jobs(config, splits, seeds_used, main, stl_vectorize)
    if workers is None:
        workers = default_workers(len(jobs), config.train.device)
    pool = Pool(min(workers, len(jobs)))
    try:
        if pool.workers > 1:
            if on_progress:
                stl = sum(isinstance(job, _StlJob) for job in jobs)
                on_progress(
                    f"{len(seeds_used)} seeds: {len(jobs) - stl} MTL and {stl} STL job(s) "
                    f"in {pool.workers} processes"
                )
            done = pool.map(_run_job, jobs)
        else:
            done = [_run_job(job, on_progress) for job in jobs]
    finally:
        pool.close()
    by_seed: dict[str, dict[int, dict[str, dict[str, float]]]] = {"stl": {}, "mtl": {}}
    for outcome in done:
        result.seconds[outcome.side] += outcome.seconds
        by_seed[outcome.side].update(outcome.scores)
    for side, scores in by_seed.items():
        for seed in seeds_used:
            for name, values in scores[seed].items():
                result.scores[side][name].append(values)
    return result
