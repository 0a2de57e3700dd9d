"""Gradient-aggregation balancers: per-task gradients of the joint part combined into one update.

Most aggregators are torchjd's (``torchjd.aggregation``); Nash-MTL, CAGrad, PCGrad and GradVac
are polytask's own (``gramian``). This module feeds them the Jacobian from
``jacobian.task_jacobian`` at one of two levels, over the model's ``parameter_groups()`` (see
``models.multitask``):

- ``parameters``: rows are the task gradients w.r.t. all joint (shared and other) parameters
  (exact, T× the memory of one gradient);
- ``representation``: rows are the task gradients w.r.t. the model's representation z (the
  cheap approximation, MGDA-UB style); the aggregated z-gradient is then pulled back once to
  the joint parameters, which equals their gradient of Σ w_t L_t with the weights the
  aggregator implies.

Task-specific parameters get the plain sum of their tasks' gradients (each sees only its own
loss). A model with no joint parameter (soft sharing) has nothing to aggregate: every task's
parameters get its own loss's gradient and the weights are 1. Tasks absent from a batch are left
out of the Jacobian for that step.

Nash-MTL and CAGrad are solved in torch on the T×T Gramian ``G = JJᵀ`` (damped Newton and an
active-set method), so that no balancer needs a generic solver (cvxpy) at run time; PCGrad and
GradVac also work on G, in T − 1 steps vectorized over the tasks (not a Python loop over task
pairs), in a random order seeded with ``seed``. Every aggregator but GradDrop needs only G: at
the representation level with linear heads G comes from the factors of J
(``jacobian.FactoredRows``), and J is never formed.

Every aggregator except GradDrop takes two many-task options: ``every: k`` (recompute the
weights every k steps; in between the step is ``w_oldᵀJ`` with the current J, obtained as one
ordinary backward of Σ w_t L_t, so no per-task Jacobian through the joint parameters and no
solve) and ``subset: m`` (above m present tasks, aggregate a seeded random m of them per step,
the others weighted 0 that step).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from ..errors import ConfigError, PolytaskWarning
from ..models.multitask import MultiTaskModel
from .base import Balancer, register_balancer
from .gramian import BatchedProjector, GramianSolver
from .gramian import CAGrad as _CAGrad
from .gramian import FairGrad as _FairGrad
from .gramian import GradVac as _GradVac
from .gramian import NashMTL as _NashMTL
from .gramian import PCGrad as _PCGrad
from .jacobian import (
    BlockRows,
    Rows,
    add_flat_grad,
    add_grads,
    combine,
    dense,
    gramian,
    parameter_rows,
    select,
    task_jacobian,
    times,
)

Level = Literal["parameters", "representation"]

#: From this many tasks an aggregator at the parameter level, or UPGrad, warns that its step is
#: costly unless ``every`` or ``subset`` is set (from ten times this many, every aggregator).
MANY_TASKS = 100


class LevelOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: Level = "parameters"


class AggregatorOptions(LevelOptions):
    """The options every aggregator with task weights takes (GradDrop has none: no weights)."""

    every: int = Field(1, gt=0)
    subset: int | None = Field(None, ge=2)
    seed: int = 0


class _Aggregation(Balancer):
    """Base of the aggregators: subclasses give ``_make(options)``, a torchjd aggregator or one
    of polytask's Gramian solvers (``GramianSolver``)."""

    needs_features = True
    sets_grads = True
    Options: ClassVar[type[BaseModel]] = AggregatorOptions

    def __init__(self, tasks, options=None) -> None:
        super().__init__(tasks, options)
        self._warn_if_many()
        self._aggregators: dict[tuple[bool, ...], Any] = {}
        self._template = self._make(len(self.tasks))  # the one ``_cap`` asks
        self._steps = 0
        # present tasks → (window, rows of the present tasks weighted, their weights)
        self._reused: dict[tuple[bool, ...], tuple[int, Tensor, Tensor]] = {}
        seed = getattr(self.options, "seed", 0)
        self._draws = torch.Generator().manual_seed(seed)

    def _make(self, n_tasks: int) -> Any:
        raise NotImplementedError

    def _warn_if_many(self) -> None:
        """Say so where the step will cost far more than equal weights and neither ``every``
        nor ``subset`` is set (the thresholds follow ``benchmarks/many_tasks.py``: at T = 100 a
        parameter-level step costs 30–100× the T = 1 step; at T = 1,000 every aggregator 30×
        or more. UPGrad's T projections, batched in torch, still cost up to T·k³ for free sets
        of k tasks: a step ~10× the T = 1 step at T = 100 and seconds at T = 1,000, at either
        level)."""
        n, o = len(self.tasks), self.options
        if getattr(o, "every", 1) > 1 or getattr(o, "subset", None) is not None:
            return
        level = getattr(o, "level", "parameters")
        costly = n >= MANY_TASKS and (level == "parameters" or self.name == "upgrad")
        if not (costly or n >= 10 * MANY_TASKS):
            return
        work = []
        if level == "parameters":
            work.append(f"pulls {n} gradients back through the trunk")
        if self.name == "upgrad":
            work.append(f"solves {n} quadratic programs of {n} variables")
        elif self.name != "graddrop":
            work.append(f"solves on a {n}×{n} Gramian")
        advice = "train.balancer_options subset: 32 or every: 16 cut that cost a lot"
        if self.name == "graddrop":  # no weights to reuse or subset
            advice = (
                "level: representation is far cheaper"
                if level == "parameters"
                else "GradDrop has no every or subset option"
            )
        warnings.warn(
            f"train.balancer: {self.name!r} at level {level!r} with {n} tasks "
            f"{' and '.join(work)} every step; {advice} (see 'Many tasks: every and subset' in "
            "docs/balancers.md and benchmarks/many_tasks.py)",
            PolytaskWarning,
            stacklevel=3,
        )

    def _aggregator(self, present: list[bool]) -> Any:
        # Stateful aggregators (GradVac, Nash-MTL) keep one state per set of present tasks.
        key = tuple(present)
        if key not in self._aggregators:
            self._aggregators[key] = self._make(sum(present))
        return self._aggregators[key]

    def weights_and_direction(self, matrix: Rows, present: list[bool]) -> tuple[Tensor, Tensor]:
        """The aggregator's task weights w (present tasks) and direction d = wᵀJ."""
        if len(matrix) == 1:  # one task: every method reduces to its gradient
            ones = torch.ones(1)
            return ones, combine(matrix, ones)
        w, d = self._combine(self._aggregator(present), matrix)
        factor = _cap(self._template, d.norm())
        return w * factor, d * factor

    @staticmethod
    def _combine(agg: Any, matrix: Rows) -> tuple[Tensor, Tensor]:
        """Uncapped weights and direction; Gramian-only weightings get G = JJᵀ (T×T) alone
        (from the factors, when the rows are factored, without forming J)."""
        from torchjd.aggregation import GramianWeightedAggregator, WeightedAggregator

        if isinstance(agg, GramianSolver):
            w = agg.weights(gramian(matrix))
        elif isinstance(agg, GramianWeightedAggregator):
            w = agg.gramian_weighting(gramian(matrix))
        elif isinstance(agg, WeightedAggregator):
            w = agg.weighting(dense(matrix))
        else:  # not a linear combination (GradDrop): report least-squares implied weights
            rows = matrix if isinstance(matrix, BlockRows) else dense(matrix)
            d = agg(rows)
            # the normal equations JJᵀw = Jd (T×T) cost less than a QR of the n×T matrix Jᵀ
            gram = gramian(rows).double()
            jd = times(rows, d).double().unsqueeze(1)
            w = torch.linalg.lstsq(gram, jd).solution.squeeze(1)
            return w.to(d.dtype).detach(), d.detach()
        w = w.detach().to(matrix.dtype if isinstance(matrix, Tensor) else torch.float32)
        return w, combine(matrix, w)

    def backward(
        self,
        losses: Mapping[str, Tensor],
        *,
        model: nn.Module,
        features: Tensor | None = None,
        outputs: Tensor | None = None,
    ) -> dict[str, float]:
        if features is None:
            raise ValueError(f"balancer {self.name!r} needs the model's representation z")
        if not isinstance(model, MultiTaskModel):
            raise ConfigError(
                f"train.balancer: {self.name!r} needs a polytask MultiTaskModel (its "
                f"parameter_groups), got {type(model).__name__}"
            )
        names, stacked = self._weighted(losses)
        specific, joint = model.split_parameters()
        if not joint:  # nothing serves two tasks: each task's parameters get its own gradient
            stacked.sum().backward()
            return dict(zip(names, (stacked.detach() != 0).float().tolist(), strict=True))
        by_params = self.options.level == "parameters"
        many = getattr(self.options, "every", 1) > 1 or getattr(self.options, "subset", None)
        fast = outputs is not None
        jac = task_jacobian(
            stacked,
            features,
            task_params=specific,
            joint_params=joint if by_params and not many else None,
            outputs=outputs if fast else None,
            slots=model.slots(names) if fast else None,
            output_map=model.output_map if fast else None,
        )
        add_grads(specific, jac.task_grads)
        weights = {n: 0.0 for n in names}
        if not len(jac.matrix):
            return weights
        present_names = [n for n, p in zip(names, jac.present, strict=True) if p]
        if many:
            chosen, w = self._many_tasks(jac.matrix, jac.present, features, joint, by_params)
            present_names = [n for n, c in zip(present_names, chosen, strict=True) if c]
        else:
            w, direction = self.weights_and_direction(jac.matrix, jac.present)
            if by_params:
                add_flat_grad(joint, direction)
            else:
                _pull(features, joint, direction)
        weights.update(zip(present_names, w.tolist(), strict=True))
        return weights

    def _many_tasks(
        self,
        jac_z: Rows,
        present: list[bool],
        features: Tensor,
        joint: list[Tensor],
        by_params: bool,
    ) -> tuple[list[bool], Tensor]:
        """The step under ``every``/``subset``, from the z-level rows ``jac_z`` of the present
        tasks. Weights are reused within a window of ``every`` steps (per set of present tasks),
        else computed on the (sub)set's rows, pulled back through the joint parameters only at
        the parameter level. Returns which present tasks are weighted and their weights."""
        o = self.options
        window, self._steps = self._steps // o.every, self._steps + 1
        cached = self._reused.get(tuple(present))
        if cached is not None and cached[0] == window:
            _, rows, w = cached
        else:
            rows = torch.arange(len(jac_z), device=features.device)
            drawn = o.subset is not None and len(jac_z) > o.subset
            if drawn:
                picked = torch.randperm(len(jac_z), generator=self._draws)[: o.subset]
                rows = picked.sort().values.to(features.device)
            sub = select(jac_z, rows)
            matrix = parameter_rows(features, joint, dense(sub)) if by_params else sub
            if len(matrix) == 1:
                w = torch.ones(1)
            else:
                # a stateful aggregator keeps no state across random subsets (one per subset
                # would grow without bound): a drawn subset gets a fresh one
                agg = self._make(len(sub)) if drawn else self._aggregator(present)
                if drawn and isinstance(agg, GramianSolver):  # PCGrad's, GradVac's orders go
                    agg.reseed(self._draws)  # on from the balancer's, not from ``seed`` again
                w, _ = self._combine(agg, matrix)
            if o.every > 1:  # keep the current window's weights only
                self._reused = {k: v for k, v in self._reused.items() if v[0] == window}
                self._reused[tuple(present)] = (window, rows, w)
        # wᵀJ is the gradient of Σ w_t L_t: one ordinary backward from z, at either level
        cotangent = combine(select(jac_z, rows), w)
        if by_params:
            grads = _pull(features, joint, cotangent, into=False)
            norm = torch.stack([g.float().pow(2).sum() for g in grads if g is not None])
            factor = _cap(self._template, norm.sum().sqrt())
            add_grads(joint, [None if g is None else g * factor for g in grads])
        else:
            factor = _cap(self._template, cotangent.norm())
            _pull(features, joint, cotangent * factor)
        chosen = [False] * len(jac_z)
        for r in rows.tolist():
            chosen[r] = True
        return chosen, w * factor

    def state_dict(self) -> dict[str, Any]:
        # the solvers' own state (GradVac's targets, Nash-MTL's warm start, the random orders;
        # per set of present tasks, as "solver.<0/1 per task>.…"), the step count, the subset
        # draws and the weights reused in the current window of ``every`` steps (as
        # "reused.<0/1 per task>.…") resume exactly
        state: dict[str, Any] = {}
        for present, agg in self._aggregators.items():
            if isinstance(agg, GramianSolver):
                key = "solver." + _bits(present)
                state.update({f"{key}.{k}": v for k, v in agg.state_dict().items()})
        if getattr(self.options, "every", 1) == 1 and getattr(self.options, "subset", None) is None:
            return state
        state["steps"] = torch.tensor(self._steps)
        state["draws"] = self._draws.get_state()
        for present, (window, rows, w) in self._reused.items():
            key = "reused." + _bits(present)
            state[f"{key}.window"] = torch.tensor(window)
            state[f"{key}.rows"] = rows.detach().cpu()
            state[f"{key}.weights"] = w.detach().cpu()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "steps" in state:
            self._steps = int(state["steps"])
        if "draws" in state:
            self._draws.set_state(state["draws"])
        self._reused = {}
        for name in state:
            if name.startswith("reused.") and name.endswith(".window"):
                key = name[len("reused.") : -len(".window")]
                present = tuple(bit == "1" for bit in key)
                self._reused[present] = (
                    int(state[name]),
                    state[f"reused.{key}.rows"],
                    state[f"reused.{key}.weights"],
                )
        solvers: dict[str, dict[str, Any]] = {}
        for name, value in state.items():
            if name.startswith("solver."):
                key, field = name[len("solver.") :].split(".", 1)
                solvers.setdefault(key, {})[field] = value
        for key, solver_state in solvers.items():
            self._aggregator([bit == "1" for bit in key]).load_state_dict(solver_state)


