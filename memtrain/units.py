"""Byte sizes as people write them: "16GiB" (1024-based) and "16GB" (1000-based) both accepted, and distinguished."""

from __future__ import annotations

import math
import re

from memtrain.errors import ConfigError

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
MAX_BYTES = 2**63
_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text, field: str = "memory", *, allow_zero: bool = False) -> int:
    """ "16GiB" -> 17179869184, "16GB" -> 16000000000, "512MiB", "1e9", "2048" (bytes)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = text, ""  # exact: float() would round 2**60 + 1 and overflow on 10**400
    elif isinstance(text, float):
        value, unit = text, ""
    else:
        m = _RE.match(str(text))
        if not m or m.group(2).lower() not in _UNITS:
            raise ConfigError(
                f"{field}: expected a size like 16GiB, 16GB, 512MiB or a number of bytes, got {text!r}"
            )
        value, unit = float(m.group(1)), m.group(2).lower()
    scaled = value * _UNITS[unit]
    # "1e400GiB" is float('inf'), which int() cannot take; past 2**63 no counter or SQLite column holds it
    if (isinstance(scaled, float) and not math.isfinite(scaled)) or scaled >= MAX_BYTES:
        raise ConfigError(f"{field}: expected a size below 8 EiB (2**63 bytes), got {text!r}")
    n = int(scaled)
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
MAX_EPOCHS = 10**6  # far past any course model's training; 10**30 is a typo, not a plan
MAX_DURATION = 366 * 86400.0  # a year: longer run-time bounds are no bound

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(s|m|min|h|d)?\s*$")
_SECONDS = {None: 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(text, field: str) -> float:
    """ "90s", "30m", "2h", "1.5d" or a number of seconds -> seconds, in (0, MAX_DURATION]."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = text, None
    else:
        m = _DURATION.match(str(text))
        value, unit = (float(m.group(1)), m.group(2)) if m else (None, None)
    seconds = value * _SECONDS[unit] if value is not None else None
    if seconds is None or not 0 < seconds <= MAX_DURATION:  # NaN fails the comparison too
        raise ConfigError(f"{field}: expected a duration like 90s, 30m, 2h or 1d (at most 366d), got {text!r}")
    return float(seconds)


def format_duration(seconds: float) -> str:
    """The shortest exact form parse_duration reads back: 7200 -> '2h', 90 -> '90s'."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
