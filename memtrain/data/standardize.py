"""Standardization with the training split's statistics only (nothing leaks from held-out rows)."""

from __future__ import annotations

import numpy as np

_STATS_ROWS = 4096  # rows per block when computing standardization statistics


def statistics(X: np.ndarray):
    """Per-feature mean and divisor of the training split, accumulated in float64."""
    mean = X.mean(axis=0, dtype=np.float64)
    # Two-pass variance over row blocks: np.std(dtype=float64) would make a float64 copy
    # of the whole set (376 MB for MNIST) just to subtract the mean.
    ss = np.zeros_like(mean)
    for s in range(0, len(X), _STATS_ROWS):
        d = X[s:s + _STATS_ROWS] - mean
        ss += np.einsum("ij,ij->j", d, d)
    std = np.sqrt(ss / len(X))
    # A constant column's std comes out as rounding noise, not exactly 0; dividing by it
    # would blow up any validation value that differs. Such features are only centred.
    constant = std <= 16 * np.finfo(np.float64).eps * np.abs(mean)
    std[constant] = 1.0
    return mean, std


def standardized(X: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    if not X.flags.writeable:
        X = X.copy()
    with np.errstate(over="ignore"):  # the caller reports values that overflow
        X -= mean.astype(X.dtype)
        X /= std.astype(X.dtype)
    return X
