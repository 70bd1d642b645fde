"""Devices, budgets and the GPU paths of the service. No GPU here: NVML's answers are stood in
for (as tests/test_metrics.py does), and a recording executor takes the launches."""

import json

import pytest

from memtrain.errors import MemtrainError
from memtrain.launch.executor import Handle
from memtrain.memory import measure, overhead, overhead_cache
from memtrain.service import devices
from memtrain.service.core import Service, Settings

GIB = 1024**3
FAKE = [{"index": 0, "uuid": "GPU-aaaa", "name": "Fake A", "memory_free": 20 * GIB, "processes": [{"pid": 11, "used_bytes": 300},
                                                                                  {"pid": 12, "used_bytes": 400}]},
        {"index": 1, "uuid": "GPU-bbbb", "name": "Fake B", "memory_free": 40 * GIB, "processes": []}]


@pytest.fixture
def fake_nvml(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMTRAIN_CACHE_DIR", str(tmp_path / "cache"))  # no measured CUDA overhead but the test's
    monkeypatch.setattr(measure, "gpu_list", lambda with_processes=True: [
        {k: v for k, v in g.items() if with_processes or k != "processes"} for g in FAKE])


class Recording:
    """An executor that starts nothing and keeps each Launch."""

    name = "recording"

    def __init__(self):
        self.launches = []

    def start(self, launch):
        self.launches.append(launch)
        return Handle(launch.job_id, self.name, json.dumps({"n": len(self.launches)}))

    def poll(self, handle):
        return None

    def cancel(self, handle):
        pass

    def adopt(self, handle):
        return True

    def close(self):
        pass


def test_parse_devices_and_budget_errors(tmp_path):
    assert devices.parse_devices("cpu") == ["cpu"]
    assert devices.parse_devices("cuda:0, cuda:1") == ["cuda:0", "cuda:1"]
    for bad, why in (("gpu0", "expected auto, cpu or cuda:N"), ("cpu,cpu", "twice")):
        with pytest.raises(MemtrainError, match=why):
            devices.parse_devices(bad)
    with pytest.raises(MemtrainError, match="cuda:0 is not among the devices"):
        devices.discover("cpu", {"cuda:0": GIB}, max_jobs=None, cpu_overhead=0)
    (cpu,) = devices.discover("cpu", {}, max_jobs=4, cpu_overhead=10, cores=8)
    assert cpu.budget_bytes == cpu.free_at_start_bytes - max(devices.CPU_RESERVE_MIN, cpu.free_at_start_bytes // 10)
    assert (cpu.threads_per_job, cpu.overhead_bytes, cpu.overhead_source) == (2, 10, "given")


def test_gpus_from_nvml(fake_nvml, tmp_path):
    assert devices.parse_devices("auto") == ["cuda:0", "cuda:1"]
    a, b = devices.discover("auto", {"cuda:1": 10 * GIB}, max_jobs=None)
    assert (a.name, a.kind, a.uuid, a.free_at_start_bytes) == ("cuda:0", "cuda", "GPU-aaaa", 20 * GIB)
    assert a.budget_bytes == 20 * GIB - devices.GPU_RESERVE - int(devices.GPU_RESERVE_FRACTION * 20 * GIB)
    assert (b.budget_bytes, b.budget_source, b.max_jobs, b.overhead_source) == (10 * GIB, "given", 8, "assumed")
    overhead_cache.record("Fake A", 300 * 1024**2)  # what a memtrain run on such a GPU measured
    a, b = devices.discover("auto", {}, max_jobs=None)
    assert (a.overhead_bytes, a.overhead_source) == (300 * 1024**2, "measured")
    assert (b.overhead_bytes, b.overhead_source) == (overhead.ASSUMED_CUDA_OVERHEAD, "assumed")
    assert devices.gpu_process_bytes("cuda:0", [12, 99]) == 400
    with pytest.raises(MemtrainError, match="NVML lists no GPU with index 7"):
        devices.free_now("cuda:7")


def test_gpu_job_gets_its_gpu_by_uuid_and_the_budget_as_its_limit(fake_nvml, tmp_path):
    ex = Recording()
    service = Service(Settings(state_dir=tmp_path, devices="cuda:1", executor=ex))
    try:
        out = service.submit(json.dumps({"name": "g", "device": "cuda", "model": {"layers": [64, 16, 10]},
                                         "training": {"batch_size": "auto", "epochs": 1}}).encode(),
                             "application/json")
        (launch,) = ex.launches
        assert out["device"] == "cuda:1" and launch.device == "cuda:1"
        assert launch.env["CUDA_VISIBLE_DEVICES"] == "GPU-bbbb" and launch.config["device"] == "cuda:0"
        budget = service.devices[0].budget_bytes
        assert launch.config["training"]["memory_limit"] == budget
        batch = launch.config["training"]["batch_size"]
        assert batch == 1072  # capped by the 1,079 training rows, then a multiple of 8 (on a GPU)
        (view,) = service.device_views()
        assert view["committed_bytes"] == launch.resources.total_bytes <= budget
    finally:
        service.stop()


def test_a_queued_job_that_no_longer_fits_after_a_restart_fails_instead_of_blocking(tmp_path):
    body = json.dumps({"name": "x", "model": {"layers": [64, 16, 10]}, "training": {"epochs": 1}}).encode()
    first = Service(Settings(state_dir=tmp_path, devices="cpu", budgets={"cpu": GIB}, cpu_overhead=0,
                             max_jobs_per_device=1, executor=Recording()))
    ids = [first.submit(body, "application/json")["id"] for _ in range(2)]  # one starts, one waits
    first.stop()
    second = Service(Settings(state_dir=tmp_path, devices="cpu", budgets={"cpu": 1024}, cpu_overhead=0,
                              executor=Recording()))
    try:
        second.scheduler.tick()
        job = second.job(ids[1])
        assert job["state"] == "failed" and job["reason"].startswith("never fits this service's devices: needs")
    finally:
        second.stop()


def test_a_relative_state_dir_is_made_absolute_before_workers_use_it(tmp_path, monkeypatch):
    """The overhead probe's worker runs in its own directory: `--state-dir state` once crashed it."""
    from memtrain.service.server import settings_from

    monkeypatch.chdir(tmp_path)
    s = settings_from(state_dir="state", host="127.0.0.1", port=0, devices="cpu", budgets={}, token_file=None,
                      data_roots=(), max_jobs_per_device=1, head_wait=60, max_attempts=1, overhead=None)
    assert s.state_dir == tmp_path / "state" and s.state_dir.is_absolute()
