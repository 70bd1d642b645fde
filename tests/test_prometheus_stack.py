"""A real Prometheus scraping a real `memtrain train` job answers every query on the dashboards.

Debian's `prometheus` (skipped, with the reason, where it is not on PATH) scrapes a CPU job
once a second, configured by dashboards/prometheus/prometheus.yml with only the scrape
interval and the job's address swapped in. Each panel target of dashboards/json/*.json is
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
CONFIG = ROOT / "dashboards" / "prometheus" / "prometheus.yml"
DASHBOARDS = sorted((ROOT / "dashboards" / "json").glob("*.json"))
PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")

SCRAPE_JOB = "memtrain"  # job_name in dashboards/prometheus/prometheus.yml
JOB_NAME = "stack-test"  # the training job's --name: exported_job on memtrain_job_info
# Grafana's $__rate_interval is max($__interval + scrape interval, 4 x scrape interval) = 4 s at
# a 1 s scrape; one scrape more keeps rate() off a window holding a single sample.
VARIABLES = {"__rate_interval": "5s", "__interval": "1s", "__range": "60s", "job": SCRAPE_JOB}
SETUP_DEADLINE_S = 60  # the whole module takes about 10 s on 2 cores

# Targets that may come back empty for this test's job, a CPU job, by (dashboard uid, panel title,
# refId), with the reason:
#   "nvml": reads memtrain_gpu_* families, which are absent where NVML is unavailable (no NVIDIA
#           driver): excused only when the job's scrape has no memtrain_gpu_info.
#   "cuda": reads a GPU job's own measurement (source="nvml_process"), which a CPU job never has.
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
}
NEEDS = {"nvml": "memtrain_gpu_", "cuda": 'source="nvml_process"'}

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
    job: subprocess.Popen
    logs: Path

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


def _config(target: str) -> str:
    """The committed config with a 1 s scrape interval and the test job as the memtrain target."""
    text = CONFIG.read_text()
    for old, new in (("scrape_interval: 15s", "scrape_interval: 1s"), ('"memtrain:9464"', json.dumps(target))):
        assert text.count(old) == 1, f"{CONFIG}: expected one `{old}`"
        text = text.replace(old, new)
    return text


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
    try:
        # Digits, 34 steps an epoch: the first epoch (validation metrics, a checkpoint) ends within a
        # second of training; 1000 epochs outlast the test (about 45 s here), which stops it.
        with open(tmp / "job.log", "w") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "memtrain.cli", "train", "--name", JOB_NAME, "--layers", "64,32,10",
                 "--dataset", "digits", "--epochs", "1000", "--batch-size", "32", "--device", "cpu",
                 "--output-dir", str(tmp / "run"), "--metrics-port", "0", "--log-format", "json"],
                stdout=out, stderr=subprocess.STDOUT, cwd=tmp))
        job = procs[0]

        def metrics_url():
            assert job.poll() is None, (tmp / "job.log").read_text()
            for line in (tmp / "job.log").read_text().splitlines():
                if line.startswith("{") and json.loads(line).get("event") == "metrics":
                    return json.loads(line)["url"]
            return None

        instance = urllib.parse.urlsplit(_until("the job's metrics URL", deadline, metrics_url)).netloc
        (tmp / "prometheus.yml").write_text(_config(instance))
        port = _free_port()
        with open(tmp / "prometheus.log", "w") as out:
            procs.append(subprocess.Popen(
                [PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}"], stdout=out, stderr=subprocess.STDOUT))
        s = Stack(f"http://127.0.0.1:{port}", instance, job, tmp)

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
        assert job.poll() is None, "the job ended before the queries: they must see it training\n" + s.tails()
        yield s
    finally:
        for proc in reversed(procs):  # Prometheus first, then the job
            _stop(proc)


# -- the tests ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_panel_query_answers(stack):
    variables = {**VARIABLES, "instance": stack.instance}
    has_nvml = bool(stack.query(f'memtrain_gpu_info{{instance="{stack.instance}"}}'))
    empty, wrong = [], []
    for key, expr in _targets().items():
        result = stack.query(_substitute(expr, variables))  # asserts status success
        reason = EMPTY_ON_CPU.get(key)
        if not result:
            if reason == "cuda" or (reason == "nvml" and not has_nvml):
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
    expected = {"job": SCRAPE_JOB, "instance": stack.instance}
    for path in DASHBOARDS:
        for var in json.loads(path.read_text(encoding="utf-8"))["templating"]["list"]:
            if var["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"])
            assert m, var["query"]
            selector = _substitute(m.group(1), {**VARIABLES, "instance": stack.instance})
            body = stack.get(f"/api/v1/label/{m.group(2)}/values", **{"match[]": selector})
            assert expected[var["name"]] in body["data"], (path.name, var["name"], body)


@pytest.mark.slow
def test_job_label_is_exported_job(stack):
    """honor_labels stays false: the job's own name lands in exported_job; job is the scrape job's."""
    (info,) = stack.query(f'memtrain_job_info{{exported_job="{JOB_NAME}"}}')
    assert info["metric"]["job"] == SCRAPE_JOB and info["metric"]["instance"] == stack.instance
    assert stack.query(f'memtrain_job_info{{job="{JOB_NAME}"}}') == []


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not on PATH (Debian: apt-get install prometheus)")
def test_promtool_check_config(tmp_path):
    for path in (CONFIG, tmp_path / "prometheus.yml"):
        if path.parent == tmp_path:
            path.write_text(_config("127.0.0.1:9464"))  # the test's variant too
        out = subprocess.run([PROMTOOL, "check", "config", str(path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
