"""Run directories: save → load predicts identically, nothing is unpickled, damage is named."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

import polytask as pt

RUN_SUFFIXES = {".safetensors", ".json", ".yaml", ".csv", ".png"}


@pytest.fixture
def run_copy(saved_run, tmp_path: Path) -> Path:
    """A private copy of the session's saved run, free to damage."""
    _, directory, _ = saved_run
    return Path(shutil.copytree(directory, tmp_path / "run"))


def test_fit_save_load_predict_is_identical(saved_run) -> None:
    run, directory, frame = saved_run
    loaded = pt.load(directory)
    expected = run.predict(frame)
    pd.testing.assert_frame_equal(loaded.predict(frame), expected, check_exact=True)
    assert loaded.config == run.config
    assert loaded.tasks == run.tasks
    assert loaded.evaluate(frame) == run.evaluate(frame)


def test_a_run_saved_again_loads_to_the_same_model(saved_run, tmp_path: Path) -> None:
    run, directory, frame = saved_run
    pt.load(directory).save(tmp_path / "again")
    again = pt.load(tmp_path / "again")
    pd.testing.assert_frame_equal(again.predict(frame), run.predict(frame), check_exact=True)


def test_the_run_directory_holds_no_pickle(saved_run) -> None:
    _, directory, _ = saved_run
    files = [p for p in directory.rglob("*") if p.is_file()]
    names = {p.relative_to(directory).as_posix() for p in files}
    assert {"model.safetensors", "model.json", "preprocess.json", "config.yaml"} <= names
    assert {"checkpoint/state.json", "checkpoint/optimizer.safetensors"} <= names
    for path in files:
        assert path.suffix in RUN_SUFFIXES, path
        head = path.read_bytes()[:8]
        if path.suffix == ".safetensors":
            load_file(path)  # a safetensors file: 8-byte header size, JSON header, raw data
        else:
            assert not head.startswith(b"\x80"), f"{path} looks like a pickle"
        assert not head.startswith(b"PK"), f"{path} looks like a torch.save archive"
    for path in directory.rglob("*.json"):
        json.loads(path.read_text())
    yaml.safe_load((directory / "config.yaml").read_text())


def test_loading_and_predicting_never_unpickle(saved_run, monkeypatch) -> None:
    _, directory, frame = saved_run

    def refuse(*args, **kwargs):
        raise AssertionError("polytask unpickled something")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pd, "read_pickle", refuse)
    loaded = pt.load(directory)
    assert len(loaded.predict(frame)) == len(frame)


def test_metrics_and_history_survive_the_round_trip(saved_run) -> None:
    run, directory, _ = saved_run
    loaded = pt.load(directory)
    assert loaded.metrics["best_epoch"] == run.metrics["best_epoch"]
    assert loaded.metrics["test"].keys() == run.metrics["test"].keys()
    assert loaded.history is not None and run.history is not None
    pd.testing.assert_frame_equal(loaded.history, run.history, check_dtype=False)


@pytest.mark.parametrize(
    "name, damage, message",
    [
        ("model.safetensors", "garbage", "is corrupt or not safetensors"),
        ("model.safetensors", "truncate", "is corrupt or not safetensors"),
        ("model.safetensors", "empty", "is corrupt or not safetensors"),
        ("model.safetensors", "delete", "is missing"),
        ("model.json", "truncate", "is corrupt"),
        ("model.json", "delete", "is missing"),
        ("model.json", "garbage", "is corrupt"),
        ("preprocess.json", "garbage", "is corrupt"),
        ("config.yaml", "garbage", "is corrupt"),
        ("preprocess.json", "delete", "is missing"),
        ("config.yaml", "delete", "is missing"),
    ],
)
def test_a_damaged_run_file_is_named(run_copy: Path, name: str, damage: str, message: str) -> None:
    path = run_copy / name
    if damage == "garbage":
        path.write_bytes(b"\x80\x04\x95not what you expect" * 20)
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
    with pytest.raises(pt.RunError, match=rf"'{path}' {message}"):
        pt.load(run_copy)


def test_an_invalid_config_in_a_run_is_a_run_error(run_copy: Path) -> None:
    (run_copy / "config.yaml").write_text("data: {train: x.csv}\ntasks: [{name: y, kind: nope}]\n")
    with pytest.raises(pt.RunError, match=r"has an invalid description: tasks\[0\].kind: 'nope'"):
        pt.load(run_copy)


def test_weights_that_do_not_fit_the_model_are_named(run_copy: Path) -> None:
    from safetensors.torch import save_file

    save_file({"trunk.0.weight": torch.zeros(3, 3)}, str(run_copy / "model.safetensors"))
    with pytest.raises(pt.RunError, match=r"weights in '.*model\.safetensors' do not fit"):
        pt.load(run_copy)


def test_loading_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(pt.RunError, match=r"run directory '.*nothing' does not exist"):
        pt.load(tmp_path / "nothing")
