"""One training step of K same-shape trials: the GEMMs batched over a trial axis.

The trials' buffers are rows of stacked arrays (memory/trials.py), so layer i's
forward GEMM of every trial is one `matmul` of (K, b, n) by (K, n, k) into
(K, b, k), and so are the two backward GEMMs. NumPy runs a stacked matmul as one
BLAS gemm per trial with that trial's own strides, the call a trial training
alone makes, so each slice gets the same bits (tests/test_trials.py checks it).
Everything between the GEMMs (bias + activation, dropout, the loss, the bias
gradients, the activation's backward) is nn/step.py's own per-trial pieces on
each trial's views: a trial's element-wise arithmetic is exactly its own.
`runs` are the contiguous index ranges of the trials still training: finished
trials cost no GEMM (compaction without moving memory).
"""

from __future__ import annotations

from types import SimpleNamespace

from memtrain.backend import array_module, small_ufunc_buffers
from memtrain.nn import step
from memtrain.nn.scores import REGRESSION, RegressionSums


def weight_stack(spec, flat_stack, i: int):
    """W_i of every trial as a (K, n, k) view of the stacked flat vectors (K, P)."""
    g = next(g for g in spec.layout if g.layer == i and g.kind == "weight")
    view = flat_stack[:, g.offset : g.offset + g.size]
    out = view.reshape((view.shape[0], *g.shape))
    # a view, never a copy (which would be contiguous: its row stride n k, not P, as b_i follows W_i)
    assert out.shape[0] == 1 or out.strides[0] == flat_stack.strides[0]  # one trial: its row stride is moot
    return out


def stack_views(spec, arrays: dict, b: int) -> SimpleNamespace:
    """The stacked buffers at b rows: x, z_i, a_i, out, dA_i (K, b, width), W_i, dW_i (K, n, k),
    the biases and their gradients (K, k), and the softmax loss's rows, labels and indices."""
    L, sizes = spec.n_layers, spec.sizes
    K, B = arrays["x"].shape[:2]
    s = SimpleNamespace(b=b, x=arrays["x"][:, :b], out=arrays["out"][:, :b], y=arrays["y"][:, :b])
    s.z = [None] + [arrays[f"z{i}"][:, :b] for i in range(1, L + 1)]
    s.a = [None] + [arrays[f"a{i}"][:, :b] for i in range(1, L)]
    s.dA = [None] + [arrays["dA"][:, : b * sizes[i]].reshape(K, b, sizes[i]) for i in range(1, L)]
    s.W = [None] + [weight_stack(spec, arrays["params"], i) for i in range(1, L + 1)]
    s.dW = [None] + [weight_stack(spec, arrays["grads"], i) for i in range(1, L + 1)]
    s.bias = [None] + [bias_stack(spec, arrays["params"], i) for i in range(1, L + 1)]
    s.gb = [None] + [bias_stack(spec, arrays["grads"], i) for i in range(1, L + 1)]
    s.rows = arrays["loss_rows"][:, :, :b]
    s.index, s.offsets = arrays.get("label_index"), arrays.get("row_offsets")
    if s.index is not None:
        s.index, s.offsets = s.index[:, :b], s.offsets[:, :b]
        # where trial k's rows start in the flat (K, B, C) logits: offsets index within a trial
        s.base = array_module(s.index).arange(K, dtype=s.index.dtype)[:, None] * (B * sizes[-1])
    s.zflat, s.outflat = arrays[f"z{L}"].reshape(-1), arrays["out"].reshape(-1)
    return s


def bias_stack(spec, flat_stack, i: int):
    """b_i of every trial as a (K, k) view of the stacked flat vectors."""
    g = next(g for g in spec.layout if g.layer == i and g.kind == "bias")
    return flat_stack[:, g.offset : g.offset + g.size]


def batched_matmul(a, b, out, runs) -> None:
    """out[r] = a[r] @ b[r] for the trials in `runs` ((start, stop) ranges), one matmul per range."""
    xp = array_module(out)
    for lo, hi in runs:
        xp.matmul(a[lo:hi], b[lo:hi], out=out[lo:hi])


