"""The Balancer interface: the joint-optimization strategy of a multi-task step.

A balancer receives the per-task losses of a mini-batch and leaves gradients in ``.grad`` of the
model's parameters. Loss-weighting methods (the step is a weighted sum) and gradient-aggregation
methods (per-task gradients combined into one update) share this interface and one registry.

A task with no labelled row in the batch has a loss of exactly 0 with zero gradient
(``losses.masked_mean``); every balancer treats such a task as absent from that step.

Under ``torchrun`` (DDP, W ranks) each loss's *value* is the task's masked mean over all ranks'
batches, the same on every rank, so state a balancer derives from loss values stays the same on
every rank; its *gradient* is W times this rank's part of that mean's gradient, so DDP's average
over ranks is the gradient over the union batch. Whatever a balancer computes from this rank's
activations instead must be reduced over the ranks (``batch_norms`` for gradient norms at z).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from ..errors import ConfigError, one_of, parse_options
from ..tasks import Task


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Balancer:
    """Base class. Subclasses set ``name``, ``description``, ``Options`` and ``backward``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = NoOptions
    needs_features: ClassVar[bool] = False
    """True when ``backward`` needs the model's representation z (passed as ``features``;
    ``models.multitask`` says what z is for each architecture)."""
    sets_grads: ClassVar[bool] = False
    """True when ``backward`` writes ``.grad`` itself rather than through one ``.backward()``
    (under DDP the trainer then skips DDP's gradient hooks and averages the gradients itself)."""

    def __init__(self, tasks: Sequence[Task], options: BaseModel | None = None) -> None:
        self.tasks = list(tasks)
        self.options = options if options is not None else self.Options()

    def parameters(self) -> list[nn.Parameter]:
        """The balancer's own learnable parameters (optimized beside the model's)."""
        return []

    def backward(
        self,
        losses: Mapping[str, Tensor],
        *,
        model: nn.Module,
        features: Tensor | None = None,
        outputs: Tensor | None = None,
    ) -> dict[str, float]:
        """Accumulate the step's gradients; return the task weights used (for logging).

        ``features`` is the model's representation z (given when ``needs_features``);
        ``outputs`` the packed head outputs ``(N, T, o)`` the losses were computed from, which
        lets the Jacobian engine skip the losses in its batched backward.
        """
        raise NotImplementedError

    def end_epoch(self, train_losses: Mapping[str, float]) -> None:
        """Called by the trainer after each epoch with the epoch's mean training losses."""
        return None

    def _weighted(self, losses: Mapping[str, Tensor]) -> tuple[list[str], Tensor]:
        """The task names in ``losses`` order and their losses times α_t, stacked ``(T,)``."""
        names = list(losses)
        stacked = torch.stack([losses[n] for n in names])
        return names, stacked * self._alphas(names, stacked)

    def _alphas(self, names: Sequence[str], like: Tensor) -> Tensor:
        """The declared task weights α_t, as a tensor in the order of ``names``."""
        by_name = {t.name: t.weight for t in self.tasks}
        return torch.tensor([by_name[n] for n in names], dtype=like.dtype, device=like.device)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


def batch_norms(rows: Tensor) -> Tensor:
    """The norms of the rows of a Jacobian ``(T, …)`` taken w.r.t. this rank's activations
    (such as z), over the union batch of all ranks under DDP.

    Each rank's rows are W times its part of the union batch's gradient (see the module
    docstring), so the squared norms summed over ranks are divided by W².
    """
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    world = torch.distributed.get_world_size() if distributed else 1
    if world == 1:
        return rows.flatten(1).norm(dim=1)
    squares = rows.flatten(1).pow(2).sum(1)
    torch.distributed.all_reduce(squares)
    return squares.sqrt() / world


BALANCERS: dict[str, type[Balancer]] = {}


def register_balancer(cls: type[Balancer]) -> type[Balancer]:
    """Class decorator: make a balancer available under ``cls.name`` in configs."""
    BALANCERS[cls.name] = cls
    return cls


def validate_balancer_options(name: str, options: Mapping[str, Any]) -> BaseModel:
    """The balancer's options model, or a ConfigError naming the option and the allowed ones."""
    if name not in BALANCERS:
        raise ConfigError(f"train.balancer: {name!r} is not a balancer ({one_of(BALANCERS)})")
    return parse_options(
        BALANCERS[name].Options, options, field="train.balancer_options", owner=name
    )


def make_balancer(
    name: str, tasks: Sequence[Task], options: Mapping[str, Any] | None = None
) -> Balancer:
    """Instantiate a registered balancer by name."""
    parsed = validate_balancer_options(name, options or {})
    return BALANCERS[name](tasks, parsed)


BalancerFactory = Callable[[Sequence[Task]], Balancer]
