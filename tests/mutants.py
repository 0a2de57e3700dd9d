"""Mutation check: does some test fail when a method is replaced by a stand-in?

Each mutant below breaks one defining behaviour (an aggregator becomes the plain mean of the task
gradients, a loss weighting becomes equal weights, a train setting is ignored, ...). For each,
the working tree is copied to a temporary directory, an override is appended to one module of
the copy, and the test files that own that behaviour run there with pytest, importing the copy
(PYTHONPATH; the child process checks ``polytask.__file__`` before running). A mutant is
"killed" when a test fails and "SURVIVED" when all pass; an import or collection error is an
"ERROR". To be quick, the tests that define the mutated method run first, and the whole files
only if those pass. The unmutated copy runs all the test files as a baseline.

    .venv/bin/python tests/mutants.py [--only NAME ...] [--jobs 2] [--out PATH] [--list]

Exits non-zero unless the baseline passes and every mutant is killed. Named ``mutants.py`` (no
``test_`` prefix), so pytest does not collect it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "quick" / "mutants.json"
MARK = "# ---- mutant ----"

BALANCERS_TESTS = ("tests/test_balancers.py",)
LOSSES_TESTS = ("tests/test_losses.py",)
SETTINGS_TESTS = ("tests/test_train_settings.py",)
SELECT_TESTS = ("tests/test_select.py", "tests/test_train.py")
ARCHITECTURE_TESTS = ("tests/test_architectures.py",)
RELATE_TESTS = ("tests/test_relate.py",)
PLAN_TESTS = ("tests/test_plan.py",)


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str
    module: str  # the file of the copy the override is appended to
    code: str
    tests: tuple[str, ...]
    focus: tuple[str, ...] = ()  # test functions (node ids) that define it: run first


def _defining(*functions: str) -> tuple[str, ...]:
    return tuple(f"{BALANCERS_TESTS[0]}::test_{f}" for f in functions)


AGGREGATOR_TESTS = {
    "cagrad": "cagrad_maximizes_the_worst_improvement_in_a_ball_around_the_mean",
    "graddrop": "graddrop_keeps_one_sign_per_coordinate_chosen_by_its_purity",
    "gradvac": "gradvac_raises_each_cosine_to_its_running_target",
    "nash_mtl": "nash_mtl_solves_the_bargaining_condition",
    "aligned_mtl": "aligned_mtl_is_the_mean_of_a_perfectly_conditioned_gradient_system",
    "fairgrad": "fairgrad_weights_meet_the_alpha_fair_condition",
    "mgda": "mgda_is_the_min_norm_point_of_the_hull",
    "pcgrad": "pcgrad_leaves_no_conflict_between_two_projected_gradients",
    "upgrad": "upgrad_does_not_conflict_with_any_task",
    "imtl_g": "imtl_g_has_equal_projections_on_unit_task_gradients",
}
WEIGHTING_TESTS = {
    "dwa": "dwa_is_the_softmax_of_the_loss_ratios",
    "rlw": "rlw_draws_softmax_normal_weights_from_its_seed",
    "famo": "famo_follows_its_update",
    "geometric": "geometric_is_the_gradient_of_the_geometric_mean_of_the_losses",
    "imtl_l": "imtl_l_learns_scales_that_make_every_scaled_loss_one",
    "uncertainty": "uncertainty_recovers_the_noise_variances",
    "gradnorm": "gradnorm_drives_gradient_norms_toward_the_targets",
}


def _mean_aggregator(name: str) -> Mutant:
    code = f"""
from .base import BALANCERS as _MUTANT_BALANCERS


def _mutant_mean(self, n):
    from torchjd.aggregation import Mean

    return Mean()


_MUTANT_BALANCERS[{name!r}]._make = _mutant_mean
"""
    return Mutant(
        f"{name}=mean",
        f"{name} replaced by the plain mean of the task gradients",
        "polytask/balancing/aggregation.py",
        code,
        BALANCERS_TESTS,
        _defining(AGGREGATOR_TESTS[name]),
    )


def _equal_weights(name: str) -> Mutant:
    code = f"""
from .base import BALANCERS as _MUTANT_BALANCERS


def _mutant_equal(self, losses, *, model, features=None, outputs=None):
    names, stacked = self._weighted(losses)
    stacked.sum().backward()
    return {{n: 1.0 for n in names}}


