"""Checkpoints under attack: corrupt and invalid sidecars are set aside (never
counted by rotation), a deleted sidecar warns, a kill's temporaries are
removed, a full disk is one line with nothing lost, the history can stay out of
the sidecar, and a step is written once."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from memtrain.errors import ExitCode, MemtrainError
from memtrain.train import checkpoint as ckpt

IDENTITY = {"model": "20-8-4", "optimizer": "adam(lr=0.01)", "batch_size": 16, "dtype": "float32"}


def arrays(step):
    rng = np.random.default_rng(step)
    return {"params": rng.standard_normal(50).astype(np.float32), "opt.m": np.zeros(50, np.float32)}


def meta(step, epoch=None, history_rows=None):
    epoch = step // 10 if epoch is None else epoch
    rows = epoch if history_rows is None else history_rows
    return {"steps": step, "epoch": epoch, "position": step % 10, "epoch_loss": 0.0, "nonfinite_steps": 0,
            "oom_recoveries": 0, "micro_batch_size": None, "best_loss": None, "best_epoch": None, "waited": 0,
            "stopped_early": False, "seed": 0,
            "history": [{"epoch": e + 1, "train_loss": 1.0 / (e + 1), "lr": 0.01, "seconds": 0.25}
                        for e in range(rows)]}


def write(d, *steps, keep=10, **kw):
    return [ckpt.save(d, arrays(s), meta(s), IDENTITY, keep=keep, **kw) for s in steps]


def names(d):
    return sorted(p.name for p in Path(d).iterdir())


def steps_of(d):
    return [int(p.stem.split("-")[1]) for p in ckpt.list_checkpoints(d)]


def corrupt_npz(js):
    npz = js.with_suffix(".npz")
    npz.write_bytes(npz.read_bytes()[:100])  # truncated, as a kill of an old writer or a bad disk leaves it


def edit_sidecar(js, change, rechecksum=True):
    """`change` the sidecar; rechecksum: as a forger would (so the other checks are what stops it)."""
    record = change(json.loads(js.read_text()))
    if rechecksum and isinstance(record, dict):
        record["checksum"] = ckpt.record_checksum(record)
    js.write_text(json.dumps(record))


def _set(**fields):
    return lambda js: edit_sidecar(js, lambda r: {**r, "state": {**r["state"], **fields}}, rechecksum=False)


def _torn(js):
    text = js.read_text()
    js.write_text(text[: len(text) // 2] + "\n}" * 3)  # a torn write, then whatever was on disk


# -- 1. set aside what fails verification; rotation never counts it --------------------------------


def test_rotation_after_a_fallback_keeps_the_new_checkpoints(tmp_path):
    """The reported bug: the newest three are corrupt, resume falls back to step 20, and
    keep = 3 kept the corrupt 30/40/50 and deleted every new checkpoint; a crash then
    resumed from scratch."""
    write(tmp_path, 10, 20, 30, 40, 50, keep=5)
    for js in ckpt.list_checkpoints(tmp_path)[:3]:
        corrupt_npz(js)
    warnings = []
    arrays_, record = ckpt.load_latest(tmp_path, IDENTITY, warn=warnings.append)
    assert record["state"]["steps"] == 20
    assert len(warnings) == 3 and all("SHA-256 mismatch" in w and "falling back" in w for w in warnings)
    for s in (21, 22, 23, 24):  # the resumed job goes on, keep = 3
        ckpt.save(tmp_path, arrays(s), meta(s), IDENTITY, keep=3)
    assert steps_of(tmp_path) == [24, 23, 22]
    # a crash now resumes from the newest new checkpoint, not from scratch
    again = []
    found = ckpt.load_latest(tmp_path, IDENTITY, warn=again.append)
    assert found is not None and found[1]["state"]["steps"] == 24 and again == []
    np.testing.assert_array_equal(found[0]["params"], arrays(24)["params"])
    # the corrupt files are still there, set aside for a person to look at
    for s in (30, 40, 50):
        assert {f"ckpt-{s:09d}.json.corrupt", f"ckpt-{s:09d}.npz.corrupt"} <= set(names(tmp_path))


def test_rotation_never_deletes_the_checkpoint_it_was_called_for(tmp_path):
    """Even when a newer checkpoint could not be set aside (e.g. a read-only file name
    clash), the one just written and the keep-1 before it survive."""
    write(tmp_path, 90)
    write(tmp_path, 10, 20, 30, keep=2)
    assert steps_of(tmp_path) == [90, 30, 20]


def _sidecar_list(record):
    return [record]


def _no_sha(record):
    del record["sha256"]
    return record


def _outside(record):
    record["npz"] = "../../outside.npz"
    return record


def _absolute(record):
    record["npz"] = record["outside"]  # the forged file's absolute path (set by the test)
    return record


def _state_not_object(record):
    record["state"] = [1, 2]
    return record


INVALID = {
    "truncated npz": lambda js: corrupt_npz(js),
    "sidecar is not JSON": lambda js: js.write_bytes(b"\x00{not json"),
    "sidecar is a JSON list": lambda js: edit_sidecar(js, _sidecar_list),
    "sidecar without sha256": lambda js: edit_sidecar(js, _no_sha),
    "npz outside the folder": lambda js: edit_sidecar(js, _outside),
    "npz an absolute path": lambda js: edit_sidecar(js, _absolute),
    "state not an object": lambda js: edit_sidecar(js, _state_not_object),
    "npz missing": lambda js: js.with_suffix(".npz").unlink(),
    "empty sidecar": lambda js: js.write_bytes(b""),
    "position changed": _set(position=3),
    "epoch changed": _set(epoch=1),
    "best_loss changed": _set(best_loss=0.5),
    "torn sidecar": _torn,
    "checksum removed": lambda js: edit_sidecar(js, lambda r: {k: v for k, v in r.items() if k != "checksum"},
                                                rechecksum=False),
}


@pytest.mark.parametrize("attack", INVALID, ids=list(INVALID))
def test_an_invalid_checkpoint_is_set_aside_with_a_warning_and_resume_falls_back(tmp_path, attack):
    d = tmp_path / "run" / "checkpoints"
    write(d, 10, 20)
    newest = ckpt.list_checkpoints(d)[0]
    # what a forged `npz` field would point at: a valid array file with the right checksum
    outside = tmp_path / "outside.npz"
    np.savez(outside, params=np.full(50, 666, np.float32), **{"opt.m": np.zeros(50, np.float32)})
    if attack in ("npz outside the folder", "npz an absolute path"):
        edit_sidecar(newest, lambda r: {**r, "sha256": ckpt.sha256_file(outside), "outside": str(outside)})
    INVALID[attack](newest)
    if attack == "npz outside the folder":
        # `../../outside.npz` from <tmp>/run/checkpoints is <tmp>/outside.npz: the file above
        assert (d / "../../outside.npz").resolve() == outside.resolve()
    if attack == "npz an absolute path":
        assert (d / str(outside)) == outside
    warnings = []
    arrays_, record = ckpt.load_latest(d, IDENTITY, warn=warnings.append)
    assert record["state"]["steps"] == 10
    np.testing.assert_array_equal(arrays_["params"], arrays(10)["params"])
    assert len(warnings) == 1 and "ckpt-000000020" in warnings[0] and "falling back" in warnings[0]
    assert "ckpt-000000020.json.corrupt" in names(d) and "ckpt-000000020.json" not in names(d)
    if attack != "npz missing":
        assert "ckpt-000000020.npz.corrupt" in names(d)
    assert outside.exists()  # never renamed, never loaded
    assert steps_of(d) == [10]


def test_recover_sets_aside_at_start_up_and_returns_the_newest_good_record(tmp_path):
    write(tmp_path, 10, 20, 30)
    edit_sidecar(ckpt.list_checkpoints(tmp_path)[0], _sidecar_list)
    warnings = []
    record = ckpt.recover(tmp_path, warn=warnings.append)
    assert record["state"]["steps"] == 20 and record["identity"] == IDENTITY
    assert len(warnings) == 1 and "ckpt-000000030" in warnings[0] and "JSON list" in warnings[0]
    assert steps_of(tmp_path) == [20, 10]
    assert ckpt.recover(tmp_path, warn=warnings.append)["state"]["steps"] == 20 and len(warnings) == 1


def test_a_second_quarantine_of_the_same_name_does_not_overwrite_the_first(tmp_path):
    write(tmp_path, 10, 20)
    corrupt_npz(ckpt.list_checkpoints(tmp_path)[0])
    ckpt.recover(tmp_path, warn=lambda m: None)
    write(tmp_path, 20)
    corrupt_npz(ckpt.list_checkpoints(tmp_path)[0])
    ckpt.recover(tmp_path, warn=lambda m: None)
    assert {"ckpt-000000020.json.corrupt", "ckpt-000000020.json.corrupt.1",
            "ckpt-000000020.npz.corrupt", "ckpt-000000020.npz.corrupt.1"} <= set(names(tmp_path))


def test_a_checkpoint_of_another_job_is_refused_not_set_aside(tmp_path):
    write(tmp_path, 10)
    with pytest.raises(ckpt.CheckpointError, match=r"resume: ckpt-000000010.json is from a different job \(batch_size"):
        ckpt.load_latest(tmp_path, {**IDENTITY, "batch_size": 32}, warn=lambda m: None)
    assert steps_of(tmp_path) == [10]
    assert issubclass(ckpt.CheckpointError, MemtrainError)


# -- 2. a deleted sidecar warns ---------------------------------------------------------------------


def test_a_deleted_sidecar_falls_back_with_a_warning(tmp_path):
    write(tmp_path, 10, 20)
    (tmp_path / "ckpt-000000020.json").unlink()
    warnings = []
    _, record = ckpt.load_latest(tmp_path, IDENTITY, warn=warnings.append)
    assert record["state"]["steps"] == 10
    assert len(warnings) == 1 and "ckpt-000000020.npz has no ckpt-000000020.json" in warnings[0]
    assert "ckpt-000000020.npz.orphan" in names(tmp_path)
    warnings.clear()
    ckpt.load_latest(tmp_path, IDENTITY, warn=warnings.append)
    assert warnings == []  # said once, not at every resume


# -- 3. a kill during a write: its temporaries are removed at start-up --------------------------------

KILLED_WRITER = """
import os, sys
import numpy as np
from memtrain.train import checkpoint as ckpt
ckpt.save(sys.argv[1], {"params": np.ones(10, np.float32)}, {"steps": 10, "epoch": 1, "position": 0}, {})
os.replace = lambda *a, **k: os._exit(9)  # killed after both temporaries are on disk, before the renames
ckpt.save(sys.argv[1], {"params": np.ones(1000, np.float32)}, {"steps": 20, "epoch": 2, "position": 0}, {})
"""


def test_stale_temporaries_of_a_killed_write_are_removed_at_start_up_and_nothing_else(tmp_path):
    r = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 9, r.stderr
    stale = [n for n in names(tmp_path) if n.endswith(".tmp")]
    assert len(stale) == 2 and all(n.startswith((".ckpt-000000020.npz.", ".ckpt-000000020.json.")) for n in stale)
    others = [".model.npz.abc.tmp", "notes.tmp", ".ckpt-old", "ckpt-000000005.json.corrupt", ".write-test-x"]
    for n in others:
        (tmp_path / n).write_text("not ours")
    (tmp_path / ".ckpt-000000030.npz.dir.tmp").mkdir()  # a folder is never removed
    (tmp_path / ".ckpt-write-test-abc.tmp").write_text("")  # the writability probe's own name
    warnings = []
    record = ckpt.recover(tmp_path, warn=warnings.append)
    assert record["state"]["steps"] == 10
    assert not any(n.startswith(".ckpt-0000000") and n.endswith(".tmp") and n != ".ckpt-000000030.npz.dir.tmp"
                   for n in names(tmp_path))
    assert ".ckpt-write-test-abc.tmp" not in names(tmp_path)
    assert set(others) | {".ckpt-000000030.npz.dir.tmp"} <= set(names(tmp_path))
    assert len(warnings) == 1 and "removed 3 unfinished checkpoint temporaries" in warnings[0]


def test_the_writability_probe_uses_the_temporary_pattern(tmp_path):
    ckpt.check_writable(tmp_path)
    assert names(tmp_path) == []
    assert ckpt._TEMP.match(".ckpt-write-test-k2j3.tmp") and ckpt._TEMP.match(".ckpt-000000010.json.x1.tmp")
    assert not ckpt._TEMP.match(".model.npz.x1.tmp") and not ckpt._TEMP.match("ckpt-000000010.json")


# -- 4. one write per step ---------------------------------------------------------------------------


def simulate(cadence, steps_per_epoch, epochs, start=(0, 0)):
    """The job's loop as it must call the Cadence; returns the (step, epoch, reason) of each write."""
    writes = []

    def save(step, epoch, reason):
        if cadence.should_write(step, epoch):
            writes.append((step, epoch, reason))
            cadence.written(step, epoch)

    step, epoch = start
    cadence.written(*start)  # the resumed state is on disk
    for epoch in range(epoch, epochs):
        for position in range(1, steps_per_epoch + 1):
            step += 1
            if cadence.interval_due(step, last_in_epoch=position == steps_per_epoch):
                save(step, epoch, "interval")
        save(step, epoch + 1, "epoch")
    save(step, epochs, "SIGTERM")  # a stop right after the last epoch: nothing new to write
    return writes


