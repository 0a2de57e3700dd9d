"""Data at the boundary: validation errors, fitted preprocessing, label masks, splits, batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from synthetic import ALL_TASKS, make_config, make_frame

import polytask as pt
from polytask.data import Preprocessor, TaskData, read_table, split_indices

REGRESSION = [pt.Task(name="price", kind="regression")]


# ---- errors that name the field, the value and what is allowed ---------------------------
def test_missing_target_column_names_task_and_column(frame: pd.DataFrame) -> None:
    tasks = [pt.Task(name="price", kind="regression", target="cost")]
    with pytest.raises(pt.DataError, match=r"task 'price': target column 'cost' is not in the"):
        Preprocessor.fit(frame, tasks)


def test_missing_target_column_through_fit(tmp_path: Path, frame) -> None:
    frame.drop(columns=["sold"]).to_csv(tmp_path / "data.csv", index=False)
    config = make_config(tmp_path / "data.csv")
    with pytest.raises(pt.DataError, match=r"task 'sold': target column 'sold' is not in"):
        pt.fit(config)


def test_non_numeric_regression_target_names_value_and_row(frame: pd.DataFrame) -> None:
    frame["price"] = frame["price"].astype(object)
    frame.loc[17, "price"] = "cheap"
    with pytest.raises(
        pt.DataError, match=r"target column 'price' is not numeric: value 'cheap' in row 17"
    ):
        Preprocessor.fit(frame, REGRESSION)


def test_empty_table_is_an_error(frame: pd.DataFrame) -> None:
    with pytest.raises(pt.DataError, match="the table has no rows"):
        Preprocessor.fit(frame.iloc[:0], REGRESSION)
    pre = Preprocessor.fit(frame, REGRESSION)
    with pytest.raises(pt.DataError, match="the table has no rows"):
        TaskData.from_frame(frame.iloc[:0], pre)


def test_empty_and_header_only_files_are_errors(tmp_path: Path, frame) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(pt.DataError, match=r"data file '.*empty\.csv' is empty"):
        pt.fit(make_config(empty, REGRESSION))
    header = tmp_path / "header.csv"
    frame.iloc[:0].to_csv(header, index=False)
    with pytest.raises(pt.DataError, match="the table has no rows"):
        pt.fit(make_config(header, REGRESSION))


def test_missing_data_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(pt.DataError, match=r"data file '.*nowhere\.csv' does not exist"):
        read_table(tmp_path / "nowhere.csv")


def test_a_task_without_any_label_is_an_error(frame: pd.DataFrame) -> None:
    frame["price"] = np.nan
    with pytest.raises(pt.DataError, match="target column 'price' has no labelled rows"):
        Preprocessor.fit(frame, REGRESSION)


def test_nan_feature_without_imputation_points_to_data_impute(frame: pd.DataFrame) -> None:
    frame.loc[[3, 8], "x2"] = np.nan
    with pytest.raises(pt.DataError, match=r"feature 'x2' has 2 missing values \(rows 3, 8\)"):
        Preprocessor.fit(frame, REGRESSION, features=["x0", "x1", "x2"])
    with pytest.raises(pt.DataError, match=r"set data.impute: true") as info:
        Preprocessor.fit(frame, REGRESSION, features=["x0", "x1", "x2"])
    assert "data.drop" not in str(info.value)  # the user chose the inputs: no drop hint


def test_undeclared_column_with_gaps_is_named_with_drop_as_the_remedy(frame: pd.DataFrame) -> None:
    """Inputs taken by default: a gappy column may be another task's label (issue 9.6)."""
    frame.loc[[3, 8], "x2"] = np.nan
    with pytest.raises(pt.DataError, match=r"'x2' is no task's target.*data\.drop"):
        Preprocessor.fit(frame, REGRESSION)
    with pytest.warns(pt.PolytaskWarning, match=r"inputs with missing values, imputed: x2"):
        Preprocessor.fit(frame, REGRESSION, impute=True)


