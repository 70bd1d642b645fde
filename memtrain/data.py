"""Datasets for training jobs: load, check, split, standardize, lay labels out.

`load_dataset(source, ...)` turns a source string (digits, an IDX/.npz/.csv
file, or a synthetic benchmark set) into a `Dataset` whose arrays are ready
for `Trainer.attach_data`: X C-contiguous in the model dtype, labels in the
layout `MLP.prepare_labels` wants for the output unit. Every problem with the
data is a one-line ValueError naming the file, the field and what was
expected (DESIGN section 5: failure is an input), raised before any training
memory is allocated.

Order of work, and why: arrays are checked (shape, dtype, NaN/Inf, labels)
on the whole file first, so reported row numbers are the file's rows; then
split; then standardized with the training split's statistics only, so no
information from validation or test rows leaks into training.
"""

from __future__ import annotations

import csv
import gzip
import re
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memtrain.errors import DataError
from memtrain.validate import check_dtype, check_scalar

# The output units whose label layout this module builds (class indices, 0/1 column,
# real targets); tests/test_data.py checks they are memtrain.nn.losses.OUTPUTS.
OUTPUTS = ("softmax", "sigmoid", "linear")
SOURCE_FORMS = (
    "digits",
    "synthetic:classification(n, d, classes)",
    "synthetic:regression(n, d, outputs)",
    "FILE.npz (arrays X, y; optional X_val/y_val, X_test/y_test)",
    "FILE.csv[.gz] (header row; label_column names the labels)",
    "IDX images file (train-images-idx3-ubyte[.gz], labels found beside it)",
    "IMAGES,LABELS (a pair of IDX files)",
)

# IDX element types (the format's table); only unsigned bytes are read: MNIST
# and Fashion-MNIST ship them, and only they have a known [0, 255] range to scale.
_IDX_TYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32",
              0x0E: "float64"}
IDX_NAME = re.compile(r"(?:[.-]idx\d+(?:-ubyte)?|\.idx)$", re.IGNORECASE)
_SYNTHETIC = re.compile(r"synthetic:(\w+)\((.*)\)", re.DOTALL)
_STATS_ROWS = 4096  # rows per block when computing standardization statistics
_SPLIT_ROWS = 8192  # rows moved at once when a data set is split in place
_CSV_CHUNK = 8192  # rows per np.array call on the slow path: C parsing without every cell as a str