_MUTANT_BALANCERS[{name!r}].backward = _mutant_equal
"""
    return Mutant(
        f"{name}=equal",
        f"{name} replaced by equal weights (Σ α_t L_t)",
        "polytask/balancing/weighting.py",
        code,
        BALANCERS_TESTS,
        _defining(WEIGHTING_TESTS[name]),
    )


def _ignored_setting(setting: str) -> Mutant:
    """A Trainer that trains as if ``setting`` had its default."""
    overrides = {
        "grad_clip": """
_mutant_train_epoch = Trainer._train_epoch


def _mutant_no_clip(self, data, generator):
    config = self.config
    self.config = config.model_copy(update={"grad_clip": None})
    try:
        return _mutant_train_epoch(self, data, generator)
    finally:
        self.config = config


Trainer._train_epoch = _mutant_no_clip
""",
        "scheduler": """
def _scheduler(optimizer, cfg):
    return None
""",
        "amp": """
Trainer._autocast = lambda self: contextlib.nullcontext()
""",
        "weight_decay": """
_mutant_optimizer = _optimizer


def _optimizer(params, cfg):
    return _mutant_optimizer(params, cfg.model_copy(update={"weight_decay": 0.0}))
""",
    }
    return Mutant(
        f"ignore {setting}",
        f"train.{setting} ignored by the trainer",
        "polytask/train.py",
        overrides[setting],
        SETTINGS_TESTS,
    )


MUTANTS: list[Mutant] = [
    *(_mean_aggregator(n) for n in AGGREGATOR_TESTS),
    *(_equal_weights(n) for n in WEIGHTING_TESTS),
    *(_ignored_setting(s) for s in ("grad_clip", "scheduler", "amp", "weight_decay")),
    Mutant(
        "orders=fixed",
        "pcgrad and gradvac visit the other tasks in index order, not in a seeded random one",
        "polytask/balancing/gramian.py",
        """
def _orders(n, generator):
    keys = torch.arange(n, dtype=torch.float64).repeat(n, 1)
    keys.fill_diagonal_(float(n))
    order = keys.argsort(1)[:, :-1].T.contiguous()
    return order, order + torch.arange(n) * n
""",
        BALANCERS_TESTS,
        _defining("the_order_is_random_but_seeded"),
    ),
    Mutant(
        "gradvac forgets",
        "gradvac's targets φ̂ reset to 0 at every step",
        "polytask/balancing/gramian.py",
        """
_mutant_gradvac_weights = GradVac.weights


def _mutant_forgetful(self, gram):
    self.targets = torch.zeros_like(self.targets)
    return _mutant_gradvac_weights(self, gram)


GradVac.weights = _mutant_forgetful
""",
        BALANCERS_TESTS,
        _defining("gradvac_agrees_with_torchjd_on_two_tasks_over_steps"),
    ),
    Mutant(
        "masked_mean=mean",
        "the masked mean over labelled rows replaced by the plain mean over all rows",
        "polytask/losses.py",
        """
def masked_mean(values, mask, dim=0):
    return values.mean(dim)
""",
        LOSSES_TESTS,
    ),
    Mutant(
        "poisson no log y!",
        "the count loss without its log y! term (negative for counts above e)",
        "polytask/losses.py",
        """
ELEMENT_LOSSES["poisson"] = lambda out, y: torch.exp(out) - y * out
""",
        (*LOSSES_TESTS, *BALANCERS_TESTS),
        ("tests/test_losses.py::test_the_count_loss_is_the_poisson_negative_log_likelihood",),
    ),
    Mutant(
        "labels leak",
        "unlabelled targets reach the loss as they are (NaN, junk class codes)",
        "polytask/losses.py",
        """
def _labelled(target, mask):
    return target
""",
        LOSSES_TESTS,
    ),
    Mutant(
        "α ignored",
        "the balancers' α-weighted losses use α = 1 for every task",
        "polytask/balancing/base.py",
        """
Balancer._alphas = lambda self, names, like: torch.ones(
    len(names), dtype=like.dtype, device=like.device
)
""",
        BALANCERS_TESTS,
        _defining("dwa_is_the_softmax_of_the_loss_ratios"),
    ),
    Mutant(
        "fixed α ignored",
        "fixed weighting sums the losses with weight 1, not the declared α_t",
        "polytask/balancing/weighting.py",
        """
def _mutant_fixed(self, losses, *, model, features=None, outputs=None):
    torch.stack(list(losses.values())).sum().backward()
    return {n: 1.0 for n in losses}


FixedWeights.backward = _mutant_fixed
""",
        BALANCERS_TESTS,
        _defining("fixed_weights_each_loss_by_its_declared_alpha"),
    ),
    Mutant(
        "snapshots unused",
        "a run predicts every task from its joint weights, ignoring per-task snapshots",
        "polytask/io.py",
        """
