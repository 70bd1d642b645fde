"""Checkpoint behaviour that mutation testing of memtrain/train/checkpoint.py found untested
(docs/testing.md): --no-resume moving an earlier run aside (`set_aside_run`, through the Job that
calls it), the sidecar checksum's canonical form, and the file a failed write names. Milliseconds
each: a Job is built and asked to resume, never trained."""

import errno
import hashlib
import io
import json
import resource
import signal

import numpy as np
import pytest

from memtrain.config import from_dict
from memtrain.errors import ConfigError
from memtrain.train import checkpoint as ckpt
from memtrain.train.job import Job

IDENTITY = {"model": "20-8-4", "optimizer": "adam(lr=0.01)", "batch_size": 16, "dtype": "float32"}
JOB = {"name": "t", "seed": 3, "device": "cpu", "model": {"layers": [20, 8, 4]},
       "optimizer": {"name": "adam", "lr": 0.01}, "training": {"batch_size": 16, "epochs": 1},
       "data": {"dataset": "synthetic:classification(100, 20, 4)"}}


def save(d, step):
    arrays = {"params": np.arange(6, dtype=np.float32) + step, "opt.m": np.zeros(6, np.float32)}
    return ckpt.save(d, arrays, {"steps": step, "epoch": 0, "position": step, "history": []}, IDENTITY)


def earlier_run(out, ckpt_dir, *, run_json=True):
    """What a finished run leaves: its run.json, a model and a checkpoint."""
    save(ckpt_dir, 10)
    if run_json:
        (out / "run.json").write_text('{"state": "finished"}')
    (out / "model-final.npz").write_bytes(b"model")


def files(d):
    """Every file under `d`, by its path inside `d`, with its bytes."""
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*") if p.is_file()}


def start_over(out, ckpt_dir=None):
    """`memtrain train --no-resume` up to its first decision: the Job's resume() over checkpoints
    already there. Returns what it logged."""
    data = {**JOB, "output": {"dir": str(out)}, "checkpoint": {"resume": False}}
    if ckpt_dir is not None:
        data["checkpoint"]["dir"] = str(ckpt_dir)
    log = io.StringIO()
    assert Job(from_dict(data), progress=False, stream=log, install_signals=False).resume() is False
    return log.getvalue()


def aside(parent, name):
    (moved,) = [p for p in parent.iterdir() if p.name.startswith(f"{name}.earlier-")]
    return moved


def test_no_resume_moves_the_earlier_run_aside_whole_with_its_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "o"
    out.mkdir()
    earlier_run(out, out / "checkpoints")
    before = files(out)
    log = start_over(out)
    moved = aside(tmp_path, "o")
    assert f"the earlier run moved to {moved} (--no-resume: starting over)" in log
    assert files(moved) == before and "checkpoints/ckpt-000000010.npz" in before
    # the new run starts in the old one's place, with an empty (writable) checkpoint folder
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints"] and not ckpt.list_checkpoints(out / "checkpoints")


def test_checkpoints_outside_the_run_directory_are_moved_aside_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out, ck = tmp_path / "o", tmp_path / "ck"
    out.mkdir()
    earlier_run(out, ck)
    before_out, before_ck = files(out), files(ck)
    log = start_over(out, ck)
    moved_out, moved_ck = aside(tmp_path, "o"), aside(tmp_path, "ck")
    assert f"the earlier run moved to {moved_out}, {moved_ck} (--no-resume" in log
    assert files(moved_out) == before_out and files(moved_ck) == before_ck
    assert not ckpt.list_checkpoints(ck) and not (out / "run.json").exists()


