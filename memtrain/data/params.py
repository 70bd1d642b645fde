"""The load's own parameters (output unit, fractions, seed, label columns), each checked once."""

from __future__ import annotations

from memtrain.errors import DataError
from memtrain.validate import check_scalar

# The output units whose label layout this package builds (class indices, 0/1 column,
# real targets); tests/test_data.py checks they are memtrain.nn.losses.OUTPUTS.
OUTPUTS = ("softmax", "sigmoid", "linear")


def check_output(output) -> str:
    key = str(output).strip().lower()
    if key not in OUTPUTS:
        raise DataError(f"output: expected one of {', '.join(OUTPUTS)}, got {output!r}")
    return key


def check_fraction(field: str, value) -> float:
    if value is None:
        return 0.0
    return check_scalar(value, field, float, min_val=0, max_val=1, include_boundaries="left",
                        expected="a fraction in [0, 1)")


def check_n_outputs(n_outputs, output: str) -> int | None:
    if n_outputs is None:
        return None
    n_outputs = check_scalar(n_outputs, "n_outputs", int, min_val=1)
    if output == "softmax" and n_outputs < 2:
        raise DataError(f"n_outputs: a softmax output needs at least 2 units (classes), got {n_outputs}")
    if output == "sigmoid" and n_outputs != 1:
        raise DataError(f"n_outputs: a sigmoid output has exactly 1 unit, got {n_outputs}")
    return int(n_outputs)


def check_seed(seed) -> int:
    return check_scalar(seed, "seed", int, min_val=0, expected="a non-negative integer")


def label_columns(label_column) -> list | None:
    if label_column is None:
        return None
    names = [label_column] if isinstance(label_column, str) else label_column
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(c, str) and c for c in names):
        raise DataError(f"label_column: expected a column name (or a list of names), got {label_column!r}")
    return list(names)


def split_count(fraction: float, n: int) -> int:
    # A non-zero fraction always gets at least one row: "validation = 0.01" on 50 rows
    # should still validate, not silently skip.
    return 0 if fraction == 0.0 else max(1, int(round(fraction * n)))
