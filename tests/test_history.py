import csv
import json
import math

import numpy as np
import pytest

from memtrain.nn.mlp import MLP
from memtrain.train import history as hist
from memtrain.train.history import EPOCH_FIELDS, HistoryError, RunHistory
from memtrain.train.trainer import Trainer


def _csv_rows(d):
    return list(csv.DictReader((d / "history.csv").read_text().splitlines()))


def _rec(epoch, val_loss=None, **kw):
    r = {"epoch": epoch, "train_loss": 1.0 / epoch, "lr": 0.01, "seconds": 0.5}
    if val_loss is not None:
        r.update(val_loss=val_loss, val_accuracy=0.5 + epoch / 100)
    return {**r, **kw}


def test_append_read_roundtrip_and_run_json(tmp_path):
    h = RunHistory(tmp_path / "r1")
    assert h.start({"name": "r1", "device": "cpu", "dataset": "digits", "epochs_planned": 3}) == []
    written = [h.append(_rec(e, 2.0 - e / 10), steps=10 * e, samples_per_second=1e4, planned_bytes=4096)
               for e in (1, 2, 3)]
    got = h.read()
    assert [r["epoch"] for r in got] == [1, 2, 3]
    assert got[1]["steps"] == 20 and got[1]["planned_bytes"] == 4096 and got[1]["val_loss"] == pytest.approx(1.8)
    assert "measured_peak_bytes" not in got[0]  # None fields are left out, as the trainer leaves them out
    assert written[0]["time"] > 1.7e9
    info = h.info()
    assert info["state"] == "running" and info["name"] == "r1" and info["started"].endswith("Z")
    assert info["ended"] is None and info["pid"] > 0


def test_start_and_finish_make_their_renames_durable_with_one_directory_fsync(tmp_path, monkeypatch):
    """start() rewrites history.jsonl, history.csv and run.json, finish() run.json and history.csv:
    one directory fsync each, after the last rename, makes every rename durable (two and one fewer
    than a sync per file: part of a small job's fixed cost, issue 22)."""
    from memtrain.train import checkpoint as ckpt

    real, synced = ckpt._fsync_dir, []

    def fsync_dir(directory):
        synced.append(sorted(p.name for p in directory.iterdir() if not p.name.startswith(".")))
        real(directory)

    monkeypatch.setattr(ckpt, "_fsync_dir", fsync_dir)
    h = RunHistory(tmp_path / "r")
    h.start({"name": "r", "device": "cpu"})
    assert synced == [["history.csv", "history.jsonl", "run.json"]]
    h.append(_rec(1, 1.5), durable=False)
    h.finish("finished")
    assert len(synced) == 2 and h.info()["state"] == "finished" and len(_csv_rows(tmp_path / "r")) == 1
    assert h.read()[0]["val_loss"] == 1.5


def test_finish_records_best_state_and_csv(tmp_path):
    h = RunHistory(tmp_path)
    h.start({"name": "job", "planned_bytes": 1000})
    for e, v in [(1, 0.9), (2, 0.4), (3, 0.6)]:
        h.append(_rec(e, v), steps=e * 5)
    run = h.finish("finished", {"test_accuracy": 0.93, "history": ["ignored"], "model": "x.npz", "state": "bogus"})
    assert run["state"] == "finished" and run["ended"] is not None
    assert (run["best_epoch"], run["best_val_loss"], run["best_val_accuracy"]) == (2, 0.4, 0.52)
    assert run["test_accuracy"] == 0.93 and run["epochs"] == 3 and run["steps"] == 15
    assert json.loads((tmp_path / "run.json").read_text()) == run
    rows = _csv_rows(tmp_path)
    assert list(rows[0]) == list(EPOCH_FIELDS)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and rows[2]["val_loss"] == "0.6"
    assert rows[0]["measured_peak_bytes"] == ""
    with pytest.raises(ValueError, match="state: expected one of finished, stopped, failed"):
        h.finish("running")


