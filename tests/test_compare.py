"""STL vs MTL comparisons: what the result holds, and that one task compares as a tie."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from synthetic import ALL_TASKS, FEATURES, make_config, make_frame, make_splits

import polytask as pt
from polytask.evaluate import delta_m, relative_change


def test_comparison_holds_per_seed_scores_means_and_delta_m(tmp_path: Path) -> None:
    tasks = [ALL_TASKS[0], ALL_TASKS[1], ALL_TASKS[5]]  # price, sold and the auxiliary aux
    splits = make_splits(make_frame(n=200, seed=9)[FEATURES + ["price", "sold", "aux"]])
    config = make_config(tmp_path / "unused.csv", tasks, epochs=2, seed=3)
    notes: list[str] = []
    result = pt.compare(config, seeds=2, splits=splits, on_progress=notes.append).to_json()

    assert result["seeds"] == [3, 4]
    assert set(result["tasks"]) == {"price", "sold"}  # auxiliary tasks are not compared
    per_seed_dm = []
    for i in range(2):
        metrics = {name: t["metric"] for name, t in result["tasks"].items()}
        mtl = {name: t["mtl"]["per_seed"][i] for name, t in result["tasks"].items()}
        stl = {name: t["stl"]["per_seed"][i] for name, t in result["tasks"].items()}
        per_seed_dm.append(delta_m(metrics, mtl, stl))
    assert result["delta_m_per_seed"] == pytest.approx(per_seed_dm)
    assert result["delta_m_percent"] == pytest.approx(np.mean(per_seed_dm))
    for name, entry in result["tasks"].items():
        assert entry["metric"] == {"price": "rmse", "sold": "auc"}[name]
        for method in ("stl", "mtl"):
            assert len(entry[method]["per_seed"]) == 2
            assert entry[method]["mean"] == pytest.approx(np.mean(entry[method]["per_seed"]))
        change = relative_change(entry["metric"], entry["mtl"]["mean"], entry["stl"]["mean"])
        assert entry["relative_change_percent"] == pytest.approx(change)
    assert "seed 3: MTL" in notes and "seed 4: STL price" in notes


def test_with_one_task_the_comparison_is_a_tie(tmp_path: Path) -> None:
    splits = make_splits(make_frame(n=160, seed=10)[FEATURES + ["sold"]])
    config = make_config(tmp_path / "unused.csv", [ALL_TASKS[1]], epochs=2)
    result = pt.compare(config, seeds=[5, 6], splits=splits).to_json()
    sold = result["tasks"]["sold"]
    assert sold["mtl"]["per_seed"] == sold["stl"]["per_seed"]
    assert result["delta_m_per_seed"] == [0.0, 0.0]
    assert sold["verdict"] == "tie"
    assert math.isnan(sold["p_value"])


def test_compare_needs_a_test_split(tmp_path: Path, frame) -> None:
    splits = pt.Splits(frame, frame.iloc[:0], frame.iloc[:0])
    config = make_config(tmp_path / "unused.csv", epochs=1)
    with pytest.raises(pt.DataError, match="compare needs a test split"):
        pt.compare(config, seeds=1, splits=splits)


def test_each_stl_network_trains_on_its_own_labelled_rows(tmp_path: Path) -> None:
    from polytask.baselines import fit_stl, labelled_rows

    frame = make_frame(n=200, seed=4, missing=0.4)[FEATURES + ["price", "tag_a", "tag_b"]]
    splits = make_splits(frame)
    tags = ALL_TASKS[3]
    own = labelled_rows(splits, tags)
    expected = splits.train[["tag_a", "tag_b"]].notna().any(axis=1).sum()
    assert len(own.train) == expected < len(splits.train)
    assert own.test[["tag_a", "tag_b"]].notna().any(axis=1).all()

    config = make_config(tmp_path / "unused.csv", [ALL_TASKS[0], tags], epochs=1)
    runs = fit_stl(config, splits)
    price_rows = splits.train["price"].notna()
    # preprocessing of the price network was fitted on the rows labelled for price only
    assert runs["price"].preprocessor.means[0] == pytest.approx(
        splits.train.loc[price_rows, FEATURES[0]].mean(), rel=1e-5
    )
    assert runs["price"].metrics["test"]["price"]["n"] == splits.test["price"].notna().sum()
