"""The HTTP API and the CLI client against a real uvicorn server on 127.0.0.1."""

import json
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from service_helpers import ThreadServer, digits_job, kill_group

from memtrain.cli import main


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    np.savez(root / "small.npz", X=rng.normal(size=(200, 8)).astype(np.float32), y=rng.integers(0, 3, 200))
    outside = tmp_path_factory.mktemp("outside")
    np.savez(outside / "secret.npz", X=np.zeros((10, 8), np.float32), y=np.zeros(10, int))
    (root / "link.npz").symlink_to(outside / "secret.npz")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, data_root):
    with ThreadServer(tmp_path_factory.mktemp("state"), data_roots=(str(data_root),),
                      max_jobs_per_device=2) as s:
        yield s


def cli(server, *args, env=None):
    r = CliRunner().invoke(main, [*args, "--server", server.url], env=env or {}, catch_exceptions=False)
    return r


def write_job(tmp_path, job: dict) -> Path:
    lines = [f'name = "{job["name"]}"', f"seed = {job.get('seed', 0)}"]
    for section in ("model", "optimizer", "training"):
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in job[section].items()]
    path = tmp_path / "job.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_submit_list_show_log_through_the_cli(server, tmp_path):
    path = write_job(tmp_path, digits_job("cli-job", epochs=1))
    r = cli(server, "submit", str(path), "--set", "training.epochs=2", "--set", "training.batch_size=64")
    assert r.exit_code == 0, r.output
    job_id = r.output.strip()
    followed = cli(server, "logs", job_id, "--follow", "--lines", "0")  # streams from now until the job ends
    assert followed.exit_code == 0, followed.output
    # the lines `memtrain train` prints: no JSON, no checkpoint line after every epoch
    assert "epoch 2/2  loss " in followed.output and "val_acc " in followed.output
    assert "finished  2 epochs" in followed.output and "test      loss " in followed.output
    assert "{" not in followed.output and "checkpoint" not in followed.output
    done = server.wait(job_id)
    assert done["state"] == "succeeded", done["reason"]
    assert done["batch_size"] == 64 and done["result"]["epochs"] == 2  # the --set values reached the job
    assert done["planned_bytes"] == done["result"]["planned_bytes"]  # planned at submission = the job's own plan
    r = cli(server, "jobs", "--state", "succeeded")
    assert r.exit_code == 0 and job_id in r.output and "cli-job" in r.output
    r = cli(server, "job", job_id, "--format", "json")
    assert json.loads(r.output)["id"] == job_id
    r = cli(server, "logs", job_id, "--lines", "1", "--format", "json")
    assert json.loads(r.output)["event"] == "summary"
    r = cli(server, "logs", job_id, "--lines", "1")
    assert r.output.startswith("finished  2 epochs") and "model     " in r.output
    r = cli(server, "logs", job_id, "--follow", "--format", "json")  # a finished job: the tail, then the stream ends
    assert r.output.endswith("}\n") and '"event": "summary"' in r.output
    r = cli(server, "jobs", "--state", "succeeded")
    assert re.search(rf"{job_id} .* epoch 2 val_acc 0\.\d{{4}}", r.output), r.output  # the metric named
    # `memtrain runs STATE_DIR`: the job's run under its name and id, and no false notes
    r = CliRunner().invoke(main, ["runs", str(server.settings.state_dir)], catch_exceptions=False)
    assert r.exit_code == 0 and f"cli-job ({job_id})" in r.output and "note:" not in r.output, r.output
    r = cli(server, "job", job_id)
    assert re.search(r"result +test loss \d\.\d{4}, accuracy 0\.\d{4}; \d+ steps in [\d.]+ s", r.output), r.output


def test_submit_toml_body_and_format_json(server, tmp_path):
    path = write_job(tmp_path, digits_job("toml", epochs=1))
    status, out = server.request("POST", "/jobs", path.read_text(), "application/toml")
    assert status == 201 and set(out) == {"id", "state", "planned_bytes", "device"}
    r = cli(server, "submit", str(path), "--format", "json")
    body = json.loads(r.output)
    assert body["planned_bytes"] == out["planned_bytes"]
    for job_id in (out["id"], body["id"]):
        assert server.wait(job_id)["state"] == "succeeded"


