"""The MLP: layout, course numbers, initialisers, dropout, regularisation, clipping, dtypes."""

import math

import numpy as np
import pytest

from memtrain import MLP, Trainer
from memtrain.memory.plan import training_plan
from memtrain.nn import step
from memtrain.nn.gradcheck import analytic_gradient, gradcheck
from memtrain.nn.spec import ModelSpec
from memtrain.optim import make_optimizer


def test_course_parameter_count_784_32_20_10():
    spec = ModelSpec.create([784, 32, 20, 10], dtype="float64")
    assert spec.n_params == 784 * 32 + 32 + 32 * 20 + 20 + 20 * 10 + 10 == 25_990
    plan = training_plan(spec, make_optimizer("sgd"), 1)
    assert plan.get("params").nbytes == 207_920


def test_layout_views_share_the_flat_vector():
    m = MLP([3, 4, 2], activation="prelu")
    W1, b1, a1 = m.layers[1]
    assert W1.shape == (3, 4) and b1.shape == (4,) and a1.shape == (4,)
    assert m.layers[2][2] is None  # no alpha on the output layer
    assert m.params.shape == (3 * 4 + 4 + 4 + 4 * 2 + 2,)
    W1[0, 0] = 123.0
    assert m.params[0] == 123.0
    np.testing.assert_array_equal(a1, 0.25)


def test_backprop_example_from_the_course():
    """The slide's example, reconstructed: x = (1, 2), y = 0; a 2-1-2-1 network with
    ReLU hidden units and a sigmoid output. Layer 1: W = [[1], [0]] (h1 = relu(1*1 + 0*2)
    = 1); layer 2: both weights 1 (two hidden units, each = 1); output weights 1, so
    z = 2. All biases 0. This is one reading of a partly legible figure: it reproduces
    every number the slide shows."""
    m = MLP([2, 1, 2, 1], activation="relu", output="sigmoid", dtype="float64")
    m.params[...] = 0
    m.layers[1][0][...] = [[1.0], [0.0]]
    m.layers[2][0][...] = [[1.0, 1.0]]
    m.layers[3][0][...] = [[1.0], [1.0]]
    t = Trainer(m, "sgd", batch_size=1)
    v = t.buffers.at(1)
    v.x[...] = [[1.0, 2.0]]
    v.y[...] = [[0.0]]
    step.forward(m.spec, m.layers, v, train=False)
    assert v.z[3][0, 0] == 2.0
    step.loss_sum(m.spec, v)
    step.backward(m.spec, m.layers, t.glayers, v)
    sig2 = 1 / (1 + math.exp(-2))
    assert sig2 == pytest.approx(0.88, abs=0.005)
    np.testing.assert_allclose(v.out, [[sig2]])  # delta_out = sigma(2) - 0
    np.testing.assert_allclose(v.z[2], [[sig2, sig2]])  # each of the two hidden units: 1 * 0.88
    np.testing.assert_allclose(v.z[1], [[2 * sig2]])  # 1*0.88 + 1*0.88 = 1.76
    gW1, gW2 = t.glayers[1][0], t.glayers[2][0]
    assert gW1[1, 0] == pytest.approx(2 * 1.7616, abs=1e-3)  # input 2 times delta 1.76
    assert gW2[0, 0] == pytest.approx(1 * 0.8808, abs=1e-3)  # input 1 times delta 0.88


def _weights(m):
    return [m.layers[i][0] for i in range(1, m.spec.n_layers + 1)]


def test_initialisers_follow_their_definitions():
    n, k = 400, 300
    glorot = MLP([n, k, 2], init="glorot", seed=1)
    W = _weights(glorot)[0]
    b = math.sqrt(6) / math.sqrt(n + k)
    assert np.abs(W).max() <= b and np.abs(W).max() > 0.99 * b
    assert W.std() == pytest.approx(b / math.sqrt(3), rel=0.02)  # uniform's std
    simple = _weights(MLP([n, k, 2], init="simple", seed=1))[0]
    assert np.abs(simple).max() <= 1 / math.sqrt(n) and simple.std() == pytest.approx(1 / math.sqrt(3 * n), rel=0.02)
    he = _weights(MLP([n, k, 2], init="he", seed=1))[0]
    assert he.std() == pytest.approx(math.sqrt(2 / n), rel=0.02) and abs(he.mean()) < 0.01
    assert MLP([3, 4, 2], activation="relu").spec.init == "he"
    assert MLP([3, 4, 2], activation="tanh").spec.init == "glorot"


def test_init_is_seeded_and_biases_configurable():
    a, b, c = MLP([5, 6, 3], seed=7), MLP([5, 6, 3], seed=7), MLP([5, 6, 3], seed=8)
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.array_equal(a.params, c.params)
    m = MLP([5, 6, 3], bias_init=0.1)
    np.testing.assert_array_equal(m.layers[1][1], np.float32(0.1))
    assert len(np.unique(m.layers[1][0])) > 25  # never all weights equal (symmetry)


def test_float16_init_is_rounded_float32_init():
    m16, m32 = MLP([20, 10, 3], dtype="float16", seed=3), MLP([20, 10, 3], dtype="float32", seed=3)
    np.testing.assert_array_equal(m16.params, m32.params.astype(np.float16))


