"""Predict and evaluate: output columns per kind, rows and index kept, auxiliary tasks absent."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from synthetic import FEATURES, make_config

import polytask as pt

EXPECTED_COLUMNS = [
    "price",
    "sold:0",
    "sold:1",
    "species:ant",
    "species:bee",
    "species:cat",
    "tags:tag_a",
    "tags:tag_b",
    "visits",
]


def test_one_column_per_value_and_probabilities_per_class(saved_run) -> None:
    run, _, frame = saved_run
    predictions = run.predict(frame)
    assert list(predictions.columns) == EXPECTED_COLUMNS
    assert predictions.notna().all().all()
    probabilities = predictions.drop(columns=["price", "visits"])
    assert ((probabilities >= 0) & (probabilities <= 1)).all().all()
    for task in ("sold", "species"):
        total = predictions.filter(like=f"{task}:").sum(axis=1)
        np.testing.assert_allclose(total, 1.0, rtol=1e-6)
    assert (predictions["visits"] > 0).all()  # a count is predicted as a Poisson mean


def test_declared_class_names_label_the_columns(tmp_path, frame) -> None:
    frame["sold"] = frame["sold"].map({0: "no", 1: "yes"})
    tasks = [pt.Task(name="sold", kind="binary", classes=["no", "yes"])]
    run = pt.fit(
        make_config(tmp_path / "unused.csv", tasks, epochs=1),
        splits=pt.Splits(frame[FEATURES + ["sold"]], frame.iloc[:0], frame.iloc[:0]),
    )
    assert list(run.predict(frame).columns) == ["sold:no", "sold:yes"]


@pytest.mark.parametrize("seed", [0, 1])
def test_rows_keep_their_order_and_index(saved_run, seed: int) -> None:
    run, _, frame = saved_run
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frame))
    shuffled = frame.iloc[order].set_axis([f"row{i}" for i in order])
    predictions = run.predict(shuffled)
    assert predictions.index.equals(shuffled.index)
    reference = run.predict(frame).iloc[order].set_axis(shuffled.index)
    pd.testing.assert_frame_equal(predictions, reference, rtol=1e-5, atol=1e-6)


def test_predictions_do_not_depend_on_the_other_rows(saved_run) -> None:
    run, _, frame = saved_run
    whole = run.predict(frame)
    for i in (0, 17, len(frame) - 1):
        alone = run.predict(frame.iloc[[i]])
        pd.testing.assert_frame_equal(alone, whole.iloc[[i]], rtol=1e-5, atol=1e-6)


def test_predict_needs_only_the_feature_columns(saved_run) -> None:
    run, _, frame = saved_run
    features_only = frame[FEATURES]
    pd.testing.assert_frame_equal(run.predict(features_only), run.predict(frame))
    with pytest.raises(pt.DataError, match=r"feature columns \['x2'\] are missing"):
        run.predict(features_only.drop(columns=["x2"]))


def test_auxiliary_tasks_are_absent_from_predict_input_and_output(saved_run) -> None:
    run, _, frame = saved_run
    assert [t.name for t in run.tasks if not t.is_main] == ["aux"]
    assert "aux" not in run.preprocessor.features
    predictions = run.predict(frame.drop(columns=["aux"]))
    assert not any("aux" in column for column in predictions.columns)
    assert "aux" in run.predict_arrays(frame, include_auxiliary=True)


def test_evaluate_does_not_need_the_auxiliary_column(saved_run) -> None:
    run, _, frame = saved_run
    without = run.evaluate(frame.drop(columns=["aux"]))
    assert set(without) == {"price", "sold", "species", "tags", "visits"}
    with_aux = run.evaluate(frame)
    assert set(with_aux) == set(without) | {"aux"}
    assert {k: with_aux[k] for k in without} == without


def test_evaluate_scores_each_task_on_its_labelled_rows(saved_run) -> None:
    run, _, frame = saved_run
    frame = frame.copy()
    frame.loc[:9, "price"] = np.nan
    scores = run.evaluate(frame)
    assert scores["price"]["n"] == len(frame) - 10
    assert scores["sold"]["n"] == len(frame)
    truth = frame["price"].dropna()
    predicted = run.predict(frame)["price"][truth.index]
    rmse = float(np.sqrt(np.mean((truth - predicted) ** 2)))
    assert scores["price"]["rmse"] == pytest.approx(rmse, rel=1e-5)


def test_evaluate_scores_the_tasks_whose_labels_are_present(saved_run) -> None:
    """A table may omit any task's column: the others are scored as with the full table."""
    run, _, frame = saved_run
    full = run.evaluate(frame)
    partial = run.evaluate(frame.drop(columns=["sold"]))
    assert "sold" not in partial and set(partial) == set(full) - {"sold"}
    assert partial["price"] == full["price"]
    labels = [c for t in run.tasks for c in t.columns]
    with pytest.raises(pt.DataError, match="the data has no task's label column"):
        run.evaluate(frame.drop(columns=labels))


def test_predict_and_evaluate_take_paths_mappings_and_arrays(saved_run, tmp_path) -> None:
    run, _, frame = saved_run
    expected = run.predict(frame)
    frame.to_csv(tmp_path / "rows.csv", index=False)
    pd.testing.assert_frame_equal(run.predict(tmp_path / "rows.csv"), expected, atol=1e-6)
    pd.testing.assert_frame_equal(run.predict(frame.to_dict("list")), expected, atol=1e-6)
    assert run.evaluate(str(tmp_path / "rows.csv")).keys() == run.evaluate(frame).keys()
    with pytest.raises(pt.DataError, match="expected a pandas DataFrame.*got list"):
        run.predict([[1.0, 2.0]])
    with pytest.raises(pt.DataError, match=r"shape \(rows, \d+\)"):
        run.predict(np.zeros((3, 1)))


def test_evaluate_rejects_a_class_unseen_in_training(saved_run) -> None:
    run, _, frame = saved_run
    frame = frame.copy()
    frame.loc[3, "species"] = "dog"
    with pytest.raises(pt.DataError, match=r"label 'dog' in row 3 is not one of the classes"):
        run.evaluate(frame)