def test_cancel_queued_and_running(server):
    # two slots: a long job, a second long job, and a queued third
    ids = [server.request("POST", "/jobs", digits_job(f"long{i}", epochs=200, batch=8))[1]["id"] for i in range(3)]
    server.wait(ids[0], ("running",))
    deadline = time.time() + 30
    while server.request("GET", f"/jobs/{ids[0]}")[1]["progress"].get("epoch") is None:
        assert time.time() < deadline
        time.sleep(0.1)
    queued = server.request("GET", f"/jobs/{ids[2]}")[1]
    assert queued["state"] == "queued" and queued["reason"].startswith("waiting: all cpu job slots")
    r = cli(server, "cancel", ids[2])
    assert r.exit_code == 0 and "cancelled" in r.output
    r = cli(server, "cancel", ids[0])
    assert r.exit_code == 0 and "stopping" in r.output
    done = server.wait(ids[0])
    assert done["state"] == "cancelled" and "checkpoint saved" in done["reason"]
    assert list((Path(server.settings.state_dir) / "jobs" / ids[0] / "checkpoints").glob("*.npz"))
    server.request("DELETE", f"/jobs/{ids[1]}")
    assert server.wait(ids[1])["state"] == "cancelled"
    assert server.request("GET", f"/jobs/{ids[2]}")[1]["state"] == "cancelled"


def test_killed_job_is_retried_from_its_checkpoint_and_bad_runtime_config_is_not(server):
    job = digits_job("victim", epochs=12, batch=8, checkpoint={"min_interval": 0})  # a checkpoint each epoch
    job_id = server.request("POST", "/jobs", job)[1]["id"]
    deadline = time.time() + 30
    while (server.request("GET", f"/jobs/{job_id}")[1]["progress"].get("epoch") or 0) < 2:
        assert time.time() < deadline
        time.sleep(0.05)
    kill_group(server.service.store.get(job_id).ref)
    done = server.wait(job_id)
    assert done["state"] == "succeeded" and done["attempts"] == 2
    log = (Path(server.settings.state_dir) / "jobs" / job_id / "job.log").read_text()
    assert '"event": "resume"' in log  # the second attempt resumed, not restarted
    status, page = server.request("GET", f"/jobs/{job_id}/page")  # its page lists both starts and the resume
    assert status == 200 and page.count("<td>plan</td>") == 2 and "<td>resume</td>" in page
    assert "<dt>attempts</dt><dd>2 of 2</dd>" in page
    # bad only once its batch is known: the auto batch (at most 8) is smaller than the micro-batch
    bad = server.request("POST", "/jobs", digits_job("bad", epochs=1, batch="auto",
                                                     training={"max_batch_size": 8, "micro_batch_size": 16}))
    failed = server.wait(bad[1]["id"])
    assert failed["state"] == "failed" and failed["attempts"] == 1 and "micro_batch_size" in failed["reason"]


MALFORMED = [
    ("not json", b"{", "application/json", "body: invalid JSON"),
    ("not toml", b"model = [", "application/toml", "body: invalid TOML"),
    ("not utf-8", b"\xff\xfe", "application/json", "UTF-8"),
    ("a list", b"[1, 2]", "application/json", "expected a table/object"),
    ("content type", b"{}", "text/plain", "Content-Type"),
    ("unknown key", {"modle": {}}, None, "unknown key(s) modle"),
    ("unknown section key", {"model": {"layers": [64, 10]}, "training": {"epoch": 1}}, None, "epoch"),
    ("no layers", {"model": {}}, None, "model.layers"),
    ("bad activation", {"model": {"layers": [64, 10], "activation": "nope"}}, None, "activation"),
    ("bad optimizer", {"model": {"layers": [64, 10]}, "optimizer": {"name": "adamw9"}}, None, "adamw9"),
    ("bad lr", {"model": {"layers": [64, 10]}, "optimizer": {"name": "adam", "lr": -1}}, None, "lr"),
    ("bad schedule", {"model": {"layers": [64, 10]}, "schedule": {"name": "zigzag"}}, None, "zigzag"),
    ("zero epochs", {"model": {"layers": [64, 10]}, "training": {"epochs": 0}}, None, "training.epochs"),
    ("bool batch", {"model": {"layers": [64, 10]}, "training": {"batch_size": True}}, None, "training.batch_size"),
    ("text batch", {"model": {"layers": [64, 10]}, "training": {"batch_size": "big"}}, None, "training.batch_size"),
    ("features", {"model": {"layers": [63, 10]}}, None, "64 features"),
    ("dataset", {"model": {"layers": [64, 10]}, "data": {"dataset": "mnist.bin"}}, None, "dataset: unknown source"),
    ("checkpoint keep", {"model": {"layers": [64, 10]}, "checkpoint": {"keep": 0}}, None, "checkpoint.keep"),
    ("every steps", {"model": {"layers": [64, 10]}, "checkpoint": {"every_steps": -1}}, None, "every_steps"),
    ("micro batch", {"model": {"layers": [64, 10]}, "training": {"micro_batch_size": 0}}, None, "micro_batch_size"),
    ("micro > batch", {"model": {"layers": [64, 10]}, "training": {"batch_size": 8, "micro_batch_size": 16}}, None,
     "larger than the batch size 8"),
    ("micro auto", {"model": {"layers": [64, 10]}, "training": {"micro_batch_size": "auto"}}, None,
     "micro_batch_size"),
    ("clip norm", {"model": {"layers": [64, 10]}, "training": {"clip_norm": -1.0}}, None, "training.clip_norm"),
    ("a section as a value", {"model": {"layers": [64, 10]}, "training": 3}, None, "[training] must be a table"),
    ("no resume", {"model": {"layers": [64, 10]}, "checkpoint": {"resume": False}}, None, "checkpoint.resume"),
    ("device", {"model": {"layers": [64, 10]}, "device": "cuda"}, None, "device"),
    ("seed", {"model": {"layers": [64, 10]}, "seed": "x"}, None, "seed: expected a non-negative integer, got 'x'"),
    # TOML goes through the same pydantic JobSubmission: the same line for the same mistake
    ("seed in TOML", b'seed = "x"\n[model]\nlayers = [64, 10]\n', "application/toml",
     "seed: expected a non-negative integer, got 'x'"),
    ("strict priority", {"model": {"layers": [64, 10]}, "priority": "5"}, None, "priority: expected an integer from -1000000 to 1000000, got '5'"),
    ("unknown key in TOML", b'modle = 1\n[model]\nlayers = [64, 10]\n', "application/toml", "unknown key(s) modle"),
    ("no model", {"training": {"epochs": 1}}, None, "model: missing"),
    ("validation", {"model": {"layers": [64, 10]}, "data": {"validation": 2}}, None, "validation"),
    ("never fits", {"model": {"layers": [64, 4096, 4096, 10]}, "training": {"batch_size": 1000000}}, None,
     "never fits"),
]


