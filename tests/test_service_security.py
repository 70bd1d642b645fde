"""The service under hostile input, against a real uvicorn server on 127.0.0.1 (issue 23):
no reads outside the data root, no file contents in answers, bad input as one-line 4xx
with no traceback in the log, a bound on run time, a bound on the time to send a request."""

import json
import logging
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from service_helpers import ThreadServer, digits_job

SECRET = "hunter2-secret"


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def tracebacks(self):
        return [r.getMessage() for r in self.records if r.exc_info]


@pytest.fixture
def server_log():
    """What uvicorn (an exception in the app) and the scheduler log while the test runs."""
    handler = Records()
    loggers = [logging.getLogger(n) for n in ("uvicorn.error", "memtrain.service")]
    for lg in loggers:
        lg.addHandler(handler)
    yield handler
    for lg in loggers:
        lg.removeHandler(handler)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """tmp/data (the data root, with a digits/ dir), tmp/outside (secrets), tmp/cwd (the working
    directory, with a digits/ dir and a copy of the secret .npz, where the old check read from)."""
    tmp = tmp_path_factory.mktemp("layout")
    root, outside, cwd = tmp / "data", tmp / "outside", tmp / "cwd"
    for d in (root / "digits", outside, cwd / "digits"):
        d.mkdir(parents=True)
    (outside / "secret.csv").write_text(f"a,b\n{SECRET},1\n")
    np.savez(outside / "secret.npz", X=np.zeros((20, 64), np.float32), y=np.zeros(20, int))
    (cwd / "digits_secret.npz").write_bytes((outside / "secret.npz").read_bytes())
    (root / "bad-cell.csv").write_text(f"a,b\n1,0\n{SECRET},1\n")
    (root / "bad-header.csv").write_text(f"{SECRET},{SECRET},b\n1,2,0\n")
    (root / "labels.csv").write_text(f"{SECRET}-col,b\n1,0\n2,1\n")
    (root / "one-column.csv").write_text(f"{SECRET}-col\n1\n2\n")  # no label column to default to
    return tmp


@pytest.fixture(scope="module")
def server(tmp_path_factory, layout):
    with ThreadServer(tmp_path_factory.mktemp("state"), data_roots=(str(layout / "data"),), max_runtime=3600,
                      request_timeout=1.0) as s:
        yield s


def submit_nothing_written(server, body, ctype="application/json"):
    """POST /jobs expecting a 4xx: (status, detail), and nothing stored or created."""
    jobs_dir = Path(server.settings.state_dir) / "jobs"
    before = (len(server.service.store.list()), sorted(jobs_dir.glob("*")))
    status, out = server.request("POST", "/jobs", body, ctype)
    assert 400 <= status < 500, (status, out)
    assert isinstance(out, dict) and set(out) == {"detail"}, out
    assert "\n" not in out["detail"] and "Traceback" not in out["detail"]
    assert (len(server.service.store.list()), sorted(jobs_dir.glob("*"))) == before
    return status, out["detail"]


# -- the data root ----------------------------------------------------------------------------


@pytest.mark.parametrize("source, extra, expected", [
    # was 422 quoting the secret cell, read relative to the working dir
    ("digits/../../outside/secret.csv", {"label_column": "b"}, "is outside the data roots"),
    ("digits_secret.npz", {}, "data/digits_secret.npz: file not found"),  # was 201, from the working dir
    ("digits/../../outside/secret.npz", {}, "is outside the data roots"),  # was 201
    ("synthetic:classification(200, 64, 10),../outside/secret.npz", {}, "expected synthetic:classification"),
])
def test_a_builtin_prefix_is_no_way_out_of_the_data_root(server, layout, monkeypatch, server_log, source, extra,
                                                         expected):
    monkeypatch.chdir(layout / "cwd")  # where the old check let these be read from
    job = {"model": {"layers": [64, 10]}, "training": {"epochs": 1}, "data": {"dataset": source, **extra}}
    status, detail = submit_nothing_written(server, job)
    assert status == 422 and expected in detail and SECRET not in detail, detail
    assert server_log.tracebacks() == []


