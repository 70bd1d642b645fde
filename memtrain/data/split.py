"""The train/validation/test split: fractions of one seeded permutation, each split in file order."""

from __future__ import annotations

import numpy as np

from memtrain.data.params import split_count
from memtrain.errors import DataError

_SPLIT_BYTES = 1 << 20  # of rows moved at once when a data set is split in place (8192 rows of MNIST were 25 MB)


def split(where, X, y, extra, val_frac, test_frac, seed) -> dict:
    """train/val/test (X, y): fractions of one seeded permutation, or the given splits."""
    parts = split_parts(where, len(X), extra, val_frac, test_frac, seed)
    splits = {"train": (X, y), "val": (None, None), "test": (None, None)}
    if parts is not None:
        splits.update(_split_rows(X, y, parts))
    for k, (_, _, Xe, ye) in extra.items():
        splits[k] = (Xe, ye)
    return splits


def split_parts(where, n: int, extra, val_frac, test_frac, seed) -> dict | None:
    """{split: sorted row indices} of the splits drawn from the source's n rows (test first, so
    `validation` never changes the test set); None when nothing is held out of them."""
    n_test = 0 if "test" in extra else split_count(test_frac, n)
    n_val = 0 if "val" in extra else split_count(val_frac, n)
    if n_test and n_val and val_frac + test_frac >= 1.0:
        raise DataError(f"validation, test: {val_frac:g} + {test_frac:g} leaves nothing to train on; "
                        "expected a sum below 1")
    if n - n_test - n_val < 1:
        raise DataError(f"validation, test: {where} has {n} rows; {n_val} for validation and {n_test} for "
                        "test leave none to train on; expected smaller fractions")
    if not (n_test or n_val):
        return None
    perm = np.random.default_rng(seed).permutation(n)
    # Sorted indices keep each split in file order: rows are easy to find in the source.
    parts = {"test": perm[:n_test], "val": perm[n_test:n_test + n_val], "train": perm[n_test + n_val:]}
    return {k: np.sort(idx) for k, idx in parts.items() if len(idx)}


def _split_rows(X, y, parts: dict) -> dict:
    """{split: (X rows, y rows)}, rows in file order, each split a view of X's own buffer (not new
    arrays: loading then peaks at X plus its larger held-out split, not at two copies of X).

    Layout [train | small | large] of the held-out splits: the large one is copied out, the train
    and small rows moved to the front in place, the small rows parked in the freed tail while the
    train rows close up, then moved behind them, and the large one put back at the end."""
    if not (X.flags.c_contiguous and X.flags.writeable):  # a read-only view: the plain copies
        return {k: (X[idx], y[idx]) for k, idx in parts.items()}
    held_out = sorted((k for k in parts if k != "train"), key=lambda k: len(parts[k]))
    small, large = (held_out if len(held_out) == 2 else [None, held_out[0]])
    n_train, n_small = len(parts["train"]), len(parts[small]) if small else 0
    copied = X[parts[large]]
    keep = np.sort(np.concatenate([parts["train"]] + ([parts[small]] if small else [])))
    _move_rows(X, keep, 0)  # train and small rows, in file order, to the front
    tail = n_train + n_small
    if small:
        _move_rows(X, np.searchsorted(keep, parts[small]), tail)  # parked in the freed tail
    _move_rows(X, np.searchsorted(keep, parts["train"]), 0)
    if small:
        X[n_train:tail] = X[tail:tail + n_small]
    X[tail:] = copied
    del copied
    out = {"train": (X[:n_train], y[parts["train"]]), large: (X[tail:], y[parts[large]])}
    if small:
        out[small] = (X[n_train:tail], y[parts[small]])
    return out


def _move_rows(X, rows, to: int) -> None:
    """X[to + i] = X[rows[i]] for sorted `rows`, in blocks (no copy of them all at once): safe when
    each row moves down (to + i <= rows[i]) or into a region none of `rows` lies in."""
    step = max(1, _SPLIT_BYTES // max(1, X[:1].nbytes))
    for start in range(0, len(rows), step):
        src = rows[start:start + step]
        X[to + start:to + start + len(src)] = X[src]
