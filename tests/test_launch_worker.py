"""The worker process every executor starts: JSON config in, JSON log out, exit 0/1/2."""

import io
import json
import subprocess
import sys

from memtrain.config import from_dict
from memtrain.launch.worker import PROGRESS, ProgressFile, read_json
from memtrain.train.joblog import JobLog


def worker(path):
    return subprocess.run([sys.executable, "-m", "memtrain.launch.worker", str(path)], capture_output=True, text=True,
                          timeout=120)


def test_the_worker_runs_a_job_config_and_refuses_a_bad_one(tmp_path):
    cfg = from_dict({"name": "w", "model": {"layers": [64, 16, 10]}, "output": {"dir": str(tmp_path / "out")},
                     "training": {"epochs": 1, "batch_size": "auto", "memory_limit": "4MiB"}})
    launch = tmp_path / "launch.json"
    launch.write_text(json.dumps({"job_id": "j1", "config": cfg.to_dict()}))
    r = worker(launch)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line)["event"] for line in r.stdout.splitlines()]
    assert events[0] == "data" and "autobatch" in events and events[-1] == "summary"
    assert (tmp_path / "out" / "model-final.npz").exists()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"job_id": "j2", "config": {"model": {"layers": [64, 10]}, "training": {"epochs": 0}}}))
    r = worker(bad)
    assert r.returncode == 2 and r.stderr.strip() == "error: config j2: training.epochs: expected a positive integer, got 0"


def test_the_job_log_hands_every_event_to_its_callback_in_either_format():
    heard = []
    for fmt in ("text", "json"):
        log = JobLog(fmt, io.StringIO(), on_event=lambda event, fields: heard.append((event, fields)))
        log("checkpoint", "", step=3)  # no text line: the text log prints nothing, the callback still hears it
        log("epoch", "epoch 1", epoch=1, val_loss=0.5)
    assert heard == [("checkpoint", {"step": 3}), ("epoch", {"epoch": 1, "val_loss": 0.5})] * 2


def test_progress_json_is_written_from_the_jobs_events_not_from_its_log(tmp_path):
    import numpy as np

    progress = ProgressFile(tmp_path)
    try:
        progress.on_event("plan", {"total": np.int64(4096), "planned_bytes": {"parameters": 4096}})
        progress.on_event("epoch", {"epoch": 2, "step": 10, "train_loss": np.float32(0.25), "lr": 0.1})
        progress.on_event("checkpoint", {"step": 10, "path": "x"})
    finally:
        progress.close()
    p = read_json(tmp_path / PROGRESS)
    assert (p["planned_bytes"], p["epoch"], p["step"], p["train_loss"], p["checkpoint_step"]) == (4096, 2, 10, 0.25, 10)
    assert p["event"] == "checkpoint" and p["pid"] > 0 and p["peak_rss_bytes"] >= p["rss_bytes"] > 0