def _mutant_outputs(self, data, names=None):
    produced = self._outputs(data)
    return {n: produced[n] for n in (self.model.task_names if names is None else names)}


Run._task_outputs = _mutant_outputs
""",
        SELECT_TESTS,
    ),
    Mutant(
        "per_task = last epoch",
        "train.select: per_task records every epoch as every task's best",
        "polytask/train.py",
        """
def _mutant_select(self, scores, epoch, task_best, snapshots):
    for name, value in scores.items():
        task_best[name] = (value * self._metric_sign(name), epoch)
    snapshots.clear()
    snapshots[epoch] = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
    return True


Trainer._select = _mutant_select
""",
        SELECT_TESTS,
    ),
    Mutant(
        "selection not resumed",
        "resume forgets the per-task best epochs and their weights",
        "polytask/train.py",
        """
Trainer._restore_selection = lambda self, state, checkpoint_dir: ({}, {})
""",
        SELECT_TESTS,
    ),
    Mutant(
        "finetune skipped",
        "train.finetune returns each task's starting weights untrained",
        "polytask/train.py",
        """
def finetune_tasks(trainer, starts, train, validation):
    joint = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    states = {t.name: dict(starts.get(t.name, joint)) for t in trainer.tasks if t.is_main}
    return states, {name: {"epochs": 0, "best_epoch": 0} for name in states}
""",
        SELECT_TESTS,
    ),
    Mutant(
        "gates not softmax",
        "mixture gates are independent sigmoids, not distributions over the experts",
        "polytask/models/mixtures.py",
        """
_Gates.forward = lambda self, h: torch.sigmoid(stacked_linear(h, self.weight, self.bias))
""",
        ARCHITECTURE_TESTS,
    ),
    Mutant(
        "aggregators skip 'other'",
        "aggregators write the Jacobian's direction to the shared group only, not to 'other'",
        "polytask/balancing/aggregation.py",
        """
_mutant_split = MultiTaskModel.split_parameters


def _mutant_shared_only(self):
    specific, joint = _mutant_split(self)
    shared = {id(p) for p in self.parameter_groups().shared}
    return specific, [p for p in joint if id(p) in shared]


MultiTaskModel.split_parameters = _mutant_shared_only
""",
        ARCHITECTURE_TESTS,
    ),
    Mutant(
        "z misses the gates' input",
        "MMoE's representation leaves out the embeddings the gates read",
        "polytask/models/mixtures.py",
        """
_mutant_mmoe_init = MMoE.__init__


def _mutant_mmoe(self, **kwargs):
    _mutant_mmoe_init(self, **kwargs)
    self._input_in_z = False


MMoE.__init__ = _mutant_mmoe
""",
        ARCHITECTURE_TESTS,
    ),
    Mutant(
        "stitches ignored",
        "cross-stitch columns run side by side, the mixing weights unused",
        "polytask/models/columns.py",
        """
def _mutant_columns(self, x_num, x_cat=None):
    h = self.columns(self.encoder(x_num, x_cat))
    z = h.flatten(1)
    return self.heads(z.view(h.shape)), z


CrossStitch.outputs_and_features = _mutant_columns
""",
        ARCHITECTURE_TESTS,
    ),
    Mutant(
        "soft-sharing penalty skipped",
        "the soft-sharing penalty's gradient is never added",
        "polytask/models/columns.py",
        """
SoftSharing.add_penalty_gradient = lambda self: None
""",
        ARCHITECTURE_TESTS,
    ),
    Mutant(
        "groups unchecked",
        "the trainer accepts a model whose parameter groups miss or repeat a parameter",
        "polytask/train.py",
        """
check_parameter_groups = lambda model: None
""",
        ARCHITECTURE_TESTS,
    ),
    Mutant(
        "gradient measure → identity",
        "relate's gradient cosine matrix is the identity (no task relates to another)",
        "polytask/relate.py",
        """
_mutant_matrices = _Recorder.matrices


def _mutant_identity(self):
    out = _mutant_matrices(self)
    if "gradient" in out:
        out["gradient"] = np.eye(len(self.names))
    return out


_Recorder.matrices = _mutant_identity
""",
        RELATE_TESTS,
    ),
    Mutant(
        "lookahead measure → random",
        "relate's lookahead matrix is uniform noise",
        "polytask/relate.py",
        """
_mutant_matrices = _Recorder.matrices
_mutant_rng = np.random.default_rng(0)


def _mutant_random(self):
    out = _mutant_matrices(self)
    if "lookahead" in out:
        out["lookahead"] = _mutant_rng.uniform(-1e-3, 1e-3, out["lookahead"].shape)
    return out


