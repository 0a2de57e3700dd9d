"""``plan``: which tasks to train together, and how, chosen per main task on validation data.

For each seed every candidate is trained on the config's fixed splits under the config's
budget and stopping rule, **with the test rows held back**: STL (one network per main task),
all-in-one (the config as written, its relatedness recorded while it trains), the task groups
``relate`` suggests from those recordings, and the other architectures and selection /
fine-tuning options (``CANDIDATES``; a candidate registers a config variant). The validation
split is divided: every model stops (and selects per task) on one part, and the other part,
the *choice rows*, scores the candidates, so a candidate that selects on validation gains no
edge from it. Each main task then gets the candidate with the best mean primary metric on the
choice rows among STL and the candidates that beat STL on that task by more than their seed
spread (``RULE``). The chosen
members (the first seed's runs) form one run directory that predicts every main task; the test
split is read once, after every choice is made, for the report: plan vs STL and plan vs
all-in-one in ``compare``'s schema.
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .baselines import fit_stl
from .compare import Comparison
from .config import NO_LOG, Config, FinetuneConfig
from .data import Splits
from .errors import ConfigError, DataError, PolytaskError, PolytaskWarning, RunError, one_of
from .evaluate import HIGHER_IS_BETTER, delta_m, mean_std
from .io import MEMBERS_FILE, Run, as_frame, load, writable_dir, write_json
from .models import ARCHITECTURES
from .models.grouped import group_problems
from .parallel import Pool, default_workers
from .tasks import Task
from .train import fit, seed_list, shared_setup

FORMAT_VERSION = 1

RULE = (
    "per main task, the candidate with the best mean primary metric over seeds on the choice "
    "rows (validation rows no model stopped or selected on) among "
    "STL and the candidates whose paired gain over STL (mean over seeds of the per-seed "
    "difference, in the metric's better direction) exceeds the standard deviation of that "
    "difference over seeds; equal means go to the simpler candidate (the order of the "
    "candidates list, STL first). With one seed there is no spread to test against: any gain "
    "counts, and plan warns"
)


# ---- candidates -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """A way to train the tasks. ``variant(config, context)`` returns the config to train
    (each seed sets ``train.seed``) or, when the candidate does not apply, the reason as a
    string. ``context`` holds what earlier candidates found (``groups``: the grouping
    ``relate`` suggested from the all-in-one runs)."""

    name: str
    description: str
    variant: Callable[[Config, Mapping[str, Any]], Config | str]


CANDIDATES: dict[str, Candidate] = {}


def register_candidate(
    name: str, description: str
) -> Callable[[Callable[[Config, Mapping[str, Any]], Config | str]], Any]:
    """Decorator: register ``variant(config, context) -> Config | reason`` under ``name``."""

    def wrap(variant: Callable[[Config, Mapping[str, Any]], Config | str]) -> Any:
        CANDIDATES[name] = Candidate(name, description, variant)
        return variant

    return wrap


STL, ALL_IN_ONE, GROUPS = "stl", "all_in_one", "groups"
#: Trained whatever the budget: the baseline and the config as written.
REQUIRED = (STL, ALL_IN_ONE)
#: How plan trains its STL networks (``baselines.fit_stl``): stacked into one ensemble, each
#: network's dropout masks drawn by ``vmap`` (the mode plan's recorded results used; since the
#: exact mode stacks dropout networks too at about the same cost, ``"exact"`` would now
#: reproduce separate runs instead).
STL_VECTORIZE = "dropout"


@register_candidate(STL, "one network per main task (baselines.fit_stl), the same budget")
def _stl(config: Config, context: Mapping[str, Any]) -> Config | str:
    return config


@register_candidate(ALL_IN_ONE, "the config as written: every task in one model")
def _all_in_one(config: Config, context: Mapping[str, Any]) -> Config | str:
    return config


@register_candidate(GROUPS, "the task groups relate suggests (model.groups), one trunk each")
def _groups(config: Config, context: Mapping[str, Any]) -> Config | str:
    groups = context.get("groups")
    if config.model.architecture != "hard_sharing" or config.model.linear_path:
        return "model.groups needs hard_sharing without linear_path"
    if not groups:
        return "no relatedness recorded"
    if len(groups) == 1:
        return "relate suggests one group: the same as all_in_one"
    return config.model_copy(
        update={"model": config.model.model_copy(update={"groups": [list(g) for g in groups]})}
    )


@register_candidate("per_task", "all-in-one with train.select: per_task (each task's own epoch)")
def _per_task(config: Config, context: Mapping[str, Any]) -> Config | str:
    return config.with_train(select="per_task")


@register_candidate(
    "finetune", "all-in-one, then each main task fine-tuned alone (20 epochs, lr ÷ 10)"
)
def _finetune(config: Config, context: Mapping[str, Any]) -> Config | str:
    finetune = config.train.finetune or FinetuneConfig(lr=config.train.lr / 10)
    return config.with_train(finetune=finetune)


def _architecture(name: str) -> Callable[[Config, Mapping[str, Any]], Config | str]:
    def variant(config: Config, context: Mapping[str, Any]) -> Config | str:
        model = config.model.model_copy(
            update={"architecture": name, "options": {}, "groups": None, "linear_path": False}
        )
        return config.model_copy(update={"model": model})

    return variant


for _name in ("hard_sharing", "mmoe", "cgc", "ple", "cross_stitch", "soft_sharing"):
    if _name in ARCHITECTURES:
        register_candidate(
            _name, f"the config with model.architecture: {_name} (default options)"
        )(_architecture(_name))

#: What ``plan`` tries unless told otherwise (cgc, ple, cross_stitch and hard_sharing are opt-in:
#: on the suite's data they never beat these at the same widths; see docs/benchmarks.md).
DEFAULT_CANDIDATES = (STL, ALL_IN_ONE, GROUPS, "per_task", "finetune", "mmoe", "soft_sharing")


# ---- one training job (run in this process or a worker) ------------------------------------
@dataclass
class _Job:
    candidate: str
    seed: int
    config: Config
    splits: Splits
    choice: pd.DataFrame  # the rows that score the candidate for the choice
    record: bool = False


@dataclass
class _Done:
    candidate: str
    seed: int
    runs: dict[str, Run]  # task name → the run that predicts it
    seconds: float
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # on the choice rows
    gradient: np.ndarray | None = None
    error: str | None = None


def _choice_scores(runs: Mapping[str, Run], rows: pd.DataFrame) -> dict[str, dict[str, float]]:
    scores: dict[str, dict[str, float]] = {}
    for run in {id(r): r for r in runs.values()}.values():
        scored = run.evaluate(rows)
        scores.update({t: scored[t] for t in runs if runs[t] is run and t in scored})
    return scores


def _train(job: _Job) -> _Done:
    started = time.perf_counter()
    try:
        if job.candidate == STL:
            stl = fit_stl(job.config, job.splits, vectorize=STL_VECTORIZE)
            scores = _choice_scores(stl, job.choice)
            return _Done(job.candidate, job.seed, stl, time.perf_counter() - started, scores)
        recorders: list[Any] = []
        instrument = None
        if job.record:
            from .relate import recording

            @contextlib.contextmanager
            def instrument(trainer: Any) -> Iterator[None]:
                with recording(trainer, gradient=True) as recorder:
                    recorders.append(recorder)
                    yield

        run = fit(job.config, splits=job.splits, instrument=instrument)
        gradient = recorders[0].matrices().get("gradient") if recorders else None
        runs = {t.name: run for t in run.main_tasks}
        scores = _choice_scores(runs, job.choice)
        seconds = time.perf_counter() - started
        return _Done(job.candidate, job.seed, runs, seconds, scores, gradient)
    except PolytaskError as exc:
        return _Done(job.candidate, job.seed, {}, time.perf_counter() - started, error=str(exc))


# ---- choosing -------------------------------------------------------------------------------
def choose(
    scores: Mapping[str, Mapping[str, Sequence[float]]], metrics: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """Per main task, the candidate ``RULE`` picks from validation scores.

    ``scores[candidate][task]``: the task's validation primary metric per seed (``stl`` first,
    the other candidates in order of simplicity). Returns per task ``{"candidate", "reason",
    "gain", "spread", "metric"}`` (``gain``/``spread``: the chosen candidate's mean paired
    difference to STL and its standard deviation, in metric units, positive = better).
    """
    chosen: dict[str, dict[str, Any]] = {}
    for task, metric in metrics.items():
        sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
        base = np.asarray(scores[STL][task], dtype=float)
        best, best_gain, best_spread = STL, 0.0, 0.0
        best_mean = -math.inf  # the mean (signed) of the best candidate that passed
        passed: list[str] = []
        for name, by_task in scores.items():
            if name == STL or task not in by_task:
                continue
            values = np.asarray(by_task[task], dtype=float)
            if values.shape != base.shape:
                continue
            paired = np.isfinite(values) & np.isfinite(base)  # seeds where both are defined
            if not paired.any():
                continue
            diff = sign * (values[paired] - base[paired])
            gain = float(diff.mean())
            spread = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
            if not gain > spread:
                continue
            passed.append(name)
            mean = sign * float(values[paired].mean())
            if mean > best_mean:  # strictly: an equal mean stays with the simpler candidate
                best, best_mean, best_gain, best_spread = name, mean, gain, spread
        if best == STL:
            reason = (
                "no candidate beat STL by more than its seed spread"
                if not passed
                else "STL scored best"
            )
        else:
            reason = (
                f"best mean validation {metric} among STL and the {len(passed)} candidate(s) "
                f"that beat STL by more than their seed spread ({', '.join(passed)})"
            )
        chosen[task] = {
            "candidate": best,
            "reason": reason,
            "gain": best_gain,
            "spread": best_spread,
            "metric": metric,
        }
    return chosen


# ---- the plan's deliverable: one run directory ----------------------------------------------
@dataclass
class PlanRun:
    """The plan's model: each main task predicted by the member run chosen for it.

    Behaves as a ``Run`` for prediction and scoring (``predict``, ``predict_arrays``,
    ``evaluate``); ``members`` are ordinary runs (``load`` them alone from
    ``DIR/members/NAME``).
    """

    config: Config
    members: dict[str, Run]
    task_member: dict[str, str]
    directory: Path | None = None
    choice: dict[str, Any] = field(default_factory=dict)

    @property
    def main_tasks(self) -> list[Task]:
        by_name = {t.name: t for m in self.members.values() for t in m.main_tasks}
        return [by_name[name] for name in self.task_member]

    @property
    def tasks(self) -> list[Task]:
        return self.main_tasks

    @property
    def features(self) -> list[str]:
        features = (f for m in self.members.values() for f in m.preprocessor.features)
        return list(dict.fromkeys(features))

    def _by_member(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for task, member in self.task_member.items():
            groups.setdefault(member, []).append(task)
        return groups

    def predict_arrays(self, frame: Any) -> dict[str, np.ndarray]:
        """Decoded predictions per main task, each from its member."""
        frame = as_frame(frame, self.features)
        arrays: dict[str, np.ndarray] = {}
        for member, names in self._by_member().items():
            produced = self.members[member].predict_arrays(frame)
            arrays.update({n: produced[n] for n in names})
        return {n: arrays[n] for n in self.task_member}

    def predict(self, frame: Any) -> pd.DataFrame:
        """One column per main task (``TASK:CLASS`` for classifiers), as ``Run.predict``."""
        frame = as_frame(frame, self.features)
        parts = {m: self.members[m].predict(frame) for m in self._by_member()}
        columns = []
        for task, member in self.task_member.items():
            predicted = parts[member]
            columns.append(
                predicted[[c for c in predicted.columns if c == task or c.startswith(f"{task}:")]]
            )
        return pd.concat(columns, axis=1)

    def evaluate(self, frame: Any) -> dict[str, dict[str, float]]:
        """Metrics per main task on a labelled table, each from its member."""
        frame = as_frame(frame, self.features)
        present = [
            t.name for t in self.main_tasks if all(c in frame.columns for c in t.columns)
        ]
        if not present:
            raise DataError(
                "evaluate: the data has no main task's label column (tasks: "
                f"{', '.join(self.task_member)})"
            )
        scores: dict[str, dict[str, float]] = {}
        for member, names in self._by_member().items():
            wanted = [n for n in names if n in present]
            if wanted:
                produced = self.members[member].evaluate(frame)
                scores.update({n: produced[n] for n in wanted})
        return {n: scores[n] for n in self.task_member if n in scores}

    def save(self, directory: str | Path) -> Path:
        """``members.json`` and ``members/NAME/`` (each an ordinary run directory)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, run in self.members.items():
            run.save(directory / "members" / name)
        write_json(
            directory / MEMBERS_FILE,
            {
                "format": FORMAT_VERSION,
                "kind": "plan",
                "tasks": self.task_member,
                "members": sorted(self.members),
                "choice": self.choice,
            },
        )
        (directory / "config.yaml").write_text(self.config.to_yaml())
        self.directory = directory
        return directory


