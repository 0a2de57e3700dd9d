"""polytask: multi-task learning on PyTorch.

Declare tasks on a table, train one shared network jointly, predict all tasks at once, and
compare honestly with single-task baselines::

    import polytask as pt
    config = pt.Config(data=pt.DataConfig(train="houses.csv"), tasks=[
        pt.Task(name="price", kind="regression"),
        pt.Task(name="sold", kind="binary", weight=0.5),
    ])
    run = pt.fit(config, out="runs/houses")
    run.predict(frame)
    planned = pt.plan(config, seeds=5, out="runs/plan")  # what to train together, per task
"""

__version__ = "0.1.0"

from . import signals
from .balancing import BALANCERS, Balancer, make_balancer, register_balancer
from .compare import Comparison, compare
from .config import (
    Config,
    DataConfig,
    ModelConfig,
    SignalsConfig,
    TrainConfig,
    load_config,
    parse_config,
)
from .data import Preprocessor, Splits, TaskData, read_table, split_indices
from .datasets import DATASETS, load_dataset
from .errors import ConfigError, DataError, PolytaskError, PolytaskWarning, RunError
from .grouping import validate_groups
from .io import Run, load
from .models import ARCHITECTURES, MLP, MultiTaskModel, build_model
from .plan import Plan, PlanRun, plan
from .relate import Relatedness, relate
from .tasks import KINDS, Task
from .train import Trainer, fit, load_splits

__all__ = [
    "ARCHITECTURES",
    "BALANCERS",
    "DATASETS",
    "KINDS",
    "MLP",
    "Balancer",
    "Comparison",
    "Config",
    "ConfigError",
    "DataConfig",
    "DataError",
    "ModelConfig",
    "MultiTaskModel",
    "Plan",
    "PlanRun",
    "PolytaskError",
    "PolytaskWarning",
    "Preprocessor",
    "Relatedness",
    "Run",
    "RunError",
    "SignalsConfig",
    "Splits",
    "Task",
    "TaskData",
    "TrainConfig",
    "Trainer",
    "__version__",
    "build_model",
    "compare",
    "fit",
    "load",
    "load_config",
    "load_dataset",
    "load_splits",
    "make_balancer",
    "parse_config",
    "plan",
    "read_table",
    "register_balancer",
    "relate",
    "signals",
    "split_indices",
    "validate_groups",
]
