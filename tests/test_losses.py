"""Output units: loss values against the course's formulas, stability, and the error at the logits."""

import numpy as np
import pytest

from memtrain import MLP
from memtrain.nn.gradcheck import gradcheck
from memtrain.nn.losses import OUTPUTS, make_output
from memtrain.nn.step import fill_offsets


def _buffers(b, c):
    index, offsets = np.zeros(b, np.intp), np.zeros(b, np.intp)
    fill_offsets(offsets, c)
    return np.zeros((2, b)), index, offsets


def test_softmax_cross_entropy_value_and_delta():
    z = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]])
    y = np.array([2, 0])
    rows, index, offsets = _buffers(2, 3)
    out = np.empty_like(z)
    unit = make_output("softmax")
    total = unit.loss_sum(z, out, y, rows, index, offsets)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    assert total == pytest.approx(-np.log(p[0, 2]) - np.log(p[1, 0]), rel=1e-12)
    np.testing.assert_allclose(out, p, rtol=1e-12)
    assert unit.correct(out.copy(), y, rows, index.copy()) == 1
    unit.delta(out, y, rows, index)
    onehot = np.eye(3)[y]
    np.testing.assert_allclose(out, (p - onehot) / 2, rtol=1e-12)  # p_k - 1(y = k), batch mean


def test_softmax_is_stable_for_huge_logits():
    z = np.array([[1000.0, -1000.0, 999.0]])
    rows, index, offsets = _buffers(1, 3)
    out = np.empty_like(z)
    total = make_output("softmax").loss_sum(z, out, np.array([2]), rows, index, offsets)
    assert total == pytest.approx(np.log1p(np.exp(-1.0)) + 1.0, rel=1e-12)


def test_sigmoid_binary_cross_entropy():
    z = np.array([[2.0], [-1.0], [800.0]])
    y = np.array([[0.0], [0.0], [1.0]])
    rows, index, offsets = _buffers(3, 1)
    out = np.empty_like(z)
    unit = make_output("sigmoid")
    total = unit.loss_sum(z, out, y, rows, index, offsets)
    s = 1 / (1 + np.exp(-z[:2]))
    expected = -np.log(1 - s[0, 0]) - np.log(1 - s[1, 0]) + 0.0  # log sigma(800) = 0
    assert total == pytest.approx(expected, rel=1e-12)
    assert unit.correct(out.copy(), y, rows.copy(), index) == 2  # sigma(2) > 0.5 is wrong for y = 0
    unit.delta(out, y, rows, index)
    np.testing.assert_allclose(out[:2], (s - y[:2]) / 3, rtol=1e-12)  # sigma(z) - y


def test_linear_squared_error():
    z = np.array([[1.0, 2.0], [0.0, -1.0]])
    y = np.array([[0.5, 2.0], [1.0, 1.0]])
    rows, index, offsets = _buffers(2, 2)
    out = np.empty_like(z)
    unit = make_output("linear")
    assert unit.loss_sum(z, out, y, rows, index, offsets) == pytest.approx(0.5 * (0.25 + 1 + 4))
    np.testing.assert_array_equal(out, z)
    assert unit.correct(out, y, rows, index) is None
    unit.delta(out, y, rows, index)
    np.testing.assert_allclose(out, (z - y) / 2)  # z - y


@pytest.mark.parametrize("output,C", [("softmax", 3), ("sigmoid", 1), ("linear", 2)])
def test_gradcheck_every_output(output, C):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((7, 4))
    y = {"softmax": rng.integers(0, 3, 7), "sigmoid": rng.integers(0, 2, 7), "linear": rng.standard_normal((7, 2))}[output]
    model = MLP([4, 5, C], activation="tanh", output=output, dtype="float64", seed=1)
    assert gradcheck(model, X, y) < 1e-6


def test_unknown_output():
    assert set(OUTPUTS) == {"softmax", "sigmoid", "linear"}
    with pytest.raises(ValueError, match="output: unknown 'tanh'; expected one of softmax, sigmoid, linear"):
        make_output("tanh")
