"""The bundled 8x8 digits data set (1,797 images, pixel values 0..16).

It is the file scikit-learn ships (sklearn/datasets/data/digits.csv.gz: 64 pixel columns,
then the label). Importing scikit-learn to read it cost a small job ~2 s of its start-up
(issue 22), so the file is found with `importlib.util.find_spec`, which locates the
package without running its __init__, and read as `sklearn.datasets.load_digits` reads
it (np.loadtxt, comma-separated): the same float64 values and int labels.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from memtrain.data.dataset import Raw
from memtrain.errors import DataError

_MISSING = ("dataset: 'digits' is scikit-learn's bundled data set and scikit-learn is not installed; "
            "expected `pip install scikit-learn`")


def digits_file() -> Path | None:
    """scikit-learn's digits.csv.gz, or None when scikit-learn is absent or keeps it elsewhere."""
    try:
        spec = importlib.util.find_spec("sklearn")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


def load_digits() -> Raw:
    path = digits_file()
    if path is not None:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            table = np.loadtxt(f, delimiter=",")
        X, y = table[:, :-1], table[:, -1].astype(int, copy=False)  # as sklearn's load_digits returns them
    else:  # a scikit-learn that keeps its data elsewhere: its own loader (and its import time)
        try:
            from sklearn.datasets import load_digits as sk_load_digits  # noqa: PLC0415 - only when the file is not found
        except ImportError:
            raise DataError(_MISSING) from None
        X, y = sk_load_digits(return_X_y=True)
    # Pixel intensities are 0..16 in this data set.
    return Raw("digits", "digits", X, y, divisor=16.0, is_file=False)
