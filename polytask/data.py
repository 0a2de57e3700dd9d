"""Tabular data for multi-task learning: validation, fitted preprocessing, label masks, batches.

A missing target value is a *missing label*: it is masked out of that task's loss and metrics,
never imputed. Features are checked once here; the model code trusts what it receives.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .errors import DataError, PolytaskWarning
from .tasks import Task, check_tasks

UNKNOWN = "<unknown>"


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file into a DataFrame, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    suffix = "".join(path.suffixes[-2:]).lower()
    try:
        if suffix.endswith((".parquet", ".pq")):
            try:
                frame = pd.read_parquet(path)
            except ImportError as exc:
                raise DataError(
                    "reading Parquet needs pyarrow: pip install 'polytask[parquet]'"
                ) from exc
        frame = pd.read_csv(path)
    except DataError:
        raise
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"data file {str(path)!r} is empty") from exc
    except Exception as exc:  # pandas raises many types for unreadable files
        raise DataError(f"cannot read data file {str(path)!r}: {exc}") from exc
    if len(frame.columns) != len(set(frame.columns)):
        raise DataError(f"data file {str(path)!r} repeats a column name")
    # Rows keep their position in the file as index labels through every split, so an error
    # names the row as the user finds it (see ``where``).
    frame.attrs["source"] = path.name
    return frame


def _rows(index: Sequence[Any], limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in list(index)[:limit])
    return shown + (", ..." if len(index) > limit else "")


def where(data: pd.DataFrame | pd.Series, labels: Sequence[Any]) -> str:
    """Rows as the user finds them: ``line 7 of data.csv`` for a table read from a file (its
    rows keep their file positions as labels; line 1 is the header), else the index labels."""
    labels = list(labels)
    source = data.attrs.get("source")
    plural = "s" if len(labels) > 1 else ""
    if source is not None and all(isinstance(v, (int, np.integer)) for v in labels):
        return f"line{plural} {_rows([int(v) + 2 for v in labels])} of {source}"
    return f"row{plural} {_rows(labels)}"


def _numeric(series: pd.Series, what: str) -> np.ndarray:
    """A column as float64, or a DataError naming the first non-numeric value."""
    if pd.api.types.is_bool_dtype(series):
        return series.astype(float).to_numpy()
    if pd.api.types.is_numeric_dtype(series):  # nothing to convert (the common case: fast)
        values = series.to_numpy(dtype=float, na_value=np.nan)
    else:
        converted = pd.to_numeric(series, errors="coerce")
        bad = converted.isna() & series.notna()
        if bad.any():
            row = bad.idxmax()
            value = series[row]
            raise DataError(f"{what} is not numeric: value {value!r} in {where(series, [row])}")
        values = converted.to_numpy(dtype=float)
    if np.isinf(values).any():
        raise DataError(
            f"{what} has infinite values in {where(series, series.index[np.isinf(values)])}"
        )
    return values


def label_key(value: Any) -> str:
    """Canonical string for a class label, so 1, 1.0 and '1' read from CSV agree."""
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


@dataclass
class TargetSpec:
    """Fitted encoding of one task's labels."""

    classes: list[str] | None = None  # binary / multiclass labels, index = class code
    mean: float = 0.0  # regression target standardization
    std: float = 1.0

    def to_json(self) -> dict[str, Any]:
        return {"classes": self.classes, "mean": self.mean, "std": self.std}


