"""Task groups (``model.groups``: a trunk per group of tasks in one hard-sharing run) and
``validate_groups`` (grouped vs all-in-one vs STL, Δm% on the validation split)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from synthetic import (
    FEATURES,
    assert_balanced_gradients,
    make_config,
    make_frame,
    make_splits,
    three_task_losses,
)

import polytask as pt
from polytask.models import GroupedHardSharing, check_parameter_groups

OUT_DIMS = {"a": 1, "b": 3, "c": 2}
HEADS = {"a": [4], "b": [5], "c": [4]}
#: Every shape of grouping: one group, singletons, a pair and a singleton, and groups that
#: leave a task out (it is then attached to every group, as an unlisted auxiliary task is).
GROUPINGS = {
    "one": [["a", "b", "c"]],
    "singletons": [["a"], ["b"], ["c"]],
    "pair": [["a", "b"], ["c"]],
    "attached": [["a"], ["b"]],
}


def _model(groups: list[list[str]], cardinalities=(4, 3), seed: int = 0) -> GroupedHardSharing:
    torch.manual_seed(seed)
    spec = pt.ModelConfig(shared=[6, 5], groups=groups)
    model = pt.build_model(
        spec, n_numeric=3, cardinalities=list(cardinalities), out_dims=OUT_DIMS, heads=HEADS
    )
    assert isinstance(model, GroupedHardSharing)
    return model


def _inputs(n: int, cardinalities=(4, 3), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x_cat = torch.stack([torch.randint(0, c, (n,), generator=g) for c in cardinalities], 1)
    return torch.randn(n, 3, generator=g), x_cat


def _base(view: torch.Tensor) -> torch.Tensor:
    return view if view._base is None else view._base


def _covers(param: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros_like(param, dtype=torch.bool)
    offset = view.storage_offset() - param.storage_offset()
    mask.as_strided(view.shape, view.stride(), mask.storage_offset() + offset).fill_(True)
    return mask


# ---- the model ------------------------------------------------------------------------------
def test_one_group_of_every_task_is_hard_sharing() -> None:
    """Same seed: the same parameters drawn in the same order, so the same outputs; the order
    tasks are listed in within the group does not matter."""
    torch.manual_seed(0)
    hard = pt.build_model(
        pt.ModelConfig(shared=[6, 5]), n_numeric=3, cardinalities=[4, 3], out_dims=OUT_DIMS,
        heads=HEADS,
    )  # fmt: skip
    grouped = _model([["c", "a", "b"]])
    hard_params = [p.detach() for p in hard.parameters()]
    grouped_params = [p.detach() for p in grouped.parameters()]
    assert len(hard_params) == len(grouped_params)
    for p, q in zip(hard_params, grouped_params, strict=True):
        assert torch.equal(p, q)
    x_num, x_cat = _inputs(9)
    out_h, z_h = hard(x_num, x_cat, packed=True, features=True)
    out_g, z_g = grouped(x_num, x_cat, packed=True, features=True)
    assert torch.equal(out_h, out_g) and torch.equal(z_h, z_g)


def test_one_group_trains_like_hard_sharing(tmp_path: Path) -> None:
    frame = make_frame(96, seed=2)
    tasks = [pt.Task(name="price", kind="regression"), pt.Task(name="sold", kind="binary")]
    runs = []
    for groups in (None, [["price", "sold"]]):
        config = make_config(
            tmp_path / "unused.csv", tasks, epochs=3, model={"groups": groups},
            data={"features": FEATURES},
        )  # fmt: skip
        runs.append(pt.fit(config, frame=frame))
    held_out = make_frame(20, seed=9)
    pd.testing.assert_frame_equal(
        runs[0].predict(held_out), runs[1].predict(held_out), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("groups", list(GROUPINGS.values()), ids=list(GROUPINGS))
def test_parameter_groups_cover_every_parameter_once(groups) -> None:
    model = _model(groups)
    check_parameter_groups(model)
    assert list(model.parameter_groups().tasks) == model.task_names


@pytest.mark.parametrize("groups", list(GROUPINGS.values()), ids=list(GROUPINGS))
def test_a_task_group_is_reached_by_its_own_output_only(groups) -> None:
    model = _model(groups)
    x_num, x_cat = _inputs(7)
    parameter_groups = model.parameter_groups()
    params = list(model.parameters())
    for t, source in enumerate(model.task_names):
        packed = model(x_num, x_cat, packed=True)
        grads = torch.autograd.grad(packed[:, t].pow(2).sum(), params, allow_unused=True)
        by_id = {id(p): g for p, g in zip(params, grads, strict=True)}
        for owner, entries in parameter_groups.tasks.items():
            if owner == source:
                continue
            for view in entries:
                g = by_id[id(_base(view))]
                assert g is None or not bool(g[_covers(_base(view), view)].abs().sum() > 0)


def test_singleton_groups_are_independent_networks() -> None:
    """Task b's loss has no gradient on a's encoder and trunk, which are a's own parameters;
    nothing is joint, and each network computes what it computes alone."""
    model = _model(GROUPINGS["singletons"])
    x_num, x_cat = _inputs(11)
    losses = three_task_losses(model(x_num, x_cat, packed=True))
    own_a = [*model.encoders[0].parameters(), *model.trunks[0].parameters()]
    grads = torch.autograd.grad(losses["b"], own_a, allow_unused=True)
    assert all(g is None or not bool(g.abs().sum() > 0) for g in grads)
    groups = model.parameter_groups()
    assert not groups.joint()
    assert {id(p) for p in own_a} <= {id(_base(v)) for v in groups.tasks["a"]}
    # a's output is a function of a's own network: changing b's and c's weights leaves it alone
    before = model(x_num, x_cat)["a"].detach()
    with torch.no_grad():
        for g in (1, 2):
            for p in [*model.trunks[g].parameters(), *model.group_heads[g].parameters()]:
                p.add_(1.0)
    torch.testing.assert_close(model(x_num, x_cat)["a"], before, rtol=0, atol=0)


def test_a_singleton_trunk_is_outside_z_and_an_attached_task_reads_every_trunk() -> None:
    pair = _model(GROUPINGS["pair"])
    assert pair.shared_groups == [0] and pair(*_inputs(4), features=True)[1].shape == (4, 5)
    attached = _model(GROUPINGS["attached"])
    assert attached.attached == ["c"] and attached.shared_groups == [0, 1]
    x_num, x_cat = _inputs(5)
    losses = three_task_losses(attached(x_num, x_cat, packed=True))
    for g in (0, 1):
        (grad,) = torch.autograd.grad(
            losses["c"], [attached.trunks[g][0].weight], retain_graph=True
        )
        assert bool(grad.abs().sum() > 0)


@pytest.mark.parametrize("outputs", [True, False], ids=["outputs", "losses"])
@pytest.mark.parametrize(
    ("balancer", "options"),
    [
        ("gradnorm", {}),
        ("upgrad", {"level": "parameters"}),
        ("upgrad", {"level": "representation"}),
        ("mgda", {"level": "parameters"}),
        ("mgda", {"level": "representation"}),
    ],
)
@pytest.mark.parametrize("groups", list(GROUPINGS.values()), ids=list(GROUPINGS))
def test_every_parameter_gets_its_gradient(groups, balancer: str, options, outputs) -> None:
    """A joint parameter's gradient is Σ_t w_t α_t ∇L_t with the balancer's weights, a
    task-specific one's (heads, singleton trunks) Σ_t α_t ∇L_t, and none is left without one.
    With a singleton trunk beside a shared one, MGDA at the parameter level would return 0 if
    the singleton's zero row on the joint parameters were in its Jacobian."""
    model = _model(groups)
    x_num, x_cat = _inputs(16)
    assert_balanced_gradients(model, x_num, x_cat, balancer, options, outputs)


