"""bench/gpu_suite.sh --dry-run: the one-shot GPU suite's control flow, on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "bench" / "gpu_suite.sh"


def _run(*args, timeout=240):
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SUITE), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def test_dry_run_runs_every_part_and_writes_json_and_markdown(tmp_path):
    out = tmp_path / "suite"
    r = _run("--dry-run", out)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [p["part"] for p in summary["parts"]] == ["env", "pytest_gpu", "profile", "autobatch", "throughput",
                                                     "throughput_tf32"]
    assert all(p["rc"] == 0 and p["seconds"] < p["limit"] for p in summary["parts"]), summary["parts"]
    assert sum(p["limit"] for p in summary["parts"]) + 10 <= 8 * 60  # the suite's budget on a GPU
    assert len(summary["profile"]["rows"]) == 3 * 4 * 2 and summary["profile"]["dry_run"]
    assert {(r["optimizer"], r["framework"]) for r in summary["throughput"]["rows"]} == {
        ("sgd", "memtrain"), ("adam", "memtrain")}
    assert summary["autobatch"]["rows"][0]["confirmed"] > 0 and summary["targets"] == []
    assert {r["model"] for r in summary["throughput_tf32"]["rows"]} == {"4096x4"}
    md = (out / "summary.md").read_text()
    assert "**Dry run**" in md and "| throughput | 0 |" in md
    assert "GPU suite" in r.stdout  # the summary is printed too
    assert "skipped" in (out / "pytest_gpu.log").read_text()  # the gpu tests were collected and skipped


def test_a_part_past_its_time_limit_stops_and_says_what_it_skipped(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_profile.py"), "--out", str(tmp_path / "p.json"),
                        "--time-limit", "0", "--dry-run"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["rows"] == [] and len(data["skipped"]) == 24 and data["skipped"][0] == "784-256-10 sgd float32"


def test_usage_error_exits_2(tmp_path):
    r = _run()
    assert r.returncode == 2 and "usage: bench/gpu_suite.sh [--dry-run] OUT_DIR" in r.stderr