@dataclass
class Preprocessor:
    """Preprocessing fitted on training data and saved with the model.

    Numeric features are standardized (with median imputation and a missing-indicator column
    when ``impute`` is on); categorical features become integer codes (0 = unseen/unknown);
    regression targets are standardized and un-standardized on output.
    """

    tasks: list[Task]
    numeric: list[str]
    categorical: list[str]
    means: list[float]
    stds: list[float]
    medians: list[float]
    indicators: list[str]
    categories: dict[str, list[str]]
    targets: dict[str, TargetSpec]
    impute: bool = False

    # ---- fitting -------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        tasks: Sequence[Task],
        *,
        features: Sequence[str] | None = None,
        categorical: Sequence[str] = (),
        impute: bool = False,
    ) -> Preprocessor:
        """Learn feature scaling, category codes and target encodings from ``frame``."""
        tasks = check_tasks(tasks)
        if len(frame) == 0:
            raise DataError("data: the table has no rows")
        target_columns = {c for t in tasks for c in t.columns}
        for task in tasks:
            for column in task.columns:
                if column not in frame.columns:
                    raise DataError(
                        f"task {task.name!r}: target column {column!r} is not in the data "
                        f"(columns: {_rows(list(frame.columns), 12)})"
                    )
        inferred = features is None
        if features is None:
            features = [c for c in frame.columns if c not in target_columns]
        else:
            features = list(features)
            missing = [c for c in features if c not in frame.columns]
            if missing:
                raise DataError(f"data.features: columns {missing} are not in the data")
            clash = [c for c in features if c in target_columns]
            if clash:
                raise DataError(f"data.features: {clash} are task targets and cannot be inputs")
        for column in categorical:
            if column not in features:
                raise DataError(f"data.categorical: column {column!r} is not a feature column")
        categorical = [
            c
            for c in features
            if c in categorical
            or not (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))
        ]
        numeric = [c for c in features if c not in categorical]
        if not features:
            raise DataError("data: no feature columns are left once the task targets are removed")

        means, stds, medians, indicators = [], [], [], []
        for column in numeric:
            values = _numeric(frame[column], f"feature {column!r}")
            nan = np.isnan(values)
            if nan.any():
                if not impute:
                    raise DataError(
                        f"feature {column!r} has {int(nan.sum())} missing values "
                        f"({where(frame, frame.index[nan])}); "
                        + (_UNDECLARED.format(column=column) if inferred else "")
                        + "if it is an input with gaps, set data.impute: true to fill them with "
                        "the training median and add a missing-indicator feature"
                    )
                indicators.append(column)
            if nan.all():
                raise DataError(f"feature {column!r} has no values at all")
            median = float(np.nanmedian(values))
            filled = np.where(nan, median, values)
            means.append(float(filled.mean()))
            std = float(filled.std())
            stds.append(std if std > 1e-12 else 1.0)
            medians.append(median)
        categories = {
            c: sorted({label_key(v) for v in frame[c].dropna().unique()}) for c in categorical
        }

        if inferred:
            _warn_suspect_inputs(frame, tasks, numeric, indicators)
        targets: dict[str, TargetSpec] = {}
        for task in tasks:
            targets[task.name] = _fit_target(task, frame)
        return cls(
            tasks=tasks,
            numeric=numeric,
            categorical=categorical,
            means=means,
            stds=stds,
            medians=medians,
            indicators=indicators,
            categories=categories,
            targets=targets,
            impute=impute,
        )

    # ---- transforming --------------------------------------------------------------------
    @property
    def features(self) -> list[str]:
        return self.numeric + self.categorical

    @property
    def n_numeric(self) -> int:
        """Width of the numeric input, missing-indicators included."""
        return len(self.numeric) + len(self.indicators)

    @property
    def cardinalities(self) -> list[int]:
        """Number of codes per categorical feature (code 0 is unknown)."""
        return [len(self.categories[c]) + 1 for c in self.categorical]

    def transform_features(self, frame: pd.DataFrame) -> tuple[Tensor, Tensor]:
        """Numeric matrix (standardized) and categorical codes for ``frame``."""
        missing = [c for c in self.features if c not in frame.columns]
        if missing:
            raise DataError(f"data: feature columns {missing} are missing from the input")
        n = len(frame)
        x_num = np.empty((n, self.n_numeric), dtype=np.float32)
        for j, column in enumerate(self.numeric):
            values = _numeric(frame[column], f"feature {column!r}")
            nan = np.isnan(values)
            if nan.any() and not self.impute:
                raise DataError(
                    f"feature {column!r} has {int(nan.sum())} missing values "
                    f"({where(frame, frame.index[nan])}); the model was trained without "
                    "data.impute"
                )
            values = np.where(nan, self.medians[j], values)
            x_num[:, j] = (values - self.means[j]) / self.stds[j]
        for k, column in enumerate(self.indicators):
            x_num[:, len(self.numeric) + k] = frame[column].isna().to_numpy(dtype=np.float32)
        x_cat = np.zeros((n, len(self.categorical)), dtype=np.int64)
        for j, column in enumerate(self.categorical):
            lookup = {v: i + 1 for i, v in enumerate(self.categories[column])}
            keys = [None if pd.isna(v) else label_key(v) for v in frame[column]]
            x_cat[:, j] = [0 if k is None else lookup.get(k, 0) for k in keys]
            unseen = sorted({k for k in keys if k is not None and k not in lookup})
            if unseen:  # encoded as "unknown" (code 0), like a missing category
                warnings.warn(
                    f"feature {column!r}: {len(unseen)} categories not seen in training "
                    f"({_rows(unseen)}) are encoded as unknown",
                    PolytaskWarning,
                    stacklevel=3,
                )
        return torch.from_numpy(x_num), torch.from_numpy(x_cat)

    def transform_target(self, task: Task, frame: pd.DataFrame) -> tuple[Tensor, Tensor]:
        """Encoded labels and the label mask (True = labelled) for one task."""
        spec = self.targets[task.name]
        if task.kind == "multilabel":
            columns = [
                _encode_binary_column(frame[c], f"task {task.name!r}: column {c!r}")
                for c in task.columns
            ]
            values = np.stack(columns, axis=1)
            mask = ~np.isnan(values)
            return (
                torch.from_numpy(np.where(mask, values, 0.0).astype(np.float32)),
                torch.from_numpy(mask),
            )
        series = frame[task.columns[0]]
        what = f"task {task.name!r}: target column {task.columns[0]!r}"
        if task.kind in ("binary", "multiclass"):
            mask = series.notna().to_numpy()
            lookup = {c: i for i, c in enumerate(spec.classes or [])}
            codes = np.zeros(len(series), dtype=np.int64)
            for i, (value, labelled) in enumerate(zip(series, mask, strict=True)):
                if not labelled:
                    continue
                key = label_key(value)
                if key not in lookup:
                    raise DataError(
                        f"{what}: label {value!r} in {where(series, [series.index[i]])} is not "
                        f"one of the classes ({', '.join(spec.classes or [])})"
                    )
                codes[i] = lookup[key]
            target = torch.from_numpy(codes)
            if task.kind == "binary":
                target = target.float()
            return target, torch.from_numpy(mask.copy())
        values = _numeric(series, what)
        mask = ~np.isnan(values)
        if task.kind == "count" and (values[mask] < 0).any():
            row = series.index[np.where(mask & (np.nan_to_num(values) < 0))[0][0]]
            raise DataError(
                f"{what}: counts must be non-negative, got {series[row]} in {where(series, [row])}"
            )
        if task.kind == "count":
            _check_whole(series, values, what)
        scaled = (np.where(mask, values, spec.mean) - spec.mean) / spec.std
        return torch.from_numpy(scaled.astype(np.float32)), torch.from_numpy(mask)

    def unlabelled(self, task: Task, n: int) -> tuple[Tensor, Tensor]:
        """Targets and an all-False mask for ``n`` rows without this task's column."""
        mask = torch.zeros(n, dtype=torch.bool)
        if task.kind == "multilabel":
            return torch.zeros(n, len(task.columns)), mask[:, None].expand(n, len(task.columns))
        if task.kind == "multiclass":
            return torch.zeros(n, dtype=torch.long), mask
        return torch.zeros(n), mask

    def decode(self, task: Task, output: Tensor) -> np.ndarray:
        """Head output → prediction in the data's terms: value (regression, count), P(class 1)
        (binary), class probabilities (multiclass) or label probabilities (multilabel)."""
        out = output.detach().float().cpu()
        if task.kind == "regression":
            spec = self.targets[task.name]
            return (out[:, 0] * spec.std + spec.mean).numpy()
        if task.kind == "binary":
            return torch.sigmoid(out[:, 0]).numpy()
        if task.kind == "multiclass":
            return torch.softmax(out, dim=1).numpy()
        if task.kind == "multilabel":
            return torch.sigmoid(out).numpy()
        return torch.exp(out[:, 0]).numpy()

    def decode_target(self, task: Task, target: Tensor, mask: Tensor) -> np.ndarray:
        """Encoded labels back in the data's terms (class codes for classifiers); a multilabel
        task keeps every row with NaN in its unlabelled cells, other kinds keep labelled rows."""
        target, mask = target.cpu(), mask.cpu()
        if task.kind == "multilabel":
            return torch.where(mask, target, torch.nan).numpy()
        values = target[mask].numpy()
        if task.kind == "regression":
            spec = self.targets[task.name]
            return values * spec.std + spec.mean
        return values

    def output_dims(self) -> dict[str, int]:
        """Width of each task's head output."""
        dims = {}
        for task in self.tasks:
            if task.kind == "multiclass":
                dims[task.name] = len(self.targets[task.name].classes or [])
            elif task.kind == "multilabel":
                dims[task.name] = len(task.columns)
            else:
                dims[task.name] = 1
        return dims

    def to_json(self) -> dict[str, Any]:
        return {
            "tasks": [t.model_dump() for t in self.tasks],
            "numeric": self.numeric,
            "categorical": self.categorical,
            "means": self.means,
            "stds": self.stds,
            "medians": self.medians,
            "indicators": self.indicators,
            "categories": self.categories,
            "targets": {k: v.to_json() for k, v in self.targets.items()},
            "impute": self.impute,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Preprocessor:
        return cls(
            tasks=[Task(**t) for t in data["tasks"]],
            numeric=list(data["numeric"]),
            categorical=list(data["categorical"]),
            means=list(data["means"]),
            stds=list(data["stds"]),
            medians=list(data["medians"]),
            indicators=list(data["indicators"]),
            categories={k: list(v) for k, v in data["categories"].items()},
            targets={k: TargetSpec(**v) for k, v in data["targets"].items()},
            impute=bool(data["impute"]),
        )


_UNDECLARED = (
    "{column!r} is no task's target and became an input because data.features is not set: if "
    "it is a label or a value not known at prediction time, add it to data.drop (or list the "
    "inputs in data.features); "
)

#: An undeclared input this correlated with a task's target is named as a likely label.
LEAK_CORRELATION = 0.999


def _warn_suspect_inputs(
    frame: pd.DataFrame, tasks: Sequence[Task], numeric: Sequence[str], gappy: Sequence[str]
) -> None:
    """Warn about inputs taken by default that look like labels: columns with missing values
    (labels often have gaps, inputs rarely) and columns almost identical to a task's target."""
    if gappy:
        warnings.warn(
            f"inputs with missing values, imputed: {', '.join(gappy)}. They are no task's "
            "target and became inputs because data.features is not set; if one is a label or a "
            "value not known at prediction time, add it to data.drop",
            PolytaskWarning,
            stacklevel=3,
        )
    if not numeric:
        return
    inputs = frame[list(numeric)].apply(pd.to_numeric, errors="coerce")
    inputs = inputs.to_numpy(dtype=float, na_value=np.nan)
    for task in tasks:
        if task.kind == "multilabel" or not task.is_main:  # signals may copy inputs on purpose
            continue
        target = pd.to_numeric(frame[task.columns[0]], errors="coerce")
        target = target.to_numpy(dtype=float, na_value=np.nan)
        labelled = ~np.isnan(target)
        if labelled.sum() < 10 or np.unique(target[labelled]).size < 2:
            continue
        r = _abs_correlations(inputs[labelled], target[labelled])
        for column, value in zip(numeric, r, strict=True):
            if not value >= LEAK_CORRELATION:  # NaN (no spread, too few pairs) included
                continue
            warnings.warn(
                f"input {column!r} is almost identical to the target of task {task.name!r} "
                f"(|r| = {value:.3f}); if it is a copy of that label or derived from it, add it "
                "to data.drop",
                PolytaskWarning,
                stacklevel=3,
            )


def _abs_correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """|Pearson r| of each column of ``x`` with ``y`` over the rows where both are present
    (as ``DataFrame.corrwith``, pairwise complete); NaN where undefined."""
    present = ~np.isnan(x)
    count = present.sum(0)
    xs = np.where(present, x, 0.0)
    ys = np.where(present, y[:, None], 0.0)
    with np.errstate(all="ignore"):
        dx = np.where(present, xs - xs.sum(0) / count, 0.0)
        dy = np.where(present, ys - ys.sum(0) / count, 0.0)
        r = (dx * dy).sum(0) / np.sqrt((dx**2).sum(0) * (dy**2).sum(0))
    r[count < 2] = np.nan
    return np.abs(r)


def _encode_binary_column(series: pd.Series, what: str) -> np.ndarray:
    """0/1 labels as float with NaN for missing; anything else is an error."""
    if pd.api.types.is_bool_dtype(series):
        return series.astype(float).to_numpy()
    values = _numeric(series, what)
    labelled = values[~np.isnan(values)]
    bad = labelled[(labelled != 0) & (labelled != 1)]
    if bad.size:
        raise DataError(f"{what}: labels must be 0 or 1, got {bad[0]:g}")
    return values


def _fit_target(task: Task, frame: pd.DataFrame) -> TargetSpec:
    what = f"task {task.name!r}: target column {task.columns[0]!r}"
    if task.kind == "multilabel":
        for column in task.columns:
            _encode_binary_column(frame[column], f"task {task.name!r}: column {column!r}")
        return TargetSpec()
    series = frame[task.columns[0]]
    labelled = series.dropna()
    if labelled.empty:
        raise DataError(f"{what} has no labelled rows")
    if task.kind in ("binary", "multiclass"):
        seen = sorted({label_key(v) for v in labelled.unique()}, key=_class_order)
        if task.classes is not None:
            classes = [label_key(c) for c in task.classes]
            unknown = [c for c in seen if c not in classes]
            if unknown:
                raise DataError(
                    f"{what}: labels {unknown} are not among the declared classes "
                    f"({', '.join(classes)})"
                )
        elif task.kind == "binary":
            if len(seen) > 2:
                raise DataError(
                    f"{what} has {len(seen)} distinct labels ({', '.join(seen[:6])}); a binary "
                    "task takes two (use kind: multiclass for more)"
                )
            if len(seen) < 2:
                raise DataError(
                    f"{what} has a single label {seen[0]!r} in the training data; a binary task "
                    "needs examples of both classes"
                )
            classes = ["0", "1"] if set(seen) <= {"0", "1"} else seen
        else:
            classes = seen
        return TargetSpec(classes=classes)
    values = _numeric(series, what)
    labelled_values = values[~np.isnan(values)]
    if task.kind == "count":
        if (labelled_values < 0).any():
            raise DataError(f"{what}: counts must be non-negative")
        _check_whole(series, values, what)
        return TargetSpec()
    std = float(labelled_values.std())
    return TargetSpec(mean=float(labelled_values.mean()), std=std if std > 1e-12 else 1.0)


def _check_whole(series: pd.Series, values: np.ndarray, what: str) -> None:
    """Counts are whole numbers (the Poisson likelihood is defined on them)."""
    fractional = ~np.isnan(values) & (values != np.round(values))
    if fractional.any():
        row = series.index[np.argmax(fractional)]
        raise DataError(
            f"{what}: counts must be whole numbers, got {series[row]} in {where(series, [row])} "
            "(use kind: regression for a continuous target)"
        )


def _class_order(key: str) -> tuple[int, float | str]:
    try:
        return (0, float(key))
    except ValueError:
        return (1, key)


class Columns(Mapping[str, Tensor]):
    """A read-only ``{task: tensor}`` whose 1-D entries are columns of a few stacked tensors.

    ``blocks`` are ``(N, k)`` tensors, one per dtype; entry ``name`` is column ``j`` of block
    ``b`` where ``columns[name] == (b, j)``; entries of other shapes are kept as given in
    ``rest``. Taking the rows of a batch is then one indexing operation per block instead of
    one per task. An entry is a view of its column, made on first access; ``stack_entries``
    hands out several columns of one block at once.
    """

    __slots__ = ("blocks", "columns", "rest", "_order", "_selections", "_views")

    def __init__(
        self,
        blocks: Sequence[Tensor],
        columns: Mapping[str, tuple[int, int]],
        rest: Mapping[str, Tensor],
        order: Sequence[str],
        selections: dict[tuple[str, ...], Any] | None = None,
    ) -> None:
        self.blocks = blocks
        self.columns = columns
        self.rest = rest
        self._order = order
        # Column selections by ``select``, shared by every batch of one TaskData.
        self._selections = selections if selections is not None else {}
        self._views: dict[str, Tensor] = {}

    def __getitem__(self, name: str) -> Tensor:
        view = self._views.get(name)
        if view is None:
            where = self.columns.get(name)
            if where is None:
                return self.rest[name]
            view = self._views[name] = self.blocks[where[0]][:, where[1]]
        return view

    def __contains__(self, name: object) -> bool:
        return name in self.columns or name in self.rest

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __repr__(self) -> str:
        return repr(dict(self))

    def select(self, names: tuple[str, ...]) -> Tensor | None:
        """``torch.stack([self[n] for n in names], dim=1)`` when all of ``names`` are columns
        of one block (the rows of the block itself, a slice or a gather), else None."""
        how = self._selections.get(names)
        if how is None:
            how = self._selections[names] = self._selection(names)
        if how is False:
            return None
        block = self.blocks[how[0]]
        cols = how[1]
        return block[:, cols] if isinstance(cols, slice) else block.index_select(1, cols)

    def _selection(self, names: tuple[str, ...]) -> Any:
        where = [self.columns.get(n) for n in names]
        if not names or any(w is None for w in where) or len({w[0] for w in where}) > 1:
            return False
        block, cols = where[0][0], [w[1] for w in where]
        if cols == list(range(cols[0], cols[0] + len(cols))):
            return block, slice(cols[0], cols[0] + len(cols))
        index = torch.tensor(cols, dtype=torch.long, device=self.blocks[block].device)
        return block, index


def stack_entries(entries: Mapping[str, Tensor], names: tuple[str, ...]) -> Tensor:
    """``torch.stack([entries[n] for n in names], dim=1)``, without the per-entry work when the
    entries are already the columns of one tensor (a batch's ``targets`` and ``masks``)."""
    if isinstance(entries, Columns):
        stacked = entries.select(names)
        if stacked is not None:
            return stacked
    return torch.stack([entries[n] for n in names], dim=1)


@dataclass
class Batch:
    """A mini-batch: inputs plus per-task targets and label masks, keyed by task name.

    ``targets`` and ``masks`` are read-only mappings (``Columns`` when made by
    ``TaskData.batch``); copy them with ``dict(...)`` to change them.
    """

    x_num: Tensor
    x_cat: Tensor
    targets: Mapping[str, Tensor]
    masks: Mapping[str, Tensor]

    def __len__(self) -> int:
        return self.x_num.shape[0]


@dataclass
class TaskData:
    """Encoded features with per-task targets and label masks (True = labelled)."""

    x_num: Tensor
    x_cat: Tensor
    targets: dict[str, Tensor] = field(default_factory=dict)
    masks: dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        preprocessor: Preprocessor,
        *,
        tasks: Sequence[Task] | None = None,
    ) -> TaskData:
        """Encode ``frame`` with a fitted preprocessor; ``tasks`` picks the targets to encode.

        An auxiliary task whose column is absent (a training-only signal, such as a future
        measurement, in a validation or test file) gets no labelled row; a main task's column
        must be present.
        """
        if len(frame) == 0:
            raise DataError("data: the table has no rows")
        tasks = preprocessor.tasks if tasks is None else list(tasks)
        absent = {t.name for t in tasks if not all(c in frame.columns for c in t.columns)}
        for task in tasks:
            if task.name in absent and task.is_main:
                missing = next(c for c in task.columns if c not in frame.columns)
                source = frame.attrs.get("source")
                raise DataError(
                    f"task {task.name!r}: target column {missing!r} is not in "
                    + (f"{source}" if source else "the data")
                )
        x_num, x_cat = preprocessor.transform_features(frame)
        targets, masks = {}, {}
        for task in tasks:
            if task.name in absent:
                targets[task.name], masks[task.name] = preprocessor.unlabelled(task, len(frame))
            else:
                targets[task.name], masks[task.name] = preprocessor.transform_target(task, frame)
        return cls(x_num=x_num, x_cat=x_cat, targets=targets, masks=masks)

    def __len__(self) -> int:
        return self.x_num.shape[0]

    def subset(self, index: Tensor | np.ndarray | Sequence[int]) -> TaskData:
        index = torch.as_tensor(np.asarray(index), dtype=torch.long)
        return TaskData(
            x_num=self.x_num[index],
            x_cat=self.x_cat[index],
            targets={k: v[index] for k, v in self.targets.items()},
            masks={k: v[index] for k, v in self.masks.items()},
        )

    def to(self, device: torch.device | str) -> TaskData:
        return TaskData(
            x_num=self.x_num.to(device),
            x_cat=self.x_cat.to(device),
            targets={k: v.to(device) for k, v in self.targets.items()},
            masks={k: v.to(device) for k, v in self.masks.items()},
        )

    def batch(self, index: Tensor) -> Batch:
        """The rows ``index``: a few indexing operations whatever the number of tasks.

        The 1-D targets and masks are stacked into matrices on first use (a copy, kept in the
        instance and made again whenever the dicts or their tensors change), so every batch
        takes the rows of all tasks at once.
        """
        stacked = self.__dict__.get("_stacked")
        if stacked is None or not stacked.matches(self.targets, self.masks):
            if any(t.is_inference() for t in (*self.targets.values(), *self.masks.values())):
                # Inference tensors keep no version counter, so a copy could go stale unseen.
                return Batch(
                    x_num=self.x_num[index],
                    x_cat=self.x_cat[index],
                    targets={k: v[index] for k, v in self.targets.items()},
                    masks={k: v[index] for k, v in self.masks.items()},
                )
            stacked = self.__dict__["_stacked"] = _Stacked(self.targets, self.masks, len(self))
        return Batch(
            x_num=self.x_num[index],
            x_cat=self.x_cat[index],
            targets=stacked.targets.rows(index),
            masks=stacked.masks.rows(index),
        )

    def batches(
        self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[Batch]:
        """Mini-batches in order, or in a seeded random order when ``shuffle`` is on."""
        n = len(self)
        device = self.x_num.device
        if shuffle:
            order = torch.randperm(n, generator=generator).to(device)
        else:
            order = torch.arange(n, device=device)
        for start in range(0, n, batch_size):
            yield self.batch(order[start : start + batch_size])

    def label_counts(self) -> dict[str, int]:
        return {k: int(v.sum()) for k, v in self.masks.items()}


class _StackedEntries:
    """One dict of per-task tensors with its 1-D entries stacked, one matrix per dtype."""

    def __init__(self, entries: Mapping[str, Tensor], n_rows: int) -> None:
        kinds: dict[tuple[torch.dtype, torch.device], list[str]] = {}
        for k, v in entries.items():
            if v.dim() == 1 and v.shape[0] == n_rows:
                kinds.setdefault((v.dtype, v.device), []).append(k)
        self.order = tuple(entries)
        self.columns = {
            k: (b, j) for b, names in enumerate(kinds.values()) for j, k in enumerate(names)
        }
        self.rest = {k: v for k, v in entries.items() if k not in self.columns}
        self.blocks = [torch.stack([entries[k] for k in names], dim=1) for names in kinds.values()]
        self.selections: dict[tuple[str, ...], Any] = {}

    def rows(self, index: Tensor) -> Mapping[str, Tensor]:
        rest = {k: v[index] for k, v in self.rest.items()}
        if not self.blocks:
            return rest
        blocks = [block[index] for block in self.blocks]
        return Columns(blocks, self.columns, rest, self.order, self.selections)


_VERSION = operator.attrgetter("_version")


class _Stacked:
    """``TaskData``'s targets and masks stacked, with what they were made from."""

    def __init__(self, targets: dict[str, Tensor], masks: dict[str, Tensor], n_rows: int):
        self.sources = (*targets.values(), *masks.values())
        self.keys = (tuple(targets), tuple(masks))
        self.versions = [t._version for t in self.sources]
        self.targets = _StackedEntries(targets, n_rows)
        self.masks = _StackedEntries(masks, n_rows)

    def matches(self, targets: dict[str, Tensor], masks: dict[str, Tensor]) -> bool:
        """Still a copy of ``targets`` and ``masks``: the same tensors, none changed in place."""
        current = (*targets.values(), *masks.values())
        return (  # map with C-level callables: this runs once per batch, over every task
            len(current) == len(self.sources)
            and all(map(operator.is_, current, self.sources))
            and list(map(_VERSION, current)) == self.versions
            and self.keys == (tuple(targets), tuple(masks))
        )


@dataclass
class Splits:
    """The three tables of an experiment (validation and test may be empty)."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame

    def __iter__(self) -> Iterator[pd.DataFrame]:
        return iter((self.train, self.validation, self.test))

    def map(self, fn: Any) -> Splits:
        """``fn`` applied to each table."""
        return Splits(fn(self.train), fn(self.validation), fn(self.test))


def time_split(
    times: Any, *, validation_start: Any, test_start: Any, reach: int, lookback: int = 0
) -> dict[str, np.ndarray]:
    """Row indices of a split by time, never shuffled, with a gap before each cut.

    Row ``t`` has inputs back to ``t - lookback`` and targets up to ``t + reach``. Validation
    rows start at ``validation_start`` and test rows at ``test_start``; a train (validation) row
    is kept only when its last target comes before the earliest input of the first validation
    (test) row, so no target of an earlier split is an input of a later one. ``times`` are
    integers or pandas Periods (anything that adds an integer).
    """
    times = pd.Index(times)
    last_target = times + reach
    periods = {
        "train": last_target < validation_start - lookback,
        "validation": (times >= validation_start) & (last_target < test_start - lookback),
        "test": times >= test_start,
    }
    return {k: np.flatnonzero(np.asarray(mask)) for k, mask in periods.items()}


def split_indices(
    n: int, *, seed: int, validation: float, test: float = 0.0
) -> dict[str, np.ndarray]:
    """A seeded random split of ``range(n)`` into train / validation / test index arrays."""
    if not 0 <= validation < 1 or not 0 <= test < 1 or validation + test >= 1:
        raise DataError(
            f"split fractions validation={validation}, test={test} must be in [0, 1) "
            "and leave rows for training"
        )
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(test * n))
    n_val = int(round(validation * n))
    return {
        "test": np.sort(order[:n_test]),
        "validation": np.sort(order[n_test : n_test + n_val]),
        "train": np.sort(order[n_test + n_val :]),
    }
