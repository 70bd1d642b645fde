"""Housekeeping against a real service: checkpoint retention of succeeded jobs (by count and
by age; model, history and log kept; cancelled jobs keep theirs for a requeue), and the state
dir's size on the status page and in /metrics, checked against `du`."""

import re
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

from service_helpers import ThreadServer, digits_job

from memtrain.service.housekeeping import expired


def _wait(predicate, timeout=30):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline
        time.sleep(0.05)


def test_retention_keeps_the_newest_n_then_removes_by_age_and_the_size_is_reported(tmp_path):
    with ThreadServer(tmp_path / "state", keep_checkpoints=1, housekeeping_seconds=0.2) as s:
        jobs = Path(s.settings.state_dir) / "jobs"
        first = s.request("POST", "/jobs", digits_job("first", epochs=1, batch=64))[1]["id"]
        assert s.wait(first)["state"] == "succeeded"
        cancelled = s.request("POST", "/jobs", digits_job("cancelled", epochs=300, batch=8, checkpoint={"min_interval": 0}))[1]["id"]
        _wait(lambda: list((jobs / cancelled / "checkpoints").glob("ckpt-*.json")))
        s.request("DELETE", f"/jobs/{cancelled}")
        second = s.request("POST", "/jobs", digits_job("second", epochs=1, batch=64))[1]["id"]
        assert s.wait(second)["state"] == "succeeded" and s.wait(cancelled)["state"] == "cancelled"
        _wait(lambda: not (jobs / first / "checkpoints").exists())  # beyond the newest 1
        for kept in ("output/model-final.npz", "output/history.jsonl", "job.log", "exit.json"):
            assert (jobs / first / kept).is_file(), kept
        assert list((jobs / second / "checkpoints").glob("ckpt-*.npz"))
        assert list((jobs / cancelled / "checkpoints").glob("ckpt-*.npz"))  # a requeue needs them

        s.settings.keep_checkpoints_hours = 0.0  # by age: every succeeded job's go, at the next round
        _wait(lambda: not (jobs / second / "checkpoints").exists())
        assert list((jobs / cancelled / "checkpoints").glob("ckpt-*.npz"))

        time.sleep(0.5)  # a round after the last removal
        du = int(subprocess.run(["du", "-s", "-B1", str(s.settings.state_dir)], capture_output=True, text=True,
                                check=True).stdout.split()[0])
        text = s.request("GET", "/metrics", raw=True)[1]
        size = float(re.search(r"^memtrain_service_state_dir_bytes (\S+)$", text, re.M).group(1))
        assert abs(size - du) <= 0.05 * du + 64 * 1024, (size, du)  # the log and store may grow between
        page = s.request("GET", "/", raw=True)[1]
        assert re.search(r"state dir \d+(\.\d+)? (KiB|MiB) on disk", page)


def test_expired_is_by_count_and_by_age():
    now = time.time()
    jobs = [SimpleNamespace(id=str(i), ended_at=now - 3600 * i) for i in range(5)]  # JobRows' fields; 0 newest
    assert expired(jobs, keep=2, keep_seconds=10**9) == ["2", "3", "4"]
    assert expired(jobs, keep=10, keep_seconds=2.5 * 3600) == ["3", "4"]
    assert expired(jobs, keep=0, keep_seconds=10**9) == ["0", "1", "2", "3", "4"]
