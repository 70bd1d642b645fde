"""Checkpoints: atomic, checksummed, never pickled.

A checkpoint is two files: `ckpt-<step>.npz` (parameters, every optimizer
slot, best weights; NumPy's format, loaded with allow_pickle=False) and
`ckpt-<step>.json` (counters, early-stopping state, the plan's identity, the
SHA-256 of the .npz, the SHA-256 of the sidecar's own other fields and, in the old
layout, the whole training history).

Writing: both files go to temporaries (`.ckpt-*.tmp`), are fsync'ed, and only
then renamed into place, the .json last: a checkpoint without its .json was
never finished. A failed write (a full disk) removes its temporaries, leaves
every earlier checkpoint as it was and raises CheckpointWriteError naming the
last good checkpoint.

Reading: a checkpoint that fails verification (unreadable or invalid .json,
checksum mismatch of the .npz or of the sidecar itself, missing or unreadable .npz, an `npz` field that is not its
own sibling file) is set aside (renamed to `*.corrupt`, with a warning) and the
previous one is tried. An .npz whose .json is missing is set aside as
`*.orphan`, also with a warning. Set-aside files are never counted or deleted
by rotation, so a fallback can never make rotation delete the new checkpoints.

How a job uses this module (see each function's docstring):
  start-up   recover(dir, warn)          stale temporaries removed, bad checkpoints
                                         set aside, the newest good record (or None)
  resume     load_latest(dir, identity, warn)
  each save  Cadence.interval_due(...) in the step callback, Cadence.epoch_due(...)
             at an epoch's end, then
             Cadence.should_write(...) -> save(...) -> Cadence.written(...)
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from memtrain.errors import CheckpointError, ExitCode

FORMAT = "memtrain.checkpoint/2"  # /2: the sidecar carries `checksum`, the SHA-256 of the rest of itself
LEGACY_FORMATS = ("memtrain.checkpoint/1",)  # read as before: the .npz checksummed, the sidecar not
_NAME = re.compile(r"^ckpt-(\d{9})\.json$")
_NPZ = re.compile(r"^ckpt-(\d{9})\.npz$")
# every temporary this module creates: `.ckpt-<step>.{npz,json}.<random>.tmp` and the
# write probe `.ckpt-write-test-<random>.tmp`; nothing else is ever removed as "stale"
_TEMP = re.compile(r"^\.ckpt-[^/]+\.tmp$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
CORRUPT, ORPHAN = ".corrupt", ".orphan"


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed (e.g. the disk is full); earlier checkpoints are intact.

    The job ran and could not go on, so this is exit status 1, not a usage error."""

    exit_code = ExitCode.FAILURE


class _Invalid(Exception):
    """A checkpoint that fails verification (internal: it is set aside, never shown as an error)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)  # makes a rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_temp(path: Path, write) -> Path:
    """`write(f)` into a fsync'ed temporary beside `path`; removed again if anything fails."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # a failed write names no file: the caller's message should
        raise
    return Path(tmp)


