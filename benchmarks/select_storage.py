"""What `train.select: per_task` and `train.finetune` cost on Yeast: snapshot storage and the
per-epoch scoring time (the numbers in docs/guide.md, "Storage" and "Cost").

Yeast (14 binary tasks), shared [64, 64], epochs 60, patience 10, the demo's other settings;
one CPU thread. Scoring: each main task's primary metric on the validation split
(``primary_scorer``) against one training epoch (``Trainer._train_epoch``), best of 30.

    python benchmarks/select_storage.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

import polytask as pt
from polytask.demo import demo_config
from polytask.train import prepare, primary_scorer, resolve_tasks

REPEATS = 30


def config(**train: object) -> pt.Config:
    base = demo_config()
    return base.model_copy(
        update={
            "model": base.model.model_copy(update={"shared": [64, 64]}),
            "train": pt.TrainConfig(
                **{**base.train.model_dump(), "epochs": 60, "patience": 10, **train}
            ),
        }
    )


def kib(path: Path) -> float:
    return path.stat().st_size / 1000 if path.is_file() else 0.0


def best_of(fn) -> float:
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        variants = {
            "joint": config(),
            "per_task": config(select="per_task"),
            "finetune": config(finetune={"epochs": 10}),
        }
        print("| variant | model.safetensors kB | snapshots | snapshots.safetensors kB |")
        print("|---|---|---|---|")
        run = None
        for name, cfg in variants.items():
            run = pt.fit(cfg, out=root / name)
            snapshots = len(set(run.task_snapshot.values()) & set(run.snapshots))
            print(
                f"| {name} | {kib(root / name / 'model.safetensors'):.0f} | {snapshots} | "
                f"{kib(root / name / 'snapshots.safetensors'):.0f} |"
            )
        cfg = variants["per_task"]
        splits = pt.load_splits(cfg)
        preprocessor, encoded = prepare(cfg, splits, resolve_tasks(cfg))
        trainer = pt.Trainer(run.model, resolve_tasks(cfg), cfg.train)
        scorer = primary_scorer(cfg, preprocessor)
        generator = torch.Generator().manual_seed(0)
        score = best_of(lambda: scorer(trainer.model, encoded["validation"]))
        epoch = best_of(lambda: trainer._train_epoch(encoded["train"], generator))
        print(f"\nscoring the validation split: {score * 1000:.1f} ms per epoch")
        print(f"one training epoch:           {epoch * 1000:.1f} ms")


if __name__ == "__main__":
    main()