def test_a_folder_that_is_not_a_run_keeps_its_files_and_only_the_checkpoints_move(tmp_path, monkeypatch):
    """No run.json: the output folder is the user's (other files in it), not a run to move whole."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "o"
    out.mkdir()
    earlier_run(out, out / "checkpoints", run_json=False)
    log = start_over(out)
    moved = aside(out, "checkpoints")
    assert f"the earlier run moved to {moved} (--no-resume" in log
    assert [p.name for p in ckpt.list_checkpoints(moved)] == ["ckpt-000000010.json"]
    assert (out / "model-final.npz").read_bytes() == b"model" and not [p for p in tmp_path.iterdir()
                                                                       if ".earlier-" in p.name]


@pytest.mark.parametrize("where", [".", "sub"], ids=["in-it", "below-it"])
def test_no_resume_never_moves_the_folder_it_runs_in_or_above(tmp_path, monkeypatch, where):
    """From inside the checkpoint folder: one line, nothing moved (the shell's folder would vanish)."""
    out, ck = tmp_path / "o", tmp_path / "ck"
    out.mkdir()
    earlier_run(out, ck, run_json=False)
    (ck / where).mkdir(exist_ok=True)
    before = files(tmp_path)
    monkeypatch.chdir(ck / where)
    with pytest.raises(ConfigError, match=r"^checkpoint\.dir: .* is the working directory or above it; "):
        start_over(out, ck)
    assert files(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["ck", "o"]


def test_the_sidecar_checksum_is_of_its_compact_key_sorted_json():
    """The canonical form, byte for byte: a sidecar written by an earlier memtrain, or checked by
    another tool, verifies only if every version hashes the same bytes."""
    record = {"npz": "ckpt-000000007.npz", "format": ckpt.FORMAT, "state": {"steps": 7, "epoch": 0},
              "checksum": "ignored"}
    canonical = b'{"format":"memtrain.checkpoint/2","npz":"ckpt-000000007.npz","state":{"epoch":0,"steps":7}}'
    assert ckpt.record_checksum(record) == hashlib.sha256(canonical).hexdigest()


def test_a_sidecar_laid_out_anew_with_the_same_content_still_verifies(tmp_path):
    """Re-indenting or re-ordering the keys (an editor, `python -m json.tool --sort-keys`) changes
    no value: the checkpoint still resumes, where an edited value is set aside (tests/test_checkpoint.py)."""
    js = save(tmp_path, 10)
    record = json.loads(js.read_text())
    js.write_text(json.dumps(record, indent=4, sort_keys=True))
    warnings = []
    assert ckpt.recover(tmp_path, warn=warnings.append) == record and warnings == []
    arrays, loaded = ckpt.load_latest(tmp_path, IDENTITY, warn=warnings.append)
    assert loaded == record and arrays["params"].tolist() == [10, 11, 12, 13, 14, 15] and warnings == []


def test_a_write_cut_short_by_a_full_disk_names_the_file_it_was_for(tmp_path):
    """A real short write (RLIMIT_FSIZE, as a full disk): Python's OSError names no file, and the job's
    one-line message (Job._write_failed) says `could not write <exc.filename>`: the file meant, not
    its temporary; the old file and no temporary are left."""
    target = tmp_path / "run.json"
    target.write_bytes(b"old")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, hard))
    try:
        with pytest.raises(OSError) as exc:
            ckpt.atomic_write(target, lambda f: f.write(b"x" * (1 << 18)))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert exc.value.errno == errno.EFBIG and exc.value.filename == str(target)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_a_failure_that_names_its_own_file_or_is_no_oserror_passes_through_unchanged(tmp_path):
    """The name is added only where there is none: a write that fails reading another file names that
    file, and an interrupt (Ctrl-C) mid-write stays an interrupt; neither leaves a temporary."""
    target, missing = tmp_path / "model.npz", tmp_path / "nowhere" / "weights.npy"
    with pytest.raises(FileNotFoundError) as exc:
        ckpt.atomic_write(target, lambda f: f.write(missing.read_bytes()))
    assert exc.value.filename == str(missing)

    def interrupted(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_write(target, interrupted)
    assert list(tmp_path.iterdir()) == []
