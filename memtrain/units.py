"""Byte sizes as people write them: "16GiB" (1024-based) and "16GB" (1000-based) both accepted, and distinguished."""

from __future__ import annotations

import re

from memtrain.errors import ConfigError

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text, field: str = "memory", *, allow_zero: bool = False) -> int:
    """ "16GiB" -> 17179869184, "16GB" -> 16000000000, "512MiB", "1e9", "2048" (bytes)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        m = _RE.match(str(text))
        if not m or m.group(2).lower() not in _UNITS:
            raise ConfigError(
                f"{field}: expected a size like 16GiB, 16GB, 512MiB or a number of bytes, got {text!r}"
            )
        value, unit = float(m.group(1)), m.group(2).lower()
    n = int(value * _UNITS[unit])
    if n < 0 or (n == 0 and not allow_zero):
        raise ConfigError(f"{field}: expected a {'non-negative' if allow_zero else 'positive'} size, got {text!r}")
    return n


def format_bytes(n: float) -> str:
    """1024-based units, labelled so: 1536 -> '1.50 KiB'."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# Bounds on every count a user gives. Bytes are computed in Python ints (never
# NumPy's int64, which wraps to negative), and these keep the numbers meaningful:
# no device holds a 2**40-row batch, and a layer wider than 2**31 - 1 units is
# beyond what one array dimension of CuPy's kernels indexes.
MAX_BATCH = 1 << 40
MAX_WIDTH = (1 << 31) - 1