def load_plan_run(directory: str | Path) -> PlanRun:
    """Restore a plan's run directory: its members with ``io.load`` (safetensors and JSON)."""
    from .config import parse_config
    from .io import _read_json, _read_yaml

    directory = Path(directory)
    meta = _read_json(directory / MEMBERS_FILE)
    try:
        task_member = {str(t): str(m) for t, m in meta["tasks"].items()}
        names = [str(m) for m in meta["members"]]
        choice = dict(meta.get("choice", {}))
    except (KeyError, TypeError, AttributeError) as exc:
        raise RunError(f"run file {str(directory / MEMBERS_FILE)!r} is invalid: {exc!r}") from None
    strangers = sorted(set(task_member.values()) - set(names))
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9_.-]+", n)]
    if strangers or bad:
        raise RunError(
            f"run file {str(directory / MEMBERS_FILE)!r} is invalid: members "
            f"{strangers or bad} are not listed or not plain names"
        )
    members = {name: load(directory / "members" / name) for name in names}
    for task, member in task_member.items():
        if task not in {t.name for t in members[member].main_tasks}:
            raise RunError(
                f"run {str(directory)!r}: member {member!r} does not predict main task {task!r}"
            )
    config = parse_config(_read_yaml(directory / "config.yaml"))
    return PlanRun(config, members, task_member, directory, choice)


