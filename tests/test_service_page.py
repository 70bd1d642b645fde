"""The status page at / rendered by a real headless Chromium against a live service with jobs.

Debian's `chromium` (.ci/run installs it; skipped with the reason where it is missing).
MEMTRAIN_SCREENSHOT=PATH also saves a screenshot there (docs/service-status.png came from it).
"""

import os
import re
import shutil
import subprocess
import time

import pytest
from service_helpers import OVERHEAD, ThreadServer, digits_job

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def chromium(*args, timeout=60):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not on PATH (Debian: apt-get install chromium; .ci/run does)")
def test_status_page_in_headless_chromium(tmp_path):
    # room for one job and its process overhead, not two: the second waits, and says for what
    budget = OVERHEAD + 40 * 1024**2
    with ThreadServer(tmp_path / "state", budgets={"cpu": budget}) as s:
        run_id = s.request("POST", "/jobs", digits_job("page-running", epochs=300, batch=8))[1]["id"]
        wait_id = s.request("POST", "/jobs", digits_job("page-waiting", epochs=1))[1]["id"]
        done_id = None
        s.wait(run_id, ("running",))
        deadline = time.time() + 30
        while s.request("GET", f"/jobs/{run_id}")[1]["progress"].get("epoch") is None:
            assert time.time() < deadline
            time.sleep(0.1)
        bad = s.request("POST", "/jobs", digits_job("page-bad", epochs=1, batch="auto",  # fails once started
                                                    training={"max_batch_size": 8, "micro_batch_size": 16}))[1]["id"]
        s.request("DELETE", f"/jobs/{wait_id}")  # cancelled while queued
        done_id = s.request("POST", "/jobs", digits_job("page-later", epochs=1))[1]["id"]
        r = chromium("--virtual-time-budget=2000", "--dump-dom", s.url + "/")
        assert r.returncode == 0, r.stderr[-2000:]
        dom = r.stdout
        shot = os.environ.get("MEMTRAIN_SCREENSHOT")
        if shot:
            chromium("--window-size=1300,560", f"--screenshot={os.path.abspath(shot)}", s.url + "/")
        s.request("DELETE", f"/jobs/{run_id}")
        s.wait(run_id)
    assert "<title>memtrain serve</title>" in dom and "http-equiv=\"refresh\"" in dom
    for text in ("page-running", "page-waiting", "page-later", "cancelled", "running", "queued",
                 f"/jobs/{run_id}/log", "1 of 2"):
        assert text in dom, text
    # the queued job says what it waits for: its bytes against what is free on the device
    assert re.search(r"waiting: needs 200\.\d+ MiB, \d+\.\d+ MiB free on cpu", dom), dom
    assert bad in dom and done_id in dom
