"""Single-task baselines: one network per main task, same shape, optimizer, budget and rule.

``fit_stl`` trains the T single-task (STL) networks as stacked ensembles (``torch.func``: the
members' parameters stacked along a leading dimension, the model's own ``forward`` mapped over
it with ``vmap``) wherever that gives the networks T separate ``fit`` runs give, and one
``fit`` after another elsewhere. ``fit_stl_seeds`` does the same for several seeds at once:
the S·T networks (one per seed and task) stack into the same ensembles.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.func import functional_call, stack_module_state, vmap

from .config import Config, TrainConfig
from .data import Columns, Preprocessor, TaskData
from .errors import ConfigError, DataError, RunError, one_of
from .io import Run
from .losses import TaskLosses
from .models import MultiTaskModel
from .tasks import Task
from .train import (
    Splits,
    _scheduler,
    fit,
    prepare,
    resolve_device,
    resolve_tasks,
    seeded_model,
)

Vectorize = Literal["exact", "dropout", "off"]
VECTORIZE = ("exact", "dropout", "off")

#: Balancers whose step with one task is the gradient of α·L itself (an aggregator of a single
#: gradient returns it; DWA, GradNorm and RLW weigh a lone task 1): the ensemble trains those.
#: ``uncertainty`` and ``imtl_l`` learn a loss scale, and ``famo`` and ``geometric`` stop
#: descending below a loss of ``eps``, so those STL networks are fitted one at a time.
ONE_TASK_PLAIN_GRADIENT = frozenset(
    {
        "fixed", "dwa", "gradnorm", "rlw", "mgda", "pcgrad", "cagrad", "imtl_g", "graddrop",
        "gradvac", "nash_mtl", "aligned_mtl", "upgrad", "fairgrad",
    }
)  # fmt: skip


def stl_config(config: Config, task: Task, features: list[str]) -> Config:
    """Task ``task``'s single-task config: everything equal but the task list.

    ``features`` pins the MTL model's inputs, so the other tasks' label columns never become
    inputs of the baseline. ``train.select`` and ``train.finetune`` are reset: a single-task
    network already stops on its own task, so every MTL variant meets the same baseline.
    ``model.groups`` is dropped: one task has one trunk.
    """
    data = config.data.model_copy(update={"features": features})
    single = task.model_copy(update={"role": "main"})
    train = config.train.model_copy(update={"select": "joint", "finetune": None})
    model = config.model.model_copy(update={"groups": None})
    return config.model_copy(
        update={"tasks": [single], "data": data, "train": train, "model": model}
    )


def feature_columns(config: Config, splits: Splits) -> list[str]:
    """The input columns of the multi-task model of ``config``."""
    if config.data.features is not None:
        return list(config.data.features)
    targets = {c for t in resolve_tasks(config) for c in t.columns}
    return [c for c in splits.train.columns if c not in targets]


def labelled_rows(splits: Splits, task: Task) -> Splits:
    """The rows of each split where ``task`` has a label (any label, for multilabel tasks)."""

    def keep(frame: pd.DataFrame) -> pd.DataFrame:
        if not len(frame):
            return frame
        present = frame[list(task.columns)].notna().any(axis=1)
        return frame[present].reset_index(drop=True)

    return Splits(keep(splits.train), keep(splits.validation), keep(splits.test))


def _own_rows(
    splits: Splits, tasks: Sequence[Task], features: list[str], *, signals: bool
) -> dict[str, Splits]:
    """``labelled_rows`` of every task, each with only the inputs and the task's own label
    columns (one presence test per split, one take per task: T copies of a wide table cost
    more than training a small network). With signals, which may read any column, whole rows."""
    labels = [c for t in tasks for c in t.columns]
    if signals or any(c not in f.columns for f in splits for c in [*features, *labels]):
        return {t.name: labelled_rows(splits, t) for t in tasks}  # errors come from fit
    slot = {c: i for i, c in enumerate(labels)}
    parts: dict[str, list[pd.DataFrame]] = {t.name: [] for t in tasks}
    for frame in splits:
        present = frame[labels].notna().to_numpy()
        position = {c: i for i, c in enumerate(frame.columns)}
        for task in tasks:
            rows = np.flatnonzero(present[:, [slot[c] for c in task.columns]].any(axis=1))
            keep = [position[c] for c in [*features, *task.columns]]
            parts[task.name].append(frame.iloc[rows, keep].reset_index(drop=True))
    return {name: Splits(*frames) for name, frames in parts.items()}


def sequential_reason(config: Config, vectorize: Vectorize = "exact") -> str | None:
    """Why ``fit_stl`` would train the STL networks of ``config`` one run at a time (None: as
    stacked ensembles)."""
    model, train = config.model, config.train
    if vectorize == "off":
        return "vectorize='off'"
    if config.signals is not None:
        return "config.signals are fitted inside each run"
    if model.architecture != "hard_sharing":
        return f"model.architecture {model.architecture!r} (only hard_sharing is stacked)"
    if model.norm == "batch":
        return "model.norm 'batch' keeps running statistics per batch"
    if model.dropout > 0 and vectorize == "exact" and resolve_device(train.device).type != "cpu":
        return "model.dropout > 0 off the CPU (separate runs draw their masks on the device)"
    if train.balancer not in ONE_TASK_PLAIN_GRADIENT:
        return f"train.balancer {train.balancer!r} changes a single task's step"
    if train.amp:
        return "train.amp"
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return "distributed training (torchrun)"
    return None


def fit_stl(
    config: Config,
    splits: Splits,
    *,
    on_task: Callable[[Task], None] | None = None,
    vectorize: Vectorize = "exact",
) -> dict[str, Run]:
    """Fit one STL network per main task of ``config`` on the given splits.

    Each network sees only the rows where its task is labelled: a single-task learner has no
    use for the others (they would add zero-loss rows to its batches), and its preprocessing is
    fitted on its own training rows. Shape, optimizer, epochs and stopping rule are the MTL
    model's.

    ``vectorize``: ``"exact"`` (default) trains networks of equal parameter shapes as one
    stacked ensemble, each member on its own rows, batch order, optimizer state, learning rate
    and early stopping, which gives the networks and scores of separate ``fit`` runs with the
    same seed up to float rounding; with dropout, each member draws its masks from its own
    copy of the generator state its separate run would train from, so the masks are that
    run's. It falls back to separate runs (``sequential_reason`` says why) for batch norm,
    architectures other than ``hard_sharing``, config signals, AMP, ``torchrun``, and
    balancers that change a single task's step (``ONE_TASK_PLAIN_GRADIENT``); a network whose
    shape no other shares is fitted alone. ``"dropout"`` stacks the same networks but lets
    ``vmap`` draw each member's masks (same distribution, other draws than separate runs).
    ``"off"`` always fits separately. ``on_task(task)`` is called as each network starts
    (for an ensemble, for all its members at its start).
    """
    seed = config.train.seed
    runs = fit_stl_seeds(
        config,
        splits,
        [seed],
        on_task=(lambda _, task: on_task(task)) if on_task is not None else None,
        vectorize=vectorize,
    )
    return runs[seed]


def fit_stl_seeds(
    config: Config,
    splits: Splits,
    seeds: Sequence[int],
    *,
    on_task: Callable[[int, Task], None] | None = None,
    vectorize: Vectorize = "exact",
) -> dict[int, dict[str, Run]]:
    """``fit_stl`` of ``config`` with ``train.seed`` set to each of ``seeds``, in one go:
    ``{seed: {task: run}}``, each run what ``fit_stl`` of that seed returns (in ``"exact"``
    mode to float rounding; its config carries its seed).

    The members are the (seed, task) pairs: each task's rows are selected, preprocessed and
    encoded once (none of that depends on the seed), each member starts from the weights and
    draws the batch order of a separate run with its seed, and the networks of every seed
    with equal parameter shapes train as one stacked ensemble (so a shape no other task has
    still stacks across seeds). Falls back to separate runs as ``fit_stl`` does.
    ``on_task(seed, task)`` is called as each network starts.
    """
    if vectorize not in VECTORIZE:
        raise ConfigError(f"vectorize: {vectorize!r} is not one of {one_of(VECTORIZE)}")
    seeds = list(seeds)
    if len(set(seeds)) < len(seeds):
        raise ConfigError(f"seeds: {seeds} repeats a seed; each seed is fitted once")
    features = feature_columns(config, splits)
    tasks = [t for t in resolve_tasks(config) if t.is_main]
    own = _own_rows(splits, tasks, features, signals=config.signals is not None)
    for task in tasks:
        if not len(own[task.name].train):
            raise DataError(f"task {task.name!r} has no labelled training row")
    configs = {
        seed: {t.name: stl_config(config.with_train(seed=seed), t, features) for t in tasks}
        for seed in seeds
    }
    runs: dict[int, dict[str, Run]] = {seed: {} for seed in seeds}
    if len(tasks) * len(seeds) < 2 or sequential_reason(config, vectorize) is not None:
        for seed in seeds:
            for task in tasks:
                if on_task is not None:
                    on_task(seed, task)
                runs[seed][task.name] = fit(configs[seed][task.name], splits=own[task.name])
        return runs

    groups: dict[tuple, list[_Member]] = {}
    for member in _members(tasks, configs, own):
        shapes = tuple((k, tuple(v.shape)) for k, v in member.model.state_dict().items())
        groups.setdefault(shapes, []).append(member)
    for members in groups.values():
        if on_task is not None:
            for member in members:
                on_task(member.seed, member.task)
        if len(members) == 1:  # nothing to stack: the plain run
            member = members[0]
            runs[member.seed][member.task.name] = fit(member.config, splits=own[member.task.name])
        else:
            trained = _Ensemble(members, config.train, own_masks=vectorize == "exact").fit()
            for member in members:
                runs[member.seed][member.task.name] = trained[member.key]
    return {seed: {t.name: runs[seed][t.name] for t in tasks} for seed in seeds}


# ---- the stacked ensemble -------------------------------------------------------------------
@dataclass
class _Member:
    """One STL network to train: its task and config (with its seed), preprocessing, encoded
    splits and the model as ``fit`` builds it (same seed, so the same initial weights).
    ``key`` names it inside an ensemble, where a task may appear once per seed."""

    task: Task
    config: Config
    preprocessor: Preprocessor
    data: dict[str, TaskData]
    model: MultiTaskModel
    #: torch's generator state as the separate run starts training (its dropout draws)
    rng: Tensor

    def __post_init__(self) -> None:
        self.seed = self.config.train.seed
        self.key = f"{self.task.name}@{self.seed}"
        self.label = f"{self.task.name} (seed {self.seed})"
        #: the task under its key, as the ensemble's losses know it
        self.keyed_task = self.task.model_copy(update={"name": self.key})
        self.out_dim = self.preprocessor.output_dims()[self.task.name]


def _members(
    tasks: Sequence[Task], configs: dict[int, dict[str, Config]], own: dict[str, Splits]
) -> list[_Member]:
    """The (seed, task) members, seed by seed: each task prepared once (the preprocessing
    does not depend on the seed, so every seed's member shares it), each model seeded as
    ``fit`` seeds it."""
    first = next(iter(configs.values()))
    prepared = {t.name: prepare(first[t.name], own[t.name], [t]) for t in tasks}
    # on the CPU nothing draws from the devices' generators: seeding them is cost alone
    cpu = resolve_device(first[tasks[0].name].train.device).type == "cpu"
    members = []
    for by_task in configs.values():
        for task in tasks:
            preprocessor, encoded = prepared[task.name]
            config = by_task[task.name]
            model = seeded_model(config, preprocessor, cpu_only=cpu)
            rng = torch.get_rng_state()  # fit draws nothing else before its first step
            members.append(_Member(task, config, preprocessor, encoded, model, rng))
    return members


class _Rows:
    """The encoded rows of several members, padded to one length: ``(M, n, …)`` tensors.

    ``take(index, valid)`` gathers the rows ``index[m]`` of each of the first ``k`` members
    (``(k, B)``; ``valid`` False marks padding) in a few indexing operations and returns the
    inputs ``(k, B, …)`` and the targets and masks as ``Columns`` with one column per member,
    the layout ``TaskLosses`` reads a batch of T tasks in (padding is masked out). The columns
    are named by the members' ``names`` (unique); ``tasks`` are the task names their targets
    have in ``data``.
    """

    def __init__(
        self,
        names: Sequence[str],
        tasks: Sequence[str],
        data: Sequence[TaskData],
        device: torch.device,
    ):
        lengths = torch.tensor([len(d) for d in data])
        n = int(lengths.max())

        def pad(tensors: list[Tensor]) -> Tensor:
            out = tensors[0].new_zeros((len(tensors), n, *tensors[0].shape[1:]))
            for m, t in enumerate(tensors):
                out[m, : len(t)] = t
            return out.to(device)

        targets = [d.targets[task] for task, d in zip(tasks, data, strict=True)]
        masks = [d.masks[task] for task, d in zip(tasks, data, strict=True)]
        # 1-D targets in one block per dtype, 1-D masks in one block; 2-D (multilabel) apart
        by_dtype: dict[torch.dtype, list[int]] = {}
        for m, t in enumerate(targets):
            if t.dim() == 1:
                by_dtype.setdefault(t.dtype, []).append(m)
        flat = [m for m, t in enumerate(masks) if t.dim() == 1]
        self._assemble(
            list(names),
            lengths,
            pad([d.x_num for d in data]),
            pad([d.x_cat for d in data]),
            [(ms, pad([targets[m] for m in ms])) for ms in by_dtype.values()],
            [(flat, pad([masks[m] for m in flat]))] if flat else [],
            {
                m: (pad([targets[m]])[0], pad([masks[m]])[0])
                for m, t in enumerate(targets)
                if t.dim() != 1
            },
        )

    def _assemble(
        self,
        names: list[str],
        lengths: Tensor,
        x_num: Tensor,
        x_cat: Tensor,
        target_groups: list[tuple[list[int], Tensor]],
        mask_groups: list[tuple[list[int], Tensor]],
        rest: dict[int, tuple[Tensor, Tensor]],
    ) -> None:
        """The stacks from padded parts; a group is its members (ascending) and their block."""
        device = x_num.device
        self.names, self.lengths, self.n = names, lengths, x_num.shape[1]
        self.x_num, self.x_cat = x_num, x_cat
        self._groups = (target_groups, mask_groups)
        self.target_blocks = [(self._positions(ms, device), b) for ms, b in target_groups]
        self.target_columns = {
            names[m]: (b, j) for b, (ms, _) in enumerate(target_groups) for j, m in enumerate(ms)
        }
        self.mask_blocks = [(self._positions(ms, device), b) for ms, b in mask_groups]
        self.mask_columns = {names[m]: (0, j) for ms, _ in mask_groups for j, m in enumerate(ms)}
        self.rest = rest
        self.offsets = (torch.arange(len(names)) * self.n).to(device)[:, None]
        self._selections: tuple[dict, dict] = ({}, {})

    def select(self, positions: Sequence[int]) -> _Rows:
        """The members at ``positions`` (ascending) alone, by indexing these stacks (cheaper than
        padding the members' rows again), padded to the longest of them."""
        new = {m: k for k, m in enumerate(positions)}
        lengths = self.lengths[list(positions)]
        n = int(lengths.max())
        device = self.x_num.device

        def take(block: Tensor, members: Sequence[int]) -> Tensor:
            return block.index_select(0, torch.tensor(members, device=device))[:, :n].contiguous()

        def groups(of: list[tuple[list[int], Tensor]]) -> list[tuple[list[int], Tensor]]:
            out = []
            for ms, block in of:
                kept = [j for j, m in enumerate(ms) if m in new]
                if kept:
                    out.append(([new[ms[j]] for j in kept], take(block, kept)))
            return out

        rows = object.__new__(_Rows)
        rows._assemble(
            [self.names[m] for m in positions],
            lengths,
            take(self.x_num, positions),
            take(self.x_cat, positions),
            groups(self._groups[0]),
            groups(self._groups[1]),
            {new[m]: (t[:n], mask[:n]) for m, (t, mask) in self.rest.items() if m in new},
        )
        return rows

    def _positions(self, members: list[int], device: torch.device) -> tuple[Tensor, Tensor]:
        """Members' positions (ascending) and the offsets of their rows in a flattened
        ``(len, n)`` block."""
        index = torch.tensor(members, dtype=torch.long, device=device)
        return index, (torch.arange(len(members), device=device) * self.n)[:, None]

    @staticmethod
    def _first(positions: tuple[Tensor, Tensor], k: int) -> tuple[Tensor, Tensor]:
        """A block's positions and offsets among the first ``k`` members (a prefix of both)."""
        index, offsets = positions
        j = int(torch.searchsorted(index, k))
        return index[:j], offsets[:j]

    def label_counts(self, masks: Columns) -> Tensor:
        """Each member's labelled entries in ``masks`` (as ``take`` made them), ``(M,)``."""
        counts = torch.zeros(len(self.names), dtype=torch.long, device=self.x_num.device)
        for ((pos, _), _), block in zip(self.mask_blocks, masks.blocks, strict=True):
            counts[pos] = block.sum(0)
        for k in self.rest:
            counts[k] = masks[self.names[k]].sum()
        return counts

    def take(self, index: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Columns, Columns]:
        k, b = index.shape
        flat = (index + self.offsets[:k]).view(-1)
        x_num, x_cat = (
            x.view(x.shape[0] * self.n, x.shape[-1]).index_select(0, flat).view(k, b, x.shape[-1])
            for x in (self.x_num, self.x_cat)
        )
        blocks = []
        for positions, block in self.target_blocks:
            pos, off = self._first(positions, k)
            blocks.append(block.take(index[pos] + off).t())
        mask_blocks = []
        for positions, block in self.mask_blocks:
            pos, off = self._first(positions, k)
            mask_blocks.append((block.take(index[pos] + off) & valid[pos]).t())
        rest = [m for m in self.rest if m < k]
        rest_targets = {self.names[m]: self.rest[m][0][index[m]] for m in rest}
        rest_masks = {self.names[m]: self.rest[m][1][index[m]] & valid[m, :, None] for m in rest}
        names = self.names[:k]
        targets = Columns(blocks, self.target_columns, rest_targets, names, self._selections[0])
        masks = Columns(mask_blocks, self.mask_columns, rest_masks, names, self._selections[1])
        return x_num, x_cat, targets, masks


class _StackedOptimizer:
    """``torch.optim``'s Adam, AdamW or SGD (their single-tensor update, the one used on the
    CPU) applied to stacked parameters as M independent optimizers: each member has its own
    step count and learning rate, and ``step(params, k)`` updates the first ``k`` members only:
    the others are left exactly as they are (no step, no decay of their moments), as if their
    own optimizers had not been called."""

    def __init__(self, params: list[Tensor], config: TrainConfig, lrs: Tensor) -> None:
        self.kind = config.optimizer
        self.weight_decay = config.weight_decay
        self.momentum = config.momentum
        self.betas = (0.9, 0.999)  # torch.optim's defaults, which train.py uses
        self.eps = 1e-8
        self.lrs = lrs  # (M,) float64 on the CPU, set by the caller each epoch
        self.steps = torch.zeros(len(lrs), dtype=torch.float64)
        self.state = [[torch.zeros_like(p) for _ in range(self._slots)] for p in params]

    @property
    def _slots(self) -> int:
        return 1 if self.kind == "sgd" else 2

    def keep(self, index: Tensor) -> None:
        """Keep the members at ``index`` (positions in the current stack), in that order."""
        self.state = [
            [s.index_select(0, index.to(s.device)) for s in slots] for slots in self.state
        ]
        cpu = index.cpu()
        self.steps, self.lrs = self.steps[cpu], self.lrs[cpu]

    @torch.no_grad()
    def step(self, params: list[Tensor], k: int) -> None:
        """One update of the first ``k`` members, from the gradients in ``.grad``."""
        self.steps[:k] += 1
        views = [
            (p[:k], p.grad[:k], [s[:k] for s in slots])
            for p, slots in zip(params, self.state, strict=True)
        ]
        if self.kind == "sgd":
            self._sgd(views, self.lrs[:k])
        else:
            self._adam(views, self.lrs[:k], self.steps[:k])

    def _per_member(self, values: Tensor, like: Tensor) -> Tensor:
        """A ``(M,)`` float64 CPU vector as a float tensor broadcasting over ``like``'s rows."""
        return values.to(like.dtype).to(like.device).view(-1, *([1] * (like.dim() - 1)))

    def _sgd(self, views: list[tuple[Tensor, Tensor, list[Tensor]]], lrs: Tensor) -> None:
        for p, grad, (buf,) in views:
            if self.weight_decay:
                grad = grad.add(p, alpha=self.weight_decay)
            if self.momentum:
                # the buffer starts at 0, so its first update is the gradient itself, as torch's
                grad = buf.mul_(self.momentum).add_(grad)
            p.add_(self._per_member(-lrs, p) * grad)

    def _adam(
        self, views: list[tuple[Tensor, Tensor, list[Tensor]]], lrs: Tensor, steps: Tensor
    ) -> None:
        beta1, beta2 = self.betas
        step_size = lrs / (1 - beta1**steps)
        correction2 = (1 - beta2**steps) ** 0.5
        decay = 1 - lrs * self.weight_decay
        for p, grad, (exp_avg, exp_avg_sq) in views:
            if self.weight_decay:
                if self.kind == "adamw":
                    p.mul_(self._per_member(decay, p))
                else:
                    grad = grad.add(p, alpha=self.weight_decay)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / self._per_member(correction2, p)).add_(self.eps)
            p.add_(self._per_member(-step_size, p) * exp_avg / denom)


@dataclass
class _Epoch:
    """What one ensemble epoch logs, by live member (``live``: the members' indices)."""

    epoch: int
    live: np.ndarray
    train_loss: np.ndarray
    validation: np.ndarray
    lrs: np.ndarray
    objective: np.ndarray
    seconds: float


class _Ensemble:
    """STL networks of one parameter shape trained side by side, as ``Trainer.fit`` trains
    each: per epoch its own ``randperm`` of its rows (a generator seeded with its seed),
    its batches in that order (a member with fewer batches sits out the last steps), the
    masked mean loss of its task, its own optimizer, learning-rate schedule, validation loss,
    best weights and early stopping. A member that stops leaves the stack with its best
    weights; the others go on. ``train`` holds what the members share (all but the seed)."""

    def __init__(self, members: list[_Member], train: TrainConfig, *, own_masks: bool) -> None:
        self.created = time.perf_counter()  # stacking counts as training time
        # Most rows first: the members that still have a batch at a step are then a prefix of
        # the stack, which the step slices instead of computing (and masking) all of them.
        self.members = sorted(members, key=lambda m: -len(m.data["train"]))
        members = self.members
        self.config = train
        self.device = resolve_device(train.device)
        models = [m.model for m in members]
        for model in models:
            model.train()
        params, buffers = stack_module_state(models)
        self.keys = list(params)
        self.params = [p.detach().to(self.device).requires_grad_() for p in params.values()]
        self.buffers = {k: b.to(self.device) for k, b in buffers.items()}
        self.base = copy.deepcopy(models[0]).to("meta")
        self.best = [p.detach().clone() for p in self.params]  # by member, all of them
        # dropout: each member's masks drawn as its separate run draws them (own_masks), from
        # a copy of the generator state that run trains from; else vmap draws them
        self.dropouts = _dropouts(models[0], members[0].data["train"]) if own_masks else []
        self.given = [_GivenMask.replace(self.base, name) for name, _, _ in self.dropouts]
        self.rngs = [_generator(m.rng) for m in members] if self.dropouts else []

        def forward(
            params: list[Tensor], buffers: dict, x_num: Tensor, x_cat: Tensor, masks: tuple
        ) -> Tensor:
            state = {**dict(zip(self.keys, params, strict=True)), **buffers}
            for module, mask in zip(self.given, masks, strict=False):
                module.mask = mask
            try:
                return functional_call(self.base, state, (x_num, x_cat), {"packed": True})
            finally:
                for module in self.given:
                    module.mask = None

        self.forward = vmap(forward, randomness="error" if own_masks else "different")
        self.alphas = torch.tensor([m.task.weight for m in members], device=self.device)
        self.logged_weight = {  # what the balancer reports for a lone task (history only)
            m.key: m.task.weight if train.balancer == "fixed" else 1.0 for m in members
        }
        # a constant rate needs no stand-in optimizers (creating the first imports torch._dynamo)
        constant = train.scheduler == "none"
        self.schedules = [] if constant else [_schedule(train) for _ in members]
        lrs = torch.tensor(
            [train.lr] * len(members)
            if constant
            else [s[0].param_groups[0]["lr"] for s in self.schedules],
            dtype=torch.float64,
        )
        self.optimizer = _StackedOptimizer(self.params, train, lrs)
        self.live = list(range(len(members)))  # members still training, in stack order
        # the shuffles, by number of rows and seed
        self.generators: dict[tuple[int, int], torch.Generator] = {}
        self._stack_rows()
        self._build_stacks()

    # ---- the live stack ---------------------------------------------------------------------
    def _stack_rows(self) -> None:
        """Every member's training and validation rows (padded once: ``_keep`` selects)."""
        members = self.members
        keys, tasks = [m.key for m in members], [m.task.name for m in members]
        self.train_rows = _Rows(keys, tasks, [m.data["train"] for m in members], self.device)
        self.validated = [k for k, m in enumerate(members) if "validation" in m.data]
        self.val_rows = (
            _Rows(
                [keys[k] for k in self.validated],
                [tasks[k] for k in self.validated],
                [members[k].data["validation"] for k in self.validated],
                self.device,
            )
            if self.validated
            else None
        )

    def _build_stacks(self) -> None:
        """What the step and validation read of the live members, their rows aside."""
        members = [self.members[i] for i in self.live]
        self.val_losses = _task_losses([members[k] for k in self.validated])
        self.live_alphas = self.alphas[torch.tensor(self.live, device=self.device)]
        self.steps_per_epoch = (self.train_rows.lengths + self.config.batch_size - 1) // (
            self.config.batch_size
        )
        draws: dict[tuple[int, int], list[int]] = {}
        for k, (n, m) in enumerate(zip(self.train_rows.lengths.tolist(), members, strict=True)):
            draws.setdefault((n, m.seed), []).append(k)
        self.by_draw = {draw: torch.tensor(ks) for draw, ks in draws.items()}
        steps = self.steps_per_epoch
        self.batch_members = [int((steps > s).sum()) for s in range(int(steps.max()))]
        self._prefix_losses: dict[int, TaskLosses] = {}

    def _keep(self, positions: list[int]) -> None:
        index = torch.tensor(positions, dtype=torch.long)
        on_device = index.to(self.device)
        self.params = [p.detach().index_select(0, on_device).requires_grad_() for p in self.params]
        self.buffers = {k: b.index_select(0, on_device) for k, b in self.buffers.items()}
        self.optimizer.keep(index)
        self.live = [self.live[k] for k in positions]
        self.train_rows = self.train_rows.select(positions)
        if self.val_rows is not None:
            slot = {k: j for j, k in enumerate(self.validated)}
            validated = [k for k in positions if k in slot]
            self.val_rows = (
                self.val_rows.select([slot[k] for k in validated]) if validated else None
            )
            kept = {k: new for new, k in enumerate(positions)}
            self.validated = [kept[k] for k in validated]
        self._build_stacks()

    # ---- training ---------------------------------------------------------------------------
    def _orders(self) -> Tensor:
        """Each live member's batch order for this epoch, ``(M, most rows)``, -1 padded (so a
        batch is no wider than the most rows a member has left).

        A separate run draws ``randperm(n)`` from its own generator seeded with its
        ``train.seed``, once per epoch; live members with the same ``n`` and seed have drawn
        alike so far and share one.
        """
        lengths = self.train_rows.lengths
        orders = torch.full((len(lengths), self.train_rows.n), -1, dtype=torch.long)
        for (n, seed), members in self.by_draw.items():
            generator = self.generators.get((n, seed))
            if generator is None:
                generator = self.generators[n, seed] = torch.Generator().manual_seed(seed)
            orders[members, :n] = torch.randperm(n, generator=generator)
        return orders.to(self.device)

    def _train_epoch(self) -> Tensor:
        """One epoch; each live member's mean training loss (``(M,)``, CPU)."""
        cfg = self.config
        self.base.train()
        orders = self._orders()
        loss_sum = torch.zeros(len(self.live), device=self.device)
        for step, k in enumerate(self.batch_members):  # k: the members with a batch left
            index = orders[:k, step * cfg.batch_size : (step + 1) * cfg.batch_size]
            valid = index >= 0
            x_num, x_cat, targets, masks = self.train_rows.take(index.clamp_min(0), valid)
            params = [p[:k] for p in self.params]
            buffers = {name: b[:k] for name, b in self.buffers.items()}
            noise = self._noise(valid) if self.dropouts else ()
            packed = self.forward(params, buffers, x_num, x_cat, noise)  # (k, B, 1, o)
            losses = self._losses(k)(packed[:, :, 0].transpose(0, 1).float(), targets, masks)
            (losses.vector * self.live_alphas[:k]).sum().backward()
            if cfg.grad_clip is not None:
                self._clip(cfg.grad_clip, k)
            self.optimizer.step(self.params, k)
            for p in self.params:
                p.grad = None
            loss_sum[:k] += losses.vector.detach()
        return loss_sum.cpu() / self.steps_per_epoch

    def _noise(self, valid: Tensor) -> tuple[Tensor, ...]:
        """The dropout masks of the first ``len(valid)`` live members for one step, one
        ``(k, B, …)`` tensor per dropout layer: member j's first rows (its batch) hold the scaled
        Bernoulli noise ``torch.nn.functional.dropout`` draws on the CPU, drawn in its forward
        order from the member's generator; padding rows hold 1 / (1 − p)."""
        k, width = valid.shape
        masks = [torch.ones((k, width, *shape)) for _, _, shape in self.dropouts]
        for j, (i, n) in enumerate(zip(self.live[:k], valid.sum(1).tolist(), strict=True)):
            for mask, (_, p, _) in zip(masks, self.dropouts, strict=True):
                mask[j, :n].bernoulli_(1 - p, generator=self.rngs[i])  # a contiguous block
        for mask, (_, p, _) in zip(masks, self.dropouts, strict=True):
            mask.div_(1 - p)
        return tuple(m.to(self.device) for m in masks)

    def _losses(self, k: int) -> TaskLosses:
        """The losses of the first ``k`` live members."""
        losses = self._prefix_losses.get(k)
        if losses is None:
            members = [self.members[i] for i in self.live[:k]]
            losses = self._prefix_losses[k] = _task_losses(members)
        return losses

    def _clip(self, max_norm: float, k: int) -> None:
        """``clip_grad_norm_`` of the first ``k`` members' gradients, each by the norm over all
        its parameters."""
        norms = torch.stack([p.grad[:k].flatten(1).norm(dim=1) for p in self.params])
        total = norms.norm(dim=0)
        scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for p in self.params:
            p.grad[:k].mul_(scale.view(-1, *([1] * (p.dim() - 1))))

    @torch.no_grad()
    def _validation(self, chunk: int) -> Tensor:
        """Each validated live member's mean loss over its validation rows (float64, CPU)."""
        rows = self.val_rows
        assert rows is not None
        self.base.eval()
        totals = torch.zeros(len(rows.names), dtype=torch.float64)
        counts = torch.zeros(len(rows.names), dtype=torch.float64)
        which = torch.tensor(self.validated, device=self.device)
        params = [p.detach()[which] for p in self.params]
        buffers = {k: b[which] for k, b in self.buffers.items()}
        lengths = rows.lengths.to(self.device)[:, None]
        for start in range(0, rows.n, chunk):
            index = torch.arange(start, min(start + chunk, rows.n), device=self.device)
            index = index.expand(len(rows.names), -1)
            valid = index < lengths
            x_num, x_cat, targets, masks = rows.take(torch.where(valid, index, 0), valid)
            packed = self.forward(params, buffers, x_num, x_cat, ())
            losses = self.val_losses(packed[:, :, 0].transpose(0, 1).float(), targets, masks)
            n = rows.label_counts(masks).double().cpu()
            totals += losses.vector.double().cpu() * n
            counts += n
        return totals / counts

    def fit(self) -> dict[str, Run]:
        """Each member's ``Run``, by member ``key``."""
        cfg = self.config
        count = len(self.members)
        alphas = np.array([m.task.weight for m in self.members], dtype=np.float64)
        best_objective = np.full(count, math.inf)
        best_epoch = np.zeros(count, dtype=np.int64)
        bad_epochs = np.zeros(count, dtype=np.int64)
        stopped = np.zeros(count, dtype=bool)
        log: list[_Epoch] = []
        chunk = max(64, 2**16 // count)
        for epoch in range(1, cfg.epochs + 1):
            epoch_started = time.perf_counter()
            live = np.array(self.live)
            train_loss = self._train_epoch().numpy()
            if not np.isfinite(train_loss).all():
                bad = [self.members[i].label for i in live[~np.isfinite(train_loss)]]
                raise RunError(
                    f"training diverged: the loss of {', '.join(bad)} is not finite; "
                    "lower train.lr or set train.grad_clip"
                )
            val = np.full(len(live), math.nan)
            if self.val_rows is not None:
                val[self.validated] = self._validation(chunk).numpy()
            objective = alphas[live] * val  # NaN where a member has no validation rows
            lrs = self.optimizer.lrs.numpy().copy()
            # Trainer.fit's rule, member by member: a NaN objective keeps the latest weights
            with np.errstate(invalid="ignore"):
                better = objective < best_objective[live] - 1e-12
            reset = better | np.isnan(objective)
            best_objective[live[better]] = objective[better]
            best_epoch[live[reset]] = epoch
            bad_epochs[live] = np.where(reset, 0, bad_epochs[live] + 1)
            if reset.any():
                rows = torch.from_numpy(np.flatnonzero(reset)).to(self.device)
                members = torch.from_numpy(live[reset]).to(self.device)
                for best, p in zip(self.best, self.params, strict=True):
                    best[members] = p.detach()[rows]
            if cfg.patience is not None:
                stopped[live] = bad_epochs[live] >= cfg.patience
            seconds = time.perf_counter() - epoch_started
            log.append(_Epoch(epoch, live, train_loss, val, lrs, objective, seconds))
            keep = np.flatnonzero(~stopped[live])
            if not len(keep):
                break
            self._step_schedules(objective)
            if len(keep) < len(live):
                self._keep(keep.tolist())
        records = self._records(log)
        seconds = (time.perf_counter() - self.created) / count
        return {
            m.key: self._run(i, records[i], int(best_epoch[i]), bool(stopped[i]), seconds)
            for i, m in enumerate(self.members)
        }

    def _step_schedules(self, objectives: np.ndarray) -> None:
        """Each live member's scheduler step after an epoch, as ``Trainer.fit`` takes it."""
        if self.config.scheduler == "none":
            return
        for k, i in enumerate(self.live):
            optimizer, schedule = self.schedules[i]
            optimizer.step()  # a no-op, so torch sees the usual call order
            if self.config.scheduler != "plateau":
                schedule.step()
            elif not math.isnan(objectives[k]):
                schedule.step(float(objectives[k]))
        self.optimizer.lrs = torch.tensor(
            [self.schedules[i][0].param_groups[0]["lr"] for i in self.live], dtype=torch.float64
        )

    def _records(self, log: list[_Epoch]) -> list[list[dict[str, float]]]:
        """Each member's history records, with the columns and order ``Trainer.fit`` writes
        (``seconds``: the ensemble's epoch time over the members it trained)."""
        records: list[list[dict[str, float]]] = [[] for _ in self.members]
        validated = ["validation" in m.data for m in self.members]
        for entry in log:
            seconds = entry.seconds / len(entry.live)
            for k, i in enumerate(entry.live.tolist()):
                member = self.members[i]
                name = member.task.name
                record = {
                    f"train_loss/{name}": float(entry.train_loss[k]),
                    f"weight/{name}": self.logged_weight[member.key],
                    "epoch": entry.epoch,
                    "lr": float(entry.lrs[k]),
                }
                if validated[i]:
                    record[f"val_loss/{name}"] = float(entry.validation[k])
                record["val_objective"] = float(entry.objective[k])
                record["seconds"] = seconds
                records[i].append(record)
        return records

    def _run(
        self,
        i: int,
        records: list[dict[str, float]],
        best_epoch: int,
        stopped: bool,
        seconds: float,
    ) -> Run:
        """Member ``i`` as the ``Run`` ``fit`` returns: its best weights in its own model."""
        member = self.members[i]
        state = {k: best[i].cpu().clone() for k, best in zip(self.keys, self.best, strict=True)}
        member.model.load_state_dict(state)
        member.model.eval()
        run = Run(
            config=member.config,
            model=member.model,
            preprocessor=member.preprocessor,
            history=pd.DataFrame(records),
        )
        run.metrics = {
            "best_epoch": best_epoch,
            "stopped_early": stopped,
            "train_seconds": seconds,
            "stl_ensemble_size": len(self.members),
            **{name: run.score(data) for name, data in member.data.items() if name != "train"},
        }
        return run


def _generator(state: Tensor) -> torch.Generator:
    """A CPU generator in ``state``."""
    generator = torch.Generator()
    generator.set_state(state)
    return generator


class _GivenMask(torch.nn.Module):
    """A dropout layer's stand-in inside the ensemble: in training it multiplies by ``mask``,
    set for each call (``x * noise`` is what dropout computes on the CPU, the noise drawn
    outside); in evaluation it passes ``x`` through, as dropout does."""

    def __init__(self) -> None:
        super().__init__()
        self.mask: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        assert self.mask is not None
        return x * self.mask

    @classmethod
    def replace(cls, model: torch.nn.Module, name: str) -> _GivenMask:
        """Put a stand-in in place of ``model``'s submodule ``name``."""
        parent, _, child = name.rpartition(".")
        given = cls()
        setattr(model.get_submodule(parent), child, given)
        return given


def _dropouts(model: torch.nn.Module, data: TaskData) -> list[tuple[str, float, tuple]]:
    """``model``'s dropout layers in the order one training forward calls them: (name, p, the
    shape of one row of its input), from one forward on a row of ``data`` with torch's
    generator state put back (a layer the forward never calls, or with p = 0, draws nothing)."""
    names = {
        id(m): (n, m.p) for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout)
    }
    if not names:
        return []
    order: list[tuple[str, float, tuple]] = []

    def record(module: torch.nn.Module, args: tuple) -> None:
        order.append((*names[id(module)], tuple(args[0].shape[1:])))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if id(m) in names]
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model(data.x_num[:1], data.x_cat[:1], packed=True)
    finally:
        for hook in hooks:
            hook.remove()
    if len({name for name, _, _ in order}) < len(order) or any(p >= 1 for _, p, _ in order):
        raise RunError("the STL ensemble expects each dropout layer (p < 1) once per forward")
    return [(name, p, shape) for name, p, shape in order if p > 0]


def _task_losses(members: Sequence[_Member]) -> TaskLosses:
    """The members' losses as one batch of tasks, named by member key: one column of the
    packed outputs each."""
    return TaskLosses(
        [m.keyed_task for m in members],
        [m.key for m in members],
        {m.key: m.out_dim for m in members},
    )


def _schedule(train: TrainConfig) -> tuple[torch.optim.Optimizer, object | None]:
    """A stand-in optimizer carrying one member's learning rate and the scheduler ``fit`` would
    attach to its optimizer: the member's learning rate follows the very same schedule."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=train.lr)
    return optimizer, _scheduler(optimizer, train)
