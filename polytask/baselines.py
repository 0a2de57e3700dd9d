"""Single-task baselines: one network per main task, same shape, optimizer, budget and rule."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from .config import Config
from .errors import DataError
from .io import Run
from .tasks import Task
from .train import Splits, fit, resolve_tasks


def stl_config(config: Config, task: Task, features: list[str]) -> Config:
    """Task ``task``'s single-task config: everything equal but the task list.

    ``features`` pins the MTL model's inputs, so the other tasks' label columns never become
    inputs of the baseline. ``train.select`` and ``train.finetune`` are reset: a single-task
    network already stops on its own task, so every MTL variant meets the same baseline.
    """
    data = config.data.model_copy(update={"features": features})
    single = task.model_copy(update={"role": "main"})
    train = config.train.model_copy(update={"select": "joint", "finetune": None})
    return config.model_copy(update={"tasks": [single], "data": data, "train": train})


def feature_columns(config: Config, splits: Splits) -> list[str]:
    """The input columns of the multi-task model of ``config``."""
    if config.data.features is not None:
        return list(config.data.features)
    targets = {c for t in resolve_tasks(config) for c in t.columns}
    return [c for c in splits.train.columns if c not in targets]


def labelled_rows(splits: Splits, task: Task) -> Splits:
    """The rows of each split where ``task`` has a label (any label, for multilabel tasks)."""

    def keep(frame: pd.DataFrame) -> pd.DataFrame:
        if not len(frame):
            return frame
        present = frame[list(task.columns)].notna().any(axis=1)
        return frame[present].reset_index(drop=True)

    return Splits(keep(splits.train), keep(splits.validation), keep(splits.test))


def fit_stl(
    config: Config,
    splits: Splits,
    *,
    on_task: Callable[[Task], None] | None = None,
) -> dict[str, Run]:
    """Fit one STL network per main task of ``config`` on the given splits.

    Each network sees only the rows where its task is labelled: a single-task learner has no
    use for the others (they would add zero-loss rows to its batches), and its preprocessing is
    fitted on its own training rows. Shape, optimizer, epochs and stopping rule are the MTL
    model's.
    """
    runs = {}
    features = feature_columns(config, splits)
    for task in resolve_tasks(config):
        if not task.is_main:
            continue
        if on_task is not None:
            on_task(task)
        own = labelled_rows(splits, task)
        if not len(own.train):
            raise DataError(f"task {task.name!r} has no labelled training row")
        runs[task.name] = fit(stl_config(config, task, features), splits=own)
    return runs
