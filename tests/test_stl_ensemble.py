"""The vectorized STL baseline: the stacked ensemble trains the networks that separate ``fit``
runs with the same seed train (weights, histories, stopping epochs and test scores, to float
rounding), and falls back to separate runs where it could not."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from synthetic import FEATURES, make_config, make_frame, make_splits

import polytask as pt
from polytask.baselines import (
    ONE_TASK_PLAIN_GRADIENT,
    fit_stl,
    fit_stl_seeds,
    labelled_rows,
    sequential_reason,
)

PRICE = pt.Task(name="price", kind="regression")
SOLD = pt.Task(name="sold", kind="binary", weight=0.5)
VISITS = pt.Task(name="visits", kind="count")


def _frame(n: int, seed: int, missing: dict[str, float]) -> pd.DataFrame:
    """The synthetic table with each named label column blanked at its own rate, so the tasks
    have unequal labelled rows (and so unequal batches per epoch)."""
    frame = make_frame(n=n, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for column, rate in missing.items():
        frame[column] = frame[column].astype(object if column == "species" else float)
        frame.loc[rng.random(n) < rate, column] = np.nan
    return frame


def _assert_same_runs(separate: dict[str, pt.Run], stacked: dict[str, pt.Run]) -> None:
    assert list(separate) == list(stacked)
    for name, run in separate.items():
        other = stacked[name]
        a, b = run.model.state_dict(), other.model.state_dict()
        assert list(a) == list(b)
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-5, msg=f"{name} {key}")
        for key in ("best_epoch", "stopped_early"):
            assert other.metrics[key] == run.metrics[key], (name, key)
        for split in ("validation", "test"):
            if split in run.metrics:
                scores = other.metrics[split][name]
                assert scores == pytest.approx(run.metrics[split][name], rel=1e-4), (name, split)
        assert run.history is not None and other.history is not None
        assert list(other.history.columns) == list(run.history.columns)
        columns = [c for c in run.history.columns if c != "seconds"]
        np.testing.assert_allclose(
            other.history[columns].to_numpy(float), run.history[columns].to_numpy(float), rtol=1e-4
        )


def _stacked(runs: dict[str, pt.Run]) -> set[str]:
    """The tasks whose network was trained in a stacked ensemble."""
    return {name for name, run in runs.items() if "stl_ensemble_size" in run.metrics}


# ---- equality with separate runs ------------------------------------------------------------
SETTINGS: dict[str, dict[str, Any]] = {
    # Adam, early stopping: members stop at different epochs, the others go on
    "adam": {"epochs": 12, "patience": 2, "lr": 3e-2},
    "sgd": {
        "optimizer": "sgd",
        "momentum": 0.9,
        "weight_decay": 1e-3,
        "scheduler": "cosine",
        "grad_clip": 0.5,
        "epochs": 5,
    },
    "adamw": {
        "optimizer": "adamw",
        "weight_decay": 0.1,
        "scheduler": "plateau",
        "patience": 4,
        "epochs": 10,
    },
    # dropout in the trunk's two layers and in the heads' hidden layer: each member draws the
    # masks of its separate run
    "dropout": {
        "epochs": 10,
        "patience": 2,
        "lr": 3e-2,
        "model": {"shared": [16, 12], "head": [8], "dropout": 0.3},
    },
}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_the_ensemble_trains_the_networks_of_separate_runs(setting: str) -> None:
    frame = _frame(260, seed=3, missing={"price": 0.1, "sold": 0.55, "visits": 0.3})
    splits = make_splits(frame[FEATURES + ["price", "sold", "visits"]], validation=50, test=50)
    tasks = [PRICE, SOLD, VISITS]
    config = make_config("unused.csv", tasks, batch_size=32, seed=5, **SETTINGS[setting])
    rows = {t.name: len(labelled_rows(splits, t).train) for t in tasks}
    assert len({-(-n // 32) for n in rows.values()}) == 3  # unequal batches per epoch

    separate = fit_stl(config, splits, vectorize="off")
    stacked = fit_stl(config, splits)

    assert _stacked(stacked) == {"price", "sold", "visits"}
    assert not _stacked(separate)
    _assert_same_runs(separate, stacked)
    if setting == "adam":  # a member frozen early kept its best weights while others trained
        epochs = {len(r.history) for r in separate.values()}
        assert len(epochs) > 1 and any(r.metrics["stopped_early"] for r in separate.values())


def test_members_are_grouped_by_shape_across_kinds() -> None:
    """A 2-class multiclass task and a 2-label multilabel task share a shape (one ensemble),
    so do a count and a binary task; a 3-class task and a task with its own head widths are
    alone. With a linear path beside the trunk, the predictions are the separate runs'."""
    frame = _frame(200, seed=7, missing={"species": 0.2, "tag_a": 0.3, "tag_b": 0.3})
    frame["pair"] = np.where(frame["sold"] == 1, "yes", "no")
    frame.loc[np.random.default_rng(0).random(len(frame)) < 0.4, "pair"] = np.nan
    columns = FEATURES + ["species", "tag_a", "tag_b", "pair", "price", "sold", "visits"]
    splits = make_splits(frame[columns])
    tasks = [
        pt.Task(name="species", kind="multiclass"),
        pt.Task(name="tags", kind="multilabel", target=["tag_a", "tag_b"]),
        pt.Task(name="pair", kind="multiclass"),
        PRICE.model_copy(update={"head": [8]}),
        SOLD,
        VISITS,
    ]
    config = make_config(
        "unused.csv", tasks, epochs=3, batch_size=32, model={"head": [4], "linear_path": True}
    )
    separate = fit_stl(config, splits, vectorize="off")
    stacked = fit_stl(config, splits)
    assert _stacked(stacked) == {"tags", "pair", "sold", "visits"}
    _assert_same_runs(separate, stacked)
    for name in separate:
        pd.testing.assert_frame_equal(
            stacked[name].predict(splits.test), separate[name].predict(splits.test), rtol=1e-4
        )


