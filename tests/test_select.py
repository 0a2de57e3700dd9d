"""Per-task selection (``train.select: per_task``) and fine-tuning (``train.finetune``): which
weights predict each task, how they are stored, and that they survive save → load."""

from __future__ import annotations

import copy
import dataclasses
import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from synthetic import (
    ALL_TASKS,
    FEATURES,
    make_config,
    make_frame,
    make_splits,
    needs_torchrun,
    run_on_two_ranks,
)

import polytask as pt
from polytask.baselines import stl_config
from polytask.data import TaskData
from polytask.evaluate import HIGHER_IS_BETTER
from polytask.models import build_model
from polytask.train import finetune_tasks, prepare, primary_scorer

MAIN = [t for t in ALL_TASKS if t.is_main]


def _splits(seed: int = 3) -> pt.Splits:
    return make_splits(make_frame(n=200, seed=seed, missing=0.1), validation=50)


def _best_epochs(history: pd.DataFrame) -> dict[str, int]:
    """Each main task's best epoch by its validation metric (the first one on ties)."""
    best = {}
    for task in MAIN:
        column = history[f"val_metric/{task.name}"]
        row = column.idxmax() if HIGHER_IS_BETTER[task.primary_metric] else column.idxmin()
        best[task.name] = int(history.loc[row, "epoch"])
    return best


def _with_weights(run: pt.Run, task: str) -> torch.nn.Module:
    """A copy of the run's model holding the weights that predict ``task``."""
    model = copy.deepcopy(run.model)
    label = run.task_snapshot.get(task)
    if label is not None:
        model.load_state_dict({**run.model.state_dict(), **run.snapshots[label]})
    return model


def _columns(frame: pd.DataFrame, task: str) -> pd.DataFrame:
    return frame[[c for c in frame.columns if c == task or c.startswith(f"{task}:")]]


# ---- per-task selection --------------------------------------------------------------------
def test_each_snapshot_is_the_weights_of_its_tasks_best_validation_epoch() -> None:
    config = make_config("unused.csv", epochs=8, select="per_task")
    preprocessor, encoded = prepare(config, _splits(), ALL_TASKS)
    torch.manual_seed(0)
    model = build_model(
        config.model,
        n_numeric=preprocessor.n_numeric,
        cardinalities=preprocessor.cardinalities,
        out_dims=preprocessor.output_dims(),
    )
    seen: dict[int, dict[str, torch.Tensor]] = {}

    def record(row: dict[str, float]) -> None:
        seen[int(row["epoch"])] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    trainer = pt.Trainer(model, ALL_TASKS, config.train, callback=record)
    scorer = primary_scorer(config, preprocessor)
    history = trainer.fit(encoded["train"], encoded["validation"], scorer=scorer)

    frame = history.to_frame()
    best = _best_epochs(frame)
    assert history.task_epochs == best
    assert len(set(best.values())) > 1  # the tasks disagree: the case worth testing
    assert set(history.snapshots) == set(best.values())  # one state per distinct epoch
    for name, epoch in best.items():
        snapshot = history.snapshots[epoch]
        assert all(torch.equal(snapshot[k], seen[epoch][k]) for k in seen[epoch]), name
        row = frame.index[frame["epoch"] == epoch][0]
        assert history.task_scores[name] == frame.loc[row, f"val_metric/{name}"]
        # the recorded score is the one those weights get
        model.load_state_dict(snapshot)
        assert scorer(model, encoded["validation"])[name] == history.task_scores[name]


def test_a_per_task_run_predicts_each_task_as_a_run_stopped_at_its_best_epoch(
    tmp_path: Path,
) -> None:
    splits = _splits()
    config = make_config("unused.csv", epochs=7, select="per_task")
    run = pt.fit(config, splits=splits, out=tmp_path / "run")
    best = _best_epochs(run.history)
    joint_best = run.metrics["best_epoch"]
    assert {n: e["epoch"] for n, e in run.metrics["per_task_selection"].items()} == best
    # stored once per epoch that is not the joint model's own
    assert sorted(run.snapshots) == sorted(
        {f"epoch {e}" for e in best.values()} - {f"epoch {joint_best}"}
    )
    assert {n: int(label.split()[1]) for n, label in run.task_snapshot.items()} == {
        n: e for n, e in best.items() if e != joint_best
    }
    assert run.task_snapshot  # some task is predicted from its own epoch

    frame = make_frame(n=40, seed=11)
    predicted = run.predict(frame)
    no_validation = pt.Splits(splits.train, splits.train.iloc[:0], splits.test)
    for epoch in sorted(set(best.values())):
        # trained for exactly `epoch` epochs, without validation: the weights of that epoch
        stopped = pt.fit(make_config("unused.csv", epochs=epoch), splits=no_validation).predict(
            frame
        )
        for name in [n for n, e in best.items() if e == epoch]:
            pd.testing.assert_frame_equal(
                _columns(predicted, name), _columns(stopped, name), check_exact=True
            )


