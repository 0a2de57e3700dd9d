"""The shuffle control: the extra tasks' targets permuted across rows keep their distribution
and their share of the loss but lose any relation to the inputs and to the main task. If MTL's
gain comes from what the extra tasks say, it must vanish under the shuffle.

Applied to the amplification problem (four noisy copies of F as extra tasks) and to the macro
data set (GDP growth next quarter as the main task, the eleven other forecasts as auxiliary
tasks). Train and validation targets are shuffled; test rows score the main task only."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data import Splits
from ..datasets import load_dataset
from . import amplification
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

CLAIM = "shuffling the extra tasks' targets across rows removes MTL's benefit"
MACRO_MAIN = "realgdp_h1"


def shuffled(splits: Splits, targets: Sequence[str], seed: int) -> Splits:
    """``targets`` permuted across rows within the training and the validation table (one
    permutation per column); the test table is left as it is."""
    rng = np.random.default_rng(seed)

    def permute(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        for column in targets:
            frame[column] = rng.permutation(frame[column].to_numpy())
        return frame

    return Splits(permute(splits.train), permute(splits.validation), splits.test)


def synthetic_problem(seed: int, quick: bool) -> tuple[Splits, list[str], list[str], str]:
    """The amplification problem with four noisy copies: splits, inputs, extra tasks, main."""
    n_train, noise, copies = (80, 1.0, 2) if quick else (100, 1.0, 4)
    frame, sizes = amplification.generate(seed, n_train, noise, copies)
    splits = split_frame(frame, sizes["n_train"], sizes["n_validation"])
    return (
        splits,
        columns("x", amplification.N_INPUTS),
        amplification.extra_tasks(copies),
        "T",
    )


def macro_problem() -> tuple[Splits, list[str], list[str], str]:
    """The macro data set's fixed time split: splits, inputs, auxiliary forecasts, main."""
    data = load_dataset("macro")
    splits = Splits(*(data.frame.iloc[data.splits[k]] for k in ("train", "validation", "test")))
    targets = [t.name for t in data.tasks]
    features = [c for c in data.frame.columns if c not in targets]
    return splits, features, [t for t in targets if t != MACRO_MAIN], MACRO_MAIN


def settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"problems": ["amplification"], "epochs": 30, "shared": [32], "patience": 30}
    return {"problems": ["amplification", "macro"], "epochs": 300, "shared": [32], "patience": 30}


def verdict(contrasts: Sequence[dict[str, Any]]) -> str:
    """Per problem: the claim holds where MTL beats STL and its shuffled copy while the
    shuffled copy does not beat STL; without a benefit there is nothing to remove."""
    parts = []
    for problem in dict.fromkeys(c["problem"] for c in contrasts):
        by = {
            c["label"].split(": ", 1)[1]: c["outcome"] for c in contrasts if c["problem"] == problem
        }
        real, control, gap = by["MTL vs STL"], by["shuffled vs STL"], by["MTL vs shuffled"]
        if real != BETTER:
            parts.append(f"{problem}: no benefit to remove (MTL vs STL: {real})")
        elif control == BETTER:
            parts.append(f"{problem}: not reproduced, the shuffled tasks help as well")
        elif gap == BETTER:
            parts.append(f"{problem}: reproduced (MTL better than STL and than shuffled)")
        else:
            parts.append(
                f"{problem}: partly reproduced (shuffled not better than STL, "
                f"MTL vs shuffled: {gap})"
            )
    return f"{CLAIM} — " + "; ".join(parts)


@register_experiment(
    "shuffle-control",
    "MTL vs the same MTL with the extra tasks' targets shuffled across rows, on the "
    "amplification problem and on macro (GDP growth with 11 auxiliary forecasts)",
    CLAIM,
)
def run(seeds: Sequence[int], out: Path, quick: bool) -> dict[str, Any]:
    s = settings(quick)
    rows, contrasts = [], []
    for problem in s["problems"]:
        arms: dict[str, list[float]] = {"STL": [], "MTL": [], "shuffled": []}
        for seed in seeds:
            splits, features, extra, main = (
                synthetic_problem(seed, quick) if problem == "amplification" else macro_problem()
            )
            tasks = [regression(main)] + [regression(t, auxiliary=True) for t in extra]
            common = {
                "features": features,
                "tasks": tasks,
                "shared": s["shared"],
                "seed": seed,
                "epochs": s["epochs"],
                "patience": s["patience"],
            }
            single, multi = stl_vs_mtl(config(splits, **common), splits)
            control = shuffled(splits, extra, seed)
            arms["STL"].append(single[main])
            arms["MTL"].append(multi[main])
            arms["shuffled"].append(fit_score(config(control, **common), control, main))
            rows.append({"seed": seed, "problem": problem, **{a: v[-1] for a, v in arms.items()}})
        for label, base, treat in (
            ("MTL vs STL", "STL", "MTL"),
            ("shuffled vs STL", "STL", "shuffled"),
            ("MTL vs shuffled", "shuffled", "MTL"),
        ):
            found = contrast(
                f"{problem}: {label}", (base, arms[base]), (treat, arms[treat]), metric="rmse"
            )
            contrasts.append({**found, "problem": problem})
    problems = s["problems"]
    plot = plot_arms(
        out / "shuffle_control.png",
        problems,
        {
            arm: [
                next(c for c in contrasts if c["problem"] == p and c[role] == arm)[
                    f"{role}_per_seed"
                ]
                for p in problems
            ]
            for arm, role in (("STL", "baseline"), ("MTL", "treatment"), ("shuffled", "treatment"))
        },
        ylabel="test RMSE of the main task",
        title=f"Shuffle control, {len(seeds)} seeds (compare the bars within a group)",
    )
    return {
        "settings": {**s, "macro_main_task": MACRO_MAIN, "batch_size": 32, "lr": 3e-3},
        "per_seed": rows,
        "contrasts": contrasts,
        "verdict": verdict(contrasts),
        "plots": [plot.name],
    }