def test_builtin_sources_by_exact_name_or_grammar(server):
    ids = []
    for source in ("digits", " digits ", "synthetic:classification(200, 64, 10)"):
        status, out = server.request("POST", "/jobs", digits_job("builtin", epochs=1, data={"dataset": source}))
        assert status == 201, (source, out)
        ids.append(out["id"])
    for job_id in ids:  # submitted together: the service runs two at once (one per core)
        assert server.wait(job_id)["state"] == "succeeded"
    _, detail = submit_nothing_written(server, digits_job(data={"dataset": "synthetic:nope"}))
    assert "synthetic:classification(n, d, classes)" in detail  # the grammar's own message, no file opened


def test_without_a_data_root_no_file_is_read(tmp_path, layout, monkeypatch):
    monkeypatch.chdir(layout / "cwd")
    with ThreadServer(tmp_path / "state") as s:
        for source in ("digits_secret.npz", "digits/../digits_secret.npz", str(layout / "outside" / "secret.npz")):
            status, detail = submit_nothing_written(s, digits_job(data={"dataset": source}))
            assert status == 422 and "this service reads no files" in detail, detail


def idx(path, array) -> None:
    """An IDX file of unsigned bytes (MNIST's format)."""
    a = np.asarray(array, np.uint8)
    path.write_bytes(bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape) + a.tobytes())


def test_an_idx_labels_file_found_beside_the_images_is_confined_too(server, layout):
    root, outside = layout / "data", layout / "outside"
    (root / "a").mkdir()
    idx(root / "a" / "train-images-idx3-ubyte", np.zeros((10, 8, 8)))
    idx(outside / "train-labels-idx1-ubyte", np.arange(10) % 2)
    (root / "a" / "train-labels-idx1-ubyte").symlink_to(outside / "train-labels-idx1-ubyte")
    job = {"model": {"layers": [64, 2]}, "training": {"epochs": 1}, "data": {"dataset": "a/train-images-idx3-ubyte"}}
    _, detail = submit_nothing_written(server, job)
    assert "train-labels-idx1-ubyte' is outside the data roots" in detail, detail
    (root / "a" / "train-labels-idx1-ubyte").unlink()
    idx(root / "a" / "train-labels-idx1-ubyte", np.arange(10) % 2)
    status, out = server.request("POST", "/jobs", {**job, "training": {"epochs": 1, "batch_size": 4}})
    assert status == 201, out
    assert server.wait(out["id"])["state"] == "succeeded"


@pytest.mark.parametrize("name, extra, expected", [
    ("bad-cell.csv", {"label_column": "b"}, "line 3: a value is not a number"),
    ("bad-header.csv", {"label_column": "b"}, "a column name appears twice"),
    ("labels.csv", {"label_column": "c"}, "'c' not found among its 2 columns"),
    ("one-column.csv", {}, "header row: one column; expected feature columns and a label column"),
])
def test_errors_about_a_files_contents_do_not_quote_them(server, name, extra, expected):
    job = {"model": {"layers": [1, 2]}, "data": {"dataset": name, **extra}}
    _, detail = submit_nothing_written(server, job)
    assert expected in detail and SECRET not in detail, detail


# -- bad input: 4xx, one line, no traceback ------------------------------------------------------


