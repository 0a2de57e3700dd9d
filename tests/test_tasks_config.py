"""Task specs and the config schema: defaults per kind, and errors that name field and value."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import polytask as pt
from polytask.tasks import KIND_LOSSES, KIND_METRICS, KINDS

BASE: dict[str, Any] = {
    "data": {"train": "data.csv"},
    "tasks": [{"name": "y", "kind": "regression"}],
}


def _with(**sections: Any) -> dict[str, Any]:
    return {**BASE, **sections}


# ---- tasks -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_has_consistent_defaults(kind: str) -> None:
    target = ["a", "b"] if kind == "multilabel" else None
    task = pt.Task(name="t", kind=kind, target=target)
    assert task.loss_name == KIND_LOSSES[kind][0] == KINDS[kind].loss
    assert task.primary_metric in task.metric_names
    assert set(task.metric_names) <= set(KIND_METRICS[kind])
    assert task.columns == (target or ["t"])
    assert task.is_main


def test_declared_metrics_pick_the_primary_metric() -> None:
    task = pt.Task(name="t", kind="regression", metrics=["mae", "rmse"])
    assert task.primary_metric == "mae"


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"kind": "multilabel"}, "needs target: a list of 0/1 columns"),
        ({"kind": "regression", "target": ["a", "b"]}, "takes one target column, not a list"),
        ({"kind": "regression", "classes": [1, 2]}, "classes only applies to binary and multi"),
        ({"kind": "binary", "classes": [1, 2, 3]}, "a binary task has exactly two classes"),
        ({"kind": "binary", "loss": "mse"}, r"loss 'mse' does not fit a binary task \(bce\)"),
        ({"kind": "count", "metrics": ["auc"]}, "metric 'auc' does not fit a count task"),
        ({"kind": "regression", "weight": -1}, "greater than or equal to 0"),
        ({"kind": "regression", "role": "helper"}, "'main' or 'auxiliary'"),
    ],
)
def test_inconsistent_task_fields_name_the_task(fields: dict[str, Any], message: str) -> None:
    data = _with(tasks=[{"name": "ok", "kind": "binary"}, {"name": "t", **fields}])
    with pytest.raises(pt.ConfigError, match=r"^tasks\[1\].*" + message):
        pt.parse_config(data)


def test_unknown_kind_names_field_value_and_allowed_kinds() -> None:
    data = _with(tasks=[{"name": "y", "kind": "regresion"}])
    with pytest.raises(pt.ConfigError) as info:
        pt.parse_config(data)
    assert str(info.value) == (
        "tasks[0].kind: 'regresion' is not a task kind "
        "(regression, binary, multiclass, multilabel, count)"
    )


def test_task_lists_are_checked_as_a_whole() -> None:
    twice = _with(tasks=[{"name": "y", "kind": "regression"}, {"name": "y", "kind": "binary"}])
    with pytest.raises(pt.ConfigError, match=r"tasks\[1\].name: 'y' is declared twice"):
        pt.parse_config(twice)
    helpers = _with(tasks=[{"name": "y", "kind": "regression", "role": "auxiliary"}])
    with pytest.raises(pt.ConfigError, match="every task is auxiliary"):
        pt.parse_config(helpers)
    with pytest.raises(pt.ConfigError, match="at least one task is needed"):
        pt.parse_config(_with(tasks=[]))


# ---- the config schema -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "data, path, key, allowed",
    [
        ({**BASE, "trian": {}}, "trian", "trian", "data, tasks, model, train"),
        (_with(train={"epoch": 3}), "train.epoch", "epoch", "balancer, balancer_options"),
        (_with(model={"hidden": [8]}), "model.hidden", "hidden", "architecture, shared, head"),
        (
            _with(tasks=[{"name": "y", "kind": "regression", "wieght": 2}]),
            r"tasks\[0\].wieght",
            "wieght",
            "name, kind, target, weight, role",
        ),
    ],
)
def test_unknown_key_is_named_with_the_allowed_keys(
    data: dict[str, Any], path: str, key: str, allowed: str
) -> None:
    with pytest.raises(pt.ConfigError, match=rf"^{path}: unknown key '{key}' \(allowed: {allowed}"):
        pt.parse_config(data)


@pytest.mark.parametrize(
    "data, message",
    [
        (_with(train={"epochs": 0}), r"train.epochs: 0: .*greater than 0"),
        (_with(train={"optimizer": "adagrad"}), r"train.optimizer: 'adagrad'"),
        (_with(train={"balancer": "magic"}), r"train.balancer: 'magic' is not a balancer \(fixed"),
        (
            _with(train={"balancer_options": {"alpha": 1}}),
            r"train.balancer_options.alpha: unknown option \(options of 'fixed': none\)",
        ),
        (_with(model={"architecture": "tower"}), r"'tower' is not an architecture \(hard_"),
        (_with(model={"activation": "swish"}), r"'swish' is not an activation \(relu, "),
        (_with(data={"train": "a.csv", "dataset": "yeast"}), "exactly one of data.dataset or"),
        (_with(data={"dataset": "mnist"}), r"dataset 'mnist' is not known \(yeast"),
        ({"data": {"train": "a.csv"}}, "tasks: a list of tasks is needed"),
        (["not", "a", "mapping"], "must be a mapping of sections, got list"),
    ],
)
def test_bad_values_are_reported_with_their_field(data: Any, message: str) -> None:
    with pytest.raises(pt.ConfigError, match=message):
        pt.parse_config(data)


def test_several_problems_are_reported_together() -> None:
    data = _with(train={"epochs": -1, "lr": 0}, tasks=[{"name": "y", "kind": "nope"}])
    with pytest.raises(pt.ConfigError) as info:
        pt.parse_config(data)
    message = str(info.value)
    for part in ("tasks[0].kind", "train.epochs", "train.lr"):
        assert part in message


def test_yaml_round_trip_gives_the_same_config(tmp_path: Path) -> None:
    config = pt.parse_config(
        _with(
            tasks=[
                {"name": "y", "kind": "regression", "weight": 0.5},
                {"name": "c", "kind": "multiclass", "classes": ["a", "b", "c"]},
                {"name": "m", "kind": "multilabel", "target": ["p", "q"], "role": "auxiliary"},
            ],
            model={"shared": [8, 4], "dropout": 0.1},
            train={"epochs": 3, "seed": 5},
        )
    )
    (tmp_path / "config.yaml").write_text(config.to_yaml())
    assert pt.load_config(tmp_path / "config.yaml") == config.model_copy(
        update={"data": config.data.model_copy(update={"train": tmp_path / "data.csv"})}
    )


def test_relative_data_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "config.yaml"
    path.write_text(yaml.safe_dump({**BASE, "data": {"train": "../data.csv", "test": "t.csv"}}))
    config = pt.load_config(path)
    assert config.data.train == (tmp_path / "data.csv").resolve()
    assert config.data.test == (tmp_path / "sub" / "t.csv").resolve()


def test_broken_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("data: {train: data.csv\ntasks: [\n")
    with pytest.raises(pt.ConfigError, match=r"config file '.*broken\.yaml' is not valid YAML"):
        pt.load_config(path)


def test_missing_and_empty_config_files(tmp_path: Path) -> None:
    with pytest.raises(pt.ConfigError, match=r"config file '.*absent\.yaml' does not exist"):
        pt.load_config(tmp_path / "absent.yaml")
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    with pytest.raises(pt.ConfigError, match=r"config file '.*empty\.yaml' is empty"):
        pt.load_config(tmp_path / "empty.yaml")


def test_unknown_kind_in_a_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("data: {train: d.csv}\ntasks:\n  - {name: price, kind: regresion}\n")
    with pytest.raises(pt.ConfigError, match=r"tasks\[0\].kind: 'regresion' is not a task kind"):
        pt.load_config(path)


def test_with_train_replaces_train_fields_on_a_copy() -> None:
    config = pt.Config(data=pt.DataConfig(dataset="yeast"))
    changed = config.with_train(seed=7, lr=0.5)
    assert (changed.train.seed, changed.train.lr) == (7, 0.5)
    assert changed.train.epochs == config.train.epochs and changed.data == config.data
    assert (config.train.seed, config.train.lr) != (7, 0.5)
