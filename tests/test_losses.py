"""Masked per-task losses: a missing label contributes nothing; labelled rows get the usual loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import poisson

import polytask as pt
from polytask.losses import ELEMENT_LOSSES, TaskLosses, masked_mean

TASKS = [
    pt.Task(name="price", kind="regression"),
    pt.Task(name="sold", kind="binary"),
    pt.Task(name="species", kind="multiclass"),
    pt.Task(name="tags", kind="multilabel", target=["a", "b", "c"]),
    pt.Task(name="visits", kind="count"),
    pt.Task(name="rent", kind="regression", loss="huber"),
    pt.Task(name="area", kind="regression", loss="mae"),
]
OUT_DIMS = {"price": 1, "sold": 1, "species": 4, "tags": 3, "visits": 1, "rent": 1, "area": 1}
ORDER = [t.name for t in TASKS]
BY_KIND = {"regression": "price", "binary": "sold", "multiclass": "species"}
BY_KIND.update({"multilabel": "tags", "count": "visits"})


def _batch(n: int, seed: int, *, labelled: float = 0.6):
    """Packed outputs ``(n, T, 4)`` with grad, valid targets and random masks for every task."""
    g = torch.Generator().manual_seed(seed)
    packed = torch.randn(n, len(TASKS), max(OUT_DIMS.values()), generator=g).requires_grad_()
    targets = {
        "price": torch.randn(n, generator=g),
        "sold": torch.randint(0, 2, (n,), generator=g).float(),
        "species": torch.randint(0, 4, (n,), generator=g),
        "tags": torch.randint(0, 2, (n, 3), generator=g).float(),
        "visits": torch.poisson(torch.full((n,), 2.0), generator=g),
        "rent": 3 * torch.randn(n, generator=g),
        "area": torch.randn(n, generator=g),
    }
    masks = {
        name: torch.rand(target.shape, generator=g) < labelled for name, target in targets.items()
    }
    return packed, targets, masks


def _scrambled(targets, masks, seed: int):
    """Targets with every masked entry replaced by junk: NaN, huge values, class codes out of
    range."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, target in targets.items():
        if target.dtype == torch.long:
            junk = torch.randint(-1, OUT_DIMS[name] + 2, target.shape, generator=g)
        else:
            junk = torch.randn(target.shape, generator=g) * 1e6
            junk[torch.rand(target.shape, generator=g) < 0.5] = torch.nan
        out[name] = torch.where(masks[name], target, junk)
    return out


def _grad(losses_fn, packed, targets, masks, name):
    packed.grad = None
    loss = losses_fn(packed, targets, masks)[name]
    loss.backward()
    return loss.detach().clone(), packed.grad.clone()


@pytest.mark.parametrize("kind", list(BY_KIND))
@pytest.mark.parametrize("n, seed", [(7, 0), (32, 1), (101, 2)])
def test_masked_label_has_exactly_zero_gradient(kind: str, n: int, seed: int) -> None:
    name = BY_KIND[kind]
    t = ORDER.index(name)
    losses = TaskLosses(TASKS, ORDER, OUT_DIMS)
    packed, targets, masks = _batch(n, seed)
    loss, grad = _grad(losses, packed, targets, masks, name)
    width = OUT_DIMS[name]
    own = grad[:, t, :width]
    if kind == "multilabel":
        masked = ~masks[name]
        assert torch.all(own[masked] == 0)
        assert torch.all(own[masks[name]] != 0)
    else:
        assert torch.all(own[~masks[name]] == 0)
        assert torch.all(own[masks[name]].abs().sum(-1) > 0)
    # Nothing flows into other tasks' slots or into the padding beyond the task's width.
    others = grad.clone()
    others[:, t, :width] = 0
    assert torch.all(others == 0)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("kind", list(BY_KIND))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masked_target_values_change_neither_loss_nor_gradient(kind: str, seed: int) -> None:
    name = BY_KIND[kind]
    losses = TaskLosses(TASKS, ORDER, OUT_DIMS)
    packed, targets, masks = _batch(50, seed)
    loss, grad = _grad(losses, packed, targets, masks, name)
    junk_loss, junk_grad = _grad(
        losses, packed, _scrambled(targets, masks, seed + 100), masks, name
    )
    assert torch.equal(loss, junk_loss)
    assert torch.equal(grad, junk_grad)


def _reference(name: str, out, y, m):
    """The task's usual loss, computed on the labelled rows (or cells) only."""
    kind = next(t.kind for t in TASKS if t.name == name)
    if kind == "multiclass":
        return F.cross_entropy(out[m], y[m])
    if kind == "multilabel":
        return F.binary_cross_entropy_with_logits(out[m], y[m])
    out, y, m = out[:, 0], y, m
    if kind == "binary":
        return F.binary_cross_entropy_with_logits(out[m], y[m])
    if kind == "count":
        return -torch.distributions.Poisson(out[m].exp()).log_prob(y[m]).mean()
    reference = {"price": F.mse_loss, "rent": F.huber_loss, "area": F.l1_loss}[name]
    return reference(out[m], y[m])


