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
        # below the job's CPU priority: when both want a core, the job's steps go first
        assert os.getpriority(os.PRIO_PROCESS, ex._proc.pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
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
    assert ex._proc.poll() is not None
    with pytest.raises(OSError):
        scrape(ex.port)


def test_the_job_does_not_wait_for_the_exporter_process_to_start():
    """The constructor returns with the port bound before the child has imported anything; a
    stop() before the child serves ends it at once and the port is closed."""
    ex = Exporter(JobState(job="quick"), 0)
    try:
        assert ex.port > 0 and not ex.ready()  # the child has not said "ready" yet
    finally:
        ex.stop()
    assert ex._proc.poll() is not None
    with pytest.raises(OSError):
        scrape(ex.port)


def test_the_exporter_process_does_not_run_the_jobs_main_module(tmp_path):
    """spawn would run the job's main module (memtrain.cli under `memtrain train`: click and every
    command module) in the child first; the child imports only the exporter, and the job's own
    __main__ is the same module afterwards."""
    import subprocess
    import sys

    marker = tmp_path / "main-ran-in-child"
    script = tmp_path / "jobmain.py"
    script.write_text(
        "import sys, urllib.request\n"
        "if __name__ == '__mp_main__':\n"
        f"    open({str(marker)!r}, 'w').close()\n"
        "if __name__ == '__main__':\n"
        "    from memtrain.exporter import Exporter\n"
        "    from memtrain.train.state import JobState\n"
        "    main = sys.modules['__main__']\n"
        "    ex = Exporter(JobState(job='m'), 0)\n"
        "    try:\n"
        "        url = f'http://127.0.0.1:{ex.port}/metrics'\n"
        "        assert b'memtrain_steps_total' in urllib.request.urlopen(url, timeout=30).read()\n"
        "    finally:\n"
        "        ex.stop()\n"
        "    assert sys.modules['__main__'] is main\n"
        "    print('served')\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.split() == ["served"], out.stderr
    assert not marker.exists()


def test_port_in_use_is_an_oserror():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        with pytest.raises(OSError, match="in use"):
            Exporter(JobState(), s.getsockname()[1])
    finally:
        s.close()


def test_ctrl_c_on_a_job_with_metrics_stops_cleanly_without_a_traceback(tmp_path):
    """A terminal's Ctrl-C sends SIGINT to the whole foreground process group, the
    exporter process included: it must ignore it (the job stops it) instead of dying
    with a KeyboardInterrupt traceback printed before the job's clean stop line."""
    import signal
    import subprocess
    import sys
    import threading
    import time

    args = ["train", "--layers", "64,32,10", "--dataset", "digits", "--device", "cpu", "--epochs", "100000",
            "--metrics-port", "0", "--output-dir", str(tmp_path / "run")]
    # Python's own SIGINT handling even where this test runs with SIGINT ignored (a background
    # job of a non-interactive shell), as a command typed at a terminal has it
    code = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            f"sys.argv = ['memtrain', *{args!r}]; runpy.run_module('memtrain.cli', run_name='__main__')")
    # a new session: its own process group, as a shell gives a foreground job
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    try:
        while not any(line.startswith("epoch 2/") for line in list(lines)):
            assert p.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        os.killpg(p.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        assert p.wait(60) == 0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    reader.join(10)
    p.stdout.close()
    out = "".join(lines)
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert "stopped   on SIGINT at step" in out and "checkpoint saved" in out, out
