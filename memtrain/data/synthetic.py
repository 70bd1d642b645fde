"""Synthetic benchmark sets: synthetic:classification(n, d, classes), synthetic:regression(n, d, outputs)."""

from __future__ import annotations

import re

import numpy as np

from memtrain.data.dataset import Raw
from memtrain.errors import DataError

_SYNTHETIC = re.compile(r"synthetic:(\w+)\((.*)\)", re.DOTALL)


def load_synthetic(text: str, field: str, seed: int) -> Raw:
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
    return Raw(name, name, X, y, is_file=False)


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
