"""Issue 12, the job's side: checkpoint cadence and write failures, the run history,
run directories of unnamed jobs, finished jobs, progress output, train's flags and
honest memory numbers."""

import errno
import io
import json
import os
import signal
import subprocess
import sys
import tracemalloc

import pytest
from click.testing import CliRunner
from test_job import config, job_file, train_cli

from memtrain.cli import main
from memtrain.config import JobConfig, from_dict
from memtrain.errors import ConfigError
from memtrain.train import checkpoint as ckpt
from memtrain.train.history import RunHistory
from memtrain.train.job import Job, run
from memtrain.train.joblog import ProgressBar


def _events(buf):
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def _run(cfg, **kw):
    buf = io.StringIO()
    summary = run(cfg, log_format="json", stream=buf, install_signals=False, **kw)
    return summary, _events(buf)


# -- checkpoints ---------------------------------------------------------------------------------


def test_every_steps_on_an_epoch_end_writes_that_step_once(tmp_path):
    # 27 steps per epoch and every_steps = 27: each interval lands on an epoch end; min_interval
    # (long here) does not hold back a checkpoint every_steps asks for
    cfg = config(tmp_path, checkpoint={"every_steps": 27, "keep": 10, "min_interval": 3600}, training={"epochs": 2})
    _, events = _run(cfg)
    steps = [e["step"] for e in events if e["event"] == "checkpoint"]
    assert steps == [27, 54]  # the epoch-end checkpoints, each once
    sidecar = json.loads((tmp_path / "out" / "checkpoints" / "ckpt-000000054.json").read_text())
    assert "history" not in sidecar["state"] and sidecar["history_rows"] == 2  # the history lives in the run dir


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_epoch_end_checkpoints_wait_for_min_interval_and_the_last_epoch_always_writes():
    clock = _Clock()
    c = ckpt.Cadence(0, 0, min_interval=10, clock=clock)
    due = []
    for epoch in range(1, 8):  # an epoch every 3 s: the 4th epoch is the first 10 s after the start
        clock.now += 3
        due.append(c.epoch_due(epoch * 5, last=epoch == 7))
        if due[-1]:
            c.written(epoch * 5, epoch)
    assert due == [False, False, False, True, False, False, True]  # 12 s; then the last epoch (21 s)
    assert ckpt.Cadence(0, 0, min_interval=0, clock=clock).epoch_due(1, last=False)  # 0: every epoch
    assert ckpt.Cadence(5, 0, min_interval=10, clock=clock).epoch_due(10, last=False)  # every_steps lands here


@pytest.mark.parametrize(("min_interval", "patience", "steps"), [
    (3600, None, [81]),  # within the interval: only the last epoch's end
    (0, None, [27, 54, 81]),  # 0: every epoch, as before
    (3600, 1, "early"),  # early stopping ends the run: that epoch is the last and is written
])
def test_min_interval_decides_the_epoch_end_checkpoints(tmp_path, min_interval, patience, steps):
    cfg = config(tmp_path, checkpoint={"every_steps": 0, "keep": 10, "min_interval": min_interval},
                 training={"epochs": 12 if patience else 3, "patience": patience},
                 optimizer={"name": "adam", "lr": 0.5} if patience else {"name": "adam", "lr": 0.003})
    summary, events = _run(cfg)
    written = [e["step"] for e in events if e["event"] == "checkpoint"]
    if steps == "early":
        assert summary["steps"] < 12 * 27 and written == [summary["steps"]]  # stopped early: its end is kept
        meta = json.loads(ckpt.list_checkpoints(tmp_path / "out" / "checkpoints")[0].read_text())
        assert meta["state"]["stopped_early"]
    else:
        assert written == steps
    assert len(RunHistory(tmp_path / "out").read()) == summary["epochs"]  # every epoch in the history


def test_a_full_disk_while_checkpointing_is_one_line_and_exit_1(tmp_path, monkeypatch):
    real = ckpt._write_temp

    def write_temp(path, write):
        if path.name == "ckpt-000000012.npz":  # the third checkpoint: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, write)

    monkeypatch.setattr(ckpt, "_write_temp", write_temp)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["train", str(job_file(tmp_path)), "--output-dir", str(out), "--log-format", "json"])
    assert r.exit_code == 1, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("memtrain: error:")]
    assert len(errors) == 1 and "Traceback" not in r.output
    good = ckpt.list_checkpoints(out / "checkpoints")
    assert [p.name for p in good] == ["ckpt-000000008.json", "ckpt-000000004.json"]  # nothing lost
    assert f"the last good checkpoint is {good[0]}" in errors[0] and "No space left" in errors[0]
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert RunHistory(out).info()["state"] == "failed"


