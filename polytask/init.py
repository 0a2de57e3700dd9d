"""A commented starter config from a table's columns, without asking anything.

Each target column gets a task kind guessed from its values, the other columns become the
inputs, and a column almost identical to a target (a likely leak of the label) goes to
``data.drop`` with a comment saying why. The text is checked by the config schema before it is
written, so ``polytask fit`` accepts what ``polytask init`` writes.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .data import LEAK_CORRELATION, read_table
from .errors import ConfigError, DataError, RunError

#: At most this many distinct whole-number or text values make a multiclass target.
MAX_CLASSES = 10
#: Labelled rows needed before a column is compared with a target for leaks.
_LEAK_MIN_ROWS = 10
#: Rows needed before a perfect one-to-one match with a few-valued target counts as a leak.
_RELABEL_MIN_ROWS = 30


@dataclass(frozen=True)
class KindGuess:
    """The task kind guessed for a column and the evidence, in words."""

    kind: str
    reason: str


@dataclass(frozen=True)
class Leak:
    """A column that almost repeats a target's values."""

    column: str
    target: str
    reason: str


def guess_kind(series: pd.Series) -> KindGuess:
    """The task kind of a target column from its labelled values: two distinct values →
    binary; a few (≤ ``MAX_CLASSES``) whole numbers or any text → multiclass; non-negative
    whole numbers with more values → count; other numbers → regression."""
    values = series.dropna()
    name = str(series.name)
    if values.empty:
        raise DataError(f"init: target column {name!r} has no values")
    distinct = values.nunique()
    if distinct < 2:
        raise DataError(
            f"init: target column {name!r} has a single value {values.iloc[0]!r}; a task needs "
            "at least two"
        )
    shown = ", ".join(str(v) for v in sorted(values.unique(), key=str)[:6])
    if distinct == 2:
        return KindGuess("binary", f"two distinct values ({shown})")
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if not numeric:
        more = "" if distinct <= 6 else ", ..."
        return KindGuess("multiclass", f"{distinct} distinct text values ({shown}{more})")
    array = values.to_numpy(dtype=float)
    whole = bool(np.all(array == np.round(array)))
    low, high = float(array.min()), float(array.max())
    if whole and distinct <= MAX_CLASSES:
        hint = "; if they are amounts, use kind: count" if low >= 0 else ""
        return KindGuess("multiclass", f"{distinct} distinct whole numbers ({shown}){hint}")
    if whole and low >= 0:
        return KindGuess(
            "count", f"non-negative whole numbers, {distinct} distinct ({low:g} to {high:g})"
        )
    return KindGuess("regression", f"numbers, {distinct} distinct ({low:.4g} to {high:.4g})")


def find_leaks(frame: pd.DataFrame, targets: Sequence[str]) -> list[Leak]:
    """Columns that almost repeat a target: the same values on ≥ 99.9 % of the rows labelled
    in both, a one-to-one relabelling of a target with few values, or a numeric column with
    ``|corr| ≥ LEAK_CORRELATION`` (the threshold ``fit`` warns at)."""
    leaks: list[Leak] = []
    for column in frame.columns:
        if column in targets:
            continue
        for target in targets:
            reason = _leak_reason(frame[column], frame[target])
            if reason:
                leaks.append(Leak(str(column), str(target), reason))
                break
    return leaks


def _leak_reason(column: pd.Series, target: pd.Series) -> str:
    both = column.notna() & target.notna()
    if int(both.sum()) < _LEAK_MIN_ROWS:
        return ""
    a, b = column[both], target[both]
    same = float((a.astype(str).to_numpy() == b.astype(str).to_numpy()).mean())
    if same >= LEAK_CORRELATION:
        return f"the same values as {target.name!r} on {same:.1%} of the rows"
    if len(b) >= _RELABEL_MIN_ROWS and b.nunique() <= MAX_CLASSES and a.nunique() == b.nunique():
        pairs = pd.DataFrame({"a": a.astype(str).to_numpy(), "b": b.astype(str).to_numpy()})
        if pairs.drop_duplicates().shape[0] == b.nunique():
            return f"a one-to-one relabelling of {target.name!r}"
    x = pd.to_numeric(a, errors="coerce")
    y = pd.to_numeric(b, errors="coerce")
    if _bins_of(a, y):
        return f"a binning of {target.name!r} (its values cut {target.name}'s range, no overlap)"
    if x.notna().all() and y.notna().all() and x.nunique() > 1 and y.nunique() > 1:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = float(np.corrcoef(x.to_numpy(float), y.to_numpy(float))[0, 1])
        if math.isfinite(r) and abs(r) >= LEAK_CORRELATION:
            return f"|r| = {abs(r):.4f} with {target.name!r}"
    return ""


