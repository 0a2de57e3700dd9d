"""Balancers: each aggregator's defining property on random Jacobians, loss weighting methods on
small problems, and every registered balancer through a few training steps with missing labels."""

from __future__ import annotations

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
from polytask.models import MultiTaskModel
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


def _model(n_in: int, tasks: list[str], width: int = 16) -> MultiTaskModel:
    return MultiTaskModel(
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
        model = MultiTaskModel(
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
        grads.append([p.grad.clone() for p in model.shared_parameters()])
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
