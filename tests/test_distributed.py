"""Data-parallel training under ``torchrun``: ranks stay in lockstep and in sync, and two ranks
with batch B train the network that one process trains with batch 2B."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from synthetic import needs_torchrun, run_on_two_ranks

import polytask as pt

SCRIPT = textwrap.dedent(
    """
    import sys
    from datetime import timedelta
    from pathlib import Path

    import numpy as np
    import pandas as pd
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file

    import polytask as pt

    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()


    def table(n, seed):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(n, 3))
        frame = pd.DataFrame(x, columns=["a", "b", "c"])
        frame["y"] = x[:, 0] - 2 * x[:, 1] + 0.1 * rng.normal(size=n)
        frame["z"] = (x[:, 2] > 0).astype(int)
        return frame


    def config(batch_size, architecture="hard_sharing", balancer="fixed"):
        return pt.Config(
            data=pt.DataConfig(train="unused.csv"),
            tasks=[pt.Task(name="y", kind="regression"), pt.Task(name="z", kind="binary")],
            model=pt.ModelConfig(architecture=architecture, shared=[8]),
            train=pt.TrainConfig(
                epochs=3, batch_size=batch_size, lr=0.01, device="cpu", patience=None,
                balancer=balancer,
            ),
        )


    def save(run, name):
        state = {k: v.contiguous() for k, v in run.model.state_dict().items()}
        save_file(state, str(out / f"rank{rank}_{name}.safetensors"))


    # 65 = 2 * 2 * 16 + 1 training rows: shards of 33 and 32 rows would take 3 and 2 steps of 16
    # if the ranks did not agree on one length.
    odd = table(85, 0)
    splits = pt.Splits(odd.iloc[:65], odd.iloc[65:], odd.iloc[:0])
    save(pt.fit(config(16), splits=splits, out=out / "run"), "odd")
    # An even number of rows, no validation: compared with one process in the test.
    even = table(96, 1)
    save(pt.fit(config(8), splits=pt.Splits(even, even.iloc[:0], even.iloc[:0])), "even")
    # another architecture: mixture gates under DDP's hooks, and under a balancer that writes
    # .grad itself (averaged by the trainer)
    no_rest = pt.Splits(even, even.iloc[:0], even.iloc[:0])
    save(pt.fit(config(8, "mmoe"), splits=no_rest), "even_mmoe")
    save(pt.fit(config(8, "cross_stitch", "upgrad"), splits=no_rest), "stitch_upgrad")
    leave_together()
    """
)


@needs_torchrun
def test_torchrun_trains_one_model_on_two_ranks(tmp_path: Path) -> None:
    run_on_two_ranks(SCRIPT, tmp_path)

    for name in ("odd", "even", "even_mmoe", "stitch_upgrad"):
        rank0 = load_file(tmp_path / f"rank0_{name}.safetensors")
        rank1 = load_file(tmp_path / f"rank1_{name}.safetensors")
        assert rank0.keys() == rank1.keys()
        for key in rank0:
            assert torch.equal(rank0[key], rank1[key]), (name, key)

    run = pt.load(tmp_path / "run")
    assert run.history is not None and run.history["epoch"].tolist() == [1, 2, 3]
    assert run.history["val_objective"].notna().all()

    # One process with batch 16 sees, step by step, the union of the two ranks' batches of 8.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(96, 3))
    even = pd.DataFrame(x, columns=["a", "b", "c"])
    even["y"] = x[:, 0] - 2 * x[:, 1] + 0.1 * rng.normal(size=96)
    even["z"] = (x[:, 2] > 0).astype(int)
    for name, architecture in (("even", "hard_sharing"), ("even_mmoe", "mmoe")):
        config = pt.Config(
            data=pt.DataConfig(train="unused.csv"),
            tasks=[pt.Task(name="y", kind="regression"), pt.Task(name="z", kind="binary")],
            model=pt.ModelConfig(architecture=architecture, shared=[8]),
            train=pt.TrainConfig(epochs=3, batch_size=16, lr=0.01, device="cpu", patience=None),
        )
        single = pt.fit(config, splits=pt.Splits(even, even.iloc[:0], even.iloc[:0]))
        distributed = load_file(tmp_path / f"rank0_{name}.safetensors")
        for key, value in single.model.state_dict().items():
            torch.testing.assert_close(distributed[key], value, rtol=1e-4, atol=1e-5)


# ---- balancers, missing labels and collective decisions under DDP ---------------------------
BALANCER_SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    from datetime import timedelta
    from pathlib import Path

    import numpy as np
    import pandas as pd
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file

    import polytask as pt

    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    TASKS = [pt.Task(name="y", kind="regression"), pt.Task(name="z", kind="binary")]
    BALANCERS = sys.argv[2].split(",")
    N = 64


    def table(n, seed, *, missing=0.0):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(n, 3))
        frame = pd.DataFrame(x, columns=["a", "b", "c"])
        frame["y"] = x[:, 0] - 2 * x[:, 1] + 0.1 * rng.normal(size=n)
        frame["z"] = (x[:, 2] > 0).astype(float)
        for column in ("y", "z"):
            frame.loc[rng.random(n) < missing, column] = np.nan
        return frame


    pre = pt.Preprocessor.fit(table(N, 0), TASKS)


    def trainer(balancer, **options):
        torch.manual_seed(0)
        model = pt.build_model(
            pt.ModelConfig(shared=[8]),
            n_numeric=pre.n_numeric,
            cardinalities=pre.cardinalities,
            out_dims=pre.output_dims(),
        )
        config = {"epochs": 3, "batch_size": 8, "lr": 0.05, "device": "cpu", "patience": None}
        config.update(options)
        return pt.Trainer(model, TASKS, pt.TrainConfig(balancer=balancer, **config))


    def grads(t):
        return {n: p.grad.clone() for n, p in t.model.named_parameters()}


    # The rows the first epoch's shuffle deals to rank 1 (every rank draws the same order from
    # the seed and keeps order[rank::2]): y is labelled on one of them and on all of rank 0's.
    order = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    uneven = table(N, 1)
    uneven.loc[order[1::2][1:].numpy(), "y"] = np.nan
    uneven_data = pt.TaskData.from_frame(uneven, pre)

    # one process, one step on the union batch: the gradient two ranks must reproduce
    rank = int(__import__("os").environ["RANK"])
    if rank == 0:
        for balancer in ("fixed", "famo"):
            single = trainer(balancer, epochs=1, batch_size=N)
            single.fit(uneven_data)
            save_file(grads(single), str(out / f"single_{balancer}.safetensors"))

    dist.init_process_group("gloo", timeout=timedelta(seconds=30))
    assert dist.get_rank() == rank
    for balancer in ("fixed", "famo"):
        step = trainer(balancer, epochs=1, batch_size=N // 2)
        step.fit(uneven_data)
        save_file(grads(step), str(out / f"rank{rank}_step_{balancer}.safetensors"))

    # stateful balancers (and one with parameters, one writing .grad itself): each rank's
    # batches have other rows and other labelled counts
    ragged = pt.TaskData.from_frame(table(N, 2, missing=0.4), pre)
    for balancer in BALANCERS:
        fitted = trainer(balancer)
        fitted.fit(ragged)
        state = {f"balancer.{k}": v for k, v in fitted.balancer.state_dict().items()}
        state.update({f"model.{k}": v for k, v in fitted.model.state_dict().items()})
        state = {k: v.contiguous() for k, v in state.items()}
        save_file(state, str(out / f"rank{rank}_state_{balancer}.safetensors"))

    decisions = {}
    # each rank validates on its own table; rank 1's labels are flipped, so its loss climbs
    validation = table(32, 3)
    if rank == 1:
        validation["y"], validation["z"] = -5 * validation["y"], 1 - validation["z"]
    stopping = trainer("fixed", epochs=40, patience=2)
    history = stopping.fit(ragged, pt.TaskData.from_frame(validation, pre))
    decisions["epochs"] = len(history.records)
    decisions["stopped_early"] = history.stopped_early
    # rank 1's targets overflow float32: every rank must see the divergence in the same epoch
    exploding = table(N, 4)
    if rank == 1:
        exploding["y"] = 1e30
    diverging = trainer("fixed", epochs=3, batch_size=N // 2)
    try:
        diverging.fit(pt.TaskData.from_frame(exploding, pre))
        decisions["diverged"] = False
    except pt.RunError as exc:
        decisions["diverged"] = "training diverged" in str(exc)
    (out / f"rank{rank}_decisions.json").write_text(json.dumps(decisions))
    leave_together()
    """
)