def test_per_task_with_one_task_whose_metric_is_its_loss_equals_joint_selection() -> None:
    # mse on the decoded target is the training loss times a constant (target scaling), so
    # the epoch with the best metric is the epoch with the best loss
    task = pt.Task(name="price", kind="regression", metrics=["mse"])
    splits = make_splits(make_frame(n=160, seed=6), validation=50)
    runs = {
        select: pt.fit(
            make_config("unused.csv", [task], epochs=12, lr=0.1, select=select), splits=splits
        )
        for select in ("joint", "per_task")
    }
    best = runs["joint"].metrics["best_epoch"]
    assert best < 12  # validation got worse after it: a real choice
    assert runs["per_task"].metrics["per_task_selection"]["price"]["epoch"] == best
    assert runs["per_task"].task_snapshot == {} and runs["per_task"].snapshots == {}
    frame = make_frame(n=30, seed=12)
    pd.testing.assert_frame_equal(
        runs["per_task"].predict(frame), runs["joint"].predict(frame), check_exact=True
    )


@pytest.mark.parametrize("options", [{"select": "per_task"}, {"finetune": {"epochs": 3}}])
def test_save_load_predicts_identically_from_the_snapshots(tmp_path: Path, options: dict) -> None:
    splits = _splits(seed=4)
    config = make_config("unused.csv", epochs=6, **options)
    run = pt.fit(config, splits=splits, out=tmp_path / "run")
    assert run.task_snapshot
    loaded = pt.load(tmp_path / "run")
    assert loaded.task_snapshot == run.task_snapshot
    frame = make_frame(n=40, seed=13)
    pd.testing.assert_frame_equal(loaded.predict(frame), run.predict(frame), check_exact=True)
    test = loaded.evaluate(splits.test)
    for name in (t.name for t in MAIN):  # metrics.json's test scores come from the snapshots
        assert test[name] == pytest.approx(run.metrics["test"][name], nan_ok=True)

    # stored economically: only the tensors that differ from model.safetensors, as safetensors
    stored = load_file(tmp_path / "run" / "snapshots.safetensors")
    meta = json.loads((tmp_path / "run" / "snapshots.json").read_text())
    assert meta["tasks"] == run.task_snapshot
    assert sorted(meta["snapshots"]) == sorted(set(run.task_snapshot.values()))
    joint = load_file(tmp_path / "run" / "model.safetensors")
    for key, value in stored.items():
        assert not torch.equal(value, joint[key.partition("/")[2]])

    # a joint run written over it leaves no snapshot behind
    plain = make_config("unused.csv", epochs=2)
    pt.fit(plain, splits=splits, out=tmp_path / "run", overwrite=True)
    assert not (tmp_path / "run" / "snapshots.json").exists()
    assert pt.load(tmp_path / "run").task_snapshot == {}


def test_snapshots_that_do_not_fit_the_model_are_named(tmp_path: Path) -> None:
    run = pt.fit(make_config("unused.csv", epochs=5, select="per_task"), splits=_splits())
    label = next(iter(run.snapshots))
    key = next(iter(run.snapshots[label]))
    run.snapshots[label][key] = torch.zeros(3, 3, 3)
    run.save(tmp_path / "run")
    with pytest.raises(pt.RunError, match=r"snapshots.safetensors.* do not fit the model"):
        pt.load(tmp_path / "run")


