"""Who may use the service: the token, the bind rule."""

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from service_helpers import ThreadServer, digits_job, wait_for

from memtrain.cli import main

TOKEN = "s3cret-token-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ThreadServer(tmp_path_factory.mktemp("state"), token=TOKEN) as s:
        yield s


@pytest.mark.parametrize("path", ["/jobs", "/devices", "/metrics", "/prometheus/targets", "/", "/jobs/x/log"])
def test_every_endpoint_but_healthz_needs_the_token(server, path):
    assert server.request("GET", path)[0] == 401
    assert server.request("GET", path, token="wrong-token-0123456789")[0] == 401
    assert server.request("GET", path, token=TOKEN)[0] in (200, 404)
    assert server.request("GET", "/healthz")[0] == 200


def app_routes(app) -> list:
    """The app's routes, those of its included routers (routers/) too: a FastAPI that keeps an
    included router as one entry of app.routes lists them through iter_route_contexts."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # an older FastAPI copies the routers' routes into app.routes
        return list(app.routes)
    return list(iter_route_contexts(app.routes))


def test_every_route_needs_the_token_but_the_documented_open_ones(server):
    """Lists the app's routes, so a route added later is checked too; docs/service.md names the open ones."""
    from memtrain.service.app import OPEN_PATHS

    job_id = server.request("POST", "/jobs", digits_job("listed", epochs=1), token=TOKEN)[1]["id"]
    seen = set()
    for route in app_routes(server.app):
        path = route.path.replace("{job_id}", job_id).replace("{name}", "swagger-ui.css")  # a /docs asset
        for method in sorted((getattr(route, "methods", None) or {"GET"}) - {"HEAD"}):
            seen.add(route.path)
            status, out = server.request(method, path)
            if route.path in OPEN_PATHS:  # the API's schema and its pages: no job data
                assert status == 200 and job_id not in json.dumps(out), (method, route.path, status)
            else:
                assert status == 401 and out["detail"].startswith("unauthorized"), (method, route.path, status)
    assert set(OPEN_PATHS) <= seen and {"/jobs", "/jobs/{job_id}", "/metrics", "/"} <= seen
    assert server.request("GET", f"/jobs/{job_id}", token=TOKEN)[1]["state"] != "cancelled"  # the DELETE was refused
    documented = Path(__file__).resolve().parents[1].joinpath("docs", "service.md").read_text()
    assert "Open without the token: " + ", ".join(f"`{p}`" for p in OPEN_PATHS) in documented


def test_a_cached_answer_still_needs_the_token(server):
    for _ in range(3):  # the later ones are answered from the view cache by the protocol (app.Replies)
        assert server.request("GET", "/jobs?limit=3", token=TOKEN)[0] == 200
    for token in (None, "wrong-token-0123456789"):
        status, out = server.request("GET", "/jobs?limit=3", token=token)
        assert status == 401 and out["detail"].startswith("unauthorized")


def test_an_answer_the_protocol_writes_still_needs_the_token(server):
    from test_service_encoding import Conn  # noqa: PLC0415 - its raw keep-alive client (urllib closes each)

    conn = Conn(server)
    try:
        for _ in range(3):  # kept alive: the later ones are written by the protocol (slow_clients, app.Replies)
            status, _, body = conn.get("/jobs?limit=3", f"Authorization: Bearer {TOKEN}", "Accept-Encoding: gzip")
            assert status == 200
        for auth in ((), ("Authorization: Bearer wrong-token-0123456789",), ("Authorization: Basic x",)):
            status, _, body = conn.get("/jobs?limit=3", *auth, "Accept-Encoding: gzip")
            assert status == 401 and json.loads(body)["detail"].startswith("unauthorized")
    finally:
        conn.close()


def test_repeated_authorization_headers_are_read_alike_on_both_paths(server):
    """The first of two Authorization headers counts, for the routes (starlette) and for the answers
    the protocol writes itself alike: a wrong one first is refused however often the GET repeats."""
    from test_service_encoding import Conn  # noqa: PLC0415

    conn = Conn(server)
    try:
        good, bad = f"Authorization: Bearer {TOKEN}", "Authorization: Bearer wrong-token-0123456789"
        assert [conn.get("/jobs?limit=2", good, bad)[0] for _ in range(3)] == [200] * 3
        assert [conn.get("/jobs?limit=2", bad, good)[0] for _ in range(3)] == [401] * 3
    finally:
        conn.close()


def test_submit_needs_the_token_and_writes_nothing_without_it(server):
    before = len(server.service.store.list())
    status, out = server.request("POST", "/jobs", digits_job(epochs=1))
    assert status == 401 and "Bearer" in out["detail"]
    assert len(server.service.store.list()) == before


def test_cancel_without_the_token_is_401_and_the_running_job_is_untouched(server):
    status, out = server.request("POST", "/jobs", digits_job("long", epochs=400), token=TOKEN)
    assert status == 201
    job_id = out["id"]
    try:
        wait_for(server.url, job_id, ("running",), token=TOKEN)
        while not server.service.store.get(job_id).ref:  # its process handle, stored just after the start
            time.sleep(0.05)
        before = server.service.store.get(job_id)
        for token in (None, "wrong-token-0123456789"):
            status, out = server.request("DELETE", f"/jobs/{job_id}", token=token)
            assert status == 401 and "Bearer" in out["detail"]
        stored = server.service.store.get(job_id)
        assert stored.state == "running" and not stored.cancel_requested and stored.ref == before.ref
        time.sleep(0.5)  # a cancel that got through would have SIGTERMed the worker by now
        assert server.service.store.get(job_id).state == "running"
    finally:
        assert server.request("DELETE", f"/jobs/{job_id}", token=TOKEN)[0] == 200
        assert wait_for(server.url, job_id, ("cancelled", "succeeded"), token=TOKEN)["state"] == "cancelled"
    status, out = server.request("POST", "/jobs", digits_job(epochs=1), token=TOKEN)
    assert status == 201


def test_cli_sends_memtrain_token(server):
    r = CliRunner().invoke(main, ["jobs", "--server", server.url])
    assert r.exit_code == 2 and "unauthorized" in r.output
    r = CliRunner().invoke(main, ["jobs", "--server", server.url], env={"MEMTRAIN_TOKEN": TOKEN})
    assert r.exit_code == 0 and "ID" in r.output


def test_non_loopback_bind_needs_a_token_file(tmp_path):
    r = CliRunner().invoke(main, ["serve", "--state-dir", str(tmp_path / "s"), "--host", "0.0.0.0"])
    assert r.exit_code == 2
    assert r.output.strip().startswith("memtrain: error: --host 0.0.0.0: binding beyond this machine needs "
                                       "--token-file")
    assert not (tmp_path / "s").exists()  # refused before anything was written
    short = tmp_path / "token"
    short.write_text("abc\n")
    r = CliRunner().invoke(main, ["serve", "--state-dir", str(tmp_path / "s"), "--host", "0.0.0.0",
                                  "--token-file", str(short)])
    assert r.exit_code == 2 and "at least 16" in r.output


def test_one_service_per_state_dir(server):
    r = CliRunner().invoke(main, ["serve", "--state-dir", str(server.settings.state_dir), "--port", "8470"])
    assert r.exit_code == 2
    assert "another memtrain serve uses it (pid " in r.output and r.output.count("\n") == 1
