"""bench/gpu_suite.sh --dry-run: the one-shot GPU suite's control flow, on the CPU."""

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "bench" / "gpu_suite.sh"


# A venv without the service extra, as a GPU machine's is: imports of its packages fail.
HIDE_SERVICE_EXTRA = """
import sys

class HideServiceExtra:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("uvicorn", "fastapi", "starlette"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, HideServiceExtra())
"""


def _run(*args, timeout=240, pythonpath=None):
    env = {**os.environ, "PYTHON": sys.executable}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run(["bash", str(SUITE), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def _gpu_tests_collected() -> int:
    """The gpu-marked tests, collected with every extra installed, from the files that mark any."""
    files = [str(p) for p in sorted((ROOT / "tests").glob("test_*.py")) if "mark.gpu" in p.read_text()]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "--collect-only",
                        *files], capture_output=True, text=True, cwd=ROOT, timeout=120)
    return int(re.search(r"(\d+)/\d+ tests collected", r.stdout).group(1))


def test_dry_run_runs_every_part_and_writes_json_and_markdown(tmp_path):
    """On a venv without the service extra (hidden here), as on the GPU machine; its pytest part
    collects exactly the gpu tests the real run collects (from the files that mark any), and nothing
    stops the collection."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE_SERVICE_EXTRA)
    out = tmp_path / "suite"
    r = _run("--dry-run", out, pythonpath=hide)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [p["part"] for p in summary["parts"]] == ["env", "pytest_gpu", "profile", "autobatch", "throughput",
                                                     "throughput_tf32", "trials"]
    assert all(p["rc"] == 0 and p["seconds"] < p["limit"] for p in summary["parts"]), summary["parts"]
    assert sum(p["limit"] for p in summary["parts"]) + 10 <= 8 * 60  # the suite's budget on a GPU
    assert len(summary["profile"]["rows"]) == 3 * 4 * 2 and summary["profile"]["dry_run"]
    assert {(r["optimizer"], r["framework"]) for r in summary["throughput"]["rows"]} == {
        ("sgd", "memtrain"), ("adam", "memtrain")}
    assert summary["autobatch"]["rows"][0]["confirmed"] > 0 and summary["targets"] == []
    md = (out / "summary.md").read_text()
    assert {r["model"] for r in summary["throughput_tf32"]["rows"]} == {"4096x4"}
    # the dry run's K = 1, 2, 4, both ways of updating, each run or said skipped (the part's time
    # is short and this machine may be loaded); no launches to count on the CPU
    trials = summary["trials"]
    ran = [f"K={r['k']} {r['way']}" for r in trials["rows"]]
    assert ran + trials["skipped"] == [f"K={k} {w}" for k in (1, 2, 4) for w in ("grouped", "per_trial")]
    assert ran[:2] == ["K=1 grouped", "K=1 per_trial"] and trials["k_max"] >= 4
    assert all(r["launches_per_step"] is None and r["seconds"] > 0 for r in trials["rows"])
    assert "Trial arrays (784-32-20-10" in md
    assert "**Dry run**" in md and "| throughput | 0 |" in md
    assert "GPU suite" in r.stdout  # the summary is printed too
    log = (out / "pytest_gpu.log").read_text()
    assert "Interrupted" not in log  # a module that cannot be collected interrupts the run (errors: below)
    suite = ET.parse(out / "pytest_gpu.xml").getroot().find("testsuite")
    assert int(suite.get("errors")) == 0 and int(suite.get("failures")) == 0
    skipped_for_cuda = [c for c in suite.iter("testcase") if "no CUDA device" in str(c.find("skipped").get("message"))]
    assert len(skipped_for_cuda) == _gpu_tests_collected() >= 100  # all of them; each skipped: no CUDA here


def test_a_part_past_its_time_limit_stops_and_says_what_it_skipped(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_profile.py"), "--out", str(tmp_path / "p.json"),
                        "--time-limit", "0", "--dry-run"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["rows"] == [] and len(data["skipped"]) == 24 and data["skipped"][0] == "784-256-10 sgd float32"


def test_usage_error_exits_2(tmp_path):
    r = _run()
    assert r.returncode == 2 and "usage: bench/gpu_suite.sh [--dry-run] OUT_DIR" in r.stderr
