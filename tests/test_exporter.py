"""The exporter process: the job publishes, a separate process serves /metrics."""

import os
import socket
import urllib.request
from pathlib import Path

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


def test_the_exporter_child_runs_only_the_exporter_and_ends_with_a_killed_job(tmp_path):
    """The child is `python -P -m memtrain.exporter` (not the job's main module, nor a memtrain/ in
    the working directory), and a job killed by SIGKILL, which stops nothing, takes its exporter
    with it (end of file on the socketpair) instead of leaving a process serving stale numbers."""
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "memtrain").mkdir()  # a shadowing package where the job runs: the child must not import it
    (tmp_path / "memtrain" / "__init__.py").write_text("raise SystemExit('the wrong memtrain')\n")
    code = ("import sys, time, urllib.request\n"
            f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
            "from memtrain.exporter import Exporter\n"
            "from memtrain.train.state import JobState\n"
            "ex = Exporter(JobState(job='k'), 0)\n"
            "urllib.request.urlopen(f'http://127.0.0.1:{ex.port}/metrics', timeout=30).read()\n"
            "print(ex._proc.pid, flush=True)\n"
            "time.sleep(60)\n")
    job = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        child = int(job.stdout.readline())
        with open(f"/proc/{child}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert argv[1:4] == [b"-P", b"-m", b"memtrain.exporter"], argv
        job.send_signal(signal.SIGKILL)
        job.wait(10)
        deadline = time.monotonic() + 10
        while _running(child):
            assert time.monotonic() < deadline, "the exporter outlived its job"
            time.sleep(0.05)
    finally:
        job.kill()
        job.wait()
        job.stdout.close()


def _running(pid) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie not yet reaped runs nothing
    except FileNotFoundError:
        return False


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
