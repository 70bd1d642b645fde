"""Users, quotas and priorities against a real uvicorn server: a token per user in the token
file, `--user-quota`, a per-user override, and the priority of a job file, a CLI flag and the API."""

import pytest
from click.testing import CliRunner
from service_helpers import OVERHEAD, ThreadServer, digits_job

from memtrain.cli import main
from memtrain.service.security import read_tokens

ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789ab"
QUOTA = OVERHEAD + 100 * 1024**2  # one digits job (its plan is well under 100 MiB) per user at a time


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tokens = tmp_path_factory.mktemp("etc") / "tokens"
    tokens.write_text(f"# users of this service\nalice  {ALICE}\n\nbob    {BOB}   1GiB\n")
    with ThreadServer(tmp_path_factory.mktemp("state"), token=read_tokens(tokens), user_quota=QUOTA,
                      max_jobs_per_device=2, head_wait=0) as s:
        yield s


def submit(server, token, job):
    status, out = server.request("POST", "/jobs", job, token=token)
    assert status == 201, out
    return out["id"]


def started(server, job_id, token):
    job = server.wait(job_id, ("running", "succeeded", "failed", "cancelled"), token=token)
    assert job["state"] == "running", job
    return job


def test_quota_holds_a_users_jobs_back_and_priority_orders_the_rest(server, tmp_path):
    long = dict(epochs=200, batch=8)
    a1 = submit(server, ALICE, digits_job("a1", **long))
    started(server, a1, ALICE)
    a2 = submit(server, ALICE, digits_job("a2", **long))
    # head_wait 0: a head would stop every later job; alice's job waits for her quota and is no head
    b1 = submit(server, BOB, digits_job("b1", **long))
    started(server, b1, BOB)
    a2_view = server.request("GET", f"/jobs/{a2}", token=ALICE)[1]
    assert a2_view["state"] == "queued" and a2_view["user"] == "alice"
    assert a2_view["reason"].startswith("waiting: user alice's quota: needs ") and "of 300.00 MiB committed" in \
        a2_view["reason"]
    # both slots taken: bob's next jobs queue; the one of higher priority (a job file's key) goes first
    b3 = submit(server, BOB, digits_job("b3", **long))
    job_file = tmp_path / "b4.toml"
    job_file.write_text('name = "b4"\npriority = 5\n[model]\nlayers = [64, 16, 10]\n'
                        "[training]\nepochs = 200\nbatch_size = 8\n")
    r = CliRunner().invoke(main, ["submit", str(job_file), "--server", server.url], env={"MEMTRAIN_TOKEN": BOB})
    assert r.exit_code == 0, r.output
    b4 = r.output.strip()
    r = CliRunner().invoke(main, ["submit", str(job_file), "--priority", "-3", "--server", server.url],
                           env={"MEMTRAIN_TOKEN": BOB})
    b5 = r.output.strip()
    server.request("DELETE", f"/jobs/{b1}", token=BOB)
    assert started(server, b4, BOB)["priority"] == 5
    assert server.request("GET", f"/jobs/{b3}", token=BOB)[1]["state"] == "queued"
    server.request("DELETE", f"/jobs/{a1}", token=ALICE)  # alice's quota frees: a2 was queued before b3
    started(server, a2, ALICE)
    assert server.request("GET", f"/jobs/{b3}", token=BOB)[1]["state"] == "queued"
    r = CliRunner().invoke(main, ["jobs", "--server", server.url], env={"MEMTRAIN_TOKEN": ALICE})
    rows = {line.split()[0]: line.split() for line in r.output.splitlines()[1:]}
    assert r.output.split()[:5] == ["ID", "NAME", "USER", "PRI", "STATE"]
    assert rows[b4][1:5] == ["b4", "bob", "5", "running"] and rows[b5][1:5] == ["b4", "bob", "-3", "queued"]
    assert rows[a2][1:5] == ["a2", "alice", "0", "running"]
    for job_id in (a2, b3, b4, b5):
        server.request("DELETE", f"/jobs/{job_id}", token=BOB)
    for job_id in (a1, a2, b1, b3, b4, b5):
        assert server.wait(job_id, token=BOB)["state"] == "cancelled"


def test_a_job_beyond_its_users_quota_is_refused_and_tokens_are_checked(server):
    big = digits_job("big", model={"layers": [64, 4096, 4096, 10]})  # adam: ~270 MB of parameters and state
    status, out = server.request("POST", "/jobs", big, token=ALICE)
    assert status == 422 and out["detail"].startswith("never fits user alice's quota: needs ")
    assert out["detail"].endswith("the quota is 300.00 MiB")
    status, out = server.request("POST", "/jobs", {**digits_job("x"), "priority": "high"}, token=ALICE)
    assert status == 422 and out["detail"] == "priority: expected an integer from -1000000 to 1000000, got 'high'"
    assert server.request("POST", "/jobs", digits_job("x"), token="carol-token-0123456789")[0] == 401
    assert [j for j in server.service.store.list() if j.name in ("big", "x")] == []