def test_torn_last_line_is_ignored(tmp_path):
    h = RunHistory(tmp_path)
    h.start({"name": "t"})
    h.append(_rec(1, 0.5))
    h.append(_rec(2, 0.4))
    with open(tmp_path / "history.jsonl", "ab") as f:  # a kill in the middle of the third write
        f.write(b'{"epoch":3,"train_loss":0.3')
    assert [r["epoch"] for r in h.read()] == [1, 2]
    with open(tmp_path / "history.jsonl", "ab") as f:  # complete JSON but no newline: never finished either
        f.write(b'}')
    assert [r["epoch"] for r in h.read()] == [1, 2]


def test_garbled_lines_are_skipped_with_one_warning(tmp_path):
    warnings = []
    h = RunHistory(tmp_path, warn=warnings.append)
    h.start({"name": "t"})
    h.append(_rec(1))
    with open(tmp_path / "history.jsonl", "ab") as f:
        f.write(b"garbage\n\xff\xfe{\n[1, 2]\n{\"epoch\": true}\n")
    h.append(_rec(2))
    assert [r["epoch"] for r in h.read()] == [1, 2]
    assert len(warnings) == 1 and "history.jsonl: skipped 4 line(s)" in warnings[0] and "line 2, 3, 4, 5" in warnings[0]


def test_resume_drops_epochs_after_the_checkpoint_and_the_torn_line(tmp_path):
    h = RunHistory(tmp_path)
    h.start({"name": "t", "config_hash": "abc"})
    started = h.info()["started"]
    for e in range(1, 6):
        h.append(_rec(e, 1.0 / e))
    with open(tmp_path / "history.jsonl", "ab") as f:
        f.write(b'{"epoch":6,"tr')
    # the last checkpoint was at epoch 3: epochs 4, 5 and the torn 6 are retrained
    kept = RunHistory(tmp_path).start({"name": "t", "config_hash": "abc"}, resume_from=3)
    assert [r["epoch"] for r in kept] == [1, 2, 3]
    assert (tmp_path / "history.jsonl").read_bytes().endswith(b"\n")
    assert [r["epoch"] for r in h.read()] == [1, 2, 3]
    assert [r["epoch"] for r in _csv_rows(tmp_path)] == ["1", "2", "3"]
    info = h.info()
    assert info["resumes"] == 1 and info["started"] == started and info["resumed"] is not None
    h.append(_rec(4, 0.1))
    assert [r["epoch"] for r in h.read()] == [1, 2, 3, 4]
    assert hist.trainer_history(kept) == [{k: v for k, v in r.items() if k != "time"} for r in kept]


def test_truncate_and_read_upto(tmp_path):
    h = RunHistory(tmp_path)
    h.start({"name": "t"})
    for e in range(1, 5):
        h.append(_rec(e))
    assert [r["epoch"] for r in h.read(upto_epoch=2)] == [1, 2]
    assert [r["epoch"] for r in h.truncate(1)] == [1]
    assert [r["epoch"] for r in h.read()] == [1]
    assert h.truncate(0) == [] and (tmp_path / "history.jsonl").read_bytes() == b""
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="epoch: expected an integer >= 0"):
            h.truncate(bad)


def test_fresh_start_empties_the_history(tmp_path):
    h = RunHistory(tmp_path)
    h.start({"name": "t"})
    h.append(_rec(1))
    h.finish("stopped", message="SIGTERM")
    assert h.info()["message"] == "SIGTERM"
    assert h.start({"name": "t"}) == [] and h.read() == []
    assert h.info()["state"] == "running" and h.info()["message"] is None and h.info()["resumes"] == 0


def test_resume_of_an_older_run_seeds_from_the_checkpoint_history(tmp_path):
    h = RunHistory(tmp_path)  # no history.jsonl: the checkpoint sidecar carried the history
    kept = h.start({"name": "t"}, resume_from=2, fallback=[_rec(1), _rec(2), _rec(3)])
    assert [r["epoch"] for r in kept] == [1, 2] and [r["epoch"] for r in h.read()] == [1, 2]


