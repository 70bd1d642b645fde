import math
import re
import shutil
import subprocess
import sys
import tracemalloc
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from memtrain import metrics
from memtrain.memory import measure
from memtrain.memory.plan import CATEGORIES
from memtrain.metrics import JobCollector, serve
from memtrain.train.state import JOB_STATES, JobState

DOCS = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
PLANNED = {"parameters": 4000, "gradients": 4000, "optimizer_state": 8000, "activations": 2500, "workspace": 512,
           "data": 1024, "overhead": 0}


def _state(**kw) -> JobState:
    s = JobState(job="digits", model="64-128-10 relu softmax", optimizer="adam", dtype="float32", device="cpu",
                 planned_bytes=dict(PLANNED), batch_size=32, micro_batch_size=16, oom_recoveries=1, steps=7,
                 samples=224, epoch=2, train_loss=0.5, validation_loss=0.625, validation_accuracy=0.875,
                 learning_rate=1e-3, gradient_norm=2.5, nonfinite_steps=3, checkpoints=2,
                 last_checkpoint_time=1_700_000_000.0, memory_budget=8 * 1024**2)
    for seconds in (0.0003, 0.002, 0.002, 0.7, 20.0):
        s.step_durations.observe(seconds)
    s.set_state("training")
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def _registry(state, measure_gpu=False) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(JobCollector(state, measure_gpu=measure_gpu))
    return registry


def _families(registry) -> set:
    """The family names as exposed (# TYPE lines): memtrain_steps_total, memtrain_job_info, ..."""
    return set(re.findall(r"^# TYPE (\S+) ", generate_latest(registry).decode(), re.M))


@contextmanager
def _tracing():
    already = tracemalloc.is_tracing()
    if not already:
        tracemalloc.start()
    try:
        yield
    finally:
        if not already:
            tracemalloc.stop()


# -- values --------------------------------------------------------------------------------------------


def test_planned_bytes_per_category():
    r = _registry(_state())
    for cat in CATEGORIES:
        assert r.get_sample_value("memtrain_memory_planned_bytes", {"category": cat}) == PLANNED[cat]


def test_planned_bytes_absent_before_planning():
    r = _registry(_state(planned_bytes={}))
    assert "memtrain_memory_planned_bytes" not in _families(r)
    assert "memtrain_memory_estimate_error_ratio" not in _families(r)


def test_counters_and_gauges():
    r = _registry(_state())
    v = r.get_sample_value
    assert v("memtrain_steps_total") == 7
    assert v("memtrain_samples_total") == 224
    assert v("memtrain_oom_recoveries_total") == 1
    assert v("memtrain_nonfinite_steps_total") == 3
    assert v("memtrain_checkpoints_total") == 2
    assert v("memtrain_batch_size") == 32
    assert v("memtrain_micro_batch_size") == 16
    assert v("memtrain_epoch") == 2
    assert v("memtrain_train_loss") == 0.5
    assert v("memtrain_validation_loss") == 0.625
    assert v("memtrain_validation_accuracy") == 0.875
    assert v("memtrain_learning_rate") == 1e-3
    assert v("memtrain_gradient_norm") == 2.5
    assert v("memtrain_last_checkpoint_timestamp_seconds") == 1_700_000_000.0
    assert v("memtrain_job_start_timestamp_seconds") > 0


def test_values_are_read_at_scrape_time():
    s = _state()
    r = _registry(s)
    s.steps, s.train_loss = 8, 0.25
    assert r.get_sample_value("memtrain_steps_total") == 8
    assert r.get_sample_value("memtrain_train_loss") == 0.25


def test_no_created_samples():
    text = generate_latest(_registry(_state())).decode()
    assert "_created" not in text


def test_unknown_values_are_left_out():
    s = JobState()  # a job that has not planned or stepped yet
    r = _registry(s)
    names = _families(r)
    for absent in ("memtrain_train_loss", "memtrain_validation_loss", "memtrain_validation_accuracy",
                   "memtrain_learning_rate", "memtrain_gradient_norm", "memtrain_last_checkpoint_timestamp_seconds",
                   "memtrain_batch_size", "memtrain_micro_batch_size"):
        assert absent not in names
    assert "NaN" not in generate_latest(r).decode()
    assert r.get_sample_value("memtrain_steps_total") == 0
    s.gradient_norm = math.inf  # a diverged step: not unknown, so exposed
    assert r.get_sample_value("memtrain_gradient_norm") == math.inf


