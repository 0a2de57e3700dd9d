"""Learning speed on a real data set: how many epochs, and how much wall time, the shared
network needs to reach each task's best single-task validation score.

Yeast (14 binary tasks) with the demo's network. Every network trains the whole budget (no
early stopping) with per-task selection on, so the validation AUC of every task is recorded
after every epoch. For task t, STL's best is the highest validation AUC of its own network
(reached at epoch e_STL); MTL's epoch is the first at which the shared network's AUC on t is at
least that (e_MTL; a task never reached counts as budget + 1, which flatters MTL).

Wall time is compared on the tasks MTL does reach: the sum of their STL networks' times to their
best epochs against the shared network's time to the last of its e_MTL (seeds where MTL reaches
none are left out)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import Config, DataConfig, ModelConfig, TrainConfig
from ..datasets import load_dataset
from ..io import Run
from ..train import fit
from .base import contrast, pyplot, register_experiment, verdict_from

DATASET = "yeast"
CLAIM = "MTL reaches STL's best validation AUC in fewer epochs and less wall time"


def settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"tasks": 3, "epochs": 4, "shared": [32], "dropout": 0.3}
    return {"tasks": 14, "epochs": 60, "shared": [256], "dropout": 0.3}


def yeast_config(tasks: list[str], features: list[str], s: dict[str, Any], seed: int) -> Config:
    """The demo's network and optimizer on ``tasks``, the whole budget, AUC every epoch."""
    data = load_dataset(DATASET)
    return Config(
        data=DataConfig(dataset=DATASET, features=features),
        tasks=[t for t in data.tasks if t.name in tasks],
        model=ModelConfig(shared=s["shared"], dropout=s["dropout"]),
        train=TrainConfig(
            epochs=s["epochs"],
            batch_size=64,
            lr=1e-3,
            weight_decay=1e-4,
            patience=None,
            seed=seed,
            device="cpu",
            select="per_task",
        ),
    )


def curve(run: Run, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Validation AUC of ``task`` after each epoch, and the cumulative seconds."""
    history: pd.DataFrame = run.history
    return (
        history[f"val_metric/{task}"].to_numpy(dtype=float),
        history["seconds"].cumsum().to_numpy(dtype=float),
    )


def reach(stl_auc: np.ndarray, mtl_auc: np.ndarray) -> tuple[int, int | None]:
    """STL's epoch of its best AUC (first, 1-based) and MTL's first epoch at or above it."""
    best = int(np.nanargmax(stl_auc))
    hits = np.flatnonzero(mtl_auc >= stl_auc[best])
    return best + 1, (int(hits[0]) + 1 if hits.size else None)


def verdict(contrasts: Sequence[dict[str, Any]], reached: int, total: int) -> str:
    return (
        f"{verdict_from(contrasts, CLAIM)}; MTL reached STL's best on {reached}/{total} "
        "task-seeds within the budget"
    )


@register_experiment(
    "learning-speed",
    "Yeast, demo network, no early stopping: epochs and wall time for MTL vs STL to reach "
    "each task's best single-task validation AUC",
    CLAIM,
)
def run(seeds: Sequence[int], out: Path, quick: bool) -> dict[str, Any]:
    s = settings(quick)
    data = load_dataset(DATASET)
    tasks = [t.name for t in data.tasks][: s["tasks"]]
    targets = {c for t in data.tasks for c in t.columns}
    features = [c for c in data.frame.columns if c not in targets]
    rows, per_seed = [], []
    budget = s["epochs"]
    for seed in seeds:
        shared_run = fit(yeast_config(tasks, features, s, seed))
        stl_epochs, mtl_epochs, stl_seconds, mtl_reach = [], [], 0.0, 0
        for task in tasks:
            alone = fit(yeast_config([task], features, s, seed))
            stl_auc, stl_time = curve(alone, task)
            mtl_auc, mtl_time = curve(shared_run, task)
            e_stl, e_mtl = reach(stl_auc, mtl_auc)
            stl_epochs.append(e_stl)
            mtl_epochs.append(e_mtl if e_mtl is not None else budget + 1)
            if e_mtl is not None:  # wall time is compared on the tasks MTL reaches
                stl_seconds += stl_time[e_stl - 1]
                mtl_reach = max(mtl_reach, e_mtl)
            rows.append(
                {
                    "seed": seed,
                    "task": task,
                    "stl_best_auc": float(stl_auc[e_stl - 1]),
                    "stl_epoch": e_stl,
                    "mtl_epoch": e_mtl,
                }
            )
        _, mtl_time = curve(shared_run, tasks[0])
        per_seed.append(
            {
                "seed": seed,
                "stl_mean_epochs": float(np.mean(stl_epochs)),
                "mtl_mean_epochs": float(np.mean(mtl_epochs)),
                "stl_seconds": stl_seconds,
                "mtl_seconds": float(mtl_time[mtl_reach - 1]) if mtl_reach else None,
            }
        )
    timed = [p for p in per_seed if p["mtl_seconds"] is not None]
    contrasts = [
        contrast(
            "epochs to STL's best (mean over tasks)",
            ("STL", [p["stl_mean_epochs"] for p in per_seed]),
            ("MTL", [p["mtl_mean_epochs"] for p in per_seed]),
            metric="epochs",
        ),
        contrast(
            "wall time to STL's best on the tasks MTL reaches",
            ("STL (their networks)", [p["stl_seconds"] for p in timed]),
            ("MTL", [p["mtl_seconds"] for p in timed]),
            metric="seconds",
        ),
    ]
    reached = sum(r["mtl_epoch"] is not None for r in rows)
    plot = _plot(out / "learning_speed.png", rows, tasks, budget, len(seeds))
    return {
        "settings": {
            **s,
            "dataset": DATASET,
            "tasks": tasks,
            "batch_size": 64,
            "lr": 1e-3,
            "weight_decay": 1e-4,
            "patience": None,
        },
        "per_seed": per_seed,
        "per_task": rows,
        "contrasts": contrasts,
        "verdict": verdict(contrasts, reached, len(rows)),
        "plots": [plot.name],
    }


def _plot(path: Path, rows: list[dict[str, Any]], tasks: list[str], budget: int, n: int) -> Path:
    """Per task: STL's epoch of its best vs MTL's epoch to reach it (unreached drawn above)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, task in enumerate(tasks):
        these = [r for r in rows if r["task"] == task]
        stl = [r["stl_epoch"] for r in these]
        mtl = [r["mtl_epoch"] if r["mtl_epoch"] is not None else budget + 3 for r in these]
        ax.plot(np.full(len(stl), i - 0.15), stl, "o", color="C0", ms=3, alpha=0.7)
        ax.plot(np.full(len(mtl), i + 0.15), mtl, "s", color="C1", ms=3, alpha=0.7)
    ax.plot([], [], "o", color="C0", label="STL: epoch of its best validation AUC")
    ax.plot([], [], "s", color="C1", label="MTL: first epoch at or above it")
    ax.axhline(budget + 1, color="grey", lw=0.8, ls=":")
    ax.text(-0.5, budget + 1.5, "not reached", fontsize=7, color="grey")
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, fontsize=7)
    ax.set_ylabel("epoch")
    ax.set_title(f"Learning speed on {DATASET}, {n} seeds, budget {budget} epochs", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
