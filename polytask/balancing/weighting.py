"""Loss-weighting balancers: the step is the gradient of a weighted sum of task losses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from ..losses import TaskLossValues
from ..tasks import Task
from .base import Balancer, batch_norms, register_balancer

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
        self._present: dict[tuple[str, ...], dict[str, float]] = {}

    def backward(
        self,
        losses: Mapping[str, Tensor],
        *,
        model: nn.Module,
        features: Tensor | None = None,
        outputs: Tensor | None = None,
    ) -> dict[str, float]:
        weights = self._present_weights(losses)
        if isinstance(losses, TaskLossValues) and losses.vector.dtype in _FULL_PRECISION:
            # The same weighted sum on the loss vector: one multiply, not one per task.
            alpha, gather = self._weights_for(losses, weights)
            vector = losses.vector if gather is None else losses.vector.index_select(0, gather)
            total = (vector * alpha).sum()
        else:
            total = torch.stack([losses[n] * w for n, w in weights.items()]).sum()
        total.backward()
        return dict(weights)

    def _present_weights(self, losses: Mapping[str, Tensor]) -> dict[str, float]:
        """α of the tasks in ``losses``, made once per set of loss names (not once a step)."""
        key = losses.names if isinstance(losses, TaskLossValues) else tuple(losses)
        weights = self._present.get(key)
        if weights is None:
            weights = self._present[key] = {
                t.name: t.weight for t in self.tasks if t.name in losses
            }
        return weights

    def _weights_for(
        self, losses: TaskLossValues, weights: dict[str, float]
    ) -> tuple[Tensor, Tensor | None]:
        """α as a tensor in the order of ``weights`` (the tasks' order, as in the sum above),
        and the positions of those tasks in ``losses.vector`` unless they are already 0..T-1.
        ``weights`` is ``_present_weights(losses)``, a function of the loss names: they key it."""
        vector = losses.vector
        key = (losses.names, vector.device, vector.dtype)
        cached = self._weight_cache.get(key)
        if cached is None:
            alpha = torch.tensor(list(weights.values()), dtype=vector.dtype, device=vector.device)
            at = {n: i for i, n in enumerate(losses.names)}
            positions = [at[n] for n in weights]
            gather = None
            if positions != list(range(len(losses.names))):
                gather = torch.tensor(positions, dtype=torch.long, device=vector.device)
            cached = self._weight_cache[key] = (alpha, gather)
        return cached


def _stacked(balancer: Balancer, losses: Mapping[str, Tensor]) -> tuple[list[str], Tensor, Tensor]:
    """Task names, the α-weighted losses ``(T,)`` and which tasks are present (loss ≠ 0)."""
    names, stacked = balancer._weighted(losses)
    return names, stacked, stacked.detach() != 0


def _as_dict(names: list[str], weights: Tensor) -> dict[str, float]:
    return dict(zip(names, weights.detach().float().cpu().tolist(), strict=True))


class _LearnedLog(Balancer):
    """A balancer with one learned log-scale per task, optimized beside the model."""

    def __init__(self, tasks, options=None) -> None:
        super().__init__(tasks, options)
        self.index = {t.name: i for i, t in enumerate(self.tasks)}
        self.log_scale = nn.Parameter(torch.zeros(len(self.tasks)))

    def parameters(self) -> list[nn.Parameter]:
        return [self.log_scale]

    def _scales(self, names: list[str], like: Tensor) -> Tensor:
        idx = torch.tensor([self.index[n] for n in names], device=self.log_scale.device)
        return self.log_scale[idx].to(like.device, like.dtype)

    def state_dict(self) -> dict[str, Tensor]:
        return {"log_scale": self.log_scale.detach().clone()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        if "log_scale" in state:
            with torch.no_grad():
                self.log_scale.copy_(state["log_scale"])


@register_balancer
class Uncertainty(_LearnedLog):
    """L = Σ_t ½ exp(−s_t) L_t + ½ s_t with s_t = log σ_t² learned (homoscedastic uncertainty).

    For a mean-squared-error task the optimum is exp(s_t) = L_t, the task's noise variance.
    """

    name = "uncertainty"
    description = "learned homoscedastic uncertainty: weights 1/(2σ²) plus log σ regularizer"
    reference = "Kendall, Gal & Cipolla 2018"

    def backward(
        self,
        losses: Mapping[str, Tensor],
        *,
        model: nn.Module,
        features: Tensor | None = None,
        outputs: Tensor | None = None,
    ) -> dict[str, float]:
        names, stacked, present = _stacked(self, losses)
        s = self._scales(names, stacked)
        weights = 0.5 * torch.exp(-s)
        (weights * stacked + torch.where(present, 0.5 * s, 0.0)).sum().backward()
        return _as_dict(names, weights)


@register_balancer
class IMTLL(_LearnedLog):
    """L = Σ_t exp(s_t) L_t − s_t: learned scales that drive every scaled loss toward 1."""

    name = "imtl_l"
    description = "learned loss scales e^s making all scaled losses equal (IMTL-L)"
    reference = "Liu et al. 2021"

    def backward(
        self,
        losses: Mapping[str, Tensor],
        *,
        model: nn.Module,
        features: Tensor | None = None,
        outputs: Tensor | None = None,
    ) -> dict[str, float]:
        names, stacked, present = _stacked(self, losses)
        s = self._scales(names, stacked)
        weights = torch.exp(s)
        (weights * stacked - torch.where(present, s, 0.0)).sum().backward()
        return _as_dict(names, weights)


class DWAOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(2.0, gt=0)


@register_balancer
class DynamicWeightAverage(Balancer):
    """w_t = T softmax(r_t / temperature), r_t = L_t(e−1) / L_t(e−2) from epoch mean losses."""

    name = "dwa"
    description = "weights from the rate each task's epoch loss falls (softmax, temperature)"
    reference = "Liu, Johns & Davison 2019"
    Options = DWAOptions

    def __init__(self, tasks, options=None) -> None:
        super().__init__(tasks, options)
        self.epoch_losses: list[dict[str, float]] = []
        self.weights: dict[str, float] = {t.name: 1.0 for t in self.tasks}

    def end_epoch(self, train_losses: Mapping[str, float]) -> None:
        self.epoch_losses = [*self.epoch_losses[-1:], dict(train_losses)]
        if len(self.epoch_losses) < 2:
            return
        before, last = self.epoch_losses
        names = list(last)
        ratios = torch.tensor([last[n] / before[n] if before[n] else 1.0 for n in names])
        w = len(names) * torch.softmax(ratios / self.options.temperature, 0)
        self.weights = _as_dict(names, w)

    def backward(
        self,
        losses: Mapping[str, Tensor],
        *,
        model: nn.Module,
        features: Tensor | None = None,
        outputs: Tensor | None = None,
    ) -> dict[str, float]:
        names, stacked, _ = _stacked(self, losses)
        w = torch.tensor([self.weights.get(n, 1.0) for n in names], device=stacked.device)
        (w * stacked).sum().backward()
        return _as_dict(names, w)

    def state_dict(self) -> dict[str, Tensor]:
        names = [t.name for t in self.tasks]
        rows = [[e.get(n, 0.0) for n in names] for e in self.epoch_losses]
        return {"epoch_losses": torch.tensor(rows, dtype=torch.float64).reshape(-1, len(names))}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        names = [t.name for t in self.tasks]
        self.epoch_losses = []
        for row in state.get("epoch_losses", torch.empty(0, len(names))).tolist():
            self.end_epoch(dict(zip(names, row, strict=True)))


class GradNormOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(1.5, ge=0)
    lr: float = Field(0.025, gt=0)


@register_balancer
class GradNorm(Balancer):
    """Learns w_t so that ‖∇_z w_t L_t‖ tracks mean‖·‖ × (relative inverse training rate)^α.

    The gradient norms are taken w.r.t. the model's representation z (the shared features h
    under hard sharing; one batched Jacobian); the weights take their own gradient step
    (``lr``) and are renormalized to sum to T.
    """

    name = "gradnorm"
    description = "learned weights equalizing task gradient norms at h, α sets asymmetry"
    reference = "Chen et al. 2018"
    Options = GradNormOptions
    needs_features = True

    def __init__(self, tasks, options=None) -> None:
        super().__init__(tasks, options)
        self.index = {t.name: i for i, t in enumerate(self.tasks)}
        self.weights = torch.ones(len(self.tasks))
        self.initial = torch.zeros(len(self.tasks))  # L_t(0); 0 until the task is first seen

    def backward(
        self,
        losses: Mapping[str, Tensor],
        *,
        model: nn.Module,
        features: Tensor | None = None,
        outputs: Tensor | None = None,
    ) -> dict[str, float]:
        from .jacobian import batched_grad

        if features is None:
            raise ValueError("balancer 'gradnorm' needs the model's representation z")
        names, stacked, present = _stacked(self, losses)
        idx = torch.tensor([self.index[n] for n in names])
        w = self.weights[idx].to(stacked.device)
        eye = torch.eye(len(names), dtype=stacked.dtype, device=stacked.device)
        (jac,) = batched_grad(stacked, [features], eye, retain_graph=True)
        norms = batch_norms(jac).float()
        (w * stacked).sum().backward()
        with torch.no_grad():
            loss = stacked.detach().float()
            initial = self.initial[idx].to(loss.device)
            initial = torch.where(present & (initial == 0), loss, initial)
            self.initial[idx] = initial.cpu()
            if present.sum() > 1:
                g = w * norms
                rate = torch.where(present, loss / initial.clamp_min(1e-12), 0.0)
                rate = rate / rate[present].mean()
                target = g[present].mean() * rate.pow(self.options.alpha)
                step = torch.where(present, torch.sign(g - target) * norms, 0.0)
                new = (w - self.options.lr * step).clamp_min(1e-3)
                new = new * len(names) / new.sum()
                self.weights[idx] = new.cpu()
        return _as_dict(names, w)

    def state_dict(self) -> dict[str, Tensor]:
        return {"weights": self.weights.clone(), "initial": self.initial.clone()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        self.weights = state.get("weights", self.weights).clone()
        self.initial = state.get("initial", self.initial).clone()


class RLWOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int = 0


@register_balancer
class RandomLossWeighting(Balancer):
    """Each step w = T softmax(ε), ε ~ N(0, I): random weights averaging one per task."""

    name = "rlw"
    description = "random weights each step, softmax of standard normal draws (× T)"
    reference = "Lin et al. 2022"
    Options = RLWOptions

    def __init__(self, tasks, options=None) -> None:
        super().__init__(tasks, options)
        self.generator = torch.Generator().manual_seed(self.options.seed)

    def backward(
        self,
        losses: Mapping[str, Tensor],
        *,
        model: nn.Module,
        features: Tensor | None = None,
        outputs: Tensor | None = None,
    ) -> dict[str, float]:
        names, stacked, _ = _stacked(self, losses)
        w = len(names) * torch.softmax(torch.randn(len(names), generator=self.generator), 0)
        (w.to(stacked.device) * stacked).sum().backward()
        return _as_dict(names, w)

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])


class FAMOOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: float = Field(0.025, gt=0)
    gamma: float = Field(0.01, ge=0)
    eps: float = Field(1e-8, gt=0)


@register_balancer
class FAMO(Balancer):
    """Fast adaptive multitask optimization: descend Σ z_t log L_t / c with z = softmax(ξ).

    ξ is updated from the drop of every task's log-loss between consecutive steps (here: the
    next batch's losses, which saves FAMO's extra forward pass). Every loss is ≥ 0
    (``losses.ELEMENT_LOSSES``); it is clamped at ``eps`` before the log only so that a batch
    fitted exactly (loss 0) gives no infinity.
    """

    name = "famo"
    description = "balances the rate of log-loss decrease with a learned softmax, O(1) per step"
    reference = "Liu et al. 2023"
    Options = FAMOOptions

    def __init__(self, tasks, options=None) -> None:
        super().__init__(tasks, options)
        self.index = {t.name: i for i, t in enumerate(self.tasks)}
        self.logits = torch.zeros(len(self.tasks), requires_grad=True)
        self.optimizer = torch.optim.Adam(
            [self.logits], lr=self.options.lr, weight_decay=self.options.gamma
        )
        self.previous: Tensor | None = None  # log-losses of the last step, NaN where absent

    def backward(
        self,
        losses: Mapping[str, Tensor],
        *,
        model: nn.Module,
        features: Tensor | None = None,
        outputs: Tensor | None = None,
    ) -> dict[str, float]:
        names, stacked, present = _stacked(self, losses)
        idx = torch.tensor([self.index[n] for n in names])
        log_loss = stacked.clamp_min(self.options.eps).log()
        current = torch.where(present, log_loss.detach(), torch.nan).float().cpu()
        if self.previous is not None:
            full = torch.full((len(self.tasks),), torch.nan)
            full[idx] = current
            delta = torch.nan_to_num(self.previous - full)
            z = torch.softmax(self.logits, 0)
            (grad,) = torch.autograd.grad(z, self.logits, grad_outputs=delta)
            self.optimizer.zero_grad()
            self.logits.grad = grad
            self.optimizer.step()
        full = torch.full((len(self.tasks),), torch.nan)
        full[idx] = current
        self.previous = full
        logits = self.logits.detach()[idx].to(stacked.device)
        z = torch.softmax(torch.where(present, logits, -torch.inf), 0)
        z = torch.nan_to_num(z)
        scale = (z / stacked.detach().clamp_min(self.options.eps)).sum()
        (z * torch.where(present, log_loss, 0.0) / scale).sum().backward()
        weights = z / (scale * stacked.detach().clamp_min(self.options.eps))
        return _as_dict(names, weights)

    def state_dict(self) -> dict[str, Tensor]:
        # ξ's Adam moments and the last step's log-losses too: without them a resumed run
        # takes a different next step than an uninterrupted one
        state = {"logits": self.logits.detach().clone()}
        for key, value in self.optimizer.state_dict()["state"].get(0, {}).items():
            state[f"adam.{key}"] = value.clone()
        if self.previous is not None:
            state["previous"] = self.previous.clone()
        return state

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        if "logits" in state:
            with torch.no_grad():
                self.logits.copy_(state["logits"])
        adam = {k.removeprefix("adam."): v for k, v in state.items() if k.startswith("adam.")}
        if adam:
            groups = self.optimizer.state_dict()["param_groups"]
            self.optimizer.load_state_dict({"state": {0: adam}, "param_groups": groups})
        if "previous" in state:
            self.previous = state["previous"].clone()


class GeometricOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    eps: float = Field(1e-8, gt=0)


@register_balancer
class GeometricMean(Balancer):
    """L = (Π_t L_t)^(1/T) over the tasks present; its gradient weights task t by L / (T L_t)."""

    name = "geometric"
    description = "geometric mean of task losses (scale invariant)"
    reference = "Chennupati et al. 2019"
    Options = GeometricOptions

    def backward(
        self,
        losses: Mapping[str, Tensor],
        *,
        model: nn.Module,
        features: Tensor | None = None,
        outputs: Tensor | None = None,
    ) -> dict[str, float]:
        names, stacked, present = _stacked(self, losses)
        n = present.sum().clamp_min(1)
        clamped = stacked.clamp_min(self.options.eps)
        total = torch.exp(torch.where(present, clamped.log(), 0.0).sum() / n)
        (total * present.any()).backward()
        weights = torch.where(present, total.detach() / (n * clamped.detach()), 0.0)
        return _as_dict(names, weights)
