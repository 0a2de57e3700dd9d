"""Representation bias: where a task has two equally good solutions, MTL prefers the one its
companion task also uses.

Task T = sin(3a) is labelled on rows where input xB equals input xA, so "use xA" (minimum A)
and "use xB" (minimum B) fit T equally well; task T′ = cos(3a) is labelled on other rows
where xC equals xA (minima A and C). On a probe table where xA, xB, xC are independent, each
trained network's prediction of T is regressed on sin(3·xA) and sin(3·xB): the share of the
xA coefficient says which minimum it ended in (1: A, 0: B). Then T is pushed toward B (on T's
rows xA is xB plus noise) and the question is whether T′ moves toward C."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data import Splits
from ..io import Run
from ..train import fit
from .base import BETTER, config, contrast, plot_arms, register_experiment, regression

INPUTS = ["xA", "xB", "xC", "d0", "d1", "d2"]  # d*: distractors
N_PROBE = 2000
CLAIM = (
    "T ends in the minimum T′ shares (A) more often beside T′; forced toward B, T pulls T′ toward C"
)


def task_t(x: np.ndarray) -> np.ndarray:
    return np.sin(3 * x)


def task_t2(x: np.ndarray) -> np.ndarray:
    return np.cos(3 * x)


def generate(
    seed: int, n: int, force: float = 0.0
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Training and validation rows of T (xB = xA; with ``force`` > 0, xA = xB + noise of that
    std, so xB fits T better) and of T′ (xC = xA), each task's label missing on the other's
    rows, and a probe table with independent inputs. Returns (train, validation, probe)."""
    rng = np.random.default_rng(seed)

    def rows(count: int) -> pd.DataFrame:
        x = rng.uniform(-1, 1, size=(2 * count, len(INPUTS)))
        frame = pd.DataFrame(x, columns=INPUTS)
        own_t, own_t2 = frame.index < count, frame.index >= count
        frame.loc[own_t, "xA"] = frame.loc[own_t, "xB"] + force * rng.normal(size=count)
        frame.loc[own_t2, "xC"] = frame.loc[own_t2, "xA"]
        frame["T"] = np.where(own_t, task_t(frame["xB"]), np.nan)
        frame["T2"] = np.where(own_t2, task_t2(frame["xA"]), np.nan)
        return frame

    probe = pd.DataFrame(rng.uniform(-1, 1, size=(N_PROBE, len(INPUTS))), columns=INPUTS)
    return rows(n), rows(max(n // 2, 20)), probe


def share(prediction: np.ndarray, first: np.ndarray, second: np.ndarray) -> float:
    """The first regressor's share |b1| / (|b1| + |b2|) in a least-squares fit of
    ``prediction`` on [1, first, second]."""
    design = np.column_stack([np.ones_like(first), first, second])
    coef = np.linalg.lstsq(design, prediction, rcond=None)[0]
    total = abs(coef[1]) + abs(coef[2])
    return float(abs(coef[1]) / total) if total > 0 else 0.5


def shares(run: Run, probe: pd.DataFrame) -> dict[str, float]:
    """Share of minimum A in T's prediction (vs B) and in T′'s (vs C), for the tasks it has."""
    predicted = run.predict(probe[INPUTS])
    found = {}
    if "T" in predicted:
        found["T_on_A"] = share(predicted["T"].to_numpy(), task_t(probe["xA"]), task_t(probe["xB"]))
    if "T2" in predicted:
        found["T2_on_A"] = share(
            predicted["T2"].to_numpy(), task_t2(probe["xA"]), task_t2(probe["xC"])
        )
    return found


def settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"n": 100, "force": 0.1, "epochs": 20, "shared": [32], "patience": 30}
    return {"n": 200, "force": 0.1, "epochs": 300, "shared": [32], "patience": 30}


def verdict(contrasts: Sequence[dict[str, Any]]) -> str:
    by = {c["label"]: c["outcome"] for c in contrasts}
    first, forced, check = (
        by["T's share of A: MTL vs STL"],
        by["T′'s share of A: forced vs unforced MTL"],
        by["T's share of A: forced vs unforced MTL"],
    )
    part1 = "reproduced" if first == BETTER else "not reproduced"
    # forcing T toward B should lower T's share of A (a "better" here is a lower share)
    if check != BETTER:
        part2 = f"untestable (forcing did not move T toward B: {check})"
    else:
        part2 = "reproduced" if forced == BETTER else "not reproduced"
    return (
        f"T prefers the shared minimum A beside T′: {part1} (MTL vs STL: {first}); forced toward "
        f"B, T′ leaves A for C: {part2} (T′'s share of A, forced vs unforced: {forced})"
    )


@register_experiment(
    "representation-bias",
    "T (minima A, B) and T′ (minima A, C): which minimum T ends in alone and beside T′; then "
    "T forced toward B, and where T′ ends",
    CLAIM,
)
def run(seeds: Sequence[int], out: Path, quick: bool) -> dict[str, Any]:
    s = settings(quick)
    rows = []
    common = {
        "features": INPUTS,
        "shared": s["shared"],
        "epochs": s["epochs"],
        "patience": s["patience"],
    }
    for seed in seeds:
        row: dict[str, Any] = {"seed": seed}
        for force, tag in ((0.0, ""), (s["force"], "forced_")):
            train, validation, probe = generate(seed, s["n"], force)
            splits = Splits(train, validation, train.iloc[:0])
            both = [regression("T"), regression("T2")]
            mtl = fit(config(splits, tasks=both, seed=seed, **common), splits=splits)
            for key, value in shares(mtl, probe).items():
                row[f"{tag}mtl_{key}"] = value
            if not force:
                for task in ("T", "T2"):
                    own = splits.map(lambda f, t=task: f[f[t].notna()])
                    alone = fit(
                        config(own, tasks=[regression(task)], seed=seed, **common), splits=own
                    )
                    row.update({f"stl_{k}": v for k, v in shares(alone, probe).items()})
        rows.append(row)

    def column(key: str) -> list[float]:
        return [r[key] for r in rows]

    contrasts = [
        contrast(
            "T's share of A: MTL vs STL",
            ("STL", column("stl_T_on_A")),
            ("MTL", column("mtl_T_on_A")),
            metric="share of A",
            lower_is_better=False,
        ),
        contrast(
            "T′'s share of A: MTL vs STL",
            ("STL", column("stl_T2_on_A")),
            ("MTL", column("mtl_T2_on_A")),
            metric="share of A",
            lower_is_better=False,
        ),
        contrast(
            "T's share of A: forced vs unforced MTL",
            ("MTL", column("mtl_T_on_A")),
            ("MTL, T forced to B", column("forced_mtl_T_on_A")),
            metric="share of A",
            lower_is_better=True,
        ),
        contrast(
            "T′'s share of A: forced vs unforced MTL",
            ("MTL", column("mtl_T2_on_A")),
            ("MTL, T forced to B", column("forced_mtl_T2_on_A")),
            metric="share of A",
            lower_is_better=True,
        ),
    ]
    counts = {
        key: int(sum(v > 0.5 for v in column(key)))
        for key in (
            "stl_T_on_A",
            "mtl_T_on_A",
            "forced_mtl_T_on_A",
            "stl_T2_on_A",
            "mtl_T2_on_A",
            "forced_mtl_T2_on_A",
        )
    }
    plot = plot_arms(
        out / "representation_bias.png",
        ["T: share of A (vs B)", "T′: share of A (vs C)"],
        {
            "STL": [column("stl_T_on_A"), column("stl_T2_on_A")],
            "MTL": [column("mtl_T_on_A"), column("mtl_T2_on_A")],
            "MTL, T forced to B": [column("forced_mtl_T_on_A"), column("forced_mtl_T2_on_A")],
        },
        ylabel="share of minimum A in the prediction",
        title=f"Representation bias, {len(seeds)} seeds (0.5: both minima used equally)",
    )
    notes = [
        f"runs ending nearer A (share > 0.5) out of {len(rows)}: "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
    ]
    return {
        "settings": {**s, "inputs": INPUTS, "n_probe": N_PROBE, "batch_size": 32, "lr": 3e-3},
        "per_seed": rows,
        "runs_nearer_A": counts,
        "contrasts": contrasts,
        "notes": notes,
        "verdict": verdict(contrasts),
        "plots": [plot.name],
    }