def test_every_steps_on_an_epoch_end_writes_the_step_once():
    writes = simulate(ckpt.Cadence(every_steps=9), steps_per_epoch=27, epochs=2)
    assert [(s, r) for s, _, r in writes] == [(9, "interval"), (18, "interval"), (27, "epoch"),
                                             (36, "interval"), (45, "interval"), (54, "epoch")]
    assert len({s for s, _, _ in writes}) == len(writes)


def test_a_stop_right_after_a_resume_does_not_rewrite_it():
    c = ckpt.Cadence(every_steps=4)
    c.written(40, 1)
    assert not c.should_write(40, 1)
    assert c.should_write(40, 2)  # an interrupted last step's epoch end is new state: written
    assert c.should_write(41, 1)


def test_the_minutes_interval_counts_from_the_last_write():
    now = [100.0]
    c = ckpt.Cadence(every_seconds=60, clock=lambda: now[0])
    now[0] = 150.0
    assert not c.interval_due(5, last_in_epoch=False)
    now[0] = 161.0
    assert c.interval_due(6, last_in_epoch=False) and not c.interval_due(6, last_in_epoch=True)
    c.written(6, 0)
    assert not c.interval_due(7, last_in_epoch=False)


# -- 5. the history out of the sidecar ----------------------------------------------------------------


