"""Architectures behind ``model.architecture``: the model protocol's parameter groups and
representation hold for each, every balancer puts every parameter's gradient right, and each
architecture's defining property (gates, one expert, identity stitches, λ = 0) holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from synthetic import (
    FEATURES,
    assert_balanced_gradients,
    make_config,
    make_frame,
    three_task_losses,
)
from torch import nn

import polytask as pt
from polytask.balancing import make_balancer
from polytask.models import (
    ARCHITECTURES,
    HardSharing,
    Heads,
    MMoE,
    MultiTaskModel,
    ParameterGroups,
    SoftSharing,
    check_parameter_groups,
)
from polytask.models.layers import MLP, TabularInput

OUT_DIMS = {"a": 1, "b": 3, "c": 2}
#: Every architecture, and hard sharing with per-task heads and the linear path.
SPECS: dict[str, dict[str, Any]] = {
    "hard_sharing": {},
    "hard_sharing_wide": {"architecture": "hard_sharing", "linear_path": True},
    "mmoe": {"architecture": "mmoe", "options": {"n_experts": 3}},
    "cgc": {"architecture": "cgc", "options": {"n_shared_experts": 2, "n_task_experts": 2}},
    "ple": {"architecture": "ple", "options": {"levels": 3, "n_shared_experts": 2}},
    "cross_stitch": {"architecture": "cross_stitch", "options": {"self_weight": 0.7}},
    "soft_sharing": {"architecture": "soft_sharing", "options": {"penalty": 0.1}},
}
#: Per-task head overrides used with every spec: two head shapes, so heads come in two groups.
HEADS = {"b": [5]}


def test_every_registered_architecture_is_tested() -> None:
    assert {s.get("architecture", "hard_sharing") for s in SPECS.values()} == set(ARCHITECTURES)


def _model(spec: str, cardinalities: list[int], head: list[int], seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    if spec == "shared_input_networks":
        return SoftSharing(
            encoders=[TabularInput(3, cardinalities, None)],
            body=[6, 5],
            out_dims=OUT_DIMS,
            heads={n: HEADS.get(n, head) for n in OUT_DIMS},
            penalty=0.0,
        )
    config = pt.ModelConfig(**{"shared": [6, 5], "head": head, **SPECS[spec]})
    return pt.build_model(
        config, n_numeric=3, cardinalities=cardinalities, out_dims=OUT_DIMS, heads=HEADS
    )


def _inputs(n: int, cardinalities: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x_cat = torch.stack([torch.randint(0, c, (n,), generator=g) for c in cardinalities], 1)
    return torch.randn(n, 3, generator=g), x_cat.reshape(n, len(cardinalities))


def grad_of(param: torch.Tensor, view: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The entries of ``grad`` (a gradient of ``param``, in any memory layout) that ``view``
    covers of ``param``."""
    mask = torch.zeros_like(param, dtype=torch.bool)
    offset = view.storage_offset() - param.storage_offset()
    mask.as_strided(view.shape, view.stride(), mask.storage_offset() + offset).fill_(True)
    return grad[mask]


def _base(view: torch.Tensor) -> torch.Tensor:
    return view if view._base is None else view._base


# ---- the protocol ---------------------------------------------------------------------------
@pytest.mark.parametrize("cardinalities", [[], [4, 3]])
@pytest.mark.parametrize("spec", list(SPECS))
def test_parameter_groups_cover_every_parameter_once(spec: str, cardinalities) -> None:
    model = _model(spec, cardinalities, head=[4])
    check_parameter_groups(model)
    groups = model.parameter_groups()
    assert list(groups.tasks) == model.task_names
    covered = {id(_base(t)) for g in groups.tasks.values() for t in g}
    covered |= {id(p) for p in groups.joint()}
    assert covered == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("spec", list(SPECS))
