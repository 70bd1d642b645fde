"""ModelSpec: everything about a network that decides its memory, validated.

The parameter layout lives here: one flat vector of P elements holding, per
layer i, W_i (n x k, so z = x W + b as the course's z = W^T x + b), b_i (k)
and, for PReLU hidden layers, alpha_i (k). Gradients and every per-parameter
optimizer slot share this layout.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field

import numpy as np

from memtrain.errors import ConfigError
from memtrain.nn.activations import Activation, activation_from_fields, make_activation
from memtrain.nn.init import INITS, resolve_init
from memtrain.nn.losses import OutputUnit, make_output
from memtrain.units import MAX_WIDTH
from memtrain.validate import DTYPES, check_dtype, check_scalar  # noqa: F401 - DTYPES re-exported

COURSE_DROPOUT = (0.8, 0.5)  # keep probabilities: input, hidden


def parse_dtype(dtype) -> np.dtype:
    """float16, float32 or float64 (a name or a NumPy dtype); anything else names the field."""
    return check_dtype(dtype)


@dataclass(frozen=True)
class ParamGroup:
    """One parameter tensor's place in the flat vector."""

    name: str  # "W1", "b1", "alpha1", ...
    layer: int  # 1-based
    kind: str  # "weight", "bias", "alpha"
    offset: int
    shape: tuple

    @property
    def size(self) -> int:
        return math.prod(int(d) for d in self.shape)

    def view(self, flat):
        return flat[self.offset : self.offset + self.size].reshape(self.shape)


def _parse_dropout(dropout):
    if dropout is None or dropout is False:
        return None
    if dropout is True:
        return COURSE_DROPOUT
    try:
        keep_in, keep_hidden = (float(v) for v in dropout)
    except (TypeError, ValueError):
        raise ConfigError(
            f"dropout: expected True (course keep probabilities 0.8/0.5) or a pair "
            f"(input_keep, hidden_keep), got {dropout!r}"
        ) from None
    for name, p in (("input keep probability", keep_in), ("hidden keep probability", keep_hidden)):
        check_scalar(p, f"dropout: {name}", float, min_val=0, max_val=1, include_boundaries="right")
    if keep_in == 1.0 and keep_hidden == 1.0:
        return None
    return (keep_in, keep_hidden)


@dataclass(frozen=True)
class ModelSpec:
    sizes: tuple
    activation: Activation = field(default_factory=lambda: make_activation("relu"))
    output: OutputUnit = field(default_factory=lambda: make_output("softmax"))
    dropout: tuple | None = None
    init: str = "auto"
    bias_init: float = 0.0
    dtype: np.dtype = np.dtype("float32")
    l1: float = 0.0
    l2: float = 0.0

    @classmethod
    def create(
        cls,
        layer_sizes,
        activation="relu",
        output="softmax",
        dropout=None,
        init="auto",
        bias_init=0.0,
        dtype="float32",
        l1=0.0,
        l2=0.0,
    ) -> "ModelSpec":
        try:
            # check_scalar, not int(): a TOML `[true, 10]` or `[64.5, 10]` is a mistake, not [1, 10] or [64, 10]
            sizes = tuple(check_scalar(s, "layers", int) for s in layer_sizes)
        except (TypeError, ConfigError):
            shown = list(layer_sizes) if isinstance(layer_sizes, tuple) else layer_sizes
            raise ConfigError(f"layers: expected a list of positive integers, got {shown!r}") from None
        if len(sizes) < 2:
            raise ConfigError(f"layers: need at least 2 sizes (inputs and outputs), got {list(sizes)}")
        if any(s <= 0 or s > MAX_WIDTH for s in sizes):
            raise ConfigError(f"layers: every size must be an integer from 1 to {MAX_WIDTH:,}, got {list(sizes)}")
        act = make_activation(activation)
        out = make_output(output)
        if out.name == "softmax" and sizes[-1] < 2:
            raise ConfigError("layers: a softmax output needs at least 2 units (classes)")
        if out.name == "sigmoid" and sizes[-1] != 1:
            raise ConfigError(f"layers: a sigmoid output has exactly 1 unit, got {sizes[-1]}")
        dt = parse_dtype(dtype)
        if init not in INITS:
            raise ConfigError(f"init: unknown {init!r}; expected one of {', '.join(INITS)}")
        for name, v in (("l1", l1), ("l2", l2)):
            if not (float(v) >= 0.0):
                raise ConfigError(f"{name}: expected a non-negative number, got {v!r}")
        return cls(
            sizes=sizes,
            activation=act,
            output=out,
            dropout=_parse_dropout(dropout),
            init=resolve_init(init, act.name),
            bias_init=float(bias_init),
            dtype=dt,
            l1=float(l1),
            l2=float(l2),
        )

    # -- shape facts -------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    @property
    def hidden(self) -> tuple:
        return self.sizes[1:-1]

    @functools.cached_property
    def layout(self) -> tuple:
        # cached (in the instance's __dict__; the frozen fields, eq and hash are untouched):
        # every training step reads it
        groups, offset = [], 0
        for i in range(1, len(self.sizes)):
            n, k = self.sizes[i - 1], self.sizes[i]
            parts = [("W", "weight", (n, k)), ("b", "bias", (k,))]
            if i < self.n_layers and self.activation.params_per_unit:
                parts.append(("alpha", "alpha", (k,)))
            for prefix, kind, shape in parts:
                g = ParamGroup(f"{prefix}{i}", i, kind, offset, shape)
                groups.append(g)
                offset += g.size
        return tuple(groups)

    @property
    def n_params(self) -> int:
        last = self.layout[-1]
        return last.offset + last.size

    def describe(self) -> str:
        drop = "off" if self.dropout is None else f"keep {self.dropout[0]:g}/{self.dropout[1]:g}"
        return (
            f"MLP {'-'.join(map(str, self.sizes))} {self.activation.describe()} -> {self.output.name}, "
            f"{self.dtype.name}, dropout {drop}"
        )

    def fields(self) -> dict:
        """Everything that defines the model, as JSON values (a saved model's identity):
        the activation as its name and exact parameters, not its display text."""
        return {
            "sizes": list(self.sizes),
            "activation": {"name": self.activation.name, "params": self.activation.params()},
            "output": self.output.name,
            "dropout": list(self.dropout) if self.dropout else None,
            "init": self.init,
            "bias_init": self.bias_init,
            "dtype": self.dtype.name,
            "l1": self.l1,
            "l2": self.l2,
        }

    @classmethod
    def from_fields(cls, f: dict) -> "ModelSpec":
        act = f["activation"]
        spec = cls.create(f["sizes"], activation_from_fields(act["name"], act.get("params", {})), f["output"],
                          f.get("dropout"), dtype=f["dtype"], l1=f.get("l1", 0.0), l2=f.get("l2", 0.0),
                          bias_init=f.get("bias_init", 0.0))
        return dataclasses.replace(spec, init=f.get("init", spec.init))  # already resolved when saved

    def identity(self) -> dict:
        """What a checkpoint must match to be resumed into this model."""
        return {
            "sizes": list(self.sizes),
            "activation": self.activation.describe(),
            "output": self.output.name,
            "dtype": self.dtype.name,
            "n_params": self.n_params,
        }
