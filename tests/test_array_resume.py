"""A trial array's checkpoint (train/arrayjob.py, train/arraystate.py): one checkpoint of every
trial, resumed bit-exactly after a crash (in this process) and after kill -9 of its worker (a
real sweep, the scheduler's retry); a torn checkpoint falls back to the previous one; one trial
stops on its own (ArrayRun.stop_trial, the worker's stop-trials.json) while the others go on.

The reference for every trial is its lone job (`memtrain train`'s Job): model-final.npz bit for
bit, the history's epochs, run.json's end."""

import contextlib
import csv
import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from memtrain.config import from_dict
from memtrain.errors import ConfigError
from memtrain.launch import worker
from memtrain.select import fuse
from memtrain.select import space as sp
from memtrain.select import sweep as sw
from memtrain.train import checkpoint as ckpt
from memtrain.train.arrayjob import CHECKPOINTS, ArrayRun, run_array
from memtrain.train.job import run as run_job

# what differs between two runs of one trial however it is run: clocks, and the process's memory
CSV_CLOCKS = {"seconds", "samples_per_second", "planned_bytes", "measured_peak_bytes", "time"}
RUN_CLOCKS = {"finished_at", "seconds", "samples_per_second", "planned_bytes", "planned_by_category",
              "measured_peak_bytes"}
# 80 training rows at batch 16: 5 steps per epoch; an interval checkpoint every 4 array steps
# two Adam trials: one fused update kernel over both rows (train/trial_update.py), restored too
TRIALS = [("adam", 0.01, None), ("momentum", 0.05, (0.9, 0.8)), ("sgd", 0.3, None), ("adam", 0.03, (1.0, 0.8))]


def _cfgs(root, dtype, epochs=4):
    out = []
    for k, (opt, lr, dropout) in enumerate(TRIALS):
        out.append(from_dict({
            "name": f"t{k}", "seed": 3, "device": "cpu",
            "model": {"layers": [10, 12, 3], "activation": "tanh", "dropout": dropout, "dtype": dtype},
            "optimizer": {"name": opt, "lr": lr}, "schedule": {"name": "cosine", "warmup": 3},
            # fused: the numba kernels ("auto" runs NumPy for a model this small), the Adam pair grouped
            "training": {"batch_size": 16, "epochs": epochs, "patience": 2 if k == 2 else None, "fused": True},
            "data": {"dataset": "synthetic:classification(120, 10, 3)", "validation": 0.25, "standardize": False},
            "checkpoint": {"every_steps": 4, "every_minutes": 0, "min_interval": 0},  # every epoch's end too
            "output": {"dir": str(root / f"t{k}")}}))
    return out


@pytest.fixture(scope="module", params=["float64", "float32"])
def lone(request, tmp_path_factory):
    """Each trial trained alone by `memtrain train`'s Job: (dtype, root of the run dirs)."""
    root = tmp_path_factory.mktemp(f"lone-{request.param}")
    with open(os.devnull, "w") as devnull:
        for cfg in _cfgs(root, request.param):
            run_job(cfg, progress=False, stream=devnull, install_signals=False)
    return request.param, root


def _history(path):
    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in CSV_CLOCKS} for row in csv.DictReader(f)]


def _same_as_lone(root, ref, names):
    for name in names:
        with np.load(root / name / "model-final.npz") as a, np.load(ref / name / "model-final.npz") as b:
            assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files), name
        assert _history(root / name / "history.csv") == _history(ref / name / "history.csv"), name
        run = json.loads((root / name / "run.json").read_text())
        want = json.loads((ref / name / "run.json").read_text())
        assert (run["state"], run["epochs"], run["steps"], run["test_loss"]) == (
            want["state"], want["epochs"], want["steps"], want["test_loss"]), name


class Crash(Exception):
    """Stands for a kill: the process ends where it stands, nothing more is written."""


class CrashingRun(ArrayRun):
    """Dies at the end of epoch 2, after trial 0's epoch line and epoch checkpoint are on disk
    and before the array's epoch checkpoint: the newest array checkpoint is the interval one
    at array step 8 (epoch 2, batch 3)."""

    def _on_epoch(self, r, record):
        super()._on_epoch(r, record)
        if record["epoch"] == 2:
            raise Crash


def _crash(root, run_dir, dtype):
    run = CrashingRun(_cfgs(root, dtype), run_dir=run_dir)
    with pytest.raises(Crash):
        run.run()
    names = [p.name for p in ckpt.list_checkpoints(run_dir / CHECKPOINTS)]
    assert names == ["ckpt-000000008.json", "ckpt-000000005.json", "ckpt-000000004.json"]
    lines = (root / "t0" / "history.jsonl").read_text().splitlines()
    assert len(lines) == 2  # epoch 2 trained past the newest array checkpoint: cut back on resume


