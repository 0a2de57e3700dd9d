"""Task relatedness: which tasks help each other, measured while training, and a grouping.

``relate`` trains the configured model as ``fit`` does (same config, splits, balancer and
``Trainer``) with the configured balancer wrapped in a recorder that, every ``every`` steps,
reads what the step already has (the losses, the representation z, the packed outputs):

- ``gradient``: the cosine similarity of the task gradients on the joint (shared + other)
  parameters, from the batched Jacobian engine (``balancing.jacobian``: one vectorized
  backward from z to the joint parameters, no per-task ``.backward()``), averaged over the
  recorded steps where both tasks have labels;
- ``lookahead``: TAG's inter-task affinity (Fifty et al. 2021): a plain SGD step of the joint
  parameters with task i's gradient alone (the optimizer's learning rate), and the relative
  change ``1 − L_j(after)/L_j(before)`` of task j's loss on the same batch (T + 1 forward
  passes in eval mode, parameters restored exactly), averaged;
- ``hidden`` (after training): Caruana's hidden-unit analysis: each task's sensitivity
  ``mean |∂y_t/∂z_k|`` to each unit k of z over the validation rows (summed over a task's
  outputs), and the T×T Spearman rank correlation of those profiles;
- ``transfer`` (opt-in, small T): each pair {i, j} trained together (both main) and each task
  alone (``baselines.fit_stl``) under the same budget; entry [i][j] is the relative change of
  j's validation primary metric when trained with i, in %, signed like Δm (negative: i helps j).

``suggest_groups`` turns one measure into a partition of the main tasks by average-linkage
agglomerative clustering (see its docstring for the criterion); auxiliary tasks attach to the
groups they help.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .balancing import Balancer
from .balancing.jacobian import dense, task_jacobian
from .config import Config
from .data import Splits, TaskData
from .errors import ConfigError, one_of
from .tasks import Task

#: Every measure, in the order they are computed and reported.
MEASURES = ("gradient", "lookahead", "hidden", "transfer")
#: The measures ``relate`` records unless told otherwise (``transfer`` trains T(T−1)/2 + T
#: extra models and is opt-in).
DEFAULT_MEASURES = ("gradient", "lookahead", "hidden")
#: Below this mean silhouette a clustering has "no substantial structure" (Kaufman &
#: Rousseeuw): the tasks then form one group or are all trained alone (see suggest_groups).
NO_STRUCTURE = 0.25
#: A main task stays in its cluster only if its mean affinity to the other members is at least
#: this share of the strongest affinity between two main tasks; else it is trained alone.
MIN_SHARE = 0.25


@dataclass
class Relatedness:
    """The measured T×T matrices, the suggested groups and how they were obtained.

    ``measures[name][i][j]`` is how much task i relates to / helps task j: an affinity
    (higher = more related) for ``gradient``, ``lookahead`` and ``hidden``; for ``transfer``
    the signed relative change of j's metric in % (negative = i helps j).
    """

    tasks: list[str]
    main: list[str]
    measures: dict[str, np.ndarray]
    groups: list[list[str]]
    settings: dict[str, Any] = field(default_factory=dict)

    def affinity(self, measure: str) -> np.ndarray:
        """The measure as a directed affinity in [-1, 1] (see ``normalized_affinity``)."""
        return normalized_affinity(measure, self.measures[measure])

    def helpers(self, measure: str | None = None, *, top: int = 3) -> dict[str, list[str]]:
        """Each task's strongest helpers (positive affinity toward it), strongest first."""
        measure = measure or self.settings["grouping_measure"]
        a = self.affinity(measure)
        out = {}
        for j, name in enumerate(self.tasks):
            ranked = sorted(
                (i for i in range(len(self.tasks)) if i != j and a[i, j] > 0),
                key=lambda i: -a[i, j],
            )
            out[name] = [self.tasks[i] for i in ranked[:top]]
        return out

    def alone(self) -> list[str]:
        """The main tasks the grouping trains alone (singleton groups)."""
        return [g[0] for g in self.groups if len(g) == 1]

    def to_json(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "measures": {k: _finite_lists(v) for k, v in self.measures.items()},
            "groups": self.groups,
            "settings": self.settings,
        }

    def save(self, directory: str | Path) -> list[Path]:
        """``relatedness.json`` and one heatmap ``relatedness_MEASURE.png`` per measure."""
        from .io import write_json
        from .report import plot_relatedness

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_json(directory / "relatedness.json", self.to_json())
        paths = [directory / "relatedness.json"]
        for name, values in self.measures.items():
            paths.append(
                plot_relatedness(
                    values,
                    self.tasks,
                    directory / f"relatedness_{name}.png",
                    linkage=task_linkage(self.affinity(name)),
                    title=_TITLES[name],
                    signed=True,
                )
            )
        return paths