def test_step_duration_histogram():
    s = _state()
    r = _registry(s)
    v = r.get_sample_value
    for le, cumulative in s.step_durations.cumulative():
        assert v("memtrain_step_duration_seconds_bucket", {"le": le}) == cumulative
    assert v("memtrain_step_duration_seconds_bucket", {"le": "0.0005"}) == 1
    assert v("memtrain_step_duration_seconds_bucket", {"le": "0.0025"}) == 3
    assert v("memtrain_step_duration_seconds_bucket", {"le": "10.0"}) == 4
    assert v("memtrain_step_duration_seconds_bucket", {"le": "+Inf"}) == 5
    assert v("memtrain_step_duration_seconds_count") == 5
    assert v("memtrain_step_duration_seconds_sum") == pytest.approx(20.7043)


def test_job_state_enum():
    s = _state()
    r = _registry(s)
    for name in JOB_STATES:
        assert r.get_sample_value("memtrain_job_state", {"memtrain_job_state": name}) == (name == "training")
    s.set_state("finished")
    assert r.get_sample_value("memtrain_job_state", {"memtrain_job_state": "finished"}) == 1
    assert r.get_sample_value("memtrain_job_state", {"memtrain_job_state": "training"}) == 0


def test_job_info():
    r = _registry(_state())
    labels = {"job": "digits", "model": "64-128-10 relu softmax", "optimizer": "adam", "dtype": "float32",
              "device": "cpu", "gpu_uuid": ""}
    assert r.get_sample_value("memtrain_job_info", labels) == 1
    on_gpu = _registry(_state(device="cuda:0", gpu_uuid="GPU-1234"))
    assert on_gpu.get_sample_value("memtrain_job_info", {**labels, "device": "cuda:0", "gpu_uuid": "GPU-1234"}) == 1


def test_rss_is_always_measured():
    assert _registry(_state()).get_sample_value("memtrain_memory_measured_bytes", {"source": "rss"}) > 0


def test_tracemalloc_peak_and_cpu_error_ratio():
    r = _registry(_state())
    with _tracing():
        keep = bytearray(100_000)  # noqa: F841 - a peak at least this large
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in r.collect() for s in f.samples}
    peak = samples[("memtrain_memory_measured_bytes", (("source", "tracemalloc_peak"),))]
    assert peak >= 100_000
    ratio = samples[("memtrain_memory_estimate_error_ratio", ())]
    assert ratio == pytest.approx(peak / sum(PLANNED.values()) - 1)


def test_not_tracing_no_ratio_on_cpu():
    if tracemalloc.is_tracing():
        pytest.skip("tracemalloc is tracing in this test process (python -X tracemalloc)")
    r = _registry(_state())
    assert r.get_sample_value("memtrain_memory_measured_bytes", {"source": "tracemalloc_peak"}) is None
    assert r.get_sample_value("memtrain_memory_estimate_error_ratio") is None


def test_reported_tracemalloc_peak_wins():
    r = _registry(_state(measured={"tracemalloc_peak": 39_072}))
    assert r.get_sample_value("memtrain_memory_measured_bytes", {"source": "tracemalloc_peak"}) == 39_072
    assert r.get_sample_value("memtrain_memory_estimate_error_ratio") == pytest.approx(39_072 / 20_036 - 1)


# -- CUDA readings, with CuPy and NVML stood in for -------------------------------------------------------


class _FakePool:
    def used_bytes(self):
        return {0: 1, 1: 15_000}[_FakeCupy.current]

    def total_bytes(self):
        return {0: 2, 1: 20_000}[_FakeCupy.current]


class _FakeCupy:
    """Just the part of cupy the collector touches; the pool answers per current device."""

    current = 0

    def get_default_memory_pool(self):
        return _FakePool()

    class cuda:  # noqa: N801 - cupy.cuda
        class Device:
            def __init__(self, index):
                self.index = index

            def __enter__(self):
                self.previous, _FakeCupy.current = _FakeCupy.current, self.index

            def __exit__(self, *exc):
                _FakeCupy.current = self.previous