def _bits(present: tuple[bool, ...]) -> str:
    """A set of present tasks as a key: one 0/1 per task."""
    return "".join("1" if p else "0" for p in present)


def _cap(agg: Any, norm: Tensor) -> float:
    """The factor a capped aggregator (Nash-MTL's ``max_norm``) applies to a direction of this
    norm; 1 for the others."""
    return agg.cap(float(norm.detach())) if isinstance(agg, GramianSolver) else 1.0


def _pull(
    features: Tensor, joint: list[Tensor], direction: Tensor, *, into: bool = True
) -> tuple[Tensor | None, ...] | None:
    """Pull a z-gradient back to the joint parameters (one ordinary backward)."""
    cotangent = direction.view_as(features).to(features.dtype)
    grads = torch.autograd.grad(features, joint, cotangent, allow_unused=True)
    if into:
        add_grads(joint, grads)
        return None
    return grads


def _aggregator(
    name: str, description: str, reference: str, options: type[BaseModel]
) -> Callable[[Callable[[Any, int], Any]], type[_Aggregation]]:
    """Register an aggregation balancer whose torchjd aggregator ``make(options, T)`` builds."""

    def decorate(make: Callable[[Any, int], Any]) -> type[_Aggregation]:
        cls = type(
            make.__name__,
            (_Aggregation,),
            {
                "name": name,
                "description": description,
                "reference": reference,
                "Options": options,
                "_make": lambda self, n: make(self.options, n),
                "__doc__": make.__doc__,
                "__module__": __name__,
            },
        )
        return register_balancer(cls)

    return decorate


