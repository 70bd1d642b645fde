"""The step makes no batch-sized temporary the plan does not count.

NumPy's take(..., out=) with the default mode="raise" buffers the whole output
(b x itemsize); the loss and the batch gather use mode="clip" (indices valid by
construction), so their transient memory is a few hundred bytes at any batch.
"""

import json
import tracemalloc
from types import SimpleNamespace

import numpy as np
from click.testing import CliRunner

from memtrain.cli import main
from memtrain.nn.losses import make_output
from memtrain.train.trainer import _gather

B = 100_000
SMALL = 128 * 1024  # NumPy's bounded ufunc buffers (~64 KiB), far below one batch-sized vector (400,000 B)


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_softmax_loss_and_delta_allocate_no_batch_sized_buffer():
    rng = np.random.default_rng(0)
    k = 10
    z = rng.standard_normal((B, k), dtype=np.float32)
    out = np.empty_like(z)
    y = rng.integers(0, k, B).astype(np.intp)
    rows = np.empty((2, B), np.float32)
    index = np.empty(B, np.intp)
    offsets = np.arange(B, dtype=np.intp) * k
    unit = make_output("softmax")
    unit.loss_sum(z, out, y, rows, index, offsets)  # warm-up: first-call caches
    expected = out.copy()
    expected[np.arange(B), y] -= 1
    expected /= B
    assert _peak(lambda: unit.loss_sum(z, out, y, rows, index, offsets)) < SMALL
    assert _peak(lambda: unit.delta(out, y, rows, index)) < SMALL
    np.testing.assert_allclose(out, expected, rtol=1e-6)  # still p - onehot(y), averaged


def test_the_batch_gather_writes_straight_into_the_plan_buffers():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2 * B, 64), dtype=np.float32)
    y = rng.integers(0, 10, 2 * B).astype(np.intp)
    idx = rng.permutation(2 * B)
    v = SimpleNamespace(x=np.empty((B, 64), np.float32), y=np.empty(B, np.intp))
    fill = _gather(X, y, idx)
    fill(v, 0, B)
    peak = _peak(lambda: fill(v, B, 2 * B))
    assert peak < SMALL, peak  # was a whole extra batch (25.6 MB here)
    np.testing.assert_array_equal(v.x, X[idx[B:]])
    np.testing.assert_array_equal(v.y, y[idx[B:]])


def test_profile_shows_no_unplanned_step_temporaries_at_a_large_batch():
    r = CliRunner().invoke(main, ["profile", "--layers", "64,128,10", "--batch-size", "50000", "--format", "json"])
    p = json.loads(r.output)
    assert r.exit_code == 0
    assert p["step_transient"] < SMALL, p["step_transient"]  # was ~4 B per sample (201 KB here)
