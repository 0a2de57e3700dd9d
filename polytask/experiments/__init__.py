"""Reproducible experiments: the seed's claims about why multi-task learning helps, each on data
it generates itself (or a registered data set), trained with polytask's public API.

``EXPERIMENTS`` maps a name to an ``Experiment``; ``run_experiment(name, seeds=…, out=…)``
writes ``out/result.json`` (settings, per-seed numbers, contrasts with mean ± std, paired
t-test and 95% interval, and a verdict computed from them) and the experiment's plots.
"""

from . import (  # noqa: F401  (each module registers its experiment)
    amplification,
    attribute_selection,
    capacity,
    eavesdropping,
    inputs_as_outputs,
    learning_rate,
    learning_speed,
    noise_task,
    representation_bias,
    shuffle_control,
)
from .base import EXPERIMENTS, Experiment, register_experiment, run_experiment

__all__ = ["EXPERIMENTS", "Experiment", "register_experiment", "run_experiment"]
