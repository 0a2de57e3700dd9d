"""One UPGrad projection: polytask's ``BatchedProjector`` vs torchjd's ``QuadprogProjector``.

Both get the same Gramian and U = I/T (UPGrad's default preference) and are timed call by call,
in alternation, on one thread (median of ``--repeats``). Gramians, float64, of T = 14, 160 and
1,000 tasks:

- **gaussian**: T random Gaussian gradients of dimension 2,000 with a shared part (0.3 of the
  noise), the first 20% of the tasks negated (they conflict with the rest);
- **school**: diagonal-dominant, as School's per-school tasks: independent gradients of
  dimension 2,000 with a small shared part (0.05), so small conflicts between many pairs;
- **low_rank**: T tasks driven by 8 latent factors, as in ``benchmarks/many_tasks.py``, seen
  through a 64-wide representation (rank ≤ 64 < T at T = 160, 1,000), 20% negated;
- **yeast** (T = 14 only, when the data set is installed): the parameter-level Gramian of
  ``benchmarks/solver_free.py``'s Yeast model (103 → 256 → 256, 14 heads, BCE) on one batch.

quadprog solves one program per task; at T ≥ ``--quadprog-rows`` (default 1,000) it is timed
on the first 20 rows of U only and scaled by T/20 (marked ``extrapolated``): one full call
would take minutes. ``agreement`` is max |W_ours − W_quadprog| / max |W_quadprog| on the rows
both solved.

    python benchmarks/upgrad_projector.py   # writes benchmarks/results/upgrad_projector.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torchjd.linalg import QuadprogProjector  # noqa: E402

from polytask.balancing.gramian import BatchedProjector  # noqa: E402

SUBSET = 20


def gramian(family: str, n: int, seed: int = 0) -> torch.Tensor | None:
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    if family == "gaussian":
        jac = randn(n, 2000) + 0.3 * randn(1, 2000)
        jac[: n // 5] *= -1
    elif family == "school":
        jac = randn(n, 2000) + 0.05 * randn(1, 2000)
    elif family == "low_rank":
        jac = randn(n, 8) @ randn(8, 64) + 0.3 * randn(n, 64)
        jac[: n // 5] *= -1
    elif family == "yeast":
        return yeast_gramian() if n == 14 else None
    else:
        raise ValueError(family)
    return jac @ jac.T


def yeast_gramian() -> torch.Tensor | None:
    """The Yeast model's parameter-level Gramian on its first batch of 128 (None without the
    data set)."""
    try:
        from solver_free import fixed_batches, make_model, yeast_training

        x, y = yeast_training()
    except Exception:  # the data set's package is an optional extra
        return None
    model = make_model(x.shape[1], y.shape[1], [256, 256])
    xb, yb = fixed_batches(x, y, 128)[0]
    packed = model(xb, packed=True)
    shared = list(model.parameter_groups().shared)
    rows = []
    for i in range(y.shape[1]):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(packed[:, i, 0], yb[:, i])
        grads = torch.autograd.grad(loss, shared, retain_graph=True)
        rows.append(torch.cat([gr.flatten() for gr in grads]))
    jac = torch.stack(rows).double()
    return jac @ jac.T


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[14, 160, 1000])
    parser.add_argument(
        "--families", nargs="+", default=["gaussian", "school", "low_rank", "yeast"]
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quadprog-rows", type=int, default=1000)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/upgrad_projector.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    ours, reference = BatchedProjector(), QuadprogProjector()
    results = []
    print(f"{'family':<10}{'T':>6}{'torch (ms)':>13}{'quadprog (ms)':>16}", end="")
    print(f"{'ratio':>8}{'agreement':>11}")
    for n in args.tasks:
        for family in args.families:
            gram = gramian(family, n)
            if gram is None:
                continue
            u = torch.eye(n, dtype=torch.float64) / n
            partial = n >= args.quadprog_rows
            rows = u[:SUBSET] if partial else u
            repeats = 1 if n >= 1000 else args.repeats
            ours(u, gram)  # warm-up
            t_ours, w_ours = timed(lambda u=u, gram=gram: ours(u, gram), repeats)
            t_qp, w_qp = timed(lambda rows=rows, gram=gram: reference(rows, gram), repeats)
            if partial:
                t_qp *= n / SUBSET
            both = w_ours[: len(rows)]
            agreement = float((both - w_qp).abs().max() / w_qp.abs().max())
            conflicts = int(((gram / n) < 0).sum() // 2)
            row = {
                "family": family,
                "tasks": n,
                "torch_s": t_ours,
                "quadprog_s": t_qp,
                "quadprog_extrapolated": partial,
                "ratio": t_qp / t_ours,
                "agreement": agreement,
                "conflicting_pairs": conflicts,
            }
            results.append(row)
            mark = "*" if partial else " "
            print(
                f"{family:<10}{n:>6}{1e3 * t_ours:>13.2f}{1e3 * t_qp:>15.1f}{mark}"
                f"{t_qp / t_ours:>8.1f}{agreement:>11.1e}",
                flush=True,
            )
    print(f"* quadprog timed on {SUBSET} of the T programs, scaled by T/{SUBSET}")
    settings = {
        "threads": 1,
        "repeats": args.repeats,
        "quadprog_subset_rows": SUBSET,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": settings, "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