def runs_of(indices) -> list:
    """[(start, stop), ...]: the sorted trial indices as contiguous ranges."""
    out = []
    for k in sorted(indices):
        if out and out[-1][1] == k:
            out[-1][1] = k + 1
        else:
            out.append([k, k + 1])
    return [tuple(r) for r in out]


def forward(s, trials, runs, *, relu: bool = False) -> None:
    """trials: per training trial (spec, layers, v, rng), v its step.StepBuffers view at s.b rows.
    relu (CPU): bias + ReLU over the stack, as the NumPy reference computes them (the fused
    kernels give the same bits for ReLU, docs/architecture.md); else each trial's own pieces."""
    h = s.x
    for spec, _, v, rng in trials:
        step.forward_input(v, train=True, rng=rng, keep=(spec.dropout or (1.0, 1.0))[0])
    L = trials[0][0].n_layers
    for i in range(1, L + 1):
        batched_matmul(h, s.W[i], s.z[i], runs)
        if relu:
            _bias_relu(s, i, L, runs)
            if i < L:
                for spec, _, v, rng in trials:
                    step.hidden_dropout(spec, v, i, train=True, rng=rng)
        else:
            for spec, layers, v, rng in trials:
                step.forward_layer(spec, layers, v, i, train=True, rng=rng)
        h = s.a[i] if i < L else None


def softmax_loss(s, runs) -> dict:
    """Softmax cross-entropy over the stack (nn/losses.py's operations, row by row the same):
    {trial: sum of its batch's losses}; the probabilities are left in s.out."""
    xp = array_module(s.out)
    sums = {}
    for lo, hi in runs:
        z, out, m, lse = s.z[-1][lo:hi], s.out[lo:hi], s.rows[lo:hi, 0], s.rows[lo:hi, 1]
        xp.max(z, axis=2, out=m)
        xp.subtract(z, m[..., None], out=out)
        xp.exp(out, out=out)
        xp.sum(out, axis=2, out=lse)
        out /= lse[..., None]
        xp.log(lse, out=lse)
        lse += m
        index = s.index[lo:hi]
        xp.add(s.offsets[lo:hi], s.y[lo:hi], out=index)
        index += s.base[lo:hi]
        xp.take(s.zflat, index, out=m, mode="clip")  # z_y
        lse -= m
        for k in range(lo, hi):
            sums[k] = float(s.rows[k, 1].sum(dtype="float64"))
    return sums


def softmax_delta(s, runs) -> None:
    """p - onehot(y), over the batch size, in s.out (after softmax_loss, whose indices it reuses)."""
    xp = array_module(s.out)
    for lo, hi in runs:
        p_y, index = s.rows[lo:hi, 0], s.index[lo:hi]
        xp.take(s.outflat, index, out=p_y, mode="clip")
        p_y -= 1
        xp.put(s.outflat, index, p_y)
        s.out[lo:hi] /= s.b


def backward(s, trials, runs, *, relu: bool = False, delta_done: bool = False) -> None:
    """trials: per training trial (spec, layers, glayers, v) after its loss. relu: the CPU's
    stacked ReLU backward and bias gradients (the reference's operations); delta_done: the
    output delta is in s.out already (softmax_delta)."""
    xp = array_module(s.out)
    if not delta_done:
        for spec, _, _, v in trials:
            step.backward_output(spec, v)
    delta = s.out
    L = trials[0][0].n_layers
    for i in range(L, 0, -1):
        h_prev = s.a[i - 1] if i > 1 else s.x
        batched_matmul(h_prev.swapaxes(-1, -2), delta, s.dW[i], runs)
        if relu and i == L:
            for lo, hi in runs:
                xp.sum(delta[lo:hi], axis=1, out=s.gb[i][lo:hi])
        elif not relu:
            for spec, _, glayers, v in trials:
                step.bias_grad(spec, glayers, v, i, v.out if i == L else v.z[i])
        if i > 1:
            batched_matmul(delta, s.W[i].swapaxes(-1, -2), s.dA[i - 1], runs)
            if relu:
                _relu_backward(s, trials, runs, i - 1)
            else:
                for spec, layers, glayers, v in trials:
                    step.backward_hidden(spec, layers, glayers, v, i - 1)
            delta = s.z[i - 1]


