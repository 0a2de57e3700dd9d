"""Run directories and checkpoints. Weights live in safetensors, everything else in JSON/YAML/CSV;
loading never unpickles, so opening a run never executes code from it.

A run directory holds ``config.yaml``, ``model.safetensors``, ``model.json`` (architecture),
``preprocess.json``, ``tasks.json``, ``metrics.json``, ``history.csv``, ``plots/``, when the
config has signals, ``signals.json`` (what they fitted on the training table) and, when some
main tasks are predicted from their own weights (``train.select: per_task``,
``train.finetune``), ``snapshots.safetensors`` + ``snapshots.json``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import Config, ModelConfig, parse_config
from .data import Preprocessor, TaskData, read_table
from .errors import DataError, PolytaskError, RunError
from .evaluate import task_scores
from .models import MultiTaskModel, Trunk, build_model
from .tasks import Task

if TYPE_CHECKING:
    from .plan import PlanRun

FORMAT_VERSION = 1
#: The file that makes a run directory a plan's: its member runs and which main task each
#: predicts (``plan.PlanRun``).
MEMBERS_FILE = "members.json"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (NaN written as null)."""
    _atomic_write(path, json.dumps(_finite(data), indent=2))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _finite(value.item())
    return value


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise RunError(f"run file {str(path)!r} is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"run file {str(path)!r} is corrupt: {exc}") from None


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise RunError(f"weights file {str(path)!r} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise RunError(f"weights file {str(path)!r} is corrupt or not safetensors: {exc}") from None


def _load_weights(model: nn.Module, tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise RunError(f"weights in {str(path)!r} do not fit the model: {first}") from None


def as_frame(data: Any, features: list[str]) -> pd.DataFrame:
    """The table given to ``predict`` / ``evaluate`` as a DataFrame, or a DataError that says
    what is accepted."""
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, (str, Path)):
        return read_table(data)
    if isinstance(data, Mapping):
        try:
            return pd.DataFrame(dict(data))
        except ValueError as exc:
            raise DataError(f"cannot make a table from the mapping: {exc}") from None
    if isinstance(data, (np.ndarray, torch.Tensor)):
        array = np.asarray(data)
        if array.ndim != 2 or array.shape[1] != len(features):
            raise DataError(
                f"an array input must have shape (rows, {len(features)}) with the inputs in this "
                f"order: {', '.join(features)}; got shape {array.shape}"
            )
        return pd.DataFrame(array, columns=features)
    raise DataError(
        "expected a pandas DataFrame, a mapping of columns, a CSV/Parquet path or a 2-D array; "
        f"got {type(data).__name__}"
    )


@dataclass
class Run:
    """A fitted multi-task model with its preprocessing, config, history and scores."""

    config: Config
    model: MultiTaskModel
    preprocessor: Preprocessor
    history: pd.DataFrame | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    directory: Path | None = None
    custom_trunk: bool = False
    signals: dict[str, Any] | None = None  # what the config's signals fitted (signals.json)
    #: Other weights of ``model`` by label (``train.select: per_task`` epochs, fine-tuned
    #: copies); a tensor left out is the same as ``model``'s.
    snapshots: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    #: The main tasks predicted from a snapshot, and its label; the others use ``model``.
    task_snapshot: dict[str, str] = field(default_factory=dict)
    #: The architecture's routing weights (``mixing_tables``: gates averaged over the
    #: validation rows, cross-stitch matrices), saved as ``mixing.json`` and plotted.
    mixing: dict[str, Any] = field(default_factory=dict)

    @property
    def tasks(self) -> list[Task]:
        return self.preprocessor.tasks

    @property
    def main_tasks(self) -> list[Task]:
        return [t for t in self.tasks if t.is_main]

    # ---- inference ----------------------------------------------------------------------
    @torch.no_grad()
    def _outputs(self, data: TaskData, chunk: int = 8192) -> dict[str, torch.Tensor]:
        self.model.eval()
        device = next(self.model.parameters()).device
        parts: list[torch.Tensor] = []
        for start in range(0, len(data), chunk):
            stop = min(start + chunk, len(data))
            x_num, x_cat = data.x_num[start:stop].to(device), data.x_cat[start:stop].to(device)
            parts.append(self.model(x_num, x_cat, packed=True).cpu())
        return self.model.unpack(torch.cat(parts))

    def _task_outputs(
        self, data: TaskData, names: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Outputs of the tasks ``names`` (default: all), each from the weights that predict it:
        its snapshot if it has one, else ``model``'s. One forward pass per set of weights."""
        names = list(self.model.task_names if names is None else names)
        by_label: dict[str | None, list[str]] = {}
        for name in names:
            by_label.setdefault(self.task_snapshot.get(name), []).append(name)
        outputs: dict[str, torch.Tensor] = {}
        for label, group in by_label.items():
            with self._weights(label):
                produced = self._outputs(data)
            outputs.update({name: produced[name] for name in group})
        return {name: outputs[name] for name in names}

    @contextlib.contextmanager
    def _weights(self, label: str | None) -> Iterator[None]:
        """``model`` holds the snapshot ``label`` (``None``: its own weights) inside the block;
        its own tensors are put back after, so a snapshot stores only what differs."""
        if label is None:
            yield
            return
        swapped = self.snapshots[label]
        current = self.model.state_dict()
        kept = {name: current[name].detach().clone() for name in swapped}
        self.model.load_state_dict(swapped, strict=False)
        try:
            yield
        finally:
            self.model.load_state_dict(kept, strict=False)

    def predict_arrays(
        self, frame: pd.DataFrame, *, include_auxiliary: bool = False
    ) -> dict[str, np.ndarray]:
        """Decoded predictions per task (main tasks only unless ``include_auxiliary``)."""
        frame = as_frame(frame, self.preprocessor.features)
        data = TaskData.from_frame(frame, self.preprocessor, tasks=[])
        tasks = self.tasks if include_auxiliary else self.main_tasks
        outputs = self._task_outputs(data, [t.name for t in tasks])
        return {t.name: self.preprocessor.decode(t, outputs[t.name]) for t in tasks}

    def predict(
        self, frame: pd.DataFrame | Mapping[str, Any] | np.ndarray | str | Path
    ) -> pd.DataFrame:
        """One column per main task (``TASK:CLASS`` probabilities for classifiers), rows kept.

        ``frame``: a DataFrame, a mapping of columns, a CSV/Parquet path, or a 2-D array whose
        columns are the inputs in the order of ``preprocessor.features``. Only the inputs are
        needed; target and auxiliary columns are ignored.
        """
        frame = as_frame(frame, self.preprocessor.features)
        arrays = self.predict_arrays(frame)
        columns: dict[str, np.ndarray] = {}
        for task in self.main_tasks:
            values = arrays[task.name]
            if task.kind == "binary":
                classes = self.preprocessor.targets[task.name].classes or ["0", "1"]
                columns[f"{task.name}:{classes[0]}"] = 1.0 - values
                columns[f"{task.name}:{classes[1]}"] = values
            elif task.kind == "multiclass":
                for j, cls in enumerate(self.preprocessor.targets[task.name].classes or []):
                    columns[f"{task.name}:{cls}"] = values[:, j]
            elif task.kind == "multilabel":
                for j, column in enumerate(task.columns):
                    columns[f"{task.name}:{column}"] = values[:, j]
            else:
                columns[task.name] = values
        return pd.DataFrame(columns, index=frame.index)

    def score(
        self, data: TaskData, *, include_auxiliary: bool = True, primary_only: bool = False
    ) -> dict[str, dict[str, float]]:
        """Metrics per task on encoded data, over each task's labelled rows (with
        ``primary_only``, each task's primary metric and ``n``)."""
        scored = [
            t for t in self.tasks if t.name in data.targets and (include_auxiliary or t.is_main)
        ]
        outputs = self._task_outputs(data, [t.name for t in scored])
        scores = {}
        for task in scored:
            mask = data.masks[task.name]
            if not task.is_main and not bool(mask.any()):  # a training-only signal, absent here
                continue
            truth = self.preprocessor.decode_target(task, data.targets[task.name], mask)
            pred = self.preprocessor.decode(task, outputs[task.name])
            if task.kind != "multilabel":
                pred = pred[mask.cpu().numpy()]
            if primary_only:
                task = task.model_copy(update={"metrics": [task.primary_metric]})
            scores[task.name] = task_scores(task, truth, pred)
        return scores

    def evaluate(self, frame: pd.DataFrame | str | Path) -> dict[str, dict[str, float]]:
        """Metrics per task on a labelled table (a DataFrame or a CSV/Parquet path): every task,
        main or auxiliary, whose label columns are present is scored over its labelled rows."""
        frame = as_frame(frame, self.preprocessor.features)
        present = [t for t in self.tasks if all(c in frame.columns for c in t.columns)]
        if not present:
            raise DataError(
                "evaluate: the data has no task's label column (tasks: "
                f"{', '.join(c for t in self.tasks for c in t.columns)})"
            )
        data = TaskData.from_frame(frame, self.preprocessor, tasks=present)
        return self.score(data)

    # ---- persistence --------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the run directory (files are replaced atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _atomic_save_tensors(self.model.state_dict(), directory / "model.safetensors")
        _save_snapshots(directory, self.model.state_dict(), self.snapshots, self.task_snapshot)
        write_json(
            directory / "model.json",
            {
                "format": FORMAT_VERSION,
                "spec": self.config.model.model_dump(mode="json"),
                "n_numeric": self.preprocessor.n_numeric,
                "cardinalities": self.preprocessor.cardinalities,
                "out_dims": self.preprocessor.output_dims(),
                "custom_trunk": self.custom_trunk,
                "versions": versions(),
            },
        )
        write_json(directory / "preprocess.json", self.preprocessor.to_json())
        write_json(directory / "tasks.json", [t.model_dump() for t in self.tasks])
        _atomic_write(directory / "config.yaml", self.config.to_yaml())
        write_json(directory / "metrics.json", self.metrics)
        if self.signals is not None:
            write_json(directory / "signals.json", self.signals)
        if self.mixing:
            from .report import plot_mixing

            write_json(directory / "mixing.json", self.mixing)
            architecture = self.config.model.architecture
            plot_mixing(self.mixing, directory / "plots", architecture=architecture)
        if self.history is not None and len(self.history):
            self.history.to_csv(directory / "history.csv", index=False)
            from .report import plot_learning_curves, plot_weights

            plot_learning_curves(self.history, self.tasks, directory / "plots")
            if any(c.startswith("weight/") for c in self.history.columns):
                plot_weights(self.history, directory / "plots", balancer=self.config.train.balancer)
        self.directory = directory
        return directory


def _save_snapshots(
    directory: Path,
    model_state: Mapping[str, torch.Tensor],
    snapshots: Mapping[str, Mapping[str, torch.Tensor]],
    task_snapshot: Mapping[str, str],
) -> None:
    """``snapshots.safetensors`` (tensor ``i/name``: snapshot i's ``name``, written only where it
    differs from ``model.safetensors``) and ``snapshots.json`` (labels, task → label); a run
    without snapshots has neither file."""
    json_path, tensor_path = directory / "snapshots.json", directory / "snapshots.safetensors"
    labels = [label for label in snapshots if label in task_snapshot.values()]
    if not labels:
        json_path.unlink(missing_ok=True)
        tensor_path.unlink(missing_ok=True)
        return
    tensors = {
        f"{i}/{name}": value
        for i, label in enumerate(labels)
        for name, value in snapshots[label].items()
        if not torch.equal(value.cpu(), model_state[name].cpu())
    }
    _atomic_save_tensors(tensors, tensor_path)
    write_json(
        json_path,
        {"format": FORMAT_VERSION, "snapshots": labels, "tasks": dict(task_snapshot)},
    )


def _load_snapshots(
    directory: Path, model: nn.Module
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, str]]:
    """What ``_save_snapshots`` wrote, checked against ``model`` (names, shapes, labels)."""
    json_path, tensor_path = directory / "snapshots.json", directory / "snapshots.safetensors"
    if not json_path.is_file():
        return {}, {}
    meta = _read_json(json_path)
    tensors = _load_tensors(tensor_path)
    try:
        labels = [str(label) for label in meta["snapshots"]]
        task_snapshot = {str(task): str(label) for task, label in meta["tasks"].items()}
    except (KeyError, TypeError, AttributeError) as exc:
        raise RunError(f"run file {str(json_path)!r} is invalid: {exc!r}") from None
    snapshots: dict[str, dict[str, torch.Tensor]] = {label: {} for label in labels}
    state = model.state_dict()
    for key, value in tensors.items():
        index, _, name = key.partition("/")
        if not index.isdigit() or int(index) >= len(labels) or name not in state:
            raise RunError(f"weights in {str(tensor_path)!r} do not fit the model: {key!r}")
        if value.shape != state[name].shape:
            raise RunError(
                f"weights in {str(tensor_path)!r} do not fit the model: {key!r} has shape "
                f"{tuple(value.shape)}, the model's {tuple(state[name].shape)}"
            )
        snapshots[labels[int(index)]][name] = value
    unknown = sorted(set(task_snapshot.values()) - set(labels))
    tasks = getattr(model, "task_names", None)
    strangers = [t for t in task_snapshot if tasks is not None and t not in tasks]
    if unknown or strangers:
        raise RunError(
            f"run file {str(json_path)!r} is invalid: "
            + (f"unknown snapshots {unknown}" if unknown else f"unknown tasks {strangers}")
        )
    return snapshots, task_snapshot


RUN_FILES = (
    "model.safetensors",
    "snapshots.safetensors",
    "snapshots.json",
    "model.json",
    "preprocess.json",
    "tasks.json",
    "config.yaml",
    "metrics.json",
    "signals.json",
    "mixing.json",
    "history.csv",
)


def holds_run(directory: Path) -> bool:
    """True when ``directory`` holds (part of) a run: its files or a checkpoint."""
    return any((directory / name).exists() for name in (*RUN_FILES, "checkpoint"))


def check_run_dir(directory: str | Path, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Make sure a run can be written to ``directory`` before any training starts.

    A file in the way, an existing run (unless resuming it or ``overwrite``) and a folder that
    cannot be created are errors; with ``overwrite`` the old run's files are removed first, so
    nothing of the old run (plots of tasks it had, its checkpoint) is mixed into the new one.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise RunError(f"run directory {str(directory)!r} is a file")
    if directory.is_dir() and holds_run(directory) and not resume:
        if not overwrite:
            raise RunError(
                f"{str(directory)!r} already holds a run; write to another directory, resume "
                "it or replace it (CLI: --resume / --overwrite; Python: resume= / overwrite=)"
            )
        for name in RUN_FILES:
            (directory / name).unlink(missing_ok=True)
        for name in ("checkpoint", "plots"):
            if (directory / name).is_dir():
                shutil.rmtree(directory / name)
    return writable_dir(directory, "run directory")


def writable_dir(directory: Path, label: str) -> Path:
    """``directory``, created if missing; a ``RunError`` naming ``label`` if it cannot be
    created or written to."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create {label} {str(directory)!r}: {exc.strerror}") from None
    if not os.access(directory, os.W_OK):
        raise RunError(f"{label} {str(directory)!r} is not writable")
    return directory


def versions() -> dict[str, str]:
    from . import __version__

    return {
        "polytask": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
    }


def load(directory: str | Path, *, trunk: Trunk | None = None) -> Run | PlanRun:
    """Restore a saved run. ``trunk`` is required when the run was trained with a custom trunk
    (its code cannot live in the run directory): pass the same module, newly constructed, or
    the factory that built it. A ``plan``'s run directory gives a ``plan.PlanRun``, which
    predicts and scores as a ``Run`` does."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RunError(f"run directory {str(directory)!r} does not exist")
    if (directory / MEMBERS_FILE).is_file():
        from .plan import load_plan_run

        return load_plan_run(directory)
    meta = _read_json(directory / "model.json")
    if meta.get("custom_trunk") and trunk is None:
        raise RunError(
            f"run {str(directory)!r} was trained with a custom trunk: pass the same module "
            "class, newly constructed, as load(..., trunk=...)"
        )
    try:
        config = parse_config(_read_yaml(directory / "config.yaml"))
        preprocessor = Preprocessor.from_json(_read_json(directory / "preprocess.json"))
        spec = ModelConfig.model_validate(meta["spec"])
        model = build_model(
            spec,
            n_numeric=int(meta["n_numeric"]),
            cardinalities=[int(c) for c in meta["cardinalities"]],
            out_dims={str(k): int(v) for k, v in meta["out_dims"].items()},
            heads={t.name: t.head for t in preprocessor.tasks if t.head is not None},
            trunk=trunk,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        detail = str(exc) if isinstance(exc, PolytaskError) else repr(exc)
        raise RunError(f"run {str(directory)!r} has an invalid description: {detail}") from None
    path = directory / "model.safetensors"
    _load_weights(model, _load_tensors(path), path)
    snapshots, task_snapshot = _load_snapshots(directory, model)
    model.eval()
    history = (
        pd.read_csv(directory / "history.csv") if (directory / "history.csv").is_file() else None
    )
    metrics = (
        _read_json(directory / "metrics.json") if (directory / "metrics.json").is_file() else {}
    )
    signals = (
        _read_json(directory / "signals.json") if (directory / "signals.json").is_file() else None
    )
    mixing = _read_json(directory / "mixing.json") if (directory / "mixing.json").is_file() else {}
    return Run(
        config=config,
        model=model,
        preprocessor=preprocessor,
        history=history,
        metrics=metrics,
        directory=directory,
        custom_trunk=bool(meta.get("custom_trunk")),
        signals=signals,
        snapshots=snapshots,
        task_snapshot=task_snapshot,
        mixing=mixing,
    )


@torch.no_grad()
def mixing_tables(model: MultiTaskModel, data: TaskData, chunk: int = 8192) -> dict[str, Any]:
    """``model.mixing`` over all rows of ``data`` (gates averaged, in chunks), JSON-ready."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tables: dict[str, Any] = {}
    sums: dict[str, torch.Tensor] = {}
    for start in range(0, len(data), chunk):
        stop = min(start + chunk, len(data))
        x_num, x_cat = data.x_num[start:stop].to(device), data.x_cat[start:stop].to(device)
        for name, table in model.mixing(x_num, x_cat).items():
            tables[name] = table
            weighted = table.values.double().cpu() * (stop - start)
            sums[name] = sums[name] + weighted if name in sums else weighted
    model.train(was_training)
    for name, table in tables.items():
        table.values = sums[name] / len(data)
    return {name: table.to_json() for name, table in tables.items()}


def _read_yaml(path: Path) -> Any:
    import yaml

    if not path.is_file():
        raise RunError(f"run file {str(path)!r} is missing")
    try:
        return yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RunError(f"run file {str(path)!r} is corrupt: {exc}") from None


# ---- checkpoints (resume) -----------------------------------------------------------------
def _flatten_optimizer(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, entries in state["state"].items():
        plain["state"][str(pid)] = {}
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value
            else:
                plain["state"][str(pid)][key] = value
    return tensors, plain


def _unflatten_optimizer(
    tensors: Mapping[str, torch.Tensor], plain: Mapping[str, Any]
) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(pid): dict(v) for pid, v in plain["state"].items()}
    for key, value in tensors.items():
        pid, _, name = key.partition(".")
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def _pop_prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove the entries named ``prefix…`` from ``tensors``; return them without the prefix."""
    return {k.removeprefix(prefix): tensors.pop(k) for k in list(tensors) if k.startswith(prefix)}


def save_checkpoint(
    directory: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    balancer: Any,
    state: dict[str, Any],
    best_model: Mapping[str, torch.Tensor],
    rng: Mapping[str, torch.Tensor],
    snapshots: Mapping[int, Mapping[str, torch.Tensor]] | None = None,
) -> None:
    """Everything needed to resume training, written file by file with atomic replaces.

    ``rng`` holds the states of the random generators by name (torch's, the shuffle's), saved
    as byte tensors beside the optimizer state. ``snapshots`` (``train.select: per_task``: the
    weights of each task's best epoch so far, by epoch) replace ``snapshots.safetensors``;
    ``None`` leaves that file as it is (the trainer passes them when they changed).
    """
    directory.mkdir(parents=True, exist_ok=True)
    _atomic_save_tensors(dict(model.state_dict()), directory / "model.safetensors")
    _atomic_save_tensors(dict(best_model), directory / "best.safetensors")
    if snapshots is not None:
        _atomic_save_tensors(
            {f"{epoch}/{k}": v for epoch, state in snapshots.items() for k, v in state.items()},
            directory / "snapshots.safetensors",
        )
    opt_tensors, opt_plain = _flatten_optimizer(optimizer.state_dict())
    for name, value in rng.items():
        opt_tensors[f"__rng__.{name}"] = value
    for name, value in balancer.state_dict().items():
        opt_tensors[f"__balancer__.{name}"] = value
    _atomic_save_tensors(opt_tensors, directory / "optimizer.safetensors")
    write_json(directory / "state.json", {**state, "optimizer": opt_plain})


def load_checkpoint(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, balancer: Any
) -> dict[str, Any]:
    """Restore model, optimizer and balancer in place; return the loop state (with ``rng``,
    the generator states given to ``save_checkpoint``)."""
    state = _read_json(directory / "state.json")
    model_path = directory / "model.safetensors"
    _load_weights(model, _load_tensors(model_path), model_path)
    tensors = _load_tensors(directory / "optimizer.safetensors")
    rng, balancer_state = (
        _pop_prefixed(tensors, "__rng__."),
        _pop_prefixed(tensors, "__balancer__."),
    )
    if "__generator__" in tensors:  # checkpoints before the RNG states: the shuffle's only
        rng["shuffle"] = tensors.pop("__generator__")
    try:
        optimizer.load_state_dict(_unflatten_optimizer(tensors, state.pop("optimizer")))
    except (KeyError, ValueError) as exc:
        raise RunError(f"optimizer state in {str(directory)!r} does not fit: {exc}") from None
    balancer.load_state_dict(balancer_state)
    best_path = directory / "best.safetensors"
    state["best_model"] = _load_tensors(best_path)
    state["snapshots"] = {}
    if state.get("task_best"):
        for key, value in _load_tensors(directory / "snapshots.safetensors").items():
            epoch, _, name = key.partition("/")
            state["snapshots"].setdefault(int(epoch), {})[name] = value
    state["rng"] = rng
    if state.get("best_objective") is None:
        state["best_objective"] = math.inf
    state["records"] = [
        {k: (math.nan if v is None else v) for k, v in r.items()} for r in state["records"]
    ]
    return state


__all__ = ["Run", "load", "load_checkpoint", "mixing_tables", "save_checkpoint", "write_json"]
