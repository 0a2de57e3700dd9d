"""Per-task losses over labelled rows only, computed for all tasks in a few tensor operations.

Each task's loss is the mean of its element losses over the rows where its label is present;
a masked label contributes exactly nothing, not even through NaN arithmetic. Tasks whose output
is one number and whose loss is the same are grouped and computed as one matrix operation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .tasks import Task

ElementLoss = Callable[[Tensor, Tensor], Tensor]

ELEMENT_LOSSES: dict[str, ElementLoss] = {
    "mse": lambda out, y: (out - y) ** 2,
    "mae": lambda out, y: (out - y).abs(),
    "huber": lambda out, y: F.huber_loss(out, y, reduction="none"),
    "bce": lambda out, y: F.binary_cross_entropy_with_logits(out, y, reduction="none"),
    "poisson": lambda out, y: torch.exp(out) - y * out,  # Poisson NLL with a log link, no const
    "ce": lambda out, y: F.cross_entropy(out, y, reduction="none"),
}


def masked_mean(values: Tensor, mask: Tensor, dim: int = 0) -> Tensor:
    """Mean of ``values`` where ``mask`` is True along ``dim``; 0 (with zero gradient) if none."""
    kept = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return kept.sum(dim) / mask.sum(dim).clamp(min=1)


class TaskLosses:
    """Computes ``{task: loss}`` from packed head outputs ``(N, T, max_out)``."""

    def __init__(self, tasks: Sequence[Task], order: Sequence[str], out_dims: Mapping[str, int]):
        by_name = {t.name: t for t in tasks}
        self.order = list(order)
        self._groups: dict[str, list[str]] = {}
        self._vector: list[str] = []
        self._kinds = {name: by_name[name].kind for name in self.order}
        self._loss = {name: by_name[name].loss_name for name in self.order}
        self._out = dict(out_dims)
        for name in self.order:
            if self._kinds[name] in ("regression", "binary", "count"):
                self._groups.setdefault(self._loss[name], []).append(name)
            else:
                self._vector.append(name)
        self._index_cache: dict[tuple[str, torch.device], Tensor] = {}

    def _index(self, loss: str, device: torch.device) -> Tensor:
        key = (loss, device)
        if key not in self._index_cache:
            idx = [self.order.index(n) for n in self._groups[loss]]
            self._index_cache[key] = torch.tensor(idx, dtype=torch.long, device=device)
        return self._index_cache[key]

    def __call__(
        self, packed: Tensor, targets: Mapping[str, Tensor], masks: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = {}
        for loss, names in self._groups.items():
            out = packed[:, :, 0].index_select(1, self._index(loss, packed.device))
            y = torch.stack([targets[n] for n in names], dim=1).to(out.dtype)
            m = torch.stack([masks[n] for n in names], dim=1)
            values = masked_mean(ELEMENT_LOSSES[loss](out, y), m)
            losses.update(zip(names, values.unbind(0), strict=True))
        for name in self._vector:
            t = self.order.index(name)
            out = packed[:, t, : self._out[name]]
            if self._kinds[name] == "multiclass":
                element = ELEMENT_LOSSES["ce"](out, targets[name])
                losses[name] = masked_mean(element, masks[name])
            else:  # multilabel: mean over labelled (row, label) cells
                element = ELEMENT_LOSSES["bce"](out, targets[name])
                mask = masks[name]
                losses[name] = masked_mean(element.flatten(), mask.flatten())
        return {name: losses[name] for name in self.order}
