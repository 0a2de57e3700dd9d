"""Attribute selection: F depends on 3 of 30 inputs. With few, noisy rows a single task cannot
tell the 3 from the 27; a second task computed from the same F (independent noise) adds
evidence about which inputs matter. Reported: the error on T, and the share of the first
layer's weight mass (Σ|w| per input, inputs standardized) that sits on the 3 relevant inputs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from ..io import Run
from ..train import fit
from .base import (
    columns,
    config,
    contrast,
    plot_arms,
    register_experiment,
    regression,
    split_frame,
    verdict_from,
)

N_INPUTS = 30
N_RELEVANT = 3
N_TEST = 2000
CLAIM = "the extra task lowers T's error and moves input weight onto the relevant inputs"


def hidden_function(x: np.ndarray, seed: int) -> np.ndarray:
    """F of the first ``N_RELEVANT`` columns only: a seeded random tanh network, unit std."""
    rng = np.random.default_rng(20_000 + seed)
    w1 = rng.normal(size=(N_RELEVANT, 6)) * 1.5
    w2 = rng.normal(size=6)
    f = np.tanh(x[:, :N_RELEVANT] @ w1) @ w2
    return (f - f.mean()) / f.std()


def generate(seed: int, n_train: int, noise: float) -> tuple[pd.DataFrame, int]:
    """Inputs ``x0…x29`` (``x0…x2`` relevant), ``F``, ``T`` and ``T2`` = F + independent noise
    (noise-free on test rows). Returns the table and the validation size."""
    rng = np.random.default_rng(seed)
    n_validation = max(n_train // 2, 20)
    n = n_train + n_validation + N_TEST
    x = rng.uniform(-1, 1, size=(n, N_INPUTS))
    f = hidden_function(x, seed)
    noisy = (np.arange(n) < n_train + n_validation) * noise
    frame = pd.DataFrame(x, columns=columns("x", N_INPUTS))
    frame["F"] = f
    frame["T"] = f + noisy * rng.normal(size=n)
    frame["T2"] = f + noisy * rng.normal(size=n)
    return frame, n_validation


def relevant_share(run: Run) -> float:
    """Share of the first linear layer's absolute weight on the relevant inputs."""
    first = next(m for m in run.model.modules() if isinstance(m, nn.Linear))
    mass = first.weight.detach().abs().sum(0).cpu().numpy()
    relevant = [run.preprocessor.features.index(c) for c in columns("x", N_RELEVANT)]
    return float(mass[relevant].sum() / mass.sum())


def settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"n_train": [80], "noise": 1.0, "epochs": 30, "shared": [32], "patience": 30}
    return {"n_train": [50, 200], "noise": 1.0, "epochs": 300, "shared": [32], "patience": 30}


def verdict(contrasts: Sequence[dict[str, Any]]) -> str:
    errors = [c for c in contrasts if c["metric"] == "rmse vs F"]
    shares = [c for c in contrasts if c["metric"] != "rmse vs F"]
    return (
        f"error: {verdict_from(errors, 'MTL lowers the error on T')}. Weight on the relevant "
        f"inputs: {verdict_from(shares, 'MTL puts more first-layer weight on them')}"
    )


@register_experiment(
    "attribute-selection",
    f"F depends on {N_RELEVANT} of {N_INPUTS} inputs; STL vs MTL (a second noisy task of F): "
    "error on T and first-layer weight share on the relevant inputs",
    CLAIM,
)
def run(seeds: Sequence[int], out: Path, quick: bool) -> dict[str, Any]:
    s = settings(quick)
    rows, contrasts = [], []
    chance = N_RELEVANT / N_INPUTS
    for n_train in s["n_train"]:
        arms: dict[str, list[float]] = {k: [] for k in ("stl", "mtl", "stl_share", "mtl_share")}
        for seed in seeds:
            frame, n_validation = generate(seed, n_train, s["noise"])
            splits = split_frame(frame, n_train, n_validation)
            common = {
                "features": columns("x", N_INPUTS),
                "shared": s["shared"],
                "seed": seed,
                "epochs": s["epochs"],
                "patience": s["patience"],
            }
            single = fit(config(splits, tasks=[regression("T")], **common), splits=splits)
            multi = fit(
                config(splits, tasks=[regression("T"), regression("T2", auxiliary=True)], **common),
                splits=splits,
            )
            for arm, run_ in (("stl", single), ("mtl", multi)):
                arms[arm].append(run_.metrics["test"]["T"]["rmse"])
                arms[f"{arm}_share"].append(relevant_share(run_))
            rows.append({"seed": seed, "n_train": n_train, **{a: v[-1] for a, v in arms.items()}})
        error = contrast(
            f"n={n_train}: error", ("STL", arms["stl"]), ("MTL", arms["mtl"]), metric="rmse vs F"
        )
        share = contrast(
            f"n={n_train}: weight share",
            ("STL", arms["stl_share"]),
            ("MTL", arms["mtl_share"]),
            metric=f"relevant share (chance {chance:.2f})",
            lower_is_better=False,
        )
        contrasts += [{**error, "n_train": n_train}, {**share, "n_train": n_train}]
    groups = [f"n={n}" for n in s["n_train"]]
    plots = []
    for key, ylabel, name in (
        ("", "test RMSE of T against noise-free F", "attribute_selection_error.png"),
        (
            "_share",
            f"first-layer weight share on the {N_RELEVANT} relevant inputs",
            "attribute_selection_weights.png",
        ),
    ):
        per_arm = {
            arm.upper(): [
                [r[f"{arm}{key}"] for r in rows if r["n_train"] == n] for n in s["n_train"]
            ]
            for arm in ("stl", "mtl")
        }
        plots.append(
            plot_arms(out / name, groups, per_arm, ylabel=ylabel, title=f"{len(seeds)} seeds").name
        )
    return {
        "settings": {
            **s,
            "n_inputs": N_INPUTS,
            "n_relevant": N_RELEVANT,
            "n_test": N_TEST,
            "chance_share": chance,
            "batch_size": 32,
            "lr": 3e-3,
        },
        "per_seed": rows,
        "contrasts": contrasts,
        "verdict": verdict(contrasts),
        "plots": plots,
    }
