"""The model protocol: what the trainer, the balancers and run I/O know about a multi-task model.

A ``MultiTaskModel`` has task names and output sizes, and ``forward`` returns the packed outputs
``(N, T, max_out)`` (or a dict by task) and, on request, the representation z that
representation-level balancers differentiate. ``parameter_groups()`` sorts every parameter into
exactly one group: ``shared``, per task (``tasks``), or ``other``.

Task t's group holds what only task t's output depends on (its head, its gate…); anything the
outputs of two tasks may depend on is ``shared`` (what represents the input: encoder, trunk,
experts, columns) or ``other`` (what routes between them: mixing and gate weights that no single
task owns). A task-group entry may be a view of one task's slice of a parameter stacked over
tasks. The representation z is a cut of the network: every loss depends on the shared and other
parameters only through z, and all that lies between z and the outputs is task-specific. So the
gradient of any weighted sum of losses w.r.t. the non-task-specific parameters is the pull-back
through z of the same weighted sum of ∂L_t/∂z (what the aggregators use at both levels), and
each task-specific parameter's gradient comes from its own task's loss alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor, nn

from ..errors import ConfigError


@dataclass
class ParameterGroups:
    """A model's parameters by role; every parameter is covered exactly once."""

    shared: list[Tensor] = field(default_factory=list)
    tasks: dict[str, list[Tensor]] = field(default_factory=dict)
    other: list[Tensor] = field(default_factory=list)

    def task_specific(self) -> list[nn.Parameter]:
        """The parameters that hold the task groups (a stacked parameter once)."""
        seen: dict[int, nn.Parameter] = {}
        for entries in self.tasks.values():
            for t in entries:
                base = t if t._base is None else t._base
                seen.setdefault(id(base), base)  # type: ignore[arg-type]
        return list(seen.values())

    def joint(self) -> list[Tensor]:
        """The parameters more than one task's output may depend on: shared, then other."""
        return [*self.shared, *self.other]


@dataclass
class MixingTable:
    """Routing weights of an architecture as a matrix: gates (averaged over rows) or mixing."""

    rows: list[str]
    columns: list[str]
    values: Tensor  # (len(rows), len(columns))

    def to_json(self) -> dict[str, object]:
        return {"rows": self.rows, "columns": self.columns, "values": self.values.tolist()}


class MultiTaskModel(nn.Module):
    """Base class of every architecture (see the module docstring for the contract).

    Subclasses call ``super().__init__(out_dims)`` and implement ``outputs_and_features``
    (packed outputs and z) and ``parameter_groups``; ``representation`` says in words what z is.
    Optional: ``output_map`` (the heads' weights when the outputs are linear in z), ``mixing``
    (routing weights to save and plot) and ``add_penalty_gradient`` (an architecture's own
    regularizer, added to the gradient after the balancer).
    """

    representation: str = ""

    def __init__(self, out_dims: Mapping[str, int]) -> None:
        super().__init__()
        self.task_names = list(out_dims)
        self.out_dims = dict(out_dims)
        self.max_out = max(self.out_dims.values())
        self._slot = {name: t for t, name in enumerate(self.task_names)}

    # ---- the protocol -------------------------------------------------------------------
    def outputs_and_features(
        self, x_num: Tensor, x_cat: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Packed outputs ``(N, T, max_out)`` and the representation z ``(N, width)``."""
        raise NotImplementedError

    def parameter_groups(self) -> ParameterGroups:
        raise NotImplementedError(f"{type(self).__name__} does not define parameter_groups()")

    def forward(
        self,
        x_num: Tensor,
        x_cat: Tensor | None = None,
        *,
        packed: bool = False,
        features: bool = False,
    ) -> dict[str, Tensor] | Tensor | tuple[dict[str, Tensor] | Tensor, Tensor]:
        """``{task: output}``, or the packed tensor when ``packed`` (the training loop's form).

        With ``features`` the representation z comes out too, as ``(outputs, z)``: the
        representation-level balancers need it, and it must leave through ``forward`` so that a
        ``DistributedDataParallel`` wrapper sees the one graph.
        """
        out, z = self.outputs_and_features(x_num, x_cat)
        out = out if packed else self.unpack(out)
        return (out, z) if features else out

    def unpack(self, packed: Tensor) -> dict[str, Tensor]:
        """Per-task outputs ``(N, out_dim)`` from packed ``(N, T, max_out)``."""
        return {n: packed[:, t, : self.out_dims[n]] for t, n in enumerate(self.task_names)}

    def slots(self, names: Sequence[str]) -> list[int]:
        """The positions of tasks ``names`` in the packed outputs."""
        return [self._slot[n] for n in names]

    def output_map(self, slots: Tensor) -> Tensor | None:
        """The weights ``(T_i, width, max_out)`` of the tasks at ``slots`` when their outputs
        are linear in z (linear heads), else None: then ∂L_i/∂z = ∂L_i/∂outputs · W_iᵀ, and the
        balancers never differentiate the heads per task."""
        return None

    def mixing(self, x_num: Tensor, x_cat: Tensor | None = None) -> dict[str, MixingTable]:
        """Routing weights by name, gates averaged over these rows (none by default)."""
        return {}

    def add_penalty_gradient(self) -> None:
        """Add the gradient of the architecture's own penalty to ``.grad`` (none by default)."""
        return None

    # ---- derived ------------------------------------------------------------------------
    @cached_property
    def _split(self) -> tuple[list[nn.Parameter], list[Tensor]]:
        groups = self.parameter_groups()
        return groups.task_specific(), groups.joint()

    def split_parameters(self) -> tuple[list[nn.Parameter], list[Tensor]]:
        """(task-specific parameters, joint parameters) of ``parameter_groups()``, computed once:
        the balancers' view of the model."""
        return self._split

    def task_parameters(self, name: str) -> list[Tensor]:
        """Task ``name``'s group (views into parameters stacked over tasks where they are)."""
        groups = self.parameter_groups().tasks
        if name not in groups:
            raise KeyError(f"no task named {name!r} (tasks: {', '.join(self.task_names)})")
        return groups[name]


def check_parameter_groups(model: MultiTaskModel) -> None:
    """A ConfigError unless ``model.parameter_groups()`` covers every parameter exactly once
    (a parameter trained by no group, or by two, would get a wrong gradient without a word)."""
    try:
        groups = model.parameter_groups()
    except NotImplementedError as exc:
        raise ConfigError(f"the model cannot be trained: {exc}") from None
    names = {id(p): name for name, p in model.named_parameters()}
    counts = {id(p): torch.zeros_like(p, dtype=torch.int8) for p in model.parameters()}
    entries = [*groups.shared, *groups.other, *(t for g in groups.tasks.values() for t in g)]
    for t in entries:
        base = t if t._base is None else t._base
        if id(base) not in counts:
            raise ConfigError(
                f"{type(model).__name__}.parameter_groups() names a tensor that is not one of "
                "the model's parameters"
            )
        offset = t.storage_offset() - base.storage_offset()
        counts[id(base)].as_strided(t.shape, t.stride(), offset).add_(1)
    for key, count in counts.items():
        if not bool((count == 1).all()):
            how = "in no group" if int(count.min()) == 0 else "in more than one group"
            raise ConfigError(
                f"{type(model).__name__}.parameter_groups(): parameter {names[key]!r} is {how}; "
                "every parameter must be in exactly one of shared, tasks or other"
            )
    unknown = [n for n in groups.tasks if n not in model.task_names]
    if unknown:
        raise ConfigError(f"{type(model).__name__}.parameter_groups(): unknown tasks {unknown}")
