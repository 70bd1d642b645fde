"""What a checkpoint failure says, word for word: the line a user acts on (resume after freeing
space, which checkpoint was set aside and why, what differs from the running job). Each one is
the whole message, so a change to any part of it is a failure (tests/test_checkpoint.py checks
the behaviour; these run in milliseconds, for mutation testing of memtrain/train/checkpoint.py)."""

import errno
import json
import os

import numpy as np
import pytest

from memtrain.train import checkpoint as ckpt

IDENTITY = {"model": "20-8-4", "optimizer": "adam(lr=0.01)", "batch_size": 16, "dtype": "float32"}


def save(d, step, **kw):
    arrays = {"params": np.arange(6, dtype=np.float32) + step, "opt.m": np.zeros(6, np.float32)}
    state = {"steps": step, "epoch": 0, "position": step, "history": []}
    return ckpt.save(d, arrays, state, IDENTITY, **kw)


def failing_savez(err):
    def savez(f, **arrays):
        raise OSError(err, os.strerror(err))

    return savez


@pytest.mark.parametrize("err,todo", [(errno.ENOSPC, "free some space, then"), (errno.EDQUOT, "free some space, then"),
                                      (errno.EIO, "then")])
def test_a_failed_write_says_what_failed_what_is_kept_and_what_to_do(tmp_path, monkeypatch, err, todo):
    kept = save(tmp_path, 10)
    monkeypatch.setattr(ckpt.np, "savez", failing_savez(err))
    with pytest.raises(ckpt.CheckpointWriteError) as exc:
        save(tmp_path, 20)
    assert str(exc.value) == (f"checkpoint: could not write ckpt-000000020 in {tmp_path} ({os.strerror(err)}); "
                              f"the last good checkpoint is {kept}; {todo} resume with the same command")
    monkeypatch.setattr(ckpt.np, "savez", lambda f, **a: (_ for _ in ()).throw(OSError("no errno")))
    with pytest.raises(ckpt.CheckpointWriteError) as exc:
        save(tmp_path / "new", 1)
    message = str(exc.value)
    assert message.startswith(f"checkpoint: could not write ckpt-000000001 in {tmp_path / 'new'} (")
    assert message.endswith("); no checkpoint was written before this one; then resume with the same command")


def test_a_corrupt_checkpoint_warning_names_both_files_set_aside(tmp_path):
    save(tmp_path, 10)
    js = save(tmp_path, 20)
    js.with_suffix(".npz").write_bytes(b"PK")
    warnings = []
    assert ckpt.recover(tmp_path, warn=warnings.append)["state"]["steps"] == 10
    assert warnings == ["memtrain: checkpoint ckpt-000000020 is unusable (SHA-256 mismatch of its .npz: corrupt or "
                        "truncated); set aside as ckpt-000000020.json.corrupt and ckpt-000000020.npz.corrupt; falling "
                        "back to the previous checkpoint"]


