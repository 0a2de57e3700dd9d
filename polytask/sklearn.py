"""scikit-learn estimators over polytask's own training engine.

``MultiTaskRegressor`` (a regression task per column of Y), ``MultiTaskClassifier`` (a binary
or multiclass task per column of Y) and ``MultiTaskEstimator`` (explicit ``Task`` specs, mixed
kinds, auxiliary tasks) build a ``Config`` and a DataFrame and call ``polytask.train.fit``:
one training loop for the library, the CLI and these estimators. A NaN in Y is a missing
label (masked out of that task's loss), never imputed. The fitted ``run_`` lives in memory;
it is written to disk only when ``run_dir`` is given.

The hyper-parameters are fields of the ``Config`` each fit builds (the config's own errors
name them): ``shared``, ``head``, ``architecture``, ``architecture_options`` (as
``model.options``), ``activation``, ``dropout`` → ``model``; ``balancer``,
``balancer_options``, ``optimizer``, ``epochs``, ``batch_size``, ``lr``, ``weight_decay``,
``patience``, ``device`` → ``train``; ``validation_fraction`` (the share of the rows held out
for early stopping; 0: none) and ``impute`` (fill missing inputs with the training median and
add a missing-indicator) → ``data``; ``random_state`` → ``train.seed`` and
``data.split_seed`` (an int is used as it is; ``None`` or a ``RandomState`` draws one per fit).
``run_dir`` writes the run directory there, replacing the one a previous fit wrote.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import r2_score
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import (
    check_array,
    check_consistent_length,
    check_is_fitted,
)

try:
    from sklearn.utils import Tags
    from sklearn.utils.validation import validate_data
except ImportError as exc:  # both came with scikit-learn 1.6
    raise ImportError(
        "polytask.sklearn needs scikit-learn >= 1.6: pip install -U scikit-learn"
    ) from exc

from .config import Config, DataConfig, ModelConfig, TrainConfig
from .data import label_key
from .tasks import Task
from .train import fit as _fit_run

__all__ = ["MultiTaskClassifier", "MultiTaskEstimator", "MultiTaskRegressor"]


class _MultiTaskBase(BaseEstimator):
    """Hyper-parameters (see the module docstring), input checks and training shared by the
    three estimators."""

    def __init__(
        self,
        *,
        shared: Sequence[int] = (64, 64),
        head: Sequence[int] = (),
        architecture: str = "hard_sharing",
        architecture_options: Mapping[str, Any] | None = None,
        activation: str = "relu",
        dropout: float = 0.0,
        balancer: str = "fixed",
        balancer_options: Mapping[str, Any] | None = None,
        optimizer: str = "adam",
        epochs: int = 100,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        validation_fraction: float = 0.1,
        patience: int | None = 10,
        impute: bool = False,
        device: str = "auto",
        random_state: int | np.random.RandomState | None = None,
        run_dir: str | Path | None = None,
    ) -> None:
        self.shared = shared
        self.head = head
        self.architecture = architecture
        self.architecture_options = architecture_options
        self.activation = activation
        self.dropout = dropout
        self.balancer = balancer
        self.balancer_options = balancer_options
        self.optimizer = optimizer
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.impute = impute
        self.device = device
        self.random_state = random_state
        self.run_dir = run_dir

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.target_tags.single_output = True
        tags.target_tags.multi_output = True
        tags.input_tags.allow_nan = bool(self.impute)
        return tags

    # ---- inputs -------------------------------------------------------------------------
    def _feature_names(self) -> list[str]:
        if hasattr(self, "feature_names_in_"):
            return [str(name) for name in self.feature_names_in_]
        return [f"x{j}" for j in range(self.n_features_in_)]

    def _features(self, X: Any, *, reset: bool) -> pd.DataFrame:
        """X as the table polytask reads: a numeric array is checked by sklearn; a DataFrame
        with non-numeric columns is kept as it is (they become learned embeddings)."""
        numeric = not isinstance(X, pd.DataFrame) or all(
            pd.api.types.is_numeric_dtype(t) or pd.api.types.is_bool_dtype(t) for t in X.dtypes
        )
        if numeric:
            finite = "allow-nan" if self.impute else True
            array = validate_data(self, X, reset=reset, dtype=np.float64, ensure_all_finite=finite)
            return pd.DataFrame(array, columns=self._feature_names())
        validate_data(self, X, reset=reset, skip_check_array=True)
        frame = X.reset_index(drop=True)
        frame.columns = self._feature_names()
        return frame

    def _config(self, tasks: list[Task], features: list[str]) -> Config:
        seed = self.random_state
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            seed = int(check_random_state(seed).randint(np.iinfo(np.int32).max))
        return Config(
            data=DataConfig(
                features=features,
                validation_fraction=self.validation_fraction,
                test_fraction=0.0,
                split_seed=int(seed),
                impute=self.impute,
            ),
            tasks=tasks,
            model=ModelConfig(
                architecture=self.architecture,
                shared=list(self.shared),
                head=list(self.head),
                options=dict(self.architecture_options or {}),
                activation=self.activation,
                dropout=self.dropout,
            ),
            train=TrainConfig(
                balancer=self.balancer,
                balancer_options=dict(self.balancer_options or {}),
                optimizer=self.optimizer,
                lr=self.lr,
                weight_decay=self.weight_decay,
                epochs=self.epochs,
                batch_size=self.batch_size,
                patience=self.patience,
                seed=int(seed),
                device=self.device,
            ),
        )

    def _train(self, X: Any, Y: Any, *, numeric: bool) -> list[np.ndarray]:
        """Check X and Y, make the tasks (``_make_tasks``) and fit ``run_``; returns Y's
        columns as given."""
        if Y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None"
            )
        features = self._features(X, reset=True)
        targets = _target_columns(Y, numeric=numeric)
        check_consistent_length(features, targets.columns[0])
        self._one_output = targets.one_dimensional
        tasks, labels = self._make_tasks(targets)
        taken = sorted(set(labels) & set(features.columns))
        if taken:
            raise ValueError(
                f"Y columns {taken} have the names of X columns; rename them (a task's target "
                "cannot also be an input)"
            )
        frame = features.assign(**labels)
        config = self._config(tasks, list(features.columns))
        out = self.run_dir
        with warnings.catch_warnings():
            # fit scores the validation rows for run_.metrics; an AUC there is undefined when a
            # small split holds one class, which says nothing about the model asked for
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            self.run_ = _fit_run(config, frame=frame, out=out, overwrite=out is not None)
        self.tasks_ = list(self.run_.tasks)
        self.n_iter_ = 0 if self.run_.history is None else len(self.run_.history)
        return targets.columns

    def _make_tasks(self, targets: _Targets) -> tuple[list[Task], dict[str, np.ndarray]]:
        """The tasks for Y's columns, and the label columns polytask reads, by name."""
        raise NotImplementedError

    def _outputs(self, X: Any) -> dict[str, np.ndarray]:
        """Each main task's decoded prediction (value, P(class 1), class probabilities)."""
        check_is_fitted(self, "run_")
        return self.run_.predict_arrays(self._features(X, reset=False))

    def _shaped(self, columns: list[np.ndarray]) -> np.ndarray:
        """Outputs as sklearn shapes them: 1-D for a 1-D Y, else one column per output."""
        if self._one_output:
            return columns[0]
        kinds = {c.dtype.kind for c in columns}
        dtype = np.result_type(*columns) if kinds <= set("biuf") else object
        return np.column_stack([c.astype(dtype) for c in columns])


