"""The Python entry points: a DataFrame in place of a file, a custom trunk factory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import polytask as pt


def _frame(n: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n, 3)), columns=["a", "b", "c"])
    frame["y"] = 2 * frame["a"] - frame["b"] + 0.1 * rng.normal(size=n)
    return frame


def _config(**train: object) -> pt.Config:
    return pt.Config(
        data=pt.DataConfig(),
        tasks=[pt.Task(name="y", kind="regression")],
        model=pt.ModelConfig(shared=[16]),
        train=pt.TrainConfig(epochs=30, batch_size=32, patience=None, **train),
    )


def test_a_dataframe_stands_in_for_the_training_file() -> None:
    frame = _frame()
    run = pt.fit(_config(), frame=frame)
    # The config's default fractions: 20% test, 15% validation of 240 rows.
    assert run.metrics["test"]["y"]["n"] == 48
    assert run.metrics["test"]["y"]["rmse"] < frame["y"].std()


def test_no_data_source_is_a_clear_error() -> None:
    with pytest.raises(pt.ConfigError, match=r"data: give data.train .* or data.dataset"):
        pt.fit(_config())


class _Trunk(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.layer = nn.Linear(width, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.layer(x))


def test_a_trunk_factory_gets_the_input_width_and_reloads(tmp_path: Path) -> None:
    frame = _frame()
    widths: list[int] = []

    def factory(width: int) -> nn.Module:
        widths.append(width)
        return _Trunk(width)

    run = pt.fit(_config(), frame=frame, trunk=factory, out=tmp_path)
    assert widths == [3]
    with pytest.raises(pt.RunError, match="custom trunk"):
        pt.load(tmp_path)
    loaded = pt.load(tmp_path, trunk=factory)
    pd.testing.assert_frame_equal(loaded.predict(frame), run.predict(frame))
