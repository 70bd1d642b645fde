"""`memtrain serve --executor ray`: a real service process (uvicorn on 127.0.0.1) on a real
local Ray started here, whose memory resource holds two of the jobs' plans: every job is
handed to Ray at once, Ray runs two at a time, the API says the others wait for Ray's
resources, a cancel through the API reaches the Ray job (SIGTERM: checkpoint), and the
results are bit-identical to the local executor's run of the same job.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request

import numpy as np
import pytest
from click.testing import CliRunner
from service_helpers import OVERHEAD, ProcessServer, ThreadServer, digits_job, request, wait_for

from memtrain.cli import main

pytestmark = pytest.mark.ray


def test_serve_executor_ray_without_ray_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    r = CliRunner().invoke(main, ["serve", "--state-dir", str(tmp_path / "s"), "--executor", "ray"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [
        "memtrain: error: --executor ray needs Ray, which is not installed: pip install 'memtrain[ray]'"]
    assert not (tmp_path / "s").exists()


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
    """The job run by the service's local executor: its parameters and planned bytes."""
    d = tmp_path_factory.mktemp("local")
    with ThreadServer(d / "state", cpu_overhead=OVERHEAD) as srv:
        status, body = srv.request("POST", "/jobs", digits_job("ref"))
        assert status == 201, body
        job = srv.wait(body["id"])
        assert job["state"] == "succeeded", job
    return final_params(d / "state", body["id"]), job["planned_bytes"]


def final_params(storage, job_id):
    with np.load(storage / "jobs" / job_id / "output" / "model-final.npz") as z:
        return {k: z[k].tobytes() for k in z.files}


def log_span(storage, job_id):
    """First and last event times the job's worker wrote (within the time Ray held its resources)."""
    times = [json.loads(x)["time"] for x in (storage / "jobs" / job_id / "job.log").read_text().splitlines()
             if x.startswith("{") and '"time"' in x]
    return min(times), max(times)


def scrape_target(url, job_id):
    """(target, its /metrics text): the running job's node_ip:port on /prometheus/targets, scraped."""
    (group,) = [g for g in request(url, "GET", "/prometheus/targets")[1] if g["labels"]["job_id"] == job_id]
    deadline = time.time() + 20
    while True:  # the exporter process starts next to the worker
        try:
            with urllib.request.urlopen(f"http://{group['targets'][0]}/metrics", timeout=5) as r:
                return group["targets"][0], r.read().decode()
        except OSError:
            assert time.time() < deadline, group
            time.sleep(0.2)


def most_at_once(spans):
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


@pytest.fixture(scope="module")
def ray_cluster(local_reference):
    ray = pytest.importorskip("ray") if not os.environ.get("CI") else __import__("ray")
    os.environ["RAY_memory_monitor_refresh_ms"] = "0"  # other work shares the machine (see test_launch_ray)
    _, planned = local_reference
    ray.shutdown()
    ctx = ray.init(address="local", num_cpus=6, _memory=int(2.5 * (planned + OVERHEAD)),
                   object_store_memory=100 << 20, include_dashboard=False, log_to_driver=False, logging_level="error")
    yield ctx.address_info["gcs_address"]
    ray.shutdown()
    os.environ.pop("RAY_memory_monitor_refresh_ms", None)


def test_serve_on_ray_runs_two_at_a_time_cancels_through_ray_and_matches_local(tmp_path, ray_cluster,
                                                                               local_reference):
    ref_params, _ = local_reference
    srv = ProcessServer(tmp_path / "state", "--executor", "ray", "--ray-address", ray_cluster,
                        "--storage", str(tmp_path / "storage"), "--job-metrics-host", "0.0.0.0").start()
    try:
        long_job = digits_job("long", epochs=4000)  # still training when the cancel reaches it
        ids = [request(srv.url, "POST", "/jobs", job)[1]["id"] for job in
               (long_job, digits_job("a"), digits_job("b"), digits_job("c"))]
        seen_waiting, most_running, scraped = False, 0, None
        deadline = time.time() + 90
        # until the short jobs have ended and the long one has been cancelled mid-training (short jobs
        # may all end before the long one has reported a step)
        while (jobs := request(srv.url, "GET", "/jobs")[1]) and (scraped is None or any(
                j["state"] in ("queued", "running") for j in jobs if j["id"] != ids[0])):
            assert time.time() < deadline, jobs
            most_running = max(most_running, sum(j["state"] == "running" for j in jobs))
            seen_waiting |= any(j["state"] == "queued" and "waiting for Ray resources" in j["reason"] for j in jobs)
            long_now = [j for j in jobs if j["id"] == ids[0]][0]
            if scraped is None and long_now["state"] == "running" and (long_now["progress"].get("step") or 0) > 0:
                scraped = scrape_target(srv.url, ids[0])
                request(srv.url, "DELETE", f"/jobs/{ids[0]}")  # through the API to the Ray job, mid-training
            time.sleep(0.1)
        cancelled = wait_for(srv.url, ids[0], ("succeeded", "failed", "cancelled"), timeout=60)
        assert cancelled["state"] == "cancelled" and "checkpoint saved" in cancelled["reason"], cancelled
        assert seen_waiting and most_running == 2
        node_ip = __import__("ray").nodes()[0]["NodeManagerAddress"]
        assert scraped[0].startswith(f"{node_ip}:") and "memtrain_" in scraped[1], scraped
        for job_id in ids[1:]:
            job = request(srv.url, "GET", f"/jobs/{job_id}")[1]
            assert job["state"] == "succeeded", job
            assert final_params(tmp_path / "storage", job_id) == ref_params
        assert most_at_once([log_span(tmp_path / "storage", i) for i in ids]) == 2
        assert not (tmp_path / "state" / "jobs").exists()  # job files on the storage; SQLite with the service
    finally:
        srv.stop()


def until(check, timeout=60):
    deadline = time.time() + timeout
    while not (value := check()):
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)
    return value


def test_a_restarted_service_adopts_its_ray_job_and_a_killed_actor_resumes_from_its_checkpoint(tmp_path, ray_cluster):
    """kill -9 of the service: the new one re-adopts the detached actor (same attempt); the actor
    killed (as with a lost node): the job is retried from its checkpoint (attempt 2)."""
    import ray  # noqa: PLC0415

    args = ("--executor", "ray", "--ray-address", ray_cluster)
    srv = ProcessServer(tmp_path / "state", *args).start()
    try:
        body = digits_job("r", epochs=400, checkpoint={"every_steps": 20})
        job_id = request(srv.url, "POST", "/jobs", body)[1]["id"]

        def job():
            return request(srv.url, "GET", f"/jobs/{job_id}")[1]

        until(lambda: job()["state"] == "running" and (job()["progress"].get("step") or 0) > 20)
        srv.kill9()
        srv = ProcessServer(tmp_path / "state", *args, port=srv.port).start()
        adopted = job()
        assert adopted["state"] == "running" and adopted["attempts"] == 1, adopted  # re-adopted, not resumed
        (name,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(job_id)]
        ray.kill(ray.get_actor(name, namespace="memtrain"), no_restart=True)
        log = tmp_path / "state" / "jobs" / job_id / "job.log"
        until(lambda: job()["attempts"] == 2 and '"event": "resume"' in log.read_text())
        request(srv.url, "DELETE", f"/jobs/{job_id}")
        end = wait_for(srv.url, job_id, ("succeeded", "failed", "cancelled"), timeout=60)
        assert end["state"] == "cancelled" and end["attempts"] == 2, end
    finally:
        srv.stop()