def test_input_almost_equal_to_a_target_is_named_as_a_likely_label(frame: pd.DataFrame) -> None:
    rng = np.random.default_rng(0)
    frame["price_copy"] = frame["price"] * 3 + 1e-3 * rng.normal(size=len(frame))
    with pytest.warns(pt.PolytaskWarning, match=r"'price_copy' is almost identical.*'price'"):
        Preprocessor.fit(frame, REGRESSION)
    import warnings

    with warnings.catch_warnings():  # an ordinary input raises nothing
        warnings.simplefilter("error", pt.PolytaskWarning)
        Preprocessor.fit(frame.drop(columns=["price_copy"]), REGRESSION)


def test_nan_feature_at_predict_time_without_imputation(frame: pd.DataFrame) -> None:
    pre = Preprocessor.fit(frame, REGRESSION)
    frame.loc[5, "x1"] = np.nan
    with pytest.raises(
        pt.DataError, match="feature 'x1' has 1 missing values.*without data.impute"
    ):
        pre.transform_features(frame)


def test_imputation_fills_the_median_and_adds_a_missing_indicator(frame: pd.DataFrame) -> None:
    frame.loc[[3, 8, 20], "x2"] = np.nan
    pre = Preprocessor.fit(frame, REGRESSION, impute=True)
    assert pre.indicators == ["x2"]
    assert pre.n_numeric == len(pre.numeric) + 1
    x_num, _ = pre.transform_features(frame)
    indicator = x_num[:, len(pre.numeric)].numpy()
    np.testing.assert_array_equal(indicator, frame["x2"].isna().to_numpy(dtype=np.float32))
    j = pre.numeric.index("x2")
    filled = x_num[[3, 8, 20], j].numpy()
    expected = (np.nanmedian(frame["x2"]) - pre.means[j]) / pre.stds[j]
    np.testing.assert_allclose(filled, expected, rtol=1e-6)
    assert torch.isfinite(x_num).all()


def test_imputation_end_to_end(tmp_path: Path, frame) -> None:
    frame.loc[::7, "x3"] = np.nan
    frame.to_csv(tmp_path / "data.csv", index=False)
    with pytest.raises(pt.DataError, match="set data.impute: true"):
        pt.fit(make_config(tmp_path / "data.csv", REGRESSION, epochs=1))
    config = make_config(tmp_path / "data.csv", REGRESSION, data={"impute": True}, epochs=1)
    run = pt.fit(config)
    assert run.preprocessor.indicators == ["x3"]
    predictions = run.predict(frame)
    assert predictions["price"].notna().all()


def test_declared_classes_reject_other_labels(frame: pd.DataFrame) -> None:
    tasks = [pt.Task(name="species", kind="multiclass", classes=["ant", "bee"])]
    with pytest.raises(
        pt.DataError, match=r"labels \['cat'\] are not among the declared classes \(ant, bee\)"
    ):
        Preprocessor.fit(frame, tasks)


def test_a_label_unseen_in_training_is_an_error_when_encoding(frame: pd.DataFrame) -> None:
    tasks = [pt.Task(name="species", kind="multiclass")]
    pre = Preprocessor.fit(frame, tasks)
    frame.loc[11, "species"] = "dog"
    with pytest.raises(
        pt.DataError, match=r"label 'dog' in row 11 is not one of the classes \(ant, bee, cat\)"
    ):
        TaskData.from_frame(frame, pre)


def test_binary_with_three_labels_suggests_multiclass(frame: pd.DataFrame) -> None:
    tasks = [pt.Task(name="species", kind="binary")]
    with pytest.raises(pt.DataError, match="has 3 distinct labels.*use kind: multiclass"):
        Preprocessor.fit(frame, tasks)


