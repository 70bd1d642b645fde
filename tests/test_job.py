"""Training jobs end to end: outputs, resume exactness under SIGKILL, corrupt
checkpoints, signals, non-finite losses and bad input."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from memtrain.config import from_dict
from memtrain.memory.budget import default_margin
from memtrain.profiler.autobatch import auto_batch
from memtrain.train import checkpoint as ckpt
from memtrain.train.job import Job, run
from memtrain.train.model_io import load_model

JOB = """
name = "t"
seed = 3
device = "cpu"
[model]
layers = [20, 48, 32, 4]
activation = "tanh"
dropout = [0.9, 0.8]
[optimizer]
name = "adam"
lr = 0.003
[schedule]
name = "cosine"
warmup = 5
[training]
batch_size = 16
epochs = 3
[data]
dataset = "synthetic:classification(600, 20, 4)"
validation = 0.2
test = 0.1
standardize = false
[checkpoint]
every_steps = 4
keep = 2
"""


def job_file(tmp_path, text=JOB, **replace):
    for old, new in replace.items():
        text = text.replace(old, new)
    p = tmp_path / "job.toml"
    p.write_text(text)
    return p


def cli(*args, timeout=120, **kw):
    return subprocess.run([sys.executable, "-m", "memtrain.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kw)


def train_cli(*args, cwd=None):
    """`memtrain train ARGS` in this process (click's CliRunner), as cli() reports it: exit status,
    stdout, stderr. The tests about signals and the process keep cli(); the rest save a Python
    start and numba's kernel load per call. A bug's exception is raised, not read as an exit 1."""
    from click.testing import CliRunner

    from memtrain.cli import main

    here = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        r = CliRunner().invoke(main, ["train", *map(str, args)])
    finally:
        os.chdir(here)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


def config(tmp_path, **sections):
    import tomllib

    data = tomllib.loads(JOB)
    for key, value in sections.items():
        data.setdefault(key, {}).update(value) if isinstance(value, dict) else data.__setitem__(key, value)
    data["output"] = {"dir": str(tmp_path / "out")}
    return from_dict(data)


def test_a_job_trains_and_writes_its_models(tmp_path):
    with open(os.devnull, "w") as devnull:
        summary = run(config(tmp_path), progress=False, stream=devnull, install_signals=False)
    assert summary["epochs"] == 3 and summary["steps"] == 3 * 27  # 432 training rows / 16
    assert summary["val_accuracy"] > 0.5
    model, meta = load_model(tmp_path / "out" / "model-final.npz")
    assert meta["dataset"] == "synthetic:classification(600,20,4)" or "synthetic" in meta["dataset"]
    assert model.spec.sizes == (20, 48, 32, 4)
    assert summary["measured_peak_bytes"] >= summary["planned_bytes"]
    # the plan is what ran; the job loop's own Python objects (logs, history, JSON) add tens of KiB
    assert summary["measured_peak_bytes"] <= summary["planned_bytes"] * 1.005 + 256 * 1024
    assert len(ckpt.list_checkpoints(tmp_path / "out" / "checkpoints")) == 2  # keep = 2


def test_json_logs_are_one_object_per_line(tmp_path, capsys):
    import io

    buf = io.StringIO()
    run(config(tmp_path), log_format="json", stream=buf, install_signals=False)
    events = [json.loads(line)["event"] for line in buf.getvalue().splitlines()]
    assert events[0] == "data" and events[-1] == "summary" and events.count("epoch") == 3
    assert "plan" in events and "checkpoint" in events


def _final_params(out_dir):
    with np.load(Path(out_dir) / "model-final.npz", allow_pickle=False) as z:
        return z["params"]


@pytest.mark.slow
def test_sigkill_at_five_points_then_resume_is_bit_identical(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    job = job_file(tmp_path, **{"epochs = 3": "epochs = 12"})  # 324 steps: long enough to be killed 5 times
    # the reference run and the final resume in this process (train_cli); the five killed runs are real processes
    done = train_cli(job, "--output-dir", ref_dir, "--log-format", "json")
    assert done.returncode == 0, done.stderr
    reference = _final_params(ref_dir)
    rng = np.random.default_rng(7)
    killed = 0
    for _ in range(5):
        # each run: let it write 1-3 checkpoints, then kill it somewhere in the steps that follow
        wait_for, delay = int(rng.integers(1, 4)), float(rng.uniform(0, 0.05))
        proc = subprocess.Popen([sys.executable, "-m", "memtrain.cli", "train", str(job), "--output-dir", str(run_dir),
                                 "--log-format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen = 0
        for line in proc.stdout:
            if json.loads(line)["event"] == "checkpoint":
                seen += 1
                if seen >= wait_for:
                    time.sleep(delay)
                    proc.send_signal(signal.SIGKILL)
                    break
        proc.wait(timeout=60)
        proc.stdout.close()
        proc.stderr.close()
        if proc.returncode == -signal.SIGKILL:
            killed += 1
    assert killed == 5
    done = train_cli(job, "--output-dir", run_dir, "--log-format", "json")
    assert done.returncode == 0, done.stderr
    assert any(json.loads(line)["event"] == "resume" for line in done.stdout.splitlines())
    np.testing.assert_array_equal(_final_params(run_dir), reference)  # bit-identical


def test_corrupt_newest_checkpoint_falls_back_with_a_warning(tmp_path):
    job = job_file(tmp_path, **{"epochs = 3": "epochs = 1"})
    out = tmp_path / "o"
    assert train_cli(job, "--output-dir", out).returncode == 0
    newest = ckpt.list_checkpoints(out / "checkpoints")[0]
    npz = newest.with_suffix(".npz")
    npz.write_bytes(npz.read_bytes()[:100])  # truncated
    job2 = job_file(tmp_path, **{"epochs = 3": "epochs = 2"})
    r = train_cli(job2, "--output-dir", out, "--log-format", "json")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    warning = next(e for e in events if e["event"] == "warning")
    assert "SHA-256 mismatch" in warning["message"] and "falling back" in warning["message"]
    assert next(e for e in events if e["event"] == "resume")["step"] < 27


def test_resume_refuses_a_different_model(tmp_path):
    job = job_file(tmp_path, **{"epochs = 3": "epochs = 1"})
    out = tmp_path / "o"
    assert train_cli(job, "--output-dir", out).returncode == 0
    r = train_cli(job, "--output-dir", out, "--layers", "20,64,4")
    assert r.returncode == 2
    assert r.stderr.startswith("memtrain: error: resume:") and "model" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_sigterm_checkpoints_and_exits_0_then_resumes(tmp_path):
    job = job_file(tmp_path, **{"epochs = 3": "epochs = 30"})
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "memtrain.cli", "train", str(job), "--output-dir", str(out),
                             "--log-format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if json.loads(line)["event"] == "epoch":
            proc.send_signal(signal.SIGTERM)
            break
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in rest.splitlines()]
    stopped = next(e for e in events if e["event"] == "stopped")
    assert stopped["signal"] == "SIGTERM"
    assert any(e["event"] == "checkpoint" and e["reason"] == "SIGTERM" for e in events)
    newest = json.loads(ckpt.list_checkpoints(out / "checkpoints")[0].read_text())
    assert newest["state"]["steps"] == stopped["step"]


def test_sigterms_until_it_has_stopped_give_one_clean_stop(tmp_path):
    """SIGTERMs every millisecond until the job logs `stopped`: the stop checkpoint and the history
    are written whole (the default handler, put back when the loop ended, used to kill it mid-write)."""
    import threading

    job = job_file(tmp_path, **{"epochs = 3": "epochs = 300"})
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "memtrain.cli", "train", str(job), "--output-dir", str(out),
                             "--log-format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events = []
    for line in proc.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == "epoch":
            break
    reader = threading.Thread(target=lambda: events.extend(json.loads(line) for line in proc.stdout))
    reader.start()
    sent = 0
    while proc.poll() is None and not any(e["event"] == "stopped" for e in events):
        proc.send_signal(signal.SIGTERM)
        sent += 1
        time.sleep(0.001)
    err = proc.communicate(timeout=60)[1]
    reader.join(10)
    # the job's stop is whole (it used to die mid-checkpoint); a SIGTERM still in flight once the job has
    # ended and given back the handler is the process's own default end, after everything was written
    assert any(e["event"] == "stopped" for e in events) and sent >= 2, (proc.returncode, sent, err[-2000:])
    assert proc.returncode in (0, -signal.SIGTERM) and "Traceback" not in err, err[-2000:]
    stopped = next(e for e in events if e["event"] == "stopped")
    assert [e["reason"] for e in events if e["event"] == "checkpoint"][-1] == "SIGTERM"
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    newest = json.loads(ckpt.list_checkpoints(out / "checkpoints")[0].read_text())
    assert newest["state"]["steps"] == stopped["step"]


def test_max_runtime_stops_after_the_step_with_a_checkpoint(tmp_path):
    cfg = config(tmp_path, training={"epochs": 100000, "max_runtime": "0.5s"})
    t0 = time.perf_counter()
    with open(os.devnull, "w") as devnull:
        result = run(cfg, progress=False, stream=devnull, install_signals=False)
    assert result["stopped"] == "max_runtime" and result["steps"] > 0
    assert time.perf_counter() - t0 < 30
    newest = json.loads(ckpt.list_checkpoints(tmp_path / "out" / "checkpoints")[0].read_text())
    assert newest["state"]["steps"] == result["steps"]


def test_nonfinite_losses_stop_with_a_checkpoint(tmp_path):
    job = job_file(tmp_path, **{"lr = 0.003": "lr = 1e30", "[training]": "[training]\nmax_nonfinite = 3"})
    r = cli("train", job, "--output-dir", tmp_path / "o")
    assert r.returncode == 1
    assert "non-finite steps in a row" in r.stderr
    newest = json.loads(ckpt.list_checkpoints(tmp_path / "o" / "checkpoints")[0].read_text())
    assert newest["state"]["nonfinite_steps"] >= 3


@pytest.mark.parametrize("text,args,message", [
    ("[model]\nlayers = [20, 4\n", [], "invalid TOML"),
    (JOB.replace("epochs = 3", "epoch = 3"), [], "unknown key(s) in [training]: epoch"),
    (JOB.replace("synthetic:classification(600, 20, 4)", "nope.npz"), [], "nope.npz"),
    (JOB.replace("layers = [20, 48, 32, 4]", "layers = [21, 4]"), [], "model.layers: the first size must equal"),
    (JOB, ["--batch-size", "0"], "Invalid value for '--batch-size'"),
    (JOB, ["--micro-batch-size", "64"], "training.micro_batch_size: 64 is larger than the batch size 16"),
    (JOB, ["--checkpoint-dir", "/proc/forbidden"], "checkpoint-dir: /proc/forbidden is not writable"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, text, args, message):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    out = tmp_path / "o"
    r = train_cli(p, "--output-dir", out, *args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not (out / "model-final.npz").exists()


def test_metrics_port_in_use_is_a_clear_error(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    try:
        r = cli("train", job_file(tmp_path), "--output-dir", tmp_path / "o", "--metrics-port", port)
    finally:
        s.close()
    assert r.returncode == 2 and f"metrics.port: cannot listen on 127.0.0.1:{port}" in r.stderr


def test_the_advice_of_a_finished_run_works_and_moves_the_earlier_run_aside(tmp_path):
    """`memtrain train` of a finished job advises --no-resume; that starts over, keeping the earlier
    run (its checkpoints, models and run.json) whole in a dated folder beside it."""
    job = job_file(tmp_path, **{"epochs = 3": "epochs = 1"})
    out = tmp_path / "o"
    assert train_cli(job, "--output-dir", out).returncode == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    again = train_cli(job, "--output-dir", out)
    assert again.returncode == 0 and "nothing to train (--no-resume starts over" in again.stdout
    r = train_cli(job, "--output-dir", out, "--no-resume")
    assert r.returncode == 0, r.stderr
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("o.earlier-")]
    assert len(aside) == 1 and f"aside     the earlier run moved to {aside[0]} (--no-resume" in r.stdout
    assert {p.relative_to(aside[0]): p.read_bytes() for p in aside[0].rglob("*") if p.is_file()} == before
    assert "finished  1 epochs" in r.stdout and "resumed" not in r.stdout
    assert json.loads((out / "run.json").read_text())["state"] == "finished"
    assert list((out / "checkpoints").glob("*.npz")) and (out / "model-final.npz").exists()


def test_no_resume_never_moves_the_working_directory(tmp_path):
    job = job_file(tmp_path, **{"epochs = 3": "epochs = 1"})
    assert train_cli(job, "--output-dir", ".", "--checkpoint-dir", ".", cwd=tmp_path).returncode == 0
    r = train_cli(job, "--output-dir", ".", "--checkpoint-dir", ".", "--no-resume", cwd=tmp_path)
    assert r.returncode == 2 and "is the working directory or above it" in r.stderr
    assert r.stderr.count("\n") == 1 and (tmp_path / "run.json").exists()


def test_a_batch_beyond_the_rows_or_a_memory_limit_is_refused_in_one_line(tmp_path):
    """train, estimate --config and the service's planning (plan_job) refuse alike, before writing."""
    from click.testing import CliRunner

    from memtrain.cli import main
    from memtrain.errors import ConfigError, DeviceError
    from memtrain.train.jobplan import plan_job

    rows = "training.batch_size: 100,000 is larger than the 420 training rows; expected at most 420"
    big = config(tmp_path, training={"batch_size": 100000})
    with pytest.raises(ConfigError, match=rows):
        Job(big, progress=False, stream=io.StringIO(), install_signals=False).run()
    with pytest.raises(ConfigError, match=rows):
        plan_job(big)
    job = job_file(tmp_path, **{"batch_size = 16": "batch_size = 100000"})
    r = CliRunner().invoke(main, ["estimate", "--config", str(job)])
    assert r.exit_code == 2 and rows in r.output
    r = CliRunner().invoke(main, ["estimate", "--config", str(job), "--batch-size", "420"])
    assert r.exit_code == 0, r.output
    tiny = config(tmp_path, training={"batch_size": 32, "memory_limit": "1KiB"})
    with pytest.raises(DeviceError, match=r"training.batch_size: batch 32 needs [\d.]+ KiB \([\d,]+ B\) but "
                                          r"1.00 KiB \(1,024 B\) is available \(training.memory_limit\)"):
        Job(tiny, progress=False, stream=io.StringIO(), install_signals=False).run()
    assert not (tmp_path / "out").exists()


def test_auto_batch_counts_the_resident_data_set(tmp_path):
    """The data set is part of the plan, so the auto batch leaves room for it."""
    limit = 400 * 1024
    cfg = config(tmp_path, training={"batch_size": "auto", "memory_limit": "400KiB", "epochs": 1})
    with open(os.devnull, "w") as devnull:
        s = Job(cfg, progress=False, stream=devnull, install_signals=False, batch_solver=auto_batch).run()

    budget = limit - default_margin("cpu", limit)
    assert s["batch_size"] < 420  # smaller than the training set: the limit decided it
    assert s["planned_bytes"] <= budget  # with the data set (48 kB of features) inside
    assert s["planned_bytes"] > budget - 2 * 1024  # the batch grew until the budget (one more row: ~1 kB)


def test_micro_batch_auto_fits_a_tight_limit(tmp_path):
    """batch 256 does not fit 600 KiB, so micro_batch_size = auto accumulates smaller ones."""
    cfg = config(tmp_path, training={"batch_size": 256, "micro_batch_size": "auto", "memory_limit": "600KiB",
                                     "epochs": 1})
    with open(os.devnull, "w") as devnull:
        s = run(cfg, progress=False, stream=devnull, install_signals=False)
    assert s["batch_size"] == 256 and s["micro_batch_size"] < 256
    assert s["planned_bytes"] <= 600 * 1024 - default_margin("cpu", 600 * 1024)


def test_phases_run_one_by_one_and_the_state_is_observable(tmp_path):
    job = Job(config(tmp_path), progress=False, stream=io.StringIO(), install_signals=False)
    assert job.state.state == "planning" and job.train_rows is None
    job.open_device()
    job.load_data()
    job.choose_batch()
    assert job.train_rows == 420 and job.batch_size == 16
    job.build_trainer()
    try:
        assert job.state.planned_bytes == job.trainer.plan.by_category() and job.state.batch_size == 16
        assert job.resume() is False  # a fresh checkpoint dir
    finally:
        job.peak.stop()


def test_plan_job_is_the_plan_the_job_allocates(tmp_path):
    from memtrain.train.jobplan import plan_job

    cfg = config(tmp_path, training={"epochs": 1, "patience": 2})
    jp = plan_job(cfg)
    with open(os.devnull, "w") as devnull:
        s = Job(cfg, progress=False, stream=devnull, install_signals=False).run()
    assert jp.batch_size == s["batch_size"] and jp.rows.n_train == 420 and jp.resident
    assert jp.by_category() == s["planned_by_category"] and jp.total == s["planned_bytes"]
    auto = plan_job(cfg.with_overrides({"training.batch_size": "auto"}), budget=600 * 1024)
    budget = 600 * 1024 - default_margin("cpu", 600 * 1024)  # the margin the job's auto batch keeps
    assert auto.total <= budget < auto.setting.plan(auto.batch_size + 1).total  # the largest that fits


def test_stop_from_another_thread_checkpoints_and_the_job_resumes(tmp_path):
    """A service runs the Job on a thread (no signal handlers there) and stops it from another."""
    import threading

    cfg = config(tmp_path, training={"epochs": 3})
    job = Job(cfg, progress=False, stream=io.StringIO())  # install_signals: ignored off the main thread
    out = {}
    t = threading.Thread(target=lambda: out.update(result=job.run()))
    t.start()
    while job.state.steps < 5 and t.is_alive():
        time.sleep(0.001)
    job.stop()
    t.join(60)
    result = out["result"]
    assert result["stopped"] == "stop" and 5 <= result["steps"] < 3 * 27
    assert job.state.state == "training" and ckpt.list_checkpoints(tmp_path / "out" / "checkpoints")
    again = Job(cfg, progress=False, stream=io.StringIO(), install_signals=False).run()
    assert again["steps"] == 3 * 27  # resumed where it stopped, then finished


def test_a_garbled_history_is_skipped_with_a_warning_and_the_job_trains_on(tmp_path):
    job = job_file(tmp_path, **{"epochs = 3": "epochs = 2"})
    out = tmp_path / "o"
    r = train_cli(job, "--output-dir", out, "--log-format", "json")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = (out / "history.jsonl").read_bytes().split(b"\n")
    lines[0] = b'{"epoch": 1, "train_lo\x00\xff garbled'
    (out / "history.jsonl").write_bytes(b"\n".join(lines))
    r = train_cli(job, "--output-dir", out, "--log-format", "json", "--epochs", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    events = [json.loads(line) for line in r.stdout.splitlines()]
    warned = [e["message"] for e in events if e["event"] == "warning"]
    assert any("history.jsonl: skipped 1 line(s)" in w and "line 1" in w for w in warned), warned
    assert [json.loads(line)["epoch"] for line in (out / "history.jsonl").read_text().splitlines()] == [2, 3]


def test_a_tampered_sidecar_falls_back_with_a_warning_and_ends_as_an_uninterrupted_run(tmp_path):
    """The sidecar's `position` changed (valid JSON, the .npz untouched) used to resume silently into
    a different model; its own checksum sets it aside, and the previous checkpoint resumes exactly."""
    job = job_file(tmp_path)
    r = train_cli(job, "--output-dir", tmp_path / "whole", "--log-format", "json")
    assert r.returncode == 0, r.stderr[-2000:]
    r = train_cli(job, "--output-dir", tmp_path / "b", "--log-format", "json")
    assert r.returncode == 0, r.stderr[-2000:]
    for p in (tmp_path / "b").glob("model-*"):  # as if it had been killed before writing its models
        p.unlink()
    newest = ckpt.list_checkpoints(tmp_path / "b" / "checkpoints")[0]
    record = json.loads(newest.read_text())
    record["state"]["position"] += 1
    newest.write_text(json.dumps(record, indent=1))
    r = train_cli(job, "--output-dir", tmp_path / "b", "--log-format", "json")
    assert r.returncode == 0, r.stderr[-2000:]
    warned = [json.loads(line)["message"] for line in r.stdout.splitlines() if '"event": "warning"' in line]
    assert any(newest.stem in w and "SHA-256 mismatch of its .json" in w and "falling back" in w for w in warned)
    assert (newest.parent / f"{newest.name}.corrupt").exists()
    with np.load(tmp_path / "whole" / "model-final.npz") as a, np.load(tmp_path / "b" / "model-final.npz") as b:
        assert np.array_equal(a["params"], b["params"])


def test_a_job_process_freezes_its_heap_at_exit():
    """Job.run() registers gc.freeze() at exit, once: the shutdown's cycle collections then skip the
    heap NumPy and numba left (1.7-1.9 s of a small job's exit on the development VM)."""
    code = ("import atexit, gc; from memtrain.train.job import _freeze_heap_at_exit as f; f(); f(); "
            "atexit._run_exitfuncs(); print(gc.get_freeze_count())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) > 1000  # every object of the interpreter, not a few


def test_a_resume_on_another_step_path_warns_how_to_resume_exactly(tmp_path):
    """training.fused = "auto" picks the path by size (and older versions ran numba by default): a
    checkpoint of the fused step resumed on the NumPy step says so, and how to resume exactly."""
    out = io.StringIO()
    run(config(tmp_path, training={"epochs": 1, "fused": True}), progress=False, stream=io.StringIO(),
        install_signals=False)
    run(config(tmp_path, training={"epochs": 2, "fused": False}), log_format="json", progress=False, stream=out,
        install_signals=False)
    warnings = [e["message"] for e in map(json.loads, out.getvalue().splitlines()) if e["event"] == "warning"]
    assert warnings == ["checkpoint: written by the numba step, resumed on the numpy step: the model will not be "
                        "bit-identical to an uninterrupted run; set training.fused = true to resume exactly"]
    again = io.StringIO()
    run(config(tmp_path, training={"epochs": 3, "fused": False}), log_format="json", progress=False, stream=again,
        install_signals=False)
    assert '"warning"' not in again.getvalue()  # the same path: nothing to say