@pytest.mark.parametrize("n, seed", [(5, 0), (64, 1), (300, 2)])
def test_each_loss_is_the_mean_over_labelled_rows(n: int, seed: int) -> None:
    losses = TaskLosses(TASKS, ORDER, OUT_DIMS)
    packed, targets, masks = _batch(n, seed)
    masks = {k: m.clone() for k, m in masks.items()}
    for m in masks.values():
        m.view(-1)[0] = True  # at least one labelled entry per task
    result = losses(packed, targets, masks)
    assert list(result) == ORDER
    for t, name in enumerate(ORDER):
        out = packed[:, t, : OUT_DIMS[name]].detach()
        expected = _reference(name, out, targets[name], masks[name])
        torch.testing.assert_close(result[name].detach(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [1, 16])
def test_a_task_without_labels_in_the_batch_has_loss_zero_and_no_nan(n: int) -> None:
    losses = TaskLosses(TASKS, ORDER, OUT_DIMS)
    packed, targets, masks = _batch(n, seed=3)
    masks = {k: torch.zeros_like(m) for k, m in masks.items()}
    result = losses(packed, targets, masks)
    for name, loss in result.items():
        assert loss.item() == 0.0, name
    torch.stack(list(result.values())).sum().backward()
    assert torch.all(packed.grad == 0)


def test_an_unlabelled_task_leaves_the_other_tasks_losses_unchanged() -> None:
    losses = TaskLosses(TASKS, ORDER, OUT_DIMS)
    packed, targets, masks = _batch(40, seed=4)
    before = losses(packed, targets, masks)
    masks["species"] = torch.zeros_like(masks["species"])
    after = losses(packed, targets, masks)
    assert after["species"].item() == 0.0
    for name in ORDER:
        if name != "species":
            assert torch.equal(before[name], after[name]), name


@pytest.mark.parametrize("seed", [0, 1])
def test_masked_mean_is_the_mean_of_the_kept_values(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(20, 3, generator=g)
    mask = torch.rand(20, 3, generator=g) < 0.5
    mean = masked_mean(values, mask)
    for j in range(3):
        kept = values[mask[:, j], j]
        expected = kept.mean() if len(kept) else torch.tensor(0.0)
        torch.testing.assert_close(mean[j], expected)


@pytest.mark.parametrize("mean", [0.3, 2.0, 20.0, 400.0, 1e5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_count_loss_is_the_poisson_negative_log_likelihood(mean: float, dtype) -> None:
    """−log pmf (scipy), so ≥ 0: the weightings that take logs of losses (geometric, FAMO) or
    learn scales against them (uncertainty, IMTL-L) need a loss bounded below by 0."""
    g = torch.Generator().manual_seed(int(mean))
    y = torch.poisson(torch.full((200,), mean, dtype=torch.float64), generator=g)
    # log-rates around the truth, and exactly at each count (the loss's smallest values)
    out = torch.cat(
        [math.log(mean) + torch.randn(200, generator=g, dtype=torch.float64), y.clamp(1e-3).log()]
    )
    out, y = out.to(dtype), torch.cat([y, y]).to(dtype)
    loss = ELEMENT_LOSSES["poisson"](out, y)
    expected = -poisson.logpmf(y.double().numpy(), np.exp(out.double().numpy()))
    assert loss.dtype == dtype and bool((loss >= 0).all())
    # within the rounding of the inputs' logs and of log y! in this dtype
    o, c = out.double().numpy(), y.double().numpy()
    scale = np.abs(np.exp(o) - c) * np.abs(o) + c * np.log1p(c) + 1
    error = np.abs(loss.double().numpy() - expected) / scale
    assert error.max() <= 4 * torch.finfo(dtype).eps, error.max()


@pytest.mark.parametrize("mean", [2.0, 50.0])
def test_the_count_loss_gradient_is_the_rate_minus_the_count(mean: float) -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.poisson(torch.full((64,), mean), generator=g)
    out = (torch.randn(64, generator=g) + math.log(mean)).requires_grad_()
    ELEMENT_LOSSES["poisson"](out, y).sum().backward()
    torch.testing.assert_close(out.grad, out.detach().exp() - y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(ELEMENT_LOSSES))
@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0])
def test_no_element_loss_is_negative(name: str, scale: float) -> None:
    g = torch.Generator().manual_seed(int(scale * 10))
    out = scale * torch.randn(500, 4, generator=g)
    if name == "ce":
        y = torch.randint(0, 4, (500,), generator=g)
    elif name == "bce":
        y, out = torch.randint(0, 2, (500,), generator=g).float(), out[:, 0]
    elif name == "poisson":
        y, out = torch.poisson(out[:, 0].exp().clamp_max(1e6), generator=g), out[:, 1]
    else:
        y, out = scale * torch.randn(500, generator=g), out[:, 0]
    assert bool((ELEMENT_LOSSES[name](out, y) >= 0).all())
