"""One network (column) per task: cross-stitch (Misra et al. 2016) mixes the columns after each
layer with learned weights; soft sharing keeps them apart and pulls corresponding layers
together with a penalty λ Σ_t ‖W_t − W̄‖² (λ = 0: independent single-task networks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .heads import Heads
from .layers import ParallelMLP, TabularInput
from .multitask import MixingTable, MultiTaskModel, ParameterGroups


class CrossStitch(MultiTaskModel):
    """A column per task (widths ``model.shared``); after layer l task t's column continues
    from Σ_s α^l_ts a^l_s, the layer's outputs mixed by a learned T×T matrix α^l, initialised
    with ``self_weight`` on the diagonal and the rest of each row split evenly."""

    representation = (
        "the columns' last-layer outputs before the last cross-stitch (N, T·d): every task "
        "reads all of them"
    )

    def __init__(
        self,
        *,
        encoder: TabularInput,
        column: Sequence[int],
        out_dims: Mapping[str, int],
        heads: Mapping[str, Sequence[int]],
        self_weight: float = 0.9,
        activation_name: str = "relu",
        dropout: float = 0.0,
        norm: str = "none",
    ) -> None:
        super().__init__(out_dims)
        n = len(self.task_names)
        self.encoder = encoder
        self.columns = ParallelMLP(
            n,
            encoder.out_features,
            column,
            activation_name=activation_name,
            dropout=dropout,
            norm=norm,
        )
        other = (1.0 - self_weight) / (n - 1) if n > 1 else 0.0
        init = torch.full((n, n), other) + (1.0 if n == 1 else self_weight - other) * torch.eye(n)
        self.mixing_weights = nn.ParameterList(nn.Parameter(init.clone()) for _ in column)
        self.heads = Heads(
            self.columns.out_features,
            heads,
            out_dims,
            activation_name=activation_name,
            dropout=dropout,
        )

    def outputs_and_features(
        self, x_num: Tensor, x_cat: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        x = self.encoder(x_num, x_cat)
        last = len(self.columns) - 1
        z = x
        for layer in range(last + 1):
            a = self.columns.layer(layer, x)  # (N, T, d)
            if layer == last:
                z = a.flatten(1)
                a = z.view(a.shape)
            x = torch.einsum("ts,nsd->ntd", self.mixing_weights[layer], a)
        return self.heads(x), z

    def mixing(self, x_num: Tensor, x_cat: Tensor | None = None) -> dict[str, MixingTable]:
        names = list(self.task_names)
        return {
            f"layer {i + 1} (row: into task, column: from task)": MixingTable(
                names, names, alpha.detach().clone()
            )
            for i, alpha in enumerate(self.mixing_weights)
        }

    def parameter_groups(self) -> ParameterGroups:
        # the last cross-stitch's row t feeds task t's head alone; every other α reaches all
        last = self.mixing_weights[len(self.mixing_weights) - 1]
        tasks = {
            name: [last[t], *self.heads.task_parameters(name)]
            for t, name in enumerate(self.task_names)
        }
        shared = [*self.encoder.parameters(), *self.columns.parameters()]
        other = list(self.mixing_weights)[:-1]
        return ParameterGroups(shared=shared, tasks=tasks, other=other)


class SoftSharing(MultiTaskModel):
    """A network per task (encoder with its own embeddings, MLP of widths ``model.shared``,
    head); ``penalty`` λ pulls the corresponding embedding tables and layer weights and biases
    of the T networks toward their mean. The heads are not pulled: their outputs differ in
    meaning from task to task.

    The penalty is not a task loss: ``add_penalty_gradient`` adds its gradient 2λ(W_t − W̄)
    after the balancer, as weight decay is added by the optimizer, so λ means the same under
    every balancer.
    """

    representation = (
        "each task network's last hidden layer (N, T·d); no parameter serves two tasks, so an "
        "aggregator has nothing to combine and leaves each network its own loss's gradient"
    )

    def __init__(
        self,
        *,
        encoders: Sequence[TabularInput],
        body: Sequence[int],
        out_dims: Mapping[str, int],
        heads: Mapping[str, Sequence[int]],
        penalty: float,
        activation_name: str = "relu",
        dropout: float = 0.0,
        norm: str = "none",
    ) -> None:
        super().__init__(out_dims)
        n = len(self.task_names)
        # one encoder per task when it has embeddings to learn; else the one shared parameterless
        self.encoders = nn.ModuleList(encoders)
        self.networks = ParallelMLP(
            n,
            encoders[0].out_features,
            body,
            activation_name=activation_name,
            dropout=dropout,
            norm=norm,
        )
        self.heads = Heads(
            self.networks.out_features,
            heads,
            out_dims,
            activation_name=activation_name,
            dropout=dropout,
        )
        self.penalty = penalty

    def outputs_and_features(
        self, x_num: Tensor, x_cat: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        if len(self.encoders) == 1:
            e = self.encoders[0](x_num, x_cat)  # (N, d): the same input for every network
        else:
            e = torch.stack([enc(x_num, x_cat) for enc in self.encoders], dim=1)
        h = self.networks(e)
        z = h.flatten(1)
        return self.heads(z.view(h.shape)), z

    def _pulled(self) -> list[Tensor]:
        """Each set of corresponding tensors of the T networks, stacked ``(T, …)``."""
        n = len(self.task_names)
        sets = [p.view(n, -1) for p in self.networks.parameters()]
        if len(self.encoders) > 1:
            per_task = [list(enc.parameters()) for enc in self.encoders]
            sets += [torch.stack(group) for group in zip(*per_task, strict=True)]
        return sets

    def penalty_value(self) -> Tensor:
        """λ Σ_t ‖W_t − W̄‖², summed over the pulled layers."""
        terms = [(w - w.mean(0)).pow(2).sum() for w in self._pulled()]
        return self.penalty * torch.stack(terms).sum() if terms else torch.zeros(())

    @torch.no_grad()
    def add_penalty_gradient(self) -> None:
        # ∂/∂W_t λ Σ_s ‖W_s − W̄‖² = 2λ (W_t − W̄): the W̄ terms sum to zero
        if self.penalty == 0:
            return
        n = len(self.task_names)
        for p in self.networks.parameters():  # stacked over the networks
            stacked = p.view(n, -1)
            _accumulate(p, (2 * self.penalty * (stacked - stacked.mean(0))).view_as(p))
        if len(self.encoders) > 1:
            for group in zip(*(list(enc.parameters()) for enc in self.encoders), strict=True):
                mean = torch.stack(group).mean(0)
                for p in group:
                    _accumulate(p, 2 * self.penalty * (p - mean))

    def parameter_groups(self) -> ParameterGroups:
        tasks = {}
        for t, name in enumerate(self.task_names):
            own = list(self.encoders[t].parameters()) if len(self.encoders) > 1 else []
            own += self.networks.member_parameters(t, t + 1)
            tasks[name] = [*own, *self.heads.task_parameters(name)]
        shared = list(self.encoders[0].parameters()) if len(self.encoders) == 1 else []
        return ParameterGroups(shared=shared, tasks=tasks)


def _accumulate(p: Tensor, grad: Tensor) -> None:
    p.grad = grad if p.grad is None else p.grad + grad
