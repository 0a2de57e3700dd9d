"""The experiment registry, paired contrasts over seeds, and the helpers experiments share.

An experiment generates its own data from a seed, trains with polytask's public API and returns
a result: its settings, the numbers of every seed, ``contrasts`` (two arms compared over seeds:
mean ± std, the paired difference with its 95% interval, the paired t-test) and a ``verdict``
that its own function derives from the contrasts.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..compare import ALPHA, compare
from ..config import Config, DataConfig, ModelConfig, TrainConfig
from ..data import Splits
from ..errors import ConfigError, one_of
from ..evaluate import confidence_interval, mean_std, paired_test
from ..io import write_json
from ..tasks import Task
from ..train import fit

#: Outcomes of a contrast: the treatment arm against the baseline arm.
BETTER = "better"
WORSE = "worse"
NO_DIFFERENCE = "no significant difference"
UNTESTED = "not enough seeds"

Runner = Callable[[Sequence[int], Path, bool], dict[str, Any]]


@dataclass(frozen=True)
class Experiment:
    """A registered experiment: ``run(seeds, out, quick)`` writes ``out`` and returns a result."""

    name: str
    description: str
    claim: str
    run: Runner


EXPERIMENTS: dict[str, Experiment] = {}


def register_experiment(name: str, description: str, claim: str) -> Callable[[Runner], Runner]:
    """Register ``run`` under ``name`` (the name the CLI takes)."""

    def decorate(run: Runner) -> Runner:
        EXPERIMENTS[name] = Experiment(name, description, claim, run)
        return run

    return decorate


def run_experiment(
    name: str, *, seeds: int | Sequence[int] = 10, out: str | Path, quick: bool = False
) -> dict[str, Any]:
    """Run experiment ``name`` for ``seeds`` (a count: 0 … n-1, or the seeds themselves), write
    ``out/result.json`` and its plots, and return the result."""
    if name not in EXPERIMENTS:
        raise ConfigError(f"experiment {name!r} is not known ({one_of(sorted(EXPERIMENTS))})")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ConfigError("seeds: at least one seed is needed")
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    experiment = EXPERIMENTS[name]
    started = time.perf_counter()
    result = experiment.run(seed_list, directory, quick)
    differences = plot_differences(
        directory / "differences.png", result["contrasts"], f"{name}, {len(seed_list)} seed(s)"
    )
    result = {
        "experiment": name,
        "description": experiment.description,
        "claim": experiment.claim,
        "quick": quick,
        "seeds": seed_list,
        **result,
        "plots": [*result["plots"], differences.name],
        "seconds": time.perf_counter() - started,
        "torch_threads": torch.get_num_threads(),
    }
    write_json(directory / "result.json", result)
    return json.loads((directory / "result.json").read_text())  # as written: NaN → None


# ---- contrasts ------------------------------------------------------------------------------


def contrast(
    label: str,
    baseline: tuple[str, Sequence[float]],
    treatment: tuple[str, Sequence[float]],
    *,
    metric: str,
    lower_is_better: bool = True,
) -> dict[str, Any]:
    """Two arms over the same seeds: mean ± std of each, the per-seed difference
    (treatment − baseline) with its 95% t-interval, the paired t-test, and the outcome
    (``better`` / ``worse`` for the treatment only when p < ALPHA and the interval excludes 0)."""
    (base_name, base), (treat_name, treat) = baseline, treatment
    base, treat = [float(v) for v in base], [float(v) for v in treat]
    differences = [t - b for t, b in zip(treat, base, strict=True)]
    ci = confidence_interval(differences, 1 - ALPHA)
    p = paired_test(treat, base)
    (base_mean, base_std), (treat_mean, treat_std) = mean_std(base), mean_std(treat)
    return {
        "label": label,
        "metric": metric,
        "lower_is_better": lower_is_better,
        "baseline": base_name,
        "treatment": treat_name,
        "baseline_per_seed": base,
        "treatment_per_seed": treat,
        "baseline_mean": base_mean,
        "baseline_std": base_std,
        "treatment_mean": treat_mean,
        "treatment_std": treat_std,
        "difference_per_seed": differences,
        "difference_mean": mean_std(differences)[0],
        "difference_ci95": list(ci),
        "p_value": p,
        "outcome": outcome(differences, p, ci, lower_is_better=lower_is_better),
    }


def outcome(
    differences: Sequence[float], p: float, ci: Sequence[float], *, lower_is_better: bool
) -> str:
    """The treatment's outcome from its per-seed differences to the baseline."""
    if len(differences) < 2:
        return UNTESTED
    excludes_zero = not math.isnan(ci[0]) and (ci[0] > 0 or ci[1] < 0)
    if math.isnan(p) or p >= ALPHA or not excludes_zero:
        return NO_DIFFERENCE
    lower = float(np.mean(differences)) < 0
    return BETTER if lower == lower_is_better else WORSE


