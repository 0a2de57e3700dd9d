"""Real data sets that ship inside installed packages (nothing is downloaded at run time).

Each loader registers under the name used in configs (``data: {dataset: NAME}``) and returns the
table, its default tasks and a fixed split.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import split_indices
from ..errors import DataError
from ..tasks import Task


@dataclass
class Dataset:
    """A loaded data set: one table, its tasks and fixed row indices per split."""

    name: str
    frame: pd.DataFrame
    tasks: list[Task]
    splits: dict[str, np.ndarray]
    categorical: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    loader: Callable[[], Dataset]
    summary: str
    source: str
    licence: str
    extra: str | None = None  # the pip extra that provides the package


DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo) -> None:
    DATASETS[info.name] = info


_LOADED: dict[str, Dataset] = {}
_KEEP = 4  # data sets kept in memory: a fit asks for the tasks and the split separately


def load_dataset(name: str) -> Dataset:
    """Load a registered data set by name (a fresh copy; loaded once per process)."""
    if name not in DATASETS:
        raise DataError(f"dataset {name!r} is not known ({', '.join(DATASETS)})")
    if name not in _LOADED:
        if len(_LOADED) >= _KEEP:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[name] = DATASETS[name].loader()
    ds = _LOADED[name]
    return Dataset(
        name=ds.name,
        frame=ds.frame.copy(),
        tasks=[t.model_copy() for t in ds.tasks],
        splits={k: v.copy() for k, v in ds.splits.items()},
        categorical=list(ds.categorical),
    )


def package_file(package: str, relative: str, *, extra: str | None = None) -> Path:
    """A data file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        hint = f"pip install 'polytask[{extra}]'" if extra else f"pip install {package}"
        raise DataError(f"this data set needs the package {package!r}: {hint}")
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise DataError(f"package {package!r} does not ship {relative!r} (looked at {path})")
    return path


YEAST_SPLIT_SEED = 20260101


def _load_yeast() -> Dataset:
    path = package_file("river", "datasets/yeast.csv.gz")
    frame = pd.read_csv(path)
    labels = [c for c in frame.columns if c.startswith("Class")]
    tasks = [Task(name=c, kind="binary") for c in labels]
    splits = split_indices(len(frame), seed=YEAST_SPLIT_SEED, validation=0.15, test=0.25)
    return Dataset("yeast", frame, tasks, splits)


register_dataset(
    DatasetInfo(
        name="yeast",
        loader=_load_yeast,
        summary="2,417 genes, 103 expression/phylogenetic features, 14 functional classes "
        "(14 binary tasks)",
        source="Elisseeff & Weston (2001), via the river package's datasets/yeast.csv.gz",
        licence="river is BSD-3-Clause; the Yeast data is distributed with it for research use",
    )
)

__all__ = ["DATASETS", "Dataset", "DatasetInfo", "load_dataset", "package_file", "register_dataset"]

# Loaders in their own modules register themselves on import (after the names above exist).
from . import macro, multidigits, qm9, school, star  # noqa: E402, F401
