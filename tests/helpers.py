"""Small synthetic problems shared by the tests."""

from __future__ import annotations

import numpy as np

from fedfuse.data import ArrayDataset


def blobs(n: int = 200, seed: int = 0, classes: int = 3, dim: int = 5) -> ArrayDataset:
    """Well-separated Gaussian blobs (same centers for every seed): easy to learn quickly."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n)
    centers = np.random.default_rng(1234).normal(scale=4.0, size=(classes, dim))
    x = centers[y] + rng.normal(size=(n, dim))
    return ArrayDataset(x.astype(np.float32), y.astype(np.int64))
