"""Loss-weighting balancers: the step is the gradient of a weighted sum of task losses."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .base import Balancer, register_balancer


@register_balancer
class FixedWeights(Balancer):
    """L = Σ_t α_t L_t with the weights α_t declared on the tasks (default 1)."""

    name = "fixed"
    description = "static weighted sum of task losses, α from the task specs"
    reference = "Caruana 1997"

    def backward(
        self, losses: Mapping[str, Tensor], *, model: nn.Module, features: Tensor | None = None
    ) -> dict[str, float]:
        weights = {t.name: t.weight for t in self.tasks if t.name in losses}
        total = torch.stack([losses[n] * w for n, w in weights.items()]).sum()
        total.backward()
        return weights
