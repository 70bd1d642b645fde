"""Sweeps through a real service on 127.0.0.1 (`memtrain submit SWEEP.toml`, POST /sweeps): same-shape
trials run as one trial array, the others as lone jobs; every trial's run dir is a lone job's; one trial
or a whole array can be cancelled; a restart mid-sweep keeps the sweep; a bad sweep file is one 4xx line."""

import json
import re
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from service_helpers import OVERHEAD, ThreadServer, digits_job

from memtrain.cli import main
from memtrain.config import JobConfig
from memtrain.memory.trials import array_plan
from memtrain.train.jobplan import plan_job


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ThreadServer(tmp_path_factory.mktemp("state"), max_jobs_per_device=2) as s:
        yield s


def sweep_body(space, epochs=2, name="s", **base):
    return {"name": name, "base": digits_job(epochs=epochs, **base), "space": space}


def wait_sweep(url_server, sweep_id, timeout=120):
    deadline = time.time() + timeout
    while True:
        status, rep = url_server.request("GET", f"/sweeps/{sweep_id}")
        assert status == 200, rep
        if rep["state"] == "ended":
            return rep
        assert time.time() < deadline, rep["runs"]
        time.sleep(0.2)


def cli(server, *args):
    return CliRunner().invoke(main, [*args, "--server", server.url])


def test_submit_sweep_runs_arrays_and_lone_trials_each_with_a_run_dir(server, tmp_path):
    """4 trials, 2 kinds: batch 32 (two lrs: one array of 2) and batch "auto" (a lone job each: an auto
    batch cannot join an array); the base given as a path, inlined by `memtrain submit`."""
    (tmp_path / "base.toml").write_text('name = "b"\nseed = 0\n[model]\nlayers = [64, 16, 10]\n[optimizer]\n'
                                        'name = "adam"\n[training]\nepochs = 2\n')
    (tmp_path / "sweep.toml").write_text('name = "lr"\nbase = "base.toml"\n[space]\nlr = [0.01, 0.003]\n'
                                         'batch_size = [32, "auto"]\n')
    out = cli(server, "submit", str(tmp_path / "sweep.toml"), "--wait")  # returns once every trial has ended
    assert out.exit_code == 0, out.output
    sweep_id = out.stdout.splitlines()[0]
    rep = server.request("GET", f"/sweeps/{sweep_id}")[1]
    assert rep["state"] == "ended" and f"* {rep['best']}" in out.stdout, out.output
    assert rep["trials"] == 4 and len(rep["jobs"]) == 3 and rep["skipped"] == []
    assert [r["state"] for r in rep["runs"]] == ["succeeded"] * 4, rep["runs"]
    jobs = {j["id"]: j for j in server.request("GET", "/jobs")[1] if j["sweep"] == sweep_id}
    assert sorted(j["trials"] for j in jobs.values()) == [1, 1, 2]
    array = next(j for j in jobs.values() if j["trials"] == 2)
    assert array["state"] == "succeeded" and array["batch_size"] == 32
    assert array["progress"]["epoch"] == 2  # the trials' epochs reach the array's progress (memtrain jobs)
    # the array is admitted by its plan (memory/trials.py): both trials' buffers stacked, the data set once
    row = server.service.store.get(array["id"])
    plans = [plan_job(JobConfig.from_dict(c), device_kind="cpu", budget=2 * 1024**3).plan for c in row.config["array"]]
    assert array["planned_bytes"] == array_plan(plans).total < sum(p.total for p in plans)
    # each trial: its own run dir, as a lone job's, and the tools that read runs take it
    for run in rep["runs"]:
        d = Path(run["run_dir"])
        assert (d / "run.json").is_file() and (d / "history.csv").is_file() and (d / "model-final.npz").is_file()
        assert json.loads((d / "run.json").read_text())["name"].endswith(run["trial"])
    one = Path(next(r for r in rep["runs"] if r["job"] == array["id"])["run_dir"])
    runs = CliRunner().invoke(main, ["runs", str(one.parent), "--format", "json"])
    assert runs.exit_code == 0 and len(json.loads(runs.stdout)["runs"]) == 2, runs.output
    ev = CliRunner().invoke(main, ["evaluate", str(one / "model-final.npz"), "--format", "json"])
    assert ev.exit_code == 0 and json.loads(ev.stdout)["accuracy"] > 0.5, ev.output
    np.savez(tmp_path / "x.npz", X=np.zeros((3, 64)))
    pr = CliRunner().invoke(main, ["predict", str(one / "model-final.npz"), "--input", str(tmp_path / "x.npz"),
                                   "--out", str(tmp_path / "p.csv")])
    assert pr.exit_code == 0 and len((tmp_path / "p.csv").read_text().splitlines()) == 4, pr.output
    # ranked as `memtrain sweep` ranks: best validation loss first, every trial a row
    scores = [r["score"] for r in rep["rows"]]
    assert len(scores) == 4 and scores == sorted(scores) and rep["best"] == rep["rows"][0]["trial"]
    status = cli(server, "sweep-status", sweep_id)
    assert status.exit_code == 0 and f"* {rep['best']}" in status.output, status.output
    # GET /jobs/{array}: its trials, and `memtrain jobs` names the count
    one_job = server.request("GET", f"/jobs/{array['id']}")[1]
    assert [t["state"] for t in one_job["trial_runs"]] == ["succeeded"] * 2
    listed = cli(server, "jobs")
    assert "[2 trials]" in listed.output, listed.output
    status, page = server.request("GET", f"/jobs/{array['id']}/page")
    assert status == 200 and all(f"<td>{t['trial']}</td>" in page for t in one_job["trial_runs"])
    assert "[2 trials]" in server.request("GET", "/")[1]


