"""Experiment logging (``train.log``): each epoch's record to TensorBoard or MLflow.

A logger is driven by the records the ``Trainer`` already makes (the rows of ``history.csv``:
per-task train/validation losses and metrics, balancer weights ``weight/TASK``, the validation
objective, learning rate, seconds), one step per epoch, and records the config once. The
backends are optional extras (``pip install 'polytask[logging]'``), imported only when a
logger is opened.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import yaml

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Config, TrainConfig

Record = Mapping[str, float]
EXTRA = "pip install 'polytask[logging]'"
#: the folder of a run directory that loggers write to by default
LOG_FOLDER = "logs"


class EpochLogger:
    """Writes epoch records somewhere; ``close`` (or leaving a ``with`` block) ends the run.

    This base class logs nothing (``train.log: none``, and ranks other than 0)."""

    #: modules the backend imports (their packages come with ``polytask[logging]``)
    modules: ClassVar[tuple[str, ...]] = ()
    #: files of an earlier run in the default folder, replaced by a new (not resumed) run
    own_files: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def location(cls, config: TrainConfig, out: Path | None) -> Path | str | None:
        """Where this backend writes for a fit into run directory ``out`` (None: nowhere)."""
        if config.log_dir is not None:
            return config.log_dir
        return out / LOG_FOLDER if out is not None else None

    @classmethod
    def open(
        cls, config: Config, where: Path | str, *, out: Path | None, resume: bool
    ) -> EpochLogger:
        """A logger writing to ``where``; with ``resume``, continuing the run in ``out``."""
        return cls()

    def log_config(self, config: Config) -> None:
        """Record the config once, before the first epoch."""

    def log_epoch(self, record: Record) -> None:
        """Record one epoch (``record["epoch"]`` is the step)."""

    def close(self, *, failed: bool = False) -> None:
        """Flush and release the backend; ``failed``: training ended with an exception."""

    def __enter__(self) -> EpochLogger:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        self.close(failed=kind is not None)

    def chain(
        self, callback: Callable[[dict[str, float]], None] | None
    ) -> Callable[[dict[str, float]], None]:
        """A ``Trainer`` callback that logs each record, then calls ``callback``."""

        def both(record: dict[str, float]) -> None:
            self.log_epoch(record)
            if callback is not None:
                callback(record)

        return both


def _scalars(record: Record) -> Iterator[tuple[str, float]]:
    """The record's values to log: every column but the step."""
    return ((k, float(v)) for k, v in record.items() if k != "epoch")


class TensorBoardLogger(EpochLogger):
    """TensorBoard event files (``torch.utils.tensorboard``): one scalar tag per record column,
    grouped by its prefix (``train_loss/``, ``val_loss/``, ``weight/``), and the config as
    text."""

    modules = ("tensorboard",)
    own_files = ("events.out.tfevents.*",)

    def __init__(self, directory: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(directory))

    @classmethod
    def open(
        cls, config: Config, where: Path | str, *, out: Path | None, resume: bool
    ) -> TensorBoardLogger:
        logger = cls(Path(where))
        if not resume:
            logger.log_config(config)
        return logger

    def log_config(self, config: Config) -> None:
        # indented: TensorBoard renders text as Markdown, and a code block keeps the YAML as is
        text = "".join(f"    {line}\n" for line in config.to_yaml().splitlines())
        self.writer.add_text("config", text, global_step=0)

    def log_epoch(self, record: Record) -> None:
        step = int(record["epoch"])
        for tag, value in _scalars(record):
            self.writer.add_scalar(tag, value, global_step=step)

    def close(self, *, failed: bool = False) -> None:
        self.writer.close()


# MLflow's rule for keys: a colon is allowed except on Windows
_NOT_IN_MLFLOW_KEYS = re.compile(r"[^\w.\- /]" if sys.platform == "win32" else r"[^\w.\- /:]")


def mlflow_key(name: str) -> str:
    """``name`` as an MLflow metric or param key (characters MLflow refuses become ``_``)."""
    return _NOT_IN_MLFLOW_KEYS.sub("_", name)[:250]


