"""The configuration schema (pydantic). Every CLI run is one of these; errors name the field."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import pandas as pd
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import ConfigError, one_of
from .tasks import KINDS, FriendlyErrors, Task, check_tasks


def _known(name: str, registry: Mapping[str, Any], what: str) -> str:
    """``name`` if the registry has it, else the error listing what it has."""
    if name not in registry:
        raise ValueError(f"{name!r} is not {what} ({one_of(registry)})")
    return name


def _registry_options(
    validate: Callable[[str, dict[str, Any]], Any],
    name: str | None,
    options: dict[str, Any],
    prefix: str,
) -> dict[str, Any]:
    """A field validator's body for a registry entry's options: ``validate``'s ConfigError,
    less its ``prefix``, as the ValueError pydantic reports at the options field."""
    if name is None:  # the name itself was invalid and is reported on its own
        return options
    try:
        validate(name, options)
    except ConfigError as exc:
        raise ValueError(str(exc).removeprefix(prefix)) from None
    return options


class _Section(BaseModel, metaclass=FriendlyErrors):
    model_config = ConfigDict(extra="forbid")
    _section: ClassVar[str] = ""


Table = Path | pd.DataFrame
"""A CSV/Parquet path, or (from Python) a DataFrame held in memory."""

#: Keys that split or locate a data file; a registered data set has fixed splits instead.
_FILE_ONLY = ("validation", "test", "validation_fraction", "test_fraction", "split_seed")


class DataConfig(_Section):
    """Where the data comes from and how it is split and encoded. ``train``, ``validation``
    and ``test`` are CSV/Parquet paths or, from Python, DataFrames (not written to YAML)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    _section: ClassVar[str] = "data"

    dataset: str | None = None  # a registered data set (polytask datasets), instead of train
    train: Table | None = None  # the training table (split when validation/test are absent)
    validation: Table | None = None  # a validation table (else validation_fraction of train)
    test: Table | None = None  # a test table (else test_fraction of train)
    features: list[str] | None = None  # the inputs (default: every column no task reads)
    categorical: list[str] = Field(default_factory=list)  # inputs encoded as embeddings
    drop: list[str] = Field(default_factory=list)  # columns that are neither input nor target
    impute: bool = False  # missing inputs: training median plus a missing-indicator
    validation_fraction: float = Field(default=0.15, ge=0.0, lt=1.0)  # of train, held out
    test_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)  # of train, held out
    split_seed: int = 0  # the seeded split of train (fixed across training seeds)

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.dataset is not None and self.train is not None:
            raise ValueError("give exactly one of data.dataset or data.train")
        if self.dataset is not None:
            from .datasets import DATASETS

            if self.dataset not in DATASETS:
                raise ValueError(f"dataset {self.dataset!r} is not known ({one_of(DATASETS)})")
            given = [k for k in _FILE_ONLY if k in self.model_fields_set]
            if given:
                raise ValueError(
                    f"{', '.join(given)}: a registered data set comes with fixed splits; "
                    f"{', '.join(_FILE_ONLY)} apply to data.train files only"
                )
        return self

    @field_validator("train", "validation", "test", mode="before")
    @classmethod
    def _path_or_frame(cls, value: Any) -> Any:
        if value is None or isinstance(value, (str, Path, pd.DataFrame)):
            return value
        raise ValueError(
            f"a CSV/Parquet path or a pandas DataFrame is needed, got {type(value).__name__}"
        )


