"""`polytask init`: a starter config that `fit` accepts, kinds guessed from the values, leaks
and identifiers kept out of the inputs, never written over a file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
import yaml
from synthetic import make_frame
from typer.testing import CliRunner

import polytask as pt
from polytask.commands_extra import init_command
from polytask.init import guess_kind, starter_config

PLANTED = {"price": "regression", "sold": "binary", "species": "multiclass", "visits": "count"}


def _table(n: int = 200, seed: int = 0) -> pd.DataFrame:
    """Inputs x0..x3 and color, one target per kind, a row id and two leaks of targets."""
    rng = np.random.default_rng(seed)
    frame = make_frame(n=n, seed=seed).drop(columns=["tag_a", "tag_b", "aux"])
    frame.insert(0, "row_id", np.arange(1000, 1000 + n))
    frame["visits"] = rng.poisson(np.exp(1.5 + 0.5 * frame["x0"]))  # counts with many values
    frame["grade"] = rng.integers(0, 4, size=n)  # a few whole numbers: class codes
    frame["price_x2"] = 2 * frame["price"] + 1  # a leak: a rescaled copy of a target
    frame["species_code"] = frame["species"].map({"ant": 0, "bee": 1, "cat": 2})  # a relabelling
    return frame


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command(name="init")(init_command)
    app.command(name="noop")(lambda: None)  # two commands: Typer keeps "init" as a subcommand
    return app


def _init(*args: str | Path) -> str:
    result = CliRunner().invoke(_app(), ["init", *map(str, args)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "table.csv"
    path.parent.mkdir()
    _table().to_csv(path, index=False)
    return path


def test_fit_trains_from_what_init_writes(csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "configs" / "start.yaml"
    targets = ["price", "sold", "species", "visits", "grade"]
    _init(csv, "--out", out, *(a for t in targets for a in ("--target", t)))
    config = pt.load_config(out)  # the data path is relative to the config's folder
    assert [t.name for t in config.tasks] == targets
    quick = config.train.model_copy(update={"epochs": 2, "device": "cpu", "patience": None})
    with warnings.catch_warnings():
        warnings.simplefilter("error", pt.PolytaskWarning)  # no input looks like a label
        run = pt.fit(config.model_copy(update={"train": quick}))
    assert {t.name: t.kind for t in run.tasks} == {**PLANTED, "grade": "multiclass"}
    assert set(run.metrics["test"]) == set(targets)
    assert all(np.isfinite(run.metrics["test"][t]["n"]) for t in targets)


def test_guessed_kinds_of_planted_columns(csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.yaml"
    _init(csv, "--out", out, *(a for t in PLANTED for a in ("--target", t)))
    tasks = yaml.safe_load(out.read_text())["tasks"]
    assert {t["name"]: t["kind"] for t in tasks} == PLANTED
    assert len(set(PLANTED.values())) == 4  # "always regression" would get three of four wrong


@pytest.mark.parametrize("n", [40, 500])
@pytest.mark.parametrize("seed", [0, 1])
def test_guess_kind_by_values(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cases = {
        "regression": pd.Series(rng.normal(size=n)),
        "binary": pd.Series(rng.choice(["yes", "no"], size=n)),
        "multiclass": pd.Series(rng.choice(["a", "b", "c", "d"], size=n)),
        "count": pd.Series(rng.poisson(30.0, size=n)),  # far more than MAX_CLASSES values
    }
    cases["binary"].iloc[0], cases["binary"].iloc[1] = "yes", "no"  # both labels present
    for kind, series in cases.items():
        assert guess_kind(series.rename(kind)).kind == kind
    # integer codes with a few values are classes; with missing labels (read as floats) too
    codes = pd.Series(rng.integers(0, 5, size=n).astype(float))
    codes.iloc[::7] = np.nan
    assert guess_kind(codes).kind == "multiclass"
    # negative whole numbers with many values are no count
    assert guess_kind(pd.Series(rng.integers(-100, 100, size=n))).kind == "regression"


def test_leaks_and_identifiers_are_dropped_with_a_reason(csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.yaml"
    _init(csv, "--out", out, "--target", "price", "--target", "species")
    text = out.read_text()
    data = yaml.safe_load(text)["data"]
    assert set(data["drop"]) == {"price_x2", "species_code", "row_id"}
    assert not set(data["drop"]) & set(data["features"])
    assert set(data["features"]) == {"x0", "x1", "x2", "x3", "color", "sold", "visits", "grade"}
    assert "price_x2: likely leak of target 'price'" in text
    assert "species_code: likely leak of target 'species'" in text
    assert data["categorical"] == ["color"]


def test_without_target_the_last_column_is_the_main_task(tmp_path: Path) -> None:
    frame = _table()[["x0", "x1", "color", "sold"]]
    text = starter_config(frame, train="t.csv")
    tasks = yaml.safe_load(text)["tasks"]
    assert tasks == [{"name": "sold", "kind": "binary"}]
    assert "no --target given: the last column, 'sold', is the main task" in text


def test_never_writes_over_a_file(csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.yaml"
    out.write_text("mine\n")
    with pytest.raises(pt.RunError, match="already exists"):
        _init(csv, "--out", out)
    assert out.read_text() == "mine\n"


def test_errors_name_the_problem(csv: Path, tmp_path: Path) -> None:
    with pytest.raises(pt.DataError, match="'nope' is not a column"):
        _init(csv, "--out", tmp_path / "a.yaml", "--target", "nope")
    with pytest.raises(pt.DataError, match="does not exist"):
        _init(tmp_path / "missing.csv", "--out", tmp_path / "b.yaml")
    with pytest.raises(pt.DataError, match="single value"):
        starter_config(pd.DataFrame({"x": [1, 2, 3], "y": [5, 5, 5]}), train="t.csv")
    assert not (tmp_path / "a.yaml").exists()


def test_a_thresholded_copy_of_the_target_is_a_leak_but_a_related_flag_is_not() -> None:
    frame = _table()
    frame["price_high"] = (frame["price"] > frame["price"].median()).astype(int)
    noisy = frame["price"] + 2.0 * np.random.default_rng(1).normal(size=len(frame))
    frame["price_high_noisy"] = (noisy > noisy.median()).astype(int)  # related, overlaps
    text = starter_config(frame, train="t.csv", targets=["price"])
    data = yaml.safe_load(text)["data"]
    assert "price_high" in data["drop"]
    assert "a binning of 'price'" in text
    assert "price_high_noisy" in data["features"]
