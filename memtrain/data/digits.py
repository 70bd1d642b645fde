"""The bundled 8x8 digits data set (1,797 images, pixel values 0..16).

It is the file scikit-learn ships (sklearn/datasets/data/digits.csv.gz: 64 pixel columns,
then the label). Importing scikit-learn to read it cost a small job ~2 s of its start-up
(issue 22), so the file is found with `importlib.util.find_spec`, which locates the
package without running its __init__, and read as `sklearn.datasets.load_digits` reads
it (np.loadtxt, comma-separated): the same float64 values and int labels. np.loadtxt took
~21 ms of a small job's start-up for its 116,805 fields; the file holds only small unsigned
integers, which `_small_int_table` parses from the bytes in ~10 ms (the same values, asserted
against np.loadtxt and scikit-learn in tests/test_data.py); a file that is not such a table goes to np.loadtxt.
The parsed table is kept in memtrain's cache dir (`cached_table`), so later jobs load it in ~0.2 ms.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np

from memtrain.data.dataset import Raw
from memtrain.errors import DataError
from memtrain.memory.overhead_cache import cache_dir

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


def read_table(path: Path) -> np.ndarray:
    """The gzipped comma-separated table at `path` as float64 rows, as np.loadtxt reads it."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    table = _small_int_table(data)
    if table is None:  # not a table of small integers: the general reader
        table = np.loadtxt(data.decode("utf-8").splitlines(), delimiter=",", ndmin=2)
    return table


def _small_int_table(data: bytes) -> np.ndarray | None:
    """Rows of comma-separated unsigned integers of 1-3 digits, each row ending in a newline, all
    rows as wide, as float64; None for anything else (a sign, a point, a space, a ragged row)."""
    b = np.frombuffer(data, np.uint8)
    sep = (b == ord(",")) | (b == ord("\n"))
    if b.size == 0 or b[-1] != ord("\n") or not (sep | ((b >= ord("0")) & (b <= ord("9")))).all():
        return None
    ends = np.flatnonzero(sep)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lens = ends - starts
    if lens.min() < 1 or lens.max() > 3:
        return None
    row_ends = np.flatnonzero(b[ends] == ord("\n"))  # each row's last field, by field index
    width = int(row_ends[0]) + 1
    if len(ends) != width * len(row_ends) or not (row_ends == np.arange(width - 1, len(ends), width)).all():
        return None
    digits = b.astype(np.int64) - ord("0")
    values = np.zeros(len(ends), np.int64)
    for k in range(int(lens.max())):  # Horner's rule over each field's digits, one position at a time
        longer = lens > k
        values[longer] = values[longer] * 10 + digits[starts[longer] + k]
    return values.reshape(len(row_ends), width).astype(np.float64)


def cached_table(path: Path) -> np.ndarray:
    """read_table(path), kept as a .npy in memtrain's cache dir: loaded in 0.20-0.27 ms against
    8-12 ms to parse the text each time (a small job's start-up; bench/startup_parts.py). The name
    holds a hash of the compressed file (57 KB, read and hashed in 0.05 ms: `timeit`, min of 15):
    every install of the same file shares one entry, a changed file is parsed again. A cache that
    cannot be read or written is skipped."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    cached = cache_dir() / f"digits-{digest}.npy"
    try:
        table = np.load(cached, allow_pickle=False)
        if table.ndim == 2 and table.dtype == np.float64:
            return table
    except (OSError, ValueError, EOFError):
        pass
    table = read_table(path)
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.save(f, table, allow_pickle=False)
        os.replace(tmp, cached)  # whole or absent: a reader never sees half a file
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return table


def load_digits() -> Raw:
    path = digits_file()
    if path is not None:
        table = cached_table(path)
        X, y = table[:, :-1], table[:, -1].astype(int, copy=False)  # as sklearn's load_digits returns them
    else:  # a scikit-learn that keeps its data elsewhere: its own loader (and its import time)
        try:
            from sklearn.datasets import load_digits as sk_load_digits  # noqa: PLC0415 - only when the file is not found
        except ImportError:
            raise DataError(_MISSING) from None
        X, y = sk_load_digits(return_X_y=True)
    # Pixel intensities are 0..16 in this data set.
    return Raw("digits", "digits", X, y, divisor=16.0, is_file=False)
