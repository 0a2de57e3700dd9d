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
LR = 1e-2
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
        return {"n_train": 50, "widths": [5], "epochs": 20, "patience": 100, "batch_size": 10}
    return {"n_train": 50, "widths": [2, 5, 20], "epochs": 1000, "patience": 100, "batch_size": 10}


def verdict(contrasts: Sequence[dict[str, Any]]) -> str:
    """Per hidden width: reproduced when STD+OUT beats both STD and STD+IN significantly and
    STD+IN is not significantly better than STD (Caruana's ordering); partly when STD+OUT
    beats one of them."""
    parts, statuses = [], []
    for width in dict.fromkeys(c.get("width") for c in contrasts):
        by = {
            c["label"].rsplit(": ", 1)[-1]: c["outcome"]
            for c in contrasts
            if c.get("width") == width
        }
        out_std, out_in, in_std = by["STD+OUT vs STD"], by["STD+OUT vs STD+IN"], by["STD+IN vs STD"]
        if out_std == BETTER and out_in == BETTER and in_std != BETTER:
            status = "reproduced"
        elif BETTER in (out_std, out_in):
            status = "partly reproduced"
        else:
            status = "not reproduced"
        statuses.append(status)
        where = f"{width} hidden units: " if width is not None else ""
        parts.append(
            f"{where}{status} (STD+OUT vs STD: {out_std}; STD+OUT vs STD+IN: {out_in}; "
            f"STD+IN vs STD: {in_std})"
        )
    if all(x == "reproduced" for x in statuses):
        overall = "reproduced"
    elif any(x != "not reproduced" for x in statuses):
        overall = "partly reproduced"
    else:
        overall = "not reproduced"
    return f"{overall}: {CLAIM} — " + "; ".join(parts)


def _trial(seed: int, width: int, s: dict[str, Any]) -> dict[str, float]:
    """STD, STD+IN and STD+OUT test RMSE of F1 on one seed's data."""
    codes = columns("a", BITS) + columns("b", BITS)
    splits = split_frame(generate(seed, s["n_train"]), s["n_train"], N_VALIDATION)
    common = {
        "shared": [width],
        "seed": seed,
        "epochs": s["epochs"],
        "patience": s["patience"],
        "batch_size": s["batch_size"],
        "lr": LR,
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
    return {
        "STD": std["F1"],
        "STD+IN": fit_score(extra_input, splits, "F1"),
        "STD+OUT": with_output["F1"],
    }


@register_experiment(
    "inputs-as-outputs",
    "Caruana's F1 = sigmoid(A+B) from 10-bit codes of A, B on 50 patterns: STD vs F2 = "
    "sigmoid(A−B) as an extra input vs as an extra output, at several hidden widths",
    CLAIM,
)
def run(seeds: Sequence[int], out: Path, quick: bool) -> dict[str, Any]:
    s = settings(quick)
    rows, contrasts, notes = [], [], []
    paper_ratio = CARUANA_RMSE["STD+OUT"] / CARUANA_RMSE["STD"]
    for width in s["widths"]:
        arms: dict[str, list[float]] = {"STD": [], "STD+IN": [], "STD+OUT": []}
        for seed in seeds:
            for arm, value in _trial(seed, width, s).items():
                arms[arm].append(value)
            rows.append({"seed": seed, "width": width, **{a: v[-1] for a, v in arms.items()}})
        for label, base, treat in (
            ("STD+IN vs STD", "STD", "STD+IN"),
            ("STD+OUT vs STD", "STD", "STD+OUT"),
            ("STD+OUT vs STD+IN", "STD+IN", "STD+OUT"),
        ):
            found = contrast(
                f"h={width}: {label}", (base, arms[base]), (treat, arms[treat]), metric="rmse"
            )
            contrasts.append({**found, "width": width})
        means = {arm: float(np.mean(values)) for arm, values in arms.items()}
        notes.append(
            f"{width} hidden units, mean test RMSE: "
            + ", ".join(f"{arm} {m:.4f}" for arm, m in means.items())
            + f"; STD+OUT/STD = {means['STD+OUT'] / means['STD']:.3f} (paper: {paper_ratio:.3f})"
        )
    notes.append("paper (Caruana & de Sa 1996): STD .0648, STD+IN .0647, STD+OUT .0631")
    plot = plot_arms(
        out / "inputs_as_outputs.png",
        [f"{w} hidden units" for w in s["widths"]],
        {
            arm: [[r[arm] for r in rows if r["width"] == w] for w in s["widths"]]
            for arm in ("STD", "STD+IN", "STD+OUT")
        },
        ylabel="test RMSE of F1",
        title=f"Inputs as outputs, {len(seeds)} seeds; paper: .0648 / .0647 / .0631",
    )
    return {
        "settings": {
            **s,
            "bits": BITS,
            "n_validation": N_VALIDATION,
            "n_test": N_TEST,
            "lr": LR,
            "activation": "tanh",
        },
        "reference_rmse": CARUANA_RMSE,
        "per_seed": rows,
        "contrasts": contrasts,
        "notes": notes,
        "verdict": verdict(contrasts),
        "plots": [plot.name],
    }
