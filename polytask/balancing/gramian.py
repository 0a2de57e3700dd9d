"""Aggregation weights computed in torch from the T×T Gramian G = JJᵀ alone: Nash-MTL, CAGrad,
FairGrad, PCGrad and GradVac, and UPGrad's projections (``BatchedProjector``).

Nash-MTL and CAGrad replace torchjd's cvxpy solves (ECOS, CLARABEL) with small dense iterations
in float64 on the Gramian, keeping torchjd's conventions (Gramian normalization, Nash-MTL's
``max_norm`` cap and ``update_weights_every``, CAGrad's ``norm_eps``), so the weights agree with
torchjd's where its solver succeeds (``tests/test_balancers.py`` checks this when cvxpy is
installed). FairGrad replaces torchjd's scipy ``least_squares`` with the same damped Newton as
Nash-MTL (its α = 1 case). PCGrad and GradVac replace torchjd's loops over task pairs with
T − 1 steps vectorized over the tasks (weight space: row i of W holds g_i' = Σ_k W[i,k] g_k;
in numpy, whose small-array operations cost a fraction of torch's), in a random order drawn
from a seeded generator; their weights agree with torchjd's where the
order cannot matter (two tasks). Stateful solvers give their state as tensors
(``state_dict``), so that a resumed run continues exactly. ``BatchedProjector`` replaces the
T quadprog programs of torchjd's UPGrad (one per task, in a Python loop) with one batched
active-set iteration over all of them, keeping torchjd's normalization and regularization,
so the weights agree with quadprog's to float64 rounding (``tests/test_upgrad_projector.py``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor
from torchjd.linalg import DualConeProjector


class GramianSolver:
    """A weighting that needs only the Gramian; ``cap`` is the factor applied to the weights
    and the direction given the direction's norm (1 unless the method caps it);
    ``state_dict``/``load_state_dict`` carry what a stateful solver keeps between calls."""

    def weights(self, gram: Tensor) -> Tensor:
        raise NotImplementedError

    def cap(self, norm: float) -> float:
        return 1.0

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        return None

    def reseed(self, draws: torch.Generator) -> None:
        """Continue from ``draws`` (a fresh solver for a drawn subset of tasks); a solver that
        draws nothing has nothing to reseed."""
        return None


class NashMTL(GramianSolver):
    """Nash-MTL (Navon et al. 2022): α > 0 with G α = 1/α.

    Solved, as torchjd does, on G' = G/‖G‖_F (α = α'/√‖G‖_F; the warm start α' is kept).
    G α = 1/α is the stationarity condition of φ(α) = ½ αᵀGα − Σ log α_i, strictly convex when
    G is positive definite; ``nash_weights`` minimizes it by damped Newton. A rank-deficient G
    (tasks more than gradient dimensions, a vanishing or duplicated gradient) is regularized with
    ``ridge`` · I (relative to ‖G‖_F = 1), so a task whose gradient is below ~√ridge of the
    others' gets a large but finite weight instead of an unbounded problem.
    """

    def __init__(
        self,
        n_tasks: int,
        *,
        max_norm: float,
        update_weights_every: int,
        max_iter: int,
        ridge: float,
    ) -> None:
        self.max_norm = max_norm
        self.every = update_weights_every
        self.max_iter = max_iter
        self.ridge = ridge
        self.alpha = torch.ones(n_tasks, dtype=torch.float64)  # warm start, as torchjd's
        self.scale = 1.0
        self.step = 0

    def weights(self, gram: Tensor) -> Tensor:
        if self.step % self.every == 0:
            g = _symmetric(gram)
            self.scale = float(g.norm())
            g = g / self.scale
            self.alpha = nash_weights(g, self.alpha, ridge=self.ridge, max_iter=self.max_iter)
        self.step += 1
        return (self.alpha / self.scale**0.5).to(gram.device)

    def cap(self, norm: float) -> float:
        return self.max_norm / norm if 0 < self.max_norm < norm else 1.0

    def state_dict(self) -> dict[str, Tensor]:
        return {
            "alpha": self.alpha.clone(),
            "scale": torch.tensor(self.scale, dtype=torch.float64),
            "step": torch.tensor(self.step),
        }

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        self.alpha = state["alpha"].to(torch.float64).clone()
        self.scale = float(state["scale"])
        self.step = int(state["step"])


def nash_weights(
    gram: Tensor, start: Tensor, *, ridge: float, max_iter: int, tol: float = 1e-14
) -> Tensor:
    """argmin_{α>0} ½ αᵀ(G + ridge·I)α − Σ log α_i: ``fair_weights`` with fairness 1."""
    return fair_weights(gram, start, fairness=1.0, ridge=ridge, max_iter=max_iter, tol=tol)


def fair_weights(
    gram: Tensor,
    start: Tensor,
    *,
    fairness: float,
    ridge: float,
    max_iter: int,
    tol: float = 1e-14,
) -> Tensor:
    """w > 0 with (G + ridge·I) w = w^(−1/a), a = ``fairness`` > 0: the minimizer of
    φ(w) = ½ wᵀ(G + ridge·I)w − Σ F(w_i), F' = w^(−1/a) (F = log for a = 1), strictly convex.

    Damped Newton (Hessian G + diag(w^(−1/a−1)/a)), backtracking to keep w > 0 and to decrease
    φ (Armijo); stops when the Newton decrement λ² = ∇φᵀH⁻¹∇φ (≈ 2(φ − φ*)) is under ``tol``
    (w then within ~λ of w*, relative, and one more step would square λ), when φ no longer
    decreases in float64, or after ``max_iter`` steps."""
    g = gram + ridge * torch.eye(len(gram), dtype=gram.dtype)
    a = start.clone()
    power = 1.0 - 1.0 / fairness

    def phi(x: Tensor) -> float:
        utility = x.log() if fairness == 1.0 else x.pow(power) / power
        return float(0.5 * x @ g @ x - utility.sum())

    value = phi(a)
    for _ in range(max_iter):
        grad = g @ a - a.pow(-1.0 / fairness)
        curvature = a.pow(-1.0 / fairness - 1.0) / fairness
        step = torch.linalg.solve(g + torch.diag(curvature), grad)
        decrement = float(grad @ step)
        if decrement <= tol:
            break
        ratio = a / step
        t = min(1.0, 0.99 * float(ratio[step > 0].min())) if bool((step > 0).any()) else 1.0
        while True:
            new = a - t * step
            new_value = phi(new)
            if new_value <= value - 0.25 * t * decrement or t < 1e-12:
                break
            t *= 0.5
        if new_value >= value:  # no descent left at float64 precision
            break
        a, value = new, new_value
    return a


class FairGrad(GramianSolver):
    """FairGrad (Ban & Ji 2024): the α-fair step, w > 0 with (G w)_i = w_i^(−1/α).

    torchjd solves it with scipy's ``least_squares`` from w = 𝟙/T on G as given; polytask
    minimizes the convex φ of ``fair_weights`` by damped Newton on G' = G/‖G‖_F and scales back:
    w = c·v with c = ‖G‖_F^(−α/(1+α)) solves G w = w^(−1/α) when G'v = v^(−1/α). The last
    solution warm-starts the next. ``ridge`` regularizes a rank-deficient G as Nash-MTL's does
    (Nash-MTL is the case α = 1 without the cap)."""

    def __init__(self, n_tasks: int, *, alpha: float, max_iter: int, ridge: float) -> None:
        self.fairness = alpha
        self.max_iter = max_iter
        self.ridge = ridge
        self.start = torch.ones(n_tasks, dtype=torch.float64)

    def weights(self, gram: Tensor) -> Tensor:
        g = _symmetric(gram)
        norm = float(g.norm())
        if norm == 0:
            return torch.zeros(len(g), dtype=gram.dtype, device=gram.device)
        g = g / norm
        self.start = fair_weights(
            g, self.start, fairness=self.fairness, ridge=self.ridge, max_iter=self.max_iter
        )
        scale = norm ** (-self.fairness / (1.0 + self.fairness))
        return (self.start * scale).to(gram.device)

    def state_dict(self) -> dict[str, Tensor]:
        return {"start": self.start.clone()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        self.start = state["start"].to(torch.float64).clone()


class CAGrad(GramianSolver):
    """CAGrad (Liu et al. 2021), the dual solved as torchjd does: with G normalized by its
    trace, w ∈ Δ minimizing wᵀb + √φ ‖g_w‖ (b = G𝟙/T, ‖g_w‖² = wᵀGw, √φ = c √(𝟙ᵀG𝟙)/T), then
    weights 𝟙/T + (√φ/‖g_w‖) w, or 0 when ‖g_w‖ < ``norm_eps`` (a Pareto-stationary point)."""

    def __init__(self, c: float, *, norm_eps: float = 1e-4, max_iter: int = 100) -> None:
        self.c = c
        self.norm_eps = norm_eps
        self.max_iter = max_iter

    def weights(self, gram: Tensor) -> Tensor:
        g = _symmetric(gram)
        m = len(g)
        trace = g.diagonal().sum()
        if not trace > 0:
            return torch.zeros(m, dtype=gram.dtype, device=gram.device)
        g = g / trace
        b = g.sum(1) / m
        s = self.c * float(b.sum() / m) ** 0.5
        v = cagrad_step(g, b, s, max_iter=self.max_iter) if s > 0 else torch.zeros(m)
        total = float(v.sum())
        # v = (√φ/‖g_w‖) w with w = v/Σv on the simplex, so ‖g_w‖ = √φ/Σv
        if s > 0 and (total == 0 or s / total < self.norm_eps):
            return torch.zeros(m, dtype=gram.dtype, device=gram.device)
        return (1 / m + v).to(dtype=gram.dtype, device=gram.device)


def cagrad_step(
    gram: Tensor, b: Tensor, s: float, *, max_iter: int, ridge: float = 1e-12, tol: float = 1e-12
) -> Tensor:
    """v ≥ 0 with ‖g_v‖ = s maximizing the smallest improvement min_i (b + Gv)_i.

    This is the KKT system of the CAGrad dual with v = (s/‖g_w‖) w: on the support S,
    (b + Gv)_S = μ𝟙 (equal improvements) and vᵀGv = s², so v_S = μ p − q with p = G_SS⁻¹𝟙,
    q = G_SS⁻¹b_S and μ the larger root of μ²𝟙ᵀp − 2μ𝟙ᵀq + b_Sᵀq − s² = 0; off S,
    (b + Gv)_i ≥ μ. Active set: start from the worst task, add the most violated task, drop
    the most negative v_i, at most ``max_iter`` changes; if that does not certify optimality,
    finish by projected gradient on the simplex form (``_cagrad_projected``).
    """
    m = len(gram)
    support = torch.zeros(m, dtype=torch.bool)
    support[int(b.argmin())] = True
    for _ in range(max_iter):
        index = support.nonzero().squeeze(1)
        g_s = gram[index][:, index] + ridge * torch.eye(len(index), dtype=gram.dtype)
        pq = torch.linalg.solve(g_s, torch.stack([torch.ones(len(index)), b[index]], 1).double())
        p, q = pq[:, 0], pq[:, 1]
        a2, b2, c2 = float(p.sum()), float(q.sum()), float(b[index] @ q)
        disc = b2 * b2 - a2 * (c2 - s * s)
        if disc < 0:
            break
        mu = (b2 + disc**0.5) / a2
        v_s = mu * p - q
        if len(index) > 1 and float(v_s.min()) <= 0:
            support[index[int(v_s.argmin())]] = False
            continue
        v = torch.zeros(m, dtype=gram.dtype)
        v[index] = v_s
        slack = b + gram @ v - mu
        slack[index] = float("inf")
        worst = int(slack.argmin())
        if float(slack[worst]) >= -tol * max(1.0, abs(mu)):
            return v
        support[worst] = True
    return _cagrad_projected(gram, b, s)


def _cagrad_projected(gram: Tensor, b: Tensor, s: float, iters: int = 5000) -> Tensor:
    """The fallback: accelerated projected gradient on min_{w∈Δ} wᵀb + s‖g_w‖, as v."""
    m = len(gram)
    step = 1 / (float(torch.linalg.eigvalsh(gram)[-1]) + 1e-12) * 1e-2
    w = torch.full((m,), 1 / m, dtype=gram.dtype)
    y, prev = w.clone(), w.clone()
    for k in range(iters):
        norm = float(y @ gram @ y) ** 0.5 + 1e-30
        w = _simplex(y - step * (b + s * (gram @ y) / norm))
        y = w + k / (k + 3) * (w - prev)
        if float((w - prev).abs().max()) < 1e-14:
            break
        prev = w
    norm = float(w @ gram @ w) ** 0.5
    return w * (s / norm) if norm > 0 else torch.zeros(m, dtype=gram.dtype)


def _simplex(x: Tensor) -> Tensor:
    """Euclidean projection onto the probability simplex (sort-based)."""
    u = x.sort(descending=True).values
    css = u.cumsum(0) - 1
    k = torch.arange(1, len(x) + 1, dtype=x.dtype)
    rho = int((u - css / k > 0).nonzero().max())
    return (x - css[rho] / (rho + 1)).clamp(min=0)


class _Ordered(GramianSolver):
    """A solver that visits, for each task i, the other tasks in a random order (PCGrad,
    GradVac), in weight space. The orders come from a generator seeded with ``seed``, kept
    across calls and in the state."""

    def __init__(self, *, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def reseed(self, draws: torch.Generator) -> None:
        self.generator.manual_seed(int(torch.randint(2**62, (1,), generator=draws)))

    def _start(self, gram: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """G symmetrized in float64 (numpy: T − 1 steps of small ops, each ~1 μs, not torch's
        ~4), this call's orders and flat positions (``_orders``), and W = I."""
        g = _symmetric(gram).numpy()
        order, at = (a.numpy() for a in _orders(len(g), self.generator))
        return g, order, at, np.eye(len(g))

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])