def test_cuda_measurements(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _FakeCupy())
    monkeypatch.setattr(measure, "nvml_state", lambda: measure.NvmlState(True, driver_version="550.54.15"))
    monkeypatch.setattr(measure, "process_gpu_bytes", lambda index, pid=None, bus=None: {1: 400_000}[index])
    monkeypatch.setattr(measure, "gpu_list", lambda with_processes=True: [])
    planned = {**PLANNED, "overhead": 300_000}
    s = _state(device="cuda:1", gpu_index=1, planned_bytes=planned, measured={"cupy_pool_peak": 18_000})
    r = _registry(s, measure_gpu=True)
    v = r.get_sample_value
    assert v("memtrain_memory_measured_bytes", {"source": "cupy_pool_used"}) == 15_000  # device 1's, not 0's
    assert v("memtrain_memory_measured_bytes", {"source": "cupy_pool_total"}) == 20_000
    assert v("memtrain_memory_measured_bytes", {"source": "cupy_pool_peak"}) == 18_000
    assert v("memtrain_memory_measured_bytes", {"source": "nvml_process"}) == 400_000
    assert v("memtrain_memory_estimate_error_ratio") == pytest.approx(18_000 / sum(PLANNED.values()) - 1)
    # without GPU measurement only what the job reported remains
    r = _registry(s, measure_gpu=False)
    assert r.get_sample_value("memtrain_memory_measured_bytes", {"source": "cupy_pool_used"}) is None
    assert r.get_sample_value("memtrain_memory_measured_bytes", {"source": "nvml_process"}) is None
    assert r.get_sample_value("memtrain_memory_measured_bytes", {"source": "cupy_pool_peak"}) == 18_000


def test_cuda_without_a_pool_peak_has_no_ratio_even_when_tracing():
    r = _registry(_state(device="cuda:0", gpu_index=0))
    with _tracing():
        assert r.get_sample_value("memtrain_memory_estimate_error_ratio") is None