class MultiTaskRegressor(RegressorMixin, _MultiTaskBase):
    """One shared network, one regression task per column of Y (NaN = missing label).

    ``fit(X, Y)`` with ``Y`` of shape ``(n,)`` or ``(n, n_outputs)``; ``predict`` returns the
    same shape. ``score`` is the mean over outputs of R² on each output's labelled rows.
    Fitted: ``run_`` (the polytask ``Run``), ``tasks_``, ``n_outputs_``, ``n_features_in_``,
    ``feature_names_in_`` (DataFrame X), ``n_iter_`` (epochs trained). Hyper-parameters: see
    the module docstring.
    """

    def fit(self, X: Any, Y: Any) -> MultiTaskRegressor:
        """Train on X and Y; returns self."""
        self._train(X, Y, numeric=True)
        return self

    def _make_tasks(self, targets: _Targets) -> tuple[list[Task], dict[str, np.ndarray]]:
        self.n_outputs_ = len(targets.names)
        tasks = [Task(name=name, kind="regression") for name in targets.names]
        return tasks, dict(zip(targets.names, targets.columns, strict=True))

    def predict(self, X: Any) -> np.ndarray:
        """Predicted values, shape ``(n,)`` or ``(n, n_outputs)``."""
        outputs = self._outputs(X)
        return self._shaped([outputs[t.name].astype(np.float64) for t in self.tasks_])

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Mean over outputs of R² on each output's labelled rows."""
        truth = _target_columns(y, numeric=True).columns
        predicted = _as_columns(self.predict(X))
        weights = _weights(sample_weight, truth[0])
        return _mean_over_outputs(truth, predicted, weights, ["regression"] * len(truth))


