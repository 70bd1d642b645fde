"""A real Prometheus, discovering a real job through a real `memtrain serve`, answers every
query on the dashboards.

Debian's `prometheus` (skipped, with the reason, where it is not on PATH) scrapes the service
and, through its /prometheus/targets (HTTP service discovery), a CPU job it runs, once a
second, configured by dashboards/prometheus/prometheus-local.yml (docs/dashboards.md's recipe
for a Prometheus on the service's machine, whose scrape jobs are prometheus.yml's, the compose
stack's: checked here) with only the intervals, the service's port and the token file swapped in. Each panel target of dashboards/json/*.json is
then asked of it with Grafana's template variables filled in. docs/dashboards.md describes
the compose stack this stands in for.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "dashboards" / "prometheus" / "prometheus.yml"  # the compose stack's
LOCAL = ROOT / "dashboards" / "prometheus" / "prometheus-local.yml"  # the same jobs, on the service's machine
# where each file finds the service and its token
SERVICE_AT = {CONFIG: ("memtrain:8470", "/run/secrets/memtrain-token"), LOCAL: ("127.0.0.1:8470", "../../memtrain-token")}
DASHBOARDS = sorted((ROOT / "dashboards" / "json").glob("*.json"))
PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")

SCRAPE_JOB = "memtrain"  # job_name in dashboards/prometheus/prometheus.yml
SERVICE_JOB = "memtrain-service"  # the service's own scrape job there
TOKEN = "stack-test-token-0123456789"
JOB_NAME = "stack-test"  # the training job's --name: exported_job on memtrain_job_info
# Grafana's $__rate_interval is max($__interval + scrape interval, 4 x scrape interval) = 4 s at
# a 1 s scrape; one scrape more keeps rate() off a window holding a single sample.
# $trial at All: ".*", which also matches this lone job's series (no trial label); tests/test_array_metrics.py
# asks the same queries of a trial array's target
VARIABLES = {"__rate_interval": "5s", "__interval": "1s", "__range": "60s", "job": SCRAPE_JOB, "jobs": SCRAPE_JOB,
             "trial": ".*"}
SETUP_DEADLINE_S = 60  # the whole module takes about 10 s on 2 cores

# Targets that may come back empty for this test's job, a CPU job, by (dashboard uid, panel title,
# refId), with the reason:
#   "nvml": reads memtrain_gpu_* families, which are absent where NVML is unavailable (no NVIDIA
#           driver): excused only when the job's scrape has no memtrain_gpu_info.
#   "cuda": reads a GPU job's own measurement (source="nvml_process"), which a CPU job never has.
#   "regression": reads a linear-output job's scores (RMSE, MAE, R^2), which this classifier never has
#           (tests/test_metrics.py checks that a regression job exposes them).
# Every other target must return data; the OOM and non-finite counters are 0 here, and 0 is data.
EMPTY_ON_CPU = {
    ("memtrain-job", "GPU memory", "A"): "nvml",
    ("memtrain-job", "GPU memory", "B"): "nvml",
    ("memtrain-job", "GPU memory", "C"): "nvml",
    ("memtrain-job", "Headroom until OOM", "A"): "nvml",  # B, the CPU's plan margin, must answer
    ("memtrain-job", "GPU utilisation", "A"): "nvml",
    ("memtrain-job", "GPU temperature", "A"): "nvml",
    ("memtrain-job", "GPU power", "A"): "nvml",
    ("memtrain-job", "GPUs", "A"): "nvml",
    ("memtrain-fleet", "Jobs", "E"): "cuda",  # the process's memory on its GPU
    ("memtrain-fleet", "Jobs", "F"): "nvml",  # its GPU's capacity
    ("memtrain-fleet", "Jobs", "G"): "cuda",  # the share of it
    ("memtrain-fleet", "Memory per job against its GPU", "C"): "cuda",
    ("memtrain-fleet", "Memory per job against its GPU", "D"): "nvml",
    ("memtrain-fleet", "GPU memory in use, per GPU", "A"): "nvml",
    ("memtrain-job", "Validation RMSE, MAE, R² (regression)", "A"): "regression",
    ("memtrain-job", "Validation RMSE, MAE, R² (regression)", "B"): "regression",
    ("memtrain-job", "Validation RMSE, MAE, R² (regression)", "C"): "regression",
}
NEEDS = {"nvml": "memtrain_gpu_", "cuda": 'source="nvml_process"', "regression": "memtrain_validation_"}

# Values, not just presence, for the panels a live job must move.
TRAINING_STATES = {2.0, 3.0, 4.0}  # training, evaluating, checkpointing (positions in JOB_STATES, 1-based)
EXPECT = {
    ("memtrain-job", "State", "A"): lambda v: v in TRAINING_STATES,
    ("memtrain-job", "Samples / s", "A"): lambda v: v > 0,
    ("memtrain-job", "Steps / s", "A"): lambda v: v > 0,
    ("memtrain-job", "Step duration", "B"): lambda v: 0 < v < 10,
    ("memtrain-job", "Batch size", "A"): lambda v: v == 32,
    ("memtrain-job", "Last checkpoint", "A"): lambda v: 0 <= v < 30,
    ("memtrain-job", "OOM recoveries", "A"): lambda v: v == 0,
    ("memtrain-fleet", "Jobs", "C"): lambda v: v > 0,
    ("memtrain-service", "Running", "A"): lambda v: v == 1,
    ("memtrain-service", "Jobs timeline", "A"): lambda v: v in TRAINING_STATES,
}


def _panels(dash):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])  # a collapsed row holds its panels


def _targets():
    """(dashboard uid, panel title, refId) -> expr for every query on every dashboard."""
    out = {}
    for path in DASHBOARDS:
        dash = json.loads(path.read_text(encoding="utf-8"))
        for panel in _panels(dash):
            for t in panel.get("targets", []):
                out[dash["uid"], panel["title"], t["refId"]] = t["expr"]
    return out


def _substitute(expr: str, variables: dict) -> str:
    def one(m):
        name = m.group(1) or m.group(2)
        assert name in variables, f"no value for ${name} in {expr}"
        return variables[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


# -- the stack ----------------------------------------------------------------------------------


@dataclass
class Stack:
    url: str        # Prometheus
    instance: str   # the job's target address, its `instance` label
    job: subprocess.Popen  # the service that runs it
    logs: Path
    service: str = ""  # the service's address, its `instance` label

    def variables(self, uid: str) -> dict:
        """Grafana's variables for a dashboard: the service dashboard's job/instance are the service's."""
        if uid == "memtrain-service":
            return {**VARIABLES, "job": SERVICE_JOB, "instance": self.service}
        return {**VARIABLES, "instance": self.instance}

    def get(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as r:
            return json.loads(r.read())

    def query(self, expr: str) -> list:
        body = self.get("/api/v1/query", query=expr)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def tails(self) -> str:
        return "\n".join(f"--- {p.name}:\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                         for p in sorted(self.logs.glob("*.log")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(service: str, token_file: Path, *, fast: bool = True, path: Path = LOCAL) -> str:
    """A committed config with the test's service (address, token file) and, when fast, 1 s intervals."""
    text = path.read_text()
    address, secret = SERVICE_AT[path]
    swaps = [(address, service, 2), (secret, str(token_file), 2)]
    if fast:
        swaps += [("scrape_interval: 15s", "scrape_interval: 1s", 1), ("refresh_interval: 5s", "refresh_interval: 1s", 1)]
    for old, new, n in swaps:
        assert text.count(old) == n, f"{path}: expected {n} `{old}`"
        text = text.replace(old, new)
    return text


def _http(url: str, body: dict | None = None, method: str | None = None):
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(), method=method,
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _until(what: str, deadline: float, check, stack: Stack | None = None):
    while True:
        try:
            got = check()
        except (OSError, ValueError):  # not listening yet, or not ready
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{stack.tails() if stack else ''}")
        time.sleep(0.25)


def _stop(proc: subprocess.Popen):
    if proc.poll() is None:
        proc.terminate()  # the job checkpoints and exits 0; Prometheus shuts down cleanly
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if PROMETHEUS is None:
        pytest.skip("prometheus not on PATH (Debian: apt-get install prometheus; .ci/run installs it)")
    tmp = tmp_path_factory.mktemp("stack")
    deadline = time.monotonic() + SETUP_DEADLINE_S
    procs = []
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    service = f"127.0.0.1:{_free_port()}"
    job_id = None
    try:
        with open(tmp / "serve.log", "w") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "memtrain.cli", "serve", "--state-dir", str(tmp / "state"), "--port",
                 service.split(":")[1], "--devices", "cpu", "--budget", "cpu=2GiB", "--overhead", "200MiB",
                 "--token-file", str(token_file), "--log-level", "warning"],
                stdout=out, stderr=subprocess.STDOUT, cwd=tmp))
        job = procs[0]

        def healthy():
            assert job.poll() is None, (tmp / "serve.log").read_text()
            with urllib.request.urlopen(f"http://{service}/healthz", timeout=2) as r:
                return r.status == 200

        _until("memtrain serve", deadline, healthy)
        # Digits, 34 steps an epoch: the first epoch (validation metrics, a checkpoint) ends within a
        # second of training; 1000 epochs outlast the test (about 45 s here), which cancels it.
        job_id = _http(f"http://{service}/jobs", {
            "name": JOB_NAME, "device": "cpu", "model": {"layers": [64, 32, 10]},
            "training": {"epochs": 1000, "batch_size": 32}, "data": {"dataset": "digits"}})["id"]

        def target():
            found = [t for t in _http(f"http://{service}/prometheus/targets") if t["labels"]["job_id"] == job_id]
            return found[0]["targets"][0] if found else None

        instance = _until("the job's metrics target", deadline, target)
        (tmp / "prometheus.yml").write_text(_config(service, token_file))
        port = _free_port()
        with open(tmp / "prometheus.log", "w") as out:
            procs.append(subprocess.Popen(
                [PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}"], stdout=out, stderr=subprocess.STDOUT))
        s = Stack(f"http://127.0.0.1:{port}", instance, job, tmp, service)

        def ready():
            with urllib.request.urlopen(f"{s.url}/-/ready", timeout=2) as r:
                return r.status == 200

        _until("Prometheus /-/ready", deadline, ready, s)
        # Scrapes enough for rate() over $__rate_interval (two samples; three for margin), all
        # after the first epoch, so its validation values and checkpoint are there too.
        window = VARIABLES["__rate_interval"]
        _until(f"3 scrapes in {window} after the first epoch", deadline, lambda: s.query(
            f'count_over_time(memtrain_validation_loss{{job="{SCRAPE_JOB}"}}[{window}]) >= 3'
            f' and on (instance) memtrain_last_checkpoint_timestamp_seconds'
            f' and on (instance) up{{job="{SCRAPE_JOB}"}} == 1'), s)
        _until("the service scraped", deadline, lambda: s.query(f'memtrain_service_jobs{{job="{SERVICE_JOB}"}}'), s)
        running = _http(f"http://{service}/jobs/{job_id}")["state"] == "running"
        assert job.poll() is None and running, "the job ended before the queries: they must see it training\n" + \
            s.tails()
        yield s
    finally:
        if job_id is not None and procs and procs[0].poll() is None:
            _http(f"http://{service}/jobs/{job_id}", method="DELETE")  # the job checkpoints and stops
            stop_by = time.monotonic() + 20
            while _http(f"http://{service}/jobs/{job_id}")["state"] == "running" and time.monotonic() < stop_by:
                time.sleep(0.2)
        for proc in reversed(procs):  # Prometheus first, then the service
            _stop(proc)


# -- the tests ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_panel_query_answers(stack):
    has_nvml = bool(stack.query(f'memtrain_gpu_info{{instance="{stack.instance}"}}'))
    empty, wrong = [], []
    for key, expr in _targets().items():
        result = stack.query(_substitute(expr, stack.variables(key[0])))  # asserts status success
        reason = EMPTY_ON_CPU.get(key)
        if not result:
            if reason in ("cuda", "regression") or (reason == "nvml" and not has_nvml):
                continue
            empty.append(f"{key}: {expr}")
        elif key in EXPECT:
            values = [float(r["value"][1]) for r in result]
            if not all(not math.isnan(v) and EXPECT[key](v) for v in values):
                wrong.append(f"{key}: {values}")
    assert not empty, "queries without data:\n" + "\n".join(empty) + "\n" + stack.tails()
    assert not wrong, "unexpected values:\n" + "\n".join(wrong)


def test_allow_list_names_real_gpu_targets():
    """No stale entries, and no entry hiding a query that does not need a GPU."""
    targets = _targets()
    for key, reason in EMPTY_ON_CPU.items():
        assert key in targets, f"EMPTY_ON_CPU names no target: {key}"
        assert NEEDS[reason] in targets[key], f"{key} is excused as {reason!r} but reads no {NEEDS[reason]}"
    assert set(EXPECT) <= set(targets) - set(EMPTY_ON_CPU)


@pytest.mark.slow
def test_template_variable_queries(stack):
    """label_values(...) of the job/instance variables, as Grafana asks them (the series API)."""
    for path in DASHBOARDS:
        dash = json.loads(path.read_text(encoding="utf-8"))
        variables = stack.variables(dash["uid"])
        expected = {"job": variables["job"], "instance": variables["instance"], "jobs": SCRAPE_JOB}
        for var in dash["templating"]["list"]:
            if var["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"])
            assert m, var["query"]
            selector = _substitute(m.group(1), variables)
            body = stack.get(f"/api/v1/label/{m.group(2)}/values", **{"match[]": selector})
            if var["name"] == "trial":  # a lone job has no trials (tests/test_array_metrics.py: an array's)
                assert body["data"] == [], (path.name, body)
                continue
            assert expected[var["name"]] in body["data"], (path.name, var["name"], body)


@pytest.mark.slow
def test_job_label_is_exported_job(stack):
    """honor_labels stays false: the job's own name lands in exported_job; job is the scrape job's."""
    (info,) = stack.query(f'memtrain_job_info{{exported_job="{JOB_NAME}"}}')
    assert info["metric"]["job"] == SCRAPE_JOB and info["metric"]["instance"] == stack.instance
    assert stack.query(f'memtrain_job_info{{job="{JOB_NAME}"}}') == []


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not on PATH (Debian: apt-get install prometheus)")
def test_promtool_check_config(tmp_path):
    token = tmp_path / "token"
    token.write_text(TOKEN)
    # the committed files with only the token file's path swapped (promtool wants it to exist), and the test's
    (tmp_path / "committed.yml").write_text(_config("memtrain:8470", token, fast=False, path=CONFIG))
    (tmp_path / "local.yml").write_text(_config("127.0.0.1:8470", token, fast=False))
    (tmp_path / "prometheus.yml").write_text(_config("127.0.0.1:8470", token))
    for path in (tmp_path / "committed.yml", tmp_path / "local.yml", tmp_path / "prometheus.yml"):
        out = subprocess.run([PROMTOOL, "check", "config", str(path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr


def test_the_same_machine_recipe_scrapes_what_the_compose_stack_scrapes(tmp_path):
    """prometheus-local.yml (what the stack above runs) is prometheus.yml less dcgm, with the
    service's address and token file of a Prometheus on the service's own machine."""
    import yaml

    token = tmp_path / "token"
    compose = yaml.safe_load(_config("SERVICE", token, fast=False, path=CONFIG))
    local = yaml.safe_load(_config("SERVICE", token, fast=False))
    assert local["global"] == compose["global"]
    assert local["scrape_configs"] == [c for c in compose["scrape_configs"] if c["job_name"] != "dcgm"]