def tally(contrasts: Sequence[dict[str, Any]]) -> dict[str, int]:
    """How many contrasts came out better, worse, not different, untested."""
    counts = dict.fromkeys((BETTER, WORSE, NO_DIFFERENCE, UNTESTED), 0)
    for c in contrasts:
        counts[c["outcome"]] += 1
    return counts


def verdict_from(contrasts: Sequence[dict[str, Any]], claim: str) -> str:
    """``reproduced`` when the treatment is significantly better in at least half of the
    contrasts and worse in none; ``partly reproduced`` when better in fewer, worse in none;
    ``contradicted`` when worse and never better; ``mixed`` when both; else ``not reproduced``."""
    counts, m = tally(contrasts), len(contrasts)
    better, worse = counts[BETTER], counts[WORSE]
    if counts[UNTESTED] == m:
        return f"untested (one seed; run two or more): {claim}"
    if better and not worse:
        status = "reproduced" if 2 * better >= m else "partly reproduced"
    elif worse and not better:
        status = "contradicted"
    elif worse and better:
        status = "mixed"
    else:
        status = "not reproduced"
    return (
        f"{status}: {claim} — significantly better in {better}/{m}, worse in {worse}/{m}, "
        f"no significant difference in {counts[NO_DIFFERENCE]}/{m} (paired t-test p < {ALPHA} "
        "and 95% CI of the difference excluding 0)"
    )


def describe(c: dict[str, Any], digits: int = 4) -> str:
    """One contrast in words: ``label: treatment a ± s vs baseline b ± s (p = …)``."""
    p = c["p_value"]
    p_text = "p undefined" if p is None or math.isnan(p) else f"p = {p:.3g}"
    return (
        f"{c['label']}: {c['treatment']} {c['treatment_mean']:.{digits}f} vs {c['baseline']} "
        f"{c['baseline_mean']:.{digits}f} {c['metric']} ({p_text}, {c['outcome']})"
    )


# ---- data and training ----------------------------------------------------------------------


def split_frame(frame: pd.DataFrame, n_train: int, n_validation: int) -> Splits:
    """The first ``n_train`` rows train, the next ``n_validation`` validate, the rest test."""
    end = n_train + n_validation
    return Splits(
        frame.iloc[:n_train].reset_index(drop=True),
        frame.iloc[n_train:end].reset_index(drop=True),
        frame.iloc[end:].reset_index(drop=True),
    )


def columns(prefix: str, n: int) -> list[str]:
    """``prefix0`` … ``prefix{n-1}``."""
    return [f"{prefix}{i}" for i in range(n)]


def config(
    splits: Splits,
    *,
    features: list[str],
    tasks: list[Task],
    shared: list[int],
    seed: int,
    epochs: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    patience: int | None = 30,
    dropout: float = 0.0,
    weight_decay: float = 0.0,
    activation: str = "relu",
) -> Config:
    """A config for generated tables: pinned inputs, linear heads, Adam, CPU."""
    return Config(
        data=DataConfig(train=splits.train, features=features),
        tasks=tasks,
        model=ModelConfig(shared=shared, dropout=dropout, activation=activation),
        train=TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            patience=patience,
            seed=seed,
            weight_decay=weight_decay,
            device="cpu",
        ),
    )


