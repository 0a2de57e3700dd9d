"""Balancers: each aggregator's defining property on random Jacobians, loss weighting methods on
small problems, and every registered balancer through a few training steps with missing labels."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.optimize import minimize
from synthetic import make_config, make_frame

import polytask as pt
import polytask.losses
from polytask.balancing import BALANCERS, make_balancer
from polytask.balancing.aggregation import _Aggregation
from polytask.models import HardSharing
from polytask.models.layers import MLP, TabularInput

SIZES = [(2, 5, 0), (3, 8, 1), (5, 20, 2), (8, 40, 3)]  # (tasks, dimension, seed)


def _tasks(n: int) -> list[pt.Task]:
    return [pt.Task(name=f"t{i}", kind="regression") for i in range(n)]


def _direction(name: str, jac: torch.Tensor, **options) -> tuple[torch.Tensor, torch.Tensor]:
    balancer = make_balancer(name, _tasks(len(jac)), options)
    assert isinstance(balancer, _Aggregation)
    return balancer.weights_and_direction(jac, [True] * len(jac))


@pytest.mark.parametrize(("m", "n", "seed"), SIZES)
def test_mgda_is_the_min_norm_point_of_the_hull(m: int, n: int, seed: int) -> None:
    jac = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    w, d = _direction("mgda", jac, epsilon=1e-9, max_iters=20000)
    gram = (jac @ jac.T).numpy()
    qp = minimize(
        lambda a: a @ gram @ a,
        np.full(m, 1 / m),
        jac=lambda a: 2 * gram @ a,
        bounds=[(0, 1)] * m,
        constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    assert w.min() >= -1e-9 and abs(float(w.sum()) - 1) < 1e-6
    best = float(np.sqrt(qp.fun))
    assert float(d.norm()) == pytest.approx(best, rel=2e-3, abs=1e-6)
    torch.testing.assert_close(d, torch.from_numpy(qp.x) @ jac, atol=5e-3 * (1 + best), rtol=0)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n", [3, 10, 50])
def test_pcgrad_leaves_no_conflict_between_two_projected_gradients(n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    jac = torch.randn(2, n, generator=g, dtype=torch.float64)
    jac[1] = -jac[0] + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)  # conflicting
    g1, g2 = jac
    p1 = g1 - min(0.0, float(g1 @ g2)) / float(g2 @ g2) * g2
    p2 = g2 - min(0.0, float(g2 @ g1)) / float(g1 @ g1) * g1
    assert float(p1 @ g2) >= -1e-9 and float(p2 @ g1) >= -1e-9
    _, d = _direction("pcgrad", jac)
    torch.testing.assert_close(d, p1 + p2)


def _conflicting(m: int, n: int, seed: int) -> torch.Tensor:
    """m task gradients in n dimensions, many pairs conflicting (a common part of either sign)."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(n, generator=g, dtype=torch.float64)
    signs = torch.where(torch.rand(m, 1, generator=g) < 0.5, -1.0, 1.0).double()
    return signs * common + 0.8 * torch.randn(m, n, generator=g, dtype=torch.float64)


def _drawn_orders(m: int, seed: int, calls: int) -> list[list[list[int]]]:
    """The orders the solvers draw in their first ``calls`` calls: row i, the other tasks."""
    from polytask.balancing.gramian import _orders

    g = torch.Generator().manual_seed(seed)
    return [_orders(m, g)[0].T.tolist() for _ in range(calls)]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [3, 20])
def test_pcgrad_agrees_with_torchjd_on_two_tasks(n: int, seed: int) -> None:
    """With two tasks the order cannot matter: polytask's weights are torchjd's."""
    from torchjd.aggregation import PCGrad

    for jac in (torch.randn(2, n, dtype=torch.float64), _conflicting(2, n, seed)):
        w, _ = _direction("pcgrad", jac, seed=seed)
        torch.testing.assert_close(w, PCGrad().gramian_weighting(jac @ jac.T).to(w.dtype))


