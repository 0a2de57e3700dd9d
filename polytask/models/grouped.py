"""Task groups under hard sharing (``model.groups``): one encoder and shared trunk per group of
tasks, one head per task on its group's trunk, all in one model and one run.

Which trunk a task reads:

- a task listed in a group (main or auxiliary) reads that group's trunk output h_g;
- an auxiliary task listed in no group is attached to every group: its head reads the
  concatenation [h_1, …, h_G], so its loss trains every trunk.

Parameter groups. A group's encoder and trunk are ``shared`` when two or more tasks read them
(the group's tasks plus the unlisted auxiliary tasks); a trunk read by one task only (a
singleton group and no unlisted auxiliary task) is task-specific: it goes to that task's group,
beside its head, so it gets its own loss's gradient and is never scaled by an aggregator, as an
STL network would be. The representation z is the concatenation of the shared trunks' outputs
(in group order), and their tasks' heads read their slices of z: every loss reaches the shared
parameters only through z, and a task that trains alone has a zero row at z, so the aggregators
leave it out of the joint update. Without any shared trunk (every group a singleton, no
unlisted auxiliary task) z is every trunk's output, as under ``soft_sharing``: there is nothing
joint to aggregate, and GradNorm's norms are taken there.

``groups = [all tasks]`` builds the same parameters, drawn in the same order, as
``HardSharing`` (encoder, trunk, heads): the same seed gives the same network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .heads import Heads
from .layers import MLP, TabularInput
from .multitask import MultiTaskModel, ParameterGroups


def group_problems(
    groups: Sequence[Sequence[str]], tasks: Mapping[str, bool] | None = None
) -> list[str]:
    """What is wrong with ``groups`` (empty when nothing), each as ``model.groups…: why``.

    Without ``tasks`` only the shape is checked (no empty group, no task twice); with
    ``tasks`` (name → is main, in declared order) also that every name is a task and every main
    task is in a group. Auxiliary tasks may be left out (they attach to every group).
    """
    problems: list[str] = []
    if not groups:
        problems.append("model.groups: give at least one group, or leave groups out")
    seen: dict[str, int] = {}
    for g, group in enumerate(groups):
        if not group:
            problems.append(f"model.groups[{g}]: a group needs at least one task")
        for name in group:
            if name in seen:
                problems.append(
                    f"model.groups[{g}]: task {name!r} is already in group {seen[name]}; "
                    "every task is in at most one group"
                )
            seen.setdefault(name, g)
    if tasks is None:
        return problems
    known = _shown(list(tasks))
    for g, group in enumerate(groups):
        for name in group:
            if name not in tasks:
                problems.append(f"model.groups[{g}]: {name!r} is not a task (tasks: {known})")
    missing = [n for n, main in tasks.items() if main and n not in seen]
    if missing:
        problems.append(
            f"model.groups: main tasks {_shown(missing)} are in no group; every main task must "
            "be in exactly one (auxiliary tasks left out attach to every group)"
        )
    return problems


def _shown(names: list[str], limit: int = 12) -> str:
    return ", ".join(names[:limit]) + (f", … ({len(names)} in all)" if len(names) > limit else "")


class GroupedHardSharing(MultiTaskModel):
    """One encoder and trunk per group of tasks, a head per task (see the module docstring).

    ``groups`` lists task names per group; tasks of ``out_dims`` in no group are auxiliary
    tasks attached to every group. ``trunk`` gives the trunk's layer widths (every group's
    trunk has the same shape), ``heads`` every task's head hidden widths.
    """

    representation = (
        "the outputs of the trunks that two or more tasks read, concatenated in group order "
        "(N, G_shared·d); with no such trunk, every trunk's output (N, G·d)"
    )

    def __init__(
        self,
        *,
        n_numeric: int,
        cardinalities: Sequence[int],
        embedding_dim: int | None,
        trunk: Sequence[int],
        groups: Sequence[Sequence[str]],
        out_dims: Mapping[str, int],
        heads: Mapping[str, Sequence[int]],
        activation_name: str = "relu",
        dropout: float = 0.0,
        norm: str = "none",
    ) -> None:
        super().__init__(out_dims)
        problems = group_problems(groups)
        unknown = [n for group in groups for n in group if n not in out_dims]
        if unknown:
            problems.append(f"model.groups: {unknown} are not tasks of this model")
        if problems:
            raise ConfigError("; ".join(problems))
        listed = {n for group in groups for n in group}
        # within a group, tasks in declared order: [all tasks] is then hard sharing exactly
        self.groups = [[n for n in self.task_names if n in set(g)] for g in groups]
        self.attached = [n for n in self.task_names if n not in listed]
        self.encoders = nn.ModuleList()
        self.trunks = nn.ModuleList()
        self.group_heads = nn.ModuleList()
        width = 0
        for names in self.groups:
            encoder = TabularInput(n_numeric, cardinalities, embedding_dim)
            body = MLP(
                encoder.out_features, trunk, activation_name=activation_name, dropout=dropout,
                norm=norm,
            )  # fmt: skip
            width = body.out_features
            self.encoders.append(encoder)
            self.trunks.append(body)
            self.group_heads.append(self._heads(width, names, heads, activation_name, dropout))
        self.width = width
        self.attached_heads = (
            self._heads(width * len(self.groups), self.attached, heads, activation_name, dropout)
            if self.attached
            else None
        )
        readers = [len(names) + len(self.attached) for names in self.groups]
        self.shared_groups = [g for g, r in enumerate(readers) if r >= 2]
        in_z = self.shared_groups or list(range(len(self.groups)))
        self._z_slot = {g: k for k, g in enumerate(in_z)}
        stacked = [n for names in self.groups for n in names] + self.attached
        order = torch.tensor([stacked.index(n) for n in self.task_names])
        self.register_buffer("_order", order, persistent=False)

    def _heads(
        self,
        in_features: int,
        names: Sequence[str],
        heads: Mapping[str, Sequence[int]],
        activation_name: str,
        dropout: float,
    ) -> Heads:
        return Heads(
            in_features,
            {n: list(heads.get(n, ())) for n in names},
            {n: self.out_dims[n] for n in names},
            activation_name=activation_name,
            dropout=dropout,
        )

    def outputs_and_features(
        self, x_num: Tensor, x_cat: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        pairs = zip(self.encoders, self.trunks, strict=True)
        hs = [trunk(enc(x_num, x_cat)) for enc, trunk in pairs]
        z = torch.cat([hs[g] for g in self._z_slot], dim=1)
        d = self.width
        parts = []
        for g, head in enumerate(self.group_heads):
            k = self._z_slot.get(g)
            h = hs[g] if k is None else z[:, k * d : (k + 1) * d]  # read through z when in it
            parts.append(head(h))
        if self.attached_heads is not None:  # every trunk is shared then, z = [h_1, …, h_G]
            parts.append(self.attached_heads(z))
        parts = [F.pad(p, (0, self.max_out - p.shape[-1])) for p in parts]
        packed = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return packed.index_select(1, self._order), z

    def parameter_groups(self) -> ParameterGroups:
        tasks: dict[str, list[Tensor]] = {}
        shared: list[Tensor] = []
        for g, names in enumerate(self.groups):
            trunk = [*self.encoders[g].parameters(), *self.trunks[g].parameters()]
            if g in self.shared_groups:
                shared += trunk
            else:  # read by its one task only: that task's, like an STL network
                tasks[names[0]] = list(trunk)
            for name in names:
                tasks[name] = [*tasks.get(name, []), *self.group_heads[g].task_parameters(name)]
        for name in self.attached:
            assert self.attached_heads is not None
            tasks[name] = self.attached_heads.task_parameters(name)
        return ParameterGroups(shared=shared, tasks={n: tasks[n] for n in self.task_names})