def test_members_without_validation_rows_keep_their_last_weights() -> None:
    frame = _frame(160, seed=2, missing={"price": 0.2, "sold": 0.4})
    numeric = FEATURES[:4] + ["price", "sold"]  # and no categorical input
    train = frame[numeric].iloc[:120]
    test = frame[numeric].iloc[120:].reset_index(drop=True)
    splits = pt.Splits(train, train.iloc[:0], test)
    config = make_config("unused.csv", [PRICE, SOLD], epochs=3, patience=1)
    separate = fit_stl(config, splits, vectorize="off")
    stacked = fit_stl(config, splits)
    assert _stacked(stacked) == {"price", "sold"}
    assert all(r.metrics["best_epoch"] == 3 for r in stacked.values())
    _assert_same_runs(separate, stacked)


def test_every_balancer_the_ensemble_accepts_steps_a_lone_task_by_its_gradient() -> None:
    """For each balancer the ensemble trains, its one-task step is the plain α-weighted one:
    the separate runs with that balancer give the ensemble's networks."""
    assert ONE_TASK_PLAIN_GRADIENT.issubset(pt.BALANCERS)
    frame = _frame(110, seed=4, missing={"sold": 0.3})
    splits = make_splits(frame[FEATURES + ["price", "sold"]], validation=20, test=20)
    tasks = [PRICE, SOLD]
    stacked = fit_stl(make_config("unused.csv", tasks, epochs=2, batch_size=32), splits)
    for name in sorted(ONE_TASK_PLAIN_GRADIENT):
        try:
            pt.make_balancer(name, tasks)
        except pt.ConfigError:  # its solver is not installed here
            continue
        config = make_config("unused.csv", tasks, epochs=2, batch_size=32, balancer=name)
        assert sequential_reason(config) is None
        separate = fit_stl(config, splits, vectorize="off")
        for task in tasks:
            a = separate[task.name].model.state_dict()
            b = stacked[task.name].model.state_dict()
            for key in a:
                torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-5, msg=name)


# ---- several seeds in one ensemble ---------------------------------------------------------
def _seeded(config: pt.Config, seed: int) -> pt.Config:
    return config.model_copy(update={"train": config.train.model_copy(update={"seed": seed})})