# ---- fine-tuning -----------------------------------------------------------------------------
@pytest.mark.parametrize("finetune", [{"epochs": 3, "lr": 0.0}, {"epochs": 0}])
def test_finetuning_that_cannot_move_reproduces_the_joint_model(finetune: dict) -> None:
    splits = _splits(seed=6)
    frame = make_frame(n=40, seed=14)
    joint = pt.fit(make_config("unused.csv", epochs=4), splits=splits)
    tuned = pt.fit(make_config("unused.csv", epochs=4, finetune=finetune), splits=splits)
    assert tuned.task_snapshot == {}  # nothing differs from the joint weights: nothing stored
    assert all(r["best_epoch"] == 0 for r in tuned.metrics["finetune"].values())
    pd.testing.assert_frame_equal(tuned.predict(frame), joint.predict(frame), check_exact=True)


def _conflicting(n: int, seed: int) -> pd.DataFrame:
    """Two regression targets on different inputs, to be squeezed through one shared unit."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    frame = pd.DataFrame(x, columns=["x0", "x1", "x2"])
    frame["a"] = x[:, 0] + 0.1 * rng.normal(size=n)
    frame["b"] = x[:, 1] + 0.1 * rng.normal(size=n)
    return frame


def test_finetuning_never_worsens_a_tasks_validation_loss_and_helps_conflicting_tasks() -> None:
    tasks = [pt.Task(name="a", kind="regression"), pt.Task(name="b", kind="regression")]
    splits = make_splits(_conflicting(300, 0), validation=60, test=40)
    config = make_config(
        "unused.csv",
        tasks,
        model={"shared": [1]},
        epochs=15,
        lr=0.02,
        finetune={"epochs": 15, "patience": 5},
    )
    run = pt.fit(config, splits=splits)
    validation = TaskData.from_frame(splits.validation, run.preprocessor)

    def loss(model: torch.nn.Module, name: str) -> float:
        return pt.Trainer(model, tasks, config.train).validation_losses(validation)[name]

    for name in ("a", "b"):
        before, after = loss(copy.deepcopy(run.model), name), loss(_with_weights(run, name), name)
        assert after <= before
        assert after < 0.9 * before, (name, before, after)  # one unit cannot serve both


def test_a_task_is_finetuned_on_its_own_loss_only() -> None:
    tasks = [pt.Task(name="a", kind="regression"), pt.Task(name="b", kind="regression")]
    splits = make_splits(_conflicting(120, 1), validation=30, test=10)
    config = make_config("unused.csv", tasks, epochs=1, finetune={"epochs": 3})
    preprocessor, encoded = prepare(config, splits, tasks)
    scrambled = splits.train.assign(b=np.random.default_rng(2).normal(size=len(splits.train)))
    states = []
    for train in (encoded["train"], TaskData.from_frame(scrambled, preprocessor)):
        torch.manual_seed(0)
        model = build_model(
            config.model,
            n_numeric=preprocessor.n_numeric,
            cardinalities=preprocessor.cardinalities,
            out_dims=preprocessor.output_dims(),
        )
        trainer = pt.Trainer(model, tasks, config.train)
        states.append(finetune_tasks(trainer, {}, train, encoded["validation"])[0])
    same, other = states
    assert all(torch.equal(v, other["a"][k]) for k, v in same["a"].items())  # b's labels unused
    assert not all(torch.equal(v, other["b"][k]) for k, v in same["b"].items())


# ---- config, baselines and compare ----------------------------------------------------------
def test_select_and_finetune_are_validated_with_their_field_names() -> None:
    data = {"train": "t.csv"}
    tasks = [{"name": "y", "kind": "regression"}]
    with pytest.raises(pt.ConfigError, match=r"train\.select.*data\.validation_fraction"):
        pt.parse_config(
            {
                "data": {**data, "validation_fraction": 0},
                "tasks": tasks,
                "train": {"select": "per_task"},
            }
        )
    with pytest.raises(pt.ConfigError, match=r"train\.select: 'best'"):
        pt.parse_config({"data": data, "tasks": tasks, "train": {"select": "best"}})
    with pytest.raises(pt.ConfigError, match=r"train\.finetune\.lr"):
        pt.parse_config({"data": data, "tasks": tasks, "train": {"finetune": {"lr": -1}}})
    with pytest.raises(pt.ConfigError, match=r"train\.finetune.*unknown key 'epoch'"):
        pt.parse_config({"data": data, "tasks": tasks, "train": {"finetune": {"epoch": 3}}})
    config = pt.parse_config(
        {"data": data, "tasks": tasks, "train": {"select": "per_task", "finetune": {}}}
    )
    assert config.train.finetune is not None and config.train.finetune.epochs == 20
    # splits given from Python without a validation table: the same error, before training
    splits = make_splits(make_frame(n=80, seed=1), validation=0)
    with pytest.raises(pt.ConfigError, match=r"train\.select.*data\.validation_fraction"):
        pt.fit(make_config("unused.csv", epochs=1, select="per_task"), splits=splits)


def test_compare_scores_mtl_from_its_snapshots_and_keeps_the_stl_baseline() -> None:
    tasks = [pt.Task(name="price", kind="regression"), pt.Task(name="sold", kind="binary")]
    splits = _splits(seed=7)
    config = make_config(
        "unused.csv",
        tasks,
        data={"features": FEATURES},
        epochs=4,
        select="per_task",
        finetune={"epochs": 2},
    )
    single = stl_config(config, tasks[0], ["x0"]).train
    assert single.select == "joint" and single.finetune is None

    result = pt.compare(config, seeds=[0], splits=splits)
    run = pt.fit(config, splits=splits)
    assert run.task_snapshot
    for task in tasks:
        assert result.scores["mtl"][task.name][0] == run.metrics["test"][task.name]
    test = TaskData.from_frame(splits.test, run.preprocessor)
    joint_only = dataclasses.replace(run, task_snapshot={}).score(test)
    for name in run.task_snapshot:  # the joint weights alone score otherwise
        assert joint_only[name] != run.metrics["test"][name]


# ---- under torchrun --------------------------------------------------------------------------
DDP_SCRIPT = textwrap.dedent(
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
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3))
    frame = pd.DataFrame(x, columns=["a", "b", "c"])
    frame["y"] = x[:, 0] - 2 * x[:, 1] + 0.3 * rng.normal(size=120)
    frame["z"] = (x[:, 2] + 0.5 * rng.normal(size=120) > 0).astype(int)
    splits = pt.Splits(frame.iloc[:80], frame.iloc[80:], frame.iloc[:0])
    config = pt.Config(
        data=pt.DataConfig(train="unused.csv"),
        tasks=[pt.Task(name="y", kind="regression"), pt.Task(name="z", kind="binary")],
        model=pt.ModelConfig(shared=[8]),
        train=pt.TrainConfig(
            epochs=5, batch_size=8, lr=0.05, device="cpu", patience=None, select="per_task",
            finetune={"epochs": 2},
        ),
    )
    run = pt.fit(config, splits=splits, out=out / "run")
    tensors = {f"{label}/{k}": v for label, s in run.snapshots.items() for k, v in s.items()}
    save_file(tensors, str(out / f"rank{rank}.safetensors"))
    run.predict(frame).to_csv(out / f"rank{rank}.csv", index=False)

    # the epochs are rank 0's choice on every rank: a scorer that would disagree on rank 1
    pre = run.preprocessor
    data = pt.TaskData.from_frame(splits.train, pre)
    model = pt.build_model(
        config.model, n_numeric=pre.n_numeric, cardinalities=pre.cardinalities,
        out_dims=pre.output_dims(),
    )
    calls = []

    def scorer(model, validation):
        calls.append(rank)
        return {"y": [3.0, 1.0, 2.0][len(calls) - 1] if rank == 0 else -len(calls), "z": 0.5}

    settings = config.train.model_copy(update={"epochs": 3, "finetune": None})
    history = pt.Trainer(model, config.tasks, settings).fit(data, data, scorer=scorer)
    (out / f"rank{rank}.json").write_text(json.dumps({"epochs": history.task_epochs}))
    leave_together()
    """
)


@needs_torchrun
def test_two_ranks_select_and_finetune_alike(tmp_path: Path) -> None:
    run_on_two_ranks(DDP_SCRIPT, tmp_path)
    rank0, rank1 = (load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    assert rank0.keys() == rank1.keys() and rank0
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "rank0.csv"), pd.read_csv(tmp_path / "rank1.csv"), check_exact=True
    )
    run = pt.load(tmp_path / "run")
    assert run.task_snapshot == {"y": "finetuned y", "z": "finetuned z"}
    choices = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert choices[0] == choices[1] == {"epochs": {"y": 2, "z": 1}}