def test_a_task_group_is_reached_by_its_own_output_only(spec: str) -> None:
    """The definition of task t's group: no other task's output depends on it."""
    model = _model(spec, [4], head=[4])
    x_num, x_cat = _inputs(7, [4])
    groups = model.parameter_groups()
    for t, source in enumerate(model.task_names):
        packed = model(x_num, x_cat, packed=True)
        params = list(model.parameters())
        grads = torch.autograd.grad(packed[:, t].pow(2).sum(), params, allow_unused=True)
        by_id = {id(p): g for p, g in zip(params, grads, strict=True)}
        for owner, entries in groups.tasks.items():
            for view in entries:
                g = by_id[id(_base(view))]
                reached = g is not None and bool(grad_of(_base(view), view, g).abs().sum() > 0)
                if owner != source:
                    assert not reached, (source, owner)


@pytest.mark.parametrize("outputs", [True, False], ids=["outputs", "losses"])
@pytest.mark.parametrize(
    ("balancer", "options"),
    [
        ("gradnorm", {}),
        ("upgrad", {"level": "parameters"}),
        ("upgrad", {"level": "representation"}),
        ("mgda", {"level": "representation"}),
    ],
)
@pytest.mark.parametrize("spec", [*SPECS, "shared_input_networks"])
def test_every_parameter_gets_its_gradient(spec: str, balancer: str, options, outputs) -> None:
    """Weights w from the balancer: a joint parameter's gradient is Σ_t w_t α_t ∇L_t, a
    task-specific one's Σ_t α_t ∇L_t (its own loss only, unweighted by an aggregator), and
    no parameter is left without one. Categorical embeddings and heads of two depths: z must
    carry everything the shared parameters reach the losses through. ``shared_input_networks``
    (a network per task on one shared embedding) has task-specific parameters before z."""
    model = _model(spec, [4, 3], head=[4])
    x_num, x_cat = _inputs(16, [4, 3])
    assert_balanced_gradients(model, x_num, x_cat, balancer, options, outputs)


class _Forgetful(HardSharing):
    """A user's model whose groups leave the encoder's embeddings out."""

    def parameter_groups(self) -> ParameterGroups:
        groups = super().parameter_groups()
        return ParameterGroups(shared=list(self.trunk.parameters()), tasks=groups.tasks)


class _Greedy(HardSharing):
    """A user's model that puts a head in the shared group as well as in its task's."""

    def parameter_groups(self) -> ParameterGroups:
        groups = super().parameter_groups()
        return ParameterGroups(
            shared=[*groups.shared, *self.heads.parameters()], tasks=groups.tasks
        )


class _Silent(MultiTaskModel):
    """A user's model that never says what its groups are."""

    def __init__(self) -> None:
        super().__init__({"a": 1})
        self.net = nn.Linear(3, 1)


def test_a_model_whose_groups_are_wrong_is_refused() -> None:
    def build(cls: type[HardSharing]) -> HardSharing:
        return cls(encoder=TabularInput(3, [4], 2), trunk=MLP(5, [4]), out_dims=OUT_DIMS)

    config = pt.TrainConfig(device="cpu")
    tasks = [pt.Task(name=n, kind="regression") for n in OUT_DIMS]
    with pytest.raises(pt.ConfigError, match=r"'encoder.embeddings.0.weight' is in no group"):
        pt.Trainer(build(_Forgetful), tasks, config)
    with pytest.raises(pt.ConfigError, match=r"'heads.groups.0.weights.0' is in more than one"):
        pt.Trainer(build(_Greedy), tasks, config)
    with pytest.raises(pt.ConfigError, match="_Silent does not define parameter_groups"):
        pt.Trainer(_Silent(), [pt.Task(name="a", kind="regression")], config)


