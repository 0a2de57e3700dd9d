"""The comparison plot: one panel per metric (and scale), error bars over seeds, text that fits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import polytask as pt
from polytask.compare import Comparison
from polytask.report import comparison_figure, comparison_panels, plot_comparison


def _result(base: dict[str, tuple[str, float]], *, seeds: int = 3, seed: int = 0) -> dict:
    """A comparison of tasks ``name -> (metric, typical value)`` with noisy per-seed scores."""
    rng = np.random.default_rng(seed)
    kinds = {"rmse": "regression", "auc": "binary"}
    tasks = [pt.Task(name=n, kind=kinds[m]) for n, (m, _) in base.items()]
    scores: dict = {"stl": {}, "mtl": {}}
    for name, (metric, value) in base.items():
        for method in scores:
            noise = rng.normal(0.0, 0.01, seeds) + (0.005 if method == "mtl" else 0.0)
            scores[method][name] = [{metric: value * (1 + e), "n": 100} for e in noise]
    comparison = Comparison(
        tasks=tasks, seeds=list(range(seeds)), scores=scores, seconds={"stl": 1, "mtl": 1}
    )
    return comparison.to_json()


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def test_metrics_of_different_scales_get_their_own_axes() -> None:
    result = _result({"price": ("rmse", 57.0), "sold": ("auc", 0.85)})
    fig = comparison_figure(result)
    assert len(fig.axes) == 2
    for ax, name in zip(fig.axes, ("price", "sold"), strict=True):
        task = result["tasks"][name]
        assert task["metric"] in ax.get_title()
        low, high = ax.get_ylim()
        for method in ("stl", "mtl"):
            spread = task[method]["std"]
            assert low <= task[method]["mean"] - spread and task[method]["mean"] + spread <= high
        # the bars fill a good part of their axis instead of sitting flat on a shared one
        assert high - low < 10 * (max(task["stl"]["per_seed"] + task["mtl"]["per_seed"]) - low)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_an_unbounded_metric_is_split_by_scale(seed: int) -> None:
    rng = np.random.default_rng(seed)
    base = {f"t{i}": ("rmse", float(10 ** rng.uniform(-3, 2))) for i in range(12)}
    base["auc"] = ("auc", 0.8)
    result = _result(base, seed=seed)
    panels = comparison_panels(result["tasks"])
    assert sorted(n for _, names in panels for n in names) == sorted(base)
    for metric, names in panels:
        assert {base[n][0] for n in names} == {metric}
        means = [result["tasks"][n]["stl"]["mean"] for n in names]
        assert max(means) <= 10 * min(means)
    assert len(comparison_figure(result).axes) == len(panels)


@pytest.mark.parametrize("count", [2, 14, 60])
def test_one_metric_is_one_axes_with_every_task(count: int) -> None:
    result = _result({f"Class{i}": ("auc", 0.6 + 0.01 * i) for i in range(count)})
    fig = comparison_figure(result)
    (ax,) = fig.axes
    bars = [c for c in ax.containers if hasattr(c, "errorbar")]
    assert [len(c) for c in bars] == [count, count]  # STL and MTL
    assert all(c.errorbar is not None for c in bars)  # ± std over seeds
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == (list(result["tasks"]) if count <= 40 else [])


@pytest.mark.parametrize("count", [1, 2, 14, 60])
def test_titles_and_legend_fit_inside_the_figure(count: int) -> None:
    base = {f"task{i}": ("rmse" if i % 2 else "auc", 57.0 if i % 2 else 0.85) for i in range(count)}
    fig = comparison_figure(_result(base))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    texts = [fig._suptitle, *fig.legends, *(ax.title for ax in fig.axes)]
    for text in texts:
        extent = text.get_window_extent(renderer)
        assert box.x0 - 1 <= extent.x0 and extent.x1 <= box.x1 + 1, text
        assert box.y0 - 1 <= extent.y0 and extent.y1 <= box.y1 + 1, text


def test_one_seed_draws_no_error_bars(tmp_path: Path) -> None:
    result = _result({"price": ("rmse", 57.0), "sold": ("auc", 0.85)}, seeds=1)
    fig = comparison_figure(result)
    assert all(c.errorbar is None for ax in fig.axes for c in ax.containers)
    assert "1 seed" in fig._suptitle.get_text()
    path = plot_comparison(result, tmp_path / "plots" / "comparison.png")
    assert path.read_bytes().startswith(b"\x89PNG")
