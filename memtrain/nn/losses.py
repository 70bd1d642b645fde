"""Output units and their losses, with the error at the logits (course: output units).

- softmax + cross-entropy: L = -log p_y,                  dL/dz_k = p_k - 1(y = k)
- sigmoid + binary cross-entropy: L = softplus(z) - y z,  dL/dz = sigma(z) - y
- linear + squared error: L = 1/2 ||y - z||^2,            dL/dz = z - y

Every function writes into buffers it is given: `out` (b, C) holds the outputs
and then the delta; `rows` is (2, b) of the model dtype; `index` and
`offsets` are (b,) intp (offsets = arange(b) * C, filled once by the plan's
allocation) so that picking z[i, y_i] needs no temporary.
The batch loss is the mean over the batch, so delta is divided by b here and
every gradient below it is already a batch mean.
"""

from __future__ import annotations

from memtrain.backend import array_module
from memtrain.errors import ConfigError
from memtrain.nn.activations import _sigmoid


def _take(xp, a, index, out):
    """a[index] into `out`, no temporary. NumPy's take with out= and the default
    mode='raise' buffers the whole output (b x itemsize per call); 'clip' writes in
    place and is exact here, the indices being valid by construction. CuPy's take
    has no mode argument and writes in place."""
    if xp.__name__ == "numpy":
        xp.take(a, index, out=out, mode="clip")
    else:
        xp.take(a, index, out=out)


class OutputUnit:
    name = ""
    label_kind = ""  # "class" (int labels), "binary" (0/1 floats), "real" (float targets)
    needs_index = False

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))

    def outputs(self, z, out, rows):  # pragma: no cover - interface
        """The output units' values (probabilities, or z itself) into `out`."""
        raise NotImplementedError

    def loss_sum(self, z, out, y, rows, index, offsets) -> float:  # pragma: no cover
        """Sum over the batch of the per-sample loss; leaves outputs in `out`."""
        raise NotImplementedError

    def delta(self, out, y, rows, index):  # pragma: no cover
        """Turn the outputs in `out` into dL/dz of the batch-mean loss, in place."""
        raise NotImplementedError

    def correct(self, out, y, rows, index):
        """Number of correct predictions, or None where accuracy has no meaning."""
        return None


class SoftmaxCrossEntropy(OutputUnit):
    name = "softmax"
    label_kind = "class"
    needs_index = True

    def outputs(self, z, out, rows):
        xp = array_module(z)
        b = z.shape[0]
        m, s = rows[0, :b], rows[1, :b]
        xp.max(z, axis=1, out=m)
        xp.subtract(z, m[:, None], out=out)
        xp.exp(out, out=out)
        xp.sum(out, axis=1, out=s)
        out /= s[:, None]

    def loss_sum(self, z, out, y, rows, index, offsets):
        # log-sum-exp: log sum_k e^{z_k} = m + log sum_k e^{z_k - m}, m = max_k z_k
        xp = array_module(z)
        b = z.shape[0]
        m, s = rows[0, :b], rows[1, :b]
        xp.max(z, axis=1, out=m)
        xp.subtract(z, m[:, None], out=out)
        xp.exp(out, out=out)
        xp.sum(out, axis=1, out=s)
        out /= s[:, None]  # probabilities, kept for delta() and correct()
        xp.log(s, out=s)
        s += m  # log-sum-exp per sample
        xp.add(offsets[:b], y, out=index[:b])
        _take(xp, z.reshape(-1), index[:b], m)  # z_y
        s -= m
        return float(s.sum(dtype="float64"))

    def delta(self, out, y, rows, index):
        xp = array_module(out)
        b = out.shape[0]
        flat, p_y = out.reshape(-1), rows[0, :b]
        _take(xp, flat, index[:b], p_y)
        p_y -= 1
        xp.put(flat, index[:b], p_y)  # p - onehot(y)
        out /= b

    def correct(self, out, y, rows, index):
        xp = array_module(out)
        b = out.shape[0]
        pred = xp.argmax(out, axis=1, out=index[:b])
        xp.equal(pred, y, out=pred)
        return int(pred.sum())


class SigmoidBinaryCrossEntropy(OutputUnit):
    name = "sigmoid"
    label_kind = "binary"

    def outputs(self, z, out, rows):
        _sigmoid(z, out)

    def loss_sum(self, z, out, y, rows, index, offsets):
        # softplus(z) - y z == -[y log sigma(z) + (1-y) log(1 - sigma(z))], stable for any z
        xp = array_module(z)
        b = z.shape[0]
        yz = rows[0, :b]
        xp.multiply(y[:, 0], z[:, 0], out=yz)
        xp.logaddexp(z, 0, out=out)
        total = float(out.sum(dtype="float64")) - float(yz.sum(dtype="float64"))
        _sigmoid(z, out)
        return total

    def delta(self, out, y, rows, index):
        out -= y
        out /= out.shape[0]

    def correct(self, out, y, rows, index):
        xp = array_module(out)
        b = out.shape[0]
        hit = rows[0, :b]
        xp.greater(out[:, 0], 0.5, out=hit)
        xp.equal(hit, y[:, 0], out=hit)
        return int(hit.sum())


class LinearSquaredError(OutputUnit):
    name = "linear"
    label_kind = "real"

    def outputs(self, z, out, rows):
        array_module(z).copyto(out, z)

    def loss_sum(self, z, out, y, rows, index, offsets):
        xp = array_module(z)
        xp.subtract(z, y, out=out)  # residual; outputs are z itself
        flat = out.reshape(-1)
        total = 0.5 * float(xp.dot(flat, flat))
        xp.copyto(out, z)  # the outputs; delta() takes z - y again
        return total

    def delta(self, out, y, rows, index):
        out -= y
        out /= out.shape[0]


OUTPUTS = {
    "softmax": SoftmaxCrossEntropy,
    "sigmoid": SigmoidBinaryCrossEntropy,
    "linear": LinearSquaredError,
}


def make_output(name) -> OutputUnit:
    if isinstance(name, OutputUnit):
        return name
    key = str(name).strip().lower()
    if key not in OUTPUTS:
        raise ConfigError(f"output: unknown {name!r}; expected one of {', '.join(OUTPUTS)}")
    return OUTPUTS[key]()