# ---- every architecture through fit ---------------------------------------------------------
@pytest.fixture(scope="module")
def missing_table(tmp_path_factory) -> Path:
    frame = make_frame(96, seed=1, missing=0.3)
    frame.loc[:, "visits"] = np.nan
    frame.loc[:3, "visits"] = 1.0  # most batches have no labelled 'visits' row
    path = tmp_path_factory.mktemp("architectures") / "train.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("balancer", "options"),
    [
        ("uncertainty", {}),
        ("upgrad", {"level": "parameters"}),
        ("pcgrad", {"level": "representation"}),
    ],
)
@pytest.mark.parametrize("spec", list(SPECS))
def test_every_architecture_trains_every_parameter(missing_table, spec, balancer, options) -> None:
    """Every task kind, an auxiliary task, missing labels (one task nearly unlabelled), a
    categorical input: after training no parameter of any group is where it started."""
    model = {"shared": [8], "head": [], **SPECS[spec]}
    config = make_config(
        missing_table, balancer=balancer, balancer_options=options, epochs=2, batch_size=24,
        model=model,
    )  # fmt: skip
    run = pt.fit(config)
    torch.manual_seed(config.train.seed)  # the model fit started from
    before = pt.build_model(
        config.model,
        n_numeric=run.preprocessor.n_numeric,
        cardinalities=run.preprocessor.cardinalities,
        out_dims=run.preprocessor.output_dims(),
    ).state_dict()
    assert np.isfinite(run.history.filter(like="train_loss/").to_numpy()).all()
    frozen = [
        name for name, p in run.model.named_parameters() if torch.equal(p.detach(), before[name])
    ]
    assert not frozen


@pytest.mark.parametrize("spec", list(SPECS))
def test_save_load_predict_round_trip(tmp_path: Path, spec: str) -> None:
    frame = make_frame(80, seed=3, missing=0.1)
    model = {"shared": [8], **SPECS[spec]}
    tasks = [
        pt.Task(name="price", kind="regression", head=[4]),
        pt.Task(name="species", kind="multiclass"),
        pt.Task(name="aux", kind="regression", role="auxiliary"),
    ]
    config = make_config(
        tmp_path / "unused.csv", tasks, epochs=2, model=model, data={"features": FEATURES}
    )
    run = pt.fit(config, frame=frame, out=tmp_path / "run")
    loaded = pt.load(tmp_path / "run")
    held_out = make_frame(30, seed=4)
    pd.testing.assert_frame_equal(loaded.predict(held_out), run.predict(held_out), check_exact=True)
    assert loaded.mixing == run.mixing
    plots = tmp_path / "run" / "plots"
    assert (plots / "mixing.png").is_file() == bool(run.mixing)
    if SPECS[spec].get("architecture") in ("mmoe", "cgc", "ple", "cross_stitch"):
        assert run.mixing


def test_compare_runs_every_architecture(tmp_path: Path) -> None:
    frame = make_frame(90, seed=5)
    tasks = [pt.Task(name="price", kind="regression"), pt.Task(name="sold", kind="binary")]
    for spec in SPECS.values():
        config = make_config(
            tmp_path / "unused.csv", tasks, epochs=2, model={"shared": [6], **spec},
            data={"test_fraction": 0.3},
        )  # fmt: skip
        result = pt.compare(config, seeds=2, frame=frame)
        assert len(result.scores["mtl"]["price"]) == len(result.scores["stl"]["sold"]) == 2


# ---- config ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            {"architecture": "mmoe", "options": {"n_expert": 2}},
            r"^model\.options\.n_expert: unknown option \(options of 'mmoe': n_experts\)",
        ),
        (
            {"architecture": "mmoe", "options": {"n_experts": 0}},
            r"^model\.options\.n_experts: .*greater than or equal to 1",
        ),
        (
            {"architecture": "ple", "options": {"levels": "two"}},
            r"^model\.options\.levels: .*integer.* \(options of 'ple': n_shared_experts, "
            r"n_task_experts, levels\)",
        ),
        (
            {"options": {"n_experts": 2}},
            r"^model\.options\.n_experts: unknown option \(options of 'hard_sharing': none\)",
        ),
        (
            {"architecture": "cross_stitch", "linear_path": True},
            r"^model: linear_path: only hard_sharing has a linear path, not 'cross_stitch'",
        ),
        ({"architecture": "mixture"}, r"^model\.architecture: 'mixture' is not an architecture"),
    ],
)
def test_model_options_are_checked_when_the_config_is_read(model, message) -> None:
    data = {
        "data": {"train": "data.csv"},
        "tasks": [{"name": "y", "kind": "regression", "head": [4]}],
        "model": model,
    }
    with pytest.raises(pt.ConfigError, match=message):
        pt.parse_config(data)


