"""The GPU Trainer on the CPU stand-in for CuPy (tests/cupy_standin.py): device arrays that refuse
implicit conversion to NumPy, CuPy's set() rule, a counted pool, a stream capture that records the
step and refuses allocations and host reads; memtrain's kernels built for the host.

What these catch is Python treating device arrays as host arrays, which the host-built kernels
alone cannot; what stays for a GPU: CuPy's own GEMMs and a real capture (tests/test_gpu.py)."""

import gc

import cupy_standin
import numpy as np
import pytest

from memtrain import MLP, Trainer


@pytest.fixture
def cp(monkeypatch, host_launcher):
    return cupy_standin.install(monkeypatch, host_launcher)


def _data(n=70, d=12, c=3, seed=0, output="softmax"):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    if output == "sigmoid":
        return X, (rng.random((n, 1)) > 0.5).astype(float)
    return X, rng.integers(0, c, n)


def _pair(layers, opt="adam", batch=16, output="softmax", **kw):
    """The same model and trainer on the CPU (NumPy reference path) and on the stand-in device."""
    out = []
    for device in ("cpu", "cuda"):
        m = MLP(layers, output=output, dtype="float64", seed=3, device=device)
        out.append(Trainer(m, opt, batch, fused=False, **kw))
    return out


def test_the_stand_in_behaves_as_cupy_where_it_matters(cp):
    a = cp.zeros((4, 3), dtype=np.float32)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.ascontiguousarray(a)
    with pytest.raises(ValueError, match=r"Shape mismatch. Old shape: \(4, 3\), new shape: \(3,\)"):
        a.set(np.ones(3, np.float32))
    with pytest.raises(TypeError, match="float64 array cannot be set to float32 array"):
        a.set(np.ones((4, 3)))
    with pytest.raises(TypeError, match="Unsupported type"):
        a + np.ones((4, 3), np.float32)
    pool = cp.get_default_memory_pool()
    used = pool.used_bytes()
    b = cp.ones((10,), dtype=np.float32)
    assert pool.used_bytes() == used + 512  # rounded to the pool's granule
    view = b[2:5]
    assert pool.used_bytes() == used + 512  # a view takes nothing
    del b, view
    assert pool.used_bytes() == used
    s = cp.cuda.Stream()
    s.begin_capture()
    with pytest.raises(cupy_standin.CaptureError):
        cp.zeros(3)
    with pytest.raises(cupy_standin.CaptureError):
        float(a[0, 0])
    a += 1  # recorded, not run
    g = s.end_capture()
    assert a.get().sum() == 0
    g.launch()
    g.launch()
    assert a.get().sum() == 24


def test_validation_data_on_the_device_trains_and_evaluates_as_on_the_cpu(cp):
    """Defect 2: the resident validation split is on the device; evaluating it copied it with
    np.ascontiguousarray, which CuPy refuses. Trainer.step and evaluate take device arrays too."""
    X, y = _data()
    cpu, gpu = _pair([12, 16, 3])
    h_cpu = cpu.fit(X[:50], y[:50], epochs=2, validation=(X[50:], y[50:]))
    h_gpu = gpu.fit(X[:50], y[:50], epochs=2, validation=(X[50:], y[50:]))
    assert isinstance(gpu.arrays["val_x"], cp.ndarray) and gpu._graph.graph.replays > 0
    assert [r["val_loss"] for r in h_gpu] == pytest.approx([r["val_loss"] for r in h_cpu], rel=1e-9)
    assert [r["val_accuracy"] for r in h_gpu] == [r["val_accuracy"] for r in h_cpu]
    np.testing.assert_allclose(gpu.model.params.get(), cpu.model.params, rtol=1e-9)
    Xd, yd = cp.asarray(X[50:]), cp.asarray(y[50:])
    assert gpu.evaluate(Xd, yd)["loss"] == pytest.approx(cpu.evaluate(X[50:], y[50:])["loss"], rel=1e-9)
    assert gpu.step(Xd[:16], yd[:16]) == pytest.approx(cpu.step(X[50:66], y[50:66]), rel=1e-9)
    assert gpu.model.evaluate(Xd, yd)["accuracy"] == cpu.model.evaluate(X[50:], y[50:])["accuracy"]


