"""The MLP: a ModelSpec plus one flat parameter vector, initialised, seeded."""

from __future__ import annotations

import numpy as np

from memtrain.backend import array_module, get_backend, small_ufunc_buffers
from memtrain.errors import ConfigError
from memtrain.memory.arena import allocate
from memtrain.memory.plan import inference_plan, params_buffer
from memtrain.nn import step
from memtrain.nn.init import fill_weights
from memtrain.nn.scores import REGRESSION, RegressionSums
from memtrain.nn.spec import ModelSpec


class MLP:
    """A feedforward network, e.g. MLP([784, 512, 256, 10], activation="relu", output="softmax").

    activation: identity, sigmoid, tanh, relu, leaky_relu[:alpha], prelu[:init],
        abs, swish[:beta], mish, gelu, softplus (hidden layers)
    output: softmax (cross-entropy), sigmoid (binary cross-entropy), linear (squared error)
    dropout: None, True (keep 0.8 input / 0.5 hidden) or (input_keep, hidden_keep)
    init: auto (He for ReLU-like units, else Glorot), glorot, simple, he
    bias_init: the biases' starting value (e.g. 0.1 so ReLU units start active)
    l1, l2: penalties on weights only: l2 * sum W^2 + l1 * sum |W|
    """

    def __init__(self, layer_sizes, activation="relu", output="softmax", dropout=None, init="auto",
                 bias_init=0.0, dtype="float32", l1=0.0, l2=0.0, seed=0, device="cpu"):
        spec = ModelSpec.create(layer_sizes, activation, output, dropout, init, bias_init, dtype, l1, l2)
        self._setup(spec, device)
        self.initialise(seed)

    @classmethod
    def from_spec(cls, spec: ModelSpec, seed: int = 0, device="cpu", *, initialise=True, params=None) -> "MLP":
        """params: the flat vector to use (a trial array's row of its stacked parameters), else allocated."""
        self = cls.__new__(cls)
        self._setup(spec, device, params)
        if initialise:
            self.initialise(seed)
        return self

    def _setup(self, spec, device, params=None):
        self.spec = spec
        self.backend = get_backend(device) if isinstance(device, str) else device
        buf = params_buffer(spec)
        if params is not None and (tuple(params.shape) != buf.shape or params.dtype.name != buf.dtype):
            raise ConfigError(f"params: expected {buf.shape} {buf.dtype}, got {tuple(params.shape)} {params.dtype}")
        self.params = self.backend.xp.zeros(buf.shape, dtype=buf.dtype) if params is None else params
        self.layers = step.layer_views(spec, self.params)

    def initialise(self, seed: int = 0) -> None:
        rng = np.random.Generator(np.random.PCG64(seed))
        spec = self.spec
        for i in range(1, spec.n_layers + 1):
            W, b, alpha = self.layers[i]
            fill_weights(W, spec.sizes[i - 1], spec.sizes[i], spec.init, rng)
            b[...] = spec.bias_init
            if alpha is not None:
                alpha[...] = spec.activation.init

    # -- inference ---------------------------------------------------------
    def _inference(self, batch_size):
        plan = inference_plan(self.spec, batch_size, self.backend.kind)
        arrays = allocate(plan, self.backend.xp, existing={"params": self.params})
        return step.StepBuffers(self.spec, arrays, "inference")

    def predict(self, X, batch_size: int = 1024) -> np.ndarray:
        """Outputs (class probabilities, sigmoid probability, or real values) as a NumPy array."""
        X = self._inputs(X)
        n = X.shape[0]
        bufs = self._inference(min(batch_size, max(n, 1)))
        result = np.empty((n, self.spec.sizes[-1]), dtype=self.spec.dtype)
        with small_ufunc_buffers():
            for s in range(0, n, bufs.B):
                v = bufs.at(min(bufs.B, n - s))
                _copy_in(v.x, X[s : s + v.b])
                step.forward(self.spec, self.layers, v, train=False)
                self.spec.output.outputs(v.z[self.spec.n_layers], v.out, v.rows)
                result[s : s + v.b] = self.backend.to_numpy(v.out)
        return result

    def evaluate(self, X, y, batch_size: int = 1024) -> dict:
        """Mean data loss (no penalty) and scores: accuracy, or RMSE, MAE and R^2 for regression."""
        X, y = self._inputs(X), self.prepare_labels(y)
        bufs = self._inference(min(batch_size, max(X.shape[0], 1)))
        return evaluate_in(self.spec, self.layers, bufs, X, y)

    def loss(self, X, y) -> float:
        """Mean data loss plus the penalty: the objective the gradients are of."""
        return self.evaluate(X, y, batch_size=max(len(X), 1))["loss"] + step.penalty(
            self.spec, self.params, self.backend.xp.zeros((1, 4096), self.spec.dtype))

    # -- data --------------------------------------------------------------
    def _inputs(self, X):
        X = np.asarray(X) if array_module(X) is np else X  # a device array stays on the device
        if X.ndim != 2 or X.shape[1] != self.spec.sizes[0]:
            raise ConfigError(f"X: expected shape (n, {self.spec.sizes[0]}), got {X.shape}")
        return X

    def prepare_labels(self, y):
        """Labels in the layout and dtype of the plan's `y` buffer (host labels on the host,
        device labels on the device: CuPy refuses to convert them implicitly)."""
        xp = array_module(y)
        y = xp.asarray(y)
        kind, C = self.spec.output.label_kind, self.spec.sizes[-1]
        if kind == "class":
            if y.ndim != 1:
                raise ConfigError(f"y: expected class labels of shape (n,), got {y.shape}")
            if y.size and (y.min() < 0 or y.max() >= C or not xp.all(xp.equal(xp.mod(y, 1), 0))):
                raise ConfigError(f"y: class labels must be integers in [0, {C - 1}]")
            return y.astype(np.intp, copy=False)  # labels already so are shared, not copied (trial arrays)
        y = y.reshape(len(y), -1) if y.ndim == 1 else y
        if y.shape[1] != C:
            raise ConfigError(f"y: expected targets of shape (n, {C}), got {y.shape}")
        if kind == "binary" and y.size and not xp.all((y == 0) | (y == 1)):
            raise ConfigError("y: a sigmoid output needs 0/1 labels")
        return y.astype(self.spec.dtype, copy=False)