def test_a_checkpoint_that_cannot_be_set_aside_is_left_in_place_and_says_why(tmp_path, monkeypatch):
    save(tmp_path, 10)
    js = save(tmp_path, 20)
    js.with_suffix(".npz").write_bytes(b"PK")
    monkeypatch.setattr(ckpt.os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only")))
    warnings = []
    ckpt.recover(tmp_path, warn=warnings.append)
    assert warnings[0].endswith("; could not be set aside (Read-only); left in place, not counted by rotation; "
                                "falling back to the previous checkpoint")


def test_set_aside_numbers_names_already_taken(tmp_path):
    p = tmp_path / "x.npz"
    for expected in ("x.npz.orphan", "x.npz.orphan.1", "x.npz.orphan.2", "x.npz.orphan.3"):
        p.write_bytes(b"1")
        assert ckpt._set_aside(p, ".orphan") == expected
    assert ckpt._set_aside(tmp_path / "missing", ".orphan") is None
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    assert ckpt._set_aside(link, ".orphan") == "dangling.orphan"  # a dangling link is moved too


def test_the_arrays_must_be_the_ones_the_sidecar_lists(tmp_path):
    js = save(tmp_path, 10)
    np.savez(js.with_suffix(".npz"), params=np.zeros(6, np.float32))
    _edit(js, lambda r: r.__setitem__("sha256", ckpt.sha256_file(js.with_suffix(".npz"))))
    record = json.loads(js.read_text())
    with pytest.raises(ckpt._Invalid) as exc:
        ckpt._load_arrays(js, record)
    assert str(exc.value) == "its .npz holds ['params'], the metadata lists ['opt.m', 'params']"
    del record["arrays"]  # an older sidecar without the list: whatever the .npz holds
    assert list(ckpt._load_arrays(js, record)) == ["params"]


def test_a_pickle_in_the_npz_is_refused_not_loaded(tmp_path):
    js = save(tmp_path, 10)
    np.savez(js.with_suffix(".npz"), params=np.array([{"evil": 1}], dtype=object), **{"opt.m": np.zeros(6)})
    with pytest.raises(ckpt._Invalid, match="its .npz is unreadable: Object arrays cannot be loaded when "
                                            "allow_pickle=False"):
        ckpt._load_arrays(js, json.loads(js.read_text()))


def test_another_jobs_checkpoint_names_what_differs(tmp_path):
    js = save(tmp_path, 10)
    ours = {**IDENTITY, "batch_size": 32, "dtype": "float64"}
    assert ckpt._mismatch(js, IDENTITY, ours) == (
        "resume: ckpt-000000010.json is from a different job (batch_size, dtype differ: checkpoint batch_size=16; "
        "dtype=float32 vs now batch_size=32; dtype=float64)")
    theirs = {**IDENTITY, "seed": 3}  # a key the running job does not have
    assert ckpt._mismatch(js, theirs, IDENTITY) == (
        "resume: ckpt-000000010.json is from a different job (seed differ: checkpoint seed=3 vs now seed=None)")
    with pytest.raises(ckpt.CheckpointError) as exc:
        ckpt.load_latest(tmp_path, ours, warn=pytest.fail)
    assert str(exc.value) == ckpt._mismatch(js, IDENTITY, ours)


def test_stale_temporaries_are_named_in_one_warning(tmp_path):
    save(tmp_path, 10)
    names = [".ckpt-000000020.npz.a1b2.tmp", ".ckpt-000000020.json.c3d4.tmp"]  # as _write_temp names them
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    warnings = []
    ckpt.recover(tmp_path, warn=warnings.append)
    assert warnings == [f"memtrain: removed 2 unfinished checkpoint temporaries left by an interrupted write in "
                        f"{tmp_path}: {', '.join(sorted(names))}"]


def test_one_stale_temporary_is_a_temporary_and_an_orphan_is_named_by_recover(tmp_path):
    save(tmp_path, 10)
    (tmp_path / ".ckpt-000000020.npz.a1b2.tmp").write_bytes(b"x")
    save(tmp_path, 30).unlink()  # its sidecar deleted: an orphan .npz
    warnings = []
    assert ckpt.recover(tmp_path, warn=warnings.append)["state"]["steps"] == 10
    assert warnings[0] == (f"memtrain: removed 1 unfinished checkpoint temporary left by an interrupted write in "
                           f"{tmp_path}: .ckpt-000000020.npz.a1b2.tmp")
    assert warnings[1].startswith("memtrain: checkpoint ckpt-000000030.npz has no ckpt-000000030.json")


def test_atomic_write_replaces_the_file_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "run.json"
    seen = []

    def write(f):
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        f.write(b"new")

    ckpt.atomic_write(target, write)
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["run.json"]
    (temp,) = seen[0]
    assert temp.startswith(".run.json.") and temp.endswith(".tmp")  # beside the file: one rename, same disk
    monkeypatch.setattr(ckpt.os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError):
        ckpt.atomic_write(target, lambda f: f.write(b"newer"))
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_a_checkpoint_keeps_three_by_default_and_its_sidecar_lists_its_arrays(tmp_path):
    for step in (1, 2, 3, 4, 5):
        js = save(tmp_path, step)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [f"ckpt-00000000{s}.json" for s in (5, 4, 3)]
    record = json.loads(js.read_text())
    assert record["arrays"] == ["opt.m", "params"] and record["npz"] == "ckpt-000000005.npz"
    assert js.read_text().startswith('{\n "format": ')  # one space per level: small, and readable with less
    assert abs(record["created"] - __import__("time").time()) < 600


def test_a_failure_after_both_renames_leaves_a_whole_checkpoint_or_none(tmp_path, monkeypatch):
    save(tmp_path, 10)
    monkeypatch.setattr(ckpt, "_fsync_dir", lambda d: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(ckpt.CheckpointWriteError):
        save(tmp_path, 20)
    monkeypatch.undo()
    assert (tmp_path / "ckpt-000000020.npz").exists() == (tmp_path / "ckpt-000000020.json").exists()


def _edit(js, change):
    """Change a field and re-seal the sidecar, so the field's own check is what refuses it."""
    record = json.loads(js.read_text())
    change(record)
    if isinstance(record, dict):
        record["checksum"] = ckpt.record_checksum(record)
    js.write_text(json.dumps(record))


def _state(key, value):
    return lambda r: r["state"].__setitem__(key, value)


REASONS = {
    "not json": (lambda js: js.write_bytes(b"{"), "its .json is unreadable: Expecting property name enclosed in "
                                                   "double quotes: line 1 column 2 (char 1)"),
    "a list": (lambda js: js.write_text("[]"), "metadata is a JSON list, expected an object"),
    "edited": (lambda js: js.write_text(js.read_text().replace('"position": 20', '"position": 3')),
               "SHA-256 mismatch of its .json: edited or torn"),
    "format": (lambda js: _edit(js, lambda r: r.__setitem__("format", 99)), f"format 99, expected {ckpt.FORMAT}"),
    "sha256": (lambda js: _edit(js, lambda r: r.__setitem__("sha256", "abc")), "metadata has no valid sha256"),
    "npz field": (lambda js: _edit(js, lambda r: r.__setitem__("npz", "../x.npz")),
                  "npz field '../x.npz' is not ckpt-000000020.npz in the checkpoint folder"),
    "identity": (lambda js: _edit(js, lambda r: r.__setitem__("identity", [])),
                 "metadata field 'identity' is missing or not an object"),
    "steps a bool": (lambda js: _edit(js, _state("epoch", True)), "state.epoch is missing or not a non-negative integer"),
    "steps negative": (lambda js: _edit(js, _state("position", -1)),
                       "state.position is missing or not a non-negative integer"),
    "steps a float": (lambda js: _edit(js, _state("epoch", 1.0)), "state.epoch is missing or not a non-negative integer"),
    "steps of another file": (lambda js: _edit(js, _state("steps", 30)), "state.steps 30 does not match the file name"),
    "history": (lambda js: _edit(js, _state("history", {})), "state.history is not a list"),
    "npz missing": (lambda js: js.with_suffix(".npz").unlink(), "its .npz is missing"),
    "npz a link": (lambda js: (js.with_suffix(".npz").unlink(), js.with_suffix(".npz").symlink_to(js)),
                   "its .npz is a symbolic link"),
}


@pytest.mark.parametrize("attack", REASONS, ids=list(REASONS))
def test_each_unusable_checkpoint_says_exactly_why(tmp_path, attack):
    save(tmp_path, 10)
    js = save(tmp_path, 20)
    spoil, reason = REASONS[attack]
    spoil(js)
    warnings = []
    assert ckpt.recover(tmp_path, warn=warnings.append)["state"]["steps"] == 10
    assert len(warnings) == 1 and f"checkpoint ckpt-000000020 is unusable ({reason}); set aside as" in warnings[0]


def test_rotation_deletes_a_sidecar_whose_npz_is_already_gone(tmp_path):
    for step in (1, 2):
        save(tmp_path, step)
    (tmp_path / "ckpt-000000001.npz").unlink()  # a crash between the two deletes of an earlier rotation
    save(tmp_path, 3, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000003.json", "ckpt-000000003.npz"]


def test_orphans_newest_first_and_only_a_newer_one_is_a_fallback(tmp_path, monkeypatch):
    for step in (1, 5, 9):
        save(tmp_path, step)
    (tmp_path / "ckpt-000000001.json").unlink()
    (tmp_path / "ckpt-000000009.json").unlink()
    warnings = []
    assert ckpt.recover(tmp_path, warn=warnings.append)["state"]["steps"] == 5
    assert warnings == [
        "memtrain: checkpoint ckpt-000000009.npz has no ckpt-000000009.json (deleted, or its write was interrupted) "
        "and cannot be verified; set aside as ckpt-000000009.npz.orphan; falling back to the previous checkpoint",
        "memtrain: checkpoint ckpt-000000001.npz has no ckpt-000000001.json (deleted, or its write was interrupted) "
        "and cannot be verified; set aside as ckpt-000000001.npz.orphan"]
    only = tmp_path / "only"
    save(only, 0).unlink()  # the only checkpoint there is, without its sidecar: newer than none
    monkeypatch.setattr(ckpt.os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only")))
    warnings.clear()
    assert ckpt.recover(only, warn=warnings.append) is None
    assert warnings == ["memtrain: checkpoint ckpt-000000000.npz has no ckpt-000000000.json (deleted, or its write "
                        "was interrupted) and cannot be verified; left in place (Read-only); falling back to the "
                        "previous checkpoint"]