# ---- through fit ----------------------------------------------------------------------------
TASKS = [
    pt.Task(name="price", kind="regression", head=[4]),
    pt.Task(name="sold", kind="binary"),
    pt.Task(name="species", kind="multiclass"),
    pt.Task(name="aux", kind="regression", role="auxiliary"),
]


@pytest.mark.parametrize(
    ("balancer", "options"),
    [
        ("uncertainty", {}),
        ("upgrad", {"level": "parameters"}),
        ("pcgrad", {"level": "representation"}),
    ],
)
@pytest.mark.parametrize(
    "groups",
    [[["price", "sold"], ["species"]], [["price"], ["sold", "aux"], ["species"]]],
    ids=["aux_attached", "aux_listed"],
)
def test_fit_trains_every_parameter(tmp_path: Path, groups, balancer, options) -> None:
    """Missing labels, a categorical input, an auxiliary task attached or listed: after
    training no parameter is where it started."""
    frame = make_frame(96, seed=1, missing=0.3)
    config = make_config(
        tmp_path / "unused.csv", TASKS, epochs=2, batch_size=24, balancer=balancer,
        balancer_options=options, model={"shared": [8], "groups": groups},
        data={"features": FEATURES},
    )  # fmt: skip
    run = pt.fit(config, frame=frame)
    torch.manual_seed(config.train.seed)
    before = pt.build_model(
        config.model,
        n_numeric=run.preprocessor.n_numeric,
        cardinalities=run.preprocessor.cardinalities,
        out_dims=run.preprocessor.output_dims(),
        heads={t.name: t.head for t in run.preprocessor.tasks if t.head is not None},
    ).state_dict()
    assert np.isfinite(run.history.filter(like="train_loss/").to_numpy()).all()
    frozen = [n for n, p in run.model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert not frozen


def test_save_load_predict_round_trip(tmp_path: Path) -> None:
    frame = make_frame(80, seed=3, missing=0.1)
    config = make_config(
        tmp_path / "unused.csv", TASKS, epochs=2, data={"features": FEATURES},
        model={"shared": [8], "groups": [["price", "aux"], ["sold", "species"]]},
    )  # fmt: skip
    run = pt.fit(config, frame=frame, out=tmp_path / "run")
    loaded = pt.load(tmp_path / "run")
    assert loaded.config.model.groups == [["price", "aux"], ["sold", "species"]]
    held_out = make_frame(30, seed=4)
    pd.testing.assert_frame_equal(loaded.predict(held_out), run.predict(held_out), check_exact=True)


def test_compare_runs_with_groups(tmp_path: Path) -> None:
    """STL baselines drop the groups (one task, one trunk)."""
    frame = make_frame(90, seed=5)
    config = make_config(
        tmp_path / "unused.csv", TASKS[:3], epochs=2, data={"test_fraction": 0.3},
        model={"shared": [6], "groups": [["price"], ["sold", "species"]]},
    )  # fmt: skip
    result = pt.compare(config, seeds=2, frame=frame)
    assert len(result.scores["mtl"]["price"]) == len(result.scores["stl"]["species"]) == 2
    assert math.isfinite(result.to_json()["delta_m_percent"])


# ---- config ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"groups": [["a"], ["a", "b"]]}, r"model: groups\[1\]: task 'a' is already in group 0"),
        ({"groups": [["a", "b"], []]}, r"model: groups\[1\]: a group needs at least one task"),
        ({"groups": []}, r"model: groups: give at least one group"),
        ({"groups": [["a", "b"]], "architecture": "mmoe"}, r"option of hard_sharing, not 'mmoe'"),
        ({"groups": [["a", "b"]], "linear_path": True}, r"cannot be combined with linear_path"),
        ({"groups": [["a", "typo"], ["b"]]}, r"groups\[0\]: 'typo' is not a task"),
        ({"groups": [["a", "x"]]}, r"model.groups: main tasks b are in no group"),
    ],
)  # fmt: skip
def test_groups_are_checked_when_the_config_is_read(model, message) -> None:
    data = {
        "data": {"train": "t.csv"},
        "tasks": [
            {"name": "a", "kind": "regression"},
            {"name": "b", "kind": "binary"},
            {"name": "x", "kind": "regression", "role": "auxiliary"},
        ],
        "model": model,
    }
    with pytest.raises(pt.ConfigError, match=message):
        pt.parse_config(data)


