"""`memtrain compare`: optimizers side by side, ranked on validation, never on test."""

import json
import sys
import time

import pytest
from click.testing import CliRunner

# the real group (click caches each command's help option from the first context that
# builds it: a private group without -h made docs/cli.md's `-h, --help` depend on the test order)
from memtrain.cli import main
from memtrain.config import from_dict
from memtrain.select import compare as cmp

JOB = """
name = "cmp"
seed = 0
device = "cpu"
[model]
layers = [64, 32, 10]
[optimizer]
name = "adam"
lr = 0.003
beta1 = 0.8
[training]
batch_size = 32
epochs = 3
[data]
dataset = "digits"
"""


@pytest.fixture
def job(tmp_path):
    p = tmp_path / "job.toml"
    p.write_text(JOB)
    return p


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_compare_three_optimizers_on_digits_ranks_by_validation_loss(job, tmp_path):
    t0 = time.perf_counter()
    r = invoke("compare", "--config", job, "--optimizers", "adam,sgd,momentum", "--target-accuracy", "0.8",
               "--output-dir", tmp_path / "out", "--format", "json")
    elapsed = time.perf_counter() - t0
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    rows = rep["rows"]
    assert elapsed < 60
    assert sorted(x["optimizer"] for x in rows) == ["adam", "momentum", "sgd"]
    assert [x["rank"] for x in rows] == [1, 2, 3]
    best = [x["best_val_loss"] for x in rows]
    assert best == sorted(best)  # ranked by the best validation loss
    for x in rows:
        losses = [h["val_loss"] for h in x["history"]]
        assert x["best_val_loss"] == min(losses)
        assert x["final_val_loss"] == losses[-1]
        assert 0 <= x["test_accuracy"] <= 1  # reported
        assert x["epochs"] == 3 and len(x["history"]) == 3
        reached = [h["epoch"] for h in x["history"] if h["val_accuracy"] >= 0.8]
        assert x["epochs_to_target"] == (reached[0] if reached else "-")
        assert x["planned_bytes"] == sum(x["planned_by_category"].values())
        # fused (the default): a run of the array has no peak of its own (--no-fuse measures one)
        assert x["measured_peak_bytes"] is None and x["samples_per_second"] > 0
        assert (tmp_path / "out" / "compare" / x["optimizer"] / "model-final.npz").exists()
    by = {x["optimizer"]: x for x in rows}
    # the plan counts each optimizer's declared state: SGD none, momentum one copy, Adam two
    p = by["sgd"]["planned_by_category"]["parameters"]
    assert by["sgd"]["planned_by_category"]["optimizer_state"] == 0
    assert by["momentum"]["planned_by_category"]["optimizer_state"] == p
    assert by["adam"]["planned_by_category"]["optimizer_state"] >= 2 * p


def test_each_run_is_the_job_with_only_the_optimizer_changed(job, tmp_path):
    cfg = from_dict({"name": "x", "model": {"layers": [64, 10]}, "optimizer": {"name": "adam", "lr": 0.1, "beta1": 0.5},
                     "metrics": {"port": 9464}, "checkpoint": {"resume": True, "keep": 2}, "seed": 7})
    c = cmp.run_config(cfg, "sgd", output_dir=tmp_path, checkpoint_dir=tmp_path / "ck")
    d = c.to_dict()
    assert d["optimizer"] == {"name": "sgd"}  # the file's hyper-parameters were Adam's
    assert c.metrics.port is None and c.checkpoint.resume is False and c.checkpoint.every_steps == 0
    assert c.output.dir == str(tmp_path / "compare" / "sgd") and c.seed == 7
    c4 = cmp.run_config(cfg, "lookahead:adam", lr=0.01, epochs=4, output_dir=tmp_path, checkpoint_dir=tmp_path)
    assert c4.to_dict()["optimizer"] == {"name": "lookahead:adam", "lr": 0.01} and c4.training.epochs == 4
    assert cfg.to_dict()["optimizer"] == {"name": "adam", "lr": 0.1, "beta1": 0.5}  # the original is untouched


