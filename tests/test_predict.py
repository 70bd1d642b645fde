"""`memtrain evaluate` and `memtrain predict` on a model a job saved."""

import csv
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from memtrain.cli import main
from memtrain.config import from_dict
from memtrain.train.job import run

JOB = {
    "name": "p", "seed": 1, "device": "cpu",
    "model": {"layers": [64, 32, 10]},
    "optimizer": {"name": "adam", "lr": 0.01},
    "training": {"batch_size": 64, "epochs": 8},
    "data": {"dataset": "digits", "validation": 0.2, "test": 0.2, "standardize": True},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("job")
    cfg = from_dict({**JOB, "output": {"dir": str(out)}})
    with open(os.devnull, "w") as devnull:
        summary = run(cfg, progress=False, stream=devnull, install_signals=False)
    return out, summary


def test_evaluate_on_the_jobs_test_split_reproduces_the_job(trained):
    out, summary = trained
    res = CliRunner().invoke(main, ["evaluate", str(out / "model-final.npz"), "--dataset", "digits", "--split", "test",
                                    "--format", "json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert r["rows"] == 359
    assert r["accuracy"] == pytest.approx(summary["test_accuracy"])
    assert r["loss"] == pytest.approx(summary["test_loss"], rel=1e-6)


def test_evaluate_on_every_row_applies_the_jobs_standardisation_and_says_it_includes_training_rows(trained):
    out, summary = trained
    res = CliRunner().invoke(main, ["evaluate", str(out / "model-final.npz"), "--dataset", "digits", "--split", "all"])
    assert res.exit_code == 0, res.output
    # 1,797 digits, 359 of them the job's test rows: the other 1,438 it trained or validated on
    assert res.output.startswith("scored 1,797 rows of digits, every row: 1,438 of them are the job's training "
                                 "and validation rows, so this is not a held-out score: loss "), res.output
    acc = float(res.output.rsplit("accuracy", 1)[1])
    assert acc > 0.9  # mostly training rows, standardised as in training


@pytest.mark.parametrize("args", [[], ["--dataset", "digits"]])
def test_evaluate_defaults_to_the_jobs_test_split_and_says_so(trained, args):
    """Without --split (and even without --dataset: the model records its job's data), the
    score is over the held-out rows the job itself reported, never silently over training rows."""
    out, summary = trained
    res = CliRunner().invoke(main, ["evaluate", str(out / "model-final.npz"), *args])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("scored 359 test rows of digits (held out: the job never trained on them): loss ")
    assert float(res.output.rsplit("accuracy", 1)[1]) == pytest.approx(summary["test_accuracy"], abs=1e-4)
    r = json.loads(CliRunner().invoke(main, ["evaluate", str(out / "model-final.npz"), *args, "--format",
                                             "json"]).output)
    assert (r["split"], r["rows"], r["seen_rows"], r["job_data"]) == ("test", 359, 0, True)


def test_evaluate_on_another_data_set_scores_every_row_and_says_it_is_not_the_jobs(trained, tmp_path):
    from sklearn.datasets import load_digits

    out, _ = trained
    d = load_digits()
    np.savez(tmp_path / "other.npz", X=d.data[:100], y=d.target[:100])
    res = CliRunner().invoke(main, ["evaluate", str(out / "model-final.npz"), "--dataset", str(tmp_path / "other.npz")])
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"scored 100 rows of {tmp_path / 'other.npz'}, every row (not the data set the job "
                                 "trained on): loss ")


def test_evaluate_names_both_feature_counts(trained, tmp_path):
    out, _ = trained
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "x7.npz", X=rng.random((30, 7)), y=rng.integers(0, 10, 30))
    res = CliRunner().invoke(main, ["evaluate", str(out / "model-final.npz"), "--dataset", str(tmp_path / "x7.npz")])
    assert res.exit_code == 2
    assert res.stderr == (f"memtrain: error: --dataset {tmp_path / 'x7.npz'}: 7 features per row, but the model "
                          "takes 64 (its first layer); expected rows like the ones it was trained on\n")


def test_predict_writes_classes_and_probabilities(trained, tmp_path):
    from sklearn.datasets import load_digits

    out, _ = trained
    d = load_digits()
    np.savez(tmp_path / "new.npz", X=d.data[:50])  # raw pixels 0..16: predict applies /16 and the standardisation
    res = CliRunner().invoke(main, ["predict", str(out / "model-final.npz"), "--input", str(tmp_path / "new.npz"),
                                    "--out", str(tmp_path / "pred.csv")])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "pred.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["prediction"] + [f"p_{k}" for k in range(10)]
    preds = np.array([int(r[0]) for r in rows[1:]])
    assert (preds == d.target[:50]).mean() > 0.9
    probs = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-4)


