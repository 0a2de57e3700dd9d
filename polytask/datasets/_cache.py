"""A small on-disk cache for computed data-set tables (features that take long to compute).

The cache lives in ``$POLYTASK_CACHE_DIR``, else ``$XDG_CACHE_HOME/polytask``, else
``~/.cache/polytask``. An entry is keyed by a name and a version string; a missing, stale or
unreadable entry is recomputed, and a cache that cannot be written is skipped, so results never
depend on the cache.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd


def cache_dir() -> Path:
    """The directory polytask caches computed data-set tables in."""
    if os.environ.get("POLYTASK_CACHE_DIR"):
        return Path(os.environ["POLYTASK_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "polytask"


def cached_frame(key: str, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """The numeric table stored under ``key``, computed (and stored) when not cached yet."""
    path = cache_dir() / f"{key}.npz"
    frame = _read(path)
    if frame is None:
        frame = compute()
        _write(path, frame)
    return frame


def _read(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            columns = [str(c) for c in stored["columns"]]
            return pd.DataFrame(
                stored["values"], columns=columns, index=pd.Index(stored["index"], name="id")
            )
    except (OSError, KeyError, ValueError):  # corrupt or from another layout: recompute
        return None


def _write(path: Path, frame: pd.DataFrame) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
            np.savez(
                tmp,
                values=frame.to_numpy(dtype=np.float64),
                columns=np.array(frame.columns, dtype=str),
                index=frame.index.to_numpy(),
            )
        os.replace(tmp.name, path)
    except OSError:  # a read-only home is not an error: the table is just not cached
        return
