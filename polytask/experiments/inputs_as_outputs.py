"""Some inputs work better as outputs (Caruana & de Sa, NIPS 1996): F1 = sigmoid(A + B) from
A and B in [−5, 5], each given as a 10-bit binary code, on 50 training patterns. The extra
feature F2 = sigmoid(A − B) is tried as an extra input (STD+IN) and as an extra output
(STD+OUT, training only) against the plain network (STD). The paper reported test RMSE
.0648 (STD), .0647 (STD+IN) and .0631 (STD+OUT)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .base import (
    BETTER,
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

BITS = 10
N_VALIDATION = 50  # the halt set early stopping reads
N_TEST = 1000
CARUANA_RMSE = {"STD": 0.0648, "STD+IN": 0.0647, "STD+OUT": 0.0631}
CLAIM = "F2 helps F1 as an extra output (STD+OUT) but not as an extra input (STD+IN)"


def binary_code(values: np.ndarray, low: float = -5.0, high: float = 5.0) -> np.ndarray:
    """Each value quantized to 2**BITS levels over [low, high], as BITS 0/1 columns (MSB first)."""
    levels = np.clip(((values - low) / (high - low) * 2**BITS).astype(int), 0, 2**BITS - 1)
    return ((levels[:, None] >> np.arange(BITS - 1, -1, -1)) & 1).astype(float)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def generate(seed: int, n_train: int) -> pd.DataFrame:
    """Columns ``a0…a9``, ``b0…b9`` (the codes of A and B), ``A``, ``B``, ``F1``, ``F2``."""
    rng = np.random.default_rng(seed)
    n = n_train + N_VALIDATION + N_TEST
    a, b = rng.uniform(-5, 5, size=n), rng.uniform(-5, 5, size=n)
    frame = pd.DataFrame(
        np.hstack([binary_code(a), binary_code(b)]), columns=columns("a", BITS) + columns("b", BITS)
    )
    frame["A"], frame["B"] = a, b
    frame["F1"], frame["F2"] = sigmoid(a + b), sigmoid(a - b)
    return frame


def settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"n_train": 50, "epochs": 30, "shared": [20], "patience": 50, "batch_size": 10}
    return {"n_train": 50, "epochs": 1000, "shared": [20], "patience": 100, "batch_size": 10}


def verdict(contrasts: Sequence[dict[str, Any]]) -> str:
    """Reproduced when STD+OUT beats both STD and STD+IN significantly and STD+IN is not
    significantly better than STD (Caruana's ordering)."""
    by = {c["label"]: c["outcome"] for c in contrasts}
    out_vs_std, out_vs_in = by["STD+OUT vs STD"], by["STD+OUT vs STD+IN"]
    in_vs_std = by["STD+IN vs STD"]
    parts = (
        f"STD+OUT vs STD: {out_vs_std}; STD+OUT vs STD+IN: {out_vs_in}; STD+IN vs STD: {in_vs_std}"
    )
    if out_vs_std == BETTER and out_vs_in == BETTER and in_vs_std != BETTER:
        status = "reproduced"
    elif out_vs_std == BETTER or out_vs_in == BETTER:
        status = "partly reproduced"
    else:
        status = "not reproduced"
    return f"{status}: {CLAIM} ({parts})"


@register_experiment(
    "inputs-as-outputs",
    "Caruana's F1 = sigmoid(A+B) from 10-bit codes of A, B on 50 patterns: STD vs F2 = "
    "sigmoid(A−B) as an extra input vs as an extra output",
    CLAIM,
)
def run(seeds: Sequence[int], out: Path, quick: bool) -> dict[str, Any]:
    s = settings(quick)
    codes = columns("a", BITS) + columns("b", BITS)
    arms: dict[str, list[float]] = {"STD": [], "STD+IN": [], "STD+OUT": []}
    rows = []
    for seed in seeds:
        splits = split_frame(generate(seed, s["n_train"]), s["n_train"], N_VALIDATION)
        common = {
            "shared": s["shared"],
            "seed": seed,
            "epochs": s["epochs"],
            "patience": s["patience"],
            "batch_size": s["batch_size"],
            "lr": 3e-3,
            "activation": "tanh",
        }
        extra_output = config(
            splits,
            features=codes,
            tasks=[regression("F1"), regression("F2", auxiliary=True)],
            **common,
        )
        extra_input = config(splits, features=[*codes, "F2"], tasks=[regression("F1")], **common)
        std, with_output = stl_vs_mtl(extra_output, splits)
        arms["STD"].append(std["F1"])
        arms["STD+OUT"].append(with_output["F1"])
        arms["STD+IN"].append(fit_score(extra_input, splits, "F1"))
        rows.append({"seed": seed, **{arm: values[-1] for arm, values in arms.items()}})
    contrasts = [
        contrast("STD+IN vs STD", ("STD", arms["STD"]), ("STD+IN", arms["STD+IN"]), metric="rmse"),
        contrast(
            "STD+OUT vs STD", ("STD", arms["STD"]), ("STD+OUT", arms["STD+OUT"]), metric="rmse"
        ),
        contrast(
            "STD+OUT vs STD+IN",
            ("STD+IN", arms["STD+IN"]),
            ("STD+OUT", arms["STD+OUT"]),
            metric="rmse",
        ),
    ]
    plot = plot_arms(
        out / "inputs_as_outputs.png",
        ["F1 test RMSE"],
        {arm: [values] for arm, values in arms.items()},
        ylabel="test RMSE of F1",
        title=f"Inputs as outputs (Caruana & de Sa 1996), {len(seeds)} seeds; paper: "
        ".0648 / .0647 / .0631",
    )
    means = {arm: float(np.mean(values)) for arm, values in arms.items()}
    ratio = means["STD+OUT"] / means["STD"]
    paper_ratio = CARUANA_RMSE["STD+OUT"] / CARUANA_RMSE["STD"]
    return {
        "settings": {
            **s,
            "bits": BITS,
            "n_validation": N_VALIDATION,
            "n_test": N_TEST,
            "lr": 3e-3,
            "activation": "tanh",
        },
        "reference_rmse": CARUANA_RMSE,
        "per_seed": rows,
        "contrasts": contrasts,
        "notes": [
            "mean test RMSE here: "
            + ", ".join(f"{arm} {m:.4f}" for arm, m in means.items())
            + f"; paper: STD .0648, STD+IN .0647, STD+OUT .0631. STD+OUT/STD = {ratio:.3f} "
            f"here, {paper_ratio:.3f} in the paper."
        ],
        "verdict": verdict(contrasts),
        "plots": [plot.name],
    }