def test_cupy_is_never_imported():
    code = ("import sys; from memtrain.train.state import JobState; from memtrain.metrics import JobCollector; "
            "list(JobCollector(JobState(device='cuda:0', gpu_index=0)).collect()); print('cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


FAKE_GPUS = [
    {"index": 0, "uuid": "GPU-0000", "name": "NVIDIA H100 80GB HBM3", "pci_bus_id": "00000000:3B:00.0",
     "driver_version": "550.54.15", "memory_total": 85_520_809_984, "memory_used": 600_000_000,
     "memory_free": 84_920_809_984, "utilization": 0.42, "temperature_c": 35, "power_w": 71.5},
    {"index": 1, "uuid": "GPU-0001", "name": "NVIDIA H100 80GB HBM3", "pci_bus_id": "00000000:5B:00.0",
     "driver_version": "550.54.15", "memory_total": 85_520_809_984, "memory_used": 0,
     "memory_free": 85_520_809_984, "utilization": None, "temperature_c": 30, "power_w": None},
]


def test_gpu_metrics(monkeypatch):
    monkeypatch.setattr(measure, "gpu_list", lambda with_processes=True: FAKE_GPUS)
    r = _registry(_state(), measure_gpu=True)
    v = r.get_sample_value
    g0, g1 = {"gpu": "0", "uuid": "GPU-0000"}, {"gpu": "1", "uuid": "GPU-0001"}
    assert v("memtrain_gpu_memory_total_bytes", g0) == 85_520_809_984
    assert v("memtrain_gpu_memory_used_bytes", g0) == 600_000_000
    assert v("memtrain_gpu_memory_free_bytes", g1) == 85_520_809_984
    assert v("memtrain_gpu_utilization_ratio", g0) == 0.42
    assert v("memtrain_gpu_temperature_celsius", g1) == 30
    assert v("memtrain_gpu_power_watts", g0) == 71.5
    assert v("memtrain_gpu_power_watts", g1) is None  # not supported on that board: left out
    assert v("memtrain_gpu_utilization_ratio", g1) is None
    assert v("memtrain_gpu_info", {**g1, "name": "NVIDIA H100 80GB HBM3", "pci_bus_id": "00000000:5B:00.0",
                                   "driver_version": "550.54.15"}) == 1


def test_a_failing_nvml_never_fails_the_scrape(monkeypatch):
    def broken(with_processes=True):
        raise RuntimeError("NVML: GPU is lost")

    monkeypatch.setattr(measure, "gpu_list", broken)
    r = _registry(_state(), measure_gpu=True)
    assert r.get_sample_value("memtrain_steps_total") == 7
    assert not any(n.startswith("memtrain_gpu_") for n in _families(r))


def test_without_nvml_scrape_works_and_has_no_gpu_metrics():
    nvml = measure.nvml_state()
    if nvml.ok:
        pytest.skip("NVML is available on this machine")
    r = _registry(_state(), measure_gpu=True)
    names = _families(r)
    assert "memtrain_steps_total" in names
    assert not [n for n in names if n.startswith("memtrain_gpu_")]
    assert r.get_sample_value("memtrain_memory_measured_bytes", {"source": "nvml_process"}) is None


# -- ties: the lists, the docs and promtool agree ---------------------------------------------------------


def _everything(monkeypatch) -> CollectorRegistry:
    """A registry exposing every family there is (GPUs and CuPy stood in for)."""
    monkeypatch.setitem(sys.modules, "cupy", _FakeCupy())
    monkeypatch.setattr(measure, "gpu_list", lambda with_processes=True: FAKE_GPUS)
    monkeypatch.setattr(measure, "nvml_state", lambda: measure.NvmlState(True, driver_version="550.54.15"))
    monkeypatch.setattr(measure, "process_gpu_bytes", lambda index, pid=None, bus=None: 400_000)
    return _registry(_state(device="cuda:1", gpu_index=1, measured={"cupy_pool_peak": 18_000}, validation_rmse=0.5,
                            validation_mae=0.25, validation_r2=0.75), measure_gpu=True)


def test_a_regression_job_exposes_rmse_mae_r2_and_a_classifier_accuracy():
    reg = _registry(_state(validation_accuracy=float("nan"), validation_rmse=0.5, validation_mae=0.25,
                           validation_r2=0.75))
    assert reg.get_sample_value("memtrain_validation_rmse") == 0.5
    assert reg.get_sample_value("memtrain_validation_mae") == 0.25
    assert reg.get_sample_value("memtrain_validation_r2") == 0.75
    assert reg.get_sample_value("memtrain_validation_accuracy") is None
    cls = _registry(_state())
    assert cls.get_sample_value("memtrain_validation_accuracy") == 0.875
    assert cls.get_sample_value("memtrain_validation_rmse") is None


def test_labels_cover_the_lists():
    r = _registry(_state())
    cats = {s.labels["category"] for f in r.collect() for s in f.samples if s.name == "memtrain_memory_planned_bytes"}
    states = {s.labels["memtrain_job_state"] for f in r.collect() for s in f.samples
              if s.name == "memtrain_job_state"}
    assert cats == set(CATEGORIES) and states == set(JOB_STATES)


def test_every_metric_is_documented(monkeypatch):
    names = _families(_everything(monkeypatch))
    assert len(names) >= 28
    docs = DOCS.read_text()
    missing = [n for n in sorted(names) if f"`{n}" not in docs]
    assert not missing, f"not in docs/metrics.md: {missing}"
    # memtrain_service_*: the service's own /metrics (tests/test_service_api.py checks those)
    documented = {n for n in re.findall(r"^\| `(memtrain_\w+)", docs, re.M) if not n.startswith("memtrain_service_")}
    assert documented <= names, f"documented but not exposed: {documented - names}"


def test_exposition_naming():
    for name in _families(_registry(_state())):
        assert name.startswith("memtrain_") and re.fullmatch(r"[a-z0-9_]+", name)


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not on PATH (Debian: apt-get install prometheus)")
def test_promtool_check_metrics(monkeypatch):
    with _tracing():
        exposition = generate_latest(_everything(monkeypatch))
    out = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True, timeout=60)
    assert out.returncode == 0, (out.stdout + out.stderr).decode()
    assert out.stdout.strip() == b"" and out.stderr.strip() == b"", (out.stdout + out.stderr).decode()


# -- serving ----------------------------------------------------------------------------------------------


@contextmanager
def _serving(*args, **kw):
    server, thread = serve(*args, **kw)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_serve_exposes_metrics_over_http():
    with _serving(_state(), 0) as server:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1" and port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            body = resp.read().decode()
    assert "memtrain_steps_total 7.0" in body
    assert 'memtrain_job_state{memtrain_job_state="training"} 1.0' in body
    assert "_created" not in body


def test_serve_uses_the_registry_given():
    registry = CollectorRegistry()
    registry.register(JobCollector(_state(steps=41), measure_gpu=False))
    with _serving(_state(), 0, registry=registry) as server:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/metrics", timeout=10) as resp:
            assert "memtrain_steps_total 41.0" in resp.read().decode()


def test_serve_on_a_port_in_use_raises():
    with _serving(_state(), 0) as server:
        port = server.server_address[1]
        with pytest.raises(OSError) as info:
            serve(_state(), port)
    assert "in use" in str(info.value).lower()