@pytest.mark.parametrize("torn", [False, True], ids=["newest", "torn-newest"])
def test_an_array_resumes_from_its_checkpoint_bit_exactly(tmp_path, lone, torn):
    """Crashed mid-run, the array resumes from its newest checkpoint (array step 8, mid-epoch:
    the epoch's loss so far, positions, optimizer state restored) or, when that one is torn, from
    the one before (step 5, epoch 1 s end); every trial ends with its lone job's model and history."""
    dtype, ref = lone
    root, run_dir = tmp_path / "trials", tmp_path / "array"
    _crash(root, run_dir, dtype)
    if torn:
        npz = run_dir / CHECKPOINTS / "ckpt-000000008.npz"
        npz.write_bytes(npz.read_bytes()[:-100])
    log = []
    outcomes = run_array(_cfgs(root, dtype), run_dir=run_dir,
                         on_event=lambda event, fields: log.append((event, fields)))
    assert [o["status"] for o in outcomes] == ["finished"] * 4
    resumed = [f for e, f in log if e == "resume"]
    assert len(resumed) == 1 and resumed[0]["step"] == (5 if torn else 8)
    warnings = [f["message"] for e, f in log if e == "warning"]
    if torn:
        assert len(warnings) == 1 and "ckpt-000000008 is unusable (SHA-256 mismatch" in warnings[0]
        assert (run_dir / CHECKPOINTS / "ckpt-000000008.npz.corrupt").exists()
    else:
        assert warnings == []
    _same_as_lone(root, ref, ["t0", "t1", "t2", "t3"])
    assert json.loads((root / "t0" / "run.json").read_text())["resumes"] == 1


class StoppingRun(ArrayRun):
    """Stopped whole (what the worker's SIGTERM handler does) while trial 0 ends epoch 2."""

    def _on_epoch(self, r, record):
        super()._on_epoch(r, record)
        if r.index == 0 and record["epoch"] == 2:
            self.stop("SIGTERM")


def test_a_stopped_array_trains_on_when_run_again(tmp_path, lone):
    """stop(): every trial ends "stopped" with its stop checkpoint (no result: a sweep runs it
    again); the array's checkpoint records them as training, and the next run trains them on to
    their lone models."""
    dtype, ref = lone
    root, run_dir = tmp_path / "trials", tmp_path / "array"
    outcomes = StoppingRun(_cfgs(root, dtype), run_dir=run_dir).run()
    assert [o["status"] for o in outcomes] == ["stopped"] * 4
    assert {json.loads((root / f"t{k}" / "run.json").read_text())["state"] for k in range(4)} == {"stopped"}
    record = ckpt.recover(run_dir / CHECKPOINTS)
    assert record["state"]["steps"] == 10 and [t["state"] for t in record["state"]["trials"]] == ["training"] * 4
    assert [o["status"] for o in run_array(_cfgs(root, dtype), run_dir=run_dir)] == ["finished"] * 4
    _same_as_lone(root, ref, ["t0", "t1", "t2", "t3"])


class CancellingRun(ArrayRun):
    """Trial 1 is cancelled while trial 0 ends epoch 1 (another thread could do the same)."""

    def _on_epoch(self, r, record):
        super()._on_epoch(r, record)
        if r.index == 0 and record["epoch"] == 1:
            self.stop_trial(1, "cancel")


def test_one_trial_stops_and_the_others_train_on(tmp_path, lone):
    """stop_trial(1): trial 1's run dir ends "stopped" with its stop checkpoint, as a lone job's
    cancel ends it, and it is stepped no more; the others end as alone. Run again, the array
    (resumed from its last checkpoint) keeps trial 1 cancelled."""
    dtype, ref = lone
    root, run_dir = tmp_path / "trials", tmp_path / "array"
    run = CancellingRun(_cfgs(root, dtype), run_dir=run_dir)
    outcomes = run.run()
    assert [o["status"] for o in outcomes] == ["finished", "cancelled", "finished", "finished"]
    assert outcomes[1]["error"] == "stopped on cancel"
    assert run.array.results[1].trainer.steps == 5  # its epoch 1, then no step more
    one = json.loads((root / "t1" / "run.json").read_text())
    assert (one["state"], one["message"], one["epochs"]) == ("stopped", "stopped on cancel", 1)
    assert [p.name for p in ckpt.list_checkpoints(root / "t1" / "checkpoints")][0] == "ckpt-000000005.json"
    assert not (root / "t1" / "model-final.npz").exists()
    _same_as_lone(root, ref, ["t0", "t2", "t3"])
    record = ckpt.recover(run_dir / CHECKPOINTS)
    assert [t["state"] for t in record["state"]["trials"]][1] == "cancelled"
    assert record["state"]["trials"][1]["steps"] == 5
    again = run_array(_cfgs(root, dtype), run_dir=run_dir)
    assert [o["status"] for o in again] == ["finished", "cancelled", "finished", "finished"]
    _same_as_lone(root, ref, ["t0", "t2", "t3"])


