"""Extra training signals: builders that turn raw tables into extra tasks.

Each builder works on the raw train / validation / test tables before preprocessing is fitted
and returns the tables with new target columns, the new tasks and what it fitted (bin edges,
thresholds, class lists) as JSON. Anything fitted comes from the training table only. The added
tasks are auxiliary (training-only: ``predict`` neither needs nor returns them), except the
target series of ``horizons``, which are the main tasks of a forecasting run.

- ``auxiliary_from``: columns present when training but not at prediction time become tasks;
- ``promote``: a feature becomes an output, dropped from the inputs or kept as one as well;
- ``horizons`` / ``windows``: lags of time-ordered series as inputs, values h steps ahead as tasks,
  split by time with a gap so no target of an earlier split is an input of a later one;
- ``represent``: a regression target's quantile bin (multiclass) or train-CDF rank (regression);
- ``focus``: a binary flag for a rare pattern (a tail past a train quantile, a rare class);
- ``teacher``: an earlier run's predictions (or any frame → DataFrame callable) as targets.

``expand`` applies a config's ``signals`` section; the builders can be called on their own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from .config import (
    AuxiliaryColumn,
    Config,
    FocusRule,
    HorizonsSignal,
    PromotedColumn,
    Representation,
    format_validation_error,
)
from .data import Splits, _class_order, _numeric, label_key, time_split
from .errors import ConfigError, DataError
from .tasks import Task, check_tasks

#: An integer or text column with at most this many distinct values is inferred multiclass.
MAX_CLASSES = 20

Teacher = str | Path | Callable[[pd.DataFrame], pd.DataFrame]


@dataclass
class Signal:
    """What a builder adds: the tables with new target columns, the new tasks, fitted state."""

    splits: Splits
    tasks: list[Task]
    state: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Expanded:
    """A config with its signals applied: explicit tasks, ``signals`` removed, new tables."""

    config: Config
    splits: Splits
    state: dict[str, Any]


def _check_column(frame: pd.DataFrame, column: str, where: str) -> None:
    if column not in frame.columns:
        shown = ", ".join(str(c) for c in list(frame.columns)[:30])
        more = ", ..." if len(frame.columns) > 30 else ""
        raise DataError(f"{where}: column {column!r} is not in the data (columns: {shown}{more})")


def _with_column(splits: Splits, name: str, make: Callable[[pd.DataFrame], Any]) -> Splits:
    def add(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        frame[name] = make(frame) if len(frame) else pd.Series(dtype=float)
        return frame

    return splits.map(add)


def _entries(model: Any, entries: Sequence[Any]) -> list[Any]:
    """Config entries given as column names, mappings or the config model itself."""
    out = []
    for entry in entries:
        if isinstance(entry, str):
            entry = {"column": entry}
        if isinstance(entry, dict):
            try:
                entry = model.model_validate(entry)
            except ValidationError as exc:
                raise ConfigError(format_validation_error(exc, model)) from None
        out.append(entry)
    return out


def _train_values(splits: Splits, column: str, where: str) -> np.ndarray:
    values = _numeric(splits.train[column], f"{where}: column {column!r}")
    values = values[~np.isnan(values)]
    if values.size == 0:
        raise DataError(f"{where}: column {column!r} has no values in the training rows")
    return values


# ---- columns as tasks ------------------------------------------------------------------------
def infer_kind(values: pd.Series, *, where: str = "column") -> str:
    """Task kind of a column: binary for two values, regression for floats, multiclass for
    integers or text with at most ``MAX_CLASSES`` values, regression for other integers."""
    labelled = values.dropna()
    distinct = labelled.nunique()
    if distinct < 2:
        raise DataError(f"{where} has {distinct} distinct value(s) in the training rows")
    if distinct == 2:
        return "binary"
    if pd.api.types.is_float_dtype(values):
        return "regression"
    if distinct <= MAX_CLASSES:
        return "multiclass"
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return "regression"
    raise DataError(
        f"{where} has {distinct} distinct non-numeric values; give its kind "
        "({column: ..., kind: ...})"
    )


def column_task(
    splits: Splits,
    column: str,
    *,
    name: str | None = None,
    kind: str | None = None,
    weight: float = 1.0,
    where: str = "signals",
) -> Signal:
    """Column ``column`` as an auxiliary task named ``name`` (default: the column).

    For classifiers the classes are the labels of the training rows; a validation or test label
    outside them becomes a missing label.
    """
    _check_column(splits.train, column, where)
    name = name or column
    kind = kind or infer_kind(splits.train[column], where=f"{where}: column {column!r}")
    state: dict[str, Any] = {"task": name, "column": column, "kind": kind}
    classes = None
    if kind in ("binary", "multiclass"):
        seen = {label_key(v) for v in splits.train[column].dropna().unique()}
        classes = sorted(seen, key=_class_order)
        if kind == "binary" and seen <= {"0", "1"}:
            classes = ["0", "1"]
        if kind == "binary" and len(classes) != 2:
            raise DataError(
                f"{where}: column {column!r} has {len(classes)} labels in the training rows "
                f"({', '.join(classes[:6])}); a binary task takes two"
            )
        state["classes"] = classes

        def known(frame: pd.DataFrame) -> pd.DataFrame:
            if not len(frame):
                return frame
            keys = frame[column].map(lambda v: None if pd.isna(v) else label_key(v))
            return frame.assign(**{column: frame[column].where(keys.isin(classes))})

        splits = Splits(splits.train, known(splits.validation), known(splits.test))
    task = Task(
        name=name, kind=kind, target=column, weight=weight, role="auxiliary", classes=classes
    )
    return Signal(splits, [task], [state])


def auxiliary_from(
    splits: Splits,
    columns: Sequence[str | dict[str, Any] | AuxiliaryColumn],
    *,
    where: str = "auxiliary_from",
) -> Signal:
    """Training-only columns as auxiliary tasks; as targets they are never inputs."""
    tasks, state = [], []
    for i, entry in enumerate(_entries(AuxiliaryColumn, columns)):
        signal = column_task(
            splits, entry.column, kind=entry.kind, weight=entry.weight, where=f"{where}[{i}]"
        )
        splits = signal.splits
        tasks += signal.tasks
        state += signal.state
    return Signal(splits, tasks, state)


def promote(
    splits: Splits,
    columns: Sequence[str | dict[str, Any] | PromotedColumn],
    *,
    where: str = "promote",
) -> Signal:
    """Features as auxiliary outputs. Not kept: the column becomes the target of a task of the
    same name (and so leaves the inputs). Kept: a copy ``promote:COLUMN`` is the target."""
    tasks, state = [], []
    for i, entry in enumerate(_entries(PromotedColumn, columns)):
        _check_column(splits.train, entry.column, f"{where}[{i}]")
        target = entry.column
        if entry.keep_as_input:
            target = f"promote:{entry.column}"
            splits = _with_column(splits, target, lambda f, c=entry.column: f[c])
        signal = column_task(
            splits, target, kind=entry.kind, weight=entry.weight, where=f"{where}[{i}]"
        )
        splits = signal.splits
        tasks += signal.tasks
        state += [{**s, "keep_as_input": entry.keep_as_input} for s in signal.state]
    return Signal(splits, tasks, state)


# ---- representations and focus ----------------------------------------------------------------
def bin_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Inner edges of ``bins`` equal-count bins of ``values`` (repeated edges merged)."""
    return np.unique(np.quantile(values, np.arange(1, bins) / bins))


