"""`load_dataset`: a source read, checked, split, standardized and laid out for a model.

Order of work, and why: arrays are checked (shape, dtype, NaN/Inf, labels)
on the whole file first, so reported row numbers are the file's rows; then
split; then standardized with the training split's statistics only, so no
information from validation or test rows leaks into training.
"""

from __future__ import annotations

import numpy as np

from memtrain.data.checks import as_float, check_finite, check_overflow, check_pair, check_pair_shape
from memtrain.data.dataset import Dataset
from memtrain.data.filerows import FileRows
from memtrain.data.labels import label_width, labels
from memtrain.data.params import check_fraction, check_n_outputs, check_output, check_seed, label_columns
from memtrain.data.sources import load_source
from memtrain.data.split import split, split_parts
from memtrain.data.standardize import standardized, statistics
from memtrain.errors import DataError
from memtrain.validate import check_dtype


def load_dataset(source: str, *, dtype="float32", label_column=None, validation=0.2, test=0.0,
                 validation_source=None, standardize=False, seed=0, output="softmax", n_outputs=None) -> Dataset:
    """Load `source`, check it, split it and lay it out for a model with `output` units.

    validation, test: fractions of the source's rows (not of what is left), drawn from
        one permutation seeded by `seed`: the test rows come first, so changing
        `validation` never changes the test set. A fraction is not used where the
        data for that split comes from elsewhere (validation_source, or the .npz's
        own X_val / X_test).
    n_outputs: the model's last layer size, checked against the labels.
    """
    dt, output, val_frac, test_frac, n_outputs, seed = _parameters(dtype, output, validation, test, n_outputs, seed,
                                                                  label_column, standardize)
    raw = load_source(source, "dataset", label_column, seed)
    if isinstance(raw.X, FileRows):  # its values are checked as it is read, after the labels
        check_pair_shape(raw.where, "", raw.X.file_shape, raw.X.dtype, raw.y)
        check_finite(raw.where, "y", raw.y)
        X, y = raw.X, raw.y
    else:
        X, y = check_pair(raw.where, "", raw.X, raw.y)
    extra = _extra_splits(raw, validation_source, label_column, seed, X)

    # Labels: checked on whole arrays (file row numbers in messages), class count over every split.
    y = labels(raw.where, "y", y, output)
    raw.y = None  # a softmax's labels are a new int64 array: the one read goes now
    extra = {k: (w, s, Xe, labels(w, f"y{s}", ye, output)) for k, (w, s, Xe, ye) in extra.items()}
    all_y = [(raw.where, "y", y)] + [(w, f"y{s}", ye) for w, s, _, ye in extra.values()]
    width = label_width(all_y, output, n_outputs)

    # Features: cast to a working float type now, so an overflow is reported by file row.
    work = np.dtype(np.float64) if dt == np.float64 else np.dtype(np.float32)
    streamed = isinstance(X, FileRows)  # cast as it is read, into its splits
    X = X if streamed else as_float(raw.where, "X", X, work, raw.divisor)
    raw.X = None  # as read (an IDX file's bytes, a CSV's float64 table): not held while the rows are split
    extra = {k: (w, s, as_float(w, f"X{s}", Xe, work, raw.divisor), ye) for k, (w, s, Xe, ye) in extra.items()}
    if streamed:
        labels_box = [y]  # the whole labels go once split: not held while the features are read
        del y, all_y
        splits = _read_splits(raw.where, X, labels_box, extra, val_frac, test_frac, seed, work)
    else:
        splits = split(raw.where, X, y, extra, val_frac, test_frac, seed)
    mean = std = None
    if standardize:
        mean, std = statistics(splits["train"][0])
        for k, (Xs, ys) in splits.items():
            if Xs is not None:
                splits[k] = (standardized(Xs, mean, std), ys)
    wheres = {"train": raw.where, "val": raw.where, "test": raw.where} | {k: e[0] for k, e in extra.items()}
    out = _final_arrays(splits, wheres, dt, output, standardize)
    return Dataset(
        X_train=out["train"][0], y_train=out["train"][1], X_val=out["val"][0], y_val=out["val"][1],
        X_test=out["test"][0], y_test=out["test"][1], name=raw.name, n_features=int(X.shape[1]),
        n_outputs=width, task="regression" if output == "linear" else "classification",
        standardized=bool(standardize), mean=mean, std=std, input_divisor=raw.divisor,
    )


