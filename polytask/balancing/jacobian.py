"""The Jacobian engine: per-task gradients of the shared part from one batched autograd call.

Given the stacked task losses ``(T,)`` and the shared representation h ``(N, d)``, one
vectorized backward (``is_grads_batched``, i.e. ``torch.vmap`` over the T unit cotangents) gives
every task's gradient with respect to h and every task's gradient of the head parameters; at the
parameter level a second vectorized backward pulls the T rows of ∂L/∂h back through the trunk.
No method loops over tasks with ``.backward()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class TaskJacobian:
    """Rows of the present tasks only; ``present[t]`` says which tasks those are."""

    matrix: Tensor  # (T_present, n) in float32
    present: list[bool]
    head_grads: list[Tensor | None]  # Σ_t ∂L_t/∂θ for each head parameter


def batched_grad(
    outputs: Tensor, inputs: Sequence[Tensor], cotangents: Tensor, *, retain_graph: bool
) -> tuple[Tensor | None, ...]:
    """``cotangents[k]ᵀ ∂outputs/∂inputs`` for every k, in one vectorized backward."""
    return torch.autograd.grad(
        outputs,
        list(inputs),
        grad_outputs=cotangents,
        is_grads_batched=True,
        retain_graph=retain_graph,
        allow_unused=True,
    )


def task_jacobian(
    losses: Tensor,
    features: Tensor,
    *,
    head_params: Sequence[nn.Parameter],
    shared_params: Sequence[nn.Parameter] | None,
    outputs: Tensor | None = None,
    heads: nn.Module | None = None,
    slots: Sequence[int] | None = None,
) -> TaskJacobian:
    """The Jacobian of ``losses`` w.r.t. h (``shared_params`` None) or the shared parameters.

    With the packed head ``outputs`` (N, T_heads, o) of ``heads`` and the slot of each loss in
    them (``slots``), ∂L/∂h is taken the cheap way: loss i depends on ``outputs[:, slots[i]]``
    only, so one ordinary backward gives every ∂L_i/∂outputs, and only the heads are
    differentiated per task (one einsum for linear heads, else one batched backward through
    the heads alone). Without them the batched backward runs through the losses too.

    A task whose gradient on h is exactly zero (no labelled row in the batch) is left out.
    The graph through h is kept, so the caller may still backpropagate into the trunk.
    """
    if outputs is not None and heads is not None and slots is not None:
        jac_h, head_grads = _jacobian_from_outputs(
            losses, features, outputs, heads, slots, head_params
        )
    else:
        eye = torch.eye(len(losses), dtype=losses.dtype, device=losses.device)
        grads = batched_grad(losses, [features, *head_params], eye, retain_graph=True)
        jac_h = grads[0]
        if jac_h is None:
            jac_h = torch.zeros(len(losses), *features.shape, dtype=features.dtype)
        head_grads = [None if g is None else g.sum(0) for g in grads[1:]]
    present = (jac_h.flatten(1).abs().amax(1) > 0).tolist()
    jac_h = jac_h[torch.tensor(present, device=jac_h.device)]
    if shared_params is None or not len(jac_h):
        matrix = jac_h.flatten(1)
    else:
        params = list(shared_params)
        rows = batched_grad(features, params, jac_h, retain_graph=True)
        matrix = torch.cat(
            [
                (torch.zeros(len(jac_h), p.numel(), device=p.device) if r is None else r.flatten(1))
                for p, r in zip(params, rows, strict=True)
            ],
            dim=1,
        )
    return TaskJacobian(matrix.float(), present, head_grads)


def _jacobian_from_outputs(
    losses: Tensor,
    features: Tensor,
    outputs: Tensor,
    heads: nn.Module,
    slots: Sequence[int],
    head_params: Sequence[nn.Parameter],
) -> tuple[Tensor, list[Tensor | None]]:
    (g,) = torch.autograd.grad(losses.sum(), outputs, retain_graph=True)
    head_grads = list(
        torch.autograd.grad(outputs, list(head_params), g, retain_graph=True, allow_unused=True)
    )
    index = torch.tensor(list(slots), device=g.device)
    g = g.index_select(1, index)  # (N, T, o): column i is loss i's
    weights = list(heads.weights)
    if len(weights) == 1 and features.dim() == 2:  # linear heads: ∂L_i/∂h = g_i W_iᵀ
        jac_h = torch.einsum("nto,tdo->tnd", g, weights[0].index_select(0, index).to(g.dtype))
    else:
        eye = torch.eye(len(slots), dtype=g.dtype, device=g.device)
        cotangents = torch.zeros(len(slots), *outputs.shape, dtype=g.dtype, device=g.device)
        cotangents[:, :, index] = g.unsqueeze(0) * eye[:, None, :, None]
        (jac_h,) = batched_grad(outputs, [features], cotangents, retain_graph=True)
    return jac_h.to(features.dtype), head_grads


def add_grads(params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
    """Accumulate ``grads`` into ``.grad`` (like ``.backward()`` would)."""
    for p, g in zip(params, grads, strict=True):
        if g is None:
            continue
        g = g.to(p.dtype)
        p.grad = g.clone() if p.grad is None else p.grad + g


def add_flat_grad(params: Sequence[Tensor], flat: Tensor) -> None:
    """Accumulate one flat vector, split in the shapes of ``params``, into their ``.grad``."""
    sizes = [p.numel() for p in params]
    add_grads(params, [g.view_as(p) for p, g in zip(params, flat.split(sizes), strict=True)])
