"""Regression is reported as fully as classification: RMSE, MAE and R^2 (memtrain/nn/scores.py)
in train's lines, run.json, evaluate, runs, compare and sweep (issue 24)."""

import io
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from memtrain.cli import main
from memtrain.config import from_dict
from memtrain.nn.mlp import MLP
from memtrain.train.job import run

JOB = {"name": "reg", "seed": 0, "device": "cpu", "model": {"layers": [8, 16, 1], "output": "linear"},
       "optimizer": {"name": "adam", "lr": 0.01}, "training": {"batch_size": 32, "epochs": 4},
       "data": {"dataset": "synthetic:regression(400, 8, 1)", "validation": 0.2, "test": 0.2}}


@pytest.mark.parametrize("dtype,shift", [("float64", 0.0), ("float64", 1e6), ("float32", 0.0)])
def test_scores_match_scikit_learn_over_batches(dtype, shift):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 5))
    Y = np.c_[X @ rng.normal(size=5), 3 * X @ rng.normal(size=5)] + rng.normal(size=(500, 2)) + shift
    m = MLP([5, 8, 2], output="linear", dtype=dtype, seed=1)
    m.params[-2:] = shift  # the output biases near the targets: a fit R^2 can judge, far from zero
    ev = m.evaluate(X, Y, batch_size=64)  # 8 batches, the last one short
    P = m.predict(X).astype(np.float64)
    tol = 1e-9 if dtype == "float64" else 1e-5
    assert ev["rmse"] == pytest.approx(np.sqrt(mean_squared_error(Y, P)), rel=tol)
    assert ev["mae"] == pytest.approx(mean_absolute_error(Y, P), rel=tol)
    # several outputs: the variance-weighted R^2; targets 1e6 from zero keep 9 digits (summed about a shift)
    assert ev["r2"] == pytest.approx(r2_score(Y, P, multioutput="variance_weighted"), rel=tol, abs=tol)
    assert ev["accuracy"] is None
    assert ev["rmse"] == pytest.approx(np.sqrt(2 * ev["loss"] / 2), rel=tol)  # the loss is half the squared error
    assert MLP([5, 8, 3], seed=1).evaluate(X, rng.integers(0, 3, 500))["rmse"] is None  # a classifier has none


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("reg")
    log = io.StringIO()
    summary = run(from_dict({**JOB, "output": {"dir": str(out)}, "checkpoint": {"dir": str(out / "ck")}}),
                  progress=False, stream=log, install_signals=False)
    return out, summary, log.getvalue()


def test_train_prints_and_records_rmse_mae_r2(trained):
    out, s, log = trained
    assert re.search(r"epoch 4/4  loss [\d.]+  val_loss [\d.]+  val_rmse [\d.]+  val_mae [\d.]+  val_r2 [-\d.]+", log)
    assert re.search(r"^validation loss [\d.]+, RMSE [\d.]+, MAE [\d.]+, R\^2 [-\d.]+$", log, re.M), log
    assert re.search(r"^test      loss [\d.]+, RMSE [\d.]+, MAE [\d.]+, R\^2 [-\d.]+$", log, re.M), log
    assert "accuracy" not in log
    assert s["test_rmse"] == pytest.approx((2 * s["test_loss"]) ** 0.5) and 0 < s["test_r2"] < 1
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["test_rmse"] == s["test_rmse"] and run_json["best_val_r2"] is not None
    assert run_json["test_accuracy"] is None
    last = json.loads((out / "history.jsonl").read_text().splitlines()[-1])
    assert {"val_rmse", "val_mae", "val_r2"} <= set(last) and last.get("val_accuracy") is None


def test_evaluate_reports_rmse_mae_r2(trained):
    out, s, _ = trained
    r = CliRunner().invoke(main, ["evaluate", str(out / "model-final.npz")])
    assert r.exit_code == 0, r.output
    assert re.search(r"loss [\d.]+, RMSE [\d.]+, MAE [\d.]+, R\^2 [-\d.]+$", r.output.strip()), r.output
    j = json.loads(CliRunner().invoke(main, ["evaluate", str(out / "model-final.npz"), "--format", "json"]).output)
    assert j["rmse"] == pytest.approx(s["test_rmse"]) and j["r2"] == pytest.approx(s["test_r2"])