_Recorder.matrices = _mutant_random
""",
        RELATE_TESTS,
    ),
    Mutant(
        "hidden sensitivities → random",
        "relate's hidden-unit sensitivity profiles are uniform noise",
        "polytask/relate.py",
        """
_mutant_sensitivity = hidden_sensitivity
_mutant_rng = np.random.default_rng(0)


def hidden_sensitivity(model, data, *, chunk=512):
    return _mutant_rng.random(_mutant_sensitivity(model, data, chunk=chunk).shape)
""",
        RELATE_TESTS,
    ),
    Mutant(
        "transfer → random",
        "relate's transfer matrix is uniform noise (zero diagonal)",
        "polytask/relate.py",
        """
_mutant_rng = np.random.default_rng(0)


def transfer_matrix(config, splits, tasks, *, workers=1):
    d = _mutant_rng.uniform(-10, 10, (len(tasks), len(tasks)))
    np.fill_diagonal(d, 0.0)
    return d
""",
        RELATE_TESTS,
    ),
    Mutant(
        "groups: one for all",
        "relate suggests one group of every main task whatever the affinities",
        "polytask/relate.py",
        """
def suggest_groups(affinity, tasks, main, *, groups=None):
    return [list(main)]
""",
        RELATE_TESTS,
    ),
]

PLAN_MUTANTS = [
    Mutant(
        "plan choice → best mean",
        "plan picks each task's best mean validation score, with no seed-spread guard",
        "polytask/plan.py",
        """
_mutant_choose = choose


def choose(scores, metrics):
    chosen = _mutant_choose(scores, metrics)
    for task, metric in metrics.items():
        sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
        best = max(scores, key=lambda c: sign * float(np.mean(scores[c][task])))
        chosen[task]["candidate"] = best
    return chosen
""",
        PLAN_TESTS,
    ),
    Mutant(
        "plan choice → all-in-one",
        "plan delivers the all-in-one model for every task",
        "polytask/plan.py",
        """
_mutant_choose = choose


def choose(scores, metrics):
    chosen = _mutant_choose(scores, metrics)
    for task in metrics:
        chosen[task]["candidate"] = ALL_IN_ONE
    return chosen
""",
        PLAN_TESTS,
    ),
    Mutant(
        "plan: candidates see the test rows",
        "plan trains its candidates on splits that keep the test rows",
        "polytask/plan.py",
        """
_mutant_divide = divide_validation


class Splits(Splits):
    def __init__(self, train, validation, test):
        super().__init__(train, validation, _MUTANT_TEST[0] if len(test) == 0 else test)


_MUTANT_TEST = [None]
_mutant_plan = plan


def plan(config, **kwargs):
    from polytask.train import load_splits

    splits = kwargs.get("splits") or load_splits(config, kwargs.get("frame"))
    _MUTANT_TEST[0] = splits.test
    kwargs["splits"] = splits
    return _mutant_plan(config, **kwargs)
""",
        PLAN_TESTS,
    ),
    Mutant(
        "plan: choice rows = stopping rows",
        "plan scores the candidates on the validation rows the models stopped on",
        "polytask/plan.py",
        """
def divide_validation(validation, fraction, *, seed=0):
    return validation, validation
""",
        PLAN_TESTS,
    ),
    Mutant(
        "plan: groups → one for all",
        "plan's groups candidate gets one group of every main task",
        "polytask/plan.py",
        """
_mutant_grouping = _grouping


def _grouping(results, tasks, config, directory):
    found = _mutant_grouping(results, tasks, config, directory)
    found["groups"] = [[t.name for t in tasks if t.is_main]]
    return found
""",
        PLAN_TESTS,
    ),
]

MUTANTS += PLAN_MUTANTS

MUTANTS.append(
    Mutant(
        "block rows: first block only",
        "the parameter-level Gramian from the first joint parameter's block of J alone",
        "polytask/balancing/jacobian.py",
        """
BlockRows.gramian = lambda self: self.blocks[0] @ self.blocks[0].T
""",
        ("tests/test_factored.py", *BALANCERS_TESTS),
    )
)
MUTANTS.append(
    Mutant(
        "upgrad projector: no projection",
        "UPGrad's batched projector returns U unprojected (every task's weight 1/T)",
        "polytask/balancing/gramian.py",
        """
BatchedProjector.__call__ = lambda self, U, G: U.clone()
""",
        ("tests/test_upgrad_projector.py", *BALANCERS_TESTS),
    )
)
MUTANTS.append(
    Mutant(
        "stl ensemble: vmap's dropout draws",
        "the exact STL ensemble lets vmap draw dropout masks instead of the separate runs' own",
        "polytask/baselines.py",
        """
