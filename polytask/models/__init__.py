"""Model architectures, registered under the names used in configs (``model.architecture``),
each with its own options (``model.options``), all implementing the ``MultiTaskModel``
protocol. ``model.shared`` means one thing in all of them: the layer widths of the shared trunk,
of each expert, of each task's column or network."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..errors import ConfigError, one_of, parse_options
from .columns import CrossStitch, SoftSharing
from .grouped import GroupedHardSharing
from .hard_sharing import HardSharing
from .heads import Heads, TaskHeads
from .layers import MLP, ParallelMLP, TabularInput
from .mixtures import PLE, MMoE
from .multitask import MixingTable, MultiTaskModel, ParameterGroups, check_parameter_groups

if TYPE_CHECKING:
    from ..config import ModelConfig

#: A custom shared trunk: a module, or a factory called with the encoded input width.
Trunk = nn.Module | Callable[[int], nn.Module]


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Architecture:
    """A registered architecture: ``build(spec, options, inputs)`` makes the model."""

    name: str
    description: str
    Options: type[BaseModel]
    build: Callable[..., MultiTaskModel]


@dataclass(frozen=True)
class Inputs:
    """What every builder needs besides the config: the data's shape and per-task heads."""

    n_numeric: int
    cardinalities: Sequence[int]
    out_dims: Mapping[str, int]
    heads: Mapping[str, list[int]]  # every task's head hidden widths
    trunk: Trunk | None


ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(
    name: str, description: str, options: type[BaseModel] = NoOptions
) -> Callable[[Callable[..., MultiTaskModel]], Callable[..., MultiTaskModel]]:
    def decorate(build: Callable[..., MultiTaskModel]) -> Callable[..., MultiTaskModel]:
        ARCHITECTURES[name] = Architecture(name, description, options, build)
        return build

    return decorate


def validate_architecture_options(name: str, options: Mapping[str, Any]) -> BaseModel:
    """The architecture's options model, or a ConfigError naming the option and the allowed."""
    if name not in ARCHITECTURES:
        raise ConfigError(
            f"model.architecture: {name!r} is not an architecture ({one_of(ARCHITECTURES)})"
        )
    return parse_options(ARCHITECTURES[name].Options, options, field="model.options", owner=name)


def _encoder(spec: ModelConfig, inputs: Inputs) -> TabularInput:
    return TabularInput(inputs.n_numeric, inputs.cardinalities, spec.embedding_dim)


def _layers(spec: ModelConfig) -> dict[str, Any]:
    return {"activation_name": spec.activation, "dropout": spec.dropout, "norm": spec.norm}


def _needs_layers(spec: ModelConfig, what: str) -> None:
    if not spec.shared:
        raise ConfigError(f"model.shared: {spec.architecture}'s {what} need at least one layer")


def _no_trunk(spec: ModelConfig, inputs: Inputs) -> None:
    if inputs.trunk is not None:
        raise ConfigError(
            f"a custom trunk replaces hard_sharing's shared trunk; {spec.architecture!r} has none"
        )


@register_architecture(
    "hard_sharing",
    "one shared MLP trunk, one MLP head per task (model.groups: one trunk per group of tasks)",
)
def build_hard_sharing(spec: ModelConfig, options: BaseModel, inputs: Inputs) -> MultiTaskModel:
    if spec.groups is not None:
        return _grouped(spec, inputs)
    encoder = _encoder(spec, inputs)
    trunk = inputs.trunk
    if trunk is not None and not isinstance(trunk, nn.Module):
        trunk = trunk(encoder.out_features)
    if trunk is None:
        trunk = MLP(encoder.out_features, spec.shared, **_layers(spec))
    return HardSharing(
        encoder=encoder,
        trunk=trunk,
        out_dims=inputs.out_dims,
        head=spec.head,
        heads=inputs.heads,
        activation_name=spec.activation,
        head_dropout=spec.dropout,
        linear_path=spec.linear_path,
    )


def _grouped(spec: ModelConfig, inputs: Inputs) -> MultiTaskModel:
    """``model.groups``: one encoder and trunk per group of tasks (see ``models.grouped``)."""
    if inputs.trunk is not None:
        raise ConfigError("model.groups: a custom trunk cannot be combined with task groups")
    assert spec.groups is not None
    return GroupedHardSharing(
        n_numeric=inputs.n_numeric,
        cardinalities=inputs.cardinalities,
        embedding_dim=spec.embedding_dim,
        trunk=spec.shared,
        groups=spec.groups,
        out_dims=inputs.out_dims,
        heads=inputs.heads,
        **_layers(spec),
    )


class MMoEOptions(NoOptions):
    n_experts: int = Field(4, ge=1)


