"""The main job on the built-in default data: ``plan`` on Yeast (14 binary tasks), which shows
the plan against one shared network (all-in-one) and one network per task (STL)."""

from __future__ import annotations

from .config import Config, DataConfig, ModelConfig, TrainConfig
from .plan import DEFAULT_CANDIDATES

#: The candidates the demo tries: plan's defaults (41 s for 3 seeds on 2 idle cores, measured
#: with `time make demo` on an installed checkout; the README shows its output).
DEMO_CANDIDATES = DEFAULT_CANDIDATES


def demo_config() -> Config:
    """The demo's settings: one shared MLP for all 14 Yeast classes vs 14 separate ones.

    The sizes were picked among four candidates by mean validation AUC (one seed, MTL and STL
    alike), never on the test split.
    """
    return Config(
        data=DataConfig(dataset="yeast"),
        model=ModelConfig(shared=[256], head=[], dropout=0.3),
        train=TrainConfig(
            epochs=100, batch_size=64, lr=1e-3, weight_decay=1e-4, patience=15, seed=0
        ),
    )