def atomic_write(path: Path, write, *, sync_dir: bool = True) -> None:
    """Write one file atomically: a reader sees the old file or the whole new one. sync_dir=False
    leaves the rename's durability to the caller's next atomic_write in the same directory (one
    directory fsync makes every rename made in it before durable)."""
    tmp = _write_temp(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        _fsync_dir(path.parent)


def check_creatable(directory) -> Path:
    """Whether `directory` exists writable or could be created, without creating anything
    (a job checks this first, so a bad device or data set leaves no empty run folders)."""
    d = Path(directory)
    probe = d
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise CheckpointError(f"checkpoint-dir: {directory} cannot be created ({probe} is not a directory)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise CheckpointError(f"checkpoint-dir: {directory} is not writable ({probe}: permission denied)")
    return d


def check_writable(directory) -> Path:
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=d, prefix=".ckpt-write-test-", suffix=".tmp", delete=True)
        probe.close()
    except OSError as exc:
        raise CheckpointError(f"checkpoint-dir: {directory} is not writable ({exc.strerror or exc})") from None
    return d


# -- writing ----------------------------------------------------------------------------------


def save(directory, arrays: dict, meta: dict, identity: dict, *, keep: int = 3, history: bool = True) -> Path:
    """Write one checkpoint atomically; keep the newest `keep`. Returns the .json path.

    history=False leaves `meta["history"]` out of the sidecar (it grows with every
    epoch; the run's history file holds it) and records `history_rows`, the number
    of history rows this checkpoint's state has, so the history file can be cut
    back to it on resume. Raises CheckpointWriteError (nothing of this checkpoint
    left behind, earlier ones intact) when the write fails, e.g. on a full disk."""
    d = Path(directory)
    step = int(meta["steps"])
    npz, js = d / f"ckpt-{step:09d}.npz", d / f"ckpt-{step:09d}.json"
    state = dict(meta)
    record = {"format": FORMAT, "created": time.time(), "npz": npz.name}
    if not history:
        record["history_rows"] = len(state.pop("history", ()))
    temps, renamed = [], 0
    try:
        d.mkdir(parents=True, exist_ok=True)  # checked writable at start-up; may have been removed since
        # both files complete and on disk before either is renamed: a full disk
        # fails here, before anything in place has changed
        temps.append(_write_temp(npz, lambda f: np.savez(f, **arrays)))
        record.update(sha256=sha256_file(temps[0]), identity=identity, state=state, arrays=sorted(arrays))
        record["checksum"] = record_checksum(record)
        temps.append(_write_temp(js, lambda f: f.write(json.dumps(record, indent=1).encode())))
        for tmp, final in zip(temps, (npz, js)):
            os.replace(tmp, final)
            renamed += 1
        _fsync_dir(d)
    except OSError as exc:
        for t in temps:
            t.unlink(missing_ok=True)
        if renamed == 1:  # the .npz is in place without its .json: not a checkpoint, take it back
            npz.unlink(missing_ok=True)
        raise CheckpointWriteError(_write_failure(d, js.stem, exc)) from None
    _rotate(d, step, keep)
    return js


def record_checksum(record: dict) -> str:
    """SHA-256 of the sidecar without its `checksum` field, in a canonical JSON form: with the
    .npz's own SHA-256 inside it, it covers the whole checkpoint (a changed `position` or
    `epoch` would resume a different run, silently)."""
    body = {k: v for k, v in record.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _write_failure(d: Path, name: str, exc: OSError) -> str:
    good = [p for p in list_checkpoints(d) if p.stem != name]
    last = f"the last good checkpoint is {good[0]}" if good else "no checkpoint was written before this one"
    todo = "free some space, then" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "then"
    return (f"checkpoint: could not write {name} in {d} ({exc.strerror or exc}); {last}; "
            f"{todo} resume with the same command")


def _rotate(d: Path, step: int, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints at or below `step`.

    Only finished checkpoints (`ckpt-<step>.json`) count; set-aside files are never
    counted or deleted, and neither is anything above the one just written, so
    rotation can never delete the checkpoint it was called for."""
    older = [p for p in list_checkpoints(d) if _step(p) <= step]
    for old in older[keep:]:
        try:
            # the .npz first: a crash in between leaves a .json that the next rotation
            # deletes, not an .npz that would be reported as a lost sidecar
            (d / f"{old.stem}.npz").unlink(missing_ok=True)
            old.unlink(missing_ok=True)
        except OSError:
            pass  # one checkpoint too many is harmless; failing the job over it is not


class Cadence:
    """When a job writes a checkpoint, and which writes would repeat one already on disk.

    The job calls, in its step callback,
        if cadence.interval_due(trainer.steps, last_in_epoch=trainer.position == steps_per_epoch):
            save ...
    (the last step of an epoch is never an interval checkpoint: the epoch-end one
    follows at the same step and carries the epoch's validation and early-stopping
    state, so `every_steps` landing on an epoch end writes the step once), and around
    every save (interval, epoch end, signal, failure):
        if cadence.should_write(trainer.steps, trainer.epoch):
            ckpt.save(...); cadence.written(trainer.steps, trainer.epoch)
    After a resume, `cadence.written(steps, epoch)` of the resumed state, so that a
    stop before the next step does not write the same checkpoint again.

    At an epoch's end, `epoch_due(last=...)`: an epoch-end checkpoint is written when
    `min_interval` seconds have passed since the newest checkpoint (Lightning's
    `train_time_interval`, Keras' `save_freq`), and always after the last epoch (the
    epochs ran out or early stopping ended them); a stop or a failure always writes one.
    A small model's epoch takes milliseconds, while a durable checkpoint costs several
    fsyncs: every epoch made durable was as much time as the training. A crash then
    loses at most `min_interval` seconds of epochs (plus the one in progress): the
    resume from the older checkpoint is exact, and the run's history is cut back to it."""

    def __init__(self, every_steps: int = 0, every_seconds: float = 0.0, *, min_interval: float = 0.0,
                 clock=time.monotonic):
        self.every_steps, self.every_seconds, self._clock = int(every_steps or 0), float(every_seconds or 0), clock
        self.min_interval = float(min_interval or 0)
        self.last: tuple | None = None  # (steps, epoch) of the newest checkpoint on disk
        self._since = clock()

    def interval_due(self, step: int, *, last_in_epoch: bool) -> bool:
        return not last_in_epoch and self._interval(step)

    def epoch_due(self, step: int, *, last: bool) -> bool:
        """At an epoch's end: the last epoch, `min_interval` seconds since the newest checkpoint, or
        an interval (`every_steps`, `every_seconds`) that ends at this step."""
        elapsed = self._clock() - self._since
        return last or self.min_interval <= 0 or elapsed >= self.min_interval or self._interval(step)

    def _interval(self, step: int) -> bool:
        by_steps = self.every_steps > 0 and step % self.every_steps == 0
        by_time = self.every_seconds > 0 and self._clock() - self._since >= self.every_seconds
        return by_steps or by_time

    def should_write(self, step: int, epoch: int) -> bool:
        """False when the newest checkpoint already holds this state (same step and epoch)."""
        return self.last != (int(step), int(epoch))

    def written(self, step: int, epoch: int) -> None:
        self.last = (int(step), int(epoch))
        self._since = self._clock()


# -- reading ----------------------------------------------------------------------------------


def list_checkpoints(directory) -> list:
    """Finished checkpoints (their .json files), newest first; set-aside ones are not listed."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def _step(js: Path) -> int:
    return int(_NAME.match(js.name).group(1))


def remove_stale_temporaries(directory) -> list:
    """Remove the temporaries a kill during a write left behind; returns their names.

    Only this module's own `.ckpt-*.tmp` files (regular files) are touched. Call it at
    start-up, before the job writes anything: a temporary another process is still
    writing would be removed too, so the directory must belong to this job."""
    d = Path(directory)
    if not d.is_dir():
        return []
    removed = []
    for p in sorted(d.iterdir()):
        if _TEMP.match(p.name) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def _set_aside(path: Path, suffix: str) -> str | None:
    """Rename `path` to `path<suffix>` (or `<suffix>.N` when taken); the new name, or None."""
    if not path.exists() and not path.is_symlink():
        return None
    target, n = path.with_name(path.name + suffix), 1
    while target.exists() or target.is_symlink():
        target, n = path.with_name(f"{path.name}{suffix}.{n}"), n + 1
    os.replace(path, target)
    return target.name


def set_aside_run(out_dir, ckpt_dir, suffix: str) -> list:
    """Rename an earlier run's directories to NAME<suffix> (a fresh run then starts in their
    place): the run directory when it is one (it has run.json), and the checkpoint directory
    unless it lies inside it. The working directory and its parents are never moved ([] when
    nothing could be). Returns the new paths."""
    out, ck = Path(out_dir), Path(ckpt_dir)
    cwd = Path.cwd().resolve()

    def movable(d: Path) -> bool:
        r = d.resolve()
        return r != cwd and r not in cwd.parents

    dirs = [out] if (out / "run.json").exists() and movable(out) else []
    if not dirs or not ck.resolve().is_relative_to(out.resolve()):
        if not movable(ck):
            return []
        dirs.append(ck)
    return [d.with_name(_set_aside(d, suffix)) for d in dirs]


def _quarantine(js: Path, reason: str, warn) -> None:
    names = []
    try:
        for p in (js, js.with_name(f"{js.stem}.npz")):
            new = _set_aside(p, CORRUPT)
            if new:
                names.append(new)
        where = f"set aside as {' and '.join(names)}"
    except OSError as exc:
        where = f"could not be set aside ({exc.strerror or exc}); left in place, not counted by rotation"
    warn(f"memtrain: checkpoint {js.stem} is unusable ({reason}); {where}; falling back to the previous checkpoint")


def _set_aside_orphans(d: Path, warn) -> None:
    """An .npz without its .json: a deleted sidecar or a write interrupted between the renames."""
    finished = list_checkpoints(d)
    newest = _step(finished[0]) if finished else -1
    for p in sorted(d.iterdir(), reverse=True):
        if _NPZ.match(p.name) and not (d / f"{p.stem}.json").exists():
            try:
                where = f"set aside as {_set_aside(p, ORPHAN)}"
            except OSError as exc:
                where = f"left in place ({exc.strerror or exc})"
            lost = "; falling back to the previous checkpoint" if int(_NPZ.match(p.name).group(1)) > newest else ""
            warn(f"memtrain: checkpoint {p.name} has no {p.stem}.json (deleted, or its write was interrupted) "
                 f"and cannot be verified; {where}{lost}")


def _record(js: Path) -> dict:
    """The sidecar, checked field by field (it is read before anything trusts it)."""
    try:
        record = json.loads(js.read_bytes())
    except (OSError, ValueError) as exc:
        raise _Invalid(f"its .json is unreadable: {exc}") from None
    if not isinstance(record, dict):
        raise _Invalid(f"metadata is a JSON {type(record).__name__}, expected an object")
    if record.get("format") not in (FORMAT, *LEGACY_FORMATS):
        raise _Invalid(f"format {record.get('format')!r}, expected {FORMAT}")
    if record["format"] == FORMAT and record.get("checksum") != record_checksum(record):
        raise _Invalid("SHA-256 mismatch of its .json: edited or torn")
    if not isinstance(record.get("sha256"), str) or not _SHA256.match(record["sha256"]):
        raise _Invalid("metadata has no valid sha256")
    if record.get("npz") != f"{js.stem}.npz":  # its own sibling: never a path elsewhere
        raise _Invalid(f"npz field {record.get('npz')!r} is not {js.stem}.npz in the checkpoint folder")
    for key in ("identity", "state"):
        if not isinstance(record.get(key), dict):
            raise _Invalid(f"metadata field {key!r} is missing or not an object")
    state = record["state"]
    for key in ("steps", "epoch", "position"):
        if isinstance(state.get(key), bool) or not isinstance(state.get(key), int) or state[key] < 0:
            raise _Invalid(f"state.{key} is missing or not a non-negative integer")
    if state["steps"] != _step(js):
        raise _Invalid(f"state.steps {state['steps']} does not match the file name")
    if "history" in state and not isinstance(state["history"], list):
        raise _Invalid("state.history is not a list")
    return record


def _npz_path(js: Path) -> Path:
    npz = js.with_name(f"{js.stem}.npz")
    if npz.is_symlink() or not npz.is_file():
        raise _Invalid("its .npz is missing" if not npz.is_symlink() else "its .npz is a symbolic link")
    return npz


def _verify(js: Path) -> dict:
    record = _record(js)
    if sha256_file(_npz_path(js)) != record["sha256"]:
        raise _Invalid("SHA-256 mismatch of its .npz: corrupt or truncated")
    return record


def _load_arrays(js: Path, record: dict) -> dict:
    npz = _npz_path(js)
    try:
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise _Invalid(f"its .npz is unreadable: {exc}") from None
    if "arrays" in record and sorted(arrays) != record["arrays"]:
        raise _Invalid(f"its .npz holds {sorted(arrays)}, the metadata lists {record['arrays']}")
    return arrays


def recover(directory, warn=print) -> dict | None:
    """Start-up, before anything reads or writes checkpoints: the newest good record.

    Removes stale temporaries (one warning naming them), sets aside every .npz without
    its .json and every newer checkpoint that fails verification (each with a warning),
    and returns the sidecar record of the newest checkpoint that verifies (its
    `identity`, `state`, ...), or None. Arrays are not loaded: load_latest does that."""
    d = Path(directory)
    stale = remove_stale_temporaries(d)
    if stale:
        warn(f"memtrain: removed {len(stale)} unfinished checkpoint temporar{'y' if len(stale) == 1 else 'ies'} "
             f"left by an interrupted write in {d}: {', '.join(stale)}")
    if not d.is_dir():
        return None
    _set_aside_orphans(d, warn)
    for js in list_checkpoints(d):
        try:
            return _verify(js)
        except _Invalid as exc:
            _quarantine(js, str(exc), warn)
    return None


def load_latest(directory, identity: dict, warn=print):
    """(arrays, record) of the newest intact checkpoint, or None if there is none.

    A checkpoint from a different model, optimizer, dtype or batch is refused with a
    clear error (resuming it would silently train something else); one that fails
    verification is set aside with a warning and the previous one is tried.
    record["state"] has no "history" when it was saved with history=False: the
    caller then restores the first record["history_rows"] rows of the run's history."""
    d = Path(directory)
    if d.is_dir():
        _set_aside_orphans(d, warn)
    for js in list_checkpoints(d):
        try:
            record = _verify(js)
            if record["identity"] != identity:
                raise CheckpointError(_mismatch(js, record["identity"], identity))
            return _load_arrays(js, record), record
        except _Invalid as exc:
            _quarantine(js, str(exc), warn)
    return None


def _mismatch(js: Path, theirs: dict, ours: dict) -> str:
    diff = [k for k in ours if theirs.get(k) != ours[k]] or sorted(set(theirs) - set(ours))
    return (f"resume: {js.name} is from a different job ({', '.join(diff)} differ: checkpoint "
            + "; ".join(f"{k}={theirs.get(k)}" for k in diff)
            + " vs now " + "; ".join(f"{k}={ours.get(k)}" for k in diff) + ")")