class MGDAOptions(AggregatorOptions):
    epsilon: float = Field(1e-3, gt=0)
    max_iters: int = Field(100, gt=0)


@_aggregator(
    "mgda",
    "min-norm point of the convex hull of task gradients (level=representation: MGDA-UB)",
    "Sener & Koltun 2018",
    MGDAOptions,
)
def MGDA(o: MGDAOptions, n: int) -> Any:
    """Multiple-gradient descent: the min-norm convex combination (Frank-Wolfe)."""
    from torchjd.aggregation import MGDA

    return MGDA(epsilon=o.epsilon, max_iters=o.max_iters)


@_aggregator(
    "pcgrad", "projects away conflicting gradient components", "Yu et al. 2020", AggregatorOptions
)
def PCGrad(o: AggregatorOptions, n: int) -> Any:
    """Projecting conflicting gradients (on the Gramian, in a seeded random order,
    ``gramian.PCGrad``)."""
    return _PCGrad(seed=o.seed)


class CAGradOptions(AggregatorOptions):
    c: float = Field(0.4, ge=0)


@_aggregator(
    "cagrad",
    "maximizes the worst task improvement near the average gradient",
    "Liu et al. 2021",
    CAGradOptions,
)
def CAGrad(o: CAGradOptions, n: int) -> Any:
    """Conflict-averse gradient descent (solved in torch on the Gramian, ``gramian.CAGrad``)."""
    return _CAGrad(c=o.c)