class PCGrad(_Ordered):
    """PCGrad (Yu et al. 2020): each g_i, visiting the other tasks j in a random order (drawn
    per i, as torchjd does), loses its component along g_j when g_i'·g_j < 0; the direction is
    Σ_i g_i'. A zero g_j projects nothing."""

    def weights(self, gram: Tensor) -> Tensor:
        g, order, at, w = self._start(gram)
        n = len(g)
        flat = w.reshape(-1)  # a view: at[s] holds distinct flat positions (i, order[s, i])
        sq = np.diagonal(g)
        for s in range(n - 1):  # every i handles its own j = order[s, i] at once
            j = order[s]
            dot = np.einsum("ik,ik->i", w, g[j])  # g_i'·g_j = (WG)[i, j]
            sq_j = sq[j]
            step = np.where((dot < 0) & (sq_j > 0), -dot / np.maximum(sq_j, _TINY), 0.0)
            flat[at[s]] += step
        return torch.from_numpy(w.sum(0)).to(dtype=gram.dtype, device=gram.device)


class GradVac(_Ordered):
    """GradVac (Wang et al. 2021) with torchjd's conventions: for each i, over the other tasks j
    in a random order (per i), φ = g_i'·g_j / (‖g_i'‖‖g_j‖ + eps); when φ < φ̂_ij, g_i' gains
    ‖g_i'‖ (φ̂√(1−φ²) − φ√(1−φ̂²)) / (‖g_j‖√(1−φ̂²) + eps) · g_j (which makes its cosine with g_j
    φ̂_ij); then φ̂_ij ← (1−β) φ̂_ij + β φ, with φ the cosine before the correction. The
    direction is Σ_i g_i'. The targets φ̂ (from 0) are kept across calls, as the orders'
    generator is. Unlike torchjd, a zero g_j gets no correction (the direction is the same;
    torchjd's weight on it would be ‖g_i'‖φ̂/eps)."""

    def __init__(self, n_tasks: int, *, beta: float, seed: int, eps: float = 1e-8) -> None:
        super().__init__(seed=seed)
        self.beta = beta
        self.eps = eps
        self.targets = torch.zeros(n_tasks, n_tasks, dtype=torch.float64)

    def weights(self, gram: Tensor) -> Tensor:
        g, order, at, w = self._start(gram)
        n = len(g)
        flat = w.reshape(-1)
        targets = self.targets.numpy().reshape(-1).copy()  # φ̂, flat: at[s] indexes it
        norms = np.sqrt(np.maximum(np.diagonal(g), 0))
        sq = np.diagonal(g).copy()  # ‖g_i'‖², updated with each correction
        for s in range(n - 1):  # every i handles its own j = order[s, i] at once
            j, cell = order[s], at[s]
            dot = np.einsum("ik,ik->i", w, g[j])
            norm_i, norm_j = np.sqrt(np.maximum(sq, 0)), norms[j]
            cos = dot / (norm_i * norm_j + self.eps)
            target = targets[cell]
            sin = np.sqrt(np.maximum(1 - cos**2, 0))
            sin_target = np.sqrt(np.maximum(1 - target**2, 0))
            gain = norm_i * (target * sin - cos * sin_target) / (norm_j * sin_target + self.eps)
            gain = np.where((cos < target) & (norm_j > 0), gain, 0.0)
            flat[cell] += gain
            sq += gain * (2 * dot + gain * norm_j**2)
            targets[cell] = (1 - self.beta) * target + self.beta * cos
        self.targets = torch.from_numpy(targets.reshape(n, n))
        return torch.from_numpy(w.sum(0)).to(dtype=gram.dtype, device=gram.device)

    def state_dict(self) -> dict[str, Tensor]:
        return {"targets": self.targets.clone(), **super().state_dict()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        self.targets = state["targets"].to(torch.float64).clone()
        super().load_state_dict(state)


_TINY = torch.finfo(torch.float64).tiny


def _symmetric(gram: Tensor) -> Tensor:
    """The Gramian in float64 on the CPU, symmetrized."""
    g = gram.detach().to(device="cpu", dtype=torch.float64)
    return 0.5 * (g + g.T)


def _orders(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The tasks other than i in a random order, drawn independently for each i: column i of
    ``order`` ((T − 1) × T); ``at[s, i]`` = i·T + order[s, i], the flat index of (i, j) in a
    T×T matrix."""
    keys = torch.rand(n, n, generator=generator, dtype=torch.float64)
    keys.fill_diagonal_(2.0)  # i sorts last, then is dropped
    order = keys.argsort(1)[:, :-1].T.contiguous()
    return order, order + torch.arange(n) * n


class BatchedProjector(DualConeProjector):
    """UPGrad's projection (torchjd's ``DualConeProjector``) solved in torch for all rows of U
    at once: for each row u, v = argmin vᵀGv s.t. v ≥ u, with G normalized by its trace (to 0
    when the trace is under ``norm_eps``) and ``reg_eps``·I added, as torchjd's
    ``QuadprogProjector`` does (same defaults), so the weights agree with it.

    With v = u + d, d ≥ 0 minimizes ½dᵀGd + dᵀGu: KKT λ = G(u + d) ≥ 0, λ_j d_j = 0. V = U is
    the answer where GU ≥ 0 (no conflict; checked first, one product). Otherwise a primal–dual
    active set (semi-smooth Newton) iteration over the rows still open: on the free set F,
    G_FF d_F = −(Gu)_F, d = 0 off F; F ← {j ∈ F: d_j > 0} ∪ {j ∉ F: λ_j < 0}, starting from
    F = {λ_j < 0} at d = 0. The reduced systems are gathered into batches padded to ≤ 1.25·|F|
    (padding = identity; a few rows at a time, for memory) and solved by batched Cholesky,
    O(Σ_rows |F|³) per step; up to 48 tasks, as full T×T systems (fewer ops). Where G has
    fewer dimensions than that cost warrants, by Woodbury through its low-rank factor
    (``_woodbury_solve``); where the systems are large, the iteration starts from the support
    of a few projected-gradient steps (``_guess_free``). A row stops when d_F ≥ −tol·‖u‖_∞ and
    λ ≥ −tol·‖G‖_max‖u‖_∞ off F (complementarity holds by construction); rows open after
    ``max_iter`` steps or whose free set repeats (the iteration may cycle on a G that is not an
    M-matrix) are finished by Lawson–Hanson's monotone active set (``_active_set``), one row
    at a time."""

    def __init__(
        self,
        *,
        norm_eps: float = 1e-4,
        reg_eps: float = 1e-4,
        max_iter: int = 20,
        tol: float = 1e-12,
    ) -> None:
        if norm_eps < 0 or reg_eps < 0:
            raise ValueError(f"norm_eps and reg_eps must be ≥ 0, got {norm_eps}, {reg_eps}")
        self.norm_eps = norm_eps
        self.reg_eps = reg_eps
        self.max_iter = max_iter
        self.tol = tol

    def __repr__(self) -> str:
        return f"BatchedProjector(norm_eps={self.norm_eps}, reg_eps={self.reg_eps})"

    def __call__(self, U: Tensor, G: Tensor) -> Tensor:
        g = _symmetric(G)
        trace = float(g.diagonal().sum())
        g = g / trace if trace >= self.norm_eps else torch.zeros_like(g)
        u = U.detach().to(device="cpu", dtype=torch.float64).reshape(-1, len(g))
        v = project_dual_cone(g, u, reg=self.reg_eps, max_iter=self.max_iter, tol=self.tol)
        return v.reshape(U.shape).to(dtype=G.dtype, device=G.device)


def project_dual_cone(gram: Tensor, u: Tensor, *, reg: float, max_iter: int, tol: float) -> Tensor:
    """V with row i = argmin vᵀ(G + reg·I)v s.t. v ≥ u_i, for G symmetric PSD (float64) and
    G + reg·I positive definite; the iteration of ``BatchedProjector``."""
    n = len(gram)
    g = gram + reg * torch.eye(n, dtype=gram.dtype)
    gu = u @ g  # row i: (G u_i)ᵀ
    s_d = tol * u.abs().amax(1, keepdim=True)
    s_lam = s_d * float(g.abs().max())
    free = gu < -s_lam
    v = u.clone()
    rows = free.any(1).nonzero().squeeze(1)  # the rows in conflict
    if len(rows) == 0:
        return v
    c, f, s_d, s_lam = gu[rows], free[rows], s_d[rows], s_lam[rows]
    if n <= _SMALL:  # few ops matter more than few rows: no compaction, no cycle record
        rows, c, s_lam = _small_iteration(g, v, rows, c, f, s_d, s_lam, max_iter)
        stuck: list[tuple[int, Tensor, float]] = []
    else:
        rows, c, s_lam, stuck = _iteration(gram, reg, g, v, rows, c, f, s_d, s_lam, max_iter)
    for r, c_r, tol_r in stuck + list(zip(rows.tolist(), c, s_lam[:, 0].tolist(), strict=True)):
        v[r] += _active_set(g, c_r, tol=tol_r, max_iter=3 * n + 10)
    return v


def _small_iteration(g, v, rows, c, f, s_d, s_lam, max_iter):
    """The active-set steps on every open row until all are done (a done row is a fixed
    point), each row's system in full (identity off F: few ops, which is what costs at small
    T); adds d to ``v`` on the rows done, returns the others (rows, c, s_lam)."""
    eye, minus_c = torch.eye(len(g), dtype=g.dtype), -c
    for _ in range(max_iter):
        block = torch.where(f[:, :, None] & f[:, None, :], g, eye)
        d = torch.where(f, _spd_solve(block, torch.where(f, minus_c, 0.0)), 0.0)
        lam = torch.addmm(c, d, g)
        open_ = torch.where(f, d < -s_d, lam < -s_lam).any(1)
        if not bool(open_.any()):
            v[rows] += d.clamp(min=0)
            return rows[:0], c[:0], s_lam[:0]
        f = torch.where(open_[:, None], torch.where(f, d > 0, lam < 0), f)
    if max_iter > 0:
        v[rows[~open_]] += d[~open_].clamp(min=0)
        rows, c, s_lam = rows[open_], c[open_], s_lam[open_]
    return rows, c, s_lam


def _iteration(gram, reg, g, v, rows, c, f, s_d, s_lam, max_iter):
    """The active-set steps, rows leaving as they are done or found in a cycle (a free set
    seen before: ``stuck``, with c and the λ tolerance); adds d to ``v`` on the rows done,
    returns the open rows (rows, c, s_lam) and ``stuck``."""
    seen: Tensor | None = None  # each open row's free sets so far
    factor: Tensor | None = None
    stuck: list[tuple[int, Tensor, float]] = []
    cost, n = _cholesky_cost(f), len(g)
    if reg > 0 and cost > 8 * n**3:
        factor = _low_rank(gram)
    low_rank = factor is not None and _woodbury_cost(factor, f) < cost
    if not low_rank and cost > _GUESS_FROM * len(f) * n * n:
        f = _guess_free(g, c, _GUESS_STEPS)
    for _ in range(max_iter):
        if len(rows) == 0:
            break
        if factor is not None and _woodbury_cost(factor, f) < _cholesky_cost(f):
            d = _woodbury_solve(factor, reg, c, f)
        else:
            d = _reduced_solve(g, c, f)
        lam = c + d @ g
        done = ((d >= -s_d) | ~f).all(1) & ((lam >= -s_lam) | f).all(1)
        v[rows[done]] += d[done].clamp(min=0)
        seen = f[None] if seen is None else torch.cat([seen, f[None]])
        f = (f & (d > 0)) | (~f & (lam < 0))
        cycle = ~done & (seen == f).all(2).any(0)
        stuck += list(zip(rows[cycle].tolist(), c[cycle], s_lam[cycle, 0].tolist(), strict=True))
        keep = ~done & ~cycle
        rows, c, f, seen = rows[keep], c[keep], f[keep], seen[:, keep]
        s_d, s_lam = s_d[keep], s_lam[keep]
    return rows, c, s_lam, stuck


_GUESS_STEPS = 30
_GUESS_FROM = 30  # the guess (2·steps T² a row) where the solves cost more than this·T² a row


def _guess_free(g: Tensor, c: Tensor, steps: int) -> Tensor:
    """Free sets to start the active set from where its systems are large: the support after
    ``steps`` accelerated projected-gradient steps (FISTA) on min ½dᵀGd + cᵀd, d ≥ 0, scaled
    by diag(G)^(−1/2), all rows at once (one T×T product a step); the active set then often
    needs a single solve to confirm it."""
    scale = g.diagonal().clamp(min=_TINY).rsqrt()
    m = g * scale[:, None] * scale[None, :]
    x = torch.ones(len(g), dtype=g.dtype)
    for _ in range(30):  # power iteration: the step 1/L
        x = m @ x
        x = x / x.norm()
    step = 1 / (1.05 * float(x @ m @ x))
    b = c * scale
    z = torch.zeros_like(c)
    y, t = z, 1.0
    for _ in range(steps):
        new = (y - step * (y @ m + b)).clamp(min=0)
        t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
        y = new + ((t - 1) / t_new) * (new - z)
        z, t = new, t_new
    return z > 0


def _padded(free: Tensor) -> Tensor:
    """Each row's free-set size rounded up to a multiple of an eighth of the next power of two
    (0 for none): its padded size, at most 1.25× the free set's beyond 8, few distinct sizes."""
    size = free.sum(1)
    step = (2 ** size.clamp(min=1).double().log2().ceil() / 8).clamp(min=1)
    return ((size / step).ceil() * step).long()


