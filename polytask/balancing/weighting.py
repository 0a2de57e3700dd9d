"""Loss-weighting balancers: the step is the gradient of a weighted sum of task losses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from ..losses import TaskLossValues
from ..tasks import Task
from .base import Balancer, register_balancer

# A Python-float weight times a tensor of these dtypes is computed in that dtype, so a tensor of
# weights gives the very same products.
_FULL_PRECISION = (torch.float32, torch.float64)


@register_balancer
class FixedWeights(Balancer):
    """L = Σ_t α_t L_t with the weights α_t declared on the tasks (default 1)."""

    name = "fixed"
    description = "static weighted sum of task losses, α from the task specs"
    reference = "Caruana 1997"

    def __init__(self, tasks: Sequence[Task], options: BaseModel | None = None) -> None:
        super().__init__(tasks, options)
        self._weight_cache: dict[tuple[Any, ...], tuple[Tensor, Tensor | None]] = {}

    def backward(self, losses: Mapping[str, Tensor], *, model: nn.Module) -> dict[str, float]:
        weights = {t.name: t.weight for t in self.tasks if t.name in losses}
        if isinstance(losses, TaskLossValues) and losses.vector.dtype in _FULL_PRECISION:
            # The same weighted sum on the loss vector: one multiply, not one per task.
            alpha, gather = self._weights_for(losses, weights)
            vector = losses.vector if gather is None else losses.vector.index_select(0, gather)
            total = (vector * alpha).sum()
        else:
            total = torch.stack([losses[n] * w for n, w in weights.items()]).sum()
        total.backward()
        return weights

    def _weights_for(
        self, losses: TaskLossValues, weights: dict[str, float]
    ) -> tuple[Tensor, Tensor | None]:
        """α as a tensor in the order of ``weights`` (the tasks' order, as in the sum above),
        and the positions of those tasks in ``losses.vector`` unless they are already 0..T-1."""
        vector = losses.vector
        key = (losses.names, tuple(weights.items()), vector.device, vector.dtype)
        cached = self._weight_cache.get(key)
        if cached is None:
            alpha = torch.tensor(list(weights.values()), dtype=vector.dtype, device=vector.device)
            positions = [losses.names.index(n) for n in weights]
            gather = None
            if positions != list(range(len(losses.names))):
                gather = torch.tensor(positions, dtype=torch.long, device=vector.device)
            cached = self._weight_cache[key] = (alpha, gather)
        return cached
