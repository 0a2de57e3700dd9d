"""The z-level Jacobian of linear heads kept as factors (``jacobian.FactoredRows``): the Gramian
and the direction come from the factors, equal to what the formed J gives, and J is never formed
for the Gramian-only aggregators."""

from __future__ import annotations

import pytest
import torch

import polytask as pt
from polytask.balancing import jacobian, make_balancer
from polytask.balancing.jacobian import BlockRows, FactoredRows
from polytask.models import HardSharing
from polytask.models.layers import MLP, TabularInput


@pytest.mark.parametrize("outs", [1, 3])
def test_factored_rows_give_the_formed_jacobians_gramian_direction_and_rows(outs: int) -> None:
    g = torch.Generator().manual_seed(outs)
    grads = torch.randn(20, 6, outs, generator=g, dtype=torch.float64)
    grads[:, 2] = 0  # a task with no labelled row
    maps = torch.randn(6, 5, outs, generator=g, dtype=torch.float64)
    rows = FactoredRows(grads, maps)
    formed = torch.stack(
        [sum(torch.outer(grads[:, t, o], maps[t, :, o]) for o in range(outs)) for t in range(6)]
    ).flatten(1)
    torch.testing.assert_close(rows.dense().double(), formed, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rows.gramian().double(), formed @ formed.T, rtol=1e-4, atol=1e-4)
    w = torch.randn(6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(rows.combine(w), w @ formed)
    assert rows.nonzero().tolist() == [True, True, False, True, True, True]
    pick = torch.tensor([0, 4])
    torch.testing.assert_close(rows.select(pick).dense().double(), formed[pick].float().double())


def test_block_rows_give_the_concatenated_jacobians_gramian_direction_and_rows() -> None:
    g = torch.Generator().manual_seed(2)
    blocks = [torch.randn(5, n, generator=g) for n in (12, 3, 7)]
    rows = BlockRows(blocks)
    formed = torch.cat(blocks, dim=1)
    assert len(rows) == 5
    torch.testing.assert_close(rows.dense(), formed)
    torch.testing.assert_close(rows.gramian(), formed @ formed.T)
    w = torch.randn(5, generator=g)
    torch.testing.assert_close(rows.combine(w), w @ formed)
    pick = torch.tensor([1, 3])
    torch.testing.assert_close(rows.select(pick).dense(), formed[pick])
    v = torch.randn(22, generator=g)
    torch.testing.assert_close(rows.times(v), formed @ v)


def test_graddrop_on_blocks_is_graddrop_on_the_concatenated_jacobian() -> None:
    """The column sums per block and one draw for all: the same direction, draw for draw."""
    from polytask.balancing.aggregation import _GradDrop

    g = torch.Generator().manual_seed(3)
    blocks = [torch.randn(4, n, generator=g) for n in (30, 5, 17)]
    torch.manual_seed(7)
    on_blocks = _GradDrop()(BlockRows(blocks))
    torch.manual_seed(7)
    on_matrix = _GradDrop()(torch.cat(blocks, dim=1))
    torch.testing.assert_close(on_blocks, on_matrix, rtol=0, atol=0)


def _step(
    names: list[str], balancer: str, options: dict, *, categorical: bool = False
) -> tuple[dict[str, float], list[torch.Tensor]]:
    """One balancer step on a hard-sharing model with linear heads; weights and gradients."""
    torch.manual_seed(0)
    cards = [4] if categorical else []
    model = HardSharing(
        encoder=TabularInput(5, cards, 3 if categorical else None),
        trunk=MLP(5 + 3 * len(cards), [7]),
        out_dims={n: 1 for n in names},
        linear_path=categorical,
    )
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 5, generator=g)
    x_cat = torch.randint(0, 4, (32, 1), generator=g) if categorical else None
    y = torch.randn(32, len(names), generator=g)
    packed, z = model(x, x_cat, packed=True, features=True)
    losses = {n: (packed[:, i, 0] - y[:, i]).pow(2).mean() for i, n in enumerate(names)}
    tasks = [pt.Task(name=n, kind="regression") for n in names]
    weights = make_balancer(balancer, tasks, options).backward(
        losses, model=model, features=z, outputs=packed
    )
    return weights, [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize(
    ("balancer", "options"),
    [
        ("upgrad", {"level": "representation"}),
        ("mgda", {"level": "representation"}),
        ("nash_mtl", {"level": "representation"}),
        ("cagrad", {"level": "representation"}),
        ("upgrad", {"level": "representation", "every": 2, "subset": 4}),
        ("upgrad", {"level": "parameters", "subset": 4}),
    ],
)
@pytest.mark.parametrize("categorical", [False, True])
def test_the_factored_step_equals_the_formed_one_and_never_forms_j(
    balancer: str, options: dict, categorical: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [f"t{i}" for i in range(12)]
    with monkeypatch.context() as patch:  # the formed J, as before factoring
        patch.setattr(jacobian, "_factoring_pays", lambda grads, maps: False)
        formed_weights, formed_grads = _step(names, balancer, options, categorical=categorical)
    used: dict[str, list[int]] = {"gramian": [], "dense": []}
    gramian, dense = FactoredRows.gramian, FactoredRows.dense

    def counted_gramian(self: FactoredRows) -> torch.Tensor:
        used["gramian"].append(len(self))
        return gramian(self)

    def counted_dense(self: FactoredRows) -> torch.Tensor:
        used["dense"].append(len(self))
        return dense(self)

    monkeypatch.setattr(FactoredRows, "gramian", counted_gramian)
    monkeypatch.setattr(FactoredRows, "dense", counted_dense)
    weights, grads = _step(names, balancer, options, categorical=categorical)
    if options["level"] == "representation":  # G from the factors, J never formed
        assert used["gramian"] == [options.get("subset", 12)] and used["dense"] == []
    else:  # the parameter level forms the z-rows of the drawn subset only
        assert used["dense"] == [4]
    assert weights.keys() == formed_weights.keys()
    for n in weights:
        assert weights[n] == pytest.approx(formed_weights[n], rel=1e-3, abs=1e-6)
    for a, b in zip(grads, formed_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)


def test_rows_are_factored_only_at_the_representation_level_and_when_it_pays() -> None:
    names = [f"t{i}" for i in range(6)]
    model = HardSharing(
        encoder=TabularInput(4, [], None), trunk=MLP(4, [8]), out_dims={n: 1 for n in names}
    )
    packed, h = model(torch.randn(16, 4), packed=True, features=True)
    losses = torch.stack([packed[:, i, 0].pow(2).mean() for i in range(6)])
    common = dict(
        outputs=packed, slots=list(range(6)), output_map=model.output_map, task_params=[]
    )
    at_z = jacobian.task_jacobian(losses, h, joint_params=None, **common)
    assert isinstance(at_z.matrix, FactoredRows)
    _, joint = model.split_parameters()
    at_params = jacobian.task_jacobian(losses, h, joint_params=joint, **common)
    assert isinstance(at_params.matrix, BlockRows)
    # the blocks are each task's gradient on each joint parameter
    for t in range(6):
        expected = torch.autograd.grad(losses[t], joint, retain_graph=True)
        for block, grad in zip(at_params.matrix.blocks, expected, strict=True):
            torch.testing.assert_close(block[t], grad.flatten())
    # many outputs per task and a narrow z: forming J is cheaper
    assert not jacobian._factoring_pays(torch.zeros(4, 50, 20), torch.zeros(50, 2, 20))


def test_pcgrad_on_drawn_subsets_does_not_repeat_its_order_every_step() -> None:
    """A fresh solver per drawn subset continues the balancer's draws: the same subset, drawn
    again, is projected in other orders (from ``seed`` each time it would repeat one)."""
    names = [f"t{i}" for i in range(4)]
    torch.manual_seed(0)
    model = HardSharing(
        encoder=TabularInput(5, [], None), trunk=MLP(5, [3]), out_dims={n: 1 for n in names}
    )
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(2))
    a, b = torch.randn(2, 16, 1, generator=torch.Generator().manual_seed(3)) * 5
    y = torch.cat([a, -a, a + b, b - a], dim=1)  # conflicting tasks: the order matters
    tasks = [pt.Task(name=n, kind="regression") for n in names]
    balancer = make_balancer("pcgrad", tasks, {"level": "representation", "subset": 3})
    seen: dict[tuple[str, ...], set[tuple[float, ...]]] = {}
    for _ in range(40):
        packed, h = model(x, packed=True, features=True)
        losses = {n: (packed[:, i, 0] - y[:, i]).pow(2).mean() for i, n in enumerate(names)}
        weights = balancer.backward(losses, model=model, features=h, outputs=packed)
        drawn = tuple(n for n in names if weights[n] != 0)
        seen.setdefault(drawn, set()).add(tuple(round(weights[n], 6) for n in drawn))
        model.zero_grad()
    assert max(len(v) for v in seen.values()) > 1
