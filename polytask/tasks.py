"""Task specifications: what each task predicts, how it is scored, and its role in training.

A task kind fixes the default loss, the metrics, the primary metric used by comparisons and how
raw head outputs become predictions. Everything here is plain data; nothing trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError, one_of

Role = Literal["main", "auxiliary"]


@dataclass(frozen=True)
class KindSpec:
    """Defaults attached to a task kind."""

    loss: str
    metrics: tuple[str, ...]
    primary: str
    description: str


KINDS: dict[str, KindSpec] = {
    "regression": KindSpec("mse", ("rmse", "mae", "r2"), "rmse", "real-valued target"),
    "binary": KindSpec("bce", ("auc", "accuracy", "log_loss"), "auc", "0/1 target"),
    "multiclass": KindSpec("ce", ("accuracy", "macro_f1"), "accuracy", "one of K classes"),
    "multilabel": KindSpec("bce", ("micro_f1", "macro_f1"), "macro_f1", "several 0/1 columns"),
    "count": KindSpec("poisson", ("mae", "poisson_deviance"), "mae", "non-negative count"),
}

#: Losses each kind accepts (the first is the default).
KIND_LOSSES: dict[str, tuple[str, ...]] = {
    "regression": ("mse", "mae", "huber"),
    "binary": ("bce",),
    "multiclass": ("ce",),
    "multilabel": ("bce",),
    "count": ("poisson",),
}

#: Metrics each kind accepts.
KIND_METRICS: dict[str, tuple[str, ...]] = {
    "regression": ("rmse", "mae", "r2", "mse"),
    "binary": ("auc", "accuracy", "log_loss", "f1"),
    "multiclass": ("accuracy", "macro_f1", "log_loss"),
    "multilabel": ("micro_f1", "macro_f1", "subset_accuracy"),
    "count": ("mae", "rmse", "poisson_deviance"),
}


class FriendlyErrors(type(BaseModel)):  # type: ignore[misc]
    """Metaclass: a model built from Python (``pt.Task(...)``, ``pt.DataConfig(...)``) raises the
    same one-line ``ConfigError`` as a YAML config. Nested validation does not call the
    metaclass, so a whole config's errors keep their full field paths."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as exc:
            from .config import format_validation_error

            section = getattr(cls, "_section", "")
            raise ConfigError(format_validation_error(exc, cls, section)) from None


class Task(BaseModel, metaclass=FriendlyErrors):
    """One prediction task.

    ``target`` defaults to the column named like the task; a ``multilabel`` task takes a list of
    0/1 columns. ``role='auxiliary'`` marks a training-only signal: it shapes the shared
    representation, is not required at predict time and is left out of headline scores.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    _section: ClassVar[str] = "task"

    name: str = Field(min_length=1)
    kind: str
    target: str | list[str] | None = None
    weight: float = Field(default=1.0, ge=0.0)
    role: Role = "main"
    loss: str | None = None
    metrics: list[str] | None = None
    classes: list[str | int | float | bool] | None = None
    head: list[PositiveInt] | None = None  # this task's head hidden widths (model.head if None)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"{kind!r} is not a task kind ({one_of(KINDS)})")
        return kind

    @model_validator(mode="after")
    def _consistent(self) -> Task:
        if self.kind == "multilabel" and not isinstance(self.target, list):
            raise ValueError("a multilabel task needs target: a list of 0/1 columns")
        if self.kind != "multilabel" and isinstance(self.target, list):
            raise ValueError(f"a {self.kind} task takes one target column, not a list")
        if self.classes is not None and self.kind not in ("binary", "multiclass"):
            raise ValueError(
                f"classes only applies to binary and multiclass tasks, not {self.kind}"
            )
        if self.kind == "binary" and self.classes is not None and len(self.classes) != 2:
            raise ValueError(f"a binary task has exactly two classes, got {self.classes!r}")
        if self.loss is not None and self.loss not in KIND_LOSSES[self.kind]:
            raise ValueError(
                f"loss {self.loss!r} does not fit a {self.kind} task "
                f"({one_of(KIND_LOSSES[self.kind])})"
            )
        for metric in self.metrics or []:
            if metric not in KIND_METRICS[self.kind]:
                raise ValueError(
                    f"metric {metric!r} does not fit a {self.kind} task "
                    f"({one_of(KIND_METRICS[self.kind])})"
                )
        return self

    @property
    def columns(self) -> list[str]:
        """The data columns holding this task's labels."""
        if isinstance(self.target, list):
            return list(self.target)
        return [self.target or self.name]

    @property
    def loss_name(self) -> str:
        return self.loss or KINDS[self.kind].loss

    @property
    def metric_names(self) -> list[str]:
        return list(self.metrics or KINDS[self.kind].metrics)

    @property
    def primary_metric(self) -> str:
        return self.metric_names[0] if self.metrics else KINDS[self.kind].primary

    @property
    def is_main(self) -> bool:
        return self.role == "main"


def check_tasks(tasks: Sequence[Task]) -> list[Task]:
    """Validate a task list as a whole: unique names, at least one main task."""
    tasks = list(tasks)
    if not tasks:
        raise ConfigError("tasks: at least one task is needed")
    seen: set[str] = set()
    for i, task in enumerate(tasks):
        if task.name in seen:
            raise ConfigError(f"tasks[{i}].name: {task.name!r} is declared twice")
        seen.add(task.name)
    if not any(t.is_main for t in tasks):
        raise ConfigError("tasks: every task is auxiliary; at least one must have role 'main'")
    return tasks


def main_tasks(tasks: Sequence[Task]) -> list[Task]:
    return [t for t in tasks if t.is_main]