@pytest.mark.parametrize("why, body, ctype, expected", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_submissions_are_422_with_one_line_and_nothing_written(server, why, body, ctype, expected):
    state = Path(server.settings.state_dir)
    before = (len(server.service.store.list()), sorted(p.name for p in (state / "jobs").glob("*")))
    status, out = server.request("POST", "/jobs", body, ctype or "application/json")
    assert status == 422, out
    assert expected in out["detail"] and "\n" not in out["detail"] and "Traceback" not in out["detail"]
    assert (len(server.service.store.list()), sorted(p.name for p in (state / "jobs").glob("*"))) == before


def test_never_fits_names_the_largest_batch_that_would(server):
    status, out = server.request("POST", "/jobs", {"model": {"layers": [64, 4096, 4096, 10]},
                                                   "training": {"batch_size": 1000000}})
    assert status == 422 and "the largest batch that fits is" in out["detail"]
    largest = int(out["detail"].rsplit(" ", 1)[1])
    assert 1 <= largest < 1000000


def test_body_over_1_mib_is_413(server):
    import http.client

    # refused on the declared length, before the body is read (so only the headers are sent)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("POST", "/jobs")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(1024 * 1024 + 1))
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and "larger than 1024 KiB" in json.loads(r.read())["detail"]
    conn.close()
    # without a declared length (chunked), counted while it is read
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", "/jobs", body=iter([b"x" * 65536] * 17), headers={"Content-Type": "application/json"},
                 encode_chunked=True)
    r = conn.getresponse()
    assert r.status == 413 and "larger than 1024 KiB" in json.loads(r.read())["detail"]
    conn.close()


def test_data_paths_are_confined_to_the_data_root(server, data_root):
    job = {"name": "npz", "model": {"layers": [8, 3]}, "training": {"epochs": 1, "batch_size": 16}}
    for source in ("../outside/secret.npz", "link.npz", "/etc/passwd.npz", str(data_root / ".." / "x.npz")):
        status, out = server.request("POST", "/jobs", {**job, "data": {"dataset": source}})
        assert status == 422 and "outside the data roots" in out["detail"], (source, out)
    status, out = server.request("POST", "/jobs", {**job, "data": {"dataset": "small.npz"}})
    assert status == 201, out
    assert server.wait(out["id"])["state"] == "succeeded"


def test_paths_and_port_of_a_train_job_file_are_replaced_by_the_service(server, tmp_path):
    job = digits_job("paths", epochs=1, checkpoint={"dir": str(tmp_path / "c")}, output={"dir": "/etc/out"},
                     metrics={"port": 9464, "host": "0.0.0.0"})
    status, out = server.request("POST", "/jobs", job)
    assert status == 201, out
    done = server.wait(out["id"])
    assert done["state"] == "succeeded"
    run_dir = Path(server.settings.state_dir) / "jobs" / out["id"]
    assert Path(done["result"]["model"]).parent == run_dir / "output" and not (tmp_path / "c").exists()
    launched = json.loads((run_dir / "launch.json").read_text())["config"]
    assert launched["metrics"]["host"] == "127.0.0.1" and launched["metrics"]["port"] != 9464


