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

from memtrain.backend import array_module
from memtrain.nn import step


def weight_stack(spec, flat_stack, i: int):
    """W_i of every trial as a (K, n, k) view of the stacked flat vectors (K, P)."""
    g = next(g for g in spec.layout if g.layer == i and g.kind == "weight")
    view = flat_stack[:, g.offset : g.offset + g.size]
    out = view.reshape((view.shape[0], *g.shape))
    assert out.base is not None  # a view, never a copy: the GEMM writes into the trials' own rows
    return out


def stack_views(spec, arrays: dict, b: int) -> SimpleNamespace:
    """The stacked buffers at b rows: x, z_i, a_i, out, dA_i (K, b, width) and W_i, dW_i (K, n, k)."""
    L, sizes = spec.n_layers, spec.sizes
    K = arrays["x"].shape[0]
    s = SimpleNamespace(b=b, x=arrays["x"][:, :b], out=arrays["out"][:, :b])
    s.z = [None] + [arrays[f"z{i}"][:, :b] for i in range(1, L + 1)]
    s.a = [None] + [arrays[f"a{i}"][:, :b] for i in range(1, L)]
    s.dA = [None] + [arrays["dA"][:, : b * sizes[i]].reshape(K, b, sizes[i]) for i in range(1, L)]
    s.W = [None] + [weight_stack(spec, arrays["params"], i) for i in range(1, L + 1)]
    s.dW = [None] + [weight_stack(spec, arrays["grads"], i) for i in range(1, L + 1)]
    return s


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


def forward(s, trials, runs) -> None:
    """trials: per training trial (spec, layers, v, rng), v its step.StepBuffers view at s.b rows."""
    h = s.x
    for spec, _, v, rng in trials:
        step.forward_input(v, train=True, rng=rng, keep=(spec.dropout or (1.0, 1.0))[0])
    L = trials[0][0].n_layers
    for i in range(1, L + 1):
        batched_matmul(h, s.W[i], s.z[i], runs)
        for spec, layers, v, rng in trials:
            step.forward_layer(spec, layers, v, i, train=True, rng=rng)
        h = s.a[i] if i < L else None


def backward(s, trials, runs) -> None:
    """trials: per training trial (spec, layers, glayers, v) after its loss_sum()."""
    for spec, _, _, v in trials:
        step.backward_output(spec, v)
    delta = s.out
    L = trials[0][0].n_layers
    for i in range(L, 0, -1):
        h_prev = s.a[i - 1] if i > 1 else s.x
        batched_matmul(h_prev.swapaxes(-1, -2), delta, s.dW[i], runs)
        for spec, _, glayers, v in trials:
            step.bias_grad(spec, glayers, v, i, v.out if i == L else v.z[i])
        if i > 1:
            batched_matmul(delta, s.W[i].swapaxes(-1, -2), s.dA[i - 1], runs)
            for spec, layers, glayers, v in trials:
                step.backward_hidden(spec, layers, glayers, v, i - 1)
            delta = s.z[i - 1]
