"""A source string -> the reader of its format (built-in sources by exact name or grammar)."""

from __future__ import annotations

from pathlib import Path

from memtrain.data.dataset import Raw
from memtrain.errors import DataError

# Each reader is imported by the branch that uses it: a job reads one source, and a small job's
# start-up (issue 22) should not pay for the zip, CSV and IDX readers it never calls.

SOURCE_FORMS = (
    "digits",
    "synthetic:classification(n, d, classes)",
    "synthetic:regression(n, d, outputs)",
    "FILE.npz (arrays X, y; optional X_val/y_val, X_test/y_test)",
    "FILE.csv[.gz] (header row; label_column names the labels)",
    "IDX images file (train-images-idx3-ubyte[.gz], labels found beside it)",
    "IMAGES,LABELS (a pair of IDX files)",
)


def builtin_source(source) -> bool:
    """A source that names no file: exactly "digits", or the synthetic: grammar. `load_source` reads
    these without opening any path (a bad synthetic: source is an error, never a file name), so
    the service may pass them unconfined; everything else is a path."""
    text = str(source).strip()
    return text == "digits" or text.startswith("synthetic:")


def load_source(source, field: str, label_column, seed: int) -> Raw:
    if not isinstance(source, (str, Path)):
        raise DataError(f"{field}: expected a source string, got {source!r}")
    text = str(source).strip()
    if text == "digits":
        from memtrain.data.digits import load_digits  # noqa: PLC0415 - see above

        return load_digits()
    if builtin_source(text):
        from memtrain.data.synthetic import load_synthetic  # noqa: PLC0415 - see above

        return load_synthetic(text, field, seed)
    return _load_file(text, field, label_column)


def _load_file(text: str, field: str, label_column) -> Raw:
    from memtrain.data.csvfile import load_csv  # noqa: PLC0415 - see above
    from memtrain.data.idx import IDX_NAME, load_idx  # noqa: PLC0415 - see above
    from memtrain.data.npzfile import load_npz  # noqa: PLC0415 - see above

    forms = "; ".join(SOURCE_FORMS)
    if "," in text:
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 2 or not all(parts):
            raise DataError(f"{field}: {text!r}: a comma-separated source is an IDX pair 'IMAGES,LABELS'; "
                             f"got {len(parts)} parts")
        return load_idx(Path(parts[0]), Path(parts[1]))
    path = Path(text)
    lower = path.name.lower()
    if lower.endswith(".npz"):
        return load_npz(path)
    if lower.endswith((".csv", ".csv.gz")):
        return load_csv(path, label_column)
    if IDX_NAME.search(lower.removesuffix(".gz")):
        return load_idx(path, None)
    raise DataError(f"{field}: unknown source {text!r}; expected one of: {forms}")
