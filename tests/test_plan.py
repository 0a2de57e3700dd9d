"""``plan``: candidates per seed, the per-task choice on validation, the deliverable run, and
the test report made only after choosing."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from synthetic import make_config, make_frame, make_splits
from typer.testing import CliRunner
from typer.testing import Result as CliResult

import polytask as pt
from polytask.cli import app
from polytask.plan import STL, PlanRun, choose, divide_validation, parse_budget, plan

plan_module = importlib.import_module("polytask.plan")  # pt.plan is the function

# ---- the planted problem ---------------------------------------------------------------------
#: Cluster A (a0, a1, a2) reads one latent of x0..x2, cluster B (b0, b1, b2) one of x3..x5, each
#: task labelled on its own third of the rows, so a trunk shared within a cluster sees three
#: times the rows of an STL network; ``h`` is pure noise labelled on every row: in one shared
#: trunk it takes capacity from both clusters and its validation loss stops them early.
CLUSTERS = {"a0": 0, "a1": 0, "a2": 0, "b0": 1, "b1": 1, "b2": 1, "h": 2}


def planted_frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8))
    f = np.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2]
    g = np.cos(2 * x[:, 3]) + x[:, 4] * x[:, 5]
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(8)])
    part = rng.integers(0, 3, size=n)
    for i in range(3):
        frame[f"a{i}"] = np.where(part == i, f + 0.2 * rng.normal(size=n), np.nan)
        frame[f"b{i}"] = np.where(part == i, g + 0.2 * rng.normal(size=n), np.nan)
    frame["h"] = rng.normal(size=n)
    return frame


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[pt.Config, pt.Splits, Path]:
    frame = planted_frame(600)
    splits = make_splits(frame, validation=240, test=120)
    config = pt.Config(
        data=pt.DataConfig(train=frame),
        tasks=[pt.Task(name=n, kind="regression") for n in CLUSTERS],
        model=pt.ModelConfig(shared=[16]),
        train=pt.TrainConfig(
            epochs=40, batch_size=32, lr=1e-2, device="cpu", patience=10, seed=0
        ),
    )
    out = tmp_path_factory.mktemp("plan") / "planted"
    plan(config, seeds=3, workers=1, candidates=["groups"], splits=splits, out=out)
    return config, splits, out


def test_the_plan_separates_the_planted_clusters_and_beats_stl_and_all_in_one_on_validation(
    planted: tuple[pt.Config, pt.Splits, Path],
) -> None:
    _, _, out = planted
    report = json.loads((out / "plan.json").read_text())
    groups = report["relatedness"]["groups"]
    for group in groups:  # no group mixes the clusters, and h trains alone
        assert len({CLUSTERS[n] for n in group}) == 1, groups
    assert ["h"] in groups
    assert any(len(g) > 1 for g in groups)
    assert report["candidates"]["groups"]["status"] == "trained"
    delta = report["validation_delta_m_percent"]
    assert delta["groups"] < min(0.0, delta["all_in_one"])  # sharing within clusters helps more
    assert delta["plan"] < min(0.0, delta["all_in_one"])
    assert report["choice"]["h"]["candidate"] == STL


def test_the_plan_run_predicts_what_its_chosen_members_predict(
    planted: tuple[pt.Config, pt.Splits, Path],
) -> None:
    _, splits, out = planted
    run = pt.load(out / "run")
    assert isinstance(run, PlanRun)
    report = json.loads((out / "plan.json").read_text())
    predicted = run.predict(splits.test)
    assert list(predicted.columns) == list(CLUSTERS)
    for task, member in run.task_member.items():
        assert member.startswith(report["choice"][task]["candidate"])
        alone = pt.load(out / "run" / "members" / member).predict(splits.test)
        np.testing.assert_array_equal(predicted[task].to_numpy(), alone[task].to_numpy())
    # the report's plan scores for the first seed are the run's own scores on the test split
    comparison = json.loads((out / "comparison.json").read_text())
    scores = run.evaluate(splits.test)
    for task, values in comparison["tasks"].items():
        assert values["mtl"]["per_seed"][0] == pytest.approx(scores[task]["rmse"])
        assert values["chosen"] == report["choice"][task]["candidate"]
    assert comparison["vs_all_in_one"]["baseline"] == "all-in-one"


# ---- the choice rule -------------------------------------------------------------------------
def test_a_task_whose_candidates_all_tie_picks_stl() -> None:
    same = [0.8, 0.7, 0.9]
    chosen = choose(
        {"stl": {"t": same}, "all_in_one": {"t": same}, "groups": {"t": same}}, {"t": "auc"}
    )
    assert chosen["t"]["candidate"] == "stl"


def test_a_gain_inside_the_seed_spread_is_not_taken() -> None:
    stl = [0.70, 0.70, 0.70, 0.70]
    noisy = [0.60, 0.85, 0.62, 0.85]  # a higher mean, but the paired gain is within its spread
    steady = [0.72, 0.72, 0.73, 0.72]  # a smaller, consistent gain
    metrics = {"t": "auc"}
    assert choose({"stl": {"t": stl}, "mmoe": {"t": noisy}}, metrics)["t"]["candidate"] == STL
    both = choose({"stl": {"t": stl}, "mmoe": {"t": noisy}, "groups": {"t": steady}}, metrics)
    assert both["t"]["candidate"] == "groups"
    assert both["t"]["gain"] == pytest.approx(0.0225)


def test_the_choice_follows_the_metric_direction() -> None:
    stl = [1.00, 1.10, 0.90]
    lower = [0.80, 0.85, 0.70]  # rmse: lower is better
    chosen = choose({"stl": {"t": stl}, "groups": {"t": lower}}, {"t": "rmse"})
    assert chosen["t"]["candidate"] == "groups"
    worse = choose({"stl": {"t": lower}, "groups": {"t": stl}}, {"t": "rmse"})
    assert worse["t"]["candidate"] == STL


def test_an_undefined_score_never_counts_as_a_gain() -> None:
    nan = float("nan")
    chosen = choose({"stl": {"t": [nan, nan, nan]}, "mmoe": {"t": [0.9, 0.8, 0.7]}}, {"t": "auc"})
    assert chosen["t"]["candidate"] == STL
    chosen = choose(
        {"stl": {"t": [0.5, nan, 0.5]}, "mmoe": {"t": [0.6, 0.1, 0.6]}}, {"t": "accuracy"}
    )
    assert chosen["t"]["candidate"] == "mmoe"  # compared on the two seeds both are defined
    assert chosen["t"]["gain"] == pytest.approx(0.1)


def test_of_two_candidates_that_pass_the_better_mean_wins() -> None:
    stl = [0.5, 0.5, 0.5]
    chosen = choose(
        {"stl": {"t": stl}, "all_in_one": {"t": [0.6] * 3}, "finetune": {"t": [0.7] * 3}},
        {"t": "accuracy"},
    )
    assert chosen["t"]["candidate"] == "finetune"


# ---- honesty: the test split chooses nothing ---------------------------------------------------
def _small(tmp_path: Path, frame: pd.DataFrame) -> tuple[pt.Config, pt.Splits]:
    csv = tmp_path / "train.csv"
    frame.to_csv(csv, index=False)
    tasks = [pt.Task(name="price", kind="regression"), pt.Task(name="sold", kind="binary")]
    return make_config(csv, tasks, epochs=4), make_splits(frame, validation=60, test=60)


def test_candidates_never_see_the_test_rows_and_test_labels_change_no_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = make_frame(300, seed=3)
    config, splits = _small(tmp_path, frame)
    seen: list[int] = []
    stopped_on: list[int] = []
    real_fit, real_stl = plan_module.fit, plan_module.fit_stl

    def fit(config: pt.Config, **kwargs: object) -> pt.Run:
        seen.append(len(kwargs["splits"].test))  # type: ignore[union-attr]
        stopped_on.append(len(kwargs["splits"].validation))  # type: ignore[union-attr]
        return real_fit(config, **kwargs)  # type: ignore[arg-type]

    def fit_stl(config: pt.Config, splits: pt.Splits, **kwargs: object) -> dict:
        seen.append(len(splits.test))
        stopped_on.append(len(splits.validation))
        return real_stl(config, splits, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(plan_module, "fit", fit)
    monkeypatch.setattr(plan_module, "fit_stl", fit_stl)
    first = plan(config, seeds=2, workers=1, candidates=["per_task"], splits=splits)
    assert seen and set(seen) == {0}
    assert set(stopped_on) == {30}  # half the 60 validation rows; the other half chooses
    assert first.report["rows"] == {"validation (stopping)": 30, "validation (choice)": 30}
    scrambled = splits.test.copy()
    scrambled["price"] = -scrambled["price"] * 10 + 3
    scrambled["sold"] = 1 - scrambled["sold"]
    second = plan(
        config,
        seeds=2,
        workers=1,
        candidates=["per_task"],
        splits=pt.Splits(splits.train, splits.validation, scrambled),
    )

    def chosen(p: plan_module.Plan) -> dict:
        report = {k: v for k, v in p.report.items() if k != "wall_seconds"}
        for entry in report["candidates"].values():
            entry.pop("wall_seconds", None)
            entry.pop("train_seconds", None)
        return report

    assert chosen(first) == chosen(second)
    assert "test" not in _keys(chosen(first))
    a, b = first.comparison_json(), second.comparison_json()
    assert a["tasks"]["price"]["stl"]["per_seed"] != b["tasks"]["price"]["stl"]["per_seed"]


def test_the_choice_rows_are_validation_rows_no_model_stops_on() -> None:
    validation = make_frame(101, seed=8)
    stopping, choice = divide_validation(validation, 0.5, seed=3)
    assert len(stopping) + len(choice) == 101 and len(choice) == 50
    both = pd.concat([stopping, choice])
    assert not both.duplicated().any()
    pd.testing.assert_frame_equal(
        both.sort_values("x0").reset_index(drop=True),
        validation.sort_values("x0").reset_index(drop=True),
    )
    again = divide_validation(validation, 0.5, seed=3)
    pd.testing.assert_frame_equal(again[1], choice)
    same = divide_validation(validation, 0.0)
    assert same[0] is validation and same[1] is validation
    with pytest.raises(pt.DataError, match="choice_fraction"):
        divide_validation(validation.iloc[:1], 0.5)


def _keys(value: object) -> set[str]:
    if isinstance(value, dict):
        return {str(k) for k in value} | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


# ---- budget, parallel workers, inputs ----------------------------------------------------------
def test_a_budget_skips_the_optional_candidates_but_never_stl_or_all_in_one(
    tmp_path: Path,
) -> None:
    config, splits = _small(tmp_path, make_frame(200, seed=4))
    result = plan(config, seeds=1, workers=1, candidates=["per_task"], splits=splits, budget=1e-3)
    entries = result.report["candidates"]
    assert entries["stl"]["status"] == entries["all_in_one"]["status"] == "trained"
    assert entries["per_task"]["status"] == "skipped"
    assert entries["per_task"]["reason"].startswith("budget")


@pytest.mark.parametrize(
    ("text", "seconds"), [("600", 600), ("90s", 90), ("20m", 1200), ("1.5h", 5400), (30, 30)]
)
def test_budgets_are_read_as_durations(text: str | int, seconds: float) -> None:
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-5m", "0", "10 minutes"])
def test_a_bad_budget_is_a_config_error(text: str) -> None:
    with pytest.raises(pt.ConfigError, match="budget"):
        parse_budget(text)


def test_two_worker_processes_choose_what_one_process_chooses(tmp_path: Path) -> None:
    config, splits = _small(tmp_path, make_frame(200, seed=5))
    one = plan(config, seeds=2, workers=1, candidates=["per_task"], splits=splits)
    two = plan(config, seeds=2, workers=2, candidates=["per_task"], splits=splits)
    assert two.report["workers"] == 2
    for name in ("stl", "all_in_one", "per_task"):
        a = one.report["candidates"][name]["validation"]
        b = two.report["candidates"][name]["validation"]
        for task in a:
            np.testing.assert_allclose(a[task]["per_seed"], b[task]["per_seed"], rtol=1e-4)


def test_bad_plan_input_gets_clear_errors(tmp_path: Path) -> None:
    config, splits = _small(tmp_path, make_frame(200, seed=6))
    with pytest.raises(pt.ConfigError, match=r"\['wishful'\] are not candidates"):
        plan(config, candidates=["wishful"], splits=splits)
    with pytest.raises(pt.ConfigError, match="workers"):
        plan(config, workers=0, splits=splits)
    no_validation = pt.Splits(splits.train, splits.train.iloc[:0], splits.test)
    with pytest.raises(pt.DataError, match="validation split"):
        plan(config, seeds=1, splits=no_validation)
    no_test = pt.Splits(splits.train, splits.validation, splits.test.iloc[:0])
    with pytest.raises(pt.DataError, match="test split"):
        plan(config, seeds=1, splits=no_test)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "plan.json").write_text("{}")
    with pytest.raises(pt.RunError, match="already holds a plan"):
        plan(config, seeds=1, splits=splits, out=tmp_path / "taken")
    assert (tmp_path / "taken" / "plan.json").read_text() == "{}"  # nothing lost


def test_a_broken_members_file_is_a_run_error(planted: tuple[pt.Config, pt.Splits, Path]) -> None:
    _, _, out = planted
    members = out / "run" / "members.json"
    saved = members.read_text()
    try:
        meta = json.loads(saved)
        meta["tasks"]["a0"] = "../../elsewhere"
        members.write_text(json.dumps(meta))
        with pytest.raises(pt.RunError, match="members.json"):
            pt.load(out / "run")
        members.write_text("{not json")
        with pytest.raises(pt.RunError, match="members.json"):
            pt.load(out / "run")
    finally:
        members.write_text(saved)


# ---- the command line ------------------------------------------------------------------------
def _invoke(*args: str | Path) -> CliResult:
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_plan_then_predict_and_evaluate(tmp_path: Path) -> None:
    frame = make_frame(260, seed=7)
    frame.to_csv(tmp_path / "train.csv", index=False)
    config = {
        "data": {"train": str(tmp_path / "train.csv"), "validation_fraction": 0.25,
                 "test_fraction": 0.25},
        "tasks": [{"name": "price", "kind": "regression"}, {"name": "sold", "kind": "binary"}],
        "model": {"shared": [16]},
        "train": {"epochs": 3, "batch_size": 32, "lr": 0.01, "device": "cpu"},
    }  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "planned"
    result = _invoke("plan", tmp_path / "config.yaml", "--out", out, "--seeds", 2,
                     "-c", "per_task", "--workers", 1, "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "chosen" in result.output and "plan vs all-in-one" in result.output
    for name in ("plan.json", "comparison.json", "comparison.png", "run/members.json"):
        assert (out / name).is_file(), name
    result = _invoke("predict", out / "run", tmp_path / "train.csv", "--out", tmp_path / "p.csv")
    assert result.exit_code == 0, result.output
    predicted = pd.read_csv(tmp_path / "p.csv")
    assert list(predicted.columns) == ["price", "sold:0", "sold:1"]
    assert len(predicted) == len(frame)
    result = _invoke("evaluate", out / "run", tmp_path / "train.csv", "--json")
    assert set(json.loads(result.output)) == {"price", "sold"}
    again = _invoke("plan", tmp_path / "config.yaml", "--out", out, "--quiet")
    assert isinstance(again.exception, pt.RunError)  # main() prints it as one line, exit 2
    assert "already holds a plan" in str(again.exception)
    assert "per_task" in _invoke("candidates").output


def test_a_run_on_a_registered_data_set_loads_back(tmp_path: Path) -> None:
    """Config.to_yaml once wrote a data set's split keys, which loading then refused."""
    config = pt.Config(data=pt.DataConfig(dataset="macro"))
    assert pt.parse_config(yaml.safe_load(config.to_yaml())).data.dataset == "macro"