def test_negative_counts_are_an_error(frame: pd.DataFrame) -> None:
    tasks = [pt.Task(name="visits", kind="count")]
    pre = Preprocessor.fit(frame, tasks)
    frame.loc[4, "visits"] = -2
    with pytest.raises(pt.DataError, match="'visits': counts must be non-negative"):
        Preprocessor.fit(frame, tasks)
    with pytest.raises(pt.DataError, match="counts must be non-negative, got -2 in row 4$"):
        TaskData.from_frame(frame, pre)


def test_multilabel_columns_must_be_zero_or_one(frame: pd.DataFrame) -> None:
    frame.loc[2, "tag_b"] = 2
    tasks = [pt.Task(name="tags", kind="multilabel", target=["tag_a", "tag_b"])]
    with pytest.raises(pt.DataError, match="column 'tag_b': labels must be 0 or 1, got 2$"):
        Preprocessor.fit(frame, tasks)


def test_features_may_not_be_targets(frame: pd.DataFrame) -> None:
    with pytest.raises(pt.DataError, match=r"data.features: \['price'\] are task targets"):
        Preprocessor.fit(frame, REGRESSION, features=["x0", "price"])
    with pytest.raises(pt.DataError, match=r"data.features: columns \['nope'\] are not in"):
        Preprocessor.fit(frame, REGRESSION, features=["x0", "nope"])


def test_missing_feature_column_at_predict_time(frame: pd.DataFrame) -> None:
    pre = Preprocessor.fit(frame, REGRESSION)
    with pytest.raises(pt.DataError, match=r"feature columns \['x1'\] are missing"):
        pre.transform_features(frame.drop(columns=["x1"]))


# ---- what preprocessing is -----------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_training_features_are_standardized(seed: int) -> None:
    frame = make_frame(n=100 + 50 * seed, seed=seed)
    pre = Preprocessor.fit(frame, ALL_TASKS)
    assert pre.numeric == ["x0", "x1", "x2", "x3"]
    assert pre.categorical == ["color"]
    x_num, x_cat = pre.transform_features(frame)
    np.testing.assert_allclose(x_num.mean(0).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(x_num.std(0, unbiased=False).numpy(), 1.0, atol=1e-5)
    assert set(x_cat[:, 0].tolist()) == {1, 2, 3}


def test_unseen_or_missing_category_gets_the_unknown_code(frame: pd.DataFrame) -> None:
    pre = Preprocessor.fit(frame, REGRESSION)
    frame.loc[0, "color"] = "purple"
    frame.loc[1, "color"] = None
    _, x_cat = pre.transform_features(frame)
    assert x_cat[0, 0] == 0 and x_cat[1, 0] == 0
    assert (x_cat[2:, 0] > 0).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_missing_labels_are_masked_per_task_and_per_cell(seed: int) -> None:
    frame = make_frame(n=120, seed=seed, missing=0.3)
    pre = Preprocessor.fit(frame, ALL_TASKS)
    data = TaskData.from_frame(frame, pre)
    for task in ALL_TASKS:
        labelled = frame[task.columns].notna().to_numpy()
        mask = data.masks[task.name].numpy()
        np.testing.assert_array_equal(mask, labelled if len(task.columns) > 1 else labelled[:, 0])
        assert torch.isfinite(data.targets[task.name].float()).all()
    assert data.label_counts()["price"] == frame["price"].notna().sum()


def test_regression_targets_round_trip_through_the_encoding(frame: pd.DataFrame) -> None:
    pre = Preprocessor.fit(frame, REGRESSION)
    data = TaskData.from_frame(frame, pre)
    decoded = pre.decode_target(REGRESSION[0], data.targets["price"], data.masks["price"])
    np.testing.assert_allclose(decoded, frame["price"].to_numpy(), rtol=1e-5, atol=1e-5)


def test_class_labels_read_as_int_float_or_text_agree(frame: pd.DataFrame) -> None:
    tasks = [pt.Task(name="sold", kind="binary")]
    codes = []
    for column in (frame["sold"], frame["sold"].astype(float), frame["sold"].astype(str)):
        variant = frame.assign(sold=column)
        pre = Preprocessor.fit(variant, tasks)
        assert pre.targets["sold"].classes == ["0", "1"]
        codes.append(TaskData.from_frame(variant, pre).targets["sold"])
    assert torch.equal(codes[0], codes[1]) and torch.equal(codes[0], codes[2])


def test_preprocessor_json_round_trip_transforms_identically(frame: pd.DataFrame) -> None:
    frame.loc[::9, "x0"] = np.nan
    pre = Preprocessor.fit(frame, ALL_TASKS, impute=True)
    again = Preprocessor.from_json(pre.to_json())
    a, b = TaskData.from_frame(frame, pre), TaskData.from_frame(frame, again)
    assert torch.equal(a.x_num, b.x_num) and torch.equal(a.x_cat, b.x_cat)
    for name in a.targets:
        assert torch.equal(a.targets[name], b.targets[name])
        assert torch.equal(a.masks[name], b.masks[name])


# ---- splits and batches --------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 10, 101, 1000])
@pytest.mark.parametrize("seed", [0, 7])
def test_split_indices_partition_the_rows(n: int, seed: int) -> None:
    parts = split_indices(n, seed=seed, validation=0.15, test=0.2)
    joined = np.concatenate(list(parts.values()))
    assert sorted(joined.tolist()) == list(range(n))
    assert len(parts["test"]) == round(0.2 * n)
    assert len(parts["validation"]) == round(0.15 * n)
    again = split_indices(n, seed=seed, validation=0.15, test=0.2)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)