def test_names_are_sanitised(server):
    status, out = server.request("POST", "/jobs", digits_job("../../etc/pass wd\n", epochs=1))
    assert status == 201
    assert server.request("DELETE", f"/jobs/{out['id']}")[1]["name"] == "etc-pass-wd"
    server.wait(out["id"])


def test_unknown_job_and_bad_state_filter(server):
    assert server.request("GET", "/jobs/nope")[0] == 404
    status, out = server.request("GET", "/jobs?state=sleeping")
    assert status == 422 and "state" in out["detail"]
    r = CliRunner().invoke(main, ["job", "nope", "--server", server.url])
    assert r.exit_code == 2 and r.output.strip() == "memtrain: error: job nope: no such job"


def test_devices_targets_metrics_and_openapi(server):
    job_id = server.request("POST", "/jobs", digits_job("watched", epochs=100, batch=8))[1]["id"]
    server.wait(job_id, ("running",))
    targets = server.request("GET", "/prometheus/targets")[1]
    mine = [t for t in targets if t["labels"]["job_id"] == job_id]
    assert mine and mine[0]["labels"]["name"] == "watched" and mine[0]["targets"][0].startswith("127.0.0.1:")
    devices = server.request("GET", "/devices")[1]
    assert devices[0]["device"] == "cpu" and job_id in devices[0]["jobs"]
    assert 0 < devices[0]["committed_bytes"] <= devices[0]["capacity_bytes"]
    status, text = server.request("GET", "/metrics", raw=True)
    assert status == 200
    for name in ("memtrain_service_jobs{state=\"running\"}", "memtrain_service_queue_wait_seconds_bucket",
                 "memtrain_service_device_capacity_bytes{device=\"cpu\"}", "memtrain_service_device_committed_bytes",
                 "memtrain_service_device_measured_bytes", "memtrain_service_submissions_total{outcome=\"rejected\"}"):
        assert name in text, name
    server.request("DELETE", f"/jobs/{job_id}")
    spec = server.request("GET", "/openapi.json")[1]
    post = spec["paths"]["/jobs"]["post"]
    assert set(post["requestBody"]["content"]) == {"application/toml", "application/json"}
    assert post["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith("/Submitted")
    assert "Job" in spec["components"]["schemas"] and "Device" in spec["components"]["schemas"]
    server.wait(job_id)


def test_client_says_when_no_service_is_running():
    r = CliRunner().invoke(main, ["jobs", "--server", "http://127.0.0.1:9"])
    assert r.exit_code == 2
    assert r.output.strip().startswith("memtrain: error: no memtrain service is running at http://127.0.0.1:9")


def test_help_of_every_service_command():
    for cmd in ("serve", "submit", "jobs", "job", "cancel", "requeue", "logs"):
        r = CliRunner().invoke(main, [cmd, "--help"])
        assert r.exit_code == 0 and "Usage:" in r.output, cmd


def test_sigterm_of_worker_mid_run_is_not_mistaken_for_cancel(server):
    # an outside SIGTERM (not a DELETE) stops the job with a checkpoint; the service resumes it
    job_id = server.request("POST", "/jobs", digits_job("nudged", epochs=8, batch=8))[1]["id"]
    deadline = time.time() + 30
    while (server.request("GET", f"/jobs/{job_id}")[1]["progress"].get("epoch") or 0) < 1:
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(json.loads(server.service.store.get(job_id).ref)["pid"], signal.SIGTERM)
    done = server.wait(job_id)
    assert done["state"] == "succeeded" and done["attempts"] == 2


def test_service_metrics_are_the_documented_ones(server):
    import re

    docs = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"^\| `(memtrain_service_\w+)", docs, re.M))
    text = server.request("GET", "/metrics", raw=True)[1]
    exposed = {re.sub(r"_(bucket|sum|count|created)$", "", m) for m in re.findall(r"^(memtrain_service_\w+)", text, re.M)}
    assert exposed == documented


def test_the_jobs_table_cuts_a_long_reason_after_a_whole_reason():
    from memtrain.service.client import jobs_table

    job = {"id": "0417f201", "name": "big2", "state": "queued", "device": None, "planned_bytes": 1 << 20,
           "batch_size": 256, "batch_request": 256, "progress": {}, "submitted_at": None,
           "reason": "waiting: all cpu job slots are taken (1 per device); needs 382.96 MiB, 121.42 MiB free on cpu"}
    row = jobs_table([job]).splitlines()[1]
    assert row.endswith("waiting: all cpu job slots are taken (1 per device)...")
    job["reason"] = "waiting: needs 382.96 MiB, 121.42 MiB free on cpu"
    assert jobs_table([job]).splitlines()[1].endswith(job["reason"])
