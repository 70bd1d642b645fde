"""A trial array's metrics (train/arraymetrics.py): one real exporter for the array's process,
scraped over HTTP on 127.0.0.1 while the array trains. Each trial's training and job series carry
`trial` (its job name); the array's memory is there once, without it; its own memtrain_job_info
has an empty trial. promtool checks the exposition; a real Prometheus scraping the array answers
every job and fleet dashboard query (tests/test_prometheus_stack.py does the same for a lone job)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_prometheus_stack import DASHBOARDS, PROMETHEUS, _free_port, _stop, _substitute, _targets, _until

from memtrain.config import from_dict
from memtrain.memory.plan import CATEGORIES
from memtrain.train.arrayjob import ArrayRun

NAMES = ("arr-t0", "arr-t1", "arr-t2")
OPTIMIZERS = ({"name": "adam", "lr": 0.003}, {"name": "sgd", "lr": 0.05}, {"name": "momentum", "lr": 0.02})
ARRAY_SERIES = 10  # the array's own: its plan by category, measured sources, budget, its info
PER_TRIAL_SERIES = 39  # a classifier trial's series once it has validated and checkpointed (docs/metrics.md)


def _config(tmp_path, name, optimizer):
    return from_dict({"name": name, "seed": 0, "device": "cpu", "model": {"layers": [64, 16, 10]},
                      "optimizer": optimizer, "training": {"batch_size": 128, "epochs": 100_000},
                      "data": {"dataset": "digits"}, "output": {"dir": str(tmp_path / name)},
                      "checkpoint": {"dir": str(tmp_path / name / "ck"), "min_interval": 0},  # a checkpoint each epoch
                      "metrics": {"port": 0}})


def scrape(url: str) -> dict:
    """{(sample name, sorted labels): value} of one scrape."""
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return text, {(s.name, tuple(sorted(s.labels.items()))): s.value
                  for f in text_string_to_metric_families(text) for s in f.samples}


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture(scope="module")
def array(tmp_path_factory):
    """Three trials of one shape, different optimizers, training as one array in a thread until stopped."""
    tmp = tmp_path_factory.mktemp("array")
    run = ArrayRun([_config(tmp, n, o) for n, o in zip(NAMES, OPTIMIZERS, strict=True)])
    outcomes = []
    thread = threading.Thread(target=lambda: outcomes.append(run.run()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60

    def url():
        for line in run.streams[0].getvalue().splitlines():
            rec = json.loads(line)
            if rec.get("event") == "metrics":
                return rec["url"]
        assert thread.is_alive(), run.streams[0].getvalue()
        return None

    found = _until("the array's metrics line", deadline, url)
    # every trial has ended two epochs (validation values, a checkpoint) and the exporter serves
    _until("two epochs of every trial", deadline, lambda: all(
        (value(scrape(found)[1], "memtrain_epoch", trial=n) or 0) >= 2 for n in NAMES))
    try:
        yield run, found
    finally:
        run.stop("test")
        thread.join(60)
    assert [o["status"] for o in outcomes[0]] == ["stopped"] * 3


def test_one_exporter_labels_each_trials_series_and_counts_the_array_once(array):
    run, url = array
    text, samples = scrape(url)
    plan = run.array.plan.by_category()
    for cat in CATEGORIES:  # the array's plan, once, without a trial label
        assert value(samples, "memtrain_memory_planned_bytes", category=cat) == plan.get(cat, 0)
    assert sum(v for (n, _), v in samples.items() if n == "memtrain_memory_planned_bytes") == run.array.plan.total
    assert value(samples, "memtrain_memory_measured_bytes", source="rss") > 0
    info = {dict(k[1]).get("trial"): dict(k[1]) for k in samples if k[0] == "memtrain_job_info"}
    assert set(info) == {"", *NAMES}
    assert info[""]["job"] == "array-arr-t0-3" and info[""]["optimizer"] == "adam,sgd,momentum"
    steps_per_epoch = -(-len(run.jobs[0].data.X_train) // 128)
    for name, opt, job in zip(NAMES, OPTIMIZERS, run.jobs, strict=True):
        assert info[name]["job"] == name and info[name]["optimizer"] == opt["name"]
        epoch = value(samples, "memtrain_epoch", trial=name)
        assert value(samples, "memtrain_steps_total", trial=name) == epoch * steps_per_epoch  # set at epoch end
        assert value(samples, "memtrain_samples_total", trial=name) == epoch * len(job.data.X_train)
        assert value(samples, "memtrain_learning_rate", trial=name) == opt["lr"]
        assert 0 < value(samples, "memtrain_validation_accuracy", trial=name) <= 1
        assert value(samples, "memtrain_train_loss", trial=name) > 0
        assert value(samples, "memtrain_checkpoints_total", trial=name) >= 2
        assert value(samples, "memtrain_batch_size", trial=name) == 128
        assert value(samples, "memtrain_job_state", trial=name, memtrain_job_state="training") in (0, 1)
        # as many series as docs/metrics.md says a trial adds
        mine = sorted(n for n, labels in samples if ("trial", name) in labels)
        assert len(mine) == PER_TRIAL_SERIES, mine
    own = sorted(n for n, labels in samples if dict(labels).get("trial", "") == "")
    assert len(own) == len(samples) - 3 * PER_TRIAL_SERIES == ARRAY_SERIES, own
    unlabelled = {n for n, labels in samples if not any(k == "trial" for k, _ in labels)}
    assert unlabelled <= {"memtrain_memory_planned_bytes", "memtrain_memory_budget_bytes",
                          "memtrain_memory_measured_bytes", "memtrain_memory_estimate_error_ratio"}, unlabelled
    # the trials' logs name the one URL
    for s, name in zip(run.streams, NAMES, strict=True):
        (rec,) = [json.loads(line) for line in s.getvalue().splitlines() if '"event": "metrics"' in line]
        assert (rec["url"], rec["trial"]) == (url, name)
    if shutil.which("promtool"):
        out = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=60)
        assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), (out.stdout + out.stderr).decode()


@pytest.mark.slow
@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not on PATH (Debian: apt-get install prometheus)")
def test_a_real_prometheus_answers_the_dashboards_for_an_array(array, tmp_path):
    """Every job and fleet panel query succeeds on the array's target (no many-to-many join); the
    joins name the trials and the array; $trial picks one trial's series."""
    _, url = array
    instance = url.split("/")[2]
    (tmp_path / "p.yml").write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: memtrain\n"
                                    f"    static_configs:\n      - targets: [\"{instance}\"]\n")
    port = _free_port()
    log = open(tmp_path / "prometheus.log", "w")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'p.yml'}", f"--storage.tsdb.path={tmp_path / 'd'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)

    def query(expr):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?"
                                    + urllib.parse.urlencode({"query": expr}), timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    try:
        deadline = time.monotonic() + 60
        _until("3 scrapes of the array", deadline,
               lambda: query('count_over_time(memtrain_epoch{trial="arr-t0"}[5s]) >= 3'))
        variables = {"__rate_interval": "5s", "__interval": "1s", "__range": "60s", "job": "memtrain",
                     "instance": instance, "trial": ".*"}
        targets = {k: e for k, e in _targets().items() if k[0] in ("memtrain-job", "memtrain-fleet")}
        results = {k: query(_substitute(e, variables)) for k, e in targets.items()}
        named = {r["metric"].get("exported_job") for r in results["memtrain-fleet", "Validation loss per job", "A"]}
        assert named == set(NAMES)
        (mem,) = results["memtrain-fleet", "Memory per job against its GPU", "A"]
        assert mem["metric"]["exported_job"] == "array-arr-t0-3"  # the array's memory, under its own name
        assert len(results["memtrain-job", "Loss", "A"]) == 3
        one = query(_substitute(targets["memtrain-job", "Loss", "A"], {**variables, "trial": "arr-t1"}))
        assert [r["metric"]["trial"] for r in one] == ["arr-t1"]
        assert DASHBOARDS  # the files were read
    finally:
        _stop(proc)
        log.close()


def test_a_port_in_use_is_one_error_before_any_trial_writes_its_run_dir(tmp_path):
    import socket

    from memtrain.errors import ConfigError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        cfgs = [_config(tmp_path, n, o).with_overrides({"metrics.port": s.getsockname()[1]})
                for n, o in zip(NAMES[:2], OPTIMIZERS, strict=False)]
        with pytest.raises(ConfigError, match="^metrics.port: cannot listen on 127.0.0.1:"):
            ArrayRun(cfgs).run()
    assert not any((tmp_path / n / "run.json").exists() for n in NAMES[:2])