def _bins_of(codes: pd.Series, target: pd.Series) -> bool:
    """``codes`` (a few values) split a numeric ``target`` with many values into ranges that do
    not overlap: a thresholded or binned copy of the target (e.g. ``high = y > 150``)."""
    k = codes.nunique()
    if len(target) < _RELABEL_MIN_ROWS or target.isna().any() or not 2 <= k <= MAX_CLASSES:
        return False
    if target.nunique() <= 2 * k:
        return False
    groups = target.groupby(codes.astype(str).to_numpy())
    ranges = sorted(groups.agg(["min", "max"]).values.tolist())
    return all(high < low for (_, high), (low, _) in zip(ranges, ranges[1:], strict=False))


def _identifier(series: pd.Series) -> bool:
    """A row id: text with a different value on every row, or whole numbers that count the
    rows (consecutive once sorted)."""
    values = series.dropna()
    if len(values) < _LEAK_MIN_ROWS or len(values) < len(series) or values.nunique() < len(values):
        return False
    if pd.api.types.is_bool_dtype(values):
        return False
    if not pd.api.types.is_numeric_dtype(values):
        return True
    if not pd.api.types.is_integer_dtype(values):
        return False
    ordered = np.sort(values.to_numpy())
    return bool(np.all(np.diff(ordered) == 1))