def test_split_fractions_must_leave_training_rows() -> None:
    with pytest.raises(pt.DataError, match="must be in .* and leave rows for training"):
        split_indices(10, seed=0, validation=0.5, test=0.5)


@pytest.mark.parametrize("batch_size", [1, 7, 64, 500])
def test_shuffled_batches_visit_every_row_once(frame: pd.DataFrame, batch_size: int) -> None:
    pre = Preprocessor.fit(frame, ALL_TASKS)
    data = TaskData.from_frame(frame, pre)
    seen = []
    g = torch.Generator().manual_seed(0)
    for batch in data.batches(batch_size, shuffle=True, generator=g):
        assert len(batch) <= batch_size
        assert set(batch.targets) == set(batch.masks) == {t.name for t in ALL_TASKS}
        # Every row carries its own x0; recover the row numbers from it.
        seen.extend(torch.nonzero(batch.x_num[:, :1] == data.x_num[:, 0], as_tuple=True)[1])
    assert sorted(int(i) for i in seen) == list(range(len(data)))


def test_nullable_integer_features_read_their_missing_values_as_gaps() -> None:
    frame = pd.DataFrame(
        {"a": pd.array([1, None, 3, 4], dtype="Int64"), "y": [0.0, 1.0, 2.0, 3.0]}
    )
    tasks = [pt.Task(name="y", kind="regression")]
    with pytest.raises(pt.DataError, match=r"feature 'a' has 1 missing values \(row 1\)"):
        Preprocessor.fit(frame, tasks)
    fitted = Preprocessor.fit(frame, tasks, impute=True)
    assert fitted.medians == [3.0] and fitted.indicators == ["a"]


def test_leak_check_correlations_are_pandas_pairwise_complete_ones() -> None:
    from polytask.data import _abs_correlations

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4))
    x[rng.random(size=x.shape) < 0.2] = np.nan
    x[:, 3] = 1.0  # no spread: undefined
    y = x[:, 0] * -2 + rng.normal(size=40) * 0.1
    y[np.isnan(y)] = 0.5
    expected = pd.DataFrame(x).corrwith(pd.Series(y)).abs().to_numpy()
    np.testing.assert_allclose(_abs_correlations(x, y), expected, rtol=1e-10)
