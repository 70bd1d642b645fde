"""Hidden-unit activations g(z), each with its derivative, computed in place.

Contract (it is what keeps a training step free of hidden temporaries):
- forward(z, out, scratch): writes g(z) into `out`; `z` is left intact.
- backward(z, a, grad, scratch): writes grad * g'(z) (the layer's delta) into
  `z`, where a = g(z) from the forward pass. By the time it runs, backprop has
  already used `a` (for the next layer's weight gradient) and no longer needs
  `z`, so both may be overwritten; `grad` is only read, so its buffer is free
  for the layer below. `scratch` has grad's shape and is only given (and only
  planned) when `needs_scratch` is True.
Parametric activations (PReLU) get their per-unit parameters `alpha` and write
their gradient into `galpha`.
"""

from __future__ import annotations

import math

from memtrain.backend import array_module
from memtrain.errors import ConfigError
from memtrain.nn.special import erf
from memtrain.validate import check_scalar


class Activation:
    name = ""
    needs_scratch = False
    params_per_unit = 0  # PReLU: one learned alpha per unit

    def forward(self, z, out, scratch=None, alpha=None):  # pragma: no cover - interface
        raise NotImplementedError

    def backward(self, z, a, grad, scratch=None, alpha=None, galpha=None):  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    def params(self) -> dict:
        """The constructor's arguments, exactly (a saved model rebuilds the activation from them)."""
        return {}

    def __eq__(self, other):
        return type(self) is type(other) and self.params() == other.params()

    def __hash__(self):
        return hash((type(self), tuple(sorted(self.params().items()))))


def _sigmoid(x, out):
    """sigma(x) = 0.5 + 0.5*tanh(x/2): no exp, so no overflow, and in place."""
    xp = array_module(x)
    xp.multiply(x, 0.5, out=out)
    xp.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


class Identity(Activation):
    name = "identity"

    def forward(self, z, out, scratch=None, alpha=None):
        array_module(z).copyto(out, z)

    def backward(self, z, a, grad, scratch=None, alpha=None, galpha=None):
        array_module(z).copyto(z, grad)


class Sigmoid(Activation):
    name = "sigmoid"

    def forward(self, z, out, scratch=None, alpha=None):
        _sigmoid(z, out)

    def backward(self, z, a, grad, scratch=None, alpha=None, galpha=None):
        xp = array_module(z)
        xp.subtract(1, a, out=z)  # g' = a (1 - a)
        z *= a
        z *= grad


class Tanh(Activation):
    name = "tanh"

    def forward(self, z, out, scratch=None, alpha=None):
        array_module(z).tanh(z, out=out)

    def backward(self, z, a, grad, scratch=None, alpha=None, galpha=None):
        xp = array_module(z)
        xp.multiply(a, a, out=z)  # g' = 1 - a^2
        xp.subtract(1, z, out=z)
        z *= grad


class ReLU(Activation):
    name = "relu"

    def forward(self, z, out, scratch=None, alpha=None):
        array_module(z).maximum(z, 0, out=out)

    def backward(self, z, a, grad, scratch=None, alpha=None, galpha=None):
        xp = array_module(z)
        xp.greater(z, 0, out=z)  # bool written as 0/1 into the float buffer
        z *= grad


class GeneralizedReLU(Activation):
    """g(z, alpha) = max(0, z) + alpha * min(0, z): leaky (alpha small) or |z| (alpha = -1)."""

    def __init__(self, alpha: float, name: str):
        self.alpha = check_scalar(alpha, "alpha", float)
        self.name = name

    def forward(self, z, out, scratch=None, alpha=None):
        xp = array_module(z)
        xp.multiply(z, self.alpha, out=out)  # alpha*z, then take the larger for alpha < 1
        if self.alpha <= 1:
            xp.maximum(z, out, out=out)
        else:
            xp.minimum(z, out, out=out)

    def backward(self, z, a, grad, scratch=None, alpha=None, galpha=None):
        xp = array_module(z)
        xp.greater(z, 0, out=z)  # 1 where z > 0, else 0
        z *= 1.0 - self.alpha  # -> 1 or alpha
        z += self.alpha
        z *= grad

    def describe(self) -> str:
        return f"{self.name}(alpha={self.alpha:g})"

    def params(self) -> dict:
        return {"alpha": self.alpha}


class LeakyReLU(GeneralizedReLU):
    def __init__(self, alpha: float = 0.01):
        super().__init__(alpha, "leaky_relu")


class AbsReLU(GeneralizedReLU):
    """Absolute-value rectification: the generalised ReLU with alpha = -1."""

    def __init__(self):
        super().__init__(-1.0, "abs")

    def describe(self) -> str:
        return "abs"

    def params(self) -> dict:
        return {}  # alpha = -1 is what makes it |z|, not a choice


class PReLU(Activation):
    """Parametric ReLU: alpha learned per unit (He et al. 2015), starting at `init`."""

    name = "prelu"
    params_per_unit = 1
    needs_scratch = True  # max(0,z) + alpha*min(0,z) needs one buffer besides `out`

    def __init__(self, init: float = 0.25):
        self.init = check_scalar(init, "prelu init", float)

    def forward(self, z, out, scratch=None, alpha=None):
        xp = array_module(z)
        xp.minimum(z, 0, out=scratch)
        scratch *= alpha  # (k,) broadcast over the batch
        xp.maximum(z, 0, out=out)
        out += scratch

    def backward(self, z, a, grad, scratch=None, alpha=None, galpha=None):
        xp = array_module(z)
        xp.minimum(z, 0, out=a)  # dL/dalpha_j = sum over the batch of grad * min(0, z)
        a *= grad
        xp.sum(a, axis=0, out=galpha)
        xp.greater(z, 0, out=a)  # 1 where z > 0
        xp.subtract(1, a, out=z)  # 1 where z <= 0
        z *= alpha
        z += a  # g' = 1 or alpha
        z *= grad

    def describe(self) -> str:
        return f"prelu(init={self.init:g})"

    def params(self) -> dict:
        return {"init": self.init}