def test_the_worker_stops_a_trial_named_in_stop_trials_json(tmp_path, capsys):
    """request_trial_stop (what a service calls) before or while the array worker runs: that
    trial ends cancelled at once, the others finish."""
    cfgs = _cfgs(tmp_path / "trials", "float64", epochs=2)
    run_dir = tmp_path / "array"
    run_dir.mkdir()
    worker.request_trial_stop(run_dir, 2, "cancel")
    worker.request_trial_stop(run_dir, 2, "again")  # a second request changes nothing
    with pytest.raises(ConfigError, match="trial"):
        worker.request_trial_stop(run_dir, -1)
    launch = {"job_id": "array-t0-4", "run_dir": str(run_dir), "config": {"array": [c.to_dict() for c in cfgs]}}
    code, reason, result, _ = worker._run_array(launch, str(run_dir / "launch.json"), None)
    assert (code, reason) == (0, None)
    assert [o["status"] for o in result["array"]] == ["finished", "finished", "cancelled", "finished"]
    run = json.loads((tmp_path / "trials" / "t2" / "run.json").read_text())
    assert (run["state"], run["message"], run["epochs"]) == ("stopped", "stopped on cancel", 0)
    events = [json.loads(x)["event"] for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert "cancelled" in events and "checkpoint" in events  # the array's own log: the worker's stdout


SWEEP = """
[base]
name = "k"
seed = 0
device = "cpu"
[base.model]
layers = [64, 32, 10]
dtype = "float64"
[base.optimizer]
name = "adam"
[base.training]
batch_size = 16
epochs = 6
fused = false  # the NumPy step: a worker without numba starts with less CPU (the grouped kernels: above)
[base.checkpoint]
every_steps = 25
[base.data]
dataset = "digits"
[search]
method = "grid"
[space]
lr = [0.001, 0.01, 0.1]
"""


def _kill_when_past(progress, step: int, killed: list, done: threading.Event) -> None:
    """kill -9 the array's worker once its progress says a checkpoint past `step` is written."""
    while not done.is_set():
        p = worker.read_json(progress) or {}
        if (p.get("checkpoint_step") or 0) >= step:
            with contextlib.suppress(ProcessLookupError):  # ended already: `killed` stays empty, the test says so
                os.kill(p["pid"], signal.SIGKILL)
                killed.append(p["checkpoint_step"])
            return
        time.sleep(0.002)


@pytest.mark.slow  # two worker processes start: the killed one and its retry
def test_a_killed_array_worker_is_retried_and_every_trial_ends_as_alone(tmp_path):
    """A real sweep: its 3 trials are one array in one worker process; kill -9 once the array's
    checkpoint past step 100 (epoch 2 of 6) is on disk; the scheduler retries the array, which
    resumes from that checkpoint, and every trial ends bit-identical to its lone job."""
    p = tmp_path / "s.toml"
    p.write_text(SWEEP)
    sweep = sp.load_sweep(p)
    ref = tmp_path / "lone"
    # the lone runs without interval checkpoints (they change no bit of training; they cost fsyncs)
    p.write_text(SWEEP.replace("every_steps = 25", "every_steps = 0"))
    sw.run_sweep(sp.load_sweep(p), output_dir=ref, budget=2**30, log=lambda line: None, fuse=False)
    out, logs, killed = tmp_path / "fused", [], []
    plans = sw.plan_trials(sweep, sp.expand(sweep), output_dir=out, budget=2**30, device_kind="cpu")
    task = fuse.array_task_id(plans)
    array_dir = out / fuse.ARRAYS / task
    done = threading.Event()
    watcher = threading.Thread(target=_kill_when_past, args=(array_dir / worker.PROGRESS, 100, killed, done))
    watcher.start()
    try:
        sw.run_sweep(sweep, output_dir=out, budget=2**30, workers=2, log=logs.append)
    finally:
        done.set()
        watcher.join()
    assert killed, "the worker was never seen past step 100"
    text = "\n".join(logs)
    assert f"retry     {task}: " in text and "attempt 2 of 2" in text, text
    assert "the array's 3 trials resume from its newest checkpoint" in text, text
    events = [json.loads(x) for x in (array_dir / "log.jsonl").read_text().splitlines() if x.startswith("{")]
    resumed = [e for e in events if e["event"] == "resume"]
    assert len(resumed) == 1 and 100 <= resumed[0]["step"] < 6 * 72  # mid-training: 72 steps an epoch
    names = sorted(x.name for x in (ref / "trials").iterdir())
    assert len(names) == 3
    _same_as_lone(out / "trials", ref / "trials", names)
    got, want = ({r["trial"]: r for r in map(json.loads, (d / "results.jsonl").read_text().splitlines())}
                 for d in (out, ref))
    assert {t: {k: v for k, v in r.items() if k not in RUN_CLOCKS | {"base"}} for t, r in got.items()} == {
        t: {k: v for k, v in r.items() if k not in RUN_CLOCKS | {"base"}} for t, r in want.items()}
