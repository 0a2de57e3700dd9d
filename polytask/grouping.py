"""Validating a task grouping: the suggested groups, all-in-one and STL, trained under the same
budget on the config's fixed splits, each scored by Δm% vs STL on the validation split.

``validate_groups`` is what ``polytask relate --validate`` runs on the groups it suggests; it
never looks at the test split, so a grouping chosen with it can still be tested honestly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from .baselines import fit_stl
from .config import NO_LOG, Config
from .errors import ConfigError, DataError
from .evaluate import confidence_interval, delta_m, mean_std
from .models.grouped import group_problems
from .train import Splits, fit, seed_list, shared_setup

#: The three arms, in the order they are trained for each seed.
ARMS = ("grouped", "all_in_one", "stl")
LEVEL = 0.95


def validate_groups(
    config: Config,
    groups: Sequence[Sequence[str]],
    *,
    seeds: int | Sequence[int] = 3,
    frame: pd.DataFrame | None = None,
    splits: Splits | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train, for each seed, ``config`` with ``model.groups = groups`` (one run, a trunk per
    group), ``config`` as written without groups (all-in-one) and STL (``fit_stl``), all on the
    same splits and budget, and score the main tasks on the **validation** split.

    ``groups``: task names per group; every main task in exactly one, auxiliary tasks listed
    share their group's trunk, unlisted ones attach to every group. ``seeds``: a count (from
    ``train.seed`` on) or the seeds themselves; seed s sets ``train.seed`` of every arm, the
    splits stay fixed. ``frame`` / ``splits`` as in ``compare``. Needs ``config.model`` to be
    hard_sharing (the all-in-one arm is its plain form).

    Returns a JSON-able dict: ``{"groups", "seeds", "split": "validation", "level",
    "sign_convention", "arms": {ARM: {"delta_m_percent", "delta_m_std", "delta_m_ci95",
    "delta_m_per_seed", "tasks": {TASK: {"metric", "per_seed", "mean", "std"}}, "seconds"}},
    "best"}``, ARM in ``grouped``, ``all_in_one``, ``stl`` (Δm of STL is 0 by definition),
    ``best`` the arm with the lowest mean Δm. Note that the validation split also picks each
    run's stopping epoch (as in ``fit``), so these scores are selection scores, not test scores.
    """
    seeds_used = seed_list(config, seeds)
    if not seeds_used:
        raise ConfigError("seeds: give at least one seed")
    groups = [list(g) for g in groups]
    if config.model.architecture != "hard_sharing" or config.model.linear_path:
        raise ConfigError(
            "model: validate_groups compares task groups with hard sharing; model.architecture "
            f"must be 'hard_sharing' without linear_path, not {config.model.architecture!r}"
        )
    config, splits, tasks = shared_setup(config, splits, frame)
    problems = group_problems(groups, {t.name: t.is_main for t in tasks})
    if problems:
        raise ConfigError("; ".join(problems))
    if len(splits.validation) == 0:
        raise DataError(
            "validate_groups scores on the validation split and there is none: set "
            "data.validation_fraction > 0 or give data.validation"
        )
    main = [t for t in tasks if t.is_main]
    metrics = {t.name: t.primary_metric for t in main}
    scores: dict[str, dict[str, list[float]]] = {a: {t: [] for t in metrics} for a in ARMS}
    seconds = dict.fromkeys(ARMS, 0.0)
    variants = {
        "grouped": config.model.model_copy(update={"groups": groups}),
        "all_in_one": config.model.model_copy(update={"groups": None}),
    }
    for seed in seeds_used:
        train = config.train.model_copy(update={"seed": seed, **NO_LOG})
        for arm in ARMS:
            if on_progress:
                on_progress(f"seed {seed}: {arm}")
            started = time.perf_counter()
            model = variants.get(arm, variants["all_in_one"])
            seeded = config.model_copy(update={"train": train, "model": model})
            if arm == "stl":
                runs = fit_stl(seeded, splits)
                values = {n: runs[n].metrics["validation"][n][m] for n, m in metrics.items()}
            else:
                run = fit(seeded, splits=splits)
                values = {n: run.metrics["validation"][n][m] for n, m in metrics.items()}
            seconds[arm] += time.perf_counter() - started
            for name, value in values.items():
                scores[arm][name].append(float(value))
    arms = {arm: _arm(scores[arm], scores["stl"], metrics, seconds[arm]) for arm in ARMS}
    ranked = [a for a in ARMS if not math.isnan(arms[a]["delta_m_percent"])]
    return {
        "groups": groups,
        "seeds": seeds_used,
        "split": "validation",
        "level": LEVEL,
        "sign_convention": "Δm% = mean over main tasks of the relative change of the primary "
        "metric vs STL in % of the STL value, negative = better than STL",
        "arms": arms,
        "best": min(ranked, key=lambda a: arms[a]["delta_m_percent"]) if ranked else None,
    }


def _arm(
    scores: dict[str, list[float]],
    stl: dict[str, list[float]],
    metrics: dict[str, str],
    seconds: float,
) -> dict[str, Any]:
    n = len(next(iter(stl.values())))
    per_seed = [
        delta_m(
            metrics,
            {t: scores[t][i] for t in metrics},
            {t: stl[t][i] for t in metrics},
        )
        for i in range(n)
    ]
    mean, std = mean_std(per_seed)
    ci = confidence_interval([v for v in per_seed if not math.isnan(v)], LEVEL)
    tasks = {}
    for name, metric in metrics.items():
        m, s = mean_std(scores[name])
        tasks[name] = {"metric": metric, "per_seed": scores[name], "mean": m, "std": s}
    return {
        "delta_m_percent": mean,
        "delta_m_std": std,
        "delta_m_ci95": list(ci),
        "delta_m_per_seed": per_seed,
        "tasks": tasks,
        "seconds": seconds,
    }