def test_streaming_needs_host_arrays(cp):
    from memtrain.errors import ConfigError

    X, y = _data()
    _, gpu = _pair([12, 16, 3])
    with pytest.raises(ConfigError, match=r"X: streamed data \(resident=False\) must be host arrays"):
        gpu.fit(cp.asarray(X), cp.asarray(y), epochs=1, resident=False)
    gpu.fit(X, y, epochs=1, resident=False)  # host arrays stream batch by batch
    assert isinstance(gpu._host_data[0], np.ndarray) and gpu.history[-1]["train_loss"] > 0


def test_host_labels_are_copied_with_numpy_assignment_rules(cp):
    """CuPy's set() needs exactly the buffer's shape: a one-row batch's label given as (1,) for a
    (1, 1) sigmoid output broadcasts on the CPU and must on the GPU too."""
    X, y = _data(output="sigmoid")
    cpu, gpu = _pair([12, 8, 1], output="sigmoid")
    for t in (cpu, gpu):
        t.step(X[:16], y[:16])
    assert gpu.step(X[16:17], y[16:17, 0]) == pytest.approx(cpu.step(X[16:17], y[16:17, 0]), rel=1e-9)
    lists, ints = X[17:19].tolist(), [[1], [0]]  # a list, and labels of another dtype: cast on the host
    assert gpu.step(lists, ints) == pytest.approx(cpu.step(lists, ints), rel=1e-9)


def test_dropping_a_trainer_frees_its_device_buffers(cp):
    """Defect 5: trainer -> GraphStepper -> trainer was a cycle, so a dropped GPU trainer kept its
    plan allocated until a full garbage collection (the next benchmark case measured both)."""
    X, y = _data()
    pool = cp.get_default_memory_pool()
    gc.collect()
    gc.disable()  # only reference counting frees anything below
    try:
        before = pool.used_bytes()
        m = MLP([12, 64, 3], device="cuda")
        t = Trainer(m, "adam", 16)
        for i in range(3):
            t.step(X[16 * i:16 * i + 16], y[16 * i:16 * i + 16])
        assert t._graph.graph.replays == 1 and pool.used_bytes() >= before + t.plan.total
        del m, t
        assert pool.used_bytes() == before
    finally:
        gc.enable()


def test_a_one_unit_layer_fed_by_one_input_runs_every_step_eagerly(cp):
    """(n,b)@(b,k) for dW is (1,b)@(b,1) at every batch size when a one-unit layer has one input."""
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((40, 1)), rng.integers(0, 3, 40)
    cpu, gpu = _pair([1, 1, 3])
    cpu.fit(X, y, epochs=2)
    gpu.fit(X, y, epochs=2)
    assert gpu.events == [] and gpu._graph.graph.graphs == {} and gpu._graph.graph.replays == 0
    np.testing.assert_allclose(gpu.model.params.get(), cpu.model.params, rtol=1e-9)


def test_a_one_row_batch_through_a_one_unit_layer_runs_eagerly_and_the_graph_stays_on(cp):
    """Defect 6: (1,k)@(k,1) allocates in CuPy (tensordot's m == n == 1 path); inside a capture the
    replays would write to a freed block. That shape runs eagerly; the others are still replayed."""
    X, y = _data(n=33, output="sigmoid")  # batches of 16, 16 and a last one of 1 row
    cpu, gpu = _pair([12, 8, 1], output="sigmoid")
    h_cpu = cpu.fit(X, y, epochs=3)
    h_gpu = gpu.fit(X, y, epochs=3)
    assert gpu.events == [] and gpu._graph.graph.disabled is None, gpu.events
    assert 1 not in gpu._graph.graph.graphs and gpu._graph.graph.replays >= 3
    assert [r["train_loss"] for r in h_gpu] == pytest.approx([r["train_loss"] for r in h_cpu], rel=1e-9)
    np.testing.assert_allclose(gpu.model.params.get(), cpu.model.params, rtol=1e-9)