# ---- the entry point ------------------------------------------------------------------------
@dataclass
class Plan:
    """What ``plan`` found: the choice (``report``, JSON-able, no test score in it), the
    deliverable ``run``, and the test-split comparisons made after choosing."""

    report: dict[str, Any]
    run: PlanRun
    vs_stl: Comparison
    vs_all_in_one: Comparison

    def comparison_json(self) -> dict[str, Any]:
        """``compare``'s schema, plan vs STL, with ``vs_all_in_one`` and per-task choices."""
        result = self.vs_stl.to_json()
        result["vs_all_in_one"] = self.vs_all_in_one.to_json()
        for name, task in result["tasks"].items():
            task["chosen"] = self.report["choice"][name]["candidate"]
        return result

    def save(self, directory: str | Path) -> Path:
        """``plan.json``, ``comparison.json`` (+ its plot) and ``run/``."""
        from .report import plot_comparison

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.run.save(directory / "run")
        write_json(directory / "plan.json", self.report)
        comparison = self.comparison_json()
        write_json(directory / "comparison.json", comparison)
        plot_comparison(comparison, directory / "comparison.png")
        return directory


def parse_budget(budget: float | str | None) -> float | None:
    """Seconds from ``600``, ``"90s"``, ``"20m"`` or ``"1.5h"`` (None: no cap)."""
    if budget is None:
        return None
    if isinstance(budget, (int, float)):
        seconds = float(budget)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(budget))
        if match is None:
            raise ConfigError(
                f"budget: {budget!r} is not a duration (seconds, or a number with s, m or h)"
            )
        seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if not seconds > 0:
        raise ConfigError(f"budget: {budget!r} must be positive")
    return seconds


