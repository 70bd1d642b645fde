"""Cancel races and requeue against a real service on 127.0.0.1 with real worker processes:
any number of DELETEs (and SIGTERMs) give one clean stop with its checkpoint and exit record;
a cancelled job requeued under its id resumes and ends bit-identical to an uninterrupted run."""

import json
import os
import resource
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from service_helpers import ThreadServer, digits_job

from memtrain.cli import main
from memtrain.launch.local import process_start_time


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ThreadServer(tmp_path_factory.mktemp("state"), max_jobs_per_device=2) as s:
        yield s


def _training(server, job_id, epochs=1):
    """Waits until the job has written the history of `epochs` epochs (so it is in its loop)."""
    deadline = time.time() + 60
    while (server.request("GET", f"/jobs/{job_id}")[1]["progress"].get("epoch") or 0) < epochs:
        assert time.time() < deadline, server.request("GET", f"/jobs/{job_id}")[1]
        time.sleep(0.02)


def sigterms_until_gone(pid, every=0.002, timeout=60):
    """Real SIGTERMs to `pid` until it has exited: before, during and after its stop checkpoint."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process_start_time(pid) is None:  # gone or a zombie (its parent, the executor, reaps it)
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        time.sleep(every)
    raise AssertionError(f"process {pid} still running after {timeout} s of SIGTERMs")


def _clean_stop(server, job_id):
    done = server.wait(job_id)
    run_dir = Path(server.settings.state_dir) / "jobs" / job_id
    assert done["state"] == "cancelled" and done["reason"] == "cancelled on request (checkpoint saved)", done
    exit_record = json.loads((run_dir / "exit.json").read_text())
    assert exit_record["code"] == 0 and exit_record["result"]["stopped"] == "SIGTERM", exit_record
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    assert list((run_dir / "checkpoints").glob("ckpt-*.npz"))
    return done


def test_five_deletes_10_ms_apart_give_one_clean_stop(server):
    job_id = server.request("POST", "/jobs", digits_job("five", epochs=300, batch=8))[1]["id"]
    _training(server, job_id)
    answers = []
    for _ in range(5):
        answers.append(server.request("DELETE", f"/jobs/{job_id}"))
        time.sleep(0.01)
    assert all(status == 200 for status, _ in answers), answers
    _clean_stop(server, job_id)


def test_ten_concurrent_deletes_and_a_burst_of_sigterms(server):
    """The service signals once; the worker itself survives SIGTERMs arriving while it writes its
    stop checkpoint (the default handler used to be back by then and killed it mid-write)."""
    job_id = server.request("POST", "/jobs", digits_job("ten", epochs=300, batch=8))[1]["id"]
    _training(server, job_id)
    pid = json.loads(server.service.store.get(job_id).ref)["pid"]
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(server.request("DELETE", f"/jobs/{job_id}")))
               for _ in range(10)]
    for t in threads:
        t.start()
    sigterms_until_gone(pid)
    for t in threads:
        t.join(30)
    assert len(answers) == 10 and all(status == 200 for status, _ in answers), answers
    _clean_stop(server, job_id)


def test_a_cancel_while_the_worker_starts_up_is_one_clean_stop(server):
    """A SIGTERM before the Job's loop (the worker importing, loading data) is remembered and
    handed to the Job: it stops at its first step with a checkpoint, instead of dying unrecorded."""
    job_id = server.request("POST", "/jobs", digits_job("early", epochs=300, batch=8))[1]["id"]
    progress = Path(server.settings.state_dir) / "jobs" / job_id / "progress.json"
    deadline = time.time() + 30
    while not progress.exists():  # the worker's signal handler is in place once it writes this
        assert time.time() < deadline
        time.sleep(0.005)
    assert json.loads(progress.read_text())["event"] == "starting"
    assert server.request("DELETE", f"/jobs/{job_id}")[0] == 200
    _clean_stop(server, job_id)


def test_delete_of_an_ended_job_is_409_and_changes_nothing(server):
    job_id = server.request("POST", "/jobs", digits_job("ended", epochs=1, batch=64))[1]["id"]
    before = server.wait(job_id)
    assert before["state"] == "succeeded", before["reason"]
    status, body = server.request("DELETE", f"/jobs/{job_id}")
    assert status == 409 and set(body) == {"detail"}
    assert body["detail"].startswith(f"job {job_id}: already succeeded; nothing to cancel") and "\n" not in body["detail"]
    assert server.request("GET", f"/jobs/{job_id}")[1] == before
    assert Path(before["result"]["model"]).exists()
    r = CliRunner().invoke(main, ["cancel", job_id, "--server", server.url])
    assert r.exit_code == 2 and r.output.startswith("memtrain: error: job") and "already succeeded" in r.output
    status, body = server.request("POST", f"/jobs/{job_id}/requeue")
    assert status == 409 and "only a cancelled or failed job can be requeued" in body["detail"]
    assert server.request("POST", "/jobs/nosuch/requeue")[0] == 404


def test_cancel_then_requeue_resumes_under_its_id_bit_identical(server):
    job = digits_job("resumed", epochs=6, batch=16)
    job_id = server.request("POST", "/jobs", job)[1]["id"]
    alone_id = server.request("POST", "/jobs", {**job, "name": "alone"})[1]["id"]
    _training(server, job_id, epochs=2)
    assert server.request("DELETE", f"/jobs/{job_id}")[0] == 200
    stopped = _clean_stop(server, job_id)
    r = CliRunner().invoke(main, ["requeue", job_id, "--server", server.url])
    assert r.exit_code == 0 and r.output.startswith(f"{job_id}: "), r.output
    done = server.wait(job_id)
    assert done["state"] == "succeeded" and done["attempts"] == 1, done["reason"]
    alone = server.wait(alone_id)
    assert alone["state"] == "succeeded", alone["reason"]
    log = (Path(server.settings.state_dir) / "jobs" / job_id / "job.log").read_text()
    resumed = [json.loads(line) for line in log.splitlines() if '"event": "resume"' in line]
    assert resumed and resumed[-1]["step"] >= stopped["progress"]["step"] > 0  # it went on, not from step 0
    with np.load(done["result"]["model"]) as a, np.load(alone["result"]["model"]) as b:  # closed: no stray warning
        keys = [k for k in a.files if not k.startswith("meta")]
        assert keys and all(np.array_equal(a[k], b[k]) for k in keys)
    assert done["result"]["epochs"] == alone["result"]["epochs"] == 6


FINISH_CAP = """
import resource
from pathlib import Path