class Softplus(Activation):
    name = "softplus"

    def forward(self, z, out, scratch=None, alpha=None):
        array_module(z).logaddexp(z, 0, out=out)  # log(1 + e^z), stable for large |z|

    def backward(self, z, a, grad, scratch=None, alpha=None, galpha=None):
        _sigmoid(z, a)  # softplus' = sigma
        array_module(z).multiply(a, grad, out=z)


class Swish(Activation):
    """z * sigma(beta z) with a fixed beta (Ramachandran et al. 2017)."""

    name = "swish"
    needs_scratch = True

    def __init__(self, beta: float = 1.0):
        self.beta = check_scalar(beta, "swish beta", float)

    def forward(self, z, out, scratch=None, alpha=None):
        xp = array_module(z)
        xp.multiply(z, self.beta, out=out)
        _sigmoid(out, out)
        out *= z

    def backward(self, z, a, grad, scratch=None, alpha=None, galpha=None):
        # g' = s + beta*z*s*(1 - s) = s + beta*a*(1 - s), s = sigma(beta z), a = z s
        xp = array_module(z)
        xp.multiply(z, self.beta, out=scratch)
        _sigmoid(scratch, scratch)  # s
        xp.subtract(1, scratch, out=z)  # 1 - s
        z *= a
        z *= self.beta
        z += scratch
        z *= grad

    def describe(self) -> str:
        return f"swish(beta={self.beta:g})"

    def params(self) -> dict:
        return {"beta": self.beta}


class Mish(Activation):
    """z * tanh(softplus(z)) (Misra 2019)."""

    name = "mish"
    needs_scratch = True

    def forward(self, z, out, scratch=None, alpha=None):
        xp = array_module(z)
        xp.logaddexp(z, 0, out=out)
        xp.tanh(out, out=out)
        out *= z

    def backward(self, z, a, grad, scratch=None, alpha=None, galpha=None):
        # g' = t + z * sigma(z) * (1 - t^2), t = tanh(softplus(z))
        xp = array_module(z)
        xp.logaddexp(z, 0, out=scratch)
        xp.tanh(scratch, out=scratch)  # t
        _sigmoid(z, a)
        a *= z  # z sigma(z)
        xp.multiply(scratch, scratch, out=z)
        xp.subtract(1, z, out=z)  # 1 - t^2
        z *= a
        z += scratch
        z *= grad


_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class GELU(Activation):
    """z * Phi(z) with the exact normal CDF, Phi(z) = (1 + erf(z/sqrt 2))/2 (not the tanh approximation)."""

    name = "gelu"
    needs_scratch = True

    def forward(self, z, out, scratch=None, alpha=None):
        xp = array_module(z)
        xp.multiply(z, _SQRT1_2, out=out)
        erf(out, out)
        out += 1.0
        out *= 0.5
        out *= z

    def backward(self, z, a, grad, scratch=None, alpha=None, galpha=None):
        # g' = Phi(z) + z * phi(z), phi the standard normal density
        xp = array_module(z)
        xp.multiply(z, _SQRT1_2, out=a)
        erf(a, a)
        a += 1.0
        a *= 0.5  # Phi(z)
        xp.multiply(z, z, out=scratch)
        scratch *= -0.5
        xp.exp(scratch, out=scratch)
        scratch *= _INV_SQRT_2PI
        scratch *= z
        scratch += a
        xp.multiply(scratch, grad, out=z)


ACTIVATIONS = {
    "identity": Identity,
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "prelu": PReLU,
    "abs": AbsReLU,
    "swish": Swish,
    "mish": Mish,
    "gelu": GELU,
    "softplus": Softplus,
}


def make_activation(spec) -> Activation:
    """"relu", "leaky_relu", "leaky_relu:0.2", "swish:1.5", "prelu:0.1", or an Activation."""
    if isinstance(spec, Activation):
        return spec
    name, _, arg = str(spec).partition(":")
    name = name.strip().lower()
    if name not in ACTIVATIONS:
        raise ConfigError(f"activation: unknown {spec!r}; expected one of {', '.join(ACTIVATIONS)}")
    cls = ACTIVATIONS[name]
    if not arg:
        return cls()
    if cls not in (LeakyReLU, PReLU, Swish):
        raise ConfigError(f"activation: {name} takes no parameter, got {spec!r}")
    try:
        value = float(arg)
    except ValueError:
        raise ConfigError(f"activation: parameter of {name} must be a number, got {arg!r}") from None
    return cls(value)


def activation_from_fields(name: str, params: dict) -> Activation:
    """The activation a saved model names, with its exact parameters."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"activation: unknown {name!r}; expected one of {', '.join(ACTIVATIONS)}")
    try:
        return ACTIVATIONS[name](**params)
    except TypeError:
        raise ConfigError(f"activation: {name} does not take {sorted(params)}") from None