class MultiTaskClassifier(ClassifierMixin, _MultiTaskBase):
    """One shared network, one classification task per column of Y (NaN = missing label).

    A column with two classes is a binary task, with more a multiclass task. ``classes_`` is
    the array of classes for a 1-D Y, else a list of arrays, one per output (sklearn's
    multi-output convention), as are ``predict_proba``'s results. ``score`` is the mean over
    outputs of the accuracy on each output's labelled rows. With NaN in Y, give cross-validation
    splits (``cv=KFold(...)``): sklearn's default for classifiers inspects Y to stratify and
    fails on NaN. Hyper-parameters: see the module docstring.
    """

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True  # a 0/1 indicator column is a binary task
        return tags

    def fit(self, X: Any, Y: Any) -> MultiTaskClassifier:
        """Train on X and Y; returns self."""
        self._train(X, Y, numeric=False)
        return self

    def _make_tasks(self, targets: _Targets) -> tuple[list[Task], dict[str, np.ndarray]]:
        tasks, labels, classes = [], {}, []
        for name, column in zip(targets.names, targets.columns, strict=True):
            labelled = ~pd.isna(column)
            values = column[labelled]
            if values.dtype == object and not all(isinstance(v, str) for v in values):
                native = np.asarray(values.tolist())  # numbers held in an object array
                values = native if native.dtype.kind in "biuf" else values
            check_classification_targets(values)
            found = np.unique(values)
            if len(found) < 2:
                shown = f"one class ({found[0]!r})" if len(found) else "no labels"
                raise ValueError(
                    f"Y column {name!r} has {shown}; a classifier needs at least two classes "
                    "per output"
                )
            codes = np.full(len(column), np.nan)
            codes[labelled] = np.searchsorted(found, values)
            kind = "binary" if len(found) == 2 else "multiclass"
            tasks.append(Task(name=name, kind=kind, classes=list(range(len(found)))))
            labels[name] = codes
            classes.append(found)
        self.n_outputs_ = len(targets.names)
        self.classes_ = classes[0] if self._one_output else classes
        return tasks, labels

    def _class_lists(self) -> list[np.ndarray]:
        return [self.classes_] if self._one_output else list(self.classes_)

    def _probabilities(self, X: Any) -> list[np.ndarray]:
        outputs = self._outputs(X)
        probabilities = []
        for task in self.tasks_:
            values = outputs[task.name].astype(np.float64)
            if task.kind == "binary":
                values = np.column_stack([1.0 - values, values])
            probabilities.append(values / values.sum(axis=1, keepdims=True))
        return probabilities

    def predict_proba(self, X: Any) -> np.ndarray | list[np.ndarray]:
        """Class probabilities in the order of ``classes_``: an ``(n, n_classes)`` array for a
        1-D Y, else a list of such arrays, one per output."""
        probabilities = self._probabilities(X)
        return probabilities[0] if self._one_output else probabilities

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each output, shape ``(n,)`` or ``(n, n_outputs)``."""
        probabilities = self._probabilities(X)
        columns = [
            classes[p.argmax(axis=1)]
            for classes, p in zip(self._class_lists(), probabilities, strict=True)
        ]
        return self._shaped(columns)

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Mean over outputs of the accuracy on each output's labelled rows."""
        truth = _target_columns(y, numeric=False).columns
        predicted = _as_columns(self.predict(X))
        weights = _weights(sample_weight, truth[0])
        return _mean_over_outputs(truth, predicted, weights, ["binary"] * len(truth))


