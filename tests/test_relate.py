"""Task relatedness (``polytask.relate``): each measure against a hand computation on a tiny
network, each measure and the grouping on a synthetic problem with planted clusters, the
output files and the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy.stats import spearmanr
from sklearn.metrics import adjusted_rand_score
from torch import Tensor, nn
from typer.testing import CliRunner

import polytask as pt
from polytask.cli import app
from polytask.losses import TaskLossValues
from polytask.models.multitask import MultiTaskModel, ParameterGroups
from polytask.relate import (
    Relatedness,
    _LastLosses,
    _Recorder,
    hidden_sensitivity,
    normalized_affinity,
    rank_correlation,
    relate,
    suggest_groups,
    transfer_matrix,
)

# ---- the planted problem ---------------------------------------------------------------------
#: Tasks of cluster A read the latent f(x0, x1, x2), cluster B the latent g(x3, x4, x5) (disjoint
#: inputs); ``noise`` is pure noise. Kinds are mixed and 10% of every label is missing.
PLANTED = [
    pt.Task(name="a_reg", kind="regression"),
    pt.Task(name="a_bin", kind="binary"),
    pt.Task(name="a_reg2", kind="regression"),
    pt.Task(name="b_reg", kind="regression"),
    pt.Task(name="b_bin", kind="binary"),
    pt.Task(name="b_cnt", kind="count"),
    pt.Task(name="noise", kind="regression"),
]
CLUSTER = {"a_reg": 0, "a_bin": 0, "a_reg2": 0, "b_reg": 1, "b_bin": 1, "b_cnt": 1, "noise": 2}
SEEDS = range(5)


def planted_frame(n: int = 400, seed: int = 0, missing: float = 0.1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    f = np.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2]
    g = np.cos(2 * x[:, 3]) + x[:, 4] * x[:, 5]
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(6)])
    frame["a_reg"] = f + 0.1 * rng.normal(size=n)
    frame["a_bin"] = (f + 0.3 * rng.normal(size=n) > 0).astype(float)
    frame["a_reg2"] = np.tanh(f) + 0.1 * rng.normal(size=n)
    frame["b_reg"] = g + 0.1 * rng.normal(size=n)
    frame["b_bin"] = (g + 0.3 * rng.normal(size=n) > 0).astype(float)
    frame["b_cnt"] = rng.poisson(np.exp(0.7 * g)).astype(float)
    frame["noise"] = rng.normal(size=n)
    for task in PLANTED:
        frame.loc[rng.random(n) < missing, task.name] = np.nan
    return frame


def planted_config(
    frame: pd.DataFrame, tasks=tuple(PLANTED), *, seed: int = 0, epochs: int = 15
) -> pt.Config:
    return pt.Config(
        data=pt.DataConfig(train=frame),
        tasks=list(tasks),
        model=pt.ModelConfig(shared=[48]),
        train=pt.TrainConfig(
            epochs=epochs, batch_size=32, lr=1e-2, device="cpu", patience=None, seed=seed
        ),
    )


def planted_splits(frame: pd.DataFrame, n_train: int = 300) -> pt.Splits:
    return pt.Splits(
        frame.iloc[:n_train].reset_index(drop=True),
        frame.iloc[n_train:].reset_index(drop=True),
        frame.iloc[:0],
    )


@pytest.fixture(scope="module")
def planted() -> list[Relatedness]:
    """One ``relate`` run (gradient, lookahead, hidden) per seed, data and training seeded alike."""
    results = []
    for seed in SEEDS:
        frame = planted_frame(seed=seed)
        results.append(
            relate(planted_config(frame, seed=seed), splits=planted_splits(frame), every=2)
        )
    return results


def _within_minus_between(affinity: np.ndarray, names: list[str]) -> float:
    sym = (affinity + affinity.T) / 2
    within, between = [], []
    for i, a in enumerate(names):
        for j, b in enumerate(names[:i]):
            (within if CLUSTER[a] == CLUSTER[b] else between).append(sym[i, j])
    return float(np.mean(within) - np.mean(between))


@pytest.mark.parametrize("measure", ["gradient", "lookahead", "hidden"])
def test_each_measure_separates_the_planted_clusters(planted, measure: str) -> None:
    for result in planted:
        gap = _within_minus_between(result.affinity(measure), result.tasks)
        assert gap > 0.1, (measure, gap, result.measures[measure])


@pytest.mark.parametrize("measure", ["gradient", "lookahead", "hidden"])
def test_the_grouping_recovers_the_planted_clusters_and_leaves_noise_alone(
    planted, measure: str
) -> None:
    scores = []
    for result in planted:
        groups = suggest_groups(result.affinity(measure), result.tasks, result.main)
        label = {name: g for g, members in enumerate(groups) for name in members}
        scores.append(
            adjusted_rand_score(
                [CLUSTER[n] for n in result.tasks], [label[n] for n in result.tasks]
            )
        )
        assert ["noise"] in groups, (measure, groups)
    assert np.mean(scores) >= 0.9, (measure, scores)


def test_the_default_groups_come_from_the_gradient_measure(planted) -> None:
    for result in planted:
        assert result.settings["grouping_measure"] == "gradient"
        assert result.groups == suggest_groups(
            result.affinity("gradient"), result.tasks, result.main
        )
        # every recorded step is counted, every other step recorded
        assert result.settings["recorded_steps"] == math.ceil(result.settings["steps"] / 2)


def test_transfer_separates_a_related_pair_from_a_noise_task() -> None:
    """Three regression tasks on few rows: a1 and a2 are noisy views of one latent, noise is
    noise. Pairing with noise hurts more than pairing a1 with a2 (2 seeds averaged), and
    noise ends alone."""
    rng = np.random.default_rng(0)
    n = 140
    x = rng.normal(size=(n, 20))
    f = x[:, 0] - x[:, 1] + 0.5 * x[:, 2]
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(20)])
    frame["a1"] = f + 0.5 * rng.normal(size=n)
    frame["a2"] = f + 0.5 * rng.normal(size=n)
    frame["noise"] = rng.normal(size=n)
    tasks = [pt.Task(name=t, kind="regression") for t in ("a1", "a2", "noise")]
    config = pt.Config(
        data=pt.DataConfig(train=frame),
        tasks=tasks,
        model=pt.ModelConfig(shared=[16]),
        train=pt.TrainConfig(epochs=60, batch_size=16, lr=1e-2, device="cpu", patience=5),
    )
    result = relate(config, splits=planted_splits(frame, 40), measures=("transfer",), seeds=2)
    d = result.measures["transfer"]
    within = -(d[0, 1] + d[1, 0]) / 2  # negative change = helps
    between = -np.mean([d[0, 2], d[2, 0], d[1, 2], d[2, 1]])
    assert within > between, d
    assert ["noise"] in result.groups


# ---- hand-computed values on a tiny network ---------------------------------------------------
class TinyLinear(MultiTaskModel):
    """z = W x (W shared, 2 × 3); task a: y = u·tanh(z); task b (two outputs): y = V tanh(z)."""

    def __init__(self) -> None:
        super().__init__({"a": 1, "b": 2})
        g = torch.Generator().manual_seed(3)
        self.w = nn.Parameter(torch.randn(2, 3, generator=g, dtype=torch.float64))
        self.u = nn.Parameter(torch.randn(1, 2, generator=g, dtype=torch.float64))
        self.v = nn.Parameter(torch.randn(2, 2, generator=g, dtype=torch.float64))

    def outputs_and_features(self, x_num: Tensor, x_cat: Tensor | None = None):
        z = x_num @ self.w.T
        h = torch.tanh(z)
        a = torch.nn.functional.pad(h @ self.u.T, (0, 1))
        return torch.stack([a, h @ self.v.T], dim=1), z

    def parameter_groups(self) -> ParameterGroups:
        return ParameterGroups(shared=[self.w], tasks={"a": [self.u], "b": [self.v]})


def _tiny_batch(n: int = 5) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    ya = torch.randn(n, generator=g, dtype=torch.float64)
    yb = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x, ya, yb


def _hand_losses(w: np.ndarray, model: TinyLinear, x, ya, yb) -> tuple[float, float]:
    """L_a = mean (u·tanh(Wx) − y_a)², L_b = mean over rows and outputs of (V tanh(Wx) − y_b)²."""
    h = np.tanh(x @ w.T)
    u, v = model.u.detach().numpy(), model.v.detach().numpy()
    return float(np.mean(((h @ u.T)[:, 0] - ya) ** 2)), float(np.mean((h @ v.T - yb) ** 2))


def _hand_grads(model: TinyLinear, x, ya, yb) -> tuple[np.ndarray, np.ndarray]:
    """∂L_a/∂W and ∂L_b/∂W by the chain rule: ∂L/∂z = (∂L/∂y · head) ⊙ (1 − tanh²(z))."""
    w, u, v = (p.detach().numpy() for p in (model.w, model.u, model.v))
    z = x @ w.T
    h, dh = np.tanh(z), 1 - np.tanh(z) ** 2
    n = len(x)
    ra = 2 * ((h @ u.T)[:, 0] - ya) / n  # ∂L_a/∂y_a per row
    rb = 2 * (h @ v.T - yb) / (2 * n)  # ∂L_b/∂y_b per row and output
    dza = (ra[:, None] * u) * dh
    dzb = (rb @ v) * dh
    return dza.T @ x, dzb.T @ x


def _mse(packed: Tensor, targets: dict[str, Tensor], masks: dict[str, Tensor]) -> TaskLossValues:
    """The tiny model's losses: mean squared error of a, and of b over rows and outputs."""
    la = ((packed[:, 0, 0] - targets["a"]) ** 2).mean()
    lb = ((packed[:, 1, :] - targets["b"]) ** 2).mean()
    return TaskLossValues(("a", "b"), torch.stack([la, lb]), {"a": 0, "b": 1})