def test_runs_shows_rmse_and_carries_every_score(trained):
    out, s, _ = trained
    r = CliRunner().invoke(main, ["runs", str(out)])
    assert r.exit_code == 0 and re.search(r"RMSE [\d.]+\s+RMSE [\d.]+", r.output), r.output
    row = json.loads(CliRunner().invoke(main, ["runs", str(out), "--format", "json"]).output)["runs"][0]
    assert row["test_rmse"] == s["test_rmse"] and row["test_r2"] == s["test_r2"] and row["best_val_mae"] is not None
    header = CliRunner().invoke(main, ["runs", str(out), "--format", "csv"]).output.splitlines()[0].split(",")
    assert {"best_val_rmse", "best_val_mae", "best_val_r2", "test_rmse", "test_mae", "test_r2"} <= set(header)


def test_compare_ranks_regressions_and_shows_rmse(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(_toml(JOB))
    r = CliRunner().invoke(main, ["compare", "--config", str(job), "--optimizers", "adam,sgd", "--output-dir",
                                    str(tmp_path / "out"), "--format", "json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output[r.output.index("{"):])["rows"]
    assert all(x["test_rmse"] is not None and x["best_val_r2"] is not None and x["test_accuracy"] is None
               for x in rows)
    assert "val_rmse" in rows[0]["history"][-1]
    from memtrain.select.compare import table_text

    text = table_text({"rows": rows})
    assert re.search(r"RMSE [\d.]+/[\d.]+\s+RMSE [\d.]+ R\^2 [-\d.]+", text), text


@pytest.mark.parametrize("metric,best", [("val_rmse", min), ("val_r2", max)])
def test_a_sweep_ranks_on_a_regression_score(tmp_path, metric, best):
    base = {k: v for k, v in JOB.items() if k != "name"}
    text = _toml({"base": {"name": "s", **base}, "search": {"method": "grid", "metric": metric},
                  "space": {"lr": [0.001, 0.03]}})
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["sweep", str(_write(tmp_path, text)), "--output-dir", str(out),
                                    "--memory-limit", "64MiB", "--format", "json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output[r.output.index("{"):])
    scores = [x["score"] for x in rep["rows"]]
    assert scores == sorted(scores, reverse=best is max) and rep["metric"] == metric
    for x in rep["rows"]:
        assert x["score"] == best(h[metric] for h in x["history"])


def test_a_sweep_metric_outside_the_choices_names_them(tmp_path):
    text = _toml({"base": {"name": "s", **JOB}, "search": {"method": "grid", "metric": "val_rsme"},
                  "space": {"lr": [0.01]}})
    r = CliRunner().invoke(main, ["sweep", str(_write(tmp_path, text)), "--dry-run"])
    assert r.exit_code == 2 and "val_loss, val_accuracy, val_rmse, val_mae, val_r2" in r.output, r.output


def _write(tmp_path, text):
    p = tmp_path / "s.toml"
    p.write_text(text)
    return p


def _toml(d: dict, prefix="") -> str:
    """A job or sweep dict as TOML (tables and scalars/lists: what these tests need)."""
    flat = [f"{k} = {json.dumps(v)}" for k, v in d.items() if not isinstance(v, dict)]
    tables = [f"\n[{prefix}{k}]\n" + _toml(v, f"{prefix}{k}.") for k, v in d.items() if isinstance(v, dict)]
    return "\n".join(flat) + "".join(tables) + "\n"


def test_regression_scores_on_the_cupy_stand_in_match_the_cpu(monkeypatch, host_launcher):
    """RegressionSums on device arrays (tests/cupy_standin.py: no implicit conversion to NumPy,
    counted pool): the same RMSE, MAE and R^2 as the NumPy path, validation and evaluate."""
    import cupy_standin

    from memtrain import Trainer

    cp = cupy_standin.install(monkeypatch, host_launcher)
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((70, 6)), rng.standard_normal((70, 2)) + 5.0
    runs = []
    for device in ("cpu", "cuda"):
        tr = Trainer(MLP([6, 8, 2], output="linear", dtype="float64", seed=3, device=device), "adam", 16,
                     fused=False)
        runs.append((tr, tr.fit(X[:50], Y[:50], epochs=2, validation=(X[50:], Y[50:]))))
    (cpu, h_cpu), (gpu, h_gpu) = runs
    for k in ("val_rmse", "val_mae", "val_r2"):
        assert [r[k] for r in h_gpu] == pytest.approx([r[k] for r in h_cpu], rel=1e-9), k
    on_device = gpu.model.evaluate(cp.asarray(X[50:]), cp.asarray(Y[50:]))
    on_host = cpu.model.evaluate(X[50:], Y[50:])
    for k in ("rmse", "mae", "r2"):
        assert isinstance(on_device[k], float) and on_device[k] == pytest.approx(on_host[k], rel=1e-9), k