@pytest.mark.parametrize("setting", ["adam", "dropout"])
def test_several_seeds_in_one_ensemble_train_each_seeds_networks(setting: str) -> None:
    """Each seed's networks, histories, stopping epochs and scores are those of ``fit_stl`` for
    that seed alone and of its separate runs, though members of every seed stop at their own
    epochs in one stack (with dropout, each draws its own seed's masks)."""
    frame = _frame(260, seed=3, missing={"price": 0.1, "sold": 0.55, "visits": 0.3})
    splits = make_splits(frame[FEATURES + ["price", "sold", "visits"]], validation=50, test=50)
    config = make_config("unused.csv", [PRICE, SOLD, VISITS], batch_size=32, **SETTINGS[setting])
    seeds = [5, 9, 2]

    together = fit_stl_seeds(config, splits, seeds)

    assert list(together) == seeds
    stopped_at = set()
    for seed in seeds:
        _assert_same_runs(fit_stl(_seeded(config, seed), splits), together[seed])
        _assert_same_runs(fit_stl(_seeded(config, seed), splits, vectorize="off"), together[seed])
        for run in together[seed].values():
            assert run.config.train.seed == seed
            assert run.metrics["stl_ensemble_size"] == 3 * len(seeds)
            stopped_at.add(len(run.history))
    assert len(stopped_at) > 1  # members left the stack at different epochs


def test_each_seed_draws_its_own_initial_weights_and_batch_orders() -> None:
    """Inside the stack, the member of seed s starts from the weights ``fit`` seeds with s and
    shuffles with a generator seeded with s, so two seeds of one task differ."""
    from polytask.baselines import _Ensemble, _members, _own_rows, feature_columns, stl_config
    from polytask.train import prepare, seeded_model

    splits = make_splits(_frame(150, seed=8, missing={"sold": 0.3})[FEATURES + ["price", "sold"]])
    config = make_config("unused.csv", [PRICE, SOLD], epochs=2)
    features = feature_columns(config, splits)
    own = _own_rows(splits, [PRICE, SOLD], features, signals=False)
    configs = {
        s: {t.name: stl_config(_seeded(config, s), t, features) for t in (PRICE, SOLD)}
        for s in (0, 1)
    }
    ensemble = _Ensemble(_members([PRICE, SOLD], configs, own), config.train, own_masks=True)
    orders = ensemble._orders().tolist()
    initial = dict(zip(ensemble.keys, ensemble.params, strict=True))
    for k, member in enumerate(ensemble.members):
        task_config = configs[member.seed][member.task.name]
        alone = seeded_model(
            task_config, prepare(task_config, own[member.task.name], [member.task])[0]
        )
        for key, value in alone.state_dict().items():
            torch.testing.assert_close(initial[key][k].detach(), value, rtol=0, atol=0)
        n = len(member.data["train"])
        expected = torch.randperm(n, generator=torch.Generator().manual_seed(member.seed))
        assert orders[k][:n] == expected.tolist()
    for task in ("price", "sold"):
        first, second = (
            next(k for k, m in enumerate(ensemble.members) if m.key == f"{task}@{s}")
            for s in (0, 1)
        )
        assert orders[first] != orders[second]
        assert not torch.equal(ensemble.params[0][first], ensemble.params[0][second])
    runs = fit_stl_seeds(config, splits, [0, 1])
    for task in ("price", "sold"):
        a, b = (runs[s][task].model.state_dict() for s in (0, 1))
        assert not all(torch.equal(a[key], b[key]) for key in a)