def _recorded_step(model: TinyLinear, *, lookahead: bool, lr: float = 0.1) -> _Recorder:
    x, ya, yb = _tiny_batch()
    tasks = [pt.Task(name="a", kind="regression"), pt.Task(name="b", kind="regression")]
    losses_fn = _mse
    recorder = _Recorder(
        pt.make_balancer("fixed", tasks), ["a", "b"], every=1, gradient=True, lookahead=lookahead
    )
    recorder.optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    recorder.losses = _LastLosses(losses_fn)
    hook = model.register_forward_pre_hook(recorder.remember_inputs, with_kwargs=True)
    packed, z = model(x, None, packed=True, features=True)
    targets = {"a": ya, "b": yb}
    masks = {
        "a": torch.ones(len(x), dtype=torch.bool),
        "b": torch.ones(len(x), 2, dtype=torch.bool),
    }
    losses = recorder.losses(packed, targets, masks)
    recorder.backward(losses, model=model, features=z, outputs=packed)
    hook.remove()
    return recorder


def test_gradient_cosine_is_the_hand_computed_one() -> None:
    model = TinyLinear()
    ga, gb = _hand_grads(model, *(t.numpy() for t in _tiny_batch()))
    expected = float((ga * gb).sum() / np.linalg.norm(ga) / np.linalg.norm(gb))
    recorder = _recorded_step(model, lookahead=False)
    cos = recorder.matrices()["gradient"]
    assert cos[0, 1] == pytest.approx(expected, abs=1e-5)
    assert cos[1, 0] == pytest.approx(expected, abs=1e-5)
    assert np.diag(cos) == pytest.approx([1.0, 1.0])