_TITLES = {
    "gradient": "gradient cosine similarity on the joint parameters (mean over steps)",
    "lookahead": "lookahead affinity 1 − L_j(after i's step)/L_j(before), row i → column j",
    "hidden": "Spearman correlation of hidden-unit sensitivity profiles mean|∂y_t/∂z_k|",
    "transfer": "Δ% of column j's metric when trained with row i (negative: i helps j)",
}


def _finite_lists(values: np.ndarray) -> list[list[float | None]]:
    return [[float(v) if math.isfinite(v) else None for v in row] for row in values]


# ---- grouping -------------------------------------------------------------------------------
def normalized_affinity(measure: str, values: np.ndarray) -> np.ndarray:
    """A measure as a directed affinity ``a[i, j]`` in [-1, 1] (higher: i helps j more),
    diagonal 1, so that one clustering rule serves every measure.

    ``gradient`` and ``hidden`` already are correlations. ``lookahead`` is divided by the
    geometric mean of the two self-affinities (to first order ``Z_ij ∝ g_i·g_j / L_j``, so
    this is close to a loss-weighted gradient cosine). ``transfer`` is negated (a negative
    change helps) and divided by its largest absolute off-diagonal entry.
    """
    a = np.array(values, dtype=float)
    a = np.where(np.isfinite(a), a, 0.0)
    n = len(a)
    off = ~np.eye(n, dtype=bool)
    if measure == "lookahead":
        d = np.sqrt(np.clip(np.diag(a), 1e-12, None))
        a = a / np.outer(d, d)
    elif measure == "transfer":
        a = -a
        scale = float(np.abs(a[off]).max()) if n > 1 else 0.0
        a = a / scale if scale > 0 else a * 0.0
    a = np.clip(a, -1.0, 1.0)
    np.fill_diagonal(a, 1.0)
    return a


