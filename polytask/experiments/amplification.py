"""Statistical data amplification: two tasks that are the same hidden function F plus
independent label noise. Training on both averages the noise out of the shared layers, so the
error on T against the noise-free F should fall, most where data are few and noisy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .base import (
    BETTER,
    WORSE,
    columns,
    config,
    contrast,
    plot_arms,
    register_experiment,
    regression,
    split_frame,
    stl_vs_mtl,
    tally,
    verdict_from,
)

N_INPUTS = 8
N_TEST = 2000
CLAIM = "training T together with T′ (same F, independent noise) lowers the test error on T"


def hidden_function(x: np.ndarray, seed: int) -> np.ndarray:
    """F: a random one-hidden-layer tanh network of the inputs (seeded), scaled to unit std."""
    rng = np.random.default_rng(10_000 + seed)
    w1 = rng.normal(size=(x.shape[1], 6)) * 1.2
    w2 = rng.normal(size=6)
    f = np.tanh(x @ w1) @ w2
    return (f - f.mean()) / f.std()


def generate(
    seed: int, n_train: int, noise: float, copies: int = 1
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Rows: inputs ``x*``, ``F`` (noise-free), ``T`` and ``copies`` extra tasks ``U0``, ``U1``…
    (each F + independent noise of std ``noise``). Train and validation rows are noisy; test
    rows carry the noise-free F, so the test RMSE measures the error against F itself."""
    rng = np.random.default_rng(seed)
    n_validation = max(n_train // 2, 20)
    n = n_train + n_validation + N_TEST
    x = rng.uniform(-1, 1, size=(n, N_INPUTS))
    f = hidden_function(x, seed)
    noisy = np.arange(n) < n_train + n_validation
    frame = pd.DataFrame(x, columns=columns("x", N_INPUTS))
    frame["F"] = f
    frame["T"] = f + noise * rng.normal(size=n) * noisy
    for name in extra_tasks(copies):
        frame[name] = f + noise * rng.normal(size=n) * noisy
    return frame, {"n_train": n_train, "n_validation": n_validation, "n_test": N_TEST}


def extra_tasks(copies: int) -> list[str]:
    return [f"U{i}" for i in range(copies)]


def settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "n_train": [80],
            "noise": [1.0],
            "copies": [1],
            "epochs": 30,
            "shared": [32],
            "patience": 30,
        }
    return {
        "n_train": [50, 200],
        "noise": [0.5, 1.0, 2.0],
        "copies": [1, 4],
        "epochs": 300,
        "shared": [32],
        "patience": 30,
    }


def verdict(contrasts: Sequence[dict[str, Any]]) -> str:
    """The claim judged on the one-copy contrasts (T beside T′); the others reported after."""
    one = [c for c in contrasts if c.get("copies", 1) == 1]
    more = [c for c in contrasts if c.get("copies", 1) > 1]
    text = verdict_from(one, CLAIM)
    if more:
        counts = tally(more)
        text += (
            f". With {more[0]['copies']} noisy copies instead of one: significantly better in "
            f"{counts[BETTER]}/{len(more)}, worse in {counts[WORSE]}/{len(more)}"
        )
    return text


@register_experiment(
    "amplification",
    "T and T′ = one hidden function F plus independent label noise; STL vs MTL error on T "
    "against F, over noise levels and training sizes",
    CLAIM,
)
def run(seeds: Sequence[int], out: Path, quick: bool) -> dict[str, Any]:
    s = settings(quick)
    rows, contrasts = [], []
    grid = [(n, noise, k) for k in s["copies"] for n in s["n_train"] for noise in s["noise"]]
    for n_train, noise, copies in grid:
        stl, mtl = [], []
        for seed in seeds:
            frame, sizes = generate(seed, n_train, noise, copies)
            splits = split_frame(frame, sizes["n_train"], sizes["n_validation"])
            cfg = config(
                splits,
                features=columns("x", N_INPUTS),
                tasks=[regression("T")]
                + [regression(u, auxiliary=True) for u in extra_tasks(copies)],
                shared=s["shared"],
                seed=seed,
                epochs=s["epochs"],
                patience=s["patience"],
            )
            single, multi = stl_vs_mtl(cfg, splits)
            stl.append(single["T"])
            mtl.append(multi["T"])
            rows.append(
                {
                    "seed": seed,
                    "n_train": n_train,
                    "noise": noise,
                    "copies": copies,
                    "stl": stl[-1],
                    "mtl": mtl[-1],
                }
            )
        arm = "MTL (T + T′)" if copies == 1 else f"MTL (T + {copies} copies)"
        label = f"n={n_train}, noise={noise}, copies={copies}"
        found = contrast(label, ("STL", stl), (arm, mtl), metric="rmse vs F")
        contrasts.append({**found, "n_train": n_train, "noise": noise, "copies": copies})
    groups = [c["label"] for c in contrasts]
    plot = plot_arms(
        out / "amplification.png",
        groups,
        {
            "STL": [c["baseline_per_seed"] for c in contrasts],
            "MTL (T + extra copies)": [c["treatment_per_seed"] for c in contrasts],
        },
        ylabel="test RMSE of T against noise-free F",
        title=f"Amplification: STL vs MTL, {len(seeds)} seeds (bars: mean ± std; dots: seeds)",
    )
    return {
        "settings": {**s, "n_inputs": N_INPUTS, "n_test": N_TEST, "batch_size": 32, "lr": 3e-3},
        "per_seed": rows,
        "contrasts": contrasts,
        "verdict": verdict(contrasts),
        "plots": [plot.name],
    }