def test_lookahead_is_the_hand_computed_relative_loss_change_and_restores_the_weights() -> None:
    model = TinyLinear()
    before_w = model.w.detach().clone()
    x, ya, yb = (t.numpy() for t in _tiny_batch())
    lr = 0.1
    grads = _hand_grads(model, x, ya, yb)
    w = model.w.detach().numpy().copy()
    base = _hand_losses(w, model, x, ya, yb)
    rows = []
    for g in grads:
        after = _hand_losses(w - lr * g, model, x, ya, yb)
        rows.append([1 - new / old for new, old in zip(after, base, strict=True)])
    expected = np.array(rows)
    recorder = _recorded_step(model, lookahead=True, lr=lr)
    assert recorder.matrices()["lookahead"] == pytest.approx(expected, abs=1e-5)
    assert torch.equal(model.w.detach(), before_w)  # restored exactly (the step is the caller's)
    assert model.w.grad is not None  # the configured balancer still took its backward


def test_hidden_sensitivity_and_its_rank_correlation_are_the_hand_computed_ones() -> None:
    model = TinyLinear()
    x = _tiny_batch(7)[0]
    data = pt.TaskData(x_num=x, x_cat=torch.zeros(len(x), 0, dtype=torch.long))
    w, u, v = (p.detach().numpy() for p in (model.w, model.u, model.v))
    dh = 1 - np.tanh(x.numpy() @ w.T) ** 2  # (N, 2): ∂tanh(z_k)/∂z_k
    expected = np.stack(
        [
            (np.abs(u[0])[None, :] * dh).mean(0),
            ((np.abs(v[0]) + np.abs(v[1]))[None, :] * dh).mean(0),  # summed over b's outputs
        ]
    )
    found = hidden_sensitivity(model, data, chunk=3)
    assert found == pytest.approx(expected, abs=1e-8)
    profiles = np.random.default_rng(0).random((4, 9))
    assert rank_correlation(profiles) == pytest.approx(spearmanr(profiles.T).statistic)


