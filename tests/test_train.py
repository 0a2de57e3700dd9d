"""Training: every kind learns, one task is STL, seeds, early stopping, checkpoints and resume."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from synthetic import ALL_TASKS, FEATURES, make_config, make_frame, make_splits

import polytask as pt
from polytask.baselines import fit_stl, labelled_rows
from polytask.data import TaskData
from polytask.evaluate import metric_value

TASK = {t.name: t for t in ALL_TASKS}
KIND_TASK = {"regression": "price", "binary": "sold", "multiclass": "species"}
KIND_TASK.update({"multilabel": "tags", "count": "visits"})


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---- every kind learns ---------------------------------------------------------------------
def _constant_score(kind: str, metric: str, train, test) -> float:
    """The best of the obvious constant predictors, scored like the model."""
    if kind in ("regression", "count", "binary"):  # the training mean (a base rate for binary)
        return metric_value(metric, kind, test, np.full(len(test), train.mean()))
    if kind == "multiclass":
        return float(np.mean(test == np.bincount(train).argmax()))
    return max(  # multilabel: all labels off or all on
        metric_value(metric, kind, test, np.full(test.shape, p)) for p in (0.0, 1.0)
    )


@pytest.mark.parametrize("kind", list(KIND_TASK))
def test_every_kind_beats_a_constant_predictor(tmp_path: Path, kind: str) -> None:
    task = TASK[KIND_TASK[kind]]
    frame = make_frame(n=420, seed=3)
    splits = make_splits(frame, validation=60, test=120)
    config = make_config(tmp_path / "unused.csv", [task], epochs=30)
    run = pt.fit(config, splits=splits)

    test = TaskData.from_frame(splits.test, run.preprocessor)
    train = TaskData.from_frame(splits.train, run.preprocessor)
    decode = run.preprocessor.decode_target
    y_test = decode(task, test.targets[task.name], test.masks[task.name])
    y_train = decode(task, train.targets[task.name], train.masks[task.name])
    score = run.evaluate(splits.test)[task.name][task.primary_metric]
    constant = _constant_score(kind, task.primary_metric, y_train, y_test)
    if kind == "regression":
        assert score < 0.5 * constant  # RMSE, where the constant's is about the std of y
    elif kind == "count":
        assert score < 0.75 * constant  # MAE of predicting the training mean
    elif kind == "binary":
        assert constant == 0.5 and score > 0.8  # AUC
    else:
        assert score > constant + 0.15  # accuracy over the majority class; macro-F1


# ---- one task: MTL and STL are the same network ----------------------------------------------
@pytest.mark.parametrize("kind", list(KIND_TASK))
def test_with_one_task_mtl_and_stl_train_the_same_network(tmp_path: Path, kind: str) -> None:
    task = TASK[KIND_TASK[kind]].model_copy(update={"weight": 0.5})
    frame = make_frame(n=160, seed=4, missing=0.2)
    splits = make_splits(frame[FEATURES + task.columns])
    config = make_config(tmp_path / "unused.csv", [task], epochs=3, seed=11)
    # STL trains on its task's labelled rows; so does a one-task MTL model given only those
    mtl = pt.fit(config, splits=labelled_rows(splits, task))
    stl = fit_stl(config, splits)[task.name]
    assert _state_equal(mtl.model, stl.model)
    assert mtl.predict(splits.test).equals(stl.predict(splits.test))
    assert mtl.metrics["test"] == stl.metrics["test"]


def test_stl_baselines_see_the_inputs_of_the_mtl_model(tmp_path: Path) -> None:
    frame = make_frame(n=160, seed=5)
    splits = make_splits(frame)
    tasks = [TASK["price"], TASK["sold"], TASK["aux"]]
    config = make_config(tmp_path / "unused.csv", tasks, epochs=1)
    mtl = pt.fit(config, splits=splits)
    stl = fit_stl(config, splits)
    assert set(stl) == {"price", "sold"}  # auxiliary tasks get no baseline
    for run in stl.values():
        assert run.preprocessor.features == mtl.preprocessor.features
        assert "aux" not in run.preprocessor.features


# ---- seeds and early stopping ---------------------------------------------------------------
def test_the_seed_fixes_the_result(tmp_path: Path) -> None:
    splits = make_splits(make_frame(n=160, seed=6))
    runs = [
        pt.fit(make_config(tmp_path / "unused.csv", epochs=2, seed=seed), splits=splits)
        for seed in (0, 0, 1)
    ]
    assert _state_equal(runs[0].model, runs[1].model)
    assert not _state_equal(runs[0].model, runs[2].model)


def test_early_stopping_keeps_the_weights_of_the_best_validation_epoch(tmp_path: Path) -> None:
    splits = make_splits(make_frame(n=160, seed=7, missing=0.2), validation=60)
    config = make_config(tmp_path / "unused.csv", epochs=200, patience=3, lr=0.05)
    run = pt.fit(config, splits=splits)
    history = run.history
    assert run.metrics["stopped_early"]
    assert len(history) == run.metrics["best_epoch"] + 3 < 200
    best = history["val_objective"].idxmin()
    assert history.loc[best, "epoch"] == run.metrics["best_epoch"]

    trainer = pt.Trainer(run.model, run.tasks, config.train)
    validation = TaskData.from_frame(splits.validation, run.preprocessor)
    objective = trainer.objective(trainer.validation_losses(validation))
    assert math.isclose(objective, history.loc[best, "val_objective"], rel_tol=1e-5)


# ---- checkpoints and resume -----------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_resume_continues_where_training_stopped(tmp_path: Path, optimizer: str) -> None:
    frame = make_frame(n=160, seed=8, missing=0.1)
    frame.to_csv(tmp_path / "data.csv", index=False)
    config = make_config(tmp_path / "data.csv", epochs=4, optimizer=optimizer)
    longer = config.model_copy(update={"train": config.train.model_copy(update={"epochs": 6})})

    first = pt.fit(config, out=tmp_path / "run")
    assert first.history["epoch"].tolist() == [1, 2, 3, 4]
    trained: list[int] = []
    resumed = pt.fit(
        longer, out=tmp_path / "run", resume=True, callback=lambda r: trained.append(r["epoch"])
    )
    straight = pt.fit(longer)

    assert trained == [5, 6]
    assert resumed.history["epoch"].tolist() == [1, 2, 3, 4, 5, 6]
    pd.testing.assert_frame_equal(resumed.history.iloc[:4], first.history, check_exact=True)
    losses = [c for c in resumed.history if c.startswith(("train_loss/", "val_loss/"))]
    np.testing.assert_array_equal(
        resumed.history[losses].to_numpy(), straight.history[losses].to_numpy()
    )
    assert _state_equal(resumed.model, straight.model)
    assert pt.load(tmp_path / "run").history["epoch"].tolist() == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("balancer", ["fixed", "rlw", "famo"])
def test_resume_with_dropout_and_stateful_balancers_is_exact(tmp_path: Path, balancer: str) -> None:
    # dropout draws from torch's generator, RLW from its own; FAMO keeps Adam moments of ξ
    splits = make_splits(make_frame(n=160, seed=9, missing=0.2))
    config = make_config(
        tmp_path / "unused.csv", epochs=5, model={"dropout": 0.3}, balancer=balancer
    )
    shorter = config.model_copy(update={"train": config.train.model_copy(update={"epochs": 2})})

    straight = pt.fit(config, splits=splits)
    pt.fit(shorter, splits=splits, out=tmp_path / "run")
    resumed = pt.fit(config, splits=splits, out=tmp_path / "run", resume=True)

    columns = [c for c in straight.history if c not in ("seconds", "lr")]
    pd.testing.assert_frame_equal(
        resumed.history[columns], straight.history[columns], check_exact=True
    )
    assert _state_equal(resumed.model, straight.model)


@pytest.mark.parametrize(
    "options", [{"select": "per_task"}, {"select": "per_task", "finetune": {"epochs": 2}}]
)
def test_resume_keeps_the_per_task_selection_exact(tmp_path: Path, options: dict) -> None:
    # the checkpoint holds each task's best epoch and score so far and those epochs' weights
    splits = make_splits(make_frame(n=160, seed=9, missing=0.2))
    config = make_config(tmp_path / "unused.csv", epochs=6, lr=0.05, **options)
    shorter = config.model_copy(update={"train": config.train.model_copy(update={"epochs": 3})})

    straight = pt.fit(config, splits=splits)
    pt.fit(shorter, splits=splits, out=tmp_path / "run")
    resumed = pt.fit(config, splits=splits, out=tmp_path / "run", resume=True)

    selection = straight.metrics["per_task_selection"]
    assert any(s["epoch"] <= 3 for s in selection.values())  # chosen before the interruption
    assert resumed.metrics["per_task_selection"] == selection
    assert resumed.metrics.get("finetune") == straight.metrics.get("finetune")
    assert resumed.task_snapshot == straight.task_snapshot and straight.task_snapshot
    for label, state in straight.snapshots.items():
        assert state.keys() == resumed.snapshots[label].keys()
        assert all(torch.equal(v, resumed.snapshots[label][k]) for k, v in state.items())
    assert _state_equal(resumed.model, straight.model)
    frame = make_frame(n=30, seed=10)
    pd.testing.assert_frame_equal(resumed.predict(frame), straight.predict(frame), check_exact=True)


@pytest.mark.parametrize("ending", ["stopped early", "used its epochs"])
def test_resuming_a_finished_run_trains_nothing(tmp_path: Path, ending: str) -> None:
    splits = make_splits(make_frame(n=160, seed=7, missing=0.2), validation=60)
    if ending == "stopped early":
        config = make_config(tmp_path / "unused.csv", epochs=200, patience=2, lr=0.05)
    else:
        config = make_config(tmp_path / "unused.csv", epochs=2)
    first = pt.fit(config, splits=splits, out=tmp_path / "run")
    trained: list[int] = []
    again = pt.fit(
        config,
        splits=splits,
        out=tmp_path / "run",
        resume=True,
        callback=lambda r: trained.append(r["epoch"]),
    )
    assert trained == []
    pd.testing.assert_frame_equal(again.history, first.history, check_exact=True)
    assert again.metrics["stopped_early"] == first.metrics["stopped_early"]
    assert first.metrics["stopped_early"] == (ending == "stopped early")
    assert again.metrics["best_epoch"] == first.metrics["best_epoch"]
    assert _state_equal(again.model, first.model)


def test_resume_without_a_checkpoint_is_an_error(tmp_path: Path, csv_path: Path) -> None:
    config = make_config(csv_path, epochs=1)
    with pytest.raises(pt.RunError, match=r"cannot resume: no checkpoint in '.*fresh"):
        pt.fit(config, out=tmp_path / "fresh", resume=True)
    with pytest.raises(pt.RunError, match="cannot resume: no checkpoint"):
        pt.fit(config, resume=True)


@pytest.mark.parametrize(
    "name, damage",
    [
        ("model.safetensors", "garbage"),
        ("optimizer.safetensors", "truncate"),
        ("best.safetensors", "truncate"),
        ("optimizer.safetensors", "delete"),
        ("state.json", "truncate"),
    ],
)
def test_a_damaged_checkpoint_is_named_on_resume(
    tmp_path: Path, csv_path: Path, name: str, damage: str
) -> None:
    config = make_config(csv_path, epochs=1)
    pt.fit(config, out=tmp_path / "run")
    path = tmp_path / "run" / "checkpoint" / name
    if damage == "garbage":
        path.write_bytes(b"\x80\x04not a tensor file" * 10)
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.unlink()
    with pytest.raises(pt.RunError, match=rf"'{path}' is (corrupt|missing)"):
        pt.fit(config, out=tmp_path / "run", resume=True)
