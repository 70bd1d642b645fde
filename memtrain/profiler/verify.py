"""`memtrain profile`: allocate the plan for real, run steps, and put the
measured memory next to the estimate, per category and in total.

CPU: tracemalloc sees every NumPy allocation. Each plan buffer's measured
bytes are the traced growth while the arena allocates it; the step's
unplanned temporaries are the traced peak above the allocated state.
CUDA: the same through CuPy's pool (used bytes per buffer, the peak through a
memory hook), plus NVML's figure for the whole process against plan total
with the measured device overhead.
"""

from __future__ import annotations

import dataclasses
import time
import tracemalloc

import numpy as np

from memtrain.backend import array_module, get_backend
from memtrain.errors import ConfigError
from memtrain.memory.measure import active_pool, pool_peak_hook, process_gpu_bytes
from memtrain.memory.overhead import cuda_overhead_now
from memtrain.memory.plan import CATEGORIES
from memtrain.nn.mlp import MLP
from memtrain.train.trainer import Trainer, cpu_kernels
from memtrain.validate import check_scalar

SCHEMA = "memtrain.profile/1"
DEFAULT_TOLERANCE = 0.005
ABS_TOLERANCE = 64 * 1024


def random_batch(spec, n: int, rng):
    """n random inputs and labels of the kind the model's output unit takes."""
    X = rng.standard_normal((n, spec.sizes[0])).astype(spec.dtype)
    kind, C = spec.output.label_kind, spec.sizes[-1]
    if kind == "class":
        return X, rng.integers(0, C, n)
    if kind == "binary":
        return X, rng.integers(0, 2, (n, 1)).astype(spec.dtype)
    return X, rng.standard_normal((n, C)).astype(spec.dtype)


def random_fill(spec, seed: int):
    """fill(v, lo, hi) writing random inputs straight into the plan's batch buffers,
    so a profile or probe holds no data besides the plan's (a real job's data set
    is already in memory when the budget is read)."""
    rng = np.random.default_rng(seed)
    kind, C = spec.output.label_kind, spec.sizes[-1]

    def fill(v, lo, hi):
        _normal_into(rng, v.x)
        if kind == "class":
            v.y[...] = 1
            v.y.cumsum(out=v.y)  # 1, 2, 3, ... without a temporary
            v.y %= C
        elif kind == "binary":
            v.y[...] = 0
            v.y[::2] = 1
        else:
            _normal_into(rng, v.y)

    return fill


def _normal_into(rng, a):
    if isinstance(a, np.ndarray) and a.dtype in (np.float32, np.float64):
        rng.standard_normal(out=a, dtype=a.dtype)
        return
    flat = a.reshape(-1)  # float16 (or a device array): bounded host pieces
    for lo in range(0, flat.size, 1024):
        piece = rng.standard_normal(min(1024, flat.size - lo)).astype(np.float32)
        flat[lo:lo + piece.size] = piece if isinstance(flat, np.ndarray) else array_module(flat).asarray(piece)


class _Meter:
    """Attributes measured bytes to plan categories as the arena allocates."""

    def __init__(self, read):
        self.read = read  # () -> bytes currently allocated
        self.last = read()
        self.by_category = dict.fromkeys(CATEGORIES, 0)

    def take(self, category: str):
        now = self.read()
        self.by_category[category] += now - self.last
        self.last = now

    def __call__(self, buf, array):
        self.take(buf.category)


def _attach_zeros(trainer, spec, rows) -> None:
    """A data set of the planned shape (zeros: only its memory matters here)."""
    kind, C = spec.output.label_kind, spec.sizes[-1]

    def part(n):
        y = np.zeros(n, np.intp) if kind == "class" else np.zeros((n, C), spec.dtype)
        return np.zeros((n, spec.sizes[0]), spec.dtype), y

    n_train, n_val, *held = rows  # (n_train, n_val[, n_test])
    trainer.attach_data(*part(n_train), part(n_val) if n_val else None, resident=True,
                        test=part(held[0]) if held else None)


def _warm_up(setting, backend):
    # lazy imports and first-call caches (NumPy, SciPy's erf, numba's kernels) stay out of the measurement
    spec = setting.spec
    tiny = type(spec).create([3, 2, 2], activation=spec.activation, dropout=spec.dropout, dtype=spec.dtype.name)
    m = MLP.from_spec(tiny, device=backend)
    # the setting's path: a NumPy-path step (training.fused = "auto", a small model) loads no numba
    Trainer(m, "adam", batch_size=2, fused=setting.fused).step(np.zeros((2, 3)), np.zeros(2, int))
    if not backend.is_cuda and setting.fused:
        cpu_kernels(spec, setting.make_optimizer())  # numba and this step's kernels, compiled or loaded