def test_architectures_without_a_trunk_refuse_one_and_need_layers() -> None:
    spec = pt.ModelConfig(architecture="mmoe", shared=[4])
    with pytest.raises(pt.ConfigError, match="a custom trunk replaces hard_sharing's"):
        pt.build_model(spec, n_numeric=3, cardinalities=[], out_dims=OUT_DIMS, trunk=nn.Identity())
    with pytest.raises(pt.ConfigError, match="model.shared: cross_stitch's columns need"):
        pt.build_model(
            pt.ModelConfig(architecture="cross_stitch", shared=[]),
            n_numeric=3,
            cardinalities=[],
            out_dims=OUT_DIMS,
        )


# ---- what each architecture is --------------------------------------------------------------
@pytest.mark.parametrize("hidden", [{"a": [], "b": [5], "c": []}, {"a": [3, 2], "b": [5], "c": []}])
@pytest.mark.parametrize("per_task_input", [False, True])
def test_heads_of_different_depths_are_one_mlp_per_task(hidden, per_task_input) -> None:
    torch.manual_seed(0)
    heads = Heads(7, hidden, OUT_DIMS, activation_name="tanh")
    h = torch.randn(9, 3, 7) if per_task_input else torch.randn(9, 7)
    outputs = heads.unpack(heads(h))
    for t, (name, width) in enumerate(OUT_DIMS.items()):
        params = heads.task_parameters(name)
        x = h[:, t] if per_task_input else h
        for i in range(0, len(params), 2):
            x = x @ params[i] + params[i + 1]
            if i < len(params) - 2:
                x = torch.tanh(x)
        torch.testing.assert_close(outputs[name], x[:, :width])


def test_runs_saved_with_ungrouped_heads_still_load() -> None:
    """Runs saved before heads were grouped name them ``heads.weights.i``."""
    spec = pt.ModelConfig(shared=[6], head=[3])
    torch.manual_seed(0)
    saved = pt.build_model(spec, n_numeric=3, cardinalities=[4], out_dims=OUT_DIMS)
    old = {k.replace("heads.groups.0.", "heads."): v for k, v in saved.state_dict().items()}
    assert "heads.weights.1" in old
    torch.manual_seed(1)
    fresh = pt.build_model(spec, n_numeric=3, cardinalities=[4], out_dims=OUT_DIMS)
    fresh.load_state_dict(old)
    x = _inputs(6, [4])
    torch.testing.assert_close(fresh(*x, packed=True), saved(*x, packed=True))


def test_the_linear_path_adds_a_linear_map_of_the_encoded_input() -> None:
    torch.manual_seed(0)
    model = _model("hard_sharing_wide", [4], head=[3])
    assert isinstance(model, HardSharing) and model.linear is not None
    with torch.no_grad():
        model.linear.normal_()
    x_num, x_cat = _inputs(8, [4])
    e = model.encoder(x_num, x_cat)
    deep = model.heads(model.trunk(e))
    wide = torch.einsum("nd,tdo->nto", e, model.linear)
    torch.testing.assert_close(model(x_num, x_cat, packed=True), deep + wide)


@pytest.mark.parametrize(("n", "experts", "seed"), [(5, 2, 0), (40, 4, 1), (200, 7, 2)])
def test_mmoe_gates_are_distributions_over_the_experts(n: int, experts: int, seed: int) -> None:
    torch.manual_seed(seed)
    spec = pt.ModelConfig(architecture="mmoe", options={"n_experts": experts}, shared=[4])
    model = pt.build_model(spec, n_numeric=3, cardinalities=[5], out_dims=OUT_DIMS)
    assert isinstance(model, MMoE)
    gates = model.gate_weights(*_inputs(n, [5], seed))
    assert gates.shape == (n, 3, experts) and bool((gates >= 0).all())
    torch.testing.assert_close(gates.sum(-1), torch.ones(n, 3))
    assert gates.std(0).max() > 0  # they depend on the row
    table = model.mixing(*_inputs(n, [5], seed))["gates"]
    torch.testing.assert_close(table.values.sum(1), torch.ones(3))