def test_the_float16_gradient_norm_is_one_reduction_and_one_read(cp):
    """The eager float16 step (clipping on the host) read the norm back in 1,024-element pieces, one
    device synchronisation each; the fused reduction reads it once."""
    X, y = _data(n=32, d=200)
    m = MLP([200, 64, 3], dtype="float16", device="cuda")
    t = Trainer(m, "sgd", 32, clip_norm=0.5, cuda_graph=False)
    ref = Trainer(MLP([200, 64, 3], dtype="float16", device="cpu"), "sgd", 32, clip_norm=0.5, fused=False)
    t.step(X, y)
    ref.step(X, y)
    before = cupy_standin._S.syncs
    t.step(X, y)
    ref.step(X, y)
    assert m.params.shape[0] > 10 * 1024 and cupy_standin._S.syncs - before <= 4
    assert t.last_grad_norm == pytest.approx(ref.last_grad_norm, rel=1e-3)
    np.testing.assert_allclose(m.params.get().astype(float), ref.model.params.astype(float), atol=2e-3)


def test_out_of_memory_on_the_device_halves_the_micro_batch_and_goes_on(cp):
    """CuPy's OutOfMemoryError mid-step: the plan is remade on the device with half the micro-batch,
    the same step runs again as gradient accumulation, and training ends where the CPU's does."""
    X, y = _data(n=64)
    cpu, gpu = _pair([12, 16, 3])
    fired = []

    def oom_once(step, micro):
        if step == 2 and not fired:
            fired.append(step)
            raise cp.cuda.memory.OutOfMemoryError(1 << 30, 0, 0)

    gpu.fault_hook = oom_once
    for t in (cpu, gpu):
        for i in range(4):
            t.step(X[16 * i:16 * i + 16], y[16 * i:16 * i + 16])
    assert gpu.oom_recoveries == 1 and gpu.micro_batch_size == 8 and gpu.events[-1]["event"] == "oom_recovery"
    np.testing.assert_allclose(gpu.model.params.get(), cpu.model.params, rtol=1e-9, atol=1e-12)


def test_a_pool_cap_reached_mid_step_halves_the_micro_batch(cp):
    """No fault hook: a capped pool holding exactly the plan, and an eager step (l2 runs eagerly)
    whose gradient norm needs one more block. The trainer re-plans smaller on the device and goes on."""
    X, y = _data(n=64)
    cpu = Trainer(MLP([12, 16, 3], dtype="float64", seed=3, l2=1e-3), "adam", 32, fused=False)
    pool = cp.cuda.MemoryPool()
    cp.cuda.set_allocator(pool.malloc)
    gpu = Trainer(MLP([12, 16, 3], dtype="float64", seed=3, l2=1e-3, device="cuda"), "adam", 32)
    pool.set_limit(size=pool.used_bytes())  # the plan fits exactly; nothing more does
    for t in (cpu, gpu):
        for i in range(2):
            t.step(X[32 * i:32 * i + 32], y[32 * i:32 * i + 32])
    assert gpu.oom_recoveries >= 1 and gpu.micro_batch_size <= 16 and pool.used_bytes() <= pool.get_limit()
    oom = [e for e in gpu.events if e["event"] == "oom_recovery"]
    assert oom[0]["error"] == "OutOfMemoryError" and oom[0]["micro_batch_from"] == 32
    np.testing.assert_allclose(gpu.model.params.get(), cpu.model.params, rtol=1e-9, atol=1e-12)


def test_micro_batches_and_a_last_partial_batch_on_the_device(cp):
    X, y = _data(n=45)
    cpu, gpu = _pair([12, 16, 3], micro_batch_size=4)
    h_cpu = cpu.fit(X[:37], y[:37], epochs=2, validation=(X[37:], y[37:]))
    h_gpu = gpu.fit(X[:37], y[:37], epochs=2, validation=(X[37:], y[37:]))
    assert [r["val_loss"] for r in h_gpu] == pytest.approx([r["val_loss"] for r in h_cpu], rel=1e-9)
    np.testing.assert_allclose(gpu.model.params.get(), cpu.model.params, rtol=1e-9, atol=1e-12)