@pytest.mark.parametrize("args,message", [
    (["evaluate", "missing.npz", "--dataset", "digits"], "model: missing.npz not found"),
    (["predict", "MODEL", "--input", "nope.npz", "--out", "x.csv"], "--input nope.npz: file not found"),
    (["predict", "MODEL", "--input", "BAD", "--out", "x.csv"], "bad.npz: 5 features per row, but the model takes 64"),
    (["predict", "MODEL", "--input", "GOOD", "--out", "x.txt"], "--out: expected a .csv or .npy"),
    (["predict", "MODEL", "--input", "GOOD", "--out", "afile/p.csv"], "--out: cannot write afile/p.csv: afile is a "
                                                                        "file, not a directory"),
    (["predict", "MODEL", "--input", "GOOD", "--out", "nodir/p.csv"], "--out: cannot write nodir/p.csv: directory "
                                                                        "nodir does not exist"),
    (["predict", "MODEL", "--input", "GOOD", "--out", "/proc/p.csv"], "--out: cannot write /proc/p.csv: /proc does "
                                                                        "not allow new files"),
    (["predict", "MODEL", "--input", "CSV", "--out", "CSV"], "is the --input file"),
    (["predict", "MODEL", "--input", "CSV", "--label-column", "y", "--out", "p.csv"], "--label-column: 'y' not found"),
])
def test_bad_input(trained, tmp_path, monkeypatch, args, message):
    out, _ = trained
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "bad.npz", X=np.zeros((3, 5)))
    np.savez(tmp_path / "good.npz", X=np.zeros((3, 64)))
    (tmp_path / "afile").write_text("a file\n")
    (tmp_path / "new.csv").write_text(",".join(f"f{i}" for i in range(64)) + "\n" + ",".join(["0"] * 64) + "\n")
    sub = {"MODEL": str(out / "model-final.npz"), "BAD": str(tmp_path / "bad.npz"), "GOOD": str(tmp_path / "good.npz"),
           "CSV": "new.csv"}
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir())
    res = CliRunner().invoke(main, [sub.get(a, a) for a in args], catch_exceptions=False)
    assert res.exit_code == 2 and message in res.stderr, res.output
    assert len(res.stderr.splitlines()) == 1 and res.stdout == ""
    assert sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir()) == before  # nothing written


def test_predict_replaces_the_out_file_only_when_complete(trained, tmp_path, monkeypatch):
    """A failed predict leaves an existing --out file as it was; a good one replaces it whole,
    with the permissions of a new file (umask) and no temporary left beside it."""
    out, _ = trained
    monkeypatch.chdir(tmp_path)
    np.savez("good.npz", X=np.zeros((3, 64)))
    np.savez("nan.npz", X=np.full((3, 64), np.nan))
    (tmp_path / "p.csv").write_text("old\n")
    model = str(out / "model-final.npz")
    res = CliRunner().invoke(main, ["predict", model, "--input", "nan.npz", "--out", "p.csv"])
    assert res.exit_code == 2 and "--input nan.npz: X: 192 NaN and 0 Inf values" in res.stderr, res.output
    assert (tmp_path / "p.csv").read_text() == "old\n"
    old_mask = os.umask(0o027)
    try:
        res = CliRunner().invoke(main, ["predict", model, "--input", "good.npz", "--out", "p.csv"])
    finally:
        os.umask(old_mask)
    assert res.exit_code == 0 and res.output == "wrote 3 predictions to p.csv\n"
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 4
    assert (tmp_path / "p.csv").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.npz", "nan.npz", "p.csv"]


def test_a_full_disk_while_writing_predictions_is_one_line_exit_1_and_nothing_written(trained, tmp_path, monkeypatch):
    """The write itself fails (ENOSPC, simulated at the one write call): nothing half-written appears."""
    import errno

    from memtrain.train import predict as pr

    out, _ = trained
    monkeypatch.chdir(tmp_path)
    np.savez("good.npz", X=np.zeros((3, 64)))

    def full(f, pred, kind):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pr, "_write_csv", full)
    res = CliRunner().invoke(main, ["predict", str(out / "model-final.npz"), "--input", "good.npz", "--out", "p.csv"])
    assert res.exit_code == 1, res.output
    assert res.stderr == "memtrain: error: --out: writing p.csv failed (No space left on device); nothing was written\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.npz"]


def test_a_tampered_model_is_refused(trained, tmp_path):
    out, _ = trained
    import shutil

    for suffix in (".npz", ".json"):
        shutil.copy(out / f"model-final{suffix}", tmp_path / f"m{suffix}")
    with np.load(tmp_path / "m.npz") as z:
        params = z["params"] + 1
    np.savez(tmp_path / "m.npz", params=params)
    res = CliRunner().invoke(main, ["evaluate", str(tmp_path / "m.npz"), "--dataset", "digits"])
    assert res.exit_code == 2 and "does not match the checksum" in res.output


def test_the_jobs_data_file_by_another_path_is_still_the_jobs(tmp_path, monkeypatch):
    """`--dataset ./d.npz` for a job trained on `d.npz`: the same file, so its test split applies."""
    from sklearn.datasets import load_digits

    d = load_digits()
    monkeypatch.chdir(tmp_path)
    np.savez("d.npz", X=d.data[:400], y=d.target[:400])
    cfg = from_dict({**JOB, "training": {"batch_size": 64, "epochs": 1}, "data": {**JOB["data"], "dataset": "d.npz"},
                     "output": {"dir": "o"}})
    with open(os.devnull, "w") as devnull:
        run(cfg, progress=False, stream=devnull, install_signals=False)
    res = CliRunner().invoke(main, ["evaluate", "o/model-final.npz", "--dataset", "./d.npz", "--format", "json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert (r["split"], r["rows"], r["job_data"]) == ("test", 80, True)