def test_metrics_module_is_not_imported_by_memtrain():
    code = "import sys, memtrain; print('memtrain.metrics' in sys.modules, 'prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    assert metrics.PREFIX == "memtrain_"


def test_memory_budget_is_exposed_when_known():
    r = _registry(_state())
    assert r.get_sample_value("memtrain_memory_budget_bytes") == 8 * 1024**2
    assert _registry(_state(memory_budget=float("nan"))).get_sample_value("memtrain_memory_budget_bytes") is None


def test_describe_names_every_family_collect_yields():
    from prometheus_client import CollectorRegistry

    from memtrain.metrics import FAMILIES, PREFIX, JobCollector
    from memtrain.train.state import JobState

    s = JobState(job="d", model="m", optimizer="adam", dtype="float32", device="cpu", state="training",
                 batch_size=8, micro_batch_size=4, train_loss=0.1, validation_loss=0.2, validation_accuracy=0.5,
                 learning_rate=0.01, gradient_norm=1.0, last_checkpoint_time=1.0, memory_budget=1e6,
                 validation_rmse=0.3, validation_mae=0.2, validation_r2=0.9)  # both kinds: every family
    s.planned_bytes = {"parameters": 10}
    s.measured = {"tracemalloc_peak": 20}
    c = JobCollector(s, measure_gpu=False)
    described = {f.name for f in c.describe()}
    collected = {f.name for f in c.collect()}
    assert collected <= described
    assert described == {PREFIX + n for n, _ in FAMILIES if not n.startswith("gpu")}
    assert collected == described  # a full state yields every family a CPU job has
    CollectorRegistry(auto_describe=True).register(c)  # names checked through describe(), no scrape
    assert {f.name for f in JobCollector(s).describe()} == {PREFIX + n for n, _ in FAMILIES}


def test_the_exporter_layout_follows_the_job_state():
    import dataclasses

    from memtrain import exporter
    from memtrain.train.state import EXPORT, JobState

    fields = [f.name for f in dataclasses.fields(JobState)]
    shipped = [name for name, _, _ in exporter.LAYOUT] + list(exporter.STATIC)
    assert sorted(shipped) == sorted(fields)  # every field is shipped, none twice
    assert all(f.metadata.get(EXPORT) for f in dataclasses.fields(JobState))
    assert exporter._SIZE == sum(w for _, _, w in exporter.LAYOUT)


# -- a trial array's collector (tests/test_array_metrics.py: a real array, scraped) ------------------------


def test_a_trial_arrays_collector_labels_each_trial_and_counts_its_memory_once():
    array = _state(job="array-x-2", optimizer="adam,sgd")
    trials = [("x", _state(job="x")), ("x", _state(job="x", optimizer="sgd", steps=9, validation_loss=math.nan))]
    r = CollectorRegistry()
    r.register(JobCollector(array, measure_gpu=False, trials=trials))
    v = r.get_sample_value
    assert metrics.trial_labels(["x", "x", "y"]) == ["x#0", "x#1", "y"]  # names that repeat stay apart
    assert (v("memtrain_steps_total", {"trial": "x#0"}), v("memtrain_steps_total", {"trial": "x#1"})) == (7, 9)
    assert v("memtrain_steps_total") is None  # no unlabelled training series in an array
    assert v("memtrain_validation_loss", {"trial": "x#0"}) == 0.625
    assert v("memtrain_validation_loss", {"trial": "x#1"}) is None  # unknown for that trial only
    assert v("memtrain_step_duration_seconds_count", {"trial": "x#1"}) == 5
    assert v("memtrain_job_state", {"trial": "x#1", "memtrain_job_state": "training"}) == 1
    ident = {"model": "64-128-10 relu softmax", "dtype": "float32", "device": "cpu", "gpu_uuid": ""}
    assert v("memtrain_job_info", {"trial": "", "job": "array-x-2", "optimizer": "adam,sgd", **ident}) == 1
    assert v("memtrain_job_info", {"trial": "x#1", "job": "x", "optimizer": "sgd", **ident}) == 1
    assert sum(v("memtrain_memory_planned_bytes", {"category": c}) for c in CATEGORIES) == sum(PLANNED.values())
    assert _families(r) == _families(_registry(_state()))  # the same families, each declared once
    if shutil.which("promtool"):
        out = subprocess.run(["promtool", "check", "metrics"], input=generate_latest(r), capture_output=True,
                             timeout=60)
        assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), (out.stdout + out.stderr).decode()
