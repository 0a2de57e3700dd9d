"""Synthetic tables with a label column for every task kind, and tiny configs, for the tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import polytask as pt
from polytask.balancing import make_balancer

FEATURES = ["x0", "x1", "x2", "x3", "color"]
SPECIES = np.array(["ant", "bee", "cat"])


def make_frame(n: int = 240, seed: int = 0, *, missing: float = 0.0) -> pd.DataFrame:
    """Four numeric features, one categorical, and a label column for every task kind.

    ``price`` regression, ``sold`` binary, ``species`` multiclass, ``tag_a``/``tag_b`` a
    multilabel pair, ``visits`` count, ``aux`` a regression meant as an auxiliary task.
    ``missing`` blanks that fraction of every label column (at random, per column).
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    frame = pd.DataFrame(x, columns=FEATURES[:4])
    frame["color"] = rng.choice(["red", "green", "blue"], size=n)
    shift = frame["color"].map({"red": 1.0, "green": 0.0, "blue": -1.0}).to_numpy()
    frame["price"] = 2 * x[:, 0] - x[:, 1] + shift + 0.1 * rng.normal(size=n)
    frame["sold"] = (x[:, 1] + x[:, 2] > 0).astype(int)
    scores = np.stack([x[:, 0], x[:, 2], -x[:, 0] - x[:, 2]], axis=1)
    frame["species"] = SPECIES[scores.argmax(axis=1)]
    frame["tag_a"] = (x[:, 0] > 0).astype(int)
    frame["tag_b"] = (x[:, 3] > 0).astype(int)
    frame["visits"] = rng.poisson(np.exp(0.8 * x[:, 0] + 0.8 * x[:, 3]))
    frame["aux"] = x[:, 0] + x[:, 1] ** 2
    if missing:
        for column in ("price", "sold", "species", "tag_a", "tag_b", "visits", "aux"):
            blank = rng.random(n) < missing
            frame[column] = frame[column].astype(object if column == "species" else float)
            frame.loc[blank, column] = np.nan
    return frame


ALL_TASKS = [
    pt.Task(name="price", kind="regression"),
    pt.Task(name="sold", kind="binary"),
    pt.Task(name="species", kind="multiclass"),
    pt.Task(name="tags", kind="multilabel", target=["tag_a", "tag_b"]),
    pt.Task(name="visits", kind="count"),
    pt.Task(name="aux", kind="regression", role="auxiliary"),
]


def make_config(
    train: str | Path,
    tasks: Sequence[pt.Task] = tuple(ALL_TASKS),
    *,
    data: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    **train_options: Any,
) -> pt.Config:
    """A tiny, CPU-only, deterministic config: one 16-wide shared layer, a few epochs."""
    options: dict[str, Any] = {
        "epochs": 5,
        "batch_size": 32,
        "lr": 1e-2,
        "device": "cpu",
        "patience": None,
    }
    options.update(train_options)
    return pt.Config(
        data=pt.DataConfig(train=train, **(data or {})),
        tasks=list(tasks),
        model=pt.ModelConfig(**{"shared": [16], **(model or {})}),
        train=pt.TrainConfig(**options),
    )


def make_splits(frame: pd.DataFrame, validation: int = 40, test: int = 40) -> pt.Splits:
    """Consecutive train / validation / test blocks of ``frame`` (indices reset)."""
    n_train = len(frame) - validation - test
    parts = (frame.iloc[:n_train], frame.iloc[n_train : n_train + validation], frame.iloc[-test:])
    return pt.Splits(*(p.reset_index(drop=True) for p in parts))


def three_task_losses(packed: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """Losses of tasks a (regression), b (3 classes) and c (two outputs, L1) on packed outputs
    ``(N, 3, ≥3)``, against seeded random targets."""
    g = torch.Generator().manual_seed(seed)
    n = len(packed)
    return {
        "a": (packed[:, 0, 0] - torch.randn(n, generator=g)).pow(2).mean(),
        "b": F.cross_entropy(packed[:, 1, :3], torch.randint(0, 3, (n,), generator=g)),
        "c": (packed[:, 2, :2] - torch.randn(n, 2, generator=g)).abs().mean(),
    }


def assert_balanced_gradients(
    model: pt.MultiTaskModel,
    x_num: torch.Tensor,
    x_cat: torch.Tensor,
    balancer: str,
    options: dict[str, Any],
    outputs: bool,
) -> None:
    """After one balancer step on ``three_task_losses``, a joint parameter's gradient is
    Σ_t w_t α_t ∇L_t with the balancer's weights w, a task-specific one's Σ_t α_t ∇L_t (its
    own loss only), and no parameter is left without one."""
    alphas = {"a": 1.0, "b": 2.0, "c": 0.5}
    tasks = [pt.Task(name=n, kind="regression", weight=w) for n, w in alphas.items()]
    packed, z = model(x_num, x_cat, packed=True, features=True)
    losses = three_task_losses(packed)
    params = list(model.parameters())
    per_task = {
        n: torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        for n, loss in losses.items()
    }
    weights = make_balancer(balancer, tasks, options).backward(
        losses, model=model, features=z, outputs=packed if outputs else None
    )
    _, joint = model.split_parameters()
    joint_ids = {id(p) for p in joint}
    weighted = balancer == "gradnorm" or not joint
    for i, p in enumerate(params):
        by_w = weighted or id(p) in joint_ids
        scale = {n: alphas[n] * (weights[n] if by_w else 1.0) for n in alphas}
        expected = sum(scale[n] * (g[i] if g[i] is not None else 0.0) for n, g in per_task.items())
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), i
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-6)


TORCHRUN = Path(sys.executable).parent / "torchrun"
needs_torchrun = pytest.mark.skipif(
    not (torch.distributed.is_available() and TORCHRUN.is_file()), reason="needs torchrun"
)


#: Prepended to every torchrun script: ``leave_together()`` ends a rank once both have written
#: their results. A barrier, then ``os._exit``: no Gloo teardown, which now and then aborts a
#: rank at exit ("terminate called without an active exception", SIGABRT) after all the work is
#: done, seen in about 1 run in 5 of these tests on the 2-core machine.
_LEAVE_TOGETHER = """
def leave_together():
    import os
    import sys

    import torch.distributed as dist

    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

"""


def run_on_two_ranks(script: str, directory: Path, *args: str) -> None:
    """Run ``script`` (Python source) under torchrun with 2 local ranks, the directory and
    ``args`` as its arguments; fail the test with the ranks' output tails if it fails."""
    path = directory / "ddp_script.py"
    path.write_text(_LEAVE_TOGETHER + script)
    result = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(path), str(directory), *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=directory,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
