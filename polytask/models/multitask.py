"""The multi-task network: input encoder → shared trunk h(x; φ) → per-task heads f_t(h; θ_t)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .heads import TaskHeads
from .layers import MLP, TabularInput


class MultiTaskModel(nn.Module):
    """Shared representation plus one head per task; ``forward`` returns ``{task: output}``.

    ``trunk`` is any ``nn.Module`` mapping the encoded input ``(N, in_features)`` to shared
    features ``(N, d)``: polytask's MLP or a user's own module.
    """

    def __init__(
        self,
        *,
        encoder: TabularInput,
        trunk: nn.Module,
        out_dims: Mapping[str, int],
        head: Sequence[int] = (),
        activation_name: str = "relu",
        head_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.trunk = trunk
        self.representation_size = _output_width(trunk, encoder.out_features)
        self.heads = TaskHeads(
            self.representation_size,
            head,
            out_dims,
            activation_name=activation_name,
            dropout=head_dropout,
        )

    @property
    def task_names(self) -> list[str]:
        return list(self.heads.names)

    def represent(self, x_num: Tensor, x_cat: Tensor | None = None) -> Tensor:
        """The shared representation h(x; φ)."""
        return self.trunk(self.encoder(x_num, x_cat))

    def forward_packed(self, x_num: Tensor, x_cat: Tensor | None = None) -> Tensor:
        """All task outputs in one tensor ``(N, T, max_out)`` (see ``TaskHeads``)."""
        return self.heads(self.represent(x_num, x_cat))

    def forward(
        self,
        x_num: Tensor,
        x_cat: Tensor | None = None,
        *,
        packed: bool = False,
        features: bool = False,
    ) -> dict[str, Tensor] | Tensor | tuple[dict[str, Tensor] | Tensor, Tensor]:
        """``{task: output}``, or the packed tensor when ``packed`` (the training loop's form).

        With ``features`` the shared representation h comes out too, as ``(outputs, h)``: the
        representation-level balancers need it, and it must leave through ``forward`` so that a
        ``DistributedDataParallel`` wrapper sees the one graph.
        """
        h = self.represent(x_num, x_cat)
        out = self.heads(h)
        out = out if packed else self.heads.unpack(out)
        return (out, h) if features else out

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters φ of the shared encoder and trunk."""
        return [*self.encoder.parameters(), *self.trunk.parameters()]

    def head_parameters(self) -> list[nn.Parameter]:
        """All task-specific parameters θ (stacked over tasks)."""
        return list(self.heads.parameters())

    def task_parameters(self, name: str) -> list[Tensor]:
        """Task ``name``'s head parameters θ_t, as views into the stacked head tensors."""
        if name not in self.heads.names:
            raise KeyError(f"no task named {name!r} (tasks: {', '.join(self.heads.names)})")
        return self.heads.task_parameters(name)


def _output_width(trunk: nn.Module, in_features: int) -> int:
    """The trunk's feature width, found by running it once on a dummy batch."""
    if isinstance(trunk, MLP):
        return trunk.out_features
    was_training = trunk.training
    device = next(trunk.parameters(), torch.empty(0)).device
    trunk.eval()
    try:
        with torch.no_grad():
            out = trunk(torch.zeros(2, in_features, device=device))
    except Exception as exc:
        raise ConfigError(
            f"the custom trunk does not accept input of width {in_features}: {exc}"
        ) from exc
    finally:
        trunk.train(was_training)
    if out.dim() != 2:
        raise ConfigError(
            f"the custom trunk must return (N, d) features, got shape {tuple(out.shape)}"
        )
    return int(out.shape[1])