@pytest.mark.parametrize(("m", "n", "seed"), [(3, 4, 0), (5, 3, 1), (8, 6, 2), (12, 5, 3)])
def test_pcgrad_projects_each_gradient_in_turn_in_its_drawn_order(m: int, n: int, seed: int):
    """Yu et al.'s loop on the vectors themselves, in the order the seeded generator draws:
    g_i' loses its component along g_j whenever g_i'·g_j < 0, one j after another (so each g_i'
    ends without conflict with the last g_j of its order); the direction is Σ_i g_i'."""
    jac = _conflicting(m, n, seed)
    rows, total = jac.numpy(), 0
    for i, order in enumerate(_drawn_orders(m, seed, 1)[0]):
        assert sorted(order) == [k for k in range(m) if k != i]
        gi = rows[i].copy()
        for j in order:
            gi = gi - min(0.0, gi @ rows[j]) / (rows[j] @ rows[j]) * rows[j]
        assert gi @ rows[order[-1]] >= -1e-9
        total = total + gi
    _, d = _direction("pcgrad", jac, seed=seed)
    np.testing.assert_allclose(d.numpy(), total, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_pcgrad_on_conflicts_in_orthogonal_pairs_is_pairwise(seed: int) -> None:
    """Pairs that conflict within orthogonal subspaces: every order gives two-task PCGrad per
    pair (a projection on an orthogonal gradient does nothing), whatever the seed."""
    g = torch.Generator().manual_seed(seed)
    jac = torch.zeros(6, 9, dtype=torch.float64)
    expected = torch.zeros(9, dtype=torch.float64)
    for k in range(3):
        a = torch.randn(3, generator=g, dtype=torch.float64)
        b = -a + 0.5 * torch.randn(3, generator=g, dtype=torch.float64)
        jac[2 * k, 3 * k : 3 * k + 3], jac[2 * k + 1, 3 * k : 3 * k + 3] = a, b
        expected[3 * k : 3 * k + 3] = (
            a
            - min(0.0, float(a @ b)) / float(b @ b) * b
            + b
            - min(0.0, float(a @ b)) / float(a @ a) * a
        )
    for s in (0, 7):
        _, d = _direction("pcgrad", jac, seed=s)
        torch.testing.assert_close(d, expected)


@pytest.mark.parametrize("name", ["pcgrad", "gradvac"])
def test_the_order_is_random_but_seeded(name: str) -> None:
    """Same seed, same weights; another seed, another order and other weights (eight tasks
    with many conflicts, where the order matters); the next call draws a new order."""
    jac = _conflicting(8, 4, 0)
    runs = {s: make_balancer(name, _tasks(8), {"seed": s}) for s in (0, 1)}
    again = make_balancer(name, _tasks(8), {"seed": 0})
    first = {s: b.weights_and_direction(jac, [True] * 8)[0] for s, b in runs.items()}
    torch.testing.assert_close(again.weights_and_direction(jac, [True] * 8)[0], first[0])
    assert not torch.allclose(first[0], first[1], rtol=1e-3)
    if name == "pcgrad":  # no state but the order: the same Jacobian, a new order
        assert not torch.allclose(runs[0].weights_and_direction(jac, [True] * 8)[0], first[0])


@pytest.mark.parametrize("name", ["pcgrad", "gradvac"])
def test_a_vanishing_task_gradient_changes_nothing_for_the_others(name: str) -> None:
    """A zero row: finite weights (its own stays 1), the other two tasks' direction is their
    two-task aggregation (torchjd's GradVac would weight the zero row by ‖g_i‖φ̂/eps)."""
    jac = _conflicting(2, 5, 4)
    with_zero = torch.cat([jac[:1], torch.zeros(1, 5, dtype=torch.float64), jac[1:]])
    names = _tasks(3)
    three, two = make_balancer(name, names, {}), make_balancer(name, names[:2], {})
    for _ in range(3):  # GradVac's targets grow positive, so the zero row would be "corrected"
        w, d = three.weights_and_direction(with_zero, [True] * 3)
        _, d_two = two.weights_and_direction(jac, [True] * 2)
        assert bool(w.isfinite().all()) and float(w[1]) == 1.0
        torch.testing.assert_close(d, d_two)


@pytest.mark.parametrize(("m", "n", "seed"), SIZES)
def test_imtl_g_has_equal_projections_on_unit_task_gradients(m: int, n: int, seed: int) -> None:
    jac = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    _, d = _direction("imtl_g", jac)
    projections = (jac / jac.norm(dim=1, keepdim=True)) @ d
    torch.testing.assert_close(projections, projections.mean().expand(m), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(("m", "n", "seed"), SIZES)
def test_upgrad_does_not_conflict_with_any_task(m: int, n: int, seed: int) -> None:
    jac = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    _, d = _direction("upgrad", jac)
    assert float((jac @ d).min()) >= -1e-6 * float(jac.norm() * d.norm())


def _model(n_in: int, tasks: list[str], width: int = 16) -> HardSharing:
    return HardSharing(
        encoder=TabularInput(n_in, [], None),
        trunk=MLP(n_in, [width]),
        out_dims={t: 1 for t in tasks},
    )


def test_fixed_equal_weights_is_the_plain_summed_backward() -> None:
    torch.manual_seed(0)
    names = ["a", "b", "c"]
    model = _model(4, names)
    x = torch.randn(32, 4)
    balancer = make_balancer(
        "fixed", _tasks(0) + [pt.Task(name=n, kind="regression") for n in names]
    )

    def losses() -> dict[str, torch.Tensor]:
        out = model(x)
        return {n: (out[n].squeeze(-1) - i).pow(2).mean() for i, n in enumerate(names)}

    balancer.backward(losses(), model=model)
    via_balancer = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    sum(losses().values()).backward()
    for a, p in zip(via_balancer, model.parameters(), strict=True):
        assert torch.equal(a, p.grad)


def test_uncertainty_recovers_the_noise_variances() -> None:
    torch.manual_seed(0)
    sigmas = {"quiet": 0.1, "mid": 0.5, "loud": 1.5}
    n = 4000
    x = torch.randn(n, 3)
    signal = x[:, 0] - 0.5 * x[:, 1]
    y = {name: signal + s * torch.randn(n) for name, s in sigmas.items()}
    model = _model(3, list(sigmas))
    balancer = make_balancer("uncertainty", [pt.Task(name=t, kind="regression") for t in sigmas])
    opt = torch.optim.Adam(list(model.parameters()) + balancer.parameters(), lr=0.02)
    for _ in range(300):
        idx = torch.randint(0, n, (256,))
        out = model(x[idx])
        losses = {t: (out[t].squeeze(-1) - y[t][idx]).pow(2).mean() for t in sigmas}
        opt.zero_grad()
        balancer.backward(losses, model=model)
        opt.step()
    learned = balancer.log_scale.detach().exp()
    truth = torch.tensor([s**2 for s in sigmas.values()])
    torch.testing.assert_close(learned, truth, rtol=0.25, atol=0.005)


def test_gradnorm_drives_gradient_norms_toward_the_targets() -> None:
    torch.manual_seed(0)
    x = torch.randn(512, 4)
    scales = {"small": 0.1, "large": 10.0}
    model = _model(4, list(scales))
    tasks = [pt.Task(name=t, kind="regression") for t in scales]
    balancer = make_balancer("gradnorm", tasks, {"alpha": 0.0, "lr": 0.05})
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def spread() -> float:
        out, h = model(x, features=True)
        norms = []
        for i, (t, s) in enumerate(scales.items()):
            loss = s * (out[t].squeeze(-1) - x[:, 0]).pow(2).mean()
            (g,) = torch.autograd.grad(loss, h, retain_graph=True)
            norms.append(float(balancer.weights[i]) * float(g.norm()))
        return abs(np.log(norms[0] / norms[1]))

    before = spread()
    for _ in range(200):
        out, h = model(x, features=True)
        losses = {t: s * (out[t].squeeze(-1) - x[:, 0]).pow(2).mean() for t, s in scales.items()}
        opt.zero_grad()
        balancer.backward(losses, model=model, features=h)
        opt.step()
    after = spread()
    assert before > np.log(10) and after < 0.25 * before


@pytest.fixture
def grad_calls(monkeypatch) -> list[bool]:
    """Records every autograd.grad call of the Jacobian engine: batched or not."""
    from polytask.balancing import jacobian

    calls: list[bool] = []
    original = torch.autograd.grad

    def counting(*args, **kwargs):
        calls.append(bool(kwargs.get("is_grads_batched")))
        return original(*args, **kwargs)

    monkeypatch.setattr(jacobian.torch.autograd, "grad", counting)
    return calls


def test_per_task_gradients_come_from_one_batched_jacobian(grad_calls: list[bool]) -> None:
    names = [f"t{i}" for i in range(6)]
    model = _model(4, names)
    balancer = make_balancer("pcgrad", _tasks(6))
    out, h = model(torch.randn(16, 4), features=True)
    balancer.backward({n: out[n].pow(2).mean() for n in names}, model=model, features=h)
    # one batched call for ∂L/∂h and the heads, one batched pull-back through the trunk
    assert grad_calls == [True, True]


def test_with_the_head_outputs_one_batched_call_remains(grad_calls: list[bool]) -> None:
    names = [f"t{i}" for i in range(6)]
    model = _model(4, names)
    balancer = make_balancer("pcgrad", _tasks(6))
    packed, h = model(torch.randn(16, 4), packed=True, features=True)
    losses = {n: packed[:, i].pow(2).mean() for i, n in enumerate(names)}
    balancer.backward(losses, model=model, features=h, outputs=packed)
    # ∂L/∂outputs and the heads' gradient by plain backward, ∂L_i/∂h by one einsum (linear
    # heads), then the one batched pull-back through the trunk
    assert grad_calls == [False, False, True]


@pytest.mark.parametrize("head", [[], [5]])
@pytest.mark.parametrize("level", ["parameters", "representation"])
def test_the_head_outputs_path_gives_the_same_gradients(head: list[int], level: str) -> None:
    """Skipping the losses in the batched backward changes nothing: same Jacobian, same step."""
    x = torch.randn(24, 4, generator=torch.Generator().manual_seed(3))
    y = torch.randn(24, 4, generator=torch.Generator().manual_seed(4))
    mask = torch.zeros(24, dtype=torch.bool)  # task "c" has no label in this batch
    grads, weights = [], []
    for with_outputs in (False, True):
        torch.manual_seed(0)
        model = HardSharing(
            encoder=TabularInput(4, [], None),
            trunk=MLP(4, [8]),
            out_dims={"a": 1, "b": 3, "c": 1, "d": 2},
            head=head,
        )
        packed, h = model(x, packed=True, features=True)
        losses = {
            "a": (packed[:, 0, 0] - y[:, 0]).pow(2).mean(),
            "b": torch.nn.functional.cross_entropy(packed[:, 1, :3], (y[:, 1] > 0).long()),
            "c": pt.losses.masked_mean(packed[:, 2, 0] ** 2, mask),
            "d": (packed[:, 3, :2] - y[:, 2:]).abs().mean(),
        }
        order = ["d", "a", "c", "b"]  # losses need not come in the heads' order
        tasks = [pt.Task(name=n, kind="regression", weight=1.0 + i) for i, n in enumerate(order)]
        balancer = make_balancer("upgrad", tasks, {"level": level})
        w = balancer.backward(
            {n: losses[n] for n in order},
            model=model,
            features=h,
            outputs=packed if with_outputs else None,
        )
        weights.append(w)
        grads.append([p.grad.clone() for p in model.parameters()])
    assert weights[0].keys() == weights[1].keys() and weights[1]["c"] == 0.0
    for n in weights[0]:
        assert weights[0][n] == pytest.approx(weights[1][n], rel=1e-4, abs=1e-6)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(n for n, c in BALANCERS.items() if c.sets_grads))
@pytest.mark.parametrize("level", ["parameters", "representation"])
def test_a_task_without_labels_changes_nothing(name: str, level: str) -> None:
    names = ["a", "b", "c"]
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    grads = []
    for with_missing in (False, True):
        torch.manual_seed(0)
        model = _model(4, names)
        out, h = model(x, features=True)
        losses = {"a": out["a"].pow(2).mean(), "c": (out["c"] - 1).pow(2).mean()}
        if with_missing:
            mask = torch.zeros(16, dtype=torch.bool)
            losses["b"] = pt.losses.masked_mean(out["b"].squeeze(-1) ** 2, mask)
        tasks = [pt.Task(name=n, kind="regression") for n in losses]
        balancer = make_balancer(name, tasks, {"level": level})
        torch.manual_seed(1)
        weights = balancer.backward(losses, model=model, features=h)
        if with_missing:
            assert weights["b"] == 0.0
        grads.append([p.grad.clone() for p in model.parameter_groups().shared])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


SLOW_SOLVERS = {"nash_mtl", "cagrad", "fairgrad"}


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_every_balancer_trains_with_missing_labels_and_an_auxiliary_task(tmp_path, name) -> None:
    frame = make_frame(96, seed=1, missing=0.3)
    frame.loc[:, "visits"] = np.nan
    frame.loc[:3, "visits"] = 1.0  # most batches have no labelled 'visits' row
    path = tmp_path / "train.csv"
    frame.to_csv(path, index=False)
    levels = ["parameters", "representation"] if BALANCERS[name].sets_grads else [None]
    for level in levels:
        options = {"level": level} if level else {}
        config = make_config(path, balancer=name, balancer_options=options, epochs=2, batch_size=24)
        run = pt.fit(config)
        history = run.history
        assert np.isfinite(history.filter(like="train_loss/").to_numpy()).all()
        weights = history.filter(like="weight/").to_numpy()
        assert weights.shape[1] == 6 and np.isfinite(weights).all()
        for p in run.model.parameters():
            assert torch.isfinite(p).all()


def test_a_saved_run_plots_its_weights(tmp_path) -> None:
    path = tmp_path / "train.csv"
    make_frame(80, seed=2).to_csv(path, index=False)
    run = pt.fit(make_config(path, balancer="dwa", epochs=3), out=tmp_path / "run")
    assert (run.directory / "plots" / "weights.png").is_file()


def _large_counts(seed: int, n: int = 600) -> pd.DataFrame:
    """A regression task and a count task whose mean (≈ 20) is far above e."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    frame = pd.DataFrame(x, columns=["x0", "x1", "x2"])
    frame["y"] = x[:, 0] - x[:, 1] + 0.1 * rng.normal(size=n)
    frame["n"] = rng.poisson(np.exp(3.0 + 0.5 * x[:, 0] + 0.3 * x[:, 2]))
    return frame


def _fit_counts(balancer: str) -> pt.Run:
    tasks = [pt.Task(name="y", kind="regression"), pt.Task(name="n", kind="count")]
    config = pt.Config(
        data=pt.DataConfig(train="unused.csv"),
        tasks=tasks,
        model=pt.ModelConfig(shared=[16]),
        train=pt.TrainConfig(
            balancer=balancer, epochs=40, batch_size=32, lr=1e-2, device="cpu", patience=None
        ),
    )
    return pt.fit(config, frame=_large_counts(0))


@pytest.fixture(scope="module")
def fixed_count_mae() -> float:
    return _fit_counts("fixed").metrics["test"]["n"]["mae"]


@pytest.mark.parametrize("name", ["geometric", "famo", "uncertainty", "imtl_l"])
def test_weightings_that_log_or_scale_losses_train_large_counts(name, fixed_count_mae) -> None:
    """Counts above e once made the Poisson loss negative: geometric and FAMO lost the count
    gradient (test MAE ≈ 5× fixed's), uncertainty and IMTL-L had an objective unbounded below
    (the count weight grew past 10³)."""
    run = _fit_counts(name)
    assert run.metrics["test"]["n"]["mae"] <= 1.25 * fixed_count_mae
    weights = run.history["weight/n"].to_numpy()
    assert np.isfinite(weights).all() and (weights > 0).all()
    if name in ("uncertainty", "imtl_l"):
        # learned scales head for exp(s) = L (uncertainty) or 1/L (IMTL-L); the count loss
        # stays above 1 here, so the count weight never rises above its start (½, 1)
        assert weights.max() <= 1.0


# ---- aggregators: each one's defining condition, against an independent computation ----------
@pytest.mark.parametrize("c", [0.4, 1.0])
@pytest.mark.parametrize(("m", "n", "seed"), SIZES)
def test_cagrad_maximizes_the_worst_improvement_in_a_ball_around_the_mean(m, n, seed, c) -> None:
    """max_d min_i g_i·d subject to ‖d − g₀‖ ≤ c‖g₀‖, g₀ the mean gradient (solved by SLSQP)."""
    jac = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    _, d = _direction("cagrad", jac, c=c)
    J = jac.numpy()
    g0 = J.mean(0)
    radius = c * np.linalg.norm(g0)
    qp = minimize(
        lambda x: -x[-1],
        np.append(g0, (J @ g0).min()),
        jac=lambda x: np.append(np.zeros(n), -1.0),
        constraints=[
            {
                "type": "ineq",
                "fun": lambda x: J @ x[:-1] - x[-1],
                "jac": lambda x: np.hstack([J, -np.ones((m, 1))]),
            },
            {
                "type": "ineq",
                "fun": lambda x: radius**2 - ((x[:-1] - g0) ** 2).sum(),
                "jac": lambda x: np.append(-2 * (x[:-1] - g0), 0.0),
            },
        ],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    d = d.numpy()
    assert np.linalg.norm(d - g0) == pytest.approx(radius, rel=1e-6)
    assert (J @ d).min() == pytest.approx(-qp.fun, rel=1e-4)
    np.testing.assert_allclose(d, qp.x[:-1], atol=1e-4 * np.linalg.norm(g0))


@pytest.mark.parametrize("seed", range(3))
def test_graddrop_keeps_one_sign_per_coordinate_chosen_by_its_purity(seed: int) -> None:
    """Each coordinate is the sum of either the positive or the negative task components; the
    positive side is kept with probability P = ½(1 + Σ_i g_i / Σ_i |g_i|)."""
    g = torch.Generator().manual_seed(seed)
    column = torch.randn(3, 1, generator=g, dtype=torch.float64)
    jac = torch.cat(
        [torch.randn(3, 50, generator=g, dtype=torch.float64), column.expand(3, 4000)], 1
    )
    torch.manual_seed(seed)
    _, d = _direction("graddrop", jac)
    positive, negative = jac.clamp(min=0).sum(0), jac.clamp(max=0).sum(0)
    kept_positive = torch.isclose(d, positive, rtol=1e-12, atol=0)
    assert bool((kept_positive | torch.isclose(d, negative, rtol=1e-12, atol=0)).all())
    purity = float(0.5 * (1 + column.sum() / column.abs().sum()))
    share = float(kept_positive[50:].double().mean())
    assert share == pytest.approx(purity, abs=4 * (purity * (1 - purity) / 4000) ** 0.5 + 1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_graddrop_gives_torchjds_direction_for_the_same_draw(seed: int) -> None:
    from torchjd.aggregation import GradDrop

    jac = torch.randn(5, 300, generator=torch.Generator().manual_seed(seed))
    jac[:, :10] = 0  # no gradient at all: nothing kept
    torch.manual_seed(seed)
    w, d = _direction("graddrop", jac)
    torch.manual_seed(seed)
    theirs = GradDrop()(jac)
    torch.testing.assert_close(d, theirs, rtol=1e-5, atol=1e-6)
    expected = torch.linalg.lstsq(jac.T.double(), d.double().unsqueeze(1)).solution.squeeze(1)
    torch.testing.assert_close(w.double(), expected, rtol=1e-4, atol=1e-6)


def _vaccinated(gi: np.ndarray, gj: np.ndarray, target: float) -> np.ndarray:
    """g_i + w g_j with w ≥ 0 found by root search so that cos(g_i + w g_j, g_j) = target."""
    from scipy.optimize import brentq

    def gap(w: float) -> float:
        v = gi + w * gj
        return float(v @ gj / np.linalg.norm(v) / np.linalg.norm(gj)) - target

    hi = 1.0
    while gap(hi) < 0:
        hi *= 2
    return gi + brentq(gap, 0.0, hi, xtol=1e-14) * gj


@pytest.mark.parametrize("beta", [0.5, 0.9])
@pytest.mark.parametrize("seed", range(3))
def test_gradvac_raises_each_cosine_to_its_running_target(seed: int, beta: float) -> None:
    """Two tasks over several steps: where cos(g_i, g_j) is below the EMA target φ̂_ij, g_i is
    moved along g_j until the cosine equals φ̂_ij; φ̂ ← (1−β)φ̂ + β cos; the step is Σ_i g_i'."""
    g = torch.Generator().manual_seed(seed)
    balancer = make_balancer("gradvac", _tasks(2), {"beta": beta})
    target = np.zeros((2, 2))
    for step in range(5):
        jac = torch.randn(2, 12, generator=g, dtype=torch.float64)
        if step < 2:  # agreeing gradients first, so that the targets become positive
            jac[1] = jac[0] + 0.5 * jac[1]
        _, d = balancer.weights_and_direction(jac, [True, True])
        rows, expected = jac.numpy(), []
        for i, j in ((0, 1), (1, 0)):
            gi, gj = rows[i], rows[j]
            cos = gi @ gj / np.linalg.norm(gi) / np.linalg.norm(gj)
            expected.append(_vaccinated(gi, gj, target[i, j]) if cos < target[i, j] else gi)
            target[i, j] = (1 - beta) * target[i, j] + beta * cos
        np.testing.assert_allclose(d.numpy(), sum(expected), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("beta", [0.3, 0.9])
@pytest.mark.parametrize("seed", range(3))
def test_gradvac_agrees_with_torchjd_on_two_tasks_over_steps(seed: int, beta: float) -> None:
    """With two tasks the order cannot matter: the weights are torchjd's at every step (the
    targets φ̂ carried from step to step)."""
    from torchjd.aggregation import GradVac

    g = torch.Generator().manual_seed(seed)
    balancer, theirs = make_balancer("gradvac", _tasks(2), {"beta": beta}), GradVac(beta=beta)
    for step in range(6):
        jac = torch.randn(2, 9, generator=g, dtype=torch.float64)
        if step % 3 < 2:  # mostly agreeing gradients, so that the targets become positive
            jac[1] = jac[0] + 0.5 * jac[1]
        w, _ = balancer.weights_and_direction(jac, [True, True])
        torch.testing.assert_close(w, theirs.gramian_weighting(jac @ jac.T), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("m", "seed"), [(3, 0), (5, 1), (8, 2)])
def test_gradvac_vaccinates_each_gradient_in_turn_in_its_drawn_order(m: int, seed: int) -> None:
    """More tasks, several steps: for each i, over the other j in the order the seeded generator
    draws, g_i' is moved along g_j until cos(g_i', g_j) = φ̂_ij when it is below, and φ̂_ij
    follows the cosine before the move; the direction is Σ_i g_i'."""
    g = torch.Generator().manual_seed(seed + 100)
    balancer = make_balancer("gradvac", _tasks(m), {"beta": 0.5, "seed": seed})
    target = np.zeros((m, m))
    for step, orders in enumerate(_drawn_orders(m, seed, 4)):
        jac = _conflicting(m, 6, seed + step) if step else torch.randn(m, 6, generator=g).double()
        if step == 0:  # agreeing gradients first, so that the targets become positive
            jac = jac[:1] + 0.3 * jac
        rows, total = jac.numpy(), 0
        for i, order in enumerate(orders):
            gi = rows[i].copy()
            for j in order:
                cos = gi @ rows[j] / np.linalg.norm(gi) / np.linalg.norm(rows[j])
                if cos < target[i, j]:
                    gi = _vaccinated(gi, rows[j], target[i, j])
                target[i, j] = 0.5 * target[i, j] + 0.5 * cos
            total = total + gi
        _, d = balancer.weights_and_direction(jac, [True] * m)  # (eps = 1e-8 in its cosines)
        np.testing.assert_allclose(d.numpy(), total, rtol=1e-6, atol=1e-7)


def _nash_weights(gram: np.ndarray) -> np.ndarray:
    """The Nash bargaining weights: G α = 1/α, the minimum of ½ αᵀGα − Σ log α_i (convex)."""
    m = len(gram)
    fit = minimize(
        lambda a: 0.5 * a @ gram @ a - np.log(a).sum(),
        np.full(m, 1 / np.sqrt(np.trace(gram))),
        jac=lambda a: gram @ a - 1 / a,
        bounds=[(1e-12, None)] * m,
        method="L-BFGS-B",
        options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10000},
    )
    return fit.x


# (5, 20, 2) was a strict xfail with torchjd 0.18's Nash-MTL: ECOS reported its first linearized
# problem unbounded and the weights silently stayed at 1 (the plain sum). polytask's Newton
# solve has no such failure.
@pytest.mark.parametrize(("m", "n", "seed"), SIZES)
def test_nash_mtl_solves_the_bargaining_condition(m: int, n: int, seed: int) -> None:
    """Weights α > 0 with G α = 1/α (G = JJᵀ), up to the scale that caps ‖αᵀJ‖ at max_norm."""
    jac = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    w, d = _direction("nash_mtl", jac)
    gram = (jac @ jac.T).numpy()
    reference = _nash_weights(gram)
    w = w.numpy()
    assert (w > 0).all()
    # capped at max_norm = 1: the same weights up to one factor
    np.testing.assert_allclose(
        w / np.linalg.norm(w @ jac.numpy()), reference / np.sqrt(m), rtol=1e-4
    )
    assert float(d.norm()) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize(("m", "n", "seed"), [(6, 3, 0), (4, 10, 1), (10, 4, 2)])
def test_nash_mtl_on_a_singular_gramian_solves_the_ridged_condition(m, n, seed) -> None:
    """Rank-deficient G (more tasks than dimensions, or two equal gradients): finite weights
    with (G + ρ‖G‖_F I) α = 1/α, ρ the ``ridge`` option, instead of a silent plain sum."""
    jac = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    jac[1] = jac[0]
    ridge = 1e-6
    w, d = _direction("nash_mtl", jac, max_norm=0.0, ridge=ridge)
    gram = jac @ jac.T
    assert bool(torch.isfinite(w).all()) and bool((w > 0).all())
    ridged = gram + ridge * float(gram.norm()) * torch.eye(m, dtype=torch.float64)
    torch.testing.assert_close(ridged @ w, 1 / w, rtol=1e-6, atol=0)
    torch.testing.assert_close(d, w @ jac)


@pytest.mark.parametrize(("m", "n", "seed"), [*SIZES, (10, 30, 4), (14, 60, 5), (4, 2, 6)])
def test_nash_mtl_agrees_with_torchjd_cvxpy_solution(m: int, n: int, seed: int) -> None:
    """Cross-check against torchjd 0.18's cvxpy (ECOS) solve where it converges: same weights
    (its stopping rule is ‖Gα − 1/α‖ < 10⁻³ on the normalized Gramian)."""
    pytest.importorskip("cvxpy", reason="cvxpy is the optional cross-check")
    from torchjd.aggregation import NashMTL

    jac = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    reference = NashMTL(n_tasks=m, max_norm=0.0).weighting(jac)
    gram = jac @ jac.T
    scale = float(gram.norm())
    if float((gram @ reference - 1 / reference).norm()) > 1e-3 * scale**0.5:
        pytest.skip("torchjd's ECOS solve did not converge on this Jacobian")
    w, _ = _direction("nash_mtl", jac, max_norm=0.0)
    torch.testing.assert_close(w, reference, rtol=3e-3, atol=0)


@pytest.mark.parametrize("c", [0.1, 0.4, 1.0])
@pytest.mark.parametrize(("m", "n", "seed"), [*SIZES, (10, 30, 4), (14, 60, 5), (8, 3, 6)])
def test_cagrad_agrees_with_torchjd_cvxpy_solution(m: int, n: int, seed: int, c: float) -> None:
    """Cross-check against torchjd 0.18's cvxpy (CLARABEL) solve of the same dual, including a
    rank-deficient case (8 tasks in 3 dimensions)."""
    pytest.importorskip("cvxpy", reason="cvxpy is the optional cross-check")
    from torchjd.aggregation import CAGrad

    jac = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    jac = jac + 0.5 * torch.randn(n, generator=torch.Generator().manual_seed(seed + 99))
    _, d = _direction("cagrad", jac, c=c)
    reference = CAGrad(c=c).gramian_weighting(jac @ jac.T) @ jac
    torch.testing.assert_close(d, reference, rtol=0, atol=1e-4 * float(jac.mean(0).norm()))


@pytest.mark.parametrize("name", ["nash_mtl", "cagrad"])
def test_solver_free_aggregators_need_no_cvxpy(monkeypatch, name: str) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "cvxpy", None)  # import cvxpy now raises ImportError
    jac = torch.randn(4, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w, d = _direction(name, jac)
    assert bool(torch.isfinite(w).all())
    torch.testing.assert_close(d, w @ jac)


# ---- many-task options: every (reuse weights), subset (random tasks per step) ----------------
def _steps(name: str, options: dict, batches: int, n_tasks: int = 6, seed: int = 0):
    """Weights and shared gradients of ``batches`` steps, each on a new batch (same model)."""
    names = [f"t{i}" for i in range(n_tasks)]
    torch.manual_seed(seed)
    model = _model(4, names, width=8)
    balancer = make_balancer(name, _tasks(n_tasks), options)
    g = torch.Generator().manual_seed(seed + 1)
    out = []
    for _ in range(batches):
        x, y = torch.randn(16, 4, generator=g), torch.randn(16, n_tasks, generator=g)
        model.zero_grad()
        packed, h = model(x, packed=True, features=True)
        losses = {n: (packed[:, i, 0] - y[:, i]).pow(2).mean() for i, n in enumerate(names)}
        weights = balancer.backward(losses, model=model, features=h, outputs=packed)
        shared = [p.grad.clone() for p in model.parameter_groups().shared]
        # the weighted-sum gradient with these weights, for comparison
        model.zero_grad()
        packed, h = model(x, packed=True, features=True)
        total = sum(
            weights[n] * (packed[:, i, 0] - y[:, i]).pow(2).mean() for i, n in enumerate(names)
        )
        total.backward()
        weighted = [p.grad.clone() for p in model.parameter_groups().shared]
        out.append((weights, shared, weighted))
    return out


@pytest.mark.parametrize("name", ["upgrad", "cagrad", "nash_mtl", "mgda"])
@pytest.mark.parametrize("level", ["parameters", "representation"])
def test_every_k_reuses_the_weights_on_the_current_jacobian(name: str, level: str) -> None:
    """every: 3 — steps 0 and 3 compute weights (equal to the method's own on that batch);
    steps 1, 2 reuse step 0's (up to Nash-MTL's max_norm rescale) and the shared gradient is
    w_oldᵀJ of the current batch, i.e. the gradient of Σ w_old,t L_t."""
    plain = _steps(name, {"level": level}, 4)
    reused = _steps(name, {"level": level, "every": 3}, 4)
    first = np.array(list(reused[0][0].values()))
    for step, ((w, shared, weighted), (w_plain, _, _)) in enumerate(
        zip(reused, plain, strict=True)
    ):
        w = np.array(list(w.values()))
        for a, b in zip(shared, weighted, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        if step in (0, 3):  # a fresh solve: the method's own step (Nash's warm start differs)
            np.testing.assert_allclose(w, list(w_plain.values()), rtol=2e-3 if step else 1e-5)
        else:  # the same weights up to one factor (1 except for Nash-MTL's cap)
            np.testing.assert_allclose(w / w.sum(), first / first.sum(), rtol=1e-6)
    assert not np.allclose(list(reused[1][0].values()), list(plain[1][0].values()), rtol=1e-3)


@pytest.mark.parametrize("level", ["parameters", "representation"])
def test_subset_aggregates_a_seeded_random_subset_each_step(level: str) -> None:
    """subset: 3 of 6 tasks — 3 nonzero weights per step, the others 0; the subsets vary over
    steps and repeat with the seed; the shared gradient is the aggregation of the chosen rows."""
    runs = [_steps("upgrad", {"level": level, "subset": 3, "seed": s}, 6) for s in (0, 0, 5)]
    chosen = []
    for weights, shared, weighted in runs[0]:
        nonzero = tuple(n for n, v in weights.items() if v != 0)
        assert len(nonzero) == 3
        chosen.append(nonzero)
        for a, b in zip(shared, weighted, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert len(set(chosen)) > 1
    again = [tuple(n for n, v in w.items() if v != 0) for w, _, _ in runs[1]]
    other = [tuple(n for n, v in w.items() if v != 0) for w, _, _ in runs[2]]
    assert again == chosen and other != chosen


def test_subset_weights_are_the_method_on_the_chosen_rows() -> None:
    names = [f"t{i}" for i in range(6)]
    torch.manual_seed(0)
    model = _model(4, names, width=8)
    x, y = torch.randn(16, 4), torch.randn(16, 6)
    packed, h = model(x, packed=True, features=True)
    losses = {n: (packed[:, i, 0] - y[:, i]).pow(2).mean() for i, n in enumerate(names)}
    balancer = make_balancer("mgda", _tasks(6), {"level": "representation", "subset": 4})
    weights = balancer.backward(losses, model=model, features=h, outputs=packed)
    kept = [n for n in names if weights[n] != 0]
    assert len(kept) == 4
    rows = torch.stack(
        [torch.autograd.grad(losses[n], h, retain_graph=True)[0].flatten() for n in kept]
    )
    w, _ = _direction("mgda", rows)
    np.testing.assert_allclose([weights[n] for n in kept], w.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("name", "options", "field"),
    [
        ("upgrad", {"every": 0}, "every"),
        ("cagrad", {"every": 1.5}, "every"),
        ("nash_mtl", {"subset": 1}, "subset"),
        ("graddrop", {"every": 2}, "every"),  # not a weighting: nothing to reuse
    ],
)
def test_many_task_options_are_validated(name: str, options: dict, field: str) -> None:
    with pytest.raises(pt.ConfigError, match=rf"balancer_options\.{field}"):
        make_balancer(name, _tasks(3), options)


@pytest.mark.parametrize("mode", ["min", "median", "rmse"])
@pytest.mark.parametrize(("m", "n", "seed"), SIZES)
def test_aligned_mtl_is_the_mean_of_a_perfectly_conditioned_gradient_system(m, n, seed, mode):
    """J = U S Vᵀ is replaced by σ U Vᵀ (all singular values equal: condition number 1) with σ²
    the smallest, (lower) median or mean eigenvalue of JJᵀ; the step is its mean row."""
    jac = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    _, d = _direction("aligned_mtl", jac, scale_mode=mode)
    u, s, vt = np.linalg.svd(jac.numpy(), full_matrices=False)
    eig = np.sort(s**2)
    scale = {"min": eig[0], "median": eig[(m - 1) // 2], "rmse": eig.mean()}[mode]
    aligned = np.sqrt(scale) * u @ vt
    np.testing.assert_allclose(aligned @ aligned.T, scale * np.eye(m), atol=1e-9 * scale)
    np.testing.assert_allclose(d.numpy(), aligned.mean(0), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
@pytest.mark.parametrize(("m", "n", "seed"), SIZES)
def test_fairgrad_weights_meet_the_alpha_fair_condition(m, n, seed, alpha) -> None:
    """α-fairness: weights w > 0 with (G w)_i = w_i^(−1/α), G = JJᵀ."""
    jac = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    w, d = _direction("fairgrad", jac, alpha=alpha)
    gram, w = (jac @ jac.T).numpy(), w.numpy()
    assert (w > 0).all()
    np.testing.assert_allclose(gram @ w, w ** (-1 / alpha), rtol=1e-6)
    np.testing.assert_allclose(d.numpy(), w @ jac.numpy(), rtol=1e-10)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_fairgrad_agrees_with_torchjds_least_squares_and_stays_finite_when_singular(
    alpha: float,
) -> None:
    from torchjd.aggregation import FairGrad

    g = torch.Generator().manual_seed(4)
    jac = torch.randn(5, 30, generator=g, dtype=torch.float64)
    ours, _ = _direction("fairgrad", jac, alpha=alpha)
    theirs = FairGrad(alpha=alpha).gramian_weighting(jac @ jac.T)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5)
    # more tasks than dimensions: (G + ridge‖G‖_F I) w = w^(−1/α), finite and positive
    wide = torch.randn(6, 3, generator=g, dtype=torch.float64)
    w, _ = _direction("fairgrad", wide, alpha=alpha, ridge=1e-6)
    gram = (wide @ wide.T).numpy()
    ridged = gram + 1e-6 * np.linalg.norm(gram) * np.eye(6)
    assert np.isfinite(w.numpy()).all() and (w.numpy() > 0).all()
    np.testing.assert_allclose(ridged @ w.numpy(), w.numpy() ** (-1 / alpha), rtol=1e-6)


# ---- loss weightings: each one's weights against the paper's formula on a tiny case ----------
ALPHAS = {"a": 1.0, "b": 2.0, "c": 3.0}  # declared task weights: the balancers weight α_t L_t


def _weighted_tasks() -> list[pt.Task]:
    return [pt.Task(name=n, kind="regression", weight=w) for n, w in ALPHAS.items()]


def _leaf_step(balancer, values: dict[str, float]) -> tuple[dict[str, float], np.ndarray]:
    """One backward on leaf losses: the weights reported and ∂objective/∂L_t."""
    leaves = {
        n: torch.tensor(v, dtype=torch.float64, requires_grad=True) for n, v in values.items()
    }
    weights = balancer.backward(leaves, model=torch.nn.Identity())
    return weights, np.array([float(leaves[n].grad) for n in values])


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_dwa_is_the_softmax_of_the_loss_ratios(temperature: float) -> None:
    """w_t = T softmax_t(r_t / temperature), r_t = L_t(e−1) / L_t(e−2): the tasks whose epoch
    loss fell the least get the most weight; equal weights until two epochs are seen."""
    balancer = make_balancer("dwa", _weighted_tasks(), {"temperature": temperature})
    alpha = np.array(list(ALPHAS.values()))
    epochs = [{"a": 1.0, "b": 2.0, "c": 4.0}, {"a": 0.5, "b": 1.9, "c": 2.0}]
    epochs.append({"a": 0.45, "b": 0.95, "c": 2.0})
    batch = {"a": 0.7, "b": 1.3, "c": 0.2}
    np.testing.assert_allclose(_leaf_step(balancer, batch)[1], alpha)
    balancer.end_epoch(epochs[0])
    np.testing.assert_allclose(_leaf_step(balancer, batch)[1], alpha)  # one epoch: no ratio
    for before, last in zip(epochs[:-1], epochs[1:], strict=True):
        balancer.end_epoch(last)
        ratio = np.array([last[n] / before[n] for n in ALPHAS])
        w = len(ratio) * np.exp(ratio / temperature) / np.exp(ratio / temperature).sum()
        weights, grad = _leaf_step(balancer, batch)
        np.testing.assert_allclose(list(weights.values()), w, rtol=1e-6)
        np.testing.assert_allclose(grad, w * alpha, rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 7])
def test_rlw_draws_softmax_normal_weights_from_its_seed(seed: int) -> None:
    """Step k: w = T softmax(ε_k), ε_k ~ N(0, I) drawn in turn from a generator seeded ``seed``."""
    balancer = make_balancer("rlw", _weighted_tasks(), {"seed": seed})
    draws = torch.Generator().manual_seed(seed)
    alpha = np.array(list(ALPHAS.values()))
    seen = []
    for _ in range(4):
        eps = torch.randn(3, generator=draws).double().numpy()
        w = 3 * np.exp(eps) / np.exp(eps).sum()
        weights, grad = _leaf_step(balancer, {"a": 0.7, "b": 1.3, "c": 0.2})
        np.testing.assert_allclose(list(weights.values()), w, rtol=1e-6)
        np.testing.assert_allclose(grad, w * alpha, rtol=1e-6)
        seen.append(w)
    assert np.ptp(np.array(seen), axis=0).min() > 0.05  # new weights every step


def test_famo_follows_its_update() -> None:
    """FAMO (Liu et al. 2023, Alg. 1): the step is c Σ_t z_t ∇L_t / L_t with z = softmax(ξ) and
    c = (Σ_t z_t / L_t)⁻¹; then ξ takes one Adam step (lr, weight decay γ) on the gradient
    δᵀ ∂z/∂ξ = z ⊙ (δ − zᵀδ), δ_t the drop of log L_t since the previous step."""
    lr, gamma = 0.1, 0.01
    balancer = make_balancer("famo", _weighted_tasks(), {"lr": lr, "gamma": gamma})
    alpha = np.array(list(ALPHAS.values()))
    steps = [
        {"a": 1.0, "b": 2.0, "c": 0.5},
        {"a": 0.5, "b": 1.98, "c": 0.4},  # a falls fast, b barely
        {"a": 0.3, "b": 1.97, "c": 0.3},
    ]
    xi = np.zeros(3)
    first = second = None  # Adam's moments
    previous = None
    for k, values in enumerate(steps):
        loss = alpha * np.array(list(values.values()))
        if previous is not None:
            z = np.exp(xi) / np.exp(xi).sum()
            delta = np.log(previous) - np.log(loss)
            g = z * (delta - z @ delta) + gamma * xi
            first = g * 0.1 if first is None else 0.9 * first + 0.1 * g
            second = g**2 * 0.001 if second is None else 0.999 * second + 0.001 * g**2
            t = k
            xi = xi - lr * (first / (1 - 0.9**t)) / (np.sqrt(second / (1 - 0.999**t)) + 1e-8)
        z = np.exp(xi) / np.exp(xi).sum()
        c = 1 / (z / loss).sum()
        weights, grad = _leaf_step(balancer, values)
        np.testing.assert_allclose(list(weights.values()), c * z / loss, rtol=1e-5)
        np.testing.assert_allclose(grad, c * z / loss * alpha, rtol=1e-5)
        previous = loss
    assert xi[1] == xi.max()  # b, whose loss fell the least, gains weight


@pytest.mark.parametrize("seed", range(3))
def test_geometric_is_the_gradient_of_the_geometric_mean_of_the_losses(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    values = dict(
        zip(ALPHAS, (torch.rand(3, generator=g, dtype=torch.float64) * 5).tolist(), strict=True)
    )
    weights, grad = _leaf_step(make_balancer("geometric", _weighted_tasks()), values)
    leaves = torch.tensor(list(values.values()), dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor(list(ALPHAS.values()), dtype=torch.float64)
    (alpha * leaves).prod().pow(1 / 3).backward()
    np.testing.assert_allclose(grad, leaves.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(np.array(list(weights.values())) * alpha.numpy(), grad, rtol=1e-6)


def test_imtl_l_learns_scales_that_make_every_scaled_loss_one() -> None:
    """IMTL-L minimizes Σ_t e^{s_t} α_t L_t − s_t over s: at the optimum e^{s_t} α_t L_t = 1, so
    every task's scaled loss is the same; the model's gradient weights are e^{s_t} α_t."""
    values = {"a": 0.02, "b": 3.0, "c": 40.0}
    balancer = make_balancer("imtl_l", _weighted_tasks())
    opt = torch.optim.Adam(balancer.parameters(), lr=0.1, betas=(0.9, 0.99))
    for _ in range(400):
        opt.zero_grad()
        weights, grad = _leaf_step(balancer, values)
        opt.step()
    alpha = np.array(list(ALPHAS.values()))
    scaled = np.exp(balancer.log_scale.detach().numpy()) * alpha * np.array(list(values.values()))
    np.testing.assert_allclose(scaled, 1.0, rtol=0.02)
    np.testing.assert_allclose(grad, np.array(list(weights.values())) * alpha, rtol=1e-6)


def test_fixed_weights_each_loss_by_its_declared_alpha() -> None:
    """Σ_t α_t L_t, whatever order the losses come in, as a dict or as one loss vector."""
    balancer = make_balancer("fixed", _weighted_tasks())
    weights, grad = _leaf_step(balancer, {"c": 0.2, "a": 0.7, "b": 1.3})
    assert weights == ALPHAS
    np.testing.assert_array_equal(grad, [3.0, 1.0, 2.0])
    vector = torch.tensor([0.2, 0.7, 1.3], requires_grad=True)
    losses = pt.losses.TaskLossValues(("c", "a", "b"), vector, {"c": 0, "a": 1, "b": 2})
    balancer.backward(losses, model=torch.nn.Identity())
    np.testing.assert_array_equal(vector.grad.numpy(), [3.0, 1.0, 2.0])


def _straight_and_resumed(tmp_path, balancer: str, options: dict, epochs: int, first: int):
    """The same run trained ``epochs`` epochs straight, and ``first`` epochs then resumed."""
    from synthetic import make_splits

    splits = make_splits(make_frame(n=160, seed=9, missing=0.2))
    config = make_config(tmp_path / "unused.csv", epochs=epochs, balancer=balancer)
    config = config.with_train(balancer_options=options)
    straight = pt.fit(config, splits=splits)
    pt.fit(config.with_train(epochs=first), splits=splits, out=tmp_path / "run")
    resumed = pt.fit(config, splits=splits, out=tmp_path / "run", resume=True)
    return straight, resumed


def test_resume_with_a_random_subset_is_exact(tmp_path) -> None:
    """The subset draws and the step count are in the checkpoint: 2 + 2 epochs = 4 epochs."""
    options = {"level": "representation", "subset": 3, "seed": 4}
    straight, resumed = _straight_and_resumed(tmp_path, "upgrad", options, epochs=4, first=2)
    columns = [c for c in straight.history if c not in ("seconds", "lr")]
    pd.testing.assert_frame_equal(resumed.history[columns], straight.history[columns])
    for a, b in zip(resumed.model.parameters(), straight.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_resume_inside_a_window_of_reused_weights_is_exact(tmp_path) -> None:
    """80 training rows in batches of 32: 3 steps an epoch, so with ``every: 2`` the window of
    steps 2 and 3 spans the end of epoch 1, where the run stops and resumes: its weights are
    in the checkpoint, so step 3 reuses them as the uninterrupted run does."""
    options = {"level": "representation", "every": 2}
    straight, resumed = _straight_and_resumed(tmp_path, "upgrad", options, epochs=3, first=1)
    losses = [c for c in resumed.history if c.startswith(("train_loss/", "val_loss/"))]
    np.testing.assert_array_equal(
        resumed.history[losses].to_numpy(), straight.history[losses].to_numpy()
    )
    for a, b in zip(resumed.model.parameters(), straight.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("name", "options"),
    [("gradvac", {"beta": 0.2}), ("nash_mtl", {"update_weights_every": 2}), ("pcgrad", {})],
)
def test_resume_of_a_stateful_aggregator_is_exact(tmp_path, name: str, options: dict) -> None:
    """GradVac's targets, Nash-MTL's warm start and step count and the solvers' random orders
    (one state per set of present tasks: labels are missing) are in the checkpoint: 1 + 2 epochs
    give the weights and parameters of 3 straight epochs."""
    options = {"level": "representation", **options}
    straight, resumed = _straight_and_resumed(tmp_path, name, options, epochs=3, first=1)
    columns = [c for c in straight.history if c.startswith(("weight/", "train_loss/", "val_loss/"))]
    assert any(c.startswith("weight/") for c in columns)
    np.testing.assert_array_equal(
        resumed.history[columns].to_numpy(), straight.history[columns].to_numpy()
    )
    for a, b in zip(resumed.model.parameters(), straight.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("name", "options", "tasks", "warns"),
    [
        ("upgrad", {"level": "representation"}, 150, True),  # T quadratic programs
        ("mgda", {"level": "representation"}, 150, False),
        ("mgda", {"level": "parameters"}, 150, True),
        ("mgda", {"level": "parameters", "subset": 32}, 150, False),
        ("nash_mtl", {"level": "parameters", "every": 16}, 150, False),
        ("mgda", {"level": "representation"}, 1000, True),
        ("graddrop", {"level": "parameters"}, 150, True),
        ("upgrad", {"level": "parameters"}, 99, False),
    ],
)
def test_aggregators_warn_when_many_tasks_make_each_step_costly(
    name: str, options: dict, tasks: int, warns: bool
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_balancer(name, _tasks(tasks), options)
    said = [w for w in caught if issubclass(w.category, pt.PolytaskWarning)]
    assert len(said) == int(warns)
    if warns:
        assert f"with {tasks} tasks" in str(said[0].message)