def stl_vs_mtl(cfg: Config, splits: Splits) -> tuple[dict[str, float], dict[str, float]]:
    """Test primary metric of each main task for STL and MTL (``compare`` at the config's seed:
    same split, shape, budget and stopping rule)."""
    result = compare(cfg, seeds=[cfg.train.seed], splits=splits)
    primary = {t.name: t.primary_metric for t in result.main_tasks}
    stl, mtl = (
        {name: scores[0][primary[name]] for name, scores in result.scores[arm].items()}
        for arm in ("stl", "mtl")
    )
    return stl, mtl


def fit_score(cfg: Config, splits: Splits, task: str, metric: str = "rmse") -> float:
    """``fit`` the config and score ``task`` on the test table."""
    return float(fit(cfg, splits=splits).metrics["test"][task][metric])


def regression(name: str, *, auxiliary: bool = False, weight: float = 1.0) -> Task:
    """A regression task on the column ``name``, main or auxiliary."""
    return Task(
        name=name, kind="regression", role="auxiliary" if auxiliary else "main", weight=weight
    )


# ---- plots ----------------------------------------------------------------------------------


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (imported only when a plot is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_arms(
    path: Path,
    groups: Sequence[str],
    arms: dict[str, Sequence[Sequence[float]]],
    *,
    ylabel: str,
    title: str,
    xlabel: str = "",
) -> Path:
    """Bars of mean ± std per arm within each group, every seed drawn as a dot."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(min(14.0, max(4.5, 0.55 * len(groups) * len(arms) + 2)), 3.8))
    width = 0.8 / len(arms)
    x = np.arange(len(groups))
    for i, (arm, per_group) in enumerate(arms.items()):
        offset = x - 0.4 + width * (i + 0.5)
        means = [float(np.mean(v)) for v in per_group]
        stds = [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in per_group]
        ax.bar(offset, means, width * 0.9, yerr=stds, capsize=3, label=arm, alpha=0.75)
        for xo, values in zip(offset, per_group, strict=True):
            ax.plot(np.full(len(values), xo), values, ".", color="black", ms=3, alpha=0.6)
    ax.set_xticks(x, [g.replace(", ", "\n") for g in groups], fontsize=7)
    ax.set_ylabel(ylabel)
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_differences(path: Path, contrasts: Sequence[dict[str, Any]], title: str) -> Path:
    """One row per contrast: the per-seed differences (treatment − baseline) as dots, their
    mean and 95% t-interval, and zero; each row scaled by its baseline mean so that rows of
    different metrics share one axis (in % of the baseline)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(contrasts) + 1.6))
    for i, c in enumerate(contrasts):
        scale = 100.0 / abs(c["baseline_mean"]) if c["baseline_mean"] else 1.0
        y = len(contrasts) - 1 - i
        values = np.asarray(c["difference_per_seed"], dtype=float) * scale
        ax.plot(values, np.full(len(values), y), ".", color="grey", ms=4, alpha=0.6)
        lo, hi = c["difference_ci95"]
        good = c["outcome"] == BETTER
        color = "C2" if good else "C3" if c["outcome"] == WORSE else "C0"
        if lo is not None and not math.isnan(lo):
            ax.plot([lo * scale, hi * scale], [y, y], "-", color=color, lw=2.5)
        ax.plot(c["difference_mean"] * scale, y, "o", color=color, ms=6)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(
        range(len(contrasts)),
        [
            f"{c['label']} ({c['metric']}{' ↓' if c['lower_is_better'] else ' ↑'})"
            for c in reversed(contrasts)
        ],
        fontsize=7,
    )
    ax.set_xlabel("treatment − baseline, % of the baseline mean (dot: mean; bar: 95% CI)")
    ax.set_title(
        f"{title}; green: treatment better, red: worse, blue: no significant difference", fontsize=8
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
