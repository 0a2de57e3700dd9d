"""Data-parallel training under ``torchrun``: ranks stay in lockstep and in sync, and two ranks
with batch B train the network that one process trains with batch 2B."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import polytask as pt

TORCHRUN = Path(sys.executable).parent / "torchrun"

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


    def config(batch_size):
        return pt.Config(
            data=pt.DataConfig(train="unused.csv"),
            tasks=[pt.Task(name="y", kind="regression"), pt.Task(name="z", kind="binary")],
            model=pt.ModelConfig(shared=[8]),
            train=pt.TrainConfig(
                epochs=3, batch_size=batch_size, lr=0.01, device="cpu", patience=None
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
    # both ranks leave together: a rank tearing down its Gloo sockets while the other still
    # reads the last collective's result aborts that one
    dist.barrier()
    dist.destroy_process_group()
    """
)


@pytest.mark.skipif(
    not (torch.distributed.is_available() and TORCHRUN.is_file()), reason="needs torchrun"
)
def test_torchrun_trains_one_model_on_two_ranks(tmp_path: Path) -> None:
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    result = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    for name in ("odd", "even"):
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
    config = pt.Config(
        data=pt.DataConfig(train="unused.csv"),
        tasks=[pt.Task(name="y", kind="regression"), pt.Task(name="z", kind="binary")],
        model=pt.ModelConfig(shared=[8]),
        train=pt.TrainConfig(epochs=3, batch_size=16, lr=0.01, device="cpu", patience=None),
    )
    single = pt.fit(config, splits=pt.Splits(even, even.iloc[:0], even.iloc[:0]))
    distributed = load_file(tmp_path / "rank0_even.safetensors")
    for key, value in single.model.state_dict().items():
        torch.testing.assert_close(distributed[key], value, rtol=1e-4, atol=1e-5)