# -- run history ---------------------------------------------------------------------------------


def test_history_survives_a_kill_exactly_and_runs_lists_it(tmp_path):
    # epoch-end checkpoints held back by min_interval: the newest checkpoint when the kill comes is
    # every_steps' step 60 (epoch 3, batch 7), older than the 3 epochs in the history
    job = job_file(tmp_path, **{"epochs = 3": "epochs = 4", "every_steps = 4": "every_steps = 30\nmin_interval = 3600",
                                "keep = 2": "keep = 5"})
    ref = tmp_path / "ref"
    # the reference run and the final resume in this process (train_cli); the killed run is a real process
    assert train_cli(job, "--output-dir", ref, "--log-format", "json").returncode == 0
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "memtrain.cli", "train", str(job), "--output-dir", str(run_dir),
                             "--log-format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # killed at epoch 3's end (just before or after its history line; no checkpoint)
        if json.loads(line)["event"] == "epoch" and json.loads(line)["epoch"] == 3:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    proc.stdout.close()
    proc.stderr.close()
    assert RunHistory(run_dir).info()["state"] == "running"  # what a kill leaves
    assert [r["epoch"] for r in RunHistory(run_dir).read()] in ([1, 2], [1, 2, 3])  # epoch 3's line: log first
    assert [p.name for p in ckpt.list_checkpoints(run_dir / "checkpoints")] == [
        "ckpt-000000060.json", "ckpt-000000030.json"]  # nothing lost beyond the interval
    done = train_cli(job, "--output-dir", run_dir, "--log-format", "json")
    assert done.returncode == 0, done.stderr
    resumed = [json.loads(line) for line in done.stdout.splitlines() if '"resume"' in line]
    assert [(e["step"], e["epoch"]) for e in resumed] == [(60, 2)]  # the history is cut back to it
    keys = ("epoch", "train_loss", "val_loss", "val_accuracy", "steps")
    want = [{k: r[k] for k in keys} for r in RunHistory(ref).read()]
    got = [{k: r[k] for k in keys} for r in RunHistory(run_dir).read()]
    assert len(got) == 4 and got == want  # no epoch lost, none counted twice, bit-identical losses
    info = RunHistory(run_dir).info()
    assert info["state"] == "finished" and info["resumes"] == 1 and info["epochs"] == 4
    assert (run_dir / "history.csv").read_text().count("\n") == 5
    listed = CliRunner().invoke(main, ["runs", str(tmp_path), "--format", "json"])
    assert listed.exit_code == 0, listed.output
    rows = {r["name"]: r for r in json.loads(listed.output)["runs"]}
    assert rows["run"]["state"] == "finished" and rows["run"]["epochs"] == 4


def test_a_stopped_job_ends_its_run_as_stopped(tmp_path):
    cfg = config(tmp_path)
    job = Job(cfg, log_format="json", stream=io.StringIO(), install_signals=False)
    real = job.on_step
    job.on_step = lambda tr, loss: (job.stop("SIGTERM") if tr.steps == 30 else None, real(tr, loss))[1]
    assert job.run() == {"stopped": "SIGTERM", "steps": 30}
    assert ckpt.list_checkpoints(tmp_path / "out" / "checkpoints")[0].name == "ckpt-000000030.json"  # a stop writes
    info = RunHistory(tmp_path / "out").info()
    assert info["state"] == "stopped" and info["epochs"] == 1 and "SIGTERM" in info["message"]


# -- run directories and finished jobs -------------------------------------------------------------


def test_unnamed_jobs_get_their_own_run_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["train", "--dataset", "synthetic:classification(200, 8, 3)", "--epochs", "1", "--device", "cpu",
            "--batch-size", "32"]
    first = CliRunner().invoke(main, [*base, "--layers", "8,16,3"])
    second = CliRunner().invoke(main, [*base, "--layers", "8,32,3"])
    assert first.exit_code == 0 and second.exit_code == 0, second.output
    dirs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(dirs) == 2 and all(d.startswith("memtrain-") for d in dirs)
    assert f"runs/{dirs[0]}" in first.output + second.output  # the output says where it went


