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


def test_evaluate_on_every_row_applies_the_jobs_standardisation(trained):
    out, summary = trained
    res = CliRunner().invoke(main, ["evaluate", str(out / "model-final.npz"), "--dataset", "digits"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("1,797 rows of digits: loss ")
    acc = float(res.output.rsplit("accuracy", 1)[1])
    assert acc > 0.9  # mostly training rows, standardised as in training


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
    (["predict", "MODEL", "--input", "nope.npz", "--out", "x.csv"], "input: nope.npz not found"),
    (["predict", "MODEL", "--input", "BAD", "--out", "x.csv"], "input: expected rows of 64 features"),
    (["predict", "MODEL", "--input", "GOOD", "--out", "x.txt"], "out: expected a .csv or .npy"),
])
def test_bad_input(trained, tmp_path, args, message):
    out, _ = trained
    np.savez(tmp_path / "bad.npz", X=np.zeros((3, 5)))
    np.savez(tmp_path / "good.npz", X=np.zeros((3, 64)))
    sub = {"MODEL": str(out / "model-final.npz"), "BAD": str(tmp_path / "bad.npz"), "GOOD": str(tmp_path / "good.npz")}
    res = CliRunner().invoke(main, [sub.get(a, a) for a in args])
    assert res.exit_code == 2 and message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1


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