@needs_torchrun
def test_two_ranks_share_balancer_state_masked_means_and_decisions(tmp_path: Path) -> None:
    balancers = ("gradnorm", "dwa", "famo", "uncertainty", "pcgrad")
    run_on_two_ranks(BALANCER_SCRIPT, tmp_path, ",".join(balancers))

    # uneven labels: the ranks' step is the step of the global masked mean on the union batch
    for balancer in ("fixed", "famo"):
        single = load_file(tmp_path / f"single_{balancer}.safetensors")
        for rank in (0, 1):
            step = load_file(tmp_path / f"rank{rank}_step_{balancer}.safetensors")
            for key, value in single.items():
                torch.testing.assert_close(step[key], value, msg=f"{balancer} {rank} {key}")

    for balancer in balancers:  # the balancers' state and the model, identical on both ranks
        rank0 = load_file(tmp_path / f"rank0_state_{balancer}.safetensors")
        rank1 = load_file(tmp_path / f"rank1_state_{balancer}.safetensors")
        assert rank0.keys() == rank1.keys()
        for key in rank0:
            torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0, equal_nan=True)

    decisions = [json.loads((tmp_path / f"rank{r}_decisions.json").read_text()) for r in (0, 1)]
    assert decisions[0] == decisions[1]
    assert decisions[0]["stopped_early"] and decisions[0]["epochs"] < 40
    assert decisions[0]["diverged"]