def _relu_backward(s, trials, runs, j: int) -> None:
    """delta_j = dA_j (times the mask) times 1(z_j > 0), and its column sums, over the stack."""
    xp = array_module(s.out)
    for _, _, _, v in trials:
        if v.mask[j] is not None:
            v.dA[j] *= v.mask[j]
    for lo, hi in runs:
        z = s.z[j][lo:hi]
        xp.greater(z, 0, out=z)  # bool written as 0/1 into the float buffer, as ReLU.backward does
        z *= s.dA[j][lo:hi]
        xp.sum(z, axis=1, out=s.gb[j][lo:hi])


def evaluate(stack_at, trials, X, y, *, relu: bool = False, softmax: bool = False) -> dict:
    """nn/mlp.py evaluate_in for every trial at once: {trial: {"loss", "accuracy", "rmse", ...}}.
    trials: (index, spec, layers, bufs) per trial, bufs its training StepBuffers; stack_at(b):
    the stacked views at b rows. The batches are the ones evaluate_in takes, in its order, and
    each trial's sums add up as there, so each result is the one the trial gets alone."""
    spec = trials[0][1]
    runs = runs_of(k for k, _, _, _ in trials)
    n, B = X.shape[0], trials[0][3].B
    total, correct = dict.fromkeys((t[0] for t in trials), 0.0), dict.fromkeys((t[0] for t in trials), 0)
    sums = {t[0]: RegressionSums() for t in trials} if spec.output.name == "linear" else None
    with small_ufunc_buffers():
        for s0 in range(0, n, B):
            b = min(B, n - s0)
            s = stack_at(b)
            for lo, hi in runs:
                s.x[lo:hi] = X[s0 : s0 + b]  # the same rows for every trial
                s.y[lo:hi] = y[s0 : s0 + b]
            vs = [(k, sp, layers, bufs.at(b)) for k, sp, layers, bufs in trials]
            _evaluate_forward(s, vs, runs, relu)
            parts = softmax_loss(s, runs) if softmax else {k: step.loss_sum(sp, v) for k, sp, _, v in vs}
            for k, sp, _, v in vs:
                total[k] += parts[k]
                c = sp.output.correct(v.out, v.y, v.rows, v.index)
                correct[k] = None if c is None or correct[k] is None else correct[k] + c
                if sums is not None:
                    sums[k].add(v.out, v.y)
    out = {}
    for k in total:
        out[k] = {"loss": total[k] / max(n, 1), "accuracy": None if correct[k] is None else correct[k] / max(n, 1)}
        out[k].update(sums[k].scores(total[k], spec.sizes[-1]) if sums is not None else dict.fromkeys(REGRESSION))
    return out


def _evaluate_forward(s, vs, runs, relu: bool) -> None:
    for _, _, _, v in vs:
        step.forward_input(v, train=False)
    L = vs[0][1].n_layers
    h = s.x
    for i in range(1, L + 1):
        batched_matmul(h, s.W[i], s.z[i], runs)
        if relu:
            _bias_relu(s, i, L, runs)
        else:
            for _, sp, layers, v in vs:
                step.forward_layer(sp, layers, v, i, train=False)
        h = s.a[i] if i < L else None


def _bias_relu(s, i: int, L: int, runs) -> None:
    """Layer i's bias added over the stack, then ReLU into its activations (not on the output
    layer), one run of same-shape trials at a time; the training and evaluation passes share it."""
    for lo, hi in runs:
        z = s.z[i][lo:hi]
        z += s.bias[i][lo:hi, None, :]
        if i < L:
            array_module(z).maximum(z, 0, out=s.a[i][lo:hi])
