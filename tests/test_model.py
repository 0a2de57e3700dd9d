"""The multi-task network: stacked heads are independent per-task MLPs; custom trunks persist."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from synthetic import FEATURES, make_config
from torch import nn

import polytask as pt
from polytask.models import TaskHeads

OUT_DIMS = {"a": 1, "b": 3, "c": 2, "d": 1}


@pytest.mark.parametrize("hidden", [[], [5], [6, 4]])
@pytest.mark.parametrize("seed", [0, 1])
def test_stacked_heads_compute_one_mlp_per_task(hidden: list[int], seed: int) -> None:
    torch.manual_seed(seed)
    heads = TaskHeads(7, hidden, OUT_DIMS, activation_name="tanh")
    h = torch.randn(11, 7)
    outputs = heads.unpack(heads(h))
    for name, width in OUT_DIMS.items():
        params = heads.task_parameters(name)
        x = h
        for i in range(0, len(params), 2):
            x = x @ params[i] + params[i + 1]
            if i < len(params) - 2:
                x = torch.tanh(x)
        torch.testing.assert_close(outputs[name], x[:, :width])
        assert outputs[name].shape == (11, width)


def test_per_task_input_matches_shared_input() -> None:
    torch.manual_seed(2)
    heads = TaskHeads(5, [4], OUT_DIMS)
    h = torch.randn(9, 5)
    shared = heads(h)
    per_task = heads(h.unsqueeze(1).expand(9, len(OUT_DIMS), 5))
    torch.testing.assert_close(shared, per_task)


def test_a_task_loss_reaches_only_its_own_head_and_the_shared_trunk() -> None:
    torch.manual_seed(3)
    spec = pt.ModelConfig(shared=[8], head=[4])
    model = pt.build_model(spec, n_numeric=3, cardinalities=[4], out_dims=OUT_DIMS)
    x_num, x_cat = torch.randn(6, 3), torch.randint(0, 4, (6, 1))
    model(x_num, x_cat)["b"].sum().backward()
    groups = model.parameter_groups()
    for name in model.task_names:
        touched = any(bool(grad_of(v).abs().sum() > 0) for v in groups.tasks[name])
        assert touched == (name == "b"), name
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in groups.shared)


def grad_of(view: torch.Tensor) -> torch.Tensor:
    """The gradient of a parameter, or of the slice of a stacked parameter that ``view`` is
    (``.grad`` may be laid out otherwise than the parameter)."""
    base = view if view._base is None else view._base
    mask = torch.zeros_like(base, dtype=torch.bool)
    offset = view.storage_offset() - base.storage_offset()
    mask.as_strided(view.shape, view.stride(), offset).fill_(True)
    return base.grad[mask]


def test_forward_and_packed_forward_agree() -> None:
    torch.manual_seed(4)
    model = pt.build_model(
        pt.ModelConfig(shared=[8]), n_numeric=3, cardinalities=[], out_dims=OUT_DIMS
    )
    x = torch.randn(5, 3)
    packed = model(x, packed=True)
    assert packed.shape == (5, len(OUT_DIMS), max(OUT_DIMS.values()))
    for t, (name, out) in enumerate(model(x).items()):
        assert torch.equal(out, packed[:, t, : OUT_DIMS[name]])
    with pytest.raises(KeyError, match="no task named 'z'"):
        model.task_parameters("z")


class Residual(nn.Module):
    """A user's own trunk (no ``out_features`` attribute: the width is probed)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(7, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.inner(x))


def test_a_custom_trunk_trains_saves_and_loads(tmp_path: Path, frame) -> None:
    tasks = [pt.Task(name="price", kind="regression"), pt.Task(name="sold", kind="binary")]
    config = make_config(tmp_path / "unused.csv", tasks, epochs=2, model={"embedding_dim": 3})
    frame = frame[FEATURES + ["price", "sold"]]  # 4 numeric + a 3-wide embedding: width 7
    splits = pt.Splits(frame, frame.iloc[:0], frame.iloc[:0])
    run = pt.fit(config, splits=splits, trunk=Residual(), out=tmp_path / "run")
    assert isinstance(run.model.trunk, Residual)
    with pytest.raises(pt.RunError, match="trained with a custom trunk: pass the same module"):
        pt.load(tmp_path / "run")
    loaded = pt.load(tmp_path / "run", trunk=Residual())
    pd.testing.assert_frame_equal(loaded.predict(frame), run.predict(frame), check_exact=True)


def test_a_trunk_that_does_not_fit_the_input_is_a_config_error() -> None:
    with pytest.raises(pt.ConfigError, match="custom trunk does not accept input of width 3"):
        pt.build_model(
            pt.ModelConfig(),
            n_numeric=3,
            cardinalities=[],
            out_dims=OUT_DIMS,
            trunk=nn.Sequential(nn.Linear(5, 2)),
        )


@pytest.mark.parametrize("hidden", [[], [4]])
@pytest.mark.parametrize("out_dims", [{"a": 1, "b": 1}, {"a": 3, "b": 2}])
def test_head_gradients_have_the_parameters_strides(out_dims, hidden) -> None:
    """DistributedDataParallel copies .grad into buckets laid out like the parameters."""
    from polytask.models import TaskHeads

    heads = TaskHeads(8, hidden, out_dims)
    heads(torch.randn(5, 8)).sum().backward()
    for p in heads.parameters():
        assert p.grad.stride() == p.stride()
