"""The Jacobian engine: per-task gradients of the non-task-specific part from one batched
autograd call.

Given the stacked task losses ``(T,)`` and the model's representation z ``(N, …)`` (see
``models.multitask``: every loss depends on the joint — shared and other — parameters only
through z), one vectorized backward (``is_grads_batched``, i.e. ``torch.vmap`` over the T unit
cotangents) gives every task's gradient with respect to z and the task-specific parameters'
gradient; at the parameter level a second vectorized backward pulls the T rows of ∂L/∂z back to
the joint parameters, kept as one block per parameter (``BlockRows``). No method loops over
tasks with ``.backward()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

#: The linear map ``(T_i, d, o)`` from z ``(N, d)`` to the outputs of the tasks at the given
#: slots, or None when the heads are not linear (``MultiTaskModel.output_map``).
OutputMap = Callable[[Tensor], Tensor | None]


@dataclass
class FactoredRows:
    """The z-level rows ∂L_t/∂z of linear heads, kept as two factors instead of a T × (N·d)
    matrix: row t is ``Σ_o grads[:, t, o] ⊗ maps[t, :, o]`` (N × d, flattened).

    The Gramian then costs (T·o)²·(N + d) multiply-adds instead of T²·N·d, and the combined
    direction ``wᵀJ`` one (N, T·o) × (T·o, d) product: J itself is never formed unless an
    aggregator needs more than its Gramian (``dense``).
    """

    grads: Tensor  # (N, T, o): ∂L_t/∂outputs, task t's slot
    maps: Tensor  # (T, d, o)

    def __len__(self) -> int:
        return self.grads.shape[1]

    def gramian(self) -> Tensor:
        n, t, o = self.grads.shape
        a = self.grads.reshape(n, t * o).float()
        m = self.maps.permute(0, 2, 1).reshape(t * o, -1).float()
        return ((a.T @ a) * (m @ m.T)).view(t, o, t, o).sum((1, 3))

    def combine(self, w: Tensor) -> Tensor:
        """``Σ_t w_t row_t``, flat ``(N·d,)``."""
        scaled = self.grads * w.to(self.grads)[None, :, None]
        return torch.einsum("nto,tdo->nd", scaled, self.maps).flatten()

    def select(self, rows: Tensor) -> FactoredRows:
        return FactoredRows(self.grads.index_select(1, rows), self.maps.index_select(0, rows))

    def rows(self) -> Tensor:
        """The rows formed, ``(T, N, d)``."""
        return torch.einsum("nto,tdo->tnd", self.grads, self.maps)

    def dense(self) -> Tensor:
        return self.rows().flatten(1).float()

    def nonzero(self) -> Tensor:
        """Which rows are not exactly zero (their squared norm, in float64, is positive)."""
        g, m = self.grads.double(), self.maps.double()
        outer = torch.einsum("nto,ntp->top", g, g) * torch.einsum("tdo,tdp->top", m, m)
        return outer.sum((1, 2)) > 0


@dataclass
class BlockRows:
    """Parameter-level rows kept as one ``(T, n_p)`` block per parameter, as the batched
    backward gives them, instead of one T × n matrix: the Gramian is Σ_p B_p B_pᵀ and the
    direction is formed block by block, so J is copied into one matrix only for an aggregator
    that needs it (``dense``). The copy cost about a tenth of a parameter-level step."""

    blocks: list[Tensor]  # (T, n_p) each, float32

    def __len__(self) -> int:
        return self.blocks[0].shape[0]

    def gramian(self) -> Tensor:
        gram = self.blocks[0] @ self.blocks[0].T
        for block in self.blocks[1:]:
            gram = gram.addmm_(block, block.T)
        return gram

    def combine(self, w: Tensor) -> Tensor:
        w = w.to(self.blocks[0])
        return torch.cat([w @ block for block in self.blocks])

    def select(self, rows: Tensor) -> BlockRows:
        return BlockRows([block.index_select(0, rows) for block in self.blocks])

    def times(self, v: Tensor) -> Tensor:
        """``J v`` (T,) for a flat ``v`` (n,)."""
        parts = v.to(self.blocks[0]).split([block.shape[1] for block in self.blocks])
        return sum((block @ part for block, part in zip(self.blocks, parts, strict=True)))

    def dense(self) -> Tensor:
        return torch.cat(self.blocks, dim=1)


Rows = Tensor | FactoredRows | BlockRows


def gramian(rows: Rows) -> Tensor:
    """G = JJᵀ (T×T) of dense, factored or block rows."""
    return rows @ rows.T if isinstance(rows, Tensor) else rows.gramian()


def combine(rows: Rows, w: Tensor) -> Tensor:
    """The direction ``wᵀJ`` (flat)."""
    return w.to(rows) @ rows if isinstance(rows, Tensor) else rows.combine(w)


def times(rows: Tensor | BlockRows, v: Tensor) -> Tensor:
    """``J v`` (T,) for a flat ``v``."""
    return rows @ v if isinstance(rows, Tensor) else rows.times(v)


def dense(rows: Rows) -> Tensor:
    """J as a ``(T, n)`` float32 matrix."""
    return rows if isinstance(rows, Tensor) else rows.dense()


def select(rows: Rows, index: Tensor) -> Rows:
    return rows.index_select(0, index) if isinstance(rows, Tensor) else rows.select(index)


def parameter_rows(features: Tensor, params: Sequence[Tensor], jac_z: Tensor) -> BlockRows:
    """The parameter-level rows of the tasks whose z-level rows are ``jac_z`` (one batched
    backward from z through ``params``; a parameter z does not depend on gets zeros)."""
    cotangents = jac_z.view(len(jac_z), *features.shape).to(features.dtype)
    rows = batched_grad(features, params, cotangents, retain_graph=True)
    return BlockRows(
        [
            r.flatten(1).float() if r is not None else jac_z.new_zeros(len(jac_z), p.numel())
            for p, r in zip(params, rows, strict=True)
        ]
    )


@dataclass
class TaskJacobian:
    """Rows of the present tasks only; ``present[t]`` says which tasks those are."""

    matrix: Rows  # z level: (T_present, n) float32 or its factors (linear heads); parameter
    # level: its blocks, one per joint parameter
    present: list[bool]
    task_grads: list[Tensor | None]  # Σ_t ∂L_t/∂θ for each task-specific parameter


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
    task_params: Sequence[Tensor],
    joint_params: Sequence[Tensor] | None,
    outputs: Tensor | None = None,
    slots: Sequence[int] | None = None,
    output_map: OutputMap | None = None,
) -> TaskJacobian:
    """The Jacobian of ``losses`` w.r.t. z (``joint_params`` None) or the joint parameters.

    With the packed ``outputs`` (N, T_out, o) and the slot of each loss in them (``slots``),
    ∂L/∂z is taken the cheap way: loss i depends on ``outputs[:, slots[i]]`` only, so one
    ordinary backward gives every ∂L_i/∂outputs and the task-specific gradients, and only the
    part between z and the outputs is differentiated per task: with linear heads
    (``output_map``) that is a product with their weights, which at the z level is kept
    factored (``FactoredRows``) when that is cheaper than forming J; otherwise one batched
    backward from the outputs to z. Without them the batched backward runs through the
    losses too.

    A task whose gradient on z is exactly zero (no labelled row in the batch) is left out.
    The graph through z is kept, so the caller may still backpropagate into it.
    """
    if outputs is not None and slots is not None:
        jac_z, task_grads = _jacobian_from_outputs(
            losses, features, outputs, slots, task_params, output_map, joint_params is None
        )
    else:
        eye = torch.eye(len(losses), dtype=losses.dtype, device=losses.device)
        grads = batched_grad(losses, [features, *task_params], eye, retain_graph=True)
        jac_z = grads[0]
        if jac_z is None:
            jac_z = torch.zeros(len(losses), *features.shape, dtype=features.dtype)
        task_grads = [None if g is None else g.sum(0) for g in grads[1:]]
    if isinstance(jac_z, FactoredRows):
        keep = jac_z.nonzero()
        return TaskJacobian(jac_z.select(keep.nonzero().squeeze(1)), keep.tolist(), task_grads)
    present = (jac_z.flatten(1).abs().amax(1) > 0).tolist()
    jac_z = jac_z[torch.tensor(present, device=jac_z.device)]
    if joint_params is None or not len(jac_z):
        return TaskJacobian(jac_z.flatten(1).float(), present, task_grads)
    return TaskJacobian(parameter_rows(features, list(joint_params), jac_z), present, task_grads)


def _jacobian_from_outputs(
    losses: Tensor,
    features: Tensor,
    outputs: Tensor,
    slots: Sequence[int],
    task_params: Sequence[Tensor],
    output_map: OutputMap | None,
    factor: bool,
) -> tuple[Tensor | FactoredRows, list[Tensor | None]]:
    (g,) = torch.autograd.grad(losses.sum(), outputs, retain_graph=True)
    task_grads: list[Tensor | None] = []
    if task_params:
        task_grads = list(
            torch.autograd.grad(outputs, list(task_params), g, retain_graph=True, allow_unused=True)
        )
    index = torch.tensor(list(slots), device=g.device)
    g = g.index_select(1, index)  # (N, T, o): column i is loss i's
    maps = output_map(index) if output_map is not None else None
    if maps is not None:
        maps = maps.detach().to(g.dtype)
        if factor and _factoring_pays(g, maps):
            return FactoredRows(g, maps), task_grads
        # linear heads: ∂L_i/∂z = g_i W_iᵀ, one einsum for all tasks
        return FactoredRows(g, maps).rows().to(features.dtype), task_grads
    eye = torch.eye(len(slots), dtype=g.dtype, device=g.device)
    cotangents = torch.zeros(len(slots), *outputs.shape, dtype=g.dtype, device=g.device)
    cotangents[:, :, index] = g.unsqueeze(0) * eye[:, None, :, None]
    (jac_z,) = batched_grad(outputs, [features], cotangents, retain_graph=True)
    if jac_z is None:
        jac_z = torch.zeros(len(slots), *features.shape, dtype=features.dtype)
    return jac_z.to(features.dtype), task_grads


def _factoring_pays(grads: Tensor, maps: Tensor) -> bool:
    """Whether the factored Gramian ((T·o)²·(N + d)) beats forming J and its Gramian
    (T·N·d·o + T²·N·d)."""
    n, t, o = grads.shape
    d = maps.shape[1]
    return (t * o) ** 2 * (n + d) <= t * n * d * (o + t)


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
