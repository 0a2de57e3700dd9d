"""The training loop and the ``fit`` entry point.

Batches → model → masked per-task losses → balancer → optimizer (weight decay is the λR(θ)
term), validation each epoch, early stopping on the main tasks' weighted validation loss, the
best weights restored, checkpoints and resume, and data-parallel training under ``torchrun``;
per-task selection (each main task's best epoch by its validation metric) and per-task
fine-tuning after joint training.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from . import io
from .balancing import Balancer, make_balancer
from .config import NO_VALIDATION_TO_SELECT, Config, TrainConfig
from .data import Preprocessor, Splits, TaskData, read_table, split_indices
from .errors import ConfigError, DataError, RunError
from .evaluate import HIGHER_IS_BETTER
from .logs import check_logging, open_logger
from .losses import TaskLosses, TaskLossValues
from .models import MultiTaskModel, Trunk, build_model, check_parameter_groups
from .tasks import Task, check_tasks

#: Each main task's primary metric for the model's current weights on the given (validation)
#: data, by task name: how ``train.select: per_task`` ranks epochs.
Scorer = Callable[[MultiTaskModel, TaskData], Mapping[str, float]]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else must be a torch device string."""
    if name == "auto":
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(
            f"train.device: {name!r} is not a device (auto, cpu, cuda, cuda:N)"
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} was asked for but CUDA is not available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device: {name!r} was asked for but MPS is not available")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"train.device: {name!r} is not supported (auto, cpu, cuda, cuda:N, mps)")
    return device


def _optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> Any:
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=max(1, cfg.epochs // 3), gamma=0.1
        )
    if cfg.scheduler == "plateau":
        patience = max(1, (cfg.patience or 10) // 2)
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=patience)
    return None


@dataclass
class History:
    """Per-epoch records: train/validation loss per task, the objective, weights, time."""

    records: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    #: ``train.select: per_task``: each main task's best validation epoch by its primary metric
    #: (a task whose metric was never defined is absent), that metric, and the weights of those
    #: epochs, one state per epoch however many tasks share it.
    task_epochs: dict[str, int] = field(default_factory=dict)
    task_scores: dict[str, float] = field(default_factory=dict)
    snapshots: dict[int, dict[str, Tensor]] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.records)


