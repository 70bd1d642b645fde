"""A damaged, emptied or deleted job store, for real (bytes overwritten in the SQLite file):
the service refuses to start in one line naming `memtrain serve --recover`, which rebuilds
the store from its rolling backup and the job dirs; a bad row is skipped and reported,
never a 500 for the whole list."""

import json
import re
import shutil
import sqlite3
import subprocess
import sys

import pytest
from service_helpers import OVERHEAD, ThreadServer, digits_job

from memtrain.scheduling.store import StoreDamaged
from memtrain.service import recovery
from memtrain.service.core import Service, Settings


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A state dir whose service ran two jobs to the end (one succeeded, one cancelled) and stopped."""
    state = tmp_path_factory.mktemp("template") / "state"
    with ThreadServer(state) as s:
        ok = s.request("POST", "/jobs", digits_job("ok", epochs=1, batch=64))[1]["id"]
        stopped = s.request("POST", "/jobs", digits_job("stopped", epochs=300, batch=8))[1]["id"]
        s.wait(stopped, ("running",))
        while not (state / "jobs" / stopped / "checkpoints").is_dir():
            pass
        assert s.wait(ok)["state"] == "succeeded"
        s.request("DELETE", f"/jobs/{stopped}")
        assert s.wait(stopped)["state"] == "cancelled"
    return state, {ok: "succeeded", stopped: "cancelled"}


@pytest.fixture
def state(template, tmp_path):
    src, jobs = template
    dst = tmp_path / "state"
    shutil.copytree(src, dst)
    for d in (dst / "jobs").iterdir():  # the copies' rows name their own dirs
        row = json.loads((d / "job.json").read_text())
        (d / "job.json").write_text(json.dumps({**row, "run_dir": str(d)}))
    return dst, jobs


def settings(state_dir, **kw):
    return Settings(state_dir=state_dir, devices="cpu", budgets={"cpu": 2 * 1024**3}, cpu_overhead=OVERHEAD, **kw)


def states(state_dir, **kw):
    with ThreadServer(state_dir, **kw) as s:
        status, jobs = s.request("GET", "/jobs")
        assert status == 200
        return {j["id"]: j["state"] for j in jobs}, s


def garble(path, offset, n=64):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xa5" * n)


DAMAGE = {
    "header garbled": lambda p: garble(p, 0, 100),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2 + 100]),
    "a page in the middle garbled": lambda p: garble(p, 4096 + 8, 2000),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_store_refuses_to_start_then_recover_restores_the_backup(state, damage):
    state_dir, jobs = state
    store = state_dir / "memtrain.sqlite"
    assert store.stat().st_size >= 3 * 4096 and (state_dir / recovery.BACKUP).exists()
    DAMAGE[damage](store)
    with pytest.raises(StoreDamaged, match=r"the job store is damaged .*memtrain serve --state-dir .* --recover") as e:
        Service(settings(state_dir))
    assert "\n" not in str(e.value)
    found, server = states(state_dir, recover=True)
    assert found == jobs
    assert any(line.startswith("restored the backup of") for line in server.service.recovered)
    assert list(state_dir.glob("memtrain.sqlite.damaged-*"))  # kept, never deleted


def test_the_refusal_is_one_line_and_exit_2_from_the_cli(state):
    state_dir, _ = state
    garble(state_dir / "memtrain.sqlite", 0, 100)
    r = subprocess.run([sys.executable, "-m", "memtrain.cli", "serve", "--state-dir", str(state_dir), "--devices",
                        "cpu", "--overhead", str(OVERHEAD), "--port", "1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("memtrain: error: ") and f"memtrain serve --state-dir {state_dir} --recover" in r.stderr


@pytest.mark.parametrize("how", ["deleted", "zero-length"])
def test_a_deleted_or_emptied_store_is_not_a_silent_fresh_start(state, how):
    state_dir, jobs = state
    for p in state_dir.glob("memtrain.sqlite*"):
        if p.name != recovery.BACKUP:
            p.unlink()
    if how == "zero-length":
        (state_dir / "memtrain.sqlite").write_bytes(b"")
    word = "missing" if how == "deleted" else "empty (0 bytes)"
    with pytest.raises(StoreDamaged, match=rf"the job store is {re.escape(word)}, but 2 job dir\(s\) and a backup"):
        Service(settings(state_dir))
    (state_dir / recovery.BACKUP).unlink()  # no backup either: the job dirs alone
    found, server = states(state_dir, recover=True)
    assert found == jobs
    assert any(line.startswith("rebuilt 2 job(s) from their job dirs") for line in server.service.recovered)


def test_a_bad_row_is_skipped_and_reported_not_a_500_for_the_list(state):
    state_dir, jobs = state
    bad, good = sorted(jobs, key=lambda i: jobs[i])  # cancelled, succeeded
    db = sqlite3.connect(state_dir / "memtrain.sqlite")
    db.execute("UPDATE jobs SET config = '{not json' WHERE id = ?", (bad,))
    db.commit()
    db.close()
    with ThreadServer(state_dir) as s:
        status, listed = s.request("GET", "/jobs")
        assert status == 200 and [j["id"] for j in listed] == [good]
        status, body = s.request("GET", f"/jobs/{bad}")
        assert status == 500 and set(body) == {"detail"} and "stored row is damaged" in body["detail"]
        assert "--recover" in body["detail"]
        status, page = s.request("GET", "/", raw=True)
        assert status == 200 and "1 damaged job row skipped" in page and bad in page
        metrics = s.request("GET", "/metrics", raw=True)[1]
        assert "memtrain_service_store_damaged_rows 1.0" in metrics
    found, server = states(state_dir, recover=True)
    assert found == jobs  # rebuilt from its job dir


def test_recover_on_a_healthy_store_keeps_it(state):
    """The backup may be older than the store: --recover never trades a good store for it."""
    state_dir, jobs = state
    job_id = next(iter(jobs))
    db = sqlite3.connect(state_dir / "memtrain.sqlite")
    db.execute("UPDATE jobs SET name = 'renamed-after-the-backup' WHERE id = ?", (job_id,))
    db.commit()
    db.close()
    with ThreadServer(state_dir, recover=True) as s:
        assert s.service.recovered[0] == "the store passes its integrity check: kept"
        assert s.request("GET", f"/jobs/{job_id}")[1]["name"] == "renamed-after-the-backup"
    assert not list(state_dir.glob("memtrain.sqlite.damaged-*"))