def _adam_steps(model: nn.Module, balancer: str, steps: int, options=None) -> None:
    tasks = [pt.Task(name=n, kind="regression") for n in OUT_DIMS]
    bal = make_balancer(balancer, tasks, options or {})
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(steps):
        x_num, x_cat = _inputs(16, [4], seed=10 + step)
        packed, z = model(x_num, x_cat, packed=True, features=True)
        opt.zero_grad()
        bal.backward(three_task_losses(packed, seed=step), model=model, features=z, outputs=packed)
        model.add_penalty_gradient()
        opt.step()


def test_one_expert_mmoe_is_hard_sharing_up_to_parametrization() -> None:
    """A softmax over one expert is 1: the expert is the trunk, the towers the heads. Copied
    across, both give the same outputs, and the same steps (UPGrad over the joint part)."""
    torch.manual_seed(0)
    spec = pt.ModelConfig(architecture="mmoe", options={"n_experts": 1}, shared=[6, 5], head=[4])
    mmoe = pt.build_model(spec, n_numeric=3, cardinalities=[4], out_dims=OUT_DIMS, heads=HEADS)
    hard = pt.build_model(
        pt.ModelConfig(shared=[6, 5], head=[4]),
        n_numeric=3,
        cardinalities=[4],
        out_dims=OUT_DIMS,
        heads=HEADS,
    )
    assert isinstance(mmoe, MMoE) and isinstance(hard, HardSharing)
    with torch.no_grad():
        hard.encoder.load_state_dict(mmoe.encoder.state_dict())
        hard.heads.load_state_dict(mmoe.towers.state_dict())
        linears = [m for m in hard.trunk if isinstance(m, nn.Linear)]
        for linear, w, b in zip(linears, mmoe.experts.weights, mmoe.experts.biases, strict=True):
            linear.weight.copy_(w[0].t())
            linear.bias.copy_(b[0])
    x = _inputs(12, [4], seed=3)
    torch.testing.assert_close(mmoe(*x, packed=True), hard(*x, packed=True))
    for model in (mmoe, hard):
        _adam_steps(model, "upgrad", steps=4)
    torch.testing.assert_close(mmoe(*x, packed=True), hard(*x, packed=True), rtol=1e-4, atol=1e-5)


def test_cross_stitch_at_identity_is_independent_columns() -> None:
    torch.manual_seed(0)
    spec = pt.ModelConfig(
        architecture="cross_stitch", options={"self_weight": 1.0}, shared=[6, 5], head=[4]
    )
    model = pt.build_model(spec, n_numeric=3, cardinalities=[4], out_dims=OUT_DIMS, heads=HEADS)
    x = _inputs(10, [4], seed=1)
    out = model(*x)
    e = model.encoder(*x)
    for t, name in enumerate(model.task_names):
        h = e
        for w, b in zip(model.columns.weights, model.columns.biases, strict=True):
            h = torch.relu(h @ w[t] + b[t])
        column = model.heads.unpack(model.heads(h.unsqueeze(1).expand(-1, 3, -1)))[name]
        torch.testing.assert_close(out[name], column)  # task t's head on column t alone
    with torch.no_grad():  # another task's column has no say in task 'a'
        for w in model.columns.weights:
            w[1:].normal_()
    torch.testing.assert_close(model(*x)["a"], out["a"])
    default = pt.build_model(
        pt.ModelConfig(architecture="cross_stitch", shared=[6]), n_numeric=3,
        cardinalities=[], out_dims=OUT_DIMS,
    )  # fmt: skip
    alpha = default.mixing_weights[0].detach()
    torch.testing.assert_close(alpha.sum(1), torch.ones(3))
    assert torch.allclose(alpha.diagonal(), torch.full((3,), 0.9))


