"""Plots of runs and comparisons (matplotlib, imported only when a plot is drawn)."""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .tasks import Task


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def plot_learning_curves(
    history: pd.DataFrame, tasks: Sequence[Task], directory: Path
) -> list[Path]:
    """One PNG per task: training and validation loss per epoch, best epoch marked."""
    plt = _pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    best = None
    if "val_objective" in history and history["val_objective"].notna().any():
        best = int(history.loc[history["val_objective"].idxmin(), "epoch"])
    paths = []
    for task in tasks:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for split, style in (("train", "-"), ("val", "--")):
            column = f"{split}_loss/{task.name}"
            if column in history:
                ax.plot(history["epoch"], history[column], style, label=f"{split} loss")
        if best is not None:
            ax.axvline(best, color="grey", lw=0.8, ls=":", label=f"best epoch {best}")
        role = "" if task.is_main else " (auxiliary)"
        ax.set_title(f"{task.name}{role}: {task.kind}, {task.loss_name} loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (labelled rows)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = directory / f"curve_{_filename(task.name)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_weights(history: pd.DataFrame, directory: Path, *, balancer: str = "") -> Path | None:
    """The per-epoch mean task weight (``weight/TASK`` columns) of every task, in one PNG."""
    columns = [c for c in history.columns if c.startswith("weight/")]
    if not columns:
        return None
    plt = _pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    # beyond 10 tasks the default cycle repeats colours; tab20 keeps 20 apart, then line styles
    colours = plt.get_cmap("tab10" if len(columns) <= 10 else "tab20").colors
    for i, column in enumerate(columns):
        ax.plot(
            history["epoch"],
            history[column],
            marker=".",
            color=colours[i % len(colours)],
            linestyle=("-", "--", ":")[(i // len(colours)) % 3],
            label=column.removeprefix("weight/"),
        )
    suffix = f" ({balancer})" if balancer else ""
    if len(columns) > 30:  # a legend of hundreds of tasks would hide the plot
        ax.set_title(f"task weights per epoch, {len(columns)} tasks{suffix}")
    else:
        ax.set_title(f"task weights per epoch{suffix}")
        ax.legend(fontsize=8, ncol=2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean weight per step")
    fig.tight_layout()
    path = directory / "weights.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_mixing(
    tables: Mapping[str, Mapping[str, Any]], directory: Path, *, architecture: str = ""
) -> Path | None:
    """The architecture's routing weights (``io.mixing_tables``), one heatmap per table, in
    ``mixing.png``: gates averaged over validation rows, cross-stitch mixing matrices."""
    if not tables:
        return None
    plt = _pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    shapes = [np.asarray(t["values"], dtype=float).shape for t in tables.values()]
    width = sum(min(0.55 * c + 2.2, 12.0) for _, c in shapes)
    height = min(0.4 * max(r for r, _ in shapes) + 2.2, 12.0)
    fig, axes = plt.subplots(1, len(tables), figsize=(min(width, 30.0), height), squeeze=False)
    for ax, (name, table) in zip(axes[0], tables.items(), strict=True):
        values = np.asarray(table["values"], dtype=float)
        if values.min() < 0:  # mixing weights may be negative: a scale centred on 0
            bound = float(np.abs(values).max())
            image = ax.imshow(values, cmap="coolwarm", vmin=-bound, vmax=bound, aspect="auto")
        else:  # gates: shares in [0, 1]
            image = ax.imshow(values, cmap="viridis", vmin=0.0, aspect="auto")
        ax.set_title(textwrap.fill(name, 32), fontsize=9)
        small = values.size <= 150  # labels and values stay readable
        ax.set_xticks(range(values.shape[1]))
        ax.set_yticks(range(values.shape[0]))
        ax.set_xticklabels(table["columns"] if small else [], rotation=60, ha="right", fontsize=7)
        ax.set_yticklabels(table["rows"] if small else [], fontsize=7)
        if small:
            low, high = image.get_clim()
            for (i, j), v in np.ndenumerate(values):
                if values.min() < 0:
                    colour = "white" if abs(v) > 0.6 * high else "black"
                else:
                    colour = "black" if v > low + 0.6 * (high - low) else "white"
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color=colour)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"{architecture} routing weights" if architecture else "routing weights")
    fig.tight_layout()
    path = directory / "mixing.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


#: Metrics bounded by 1 share one panel whatever their values; others are split by scale.
_UNIT_METRICS = frozenset(
    {"auc", "accuracy", "f1", "macro_f1", "micro_f1", "subset_accuracy", "r2"}
)
#: Within one panel the largest STL mean is at most this many times the smallest.
_SCALE_RATIO = 10.0
#: Beyond this many tasks a panel drops its per-task labels (names, changes).
_LABELLED_TASKS = 40


def comparison_panels(tasks: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """Tasks grouped for plotting: one panel per primary metric, and for unbounded metrics
    (RMSE, MAE, …) one per scale, so that no panel mixes values ten times apart."""
    panels: list[tuple[str, list[str]]] = []
    for metric in dict.fromkeys(t["metric"] for t in tasks.values()):
        names = [n for n, t in tasks.items() if t["metric"] == metric]
        if metric in _UNIT_METRICS:
            panels.append((metric, names))
            continue
        groups: list[list[str]] = []
        floor = math.nan
        for name in sorted(names, key=lambda n: _scale(tasks[n])):
            if not groups or _scale(tasks[name]) > _SCALE_RATIO * floor:
                groups.append([])
                floor = max(_scale(tasks[name]), 1e-12)
            groups[-1].append(name)
        order = {n: i for i, n in enumerate(names)}  # declared order inside a panel
        panels += [(metric, sorted(g, key=order.__getitem__)) for g in groups]
    return panels


def _scale(task: Mapping[str, Any]) -> float:
    value = abs(task["stl"]["mean"])
    return value if math.isfinite(value) else 0.0


def comparison_figure(result: Mapping[str, Any]):
    """The figure of ``plot_comparison`` (a matplotlib ``Figure``), one axes per panel of
    ``comparison_panels``."""
    plt = _pyplot()
    tasks = result["tasks"]
    panels = comparison_panels(tasks)
    sizes = [len(names) for _, names in panels]
    one_row = sum(sizes) <= 24 and len(panels) <= 4
    if one_row:
        width = min(18.0, max(6.5, 1.2 + 0.6 * sum(sizes) + 1.0 * len(panels)))
        fig, axes = plt.subplots(
            1,
            len(panels),
            figsize=(width, 4.0),
            width_ratios=[max(n, 1.5) for n in sizes],
            layout="constrained",
            squeeze=False,
        )
    else:
        width = min(20.0, max(6.5, 1.5 + 0.4 * max(sizes)))
        fig, axes = plt.subplots(
            len(panels),
            1,
            figsize=(width, 1.2 + 3.0 * len(panels)),
            layout="constrained",
            squeeze=False,
        )
    for ax, (metric, names) in zip(axes.flat, panels, strict=True):
        _comparison_panel(
            ax, metric, names, tasks, seeds=len(result["seeds"]), labels=_labels(result)
        )
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", fontsize=8, ncol=2)
    fig.suptitle(_comparison_title(result, width), fontsize=9)
    return fig


def _labels(result: Mapping[str, Any]) -> dict[str, str]:
    """What the ``stl`` and ``mtl`` slots of a comparison hold (``plan`` puts others there)."""
    return {"stl": result.get("baseline", "STL"), "mtl": result.get("method", "MTL")}


def _comparison_panel(
    ax: Any,
    metric: str,
    names: list[str],
    tasks: Mapping[str, Any],
    *,
    seeds: int,
    labels: Mapping[str, str],
) -> None:
    x = np.arange(len(names))
    tops = []
    for offset, method, colour in ((-0.2, "stl", "tab:grey"), (0.2, "mtl", "tab:blue")):
        means = np.array([tasks[n][method]["mean"] for n in names], dtype=float)
        stds = np.nan_to_num(np.array([tasks[n][method]["std"] for n in names], dtype=float))
        ax.bar(
            x + offset,
            means,
            width=0.4,
            yerr=stds if seeds > 1 else None,  # one seed has no spread to show
            capsize=2,
            color=colour,
            error_kw={"elinewidth": 0.8},
            label=labels[method] + (f" (mean ± std over {seeds} seeds)" if seeds > 1 else ""),
        )
        tops.append((means - stds, means + stds))
    lows, highs = np.concatenate([t[0] for t in tops]), np.concatenate([t[1] for t in tops])
    lo, hi = (np.nanmin(lows), np.nanmax(highs)) if np.isfinite(highs).any() else (0.0, 1.0)
    span = hi - lo if hi > lo else max(abs(hi), 1.0) * 0.1
    # bars start at 0 when 0 is near the data; otherwise the axis zooms onto the values
    bottom = 0.0 if 0 <= lo < 0.5 * hi else lo - 0.15 * span
    labelled = len(names) <= _LABELLED_TASKS
    ax.set_xlim(*((-1.0, 1.0) if len(names) == 1 else (-0.7, len(names) - 0.3)))
    ax.set_ylim(bottom, hi + (0.22 if labelled else 0.08) * span)
    if labelled:
        ax.set_xticks(x)
        ax.set_xticklabels(
            # a plan's comparison names the candidate each task was given
            [f"{n} ({tasks[n]['chosen']})" if "chosen" in tasks[n] else n for n in names],
            rotation=45 if len(names) > 3 else 0,
            ha="right" if len(names) > 3 else "center",
            fontsize=8,
        )
        for i, name in enumerate(names):
            change = tasks[name]["relative_change_percent"]
            if math.isfinite(change):
                strong = tasks[name].get("significant", False)
                ax.annotate(
                    f"{change:+.1f}%" + ("*" if strong else ""),
                    (i, np.nanmax([highs[i], highs[i + len(names)]])),
                    xytext=(0, 3),
                    textcoords="offset points",
                    ha="center",
                    fontsize=7,
                    fontweight="bold" if strong else "normal",
                    color="black" if strong else "dimgrey",
                )
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{len(names)} tasks (declared order)", fontsize=8)
    better = "higher" if tasks[names[0]]["higher_is_better"] else "lower"
    ax.set_title(f"{metric}\n{better} is better", fontsize=9)
    ax.set_ylabel(metric, fontsize=8)
    ax.tick_params(axis="y", labelsize=8)


def _seeds(n: int) -> str:
    return "1 seed" if n == 1 else f"{n} seeds"


def _comparison_title(result: Mapping[str, Any], width: float) -> str:
    dm, (lo, hi) = result["delta_m_percent"], result["delta_m_ci95"]
    ci = f", 95% CI [{lo:+.2f}, {hi:+.2f}]" if math.isfinite(lo) else ""
    names = _labels(result)
    b, m = names["stl"], names["mtl"]
    verdict = result["delta_m_verdict"].replace("MTL", m)
    lines = [
        f"{b} vs {m} on the test split, {_seeds(len(result['seeds']))}",
        f"Δm = {dm:+.2f}%{ci}: {verdict}",
        f"labels: relative change vs {b}, negative = {m} better; * significant (p < "
        f"{result['alpha']} and CI excludes 0)",
    ]
    chars = int(width * 13)  # about 13 characters per inch at 9 pt
    return "\n".join(textwrap.fill(line, chars) for line in lines)


def plot_relatedness(
    values: np.ndarray,
    tasks: Sequence[str],
    path: Path,
    *,
    linkage: np.ndarray,
    title: str,
    signed: bool = True,
) -> Path:
    """A task × task heatmap (row i, column j), rows and columns in the leaf order of the
    hierarchical clustering ``linkage`` (scipy's format), with its dendrogram on the left."""
    from scipy.cluster.hierarchy import dendrogram

    plt = _pyplot()
    values = np.asarray(values, dtype=float)
    n = len(tasks)
    size = min(3.0 + 0.45 * n, 16.0)
    fig = plt.figure(figsize=(size + 2.0, size))
    tree_ax = fig.add_axes((0.02, 0.22, 0.14, 0.66))
    ax = fig.add_axes((0.17, 0.22, 0.58, 0.66))
    bar_ax = fig.add_axes((0.87, 0.22, 0.02, 0.66))
    if n > 1 and len(linkage):
        tree = dendrogram(
            linkage,
            ax=tree_ax,
            orientation="left",
            no_labels=True,
            color_threshold=0,
            above_threshold_color="dimgrey",
        )
        order = list(reversed(tree["leaves"]))  # the dendrogram draws its first leaf lowest
    else:
        order = list(range(n))
    tree_ax.axis("off")
    shown = values[np.ix_(order, order)]
    # the scale is set by the off-diagonal entries (a self-affinity would wash them out)
    off = shown[~np.eye(n, dtype=bool)] if n > 1 else shown.ravel()
    finite = off[np.isfinite(off)]
    bound = float(np.abs(finite).max()) if finite.size else 1.0
    bound = bound if bound > 0 else 1.0
    low = -bound if signed else 0.0
    image = ax.imshow(
        shown,
        cmap="coolwarm_r" if "Δ%" in title else "coolwarm",
        vmin=low,
        vmax=bound,
        aspect="auto",
    )
    names = [tasks[i] for i in order]
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_yticklabels(names, fontsize=8)
    ax.yaxis.tick_right()
    ax.set_xlabel("task j", fontsize=8)
    if n <= 16:
        # one format per matrix, from its scale (lookahead changes are ~1e-4 per step)
        style = ".1f" if bound >= 10 else ".2f" if bound >= 0.05 else ".1e"
        for (i, j), v in np.ndenumerate(shown):
            if math.isfinite(v):
                colour = "white" if abs(v) > 0.6 * bound else "black"
                ax.text(j, i, format(v, style), ha="center", va="center", fontsize=6, color=colour)
    fig.colorbar(image, cax=bar_ax).ax.tick_params(labelsize=7)
    fig.suptitle(textwrap.fill(title, 90), fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_comparison(result: Mapping[str, Any], path: Path) -> Path:
    """Per-task primary metric, STL vs MTL bars with ± std over seeds, one panel per metric
    (and per scale); each pair is labelled with its relative change (the sign of Δm)."""
    plt = _pyplot()
    fig = comparison_figure(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
