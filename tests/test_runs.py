"""`memtrain runs`: the runs under a directory, from run.json + history.jsonl."""

import csv
import io
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from memtrain.cli import main
from memtrain.config import from_dict
from memtrain.select import runs as rs
from memtrain.train.history import RunHistory
from memtrain.train.job import run as run_job


def _make_run(d, name, losses, *, state="finished", test_accuracy=None, planned=4096, peak=5000):
    h = RunHistory(d)
    h.start({"name": name, "device": "cpu", "dataset": "digits", "optimizer": "adam", "epochs_planned": 10,
             "planned_bytes": planned, "batch_size": 32})
    for e, v in enumerate(losses, 1):
        h.append({"epoch": e, "train_loss": v * 0.9, "lr": 1e-3, "val_loss": v, "val_accuracy": 1 - v / 2},
                 steps=e * 34, measured_peak_bytes=peak)
    if state != "running":
        h.finish(state, {"test_accuracy": test_accuracy}, message=None if state == "finished" else "SIGTERM")
    return h


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    """A run as an older memtrain wrote it: model-final.json but no run.json or history."""
    out = tmp_path_factory.mktemp("legacy") / "old-job"
    cfg = from_dict({"name": "old-job", "seed": 0, "device": "cpu", "model": {"layers": [64, 16, 10]},
                     "training": {"batch_size": 64, "epochs": 1}, "data": {"dataset": "digits"},
                     "output": {"dir": str(out)}})
    run_job(cfg, progress=False, stream=io.StringIO(), install_signals=False)
    for name in ("run.json", "history.jsonl", "history.csv"):  # today's job writes them
        (out / name).unlink()
    return out


@pytest.fixture
def runs_dir(tmp_path):
    _make_run(tmp_path / "alpha", "alpha", [0.9, 0.5, 0.7], test_accuracy=0.91)
    _make_run(tmp_path / "sweep" / "trial-1", "beta", [0.8, 0.6], state="stopped")
    # still running: this very process
    _make_run(tmp_path / "gamma", "gamma", [1.0], state="running")
    return tmp_path


def _invoke(*args):
    return CliRunner().invoke(main, ["runs", *args])


def test_table_lists_every_run_oldest_first(runs_dir):
    r = _invoke(str(runs_dir))
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split()[:3] == ["run", "state", "epochs"]
    body = [ln.split() for ln in lines[2:]]
    assert [b[0] for b in body] == ["alpha", "sweep/trial-1", "gamma"]  # started in that order
    alpha = lines[2]
    assert "finished" in alpha and "3/10" in alpha and "0.5000 (2)" in alpha and "0.7500" in alpha
    assert "0.9100" in alpha and "4.00 KiB" in alpha and "cpu" in alpha
    assert "stopped" in lines[3] and "running" in lines[4]
    assert max(len(ln) for ln in lines) <= 120


def test_json_rows_come_from_run_json_and_history(runs_dir):
    r = _invoke(str(runs_dir), "--format", "json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    by = {x["run"]: x for x in rep["runs"]}
    assert set(by) == {"alpha", "sweep/trial-1", "gamma"} and rep["notes"] == []
    a = by["alpha"]
    assert (a["state"], a["epochs"], a["best_epoch"], a["best_val_loss"], a["test_accuracy"]) == (
        "finished", 3, 2, 0.5, 0.91)
    assert a["planned_bytes"] == 4096 and a["measured_peak_bytes"] == 5000 and a["started"].endswith("Z")
    assert by["sweep/trial-1"]["message"] == "SIGTERM" and by["sweep/trial-1"]["name"] == "beta"
    assert by["gamma"]["state"] == "running" and by["gamma"]["epochs"] == 1  # live: counted from history.jsonl
    assert list(a) == list(rs.FIELDS)


def test_csv_has_one_header_and_a_row_per_run(runs_dir):
    r = _invoke(str(runs_dir), "--format", "csv")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(r.output.splitlines()))
    assert len(rows) == 3 and list(rows[0]) == list(rs.FIELDS) and rows[0]["best_val_loss"] == "0.5"


def test_one_run_directory(runs_dir):
    rep = json.loads(_invoke(str(runs_dir / "alpha"), "--format", "json").output)
    assert [x["run"] for x in rep["runs"]] == ["alpha"]


def test_a_run_whose_process_died_is_interrupted(tmp_path):
    child = "from memtrain.train.history import RunHistory; RunHistory(%r).start({'name': 'k'})" % str(tmp_path / "k")
    subprocess.run([sys.executable, "-c", child], check=True)  # exits without finish(): as if killed
    (row,) = rs.list_runs(tmp_path)["runs"]
    assert row["state"] == "interrupted"


def test_bad_dir_is_one_line_and_exit_2(tmp_path):
    for bad, why in [(tmp_path / "nope", "does not exist"), (tmp_path / "f.txt", "is not a directory")]:
        if bad.name == "f.txt":
            bad.write_text("x")
        r = _invoke(str(bad))
        assert r.exit_code == 2
        assert r.output.count("\n") == 1 and r.output.startswith("memtrain: error: DIR: ") and why in r.output
        assert "Traceback" not in r.output


def test_empty_dir_says_so(tmp_path):
    r = _invoke(str(tmp_path))
    assert r.exit_code == 0 and r.output.strip() == f"no runs under {tmp_path}"


def test_older_runs_are_listed_from_model_final(legacy, tmp_path):
    (tmp_path / "half" / "checkpoints").mkdir(parents=True)  # an older run that never finished
    rep = rs.list_runs(legacy.parent)
    (row,) = rep["runs"]
    assert row["source"] == "model-final.json" and row["name"] == "old-job" and row["state"] == "finished"
    assert row["epochs"] == 1 and 0 < row["test_accuracy"] <= 1 and row["ended"].endswith("Z")
    assert "older memtrain" in rs.table_text(rep)
    r = _invoke(str(tmp_path))
    assert r.exit_code == 0 and "note: skipped" in r.output and "half" in r.output


def test_garbled_history_lines_are_skipped_with_a_note(runs_dir):
    before = {x["run"]: x for x in rs.list_runs(runs_dir)["runs"]}
    with open(runs_dir / "alpha" / "history.jsonl", "ab") as f:
        f.write(b"garbage\n{}\n")
    rep = rs.list_runs(runs_dir)
    assert {x["run"]: x for x in rep["runs"]} == before  # the run is still listed, its good epochs kept
    assert len(rep["notes"]) == 1 and "alpha" in rep["notes"][0] and "skipped 2 line(s)" in rep["notes"][0]


def test_plot_draws_every_run_with_a_history(runs_dir, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib missing: pip install 'memtrain[plot]'")
    out = tmp_path / "curves.png"
    r = _invoke(str(runs_dir), "--plot", str(out))
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and os.path.getsize(out) > 10_000
    assert "(3 runs)" in r.output
    r = _invoke(str(runs_dir), "--plot", str(tmp_path / "f.txt" / "x.png"))
    assert r.exit_code == 2 and "memtrain: error: plot: cannot write" in r.output


def test_plot_without_matplotlib_is_one_line(runs_dir, tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None; from memtrain.cli import main; "
            f"main(['runs', {str(runs_dir)!r}, '--plot', {str(tmp_path / 'x.png')!r}])")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines() == [
        "memtrain: error: plot: matplotlib is not installed; pip install 'memtrain[plot]' (or matplotlib), "
        "or leave out --plot"]
    assert not (tmp_path / "x.png").exists()