def test_plan_and_compare_train_their_many_models_without_logging(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    config, splits = _small(tmp_path, make_frame(200, seed=9))
    logs = tmp_path / "logs"
    logged = config.model_copy(
        update={"train": config.train.model_copy(update={"log": "tensorboard", "log_dir": logs})}
    )
    plan(logged, seeds=2, workers=1, candidates=["per_task"], splits=splits)
    pt.compare(logged, seeds=2, splits=splits)
    assert not logs.exists()


def test_seeds_train_in_one_process_by_default_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from polytask.parallel import default_workers

    assert default_workers(3, "cpu") == min(3, os.cpu_count() or 1)
    assert default_workers(3, "cuda:0") == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_workers(3, "auto") == 1


def _pid(_: int) -> int:
    return os.getpid()


def test_a_pool_of_two_runs_its_jobs_in_other_processes() -> None:
    from polytask.parallel import Pool

    with Pool(2) as pool:
        away = set(pool.map(_pid, range(6)))
    with Pool(1) as pool:
        here = set(pool.map(_pid, range(3)))
    assert here == {os.getpid()}
    assert os.getpid() not in away and len(away) >= 1


def test_the_report_names_what_each_comparison_compares(
    planted: tuple[pt.Config, pt.Splits, Path],
) -> None:
    _, _, out = planted
    comparison = json.loads((out / "comparison.json").read_text())
    assert (comparison["baseline"], comparison["method"]) == ("STL", "plan")
    other = comparison["vs_all_in_one"]
    assert (other["baseline"], other["method"]) == ("all-in-one", "plan")
    assert "plan" in other["summary"] and "all-in-one" in other["summary"]
    assert "MTL" not in other["summary"].split(";")[0]
