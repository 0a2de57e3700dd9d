"""Eavesdropping: a feature F that task T shows plainly (T = F + a little noise) and task T′
uses only in a quarter of the input space (T′ = F·[x2 > 0.5] + x3/2). STL on T′ sees F in few
rows; trained beside T, the shared layers learn F from every row and T′ should benefit."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .base import (
    columns,
    config,
    contrast,
    plot_arms,
    register_experiment,
    regression,
    split_frame,
    stl_vs_mtl,
    verdict_from,
)

N_INPUTS = 6
N_TEST = 2000
GATE = 0.5  # T′ uses F where x2 > GATE: a quarter of the inputs
CLAIM = "T′ (which uses F in a quarter of the inputs) is learned better beside T (= F)"


def generate(seed: int, n_train: int, noise: float = 0.1) -> tuple[pd.DataFrame, int]:
    """Inputs ``x*``; ``F`` = sin(3·(x0 + x1)); ``T`` = F + noise; ``T2`` = F where x2 > 0.5
    plus x3/2, + noise. Test rows are noise-free. Returns the table and the validation size."""
    rng = np.random.default_rng(seed)
    n_validation = max(n_train // 2, 20)
    n = n_train + n_validation + N_TEST
    x = rng.uniform(-1, 1, size=(n, N_INPUTS))
    f = np.sin(3 * (x[:, 0] + x[:, 1]))
    noisy = (np.arange(n) < n_train + n_validation) * noise
    frame = pd.DataFrame(x, columns=columns("x", N_INPUTS))
    frame["F"] = f
    frame["gate"] = (x[:, 2] > GATE).astype(float)
    frame["T"] = f + noisy * rng.normal(size=n)
    frame["T2"] = f * frame["gate"] + 0.5 * x[:, 3] + noisy * rng.normal(size=n)
    return frame, n_validation


def settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"n_train": [80], "epochs": 30, "shared": [32], "patience": 30, "noise": 0.1}
    return {
        "n_train": [100, 300, 1000],
        "epochs": 300,
        "shared": [32],
        "patience": 30,
        "noise": 0.1,
    }


def verdict(contrasts: Sequence[dict[str, Any]]) -> str:
    return verdict_from(contrasts, CLAIM)


@register_experiment(
    "eavesdropping",
    "F is easy to learn from T (= F) and hard from T′ (F in a quarter of the inputs); STL vs "
    "MTL error on T′",
    CLAIM,
)
def run(seeds: Sequence[int], out: Path, quick: bool) -> dict[str, Any]:
    s = settings(quick)
    rows, contrasts = [], []
    for n_train in s["n_train"]:
        stl, mtl = [], []
        for seed in seeds:
            frame, n_validation = generate(seed, n_train, s["noise"])
            splits = split_frame(frame, n_train, n_validation)
            cfg = config(
                splits,
                features=columns("x", N_INPUTS),
                tasks=[regression("T2"), regression("T", auxiliary=True)],
                shared=s["shared"],
                seed=seed,
                epochs=s["epochs"],
                patience=s["patience"],
            )
            single, multi = stl_vs_mtl(cfg, splits)
            stl.append(single["T2"])
            mtl.append(multi["T2"])
            rows.append({"seed": seed, "n_train": n_train, "stl": stl[-1], "mtl": mtl[-1]})
        contrasts.append(
            contrast(f"n={n_train}", ("STL", stl), ("MTL (T′ + T)", mtl), metric="rmse of T′")
        )
    plot = plot_arms(
        out / "eavesdropping.png",
        [c["label"] for c in contrasts],
        {
            "STL": [c["baseline_per_seed"] for c in contrasts],
            "MTL (T′ + T)": [c["treatment_per_seed"] for c in contrasts],
        },
        ylabel="test RMSE of T′ (noise-free)",
        title=f"Eavesdropping: STL vs MTL on T′, {len(seeds)} seeds",
    )
    return {
        "settings": {
            **s,
            "n_inputs": N_INPUTS,
            "n_test": N_TEST,
            "gate": GATE,
            "batch_size": 32,
            "lr": 3e-3,
        },
        "per_seed": rows,
        "contrasts": contrasts,
        "verdict": verdict(contrasts),
        "plots": [plot.name],
    }
