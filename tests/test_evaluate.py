"""Scoring helpers: Δm% sign convention, relative change, paired tests, metric definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from polytask.evaluate import (
    HIGHER_IS_BETTER,
    confidence_interval,
    delta_m,
    mean_std,
    metric_value,
    paired_test,
    pooled_explained_variance,
    relative_change,
)


@pytest.mark.parametrize("metric", sorted(HIGHER_IS_BETTER))
def test_relative_change_is_negative_when_mtl_is_better(metric: str) -> None:
    stl = 0.6
    better = stl * (1.1 if HIGHER_IS_BETTER[metric] else 0.9)
    worse = stl * (0.9 if HIGHER_IS_BETTER[metric] else 1.1)
    assert relative_change(metric, better, stl) == pytest.approx(-10.0)
    assert relative_change(metric, worse, stl) == pytest.approx(10.0)
    assert relative_change(metric, stl, stl) == 0.0


def test_relative_change_is_undefined_without_a_baseline() -> None:
    assert math.isnan(relative_change("rmse", 1.0, 0.0))
    assert math.isnan(relative_change("auc", math.nan, 0.7))
    assert math.isnan(relative_change("auc", 0.7, math.nan))


def test_relative_change_divides_by_the_magnitude_of_the_baseline() -> None:
    # r2 can be negative; going from -0.5 to -0.25 is an improvement, so the change is negative.
    assert relative_change("r2", -0.25, -0.5) == pytest.approx(-50.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delta_m_is_the_mean_signed_relative_change(seed: int) -> None:
    rng = np.random.default_rng(seed)
    metrics = {"a": "rmse", "b": "auc", "c": "accuracy", "d": "mae"}
    stl = {k: float(rng.uniform(0.3, 0.9)) for k in metrics}
    mtl = {k: float(rng.uniform(0.3, 0.9)) for k in metrics}
    expected = np.mean([relative_change(metrics[k], mtl[k], stl[k]) for k in metrics])
    assert delta_m(metrics, mtl, stl) == pytest.approx(expected)
    # Swapping the roles of MTL and STL flips the sign of every task's change.
    assert np.sign(delta_m(metrics, stl, mtl)) == -np.sign(expected)


def test_delta_m_sign_convention() -> None:
    metrics = {"price": "rmse", "sold": "auc"}
    stl = {"price": 2.0, "sold": 0.80}
    assert delta_m(metrics, {"price": 1.8, "sold": 0.88}, stl) == pytest.approx(-10.0)
    assert delta_m(metrics, {"price": 2.2, "sold": 0.72}, stl) == pytest.approx(10.0)
    assert delta_m(metrics, stl, stl) == 0.0


def test_delta_m_skips_tasks_it_cannot_score() -> None:
    metrics = {"a": "rmse", "b": "auc"}
    assert delta_m(metrics, {"a": 0.9, "b": math.nan}, {"a": 1.0, "b": 0.7}) == pytest.approx(-10)
    assert math.isnan(delta_m(metrics, {"a": 1, "b": 1}, {"a": 0.0, "b": math.nan}))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [2, 3, 10])
def test_paired_test_is_the_paired_t_test(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    p = paired_test(a, b)
    assert p == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert p == pytest.approx(paired_test(b, a))
    assert 0.0 <= p <= 1.0


def test_paired_test_degenerate_cases() -> None:
    assert math.isnan(paired_test([0.5], [0.4]))  # one pair
    assert math.isnan(paired_test([0.5, 0.6], [0.5, 0.6]))  # identical results
    assert paired_test([0.6, 0.7, 0.8], [0.5, 0.6, 0.7]) == 0.0  # a constant, nonzero gap


def test_mean_std_and_confidence_interval() -> None:
    values = [1.0, 2.0, 4.0, math.nan]
    mean, std = mean_std(values)
    assert mean == pytest.approx(7 / 3) and std == pytest.approx(np.std([1, 2, 4], ddof=1))
    assert mean_std([3.0]) == (3.0, 0.0)
    assert all(math.isnan(v) for v in mean_std([]))
    lo, hi = confidence_interval([1.0, 2.0, 4.0])
    assert lo < 7 / 3 < hi
    assert lo + hi == pytest.approx(2 * 7 / 3)
    assert all(math.isnan(v) for v in confidence_interval([1.0]))


@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_agree_with_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 200
    y = rng.normal(size=n)
    pred = y + rng.normal(size=n)
    assert metric_value("rmse", "regression", y, pred) == pytest.approx(
        math.sqrt(skm.mean_squared_error(y, pred))
    )
    assert metric_value("r2", "regression", y, pred) == pytest.approx(skm.r2_score(y, pred))
    constant = np.full(5, 2.0)  # scikit-learn's convention: 1 if exact, else 0
    for guess in (constant, constant + 0.5):
        assert metric_value("r2", "regression", constant, guess) == skm.r2_score(constant, guess)
    labels = rng.integers(0, 2, n)
    p = np.clip(labels * 0.3 + rng.uniform(0, 0.7, n), 0, 1)
    assert metric_value("auc", "binary", labels, p) == pytest.approx(skm.roc_auc_score(labels, p))
    assert metric_value("log_loss", "binary", labels, p) == pytest.approx(
        skm.log_loss(labels, np.clip(p, 1e-7, 1 - 1e-7))
    )
    classes = rng.integers(0, 3, n)
    probs = rng.dirichlet(np.ones(3), n)
    assert metric_value("macro_f1", "multiclass", classes, probs) == pytest.approx(
        skm.f1_score(classes, probs.argmax(1), average="macro")
    )
    tags = rng.integers(0, 2, (n, 4)).astype(float)
    scores = rng.uniform(size=(n, 4))
    for average in ("macro", "micro"):
        assert metric_value(f"{average}_f1", "multilabel", tags, scores) == pytest.approx(
            skm.f1_score(tags, scores >= 0.5, average=average)
        )


def test_multilabel_metrics_ignore_unlabelled_cells() -> None:
    tags = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=float)
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6], [0.1, 0.3]])
    perfect = metric_value("macro_f1", "multilabel", tags, scores)
    assert perfect == 1.0
    wrong = scores.copy()
    wrong[0, 1] = 0.99  # a wrong prediction on a cell we then mark unlabelled
    tags_missing = tags.copy()
    tags_missing[0, 1] = np.nan
    assert metric_value("macro_f1", "multilabel", tags_missing, wrong) == 1.0
    assert metric_value("macro_f1", "multilabel", tags, wrong) < 1.0


def test_an_unknown_metric_is_named() -> None:
    with pytest.raises(KeyError, match="metric 'auc' is not defined for regression tasks"):
        metric_value("auc", "regression", np.zeros(3), np.zeros(3))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pooled_explained_variance_is_r2_of_the_labelled_cells_pooled(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, tasks = 50, 4
    owner = rng.integers(0, tasks, n)  # one label per row, like the School data
    y = np.full((n, tasks), np.nan)
    y[np.arange(n), owner] = rng.normal(size=n) + 3 * owner  # tasks with different means
    pred = rng.normal(size=(n, tasks)) + 3 * np.arange(tasks)  # predictions everywhere
    targets = {f"t{j}": y[:, j] for j in range(tasks)}
    predictions = {f"t{j}": pred[:, j] for j in range(tasks)}
    pooled = pooled_explained_variance(targets, predictions)
    picked = pred[np.arange(n), owner]
    assert pooled == pytest.approx(skm.r2_score(y[np.arange(n), owner], picked))
    per_task = np.mean([skm.r2_score(y[owner == j, j], pred[owner == j, j]) for j in range(tasks)])
    assert pooled > per_task  # the pooled SST also counts the spread between task means
    one = pooled_explained_variance({"t0": y[:, 0]}, {"t0": pred[:, 0]})
    keep = owner == 0
    assert one == pytest.approx(skm.r2_score(y[keep, 0], pred[keep, 0]))
