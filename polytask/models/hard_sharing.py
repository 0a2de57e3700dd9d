"""Hard parameter sharing: input encoder → shared trunk h(x; φ) → per-task heads f_t(h; θ_t),
optionally plus a linear path from the encoded input to every head's output (wide and deep)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .heads import Heads
from .layers import MLP, TabularInput, stacked_linear
from .multitask import MultiTaskModel, ParameterGroups


class HardSharing(MultiTaskModel):
    """Shared representation plus one head per task.

    ``trunk`` is any ``nn.Module`` mapping the encoded input ``(N, in_features)`` to shared
    features ``(N, d)``: polytask's MLP or a user's own module. ``head`` gives every head's
    hidden widths, ``heads`` overrides them per task. With ``linear_path`` each task's output
    also gets a linear map of the encoded input e, ``e V_t`` (V_t starts at zero).
    """

    representation = (
        "the trunk's output h (N, d); with linear_path and categorical embeddings, [h, e]: the "
        "encoded input the linear path reads"
    )

    def __init__(
        self,
        *,
        encoder: TabularInput,
        trunk: nn.Module,
        out_dims: Mapping[str, int],
        head: Sequence[int] = (),
        heads: Mapping[str, Sequence[int]] | None = None,
        activation_name: str = "relu",
        head_dropout: float = 0.0,
        linear_path: bool = False,
    ) -> None:
        super().__init__(out_dims)
        self.encoder = encoder
        self.trunk = trunk
        self.representation_size = _output_width(trunk, encoder.out_features)
        widths = {n: list((heads or {}).get(n, head)) for n in self.task_names}
        self.heads = Heads(
            self.representation_size,
            widths,
            out_dims,
            activation_name=activation_name,
            dropout=head_dropout,
        )
        shape = (len(self.task_names), encoder.out_features, self.max_out)
        self.linear = nn.Parameter(torch.zeros(shape)) if linear_path else None
        # z carries e only where gradients flow into e (embeddings), see ``outputs_and_features``
        self._input_in_z = linear_path and any(True for _ in encoder.parameters())

    def outputs_and_features(
        self, x_num: Tensor, x_cat: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        e = self.encoder(x_num, x_cat)
        h = self.trunk(e)
        if self.linear is None:
            return self.heads(h), h
        z = h
        if self._input_in_z:  # the heads and the linear path read their parts of one z
            z = torch.cat([h, e], dim=1)
            h, e = z[:, : self.representation_size], z[:, self.representation_size :]
        return self.heads(h) + stacked_linear(e, self.linear, None), z

    def output_map(self, slots: Tensor) -> Tensor | None:
        weight = self.heads.linear_weight()
        if weight is None:
            return None
        # linear heads: outputs_t = z W_t (+ bias), with z = [h, x] when the inputs feed them
        weight = weight.index_select(0, slots)
        if self._input_in_z:
            assert self.linear is not None
            weight = torch.cat([weight, self.linear.index_select(0, slots)], dim=1)
        return weight

    def parameter_groups(self) -> ParameterGroups:
        tasks = {}
        for t, name in enumerate(self.task_names):
            own = self.heads.task_parameters(name)
            tasks[name] = own if self.linear is None else [*own, self.linear[t]]
        shared = [*self.encoder.parameters(), *self.trunk.parameters()]
        return ParameterGroups(shared=shared, tasks=tasks)


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