def _cholesky_cost(free: Tensor) -> float:
    return float((_padded(free).double().clamp(max=free.shape[1]) ** 3).sum() / 3)


def _woodbury_cost(factor: Tensor, free: Tensor) -> float:
    """Its flops, or inf where its T × r² products would not fit in 8 chunks' memory."""
    n, r = free.shape[1], factor.shape[1]
    if max(n, len(free)) * r * r > 8 * _CHUNK:
        return float("inf")
    return len(free) * (n * r * (r + 2) + r**3 / 3)


def _low_rank(gram: Tensor) -> Tensor:
    """A (T × r) with AAᵀ = G up to its eigenvalues under 1e-13·max (float64 rounding)."""
    values, vectors = torch.linalg.eigh(gram)
    keep = values > 1e-13 * float(values[-1].clamp(min=_TINY))
    return vectors[:, keep] * values[keep].sqrt()


def _woodbury_solve(factor: Tensor, reg: float, c: Tensor, free: Tensor) -> Tensor:
    """``_reduced_solve`` for G = AAᵀ with A of r columns (few): on F, (reg·I + A_F A_Fᵀ)⁻¹b =
    (b − A_F (reg·I + A_FᵀA_F)⁻¹ A_Fᵀb)/reg, with A_FᵀA_F = Σ_{j∈F} a_j a_jᵀ for all rows in one
    product; O(T r²) a row."""
    n, r = factor.shape
    mask = free.to(factor.dtype)
    b = torch.where(free, -c, 0.0)
    outer = (factor[:, :, None] * factor[:, None, :]).reshape(n, r * r)
    m = (mask @ outer).reshape(-1, r, r) + reg * torch.eye(r, dtype=factor.dtype)
    y = torch.linalg.solve(m, (b @ factor).unsqueeze(2)).squeeze(2)
    return (b - mask * (y @ factor.T)) / reg


