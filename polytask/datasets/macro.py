"""Macro: multi-horizon forecasts of US macroeconomic series (``macro``).

From statsmodels' bundled ``macrodata`` (quarterly, 1959Q1-2009Q3). Each row is a quarter t;
inputs are the quarter's and the three previous quarters' values of eleven series (log growth in
percent for the real aggregates, money and prices; levels for rates); tasks are the growth of
real GDP, consumption and investment (100 * log ratio) and the change in unemployment (points)
from t to t+1, t+2 and t+4: 12 regression tasks. The split is by time, never shuffled: validation
starts at 1990Q1 and test at 2000Q1; the four quarters before each cut are dropped (their t+4
targets reach past it), so no training target overlaps the validation period, nor a validation
target the test period: train 1960Q1-1988Q4, validation 1990Q1-1998Q4, test 2000Q1-2008Q3.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data import time_split
from ..tasks import Task
from . import Dataset, DatasetInfo, package_file, register_dataset

EXTRA = "benchmarks"
GROWTH = ["realgdp", "realcons", "realinv", "realgovt", "realdpi", "m1", "cpi"]
LEVELS = ["tbilrate", "unemp", "infl", "realint"]
TARGETS = ["realgdp", "realcons", "realinv", "unemp"]
HORIZONS = (1, 2, 4)
LAGS = 4
VALIDATION_START = pd.Period("1990Q1", freq="Q")
TEST_START = pd.Period("2000Q1", freq="Q")


def _change(series: pd.Series, name: str, periods: int) -> pd.Series:
    """Growth in percent (100 * log ratio) for positive aggregates, else a plain difference."""
    if name in LEVELS:
        return series - series.shift(periods)
    logs = np.log(series)
    return 100 * (logs - logs.shift(periods))


def _raw() -> pd.DataFrame:
    raw = pd.read_csv(package_file("statsmodels", "datasets/macrodata/macrodata.csv", extra=EXTRA))
    quarters = pd.PeriodIndex.from_fields(
        year=raw["year"].astype(int), quarter=raw["quarter"].astype(int), freq="Q"
    )
    return raw.set_index(quarters).rename_axis("quarter")


def quarterly() -> pd.DataFrame:
    """One row per quarter (1959Q1-2009Q3, time-ordered): the quarter-on-quarter change of each
    series (log growth in percent for real aggregates, money and prices; levels for rates).
    The first quarter has no change and is NaN for the growth series."""
    raw = _raw()
    current = {name: _change(raw[name], name, 1) for name in GROWTH}
    current |= {name: raw[name] for name in LEVELS}
    return pd.DataFrame(current)


def _load() -> Dataset:
    raw = _raw()
    current = dict(quarterly().items())
    columns = {
        f"{name}_lag{lag}": values.shift(lag)
        for name, values in current.items()
        for lag in range(LAGS)
    }
    for name in TARGETS:
        for h in HORIZONS:
            columns[f"{name}_h{h}"] = _change(raw[name], name, h).shift(-h)
    frame = pd.DataFrame(columns).dropna()
    # a row's targets reach max(HORIZONS) quarters ahead: end each split that far before the cut
    splits = time_split(
        frame.index, validation_start=VALIDATION_START, test_start=TEST_START, reach=max(HORIZONS)
    )
    tasks = [Task(name=f"{name}_h{h}", kind="regression") for name in TARGETS for h in HORIZONS]
    return Dataset("macro", frame, tasks, splits)


register_dataset(
    DatasetInfo(
        name="macro",
        loader=_load,
        summary="195 US quarters 1960-2008 (187 used), 44 lagged features (11 series x 4 lags), 12 "
        "regression tasks (growth of realgdp, realcons, realinv, change of unemp at t+1, t+2, "
        "t+4); time-ordered split at 1990Q1 and 2000Q1",
        source="statsmodels' datasets/macrodata/macrodata.csv (FRED St. Louis and BLS), "
        "pip install 'polytask[benchmarks]'",
        licence="macrodata: public domain (US government data); statsmodels: BSD-3-Clause",
        extra=EXTRA,
    )
)
