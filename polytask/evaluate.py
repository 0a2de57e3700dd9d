"""Scoring: per-task metrics on labelled rows, Δm% against a baseline, spreads and paired tests."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from .tasks import Task

#: Whether a larger value of the metric is better.
HIGHER_IS_BETTER: dict[str, bool] = {
    "rmse": False,
    "mse": False,
    "mae": False,
    "r2": True,
    "auc": True,
    "accuracy": True,
    "log_loss": False,
    "f1": True,
    "macro_f1": True,
    "micro_f1": True,
    "subset_accuracy": True,
    "poisson_deviance": False,
}


def _safe(fn, *args, **kwargs) -> float:
    try:
        return float(fn(*args, **kwargs))
    except ValueError:  # e.g. AUC with a single class among the labelled rows
        return math.nan


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    """R² as scikit-learn's ``r2_score`` gives it (a constant y: 1 if predicted exactly, else
    0), without its per-call input validation (a thousand tasks score in milliseconds)."""
    residual = float(np.sum((y - pred) ** 2))
    total = float(np.sum((y - np.mean(y)) ** 2))
    if total == 0:
        return 1.0 if residual == 0 else 0.0
    return 1.0 - residual / total


def metric_value(name: str, kind: str, y: np.ndarray, pred: np.ndarray) -> float:
    """One metric. ``y``: true labels (class codes for classifiers); ``pred``: decoded output
    (values for regression/count, P(class 1) for binary, class probabilities otherwise)."""
    if kind in ("regression", "count"):
        if name == "rmse":
            return float(np.sqrt(np.mean((y - pred) ** 2)))
        if name == "mse":
            return float(np.mean((y - pred) ** 2))
        if name == "mae":
            return float(np.mean(np.abs(y - pred)))
        if name == "r2":
            return _r2(y, pred) if len(y) > 1 else math.nan
        if name == "poisson_deviance":
            return _safe(skm.mean_poisson_deviance, y, np.clip(pred, 1e-12, None))
    if kind == "binary":
        if name == "auc":
            return _safe(skm.roc_auc_score, y, pred)
        if name == "accuracy":
            return float(np.mean((pred >= 0.5) == (y == 1)))
        if name == "log_loss":
            return _safe(skm.log_loss, y, np.clip(pred, 1e-7, 1 - 1e-7), labels=[0, 1])
        if name == "f1":
            return float(skm.f1_score(y, pred >= 0.5, zero_division=0))
    if kind == "multiclass":
        labels = np.arange(pred.shape[1])
        if name == "accuracy":
            return float(np.mean(pred.argmax(1) == y))
        if name == "macro_f1":
            return float(
                skm.f1_score(y, pred.argmax(1), average="macro", labels=labels, zero_division=0)
            )
        if name == "log_loss":
            return _safe(skm.log_loss, y, pred, labels=labels)
    if kind == "multilabel":
        # y and pred are (n, L); unlabelled cells are NaN in y and ignored per label.
        hard = pred >= 0.5
        if name == "subset_accuracy":
            rows = ~np.isnan(y).any(1)
            return float(np.mean((hard[rows] == (y[rows] == 1)).all(1))) if rows.any() else math.nan
        tp = fp = fn = 0
        f1s = []
        for j in range(y.shape[1]):
            keep = ~np.isnan(y[:, j])
            t, p = y[keep, j] == 1, hard[keep, j]
            a, b, c = int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum())
            tp, fp, fn = tp + a, fp + b, fn + c
            f1s.append(2 * a / (2 * a + b + c) if (2 * a + b + c) else 0.0)
        if name == "micro_f1":
            return 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0
        if name == "macro_f1":
            return float(np.mean(f1s))
    raise KeyError(f"metric {name!r} is not defined for {kind} tasks")


def task_scores(task: Task, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """All of a task's metrics plus ``n`` (labelled rows scored); NaN metrics when ``n`` is 0."""
    if len(y) == 0:
        return {**{m: math.nan for m in task.metric_names}, "n": 0}
    scores = {m: metric_value(m, task.kind, y, pred) for m in task.metric_names}
    scores["n"] = int(len(y)) if task.kind != "multilabel" else int((~np.isnan(y)).any(1).sum())
    return scores


def pooled_explained_variance(
    targets: Mapping[str, np.ndarray], predictions: Mapping[str, np.ndarray]
) -> float:
    """Explained variance of several regression tasks pooled: 1 - SSE / SST over the labelled
    rows (non-NaN targets) of all tasks together, SST about the mean of all those labels.

    This is the number reported for the School data in the multi-task literature (one task per
    school); it differs from the mean of the per-task ``r2``, where each task's SST is taken about
    that task's own mean. ``targets`` and ``predictions`` map task -> values (a DataFrame works).
    """
    ys, preds = [], []
    for task, values in targets.items():
        y = np.asarray(values, dtype=np.float64)
        keep = ~np.isnan(y)
        ys.append(y[keep])
        preds.append(np.asarray(predictions[task], dtype=np.float64)[keep])
    y, pred = np.concatenate(ys), np.concatenate(preds)
    if len(y) < 2:
        return math.nan
    total = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - pred) ** 2)) / total if total > 0 else math.nan


def relative_change(task_metric: str, mtl: float, stl: float) -> float:
    """Relative change in %, sign-corrected so that negative means MTL is better."""
    sign = 1.0 if HIGHER_IS_BETTER[task_metric] else -1.0
    if stl == 0 or math.isnan(stl) or math.isnan(mtl):
        return math.nan
    return -sign * (mtl - stl) / abs(stl) * 100.0


def delta_m(
    metrics: Mapping[str, str], mtl: Mapping[str, float], stl: Mapping[str, float]
) -> float:
    """Δm% = mean over tasks of the sign-corrected relative change (lower is better; <0: MTL wins).

    ``metrics`` maps task → primary metric name; ``mtl``/``stl`` map task → its value.
    """
    changes = [relative_change(metrics[t], mtl[t], stl[t]) for t in metrics]
    changes = [c for c in changes if not math.isnan(c)]
    return float(np.mean(changes)) if changes else math.nan


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def confidence_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean (NaN with fewer than two values)."""
    arr = np.asarray(values, dtype=float)
    if arr.size < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, arr.size - 1) * arr.std(ddof=1) / math.sqrt(arr.size)
    return float(arr.mean() - half), float(arr.mean() + half)


def paired_test(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided paired t-test p-value of a vs b over seeds (NaN with < 2 pairs or no spread)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 2 or np.allclose(x - y, (x - y)[0]):
        return math.nan if x.size < 2 or np.allclose(x, y) else 0.0
    return float(stats.ttest_rel(x, y).pvalue)