def _parameters(dtype, output, validation, test, n_outputs, seed, label_column, standardize) -> tuple:
    """Each parameter checked (in this order), before any file is opened."""
    dt = check_dtype(dtype)
    output = check_output(output)
    val_frac = check_fraction("validation", validation)
    test_frac = check_fraction("test", test)
    n_outputs = check_n_outputs(n_outputs, output)
    seed = check_seed(seed)
    label_columns(label_column)
    if standardize not in (True, False):  # also admits numpy bools, 0 and 1
        raise DataError(f"standardize: expected true or false, got {standardize!r}")
    return dt, output, val_frac, test_frac, n_outputs, seed


def _read_splits(where, X: FileRows, labels_box: list, extra, val_frac, test_frac, seed, work) -> dict:
    """split(...)'s result for an X not read yet: the same rows in each split (one seeded permutation,
    file order), X read block by block straight into the split arrays."""
    y = labels_box.pop()
    n = len(X)
    parts = split_parts(where, n, extra, val_frac, test_frac, seed) or {"train": np.arange(n)}
    which = np.zeros(n, np.int8)
    names = list(parts)
    ys = {}
    for code, k in enumerate(names):
        which[parts[k]] = code
        ys[k] = y if len(parts) == 1 else y[parts[k]]
    counts = [len(parts[k]) for k in names]
    del parts, y
    xs = X.read_split(which, counts, work)
    splits = {"train": (None, None), "val": (None, None), "test": (None, None)}
    splits.update({k: (xs[i], ys[k]) for i, k in enumerate(names)})
    for k, (_, _, Xe, ye) in extra.items():
        splits[k] = (Xe, ye)
    return splits


def _extra_splits(raw, validation_source, label_column, seed, X) -> dict:
    """split name -> (where, field suffix, X, y) from the file itself or validation_source."""
    extra = {}
    if validation_source is not None:
        if raw.X_val is not None:
            raise DataError(f"validation_dataset: {raw.where} already carries X_val/y_val; give one validation "
                            f"set, not both (got {validation_source!r} as well)")
        vraw = load_source(validation_source, "validation_dataset", label_column, seed)
        if isinstance(vraw.X, FileRows):  # not split: read whole, checked as any other array
            vraw.X = vraw.X.read_all()
        if not vraw.is_file:
            raise DataError(f"validation_dataset: {vraw.name} is split from the training data with `validation`; "
                            "a separate validation set must be a file")
        if vraw.divisor != raw.divisor:
            raise DataError(f"validation_dataset: {vraw.where} is scaled by 1/{vraw.divisor:g} on load but "
                            f"{raw.where} by 1/{raw.divisor:g}; expected the same kind of source")
        extra["val"] = (vraw.where, "", *check_pair(vraw.where, "", vraw.X, vraw.y))
    elif raw.X_val is not None:
        extra["val"] = (raw.where, "_val", *check_pair(raw.where, "_val", raw.X_val, raw.y_val))
    if raw.X_test is not None:
        extra["test"] = (raw.where, "_test", *check_pair(raw.where, "_test", raw.X_test, raw.y_test))
    if label_column is not None and not any(w.lower().endswith((".csv", ".csv.gz"))
                                            for w in [raw.where] + [e[0] for e in extra.values()]):
        raise DataError(f"label_column: only .csv sources have columns; {raw.where} is not one")
    for where, suffix, Xe, _ in extra.values():
        if Xe.shape[1] != X.shape[1]:
            raise DataError(f"{where}: X{suffix}: {Xe.shape[1]} features, but the training data "
                            f"({raw.where}) has {X.shape[1]}; expected the same features")
    return extra


def _final_arrays(splits, wheres, dt, output, standardize) -> dict:
    """Each split in the model's dtype (labels as the output unit wants them), overflow checked."""
    out = {}
    for k, suffix in (("train", "_train"), ("val", "_val"), ("test", "_test")):
        Xs, ys = splits[k]
        if Xs is not None:
            # float16 tops out at 65504, and standardizing by a tiny training std can overflow anything
            fits = "standardized and converted" if standardize else "converted"
            with np.errstate(over="ignore"):  # reported below, with the field and row
                Xs = np.ascontiguousarray(Xs, dtype=dt)
                ys = np.ascontiguousarray(ys, dtype=np.int64 if output == "softmax" else dt)
            check_overflow(wheres[k], f"X{suffix}", Xs, fits)
            check_overflow(wheres[k], f"y{suffix}", ys, fits)
        out[k] = (Xs, ys)
    return out