@_aggregator(
    "imtl_g",
    "direction with equal projections on all unit task gradients",
    "Liu et al. 2021",
    AggregatorOptions,
)
def IMTLG(o: AggregatorOptions, n: int) -> Any:
    """Impartial multi-task learning, gradient part."""
    from torchjd.aggregation import IMTLG

    return IMTLG()


@_aggregator(
    "graddrop",
    "randomly drops gradient signs by their consistency",
    "Chen et al. 2020",
    LevelOptions,
)
def GradDrop(o: LevelOptions, n: int) -> Any:
    """Gradient sign dropout."""
    return _GradDrop()


class _GradDrop:
    """GradDrop (Chen et al. 2020) as torchjd computes it (the same draw from torch's global
    generator, so the same direction), in one pass over J instead of a loop over its rows: each
    coordinate keeps its tasks' positive parts where P = ½(1 + Σ g / Σ |g|) exceeds a uniform
    draw, else their negative parts. J may come as parameter blocks (the sums are per column,
    so per block; one draw for all)."""

    def __call__(self, matrix: Tensor | BlockRows) -> Tensor:
        blocks = matrix.blocks if isinstance(matrix, BlockRows) else [matrix]
        first = blocks[0]
        if first.shape[0] == 0 or sum(b.shape[1] for b in blocks) == 0:
            return first.new_zeros(sum(b.shape[1] for b in blocks))
        positive = torch.cat([b.clamp(min=0).sum(dim=0) for b in blocks])
        negative = torch.cat([b.clamp(max=0).sum(dim=0) for b in blocks])
        purity = 0.5 * (1 + (positive + negative) / (positive - negative))
        draw = torch.rand(purity.shape, dtype=first.dtype, device=first.device)
        return (purity > draw) * positive + (purity < draw) * negative