def test_transfer_is_the_relative_change_of_the_pair_against_the_task_alone() -> None:
    frame = planted_frame(n=160, seed=1)
    tasks = [t for t in PLANTED if t.name in ("a_reg", "a_bin")]
    config = planted_config(frame[["x0", "x1", "x2", "a_reg", "a_bin"]], tasks, epochs=3)
    splits = planted_splits(frame[["x0", "x1", "x2", "a_reg", "a_bin"]], n_train=110)
    d = transfer_matrix(config, splits, tasks)
    from polytask.baselines import fit_stl

    pair = pt.fit(config, splits=splits).metrics["validation"]
    alone = fit_stl(config, splits)
    for i, j in ((0, 1), (1, 0)):
        task = tasks[j]
        metric = task.primary_metric
        stl = alone[task.name].metrics["validation"][task.name][metric]
        mtl = pair[task.name][metric]
        sign = -1.0 if metric in ("auc", "r2", "accuracy") else 1.0
        assert d[i, j] == pytest.approx(sign * (mtl - stl) / abs(stl) * 100, rel=1e-6)
    assert np.diag(d) == pytest.approx([0.0, 0.0])


# ---- grouping on hand-made affinities ---------------------------------------------------------
def test_grouping_rules_on_a_hand_made_affinity() -> None:
    names = ["m1", "m2", "m3", "m4", "m5", "aux_a", "aux_none", "aux_both"]
    a = np.full((8, 8), -0.05)
    a[4, :5] = a[:5, 4] = -0.2  # m5 relates to no one
    a[np.ix_([0, 1], [0, 1])] = 0.6
    a[np.ix_([2, 3], [2, 3])] = 0.5
    a[5, [0, 1]] = 0.4  # aux_a helps m1 and m2 only
    a[7, [0, 1]], a[7, [2, 3]] = 0.3, 0.4  # aux_both helps both groups, m3 and m4 more
    a[[0, 1], 6] = 0.5  # aux_none is helped, but helps no one: it joins no group
    np.fill_diagonal(a, 1.0)
    main = names[:5]
    expected = [["m1", "m2", "aux_a"], ["m3", "m4", "aux_both"], ["m5"]]
    assert suggest_groups(a, names, main) == expected
    assert len(suggest_groups(a, names, main, groups=2)) == 2
    assert suggest_groups(a, names, main, groups=1)[0][:5] == main
    # no structure and no positive affinity: every task alone; all alike and positive: one group
    flat = np.full((5, 5), -0.1)
    np.fill_diagonal(flat, 1.0)
    assert suggest_groups(flat, main, main) == [[m] for m in main]
    same = np.full((5, 5), 0.7)
    np.fill_diagonal(same, 1.0)
    assert suggest_groups(same, main, main) == [main]


