"""The worker process every executor starts: JSON config in, JSON log out, exit 0/1/2."""

import json
import subprocess
import sys

from memtrain.config import from_dict


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
