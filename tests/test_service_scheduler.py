"""The scheduler's decisions, one tick at a time, with an executor that starts nothing and
answers as told (no process: these run in milliseconds, so mutation testing can run them
for every mutant of memtrain/service/scheduler.py).

The store is the truth: what it says before a process exists, after it ends, after a
cancel and after a restart is what a service killed at that point would act on."""

import json
import signal

import pytest
from service_helpers import Scripted

from memtrain.launch.executor import Exit
from memtrain.service.core import Service, Settings

GIB = 1024**3


def job(name="j", epochs=1, **training) -> bytes:
    return json.dumps({"name": name, "model": {"layers": [64, 16, 10]},
                       "training": {"epochs": epochs, "batch_size": 32, **training}}).encode()


@pytest.fixture
def service(tmp_path):
    ex = Scripted()
    s = Service(Settings(state_dir=tmp_path / "state", devices="cpu", budgets={"cpu": GIB}, cpu_overhead=1000,
                         max_jobs_per_device=2, executor=ex, metrics_ports=False))
    s.ex = ex
    yield s
    s.stop()


def submit(service, body=None) -> str:
    return service.submit(body or job(), "application/json")["id"]


# -- 5. launch after commit -----------------------------------------------------------------------


def test_the_store_says_running_before_the_executor_starts_the_process(service):
    seen = []
    service.ex.on_start = lambda launch: seen.append(service.store.get(launch.job_id))
    job_id = submit(service)
    (stored,) = seen
    assert stored["state"] == "running" and stored["device"] == "cpu" and stored["ref"] is None
    assert stored["attempts"] == 1 and stored["started_at"] is not None
    assert stored["reserved_bytes"] == stored["planned_bytes"] + 1000  # the plan and the process overhead
    after = service.store.get(job_id)
    assert after["ref"] == json.dumps({"n": 1}) and after["executor"] == "scripted"


def test_a_cancel_landing_between_commit_and_launch_reaches_the_process(service):
    def cancel_now(launch):
        service.cancel(launch.job_id)

    service.ex.on_start = cancel_now
    job_id = submit(service)
    stored = service.store.get(job_id)
    # the process was started: the store must know it (running, its handle), and the process must be told
    assert stored["state"] == "running" and stored["ref"] and stored["cancel_requested"]
    assert service.ex.cancelled == [job_id]
    service.ex.exits[job_id] = Exit(None, signal.SIGTERM)
    service.scheduler.tick()
    assert service.store.get(job_id)["state"] == "cancelled"
