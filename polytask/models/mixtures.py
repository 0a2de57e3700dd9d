"""Mixtures of experts: MMoE (Ma et al. 2018) and PLE / CGC (Tang et al. 2020).

Experts are MLPs of widths ``model.shared`` (``ParallelMLP``); a gate is a softmax over the
experts it mixes, computed from the gate's input (a linear map); each task's tower is its head.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .heads import Heads
from .layers import ParallelMLP, TabularInput, stacked_linear, stacked_parameter
from .multitask import MixingTable, MultiTaskModel, ParameterGroups


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


class _Gates(nn.Module):
    """A softmax gate per member over ``choices``: (N, d) or (N, M, d) → (N, M, choices)."""

    def __init__(self, members: int, in_features: int, choices: int) -> None:
        super().__init__()
        self.weight = stacked_parameter(members, in_features, in_features, choices)
        self.bias = stacked_parameter(members, in_features, choices)

    def forward(self, h: Tensor) -> Tensor:
        return torch.softmax(stacked_linear(h, self.weight, self.bias), dim=-1)

    def member_parameters(self, m: int) -> list[Tensor]:
        return [self.weight[m], self.bias[m]]


class MMoE(MultiTaskModel):
    """Multi-gate mixture of experts: K shared experts, task t's tower reads Σ_k g_tk(e) E_k(e)."""

    representation = (
        "the experts' outputs (N, K·d); with categorical embeddings also the encoded input e "
        "the gates read"
    )

    def __init__(
        self,
        *,
        encoder: TabularInput,
        n_experts: int,
        expert: Sequence[int],
        out_dims: Mapping[str, int],
        heads: Mapping[str, Sequence[int]],
        activation_name: str = "relu",
        dropout: float = 0.0,
        norm: str = "none",
    ) -> None:
        super().__init__(out_dims)
        self.encoder = encoder
        d_in = encoder.out_features
        self.experts = ParallelMLP(
            n_experts, d_in, expert, activation_name=activation_name, dropout=dropout, norm=norm
        )
        self.gates = _Gates(len(self.task_names), d_in, n_experts)
        self.towers = Heads(
            self.experts.out_features,
            heads,
            out_dims,
            activation_name=activation_name,
            dropout=dropout,
        )
        self._input_in_z = _has_parameters(encoder)

    def _experts_and_gates(
        self, x_num: Tensor, x_cat: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        e = self.encoder(x_num, x_cat)
        experts = self.experts(e)  # (N, K, d)
        n, k, d = experts.shape
        if self._input_in_z:
            z = torch.cat([experts.flatten(1), e], dim=1)
            experts, e = z[:, : k * d].view(n, k, d), z[:, k * d :]
        else:
            z = experts.flatten(1)
            experts = z.view(n, k, d)
        return self.gates(e), experts, z

    def outputs_and_features(
        self, x_num: Tensor, x_cat: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        gates, experts, z = self._experts_and_gates(x_num, x_cat)
        return self.towers(torch.bmm(gates, experts)), z

    @torch.no_grad()
    def gate_weights(self, x_num: Tensor, x_cat: Tensor | None = None) -> Tensor:
        """Each task's gate over the experts, ``(N, T, K)`` (rows sum to 1)."""
        return self._experts_and_gates(x_num, x_cat)[0]

    def mixing(self, x_num: Tensor, x_cat: Tensor | None = None) -> dict[str, MixingTable]:
        columns = [f"expert {k + 1}" for k in range(self.experts.members)]
        mean = self.gate_weights(x_num, x_cat).mean(0)
        return {"gates": MixingTable(list(self.task_names), columns, mean)}

    def parameter_groups(self) -> ParameterGroups:
        tasks = {
            name: [*self.gates.member_parameters(t), *self.towers.task_parameters(name)]
            for t, name in enumerate(self.task_names)
        }
        shared = [*self.encoder.parameters(), *self.experts.parameters()]
        return ParameterGroups(shared=shared, tasks=tasks)


class PLE(MultiTaskModel):
    """Progressive layered extraction: at each level, every task has its own experts and a gate
    over them and the shared experts; below the last level a shared gate over all experts feeds
    the next level's shared experts. One level is CGC (customized gate control)."""

    representation = (
        "the last level's shared-expert outputs (N, K_s·d) and each task's input to that level "
        "(N, T·d; at one level the encoded input e, included only with categorical embeddings)"
    )

    def __init__(
        self,
        *,
        encoder: TabularInput,
        levels: int,
        n_shared_experts: int,
        n_task_experts: int,
        expert: Sequence[int],
        out_dims: Mapping[str, int],
        heads: Mapping[str, Sequence[int]],
        activation_name: str = "relu",
        dropout: float = 0.0,
        norm: str = "none",
    ) -> None:
        super().__init__(out_dims)
        self.encoder = encoder
        n_tasks = len(self.task_names)
        self.n_shared, self.n_task = n_shared_experts, n_task_experts
        options = {"activation_name": activation_name, "dropout": dropout, "norm": norm}
        self.task_experts = nn.ModuleList()
        self.shared_experts = nn.ModuleList()
        self.task_gates = nn.ModuleList()
        self.shared_gates = nn.ModuleList()  # one fewer: the last level has none
        width = encoder.out_features
        for level in range(levels):
            self.task_experts.append(
                ParallelMLP(n_tasks * n_task_experts, width, expert, **options)
            )
            self.shared_experts.append(ParallelMLP(n_shared_experts, width, expert, **options))
            self.task_gates.append(_Gates(n_tasks, width, n_task_experts + n_shared_experts))
            if level < levels - 1:
                choices = n_tasks * n_task_experts + n_shared_experts
                self.shared_gates.append(_Gates(1, width, choices))
            width = self.shared_experts[-1].out_features
        self.towers = Heads(
            width, heads, out_dims, activation_name=activation_name, dropout=dropout
        )
        self._input_in_z = _has_parameters(encoder)

    def _levels(
        self, x_num: Tensor, x_cat: Tensor | None
    ) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
        """Each task's last-level output ``(N, T, d)``, z, and the task and shared gates."""
        e = self.encoder(x_num, x_cat)
        shared_in: Tensor = e
        task_in: Tensor = e  # (N, d) while every task reads the same input, then (N, T, d)
        task_gates: list[Tensor] = []
        shared_gates: list[Tensor] = []
        last = len(self.task_experts) - 1
        z = e
        for level in range(last + 1):
            shared = self.shared_experts[level](shared_in)  # (N, K_s, d)
            n, k_s, d = shared.shape
            if level == last:  # the cut: all that follows belongs to one task
                parts = [shared.flatten(1)]
                read_input = task_in.dim() == 3 or self._input_in_z
                if read_input:
                    parts.append(task_in.flatten(1))
                z = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
                shared = z[:, : k_s * d].view(n, k_s, d)
                if read_input:
                    task_in = z[:, k_s * d :].view(task_in.shape)
            per_member = task_in
            if task_in.dim() == 3:
                per_member = task_in.repeat_interleave(self.n_task, dim=1)
            own = self.task_experts[level](per_member)  # (N, T·K_t, d)
            gates = self.task_gates[level](task_in)  # (N, T, K_t + K_s)
            n_tasks = gates.shape[1]
            choices = torch.cat(
                [
                    own.view(n, n_tasks, self.n_task, -1),
                    shared.unsqueeze(1).expand(n, n_tasks, k_s, shared.shape[-1]),
                ],
                dim=2,
            )
            task_gates.append(gates)
            next_tasks = torch.einsum("ntk,ntkd->ntd", gates, choices)
            if level < last:
                gate = self.shared_gates[level](shared_in)  # (N, 1, T·K_t + K_s)
                shared_gates.append(gate)
                shared_in = torch.bmm(gate, torch.cat([own, shared], dim=1)).squeeze(1)
            task_in = next_tasks
        return task_in, z, task_gates, shared_gates

    def outputs_and_features(
        self, x_num: Tensor, x_cat: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        tasks, z, _, _ = self._levels(x_num, x_cat)
        return self.towers(tasks), z

    @torch.no_grad()
    def gate_weights(
        self, x_num: Tensor, x_cat: Tensor | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: the task gates ``(N, T, K_t + K_s)`` (own experts first) and, below the
        last level, the shared gate ``(N, 1, T·K_t + K_s)``."""
        _, _, task_gates, shared_gates = self._levels(x_num, x_cat)
        return task_gates, shared_gates

    def mixing(self, x_num: Tensor, x_cat: Tensor | None = None) -> dict[str, MixingTable]:
        task_gates, shared_gates = self.gate_weights(x_num, x_cat)
        own = [f"own {k + 1}" for k in range(self.n_task)]
        shared = [f"shared {k + 1}" for k in range(self.n_shared)]
        everyone = [f"{t} {k + 1}" for t in self.task_names for k in range(self.n_task)]
        tables = {}
        for level, gates in enumerate(task_gates):
            tables[f"level {level + 1} task gates"] = MixingTable(
                list(self.task_names), own + shared, gates.mean(0)
            )
            if level < len(shared_gates):
                tables[f"level {level + 1} shared gate"] = MixingTable(
                    ["shared"], everyone + shared, shared_gates[level].mean(0)
                )
        return tables

    def parameter_groups(self) -> ParameterGroups:
        last = len(self.task_experts) - 1
        k = self.n_task
        tasks = {
            name: [
                *self.task_experts[last].member_parameters(t * k, (t + 1) * k),
                *self.task_gates[last].member_parameters(t),
                *self.towers.task_parameters(name),
            ]
            for t, name in enumerate(self.task_names)
        }
        shared = [*self.encoder.parameters(), *self.shared_experts.parameters()]
        shared += [p for level in self.task_experts[:last] for p in level.parameters()]
        other = [p for gate in self.task_gates[:last] for p in gate.parameters()]
        other += list(self.shared_gates.parameters())
        return ParameterGroups(shared=shared, tasks=tasks, other=other)