@register_architecture(
    "mmoe", "shared experts, a softmax gate per task over them (Ma et al. 2018)", MMoEOptions
)
def build_mmoe(spec: ModelConfig, options: MMoEOptions, inputs: Inputs) -> MultiTaskModel:
    _no_trunk(spec, inputs)
    _needs_layers(spec, "experts")
    return MMoE(
        encoder=_encoder(spec, inputs),
        n_experts=options.n_experts,
        expert=spec.shared,
        out_dims=inputs.out_dims,
        heads=inputs.heads,
        **_layers(spec),
    )


class CGCOptions(NoOptions):
    n_shared_experts: int = Field(2, ge=1)
    n_task_experts: int = Field(1, ge=1)


class PLEOptions(CGCOptions):
    levels: int = Field(2, ge=1)


def _ple(spec: ModelConfig, options: CGCOptions, inputs: Inputs, levels: int) -> MultiTaskModel:
    _no_trunk(spec, inputs)
    _needs_layers(spec, "experts")
    return PLE(
        encoder=_encoder(spec, inputs),
        levels=levels,
        n_shared_experts=options.n_shared_experts,
        n_task_experts=options.n_task_experts,
        expert=spec.shared,
        out_dims=inputs.out_dims,
        heads=inputs.heads,
        **_layers(spec),
    )


@register_architecture(
    "cgc",
    "shared and task-specific experts, a gate per task over its own and the shared (one PLE level)",
    CGCOptions,
)
def build_cgc(spec: ModelConfig, options: CGCOptions, inputs: Inputs) -> MultiTaskModel:
    return _ple(spec, options, inputs, levels=1)


@register_architecture(
    "ple",
    "progressive layered extraction: CGC levels stacked, shared gates between (Tang et al. 2020)",
    PLEOptions,
)
def build_ple(spec: ModelConfig, options: PLEOptions, inputs: Inputs) -> MultiTaskModel:
    return _ple(spec, options, inputs, levels=options.levels)


class CrossStitchOptions(NoOptions):
    self_weight: float = Field(0.9, ge=0.0, le=1.0)


@register_architecture(
    "cross_stitch",
    "a column per task, learned mixing between columns after each layer (Misra et al. 2016)",
    CrossStitchOptions,
)
def build_cross_stitch(
    spec: ModelConfig, options: CrossStitchOptions, inputs: Inputs
) -> MultiTaskModel:
    _no_trunk(spec, inputs)
    _needs_layers(spec, "columns")
    return CrossStitch(
        encoder=_encoder(spec, inputs),
        column=spec.shared,
        out_dims=inputs.out_dims,
        heads=inputs.heads,
        self_weight=options.self_weight,
        **_layers(spec),
    )


class SoftSharingOptions(NoOptions):
    penalty: float = Field(0.01, ge=0.0)


@register_architecture(
    "soft_sharing",
    "a network per task, an L2 penalty λ pulling corresponding layers together (λ=0: STL)",
    SoftSharingOptions,
)
def build_soft_sharing(
    spec: ModelConfig, options: SoftSharingOptions, inputs: Inputs
) -> MultiTaskModel:
    _no_trunk(spec, inputs)
    _needs_layers(spec, "task networks")
    n = len(inputs.out_dims) if inputs.cardinalities else 1
    return SoftSharing(
        encoders=[_encoder(spec, inputs) for _ in range(n)],
        body=spec.shared,
        out_dims=inputs.out_dims,
        heads=inputs.heads,
        penalty=options.penalty,
        **_layers(spec),
    )


def build_model(
    spec: ModelConfig,
    *,
    n_numeric: int,
    cardinalities: Sequence[int],
    out_dims: Mapping[str, int],
    heads: Mapping[str, Sequence[int]] | None = None,
    trunk: Trunk | None = None,
) -> MultiTaskModel:
    """Build the architecture named by ``spec.architecture`` with ``spec.options``; ``heads``
    overrides ``spec.head`` for some tasks (``tasks[].head``)."""
    arch = ARCHITECTURES[spec.architecture]
    options = validate_architecture_options(spec.architecture, spec.options)
    widths = {name: list((heads or {}).get(name, spec.head)) for name in out_dims}
    inputs = Inputs(n_numeric, list(cardinalities), dict(out_dims), widths, trunk)
    return arch.build(spec, options, inputs)


__all__ = [
    "ARCHITECTURES",
    "MLP",
    "Architecture",
    "CrossStitch",
    "GroupedHardSharing",
    "HardSharing",
    "Heads",
    "MMoE",
    "MixingTable",
    "MultiTaskModel",
    "PLE",
    "ParallelMLP",
    "ParameterGroups",
    "SoftSharing",
    "TabularInput",
    "TaskHeads",
    "Trunk",
    "build_model",
    "check_parameter_groups",
    "register_architecture",
    "validate_architecture_options",
]