def plan(
    config: Config,
    *,
    seeds: int | Sequence[int] = 3,
    candidates: Sequence[str] | None = None,
    budget: float | str | None = None,
    workers: int | None = None,
    choice_fraction: float = 0.5,
    out: str | Path | None = None,
    overwrite: bool = False,
    frame: pd.DataFrame | None = None,
    splits: Splits | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> Plan:
    """Train every candidate for every seed on the config's splits (test rows held back),
    choose a candidate per main task on validation (``RULE``), and report the choice on test.

    ``seeds``: a count (from ``train.seed`` on) or the seeds; ``candidates``: names from
    ``CANDIDATES`` (default ``DEFAULT_CANDIDATES``; ``stl`` and ``all_in_one`` are always
    trained); ``budget``: a cap on the total wall time (seconds or ``"20m"``): a candidate is
    skipped when the time spent plus the all-in-one candidate's time would pass it;
    ``choice_fraction``: the share of the validation rows held out to score the candidates
    for the choice (no model stops or selects on them; the rest is every model's validation
    split). 0 scores on the validation split the models stopped on, which favours the
    candidates that select per task on it (``per_task``, ``finetune``). ``workers``: processes
    that train seeds in parallel, one thread each (default: the machine's cores, at most one
    per seed, and 1 when training on a GPU; 1 trains here). ``out``: write ``plan.json``,
    ``comparison.json``, ``comparison.png``, ``run/`` (the deliverable) and ``relate/`` there.
    """
    seeds_used = seed_list(config, seeds)
    if not seeds_used:
        raise ConfigError("seeds: give at least one seed")
    names = list(dict.fromkeys([*REQUIRED, *(candidates or DEFAULT_CANDIDATES)]))
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise ConfigError(f"candidates: {unknown} are not candidates ({one_of(list(CANDIDATES))})")
    if not 0.0 <= choice_fraction < 1.0:
        raise ConfigError(f"choice_fraction: {choice_fraction} must be in [0, 1)")
    if workers is None:
        workers = default_workers(len(seeds_used), config.train.device)
    if workers < 1:
        raise ConfigError(f"workers: {workers} must be at least 1")
    seconds_cap = parse_budget(budget)
    if config.signals is not None and config.signals.horizons is not None:
        raise ConfigError(
            "plan does not support signals.horizons (its forecasts need the series at predict "
            "time); use compare, or add the horizon columns to the table yourself"
        )
    directory = Path(out) if out is not None else None
    if directory is not None:
        _check_plan_dir(directory, overwrite)
    config, splits, tasks = shared_setup(config, splits, frame)
    if len(splits.validation) == 0:
        raise DataError(
            "plan chooses on the validation split and there is none: set "
            "data.validation_fraction > 0 or give data.validation"
        )
    if len(splits.test) == 0:
        raise DataError("plan reports on a test split: give data.test or data.test_fraction > 0")
    stopping, choice_rows = divide_validation(
        splits.validation, choice_fraction, seed=config.data.split_seed
    )
    held_back = Splits(splits.train, stopping, splits.test.iloc[:0])
    main = [t for t in tasks if t.is_main]
    metrics = {t.name: t.primary_metric for t in main}
    if len(seeds_used) == 1:
        warnings.warn(
            "plan with 1 seed: the choice cannot be guarded against seed noise; use 3 or more",
            PolytaskWarning,
            stacklevel=2,
        )

    started = time.perf_counter()
    context: dict[str, Any] = {}
    report: dict[str, dict[str, Any]] = {}
    done: dict[str, list[_Done]] = {}
    seen: dict[str, str] = {}  # config JSON → the candidate that trains it
    pool = Pool(min(workers, len(seeds_used)))
    try:
        for name in names:
            candidate = CANDIDATES[name]
            entry: dict[str, Any] = {"description": candidate.description}
            report[name] = entry
            variant = candidate.variant(config, context)
            spent = time.perf_counter() - started
            if isinstance(variant, str):
                entry.update(status="skipped", reason=variant)
                continue
            key = ":".join(
                (str(name == STL), variant.model.model_dump_json(), variant.train.model_dump_json())
            )
            if key in seen:
                entry.update(status="skipped", reason=f"the same config as {seen[key]}")
                continue
            estimate = report[ALL_IN_ONE]["wall_seconds"] if ALL_IN_ONE in done else 0.0
            if seconds_cap is not None and name not in REQUIRED and spent + estimate > seconds_cap:
                entry.update(
                    status="skipped",
                    reason=f"budget: {spent:.0f} s spent + about {estimate:.0f} s for this "
                    f"candidate > {seconds_cap:.0f} s",
                )
                continue
            seen[key] = name
            if on_progress:
                on_progress(f"{name}: {len(seeds_used)} seed(s)")
            jobs = [
                _Job(
                    name,
                    seed,
                    variant.with_train(seed=seed, **NO_LOG),
                    held_back,
                    choice_rows,
                    record=name == ALL_IN_ONE and GROUPS in names,
                )
                for seed in seeds_used
            ]
            began = time.perf_counter()
            results = pool.map(_train, jobs)
            entry["wall_seconds"] = time.perf_counter() - began
            entry["train_seconds"] = sum(r.seconds for r in results)
            errors = [r.error for r in results if r.error]
            if errors:
                entry.update(status="failed", reason=errors[0])
                if name in REQUIRED:
                    raise RunError(f"plan: candidate {name!r} failed: {errors[0]}")
                continue
            entry["status"] = "trained"
            entry["config"] = _difference(config, variant)
            entry["validation"] = {
                task: _summary(
                    [r.scores.get(task, {}).get(metric, math.nan) for r in results], metric
                )
                for task, metric in metrics.items()
            }
            done[name] = results
            if name == ALL_IN_ONE and GROUPS in names:
                context.update(_grouping(results, tasks, config, directory))
    finally:
        pool.close()

    scores = {
        name: {task: report[name]["validation"][task]["per_seed"] for task in metrics}
        for name in done
    }
    chosen = choose(scores, metrics)
    plan_json = {
        "format": FORMAT_VERSION,
        "seeds": seeds_used,
        "split": "validation",
        "choice_fraction": choice_fraction,
        "rows": {"validation (stopping)": len(stopping), "validation (choice)": len(choice_rows)},
        "rule": RULE,
        "budget_seconds": seconds_cap,
        "workers": pool.workers,
        "stl_vectorize": STL_VECTORIZE,
        "wall_seconds": time.perf_counter() - started,
        "candidates": report,
        "relatedness": {k: v for k, v in context.items() if k != "relatedness"},
        "choice": chosen,
        "validation_delta_m_percent": _validation_delta_m(report, chosen, metrics),
    }
    # The test split is read from here on, after every choice is made.
    run = _deliverable(config, chosen, done)
    vs_stl, vs_all = _report_on_test(tasks, seeds_used, chosen, done, splits.test)
    result = Plan(plan_json, run, vs_stl, vs_all)
    if directory is not None:
        result.save(directory)
    return result


def divide_validation(
    validation: pd.DataFrame, fraction: float, *, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The validation rows split at random (fixed ``seed``) into the rows models stop and
    select on and the ``fraction`` held out to choose between candidates; with ``fraction``
    0 both are the whole split."""
    if fraction == 0.0:
        return validation, validation
    order = np.random.default_rng(seed).permutation(len(validation))
    cut = len(validation) - int(round(fraction * len(validation)))
    if cut < 1 or cut == len(validation):
        raise DataError(
            f"plan: {len(validation)} validation rows cannot be divided into rows to stop on "
            f"and rows to choose on (choice_fraction {fraction}); give more validation rows "
            "or choice_fraction 0"
        )
    keep = np.sort(order[:cut]), np.sort(order[cut:])
    return tuple(validation.iloc[k].reset_index(drop=True) for k in keep)  # type: ignore[return-value]


def _check_plan_dir(directory: Path, overwrite: bool) -> None:
    if directory.exists() and not directory.is_dir():
        raise RunError(f"plan directory {str(directory)!r} is a file")
    ours = ("plan.json", "comparison.json", "comparison.png", "run", "relate")
    if directory.is_dir() and any((directory / n).exists() for n in ours):
        if not overwrite:
            raise RunError(
                f"{str(directory)!r} already holds a plan; write to another directory or "
                "replace it (CLI: --overwrite; Python: overwrite=True)"
            )
        for name in ours:
            path = directory / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    writable_dir(directory, "plan directory")


def _difference(base: Config, variant: Config) -> dict[str, Any]:
    """The model/train fields where ``variant`` differs from ``base``."""
    changed: dict[str, Any] = {}
    for section in ("model", "train"):
        a = getattr(base, section).model_dump(mode="json")
        b = getattr(variant, section).model_dump(mode="json")
        changed.update({f"{section}.{k}": v for k, v in b.items() if a.get(k) != v})
    return changed


def _summary(values: list[float], metric: str) -> dict[str, Any]:
    values = [float(v) for v in values]
    mean, std = mean_std(values)
    return {"metric": metric, "per_seed": values, "mean": mean, "std": std}


def _grouping(
    results: Sequence[_Done], tasks: Sequence[Task], config: Config, directory: Path | None
) -> dict[str, Any]:
    """The groups ``relate`` suggests from the gradient cosines recorded in the all-in-one
    runs (averaged over seeds); written to ``DIR/relate`` with its heatmap."""
    from .relate import Relatedness, normalized_affinity, suggest_groups

    matrices = [r.gradient for r in results if r.gradient is not None]
    if not matrices:
        return {}
    names = [t.name for t in tasks]
    main = [t.name for t in tasks if t.is_main]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a pair never labelled together: NaN
        gradient = np.nanmean(np.stack(matrices), axis=0)
    groups = suggest_groups(normalized_affinity("gradient", gradient), names, main)
    problems = group_problems(groups, {t.name: t.is_main for t in tasks})
    relatedness = Relatedness(
        tasks=names,
        main=main,
        measures={"gradient": gradient},
        groups=groups,
        settings={
            "seeds": [r.seed for r in results],
            "grouping_measure": "gradient",
            "recorded_in": "plan's all_in_one runs",
        },
    )
    if directory is not None:
        relatedness.save(directory / "relate")
    return {"groups": None if problems else groups, "grouping_measure": "gradient"}


def _validation_delta_m(
    report: Mapping[str, Mapping[str, Any]],
    chosen: Mapping[str, Mapping[str, Any]],
    metrics: Mapping[str, str],
) -> dict[str, float]:
    """Δm% vs STL on validation (of the means over seeds) of every trained candidate and of
    the plan (each task from its choice): selection scores, optimistic for the plan."""

    def mean(candidate: str, task: str) -> float:
        return report[candidate]["validation"][task]["mean"]

    stl = {t: mean(STL, t) for t in metrics}
    result = {
        name: delta_m(metrics, {t: mean(name, t) for t in metrics}, stl)
        for name, entry in report.items()
        if entry.get("status") == "trained"
    }
    result["plan"] = delta_m(metrics, {t: mean(chosen[t]["candidate"], t) for t in metrics}, stl)
    return result


def _member_name(candidate: str, task: str | None) -> str:
    name = candidate if task is None else f"{candidate}-{task}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _deliverable(
    config: Config, chosen: Mapping[str, Mapping[str, Any]], done: Mapping[str, list[_Done]]
) -> PlanRun:
    """The first seed's runs of the chosen candidates (an STL network per task chosen STL)."""
    members: dict[str, Run] = {}
    task_member: dict[str, str] = {}
    for task, choice in chosen.items():
        candidate = choice["candidate"]
        run = done[candidate][0].runs[task]
        member = _member_name(candidate, task if candidate == STL else None)
        members[member] = run
        task_member[task] = member
    return PlanRun(config, members, task_member, choice={t: dict(c) for t, c in chosen.items()})


def _report_on_test(
    tasks: Sequence[Task],
    seeds: list[int],
    chosen: Mapping[str, Mapping[str, Any]],
    done: Mapping[str, list[_Done]],
    test: pd.DataFrame,
) -> tuple[Comparison, Comparison]:
    """Test scores per seed: STL, all-in-one and the plan (each task from its choice)."""
    main = [t for t in tasks if t.is_main]
    cache: dict[tuple[str, int, int], dict[str, dict[str, float]]] = {}

    def scores(candidate: str, i: int, task: str) -> dict[str, float]:
        run = done[candidate][i].runs[task]
        key = (candidate, i, id(run))
        if key not in cache:
            cache[key] = run.evaluate(test)
        return cache[key][task]

    by: dict[str, dict[str, list[dict[str, float]]]] = {
        arm: {t.name: [] for t in main} for arm in (STL, ALL_IN_ONE, "plan")
    }
    for i in range(len(seeds)):
        for task in main:
            by[STL][task.name].append(scores(STL, i, task.name))
            by[ALL_IN_ONE][task.name].append(scores(ALL_IN_ONE, i, task.name))
            by["plan"][task.name].append(scores(chosen[task.name]["candidate"], i, task.name))
    plan_seconds = sum(sum(r.seconds for r in results) for results in done.values())

    def versus(baseline: str, label: str) -> Comparison:
        return Comparison(
            tasks=list(tasks),
            seeds=seeds,
            scores={"stl": by[baseline], "mtl": by["plan"]},
            seconds={"stl": sum(r.seconds for r in done[baseline]), "mtl": plan_seconds},
            labels=(label, "plan"),
        )

    return versus(STL, "STL"), versus(ALL_IN_ONE, "all-in-one")