def test_unknown_fields_are_bugs_not_silent(tmp_path):
    h = RunHistory(tmp_path)
    with pytest.raises(TypeError, match="not RunInfo fields: colour"):
        h.start({"name": "t", "colour": 1})
    h.start({"name": "t"})
    with pytest.raises(TypeError, match="not EpochRecord fields: val_los"):
        h.append(_rec(1), val_los=1.0)
    h.update(planned_bytes=123)
    assert h.info()["planned_bytes"] == 123


def test_nonfinite_and_numpy_values_are_valid_json(tmp_path):
    h = RunHistory(tmp_path)
    h.start({"name": "t"})
    h.append({"epoch": 1, "train_loss": float("nan"), "lr": np.float32(0.5), "val_loss": np.float64(math.inf)})
    line = (tmp_path / "history.jsonl").read_text()
    assert "NaN" not in line and "Infinity" not in line
    assert h.read()[0] == {"epoch": 1, "lr": 0.5, "time": h.read()[0]["time"]}


def test_damaged_run_json(tmp_path):
    (tmp_path / "run.json").write_text("[1, 2")
    h = RunHistory(tmp_path)
    with pytest.raises(HistoryError, match="run.json: not valid JSON"):
        h.info()
    h.start({"name": "t"}, resume_from=0)  # a writer replaces it rather than stop training
    assert h.info()["state"] == "running"


def test_trainer_records_fit_the_layout():
    """The trainer's epoch record and EpochRecord name the same fields (conventions #15)."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 4)).astype(np.float32), rng.integers(0, 3, 40)
    tr = Trainer(MLP([4, 8, 3], seed=0), "sgd", batch_size=8, patience=3)
    records = tr.fit(X, y, epochs=2, validation=(X[:10], y[:10]))
    regression = {"val_rmse", "val_mae", "val_r2"}  # a linear output's scores, in its records only
    assert set(records[0]) == set(hist.TRAINER_FIELDS) - regression
    assert hist.trainer_history(records) == records
    t = rng.standard_normal((40, 2)).astype(np.float32)
    reg = Trainer(MLP([4, 8, 2], output="linear", seed=0), "sgd", batch_size=8)
    records = reg.fit(X, t, epochs=1, validation=(X[:10], t[:10]))
    assert set(records[0]) == set(hist.TRAINER_FIELDS) and records[0]["val_accuracy"] is None
    assert hist.trainer_history(records) == records


def test_a_failed_append_leaves_no_partial_line(tmp_path):
    """A full disk (here: RLIMIT_FSIZE, a real short write) mid-line: the error reaches the job and the
    file keeps whole lines only, so the next append is not glued to a fragment."""
    import subprocess
    import sys

    code = f"""
import resource, signal, os
from memtrain.train.history import RunHistory
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
h = RunHistory({str(tmp_path)!r})
h.start({{"name": "t"}})
h.append({{"epoch": 1, "train_loss": 0.5}})
size = os.path.getsize(h.jsonl)
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 20, resource.RLIM_INFINITY))
try:
    h.append({{"epoch": 2, "train_loss": 0.25}})
except OSError as exc:
    print("failed", exc.errno)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
h.append({{"epoch": 2, "train_loss": 0.25}})
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("failed")
    assert [r["epoch"] for r in RunHistory(tmp_path).read()] == [1, 2]


def test_config_hash_is_stable_and_sensitive():
    a = hist.config_hash({"model": {"layers": [64, 10]}, "seed": 0})
    assert a == hist.config_hash({"seed": 0, "model": {"layers": [64, 10]}}) and len(a) == 12
    assert a != hist.config_hash({"model": {"layers": [64, 11]}, "seed": 0})