class GradVacOptions(AggregatorOptions):
    beta: float = Field(0.5, ge=0, le=1)


@_aggregator(
    "gradvac",
    "aligns gradient similarities to their running targets",
    "Wang et al. 2021",
    GradVacOptions,
)
def GradVac(o: GradVacOptions, n: int) -> Any:
    """Gradient vaccine (on the Gramian, in a seeded random order, ``gramian.GradVac``)."""
    return _GradVac(n, beta=o.beta, seed=o.seed)


class NashMTLOptions(AggregatorOptions):
    max_norm: float = Field(1.0, ge=0)
    update_weights_every: int = Field(1, gt=0)
    optim_niter: int = Field(50, gt=0)
    ridge: float = Field(1e-6, gt=0)


@_aggregator(
    "nash_mtl",
    "Nash bargaining solution over task gradients",
    "Navon et al. 2022",
    NashMTLOptions,
)
def NashMTL(o: NashMTLOptions, n: int) -> Any:
    """Multi-task learning as a bargaining game (damped Newton on the Gramian,
    ``gramian.NashMTL``; ``optim_niter`` caps the Newton steps)."""
    return _NashMTL(
        n,
        max_norm=o.max_norm,
        update_weights_every=o.update_weights_every,
        max_iter=o.optim_niter,
        ridge=o.ridge,
    )


class AlignedMTLOptions(AggregatorOptions):
    scale_mode: Literal["min", "median", "rmse"] = "min"


@_aggregator(
    "aligned_mtl",
    "aligns the principal components of the gradient matrix",
    "Senushkin et al. 2023",
    AlignedMTLOptions,
)
def AlignedMTL(o: AlignedMTLOptions, n: int) -> Any:
    """Aligned-MTL: a condition number of one for the gradient system."""
    from torchjd.aggregation import AlignedMTL

    return AlignedMTL(scale_mode=o.scale_mode)


@_aggregator(
    "upgrad",
    "mean of task gradients each projected onto the dual cone",
    "Quinton & Rey 2024",
    AggregatorOptions,
)
def UPGrad(o: AggregatorOptions, n: int) -> Any:
    """Unconflicting projection of gradients (Jacobian descent): torchjd's aggregator with
    polytask's projector, all T projections solved at once in torch
    (``gramian.BatchedProjector``) instead of one quadprog program per task."""
    from torchjd.aggregation import UPGrad

    return UPGrad(projector=BatchedProjector())


class FairGradOptions(AggregatorOptions):
    alpha: float = Field(1.0, gt=0)
    max_iter: int = Field(50, gt=0)
    ridge: float = Field(1e-8, gt=0)


@_aggregator(
    "fairgrad",
    "α-fair utility maximization over task improvements",
    "Ban & Ji 2024",
    FairGradOptions,
)
def FairGrad(o: FairGradOptions, n: int) -> Any:
    """Fair resource allocation in multi-task learning (damped Newton on the Gramian,
    ``gramian.FairGrad``; ``max_iter`` caps the Newton steps)."""
    return _FairGrad(n, alpha=o.alpha, max_iter=o.max_iter, ridge=o.ridge)