def test_dropout_masks_per_minibatch_and_off_in_evaluation():
    m = MLP([50, 400, 10], dropout=True, seed=0)
    assert m.spec.dropout == (0.8, 0.5)  # course keep probabilities
    t = Trainer(m, "sgd", batch_size=64, seed=0)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((64, 50)), rng.integers(0, 10, 64)
    t.step(X, y)
    v = t.buffers.at(64)
    m0, m1 = v.mask[0].copy(), v.mask[1].copy()
    assert set(np.unique(m1)) == {0.0, 2.0}  # inverted dropout: kept units scaled by 1/keep
    assert (m1 > 0).mean() == pytest.approx(0.5, abs=0.02)
    assert (m0 > 0).mean() == pytest.approx(0.8, abs=0.02)
    t.step(X, y)
    assert not np.array_equal(m1, v.mask[1])  # a fresh mask each minibatch
    p1, p2 = m.predict(X), m.predict(X)
    np.testing.assert_array_equal(p1, p2)  # no masks at test time


def test_dropout_gradcheck_with_fixed_masks():
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((5, 3)), rng.integers(0, 3, 5)
    m = MLP([3, 4, 5, 3], dtype="float64", dropout=True, bias_init=0.1)
    masks = [(rng.random((5, 3)) < 0.8) / 0.8, (rng.random((5, 4)) < 0.5) / 0.5, (rng.random((5, 5)) < 0.5) / 0.5]
    assert gradcheck(m, X, y, masks) < 1e-6


def test_l1_l2_on_weights_only():
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((6, 3)), rng.integers(0, 2, 6)
    plain = MLP([3, 4, 2], dtype="float64", seed=3, bias_init=0.1)
    reg = MLP([3, 4, 2], dtype="float64", seed=3, bias_init=0.1, l1=0.03, l2=0.05)
    assert gradcheck(reg, X, y) < 1e-6
    _, g0 = analytic_gradient(plain, X, y)
    _, g1 = analytic_gradient(reg, X, y)
    for grp in reg.spec.layout:
        sl = slice(grp.offset, grp.offset + grp.size)
        w = reg.params[sl]
        if grp.kind == "bias":
            np.testing.assert_array_equal(g1[sl], g0[sl])  # never on biases
        else:
            np.testing.assert_allclose(g1[sl] - g0[sl], 2 * 0.05 * w + 0.03 * np.sign(w), rtol=1e-10)
    expected = sum(0.05 * (W**2).sum() + 0.03 * np.abs(W).sum() for W in _weights(reg))
    assert reg.loss(X, y) - plain.loss(X, y) == pytest.approx(expected, rel=1e-10)


def test_gradient_clipping():
    g = np.array([3.0, 4.0])
    assert step.clip_by_norm(g, 1.0) == 5.0
    np.testing.assert_allclose(g, [0.6, 0.8])
    g = np.array([0.3, 0.4])
    step.clip_by_norm(g, 1.0)
    np.testing.assert_array_equal(g, [0.3, 0.4])


def test_float16_squared_norm_does_not_overflow():
    g = np.full(10000, 100.0, np.float16)
    assert step.squared_norm(g) == pytest.approx(1e8)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_every_dtype_trains(dtype):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((256, 8))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    m = MLP([8, 16, 2], dtype=dtype, seed=0)
    t = Trainer(m, "adam", batch_size=32, lr=0.01)
    before = m.evaluate(X, y)["loss"]
    t.fit(X, y, epochs=5)
    assert m.params.dtype == np.dtype(dtype)
    assert m.evaluate(X, y)["loss"] < 0.5 * before


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(layer_sizes=[3]), "layers: need at least 2 sizes"),
        (dict(layer_sizes=[3, 0, 2]), "layers: every size must be an integer from 1 to 2,147,483,647"),
        (dict(layer_sizes=[3, "a"]), "layers: expected a list of positive integers"),
        (dict(layer_sizes=[3, 1], output="softmax"), "softmax output needs at least 2 units"),
        (dict(layer_sizes=[3, 2], output="sigmoid"), "sigmoid output has exactly 1 unit"),
        (dict(layer_sizes=[3, 2], dtype="int8"), "dtype: expected one of float16, float32, float64"),
        (dict(layer_sizes=[3, 2], dropout=(0.0, 0.5)), r"dropout: input keep probability: expected a number in \(0, 1\]"),
        (dict(layer_sizes=[3, 2], dropout="x"), "dropout: expected True"),
        (dict(layer_sizes=[3, 2], init="zeros"), "init: unknown 'zeros'"),
        (dict(layer_sizes=[3, 2], l2=-1), "l2: expected a non-negative number"),
    ],
)
def test_bad_model_arguments_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLP(**kwargs)


def test_label_validation():
    m = MLP([3, 4, 3])
    with pytest.raises(ValueError, match=r"y: class labels must be integers in \[0, 2\]"):
        m.prepare_labels([0, 3])
    with pytest.raises(ValueError, match=r"X: expected shape \(n, 3\)"):
        m.predict(np.zeros((2, 4)))
