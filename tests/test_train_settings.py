"""Train settings do what they say: gradient clipping, weight decay, learning-rate schedules and
bfloat16 autocast, each checked against a step computed by hand on a tiny model."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch
from synthetic import FEATURES, make_frame

import polytask as pt
from polytask.data import Preprocessor, TaskData
from polytask.losses import TaskLosses

TASKS = [
    pt.Task(name="price", kind="regression", weight=2.0),
    pt.Task(name="sold", kind="binary"),
    pt.Task(name="visits", kind="count"),
]


@pytest.fixture(scope="module")
def setup() -> tuple[pt.MultiTaskModel, TaskData, TaskData]:
    frame = make_frame(96, seed=0, missing=0.2)[[*FEATURES, "price", "sold", "visits"]]
    preprocessor = Preprocessor.fit(frame.iloc[:64], TASKS)
    train = TaskData.from_frame(frame.iloc[:64].reset_index(drop=True), preprocessor)
    validation = TaskData.from_frame(frame.iloc[64:].reset_index(drop=True), preprocessor)
    torch.manual_seed(0)
    model = pt.build_model(
        pt.ModelConfig(shared=[16]),
        n_numeric=preprocessor.n_numeric,
        cardinalities=preprocessor.cardinalities,
        out_dims=preprocessor.output_dims(),
    )
    return model, train, validation


def _train(setup, validation: bool = False, **options: Any) -> tuple[pt.Trainer, pt.History]:
    model, train, val = setup
    defaults: dict[str, Any] = {"epochs": 1, "batch_size": len(train), "device": "cpu"}
    config = pt.TrainConfig(**{**defaults, "patience": None, **options})
    trainer = pt.Trainer(copy.deepcopy(model), TASKS, config)
    history = trainer.fit(train, val if validation else None)
    return trainer, history


def _gradient(setup) -> list[torch.Tensor]:
    """∂(Σ_t α_t L_t)/∂θ on the whole training set at the initial weights."""
    model, train, _ = setup
    model = copy.deepcopy(model)
    losses = TaskLosses(TASKS, model.task_names, model.out_dims)
    packed = model(train.x_num, train.x_cat, packed=True)
    values = losses(packed, train.targets, train.masks)
    sum(t.weight * values[t.name] for t in TASKS).backward()
    return [p.grad.clone() for p in model.parameters()]


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().flatten() for t in tensors])


@pytest.mark.parametrize("clip", [1e-3, 0.05, 1e6])
def test_grad_clip_caps_the_gradient_norm_of_a_step(setup, clip: float) -> None:
    """One plain SGD step: θ₁ = θ₀ − lr · g · min(1, clip / ‖g‖)."""
    theta0 = _flat(setup[0].parameters())
    g = _flat(_gradient(setup))
    trainer, _ = _train(setup, optimizer="sgd", momentum=0.0, lr=0.5, grad_clip=clip)
    step = theta0 - _flat(trainer.model.parameters())
    assert float(g.norm()) > 0.05  # so that the two small limits do clip
    expected = 0.5 * g * min(1.0, clip / float(g.norm()))
    torch.testing.assert_close(step, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_weight_decay_shrinks_the_parameters_as_its_optimizer_defines(setup, optimizer) -> None:
    """One step from θ₀ with gradient g, learning rate η, decay λ:
    SGD θ₀ − η(g + λθ₀); Adam (L2 in the gradient, first step) θ₀ − η g'/(|g'| + ε) with
    g' = g + λθ₀; AdamW (decoupled) θ₀(1 − ηλ) − η g/(|g| + ε)."""
    lr, decay = 0.01, 0.5
    theta0 = _flat(setup[0].parameters())
    g = _flat(_gradient(setup))
    extra = {"momentum": 0.0} if optimizer == "sgd" else {}
    trainer, _ = _train(setup, optimizer=optimizer, lr=lr, weight_decay=decay, **extra)
    theta1 = _flat(trainer.model.parameters())
    if optimizer == "sgd":
        expected = theta0 - lr * (g + decay * theta0)
    elif optimizer == "adam":
        g2 = g + decay * theta0
        expected = theta0 - lr * g2 / (g2.abs() + 1e-8)
    else:
        expected = theta0 * (1 - lr * decay) - lr * g / (g.abs() + 1e-8)
    # a coordinate whose gradient is ~0 takes Adam's sign-like step from rounding: leave it out
    steady = (g.abs() > 1e-5) | (optimizer == "sgd")
    torch.testing.assert_close(theta1[steady], expected[steady], rtol=1e-4, atol=1e-6)


def _lrs(history: pt.History) -> list[float]:
    return [r["lr"] for r in history.records]


def test_cosine_schedule_anneals_the_learning_rate_over_the_epochs(setup) -> None:
    _, history = _train(setup, epochs=6, lr=0.1, scheduler="cosine", batch_size=32)
    expected = [0.05 * (1 + math.cos(math.pi * e / 6)) for e in range(6)]  # lr used in epoch e+1
    np.testing.assert_allclose(_lrs(history), expected, rtol=1e-9, atol=1e-12)


def test_step_schedule_divides_the_learning_rate_by_ten_every_third_of_the_run(setup) -> None:
    _, history = _train(setup, epochs=7, lr=0.1, scheduler="step", batch_size=32)
    expected = [0.1 * 0.1 ** (e // 2) for e in range(7)]  # step size max(1, 7 // 3) = 2
    np.testing.assert_allclose(_lrs(history), expected, rtol=1e-9)


def test_plateau_schedule_halves_the_learning_rate_when_validation_stalls(setup) -> None:
    """With SGD steps too small to move the validation objective by its relative threshold
    (1e-4), every epoch after the first is a bad one: after patience + 1 = 6 of them
    (patience None → 10 // 2 = 5) the rate halves, and again 6 bad epochs later."""
    _, history = _train(
        setup,
        validation=True,
        epochs=15,
        optimizer="sgd",
        momentum=0.0,
        lr=1e-6,
        scheduler="plateau",
        batch_size=32,
    )
    expected = [1e-6] * 7 + [5e-7] * 6 + [2.5e-7] * 2
    np.testing.assert_allclose(_lrs(history), expected, rtol=1e-9)
    assert history.stopped_early is False


@pytest.mark.parametrize("amp", [False, True])
def test_amp_runs_the_forward_in_bfloat16(setup, amp: bool) -> None:
    """The trunk's matrix products run in bfloat16 under amp (training and validation), in
    float32 without; the losses and parameters stay float32 either way."""
    model, train, val = setup
    model = copy.deepcopy(model)
    seen: list[torch.dtype] = []
    linear = next(m for m in model.trunk.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    config = pt.TrainConfig(epochs=2, batch_size=32, device="cpu", amp=amp, patience=None)
    trainer = pt.Trainer(model, TASKS, config)
    history = trainer.fit(train, val)
    dtype = torch.bfloat16 if amp else torch.float32
    assert len(seen) == 2 * (2 + 1) and set(seen) == {dtype}  # 2 batches + validation, 2 epochs
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    losses = history.to_frame().filter(like="train_loss/").to_numpy()
    assert np.isfinite(losses).all()