from memtrain.memory.measure import proc_kib
from memtrain.train import job as job_module

_finish = job_module.Job.finish


def finish(self):
    # the first attempt of the job named {name}: after its last checkpoint, RLIMIT_AS is lowered to 1 MiB above
    # what the worker has mapped, for good (its 8192-wide layer's 2 MiB of weights cannot be copied to disk)
    mark = Path({mark!r})
    if self.cfg.name == {name!r} and not mark.exists():
        mark.write_text("capped")
        vm = proc_kib("/proc/self/status", "VmSize")
        resource.setrlimit(resource.RLIMIT_AS, (vm + 1024**2, resource.RLIM_INFINITY))
    return _finish(self)


job_module.Job.finish = finish
"""


def test_out_of_memory_in_the_final_evaluation_keeps_the_checkpoint_exits_3_and_is_retried(server, tmp_path,
                                                                                         monkeypatch):
    """A real allocation failure in the finish phase (RLIMIT_AS lowered inside the worker once its last epoch's
    checkpoint is written, by a sitecustomize on the workers' PYTHONPATH): the worker exits 3 (ExitCode.RETRY)
    with one line, its checkpoint kept; the service retries it, and the second attempt resumes that
    checkpoint and only finishes: the final model is written and no epoch is trained twice."""

    hook = tmp_path / "hook"
    hook.mkdir()
    mark = tmp_path / "capped"
    (hook / "sitecustomize.py").write_text(FINISH_CAP.format(name="oom-finish", mark=str(mark)))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")  # a large block is a fresh mapping, never reused heap
    job = digits_job("oom-finish", epochs=1, batch=64, model={"layers": [64, 8192, 10]}, training={"fused": False})
    job_id = server.request("POST", "/jobs", job)[1]["id"]
    done = server.wait(job_id, timeout=120)
    assert mark.exists(), "the first attempt never reached its final evaluation"
    # exit status 3 is the one failure the service retries that is neither a signal nor a stop
    assert done["state"] == "succeeded" and done["attempts"] == 2, (done["state"], done["reason"])
    log = server.request("GET", f"/jobs/{job_id}/log", raw=True)[1]
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: finish: out of memory in the final evaluation or "
                                                     "model write"), log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    kept = [e["path"] for e in events if e["event"] == "checkpoint"][-1]
    assert kept in errors[0]  # the failed attempt names the checkpoint it kept ...
    resumed = [e for e in events if e["event"] == "resume"]
    assert len(resumed) == 1 and Path(kept).stem in resumed[0]["text"]  # ... and the retry resumes exactly it
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1]  # no epoch trained twice
    result = done["result"]
    assert result["epochs"] == 1 and Path(result["model"]).exists() and result["test_accuracy"] is not None


def test_a_worker_whose_address_space_is_capped_mid_run_still_finishes(server):
    """RLIMIT_AS lowered on the running worker (prlimit) to 16 MiB above what it has mapped: the
    training buffers are all there, and the final evaluation runs in them (it used to allocate a
    1,024-row inference plan of this 4,096-wide layer, 32 MiB, and die with a MemoryError)."""
    job = digits_job("capped", epochs=3, batch=32, model={"layers": [64, 4096, 10]},
                     data={"dataset": "synthetic:classification(12000, 64, 10)", "test": 0.5})
    job_id = server.request("POST", "/jobs", job)[1]["id"]
    _training(server, job_id)
    pid = json.loads(server.service.store.get(job_id).ref)["pid"]
    from memtrain.memory.measure import proc_kib

    vm = proc_kib(f"/proc/{pid}/status", "VmSize")
    resource.prlimit(pid, resource.RLIMIT_AS, (vm + 16 * 1024**2, resource.RLIM_INFINITY))
    done = server.wait(job_id, timeout=120)
    assert done["state"] == "succeeded" and done["attempts"] == 1, done["reason"]
    assert done["result"]["test_accuracy"] is not None and Path(done["result"]["model"]).exists()
