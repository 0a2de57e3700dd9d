"""Extra training signals: what they add, that nothing fitted looks past the training rows, that
time windows never leak the future, and that training-only columns stay out of predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synthetic import ALL_TASKS, make_config, make_frame, make_splits

import polytask as pt
from polytask import signals
from polytask.baselines import feature_columns

PRICE = ALL_TASKS[0]


def _config(tmp_path: Path, frame: pd.DataFrame, spec: dict, tasks=(PRICE,), **train) -> pt.Config:
    frame.to_csv(tmp_path / "data.csv", index=False)
    config = make_config(tmp_path / "data.csv", tasks, epochs=train.pop("epochs", 2), **train)
    return config.model_copy(update={"signals": pt.SignalsConfig.model_validate(spec)})


def _horizon_config(tmp_path: Path, frame: pd.DataFrame, horizons: dict) -> pt.Config:
    """A forecasting config: no tasks of its own, the horizons make them."""
    frame.to_csv(tmp_path / "series.csv", index=False)
    return pt.parse_config(
        {
            "data": {"train": str(tmp_path / "series.csv")},
            "model": {"shared": [16]},
            "train": {"epochs": 2, "batch_size": 32, "lr": 1e-2, "device": "cpu"},
            "signals": {"horizons": horizons},
        }
    )


def _expand(spec: dict, splits: pt.Splits, tasks=(PRICE,)) -> signals.Expanded:
    config = pt.Config(
        data=pt.DataConfig(train="unused.csv"),
        tasks=list(tasks),
        signals=pt.SignalsConfig.model_validate(spec),
    )
    return signals.expand(config, splits, list(tasks))


# ---- training-only columns ------------------------------------------------------------------
def test_auxiliary_and_promoted_columns_are_absent_from_predict_inputs_and_outputs(
    tmp_path,
) -> None:
    frame = make_frame(160)
    spec = {
        "auxiliary_from": ["aux", "species", {"column": "visits", "kind": "count"}],
        "promote": ["x2", {"column": "x3", "keep_as_input": True}],
    }
    run = pt.fit(_config(tmp_path, frame, spec), out=tmp_path / "run")
    roles = {t.name: t.role for t in run.tasks}
    assert roles == {
        "price": "main",
        "aux": "auxiliary",
        "species": "auxiliary",
        "visits": "auxiliary",
        "x2": "auxiliary",
        "promote:x3": "auxiliary",
    }
    kinds = {t.name: t.kind for t in run.tasks}
    assert kinds["aux"] == "regression" and kinds["species"] == "multiclass"
    assert kinds["visits"] == "count"
    for column in ("aux", "species", "visits", "x2", "promote:x3"):
        assert column not in run.preprocessor.features
    assert "x3" in run.preprocessor.features  # kept as an input as well
    loaded = pt.load(tmp_path / "run")
    new = make_frame(30, seed=5)
    without = new.drop(columns=["aux", "species", "visits", "x2", "price"])
    predictions = loaded.predict(without)
    assert list(predictions.columns) == ["price"]
    pd.testing.assert_frame_equal(predictions, run.predict(new))
    with pytest.raises(pt.DataError, match="x3"):
        loaded.predict(without.drop(columns=["x3"]))
    saved = loaded.signals
    assert saved is not None and {s["task"] for s in saved["promote"]} == {"x2", "promote:x3"}


def test_the_stl_baseline_of_compare_gets_no_training_only_column_as_input() -> None:
    splits = make_splits(make_frame(160))
    expanded = _expand({"auxiliary_from": ["aux"], "promote": ["x2"]}, splits)
    features = feature_columns(expanded.config, expanded.splits)
    assert "aux" not in features and "x2" not in features and "x0" in features


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        ([0.5, 1.5, 2.25, 3.0] * 10, "regression"),
        (["yes", "no"] * 20, "binary"),
        ([1, 2, 3, 4] * 10, "multiclass"),
        (["a", "b", "c"] * 10, "multiclass"),
        (list(range(40)), "regression"),
        ([True, False] * 20, "binary"),
    ],
)
def test_kind_is_inferred_from_the_column(values, kind) -> None:
    assert signals.infer_kind(pd.Series(values)) == kind


def test_a_class_unseen_in_training_is_a_missing_label_elsewhere() -> None:
    frame = make_frame(160)
    frame["grade"] = ["a", "b"] * 80
    frame.loc[150:, "grade"] = "z"  # only in the test block
    expanded = _expand({"auxiliary_from": ["grade"]}, make_splits(frame))
    task = next(t for t in expanded.config.tasks if t.name == "grade")
    assert task.kind == "binary" and task.classes == ["a", "b"]
    assert expanded.splits.test["grade"].isna().sum() == 10
    assert expanded.splits.train["grade"].notna().all()


# ---- representations and focus: fitted on the training rows only ---------------------------
def _shifted_splits() -> pt.Splits:
    """Train values 0..99; validation and test far above, so anything fitted on them shows."""
    frame = make_frame(180)
    frame["price"] = np.r_[np.arange(100.0), 1000 + np.arange(80.0)]
    return make_splits(frame)


def test_bin_edges_and_rank_cdf_are_fitted_on_training_rows_only() -> None:
    splits = _shifted_splits()
    spec = {
        "represent": [
            {"column": "price", "as": "binned", "bins": 4},
            {"column": "price", "as": "rank"},
        ]
    }
    expanded = _expand(spec, splits)
    state = {s["task"]: s for s in expanded.state["represent"]}
    np.testing.assert_allclose(
        state["bin:price"]["edges"], np.quantile(np.arange(100.0), [0.25, 0.5, 0.75])
    )
    train = expanded.splits.train
    assert np.bincount(train["bin:price"].astype(int)).tolist() == [25, 25, 25, 25]
    assert (expanded.splits.test["bin:price"] == 3).all()  # above every training edge
    task = next(t for t in expanded.config.tasks if t.name == "bin:price")
    assert task.kind == "multiclass" and task.classes == [0, 1, 2, 3]
    rank = train["rank:price"].to_numpy()
    np.testing.assert_allclose(rank, (np.arange(100) + 0.5) / 100)
    assert (expanded.splits.validation["rank:price"] == 1.0).all()


def test_focus_threshold_is_a_training_quantile_and_equals_flags_a_class() -> None:
    splits = _shifted_splits()
    spec = {
        "focus": [
            {"column": "price", "above_quantile": 0.9},
            {"column": "color", "equals": "red"},
            {"column": "price", "below": 10},
        ]
    }
    expanded = _expand(spec, splits)
    state = {s["task"]: s for s in expanded.state["focus"]}
    assert state["focus:price"]["threshold"] == pytest.approx(np.quantile(np.arange(100.0), 0.9))
    assert expanded.splits.train["focus:price"].sum() == 10
    assert (expanded.splits.test["focus:price"] == 1).all()
    red = (splits.train["color"] == "red").astype(float)
    pd.testing.assert_series_equal(expanded.splits.train["focus:color"], red, check_names=False)
    assert expanded.splits.train["focus:price:2"].sum() == 10
    with pytest.raises(pt.DataError, match="matches no training row"):
        _expand({"focus": [{"column": "color", "equals": "purple"}]}, splits)


# ---- teachers ---------------------------------------------------------------------------------
def test_teacher_targets_are_exactly_the_teacher_predictions(tmp_path, saved_run) -> None:
    _, run_dir, _ = saved_run
    frame = make_frame(160, seed=3)
    splits = make_splits(frame)
    expanded = _expand({"teacher": str(run_dir)}, splits)
    teacher = pt.load(run_dir)
    for name in ("train", "validation", "test"):
        expected = teacher.predict(getattr(splits, name))
        got = getattr(expanded.splits, name)[[f"teacher:{c}" for c in expected.columns]]
        np.testing.assert_array_equal(got.to_numpy(), expected.to_numpy())
    added = [t for t in expanded.config.tasks if t.name.startswith("teacher:")]
    assert len(added) == len(teacher.predict(frame.head(2)).columns)
    assert all(t.role == "auxiliary" and t.kind == "regression" for t in added)
    assert "teacher:price" in {t.name for t in added}
    assert "teacher:species:bee" in {t.name for t in added}


def test_a_callable_teacher_and_a_teacher_missing_features(tmp_path, saved_run) -> None:
    splits = make_splits(make_frame(160))
    signal = signals.teacher(splits, lambda f: pd.DataFrame({"double": 2 * f["x0"]}))
    np.testing.assert_array_equal(signal.splits.test["teacher:double"], 2 * splits.test["x0"])
    _, run_dir, _ = saved_run
    without = splits.map(lambda f: f.drop(columns=["x1"]))
    with pytest.raises(pt.DataError, match=r"signals.teacher .*\['x1'\] are missing"):
        signals.teacher(without, run_dir)


# ---- multi-horizon windows --------------------------------------------------------------------
def _walk(n: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "level": rng.normal(size=n).cumsum(),
            "other": rng.normal(size=n),
            "ext": rng.normal(size=n),
        }
    )


def test_windows_never_put_a_future_value_among_the_inputs() -> None:
    walk = _walk()
    table = signals.windows(
        walk, series=["level", "other"], lags=3, horizons=[1, 2, 5], exogenous=["ext"]
    )
    inputs = [c for c in table.columns if "_lag" in c]
    targets = [c for c in table.columns if "_h" in c]
    assert len(inputs) == 9 and len(targets) == 6
    # every input value is a past or present value, every target a future one
    for t in table.index:
        for column in inputs:
            name, lag = column.rsplit("_lag", 1)
            assert table.loc[t, column] == walk.loc[t - int(lag), name]
        for column in targets:
            name, h = column.rsplit("_h", 1)
            value = table.loc[t, column]
            assert np.isnan(value) or value == walk.loc[t + int(h), name]
    values = table[inputs].to_numpy()
    for column in targets:
        future = table[column].to_numpy()[:, None]
        assert not np.isclose(values, future).any()
    latest = signals.windows(walk, series=["level", "other"], lags=3, exogenous=["ext"])
    assert latest.index[-1] == len(walk) - 1 and list(latest.columns) == inputs


def test_time_split_is_ordered_with_a_gap_and_targets_stay_before_later_inputs(tmp_path) -> None:
    walk = _walk(200).sample(frac=1.0, random_state=0)  # rows shuffled: ``time`` orders them
    walk["quarter"] = walk.index
    walk = walk.reset_index(drop=True)
    lags, horizons = 4, [1, 2, 8]
    horizon = {"series": ["level"], "lags": lags, "horizons": horizons, "time": "quarter"}
    config = _horizon_config(tmp_path, walk, horizon)
    splits = pt.load_splits(config)
    train, val, test = (s.index.to_numpy() for s in splits)
    assert train.max() < val.min() and val.max() < test.min()
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    # the last training target comes before the first validation input, and likewise for test
    assert train.max() + max(horizons) < val.min() - (lags - 1)
    assert val.max() + max(horizons) < test.min() - (lags - 1)
    used_by_later = {t - k for t in np.r_[val, test] for k in range(lags)}
    assert not {t + h for t in train for h in horizons} & used_by_later
    assert test.min() == 200 - 40 and val.min() == 200 - 40 - 30  # the default fractions


def test_horizon_run_predicts_from_windows_and_compare_baselines_each_horizon(tmp_path) -> None:
    walk = _walk(160)
    horizon = {"series": ["level", "other"], "lags": 3, "horizons": [1, 3], "target": "level"}
    config = _horizon_config(tmp_path, walk, horizon)
    run = pt.fit(config, out=tmp_path / "run")
    assert [t.name for t in run.main_tasks] == ["level_h1", "level_h3"]
    assert {t.name for t in run.tasks if not t.is_main} == {"other_h1", "other_h3"}
    latest = signals.windows(walk, series=["level", "other"], lags=3)
    predictions = pt.load(tmp_path / "run").predict(latest)
    assert list(predictions.columns) == ["level_h1", "level_h3"]
    assert predictions.index[-1] == len(walk) - 1
    result = pt.compare(
        config.model_copy(update={"train": config.train.model_copy(update={"epochs": 1})}), seeds=1
    )
    assert set(result.to_json()["tasks"]) == {"level_h1", "level_h3"}


@pytest.mark.parametrize("horizon", [1, 3])
def test_white_noise_stays_unpredictable_from_its_windows(horizon) -> None:
    """Future white noise is independent of every input: a least-squares fit on the windows
    explains almost none of it, where any leaked future value would explain all of it."""
    noise = pd.DataFrame({"e": np.random.default_rng(1).normal(size=600)})
    table = signals.windows(noise, series=["e"], lags=5, horizons=[horizon]).dropna()
    x = np.c_[table[[f"e_lag{k}" for k in range(5)]].to_numpy(), np.ones(len(table))]
    y = table[f"e_h{horizon}"].to_numpy()
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    r2 = 1 - np.mean((y - x @ coef) ** 2) / np.var(y)
    assert r2 < 0.05
    leaked = np.c_[x, noise["e"].to_numpy()[table.index + horizon]]
    coef, *_ = np.linalg.lstsq(leaked, y, rcond=None)
    assert 1 - np.mean((y - leaked @ coef) ** 2) / np.var(y) > 0.999  # the check can fail


# ---- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "where"),
    [
        ({"auxiliary_from": ["nope"]}, r"signals.auxiliary_from\[0\]"),
        ({"promote": [{"column": "nope"}]}, r"signals.promote\[0\]"),
        ({"represent": [{"column": "nope", "as": "rank"}]}, r"signals.represent\[0\]"),
        ({"focus": [{"column": "nope", "above": 1.0}]}, r"signals.focus\[0\]"),
        ({"horizons": {"series": ["nope"], "lags": 2, "horizons": [1]}}, "signals.horizons"),
        (
            {"horizons": {"series": ["x0"], "lags": 2, "horizons": [1], "exogenous": ["nope"]}},
            "signals.horizons",
        ),
        (
            {"horizons": {"series": ["x0"], "lags": 2, "horizons": [1], "time": "nope"}},
            "signals.horizons",
        ),
    ],
)
def test_an_unknown_column_in_any_signal_is_named_with_the_columns_that_exist(
    tmp_path, spec, where
) -> None:
    config = _config(tmp_path, make_frame(120), spec)
    with pytest.raises(
        pt.DataError, match=rf"{where}: column 'nope' is not in the data \(columns: x0, x1"
    ):
        pt.fit(config)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"represent": [{"column": "y", "as": "quantile"}]},
            r"signals.represent\[0\].as: 'quantile'",
        ),
        ({"focus": [{"column": "y"}]}, r"signals.focus\[0\]: give exactly one rule"),
        ({"focus": [{"column": "y", "above": 1, "equals": 2}]}, "exactly one rule"),
        (
            {"auxiliary_from": [{"column": "a", "kind": "regresion"}]},
            "'regresion' is not a task kind",
        ),
        (
            {"promote": [{"column": "a", "keep": True}]},
            r"unknown key 'keep' \(allowed: column, keep_as_input",
        ),
        (
            {"horizons": {"series": ["a"], "lags": 2, "horizons": [1], "target": "b"}},
            "must be among the series",
        ),
        ({"lags": 3}, r"signals.lags: unknown key 'lags' \(allowed: auxiliary_from"),
    ],
)
def test_bad_signal_configs_name_the_field(spec, message) -> None:
    raw = {
        "data": {"train": "x.csv"},
        "tasks": [{"name": "y", "kind": "regression"}],
        "signals": spec,
    }
    with pytest.raises(pt.ConfigError, match=message):
        pt.parse_config(raw)


def test_signal_targets_clashing_with_tasks_are_refused() -> None:
    splits = make_splits(make_frame(120))
    with pytest.raises(pt.DataError, match="already a task target"):
        _expand({"auxiliary_from": ["price"]}, splits)
    with pytest.raises(pt.DataError, match="is a task target, not a feature"):
        _expand({"promote": ["price"]}, splits)


def test_signals_survive_the_yaml_round_trip_and_teacher_paths_resolve(tmp_path) -> None:
    raw = {
        "data": {"train": "d.csv"},
        "tasks": [{"name": "y", "kind": "regression"}],
        "signals": {"represent": [{"column": "y", "as": "binned"}], "teacher": "runs/t"},
    }
    config = pt.parse_config(raw, base_dir=tmp_path)
    assert config.signals.teacher == (tmp_path / "runs/t").resolve()
    (tmp_path / "c.yaml").write_text(config.to_yaml())
    assert pt.load_config(tmp_path / "c.yaml") == config
    assert "signals" not in pt.parse_config({**raw, "signals": None}).to_yaml()


def test_cli_fits_a_horizon_config_and_predicts_from_the_raw_series(tmp_path) -> None:
    from typer.testing import CliRunner

    from polytask.cli import app

    walk = _walk(120)
    walk["t"] = np.arange(1000, 1120)
    horizon = {"series": ["level"], "lags": 2, "horizons": [1, 2], "time": "t"}
    config = _horizon_config(tmp_path, walk, horizon)
    (tmp_path / "c.yaml").write_text(config.to_yaml())
    runner = CliRunner()
    fitted = runner.invoke(app, ["fit", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")])
    assert fitted.exit_code == 0, fitted.output
    predicted = runner.invoke(
        app,
        [
            "predict",
            str(tmp_path / "r"),
            str(tmp_path / "series.csv"),
            "-o",
            str(tmp_path / "p.csv"),
        ],
    )
    assert predicted.exit_code == 0, predicted.output
    out = pd.read_csv(tmp_path / "p.csv")
    assert list(out.columns) == ["t", "level_h1", "level_h2"]
    assert out["t"].tolist() == list(range(1001, 1120))  # every time with 2 lags, latest included
    run = pt.load(tmp_path / "r")
    expected = run.predict(signals.forecast_inputs(run, walk))
    np.testing.assert_allclose(
        out[["level_h1", "level_h2"]].to_numpy(), expected.to_numpy(), rtol=1e-5
    )
    assert run.signals["horizons"]["rows"]["train"] > 0


def test_builders_take_plain_mappings_and_their_tables_train_directly() -> None:
    splits = make_splits(make_frame(160))
    signal = signals.represent(splits, [{"column": "price", "as": "rank"}])
    signal2 = signals.promote(signal.splits, [{"column": "x1", "keep_as_input": True}])
    tasks = [PRICE, *signal.tasks, *signal2.tasks]
    config = make_config("unused.csv", tasks, epochs=1, data={"drop": ["aux"]})
    run = pt.fit(config, splits=signal2.splits)
    assert [t.name for t in run.tasks] == ["price", "rank:price", "promote:x1"]
    assert "x1" in run.preprocessor.features