def test_a_checkpoint_without_history_has_a_constant_size_and_says_how_many_rows(tmp_path):
    sizes = []
    for epoch in (1, 100, 1000):
        js = ckpt.save(tmp_path, arrays(epoch), meta(epoch, epoch=epoch), IDENTITY, keep=1, history=False)
        sizes.append(js.stat().st_size)
    assert max(sizes) - min(sizes) < 16  # only the digits of the counters differ
    _, record = ckpt.load_latest(tmp_path, IDENTITY, warn=pytest.fail)
    assert "history" not in record["state"] and record["history_rows"] == 1000
    with_history = ckpt.save(tmp_path / "old", arrays(1000), meta(1000, epoch=1000), IDENTITY)
    assert with_history.stat().st_size > sizes[-1] + 1000 * 60  # what the old layout costs


def test_old_checkpoints_with_their_history_still_load(tmp_path):
    write(tmp_path, 30)  # the default keeps the old layout
    _, record = ckpt.load_latest(tmp_path, IDENTITY, warn=pytest.fail)
    assert record["state"]["history"] == meta(30)["history"] and "history_rows" not in record


# -- 6. a full disk ----------------------------------------------------------------------------------


class _FullDisk:
    """A file that takes `room` bytes, then fails as a full disk does."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, b):
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("fail_at", ["npz", "json", "fsync"])
def test_a_full_disk_is_one_line_naming_the_last_good_checkpoint_and_loses_nothing(tmp_path, monkeypatch, fail_at):
    write(tmp_path, 10, 20, keep=3)
    before = {n: (tmp_path / n).read_bytes() for n in names(tmp_path)}
    real_fdopen, real_fsync, opened = os.fdopen, os.fsync, []

    def fdopen(fd, *a, **k):
        opened.append(fd)
        f = real_fdopen(fd, *a, **k)
        if fail_at == "npz" or (fail_at == "json" and len(opened) == 2):
            return _FullDisk(f, room=64)
        return f

    def fsync(fd):
        if fail_at == "fsync":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(ckpt.os, "fdopen", fdopen)
    monkeypatch.setattr(ckpt.os, "fsync", fsync)
    with pytest.raises(ckpt.CheckpointWriteError) as info:
        ckpt.save(tmp_path, arrays(30), meta(30), IDENTITY, keep=3)
    monkeypatch.undo()
    message = str(info.value)
    assert len(message.splitlines()) == 1 and "No space left on device" in message
    assert f"the last good checkpoint is {tmp_path / 'ckpt-000000020.json'}" in message
    assert isinstance(info.value, MemtrainError) and info.value.exit_code == ExitCode.FAILURE
    assert {n: (tmp_path / n).read_bytes() for n in names(tmp_path)} == before  # no temporary, nothing changed
    assert ckpt.load_latest(tmp_path, IDENTITY, warn=pytest.fail)[1]["state"]["steps"] == 20


def test_a_full_disk_before_any_checkpoint_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt.np, "savez", lambda f, **a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
    with pytest.raises(ckpt.CheckpointWriteError, match="no checkpoint was written before this one"):
        ckpt.save(tmp_path, arrays(1), meta(1), IDENTITY)
    assert names(tmp_path) == []


def test_a_failed_rename_of_the_sidecar_takes_the_npz_back(tmp_path, monkeypatch):
    write(tmp_path, 10)
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", replace)
    with pytest.raises(ckpt.CheckpointWriteError, match="Input/output error"):
        ckpt.save(tmp_path, arrays(20), meta(20), IDENTITY)
    monkeypatch.undo()
    assert names(tmp_path) == ["ckpt-000000010.json", "ckpt-000000010.npz"]


def test_pickles_are_never_loaded(tmp_path):
    js = write(tmp_path, 10, 20)[1]
    npz = js.with_suffix(".npz")
    np.savez(npz, params=np.array([{"evil": 1}], dtype=object), **{"opt.m": np.zeros(50, np.float32)})
    edit_sidecar(js, lambda r: {**r, "sha256": ckpt.sha256_file(npz)})
    warnings = []
    assert ckpt.load_latest(tmp_path, IDENTITY, warn=warnings.append)[1]["state"]["steps"] == 10
    assert "unreadable" in warnings[0] and "ckpt-000000020.npz.corrupt" in names(tmp_path)


# -- the reported bug, end to end through `memtrain train` ----------------------------------------------

JOB = """
name = "rot"
seed = 3
device = "cpu"
[model]
layers = [20, 16, 4]
[optimizer]
name = "adam"
lr = 0.003
[training]
batch_size = 16
epochs = EPOCHS
[data]
dataset = "synthetic:classification(600, 20, 4)"
validation = 0.2
test = 0.1
standardize = false
[checkpoint]
every_steps = 4
min_interval = 0
keep = KEEP
"""


def _train(tmp_path, epochs, keep):
    job = tmp_path / f"job-{epochs}-{keep}.toml"
    job.write_text(JOB.replace("EPOCHS", str(epochs)).replace("KEEP", str(keep)))
    # in this process (click's CliRunner): the test reads the run's events and checkpoints, not the process
    from click.testing import CliRunner  # noqa: PLC0415

    from memtrain.cli import main  # noqa: PLC0415

    r = CliRunner().invoke(main, ["train", str(job), "--output-dir", str(tmp_path / "o"), "--log-format", "json"])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception  # a bug keeps its traceback
    assert r.exit_code == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_a_job_resumed_past_corrupt_checkpoints_keeps_its_new_ones(tmp_path):
    """27 steps an epoch. Run 1 (3 epochs, keep 30) leaves checkpoints up to step 81;
    everything after step 48 is corrupted. Run 2 (2 epochs, keep 3) falls back to 48 and
    trains to 54: before the fix rotation kept the corrupt 81/80/76 and deleted 48, 52
    and 54, so run 3 found nothing and started from scratch."""
    _train(tmp_path, epochs=3, keep=30)
    d = tmp_path / "o" / "checkpoints"
    bad = [p for p in ckpt.list_checkpoints(d) if int(p.stem.split("-")[1]) > 48]
    assert len(bad) == 10  # 52, 54, 56, ..., 80, 81
    for js in bad:
        corrupt_npz(js)
    events = _train(tmp_path, epochs=2, keep=3)
    assert next(e for e in events if e["event"] == "resume")["step"] == 48
    assert steps_of(d) == [54, 52, 48]
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert len(warnings) == 10 and all("set aside" in w for w in warnings)
    events = _train(tmp_path, epochs=2, keep=3)
    assert [e["step"] for e in events if e["event"] == "resume"] == [54]
    assert not any(e["event"] == "warning" for e in events)


def test_an_old_npz_without_its_sidecar_is_set_aside_without_claiming_a_fallback(tmp_path):
    write(tmp_path, 10, 20)
    (tmp_path / "ckpt-000000010.json").unlink()
    warnings = []
    assert ckpt.load_latest(tmp_path, IDENTITY, warn=warnings.append)[1]["state"]["steps"] == 20
    assert len(warnings) == 1 and "ckpt-000000010.npz has no" in warnings[0] and "falling back" not in warnings[0]
    assert "ckpt-000000010.npz.orphan" in names(tmp_path)


def test_a_checkpoint_folder_removed_while_training_is_created_again(tmp_path):
    d = tmp_path / "gone" / "checkpoints"
    write(d, 10)
    for p in d.iterdir():
        p.unlink()
    d.rmdir()
    write(d, 20)
    assert steps_of(d) == [20]


def test_a_checkpoint_of_the_format_before_the_sidecar_checksum_still_loads(tmp_path):
    js = write(tmp_path, 10)[0]
    edit_sidecar(js, lambda r: {**{k: v for k, v in r.items() if k != "checksum"},
                                "format": "memtrain.checkpoint/1"}, rechecksum=False)
    _, record = ckpt.load_latest(tmp_path, IDENTITY, warn=pytest.fail)
    assert record["state"]["steps"] == 10