def _task_name(column: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", column).strip("_") or "task"


def _flow(value: object) -> str:
    """A YAML flow value (JSON is valid YAML and quotes every odd name)."""
    return json.dumps(value, ensure_ascii=False)


def starter_config(frame: pd.DataFrame, *, train: str, targets: Sequence[str] | None = None) -> str:
    """The commented YAML text of a starter config for ``frame`` read from ``train``.

    ``targets``: the task columns (default: the last column, said so in a comment).
    """
    columns = [str(c) for c in frame.columns]
    frame = frame.set_axis(columns, axis=1)
    if len(columns) < 2:
        raise DataError(
            f"init: the table has {len(columns)} column(s); a target and at least one input "
            "are needed"
        )
    chosen = list(dict.fromkeys(targets)) if targets else [columns[-1]]
    unknown = [t for t in chosen if t not in columns]
    if unknown:
        shown = ", ".join(columns[:20]) + (", ..." if len(columns) > 20 else "")
        raise DataError(f"init: --target {unknown[0]!r} is not a column (columns: {shown})")
    guesses = {t: guess_kind(frame[t]) for t in chosen}
    leaks = find_leaks(frame, chosen)
    leaked = {leak.column for leak in leaks}
    ids = [c for c in columns if c not in chosen and c not in leaked and _identifier(frame[c])]
    inputs = [c for c in columns if c not in chosen and c not in leaked and c not in ids]
    if not inputs:
        raise DataError(
            "init: no input column is left once the targets, likely leaks and identifiers are "
            "set aside"
        )
    categorical = [
        c
        for c in inputs
        if not (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))
    ]
    gappy = [c for c in inputs if frame[c].isna().any()]
    rows = len(frame)

    lines = [
        f"# polytask starter config, written by `polytask init` from {train}",
        f"# ({rows} rows, {len(columns)} columns). Everything below is a guess from the values:",
        "# check the task kinds, the inputs and data.drop, then run",
        "#   polytask fit THIS_FILE --out runs/first",
        "data:",
        f"  train: {_flow(train)}",
        "  # no validation/test files: seeded random splits of the training table",
        "  validation_fraction: 0.15",
        "  test_fraction: 0.2",
        "  split_seed: 0",
        "  # the inputs (every column that is no target, no likely leak and no identifier)",
        f"  features: {_flow(inputs)}",
        "  # text columns become categorical inputs (embedded); list integer codes here too",
        f"  categorical: {_flow(categorical)}",
    ]
    if leaks or ids:
        lines.append("  # left out of the inputs:")
        for leak in leaks:
            lines.append(
                f"  #   {leak.column}: likely leak of target {leak.target!r}: {leak.reason}"
            )
        for column in ids:
            lines.append(f"  #   {column}: a different value on every row (an identifier?)")
    lines.append(f"  drop: {_flow([leak.column for leak in leaks] + ids)}")
    if gappy:
        lines.append(f"  # inputs with missing values ({', '.join(gappy)}): filled with the")
        lines.append("  # training median plus a missing-indicator input")
    lines.append(f"  impute: {'true' if gappy else 'false'}")
    lines.append("tasks:")
    if not targets:
        lines.append(
            f"  # no --target given: the last column, {columns[-1]!r}, is the main task. Add "
            "more tasks"
        )
        lines.append(
            "  # here (or run `polytask init DATA --target A --target B`); a column named as a"
        )
        lines.append("  # task's target is no longer an input.")
    for target in chosen:
        guess = guesses[target]
        name = _task_name(target)
        labelled = int(frame[target].notna().sum())
        gaps = f"; {rows - labelled} rows unlabelled (masked)" if labelled < rows else ""
        lines.append(f"  # {target}: {guess.kind} — {guess.reason}{gaps}")
        entry = {"name": name, "kind": guess.kind}
        if name != target:
            entry["target"] = target
        lines.append("  - {" + ", ".join(f"{k}: {_flow(v)}" for k, v in entry.items()) + "}")
    width = 64 if rows < 5000 else 128
    batch = 32 if rows < 2000 else 64 if rows < 20000 else 128
    lines += [
        "model:",
        "  architecture: hard_sharing  # see `polytask architectures`",
        f"  shared: [{width}, {width}]  # widths of the shared hidden layers",
        "  head: []  # per-task hidden layers (none: a linear head on the shared layers)",
        "  dropout: 0.1",
        "train:",
        "  balancer: fixed  # see `polytask balancers`",
        "  optimizer: adam",
        "  lr: 0.001",
        "  weight_decay: 0.0001",
        "  epochs: 200",
        f"  batch_size: {batch}",
        "  patience: 20  # early stopping on the main tasks' validation loss",
        "  seed: 0",
        "  device: auto",
    ]
    return "\n".join(lines) + "\n"


def write_starter_config(
    data: str | Path, *, out: str | Path, targets: Sequence[str] | None = None
) -> Path:
    """Write the starter config of the table ``data`` to ``out`` (never over a file), checked by
    the config schema first."""
    import yaml

    from .config import parse_config

    data, out = Path(data), Path(out)
    if out.exists():
        raise RunError(f"init: {str(out)!r} already exists; give another --out or remove it first")
    if not data.is_file():
        raise DataError(f"init: data file {str(data)!r} does not exist")
    frame = read_table(data)
    folder = out.parent.resolve()
    try:
        train = os.path.relpath(data.resolve(), folder)
    except ValueError:  # another drive (Windows): keep the absolute path
        train = str(data.resolve())
    text = starter_config(frame, train=train, targets=targets)
    try:
        parse_config(yaml.safe_load(text), base_dir=folder)
    except ConfigError as exc:  # a bug here, not the user's: say what was generated
        raise ConfigError(f"init: the generated config is invalid: {exc}") from None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with out.open("x", encoding="utf-8") as handle:  # "x": never over a file
            handle.write(text)
    except FileExistsError:
        raise RunError(
            f"init: {str(out)!r} already exists; give another --out or remove it first"
        ) from None
    except OSError as exc:
        raise RunError(f"init: cannot write {str(out)!r}: {exc.strerror}") from None
    return out


__all__ = [
    "MAX_CLASSES",
    "KindGuess",
    "Leak",
    "find_leaks",
    "guess_kind",
    "starter_config",
    "write_starter_config",
]