class ModelConfig(_Section):
    """Architecture and sizes of the shared network and the task heads.

    ``shared``: the layer widths of the shared trunk, of each expert, of each task's column or
    network (whichever the architecture has); ``head``: every task head's hidden widths
    (``tasks[].head`` overrides it per task); ``options``: the architecture's own (see
    docs/architectures.md); ``linear_path``: hard_sharing adds a linear map of the encoded
    inputs to every head's output (wide and deep); ``groups``: hard_sharing with one trunk
    per group of tasks (``[[a, b], [c]]``; every main task in exactly one group, an auxiliary
    task left out attaches to every group; see docs/architectures.md).
    """

    _section: ClassVar[str] = "model"

    architecture: str = "hard_sharing"
    shared: list[PositiveInt] = Field(default_factory=lambda: [64, 64])
    head: list[PositiveInt] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)
    linear_path: bool = False
    activation: str = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    norm: Literal["none", "batch", "layer"] = "none"
    embedding_dim: PositiveInt | None = None
    groups: list[list[str]] | None = None

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, name: str) -> str:
        from .models import ARCHITECTURES

        return _known(name, ARCHITECTURES, "an architecture")

    @field_validator("options")
    @classmethod
    def _architecture_options(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from .models import validate_architecture_options

        name = info.data.get("architecture")
        return _registry_options(validate_architecture_options, name, options, "model.options.")

    @model_validator(mode="after")
    def _linear_path_of_hard_sharing(self) -> ModelConfig:
        if self.linear_path and self.architecture != "hard_sharing":
            raise ValueError(
                f"linear_path: only hard_sharing has a linear path, not {self.architecture!r}"
            )
        return self

    @model_validator(mode="after")
    def _groups_of_hard_sharing(self) -> ModelConfig:
        from .models.grouped import group_problems

        if self.groups is None:
            return self
        if self.architecture != "hard_sharing":
            raise ValueError(
                f"groups: task groups are an option of hard_sharing, not {self.architecture!r}"
            )
        if self.linear_path:
            raise ValueError("groups: task groups cannot be combined with linear_path")
        problems = group_problems(self.groups)
        if problems:
            raise ValueError("; ".join(p.removeprefix("model.") for p in problems))
        return self

    @field_validator("activation")
    @classmethod
    def _known_activation(cls, name: str) -> str:
        from .models.layers import ACTIVATIONS

        return _known(name, ACTIVATIONS, "an activation")


NO_VALIDATION_TO_SELECT = (
    "train.select: 'per_task' picks each task's epoch on the validation split, and there is "
    "none: set data.validation_fraction > 0 or give data.validation"
)


class FinetuneConfig(_Section):
    """Fine-tuning after joint training: each main task alone, from the jointly trained (and
    selected) weights, on its own loss, with its own early stopping on its validation loss."""

    _section: ClassVar[str] = "train.finetune"

    epochs: NonNegativeInt = 20
    lr: float | None = Field(default=None, ge=0.0)  # None: train.lr
    patience: PositiveInt | None = 5


#: The train fields that turn experiment logging off: ``compare``, ``plan`` and
#: ``validate_groups`` train many models without run directories and log none of them.
NO_LOG: dict[str, Any] = {"log": "none", "log_dir": None}


class TrainConfig(_Section):
    """Optimization: balancer, optimizer, budget, early stopping, seed and device.

    ``log``: where each epoch's record goes besides ``history.csv`` (``none``, ``tensorboard``,
    ``mlflow``; see docs/logging.md); ``log_dir``: the folder for TensorBoard's event files or
    MLflow's store (default: the run directory's ``logs/``); ``log_experiment``: the MLflow
    experiment's name.
    """

    _section: ClassVar[str] = "train"

    balancer: str = "fixed"  # the joint-optimization strategy (polytask balancers)
    balancer_options: dict[str, Any] = Field(default_factory=dict)  # the balancer's own
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"  # torch.optim: Adam, AdamW or SGD
    lr: PositiveFloat = 1e-3  # learning rate of every parameter
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)  # SGD only
    weight_decay: float = Field(default=0.0, ge=0.0)  # L2 penalty λ (decoupled for adamw)
    scheduler: Literal["none", "cosine", "step", "plateau"] = "none"  # learning-rate schedule
    epochs: PositiveInt = 100  # the budget: most epochs trained
    batch_size: PositiveInt = 128  # rows per step
    patience: PositiveInt | None = 20  # stop after this many epochs without a better objective
    grad_clip: PositiveFloat | None = None  # clip the gradient norm to this
    seed: int = 0  # initialization and batch order (not the split)
    device: str = "auto"  # auto (cuda when present), cpu, cuda or cuda:N
    amp: bool = False  # mixed precision on CUDA
    select: Literal["joint", "per_task"] = "joint"  # per_task: each main task's own epoch
    finetune: FinetuneConfig | None = None  # then fine-tune each main task alone
    log: str = "none"
    log_dir: Path | None = None
    log_experiment: str = Field(default="polytask", min_length=1)

    @field_validator("log")
    @classmethod
    def _known_log(cls, name: str) -> str:
        from .logs import LOGGERS

        return _known(name, {"none": None, **LOGGERS}, "a logging backend")

    @field_validator("log_dir")
    @classmethod
    def _log_dir_of_a_backend(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("log") == "none":
            raise ValueError("set train.log (tensorboard or mlflow) to log to a folder")
        return value

    @field_validator("balancer")
    @classmethod
    def _known_balancer(cls, name: str) -> str:
        from .balancing import BALANCERS

        return _known(name, BALANCERS, "a balancer")

    @field_validator("device")
    @classmethod
    def _device_name(cls, name: str) -> str:
        import torch

        if name == "auto":
            return name
        try:
            device = torch.device(name)
        except (RuntimeError, ValueError):
            device = None
        if device is None or device.type not in ("cpu", "cuda", "mps"):
            raise ValueError(f"{name!r} is not a device (auto, cpu, cuda, cuda:N, mps)")
        return name

    @field_validator("balancer_options")
    @classmethod
    def _balancer_options(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from .balancing import validate_balancer_options

        name = info.data.get("balancer")
        return _registry_options(
            validate_balancer_options, name, options, "train.balancer_options."
        )


def _known_kind(kind: str | None) -> str | None:
    if kind is not None and kind not in KINDS:
        raise ValueError(f"{kind!r} is not a task kind ({one_of(KINDS)})")
    if kind == "multilabel":
        raise ValueError("a signal column makes one task: regression, binary, multiclass or count")
    return kind


class AuxiliaryColumn(_Section):
    """A training-only column turned into an auxiliary task (kind inferred when not given)."""

    column: str
    kind: str | None = None
    weight: float = Field(default=1.0, ge=0.0)

    _kind = field_validator("kind")(_known_kind)


class PromotedColumn(_Section):
    """A feature turned into an auxiliary output, optionally kept as an input as well."""

    column: str
    keep_as_input: bool = False
    kind: str | None = None
    weight: float = Field(default=1.0, ge=0.0)

    _kind = field_validator("kind")(_known_kind)


class HorizonsSignal(_Section):
    """Windows over time-ordered series: lags as inputs, values ``h`` steps ahead as tasks."""

    series: list[str] = Field(min_length=1)
    lags: PositiveInt
    horizons: list[PositiveInt] = Field(min_length=1)
    target: list[str] | None = None
    exogenous: list[str] = Field(default_factory=list)
    time: str | None = None
    auxiliary_weight: float = Field(default=1.0, ge=0.0)

    @field_validator("target", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _targets_are_series(self) -> HorizonsSignal:
        unknown = [c for c in self.target or [] if c not in self.series]
        if unknown:
            raise ValueError(f"target {unknown} must be among the series ({one_of(self.series)})")
        if len(set(self.horizons)) != len(self.horizons):
            raise ValueError(f"horizons {self.horizons} repeat a value")
        return self


class Representation(_Section):
    """Another view of a regression target: quantile bins (multiclass) or its rank in [0, 1]."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    column: str
    as_: Literal["binned", "rank"] = Field(alias="as")
    bins: int = Field(default=5, ge=2)
    weight: float = Field(default=1.0, ge=0.0)


class FocusRule(_Section):
    """A binary auxiliary task flagging a rare pattern; give exactly one rule."""

    column: str
    above_quantile: float | None = Field(default=None, gt=0.0, lt=1.0)
    below_quantile: float | None = Field(default=None, gt=0.0, lt=1.0)
    above: float | None = None
    below: float | None = None
    equals: str | int | float | bool | None = None
    weight: float = Field(default=1.0, ge=0.0)

    @model_validator(mode="after")
    def _one_rule(self) -> FocusRule:
        given = [k for k in RULES if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one rule ({one_of(RULES)}), got {given or 'none'}")
        return self

    @property
    def rule(self) -> tuple[str, Any]:
        return next((k, getattr(self, k)) for k in RULES if getattr(self, k) is not None)


RULES = ("above_quantile", "below_quantile", "above", "below", "equals")


class SignalsConfig(_Section):
    """Extra training signals, each turned into tasks on the raw tables (see docs/signals.md)."""

    _section: ClassVar[str] = "signals"

    auxiliary_from: list[AuxiliaryColumn] = Field(default_factory=list)
    promote: list[PromotedColumn] = Field(default_factory=list)
    horizons: HorizonsSignal | None = None
    represent: list[Representation] = Field(default_factory=list)
    focus: list[FocusRule] = Field(default_factory=list)
    teacher: Path | list[Path] | None = None
    teacher_weight: float = Field(default=1.0, ge=0.0)

    @field_validator("auxiliary_from", "promote", mode="before")
    @classmethod
    def _column_names(cls, entries: Any) -> Any:
        if isinstance(entries, list):
            return [{"column": e} if isinstance(e, str) else e for e in entries]
        return entries

    @property
    def teachers(self) -> list[Path]:
        if self.teacher is None:
            return []
        return list(self.teacher) if isinstance(self.teacher, list) else [self.teacher]


class Config(_Section):
    """A whole experiment: data, tasks, model, training and extra signals."""

    data: DataConfig
    tasks: list[Task] | None = None
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    signals: SignalsConfig | None = None

    @model_validator(mode="after")
    def _tasks_given(self) -> Config:
        horizons = self.signals is not None and self.signals.horizons is not None
        if self.tasks is None and self.data.dataset is None and not horizons:
            raise ValueError(
                "tasks: a list of tasks is needed unless data.dataset or signals.horizons is set"
            )
        if horizons and (self.data.dataset or self.data.validation or self.data.test):
            raise ValueError(
                "signals.horizons splits data.train by time; data.dataset, data.validation and "
                "data.test cannot be given with it"
            )
        if self.tasks is not None and not horizons:
            check_tasks(self.tasks)
        for i, task in enumerate(self.tasks or []):
            if ":" in task.name and task.is_main:
                raise ValueError(
                    f"tasks[{i}].name: {task.name!r} contains ':', which separates task and "
                    "class in prediction columns (TASK:CLASS); a main task's name cannot"
                )
        owner: dict[str, str] = {}
        for i, task in enumerate(self.tasks or []):
            for column in task.columns:
                if column in owner:
                    raise ValueError(
                        f"tasks[{i}].target: column {column!r} is already the target of task "
                        f"{owner[column]!r}; for another view of one target use "
                        "signals.represent"
                    )
                owner[column] = task.name
        return self

    @model_validator(mode="after")
    def _groups_name_the_tasks(self) -> Config:
        from .models.grouped import group_problems

        if self.model.groups is None:
            return self
        if self.signals is not None and self.signals.horizons is not None:
            raise ValueError(
                "model.groups: signals.horizons makes the tasks when the data is read; task "
                "groups cannot name them"
            )
        tasks = self.tasks
        if tasks is None and self.data.dataset is not None:
            from .datasets import load_dataset

            tasks = load_dataset(self.data.dataset).tasks
        if tasks is not None:  # tasks made by signals are auxiliary: they attach to every group
            problems = group_problems(self.model.groups, {t.name: t.is_main for t in tasks})
            if problems:
                raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _selection_has_validation(self) -> Config:
        has_validation = (
            self.data.dataset is not None
            or self.data.validation is not None
            or self.data.validation_fraction > 0
        )
        if self.train.select == "per_task" and not has_validation:
            raise ValueError(NO_VALIDATION_TO_SELECT)
        return self

    def with_train(self, **changes: Any) -> Config:
        """A copy with these ``train`` fields replaced (as ``model_copy``: not validated again)."""
        return self.model_copy(update={"train": self.train.model_copy(update=changes)})

    def to_yaml(self) -> str:
        # DataFrames given from Python are not written: the YAML names files only.
        data = self.model_copy(
            update={
                "data": self.data.model_copy(
                    update={
                        k: None
                        for k in ("train", "validation", "test")
                        if isinstance(getattr(self.data, k), pd.DataFrame)
                    }
                )
            }
        ).model_dump(mode="json", by_alias=True)
        if data.get("signals") is None:
            data.pop("signals", None)
        if self.data.dataset is not None:  # its splits are fixed: the file keys are not allowed
            for key in (*_FILE_ONLY, "train"):
                data["data"].pop(key, None)
        return yaml.safe_dump(data, sort_keys=False)


def _location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or str(part).startswith("function-"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def format_validation_error(
    exc: ValidationError, model: type[BaseModel] = Config, prefix: str = ""
) -> str:
    """One line per problem: ``field.path: what is wrong`` (``prefix`` names the section)."""
    lines = []
    for err in exc.errors():
        loc = _location(tuple(p for p in err["loc"] if p not in ("str", "list[str]")))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parent, _, key = loc.rpartition(".")
            msg = f"unknown key {key!r}"
            allowed = _allowed_keys(model, parent)
            if allowed:
                msg += f" (allowed: {one_of(allowed)})"
        elif loc.endswith("options") and re.match(r"^[\w.\[\]]+: ", msg):
            key, _, msg = msg.partition(": ")  # an option's own path, from the registry
            loc = f"{loc}.{key}"
        elif err["type"] not in ("value_error", "missing") and "input" in err:
            msg = f"{_short(err['input'])}: {msg}"
        loc = ".".join(p for p in (prefix, loc) if p)
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(dict.fromkeys(lines))


def _short(value: Any) -> str:
    """A value for an error message: its repr, or its type for large objects (a DataFrame)."""
    text = repr(value)
    return text if len(text) <= 80 else f"a {type(value).__name__}"


def _allowed_keys(model: type[BaseModel], path: str) -> list[str]:
    current: Any = model
    for part in [p for p in path.replace("[", ".[").split(".") if p]:
        if part.startswith("["):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args, *(a for arg in args for a in getattr(arg, "__args__", ()))]
        current = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def parse_config(data: Any, *, base_dir: Path | None = None) -> Config:
    """Validate a mapping as a Config; relative data paths resolve against ``base_dir``."""
    if not isinstance(data, dict):
        raise ConfigError(f"the config must be a mapping of sections, got {type(data).__name__}")
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    except ConfigError:
        raise
    if base_dir is not None:
        for key in ("train", "validation", "test"):
            path = getattr(config.data, key)
            if path is not None and not path.is_absolute():
                setattr(config.data, key, (base_dir / path).resolve())
        if config.signals is not None and config.signals.teacher is not None:
            resolved = [
                p if p.is_absolute() else (base_dir / p).resolve() for p in config.signals.teachers
            ]
            config.signals.teacher = (
                resolved if isinstance(config.signals.teacher, list) else resolved[0]
            )
    return config


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{at}: {problem}") from None
    if data is None:
        raise ConfigError(f"config file {str(path)!r} is empty")
    return parse_config(data, base_dir=path.parent)