def _copy_in(dst, src) -> None:
    """A batch (host or device) -> plan buffer, cast and broadcast as NumPy's `dst[...] = src`
    does, on either device (no temporary on the CPU)."""
    if isinstance(dst, np.ndarray) or array_module(src) is not np:
        dst[...] = src  # host to host, or device to device (CuPy refuses to convert a device array to NumPy)
    elif isinstance(src, np.ndarray) and src.shape == dst.shape and src.dtype == dst.dtype \
            and src.flags.c_contiguous:
        dst.set(src)
    else:  # CuPy's set() takes exactly dst's shape and dtype: NumPy's assignment rules on the host first
        host = np.empty(dst.shape, dst.dtype)
        host[...] = src
        dst.set(host)


def evaluate_in(spec, layers, bufs, X, y) -> dict:
    """Loss and scores over (X, y) using `bufs` (training buffers in eval mode, or an inference plan's):
    {"loss", "accuracy", "rmse", "mae", "r2"}, each score None where it has no meaning (scores.py)."""
    n = X.shape[0]
    total, correct = 0.0, 0
    sums = RegressionSums() if spec.output.name == "linear" else None
    with small_ufunc_buffers():
        for s in range(0, n, bufs.B):
            v = bufs.at(min(bufs.B, n - s))
            _copy_in(v.x, X[s : s + v.b])
            _copy_in(v.y, y[s : s + v.b])
            step.forward(spec, layers, v, train=False)
            total += step.loss_sum(spec, v)
            c = spec.output.correct(v.out, v.y, v.rows, v.index)
            correct = None if c is None else correct + c
            if sums is not None:
                sums.add(v.out, v.y)  # after correct(): it uses v.out as scratch
    out = {"loss": total / max(n, 1), "accuracy": None if correct is None else correct / max(n, 1)}
    out.update(sums.scores(total, spec.sizes[-1]) if sums is not None else dict.fromkeys(REGRESSION))
    return out
