"""GET /jobs in pages (limit, cursor, state), with ETags, against a real server holding 250 jobs
(finished rows written straight into its store: running 250 jobs would only make the test slow)."""

import http.client
import json
import time

import pytest
from click.testing import CliRunner
from service_helpers import ThreadServer

from memtrain.cli import main

N = 250


def stored_job(i: int, state: str, run_dir) -> dict:
    t = time.time() - 1000 + i
    return {"id": f"job{i:05d}", "name": f"n{i}", "state": state, "config": {"model": {"layers": [64, 10]}},
            "checked": {}, "device_kind": "cpu", "batch_request": 32, "batch_size": 32, "planned": {"parameters": 8},
            "planned_bytes": 8, "min_bytes": 8, "max_attempts": 2, "submitted_at": t, "queued_at": t,
            "ended_at": t + 1, "run_dir": str(run_dir / f"job{i:05d}")}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ThreadServer(tmp_path_factory.mktemp("state")) as s:
        for i in range(N):
            s.service.store.insert(stored_job(i, "failed" if i % 5 == 0 else "succeeded", s.settings.state_dir))
        yield s


def get(server, path, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, r.headers, (json.loads(body) if body and r.headers.get_content_type() == "application/json"
                                 else body)


def walk(server, path):
    ids, pages = [], 0
    while path:
        status, headers, page = get(server, path)
        assert status == 200, page
        ids += [j["id"] for j in page]
        pages += 1
        link = headers.get("Link")
        path = link.split(">")[0].lstrip("<") if link else None
        assert link is None or link.endswith('; rel="next"')
    return ids, pages


def test_pages_cover_every_job_once_newest_first(server):
    status, headers, first = get(server, "/jobs")
    assert status == 200 and len(first) == 100 and first[0]["id"] == f"job{N - 1:05d}"  # the default page
    ids, pages = walk(server, "/jobs?limit=64")
    assert pages == 4 and ids == [f"job{i:05d}" for i in reversed(range(N))]
    failed, _ = walk(server, "/jobs?state=failed&limit=7")
    assert failed == [f"job{i:05d}" for i in reversed(range(0, N, 5))]


def test_bad_page_parameters_are_422(server):
    for query in ("limit=0", "limit=1001", "cursor=-1", "cursor=x", "state=sleeping"):
        status, _, out = get(server, f"/jobs?{query}")
        assert status == 422 and "\n" not in out["detail"], (query, out)


def test_etag_answers_304_until_something_changes(server):
    status, headers, _ = get(server, "/jobs?limit=5")
    etag = headers["ETag"]
    status, headers, body = get(server, "/jobs?limit=5", {"If-None-Match": etag})
    assert status == 304 and body == b"" and headers["ETag"] == etag
    server.service.store.insert(stored_job(N, "succeeded", server.settings.state_dir))
    try:
        status, headers, page = get(server, "/jobs?limit=5", {"If-None-Match": etag})
        assert status == 200 and headers["ETag"] != etag and page[0]["id"] == f"job{N:05d}"
        status, headers, _ = get(server, "/devices")
        assert get(server, "/devices", {"If-None-Match": headers["ETag"]})[0] == 304
    finally:
        server.service.store.update(f"job{N:05d}", state="cancelled")


def test_cli_lists_the_newest_and_all_on_request(server):
    r = CliRunner().invoke(main, ["jobs", "--server", server.url, "--limit", "5"])
    assert r.exit_code == 0, r.output
    assert r.stdout.count("\n") == 6 and "job00249" in r.stdout and "--limit 0 lists all" in r.stderr
    r = CliRunner().invoke(main, ["jobs", "--server", server.url, "--limit", "0", "--format", "json"])
    assert r.exit_code == 0 and len(json.loads(r.stdout)) >= N


def test_status_page_shows_the_newest_and_counts_them_all(server):
    status, _, html = get(server, "/")
    html = html.decode()
    assert status == 200 and "The newest 100" in html and "job00249" in html and "job00100" not in html
    assert f"{N // 5} failed" in html


def test_a_page_shows_a_running_jobs_new_progress_and_a_changed_row(server):
    job = stored_job(N + 1, "running", server.settings.state_dir)  # no process: the scheduler leaves it be
    progress = server.settings.state_dir / job["id"] / "progress.json"
    progress.parent.mkdir()
    progress.write_text(json.dumps({"epoch": 1, "step": 10}))
    server.service.store.insert(job)
    try:
        status, headers, page = get(server, "/jobs?limit=3")
        assert status == 200 and page[0]["id"] == job["id"] and page[0]["progress"]["step"] == 10
        progress.write_text(json.dumps({"epoch": 2, "step": 200}))  # the worker's next record
        deadline = time.monotonic() + 10
        while page[0]["progress"]["step"] != 200:  # seen within a second (view_cache.PROGRESS_SLACK)
            assert time.monotonic() < deadline, page[0]["progress"]
            time.sleep(0.1)
            status, new_headers, page = get(server, "/jobs?limit=3", {"If-None-Match": headers["ETag"]})
            assert status in (200, 304)
            page = page if status == 200 else [{"progress": {"step": 10}}]
        assert new_headers["ETag"] != headers["ETag"] and page[0]["progress"]["epoch"] == 2
        older = page[1:]
        server.service.store.update(job["id"], name="renamed")  # a store write: the next answer has it
        status, _, page = get(server, "/jobs?limit=3")
        assert (page[0]["name"], page[0]["progress"]["step"], page[1:]) == ("renamed", 200, older)
    finally:
        server.service.store.update(job["id"], state="cancelled")
