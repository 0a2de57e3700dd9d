"""STL vs MTL comparisons: what the result holds, verdicts that claim only what the paired
tests support, warnings, and that one task compares as a tie."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from synthetic import ALL_TASKS, FEATURES, make_config, make_frame, make_splits

import polytask as pt
from polytask.compare import FEW_TEST_ROWS, Comparison, _warnings
from polytask.evaluate import delta_m, relative_change


def test_comparison_holds_per_seed_scores_means_and_delta_m(tmp_path: Path) -> None:
    tasks = [ALL_TASKS[0], ALL_TASKS[1], ALL_TASKS[5]]  # price, sold and the auxiliary aux
    splits = make_splits(make_frame(n=200, seed=9)[FEATURES + ["price", "sold", "aux"]])
    config = make_config(tmp_path / "unused.csv", tasks, epochs=2, seed=3)
    notes: list[str] = []
    result = pt.compare(
        config, seeds=2, splits=splits, on_progress=notes.append, workers=1
    ).to_json()

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
        changes = [
            relative_change(entry["metric"], m, s)
            for m, s in zip(entry["mtl"]["per_seed"], entry["stl"]["per_seed"], strict=True)
        ]
        assert entry["relative_change_per_seed"] == pytest.approx(changes)
        assert entry["relative_change_percent"] == pytest.approx(np.mean(changes))
        assert entry["n_test"] == splits.test[name].notna().sum()
    # one sign convention: Δm is the mean of the tasks' relative changes
    assert result["delta_m_percent"] == pytest.approx(
        np.mean([t["relative_change_percent"] for t in result["tasks"].values()])
    )
    assert "seed 3: MTL" in notes and "seed 4: STL price" in notes


def test_with_one_task_the_comparison_is_a_tie(tmp_path: Path) -> None:
    splits = make_splits(make_frame(n=160, seed=10)[FEATURES + ["sold"]])
    config = make_config(tmp_path / "unused.csv", [ALL_TASKS[1]], epochs=2)
    result = pt.compare(config, seeds=[5, 6], splits=splits).to_json()
    sold = result["tasks"]["sold"]
    assert sold["mtl"]["per_seed"] == sold["stl"]["per_seed"]
    assert result["delta_m_per_seed"] == [0.0, 0.0]
    assert sold["verdict"] == result["delta_m_verdict"] == "tie"
    assert math.isnan(sold["p_value"])
    assert "identically" in result["summary"] and "better" not in result["summary"]


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


def _result(stl: dict[str, list[float]], mtl: dict[str, list[float]], *, rows: int = 100) -> dict:
    """``Comparison.to_json`` of given per-seed scores; task ``price`` is RMSE, ``sold`` AUC."""
    tasks = [t for t in ALL_TASKS[:2] if t.name in stl]
    scores = {
        method: {t.name: [{t.primary_metric: v, "n": rows} for v in values[t.name]] for t in tasks}
        for method, values in (("stl", stl), ("mtl", mtl))
    }
    seeds = list(range(len(next(iter(stl.values())))))
    comparison = Comparison(tasks=tasks, seeds=seeds, scores=scores, seconds={"stl": 1, "mtl": 1})
    return comparison.to_json()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_a_task_is_called_better_or_worse_only_when_the_test_says_so(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    stl = rng.uniform(50, 60, n)
    mtl = stl + rng.normal(rng.choice([0.0, 2.0, -2.0]), 1.0, n)
    task = _result({"price": list(stl)}, {"price": list(mtl)})["tasks"]["price"]
    changes = (mtl - stl) / stl * 100  # RMSE: lower is better, so a drop is negative
    lo, hi = task["relative_change_ci95"]
    significant = stats.ttest_rel(mtl, stl).pvalue < 0.05 and (lo > 0 or hi < 0)
    assert task["p_value"] == pytest.approx(stats.ttest_rel(mtl, stl).pvalue)
    assert task["relative_change_per_seed"] == pytest.approx(list(changes))
    assert lo < np.mean(changes) < hi
    assert task["significant"] == significant
    if significant:
        assert task["verdict"] == (
            "MTL significantly better" if hi < 0 else "MTL significantly worse"
        )
    else:
        assert task["verdict"] == "no significant difference"


def test_a_large_p_value_is_no_significant_difference() -> None:
    stl = [57.0, 58.0, 56.0]
    mtl = [55.0, 58.5, 56.2]  # better on average, p ≈ 0.6
    result = _result(
        {"price": stl, "sold": [0.85, 0.84, 0.86]}, {"price": mtl, "sold": [0.86, 0.83, 0.87]}
    )
    price = result["tasks"]["price"]
    assert price["p_value"] > 0.5 and price["relative_change_percent"] < 0
    assert price["verdict"] == "no significant difference"
    assert not price["significant"]


def test_the_summary_claims_no_winner_when_the_delta_m_interval_includes_zero() -> None:
    result = _result(
        {"price": [57.0, 58.0, 56.0], "sold": [0.85, 0.84, 0.86]},
        {"price": [55.0, 58.5, 56.2], "sold": [0.86, 0.83, 0.87]},
    )
    lo, hi = result["delta_m_ci95"]
    assert lo < 0 < hi and result["delta_m_percent"] < 0
    assert result["delta_m_verdict"] == "no significant difference"
    text = result["summary"]
    assert text.startswith("No significant difference between MTL and STL on average")
    assert f"Δm = {result['delta_m_percent']:+.2f}%" in text and f"[{lo:+.2f}, {hi:+.2f}]" in text
    assert "better than STL" not in text and "WORSE" not in text


def test_the_summary_names_a_significant_difference() -> None:
    stl = {"price": [57.0, 58.0, 59.0], "sold": [0.85, 0.86, 0.87]}
    better = _result(stl, {"price": [55.0, 56.0, 57.1], "sold": [0.86, 0.87, 0.88]})
    assert better["delta_m_ci95"][1] < 0
    assert better["delta_m_verdict"] == "MTL significantly better"
    assert better["summary"].startswith("On average MTL is significantly better than STL")
    assert "significantly better on 2/2 (price, sold)" in better["summary"]
    worse = _result(stl, {"price": [59.0, 60.0, 61.1], "sold": [0.84, 0.85, 0.86]})
    assert worse["delta_m_verdict"] == "MTL significantly worse"
    assert "significantly WORSE than STL" in worse["summary"]
    assert {t["verdict"] for t in worse["tasks"].values()} == {"MTL significantly worse"}


def test_one_seed_is_not_enough_to_test() -> None:
    result = _result({"price": [57.0], "sold": [0.85]}, {"price": [55.0], "sold": [0.86]})
    for task in result["tasks"].values():
        assert task["verdict"] == "not enough seeds to test (n=1)"
        assert not task["significant"]
    assert result["delta_m_verdict"] == "not enough seeds to test (n=1)"
    assert "not enough seeds to test (n=1)" in result["summary"]
    assert "nan" not in result["summary"].lower() and "better" not in result["summary"]
    assert any("only 1 seed" in w for w in result["warnings"])


@pytest.mark.parametrize("rows", [0, 4, 29, 30, 500])
def test_few_labelled_test_rows_draw_a_warning(rows: int) -> None:
    result = _result(
        {"price": [57.0, 58.0, 56.0], "sold": [0.85, 0.84, 0.86]},
        {"price": [55.0, 58.5, 56.2], "sold": [0.86, 0.83, 0.87]},
        rows=rows,
    )
    few = [w for w in result["warnings"] if "labelled test rows" in w]
    assert result["few_test_rows_threshold"] == FEW_TEST_ROWS == 30
    if rows < FEW_TEST_ROWS:
        assert len(few) == 2 and f"only {rows} labelled test rows" in few[0]
        assert all(f"Warning: {w}." in result["summary"] for w in few)
    else:
        assert few == [] and "Warning" not in result["summary"]


def test_many_tasks_with_few_test_rows_get_one_line_in_the_summary() -> None:
    names = [f"t{i}" for i in range(8)]
    tasks = {
        name: {"n_test": 5 + i, "relative_change_per_seed": [1.0, -1.0], "metric": "rmse"}
        for i, name in enumerate(names)
    }
    full = _warnings(tasks, 3)
    assert all(f"task '{n}' has only" in w for n, w in zip(names, full, strict=True))
    (line,) = _warnings(tasks, 3, compact=True)
    assert line.startswith("8 of 8 tasks have fewer than 30 labelled test rows (as few as 5)")
    assert "t0, t1, t2, t3, t4, …" in line


def test_compare_trains_its_stl_networks_as_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    compare_module = importlib.import_module("polytask.compare")  # pt.compare is the function
    frame = make_frame(160, seed=21)
    frame.to_csv(tmp_path / "t.csv", index=False)
    tasks = [t for t in ALL_TASKS if t.name in ("price", "sold")]
    config = make_config(tmp_path / "t.csv", tasks, model={"norm": "batch"}, epochs=2)
    asked: list[tuple[str, list[int]]] = []
    real = compare_module.fit_stl_seeds

    def fit_stl_seeds(
        config: pt.Config, splits: pt.Splits, seeds: list[int], **kwargs: object
    ) -> dict:
        asked.append((str(kwargs["vectorize"]), list(seeds)))
        return real(config, splits, seeds, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(compare_module, "fit_stl_seeds", fit_stl_seeds)
    splits = make_splits(frame)
    pt.compare(config, seeds=[3, 4], splits=splits, workers=1)
    model = config.model.model_copy(update={"norm": "none", "dropout": 0.2})
    with_dropout = config.model_copy(update={"model": model})
    pt.compare(with_dropout, seeds=[3, 4], splits=splits, stl_vectorize="dropout", workers=1)
    pt.compare(with_dropout, seeds=[3, 4], splits=splits, workers=1)
    # batch norm falls back: one job per seed; stacked (dropout too): both seeds in one ensemble
    assert asked == [("exact", [3]), ("exact", [4]), ("dropout", [3, 4]), ("exact", [3, 4])]


@pytest.mark.parametrize("stl_vectorize", ["exact", "dropout"])
def test_seeds_in_worker_processes_score_as_in_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stl_vectorize: str
) -> None:
    """Also with the STL networks of both seeds in one dropout ensemble (its masks come from
    the same stream in a worker as here)."""
    import importlib

    compare_module = importlib.import_module("polytask.compare")
    frame = make_frame(160, seed=22)
    tasks = [t for t in ALL_TASKS if t.name in ("price", "sold")]
    dropout = 0.3 if stl_vectorize == "dropout" else 0.0
    config = make_config(tmp_path / "unused.csv", tasks, epochs=2, model={"dropout": dropout})
    splits = make_splits(frame)
    pools: list[int] = []
    real = compare_module.Pool

    def pool(workers: int) -> object:
        made = real(workers)
        pools.append(made.workers)
        return made

    monkeypatch.setattr(compare_module, "Pool", pool)
    options = {"seeds": [3, 4], "splits": splits, "stl_vectorize": stl_vectorize}
    one = pt.compare(config, workers=1, **options).to_json()  # type: ignore[arg-type]
    two = pt.compare(config, workers=2, **options).to_json()  # type: ignore[arg-type]
    assert pools == [1, 2]
    assert one["tasks"] == two["tasks"] and one["delta_m_percent"] == two["delta_m_percent"]