def test_tasks_of_several_shapes_stack_across_seeds() -> None:
    """Shapes group as for one seed; a shape only one task has stacks with its other seeds'
    copies. Every network is the separate run of its seed and task, also as members of every
    kind leave the stacks early (``sold`` has no validation label, so it never stops)."""
    frame = _frame(200, seed=7, missing={"species": 0.2, "tag_a": 0.3, "tag_b": 0.3})
    columns = FEATURES + ["species", "tag_a", "tag_b", "price", "sold", "visits"]
    splits = make_splits(frame[columns])
    splits.validation["sold"] = np.nan
    tasks = [
        pt.Task(name="species", kind="multiclass"),
        pt.Task(name="tags", kind="multilabel", target=["tag_a", "tag_b"]),
        PRICE.model_copy(update={"head": [8]}),
        SOLD,
        VISITS,
    ]
    config = make_config(
        "unused.csv", tasks, epochs=10, batch_size=32, lr=5e-2, patience=1, model={"head": [4]}
    )
    started: list[tuple[int, str]] = []
    together = fit_stl_seeds(
        config, splits, [1, 4], on_task=lambda s, t: started.append((s, t.name))
    )
    assert sorted(started) == sorted((s, t.name) for s in (1, 4) for t in tasks)
    stopped: set[tuple[int, str]] = set()
    for seed in (1, 4):
        separate = fit_stl(_seeded(config, seed), splits, vectorize="off")
        _assert_same_runs(separate, together[seed])
        sizes = {name: run.metrics["stl_ensemble_size"] for name, run in together[seed].items()}
        assert sizes == {"species": 2, "tags": 2, "price": 2, "sold": 4, "visits": 4}
        assert together[seed]["sold"].metrics["best_epoch"] == 10
        stopped |= {(seed, n) for n, r in together[seed].items() if r.metrics["stopped_early"]}
    assert {name for _, name in stopped} == {"species", "tags", "price", "visits"}


def test_several_seeds_fall_back_to_separate_runs_as_one_seed_does() -> None:
    splits = make_splits(make_frame(n=120, seed=1)[FEATURES + ["price", "sold"]])
    config = make_config("unused.csv", [PRICE, SOLD], epochs=1, model={"norm": "batch"})
    runs = fit_stl_seeds(config, splits, [0, 1])
    assert all(not _stacked(by_task) for by_task in runs.values())
    assert [runs[s]["price"].config.train.seed for s in (0, 1)] == [0, 1]
    with pytest.raises(pt.ConfigError, match="seeds: \\[0, 0\\] repeats a seed"):
        fit_stl_seeds(config, splits, [0, 0])


# ---- what falls back to separate runs -------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "train", "reason"),
    [
        ({"norm": "batch"}, {}, "norm"),
        ({}, {"balancer": "uncertainty"}, "balancer"),
        ({}, {"amp": True}, "amp"),
    ],
)
def test_what_the_ensemble_cannot_reproduce_is_fitted_run_by_run(
    model: dict[str, Any], train: dict[str, Any], reason: str
) -> None:
    splits = make_splits(make_frame(n=120, seed=1)[FEATURES + ["price", "sold"]])
    config = make_config("unused.csv", [PRICE, SOLD], epochs=1, model=model, **train)
    assert reason in (sequential_reason(config) or "")
    if train.get("amp"):
        return  # bfloat16 autocast: slow on some CPUs, and the reason is what is tested
    assert not _stacked(fit_stl(config, splits))


def test_an_unknown_vectorize_value_is_refused() -> None:
    splits = make_splits(make_frame(n=120, seed=1)[FEATURES + ["price", "sold"]])
    config = make_config("unused.csv", [PRICE, SOLD], epochs=1)
    with pytest.raises(pt.ConfigError, match="vectorize: 'yes' is not one of exact, dropout, off"):
        fit_stl(config, splits, vectorize="yes")  # type: ignore[arg-type]


def test_dropout_mode_stacks_networks_with_dropout_reproducibly() -> None:
    splits = make_splits(make_frame(n=140, seed=6)[FEATURES + ["price", "sold"]])
    config = make_config("unused.csv", [PRICE, SOLD], epochs=2, model={"dropout": 0.3})
    first = fit_stl(config, splits, vectorize="dropout")
    again = fit_stl(config, splits, vectorize="dropout")
    assert _stacked(first) == {"price", "sold"}
    for name, run in first.items():
        assert run.predict(splits.test).equals(again[name].predict(splits.test))
        assert not run.model.training


def test_a_diverging_member_stops_the_ensemble_with_its_name() -> None:
    splits = make_splits(make_frame(n=120, seed=1)[FEATURES + ["price", "sold"]])
    config = make_config("unused.csv", [PRICE, SOLD], epochs=3, optimizer="sgd", lr=1e12)
    with pytest.raises(pt.RunError, match="training diverged: the loss of price"):
        fit_stl(config, splits)
