"""The command line: fit → predict → evaluate → compare on files, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from synthetic import make_frame
from typer.testing import CliRunner

import polytask as pt
from polytask.cli import app

POLYTASK = Path(sys.executable).parent / "polytask"
CONFIG = {
    "data": {"train": "data.csv", "test_fraction": 0.25, "validation_fraction": 0.15},
    "tasks": [
        {"name": "price", "kind": "regression"},
        {"name": "species", "kind": "multiclass"},
        {"name": "aux", "kind": "regression", "role": "auxiliary"},
    ],
    "model": {"shared": [16]},
    "train": {"epochs": 3, "batch_size": 32, "lr": 0.01, "device": "cpu", "seed": 1},
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A directory with data.csv (features and labels) and config.yaml."""
    columns = ["x0", "x1", "x2", "x3", "color", "price", "species", "aux"]
    make_frame(n=160, seed=12)[columns].to_csv(tmp_path / "data.csv", index=False)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    return tmp_path


def _invoke(*args: str | Path) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def test_fit_predict_evaluate(project: Path) -> None:
    run_dir = project / "run"
    _invoke("fit", project / "config.yaml", "--out", run_dir, "--quiet")
    for name in ("model.safetensors", "config.yaml", "metrics.json", "history.csv"):
        assert (run_dir / name).is_file(), name

    features = pd.read_csv(project / "data.csv").drop(columns=["price", "species", "aux"])
    features.to_csv(project / "new.csv", index=False)
    _invoke("predict", run_dir, project / "new.csv", "--out", project / "pred.csv")
    predictions = pd.read_csv(project / "pred.csv")
    assert list(predictions.columns) == ["price", "species:ant", "species:bee", "species:cat"]
    assert len(predictions) == len(features)
    expected = pt.load(run_dir).predict(features)
    pd.testing.assert_frame_equal(predictions, expected, rtol=1e-6, check_dtype=False)

    output = _invoke("evaluate", run_dir, project / "data.csv", "--json")
    scores = json.loads(output)
    assert set(scores) == {"price", "species", "aux"}
    assert scores["price"]["n"] == 160 and 0.0 <= scores["species"]["accuracy"] <= 1.0


def test_resume_from_the_command_line(project: Path) -> None:
    run_dir = project / "run"
    _invoke("fit", project / "config.yaml", "--out", run_dir, "--quiet")
    longer = {**CONFIG, "train": {**CONFIG["train"], "epochs": 5}}
    (project / "config.yaml").write_text(yaml.safe_dump(longer))
    _invoke("fit", project / "config.yaml", "--out", run_dir, "--resume", "--quiet")
    assert pd.read_csv(run_dir / "history.csv")["epoch"].tolist() == [1, 2, 3, 4, 5]


def test_compare_writes_the_comparison(project: Path) -> None:
    out = project / "cmp"
    _invoke("compare", project / "config.yaml", "--seeds", "2", "--out", out, "--quiet")
    result = json.loads((out / "comparison.json").read_text())
    assert isinstance(result["delta_m_percent"], float)
    assert result["seeds"] == [1, 2]
    assert set(result["tasks"]) == {"price", "species"}
    for task in result["tasks"].values():
        for method in ("stl", "mtl"):
            assert len(task[method]["per_seed"]) == 2
            assert isinstance(task[method]["mean"], float)
    assert (out / "comparison.png").is_file()
    assert (
        pt.load_config(out / "config.yaml").tasks == pt.load_config(project / "config.yaml").tasks
    )


def test_listing_commands() -> None:
    assert "fixed" in _invoke("balancers")
    assert "yeast" in _invoke("datasets")
    assert "n_experts=4" in _invoke("architectures")


def test_a_bad_config_is_one_error_line_and_exit_status_2(project: Path) -> None:
    bad = {**CONFIG, "tasks": [{"name": "price", "kind": "regresion"}]}
    (project / "bad.yaml").write_text(yaml.safe_dump(bad))
    result = subprocess.run(
        [str(POLYTASK), "fit", str(project / "bad.yaml"), "--out", str(project / "run")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ConfigError: tasks[0].kind: 'regresion' is not a task kind")
    assert not (project / "run").exists()


def _main_error(monkeypatch, capsys, *args: str | Path) -> str:
    from polytask.cli import main

    monkeypatch.setattr(sys, "argv", ["polytask", *(str(a) for a in args)])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    return capsys.readouterr().err


def test_error_messages_print_verbatim_on_one_line(project: Path, monkeypatch, capsys) -> None:
    """Brackets in a message are text, not rich markup; a long message is not wrapped."""
    twice = {**CONFIG, "tasks": [{"name": "y[i]", "kind": "regression"}] * 2}
    (project / "twice.yaml").write_text(yaml.safe_dump(twice))
    err = _main_error(monkeypatch, capsys, "fit", project / "twice.yaml", "--out", project / "r")
    assert err == "error: ConfigError: tasks[1].name: 'y[i]' is declared twice\n"

    missing = project / ("long" * 40 + ".yaml")
    err = _main_error(monkeypatch, capsys, "fit", missing, "--out", project / "r")
    assert err == f"error: ConfigError: config file '{missing}' does not exist\n"
