"""Capacity: is MTL's gain only that of a bigger network? On the eavesdropping problem (where
T′ gains from T at 300 training rows), STL and MTL are trained at several shared widths; each
arm's width is then chosen on the validation split, and MTL is compared with the best STL the
sweep offers. Also reported: the smallest width at which MTL's mean error reaches the best
STL mean error."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..train import fit
from . import eavesdropping
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
    tally,
)

CLAIM = "MTL beats STL even when each arm's shared width is chosen on validation"


def settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"n_train": 100, "widths": [4, 16], "epochs": 20, "patience": 30}
    return {"n_train": 300, "widths": [4, 8, 32, 128], "epochs": 300, "patience": 30}


def verdict(contrasts: Sequence[dict[str, Any]]) -> str:
    """Judged on the validation-selected contrast; the fixed-width contrasts reported after."""
    selected = next(c for c in contrasts if c["label"].startswith("width chosen"))
    fixed = [c for c in contrasts if not c["label"].startswith("width chosen")]
    counts = tally(fixed)
    status = "reproduced" if selected["outcome"] == BETTER else "not reproduced"
    return (
        f"{status}: {CLAIM} (selected widths: {selected['outcome']}); at equal width MTL is "
        f"significantly better in {counts[BETTER]}/{len(fixed)}, worse in "
        f"{counts[WORSE]}/{len(fixed)}"
    )


def smallest_matching_width(
    widths: Sequence[int], stl: dict[int, float], mtl: dict[int, float]
) -> int | None:
    """The smallest width at which MTL's mean error is at most STL's best mean error."""
    best = min(stl.values())
    return next((w for w in widths if mtl[w] <= best), None)


@register_experiment(
    "capacity",
    "eavesdropping problem at 300 rows: STL and MTL over shared widths, each arm's width "
    "chosen on validation; MTL vs the best STL",
    CLAIM,
)
def run(seeds: Sequence[int], out: Path, quick: bool) -> dict[str, Any]:
    s = settings(quick)
    widths = s["widths"]
    rows = []
    for seed in seeds:
        frame, n_validation = eavesdropping.generate(seed, s["n_train"])
        splits = split_frame(frame, s["n_train"], n_validation)
        row: dict[str, Any] = {"seed": seed}
        for arm, tasks in (
            ("stl", [regression("T2")]),
            ("mtl", [regression("T2"), regression("T", auxiliary=True)]),
        ):
            for width in widths:
                cfg = config(
                    splits,
                    features=columns("x", eavesdropping.N_INPUTS),
                    tasks=tasks,
                    shared=[width],
                    seed=seed,
                    epochs=s["epochs"],
                    patience=s["patience"],
                )
                metrics = fit(cfg, splits=splits).metrics
                row[f"{arm}_{width}"] = metrics["test"]["T2"]["rmse"]
                row[f"{arm}_{width}_validation"] = metrics["validation"]["T2"]["rmse"]
            chosen = min(widths, key=lambda w: row[f"{arm}_{w}_validation"])
            row[f"{arm}_width"], row[f"{arm}_selected"] = chosen, row[f"{arm}_{chosen}"]
        rows.append(row)
    contrasts = [
        contrast(
            f"width {w}: MTL vs STL",
            ("STL", [r[f"stl_{w}"] for r in rows]),
            ("MTL", [r[f"mtl_{w}"] for r in rows]),
            metric="rmse of T′",
        )
        for w in widths
    ]
    contrasts.append(
        contrast(
            "width chosen on validation: MTL vs STL",
            ("STL", [r["stl_selected"] for r in rows]),
            ("MTL", [r["mtl_selected"] for r in rows]),
            metric="rmse of T′",
        )
    )
    means = {
        arm: {w: float(np.mean([r[f"{arm}_{w}"] for r in rows])) for w in widths}
        for arm in ("stl", "mtl")
    }
    match = smallest_matching_width(widths, means["stl"], means["mtl"])
    best_stl = min(widths, key=lambda w: means["stl"][w])
    plot = plot_arms(
        out / "capacity.png",
        [f"width {w}" for w in widths] + ["chosen on validation"],
        {
            arm.upper(): [[r[f"{arm}_{w}"] for r in rows] for w in widths]
            + [[r[f"{arm}_selected"] for r in rows]]
            for arm in ("stl", "mtl")
        },
        ylabel="test RMSE of T′ (noise-free)",
        title=f"Capacity: STL vs MTL over shared widths, {len(seeds)} seeds",
    )
    notes = [
        f"best STL mean error {means['stl'][best_stl]:.4f} at width {best_stl}; MTL's mean "
        "error reaches it first at width "
        + (str(match) if match is not None else "— (never, in this sweep)"),
        "widths chosen on validation — STL: "
        + ", ".join(f"{w}×{sum(r['stl_width'] == w for r in rows)}" for w in widths)
        + "; MTL: "
        + ", ".join(f"{w}×{sum(r['mtl_width'] == w for r in rows)}" for w in widths),
    ]
    return {
        "settings": {**s, "problem": "eavesdropping", "batch_size": 32, "lr": 3e-3},
        "per_seed": rows,
        "contrasts": contrasts,
        "smallest_mtl_width_matching_best_stl": match,
        "notes": notes,
        "verdict": verdict(contrasts),
        "plots": [plot.name],
    }
