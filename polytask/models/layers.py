"""Building blocks: the MLP trunk, the tabular input (numeric + categorical embeddings), and
``ParallelMLP``: several MLPs of one shape computed side by side (experts, columns, task
networks), their weights stacked along a leading member dimension."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, one_of

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
}
NORMS = ("none", "batch", "layer")


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(f"model.activation: {name!r} is not known ({one_of(ACTIVATIONS)})")
    return ACTIVATIONS[name]()


class MLP(nn.Sequential):
    """Linear → [norm] → activation → [dropout] blocks; ``out_features`` is the last width."""

    def __init__(
        self,
        in_features: int,
        widths: Sequence[int],
        *,
        activation_name: str = "relu",
        dropout: float = 0.0,
        norm: str = "none",
    ) -> None:
        if norm not in NORMS:
            raise ConfigError(f"model.norm: {norm!r} is not known ({one_of(NORMS)})")
        layers: list[nn.Module] = []
        width = in_features
        for out in widths:
            layers.append(nn.Linear(width, out))
            if norm == "batch":
                layers.append(nn.BatchNorm1d(out))
            elif norm == "layer":
                layers.append(nn.LayerNorm(out))
            layers.append(activation(activation_name))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = out
        super().__init__(*layers)
        self.out_features = width


def stacked_linear(h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """M linear maps at once, ``weight`` ``(M, d, o)`` and ``bias`` ``(M, o)``, on one input
    ``(N, d)`` for all M (one wide matmul) or one per member ``(N, M, d)``: → ``(N, M, o)``."""
    if h.dim() == 2:
        members, fan_in, fan_out = weight.shape
        if fan_out == 1:  # its backward then gives .grad the parameter's own strides,
            flat = weight[:, :, 0].t()  # which DistributedDataParallel's buckets expect
        else:
            flat = weight.permute(1, 0, 2).reshape(fan_in, members * fan_out)
        out = (h @ flat).view(h.shape[0], members, fan_out)
    else:
        out = torch.einsum("nmd,mdo->nmo", h, weight)
    return out if bias is None else out + bias


def stacked_parameter(members: int, fan_in: int, *shape: int) -> nn.Parameter:
    """A ``(members, *shape)`` parameter drawn like ``nn.Linear``'s default, per member."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(members, *shape).uniform_(-bound, bound))


class _MemberBatchNorm(nn.BatchNorm1d):
    """Batch norm of ``(N, M, d)``: statistics per member and channel."""

    def __init__(self, members: int, width: int) -> None:
        super().__init__(members * width)
        self.members = members

    def forward(self, h: Tensor) -> Tensor:
        return super().forward(h.reshape(h.shape[0], -1)).view_as(h)


class _MemberLayerNorm(nn.Module):
    """Layer norm of ``(N, M, d)`` over d, with each member's own gain and shift."""

    def __init__(self, members: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(members, width))
        self.bias = nn.Parameter(torch.zeros(members, width))

    def forward(self, h: Tensor) -> Tensor:
        return F.layer_norm(h, h.shape[-1:]) * self.weight + self.bias


class ParallelMLP(nn.Module):
    """``members`` MLPs with the same widths, computed together (like ``MLP``, block by block:
    Linear → [norm] → activation → [dropout]).

    ``forward(h)`` takes one input ``(N, d)`` for all members or one per member ``(N, M, d)``
    and returns ``(N, M, widths[-1])``; ``layer(i, h)`` applies block i only.
    """

    def __init__(
        self,
        members: int,
        in_features: int,
        widths: Sequence[int],
        *,
        activation_name: str = "relu",
        dropout: float = 0.0,
        norm: str = "none",
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ConfigError(f"model.norm: {norm!r} is not known ({one_of(NORMS)})")
        self.members = members
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.norms = nn.ModuleList()
        width = in_features
        for out in widths:
            self.weights.append(stacked_parameter(members, width, width, out))
            self.biases.append(stacked_parameter(members, width, out))
            if norm == "batch":
                self.norms.append(_MemberBatchNorm(members, out))
            elif norm == "layer":
                self.norms.append(_MemberLayerNorm(members, out))
            else:
                self.norms.append(nn.Identity())
            width = out
        self.in_features = in_features
        self.out_features = width
        self.act = activation(activation_name)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def __len__(self) -> int:
        return len(self.weights)

    def layer(self, i: int, h: Tensor) -> Tensor:
        h = self.norms[i](stacked_linear(h, self.weights[i], self.biases[i]))
        return self.dropout(self.act(h))

    def forward(self, h: Tensor) -> Tensor:
        for i in range(len(self.weights)):
            h = self.layer(i, h)
        return h

    def member_parameters(self, start: int, stop: int) -> list[Tensor]:
        """Views of members ``start:stop`` in every stacked parameter."""
        views: list[Tensor] = []
        for weight, bias, norm in zip(self.weights, self.biases, self.norms, strict=True):
            views += [weight[start:stop], bias[start:stop]]
            for p in norm.parameters():  # batch norm's are flat (M·d,), layer norm's (M, d)
                views.append(p.view(self.members, -1)[start:stop])
        return views


class TabularInput(nn.Module):
    """Concatenates numeric features with one learned embedding per categorical feature."""

    def __init__(self, n_numeric: int, cardinalities: Sequence[int], embedding_dim: int | None):
        super().__init__()
        self.n_numeric = n_numeric
        self.embeddings = nn.ModuleList(
            nn.Embedding(card, embedding_dim or _embedding_size(card)) for card in cardinalities
        )
        self.out_features = n_numeric + sum(e.embedding_dim for e in self.embeddings)

    def forward(self, x_num: Tensor, x_cat: Tensor | None = None) -> Tensor:
        if not self.embeddings:
            return x_num
        assert x_cat is not None
        parts = [x_num] + [emb(x_cat[:, j]) for j, emb in enumerate(self.embeddings)]
        return torch.cat(parts, dim=1)


def _embedding_size(cardinality: int) -> int:
    """A common rule of thumb: grows like the fourth root of the number of categories."""
    return int(min(32, max(2, round(1.6 * cardinality**0.56))))
