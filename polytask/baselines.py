"""Single-task baselines: one network per main task, same shape, optimizer, budget and rule."""

from __future__ import annotations

from collections.abc import Callable

from .config import Config
from .io import Run
from .tasks import Task
from .train import Splits, fit, resolve_tasks


def stl_config(config: Config, task: Task, features: list[str]) -> Config:
    """Task ``task``'s single-task config: everything equal but the task list.

    ``features`` pins the MTL model's inputs, so the other tasks' label columns never become
    inputs of the baseline.
    """
    data = config.data.model_copy(update={"features": features})
    single = task.model_copy(update={"role": "main"})
    return config.model_copy(update={"tasks": [single], "data": data})


def feature_columns(config: Config, splits: Splits) -> list[str]:
    """The input columns of the multi-task model of ``config``."""
    if config.data.features is not None:
        return list(config.data.features)
    targets = {c for t in resolve_tasks(config) for c in t.columns}
    return [c for c in splits.train.columns if c not in targets]


def fit_stl(
    config: Config,
    splits: Splits,
    *,
    on_task: Callable[[Task], None] | None = None,
) -> dict[str, Run]:
    """Fit one STL network per main task of ``config`` on the given splits."""
    runs = {}
    features = feature_columns(config, splits)
    for task in resolve_tasks(config):
        if not task.is_main:
            continue
        if on_task is not None:
            on_task(task)
        runs[task.name] = fit(stl_config(config, task, features), splits=splits)
    return runs
