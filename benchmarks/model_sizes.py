"""Parameter counts of every architecture, by parameter group: the table in
docs/architectures.md ("Sizes").

20 numeric inputs, 4 regression tasks, linear heads, default options; the ratio is to hard
sharing with ``shared: [64, 64]``.

    python benchmarks/model_sizes.py        # prints the Markdown table
"""

from __future__ import annotations

import polytask as pt

ROWS = [
    ("hard_sharing", [64, 64], False),
    ("hard_sharing", [64, 64], True),
    ("mmoe", [64, 64], False),
    ("mmoe", [32, 32], False),
    ("cgc", [64, 64], False),
    ("cgc", [32, 32], False),
    ("ple", [64, 64], False),
    ("ple", [24, 24], False),
    ("cross_stitch", [64, 64], False),
    ("cross_stitch", [32, 32], False),
    ("soft_sharing", [64, 64], False),
    ("soft_sharing", [32, 32], False),
]


def counts(architecture: str, shared: list[int], linear_path: bool) -> dict[str, int]:
    spec = pt.ModelConfig(architecture=architecture, shared=shared, linear_path=linear_path)
    model = pt.build_model(
        spec, n_numeric=20, cardinalities=[], out_dims={f"t{i}": 1 for i in range(4)}
    )
    groups = model.parameter_groups()
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "shared": sum(p.numel() for p in groups.shared),
        "other": sum(p.numel() for p in groups.other),
        "tasks": sum(t.numel() for entries in groups.tasks.values() for t in entries),
    }


def main() -> None:
    base = counts("hard_sharing", [64, 64], False)["parameters"]
    print("| architecture | `shared` | parameters | ratio | shared | other | per task (all) |")
    print("|---|---|---|---|---|---|---|")
    for architecture, shared, linear_path in ROWS:
        c = counts(architecture, shared, linear_path)
        name = f"`{architecture}`" + (" + linear_path" if linear_path else "")
        print(
            f"| {name} | {shared} | {c['parameters']:,} | {c['parameters'] / base:.2f} | "
            f"{c['shared']:,} | {c['other']:,} | {c['tasks']:,} |"
        )


if __name__ == "__main__":
    main()
