"""Model architectures, registered under the names used in configs (``model.architecture``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from torch import nn

from .heads import TaskHeads
from .layers import MLP, TabularInput
from .multitask import MultiTaskModel

if TYPE_CHECKING:
    from ..config import ModelConfig

Builder = Callable[..., MultiTaskModel]
#: A custom shared trunk: a module, or a factory called with the encoded input width.
Trunk = nn.Module | Callable[[int], nn.Module]
ARCHITECTURES: dict[str, Builder] = {}
ARCHITECTURE_HELP: dict[str, str] = {}


def register_architecture(name: str, description: str) -> Callable[[Builder], Builder]:
    def decorate(builder: Builder) -> Builder:
        ARCHITECTURES[name] = builder
        ARCHITECTURE_HELP[name] = description
        return builder

    return decorate


@register_architecture("hard_sharing", "one shared MLP trunk, one MLP head per task")
def build_hard_sharing(
    spec: ModelConfig,
    *,
    n_numeric: int,
    cardinalities: Sequence[int],
    out_dims: Mapping[str, int],
    trunk: Trunk | None = None,
) -> MultiTaskModel:
    encoder = TabularInput(n_numeric, cardinalities, spec.embedding_dim)
    if trunk is not None and not isinstance(trunk, nn.Module):
        trunk = trunk(encoder.out_features)
    if trunk is None:
        trunk = MLP(
            encoder.out_features,
            spec.shared,
            activation_name=spec.activation,
            dropout=spec.dropout,
            norm=spec.norm,
        )
    return MultiTaskModel(
        encoder=encoder,
        trunk=trunk,
        out_dims=out_dims,
        head=spec.head,
        activation_name=spec.activation,
        head_dropout=spec.dropout,
    )


def build_model(
    spec: ModelConfig,
    *,
    n_numeric: int,
    cardinalities: Sequence[int],
    out_dims: Mapping[str, int],
    trunk: Trunk | None = None,
) -> MultiTaskModel:
    """Build the architecture named by ``spec.architecture``."""
    return ARCHITECTURES[spec.architecture](
        spec, n_numeric=n_numeric, cardinalities=cardinalities, out_dims=out_dims, trunk=trunk
    )


__all__ = [
    "ARCHITECTURES",
    "MLP",
    "MultiTaskModel",
    "TabularInput",
    "TaskHeads",
    "build_model",
    "register_architecture",
]