def test_cancel_one_trial_then_the_array(server):
    body = sweep_body({"lr": [0.01, 0.003, 0.001]}, epochs=3000, name="long", training={"patience": 10000})
    status, sub = server.request("POST", "/sweeps", body)
    assert status == 201 and [j["trials"] for j in sub["jobs"]] == [3], sub
    job_id = sub["jobs"][0]["id"]
    runs = server.request("GET", f"/jobs/{job_id}")[1]["trial_runs"]
    hist = [Path(r["run_dir"]) / "history.jsonl" for r in runs]  # one line per epoch
    deadline = time.time() + 60
    while not all(h.is_file() and len(h.read_text().splitlines()) > 2 for h in hist):
        assert time.time() < deadline, server.request("GET", f"/jobs/{job_id}")[1]
        time.sleep(0.05)
    # admitted as one job: its plan (3 trials stacked) plus one process overhead, not three
    job = server.request("GET", f"/jobs/{job_id}")[1]
    cpu = server.request("GET", "/devices")[1][0]
    assert cpu["jobs"] == [job_id] and cpu["committed_bytes"] == job["planned_bytes"] + OVERHEAD
    # one exporter for the array on the port the service gave it, every trial labelled
    metrics = urllib.request.urlopen(f"http://{job['metrics_target']}/metrics", timeout=10).read().decode()
    assert len(set(re.findall(r'trial="([^"]+)"', metrics))) == 3, metrics[:2000]
    out = cli(server, "cancel", job_id, "--trial", runs[0]["trial"])
    assert out.exit_code == 0 and out.output.strip() == f"{job_id} trial {runs[0]['trial']}: stopping", out.output
    time.sleep(1.0)  # the stopped trial writes no more epochs; the others go on
    stopped_at = len(hist[0].read_text().splitlines())
    time.sleep(1.0)
    assert len(hist[0].read_text().splitlines()) == stopped_at
    assert server.request("GET", f"/jobs/{job_id}")[1]["state"] == "running"
    assert server.request("DELETE", f"/jobs/{job_id}")[0] == 200
    done = server.wait(job_id)
    assert done["state"] == "cancelled" and done["reason"] == "cancelled on request (checkpoint saved)", done
    assert [t["state"] for t in done["trial_runs"]] == ["cancelled"] * 3
    assert all(len(h.read_text().splitlines()) > stopped_at for h in hist[1:])
    for r in runs:  # every trial stopped as a lone job stops: with its checkpoint
        assert list((Path(r["run_dir"]) / "checkpoints").glob("ckpt-*.npz")), r
    status, again = server.request("DELETE", f"/jobs/{job_id}/trials/{runs[1]['trial']}")
    assert status == 409 and "already cancelled" in again["detail"]
    assert server.request("DELETE", f"/jobs/{job_id}/trials/nosuch")[0] == 404


