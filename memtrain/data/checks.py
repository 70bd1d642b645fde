"""Checks on feature and label arrays as read: shape, dtype, NaN/Inf, overflow on a cast.

Run on whole arrays before the split, so a reported row number is the file's row."""

from __future__ import annotations

import numpy as np

from memtrain.errors import DataError


def check_pair(where: str, suffix: str, X, y):
    """(X as (n, features), y) after shape, dtype, NaN/Inf and row-count checks."""
    X, y = np.asarray(X), np.asarray(y)
    fx, fy = f"X{suffix}", f"y{suffix}"
    check_numeric(where, fx, X)
    check_numeric(where, fy, y)
    X = check_rows(where, fx, X)
    if y.ndim == 0 or len(y) != len(X):
        got = "a scalar" if y.ndim == 0 else f"{len(y)} rows"
        raise DataError(f"{where}: {fy}: {got}, but {fx} has {len(X)}; expected one label per row")
    check_finite(where, fx, X)
    check_finite(where, fy, y)
    return X, y


def check_features_array(where: str, field: str, X) -> np.ndarray:
    """Feature rows alone (a saved model's inputs): numeric, (n, features) with both > 0, finite."""
    X = np.asarray(X)
    check_numeric(where, field, X)
    X = check_rows(where, field, X)
    check_finite(where, field, X)
    return X


def check_numeric(where: str, field: str, a: np.ndarray) -> None:
    if a.dtype.kind not in "biuf":
        raise DataError(f"{where}: {field}: dtype {a.dtype} is not numeric; expected integers or floats")


def check_rows(where: str, field: str, X: np.ndarray) -> np.ndarray:
    """X as (rows, features), at least one of each; images (n, h, w) become rows of h*w features."""
    if X.ndim < 2:
        raise DataError(f"{where}: {field}: shape {X.shape}; expected a 2-D array (rows, features)")
    if X.ndim > 2:
        X = X.reshape(len(X), -1)
    if len(X) == 0:
        raise DataError(f"{where}: {field}: no rows (shape {X.shape}); expected at least one")
    if X.shape[1] == 0:
        raise DataError(f"{where}: {field}: no feature columns (shape {X.shape}); expected at least one")
    return X


def _nonfinite(a: np.ndarray):
    """(count, first row) of NaN/Inf values in `a`, or None when all are finite. In row blocks of
    about 4 MiB of flags: a mask of the whole set was a quarter of a float32 set's size at once."""
    if a.dtype.kind != "f" or len(a) == 0:
        return None
    rows = a.reshape(len(a), -1)
    step = max(1, (4 << 20) // max(1, rows.shape[1]))
    count, first = 0, None
    for start in range(0, len(rows), step):
        bad = ~np.isfinite(rows[start:start + step])
        n = int(bad.sum())
        if n:
            count += n
            first = start + int(np.flatnonzero(bad.any(axis=1))[0]) if first is None else first
    return (count, first) if count else None


def check_finite(where: str, field: str, a: np.ndarray) -> None:
    found = _nonfinite(a)
    if found:
        n_nan = int(np.isnan(a).sum())
        raise DataError(f"{where}: {field}: {n_nan} NaN and {found[0] - n_nan} Inf values (first in row "
                         f"{found[1]}); expected finite numbers")


def check_overflow(where: str, field: str, a: np.ndarray, how: str) -> None:
    """After a cast from finite data, any Inf is a value too large for the new dtype."""
    found = _nonfinite(a)
    if found:
        raise DataError(f"{where}: {field}: {found[0]} values overflow {a.dtype.name} when {how} (first in "
                         f"row {found[1]}); expected magnitudes below {np.finfo(a.dtype).max:.5g}")


def as_float(where: str, field: str, X: np.ndarray, work: np.dtype, divisor: float) -> np.ndarray:
    if divisor != 1.0:
        out = np.divide(X, divisor, dtype=work)  # one pass, no float64 copy of a uint8 image set
    else:
        with np.errstate(over="ignore"):  # reported below, with the field and row
            out = X.astype(work, copy=False)
        if out is X and not X.flags.writeable:  # np.frombuffer views: standardizing writes in place
            out = X.copy()
    if X.dtype.kind == "f" and X.dtype.itemsize > work.itemsize:  # float64 above 3.4e38 cannot be float32
        check_overflow(where, field, out, "converted")
    return out
