"""Inputs of a saved model (memtrain evaluate / predict): feature rows, checked as a data set's X."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from memtrain.data.checks import check_features_array
from memtrain.data.csvfile import read_csv
from memtrain.data.npzfile import npz_array, open_npz
from memtrain.errors import DataError


def check_features(n_features: int, n_inputs: int, where: str) -> None:
    """Rows for a saved model must have its input width (its first layer): say both counts
    before any arithmetic, instead of NumPy's "operands could not be broadcast"."""
    if n_features != n_inputs:
        raise DataError(f"{where}: {n_features} features per row, but the model takes {n_inputs} (its first "
                        f"layer); expected rows like the ones it was trained on")


def load_inputs(source, where: str, label_column=None) -> np.ndarray:
    """Feature rows (no labels needed) for `memtrain predict`, raw as in the file (the model's
    preprocessing is applied by the caller): a .npz with an array X, or a .csv with a header row
    whose `label_column`, when given, is dropped. Checked as a data set's X: numeric, rows,
    finite. DataError starting with `where` (e.g. "--input new.csv")."""
    path = Path(str(source))
    lower = path.name.lower()
    if lower.endswith(".npz"):
        X = _npz_features(path, where)
    elif lower.endswith((".csv", ".csv.gz")):
        X = _csv_features(path, where, label_column)
    else:
        raise DataError(f"{where}: expected a .npz (array X) or .csv file (header row), got {path.name}")
    X = check_features_array(where, "X", X)
    return X.astype(np.float64, copy=False)


def _npz_features(path: Path, where: str) -> np.ndarray:
    if not path.exists():
        raise DataError(f"{where}: file not found")
    with open_npz(path, where, "an array X") as z:
        if "X" not in z.files:
            raise DataError(f"{where}: arrays: expected X, found {', '.join(sorted(z.files)) or 'none'}")
        return npz_array(z, where, "X")


def _csv_features(path: Path, where: str, label_column) -> np.ndarray:
    if not path.exists():
        raise DataError(f"{where}: file not found")

    def check(header):
        if label_column is not None and label_column not in header:
            raise DataError(f"{where}: --label-column: {label_column!r} not found; columns are "
                            f"{', '.join(header)}")

    header, table = read_csv(path, where, check)
    keep = [i for i, h in enumerate(header) if h != label_column]
    return np.ascontiguousarray(table[:, keep])