def test_normalized_affinity_scales_lookahead_and_flips_transfer() -> None:
    z = np.array([[0.04, 0.01], [0.02, 0.01]])
    n = normalized_affinity("lookahead", z)
    assert n[0, 1] == pytest.approx(0.01 / math.sqrt(0.04 * 0.01))
    t = normalized_affinity("transfer", np.array([[0.0, -4.0], [2.0, 0.0]]))
    assert t[0, 1] == pytest.approx(1.0) and t[1, 0] == pytest.approx(-0.5)


# ---- outputs and the command line --------------------------------------------------------------
def test_relate_writes_json_and_one_heatmap_per_measure(tmp_path: Path) -> None:
    frame = planted_frame(n=160, seed=2)
    config = planted_config(frame, epochs=2)
    result = relate(config, splits=planted_splits(frame, 110), out=tmp_path / "rel", every=3)
    saved = json.loads((tmp_path / "rel" / "relatedness.json").read_text())
    assert saved["tasks"] == [t.name for t in PLANTED]
    assert set(saved["measures"]) == {"gradient", "lookahead", "hidden"}
    for values in saved["measures"].values():
        assert np.array(values, dtype=float).shape == (7, 7)
    assert sorted(n for g in saved["groups"] for n in g) == sorted(result.main)
    assert saved["settings"]["every"] == 3
    for measure in saved["measures"]:
        png = tmp_path / "rel" / f"relatedness_{measure}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_relate_rejects_an_unknown_measure() -> None:
    frame = planted_frame(n=60)
    with pytest.raises(pt.ConfigError, match="is not a measure"):
        relate(planted_config(frame), measures=("gradients",), splits=planted_splits(frame, 40))


def test_cli_relate(tmp_path: Path) -> None:
    frame = planted_frame(n=160, seed=3)
    frame.to_csv(tmp_path / "data.csv", index=False)
    config = {
        "data": {"train": "data.csv", "test_fraction": 0.0, "validation_fraction": 0.25},
        "tasks": [{"name": t.name, "kind": t.kind} for t in PLANTED[:4]]
        + [{"name": "noise", "kind": "regression", "role": "auxiliary"}],
        "model": {"shared": [16]},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.01, "device": "cpu"},
    }
    config["data"]["drop"] = ["b_bin", "b_cnt"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "rel"
    args = ["relate", str(tmp_path / "config.yaml"), "--out", str(out), "-m", "hidden"]
    args += ["-m", "gradient", "--groups", "2", "--every", "2", "--validate", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "strongest helpers by hidden" in result.output
    assert "train alone" in result.output
    saved = json.loads((out / "relatedness.json").read_text())
    assert saved["settings"]["grouping_measure"] == "hidden"
    assert set(saved["validation"]["arms"]) == {"grouped", "all_in_one", "stl"}
    assert "best on validation" in result.output
    assert len([g for g in saved["groups"] if set(g) & {"a_reg", "a_bin", "a_reg2", "b_reg"}]) == 2


def test_transfer_pairs_in_two_worker_processes_give_the_same_matrix() -> None:
    frame = planted_frame(n=160, seed=3)
    names = ["a_reg", "a_bin", "b_reg"]
    tasks = [t for t in PLANTED if t.name in names]
    columns = ["x0", "x1", "x2", "x3", "x4", "x5", *names]
    config = planted_config(frame[columns], tasks, epochs=3)
    splits = planted_splits(frame[columns], n_train=110)
    one = transfer_matrix(config, splits, tasks, workers=1)
    two = transfer_matrix(config, splits, tasks, workers=2)
    np.testing.assert_allclose(two, one, rtol=1e-4, atol=1e-6)
    assert np.abs(one).sum() > 0