def task_linkage(affinity: np.ndarray) -> np.ndarray:
    """The average-linkage tree (scipy's format) of the tasks on the distance 1 − a_sym."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    if len(affinity) < 2:
        return np.zeros((0, 4))
    sym = (affinity + affinity.T) / 2
    distance = np.clip(1.0 - sym, 0.0, None)
    np.fill_diagonal(distance, 0.0)
    return linkage(squareform(distance, checks=False), method="average")


def suggest_groups(
    affinity: np.ndarray,
    tasks: Sequence[str],
    main: Sequence[str],
    *,
    groups: int | None = None,
) -> list[list[str]]:
    """A partition of the ``main`` tasks, with auxiliary tasks attached, from a directed
    affinity in [-1, 1] (``normalized_affinity``).

    The main tasks are clustered by average linkage on ``1 − (a + aᵀ)/2``, the affinities
    first divided by the largest absolute one between two main tasks. The number of
    groups is ``groups`` when given; else the K in 2 … T−1 with the largest mean silhouette.
    When even that silhouette is below ``NO_STRUCTURE`` (0.25), there is no structure to cut:
    one group if the mean pairwise affinity is positive, else every task alone. Then a task
    whose mean scaled affinity to the rest of its group is below ``MIN_SHARE`` (0.25) leaves
    it (trained alone): a task that relates to its group far less than the closest pair of
    tasks relates is better off alone than diluting it.
    Each auxiliary task joins the one group toward whose main tasks its mean affinity is
    largest, if positive; an auxiliary task that helps no group is left out (the result is a
    valid ``model.groups``, where a task is in at most one group; there an auxiliary task left
    out attaches to every group, so drop it from the tasks to not train it at all).
    """
    from scipy.cluster.hierarchy import fcluster
    from sklearn.metrics import silhouette_score

    index = {n: i for i, n in enumerate(tasks)}
    m = [index[n] for n in main]
    a = affinity[np.ix_(m, m)]
    sym = (a + a.T) / 2
    n = len(m)
    if n == 0:
        return []
    if n == 1:
        labels = np.array([1])
    elif n == 2:
        labels = np.array([1, 1]) if sym[0, 1] > 0 else np.array([1, 2])
    else:
        # on the scale of the strongest pair: a gradient cosine of 0.3 between tasks that
        # share everything and of 0 between the rest is as clear a structure as 1 and 0
        scale = float(np.abs(sym[~np.eye(n, dtype=bool)]).max())
        a = a / scale if scale > 0 else a
        np.fill_diagonal(a, 1.0)
        sym = (a + a.T) / 2
        tree = task_linkage(a)
        distance = np.clip(1.0 - sym, 0.0, None)
        np.fill_diagonal(distance, 0.0)
        if groups is not None:
            labels = fcluster(tree, t=min(groups, n), criterion="maxclust")
        else:
            best, labels = -math.inf, np.arange(1, n + 1)
            for k in range(2, n):
                cut = fcluster(tree, t=k, criterion="maxclust")
                if len(set(cut)) < 2 or len(set(cut)) >= n:
                    continue
                score = float(silhouette_score(distance, cut, metric="precomputed"))
                if score > best + 1e-12:
                    best, labels = score, cut
            if best < NO_STRUCTURE:
                mean = float(sym[~np.eye(n, dtype=bool)].mean())
                labels = np.ones(n, dtype=int) if mean > 0 else np.arange(1, n + 1)
    members: dict[int, list[int]] = {}
    for position, label in enumerate(labels):
        members.setdefault(int(label), []).append(position)
    parts = [sorted(v) for v in members.values()]
    if groups is None and n > 2:
        parts = _split_off_unrelated(parts, sym)
    parts.sort(key=lambda p: p[0])
    result = [[main[p] for p in part] for part in parts]
    for name in tasks:
        if name in main:
            continue
        helps = [
            float(np.mean([affinity[index[name], index[t]] for t in group])) for group in result
        ]
        if helps and max(helps) > 0:
            result[int(np.argmax(helps))].append(name)
    return result


def _split_off_unrelated(parts: list[list[int]], sym: np.ndarray) -> list[list[int]]:
    """Tasks whose mean (scaled) affinity to the rest of their group is below ``MIN_SHARE``
    leave it, least related first, until every remaining member relates to its group."""
    out = []
    for part in parts:
        part = list(part)
        while len(part) > 1:
            means = [float(np.mean([sym[i, j] for j in part if j != i])) for i in part]
            worst = int(np.argmin(means))
            if means[worst] >= MIN_SHARE:
                break
            out.append([part.pop(worst)])
        out.append(part)
    return out


# ---- recording during training --------------------------------------------------------------
class _LastLosses:
    """Stands in for ``Trainer.losses``: the same losses, and it keeps the last call's
    targets and masks (the lookahead recomputes the losses on the step's batch)."""

    def __init__(self, losses: Any) -> None:
        self._losses = losses
        self.targets: Mapping[str, Tensor] = {}
        self.masks: Mapping[str, Tensor] = {}

    def __call__(self, packed: Tensor, targets: Mapping[str, Tensor], masks: Mapping[str, Tensor]):
        self.targets, self.masks = targets, masks
        return self._losses(packed, targets, masks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._losses, name)


class _Recorder(Balancer):
    """The configured balancer, wrapped: every ``every`` steps it records the gradient cosines
    and the lookahead affinities of the step, then lets the balancer take its step unchanged.
    """

    name = "relate-recorder"
    needs_features = True

    def __init__(
        self,
        inner: Balancer,
        names: Sequence[str],
        *,
        every: int,
        gradient: bool,
        lookahead: bool,
    ) -> None:
        super().__init__(inner.tasks, inner.options)
        self.inner = inner
        self.sets_grads = inner.sets_grads  # type: ignore[misc]
        self.names = list(names)
        self.every = every
        self.gradient, self.lookahead = gradient, lookahead
        t = len(self.names)
        self.cos_sum, self.cos_count = np.zeros((t, t)), np.zeros((t, t))
        self.look_sum, self.look_count = np.zeros((t, t)), np.zeros((t, t))
        self.seconds = {"gradient": 0.0, "lookahead": 0.0}
        self.steps = self.recorded = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.losses: _LastLosses | None = None
        self.inputs: tuple[tuple[Any, ...], dict[str, Any]] = ((), {})

    def parameters(self) -> list[nn.Parameter]:
        return self.inner.parameters()

    def end_epoch(self, train_losses: Mapping[str, float]) -> None:
        self.inner.end_epoch(train_losses)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def remember_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """A forward pre-hook: the last inputs the model saw (the step's batch)."""
        self.inputs = (args, kwargs)

    def backward(
        self,
        losses: Mapping[str, Tensor],
        *,
        model: nn.Module,
        features: Tensor | None = None,
        outputs: Tensor | None = None,
    ) -> dict[str, float]:
        record = self.steps % self.every == 0 and features is not None
        self.steps += 1
        rows: Tensor | None = None
        present: list[int] = []
        if record:
            started = time.perf_counter()
            rows, present = self._jacobian(losses, model, features, outputs)
            self.seconds["gradient"] += time.perf_counter() - started
            self.recorded += 1
        weights = self.inner.backward(
            losses,
            model=model,
            features=features if self.inner.needs_features else None,
            outputs=outputs,
        )
        if record and self.lookahead and rows is not None and len(present):
            # after the balancer's backward: the in-place steps below would otherwise
            # invalidate the graph it differentiates
            started = time.perf_counter()
            self._lookahead(model, rows, present)
            self.seconds["lookahead"] += time.perf_counter() - started
        return weights

    def _jacobian(
        self,
        losses: Mapping[str, Tensor],
        model: nn.Module,
        features: Tensor,
        outputs: Tensor | None,
    ) -> tuple[Tensor, list[int]]:
        names = list(losses)
        vector = torch.stack([losses[n] for n in names])
        _, joint = model.split_parameters()
        jac = task_jacobian(
            vector,
            features,
            task_params=[],
            joint_params=joint,
            outputs=outputs,
            slots=model.slots(names) if outputs is not None else None,
            output_map=model.output_map,
        )
        position = {n: i for i, n in enumerate(self.names)}
        present = [position[n] for n, p in zip(names, jac.present, strict=True) if p]
        rows = dense(jac.matrix).detach()
        if self.gradient and len(present):
            unit = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
            cos = (unit @ unit.T).cpu().double().numpy()
            cell = np.ix_(present, present)
            self.cos_sum[cell] += cos
            self.cos_count[cell] += 1
        return rows, present

    @torch.no_grad()
    def _lookahead(self, model: nn.Module, rows: Tensor, present: list[int]) -> None:
        assert self.optimizer is not None and self.losses is not None
        lr = float(self.optimizer.param_groups[0]["lr"])
        args, kwargs = self.inputs
        kwargs = {**kwargs, "packed": True, "features": False}
        _, joint = model.split_parameters()
        saved = [p.detach().clone() for p in joint]
        sizes = [p.numel() for p in joint]
        training = model.training
        model.eval()  # no dropout noise between the before and after losses

        def task_losses() -> np.ndarray:
            packed = model(*args, **kwargs)
            values = self.losses(packed.float(), self.losses.targets, self.losses.masks)
            return values.vector.double().cpu().numpy()

        try:
            before = task_losses()  # in the order of self.names (the model's task order)
            targets = [j for j in present if before[j] > 0]
            for r, i in enumerate(present):
                for p, start, g in zip(joint, saved, rows[r].split(sizes), strict=True):
                    p.copy_(start - lr * g.view_as(p).to(p.dtype))
                after = task_losses()
                for j in targets:
                    self.look_sum[i, j] += 1.0 - after[j] / before[j]
                    self.look_count[i, j] += 1
        finally:
            for p, start in zip(joint, saved, strict=True):
                p.copy_(start)
            model.train(training)

    def matrices(self) -> dict[str, np.ndarray]:
        out = {}
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.gradient:
                out["gradient"] = self.cos_sum / self.cos_count
            if self.lookahead:
                out["lookahead"] = self.look_sum / self.look_count
        return out


# ---- hidden-unit sensitivity ----------------------------------------------------------------
def hidden_sensitivity(model: nn.Module, data: TaskData, *, chunk: int = 512) -> np.ndarray:
    """``S[t, k]`` = mean over the rows of ``data`` of Σ_o |∂y_{t,o}/∂z_k|: how strongly task
    t's outputs (before the link function) move with unit k of the representation z.

    One vectorized backward per chunk of rows, with one cotangent per (task, output) slot;
    rows do not interact, so the gradient at z row n is row n's own derivative.
    """
    training = model.training
    model.eval()
    names = model.task_names
    t, width_out = len(names), model.max_out
    total: Tensor | None = None
    valid = torch.zeros(t, width_out, dtype=torch.bool)
    for s, name in enumerate(names):
        valid[s, : model.out_dims[name]] = True
    slots = valid.flatten().nonzero().flatten()
    try:
        for start in range(0, len(data), chunk):
            rows = torch.arange(start, min(start + chunk, len(data)), device=data.x_num.device)
            batch = data.batch(rows)
            packed, z = model(batch.x_num, batch.x_cat, packed=True, features=True)
            eye = torch.zeros(len(slots), t * width_out, dtype=packed.dtype, device=packed.device)
            eye[torch.arange(len(slots)), slots.to(packed.device)] = 1.0
            cot = eye.view(len(slots), 1, t, width_out).expand(-1, len(rows), -1, -1)
            (grads,) = torch.autograd.grad(packed, [z], grad_outputs=cot, is_grads_batched=True)
            part = grads.detach().abs().flatten(2).sum(1)  # (slots, width)
            by_task = torch.zeros(t, part.shape[1], dtype=part.dtype, device=part.device)
            by_task.index_add_(0, (slots // width_out).to(part.device), part)
            total = by_task if total is None else total + by_task
    finally:
        model.train(training)
    assert total is not None
    return (total / max(len(data), 1)).double().cpu().numpy()


def rank_correlation(profiles: np.ndarray) -> np.ndarray:
    """The T×T Spearman correlation of the rows of ``profiles`` (0 where a row is constant)."""
    from scipy.stats import rankdata

    ranks = np.apply_along_axis(rankdata, 1, profiles)
    ranks = ranks - ranks.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(ranks, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    unit = ranks / safe[:, None]
    corr = unit @ unit.T
    corr[norms == 0, :] = 0.0
    corr[:, norms == 0] = 0.0
    np.fill_diagonal(corr, 1.0)
    return corr


# ---- one training run -----------------------------------------------------------------------
@contextlib.contextmanager
def recording(
    trainer: Any, *, every: int = 10, gradient: bool = True, lookahead: bool = False
) -> Iterator[_Recorder]:
    """Inside the block, ``trainer`` (a ``train.Trainer``) records the gradient and/or
    lookahead measures every ``every`` steps while it trains; its balancer takes the same steps.
    The recorder's ``matrices()`` gives them after; the trainer is restored on exit."""
    names = list(trainer.model.task_names)
    recorder = _Recorder(
        trainer.balancer, names, every=every, gradient=gradient, lookahead=lookahead
    )
    recorder.optimizer = trainer.optimizer
    losses = trainer.losses
    recorder.losses = _LastLosses(losses)
    trainer.balancer, trainer.losses = recorder, recorder.losses
    hook = trainer.model.register_forward_pre_hook(recorder.remember_inputs, with_kwargs=True)
    try:
        yield recorder
    finally:
        hook.remove()
        trainer.balancer, trainer.losses = recorder.inner, losses


@dataclass
class _Recorded:
    tasks: list[str]
    main: list[str]
    measures: dict[str, np.ndarray]
    seconds: dict[str, float]
    steps: int
    recorded: int
    hidden_rows: str


def _record_run(
    config: Config,
    splits: Splits,
    measures: Sequence[str],
    *,
    every: int,
    callback: Callable[[dict[str, float]], None] | None,
) -> _Recorded:
    """Train ``config`` on ``splits`` with the recorder around its balancer (the setup of
    ``train.fit``, then ``Trainer.fit``); then the hidden-unit sensitivities."""
    from .train import Trainer, prepare, resolve_tasks, seeded_model

    tasks = resolve_tasks(config)
    trained = config
    if config.signals is not None:
        from .signals import expand

        expanded = expand(config, splits, tasks)
        trained, splits = expanded.config, expanded.splits
        tasks = resolve_tasks(trained)
    preprocessor, encoded = prepare(trained, splits, tasks)
    trainer = Trainer(seeded_model(config, preprocessor), tasks, config.train, callback=callback)
    started = time.perf_counter()
    with recording(
        trainer, every=every, gradient="gradient" in measures, lookahead="lookahead" in measures
    ) as recorder:
        trainer.fit(encoded["train"], encoded.get("validation"))
    seconds = {"train": time.perf_counter() - started, **recorder.seconds}
    found = recorder.matrices()
    held_out = "validation" if "validation" in encoded else "train"
    if "hidden" in measures:
        started = time.perf_counter()
        data = encoded[held_out].to(trainer.device)
        found["hidden"] = rank_correlation(hidden_sensitivity(trainer.model, data))
        seconds["hidden"] = time.perf_counter() - started
    main = [t.name for t in tasks if t.is_main]
    names = list(trainer.model.task_names)
    return _Recorded(names, main, found, seconds, recorder.steps, recorder.recorded, held_out)


# ---- transfer -------------------------------------------------------------------------------
def _validation_scores(job: tuple[Config, Splits]) -> dict[str, dict[str, float]]:
    """One pair run of ``transfer_matrix`` (in a worker process): its validation scores."""
    from .train import fit

    config, splits = job
    return fit(config, splits=splits).metrics.get("validation", {})


def transfer_matrix(
    config: Config, splits: Splits, tasks: Sequence[Task], *, workers: int = 1
) -> np.ndarray:
    """``D[i, j]``: the relative change in % of task j's validation primary metric when
    trained with task i (both main, one shared network) against j alone (``fit_stl``), signed
    like Δm (negative: i helps j). Every model has ``config``'s budget and seed; the pair runs
    are trained in ``workers`` processes (``parallel.Pool``)."""
    from .baselines import feature_columns, fit_stl
    from .evaluate import relative_change
    from .parallel import Pool

    if not len(splits.validation):
        raise ConfigError("relate: the transfer measure needs a validation split")
    features = feature_columns(config, splits)
    as_main = [t.model_copy(update={"role": "main"}) for t in tasks]
    train = config.train.model_copy(update={"select": "joint", "finetune": None})
    data = config.data.model_copy(update={"features": features})

    def with_tasks(chosen: list[Task]) -> Config:
        return config.model_copy(update={"tasks": chosen, "data": data, "train": train})

    def score(scores: Mapping[str, Mapping[str, float]], task: Task) -> float:
        return float(scores.get(task.name, {}).get(task.primary_metric, math.nan))

    alone = fit_stl(with_tasks(as_main), splits)
    stl = {t.name: score(alone[t.name].metrics.get("validation", {}), t) for t in as_main}
    t = len(as_main)
    pairs = [(i, j) for i in range(t) for j in range(i + 1, t)]
    with Pool(min(workers, max(len(pairs), 1))) as pool:
        found = pool.map(
            _validation_scores,
            [(with_tasks([as_main[i], as_main[j]]), splits) for i, j in pairs],
        )
    d = np.zeros((t, t))
    for (i, j), scores in zip(pairs, found, strict=True):
        for a, b in ((i, j), (j, i)):
            task = as_main[b]
            d[a, b] = relative_change(task.primary_metric, score(scores, task), stl[task.name])
    return d


# ---- the entry point ------------------------------------------------------------------------
def relate(
    config: Config,
    *,
    seeds: int = 1,
    measures: Sequence[str] = DEFAULT_MEASURES,
    groups: int | None = None,
    out: str | Path | None = None,
    every: int = 10,
    grouping_measure: str | None = None,
    splits: Splits | None = None,
    callback: Callable[[dict[str, float]], None] | None = None,
    workers: int = 1,
) -> Relatedness:
    """Measure how the tasks of ``config`` relate and suggest a grouping of the main tasks.

    Trains ``seeds`` models (``train.seed``, ``train.seed + 1``, …) as ``fit`` would and
    averages each measure over them (see the module docstring); ``every``: record the gradient
    and lookahead measures at every ``every``-th step. ``grouping_measure`` (default
    ``gradient`` when measured, else the first measure) gives the groups (``suggest_groups``;
    ``groups`` fixes their number). ``splits`` overrides the data (as in ``fit``). With
    ``out`` the JSON and the heatmaps are written there. ``workers``: processes that train the
    ``transfer`` pair runs in parallel (one torch thread each).
    """
    from .train import load_splits, resolve_tasks

    measures = list(dict.fromkeys(measures))
    unknown = [m for m in measures if m not in MEASURES]
    if unknown or not measures:
        raise ConfigError(f"measure: {unknown or 'none'} is not a measure ({one_of(MEASURES)})")
    if seeds < 1:
        raise ConfigError(f"seeds: {seeds} must be at least 1")
    if every < 1:
        raise ConfigError(f"every: {every} must be at least 1")
    if groups is not None and groups < 1:
        raise ConfigError(f"groups: {groups} must be at least 1")
    if grouping_measure is None:
        grouping_measure = "gradient" if "gradient" in measures else measures[0]
    if grouping_measure not in measures:
        raise ConfigError(
            f"grouping_measure: {grouping_measure!r} is not among the measures {measures}"
        )
    if splits is None:
        splits = load_splits(config)
    trained = [m for m in measures if m != "transfer"]
    sums: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, float] = {}
    names: list[str] = []
    main: list[str] = []
    steps = recorded = 0
    held_out = "validation"
    for s in range(seeds):
        cfg = config.with_train(seed=config.train.seed + s)
        if trained:
            run = _record_run(cfg, splits, trained, every=every, callback=callback)
            names, main, held_out = run.tasks, run.main, run.hidden_rows
            steps, recorded = steps + run.steps, recorded + run.recorded
            for k, v in run.seconds.items():
                seconds[k] = seconds.get(k, 0.0) + v
            for k, v in run.measures.items():
                sums.setdefault(k, []).append(v)
        if "transfer" in measures:
            tasks = resolve_tasks(cfg)
            if not names:
                names = [t.name for t in tasks]
                main = [t.name for t in tasks if t.is_main]
            by_name = {t.name: t for t in tasks}
            started = time.perf_counter()
            sums.setdefault("transfer", []).append(
                transfer_matrix(cfg, splits, [by_name[n] for n in names], workers=workers)
            )
            seconds["transfer"] = seconds.get("transfer", 0.0) + time.perf_counter() - started
    with np.errstate(invalid="ignore"):
        found = {m: np.nanmean(np.stack(sums[m]), axis=0) for m in measures}
    affinity = normalized_affinity(grouping_measure, found[grouping_measure])
    result = Relatedness(
        tasks=names,
        main=main,
        measures=found,
        groups=suggest_groups(affinity, names, main, groups=groups),
        settings={
            "seeds": [config.train.seed + s for s in range(seeds)],
            "every": every,
            "grouping_measure": grouping_measure,
            "groups": groups if groups is not None else "silhouette",
            "unattached_auxiliary": [],
            "balancer": config.train.balancer,
            "lookahead_lr": config.train.lr,
            "hidden_rows": held_out,
            "steps": steps,
            "recorded_steps": recorded,
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
        },
    )
    listed = {n for g in result.groups for n in g}
    result.settings["unattached_auxiliary"] = [n for n in names if n not in listed]
    if out is not None:
        result.save(out)
    return result
