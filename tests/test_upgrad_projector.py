"""UPGrad's projection in torch (``gramian.BatchedProjector``) against torchjd's quadprog
projector, the reference: the same weights on random, rank-deficient, aligned and real
Gramians, the KKT conditions, and ``upgrad`` using it (quadprog never called) in a whole fit."""

from __future__ import annotations

import math

import pytest
import torch
from synthetic import make_config, make_frame, make_splits
from torchjd.linalg import QuadprogProjector

import polytask as pt
import polytask.balancing.aggregation as aggregation
from polytask.balancing import make_balancer
from polytask.balancing.gramian import BatchedProjector

pytest.importorskip("quadprog")  # the reference (polytask's aggregators extra)
pytest.importorskip("qpsolvers")


def _gradients(n: int, dim: int, seed: int, *, flipped: float = 1 / 3) -> torch.Tensor:
    """``n`` gradients sharing a common part, the first ``flipped`` fraction negated."""
    g = torch.Generator().manual_seed(seed)
    jac = torch.randn(n, dim, generator=g, dtype=torch.float64)
    jac += 0.3 * torch.randn(1, dim, generator=g, dtype=torch.float64)
    jac[: math.ceil(n * flipped)] *= -1
    return jac


def _agree(u: torch.Tensor, gram: torch.Tensor, **options) -> torch.Tensor:
    """The projection of U, checked against quadprog's to 1e-6 of its largest weight."""
    ours = BatchedProjector(**options)(u, gram)
    reference = QuadprogProjector()(u, gram)
    assert ours.dtype == reference.dtype and ours.shape == reference.shape
    scale = float(reference.abs().max())
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6 * scale)
    assert float((reference - u).abs().max()) > 1e-3 * scale, "the case must have a conflict"
    return ours


@pytest.mark.parametrize(
    ("n", "dim", "seed"),
    [(2, 6, 0), (2, 6, 6), (3, 9, 2), (10, 40, 3), (50, 500, 4), (200, 1000, 5)],
)
def test_random_gramians_with_conflicts_agree_with_quadprog(n: int, dim: int, seed: int) -> None:
    jac = _gradients(n, dim, seed)
    _agree(torch.eye(n, dtype=torch.float64) / n, jac @ jac.T)


@pytest.mark.parametrize(("n", "dim"), [(10, 3), (50, 4), (200, 5)])
def test_rank_deficient_gramians_agree_with_quadprog(n: int, dim: int) -> None:
    """More tasks than dimensions (at T = 200 the low-rank Woodbury solves are taken)."""
    jac = _gradients(n, dim, n)
    _agree(torch.eye(n, dtype=torch.float64) / n, jac @ jac.T)


def test_duplicated_and_zero_gradients_agree_with_quadprog() -> None:
    jac = _gradients(12, 30, 7)
    jac[3] = jac[2]  # a duplicate
    jac[5] = -jac[6]  # an exact opposite
    jac[8] = 0.0  # a vanishing gradient
    jac[9] = 0.0
    _agree(torch.eye(12, dtype=torch.float64) / 12, jac @ jac.T)