def test_auxiliary_tasks_may_be_listed_or_left_out() -> None:
    tasks = [
        {"name": "a", "kind": "regression"},
        {"name": "b", "kind": "binary"},
        {"name": "x", "kind": "regression", "role": "auxiliary"},
    ]
    for groups in ([["a"], ["b"]], [["a", "x"], ["b"]]):
        config = pt.parse_config(
            {"data": {"train": "t.csv"}, "tasks": tasks, "model": {"groups": groups}}
        )
        assert config.model.groups == groups


def test_groups_name_a_data_sets_tasks() -> None:
    with pytest.raises(pt.ConfigError, match=r"main tasks school_\d+, .*\(\d+ in all\) are in no"):
        pt.parse_config({"data": {"dataset": "school"}, "model": {"groups": [["school_1224"]]}})


def test_a_custom_trunk_is_refused_with_groups() -> None:
    with pytest.raises(pt.ConfigError, match="model.groups: a custom trunk"):
        pt.build_model(
            pt.ModelConfig(groups=[["a"]]), n_numeric=3, cardinalities=[], out_dims={"a": 1},
            trunk=torch.nn.Linear(3, 4),
        )  # fmt: skip


# ---- validate_groups ------------------------------------------------------------------------
def planted_clusters(n: int, seed: int = 0) -> pd.DataFrame:
    """Two clusters of two regression tasks on disjoint inputs, conflicting within a cluster:
    cluster A is x0 + x1 and x0 - x1, cluster B x2 + x3 and x2 - x3. A trunk of two units
    spans one cluster's inputs, not both: all-in-one must drop half of the signal, a trunk per
    cluster (and STL) need not. Grouping wins by a wide margin on every seed we tried."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, 4))
    frame = pd.DataFrame(x, columns=["x0", "x1", "x2", "x3"])
    noise = 0.05 * rng.normal(size=(n, 4))
    frame["a1"], frame["a2"] = x[:, 0] + x[:, 1] + noise[:, 0], x[:, 0] - x[:, 1] + noise[:, 1]
    frame["b1"], frame["b2"] = x[:, 2] + x[:, 3] + noise[:, 2], x[:, 2] - x[:, 3] + noise[:, 3]
    return frame


def test_validate_groups_reports_every_arm_and_grouping_helps_planted_clusters(
    tmp_path: Path,
) -> None:
    frame = planted_clusters(300)
    tasks = [pt.Task(name=n, kind="regression") for n in ("a1", "a2", "b1", "b2")]
    config = make_config(
        tmp_path / "unused.csv", tasks, epochs=30, batch_size=64, lr=2e-2,
        model={"shared": [2], "activation": "tanh"},
        data={"validation_fraction": 0.25, "test_fraction": 0.1},
    )  # fmt: skip
    result = pt.validate_groups(config, [["a1", "a2"], ["b1", "b2"]], seeds=2, frame=frame)
    json.dumps(result)
    assert set(result["arms"]) == {"grouped", "all_in_one", "stl"}
    assert result["split"] == "validation" and result["seeds"] == [0, 1]
    for arm in result["arms"].values():
        assert len(arm["delta_m_per_seed"]) == 2 and math.isfinite(arm["delta_m_percent"])
        assert set(arm["tasks"]) == {"a1", "a2", "b1", "b2"}
        lo, hi = arm["delta_m_ci95"]
        assert lo <= arm["delta_m_percent"] <= hi
    assert result["arms"]["stl"]["delta_m_percent"] == 0.0
    grouped, together = (result["arms"][a]["delta_m_per_seed"] for a in ("grouped", "all_in_one"))
    assert all(g < t for g, t in zip(grouped, together, strict=True))
    assert result["best"] in ("grouped", "stl")


def test_validate_groups_never_reads_the_test_split(tmp_path: Path) -> None:
    """Scrambling the test split's labels changes nothing: only validation scores are used."""
    frame = planted_clusters(160, seed=1)
    tasks = [pt.Task(name=n, kind="regression") for n in ("a1", "a2", "b1", "b2")]
    config = make_config(tmp_path / "unused.csv", tasks, epochs=2, model={"shared": [3]})
    splits = make_splits(frame, validation=40, test=40)
    scrambled = splits.test.copy()
    scrambled[["a1", "a2", "b1", "b2"]] = 100.0 + scrambled[["a1", "a2", "b1", "b2"]] ** 2
    results = [
        pt.validate_groups(config, [["a1", "a2"], ["b1", "b2"]], seeds=[3], splits=s)
        for s in (splits, pt.Splits(splits.train, splits.validation, scrambled))
    ]
    for arm in ("grouped", "all_in_one", "stl"):
        assert results[0]["arms"][arm]["tasks"] == results[1]["arms"][arm]["tasks"]
    assert (
        results[0]["arms"]["grouped"]["delta_m_per_seed"]
        == (results[1]["arms"]["grouped"]["delta_m_per_seed"])
    )


def test_validate_groups_checks_its_groups(tmp_path: Path) -> None:
    config = make_config(tmp_path / "unused.csv", TASKS[:2])
    with pytest.raises(pt.ConfigError, match=r"main tasks sold are in no group"):
        pt.validate_groups(config, [["price"]], seeds=1, frame=make_frame(40))