def test_a_different_job_in_the_same_directory_names_the_way_out(tmp_path):
    out = tmp_path / "out"
    assert run(config(tmp_path), progress=False, stream=io.StringIO(), install_signals=False)
    other = config(tmp_path, model={"layers": [20, 16, 4]})
    with pytest.raises(ckpt.CheckpointError, match="is from a different job.*--name.*--no-resume"):
        run(other, progress=False, stream=io.StringIO(), install_signals=False)
    assert RunHistory(out).info()["state"] == "finished"  # nothing overwritten


def test_resuming_a_finished_job_says_so_and_trains_nothing(tmp_path):
    cfg = config(tmp_path)
    run(cfg, progress=False, stream=io.StringIO(), install_signals=False)
    model = tmp_path / "out" / "model-final.npz"
    before = model.stat().st_mtime_ns
    buf = io.StringIO()
    result = run(cfg, progress=False, stream=buf, install_signals=False)
    assert result["already_finished"] and result["epochs"] == 3
    assert "nothing to train" in buf.getvalue() and "--no-resume" in buf.getvalue()
    assert "--epochs M" in buf.getvalue() and "finished  3 epochs" not in buf.getvalue()
    assert model.stat().st_mtime_ns == before
    more = config(tmp_path, training={"epochs": 4})  # --epochs 4 trains one more epoch on the same run
    assert run(more, progress=False, stream=io.StringIO(), install_signals=False)["epochs"] == 4
    assert len(RunHistory(tmp_path / "out").read()) == 4


# -- progress ------------------------------------------------------------------------------------


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_the_progress_bar_only_draws_on_a_terminal(tmp_path):
    plain = io.StringIO()
    run(config(tmp_path), stream=plain, install_signals=False)
    assert "\r" not in plain.getvalue() and plain.getvalue().count("epoch ") >= 3
    tty = _Tty()
    run(config(tmp_path, checkpoint={"resume": False, "dir": str(tmp_path / "c2")}), stream=tty,
        install_signals=False)
    assert "\r" in tty.getvalue()  # tqdm redraws its line


def test_samples_per_second_is_smoothed():
    p = ProgressBar(False, 10, None)
    rates = [p.rate(128, dt) for dt in [0.001, 0.001, 0.03, 0.001, 0.0005, 0.001, 0.03, 0.001]]
    # raw rates jump 60x (4,267 .. 256,000 samples/s); the smoothed one moves by well under 2x
    assert max(rates[2:]) / min(rates[2:]) < 2


# -- flags and help ----------------------------------------------------------------------------------