_mutant_ensemble_init = _Ensemble.__init__


def _mutant_vmap_masks(self, members, train, *, own_masks):
    _mutant_ensemble_init(self, members, train, own_masks=False)


_Ensemble.__init__ = _mutant_vmap_masks
""",
        ("tests/test_stl_ensemble.py",),
    )
)

# Runs in the child: import polytask from the copy (or fail), then pytest.
CHILD = """
import sys
from pathlib import Path

root = Path(sys.argv[1]).resolve()
import polytask
import polytask.balancing
import polytask.train

loaded = Path(polytask.__file__).resolve()
if root not in loaded.parents:
    print(f"polytask imported from {loaded}, not from the copy {root}", file=sys.stderr)
    sys.exit(3)
import pytest

sys.exit(pytest.main(sys.argv[2:]))
"""


def _tree_files() -> list[Path]:
    """The working tree as git sees it: tracked and untracked files, ignored ones left out."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [Path(p) for p in listed.split("\0") if p and (ROOT / p).is_file()]


def _copy_tree(files: list[Path], dest: Path) -> None:
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)


def _pytest(copy: Path, tests: tuple[str, ...], python: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [python, "-c", CHILD, str(copy), "-q", "-x", "-p", "no:cacheprovider", *tests]
    return subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True)


def _run(label: str, copy: Path, tests: tuple[str, ...], focus: tuple[str, ...], python: str):
    """pytest on ``focus``, then, unless that already failed, on ``tests``."""
    started = time.perf_counter()
    done = _pytest(copy, focus, python) if focus else None
    if done is None or done.returncode == 0:
        done = _pytest(copy, tests, python)
    seconds = time.perf_counter() - started
    output = done.stdout + done.stderr
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.M)
    return {
        "label": label,
        "returncode": done.returncode,
        "seconds": round(seconds, 1),
        "failed": failed[0] if failed else None,
        "tail": output.strip().splitlines()[-3:],
    }


def _status(result: dict) -> str:
    if result["returncode"] == 0:
        return "SURVIVED"
    if result["returncode"] == 1 and result["failed"]:
        return "killed"
    return "ERROR"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutants only")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run in parallel (2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copies")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list or not mutants:
        for m in MUTANTS:
            print(f"{m.name:20} {m.what}")
        return 0 if args.list else 2

    python = sys.executable
    files = _tree_files()
    work = Path(tempfile.mkdtemp(prefix="polytask-mutants-"))
    jobs: list[tuple[str, Path, tuple[str, ...], tuple[str, ...]]] = []
    baseline_tests = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
    _copy_tree(files, work / "baseline")
    jobs.append(("baseline", work / "baseline", baseline_tests, ()))
    for i, m in enumerate(mutants):
        copy = work / f"mutant{i:02d}"
        _copy_tree(files, copy)
        target = copy / m.module
        target.write_text(target.read_text() + f"\n\n{MARK}\n{m.code}")
        jobs.append((m.name, copy, m.tests, m.focus))

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda job: _run(*job, python), jobs))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)

    baseline, runs = results[0], results[1:]
    rows = []
    for m, r in zip(mutants, runs, strict=True):
        rows.append(
            {
                "mutant": m.name,
                "what": m.what,
                "module": m.module,
                "tests": list(m.tests),
                "status": _status(r),
                "killed_by": r["failed"],
                "seconds": r["seconds"],
                "returncode": r["returncode"],
                **({} if _status(r) == "killed" else {"output_tail": r["tail"]}),
            }
        )
    width = max(len(r["mutant"]) for r in rows)
    print(f"{'mutant':{width}}  {'result':8}  {'s':>5}  first failing test")
    for row in rows:
        test = (row["killed_by"] or "-").split("::")[-1]
        print(f"{row['mutant']:{width}}  {row['status']:8}  {row['seconds']:5.1f}  {test}")
    base_ok = baseline["returncode"] == 0
    killed = sum(r["status"] == "killed" for r in rows)
    print(
        f"\n{killed}/{len(rows)} killed; baseline "
        + ("passed" if base_ok else f"FAILED ({baseline['failed'] or baseline['tail']})")
        + f"; {time.perf_counter() - started:.0f} s wall over {args.jobs} processes"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "baseline": {"passed": base_ok, **{k: baseline[k] for k in ("seconds", "failed")}},
        "mutants": rows,
    }
    args.out.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    print(f"results: {args.out}")
    return 0 if base_ok and killed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
