"""The exporter process: the job publishes, a separate process serves /metrics."""

import os
import socket
import urllib.request

import pytest

from memtrain.exporter import _SIZE, Exporter, _pack, _unpack
from memtrain.train.state import JobState


def scrape(port) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def sample(text, name):
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_pack_and_unpack_round_trip():
    import numpy as np

    a = JobState(job="j", batch_size=64, steps=10, train_loss=0.5, state="training")
    a.planned_bytes = {"parameters": 100, "gradients": 100}
    a.measured = {"tracemalloc_peak": 300}
    a.step_durations.observe(0.003)
    arr = np.zeros(_SIZE)
    _pack(a, arr)
    b = JobState()
    _unpack(arr, b)
    assert (b.batch_size, b.steps, b.train_loss, b.state) == (64, 10, 0.5, "training")
    assert b.planned_bytes == {"parameters": 100, "gradients": 100} and b.measured == {"tracemalloc_peak": 300}
    assert b.step_durations.counts == a.step_durations.counts and b.step_durations.total == a.step_durations.total
    assert b.validation_loss != b.validation_loss  # NaN stays NaN (absent in the exposition)


def test_the_exporter_process_serves_what_the_job_publishes():
    state = JobState(job="exp", model="m", optimizer="adam", dtype="float32", device="cpu", state="training")
    ex = Exporter(state, 0)
    try:
        assert ex._proc.pid != os.getpid()
        state.steps, state.batch_size = 42, 128
        state.planned_bytes = {"parameters": 1000}
        state.step_durations.observe(0.01)
        ex.publish(state)
        text = scrape(ex.port)
        assert sample(text, "memtrain_steps_total") == 42
        assert sample(text, "memtrain_batch_size") == 128
        assert 'memtrain_memory_planned_bytes{category="parameters"} 1000.0' in text
        assert sample(text, "memtrain_step_duration_seconds_count") == 1
        assert 'memtrain_job_info{device="cpu",dtype="float32",gpu_uuid="",job="exp",model="m",optimizer="adam"} 1.0' in text
        rss = sample(text, 'memtrain_memory_measured_bytes{source="rss"}')
        assert rss is not None and rss > 10_000_000  # the job's RSS (numpy and all), read by pid
    finally:
        ex.stop()
    assert not ex._proc.is_alive()
    with pytest.raises(OSError):
        scrape(ex.port)


def test_port_in_use_is_an_oserror():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        with pytest.raises(OSError, match="in use"):
            Exporter(JobState(), s.getsockname()[1])
    finally:
        s.close()