@pytest.mark.parametrize("text, expected", [
    ("", "is empty; expected a token, or lines 'NAME TOKEN [QUOTA]'"),
    ("alice short\n", "line 1 holds a token of 5 characters; expected at least 16"),
    (f"alice {ALICE}\nbob {ALICE}\n", "line 2: token given twice"),
    (f"alice {ALICE}\nalice {BOB}\n", "line 2: user alice given twice"),
    (f"al/ice {ALICE}\n", "line 1: expected 'NAME TOKEN [QUOTA]'"),
    (f"alice {ALICE} lots\n", "line 1: quota: expected a size like 16GiB"),
])
def test_bad_token_files_are_refused_in_one_line(tmp_path, text, expected):
    path = tmp_path / "tokens"
    path.write_text(text)
    r = CliRunner().invoke(main, ["serve", "--state-dir", str(tmp_path / "s"), "--token-file", str(path)])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and expected in r.output, r.output
    assert not (tmp_path / "s").exists()


def test_a_single_token_file_still_works_as_the_default_user(tmp_path):
    path = tmp_path / "token"
    path.write_text(f"{ALICE}\n")
    tokens = read_tokens(path)
    assert tokens.users == {ALICE: "default"} and tokens.quotas == {}
    path.write_text(f"alice {ALICE} 2GiB\nbob {BOB}\n")
    assert read_tokens(path).quotas == {"alice": 2 * 1024**3}


def test_a_state_dir_of_an_earlier_memtrain_gains_priority_and_user(tmp_path):
    import sqlite3

    from memtrain.scheduling import store

    db = sqlite3.connect(tmp_path / "memtrain.sqlite")
    db.executescript(store._SCHEMA)  # the table as schema version 1 first made it
    db.execute("INSERT INTO schema_version VALUES (1)")
    db.execute("INSERT INTO jobs (id, name, state, config, checked, device_kind, batch_request, planned, "
               "planned_bytes, min_bytes, max_attempts, submitted_at, queued_at, run_dir) VALUES "
               "('old', 'o', 'queued', '{}', '{}', 'cpu', '8', '{}', 1, 1, 2, 0, 0, 'r')")
    db.commit()
    db.close()
    s = store.Store(tmp_path / "memtrain.sqlite")
    old = s.get("old")
    assert (old.priority, old.user) == (0, "default")
    s.close()
    store.Store(tmp_path / "memtrain.sqlite").close()  # opened again: nothing left to add


def test_a_file_sent_to_a_service_without_data_root_is_refused_saying_how(server, tmp_path):
    """docs/service.md's first example: your own data needs --data-root; without one, a clear 422."""
    status, out = server.request("POST", "/jobs", digits_job("mine", data={"dataset": "mine.csv"}), token=ALICE)
    assert status == 422 and out["detail"] == (
        "data.dataset: 'mine.csv' is a file, and this service reads no files (start it with --data-root DIR); "
        "built-in sources: digits, synthetic:...")
    job = tmp_path / "mine.toml"
    job.write_text('name = "mine"\n[model]\nlayers = [4, 2]\n[data]\ndataset = "/etc/mine.csv"\n')
    r = CliRunner().invoke(main, ["submit", str(job), "--server", server.url], env={"MEMTRAIN_TOKEN": ALICE})
    assert r.exit_code == 2 and r.output == ("memtrain: error: data.dataset: '/etc/mine.csv' is a file, and this "
                                             "service reads no files (start it with --data-root DIR); built-in "
                                             "sources: digits, synthetic:...\n")
    assert [j for j in server.service.store.list() if j.name == "mine"] == []


def test_serve_says_who_the_users_are_and_their_quotas(tmp_path):
    from memtrain.service.server import _say_users, settings_from

    path = tmp_path / "tokens"
    path.write_text(f"alice {ALICE}\nbob {BOB} 1GiB\n")
    said = []
    common = dict(state_dir=tmp_path / "s", host="127.0.0.1", port=8470, devices="cpu", budgets={}, data_roots=(),
                  max_jobs_per_device=None, head_wait=300.0, max_attempts=2, overhead=None)
    _say_users(settings_from(token_file=path, user_quota=4 * 1024**3, **common), said.append)
    assert said == ["users     alice, bob (by token); quota of committed memory: 4.00 GiB each (bob: 1.00 GiB)"]
    path.write_text(ALICE)
    _say_users(settings_from(token_file=path, **common), said.append)
    assert len(said) == 1  # one shared token and no quota: nothing new to say


def test_a_queued_job_beyond_a_smaller_quota_after_a_restart_fails_saying_why(tmp_path):
    """A job planned under a larger quota would wait for ever (it is never the head): it fails instead."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {ALICE}\n")
    state = tmp_path / "state"
    with ThreadServer(state, token=read_tokens(tokens), max_jobs_per_device=1) as s:
        running = submit(s, ALICE, digits_job("first", epochs=200, batch=8))
        started(s, running, ALICE)
        queued = submit(s, ALICE, digits_job("second", epochs=1))
        assert s.request("GET", f"/jobs/{queued}", token=ALICE)[1]["state"] == "queued"
    with ThreadServer(state, token=read_tokens(tokens), max_jobs_per_device=1, user_quota=OVERHEAD) as s:
        for job_id in (running, queued):  # the first was requeued by the restart, then failed alike
            job = s.wait(job_id, token=ALICE)
            assert job["state"] == "failed" and job["reason"].startswith("never fits this service's devices: needs ")
            assert job["reason"].endswith("; user alice's quota is 200.00 MiB (it was planned by a service run "
                                          "with other --user-quota or token file)")
