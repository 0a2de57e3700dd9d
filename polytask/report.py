"""Plots of runs and comparisons (matplotlib, imported only when a plot is drawn)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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


def plot_comparison(result: Mapping[str, Any], path: Path) -> Path:
    """Per-task primary metric, STL vs MTL, mean ± std over seeds."""
    plt = _pyplot()
    tasks = result["tasks"]
    names = list(tasks)
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(names) + 2), 3.6))
    for offset, method in ((-0.2, "stl"), (0.2, "mtl")):
        means = [tasks[n][method]["mean"] for n in names]
        stds = [tasks[n][method]["std"] for n in names]
        ax.bar(
            [i + offset for i in x], means, width=0.4, yerr=stds, capsize=2, label=method.upper()
        )
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    metrics = sorted({tasks[n]["metric"] for n in names})
    ax.set_ylabel(", ".join(metrics))
    lo = min(min(tasks[n][m]["mean"] for n in names) for m in ("stl", "mtl"))
    hi = max(max(tasks[n][m]["mean"] for n in names) for m in ("stl", "mtl"))
    pad = 0.15 * (hi - lo) if hi > lo else 0.1
    ax.set_ylim(max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad)
    ax.set_title(
        f"STL vs MTL, {len(result['seeds'])} seeds; Δm = {result['delta_m_percent']:+.2f}% "
        "(negative: MTL better)"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
