"""Worker processes for jobs that train many independent models (``plan``'s seeds, ``relate``'s
transfer pairs): one torch thread each, forked on Linux, run here when ``workers`` is 1."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, TypeVar

from .errors import ConfigError

Job = TypeVar("Job")
Result = TypeVar("Result")


def default_workers(jobs: int, device: str = "cpu") -> int:
    """The machine's cores, at most one per job; 1 when the jobs train on a GPU (``device``
    ``cuda…``, or ``auto`` with one present): processes would share it."""
    import torch

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return 1
    return max(1, min(os.cpu_count() or 1, jobs))


def _start_worker(threads: int) -> None:
    """A worker's setup: its torch threads; and what it inherited from the parent moved out of
    the garbage collector's sight (``gc.freeze``: long-lived modules and data, which every
    full collection would otherwise traverse again)."""
    import gc

    import torch

    torch.set_num_threads(threads)
    gc.freeze()


class Pool:
    """Runs ``fn`` over jobs here (``workers == 1``) or in ``workers`` processes with one
    torch thread each. On Linux the workers are forked (a script without a ``__main__`` guard
    still works) unless this process has initialized CUDA, which a forked child cannot use;
    then, and off Linux, they are spawned, and a script that uses them needs the guard.
    ``fn`` and the jobs must be picklable (a module-level function, plain data)."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ConfigError(f"workers: {workers} must be at least 1")
        self.workers = workers
        self.executor: ProcessPoolExecutor | None = None
        if workers > 1:
            import torch

            fork = sys.platform.startswith("linux") and not torch.cuda.is_initialized()
            if fork:  # torch.optim's first optimizer imports it (about 1 s): once, not per worker
                import torch._dynamo  # noqa: F401
            method = "fork" if fork else "spawn"
            self.executor = ProcessPoolExecutor(
                workers, mp_context=get_context(method), initializer=_start_worker, initargs=(1,)
            )

    def map(self, fn: Callable[[Job], Result], jobs: Sequence[Job]) -> list[Result]:
        if self.executor is None:
            return [fn(job) for job in jobs]
        return list(self.executor.map(fn, jobs))

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