def empirical_cdf(train: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mid-rank of ``values`` among the sorted ``train`` values, in [0, 1] (NaN stays NaN)."""
    ordered = np.sort(train)
    below = np.searchsorted(ordered, values, side="left")
    upto = np.searchsorted(ordered, values, side="right")
    return np.where(np.isnan(values), np.nan, (below + upto) / (2.0 * ordered.size))


def represent(
    splits: Splits, views: Sequence[dict[str, Any] | Representation], *, where: str = "represent"
) -> Signal:
    """Other views of regression targets: ``binned`` (multiclass over train-quantile bins,
    task ``bin:COLUMN``) or ``rank`` (the train-CDF value, task ``rank:COLUMN``)."""
    tasks, state = [], []
    for i, view in enumerate(_entries(Representation, views)):
        at = f"{where}[{i}]"
        _check_column(splits.train, view.column, at)
        train = _train_values(splits, view.column, at)

        def numeric(frame: pd.DataFrame, c: str = view.column, w: str = at) -> np.ndarray:
            return _numeric(frame[c], f"{w}: column {c!r}")

        if view.as_ == "binned":
            edges = bin_edges(train, view.bins)
            name = f"bin:{view.column}"

            def code(frame: pd.DataFrame, e: np.ndarray = edges, f=numeric) -> np.ndarray:
                values = f(frame)
                return np.where(np.isnan(values), np.nan, np.searchsorted(e, values, "right"))

            splits = _with_column(splits, name, code)
            classes = list(range(edges.size + 1))
            tasks.append(
                Task(
                    name=name,
                    kind="multiclass",
                    weight=view.weight,
                    role="auxiliary",
                    classes=classes,
                )
            )
            state.append(
                {"task": name, "column": view.column, "as": "binned", "edges": edges.tolist()}
            )
        else:
            name = f"rank:{view.column}"
            splits = _with_column(
                splits, name, lambda frame, t=train, f=numeric: empirical_cdf(t, f(frame))
            )
            tasks.append(Task(name=name, kind="regression", weight=view.weight, role="auxiliary"))
            state.append(
                {
                    "task": name,
                    "column": view.column,
                    "as": "rank",
                    "train_values": np.sort(train).tolist(),
                }
            )
    return Signal(splits, tasks, state)


def focus(
    splits: Splits, rules: Sequence[dict[str, Any] | FocusRule], *, where: str = "focus"
) -> Signal:
    """Binary auxiliary tasks ``focus:COLUMN`` flagging a rare pattern; quantile thresholds are
    fitted on the training rows."""
    tasks, state, names = [], [], set()
    for i, rule in enumerate(_entries(FocusRule, rules)):
        at = f"{where}[{i}]"
        _check_column(splits.train, rule.column, at)
        kind, value = rule.rule
        entry: dict[str, Any] = {"column": rule.column, "rule": kind, "value": value}
        if kind == "equals":
            key = label_key(value)

            def flag(frame: pd.DataFrame, c: str = rule.column, k: str = key) -> pd.Series:
                series = frame[c]
                return series.map(lambda v: np.nan if pd.isna(v) else float(label_key(v) == k))
        else:
            threshold = float(value)
            if kind.endswith("_quantile"):
                threshold = float(np.quantile(_train_values(splits, rule.column, at), value))
                entry["threshold"] = threshold
            above = kind.startswith("above")

            def flag(
                frame: pd.DataFrame,
                c: str = rule.column,
                t: float = threshold,
                up: bool = above,
                w: str = at,
            ) -> np.ndarray:
                values = _numeric(frame[c], f"{w}: column {c!r}")
                hit = values > t if up else values < t
                return np.where(np.isnan(values), np.nan, hit.astype(float))

        name = f"focus:{rule.column}"
        name = name if name not in names else f"{name}:{i}"
        names.add(name)
        splits = _with_column(splits, name, flag)
        positives = int(np.nansum(splits.train[name].to_numpy(dtype=float)))
        if positives == 0:
            raise DataError(f"{at}: the rule {kind}={value!r} matches no training row")
        entry.update(task=name, train_positives=positives)
        tasks.append(
            Task(name=name, kind="binary", weight=rule.weight, role="auxiliary", classes=[0, 1])
        )
        state.append(entry)
    return Signal(splits, tasks, state)


# ---- teachers ------------------------------------------------------------------------------------
def teacher(
    splits: Splits, source: Teacher, *, prefix: str = "teacher", weight: float = 1.0
) -> Signal:
    """An earlier model's predictions as auxiliary regression targets ``PREFIX:COLUMN``.

    ``source`` is a run directory (loaded with ``polytask.load``, never unpickled; its targets
    are exactly ``load(source).predict(frame)``, class probabilities for classifiers) or any
    callable returning a DataFrame of numeric predictions for the rows of a frame.
    """
    state: dict[str, Any] = {"prefix": prefix}
    if callable(source):
        predict = source
        state["source"] = getattr(source, "__qualname__", type(source).__name__)
    else:
        from .io import load

        predict = load(source).predict
        state["source"] = str(source)

    columns: list[str] | None = None

    def predictions(frame: pd.DataFrame) -> pd.DataFrame:
        nonlocal columns
        if not len(frame):
            return pd.DataFrame(index=frame.index, columns=columns or [], dtype=float)
        try:
            out = predict(frame)
        except DataError as exc:
            raise DataError(f"signals.teacher {state['source']!r}: {exc}") from None
        if not isinstance(out, pd.DataFrame) or len(out) != len(frame):
            raise DataError(
                f"signals.teacher {state['source']!r} must return a DataFrame with one row per "
                f"input row, got {type(out).__name__} of length {len(out)}"
            )
        columns = columns or [str(c) for c in out.columns]
        return out.set_axis(frame.index)

    parts = [predictions(f) for f in splits]
    names = [f"{prefix}:{c}" for c in columns or []]
    frames = [
        pd.concat([f, p.set_axis(names, axis=1).astype(float)], axis=1)
        for f, p in zip(splits, parts, strict=True)
    ]
    tasks = [Task(name=n, kind="regression", weight=weight, role="auxiliary") for n in names]
    return Signal(Splits(*frames), tasks, [{**state, "tasks": names}])


# ---- multi-horizon windows ------------------------------------------------------------------
def _windows(
    frame: pd.DataFrame,
    *,
    series: Sequence[str],
    lags: int,
    horizons: Sequence[int] = (),
    exogenous: Sequence[str] = (),
    time: str | None = None,
    where: str = "signals.horizons",
) -> tuple[pd.DataFrame, np.ndarray]:
    for column in [*series, *exogenous, *([time] if time else [])]:
        _check_column(frame, column, where)
    if time is not None:
        if frame[time].duplicated().any():
            first = frame[time][frame[time].duplicated()].iloc[0]
            raise DataError(f"{where}.time: value {first!r} of column {time!r} repeats")
        frame = frame.sort_values(time, kind="stable").set_index(time)
    values = {
        c: pd.Series(_numeric(frame[c], f"{where}: column {c!r}"), index=frame.index)
        for c in dict.fromkeys([*series, *exogenous])
    }
    columns = {f"{c}_lag{k}": values[c].shift(k) for c in values for k in range(lags)}
    inputs = list(columns)
    for c in series:
        for h in horizons:
            columns[f"{c}_h{h}"] = values[c].shift(-h)
    table = pd.DataFrame(columns, index=frame.index)
    keep = table[inputs].notna().all(axis=1)
    if horizons:
        keep &= table.drop(columns=inputs).notna().any(axis=1)
    positions = np.flatnonzero(keep.to_numpy())
    return table[keep.to_numpy()], positions


def windows(
    frame: pd.DataFrame,
    *,
    series: Sequence[str],
    lags: int,
    horizons: Sequence[int] = (),
    exogenous: Sequence[str] = (),
    time: str | None = None,
) -> pd.DataFrame:
    """One row per time ``t`` of the time-ordered ``frame`` (sorted by column ``time`` if given,
    else in row order): inputs ``C_lagK`` = value of series or exogenous column ``C`` at
    ``t - K`` for K < ``lags``, targets ``S_hH`` = value of series ``S`` at ``t + H``.

    Rows with a missing input are dropped, and (when ``horizons`` are given) rows with no target
    at all. Without ``horizons`` this is the input table ``predict`` expects: every ``t`` with a
    full history, the latest included. The index is ``frame``'s (or the ``time`` values).
    """
    return _windows(
        frame, series=series, lags=lags, horizons=horizons, exogenous=exogenous, time=time
    )[0]


def forecast_inputs(run: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """The input table ``run.predict`` expects when ``run`` was trained with ``horizons``: the
    windows of the raw series ``frame``, one row per time with a full history (latest included)."""
    spec = run.config.signals.horizons if run.config.signals is not None else None
    if spec is None:
        raise ConfigError("this run was not trained with signals.horizons; predict its table as is")
    return windows(
        frame, series=spec.series, lags=spec.lags, exogenous=spec.exogenous, time=spec.time
    )


def horizon_splits(
    frame: pd.DataFrame,
    spec: HorizonsSignal,
    *,
    validation_fraction: float,
    test_fraction: float,
) -> Splits:
    """The windows of ``frame`` split by time: the last ``test_fraction`` of the series is test,
    the ``validation_fraction`` before it validation. Each cut drops the rows whose targets reach
    the inputs of the next split (``max(horizons) + lags - 1`` time steps), never shuffles."""
    table, positions = _windows(
        frame,
        series=spec.series,
        lags=spec.lags,
        horizons=spec.horizons,
        exogenous=spec.exogenous,
        time=spec.time,
    )
    n = len(frame)
    test_start = n - int(round(test_fraction * n))
    validation_start = test_start - int(round(validation_fraction * n))
    index = time_split(
        positions,
        validation_start=validation_start,
        test_start=test_start,
        reach=max(spec.horizons),
        lookback=spec.lags - 1,
    )
    if not index["train"].size:
        raise DataError(
            f"signals.horizons: no training window is left before the validation cut ({n} time "
            f"steps, lags {spec.lags}, horizons up to {max(spec.horizons)}); use a longer series "
            "or smaller fractions"
        )
    return Splits(*(table.iloc[index[k]] for k in ("train", "validation", "test")))


def horizon_tasks(spec: HorizonsSignal) -> list[Task]:
    """``S_hH`` regression tasks: main for the ``target`` series (all series if none), else
    auxiliary."""
    main = spec.target or spec.series
    return [
        Task(
            name=f"{c}_h{h}",
            kind="regression",
            role="main" if c in main else "auxiliary",
            weight=1.0 if c in main else spec.auxiliary_weight,
        )
        for c in spec.series
        for h in spec.horizons
    ]


# ---- a config's signals section -------------------------------------------------------------
def expand(config: Config, splits: Splits, tasks: Sequence[Task]) -> Expanded:
    """Apply ``config.signals`` to ``splits`` (already windowed by ``horizon_splits`` when the
    config has ``horizons``) with ``tasks`` the config's own tasks. Returns a config with every
    task explicit and no ``signals``, the new tables and the fitted state (JSON)."""
    spec = config.signals
    if spec is None:
        return Expanded(config, splits, {})
    tasks = list(tasks)
    state: dict[str, Any] = {}
    targets = {c for t in tasks for c in t.columns}
    if spec.horizons is not None:
        tasks += horizon_tasks(spec.horizons)
        state["horizons"] = {
            **spec.horizons.model_dump(mode="json"),
            "rows": {
                k: len(f) for k, f in zip(("train", "validation", "test"), splits, strict=True)
            },
        }
    for i, entry in enumerate(spec.auxiliary_from):
        if entry.column in targets:
            raise DataError(
                f"signals.auxiliary_from[{i}]: column {entry.column!r} is already a task target"
            )
    for i, entry in enumerate(spec.promote):
        if entry.column in targets:
            raise DataError(
                f"signals.promote[{i}]: column {entry.column!r} is a task target, not a feature"
            )
    for i, path in enumerate(spec.teachers):
        prefix = "teacher" if i == 0 else f"teacher{i + 1}"
        signal = teacher(splits, path, prefix=prefix, weight=spec.teacher_weight)
        splits, tasks = signal.splits, tasks + signal.tasks
        state.setdefault("teacher", []).extend(signal.state)
    builders: list[tuple[str, Any, Callable[..., Signal]]] = [
        ("auxiliary_from", spec.auxiliary_from, auxiliary_from),
        ("promote", spec.promote, promote),
        ("represent", spec.represent, represent),
        ("focus", spec.focus, focus),
    ]
    for key, entries, build in builders:
        if entries:
            signal = build(splits, entries, where=f"signals.{key}")
            splits, tasks = signal.splits, tasks + signal.tasks
            state[key] = signal.state
    tasks = check_tasks(tasks)
    return Expanded(config.model_copy(update={"tasks": tasks, "signals": None}), splits, state)


__all__ = [
    "Expanded",
    "Signal",
    "auxiliary_from",
    "bin_edges",
    "column_task",
    "empirical_cdf",
    "expand",
    "focus",
    "forecast_inputs",
    "horizon_splits",
    "horizon_tasks",
    "infer_kind",
    "promote",
    "represent",
    "teacher",
    "windows",
]
