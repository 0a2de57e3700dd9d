"""Task heads computed in one pass: every task's head is a slice of stacked weight tensors.

Head ``t`` is an MLP ``f_t(h; θ_t)`` with the same hidden widths for all tasks. Instead of T small
modules run one after another, the first layer is one wide Linear over the shared features and
later layers are batched matrix products over a task dimension, so the cost of a step grows with
the work, not with the number of Python calls. Outputs are padded to the widest task.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .layers import activation


class TaskHeads(nn.Module):
    """Per-task MLP heads stacked along a task dimension.

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
            bound = 1.0 / math.sqrt(fan_in)  # the default init of nn.Linear, per task
            self.weights.append(
                nn.Parameter(torch.empty(n_tasks, fan_in, fan_out).uniform_(-bound, bound))
            )
            self.biases.append(nn.Parameter(torch.empty(n_tasks, fan_out).uniform_(-bound, bound)))
        self.act = activation(activation_name)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, h: Tensor) -> Tensor:
        n_layers = len(self.weights)
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            if h.dim() == 2:
                # Shared input: one wide matmul, (N, d) @ (d, T*o) -> (N, T, o).
                n_tasks, fan_in, fan_out = weight.shape
                if fan_out == 1:  # its backward then gives .grad the parameter's own strides,
                    flat = weight[:, :, 0].t()  # which DistributedDataParallel's buckets expect
                else:
                    flat = weight.permute(1, 0, 2).reshape(fan_in, n_tasks * fan_out)
                h = (h @ flat).view(h.shape[0], n_tasks, fan_out) + bias
            else:
                h = torch.einsum("ntd,tdo->nto", h, weight) + bias
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
