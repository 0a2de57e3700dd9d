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
) -> TaskJacobian:
    """The Jacobian of ``losses`` w.r.t. h (``shared_params`` None) or the shared parameters.

    A task whose gradient on h is exactly zero (no labelled row in the batch) is left out.
    The graph through h is kept, so the caller may still backpropagate into the trunk.
    """
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
