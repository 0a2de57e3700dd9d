"""train.log: what TensorBoard and MLflow hold after a fit equals the run's history.csv, per
task and per epoch, with the config; a missing package or a bad backend fails before training."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from synthetic import make_config, make_frame

import polytask as pt
from polytask.config import parse_config
from polytask.logs import mlflow_key, open_logger

EPOCHS = 4


def _config(directory: Path, **train: object) -> pt.Config:
    make_frame(n=160, seed=3, missing=0.1).to_csv(directory / "data.csv", index=False)
    return make_config(directory / "data.csv", epochs=EPOCHS, balancer="dwa", **train)


def _same(logged: float, expected: float) -> bool:
    return (math.isnan(logged) and math.isnan(expected)) or logged == expected


def _columns(history: pd.DataFrame) -> list[str]:
    """The columns a logger must hold: all but the step; and per task, each kind of them."""
    columns = [c for c in history.columns if c != "epoch"]
    for prefix in ("train_loss/", "val_loss/", "weight/"):
        assert {c.removeprefix(prefix) for c in columns if c.startswith(prefix)} == {
            "price",
            "sold",
            "species",
            "tags",
            "visits",
            "aux",
        }
    return columns


# ---- TensorBoard ------------------------------------------------------------------------------
def _events(directory: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return {t: [(e.step, e.value) for e in events.Scalars(t)] for t in events.Tags()["scalars"]}


def test_tensorboard_holds_every_history_column_per_epoch(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pt.fit(_config(tmp_path, log="tensorboard"), out=tmp_path / "run")

    history = pd.read_csv(tmp_path / "run" / "history.csv")
    scalars = _events(tmp_path / "run" / "logs")
    assert sorted(scalars) == sorted(_columns(history))
    for tag, points in scalars.items():
        assert [step for step, _ in points] == list(range(1, EPOCHS + 1)), tag
        expected = history[tag].astype("float32").tolist()  # event files hold float32
        assert all(_same(v, e) for (_, v), e in zip(points, expected, strict=True)), tag
    text = EventAccumulator(str(tmp_path / "run" / "logs"))
    text.Reload()
    config = text.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "log: tensorboard" in config and "balancer: dwa" in config


def test_tensorboard_to_a_folder_without_a_run_directory(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    run = pt.fit(_config(tmp_path, log="tensorboard", log_dir=tmp_path / "tb"))

    scalars = _events(tmp_path / "tb")
    assert [v for _, v in scalars["val_objective"]] == run.history["val_objective"].astype(
        "float32"
    ).tolist()


def test_an_overwritten_run_replaces_its_event_files(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    config = _config(tmp_path, log="tensorboard")
    pt.fit(config, out=tmp_path / "run")
    shorter = config.model_copy(update={"train": config.train.model_copy(update={"epochs": 2})})
    pt.fit(shorter, out=tmp_path / "run", overwrite=True)

    assert [step for step, _ in _events(tmp_path / "run" / "logs")["train_loss/price"]] == [1, 2]


def test_a_failing_fit_leaves_its_epochs_readable(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")

    def fail_at_2(record: dict[str, float]) -> None:
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pt.fit(_config(tmp_path, log="tensorboard"), out=tmp_path / "run", callback=fail_at_2)
    assert [step for step, _ in _events(tmp_path / "run" / "logs")["weight/sold"]] == [1, 2]


# ---- MLflow -----------------------------------------------------------------------------------
def _client(store: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{store.resolve() / 'mlflow.db'}")


def _only_run(client, experiment: str = "polytask"):
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return runs[0]


def test_mlflow_holds_every_history_column_per_epoch_and_the_config(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    config = _config(tmp_path, log="mlflow", select="per_task")
    pt.fit(config, out=tmp_path / "run")

    history = pd.read_csv(tmp_path / "run" / "history.csv")
    client = _client(tmp_path / "run" / "logs")
    run = _only_run(client)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    columns = _columns(history)
    assert any(c.startswith("val_metric/") for c in columns)  # per_task selection records them
    assert sorted(run.data.metrics) == sorted(mlflow_key(c) for c in columns)
    for column in columns:
        points = sorted(
            client.get_metric_history(run.info.run_id, mlflow_key(column)), key=lambda m: m.step
        )
        assert [m.step for m in points] == list(range(1, EPOCHS + 1)), column
        expected = history[column].tolist()
        assert all(_same(m.value, e) for m, e in zip(points, expected, strict=True)), column
    params = run.data.params
    assert params["train.log"] == "mlflow" and params["train.balancer"] == "dwa"
    assert params["train.lr"] == str(config.train.lr) and params["tasks.3.name"] == "tags"
    assert params["data.train"] == str(tmp_path / "data.csv")


def test_mlflow_resume_continues_the_same_run(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    config = _config(tmp_path, log="mlflow", log_experiment="mine")
    first = config.model_copy(update={"train": config.train.model_copy(update={"epochs": 2})})
    pt.fit(first, out=tmp_path / "run")
    pt.fit(config, out=tmp_path / "run", resume=True)

    client = _client(tmp_path / "run" / "logs")
    run = _only_run(client, "mine")
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss/price")]
    assert sorted(steps) == list(range(1, EPOCHS + 1)) and run.info.status == "FINISHED"


def test_mlflow_follows_the_tracking_uri_and_marks_a_failed_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'server.db'}")

    def fail_at_3(record: dict[str, float]) -> None:
        if record["epoch"] == 3:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        pt.fit(_config(tmp_path, log="mlflow"), out=tmp_path / "run", callback=fail_at_3)

    from mlflow.tracking import MlflowClient

    client = MlflowClient()  # from MLFLOW_TRACKING_URI
    run = _only_run(client)
    assert run.info.status == "FAILED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss/aux")]
    assert sorted(steps) == [1, 2, 3]
    assert not (tmp_path / "run" / "logs" / "mlflow.db").exists()


def test_mlflow_keys_keep_task_names_mlflow_accepts() -> None:
    pytest.importorskip("mlflow")
    from mlflow.utils.validation import validate_param_and_metric_name

    for name in ("val_loss/price", "weight/bin:price", "train_loss/a+b (%)", "val_loss/größe"):
        assert validate_param_and_metric_name(mlflow_key(name)), name
    assert mlflow_key("val_loss/price") == "val_loss/price"
    assert mlflow_key("train_loss/a+b (%)") == "train_loss/a_b ___"


# ---- checked before training -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("backend", "module"), [("tensorboard", "tensorboard"), ("mlflow", "mlflow")]
)
def test_a_missing_package_names_the_extra_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import and find_spec see it as absent
    epochs: list[float] = []
    with pytest.raises(pt.ConfigError, match=r"train\.log: .*pip install 'polytask\[logging\]'"):
        pt.fit(_config(tmp_path, log=backend), out=tmp_path / "run", callback=epochs.append)
    assert epochs == [] and not (tmp_path / "run" / "logs").exists()


def test_an_unknown_backend_is_a_config_error_naming_train_log(tmp_path: Path) -> None:
    data = {"data": {"train": "data.csv"}, "tasks": [{"name": "y", "kind": "regression"}]}
    with pytest.raises(pt.ConfigError, match=r"train\.log: 'wandb' is not a logging backend"):
        parse_config({**data, "train": {"log": "wandb"}})
    with pytest.raises(pt.ConfigError, match=r"train\.log_dir: set train\.log"):
        parse_config({**data, "train": {"log_dir": "logs"}})


def test_logging_without_anywhere_to_write_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(pt.ConfigError, match=r"train\.log_dir"):
        pt.fit(_config(tmp_path, log="tensorboard"))


def test_only_rank_0_logs(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    config = _config(tmp_path, log="tensorboard")
    with open_logger(config, out=tmp_path / "run", rank=1) as logger:
        logger.log_epoch({"epoch": 1, "train_loss/price": 1.0})
    assert not (tmp_path / "run").exists()


def test_importing_polytask_imports_no_backend() -> None:
    code = (
        "import sys, polytask, polytask.logs, polytask.train\n"
        "loaded = [m for m in ('tensorboard', 'mlflow') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
