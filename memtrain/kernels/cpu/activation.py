"""Fused bias + activation forward and activation backward (CPU twin of kernels/activation.py).

forward:  z += bias (broadcast over rows); out = g(z)       -- one pass
backward: z = grad * g'(z), with a = g(z) from the forward,
          and the column sums of z (the layer's bias gradient)  -- one pass
Same contract as memtrain/nn/activations.py (z may be overwritten in backward,
grad is only read), and the same operations in the same order, so that
activations built from +, -, *, /, max and min are bit-identical to the NumPy
reference in float32/float64; those using tanh, exp, log1p or erf differ from
NumPy's own implementations by a few ulp (tests/test_cpu_kernels.py states the
bound). No activation needs a scratch here: intermediates live in registers.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from memtrain.kernels.cpu.scalar import device, kernel, ld, like, serial_kernel, st


@device
def _max(a, b):
    """np.maximum: NaN in either argument propagates."""
    return a if (a >= b or a != a) else b


@device
def _min(a, b):
    return a if (a <= b or a != a) else b


@device
def _sigmoid(x):
    # 0.5 + 0.5 tanh(x/2), in nn/activations.py's order
    h = like(x, 0.5)
    return np.tanh(x * h) * h + h


@device
def _softplus(x):
    """np.logaddexp(x, 0), NumPy's formula (npy_logaddexp)."""
    if x == like(x, 0.0):
        return like(x, 0.6931471805599453)
    if x > like(x, 0.0):
        return x + np.log1p(np.exp(-x))
    if x <= like(x, 0.0):
        return np.log1p(np.exp(x))
    return x  # NaN


@device
def _erf_phi(x):
    """Phi(x) = (1 + erf(x / sqrt 2)) / 2, in GELU's order."""
    return (math.erf(x * like(x, 0.7071067811865476)) + like(x, 1.0)) * like(x, 0.5)


@device
def _value(kind, x, p0, p1):
    """g(x). kind: 0 identity, 1 sigmoid, 2 tanh, 3 relu, 4 generalised ReLU (p0 = alpha, p1 > 0: max),
    6 softplus, 7 swish (p0 = beta), 8 mish, 9 gelu. (5, PReLU, has its own kernels.)"""
    if kind == 0:
        return x
    if kind == 1:
        return _sigmoid(x)
    if kind == 2:
        return np.tanh(x)
    if kind == 3:
        return _max(x, like(x, 0.0))
    if kind == 4:
        return _max(x, x * p0) if p1 > like(x, 0.0) else _min(x, x * p0)
    if kind == 6:
        return _softplus(x)
    if kind == 7:
        return _sigmoid(x * p0) * x
    if kind == 8:
        return np.tanh(_softplus(x)) * x
    return _erf_phi(x) * x


@device
def _delta(kind, z, a, g, p0, p1):
    """g * g'(z), with a = g(z). p1 for kind 4 is 1 - alpha."""
    if kind == 0:
        return g
    if kind == 1:
        return (like(z, 1.0) - a) * a * g
    if kind == 2:
        return (like(z, 1.0) - a * a) * g
    if kind == 3:
        return (like(z, 1.0) if z > like(z, 0.0) else like(z, 0.0)) * g
    if kind == 4:
        return ((like(z, 1.0) if z > like(z, 0.0) else like(z, 0.0)) * p1 + p0) * g
    if kind == 6:
        return _sigmoid(z) * g
    if kind == 7:
        s = _sigmoid(z * p0)
        return ((like(z, 1.0) - s) * a * p0 + s) * g
    if kind == 8:
        t = np.tanh(_softplus(z))
        return ((like(z, 1.0) - t * t) * (_sigmoid(z) * z) + t) * g
    phi = np.exp(z * z * like(z, -0.5)) * like(z, 0.3989422804014327) * z
    return (phi + _erf_phi(z)) * g


@device
def _bias_forward(kind, z, bias, out, p0, p1):
    rows, k = z.shape
    for r in prange(rows):
        for c in range(k):
            x = ld(z[r, c]) + ld(bias[c])
            z[r, c] = st(z, x)
            out[r, c] = st(out, _value(kind, ld(z[r, c]), p0, p1))


