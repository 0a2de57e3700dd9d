"""Building blocks: the MLP trunk, the tabular input (numeric + categorical embeddings)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
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