def test_non_uniform_preferences_and_general_rows_agree_with_quadprog() -> None:
    jac = _gradients(20, 60, 8)
    gram = jac @ jac.T
    pref = torch.rand(20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _agree(torch.diag(pref), gram)
    # rows that are not a scaled e_i, some entries negative, in a leading batch dimension
    u = torch.randn(2, 5, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _agree(u, gram)


def test_aligned_gradients_give_u_exactly_and_one_conflict_does_not() -> None:
    """G ≥ 0 entrywise: V = U, unchanged, with no iteration; flip one gradient and quadprog's
    answer, not U, comes back."""
    jac = _gradients(15, 50, 9, flipped=0.0).abs()
    u = torch.diag(torch.linspace(0.1, 1.0, 15, dtype=torch.float64))
    assert torch.equal(BatchedProjector()(u, jac @ jac.T), u)
    jac[4] *= -1
    _agree(u, jac @ jac.T)


def test_a_gramian_under_norm_eps_is_zero_plus_reg_as_in_torchjd() -> None:
    jac = 1e-4 * _gradients(6, 10, 10)
    u = torch.eye(6, dtype=torch.float64) - 0.1  # negative entries: projected onto v ≥ 0
    _agree(u, jac @ jac.T)


@pytest.mark.parametrize(("n", "dim"), [(10, 3), (30, 200), (60, 200)])
def test_the_active_set_fallback_alone_agrees_with_quadprog(n: int, dim: int) -> None:
    """max_iter = 0: every row in conflict is solved by the Lawson–Hanson fallback."""
    jac = _gradients(n, dim, 11)
    _agree(torch.eye(n, dtype=torch.float64) / n, jac @ jac.T, max_iter=0)


def test_large_free_sets_start_from_the_guess_and_agree_with_quadprog(monkeypatch) -> None:
    """Nearly orthogonal gradients, half the pairs in conflict: free sets of ~T/2 tasks, from
    which the active set starts from the projected-gradient guess (at T = 300, with the
    threshold lowered: it is taken from T ≈ 800 on; 12 rows of U, so quadprog stays quick),
    the blocks solved in chunks of rows."""
    import polytask.balancing.gramian as gramian

    monkeypatch.setattr(gramian, "_GUESS_FROM", 1)
    monkeypatch.setattr(gramian, "_CHUNK", 100_000)  # the blocks gathered a few rows at a time
    guesses = []
    guess = gramian._guess_free
    monkeypatch.setattr(gramian, "_guess_free", lambda *a: guesses.append(1) or guess(*a))
    jac = torch.randn(300, 3000, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    _agree(torch.eye(300, dtype=torch.float64)[:12] / 300, jac @ jac.T)
    assert guesses


@pytest.mark.parametrize(("n", "dim", "seed"), [(40, 100, 12), (300, 8, 13), (120, 120, 14)])
def test_the_weights_satisfy_the_kkt_conditions(n: int, dim: int, seed: int) -> None:
    """v ≥ u, λ = G'v ≥ 0 and λ_j (v_j − u_j) = 0 on the normalized, regularized G'."""
    jac = _gradients(n, dim, seed)
    gram = jac @ jac.T
    u = torch.diag(torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=gram.dtype))
    v = BatchedProjector()(u, gram)
    g = gram / gram.trace() + 1e-4 * torch.eye(n, dtype=gram.dtype)
    lam = v @ g
    size = float(u.abs().max()) * float(g.abs().max())
    assert float((v - u).min()) >= -1e-12 * float(u.abs().max())
    assert float(lam.min()) >= -1e-10 * size
    assert float(((v - u) * lam).abs().max()) <= 1e-10 * size * float(v.abs().max())
    assert float(((v - u) > 1e-9).sum()) > n  # conflicts freed many weights


def _forbid_quadprog(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("quadprog called")

    monkeypatch.setattr(QuadprogProjector, "__call__", fail)


def test_upgrad_projects_in_torch_and_agrees_with_torchjds_upgrad(monkeypatch) -> None:
    from torchjd.aggregation import UPGrad

    jac = _gradients(8, 30, 15)
    reference = UPGrad()(jac)  # torchjd's own aggregator, quadprog projector
    _forbid_quadprog(monkeypatch)
    balancer = make_balancer("upgrad", [pt.Task(name=f"t{i}", kind="regression") for i in range(8)])
    assert isinstance(balancer, aggregation._Aggregation)
    assert isinstance(balancer._template.gramian_weighting.projector, BatchedProjector)
    _, direction = balancer.weights_and_direction(jac, [True] * 8)
    torch.testing.assert_close(direction, reference, rtol=1e-6, atol=1e-9)
    assert not torch.allclose(direction, jac.mean(0))  # the conflicts changed the mean


def _fit(tmp_path, level: str, projector: type) -> tuple:
    """A small upgrad fit with ``projector`` as upgrad's, recording (U, G) of every call."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    class Recording(projector):
        def __call__(self, u, gram):
            calls.append((u.detach().clone(), gram.detach().clone()))
            return super().__call__(u, gram)

    mp = pytest.MonkeyPatch()
    mp.setattr(aggregation, "BatchedProjector", Recording)
    try:
        splits = make_splits(make_frame(n=160, seed=3))
        config = make_config(tmp_path / "unused.csv", epochs=3, balancer="upgrad")
        result = pt.fit(config.with_train(balancer_options={"level": level}), splits=splits)
    finally:
        mp.undo()
    return result, calls


@pytest.mark.parametrize("level", ["representation", "parameters"])
def test_a_whole_upgrad_fit_matches_the_quadprog_projectors_fit(tmp_path, level: str) -> None:
    """The same fit with quadprog as upgrad's projector: the same weights and parameters (to
    float32 rounding of the steps); the Gramians of the fit (real Jacobians) agree one by one
    and have conflicts."""
    ours, calls = _fit(tmp_path, level, BatchedProjector)
    theirs, _ = _fit(tmp_path, level, QuadprogProjector)
    columns = [c for c in ours.history if c.startswith(("weight/", "train_loss/", "val_loss/"))]
    assert any(c.startswith("weight/") for c in columns)
    torch.testing.assert_close(
        torch.tensor(ours.history[columns].to_numpy()),
        torch.tensor(theirs.history[columns].to_numpy()),
        rtol=1e-4,
        atol=1e-6,
    )
    for a, b in zip(ours.model.parameters(), theirs.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    conflicts = 0
    for u, gram in calls:
        reference = QuadprogProjector()(u, gram)
        mine = BatchedProjector()(u, gram)
        scale = float(reference.abs().max())
        torch.testing.assert_close(mine, reference, rtol=0, atol=1e-6 * scale)
        conflicts += float((reference - u).abs().max()) > 1e-3 * scale
    assert conflicts > 0


def test_without_regularization_it_agrees_with_quadprogs_on_a_full_rank_gramian() -> None:
    jac = _gradients(30, 200, 18)
    u = torch.eye(30, dtype=torch.float64) / 30
    ours = BatchedProjector(reg_eps=0.0)(u, jac @ jac.T)
    reference = QuadprogProjector(reg_eps=0.0)(u, jac @ jac.T)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6 * float(reference.abs().max()))
    assert float((reference - u).abs().max()) > 1e-3 * float(reference.abs().max())