@device
def _backward(kind, z, a, grad, gbias, p0, p1):
    """z = grad * g'(z), and gbias = the column sums of that delta: the layer's bias
    gradient, summed row after row in the storage type as NumPy's sum(axis=0) does
    (so it is bit-identical to it). The row loop is serial: it is a reduction."""
    rows, k = z.shape
    for r in range(rows):
        for c in range(k):
            z[r, c] = st(z, _delta(kind, ld(z[r, c]), ld(a[r, c]), ld(grad[r, c]), p0, p1))
            gbias[c] = z[r, c] if r == 0 else st(gbias, ld(gbias[c]) + ld(z[r, c]))


# One kernel pair per activation: `kind` is a constant in each, so after inlining the
# branches on it fold away and the loop is the activation's alone (and vectorises).
# Written out rather than generated in a loop: numba's on-disk cache keeps only functions
# defined in a source file (and a `kind` argument with numba.literally re-dispatched at
# ~0.2 s per call).
@kernel
def identity_forward(z, bias, out, p0, p1):
    _bias_forward(0, z, bias, out, p0, p1)


@serial_kernel
def identity_backward(z, a, grad, gbias, p0, p1):
    _backward(0, z, a, grad, gbias, p0, p1)


@kernel
def sigmoid_forward(z, bias, out, p0, p1):
    _bias_forward(1, z, bias, out, p0, p1)


@serial_kernel
def sigmoid_backward(z, a, grad, gbias, p0, p1):
    _backward(1, z, a, grad, gbias, p0, p1)


@kernel
def tanh_forward(z, bias, out, p0, p1):
    _bias_forward(2, z, bias, out, p0, p1)


@serial_kernel
def tanh_backward(z, a, grad, gbias, p0, p1):
    _backward(2, z, a, grad, gbias, p0, p1)


@kernel
def relu_forward(z, bias, out, p0, p1):
    _bias_forward(3, z, bias, out, p0, p1)


@serial_kernel
def relu_backward(z, a, grad, gbias, p0, p1):
    _backward(3, z, a, grad, gbias, p0, p1)


@kernel
def generalized_relu_forward(z, bias, out, p0, p1):
    _bias_forward(4, z, bias, out, p0, p1)


@serial_kernel
def generalized_relu_backward(z, a, grad, gbias, p0, p1):
    _backward(4, z, a, grad, gbias, p0, p1)


@kernel
def softplus_forward(z, bias, out, p0, p1):
    _bias_forward(6, z, bias, out, p0, p1)


@serial_kernel
def softplus_backward(z, a, grad, gbias, p0, p1):
    _backward(6, z, a, grad, gbias, p0, p1)


@kernel
def swish_forward(z, bias, out, p0, p1):
    _bias_forward(7, z, bias, out, p0, p1)


@serial_kernel
def swish_backward(z, a, grad, gbias, p0, p1):
    _backward(7, z, a, grad, gbias, p0, p1)


@kernel
def mish_forward(z, bias, out, p0, p1):
    _bias_forward(8, z, bias, out, p0, p1)


@serial_kernel
def mish_backward(z, a, grad, gbias, p0, p1):
    _backward(8, z, a, grad, gbias, p0, p1)


@kernel
def gelu_forward(z, bias, out, p0, p1):
    _bias_forward(9, z, bias, out, p0, p1)


@serial_kernel
def gelu_backward(z, a, grad, gbias, p0, p1):
    _backward(9, z, a, grad, gbias, p0, p1)


@kernel
def prelu_forward(z, bias, alpha, out):
    """z += bias; out = max(0, z) + alpha_c min(0, z)."""
    rows, k = z.shape
    for r in prange(rows):
        for c in range(k):
            x = ld(z[r, c]) + ld(bias[c])
            z[r, c] = st(z, x)
            x = ld(z[r, c])
            zero = like(x, 0.0)
            out[r, c] = st(out, _max(x, zero) + _min(x, zero) * ld(alpha[c]))


@serial_kernel
def prelu_backward(z, a, grad, alpha, gbias):
    """a = grad min(0, z) (summed over rows into dL/dalpha by the host); z = grad (1 or alpha_c);
    gbias = the column sums of z (as _backward)."""
    rows, k = z.shape
    for r in range(rows):
        for c in range(k):
            x, gi = ld(z[r, c]), ld(grad[r, c])
            zero, one = like(x, 0.0), like(x, 1.0)
            a[r, c] = st(a, _min(x, zero) * gi)
            ind = one if x > zero else zero
            z[r, c] = st(z, ((one - ind) * ld(alpha[c]) + ind) * gi)
            gbias[c] = z[r, c] if r == 0 else st(gbias, ld(gbias[c]) + ld(z[r, c]))