@dataclass
class Dataset:
    """Arrays ready for training; the val/test pairs are None when that split is empty."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray | None
    y_val: np.ndarray | None
    X_test: np.ndarray | None
    y_test: np.ndarray | None
    name: str
    n_features: int
    n_outputs: int  # output units: classes for softmax, 1 for sigmoid, target width for linear
    task: str  # "classification" or "regression"
    standardized: bool
    mean: np.ndarray | None = None  # float64 (n_features,), from the training split; None unless standardized
    std: np.ndarray | None = None  # the divisor used: 1.0 where a feature is constant on the training split
    input_divisor: float = 1.0  # raw values were divided by this on load (255 for IDX, 16 for digits)

    def describe(self) -> str:
        rows = [0 if a is None else len(a) for a in (self.X_train, self.X_val, self.X_test)]
        if self.task == "regression":
            out = f"{self.n_outputs} output{'s' if self.n_outputs != 1 else ''}"
        elif self.n_outputs == 1:
            out = "2 classes (1 sigmoid output)"
        else:
            out = f"{self.n_outputs} classes"
        return (f"{self.name}: {rows[0]:,} train / {rows[1]:,} validation / {rows[2]:,} test rows, "
                f"{self.n_features} features, {out}" + (", standardized" if self.standardized else ""))

    def preprocessing(self) -> dict:
        """What was done to the raw features, so a saved model can be fed new inputs the same way:
        x / input_divisor, then (x - mean) / std when standardized."""
        return {
            "input_divisor": self.input_divisor,
            "standardize": self.standardized,
            "mean": None if self.mean is None else self.mean.tolist(),
            "std": None if self.std is None else self.std.tolist(),
        }


@dataclass
class _Raw:
    """A source as read, before checks: `where` is what error messages name (the path)."""

    name: str
    where: str
    X: np.ndarray
    y: np.ndarray
    X_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    X_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    divisor: float = 1.0
    is_file: bool = True


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
    dt = _dtype(dtype)
    output = _output(output)
    val_frac = _fraction("validation", validation)
    test_frac = _fraction("test", test)
    n_outputs = _n_outputs(n_outputs, output)
    seed = _seed(seed)
    _label_column_names(label_column)
    if standardize not in (True, False):  # also admits numpy bools, 0 and 1
        raise DataError(f"standardize: expected true or false, got {standardize!r}")

    raw = _load(source, "dataset", label_column, seed)
    X, y = _check_pair(raw.where, "", raw.X, raw.y)
    extra = _extra_splits(raw, validation_source, label_column, seed, X)

    # Labels: checked on whole arrays (file row numbers in messages), class count over every split.
    y = _labels(raw.where, "y", y, output)
    extra = {k: (w, s, Xe, _labels(w, f"y{s}", ye, output)) for k, (w, s, Xe, ye) in extra.items()}
    all_y = [(raw.where, "y", y)] + [(w, f"y{s}", ye) for w, s, _, ye in extra.values()]
    width = _label_width(all_y, output, n_outputs)

    # Features: cast to a working float type now, so an overflow is reported by file row.
    work = np.dtype(np.float64) if dt == np.float64 else np.dtype(np.float32)
    X = _as_float(raw.where, "X", X, work, raw.divisor)
    extra = {k: (w, s, _as_float(w, f"X{s}", Xe, work, raw.divisor), ye) for k, (w, s, Xe, ye) in extra.items()}

    splits = _split(raw.where, X, y, extra, val_frac, test_frac, seed)
    mean = std = None
    if standardize:
        mean, std = _statistics(splits["train"][0])
        for k, (Xs, ys) in splits.items():
            if Xs is not None:
                splits[k] = (_standardize(Xs, mean, std), ys)
    wheres = {"train": raw.where, "val": raw.where, "test": raw.where} | {k: e[0] for k, e in extra.items()}
    out = _final_arrays(splits, wheres, dt, output, standardize)
    return Dataset(
        X_train=out["train"][0], y_train=out["train"][1], X_val=out["val"][0], y_val=out["val"][1],
        X_test=out["test"][0], y_test=out["test"][1], name=raw.name, n_features=int(X.shape[1]),
        n_outputs=width, task="regression" if output == "linear" else "classification",
        standardized=bool(standardize), mean=mean, std=std, input_divisor=raw.divisor,
    )


def _extra_splits(raw, validation_source, label_column, seed, X) -> dict:
    """split name -> (where, field suffix, X, y) from the file itself or validation_source."""
    extra = {}
    if validation_source is not None:
        if raw.X_val is not None:
            raise DataError(f"validation_dataset: {raw.where} already carries X_val/y_val; give one validation "
                            f"set, not both (got {validation_source!r} as well)")
        vraw = _load(validation_source, "validation_dataset", label_column, seed)
        if not vraw.is_file:
            raise DataError(f"validation_dataset: {vraw.name} is split from the training data with `validation`; "
                            "a separate validation set must be a file")
        if vraw.divisor != raw.divisor:
            raise DataError(f"validation_dataset: {vraw.where} is scaled by 1/{vraw.divisor:g} on load but "
                            f"{raw.where} by 1/{raw.divisor:g}; expected the same kind of source")
        extra["val"] = (vraw.where, "", *_check_pair(vraw.where, "", vraw.X, vraw.y))
    elif raw.X_val is not None:
        extra["val"] = (raw.where, "_val", *_check_pair(raw.where, "_val", raw.X_val, raw.y_val))
    if raw.X_test is not None:
        extra["test"] = (raw.where, "_test", *_check_pair(raw.where, "_test", raw.X_test, raw.y_test))
    if label_column is not None and not any(w.lower().endswith((".csv", ".csv.gz"))
                                            for w in [raw.where] + [e[0] for e in extra.values()]):
        raise DataError(f"label_column: only .csv sources have columns; {raw.where} is not one")
    for where, suffix, Xe, _ in extra.values():
        if Xe.shape[1] != X.shape[1]:
            raise DataError(f"{where}: X{suffix}: {Xe.shape[1]} features, but the training data "
                            f"({raw.where}) has {X.shape[1]}; expected the same features")
    return extra


def _split(where, X, y, extra, val_frac, test_frac, seed) -> dict:
    """train/val/test (X, y): fractions of one seeded permutation, or the given splits."""
    n = len(X)
    n_test = 0 if "test" in extra else _rows(test_frac, n)
    n_val = 0 if "val" in extra else _rows(val_frac, n)
    if n_test and n_val and val_frac + test_frac >= 1.0:
        raise DataError(f"validation, test: {val_frac:g} + {test_frac:g} leaves nothing to train on; "
                        "expected a sum below 1")
    if n - n_test - n_val < 1:
        raise DataError(f"validation, test: {where} has {n} rows; {n_val} for validation and {n_test} for "
                        "test leave none to train on; expected smaller fractions")
    splits = {"train": (X, y), "val": (None, None), "test": (None, None)}
    if n_test or n_val:
        perm = np.random.default_rng(seed).permutation(n)
        # Sorted indices keep each split in file order: rows are easy to find in the source.
        parts = {"test": perm[:n_test], "val": perm[n_test:n_test + n_val], "train": perm[n_test + n_val:]}
        parts = {k: np.sort(idx) for k, idx in parts.items() if len(idx)}
        splits.update(_split_rows(X, y, parts))
    for k, (_, _, Xe, ye) in extra.items():
        splits[k] = (Xe, ye)
    return splits


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
    for start in range(0, len(rows), _SPLIT_ROWS):
        src = rows[start:start + _SPLIT_ROWS]
        X[to + start:to + start + len(src)] = X[src]


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
            _check_overflow(wheres[k], f"X{suffix}", Xs, fits)
            _check_overflow(wheres[k], f"y{suffix}", ys, fits)
        out[k] = (Xs, ys)
    return out


# -- parameters ------------------------------------------------------------------------


def _dtype(dtype) -> np.dtype:
    return check_dtype(dtype)


def _output(output) -> str:
    key = str(output).strip().lower()
    if key not in OUTPUTS:
        raise DataError(f"output: expected one of {', '.join(OUTPUTS)}, got {output!r}")
    return key


def _fraction(field: str, value) -> float:
    if value is None:
        return 0.0
    return check_scalar(value, field, float, min_val=0, max_val=1, include_boundaries="left",
                        expected="a fraction in [0, 1)")


def _n_outputs(n_outputs, output: str) -> int | None:
    if n_outputs is None:
        return None
    n_outputs = check_scalar(n_outputs, "n_outputs", int, min_val=1)
    if output == "softmax" and n_outputs < 2:
        raise DataError(f"n_outputs: a softmax output needs at least 2 units (classes), got {n_outputs}")
    if output == "sigmoid" and n_outputs != 1:
        raise DataError(f"n_outputs: a sigmoid output has exactly 1 unit, got {n_outputs}")
    return int(n_outputs)


def _seed(seed) -> int:
    return check_scalar(seed, "seed", int, min_val=0, expected="a non-negative integer")


def _label_column_names(label_column) -> list | None:
    if label_column is None:
        return None
    names = [label_column] if isinstance(label_column, str) else label_column
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(c, str) and c for c in names):
        raise DataError(f"label_column: expected a column name (or a list of names), got {label_column!r}")
    return list(names)


def _rows(fraction: float, n: int) -> int:
    # A non-zero fraction always gets at least one row: "validation = 0.01" on 50 rows
    # should still validate, not silently skip.
    return 0 if fraction == 0.0 else max(1, int(round(fraction * n)))


# -- sources ---------------------------------------------------------------------------


def builtin_source(source) -> bool:
    """A source that names no file: exactly "digits", or the synthetic: grammar. `_load` reads
    these without opening any path (a bad synthetic: source is an error, never a file name), so
    the service may pass them unconfined; everything else is a path."""
    text = str(source).strip()
    return text == "digits" or text.startswith("synthetic:")


def _load(source, field: str, label_column, seed: int) -> _Raw:
    if not isinstance(source, (str, Path)):
        raise DataError(f"{field}: expected a source string, got {source!r}")
    text = str(source).strip()
    forms = "; ".join(SOURCE_FORMS)
    if builtin_source(text):
        return _load_digits() if text == "digits" else _load_synthetic(text, field, seed)
    if "," in text:
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 2 or not all(parts):
            raise DataError(f"{field}: {text!r}: a comma-separated source is an IDX pair 'IMAGES,LABELS'; "
                             f"got {len(parts)} parts")
        return _load_idx(Path(parts[0]), Path(parts[1]))
    path = Path(text)
    lower = path.name.lower()
    if lower.endswith(".npz"):
        return _load_npz(path)
    if lower.endswith((".csv", ".csv.gz")):
        return _load_csv(path, label_column)
    if IDX_NAME.search(lower.removesuffix(".gz")):
        return _load_idx(path, None)
    raise DataError(f"{field}: unknown source {text!r}; expected one of: {forms}")


def _exists(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")


def _load_digits() -> _Raw:
    try:
        from sklearn.datasets import load_digits  # noqa: PLC0415 - `import memtrain` stays free of sklearn
    except ImportError:
        raise DataError("dataset: 'digits' is scikit-learn's bundled data set and scikit-learn is not "
                         "installed; expected `pip install scikit-learn`") from None
    X, y = load_digits(return_X_y=True)
    # Pixel intensities are 0..16 in this data set.
    return _Raw("digits", "digits", X, y, divisor=16.0, is_file=False)


def _load_synthetic(text: str, field: str, seed: int) -> _Raw:
    compact = re.sub(r"\s+", "", text)
    m = _SYNTHETIC.fullmatch(compact)
    if not m or m.group(1) not in ("classification", "regression"):
        raise DataError(f"{field}: {text!r}: expected synthetic:classification(n, d, classes) or "
                         "synthetic:regression(n, d, outputs)")
    kind = m.group(1)
    names = ("n", "d", "classes" if kind == "classification" else "outputs")
    args = m.group(2).split(",") if m.group(2) else []
    form = f"synthetic:{kind}({', '.join(names)})"
    if len(args) != 3:
        raise DataError(f"{field}: {text!r}: {form} takes 3 integers, got {len(args)}")
    values = []
    for name, a in zip(names, args):
        if not re.fullmatch(r"\+?\d+", a):
            raise DataError(f"{field}: {text!r}: {name} must be a positive integer, got {a!r}")
        values.append(int(a))
    n, d, k = values
    for name, v, low in zip(names, values, (1, 1, 2 if kind == "classification" else 1)):
        if v < low:
            raise DataError(f"{field}: {text!r}: {name} must be at least {low}, got {v}")
    _check_synthetic_fits(text, field, n, d, k)
    # Its own stream, apart from the split's default_rng(seed). Samples are drawn in
    # float32 whatever the model dtype, so float16/32/64 runs see the same data.
    rng = np.random.default_rng((seed, 1))
    if kind == "classification":
        # Gaussian blobs with unit noise; centres spread so neighbours sit >= ~4 noise
        # standard deviations apart even for small d: learnable, not trivially so in 2-D.
        spread = max(1.0, 3.0 / np.sqrt(d))
        centres = rng.normal(0.0, spread, size=(k, d)).astype(np.float32)
        y = np.arange(n) % k  # balanced: every class present once n >= classes
        rng.shuffle(y)
        X = rng.standard_normal((n, d), dtype=np.float32)
        X += centres[y]
    else:
        # A random linear teacher scaled to unit-variance targets, plus 10% noise (R^2 ~ 0.99).
        X = rng.standard_normal((n, d), dtype=np.float32)
        W = (rng.standard_normal((d, k)) / np.sqrt(d)).astype(np.float32)
        y = X @ W
        y += np.float32(0.1) * rng.standard_normal((n, k), dtype=np.float32)
    name = f"synthetic:{kind}({n},{d},{k})"
    return _Raw(name, name, X, y, is_file=False)


def _check_synthetic_fits(text, field, n, d, k) -> None:
    """Before drawing: the float32 features, their temporary, the labels (int64 or
    float32 targets) must fit the memory this process can get, or one clear error."""
    from memtrain.memory.budget import cpu_free  # noqa: PLC0415
    from memtrain.units import format_bytes  # noqa: PLC0415

    need = n * d * 4 * 2 + n * max(8, 4 * k)
    free, source = cpu_free()
    if need > free:
        raise DataError(f"{field}: {text!r} needs {format_bytes(need)} ({need:,} B) to generate but "
                        f"{format_bytes(free)} ({free:,} B) is available ({source}); the largest n that fits is "
                        f"{free // (d * 8 + max(8, 4 * k)):,}")


# A .npz whose arrays declare more than this is counted from its headers at planning time
# (memtrain serve's submission) instead of being loaded just to count its rows.
HEADER_ROWS_ABOVE = 64 * 1024**2


def npz_headers(path, where: str | None = None) -> dict:
    """{array name: (shape, dtype)} from each member's .npy header, nothing decompressed beyond
    the headers. A header whose shape does not match the bytes its member holds (a damaged file,
    or one declaring 10**9 rows it does not have) is one DataError, before np.load would allocate
    the declared shape."""
    where = where or str(path)
    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                    held = info.file_size - f.tell()
                key = info.filename[:-4]
                if dtype.hasobject:
                    continue  # pickled: np.load refuses it (allow_pickle=False), with its own message
                declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if declared != held:
                    raise DataError(f"{where}: {key}: its header declares shape {shape} {dtype} ({declared:,} B) but "
                                    f"the archive holds {held:,} B of it; expected a complete numeric array")
                out[key] = (tuple(int(n) for n in shape), dtype)
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{where}: file cannot be read as .npz ({_reason(exc)})") from None
    return out


def header_rows(source, *, dtype="float32", output="softmax", validation=0.2, test=0.0, validation_source=None,
                above: int = HEADER_ROWS_ABOVE) -> tuple | None:
    """(features, training rows, validation rows, bytes of the training and validation arrays as
    load_dataset lays them out) of a .npz source holding more than `above` bytes, from its
    headers alone; None for any other source (the caller loads it, which checks its values too)."""
    text = str(source).strip() if isinstance(source, (str, Path)) else ""
    if not text.lower().endswith(".npz") or validation_source is not None or not Path(text).is_file():
        return None
    heads = npz_headers(text)
    if "X" not in heads or "y" not in heads:
        return None  # load_dataset says what is missing
    declared = sum(int(np.prod(shape, dtype=object)) * dt.itemsize for shape, dt in heads.values())
    (x_shape, _), (y_shape, _) = heads["X"], heads["y"]
    if declared <= above or len(x_shape) < 2 or len(y_shape) not in (1, 2) or x_shape[0] != y_shape[0]:
        return None
    n, features = x_shape[0], int(np.prod(x_shape[1:]))
    n_test = 0 if "X_test" in heads else _rows(_fraction("test", test), n)
    n_val = heads["X_val"][0][0] if "X_val" in heads else _rows(_fraction("validation", validation), n)
    n_train = n - n_test - (0 if "X_val" in heads else n_val)
    if n_train < 1:
        return None  # load_dataset says why
    item = _dtype(dtype).itemsize
    label = {"softmax": 8, "sigmoid": item}.get(_output(output), item * (y_shape[1] if len(y_shape) == 2 else 1))
    return features, n_train, n_val, (n_train + n_val) * (features * item + label)


def _check_npz_fits(where: str, headers: dict) -> None:
    """Before decompressing anything: the arrays as declared must fit the memory this process can get
    (a 1 MB file may hold 1 GB of zeros)."""
    from memtrain.memory.budget import cpu_free  # noqa: PLC0415
    from memtrain.units import format_bytes  # noqa: PLC0415

    need = sum(int(np.prod(shape, dtype=object)) * dt.itemsize for shape, dt in headers.values())
    free, source = cpu_free()
    if need > free:
        raise DataError(f"{where}: its arrays hold {format_bytes(need)} ({need:,} B) decompressed but "
                        f"{format_bytes(free)} ({free:,} B) is available ({source}); expected a smaller data set")


def _load_npz(path: Path) -> _Raw:
    _exists(path)
    where = str(path)
    _check_npz_fits(where, npz_headers(path, where))
    arrays = {}
    with _open_npz(path, where, "arrays X and y") as z:
        present = set(z.files)
        if not {"X", "y"} <= present:
            raise DataError(f"{where}: arrays: expected X and y, found {', '.join(sorted(present)) or 'none'}",
                            public=f"{where}: arrays: expected X and y, found {len(present)} other array(s)")
        for key in ("X", "y", "X_val", "y_val", "X_test", "y_test"):
            if key in present:
                arrays[key] = _npz_array(z, where, key)
    for a, b in (("X_val", "y_val"), ("X_test", "y_test")):
        if (a in arrays) != (b in arrays):
            have, missing = (a, b) if a in arrays else (b, a)
            raise DataError(f"{where}: {missing}: {have} is present without it; expected both or neither")
    return _Raw(path.name, where, **arrays)


def _open_npz(path: Path, where: str, expected: str):
    """The .npz archive (a context manager), or one line naming why it is not one."""
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{where}: file cannot be read as .npz ({_reason(exc)})") from None
    if not hasattr(z, "files"):  # np.load reads a .npy file given any name
        raise DataError(f"{where}: file holds a single array, not an .npz archive; expected {expected}")
    return z


def _npz_array(z, where: str, key: str) -> np.ndarray:
    try:
        return z[key]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{where}: {key}: cannot be read ({_reason(exc)}); expected a numeric array") from None


def _load_csv(path: Path, label_column) -> _Raw:
    _exists(path)
    where = str(path)
    names = _label_column_names(label_column)

    def check(header):
        if names is None:
            raise DataError(f"{where}: label_column: a .csv source needs the label column's name; "
                            f"columns are {', '.join(header)}",
                            public=f"{where}: label_column: a .csv source needs the label column's name")
        for c in names:
            if c not in header:
                raise DataError(f"{where}: label_column: {c!r} not found; columns are {', '.join(header)}",
                                public=f"{where}: label_column: {c!r} not found among its {len(header)} columns")

    header, table = _read_csv(path, where, check)
    label_idx = [header.index(c) for c in names]
    feature_idx = [i for i in range(len(header)) if i not in label_idx]
    y = table[:, label_idx[0]] if len(names) == 1 else table[:, label_idx]
    return _Raw(path.name, where, np.ascontiguousarray(table[:, feature_idx]), np.ascontiguousarray(y))


def _read_csv(path: Path, where: str, check_header) -> tuple:
    """(header, table) of a CSV file (gzip or not); `check_header(header)` raises for a
    header that lacks what the caller needs, before any row is parsed."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        # utf-8-sig: spreadsheets often write a byte-order mark before the header
        with opener(path, "rt", newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{where}: header row: file is empty; expected a header row naming the columns")
            header = [h.strip() for h in header]
            _check_header(where, header)
            check_header(header)
            table = _csv_fast(path, reader.line_num, len(header))
            if table is None:
                table = _csv_table(where, reader, header)
    except (OSError, UnicodeDecodeError, csv.Error, EOFError, zlib.error) as exc:
        raise DataError(f"{where}: file cannot be read as CSV ({_reason(exc)})") from None
    return header, table


def _csv_fast(path: Path, header_lines: int, k: int) -> np.ndarray | None:
    """NumPy's C parser (about 2.5x the csv module's speed), or None on any trouble: the
    slow reader then names the line and column at fault."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Empty input file": the slow path reports no rows
            table = np.loadtxt(path, dtype=np.float64, delimiter=",", skiprows=header_lines, ndmin=2,
                               comments=None, quotechar='"', encoding="utf-8")
    except (ValueError, OSError, UnicodeDecodeError, EOFError, zlib.error):
        return None
    return table if table.shape[1] == k and len(table) else None


def _csv_table(where: str, reader, header: list) -> np.ndarray:
    k = len(header)
    chunks, rows, lines = [], [], []
    for row in reader:
        if not row:  # blank line
            continue
        if len(row) != k:
            raise DataError(f"{where}: line {reader.line_num}: {len(row)} columns; expected {k} as in the header row")
        rows.append(row)
        lines.append(reader.line_num)
        if len(rows) == _CSV_CHUNK:
            chunks.append(_csv_numbers(where, header, rows, lines))
            rows, lines = [], []
    if rows:
        chunks.append(_csv_numbers(where, header, rows, lines))
    return np.concatenate(chunks) if chunks else np.empty((0, k))


def _check_header(where: str, header: list) -> None:
    seen = set()
    for h in header:
        if not h:
            raise DataError(f"{where}: header row: a column has no name; expected a name for every column")
        if h in seen:
            raise DataError(f"{where}: header row: column {h!r} appears twice; expected unique names",
                            public=f"{where}: header row: a column name appears twice; expected unique names")
        seen.add(h)
    # The commonest CSV mistake: no header, so the first data row would be eaten as names.
    if all(_is_number(h) for h in header):
        raise DataError(f"{where}: header row: the first line is all numbers; expected a header row "
                         "naming the columns")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_numbers(where: str, header: list, rows: list, lines: list) -> np.ndarray:
    try:
        return np.array(rows, dtype=np.float64)
    except ValueError:
        pass
    for row, line in zip(rows, lines):  # slow path only to name the bad cell
        for name, cell in zip(header, row):
            if not _is_number(cell):
                raise DataError(f"{where}: line {line}, column {name!r}: {cell!r} is not a number; "
                                "expected numeric values",
                                public=f"{where}: line {line}: a value is not a number; expected numeric values")
    return np.array([[float(c) for c in row] for row in rows], dtype=np.float64)


def _load_idx(images: Path, labels: Path | None) -> _Raw:
    _exists(images)
    if labels is None:
        labels = idx_labels_path(images)
    _exists(labels)
    X = _read_idx(images)
    y = _read_idx(labels)
    if X.ndim < 2:
        raise DataError(f"{images}: dims: {X.ndim}-D; expected an images file (idx3: count, rows, cols)")
    if y.ndim != 1:
        raise DataError(f"{labels}: dims: {y.ndim}-D {y.shape}; expected a labels file (idx1: count)")
    if len(X) != len(y):
        raise DataError(f"{labels}: y: {len(y)} labels, but {images.name} has {len(X)} images; "
                         "expected one label per image")
    # Pixels are 0..255; the caller's checks see them flattened, as model inputs.
    return _Raw(images.name, str(images), X.reshape(len(X), -1), y, divisor=255.0)


def idx_labels_path(images: Path) -> Path:
    """The labels file an IDX images file is read with when given alone (found beside it)."""
    m = re.search(r"images([.-])idx3", images.name)
    if not m:
        raise DataError(f"{images}: labels: cannot find the labels file from this name (expected "
                         "...-images-idx3-ubyte); give the pair as 'IMAGES,LABELS'")
    stem = images.name[:m.start()] + "labels" + m.group(1) + "idx1" + images.name[m.end():]
    plain = stem.removesuffix(".gz")
    for name in (stem, plain, plain + ".gz"):  # images and labels need not share compression
        if (images.parent / name).is_file():
            return images.parent / name
    raise DataError(f"{images}: labels: expected {plain}[.gz] beside it, not found; "
                     "or give the pair as 'IMAGES,LABELS'")


def _read_idx(path: Path) -> np.ndarray:
    where = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{where}: file cannot be read ({_reason(exc)})") from None
    if data[:2] == b"\x1f\x8b":  # gzip, whatever the name says
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{where}: gzip: truncated or corrupt ({_reason(exc)})") from None
    if len(data) < 4:
        raise DataError(f"{where}: magic: file is {len(data)} bytes; expected an IDX file "
                         "(4-byte magic 0x00 0x00 type ndims)")
    magic = " ".join(f"0x{b:02X}" for b in data[:4])
    if data[0] or data[1] or data[3] == 0:
        raise DataError(f"{where}: magic: got {magic}; expected 0x00 0x00 0x08 0x0N (an IDX file of N >= 1 dims)",
                        public=f"{where}: magic: expected 0x00 0x00 0x08 0x0N (an IDX file of N >= 1 dims)")
    code, ndim = data[2], data[3]
    if code != 0x08:
        kind = _IDX_TYPES.get(code, "unknown")
        raise DataError(f"{where}: magic: element type 0x{code:02X} ({kind}) is not supported; "
                         "expected 0x08 (unsigned byte)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{where}: size: {len(data)} bytes, shorter than the {header}-byte header "
                         f"for {ndim} dims; expected a complete IDX file")
    dims = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "trailing bytes"
        raise DataError(f"{where}: size: {len(data):,} bytes, the header's {'x'.join(map(str, dims))} needs "
                         f"{expected:,} ({what}); expected a complete IDX file")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


# -- checks ----------------------------------------------------------------------------


def _check_pair(where: str, suffix: str, X, y):
    """(X as (n, features), y) after shape, dtype, NaN/Inf and row-count checks."""
    X, y = np.asarray(X), np.asarray(y)
    fx, fy = f"X{suffix}", f"y{suffix}"
    for field, a in ((fx, X), (fy, y)):
        if a.dtype.kind not in "biuf":
            raise DataError(f"{where}: {field}: dtype {a.dtype} is not numeric; expected integers or floats")
    if X.ndim < 2:
        raise DataError(f"{where}: {fx}: shape {X.shape}; expected a 2-D array (rows, features)")
    if X.ndim > 2:  # images (n, h, w): one row of h*w features each
        X = X.reshape(len(X), -1)
    if len(X) == 0:
        raise DataError(f"{where}: {fx}: no rows (shape {X.shape}); expected at least one")
    if X.shape[1] == 0:
        raise DataError(f"{where}: {fx}: no feature columns (shape {X.shape}); expected at least one")
    if y.ndim == 0 or len(y) != len(X):
        got = "a scalar" if y.ndim == 0 else f"{len(y)} rows"
        raise DataError(f"{where}: {fy}: {got}, but {fx} has {len(X)}; expected one label per row")
    _check_finite(where, fx, X)
    _check_finite(where, fy, y)
    return X, y


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


def _check_finite(where: str, field: str, a: np.ndarray) -> None:
    found = _nonfinite(a)
    if found:
        n_nan = int(np.isnan(a).sum())
        raise DataError(f"{where}: {field}: {n_nan} NaN and {found[0] - n_nan} Inf values (first in row "
                         f"{found[1]}); expected finite numbers")


def _check_overflow(where: str, field: str, a: np.ndarray, how: str) -> None:
    """After a cast from finite data, any Inf is a value too large for the new dtype."""
    found = _nonfinite(a)
    if found:
        raise DataError(f"{where}: {field}: {found[0]} values overflow {a.dtype.name} when {how} (first in "
                         f"row {found[1]}); expected magnitudes below {np.finfo(a.dtype).max:.5g}")


def _labels(where: str, field: str, y: np.ndarray, output: str) -> np.ndarray:
    """Labels in the output unit's layout; class ranges are checked later, over every split."""
    if output in ("softmax", "sigmoid"):
        if not (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
            raise DataError(f"{where}: {field}: shape {y.shape}; expected class labels of shape (n,) "
                             f"for a {output} output")
        y = y.reshape(-1)
        # Bound first: casting 1e30 to int64 is undefined, and no model has 2**31 classes.
        huge = np.flatnonzero(np.abs(y) >= 2**31)
        if len(huge):
            raise DataError(f"{where}: {field}: class label {y[huge[0]].item()!r} in row {huge[0]} is out of range; "
                            "expected class indices below 2**31",
                            public=f"{where}: {field}: the class label in row {huge[0]} is out of range; "
                            "expected class indices below 2**31")
        if y.dtype.kind == "f":
            frac = np.flatnonzero(y != np.round(y))
            if len(frac):
                raise DataError(f"{where}: {field}: {len(frac)} non-integer class labels (first {y[frac[0]].item()!r} "
                                f"in row {frac[0]}); expected whole numbers for a {output} output",
                                public=f"{where}: {field}: {len(frac)} non-integer class labels (first in row "
                                f"{frac[0]}); expected whole numbers for a {output} output")
        if output == "sigmoid":
            bad = np.flatnonzero((y != 0) & (y != 1))
            if len(bad):
                raise DataError(f"{where}: {field}: label {y[bad[0]].item()!r} in row {bad[0]}; a sigmoid output "
                                "expects labels 0 or 1",
                                public=f"{where}: {field}: the label in row {bad[0]} is not 0 or 1; a sigmoid output "
                                "expects labels 0 or 1")
            return y.reshape(-1, 1)
        return y.astype(np.int64)
    if y.ndim > 2:
        raise DataError(f"{where}: {field}: shape {y.shape}; expected targets of shape (n,) or (n, k)")
    return y.reshape(len(y), -1)


def _label_width(all_y: list, output: str, n_outputs: int | None) -> int:
    """Output units the labels need, checked against the model's n_outputs where given."""
    if output == "sigmoid":
        return 1
    if output == "linear":
        width = all_y[0][2].shape[1]
        for where, field, y in all_y:
            if n_outputs is not None and y.shape[1] != n_outputs:
                raise DataError(f"{where}: {field}: {y.shape[1]} target columns; expected {n_outputs} "
                                 "to match the model's outputs (n_outputs)")
            if y.shape[1] != width:
                raise DataError(f"{where}: {field}: {y.shape[1]} target columns; expected {width} "
                                 "as in the training data")
        return width
    classes = n_outputs if n_outputs is not None else max(int(y.max()) for _, _, y in all_y) + 1
    for where, field, y in all_y:
        bad = np.flatnonzero((y < 0) | (y >= classes))
        if len(bad):
            # With n_outputs unknown only a negative label can land here.
            limit = f"the model's {n_outputs} output units" if n_outputs is not None else "class indices"
            raise DataError(f"{where}: {field}: {len(bad)} labels out of range (first {int(y[bad[0]])} in row "
                            f"{bad[0]}); expected integers in [0, {classes - 1}] for {limit}",
                            public=f"{where}: {field}: {len(bad)} labels out of range (first in row {bad[0]}); "
                            f"expected integers in [0, {classes - 1}] for {limit}")
    return classes


def _as_float(where: str, field: str, X: np.ndarray, work: np.dtype, divisor: float) -> np.ndarray:
    if divisor != 1.0:
        out = np.divide(X, divisor, dtype=work)  # one pass, no float64 copy of a uint8 image set
    else:
        with np.errstate(over="ignore"):  # reported below, with the field and row
            out = X.astype(work, copy=False)
        if out is X and not X.flags.writeable:  # np.frombuffer views: standardizing writes in place
            out = X.copy()
    if X.dtype.kind == "f" and X.dtype.itemsize > work.itemsize:  # float64 above 3.4e38 cannot be float32
        _check_overflow(where, field, out, "converted")
    return out


def _statistics(X: np.ndarray):
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


def _standardize(X: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    if not X.flags.writeable:
        X = X.copy()
    with np.errstate(over="ignore"):  # the caller reports values that overflow
        X -= mean.astype(X.dtype)
        X /= std.astype(X.dtype)
    return X


# -- inputs of a saved model (memtrain evaluate / predict) ---------------------------------


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
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise DataError(f"{where}: X: dtype {X.dtype} is not numeric; expected integers or floats")
    if X.ndim < 2:
        raise DataError(f"{where}: X: shape {X.shape}; expected a 2-D array (rows, features)")
    X = X.reshape(len(X), -1)  # images (n, h, w): one row of h*w features each
    if len(X) == 0:
        raise DataError(f"{where}: X: no rows (shape {X.shape}); expected at least one")
    _check_finite(where, "X", X)
    return X.astype(np.float64, copy=False)


def _npz_features(path: Path, where: str) -> np.ndarray:
    if not path.exists():
        raise DataError(f"{where}: file not found")
    with _open_npz(path, where, "an array X") as z:
        if "X" not in z.files:
            raise DataError(f"{where}: arrays: expected X, found {', '.join(sorted(z.files)) or 'none'}")
        return _npz_array(z, where, "X")


def _csv_features(path: Path, where: str, label_column) -> np.ndarray:
    if not path.exists():
        raise DataError(f"{where}: file not found")

    def check(header):
        if label_column is not None and label_column not in header:
            raise DataError(f"{where}: --label-column: {label_column!r} not found; columns are "
                            f"{', '.join(header)}")

    header, table = _read_csv(path, where, check)
    keep = [i for i, h in enumerate(header) if h != label_column]
    return np.ascontiguousarray(table[:, keep])
