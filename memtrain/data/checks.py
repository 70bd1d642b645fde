"""Checks on feature and label arrays as read: shape, dtype, NaN/Inf, overflow on a cast.

Run on whole arrays before the split, so a reported row number is the file's row."""

from __future__ import annotations

import numpy as np

from memtrain.errors import DataError


def check_pair(where: str, suffix: str, X, y):
    """(X as (n, features), y) after shape, dtype, NaN/Inf and row-count checks."""
    X, y = np.asarray(X), np.asarray(y)
    shape = check_pair_shape(where, suffix, X.shape, X.dtype, y)
    X = X.reshape(shape) if X.ndim > 2 else X
    check_finite(where, f"X{suffix}", X)
    check_finite(where, f"y{suffix}", y)
    return X, y


def check_pair_shape(where: str, suffix: str, shape: tuple, dtype, y: np.ndarray) -> tuple:
    """What check_pair checks before any value: both numeric, X's (rows, features), one label per row.
    Returns X's shape as rows of features (an X read later, block by block, is checked as it is read)."""
    fx, fy = f"X{suffix}", f"y{suffix}"
    check_numeric(where, fx, dtype)
    check_numeric(where, fy, y.dtype)
    shape = rows_shape(where, fx, shape)
    if y.ndim == 0 or len(y) != shape[0]:
        got = "a scalar" if y.ndim == 0 else f"{len(y)} rows"
        raise DataError(f"{where}: {fy}: {got}, but {fx} has {shape[0]}; expected one label per row")
    return shape


def check_features_array(where: str, field: str, X) -> np.ndarray:
    """Feature rows alone (a saved model's inputs): numeric, (n, features) with both > 0, finite."""
    X = np.asarray(X)
    check_numeric(where, field, X.dtype)
    shape = rows_shape(where, field, X.shape)
    X = X.reshape(shape) if X.ndim > 2 else X
    check_finite(where, field, X)
    return X


def check_numeric(where: str, field: str, dtype) -> None:
    if np.dtype(dtype).kind not in "biuf":
        raise DataError(f"{where}: {field}: dtype {dtype} is not numeric; expected integers or floats")


def rows_shape(where: str, field: str, shape: tuple) -> tuple:
    """(rows, features), at least one of each; images (n, h, w) are rows of h*w features."""
    if len(shape) < 2:
        raise DataError(f"{where}: {field}: shape {shape}; expected a 2-D array (rows, features)")
    if len(shape) > 2:
        shape = (shape[0], int(np.prod(shape[1:], dtype=np.int64)))
    if shape[0] == 0:
        raise DataError(f"{where}: {field}: no rows (shape {shape}); expected at least one")
    if shape[1] == 0:
        raise DataError(f"{where}: {field}: no feature columns (shape {shape}); expected at least one")
    return shape


def _nonfinite(a: np.ndarray):
    """(count, first row) of NaN/Inf values in `a`, or None when all are finite. In row blocks of
    about 256 KiB of flags, inverted in place: a mask of the whole set was a quarter of a float32
    set's size at once, and a loaded data set's checks stay within the loader's working block."""
    if a.dtype.kind != "f" or len(a) == 0:
        return None
    rows = a.reshape(len(a), -1)
    step = max(1, (256 << 10) // max(1, rows.shape[1]))
    count, first = 0, None
    for start in range(0, len(rows), step):
        bad = np.isfinite(rows[start:start + step])
        np.logical_not(bad, out=bad)
        n = int(bad.sum())
        if n:
            count += n
            first = start + int(np.flatnonzero(bad.any(axis=1))[0]) if first is None else first
    return (count, first) if count else None


def check_finite(where: str, field: str, a: np.ndarray) -> None:
    tally = RowTally()
    tally.add(a, 0)
    tally.check_finite(where, field)


def check_overflow(where: str, field: str, a: np.ndarray, how: str) -> None:
    """After a cast from finite data, any Inf is a value too large for the new dtype."""
    tally = RowTally(count_nan=False)
    tally.add(a, 0)
    tally.check_overflow(where, field, a.dtype, how)


class RowTally:
    """NaN/Inf values of an array seen whole or block by block (`offset`: the block's first row),
    reported with the file's row of the first one, as one message either way."""

    def __init__(self, count_nan: bool = True):
        self.count_nan = count_nan
        self.count = self.nan = 0
        self.first = None

    def add(self, a: np.ndarray, offset: int) -> None:
        found = _nonfinite(a)
        if found:
            self.count += found[0]
            self.nan += int(np.isnan(a).sum()) if self.count_nan else 0
            self.first = offset + found[1] if self.first is None else self.first

    def check_finite(self, where: str, field: str) -> None:
        if self.count:
            raise DataError(f"{where}: {field}: {self.nan} NaN and {self.count - self.nan} Inf values (first in row "
                            f"{self.first}); expected finite numbers")

    def check_overflow(self, where: str, field: str, dtype, how: str) -> None:
        if self.count:
            dtype = np.dtype(dtype)
            raise DataError(f"{where}: {field}: {self.count} values overflow {dtype.name} when {how} (first in "
                            f"row {self.first}); expected magnitudes below {np.finfo(dtype).max:.5g}")


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