def test_train_takes_the_job_file_options_as_flags(tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(main, [
        "train", "--layers", "20,16,4", "--dataset", "synthetic:classification(400, 20, 4)", "--device", "cpu",
        "--epochs", "2", "--batch-size", "auto", "--memory-limit", "32MiB", "--max-batch-size", "24", "--patience", "1", "--clip-norm", "0.5",
        "--warmup", "3", "--validation", "0.25", "--test", "0.25", "--no-progress", "--measure", "off",
        "--output-dir", str(out), "--log-format", "json"])
    assert r.exit_code == 0, r.output
    events = [json.loads(line) for line in r.output.splitlines() if line.startswith("{")]
    data = next(e for e in events if e["event"] == "data")
    assert (data["validation"], data["test"]) == (100, 100)
    assert next(e for e in events if e["event"] == "autobatch")["used"] == 24
    summary = next(e for e in events if e["event"] == "summary")
    assert summary["measured_peak_bytes"] is None and summary["batch_size"] == 24
    assert "early-stopping" in " ".join(e.get("note", "") for e in events) or summary["best_model"]
    bad = CliRunner().invoke(main, ["train", "--layers", "20,4", "--patience", "0"])
    assert bad.exit_code == 2 and "--patience" in bad.output


def test_label_column_reaches_the_job(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("y,a,b\n" + "".join(f"{i % 2},{i},{-i}\n" for i in range(40)))
    r = CliRunner().invoke(main, ["train", "--layers", "2,4,2", "--dataset", str(csv), "--label-column", "y",
                                  "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                                  "--output-dir", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output


def test_group_help_shows_each_summary_uncut():
    r = CliRunner().invoke(main, ["--help"], terminal_width=80)
    commands = r.output.split("Commands:")[1]
    assert "..." not in commands
    assert "never used" not in commands and "and/or flags; flags override the file." in " ".join(commands.split())


# -- memory numbers ----------------------------------------------------------------------------------


def test_measure_modes_are_validated_and_sampled_is_the_default():
    assert JobConfig().training.measure == "sampled"
    assert from_dict({"training": {"measure": False}}).training.measure == "off"
    assert from_dict({"training": {"measure": "exact"}}).training.measure == "exact"
    with pytest.raises(ConfigError, match="training.measure: expected sampled, exact, off"):
        from_dict({"training": {"measure": "always"}})


def test_sampled_measurement_stops_tracing_and_reports_the_plan_apart(tmp_path):
    cfg = config(tmp_path)
    job = Job(cfg, log_format="json", stream=io.StringIO(), install_signals=False)
    tracing = []
    real = job.on_step
    job.on_step = lambda tr, loss: (tracing.append(tracemalloc.is_tracing()), real(tr, loss))[1]
    s = job.run()
    assert tracing[:5] == [True] * 5 and not any(tracing[5:])  # traced the first steps only
    assert s["planned_bytes"] <= s["measured_peak_bytes"] <= s["planned_bytes"] * 1.02 + 16 * 1024
    assert 0 < s["python_objects_bytes"] < 2 * 1024**2  # the job loop's, reported apart
    assert job.state.measured["python_objects"] == s["python_objects_bytes"]
    buf = io.StringIO()
    run(config(tmp_path, checkpoint={"resume": False, "dir": str(tmp_path / "c2")}), progress=False, stream=buf,
        install_signals=False)
    text = buf.getvalue()
    assert "job loop's Python objects (history, logs, progress; not training memory" in text
    assert "the plan plus the job loop" not in text


def test_early_stopping_copy_is_named_in_the_plan_line(tmp_path):
    buf = io.StringIO()
    run(config(tmp_path, training={"patience": 2}), progress=False, stream=buf, install_signals=False)
    assert "parameters include the early-stopping copy of the best weights" in buf.getvalue()


GELU = """
import io, json, sys
from memtrain.config import from_dict
from memtrain.train.job import run
cfg = from_dict({"device": "cpu", "model": {"layers": [20, 64, 4], "activation": "gelu"},
                 "training": {"batch_size": "auto", "max_batch_size": 32, "epochs": 1},
                 "data": {"dataset": "synthetic:classification(300, 20, 4)"}, "output": {"dir": sys.argv[1]}})
from memtrain.profiler.autobatch import auto_batch
s = run(cfg, progress=False, stream=io.StringIO(), install_signals=False, batch_solver=auto_batch)
print(json.dumps({**{k: s.get(k) for k in ("planned_bytes", "measured_peak_bytes", "python_objects_bytes")},
                  "numba": "numba" in sys.modules}))
"""


def test_a_first_gelu_step_does_not_count_scipy_as_training_memory(tmp_path):
    out = subprocess.run([sys.executable, "-c", GELU, str(tmp_path / "g")], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONWARNINGS": "error"})
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert s["measured_peak_bytes"] <= s["planned_bytes"] * 1.05 + 64 * 1024  # not +12 MB of scipy.special
    assert s["python_objects_bytes"] < 2 * 1024**2
    assert s["numba"] is False  # fused = "auto", 1,604 parameters: the NumPy path, its probe too: no numba


def test_fused_auto_chooses_the_path_by_size_and_the_plan_follows(tmp_path):
    cfg = config(tmp_path)  # 20-48-32-4: 2,724 parameters
    assert cfg.training.fused == "auto" and cfg.fused is False
    job = Job(cfg, log_format="json", stream=io.StringIO(), install_signals=False)
    s = job.run()
    assert job.trainer.kernels.name == "numpy" and job.plan.numba_kernels is False  # the plan is the path's
    assert s["planned_bytes"] <= s["measured_peak_bytes"] <= s["planned_bytes"] * 1.005 + 256 * 1024
    assert from_dict({"model": {"layers": [784, 128, 10]}}).fused is True  # 101,770 parameters
    assert from_dict({"model": {"layers": [784, 120, 10]}}).fused is False  # 95,410
    assert from_dict({"model": {"layers": [4, 2]}, "training": {"fused": True}}).fused is True  # as said
    with pytest.raises(ConfigError, match='training.fused: expected true, false or "auto", got \'yes\''):
        from_dict({"model": {"layers": [4, 2]}, "training": {"fused": "yes"}})
