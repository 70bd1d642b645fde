"""Every activation's forward against its formula, and its derivative against
central differences (course: gradient check), elementwise and through a model."""

import math

import numpy as np
import pytest
from scipy.special import erf as scipy_erf

from memtrain import MLP
from memtrain.nn.activations import ACTIVATIONS, make_activation
from memtrain.nn.gradcheck import gradcheck

Z = np.linspace(-4, 4, 41).reshape(1, -1) + 0.013  # avoid the kinks at exactly 0
SIG = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
FORMULAS = {
    "identity": lambda z: z,
    "sigmoid": SIG,
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(0, z),
    "leaky_relu": lambda z: np.maximum(0, z) + 0.01 * np.minimum(0, z),
    "prelu": lambda z: np.maximum(0, z) + 0.25 * np.minimum(0, z),
    "abs": np.abs,
    "swish": lambda z: z * SIG(z),
    "mish": lambda z: z * np.tanh(np.log1p(np.exp(z))),
    "gelu": lambda z: z * 0.5 * (1 + scipy_erf(z / math.sqrt(2))),
    "softplus": lambda z: np.log1p(np.exp(z)),
}


def _run(act, z):
    alpha = np.full(z.shape[1], 0.25) if act.params_per_unit else None
    out = np.empty_like(z)
    act.forward(z.copy(), out, np.empty_like(z), alpha)
    return out, alpha


def test_formulas_cover_every_activation():
    assert set(FORMULAS) == set(ACTIVATIONS)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_forward_matches_formula(name):
    out, _ = _run(make_activation(name), Z)
    np.testing.assert_allclose(out, FORMULAS[name](Z), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_derivative_matches_central_differences(name):
    act = make_activation(name)
    eps = 1e-6
    plus, _ = _run(act, Z + eps)
    minus, _ = _run(act, Z - eps)
    numeric = (plus - minus) / (2 * eps)
    a, alpha = _run(act, Z)
    z = Z.copy()
    grad = np.ones_like(Z)
    galpha = np.zeros(Z.shape[1]) if alpha is not None else None
    act.backward(z, a.copy(), grad, np.empty_like(Z), alpha, galpha)
    np.testing.assert_allclose(z, numeric, rtol=1e-6, atol=1e-8)  # the delta is written over z
    if galpha is not None:  # dL/dalpha = min(0, z) for a unit gradient
        np.testing.assert_allclose(galpha, np.minimum(0, Z[0]), atol=1e-12)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_backprop_through_a_network_matches_gradcheck(name):
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((6, 3)), rng.integers(0, 3, 6)
    model = MLP([3, 4, 5, 3], activation=name, dtype="float64", seed=2, bias_init=0.1)
    assert gradcheck(model, X, y) < 1e-5


def test_parameters_and_errors():
    assert make_activation("leaky_relu:0.2").alpha == 0.2
    assert make_activation("swish:1.5").beta == 1.5
    assert make_activation("abs").alpha == -1.0  # generalised ReLU with alpha = -1
    with pytest.raises(ValueError, match="activation: unknown 'relux'; expected one of identity, sigmoid"):
        make_activation("relux")
    with pytest.raises(ValueError, match="activation: relu takes no parameter"):
        make_activation("relu:2")
    with pytest.raises(ValueError, match="must be a number"):
        make_activation("swish:x")


def test_sigmoid_is_stable_for_large_inputs():
    z = np.array([[-1000.0, 1000.0]])
    out, _ = _run(make_activation("sigmoid"), z)
    assert np.all(np.isfinite(out)) and out[0, 0] == 0.0 and out[0, 1] == 1.0
    out, _ = _run(make_activation("softplus"), z)
    assert out[0, 1] == 1000.0 and out[0, 0] == 0.0