@pytest.mark.parametrize("body, content_type, words", [
    ({"name": "x", "base": "job.toml", "space": {"lr": [0.1]}}, "application/json",
     "base: 'job.toml' is a path, and the service reads no client files"),
    ({"name": "x", "base": {"model": {"layers": [64, 10]}}, "space": {}}, "application/json",
     "sweep: space: empty; declare at least one hyper-parameter"),
    ({"name": "x", "base": {"model": {"layers": [64, 10]}}, "space": {"lr": [0.1]}, "extra": 1}, "application/json",
     "unknown key(s) extra"),
    ({"name": "x", "base": {"model": {"layers": [64, 10]}}, "space": {"momentum_typo": [0.1]}}, "application/json",
     "space.momentum_typo: unknown hyper-parameter"),
    ({"name": "x", "base": {"model": {"layers": [64, 10]}, "data": {"dataset": "/etc/passwd"}},
      "space": {"lr": [0.1]}}, "application/json", "is a file, and this service reads no files"),
    ('name = "x"\n[space\n', "application/toml", "body: invalid TOML"),
])
def test_a_bad_sweep_file_is_one_line_4xx_and_stores_nothing(server, body, content_type, words):
    before = server.request("GET", "/jobs?limit=1000")[1]
    status, answer = server.request("POST", "/sweeps", body, content_type=content_type)
    assert status == 422 and words in answer["detail"] and "\n" not in answer["detail"], answer
    assert server.request("GET", "/jobs?limit=1000")[1] == before


def test_a_service_restarted_mid_sweep_keeps_it_and_finishes_it(tmp_path):
    body = sweep_body({"lr": [0.01, 0.003]}, epochs=40, name="restart")
    with ThreadServer(tmp_path / "state") as s:
        status, sub = s.request("POST", "/sweeps", body)
        assert status == 201, sub
        job_id = sub["jobs"][0]["id"]
        s.wait(job_id, states=("running",))
    with ThreadServer(tmp_path / "state") as s:  # the first one's worker was killed with it
        rep = wait_sweep(s, sub["id"])
        assert rep["jobs"] == [job_id] and [r["state"] for r in rep["runs"]] == ["succeeded"] * 2, rep["runs"]
        for r in rep["runs"]:
            with np.load(Path(r["run_dir"]) / "model-final.npz") as z:
                assert z.files
    for name in ("memtrain.sqlite", "memtrain.sqlite.backup", "memtrain.sqlite-wal", "memtrain.sqlite-shm"):
        (tmp_path / "state" / name).unlink(missing_ok=True)  # the store lost: rebuilt from the job dirs
    with ThreadServer(tmp_path / "state", recover=True) as s:
        again = s.request("GET", f"/sweeps/{sub['id']}")[1]
        assert (again["jobs"], again["runs"]) == (rep["jobs"], rep["runs"])
        assert [(r["trial"], r["score"]) for r in again["rows"]] == [(r["trial"], r["score"]) for r in rep["rows"]]


def test_the_cli_says_a_bad_sweep_file_in_one_line_and_the_api_documents_sweeps(server, tmp_path):
    (tmp_path / "bad.toml").write_text('[base.model]\nlayers = [64, 10]\n[space]\nlr = {log_uniform = [0, 1]}\n')
    out = cli(server, "submit", str(tmp_path / "bad.toml"))
    assert out.exit_code == 2, out.output
    assert out.output == ("memtrain: error: sweep: space.lr: a distribution needs method = \"random\" in [search]; "
                          "a grid takes lists\n")
    api = server.request("GET", "/openapi.json")[1]
    body = api["paths"]["/sweeps"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/toml", "application/json"} and "space" in body["application/json"]["schema"][
        "properties"]
    assert "delete" in api["paths"]["/jobs/{job_id}/trials/{trial_id}"] and "get" in api["paths"]["/sweeps/{sweep_id}"]
