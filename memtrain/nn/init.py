"""Weight initialisers (course: initialisation), filled in place, seeded.

- simple:  W ~ U[-1/sqrt(n), 1/sqrt(n)], n = fan-in (often with tanh)
- glorot:  W ~ U[-b, b], b = sqrt(6) / sqrt(fan_in + fan_out)
- he:      W ~ N(0, 2/n), i.e. std sqrt(2/n). The course slide writes
           N[0, 2/sqrt(n)]; we follow He et al. (2015): variance 2/n.
Draws are float64 in chunks of 4096 and cast into the parameter view, so
initialisation needs no temporary the size of a layer, and a float16 model
starts from the rounded float64 values of the float32/float64 one.
"""

from __future__ import annotations

import math

import numpy as np

from memtrain.backend import array_module
from memtrain.errors import ConfigError

INITS = ("auto", "glorot", "simple", "he")
_RELU_LIKE = {"relu", "leaky_relu", "prelu", "abs", "gelu", "swish", "mish"}
_CHUNK = 4096


def resolve_init(init: str, activation_name: str) -> str:
    if init not in INITS:
        raise ConfigError(f"init: unknown {init!r}; expected one of {', '.join(INITS)}")
    if init == "auto":
        return "he" if activation_name in _RELU_LIKE else "glorot"
    return init


def fill_weights(w, fan_in: int, fan_out: int, init: str, rng: np.random.Generator) -> None:
    """Fill the 2-D view `w` (numpy or cupy) in place."""
    flat = w.reshape(-1)
    n = flat.size
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        if init == "he":
            chunk = rng.standard_normal(stop - start)
            chunk *= math.sqrt(2.0 / fan_in)
        else:
            bound = 1.0 / math.sqrt(fan_in) if init == "simple" else math.sqrt(6.0 / (fan_in + fan_out))
            chunk = rng.random(stop - start)
            chunk *= 2.0 * bound
            chunk -= bound
        flat[start:stop] = chunk if isinstance(flat, np.ndarray) else _to_device(flat, chunk)


def _to_device(flat, chunk):
    return array_module(flat).asarray(chunk)
