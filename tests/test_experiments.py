"""polytask.experiments: each experiment in its quick form (result structure, plots, a verdict
that follows from its own contrasts), the planted relations of the generated data, the verdict
functions on made-up numbers, and the command as a Typer command and as a plain function."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

import polytask as pt
from polytask.errors import ConfigError
from polytask.experiments import (
    EXPERIMENTS,
    amplification,
    attribute_selection,
    capacity,
    eavesdropping,
    inputs_as_outputs,
    learning_rate,
    learning_speed,
    noise_task,
    representation_bias,
    run_experiment,
    shuffle_control,
)
from polytask.experiments.base import (
    BETTER,
    NO_DIFFERENCE,
    UNTESTED,
    WORSE,
    contrast,
    outcome,
    split_frame,
)
from polytask.experiments.command import experiment

NAMES = [
    "amplification",
    "attribute-selection",
    "capacity",
    "eavesdropping",
    "inputs-as-outputs",
    "learning-rate",
    "learning-speed",
    "noise-task",
    "representation-bias",
    "shuffle-control",
]
CONTRAST_KEYS = {
    "label", "metric", "lower_is_better", "baseline", "treatment", "baseline_per_seed",
    "treatment_per_seed", "baseline_mean", "baseline_std", "treatment_mean", "treatment_std",
    "difference_per_seed", "difference_mean", "difference_ci95", "p_value", "outcome",
}  # fmt: skip
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, Path]]:
    """Every experiment run once in its quick form with two seeds."""
    results = {}
    for name in NAMES:
        out = tmp_path_factory.mktemp(name)
        results[name] = (run_experiment(name, seeds=2, out=out, quick=True), out)
    return results


def test_the_registry_holds_the_experiments() -> None:
    assert sorted(EXPERIMENTS) == NAMES
    for exp in EXPERIMENTS.values():
        assert exp.description and exp.claim and callable(exp.run)


@pytest.mark.parametrize("name", NAMES)
def test_quick_result_structure(name: str, quick_results: dict[str, tuple[dict, Path]]) -> None:
    result, out = quick_results[name]
    assert result["experiment"] == name and result["quick"] is True
    assert result["seeds"] == [0, 1]
    assert json.loads((out / "result.json").read_text()) == result
    assert result["settings"] and result["per_seed"] and result["contrasts"]
    for c in result["contrasts"]:
        assert set(c) >= CONTRAST_KEYS
        assert len(c["baseline_per_seed"]) == len(c["treatment_per_seed"])
        if c["outcome"] == UNTESTED:  # learning-speed's wall time when MTL reached no task
            assert name == "learning-speed" and len(c["baseline_per_seed"]) < 2
            continue
        assert len(c["baseline_per_seed"]) == 2
        assert c["outcome"] in (BETTER, WORSE, NO_DIFFERENCE)
        assert c["difference_mean"] == pytest.approx(
            np.mean(c["treatment_per_seed"]) - np.mean(c["baseline_per_seed"]), abs=1e-9
        )
        lo, hi = c["difference_ci95"]
        assert lo <= c["difference_mean"] <= hi
    assert result["plots"]
    for plot in result["plots"]:
        assert (out / plot).read_bytes()[:8] == PNG


VERDICTS = {
    "amplification": amplification.verdict,
    "attribute-selection": attribute_selection.verdict,
    "capacity": capacity.verdict,
    "eavesdropping": eavesdropping.verdict,
    "inputs-as-outputs": inputs_as_outputs.verdict,
    "learning-rate": learning_rate.verdict,
    "noise-task": noise_task.verdict,
    "representation-bias": representation_bias.verdict,
    "shuffle-control": shuffle_control.verdict,
}


@pytest.mark.parametrize("name", NAMES)
def test_the_verdict_is_computed_from_the_contrasts(
    name: str, quick_results: dict[str, tuple[dict, Path]]
) -> None:
    result, _ = quick_results[name]
    if name == "learning-speed":
        reached = sum(r["mtl_epoch"] is not None for r in result["per_task"])
        expected = learning_speed.verdict(result["contrasts"], reached, len(result["per_task"]))
    else:
        expected = VERDICTS[name](result["contrasts"])
    assert result["verdict"] == expected


# ---- the verdict functions on made-up numbers ------------------------------------------------

LOW = [1.0, 1.1, 0.9, 1.05, 0.95, 1.02]
HIGH = [2.0, 2.2, 1.9, 2.1, 2.05, 1.98]


def made_up(label: str, baseline: list[float], treatment: list[float], **kw: Any) -> dict:
    return contrast(label, ("A", baseline), ("B", treatment), metric="rmse", **kw)


def test_outcome_needs_both_the_test_and_the_interval() -> None:
    assert outcome([-1.0, -1.2, -0.9], 0.001, (-1.5, -0.6), lower_is_better=True) == BETTER
    assert outcome([-1.0, -1.2, -0.9], 0.001, (-1.5, -0.6), lower_is_better=False) == WORSE
    assert outcome([-1.0, 0.2, -0.9], 0.2, (-1.5, 0.6), lower_is_better=True) == NO_DIFFERENCE
    assert outcome([-1.0, -1.2, -0.9], 0.001, (-1.5, 0.1), lower_is_better=True) == NO_DIFFERENCE
    assert outcome([-1.0], float("nan"), (float("nan"),) * 2, lower_is_better=True) == UNTESTED
    assert made_up("x", HIGH, LOW)["outcome"] == BETTER
    assert made_up("x", LOW, HIGH)["outcome"] == WORSE
    assert made_up("x", LOW, HIGH, lower_is_better=False)["outcome"] == BETTER


@pytest.mark.parametrize(
    "verdict, labels",
    [
        (amplification.verdict, ["n=50, noise=1.0, copies=1", "n=200, noise=1.0, copies=1"]),
        (eavesdropping.verdict, ["n=100", "n=300"]),
    ],
)
def test_a_verdict_flips_with_the_numbers(verdict: Any, labels: list[str]) -> None:
    helped = [made_up(label, HIGH, LOW) for label in labels]
    hurt = [made_up(label, LOW, HIGH) for label in labels]
    same = [made_up(label, LOW, LOW[::-1]) for label in labels]
    assert verdict(helped).startswith("reproduced")
    assert verdict(hurt).startswith("contradicted")
    assert verdict(same).startswith("not reproduced")


def test_inputs_as_outputs_verdict_follows_caruanas_ordering() -> None:
    def case(std: list[float], with_input: list[float], with_output: list[float]) -> str:
        return inputs_as_outputs.verdict(
            [
                made_up("STD+IN vs STD", std, with_input),
                made_up("STD+OUT vs STD", std, with_output),
                made_up("STD+OUT vs STD+IN", with_input, with_output),
            ]
        )

    assert case(HIGH, HIGH[::-1], LOW).startswith("reproduced")
    assert case(LOW, LOW[::-1], HIGH).startswith("not reproduced")
    # the input helps as much as the output: only half of the claim
    assert case(HIGH, LOW, LOW[::-1]).startswith("partly reproduced")


def test_shuffle_verdict_needs_a_benefit_that_the_shuffle_removes() -> None:
    def case(stl: list[float], mtl: list[float], shuffled: list[float]) -> str:
        return shuffle_control.verdict(
            [
                {**made_up("p: MTL vs STL", stl, mtl), "problem": "p"},
                {**made_up("p: shuffled vs STL", stl, shuffled), "problem": "p"},
                {**made_up("p: MTL vs shuffled", shuffled, mtl), "problem": "p"},
            ]
        )

    assert "p: reproduced" in case(HIGH, LOW, HIGH[::-1])
    assert "p: not reproduced" in case(HIGH, LOW, LOW[::-1])
    assert "p: no benefit to remove" in case(LOW, LOW[::-1], HIGH)


def test_noise_task_and_attribute_selection_verdicts_flip() -> None:
    def noise(stl: list[float], task: list[float]) -> str:
        return noise_task.verdict(
            [
                made_up("n=50: noise task vs STL", stl, task),
                made_up("n=50: dropout vs STL", stl, stl[::-1]),
                made_up("n=50: noise task vs dropout", stl[::-1], task),
            ]
        )

    assert noise(HIGH, LOW).startswith("reproduced")
    assert noise(LOW, HIGH).startswith("contradicted")

    def attributes(stl: list[float], mtl: list[float]) -> str:
        return attribute_selection.verdict(
            [
                {**made_up("e", stl, mtl), "metric": "rmse vs F"},
                made_up("w", mtl, stl, lower_is_better=False),
            ]
        )

    assert attributes(HIGH, LOW).count(": reproduced") == 2
    assert attributes(LOW, HIGH).count(": contradicted") == 2


# ---- the planted relations of the generated data -----------------------------------------------


def corr(a: Any, b: Any) -> float:
    return float(np.corrcoef(np.asarray(a, float), np.asarray(b, float))[0, 1])


@pytest.mark.parametrize("seed", [0, 3])
def test_amplification_tasks_share_f_with_independent_noise(seed: int) -> None:
    frame, sizes = amplification.generate(seed, 200, 1.0, copies=2)
    train = frame.iloc[: sizes["n_train"]]
    test = frame.iloc[sizes["n_train"] + sizes["n_validation"] :]
    assert len(test) == amplification.N_TEST
    assert corr(train["T"], train["F"]) > 0.5 and corr(train["U0"], train["F"]) > 0.5
    assert abs(corr(train["T"] - train["F"], train["U0"] - train["F"])) < 0.25
    assert np.allclose(test["T"], test["F"]) and np.allclose(test["U1"], test["F"])


def test_eavesdropping_t2_uses_f_only_where_the_gate_is_open() -> None:
    frame, n_validation = eavesdropping.generate(1, 300)
    test = frame.iloc[300 + n_validation :]
    gate = test["x2"] > eavesdropping.GATE
    assert np.allclose(test["T2"], test["F"] * gate + 0.5 * test["x3"])
    assert np.allclose(test["T"], test["F"])
    assert 0.15 < gate.mean() < 0.35


def test_inputs_as_outputs_codes_decode_to_a_and_b() -> None:
    frame = inputs_as_outputs.generate(2, 50)
    weights = 2 ** np.arange(inputs_as_outputs.BITS - 1, -1, -1)
    step = 10 / 2**inputs_as_outputs.BITS
    for var, prefix in (("A", "a"), ("B", "b")):
        bits = frame[[f"{prefix}{i}" for i in range(inputs_as_outputs.BITS)]].to_numpy()
        assert set(np.unique(bits)) <= {0.0, 1.0}
        decoded = -5 + (bits @ weights + 0.5) * step
        assert np.all(np.abs(decoded - frame[var]) <= step / 2 + 1e-9)
    assert np.allclose(frame["F1"], 1 / (1 + np.exp(-(frame["A"] + frame["B"]))))
    assert np.allclose(frame["F2"], 1 / (1 + np.exp(-(frame["A"] - frame["B"]))))


def test_the_shuffled_extra_tasks_carry_no_signal() -> None:
    splits, _, extra, main = shuffle_control.synthetic_problem(0, quick=False)
    control = shuffle_control.shuffled(splits, extra, seed=0)
    for task in extra:
        assert corr(splits.train[task], splits.train["F"]) > 0.5
        assert abs(corr(control.train[task], control.train["F"])) < 0.3
        assert abs(corr(control.train[task], control.train[main])) < 0.3
        assert sorted(control.train[task]) == sorted(splits.train[task])
    assert control.train[main].equals(splits.train[main])
    assert control.test.equals(splits.test)


def test_the_noise_task_is_unrelated_to_everything() -> None:
    frame, _ = noise_task.generate(0, 2000)
    for column in ["F", "T", *[f"x{i}" for i in range(amplification.N_INPUTS)]]:
        assert abs(corr(frame["N"], frame[column])) < 0.06


def test_attribute_selection_f_ignores_the_irrelevant_inputs() -> None:
    frame, _ = attribute_selection.generate(0, 100, 1.0)
    x = frame[[f"x{i}" for i in range(attribute_selection.N_INPUTS)]].to_numpy()
    scrambled = x.copy()
    scrambled[:, attribute_selection.N_RELEVANT :] = np.random.default_rng(9).uniform(
        -1, 1, size=scrambled[:, attribute_selection.N_RELEVANT :].shape
    )
    base = attribute_selection.hidden_function(x, 0)
    # F is standardized over the rows, so equal up to that scaling means the same function
    assert np.allclose(attribute_selection.hidden_function(scrambled, 0), base)
    changed = x.copy()
    changed[:, 0] = -changed[:, 0]
    assert not np.allclose(attribute_selection.hidden_function(changed, 0), base)


def test_capacity_verdict_and_matching_width() -> None:
    def case(stl: list[float], mtl: list[float]) -> str:
        return capacity.verdict(
            [
                made_up("width 8: MTL vs STL", stl, mtl),
                made_up("width chosen on validation: MTL vs STL", stl, mtl),
            ]
        )

    assert case(HIGH, LOW).startswith("reproduced")
    assert case(LOW, HIGH).startswith("not reproduced")
    stl = {4: 0.5, 8: 0.4, 32: 0.35}
    assert capacity.smallest_matching_width([4, 8, 32], stl, {4: 0.45, 8: 0.34, 32: 0.3}) == 8
    assert capacity.smallest_matching_width([4, 8, 32], stl, {4: 0.5, 8: 0.4, 32: 0.36}) is None


def test_learning_rate_verdict_follows_the_matched_control() -> None:
    def case(stl: list[float], mtl: list[float], matched: list[float]) -> str:
        return learning_rate.verdict(
            [
                made_up("gradient norm (T = 4 vs T = 1)", LOW, HIGH, lower_is_better=False),
                made_up("MTL vs STL", stl, mtl),
                made_up("lr-matched STL vs STL", stl, matched),
                made_up("MTL vs lr-matched STL", matched, mtl),
            ]
        )

    assert "; reproduced" in case(HIGH, LOW, LOW[::-1])
    assert "; not reproduced" in case(HIGH, LOW, HIGH[::-1])
    assert "no gain to explain" in case(LOW, HIGH, LOW)
    assert case(HIGH, LOW, LOW[::-1]).startswith(
        "the shared gradient norm at T = 4 is significantly larger than at T = 1"
    )


def test_shared_gradient_norms_match_backward() -> None:
    """The summed-loss gradient norm equals what loss.backward() leaves in the shared .grad."""
    splits, names = learning_rate.problem(0, quick=True)
    cfg = learning_rate.sgd_config(splits, names, 0, learning_rate.settings(True), 0.01)
    preprocessor = pt.Preprocessor.fit(splits.train, cfg.tasks, features=cfg.data.features)
    data = pt.TaskData.from_frame(splits.train, preprocessor)
    torch.manual_seed(0)
    model = pt.build_model(
        cfg.model,
        n_numeric=preprocessor.n_numeric,
        cardinalities=preprocessor.cardinalities,
        out_dims=preprocessor.output_dims(),
    )
    norms = learning_rate.shared_gradient_norms(model, data, names)
    assert list(norms) == list(learning_rate.COUNTS)
    outputs = model(data.x_num, data.x_cat)
    loss = sum(
        ((outputs[t].reshape(-1) - data.targets[t].reshape(-1)) ** 2).mean() for t in names[:2]
    )
    loss.backward()
    shared = model.parameter_groups().shared
    expected = float(torch.sqrt(sum((p.grad**2).sum() for p in shared)))
    assert norms[2] == pytest.approx(expected, rel=1e-5)
    assert norms[1] > 0 and norms[1] != pytest.approx(norms[2])


def test_representation_bias_plants_two_minima_per_task() -> None:
    rb = representation_bias
    train, _, probe = rb.generate(0, 200)
    own_t, own_t2 = train["T"].notna(), train["T2"].notna()
    assert not (own_t & own_t2).any() and (own_t | own_t2).all()
    t_rows, t2_rows = train[own_t], train[own_t2]
    # both minima fit each task exactly on its own rows
    assert np.allclose(t_rows["T"], rb.task_t(t_rows["xA"]))
    assert np.allclose(t_rows["T"], rb.task_t(t_rows["xB"]))
    assert np.allclose(t2_rows["T2"], rb.task_t2(t2_rows["xA"]))
    assert np.allclose(t2_rows["T2"], rb.task_t2(t2_rows["xC"]))
    assert abs(corr(t_rows["xA"], t_rows["xC"])) < 0.25  # C is no minimum of T
    assert abs(corr(probe["xA"], probe["xB"])) < 0.1  # the probe tells the minima apart
    forced, _, _ = rb.generate(0, 200, force=0.1)
    rows = forced[forced["T"].notna()]
    assert np.allclose(rows["T"], rb.task_t(rows["xB"]))
    assert not np.allclose(rows["xA"], rows["xB"])
    a, b = rb.task_t(probe["xA"].to_numpy()), rb.task_t(probe["xB"].to_numpy())
    assert rb.share(a, a, b) == pytest.approx(1.0)
    assert rb.share(b, a, b) == pytest.approx(0.0, abs=1e-9)
    assert rb.share(a + b, a, b) == pytest.approx(0.5)


def test_representation_bias_verdict() -> None:
    def case(stl: list[float], mtl: list[float], forced_t: list[float], forced_t2: list[float]):
        return representation_bias.verdict(
            [
                made_up("T's share of A: MTL vs STL", stl, mtl, lower_is_better=False),
                made_up("T′'s share of A: MTL vs STL", stl, mtl, lower_is_better=False),
                made_up("T's share of A: forced vs unforced MTL", mtl, forced_t),
                made_up("T′'s share of A: forced vs unforced MTL", mtl, forced_t2),
            ]
        )

    text = case(LOW, HIGH, LOW, LOW)
    assert ": reproduced (MTL vs STL: better)" in text and "C: reproduced" in text
    text = case(HIGH, LOW, LOW[::-1], HIGH)
    assert ": not reproduced (MTL vs STL: worse)" in text
    assert "untestable" in case(LOW, HIGH, [v + 5 for v in HIGH], LOW)


def test_learning_speed_reach() -> None:
    stl = np.array([0.5, 0.7, 0.6, 0.7])
    assert learning_speed.reach(stl, np.array([0.6, 0.65, 0.71, 0.8])) == (2, 3)
    assert learning_speed.reach(stl, np.array([0.7, 0.6, 0.6, 0.6])) == (2, 1)
    assert learning_speed.reach(stl, np.array([0.6, 0.6, 0.6, 0.6])) == (2, None)


def test_split_frame_keeps_order() -> None:
    frame = pd.DataFrame({"a": np.arange(10)})
    splits = split_frame(frame, 5, 2)
    assert list(splits.train["a"]) == [0, 1, 2, 3, 4]
    assert list(splits.validation["a"]) == [5, 6]
    assert list(splits.test["a"]) == [7, 8, 9]


# ---- the command -----------------------------------------------------------------------------


def test_the_command_in_a_typer_app(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(experiment)
    runner = CliRunner()
    listed = runner.invoke(app, ["--list"])
    assert listed.exit_code == 0 and all(name in listed.stdout for name in NAMES)
    done = runner.invoke(
        app, ["eavesdropping", "--seeds", "2", "--quick", "--out", str(tmp_path / "e")]
    )
    assert done.exit_code == 0, done.stdout
    result = json.loads((tmp_path / "e" / "result.json").read_text())
    assert "verdict:" in done.stdout and result["verdict"][:40] in done.stdout.replace("\n", " ")
    assert "mean ± std over 2 seed(s)" in done.stdout
    unknown = runner.invoke(app, ["no-such-experiment", "--out", str(tmp_path / "x")])
    assert isinstance(unknown.exception, ConfigError)
    assert "no-such-experiment" in str(unknown.exception)


def test_the_command_as_a_plain_function(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment(list_=True)
    assert "inputs-as-outputs" in capsys.readouterr().out
    experiment("noise-task", seeds=2, out=tmp_path, quick=True)
    printed = capsys.readouterr().out
    assert (tmp_path / "result.json").is_file() and (tmp_path / "noise_task.png").is_file()
    assert "verdict:" in printed
