"""Shared fixtures: small synthetic tables (see ``synthetic.py``), a run fitted once per session."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from synthetic import make_config, make_frame

import polytask as pt

torch.set_num_threads(1)


@pytest.fixture
def frame() -> pd.DataFrame:
    return make_frame()


@pytest.fixture
def csv_path(tmp_path: Path, frame: pd.DataFrame) -> Path:
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def saved_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[pt.Run, Path, pd.DataFrame]:
    """One run with every task kind (and an auxiliary task), fitted once and saved.

    Returns the run, its directory and a held-out frame from the same distribution. Tests must
    not modify any of them.
    """
    root = tmp_path_factory.mktemp("saved_run")
    frame = make_frame(n=240, seed=0, missing=0.1)
    frame.to_csv(root / "data.csv", index=False)
    config = make_config(root / "data.csv", epochs=4)
    run = pt.fit(config, out=root / "run")
    return run, root / "run", make_frame(n=60, seed=1)
