"""Task heads computed in one pass: every task's head is a slice of stacked weight tensors.

Head ``t`` is an MLP ``f_t(h; θ_t)``. Instead of T small modules run one after another, the
first layer is one wide Linear over the shared features and later layers are batched matrix
products over a task dimension, so the cost of a step grows with the work, not with the number
of Python calls. Outputs are padded to the widest task. ``TaskHeads`` stacks heads of equal
hidden widths; ``Heads`` groups the tasks by their widths (``tasks[].head``), one
``TaskHeads`` per group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import activation, stacked_linear, stacked_parameter


class TaskHeads(nn.Module):
    """Per-task MLP heads of equal hidden widths, stacked along a task dimension.

    ``forward(h)`` takes shared features ``(N, d)`` (or per-task features ``(N, T, d)``) and
    returns packed outputs ``(N, T, max_out)``; ``unpack`` turns them into a dict by task.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_dims: Mapping[str, int],
        *,
        activation_name: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.names = list(out_dims)
        self.out_dims = dict(out_dims)
        self.max_out = max(self.out_dims.values())
        n_tasks = len(self.names)
        widths = [in_features, *hidden, self.max_out]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            # the default init of nn.Linear, per task
            self.weights.append(stacked_parameter(n_tasks, fan_in, fan_in, fan_out))
            self.biases.append(stacked_parameter(n_tasks, fan_in, fan_out))
        self.act = activation(activation_name)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, h: Tensor) -> Tensor:
        n_layers = len(self.weights)
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = stacked_linear(h, weight, bias)
            if i < n_layers - 1:
                h = self.dropout(self.act(h))
        return h

    def unpack(self, packed: Tensor) -> dict[str, Tensor]:
        """Per-task outputs ``(N, out_dim)`` from packed ``(N, T, max_out)``."""
        return {name: packed[:, t, : self.out_dims[name]] for t, name in enumerate(self.names)}

    def task_parameters(self, name: str) -> list[Tensor]:
        """Views of task ``name``'s slice of every stacked weight and bias."""
        t = self.names.index(name)
        return [p[t] for pair in zip(self.weights, self.biases, strict=True) for p in pair]


class Heads(nn.Module):
    """Every task's head; tasks whose heads have the same hidden widths share one ``TaskHeads``.

    ``hidden`` maps each task to its head's hidden widths. ``forward`` takes ``(N, d)`` or
    per-task ``(N, T, d)`` features and returns ``(N, T, max_out)`` in the order of
    ``out_dims``. With one group (every head alike) it is that group's ``TaskHeads`` call.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Mapping[str, Sequence[int]],
        out_dims: Mapping[str, int],
        *,
        activation_name: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.names = list(out_dims)
        self.out_dims = dict(out_dims)
        self.max_out = max(self.out_dims.values())
        by_widths: dict[tuple[int, ...], list[str]] = {}
        for name in self.names:
            by_widths.setdefault(tuple(hidden[name]), []).append(name)
        self.groups = nn.ModuleList(
            TaskHeads(
                in_features,
                widths,
                {n: self.out_dims[n] for n in names},
                activation_name=activation_name,
                dropout=dropout,
            )
            for widths, names in by_widths.items()
        )
        self._group_of = {n: g for g, names in enumerate(by_widths.values()) for n in names}
        if len(self.groups) > 1:
            position = {n: t for t, n in enumerate(self.names)}
            for g, names in enumerate(by_widths.values()):
                index = torch.tensor([position[n] for n in names])
                self.register_buffer(f"_tasks_{g}", index, persistent=False)
            stacked = [n for names in by_widths.values() for n in names]
            order = torch.tensor([stacked.index(n) for n in self.names])
            self.register_buffer("_order", order, persistent=False)
        # runs saved before heads were grouped hold one TaskHeads' weights under "heads."
        self.register_load_state_dict_pre_hook(_ungrouped_keys)

    def forward(self, h: Tensor) -> Tensor:
        if len(self.groups) == 1:
            return self.groups[0](h)
        parts = []
        for g, group in enumerate(self.groups):
            x = h if h.dim() == 2 else h.index_select(1, getattr(self, f"_tasks_{g}"))
            out = group(x)
            parts.append(F.pad(out, (0, self.max_out - out.shape[-1])))
        return torch.cat(parts, dim=1).index_select(1, self._order)

    def unpack(self, packed: Tensor) -> dict[str, Tensor]:
        """Per-task outputs ``(N, out_dim)`` from packed ``(N, T, max_out)``."""
        return {name: packed[:, t, : self.out_dims[name]] for t, name in enumerate(self.names)}

    def task_parameters(self, name: str) -> list[Tensor]:
        """Views of task ``name``'s slice of its group's stacked weights and biases."""
        return self.groups[self._group_of[name]].task_parameters(name)

    def linear_weight(self) -> Tensor | None:
        """The ``(T, d, max_out)`` weight when every head is one linear layer, else None."""
        if len(self.groups) == 1 and len(self.groups[0].weights) == 1:
            return self.groups[0].weights[0]
        return None


def _ungrouped_keys(module: nn.Module, state: dict[str, Any], prefix: str, *args: Any) -> None:
    for kind in ("weights", "biases"):
        for key in [k for k in state if k.startswith(f"{prefix}{kind}.")]:
            state[f"{prefix}groups.0.{key.removeprefix(prefix)}"] = state.pop(key)