def test_formats_and_plot_with_a_fake_runner(job, tmp_path, monkeypatch):
    losses = {"adam": [1.0, 0.5, 0.7], "sgd": [2.0, 1.5, 1.2], "rmsprop": [float("nan")] * 3}

    def runner(cfg):
        name = cfg.optimizer.name
        hist = [{"epoch": i + 1, "train_loss": 1.0, "val_loss": v, "val_accuracy": 0.5 + 0.2 * i, "lr": 0.1,
                 "seconds": 0.1} for i, v in enumerate(losses[name])]
        return ({"history": hist, "val_loss": hist[-1]["val_loss"], "val_accuracy": 0.9, "test_accuracy": 0.99,
                 "test_loss": 0.1, "epochs": 3, "seconds": 0.5, "batch_size": 32, "planned_bytes": 30,
                 "planned_by_category": {"parameters": 10, "gradients": 10, "optimizer_state": 10},
                 "measured_peak_bytes": 40}, 100)

    cfg = from_dict({"name": "x", "model": {"layers": [64, 10]}})
    rep = cmp.compare(cfg, ["sgd", "rmsprop", "adam"], output_dir=tmp_path, target_accuracy=0.85, runner=runner)
    assert [r["optimizer"] for r in rep["rows"]] == ["adam", "sgd", "rmsprop"]  # diverged last
    adam = rep["rows"][0]
    assert (adam["best_val_loss"], adam["best_loss_epoch"], adam["epochs_to_target"]) == (0.5, 2, 3)
    assert adam["samples_per_second"] == pytest.approx(300 / 0.3)
    text = cmp.table_text(rep)
    assert "ep to 0.85" in text and "never used to choose" in text
    assert max(map(len, text.splitlines())) <= 120  # the categories are in --format json / csv
    assert cmp.table_csv(rep).splitlines()[1].startswith("1,adam,0.5,2,")
    assert json.loads(cmp.table_json(rep))["rows"][2]["best_val_loss"] is None
    pytest.importorskip("matplotlib")
    from memtrain.select.plots import compare_plot

    compare_plot(rep, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_one_line(job, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    r = invoke("compare", "--config", job, "--optimizers", "adam", "--plot", "x.png")
    assert r.exit_code == 2
    assert r.output.strip().count("\n") == 0 and "matplotlib is not installed" in r.output


@pytest.mark.parametrize("args, field", [
    (["--optimizers", "adam,nope"], "optimizers: unknown 'nope'"),
    (["--optimizers", "adam,adam"], "given more than once"),
    (["--optimizers", ","], "optimizers:"),
])
def test_bad_input_is_one_line_exit_2(job, args, field):
    r = invoke("compare", "--config", job, *args)
    assert r.exit_code == 2, r.output
    assert r.output.startswith("memtrain: error: ") and field in r.output


def test_help():
    r = invoke("compare", "--help")
    assert r.exit_code == 0 and "--target-accuracy" in r.output and "never used to rank" in r.output
    assert "--fuse / --no-fuse" in r.output


def test_a_compare_that_cannot_fit_says_so_before_any_run(job, tmp_path, monkeypatch):
    """The runs are planned as the sweep's trials are (plan_job, the process overhead taken from
    memory_limit): one that cannot fit is one line, exit 2, before anything trains."""
    monkeypatch.setenv("MEMTRAIN_PROCESS_OVERHEAD", str(30 * 1024**2))
    job.write_text(JOB.replace("epochs = 3", 'epochs = 3\nmemory_limit = "30.25MiB"'))
    r = invoke("compare", "--config", job, "--optimizers", "sgd,adam", "--output-dir", tmp_path / "out")
    assert r.exit_code == 2, r.output
    assert r.output.startswith("memtrain: error: optimizer sgd: needs ") and r.output.count("\n") == 1
    assert "plus 30.00 MiB overhead; the budget is 30.25 MiB (training.memory_limit); nothing was run" in r.output
    assert not (tmp_path / "out").exists()


def _sgd_and_adam(job, tmp_path, monkeypatch):
    """The job file with a 64 MiB limit and a 1 MiB process overhead: its config, the sgd and adam
    runs' configs, and its data rows."""
    from memtrain.config import load
    from memtrain.train import jobplan

    monkeypatch.setenv("MEMTRAIN_PROCESS_OVERHEAD", str(1024**2))
    job.write_text(JOB.replace("epochs = 3", 'epochs = 3\nmemory_limit = "64MiB"'))
    cfg = load(job)
    configs = {n: cmp.run_config(cfg, n, output_dir=tmp_path, checkpoint_dir=tmp_path / n) for n in ("sgd", "adam")}
    return cfg, configs, jobplan.data_rows(cfg)


def test_the_scheduler_gets_each_runs_plan(job, tmp_path, monkeypatch):
    from memtrain.train import jobplan

    cfg, configs, rows = _sgd_and_adam(job, tmp_path, monkeypatch)
    dev, tasks = cmp.plan_runs(cfg, configs, rows)
    assert (dev.budget_bytes, dev.overhead_bytes, dev.max_jobs) == (64 * 1024**2, 1024**2, 1)
    for t in tasks:
        jp = jobplan.plan_job(configs[t.id], budget=64 * 1024**2, overhead=(1024**2, "given"))
        assert (t.planned_bytes, t.planned) == (jp.total, jp.by_category())  # the scheduler packs by plan
    assert tasks[1].planned_bytes > tasks[0].planned_bytes  # adam's two state slots
    auto = {n: c.with_overrides({"training.batch_size": "auto"}) for n, c in configs.items()}
    _, tasks = cmp.plan_runs(cfg, auto, rows)
    assert {t.planned_bytes for t in tasks} == {63 * 1024**2}  # an auto run reserves its whole room


FUSED_JOB = """
name = "cmpfuse"
seed = 3
device = "cpu"
[model]
layers = [64, 16, 10]
dtype = "float64"
[optimizer]
name = "adam"
[schedule]
name = "cosine"
warmup = 5
[training]
batch_size = 64
epochs = 2
[data]
dataset = "digits"
"""


def test_compare_fuses_by_default_and_every_run_ends_as_with_no_fuse(tmp_path):
    """Default: the optimizers train as one trial array (one task, the array's plan in its log line);
    --no-fuse: one job each. Models bit-identical (float64, a schedule, optimizers with 0, 1 and 2
    slots and a wrapper), the report the same apart from timing and the per-run peak."""
    import numpy as np

    job = tmp_path / "job.toml"
    job.write_text(FUSED_JOB)
    names = "adam,sgd,rmsprop,lookahead:momentum"
    fused = invoke("compare", "--config", job, "--optimizers", names, "--output-dir", tmp_path / "f")
    assert fused.exit_code == 0, fused.output
    line = next(x for x in fused.output.splitlines() if x.startswith("array "))
    assert "4 optimizers trained as one array (--no-fuse: one job each): plan " in line
    assert "process overhead once" in line and line.endswith("adam sgd rmsprop lookahead:momentum")
    assert fused.output.count("training  ") == 1  # one task for the four runs
    reports = {}
    for flag, out in (("--fuse", "f"), ("--no-fuse", "n")):
        r = invoke("compare", "--config", job, "--optimizers", names, "--output-dir", tmp_path / out,
                   "--format", "json", flag)
        assert r.exit_code == 0, r.output
        reports[flag] = json.loads(r.output)["rows"]
    for d in ("adam", "sgd", "rmsprop", "lookahead-momentum"):
        with np.load(tmp_path / "f" / "compare" / d / "model-final.npz") as a, \
                np.load(tmp_path / "n" / "compare" / d / "model-final.npz") as b:
            assert sorted(a.files) == sorted(b.files) and a["params"].dtype == np.float64
            for k in a.files:
                assert np.array_equal(a[k], b[k]), (d, k)
        assert sorted(p.name for p in (tmp_path / "f" / "compare" / d).iterdir()) == sorted(
            p.name for p in (tmp_path / "n" / "compare" / d).iterdir())
    timing = {"seconds", "train_seconds", "samples_per_second", "measured_peak_bytes", "history"}
    for f, n in zip(reports["--fuse"], reports["--no-fuse"], strict=True):
        assert {k: v for k, v in f.items() if k not in timing} == {k: v for k, v in n.items() if k not in timing}
        assert [{k: v for k, v in h.items() if k != "seconds"} for h in f["history"]] == [
            {k: v for k, v in h.items() if k != "seconds"} for h in n["history"]]
        assert f["measured_peak_bytes"] is None and n["measured_peak_bytes"] > 0


def test_a_fused_compare_plans_one_task_with_the_arrays_plan(job, tmp_path, monkeypatch):
    from memtrain.memory.trials import array_plan
    from memtrain.select.fuse import ArrayConfig
    from memtrain.train import jobplan

    cfg, configs, rows = _sgd_and_adam(job, tmp_path, monkeypatch)
    _, tasks = cmp.plan_runs(cfg, configs, rows, fuse=True, scratch=tmp_path)
    assert len(tasks) == 1 and isinstance(tasks[0].cfg, ArrayConfig)
    plans = [jobplan.plan_job(c, budget=64 * 1024**2, overhead=(1024**2, "given")).plan for c in configs.values()]
    assert tasks[0].planned_bytes == array_plan(plans).total < sum(p.total for p in plans)  # the data set once
    # an array that would not fit beside one process overhead runs its optimizers one by one
    monkeypatch.setenv("MEMTRAIN_PROCESS_OVERHEAD", str(64 * 1024**2 - array_plan(plans).total + 1))
    _, tasks = cmp.plan_runs(cfg, configs, rows, fuse=True, scratch=tmp_path)
    assert [t.id for t in tasks] == ["sgd", "adam"]


# a lone run's 2-D matmul warns on overflow (the trainer's guard handles it)
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("flag", ["--fuse", "--no-fuse"])
def test_a_run_that_fails_is_a_row_with_its_reason_not_the_end_of_the_compare(job, tmp_path, flag):
    r = invoke("compare", "--config", job, "--optimizers", "sgd,adam", "--lr", "1e12", "--epochs", "1",
               "--output-dir", tmp_path / "out", "--format", "json", flag)
    assert r.exit_code == 0, r.output
    rows = {x["optimizer"]: x for x in json.loads(r.output)["rows"]}
    assert rows["sgd"]["failed"].startswith("training: 10 non-finite steps in a row")
    assert rows["sgd"]["best_val_loss"] is None and rows["sgd"]["rank"] == 2  # no finite loss: last
    assert rows["adam"]["failed"] is None and rows["adam"]["epochs"] == 1
    assert json.loads((tmp_path / "out" / "compare" / "sgd" / "run.json").read_text())["state"] == "failed"
    text = cmp.table_text(json.loads(r.output))
    assert text.splitlines()[-1].startswith("failed    sgd: training: 10 non-finite steps")