def _reduced_solve(gram: Tensor, c: Tensor, free: Tensor) -> Tensor:
    """Rows d with G_FF d_F = −c_F on each row's free set F (``free``), 0 elsewhere: batched
    Cholesky, rows grouped by |F| padded (``_padded``) with identity."""
    n = len(gram)
    # G beside an identity: padding position q of a row reads index n + q, so the gathered
    # blocks are padded with identity and the right-hand sides with 0 as they are read
    aug = torch.block_diag(gram, torch.eye(n, dtype=gram.dtype))
    rhs_aug = torch.cat([-c, torch.zeros_like(c)], 1)
    d = torch.zeros_like(c)
    size, padded = free.sum(1), _padded(free)
    for p in padded.unique().tolist():
        if p == 0:
            continue
        k = min(p, n)
        at = (padded == p).nonzero().squeeze(1)
        for rows in at.split(max(1, _CHUNK // (k * k))):  # bounded memory
            idx = torch.argsort((~free[rows]).to(torch.int8), dim=1, stable=True)[:, :k]
            spare = torch.arange(n, n + k)
            idx = torch.where(torch.arange(k) < size[rows, None], idx, spare)
            block = aug[idx[:, :, None], idx[:, None, :]]
            sol = _spd_solve(block, rhs_aug[rows].gather(1, idx))
            part = torch.zeros(len(rows), 2 * n, dtype=c.dtype)
            d[rows] = part.scatter_(1, idx, sol)[:, :n]
    return d


_CHUNK = 2**22  # entries of the gathered blocks at a time (32 MiB)
_SMALL = 48  # up to this many tasks, ``_small_iteration`` solves full T×T systems


def _spd_solve(block: Tensor, rhs: Tensor) -> Tensor:
    """Batched block⁻¹ rhs by Cholesky; least squares if a block is not positive definite
    (``reg_eps`` = 0 and G singular)."""
    try:
        chol = torch.linalg.cholesky(block)
    except torch.linalg.LinAlgError:
        return torch.linalg.lstsq(block, rhs.unsqueeze(2)).solution.squeeze(2)
    return torch.cholesky_solve(rhs.unsqueeze(2), chol).squeeze(2)


def _active_set(gram: Tensor, c: Tensor, *, tol: float, max_iter: int) -> Tensor:
    """d ≥ 0 minimizing ½dᵀGd + cᵀd by Lawson–Hanson's active set (monotone, finite): free the
    most negative λ = c + Gd, solve on the free set, step back to feasibility when needed."""
    m = len(c)
    d = torch.zeros(m, dtype=gram.dtype)
    free = torch.zeros(m, dtype=torch.bool)
    for _ in range(max_iter):
        lam = torch.where(free, torch.inf, c + gram @ d)
        j = int(lam.argmin())
        if not float(lam[j]) < -tol:
            break
        free[j] = True
        for _ in range(m):
            idx = free.nonzero().squeeze(1)
            z = torch.linalg.lstsq(gram[idx][:, idx], -c[idx].unsqueeze(1)).solution.squeeze(1)
            if bool((z > 0).all()):
                d.zero_()
                d[idx] = z
                break
            cur = d[idx]
            neg = z <= 0
            step = float((cur[neg] / (cur[neg] - z[neg]).clamp(min=_TINY)).min())
            d[idx] = cur + step * (z - cur)
            free &= d > 0
            d[~free] = 0
            if not bool(free.any()):
                break
    return d
