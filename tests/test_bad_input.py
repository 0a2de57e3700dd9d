"""Broken input of every kind ends in one ``error:`` line naming the problem (exit status 2), or
in a documented result: never a traceback, never a silent wrong answer, never a damaged run.

Each case is a row of a table: what it breaks, how to set it up, and what must come out. The
CLI cases run ``polytask.cli.main`` in-process (exit status, stdout and stderr as a user sees
them); the Python cases call the public API.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

import polytask as pt
from polytask.cli import main

N = 60


def _table(n: int = N, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    frame = pd.DataFrame(x, columns=["a", "b", "c"])
    frame["y"] = x[:, 0] - x[:, 1] + 0.1 * rng.normal(size=n)
    frame["z"] = (x[:, 2] > 0).astype(int)
    frame["k"] = rng.poisson(2.0, size=n)
    frame["kind"] = np.array(["ant", "bee", "cat"])[rng.integers(0, 3, size=n)]
    return frame


TASKS = [{"name": "y", "kind": "regression"}, {"name": "z", "kind": "binary"}]
BASE: dict[str, Any] = {
    "data": {"train": "train.csv", "features": ["a", "b", "c"]},
    "tasks": TASKS,
    "model": {"shared": [8]},
    "train": {"epochs": 1, "batch_size": 32, "device": "cpu"},
}


@dataclass
class Project:
    """A folder with train.csv and test.csv, a config written on demand, and a saved run."""

    root: Path
    run: Path

    def config(self, **sections: Any) -> Path:
        data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        path = self.root / "config.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    def csv(self, name: str, frame: pd.DataFrame) -> None:
        frame.to_csv(self.root / name, index=False)


def _digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fitted")
    _table().to_csv(root / "train.csv", index=False)
    (root / "config.yaml").write_text(yaml.safe_dump(BASE))
    assert _cli(["fit", str(root / "config.yaml"), "--out", str(root / "run"), "-q"])[0] == 0
    return root / "run"


@pytest.fixture
def project(tmp_path: Path, fitted: Path) -> Project:
    _table().to_csv(tmp_path / "train.csv", index=False)
    _table(30, seed=1).to_csv(tmp_path / "test.csv", index=False)
    return Project(tmp_path, fitted)


def _cli(args: list[str]) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def _write(path: Path, content: str | bytes) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


def _fit(p: Project, **sections: Any) -> list[str]:
    return ["fit", str(p.config(**sections)), "--out", str(p.root / "out"), "-q"]


def _frame_with(change: Callable[[pd.DataFrame], None]) -> pd.DataFrame:
    frame = _table()
    change(frame)
    return frame


def _set(column: str, row: int, value: Any) -> Callable[[pd.DataFrame], None]:
    def change(frame: pd.DataFrame) -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            frame[column] = frame[column].astype(object)
        elif isinstance(value, float):
            frame[column] = frame[column].astype(float)
        frame.loc[row, column] = value

    return change


# ---- the CLI cases: (id, build the arguments from the project, expected error regex) --------
CLI_ERRORS: list[tuple[str, Callable[[Project], list[str]], str]] = [
    # data files
    ("train file missing", lambda p: _fit(p, data={"train": "nope.csv"}), r"nope\.csv' does not"),
    (
        "train file empty",
        lambda p: _write(p.root / "train.csv", "") or _fit(p),
        r"train\.csv' is empty",
    ),
    (
        "train file unreadable parquet",
        lambda p: (
            _write(p.root / "bad.parquet", b"\x00garbage") or _fit(p, data={"train": "bad.parquet"})
        ),
        r"cannot read data file .*bad\.parquet",
    ),
    (
        "target column missing",
        lambda p: p.csv("train.csv", _table().drop(columns=["y"])) or _fit(p),
        r"task 'y': target column 'y' is not in the data",
    ),
    (
        "NaN in a declared feature, named by its line in the file",
        lambda p: p.csv("train.csv", _frame_with(_set("b", 7, np.nan))) or _fit(p),
        r"feature 'b' has 1 missing values \(line 9 of train\.csv\).*data\.impute",
    ),
    (
        "text in a numeric target",
        lambda p: p.csv("train.csv", _frame_with(_set("y", 4, "abc"))) or _fit(p),
        r"target column 'y' is not numeric: value 'abc' in line 6 of train\.csv",
    ),
    (
        "infinite feature value",
        lambda p: p.csv("train.csv", _frame_with(_set("a", 3, np.inf))) or _fit(p),
        r"feature 'a' has infinite values in line 5 of train\.csv",
    ),
    (
        "binary task with three labels",
        lambda p: p.csv("train.csv", _frame_with(_set("z", 0, 2))) or _fit(p),
        r"'z' has 3 distinct labels .* a binary task takes two",
    ),
    (
        "binary task with one class",
        lambda p: p.csv("train.csv", _frame_with(lambda f: f.__setitem__("z", 1))) or _fit(p),
        r"'z' has a single label '1' in the training data",
    ),
    (
        "binary label outside the declared classes",
        lambda p: _fit(p, tasks=[TASKS[0], {"name": "z", "kind": "binary", "classes": [5, 6]}]),
        r"labels \['0', '1'\] are not among the declared classes \(5, 6\)",
    ),
    (
        "negative count",
        lambda p: (
            p.csv("train.csv", _frame_with(_set("k", 2, -1)))
            or _fit(p, tasks=[{"name": "k", "kind": "count"}])
        ),
        r"counts must be non-negative",
    ),
    (
        "fractional count",
        lambda p: (
            p.csv("train.csv", _frame_with(_set("k", 2, 1.5)))
            or _fit(p, tasks=[{"name": "k", "kind": "count"}])
        ),
        r"counts must be whole numbers, got 1\.5 in line 4 of train\.csv",
    ),
    (
        "target without any label",
        lambda p: p.csv("train.csv", _frame_with(lambda f: f.__setitem__("y", np.nan))) or _fit(p),
        r"target column 'y' has no labelled rows",
    ),
    (
        "test file without a main task's column",
        lambda p: (
            p.csv("test.csv", _table(30, 1).drop(columns=["y"]))
            or _fit(p, data={"test": "test.csv"})
        ),
        r"task 'y': target column 'y' is not in test\.csv",
    ),
    (
        "test file with a class unseen in training",
        lambda p: (
            p.csv("test.csv", _frame_with(_set("kind", 5, "dog")).iloc[:30])
            or _fit(p, tasks=[{"name": "kind", "kind": "multiclass"}], data={"test": "test.csv"})
        ),
        r"label 'dog' in line 7 of test\.csv is not one of the classes \(ant, bee, cat\)",
    ),
    (
        "data.drop of a column the data lacks",
        lambda p: _fit(p, data={"features": None, "drop": ["kind", "nope"]}),
        r"data\.drop: columns \['nope'\] are not in the data",
    ),
    (
        "undeclared column with gaps taken as an input",
        lambda p: (
            p.csv("train.csv", _frame_with(_set("c", 1, np.nan)))
            or _fit(p, data={"features": None, "drop": ["k", "kind"]})
        ),
        r"'c' is no task's target .* add it to data\.drop",
    ),
    (
        "declared feature missing",
        lambda p: _fit(p, data={"features": ["a", "nope"]}),
        r"data\.features: columns \['nope'\] are not in the data",
    ),
    (
        "a target declared as a feature",
        lambda p: _fit(p, data={"features": ["a", "y"]}),
        r"data\.features: \['y'\] are task targets",
    ),
    # configs
    ("config missing", lambda p: ["fit", str(p.root / "no.yaml"), "--out", "o"], r"does not exist"),
    (
        "config not YAML",
        lambda p: (
            _write(p.root / "c.yaml", "data: [1\n") or ["fit", str(p.root / "c.yaml"), "--out", "o"]
        ),
        r"is not valid YAML",
    ),
    (
        "config empty",
        lambda p: _write(p.root / "c.yaml", "") or ["fit", str(p.root / "c.yaml"), "--out", "o"],
        r"c\.yaml' is empty",
    ),
    (
        "config a list",
        lambda p: (
            _write(p.root / "c.yaml", "- 1\n") or ["fit", str(p.root / "c.yaml"), "--out", "o"]
        ),
        r"must be a mapping of sections, got list",
    ),
    ("unknown key", lambda p: _fit(p, train={"epoch": 3}), r"train\.epoch: unknown key 'epoch'"),
    (
        "unknown task kind",
        lambda p: _fit(p, tasks=[{"name": "y", "kind": "regresion"}]),
        r"tasks\[0\]\.kind: 'regresion' is not a task kind",
    ),
    ("unknown balancer", lambda p: _fit(p, train={"balancer": "magic"}), r"not a balancer"),
    (
        "unknown balancer option",
        lambda p: _fit(p, train={"balancer": "dwa", "balancer_options": {"tau": 1}}),
        r"balancer_options\.tau: unknown option",
    ),
    ("negative learning rate", lambda p: _fit(p, train={"lr": -1}), r"train\.lr: -1"),
    (
        "unavailable device",
        lambda p: _fit(p, train={"device": "mps"}),
        r"train\.device: 'mps' was asked for but MPS is not available",
    ),
    ("unknown device", lambda p: _fit(p, train={"device": "tpu"}), r"'tpu' is not a device"),
    ("dropout out of range", lambda p: _fit(p, model={"dropout": 1.5}), r"model\.dropout"),
    (
        "split keys with a registered data set",
        lambda p: _fit(p, data={"dataset": "yeast", "train": None, "test_fraction": 0.3}),
        r"test_fraction: a registered data set comes with fixed splits",
    ),
    (
        "unknown data set",
        lambda p: _fit(p, data={"dataset": "nope", "train": None}),
        r"dataset 'nope' is not known",
    ),
    (
        "data set and file together",
        lambda p: _fit(p, data={"dataset": "yeast"}),
        r"give exactly one of data\.dataset or data\.train",
    ),
    (
        "one column, two tasks",
        lambda p: _fit(p, tasks=[TASKS[0], {"name": "y2", "kind": "regression", "target": "y"}]),
        r"column 'y' is already the target of task 'y'.*signals\.represent",
    ),
    (
        "':' in a main task's name",
        lambda p: _fit(p, tasks=[{"name": "y:1", "kind": "regression", "target": "y"}]),
        r"'y:1' contains ':'",
    ),
    ("task declared twice", lambda p: _fit(p, tasks=[TASKS[0], TASKS[0]]), r"declared twice"),
    (
        "only auxiliary tasks",
        lambda p: _fit(p, tasks=[{"name": "y", "kind": "regression", "role": "auxiliary"}]),
        r"at least one must have role 'main'",
    ),
    # run directories
    (
        "predict from a missing run",
        lambda p: ["predict", str(p.root / "norun"), str(p.root / "test.csv"), "-o", "x.csv"],
        r"run directory .*norun' does not exist",
    ),
    (
        "predict with feature columns missing",
        lambda p: (
            p.csv("test.csv", _table(30, 1).drop(columns=["b"]))
            or ["predict", str(p.run), str(p.root / "test.csv"), "-o", str(p.root / "x.csv")]
        ),
        r"feature columns \['b'\] are missing",
    ),
    (
        "predict --out is a directory",
        lambda p: ["predict", str(p.run), str(p.root / "test.csv"), "-o", str(p.root)],
        r"--out .* is a directory",
    ),
    (
        "evaluate without any label column",
        lambda p: (
            p.csv("test.csv", _table(30, 1).drop(columns=["y", "z"]))
            or ["evaluate", str(p.run), str(p.root / "test.csv")]
        ),
        r"the data has no task's label column",
    ),
    (
        "fit into a file",
        lambda p: (
            p.csv("base.csv", _table(3))
            or ["fit", str(p.config()), "--out", str(p.root / "base.csv")]
        ),
        r"'.*base\.csv' is a file",
    ),
    (
        "resume without a checkpoint",
        lambda p: ["fit", str(p.config()), "--out", str(p.root / "fresh"), "--resume"],
        r"cannot resume: no checkpoint",
    ),
]


@pytest.mark.parametrize(
    "build, expected", [c[1:] for c in CLI_ERRORS], ids=[c[0] for c in CLI_ERRORS]
)
def test_cli_bad_input_is_one_error_line(project: Project, build, expected: str) -> None:
    code, out, err = _cli(build(project))
    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(expected, lines[0]), lines[0]


# ---- damaged run directories: the error names the file, and nothing is written ----------------
def _copy_run(p: Project) -> Path:
    import shutil

    target = p.root / "run"
    shutil.copytree(p.run, target)
    return target


RUN_DAMAGE: list[tuple[str, Callable[[Path], None], str]] = [
    (
        "weights truncated",
        lambda run: (run / "model.safetensors").write_bytes(b"\x01\x02"),
        r"model\.safetensors",
    ),
    (
        "config.yaml removed",
        lambda run: (run / "config.yaml").unlink(),
        r"config\.yaml' is missing",
    ),
    (
        "config.yaml not YAML",
        lambda run: (run / "config.yaml").write_text("data: [1\n"),
        r"config\.yaml' is corrupt",
    ),
    ("model.json not JSON", lambda run: (run / "model.json").write_text("{"), r"model\.json"),
    (
        "preprocess.json missing a key",
        lambda run: (run / "preprocess.json").write_text("{}"),
        r"invalid description",
    ),
]


@pytest.mark.parametrize(
    "damage, expected", [c[1:] for c in RUN_DAMAGE], ids=[c[0] for c in RUN_DAMAGE]
)
def test_damaged_run_directory_is_named(project: Project, damage, expected: str) -> None:
    run = _copy_run(project)
    damage(run)
    before = _digest(run)
    code, out, err = _cli(["predict", str(run), str(project.root / "test.csv"), "-o", "p.csv"])
    assert code == 2 and "Traceback" not in out + err
    assert re.search(expected, err), err
    assert _digest(run) == before


def test_corrupt_checkpoint_on_resume_is_named_and_the_run_kept(project: Project) -> None:
    run = _copy_run(project)
    (run / "checkpoint" / "state.json").write_text("{not json")
    before = _digest(run)
    code, out, err = _cli(["fit", str(project.config()), "--out", str(run), "--resume", "-q"])
    assert code == 2 and "Traceback" not in out + err
    assert re.search(r"state\.json", err), err
    assert _digest(run) == before


def test_fit_into_an_existing_run_refuses_and_keeps_it(project: Project) -> None:
    run = _copy_run(project)
    before = _digest(run)
    code, _, err = _cli(["fit", str(project.config()), "--out", str(run), "-q"])
    assert code == 2 and "already holds a run" in err and "--overwrite" in err
    assert _digest(run) == before
    (run / "plots" / "stale.png").write_bytes(b"x")  # a file only the old run had
    code, _, err = _cli(["fit", str(project.config()), "--out", str(run), "-q", "--overwrite"])
    assert code == 0, err
    assert not (run / "plots" / "stale.png").exists()


def test_fit_checks_the_output_before_training(project: Project, monkeypatch) -> None:
    """A bad --out fails before any epoch runs (not after training, as it once did)."""
    import polytask.train

    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("training started")

    monkeypatch.setattr(polytask.train.Trainer, "fit", fail)
    project.csv("base.csv", _table(3))
    code, _, err = _cli(["fit", str(project.config()), "--out", str(project.root / "base.csv")])
    assert code == 2 and "is a file" in err


# ---- usage mistakes: usage text and exit status 2 (no traceback) -----------------------------
USAGE: list[tuple[str, list[str], str]] = [
    ("missing --out", ["fit", "config.yaml"], r"Missing option '--out'"),
    ("unknown option", ["fit", "config.yaml", "--out", "r", "--fast"], r"No such option"),
    ("zero seeds", ["compare", "config.yaml", "--seeds", "0"], r"--seeds"),
    ("unknown command", ["fitt"], r"No such command"),
    ("missing argument", ["predict"], r"Missing argument"),
]


@pytest.mark.parametrize("args, expected", [u[1:] for u in USAGE], ids=[u[0] for u in USAGE])
def test_usage_mistakes_print_usage_and_exit_2(args: list[str], expected: str) -> None:
    code, out, err = _cli(args)
    assert code == 2
    assert "Traceback" not in out + err and "Usage:" in out + err
    assert re.search(expected, out + err)


def test_version() -> None:
    code, out, _ = _cli(["--version"])
    assert code == 0 and out.strip() == f"polytask {pt.__version__}"


def test_predict_creates_the_folder_of_its_output(project: Project) -> None:
    target = project.root / "new" / "folder" / "pred.csv"
    code, _, err = _cli(
        ["predict", str(project.run), str(project.root / "test.csv"), "-o", str(target)]
    )
    assert code == 0, err
    assert len(pd.read_csv(target)) == 30


def test_test_file_may_omit_an_auxiliary_column(project: Project) -> None:
    """A training-only signal (a future value) is not in the test file: the run is scored on
    its main tasks (issue 9.2)."""
    tasks = [TASKS[0], {"name": "k", "kind": "count", "role": "auxiliary"}]
    project.csv("test.csv", _table(30, 1).drop(columns=["k"]))
    code, _, err = _cli(_fit(project, tasks=tasks, data={"test": "test.csv"}))
    assert code == 0, err
    metrics = pt.load(project.root / "out").metrics
    assert set(metrics["test"]) == {"y"} and metrics["test"]["y"]["n"] == 30


# ---- the Python API: the same ConfigError / DataError as the CLI -----------------------------
API_ERRORS: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    (
        "DataConfig train of a wrong type",
        lambda: pt.DataConfig(train=3),
        pt.ConfigError,
        r"^data\.train: a CSV/Parquet path or a pandas DataFrame is needed, got int$",
    ),
    (
        "DataConfig unknown key",
        lambda: pt.DataConfig(trian="x.csv"),
        pt.ConfigError,
        r"^data\.trian: unknown key 'trian' \(allowed: dataset, train",
    ),
    (
        "Task unknown kind",
        lambda: pt.Task(name="a", kind="x"),
        pt.ConfigError,
        r"^task\.kind: 'x' is not a task kind",
    ),
    (
        "TrainConfig bad value",
        lambda: pt.TrainConfig(epochs=0),
        pt.ConfigError,
        r"^train\.epochs: 0: Input should be greater than 0$",
    ),
    (
        "Config without tasks",
        lambda: pt.Config(data={"train": "x.csv"}),
        pt.ConfigError,
        r"^tasks: a list of tasks is needed",
    ),
    ("load a file", lambda: pt.load(__file__), pt.RunError, r"does not exist"),
    ("read a missing table", lambda: pt.read_table("nope.csv"), pt.DataError, r"does not exist"),
]


@pytest.mark.parametrize(
    "call, error, expected", [c[1:] for c in API_ERRORS], ids=[c[0] for c in API_ERRORS]
)
def test_api_bad_input_raises_a_polytask_error(call, error: type[Exception], expected: str) -> None:
    with pytest.raises(error) as info:
        call()
    assert re.search(expected, str(info.value)), str(info.value)
    assert "\n" not in str(info.value) and "pydantic" not in str(info.value)


def test_api_predict_rejects_what_is_not_a_table(fitted: Path) -> None:
    run = pt.load(fitted)
    with pytest.raises(pt.DataError, match="expected a pandas DataFrame.*got int"):
        run.predict(3)


def test_api_trains_on_a_dataframe_given_as_data_train(tmp_path: Path) -> None:
    """``DataConfig(train=df)`` (documented in the README); the saved config names no file."""
    config = pt.Config(
        data=pt.DataConfig(train=_table(), features=["a", "b", "c"]),
        tasks=[pt.Task(name="y", kind="regression")],
        model=pt.ModelConfig(shared=[8]),
        train=pt.TrainConfig(epochs=1, device="cpu"),
    )
    run = pt.fit(config, out=tmp_path / "run")
    assert run.metrics["test"]["y"]["n"] == round(0.2 * N)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["train"] is None
    assert pt.load(tmp_path / "run").predict(_table(5)).shape == (5, 1)


def test_predicting_an_unseen_category_warns(tmp_path: Path) -> None:
    frame = _table()
    config = pt.Config(
        data=pt.DataConfig(train=frame, features=["a", "kind"]),
        tasks=[pt.Task(name="y", kind="regression")],
        model=pt.ModelConfig(shared=[8]),
        train=pt.TrainConfig(epochs=1, device="cpu"),
    )
    run = pt.fit(config)
    new = frame.head(3).assign(kind=["ant", "dog", "emu"])
    with pytest.warns(pt.PolytaskWarning, match=r"'kind': 2 categories not seen in training"):
        run.predict(new)


def test_count_of_cases_is_at_least_forty() -> None:
    cases = len(CLI_ERRORS) + len(RUN_DAMAGE) + len(USAGE) + len(API_ERRORS) + 6
    assert cases >= 40