BAD = [
    ("batch 10**18", digits_job(batch=10**18), "training.batch_size: expected at most 1,099,511,627,776, got 1000000000000000000"),
    ("memory_limit 1e400GiB", digits_job(training={"memory_limit": "1e400GiB"}), "training.memory_limit"),
    ("memory_limit 10**400", digits_job(training={"memory_limit": 10**400}), "training.memory_limit"),
    ("epochs 10**30", digits_job(epochs=10**30), "training.epochs: expected at most 1,000,000, got 10"),
    ("max_runtime over the service's", digits_job(training={"max_runtime": "2h"}),
     "training.max_runtime: 2h is longer than this service allows (memtrain serve --max-runtime 1h)"),
    ("metrics.linger 1e300 s", digits_job(metrics={"linger": 1e300}), "metrics.linger: expected at most 3,600"),
    ("max_runtime nonsense", digits_job(training={"max_runtime": "soon"}), "training.max_runtime: expected a dur"),
    ("JSON arrays 100,000 deep", "[" * 100_000 + "]" * 100_000, "body: nested"),
    ("JSON objects 60,000 deep", '{"a":' * 60_000 + "1" + "}" * 60_000, "body: nested"),
    ("JSON 20 deep under a known key", {"model": {"layers": json.loads("[" * 20 + "]" * 20)}}, "body: nested"),
    ("TOML arrays 60,000 deep", ("x = " + "[" * 60_000 + "]" * 60_000, "application/toml"), "body: nested"),
    ("TOML tables 50,000 deep", ("x = " + "{a=" * 50_000 + "1" + "}" * 50_000, "application/toml"), "body: nested"),
]


