"""A task of pure noise: an extra output whose targets are random numbers, unrelated to the
inputs. Its gradients only jitter the shared layers, so any gain is regularization by noise;
the matched control is the same single-task network regularized with dropout instead."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import amplification
from .base import (
    BETTER,
    WORSE,
    columns,
    config,
    contrast,
    fit_score,
    plot_arms,
    register_experiment,
    regression,
    split_frame,
    stl_vs_mtl,
)

CLAIM = "an extra output of pure noise improves the error on T"
DROPOUT = 0.2  # the control's dropout on the shared layer


def generate(seed: int, n_train: int, noise: float = 0.5) -> tuple[pd.DataFrame, int]:
    """The amplification problem's T (F + noise; noise-free test rows) and ``N``: standard
    normal numbers drawn independently of everything else. Returns the table and the
    validation size."""
    frame, sizes = amplification.generate(seed, n_train, noise, copies=0)
    frame["N"] = np.random.default_rng(50_000 + seed).normal(size=len(frame))
    return frame, sizes["n_validation"]


def settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"n_train": [80], "epochs": 30, "shared": [64], "patience": 30, "noise": 0.5}
    return {"n_train": [50, 200], "epochs": 300, "shared": [64], "patience": 30, "noise": 0.5}


def verdict(contrasts: Sequence[dict[str, Any]]) -> str:
    """The claim holds where the noise task beats STL; beside it, how it fares against the
    dropout control in the same settings."""
    noise = [c for c in contrasts if c["label"].endswith("noise task vs STL")]
    control = [c for c in contrasts if c["label"].endswith("noise task vs dropout")]
    better = sum(c["outcome"] == BETTER for c in noise)
    worse = sum(c["outcome"] == WORSE for c in noise)
    if better and not worse:
        status = "reproduced" if 2 * better >= len(noise) else "partly reproduced"
    elif worse and not better:
        status = "contradicted"
    else:
        status = "mixed" if better else "not reproduced"
    against = ", ".join(f"{c['label'].split(':')[0]}: {c['outcome']}" for c in control)
    return (
        f"{status}: {CLAIM} — significantly better than STL in {better}/{len(noise)} settings, "
        f"worse in {worse}/{len(noise)}; noise task against dropout {DROPOUT} "
        f"(treatment = noise task): {against}"
    )


@register_experiment(
    "noise-task",
    "an auxiliary output of random targets vs STL and vs STL with dropout (the matched "
    "regularization control), error on T",
    CLAIM,
)
def run(seeds: Sequence[int], out: Path, quick: bool) -> dict[str, Any]:
    s = settings(quick)
    rows, contrasts = [], []
    for n_train in s["n_train"]:
        arms: dict[str, list[float]] = {"STL": [], "noise task": [], "dropout": []}
        for seed in seeds:
            frame, n_validation = generate(seed, n_train, s["noise"])
            splits = split_frame(frame, n_train, n_validation)
            common = {
                "features": columns("x", amplification.N_INPUTS),
                "shared": s["shared"],
                "seed": seed,
                "epochs": s["epochs"],
                "patience": s["patience"],
            }
            tasks = [regression("T"), regression("N", auxiliary=True)]
            single, multi = stl_vs_mtl(config(splits, tasks=tasks, **common), splits)
            dropped = config(splits, tasks=[regression("T")], dropout=DROPOUT, **common)
            arms["STL"].append(single["T"])
            arms["noise task"].append(multi["T"])
            arms["dropout"].append(fit_score(dropped, splits, "T"))
            rows.append({"seed": seed, "n_train": n_train, **{a: v[-1] for a, v in arms.items()}})
        for label, base, treat in (
            ("noise task vs STL", "STL", "noise task"),
            ("dropout vs STL", "STL", "dropout"),
            ("noise task vs dropout", "dropout", "noise task"),
        ):
            found = contrast(
                f"n={n_train}: {label}",
                (base, arms[base]),
                (treat, arms[treat]),
                metric="rmse vs F",
            )
            contrasts.append({**found, "n_train": n_train})
    groups = [f"n={n}" for n in s["n_train"]]
    per_arm: dict[str, list[list[float]]] = {"STL": [], "noise task": [], "dropout": []}
    for n in s["n_train"]:
        these = [r for r in rows if r["n_train"] == n]
        for arm in per_arm:
            per_arm[arm].append([r[arm] for r in these])
    plot = plot_arms(
        out / "noise_task.png",
        groups,
        per_arm,
        ylabel="test RMSE of T against noise-free F",
        title=f"Noise task vs STL vs dropout {DROPOUT}, {len(seeds)} seeds",
    )
    return {
        "settings": {
            **s,
            "dropout_control": DROPOUT,
            "n_inputs": amplification.N_INPUTS,
            "batch_size": 32,
            "lr": 3e-3,
        },
        "per_seed": rows,
        "contrasts": contrasts,
        "verdict": verdict(contrasts),
        "plots": [plot.name],
    }