def _train_steps(model: MultiTaskModel, steps: int = 4) -> None:
    """Adam steps with ``upgrad`` on the losses of ``_losses`` for the model's tasks: a model
    with fewer tasks sees the same targets for them, its outputs put in their slots."""
    names = list(model.out_dims)
    slots = [list(OUT_DIMS).index(n) for n in names]
    balancer = make_balancer("upgrad", [pt.Task(name=n, kind="regression") for n in names])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(steps):
        packed, z = model(*_inputs(16, [4], seed=10 + step), packed=True, features=True)
        full = torch.zeros(16, 3, 3)
        full[:, slots, : packed.shape[2]] = packed
        losses = {n: v for n, v in three_task_losses(full, seed=step).items() if n in names}
        optimizer.zero_grad()
        balancer.backward(losses, model=model, features=z)
        model.add_penalty_gradient()
        optimizer.step()


def test_soft_sharing_without_penalty_is_single_task_learning() -> None:
    """λ = 0: each network, trained jointly, ends where a single-task network started from the
    same weights and trained on its own loss with the same batches ends."""
    torch.manual_seed(0)
    spec = pt.ModelConfig(
        architecture="soft_sharing", options={"penalty": 0.0}, shared=[6, 5], head=[4]
    )
    soft = pt.build_model(spec, n_numeric=3, cardinalities=[4], out_dims=OUT_DIMS, heads=HEADS)
    singles = {}
    for t, name in enumerate(soft.task_names):
        single = pt.build_model(
            pt.ModelConfig(shared=[6, 5], head=HEADS.get(name, [4])),
            n_numeric=3,
            cardinalities=[4],
            out_dims={name: OUT_DIMS[name]},
        )
        with torch.no_grad():
            single.encoder.load_state_dict(soft.encoders[t].state_dict())
            linears = [m for m in single.trunk if isinstance(m, nn.Linear)]
            stacked = zip(linears, soft.networks.weights, soft.networks.biases, strict=True)
            for linear, w, b in stacked:
                linear.weight.copy_(w[t].t())
                linear.bias.copy_(b[t])
            mine = single.parameter_groups().tasks[name]
            for p, theirs in zip(mine, soft.heads.task_parameters(name), strict=True):
                p.copy_(theirs[..., : p.shape[-1]])  # soft's heads are padded to 2 outputs
        singles[name] = single
    for model in (soft, *singles.values()):
        _train_steps(model)
    x = _inputs(12, [4], seed=3)
    joint = soft(*x)
    for name, single in singles.items():
        torch.testing.assert_close(joint[name], single(*x)[name], rtol=1e-4, atol=1e-5)


def test_the_soft_sharing_penalty_is_its_gradient_and_pulls_the_networks_together() -> None:
    torch.manual_seed(0)
    spec = pt.ModelConfig(architecture="soft_sharing", options={"penalty": 0.3}, shared=[6])
    model = pt.build_model(spec, n_numeric=3, cardinalities=[4], out_dims=OUT_DIMS)
    params = list(model.parameters())
    expected = torch.autograd.grad(model.penalty_value(), params, allow_unused=True)
    model.add_penalty_gradient()
    for p, g in zip(params, expected, strict=True):
        if g is None:  # the heads are not pulled
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, g)

    frame = make_frame(120, seed=6)
    tasks = [pt.Task(name="price", kind="regression"), pt.Task(name="aux", kind="regression")]
    spread = {}
    for penalty in (0.0, 10.0):
        model_spec = {"architecture": "soft_sharing", "options": {"penalty": penalty}}
        config = make_config(
            Path("unused.csv"), tasks, epochs=3, model=model_spec, optimizer="sgd", momentum=0.0
        )  # plain SGD: each step shrinks W_t − W̄ by the factor 1 − 2λ·lr
        run = pt.fit(config, frame=frame)
        run.model.penalty = 1.0  # Σ_t ‖W_t − W̄‖² itself
        spread[penalty] = float(run.model.penalty_value())
    assert spread[10.0] < 0.1 * spread[0.0]