def init_distributed() -> bool:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Returns True when training is distributed (WORLD_SIZE > 1). NCCL is used with CUDA, Gloo
    on CPU.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def shutdown_distributed() -> None:
    """Leave the process group together, if this process joined one: a barrier, then teardown
    (a rank closing its Gloo sockets while another still reads the last result aborts it)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class Trainer:
    """Fits a ``MultiTaskModel`` jointly on all tasks with one balancer.

    ``callback(record)`` is called after every epoch (the CLI draws its progress bar with it);
    nothing here prints. Under ``torchrun`` (an initialized process group) the model is wrapped in
    ``DistributedDataParallel`` and each rank trains on its own shard of every epoch; the losses
    the balancer, the divergence check and early stopping see are over all ranks' rows, so
    every rank keeps the same balancer state and takes the same decisions.
    """

    def __init__(
        self,
        model: MultiTaskModel,
        tasks: Sequence[Task],
        config: TrainConfig,
        *,
        balancer: Balancer | None = None,
        callback: Callable[[dict[str, float]], None] | None = None,
    ) -> None:
        self.tasks = check_tasks(tasks)
        self.config = config
        self.device = resolve_device(config.device)
        check_parameter_groups(model)  # a parameter in no group, or in two, is trained wrongly
        self.model = model.to(self.device)
        self.balancer = balancer or make_balancer(
            config.balancer, self.tasks, config.balancer_options
        )
        self.callback = callback
        self.losses = TaskLosses(self.tasks, model.task_names, model.out_dims)
        self._task_index = {name: i for i, name in enumerate(self.losses.order)}
        self.rank, self.world_size = _distributed()
        self.net: nn.Module = self.model
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        params = list(self.model.parameters()) + self.balancer.parameters()
        self.optimizer = _optimizer(params, config)
        self.scheduler = _scheduler(self.optimizer, config)
        self.main_weights = {t.name: t.weight for t in self.tasks if t.is_main}

    # ---- evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def validation_losses(self, data: TaskData, *, chunk: int = 8192) -> dict[str, float]:
        """Each task's mean loss over its labelled rows of ``data``.

        Under ``torchrun`` each rank evaluates its share of the rows and every rank gets the
        losses over all ranks' shares (a collective call: every rank must make it).
        """
        self.model.eval()
        names = self.losses.order
        totals = dict.fromkeys(names, 0.0)
        counts = dict.fromkeys(names, 0.0)
        rows = torch.arange(self.rank, len(data), self.world_size, device=data.x_num.device)
        for start in range(0, len(rows), chunk):
            batch = data.batch(rows[start : start + chunk])
            with self._autocast():
                packed = self.model(batch.x_num, batch.x_cat, packed=True)
            losses = self.losses(packed.float(), batch.targets, batch.masks)
            for name, loss in losses.items():
                n = float(batch.masks[name].sum())
                totals[name] += float(loss) * n
                counts[name] += n
        if self.world_size > 1:
            both = [*totals.values(), *counts.values()]
            reduced = torch.tensor(both, dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(reduced)
            summed = reduced.tolist()
            totals = dict(zip(names, summed[: len(names)], strict=True))
            counts = dict(zip(names, summed[len(names) :], strict=True))
        return {k: totals[k] / counts[k] if counts[k] else math.nan for k in names}

    def objective(self, losses: dict[str, float]) -> float:
        """Early-stopping criterion: Σ α_t L_t over main tasks with labels."""
        terms = [w * losses[n] for n, w in self.main_weights.items() if not math.isnan(losses[n])]
        return float(sum(terms)) if terms else math.nan

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.amp)

    # ---- training -----------------------------------------------------------------------
    def fit(
        self,
        train: TaskData,
        validation: TaskData | None = None,
        *,
        checkpoint_dir: Path | None = None,
        resume: bool = False,
        scorer: Scorer | None = None,
        start_is_candidate: bool = False,
    ) -> History:
        """Train for up to ``epochs``; restore the weights of the best validation epoch.

        With ``train.select: per_task``, ``scorer(model, validation)`` gives each main task's
        primary metric after every epoch, and ``history`` keeps each task's best epoch and the
        weights of those epochs (see ``History``). Under ``torchrun`` rank 0 scores and
        broadcasts, so every rank keeps the same epochs. With ``start_is_candidate`` the
        starting weights compete as epoch 0 (fine-tuning: never worse on validation than its
        start).
        """
        cfg = self.config
        train = train.to(self.device)
        validation = validation.to(self.device) if validation is not None else None
        has_validation = validation is not None and len(validation) > 0
        per_task = cfg.select == "per_task"
        if per_task and not has_validation:
            raise ConfigError(NO_VALIDATION_TO_SELECT)
        if per_task and scorer is None:
            raise RunError("train.select: 'per_task' needs Trainer.fit(..., scorer=...)")
        generator = torch.Generator().manual_seed(cfg.seed)
        history = History()
        best = (math.inf, copy.deepcopy(self.model.state_dict()))
        if start_is_candidate and has_validation and not resume:
            assert validation is not None
            best = (self.objective(self.validation_losses(validation)), best[1])
            if math.isnan(best[0]):
                best = (math.inf, best[1])
        # per_task: task → (its metric signed so that lower is better, epoch)
        task_best: dict[str, tuple[float, int]] = {}
        snapshots: dict[int, dict[str, Tensor]] = {}
        bad_epochs, start_epoch = 0, 1
        if resume:
            if checkpoint_dir is None:
                raise RunError("resume needs a checkpoint directory")
            state = io.load_checkpoint(checkpoint_dir, self.model, self.optimizer, self.balancer)
            history.records = state["records"]
            best = (state["best_objective"], state["best_model"])
            bad_epochs, start_epoch = state["bad_epochs"], state["epoch"] + 1
            history.best_epoch = state["best_epoch"]
            # a run that stopped early is finished: resuming it trains nothing more
            history.stopped_early = bool(state.get("stopped_early"))
            self._set_rng_states(state["rng"], generator)
            if self.scheduler is not None and state.get("scheduler"):
                self.scheduler.load_state_dict(state["scheduler"])
            if per_task:
                task_best, snapshots = self._restore_selection(state, checkpoint_dir)

        last_epoch = start_epoch - 1 if history.stopped_early else cfg.epochs
        for epoch in range(start_epoch, last_epoch + 1):
            started = time.perf_counter()
            record = self._train_epoch(train, generator)
            record["epoch"] = epoch
            record["lr"] = self.optimizer.param_groups[0]["lr"]
            if validation is not None and len(validation):
                val = self.validation_losses(validation)
                record.update({f"val_loss/{k}": v for k, v in val.items()})
                objective = self.objective(val)
            else:
                objective = math.nan
            record["val_objective"] = objective
            snapshots_changed = False
            if per_task:
                assert scorer is not None and validation is not None
                scores = self._validation_scores(scorer, validation)
                record.update({f"val_metric/{k}": v for k, v in scores.items()})
                snapshots_changed = self._select(scores, epoch, task_best, snapshots)
            record["seconds"] = time.perf_counter() - started
            history.records.append(record)

            improved = not math.isnan(objective) and objective < best[0] - 1e-12
            if improved or math.isnan(objective):
                best = (objective if improved else best[0], copy.deepcopy(self.model.state_dict()))
                history.best_epoch, bad_epochs = epoch, 0
            else:
                bad_epochs += 1
            if self.scheduler is not None:
                if cfg.scheduler == "plateau":
                    if not math.isnan(objective):
                        self.scheduler.step(objective)
                else:
                    self.scheduler.step()
            history.stopped_early = cfg.patience is not None and bad_epochs >= cfg.patience
            if checkpoint_dir is not None and self.rank == 0:
                io.save_checkpoint(
                    checkpoint_dir,
                    model=self.model,
                    optimizer=self.optimizer,
                    balancer=self.balancer,
                    state={
                        "epoch": epoch,
                        "records": history.records,
                        "best_objective": best[0],
                        "best_epoch": history.best_epoch,
                        "bad_epochs": bad_epochs,
                        "stopped_early": history.stopped_early,
                        "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                        "task_best": {
                            name: {"epoch": e, "signed_score": v}
                            for name, (v, e) in task_best.items()
                        },
                    },
                    best_model=best[1],
                    rng=self._rng_states(generator),
                    snapshots=snapshots if snapshots_changed else None,
                )
            if self.callback is not None:
                self.callback(record)
            if history.stopped_early:
                break
        self.model.load_state_dict(best[1])
        self.model.eval()
        history.task_epochs = {name: e for name, (_, e) in task_best.items()}
        history.task_scores = {
            name: v * self._metric_sign(name) for name, (v, _) in task_best.items()
        }
        history.snapshots = snapshots
        return history

    # ---- per-task selection ---------------------------------------------------------------
    def _metric_sign(self, name: str) -> float:
        """1 where a lower primary metric is better, -1 where higher is (signed: lower wins)."""
        task = next(t for t in self.tasks if t.name == name)
        return -1.0 if HIGHER_IS_BETTER[task.primary_metric] else 1.0

    def _validation_scores(self, scorer: Scorer, validation: TaskData) -> dict[str, float]:
        """Each main task's primary metric on ``validation``: scored on rank 0 (a metric such
        as AUC needs all rows at once), broadcast so that every rank selects the same epochs."""
        names = [t.name for t in self.tasks if t.is_main]
        scores = dict(scorer(self.model, validation)) if self.rank == 0 else {}
        if self.world_size > 1:
            values = torch.tensor(
                [scores.get(n, math.nan) for n in names], dtype=torch.float64, device=self.device
            )
            torch.distributed.broadcast(values, src=0)
            scores = dict(zip(names, values.tolist(), strict=True))
        return {n: float(scores.get(n, math.nan)) for n in names}

    def _select(
        self,
        scores: Mapping[str, float],
        epoch: int,
        task_best: dict[str, tuple[float, int]],
        snapshots: dict[int, dict[str, Tensor]],
    ) -> bool:
        """Record ``epoch`` for each task whose metric improved (strictly: ties keep the
        earlier epoch), snapshot the weights once for all of them and drop the snapshots no
        task uses any more. Returns whether the snapshots changed."""
        improved = []
        for name, value in scores.items():
            signed = value * self._metric_sign(name)
            if not math.isnan(signed) and (name not in task_best or signed < task_best[name][0]):
                task_best[name] = (signed, epoch)
                improved.append(name)
        if not improved:
            return False
        snapshots[epoch] = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        used = {e for _, e in task_best.values()}
        for old in [e for e in snapshots if e not in used]:
            del snapshots[old]
        return True

    def _restore_selection(
        self, state: Mapping[str, Any], checkpoint_dir: Path
    ) -> tuple[dict[str, tuple[float, int]], dict[int, dict[str, Tensor]]]:
        """The per-task selection saved in a checkpoint by ``fit``."""
        task_best = {
            name: (float(entry["signed_score"]), int(entry["epoch"]))
            for name, entry in (state.get("task_best") or {}).items()
        }
        snapshots = dict(state.get("snapshots") or {})
        missing = sorted({e for _, e in task_best.values()} - set(snapshots))
        if missing:
            raise RunError(
                f"checkpoint {str(checkpoint_dir)!r} lacks the weights of epoch(s) {missing} "
                "that train.select: per_task needs"
            )
        return task_best, snapshots

    def _rng_states(self, shuffle: torch.Generator) -> dict[str, Tensor]:
        """Every generator training draws from: the shuffle's, torch's CPU one (dropout, the
        balancers that draw from it) and the device's. Ranks draw alike (one seed, equal
        shards), so rank 0's states are every rank's."""
        states = {"shuffle": shuffle.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.device)
        elif self.device.type == "mps":
            states["mps"] = torch.mps.get_rng_state()
        return states

    def _set_rng_states(self, states: dict[str, Tensor], shuffle: torch.Generator) -> None:
        """Restore what ``_rng_states`` saved (older checkpoints hold the shuffle's only)."""
        shuffle.set_state(states["shuffle"])
        if "torch" in states:
            torch.set_rng_state(states["torch"])
        if "cuda" in states and self.device.type == "cuda":
            torch.cuda.set_rng_state(states["cuda"], self.device)
        elif "mps" in states and self.device.type == "mps":
            torch.mps.set_rng_state(states["mps"])

    def _global_losses(self, losses: TaskLossValues, masks: Mapping[str, Tensor]) -> TaskLossValues:
        """Each task's masked mean over the labelled rows of all ranks' batches, for DDP.

        The value is the global mean, the same on every rank, so balancers that keep state
        (GradNorm, DWA, FAMO) and the divergence check see the same numbers everywhere. The
        gradient is this rank's masked mean's times W·n_r/Σn (n: the task's labelled rows), so
        DDP's average over the W ranks is the gradient of the global mean: a rank with one
        labelled row counts for one row, not for half the batch.
        """
        local = losses.vector
        counts = torch.stack([masks[n].sum() for n in losses.names]).to(local.dtype)
        reduced = torch.cat([counts, local.detach() * counts])
        torch.distributed.all_reduce(reduced)
        total, sums = reduced.chunk(2)
        total = total.clamp_min(1)
        scaled = local * (counts * self.world_size / total)
        # global value + (x − x): exactly the global value, with the scaled local gradient
        vector = sums / total + (scaled - scaled.detach())
        return TaskLossValues(losses.names, vector, self._task_index)

    def _sync_context(self):
        """DDP's gradient hooks, unless the balancer writes ``.grad`` itself (then skipped)."""
        if self.world_size > 1 and self.balancer.sets_grads:
            return self.net.no_sync()
        return contextlib.nullcontext()

    def _average_grads(self, params: list[nn.Parameter]) -> None:
        """Average ``.grad`` over ranks where DDP's hooks did not (balancer-written, own)."""
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
            p.grad /= self.world_size

    def _train_epoch(self, data: TaskData, generator: torch.Generator) -> dict[str, float]:
        cfg = self.config
        self.net.train()
        order = torch.randperm(len(data), generator=generator).to(self.device)
        if self.world_size > 1:
            # Every rank draws the same order and keeps its own shard; equal shard lengths keep
            # the ranks' step counts (and so DDP's collective calls) in lockstep.
            usable = len(order) - len(order) % self.world_size
            order = order[self.rank : usable : self.world_size]
        loss_names: list[str] = []
        loss_sum: Tensor | float = 0.0  # the losses summed over steps, one vector for all tasks
        weight_sums: dict[str, float] = {}
        steps = 0
        for start in range(0, len(order), cfg.batch_size):
            batch = data.batch(order[start : start + cfg.batch_size])
            self.optimizer.zero_grad(set_to_none=True)
            with self._sync_context():
                with self._autocast():
                    if self.balancer.needs_features:
                        packed, features = self.net(
                            batch.x_num, batch.x_cat, packed=True, features=True
                        )
                    else:
                        packed, features = self.net(batch.x_num, batch.x_cat, packed=True), None
                losses = self.losses(packed.float(), batch.targets, batch.masks)
                if self.world_size > 1:
                    losses = self._global_losses(losses, batch.masks)
                weights = self.balancer.backward(
                    losses, model=self.model, features=features, outputs=packed
                )
            if self.world_size > 1:
                own = self.balancer.parameters()
                self._average_grads(
                    list(self.model.parameters()) + own if self.balancer.sets_grads else own
                )
            # the architecture's own penalty (soft sharing), after DDP's averaging: it is the
            # same on every rank
            self.model.add_penalty_gradient()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            if isinstance(losses, TaskLossValues):
                vector = losses.vector
            else:
                vector = torch.stack(list(losses.values()))
            loss_sum = loss_sum + vector.detach()
            if not steps:
                loss_names = list(losses)
            for name, w in weights.items():
                weight_sums[name] = weight_sums.get(name, 0.0) + float(w)
            steps += 1
        record: dict[str, float] = {}
        if steps:
            assert isinstance(loss_sum, Tensor)
            stacked = loss_sum.cpu() / steps
            loss_mean = dict(zip(loss_names, stacked.tolist(), strict=True))
            if not all(math.isfinite(v) for v in loss_mean.values()):
                bad = [k for k, v in loss_mean.items() if not math.isfinite(v)]
                raise RunError(
                    f"training diverged: the loss of {', '.join(bad)} is not finite; "
                    "lower train.lr or set train.grad_clip"
                )
            record.update({f"train_loss/{k}": v for k, v in loss_mean.items()})
            self.balancer.end_epoch(loss_mean)
            record.update({f"weight/{k}": v / steps for k, v in weight_sums.items()})
        return record


# ---- the fit entry point ----------------------------------------------------------------
def resolve_tasks(config: Config) -> list[Task]:
    """The config's own tasks: its list, else the data set's; signals add theirs in ``fit``."""
    if config.tasks is not None:
        return list(config.tasks)
    if config.data.dataset is None:  # signals.horizons makes the tasks
        return []
    from .datasets import load_dataset

    return load_dataset(config.data.dataset).tasks  # type: ignore[arg-type]


def _table(source: Any) -> pd.DataFrame:
    """A data table given as a path (read) or, from Python, a DataFrame (copied)."""
    return source.copy() if isinstance(source, pd.DataFrame) else read_table(source)


def _drop(frame: pd.DataFrame, columns: Sequence[str], *, check: bool) -> pd.DataFrame:
    """``frame`` without ``columns``; with ``check``, a column it lacks is an error (a typo in
    data.drop would otherwise leave a leaking column in place without a word)."""
    if check:
        unknown = [c for c in columns if c not in frame.columns]
        if unknown:
            shown = ", ".join(str(c) for c in list(frame.columns)[:30])
            raise DataError(f"data.drop: columns {unknown} are not in the data (columns: {shown})")
    return frame.drop(columns=list(columns), errors="ignore")


def load_splits(config: Config, frame: pd.DataFrame | None = None) -> Splits:
    """The fixed train/validation/test tables for a config: its files or registered data set,
    or ``frame`` in place of ``data.train`` (split by the config's fractions and seed). With
    ``signals.horizons`` the table is windowed and split by time (``signals.horizon_splits``).

    Rows keep their labels from the source table (a file's row positions), so a data error
    names the row as the user finds it.
    """
    data = config.data
    if frame is None and data.dataset is None and data.train is None:
        raise ConfigError("data: give data.train (a CSV or Parquet file) or data.dataset")
    if data.dataset is not None and frame is None:
        from .datasets import load_dataset

        ds = load_dataset(data.dataset)
        full = _drop(ds.frame, data.drop, check=True)
        return Splits(*(full.iloc[ds.splits[k]] for k in ("train", "validation", "test")))
    source = frame.copy() if frame is not None else _table(data.train)
    train = _drop(source, data.drop, check=True)
    if config.signals is not None and config.signals.horizons is not None:
        from .signals import horizon_splits

        return horizon_splits(
            train.reset_index(drop=True),
            config.signals.horizons,
            validation_fraction=data.validation_fraction,
            test_fraction=data.test_fraction,
        )
    test = _drop(_table(data.test), data.drop, check=False) if data.test is not None else None
    validation = (
        _drop(_table(data.validation), data.drop, check=False)
        if data.validation is not None
        else None
    )
    test_fraction = 0.0 if test is not None else data.test_fraction
    val_fraction = 0.0 if validation is not None else data.validation_fraction
    if test_fraction or val_fraction:
        idx = split_indices(
            len(train), seed=data.split_seed, validation=val_fraction, test=test_fraction
        )
        if test is None:
            test = train.iloc[idx["test"]]
        if validation is None:
            validation = train.iloc[idx["validation"]]
        train = train.iloc[idx["train"]]
    empty = train.iloc[:0]
    return Splits(
        train, validation if validation is not None else empty, test if test is not None else empty
    )


def shared_setup(
    config: Config, splits: Splits | None = None, frame: pd.DataFrame | None = None
) -> tuple[Config, Splits, list[Task]]:
    """What every model of a many-run job (``compare``, ``plan``, ``validate_groups``) shares:
    the splits, loaded once, and the config's signals, applied once (so every run sees the same
    tables); returns the config to train (signals expanded), the splits and its tasks."""
    if splits is None:
        splits = load_splits(config, frame)
    tasks = resolve_tasks(config)
    if config.signals is not None:
        from .signals import expand

        expanded = expand(config, splits, tasks)
        config, splits = expanded.config, expanded.splits
        tasks = resolve_tasks(config)
    return config, splits, tasks


def seed_list(config: Config, seeds: int | Sequence[int]) -> list[int]:
    """``seeds`` as a list: a count gives ``train.seed``, ``train.seed + 1``, …"""
    if isinstance(seeds, int):
        return list(range(config.train.seed, config.train.seed + seeds))
    return list(seeds)


def prepare(
    config: Config, splits: Splits, tasks: Sequence[Task]
) -> tuple[Preprocessor, dict[str, TaskData]]:
    """Fit preprocessing on the training table and encode every non-empty split."""
    preprocessor = Preprocessor.fit(
        splits.train,
        tasks,
        features=config.data.features,
        categorical=config.data.categorical,
        impute=config.data.impute,
    )
    encoded = {
        name: TaskData.from_frame(frame, preprocessor)
        for name, frame in (
            ("train", splits.train),
            ("validation", splits.validation),
            ("test", splits.test),
        )
        if len(frame)
    }
    return preprocessor, encoded


def seeded_model(
    config: Config,
    preprocessor: Preprocessor,
    *,
    trunk: Trunk | None = None,
    cpu_only: bool = False,
) -> MultiTaskModel:
    """``config.model`` for the encoded inputs and tasks of ``preprocessor``, initialized from
    ``train.seed`` (every trainer of the config starts from the same weights). The weights are
    drawn on the CPU; ``cpu_only`` seeds that generator alone, not the devices' (which a run's
    dropout draws from on a GPU), and skips their cost (about 0.4 ms a call)."""
    if cpu_only:
        torch.random.default_generator.manual_seed(config.train.seed)
    else:
        torch.manual_seed(config.train.seed)
    return build_model(
        config.model,
        n_numeric=preprocessor.n_numeric,
        cardinalities=preprocessor.cardinalities,
        out_dims=preprocessor.output_dims(),
        heads={t.name: t.head for t in preprocessor.tasks if t.head is not None},
        trunk=trunk,
    )


def primary_scorer(config: Config, preprocessor: Preprocessor) -> Scorer:
    """A ``Scorer``: each main task's primary metric, on predictions decoded as ``Run.predict``
    decodes them (so target scaling and probabilities are those the metric is defined on)."""

    primary = {t.name: t.primary_metric for t in preprocessor.tasks if t.is_main}

    def score(model: MultiTaskModel, data: TaskData) -> dict[str, float]:
        run = io.Run(config=config, model=model, preprocessor=preprocessor)
        scores = run.score(data, include_auxiliary=False, primary_only=True)
        return {name: values[primary[name]] for name, values in scores.items()}

    return score


def finetune_tasks(
    trainer: Trainer,
    starts: Mapping[str, Mapping[str, Tensor]],
    train: TaskData,
    validation: TaskData | None,
) -> tuple[dict[str, dict[str, Tensor]], dict[str, dict[str, int]]]:
    """``train.finetune``: each main task trained alone after joint training.

    Each task gets its own copy of the whole model, starting from ``starts[task]`` (its
    per-task selected weights) or else the trainer's (joint) weights, trained on its own loss
    only (the other tasks weigh 0) with the trainer's optimizer kind, weight decay, batch size
    and seed, a constant ``finetune.lr`` and ``finetune.patience`` on its own validation loss.
    The starting weights compete as epoch 0, so a task's validation loss never gets worse.
    Returns each task's weights (on the CPU) and ``{task: {"epochs", "best_epoch"}}``
    (``best_epoch`` 0: the starting weights were kept).
    """
    cfg = trainer.config
    assert cfg.finetune is not None
    settings = cfg.model_copy(
        update={
            "epochs": cfg.finetune.epochs,
            "lr": cfg.lr if cfg.finetune.lr is None else cfg.finetune.lr,
            "patience": cfg.finetune.patience,
            "balancer": "fixed",
            "balancer_options": {},
            "scheduler": "none",
            "select": "joint",
            "finetune": None,
        }
    )
    states: dict[str, dict[str, Tensor]] = {}
    report: dict[str, dict[str, int]] = {}
    for task in trainer.tasks:
        if not task.is_main:
            continue
        model = copy.deepcopy(trainer.model)
        if task.name in starts:
            model.load_state_dict(starts[task.name])
        alone = [
            t.model_copy(
                update={"weight": 1.0, "role": "main"}
                if t.name == task.name
                else {"weight": 0.0, "role": "auxiliary"}
            )
            for t in trainer.tasks
        ]
        history = Trainer(model, alone, settings).fit(train, validation, start_is_candidate=True)
        states[task.name] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        report[task.name] = {"epochs": len(history.records), "best_epoch": history.best_epoch}
    return states, report


def fit(
    config: Config,
    *,
    out: str | Path | None = None,
    frame: pd.DataFrame | None = None,
    splits: Splits | None = None,
    trunk: Trunk | None = None,
    callback: Callable[[dict[str, float]], None] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    instrument: Callable[[Trainer], AbstractContextManager[Any]] | None = None,
) -> io.Run:
    """Train the configured multi-task model and return the run (saved to ``out`` if given).

    ``frame`` stands in for ``data.train``; ``splits`` overrides the data altogether (used by
    ``compare`` so every model sees the same tables); ``config.signals`` are applied to the
    tables (fitted on the training table) and saved in the run; ``trunk`` plugs in a user's own
    shared ``nn.Module``, or a factory called with the encoded input width. An ``out`` that
    already holds a run is an error unless ``resume`` or ``overwrite`` is set.
    ``instrument(trainer)``: a context manager entered around the training loop (``plan``
    records the relatedness measures of its all-in-one runs with ``relate.recording``).
    """
    init_distributed()
    if out is not None and _distributed()[0] == 0:
        io.check_run_dir(out, resume=resume, overwrite=overwrite)
    check_logging(config.train, out=out)  # train.log's package and folder, before any work
    tasks = resolve_tasks(config)
    if splits is None:
        splits = load_splits(config, frame)
    signals: dict[str, Any] | None = None
    trained = config
    if config.signals is not None:
        from .signals import expand

        expanded = expand(config, splits, tasks)
        trained, splits, signals = expanded.config, expanded.splits, expanded.state
        tasks = resolve_tasks(trained)
    preprocessor, encoded = prepare(trained, splits, tasks)
    model = seeded_model(config, preprocessor, trunk=trunk)
    trainer = Trainer(model, tasks, config.train, callback=callback)
    checkpoint_dir = Path(out) / "checkpoint" if out is not None else None
    if resume and (checkpoint_dir is None or not (checkpoint_dir / "state.json").is_file()):
        raise RunError(f"cannot resume: no checkpoint in {str(checkpoint_dir)!r}")
    per_task = config.train.select == "per_task"
    if per_task and "validation" not in encoded:
        raise ConfigError(NO_VALIDATION_TO_SELECT)
    logger = open_logger(config, out=out, resume=resume, rank=trainer.rank)
    trainer.callback = logger.chain(callback)
    started = time.perf_counter()
    with logger, instrument(trainer) if instrument is not None else contextlib.nullcontext():
        history = trainer.fit(
            encoded["train"],
            encoded.get("validation"),
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            scorer=primary_scorer(config, preprocessor) if per_task else None,
        )
    joint = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    selected = {  # each main task's weights where they are not the joint model's
        name: {**joint, **history.snapshots[epoch]}
        for name, epoch in history.task_epochs.items()
        if epoch != history.best_epoch
    }
    extra: dict[str, Any] = {}
    if per_task:
        extra["per_task_selection"] = {
            name: {"epoch": epoch, "validation_score": history.task_scores[name]}
            for name, epoch in history.task_epochs.items()
        }
    if config.train.finetune is not None:
        selected, extra["finetune"] = finetune_tasks(
            trainer, selected, encoded["train"], encoded.get("validation")
        )
    snapshots: dict[str, dict[str, Tensor]] = {}
    task_snapshot: dict[str, str] = {}
    for name, state in selected.items():
        if config.train.finetune is not None:
            label = f"finetuned {name}"
        else:
            label = f"epoch {history.task_epochs[name]}"
        changed = {k: v for k, v in state.items() if not torch.equal(v.cpu(), joint[k])}
        if changed:  # several tasks best at one epoch share its snapshot
            snapshots[label] = changed
            task_snapshot[name] = label
    run = io.Run(
        config=config,
        model=trainer.model.cpu(),
        preprocessor=preprocessor,
        history=history.to_frame(),
        custom_trunk=trunk is not None,
        signals=signals,
        snapshots=snapshots,
        task_snapshot=task_snapshot,
        mixing=io.mixing_tables(trainer.model, encoded.get("validation") or encoded["train"]),
    )
    run.metrics = {
        "best_epoch": history.best_epoch,
        "stopped_early": history.stopped_early,
        "train_seconds": time.perf_counter() - started,
        **extra,
        **{name: run.score(data) for name, data in encoded.items() if name != "train"},
    }
    if out is not None and trainer.rank == 0:
        run.save(out)
    return run