@pytest.mark.parametrize("why, body, expected", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_4xx_with_one_line_and_no_traceback(server, server_log, why, body, expected):
    body, ctype = body if isinstance(body, tuple) else (body, "application/json")
    status, detail = submit_nothing_written(server, body, ctype)
    assert status == 422 and detail.startswith(expected), detail
    assert server_log.tracebacks() == []


def test_a_progress_file_of_wrong_types_is_no_500(server, server_log):
    import os
    import signal

    # a running job's file is what views read (an ended job's record is kept in its row as it ended)
    job_id = server.request("POST", "/jobs", digits_job("garbled", epochs=100000, batch=8))[1]["id"]
    server.wait(job_id, ("running",))
    pid = json.loads(server.service.store.get(job_id).ref)["pid"]
    os.kill(pid, signal.SIGSTOP)  # it writes no progress of its own meanwhile
    try:
        progress = Path(server.settings.state_dir) / "jobs" / job_id / "progress.json"
        for garbage in ({"epoch": "one", "step": [1], "train_loss": "NaN", "val_loss": float("nan"), "event": 3,
                         "rss_bytes": {"a": 1}, "val_accuracy": True}, [1, 2, 3], "not json {"):
            progress.write_text(garbage if isinstance(garbage, str) else json.dumps(garbage))
            status, view = server.request("GET", f"/jobs/{job_id}")
            assert status == 200, view
            assert all(v is None for v in view["progress"].values()), view["progress"]
            status, page = server.request("GET", "/jobs")
            assert status == 200 and [j["progress"] for j in page if j["id"] == job_id] == [view["progress"]]
    finally:
        os.kill(pid, signal.SIGCONT)
    server.request("DELETE", f"/jobs/{job_id}")
    assert server.wait(job_id)["state"] == "cancelled"
    assert server_log.tracebacks() == []


def test_an_unexpected_exception_is_a_json_500_with_its_traceback_in_the_log(server, server_log, monkeypatch):
    def broken():
        raise RuntimeError("internals-42")

    monkeypatch.setattr(server.service, "device_views", broken)  # a fault injected into the real server
    status, out = server.request("GET", "/devices")
    assert status == 500 and out["detail"].startswith("internal error (RuntimeError); this is a bug")
    assert "internals-42" not in out["detail"]  # the message stays in the log
    # Starlette re-raises after the 500 is sent, so uvicorn logs the traceback a moment after the reply
    deadline = time.monotonic() + 10
    while not any("Exception in ASGI application" in t for t in server_log.tracebacks()):
        assert time.monotonic() < deadline, "no traceback in the service's log"
        time.sleep(0.05)


# -- run time -------------------------------------------------------------------------------------


def test_max_runtime_stops_the_job_with_its_checkpoint_and_says_why(server):
    status, out = server.request("POST", "/jobs", digits_job("slow", epochs=100000, batch=8,
                                                               training={"max_runtime": "3s"}))
    assert status == 201, out
    t0 = time.time()
    done = server.wait(out["id"], timeout=90)
    assert done["state"] == "failed" and done["attempts"] == 1  # not retried: it would run past it again
    assert done["reason"].startswith("ran past its max_runtime of 3s: stopped at step ")
    assert done["reason"].endswith("(checkpoint saved)")
    assert time.time() - t0 < 60
    ckpts = list((Path(server.settings.state_dir) / "jobs" / out["id"] / "checkpoints").glob("*.npz"))
    assert ckpts, "no checkpoint written"


def test_a_job_that_does_not_stop_itself_is_stopped_by_the_service(tmp_path):
    import os
    import signal

    with ThreadServer(tmp_path / "state", runtime_grace=1.0) as s:
        job_id = s.request("POST", "/jobs", digits_job("frozen", epochs=100000, batch=8,
                                                         training={"max_runtime": "2s"}))[1]["id"]
        s.wait(job_id, ("running",))
        pid = json.loads(s.service.store.get(job_id).ref)["pid"]
        os.kill(pid, signal.SIGSTOP)  # takes no step: it cannot notice its own max_runtime
        try:
            deadline = time.time() + 30
            while s.service.store.get(job_id).cancel_requested != 2:
                assert time.time() < deadline, "the scheduler did not stop the job"
                time.sleep(0.1)
        finally:
            os.kill(pid, signal.SIGCONT)  # the SIGTERM it was sent meanwhile now arrives
        done = s.wait(job_id, timeout=60)
    assert done["state"] == "failed" and done["reason"].startswith("ran past its max_runtime of 2s: stopped "), done


def test_the_service_default_max_runtime_is_the_jobs(server):
    status, out = server.request("POST", "/jobs", digits_job("default-bound", epochs=1))
    assert status == 201
    server.wait(out["id"])
    launched = json.loads((Path(server.settings.state_dir) / "jobs" / out["id"] / "launch.json").read_text())
    assert launched["config"]["training"]["max_runtime"] == 3600.0


# -- slow clients ---------------------------------------------------------------------------------


def _raw(server, data: bytes, wait: float = 10.0) -> tuple:
    """Send `data` on a fresh connection and read until the server closes it: (reply, seconds)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=wait) as sock:
        sock.sendall(data)
        t0, reply = time.monotonic(), b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return reply, time.monotonic() - t0
            reply += chunk


def test_a_body_shorter_than_its_content_length_gets_408_within_the_timeout(server, server_log):
    head = b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    reply, took = _raw(server, head + b'{"model": ')
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["detail"].startswith("request: not received in full")
    assert 0.9 < took < 4, took  # request_timeout = 1 s
    assert server_log.tracebacks() == []


def test_headers_sent_slowly_get_408_within_the_timeout(server):
    reply, took = _raw(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert reply.startswith(b"HTTP/1.1 408 ") and 0.9 < took < 4, (reply, took)


def test_a_connection_that_sends_nothing_is_closed_within_the_timeout(server):
    # closed without a word: a 408 there would be read as the answer to the client's next request
    # (a pooled connection left idle, then used: the load generator's one error per round)
    reply, took = _raw(server, b"")
    assert reply == b"" and 0.9 < took < 4, (reply, took)


def test_a_prompt_client_keeps_its_connection(server):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    socks = []
    for _ in range(2):
        conn.request("GET", "/healthz")
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["status"] == "ok"
        socks.append(conn.sock)
        time.sleep(1.5)  # idle longer than the request timeout, within uvicorn's keep-alive (5 s)
    assert socks[0] is socks[1]  # the same connection: the clock runs only while a request arrives
    conn.close()
