"""Per-task losses over labelled rows only, computed for all tasks in a few tensor operations.

Each task's loss is the mean of its element losses over the rows where its label is present;
a masked label contributes exactly nothing, not even through NaN arithmetic. Tasks whose output
is one number and whose loss is the same are grouped and computed as one matrix operation, and
so are multiclass tasks with the same number of classes; the losses come back as one vector
(``TaskLossValues``), so the cost of a step does not grow with the number of tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .data import stack_entries
from .tasks import Task

ElementLoss = Callable[[Tensor, Tensor], Tensor]


def _poisson_nll(out: Tensor, y: Tensor) -> Tensor:
    """−log Poisson(y | rate e^out), the full negative log-likelihood (≥ 0, like every loss here:
    the balancers that take logs of losses or learn scales against them rely on it).

    Written as ½ deviance + a term of y alone, both ≥ 0 even in float32 for large counts:
    e^out − y·out + log y! = y(expm1(d) − d) + [log y! + y − y log y], d = out − log y.
    """
    positive = y > 0
    safe = torch.where(positive, y, torch.ones((), dtype=y.dtype, device=y.device))
    d = out - safe.log()
    variable = torch.where(positive, safe * (torch.expm1(d) - d), torch.exp(out))
    constant = (torch.lgamma(y + 1) + y - torch.xlogy(y, y)).clamp_min(0)
    return variable + constant


ELEMENT_LOSSES: dict[str, ElementLoss] = {
    "mse": lambda out, y: (out - y) ** 2,
    "mae": lambda out, y: (out - y).abs(),
    "huber": lambda out, y: F.huber_loss(out, y, reduction="none"),
    "bce": lambda out, y: F.binary_cross_entropy_with_logits(out, y, reduction="none"),
    "poisson": _poisson_nll,  # log link: the head outputs the log-rate
    "ce": lambda out, y: F.cross_entropy(out, y, reduction="none"),
}


def masked_mean(values: Tensor, mask: Tensor, dim: int = 0) -> Tensor:
    """Mean of ``values`` where ``mask`` is True along ``dim``; 0 (with zero gradient) if none."""
    kept = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return kept.sum(dim) / mask.sum(dim).clamp(min=1)


def _labelled(target: Tensor, mask: Tensor) -> Tensor:
    """``target`` with unlabelled entries set to 0, so whatever they held (NaN, an out-of-range
    class code) reaches neither the loss nor, through ``0 * NaN``, the gradient."""
    return torch.where(mask, target, torch.zeros((), dtype=target.dtype, device=target.device))


class TaskLossValues(Mapping[str, Tensor]):
    """``{task: loss}`` kept as one vector: ``vector[i]`` is the loss of task ``names[i]``.

    Entries are views of ``vector`` (made together on first access), so a balancer that reads
    task by task builds the same graph as with separate scalars, while one that treats all
    tasks alike can use ``vector`` in one operation instead of one per task.
    """

    __slots__ = ("names", "vector", "_index", "_entries")

    def __init__(self, names: tuple[str, ...], vector: Tensor, index: Mapping[str, int]) -> None:
        self.names = names
        self.vector = vector
        self._index = index
        self._entries: dict[str, Tensor] | None = None

    def __getitem__(self, name: str) -> Tensor:
        if self._entries is None:
            self._entries = dict(zip(self.names, self.vector.unbind(0), strict=True))
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return repr(dict(self))


class TaskLosses:
    """Computes ``{task: loss}`` from packed head outputs ``(N, T, max_out)``.

    Tasks are computed in groups, each in a fixed number of tensor operations: one-number tasks
    by loss, multiclass tasks by number of classes; multilabel tasks one by one.
    """

    def __init__(self, tasks: Sequence[Task], order: Sequence[str], out_dims: Mapping[str, int]):
        by_name = {t.name: t for t in tasks}
        self.order = list(order)
        self._names = tuple(self.order)
        self._position = {name: i for i, name in enumerate(self._names)}
        self._kinds = {name: by_name[name].kind for name in self.order}
        self._loss = {name: by_name[name].loss_name for name in self.order}
        self._out = dict(out_dims)
        scalar: dict[str, list[str]] = {}
        classes: dict[int, list[str]] = {}
        self._multilabel: list[str] = []
        for name in self.order:
            if self._kinds[name] in ("regression", "binary", "count"):
                scalar.setdefault(self._loss[name], []).append(name)
            elif self._kinds[name] == "multiclass":
                classes.setdefault(self._out[name], []).append(name)
            else:
                self._multilabel.append(name)
        self._scalar = {loss: tuple(names) for loss, names in scalar.items()}
        self._classes = {k: tuple(names) for k, names in classes.items()}
        # The losses come out group by group, then the multilabel tasks: the task order of
        # that concatenation, and whether it already is the model's order.
        computed = [n for names in self._scalar.values() for n in names]
        computed += [n for names in self._classes.values() for n in names]
        computed += self._multilabel
        self._in_order = computed == self.order
        at = {n: i for i, n in enumerate(computed)}
        self._reorder = tuple(at[n] for n in self.order)
        self._positions = {
            names: tuple(self._position[n] for n in names)
            for names in (*self._scalar.values(), *self._classes.values())
        }
        self._index_cache: dict[tuple[tuple[int, ...], torch.device], Tensor] = {}

    def _index(self, positions: tuple[int, ...], device: torch.device) -> Tensor:
        key = (positions, device)
        index = self._index_cache.get(key)
        if index is None:
            index = torch.tensor(positions, dtype=torch.long, device=device)
            self._index_cache[key] = index
        return index

    def _columns(self, names: tuple[str, ...], device: torch.device) -> Tensor:
        return self._index(self._positions[names], device)

    def __call__(
        self, packed: Tensor, targets: Mapping[str, Tensor], masks: Mapping[str, Tensor]
    ) -> TaskLossValues:
        parts: list[Tensor] = []
        for loss, names in self._scalar.items():
            out = packed[:, :, 0].index_select(1, self._columns(names, packed.device))
            m = stack_entries(masks, names)
            y = _labelled(stack_entries(targets, names).to(out.dtype), m)
            parts.append(masked_mean(ELEMENT_LOSSES[loss](out, y), m))
        for k, names in self._classes.items():
            # Laid out task-major, (G, N): each task's rows stay contiguous, so its loss is
            # summed exactly as a lone task's would be.
            columns = self._columns(names, packed.device)
            m = stack_entries(masks, names).t().contiguous()
            y = _labelled(stack_entries(targets, names).t(), m)
            out = packed[:, :, :k].index_select(1, columns).transpose(0, 1)  # (G, N, k)
            element = ELEMENT_LOSSES["ce"](out.reshape(-1, k), y.reshape(-1)).view(m.shape)
            parts.append(masked_mean(element, m, dim=1))
        for name in self._multilabel:  # mean over labelled (row, label) cells
            out = packed[:, self._position[name], : self._out[name]]
            mask = masks[name]
            element = ELEMENT_LOSSES["bce"](out, _labelled(targets[name], mask))
            parts.append(masked_mean(element.flatten(), mask.flatten()).reshape(1))
        if not parts:
            vector = packed.new_zeros(0)
        else:
            vector = parts[0] if len(parts) == 1 else torch.cat(parts)
        if not self._in_order:
            vector = vector.index_select(0, self._index(self._reorder, vector.device))
        return TaskLossValues(self._names, vector, self._position)