class MultiTaskEstimator(_MultiTaskBase):
    """One shared network for explicit polytask ``Task`` specs of any kinds.

    ``tasks``: ``Task`` objects (or their fields as mappings); ``None`` makes one regression
    task per column of Y. ``Y`` is a DataFrame holding every task's target columns, or an
    array whose columns are the tasks' target columns in order (a multilabel task's several).
    Auxiliary tasks are trained on but not predicted. ``predict`` returns one column per main
    task's target column: values, class labels, 0/1 per multilabel column. ``score`` is the
    mean over main tasks of R² (regression, count) or accuracy (binary, multiclass; for
    multilabel the mean over its columns). ``classes_`` maps each classification task to its
    classes; ``run_.predict(X)`` gives the probabilities as polytask's ``TASK:CLASS`` table.
    Hyper-parameters: see the module docstring.
    """

    def __init__(
        self,
        tasks: Sequence[Task | Mapping[str, Any]] | None = None,
        *,
        shared: Sequence[int] = (64, 64),
        head: Sequence[int] = (),
        architecture: str = "hard_sharing",
        architecture_options: Mapping[str, Any] | None = None,
        activation: str = "relu",
        dropout: float = 0.0,
        balancer: str = "fixed",
        balancer_options: Mapping[str, Any] | None = None,
        optimizer: str = "adam",
        epochs: int = 100,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        validation_fraction: float = 0.1,
        patience: int | None = 10,
        impute: bool = False,
        device: str = "auto",
        random_state: int | np.random.RandomState | None = None,
        run_dir: str | Path | None = None,
    ) -> None:
        super().__init__(
            shared=shared,
            head=head,
            architecture=architecture,
            architecture_options=architecture_options,
            activation=activation,
            dropout=dropout,
            balancer=balancer,
            balancer_options=balancer_options,
            optimizer=optimizer,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            validation_fraction=validation_fraction,
            patience=patience,
            impute=impute,
            device=device,
            random_state=random_state,
            run_dir=run_dir,
        )
        self.tasks = tasks

    def fit(self, X: Any, Y: Any) -> MultiTaskEstimator:
        """Train on X and Y; returns self."""
        columns = self._train(X, Y, numeric=False)
        self.classes_ = {}
        for task in self.run_.main_tasks:
            if task.kind not in ("binary", "multiclass"):
                continue
            column = columns[self._target_index[task.columns[0]]]
            seen = {label_key(v): v for v in column[~pd.isna(column)]}
            for declared in task.classes or []:
                seen.setdefault(label_key(declared), declared)
            known = self.run_.preprocessor.targets[task.name].classes or []
            self.classes_[task.name] = np.asarray([seen[key] for key in known])
        return self

    def _declared_tasks(self, names: list[str]) -> list[Task]:
        if self.tasks is None:
            return [Task(name=name, kind="regression") for name in names]
        return [t if isinstance(t, Task) else Task(**t) for t in self.tasks]

    def _make_tasks(self, targets: _Targets) -> tuple[list[Task], dict[str, np.ndarray]]:
        names = targets.names
        tasks = self._declared_tasks(names)
        wanted = [c for t in tasks for c in t.columns]
        if not targets.named or targets.one_dimensional:  # Y's columns are the tasks' in order
            if len(names) != len(wanted):
                raise ValueError(
                    f"Y has {len(names)} column(s) but the tasks have {len(wanted)} target "
                    f"column(s) ({', '.join(wanted)}); give them in this order"
                )
            names = wanted
        unknown = [n for n in names if n not in wanted]
        missing = [c for c in wanted if c not in names]
        if unknown or missing:
            raise ValueError(
                f"Y's columns do not match the tasks' target columns ({', '.join(wanted)}): "
                + "; ".join(
                    part
                    for part in (
                        f"missing {missing}" if missing else "",
                        f"no task has {unknown}" if unknown else "",
                    )
                    if part
                )
            )
        self._target_index = {name: i for i, name in enumerate(names)}
        self.target_names_ = [c for t in tasks if t.is_main for c in t.columns]
        self.n_outputs_ = len(self.target_names_)
        self._one_output = self._one_output and self.n_outputs_ == 1
        return tasks, dict(zip(names, targets.columns, strict=True))

    def predict(self, X: Any) -> np.ndarray:
        """One column per main task's target column (``target_names_``); 1-D for a 1-D Y."""
        outputs = self._outputs(X)
        columns = []
        for task in self.run_.main_tasks:
            values = outputs[task.name]
            if task.kind == "binary":
                columns.append(self.classes_[task.name][(values > 0.5).astype(int)])
            elif task.kind == "multiclass":
                columns.append(self.classes_[task.name][values.argmax(axis=1)])
            elif task.kind == "multilabel":
                columns.extend((values[:, j] > 0.5).astype(int) for j in range(values.shape[1]))
            else:
                columns.append(values.astype(np.float64))
        return self._shaped(columns)

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Mean over main tasks of R² (regression, count) or accuracy (the other kinds)."""
        check_is_fitted(self, "run_")
        targets = _target_columns(y, numeric=False)
        truth = targets.columns
        if targets.named and not targets.one_dimensional:
            by_name = dict(zip(targets.names, truth, strict=True))
            missing = [c for c in self.target_names_ if c not in by_name]
            if missing:
                raise ValueError(f"Y lacks the target columns {missing}")
            truth = [by_name[c] for c in self.target_names_]
        elif len(truth) == len(self._target_index):  # Y laid out as in fit
            truth = [truth[self._target_index[c]] for c in self.target_names_]
        predicted = _as_columns(self.predict(X))
        kinds = [t.kind for t in self.run_.main_tasks for _ in t.columns]
        weights = _weights(sample_weight, truth[0])
        by_column = [
            _mean_over_outputs([t], [p], weights, [k])
            for t, p, k in zip(truth, predicted, kinds, strict=True)
        ]
        per_task, start = [], 0
        for task in self.run_.main_tasks:  # a multilabel task counts once
            stop = start + len(task.columns)
            per_task.append(float(np.mean(by_column[start:stop])))
            start = stop
        return float(np.mean(per_task))


# ---- helpers ----------------------------------------------------------------------------
@dataclass
class _Targets:
    """Y as columns (NaN kept: a missing label), with names: Y's own (``named``: a DataFrame
    with string column names, a named Series), else ``y`` for a 1-D Y, ``y0``, ``y1``… ."""

    names: list[str]
    columns: list[np.ndarray]
    one_dimensional: bool
    named: bool


def _target_columns(Y: Any, *, numeric: bool) -> _Targets:
    """Y checked by sklearn (float for ``numeric``; infinities refused, NaN allowed)."""
    dtype = np.float64 if numeric else None

    def column(values: Any) -> np.ndarray:
        return check_array(
            values, ensure_2d=False, dtype=dtype, ensure_all_finite="allow-nan", input_name="y"
        )

    if isinstance(Y, pd.DataFrame):
        own = all(isinstance(c, str) for c in Y.columns)
        names = [str(c) if own else f"y{i}" for i, c in enumerate(Y.columns)]
        columns = [column(Y.iloc[:, i].to_numpy()) for i in range(Y.shape[1])]
        if not columns:
            raise ValueError("Y has no columns")
        return _Targets(names, columns, one_dimensional=False, named=own)
    if isinstance(Y, pd.Series):
        own = isinstance(Y.name, str)
        return _Targets([Y.name if own else "y"], [column(Y.to_numpy())], True, named=own)
    array = column(Y)
    if array.ndim == 1:
        return _Targets(["y"], [array], one_dimensional=True, named=False)
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(f"Y must be 1-D or 2-D with at least one column, got shape {array.shape}")
    names = [f"y{i}" for i in range(array.shape[1])]
    return _Targets(names, list(array.T), one_dimensional=False, named=False)


def _as_columns(predicted: np.ndarray) -> list[np.ndarray]:
    return [predicted] if predicted.ndim == 1 else list(predicted.T)


def _weights(sample_weight: Any, like: np.ndarray) -> np.ndarray:
    """``score``'s row weights: ones, or ``sample_weight`` checked to be one per row."""
    if sample_weight is None:
        return np.ones(len(like))
    weights = check_array(
        sample_weight, ensure_2d=False, dtype=np.float64, input_name="sample_weight"
    )
    if weights.ndim != 1:
        raise ValueError(f"sample_weight must be 1-D, got shape {weights.shape}")
    check_consistent_length(weights, like)
    return weights


def _mean_over_outputs(
    truth: list[np.ndarray], predicted: list[np.ndarray], weights: np.ndarray, kinds: list[str]
) -> float:
    """Mean over outputs of each output's score on its labelled rows: R² for regression and
    count, accuracy for the class kinds."""
    if len(truth) != len(predicted):
        raise ValueError(f"Y has {len(truth)} column(s), the model predicts {len(predicted)}")
    scores = []
    for true, pred, kind in zip(truth, predicted, kinds, strict=True):
        check_consistent_length(true, pred)
        labelled = ~pd.isna(true)
        w = weights[labelled]
        if kind in ("regression", "count"):
            scores.append(r2_score(true[labelled].astype(float), pred[labelled], sample_weight=w))
        else:
            hits = np.asarray(true[labelled] == pred[labelled], dtype=float)
            scores.append(float(np.average(hits, weights=w)) if w.sum() else np.nan)
    return float(np.mean(scores))