def _flat(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """Dotted keys and string values of a nested config dump (list items by index)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _flat(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and any(isinstance(v, (Mapping, list)) for v in value):
        for i, item in enumerate(value):
            yield from _flat(item, f"{prefix}.{i}")
    else:
        yield prefix, str(value)[:6000]  # MLflow's longest param value


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    return (items[i : i + size] for i in range(0, len(items), size))


class MLflowLogger(EpochLogger):
    """An MLflow run: record columns as metrics (step = epoch), the config as params.

    The store is ``train.log_dir``, else ``MLFLOW_TRACKING_URI``, else the run directory's
    ``logs/``; a folder holds a SQLite store (``mlflow.db``, MLflow's local backend; its file
    store is deprecated) and the artifacts beside it. The run's id is kept in the run
    directory (``logs/mlflow_run.json``), so a resumed fit continues the same MLflow run.
    """

    modules = ("mlflow", "sqlalchemy", "alembic")
    own_files = ("mlflow.db", "mlflow_run.json")

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.run_id = run_id

    @classmethod
    def location(cls, config: TrainConfig, out: Path | None) -> Path | str | None:
        if config.log_dir is None and os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        return super().location(config, out)

    @classmethod
    def open(
        cls, config: Config, where: Path | str, *, out: Path | None, resume: bool
    ) -> MLflowLogger:
        from mlflow.tracking import MlflowClient

        artifacts = None
        if isinstance(where, Path):
            where = where.resolve()
            where.mkdir(parents=True, exist_ok=True)
            artifacts = (where / "artifacts").as_uri()
            uri = f"sqlite:///{where / 'mlflow.db'}"
        else:
            uri = where
        saved = out / LOG_FOLDER / "mlflow_run.json" if out is not None else None
        if resume and saved is not None and saved.is_file():
            earlier = json.loads(saved.read_text())
            if earlier.get("tracking_uri") == uri:
                logger = cls(uri, earlier["run_id"])
                logger.client.update_run(logger.run_id, status="RUNNING")
                return logger
        client = MlflowClient(tracking_uri=uri)
        name = config.train.log_experiment
        found = client.get_experiment_by_name(name)
        experiment = (
            found.experiment_id
            if found is not None
            else client.create_experiment(name, artifact_location=artifacts)
        )
        run_name = out.resolve().name if out is not None else None
        logger = cls(uri, client.create_run(experiment, run_name=run_name).info.run_id)
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps({"tracking_uri": uri, "run_id": logger.run_id}) + "\n")
        try:
            logger.log_config(config)
        except BaseException:
            logger.close(failed=True)
            raise
        return logger

    def log_config(self, config: Config) -> None:
        from mlflow.entities import Param

        dump = yaml.safe_load(config.to_yaml())  # DataFrames given from Python are left out
        params = [Param(mlflow_key(k), v) for k, v in _flat(dump)]
        for batch in _batches(params, 100):  # MLflow's most params per call
            self.client.log_batch(self.run_id, params=batch)

    def log_epoch(self, record: Record) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        step = int(record["epoch"])
        metrics = [Metric(mlflow_key(k), v, now, step) for k, v in _scalars(record)]
        for batch in _batches(metrics, 1000):  # MLflow's most metrics per call
            self.client.log_batch(self.run_id, metrics=batch)

    def close(self, *, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


#: ``train.log`` backends by name (``none``: nothing is logged)
LOGGERS: dict[str, type[EpochLogger]] = {
    "tensorboard": TensorBoardLogger,
    "mlflow": MLflowLogger,
}


def check_logging(config: TrainConfig, *, out: str | Path | None) -> None:
    """A ConfigError, before any training, where ``train.log`` cannot log: its packages are
    not installed, or it has nowhere to write."""
    if config.log == "none":
        return
    backend = LOGGERS[config.log]
    missing = [m for m in backend.modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"train.log: {config.log!r} needs {', '.join(missing)} (not installed): {EXTRA}"
        )
    if backend.location(config, Path(out) if out is not None else None) is None:
        raise ConfigError(
            f"train.log: {config.log!r} writes into the run directory's {LOG_FOLDER}/; a fit "
            "without a run directory needs train.log_dir"
        )


def open_logger(
    config: Config, *, out: str | Path | None, resume: bool = False, rank: int = 0
) -> EpochLogger:
    """The logger ``config.train.log`` asks for, the config recorded; one that logs nothing for
    ``none`` and on every rank but 0 (under ``torchrun`` rank 0 logs for all).

    A new (not resumed) fit into a run directory replaces an earlier run's files in its
    ``logs/``, as it replaces the rest of the run."""
    train = config.train
    check_logging(train, out=out)
    if train.log == "none" or rank != 0:
        return EpochLogger()
    backend = LOGGERS[train.log]
    out = Path(out) if out is not None else None
    where = backend.location(train, out)
    assert where is not None  # check_logging
    if out is not None and not resume and isinstance(where, Path) and where == out / LOG_FOLDER:
        for pattern in backend.own_files:
            for path in where.glob(pattern):
                path.unlink()
    return backend.open(config, where, out=out, resume=resume)