def profile(setting, batch_size: int, *, steps: int = 3, seed: int = 0, backend=None,
            tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Run `steps` real training steps of `setting` at `batch_size`; estimated vs measured."""
    if setting.inference:
        raise ConfigError("profile: --inference is not profiled; profile the training plan")
    check_scalar(steps, "steps", int, min_val=1)
    backend = backend or get_backend(setting.device)
    spec = setting.spec
    fill = random_fill(spec, seed)
    _warm_up(setting, backend)
    if backend.is_cuda:
        return _profile_cuda(setting, batch_size, steps, backend, fill, tolerance)

    t0 = time.perf_counter()
    tracemalloc.start()
    try:
        read = lambda: tracemalloc.get_traced_memory()[0]  # noqa: E731
        base = read()
        meter = _Meter(read)
        model = MLP.from_spec(spec, seed=seed, device=backend)
        meter.take("parameters")
        trainer = Trainer(model, setting.make_optimizer(), batch_size, seed=seed, allocation_observer=meter,
                          patience=1 if setting.keep_best else None, fused=setting.fused)
        if setting.resident_rows:  # a job's data set, resident in the plan
            _attach_zeros(trainer, spec, setting.resident_rows)
            meter.take("data")
        allocated = read()
        tracemalloc.reset_peak()
        losses = [trainer._step(batch_size, fill) for _ in range(steps)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    measured_total = peak - base
    return _result(trainer.plan, meter.by_category, measured_total, peak - allocated, "tracemalloc", steps,
                   tolerance, time.perf_counter() - t0, losses)


def _profile_cuda(setting, batch_size, steps, backend, fill, tolerance):
    import cupy  # noqa: PLC0415

    t0 = time.perf_counter()
    overhead, source, note = cuda_overhead_now(backend.index)  # assumed, labelled, where NVML is blind
    setting = dataclasses.replace(setting, overhead_bytes=overhead, overhead_source=source)
    pool = active_pool(cupy)  # the pool that allocates (a capped one, when installed)
    pool.free_all_blocks()
    with cupy.cuda.Device(backend.index):
        meter = _Meter(pool.used_bytes)
        base = pool.used_bytes()
        model = MLP.from_spec(setting.spec, device=backend)
        meter.take("parameters")
        trainer = Trainer(model, setting.make_optimizer(), batch_size, allocation_observer=meter,
                          patience=1 if setting.keep_best else None)
        if setting.resident_rows:  # a job's data set, resident on the device as the plan has it
            _attach_zeros(trainer, setting.spec, setting.resident_rows)
            meter.take("data")
        allocated = pool.used_bytes()
        hook = pool_peak_hook(pool)
        with hook:
            losses = [trainer._step(batch_size, fill) for _ in range(steps)]
            cupy.cuda.runtime.deviceSynchronize()
        nvml = _nvml_process(backend.index)
    plan = setting.plan(batch_size)  # the trainer's plan with the overhead just measured
    meter.by_category["overhead"] = overhead
    out = _result(plan, meter.by_category, hook.peak - base + overhead, hook.peak - allocated,
                  "cupy_pool", steps, tolerance, time.perf_counter() - t0, losses)
    out["overhead"] = {"bytes": overhead, "source": source, "note": note}
    out["nvml_process"] = nvml
    out["nvml_error_ratio"] = None if nvml is None else nvml / plan.total - 1
    return out


def _nvml_process(index):
    """NVML's figure for this process, None where it has none (not listed, no driver)."""
    try:
        return process_gpu_bytes(index)
    except Exception:  # NVMLError: a reading the report can do without
        return None


def _result(plan, measured: dict, measured_total: int, transient: int, source: str, steps: int,
            tolerance: float, seconds: float, losses) -> dict:
    planned = plan.by_category()
    rows = []
    for cat in CATEGORIES:
        p, m = planned[cat], measured.get(cat, 0)
        if p or m:
            rows.append({"category": cat, "planned": p, "measured": m, "error_bytes": m - p,
                         "error_ratio": (m - p) / p if p else None})
    allowed = max(tolerance * plan.total, ABS_TOLERANCE)
    error = measured_total - plan.total
    return {
        "schema": SCHEMA,
        "source": source,
        "device": plan.device,
        "batch_size": plan.batch_size,
        "steps": steps,
        "rows": rows,
        "step_transient": transient,
        "planned_total": plan.total,
        "measured_total": measured_total,
        "error_bytes": error,
        "error_ratio": error / plan.total,
        "tolerance": {"ratio": tolerance, "bytes": ABS_TOLERANCE, "allowed_bytes": int(allowed)},
        "ok": abs(error) <= allowed,
        "seconds": seconds,
        "final_loss": float(losses[-1]),
    }
