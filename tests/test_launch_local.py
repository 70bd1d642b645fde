"""LocalExecutor: a real worker process per job, its own session, found again by pid + start time."""

import dataclasses
import json
import os
import signal
import time

from memtrain.launch.executor import Handle, Launch
from memtrain.launch.local import LocalExecutor, process_start_time
from memtrain.launch.worker import read_json


def launch(tmp_path, epochs=2, job_id="j1", **training):
    cfg = {"name": job_id, "model": {"layers": [64, 16, 10]}, "optimizer": {"name": "sgd", "lr": 0.1},
           # the NumPy step: a worker that does not import numba starts with ~0.8 s of CPU less
           "training": {"epochs": epochs, "batch_size": 32, "fused": False, **training},
           "checkpoint": {"dir": str(tmp_path / "ckpt")}, "output": {"dir": str(tmp_path / "out")}}
    return Launch(job_id, cfg, str(tmp_path), str(tmp_path / "job.log"), env={"OMP_NUM_THREADS": 1})


def wait(ex, h, timeout=60):
    deadline = time.time() + timeout
    while (e := ex.poll(h)) is None:
        assert time.time() < deadline
        time.sleep(0.05)
    return e


def test_runs_a_job_and_reads_its_exit(tmp_path):
    ex = LocalExecutor()
    h = ex.start(launch(tmp_path))
    ref = json.loads(h.ref)
    assert ref["start"] is not None  # a job this short may have ended already: its start time was read at start
    e = wait(ex, h)
    assert e.ok and e.signal is None
    assert read_json(tmp_path / "exit.json")["result"]["epochs"] == 2
    assert read_json(tmp_path / "progress.json")["epoch"] == 2
    assert (tmp_path / "out" / "model-final.npz").exists()
    assert '"event": "summary"' in (tmp_path / "job.log").read_text()


def test_cancel_checkpoints_and_kill_is_a_signal(tmp_path):
    ex = LocalExecutor()
    h = ex.start(launch(tmp_path / "a", epochs=500, batch_size=8))
    ref = json.loads(h.ref)
    assert ref["start"] == process_start_time(ref["pid"])  # found again by pid and start time
    with open(f"/proc/{ref['pid']}/environ", "rb") as f:  # the thread rule is in place before NumPy loads
        assert b"OMP_NUM_THREADS=1" in f.read().split(b"\0")
    while (read_json(tmp_path / "a" / "progress.json") or {}).get("epoch") is None:
        time.sleep(0.05)
    ex.cancel(h)
    e = wait(ex, h)
    assert e.ok and read_json(tmp_path / "a" / "exit.json")["result"]["stopped"] == "SIGTERM"
    h2 = ex.start(launch(tmp_path / "b", epochs=500, batch_size=8, job_id="j2"))
    time.sleep(0.3)
    ex.kill(h2)
    e = wait(ex, h2)
    assert e.signal == signal.SIGKILL and not e.ok


def test_adopt_checks_the_start_time_and_reads_the_exit_record(tmp_path):
    ex = LocalExecutor()
    h = ex.start(launch(tmp_path, epochs=1))
    assert ex.adopt(h)
    ref = json.loads(h.ref)
    recycled = dataclasses.replace(h, ref=json.dumps({**ref, "start": ref["start"] + 1}))
    assert not ex.adopt(recycled)  # same pid, another process: not ours
    wait(ex, h)
    other = LocalExecutor()  # a restarted service: not the process's parent
    assert not other.adopt(h)
    assert other.poll(h).ok  # read from exit.json
    (tmp_path / "exit.json").unlink()
    lost = other.poll(h)
    assert lost.signal == signal.SIGKILL and "without an exit record" in lost.reason
    assert not other.adopt(Handle("x", "local", "not json"))


def test_bad_config_exits_2_with_its_error_line(tmp_path):
    ex = LocalExecutor()
    h = ex.start(launch(tmp_path, epochs=0))
    e = wait(ex, h)
    assert e.code == 2 and "training.epochs" in e.reason


# -- warm workers (launch/forkserver.py) ----------------------------------------------------------


def _warm_executor():
    ex = LocalExecutor(warm=True)
    deadline = time.time() + 60
    while not os.path.exists(ex.warm.socket):  # the server has imported what a worker imports
        assert time.time() < deadline and ex.warm.alive()
        time.sleep(0.05)
    return ex


def test_warm_workers_are_forked_isolated_and_end_as_plain_ones(tmp_path):
    ex = _warm_executor()
    try:
        doomed = ex.start(launch(tmp_path / "a", epochs=500, batch_size=8, job_id="a"))
        assert json.loads(doomed.ref)["forked"]
        pid = json.loads(doomed.ref)["pid"]
        while (read_json(tmp_path / "a" / "progress.json") or {}).get("epoch") is None:
            time.sleep(0.05)
        assert os.getsid(pid) == pid  # its own session: a signal to its group reaches it alone
        ex.kill(doomed)  # one job's crash...
        end = wait(ex, doomed)
        assert end.signal == signal.SIGKILL and "SIGKILL" in end.reason  # the exact wait status, from STATUS
        assert ex.warm.alive()
        fine = ex.start(dataclasses.replace(launch(tmp_path / "b", job_id="b"), env={"OPENBLAS_NUM_THREADS": 1}))
        assert json.loads(fine.ref)["forked"]
        assert wait(ex, fine).ok  # ...does not touch the next one
        assert read_json(tmp_path / "b" / "exit.json")["result"]["epochs"] == 2
        log = (tmp_path / "b" / "job.log").read_text()
        assert "warm worker: forked by" in log and "openblas 1" in log  # the launch's threads, set at run time
        assert "Exception ignored" not in log  # e.g. a signal written to the server's wake-up pair
        (tmp_path / "b" / "worker-status.json").unlink()  # as when it ended while no service watched it
        assert LocalExecutor().poll(fine).ok  # a restarted service reads its exit.json at once (not requeued)
        bad = ex.start(launch(tmp_path / "c", epochs=0, job_id="c"))
        e = wait(ex, bad)
        assert e.code == 2 and "training.epochs" in e.reason  # exit codes as a plain worker's
        cancelled = ex.start(launch(tmp_path / "d", epochs=500, batch_size=8, job_id="d"))
        while (read_json(tmp_path / "d" / "progress.json") or {}).get("epoch") is None:
            time.sleep(0.05)
        ex.cancel(cancelled)
        assert wait(ex, cancelled).ok and read_json(tmp_path / "d" / "exit.json")["result"]["stopped"] == "SIGTERM"
    finally:
        ex.close()
    assert not ex.warm.alive()


def test_a_gpu_launch_or_another_interpreter_env_is_never_forked(tmp_path):
    ex = _warm_executor()
    try:
        h = ex.start(dataclasses.replace(launch(tmp_path / "g", epochs=0), device="cuda:0"))
        assert "forked" not in json.loads(h.ref)  # a plain start: CUDA never in a forking process
        assert wait(ex, h).code == 2
        # PYTHONPATH (a sitecustomize) is read when an interpreter starts: a fork would not apply it
        h = ex.start(dataclasses.replace(launch(tmp_path / "p", epochs=0), env={"PYTHONPATH": str(tmp_path)}))
        assert "forked" not in json.loads(h.ref) and wait(ex, h).code == 2
    finally:
        ex.close()
