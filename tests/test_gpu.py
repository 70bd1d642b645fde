"""The CUDA paths, on a real GPU (marked `gpu`: skipped with the reason where none is visible).

CPU tests cover the same logic through NumPy; these check what only a GPU
can: the CuPy pool against the plan, NVML against the plan with the measured
overhead, autobatch under a hard pool limit, and checkpoints moving between
devices.
"""

import numpy as np
import pytest

from memtrain.nn.spec import ModelSpec
from memtrain.profiler.estimate import Setting

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rprop", "lookahead:adam"])
def test_pool_peak_and_nvml_match_the_plan(optimizer):
    from memtrain.backend import get_backend
    from memtrain.profiler.verify import profile

    backend = get_backend("cuda")
    spec = ModelSpec.create([784, 1024, 1024, 10], dtype="float32")
    r = profile(Setting(spec, optimizer, device="cuda"), 256, steps=3, backend=backend, tolerance=0.01)
    assert r["source"] == "cupy_pool"
    assert abs(r["error_ratio"]) <= 0.01, r  # pool peak within 1% of the plan (overhead measured)
    if r["nvml_process"] is not None:
        assert abs(r["nvml_error_ratio"]) <= 0.02, r  # NVML within 2%


def test_autobatch_under_a_hard_pool_limit():
    import cupy

    from memtrain.backend import get_backend
    from memtrain.profiler.autobatch import auto_batch

    backend = get_backend("cuda")
    spec = ModelSpec.create([784, 2048, 2048, 10])
    setting = Setting(spec, "adam", device="cuda")
    limit = 512 * 1024**2
    pool = cupy.cuda.MemoryPool()
    cupy.cuda.set_allocator(pool.malloc)
    pool.set_limit(size=limit)  # a real cap: allocations past it raise OutOfMemoryError
    try:
        from memtrain.profiler.autobatch import probe

        # margin 0: the cap is the pool's own and the pool holds only the plan (the context is outside it)
        r = auto_batch(setting, backend, memory_limit=limit, multiple_of=8, margin=0)
        assert len(r.probes) <= 2 and r.probes[-1].outcome == "fits"
        # brute force: bisection with real steps for the largest multiple of 8 that runs under the cap
        lo, hi = 1, 2 * r.analytic // 8 + 2  # in units of 8 rows
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if probe(setting, 8 * mid, limit, backend).outcome == "fits" else (lo, mid)
        assert r.confirmed >= 0.98 * 8 * lo
    finally:
        cupy.cuda.set_allocator(cupy.get_default_memory_pool().malloc)


def test_a_gpu_checkpoint_resumes_on_the_cpu(tmp_path):
    from memtrain import MLP, Trainer
    from memtrain.train import checkpoint as ckpt

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((64, 20)).astype(np.float32), rng.integers(0, 3, 64)
    gpu = Trainer(MLP([20, 16, 3], device="cuda"), "adam", 32)
    gpu.fit(X, y, epochs=1)
    ckpt.save(tmp_path, gpu.state_arrays(), gpu.state_meta(), gpu.identity())
    cpu = Trainer(MLP([20, 16, 3], device="cpu"), "adam", 32)
    arrays, record = ckpt.load_latest(tmp_path, cpu.identity())
    cpu.load_state(arrays, record["state"])
    np.testing.assert_array_equal(cpu.model.params, gpu.backend.to_numpy(gpu.model.params))


def test_cpu_and_gpu_training_agree():
    from memtrain import MLP, Trainer

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((320, 20)).astype(np.float32), rng.integers(0, 3, 320)
    results = []
    for device in ("cpu", "cuda"):
        m = MLP([20, 32, 3], seed=1, device=device)
        t = Trainer(m, "adam", 32)
        for i in range(10):
            t.step(X[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32])
        results.append(m.backend.to_numpy(m.params))
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-6)


def test_a_job_on_the_gpu_reports_its_pool_peak(tmp_path):
    """The Job's CUDA path: the pool-peak hook, the device's NVML uuid, the auto batch (a multiple of 8)."""
    import io

    from memtrain.config import from_dict
    from memtrain.profiler.autobatch import auto_batch
    from memtrain.train.job import Job

    cfg = from_dict({"name": "g", "device": "cuda", "model": {"layers": [64, 128, 10]},
                     "training": {"epochs": 1, "batch_size": "auto", "memory_limit": "2GiB"},
                     "output": {"dir": str(tmp_path / "out")}})
    job = Job(cfg, log_format="json", progress=False, stream=io.StringIO(), install_signals=False,
              batch_solver=auto_batch)
    s = job.run()
    assert s["epochs"] == 1 and job.state.device.startswith("cuda") and job.state.state == "finished"
    assert job.state.measured["cupy_pool_peak"] > 0
    assert s["batch_size"] % 8 == 0 or s["batch_size"] == job.train_rows  # capped by the training set
    assert s["measured_peak_bytes"] is None  # tracemalloc measures host memory: off on the GPU
