"""A full disk, for real: a small tmpfs mounted for the test and filled to its last byte.
`memtrain train` says so in one line (exit 1) and loses nothing; the service answers 507 to
submissions in one line and keeps serving reads."""

import errno
import subprocess
import sys
import time
import uuid

import pytest
from service_helpers import ThreadServer, digits_job

from memtrain.service import core

JOB = """
name = "full"
seed = 1
device = "cpu"
[model]
layers = [64, 16, 10]
[optimizer]
name = "adam"
lr = 0.01
[training]
batch_size = 64
epochs = 2
[data]
dataset = "digits"
"""


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 24 MiB at tmp_path/disk (mounting needs root or CAP_SYS_ADMIN: else skipped)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}): needs root or CAP_SYS_ADMIN")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk):
    """Writes zeros into `disk` until the file system has no byte left (a disk full already, which
    refuses the filler itself, is what was asked for: seen once under a loaded parallel run)."""
    try:
        f = open(disk / f"filler-{uuid.uuid4().hex}", "wb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        return disk
    with f:
        block = bytes(1 << 16)
        try:
            while True:
                f.write(block)
                f.flush()
        except OSError:
            pass
    try:  # the last partial block
        with open(disk / f"filler-{uuid.uuid4().hex}", "wb", buffering=0) as f:
            while f.write(b"\0"):
                pass
    except OSError:
        pass
    return disk


def snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def train_here(job, out, *extra):
    """`memtrain train` in this process (CliRunner), for the runs around the full disk's: no Python start."""
    from click.testing import CliRunner  # noqa: PLC0415

    from memtrain.cli import main  # noqa: PLC0415

    r = CliRunner().invoke(main, ["train", str(job), "--output-dir", str(out), "--log-format", "json", *extra])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return subprocess.CompletedProcess(job, r.exit_code, r.stdout, r.stderr)


def train(job, out, *extra):
    """`memtrain train` as its own process: what a full disk does to it, stderr and exit status whole."""
    return subprocess.run([sys.executable, "-m", "memtrain.cli", "train", str(job), "--output-dir", str(out),
                           "--log-format", "json", *extra], capture_output=True, text=True, timeout=120)


def test_train_on_a_full_disk_is_one_line_exit_1_and_nothing_lost(tmp_path, small_disk):
    job = tmp_path / "job.toml"
    job.write_text(JOB)
    out = small_disk / "run"
    r = train_here(job, out)
    assert r.returncode == 0, r.stderr[-2000:]
    before = snapshot(out)
    assert any(p.name.startswith("ckpt-") for p in before) and any(p.name == "model-final.npz" for p in before)
    fill(small_disk)
    r = train(job, out, "--epochs", "4")  # trains on from the checkpoint: every write fails
    assert r.returncode == 1, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("memtrain: job failed: disk full: could not write ")
    assert "the last good checkpoint is" in r.stderr and "resume with the same command" in r.stderr
    assert snapshot(out) == before  # nothing overwritten, no temporaries left

    fresh = train(job, small_disk / "fresh")  # full before a new run wrote anything
    assert fresh.returncode == 1 and len(fresh.stderr.strip().splitlines()) == 1, fresh.stderr[-2000:]
    assert "disk full" in fresh.stderr and "no checkpoint was written yet" in fresh.stderr

    for p in small_disk.glob("filler-*"):
        p.unlink()
    r = train_here(job, out, "--epochs", "4")
    assert r.returncode == 0, r.stderr[-2000:]
    assert '"event": "resume"' in r.stdout  # the same command went on where it stood


def test_service_with_0_bytes_free_answers_507_and_keeps_serving_reads(small_disk, tmp_path, monkeypatch):
    storage = tmp_path / "storage"  # the jobs' dirs elsewhere: the store's own "disk is full" is reached too
    with ThreadServer(small_disk / "state", storage=storage) as server:
        done_id = server.request("POST", "/jobs", digits_job("before", epochs=1, batch=64))[1]["id"]
        assert server.wait(done_id)["state"] == "succeeded"
        fill(small_disk)
        for _ in range(3):
            status, body = server.request("POST", "/jobs", digits_job("after", epochs=1))
            assert status == 507 and set(body) == {"detail"} and "\n" not in body["detail"], (status, body)
            assert "0 B free" in body["detail"] and "free some space" in body["detail"]
        # past the service's own free-space check, SQLite's "database or disk is full" is the same 507
        monkeypatch.setattr(core, "MIN_FREE_BYTES", 0)
        status, body = server.request("POST", "/jobs", digits_job("after", epochs=1))
        assert status == 507 and body["detail"].startswith("state dir: ") and "is full" in body["detail"], body
        assert [p.name for p in (storage / "jobs").iterdir()] == [done_id]  # the refused job left no record
        status, jobs = server.request("GET", "/jobs")
        assert status == 200 and [j["id"] for j in jobs] == [done_id]
        assert server.request("GET", f"/jobs/{done_id}")[0] == 200
        assert server.request("GET", "/", raw=True)[0] == 200
        status, text = server.request("GET", "/metrics", raw=True)
        assert status == 200 and 'memtrain_service_submissions_total{outcome="rejected"} 4.0' in text


def test_a_job_failed_on_a_full_disk_is_requeued_and_resumes_bit_identical(small_disk, tmp_path):
    """The job's dirs on a tmpfs that fills while it trains: it fails in one line, keeping its last
    good checkpoint; with room again, `requeue` resumes it under its id, not from step 0."""
    import numpy as np

    job = digits_job("filled", epochs=6, batch=8, checkpoint={"min_interval": 0})  # a checkpoint each epoch
    with ThreadServer(tmp_path / "state", storage=small_disk / "storage") as server:
        alone = server.request("POST", "/jobs", {**job, "name": "alone"})[1]["id"]
        assert server.wait(alone)["state"] == "succeeded"
        job_id = server.request("POST", "/jobs", job)[1]["id"]
        ckpts = small_disk / "storage" / "jobs" / job_id / "checkpoints"
        deadline = time.time() + 60
        while not list(ckpts.glob("ckpt-*.json")):
            assert time.time() < deadline
            time.sleep(0.01)
        fill(small_disk)
        failed = server.wait(job_id)
        assert failed["state"] == "failed" and "No space left on device" in failed["reason"], failed["reason"]
        assert "the last good checkpoint is" in failed["reason"] and "\n" not in failed["reason"]
        for p in small_disk.glob("filler-*"):
            p.unlink()
        status, body = server.request("POST", f"/jobs/{job_id}/requeue")
        assert status == 200 and body["state"] in ("queued", "running"), body
        done = server.wait(job_id)
        assert done["state"] == "succeeded", done["reason"]
        log = (small_disk / "storage" / "jobs" / job_id / "job.log").read_text()
        assert '"event": "resume"' in log
        with np.load(done["result"]["model"]) as a, np.load(server.wait(alone)["result"]["model"]) as b:
            assert np.array_equal(a["params"], b["params"])
