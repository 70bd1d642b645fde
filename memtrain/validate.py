"""One helper checks every number a user can give (scikit-learn's `check_scalar`).

Every message has the same shape, "NAME: expected ..., got VALUE", and `True`
is never an integer (nor a float): a TOML `patience = true` is a mistake, not 1.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from memtrain.errors import ConfigError

DTYPES = ("float16", "float32", "float64")


def check_scalar(value, name: str, kind=int, *, min_val=None, max_val=None, include_boundaries="both",
                 allow_none: bool = False, expected: str | None = None):
    """`value` as a Python int or float, checked against [min_val, max_val].

    kind: int (integers only, NumPy integers included) or float (any real number,
    finite). include_boundaries: "both", "left", "right" or "neither" (which ends
    of the range are allowed). Raises ConfigError naming `name`."""
    if value is None and allow_none:
        return None
    expected = expected or _kind_text(kind, min_val, max_val, include_boundaries)
    if isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name}: expected {expected}, got {value!r}")
    if kind is int:
        ok = isinstance(value, (numbers.Integral, np.integer))
        v = int(value) if ok else None
    else:
        ok = isinstance(value, (numbers.Real, np.floating, np.integer)) and math.isfinite(float(value))
        v = float(value) if ok else None
    if not ok or not _in_range(v, min_val, max_val, include_boundaries):
        raise ConfigError(f"{name}: expected {expected}, got {value!r}")
    return v


def check_choice(value, name: str, choices):
    """`value` if it is one of `choices`, else ConfigError listing them."""
    if value not in choices:
        raise ConfigError(f"{name}: expected one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def check_dtype(dtype) -> np.dtype:
    """float16, float32 or float64 (a name or a NumPy dtype); anything else names the field."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in DTYPES:
        raise ConfigError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    return dt


def _in_range(v, lo, hi, include) -> bool:
    left = include in ("both", "left")
    right = include in ("both", "right")
    if lo is not None and (v < lo or (v == lo and not left)):
        return False
    return not (hi is not None and (v > hi or (v == hi and not right)))


def _kind_text(kind, lo, hi, include) -> str:
    noun = "an integer" if kind is int else "a number"
    if kind is int and lo == 1 and hi is None:
        return "a positive integer"
    if lo == 0 and hi is None:
        if include in ("both", "left"):
            return f"{noun} >= 0" if kind is int else "a non-negative number"
        return "a positive number"
    if lo is None and hi is None:
        return noun
    lb = "[" if include in ("both", "left") else "("
    rb = "]" if include in ("both", "right") else ")"
    return f"{noun} in {lb}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}{rb}"
