"""The job store's safety net: each job's own record in its dir, a rolling backup of the
store, a start-up check that a missing store is not taken for a fresh start, and
`memtrain serve --recover`.

- `write_job_file`: at submission, before its row, the job's row as submitted goes to
  `<run dir>/job.json`, so every job the store ever held can be found from the disk alone.
- `backup`: the store copied with SQLite's online backup API to `memtrain.sqlite.backup`
  (replaced atomically); the housekeeper calls it at start, every round while the store
  changes, and at stop.
- `check_not_lost`: a store that is missing or empty while job dirs or a backup exist is
  refused in one line naming the recovery, instead of starting empty (silent loss).
- `recover`: keeps a store that passes its integrity check; else sets it aside
  (`memtrain.sqlite.damaged-<time>`) and restores the backup when that passes the check;
  then adds every job found only in the job
  dirs, its state read from its exit record (no record: queued, to resume from its
  checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

from memtrain.launch.worker import EXIT, read_json
from memtrain.scheduling.store import Store, StoreDamaged, now
from memtrain.train.checkpoint import atomic_write

STORE, BACKUP, JOB_FILE = "memtrain.sqlite", "memtrain.sqlite.backup", "job.json"
SWEEP_FILE = "sweep.json"  # in each of a sweep's job dirs: the sweep's record, for --recover

log = logging.getLogger("memtrain.service")


def write_job_file(row: dict) -> None:
    run_dir = Path(row["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    data = json.dumps(row, default=str).encode()
    atomic_write(run_dir / JOB_FILE, lambda f: f.write(data))  # a full disk leaves no temporary behind


def write_sweep_file(row: dict, sweep: dict) -> None:
    """The sweep's record beside its job's record: --recover rebuilds the sweep from any of its job dirs."""
    data = json.dumps(sweep, default=str).encode()
    atomic_write(Path(row["run_dir"]) / SWEEP_FILE, lambda f: f.write(data))


def remove_job_file(row: dict) -> None:
    run_dir = Path(row["run_dir"])
    (run_dir / SWEEP_FILE).unlink(missing_ok=True)
    (run_dir / JOB_FILE).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        run_dir.rmdir()  # only when empty


def job_dirs(storage) -> list:
    jobs = Path(storage) / "jobs"
    if not jobs.is_dir():
        return []
    return sorted(d for d in jobs.iterdir() if (d / JOB_FILE).is_file() or (d / "launch.json").is_file())


def check_not_lost(state_dir, storage) -> None:
    store, backup = Path(state_dir) / STORE, Path(state_dir) / BACKUP
    if store.exists() and store.stat().st_size > 0:
        return
    dirs = job_dirs(storage)
    if not dirs and not backup.exists():
        return  # a new state dir
    what = "missing" if not store.exists() else "empty (0 bytes)"
    also = " and a backup of it" if backup.exists() else ""
    raise StoreDamaged(f"{store}: the job store is {what}, but {len(dirs)} job dir(s){also} are there; starting "
                       f"empty would lose them: `memtrain serve --state-dir {state_dir} --recover` rebuilds it")


def backup(store: Store, dest, done_at: int | None) -> int | None:
    """Copy the store to `dest` unless nothing changed since the copy at `done_at` (a change count);
    returns the new count (the old one when the copy failed: a full disk, tried again next round)."""
    changes = store.changes()
    dest = Path(dest)
    if changes == done_at and dest.exists():
        return done_at
    try:
        store.backup(dest)
    except Exception as exc:  # the store itself goes on
        log.warning("store backup to %s failed: %s", dest, exc)
        return done_at
    return changes


def recover(state_dir, storage) -> list:
    """Rebuild the store of `state_dir` (run with the state dir's lock held, before the Store is
    opened); returns what was done, one line each."""
    state_dir = Path(state_dir)
    store, backup = state_dir / STORE, state_dir / BACKUP
    if _healthy(store):  # --recover on a good store: kept (the backup may be older), only missing jobs added
        said = ["the store passes its integrity check: kept"]
    else:
        said = _set_aside(store) + _restore(store, backup)
    db = Store(store)
    try:
        said += _rebuild(db, storage)
    finally:
        db.close()
    return said


def _healthy(store: Path) -> bool:
    if not store.exists() or store.stat().st_size == 0:
        return False
    try:
        Store(store).close()
    except StoreDamaged:
        return False
    return True


def _restore(store: Path, backup: Path) -> list:
    said = []
    if backup.exists():
        shutil.copyfile(backup, store)
        try:
            Store(store).close()  # its integrity check
            said.append(f"restored the backup of {_when(backup)}")
        except StoreDamaged as exc:
            said += _set_aside(store) + [f"the backup is damaged too ({exc}); rebuilding from the job dirs alone"]
    return said


def _set_aside(store: Path) -> list:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    said = []
    for p in (store, store.with_name(store.name + "-wal"), store.with_name(store.name + "-shm")):
        if p.exists():
            target = p.with_name(f"{p.name}.damaged-{stamp}")
            os.replace(p, target)
            said.append(f"set {p.name} aside as {target.name}")
    return said


def _rebuild(db: Store, storage) -> list:
    known = {j.id for j in db.list()}
    damaged = {job_id for job_id, _ in db.bad_rows.values()}
    added, skipped = [], []
    for d in job_dirs(storage):
        row = read_json(d / JOB_FILE)
        if row is None or not isinstance(row, dict) or "id" not in row:
            skipped.append(d.name)
            continue
        if row["id"] in known:
            continue
        if row["id"] in damaged:  # its row is there but unreadable: replaced by the rebuilt one
            db.delete(row["id"])
        db.insert(_rebuilt(row, d))
        added.append(row["id"])
    said = [f"rebuilt {len(added)} job(s) from their job dirs" + (f": {', '.join(added)}" if added else "")]
    if skipped:
        said.append(f"could not rebuild {len(skipped)} job dir(s) without a readable {JOB_FILE} (written by an "
                    f"older memtrain, or damaged): {', '.join(skipped)}")
    return said + _rebuild_sweeps(db, storage)


def _rebuild_sweeps(db: Store, storage) -> list:
    """The sweeps (POST /sweeps) missing from the store, from the record each of their job dirs holds."""
    added = []
    for d in job_dirs(storage):
        sweep = read_json(d / SWEEP_FILE)
        # a record of another shape (hand-edited, torn) is not a sweep: its jobs are rebuilt without it
        if (isinstance(sweep, dict) and all(k in sweep for k in ("name", "user", "submitted_at", "record"))
                and isinstance(sweep.get("id"), str) and sweep["id"] not in added and db.sweep(sweep["id"]) is None):
            db.insert_sweep(sweep, [])
            added.append(sweep["id"])
    return [f"rebuilt {len(added)} sweep(s) from their job dirs: {', '.join(added)}"] if added else []


def _rebuilt(row: dict, run_dir: Path) -> dict:
    """The submitted row in the state its exit record says (none: queued, resuming from its checkpoint)."""
    row = {**row, "state": "queued", "queued_at": now(), "run_dir": str(run_dir),
           "reason": "rebuilt by --recover from its job dir; resumes from its checkpoint"}
    ended = read_json(run_dir / EXIT)
    if not isinstance(ended, dict):
        return row
    result = ended.get("result") if isinstance(ended.get("result"), dict) else None
    row["ended_at"] = (run_dir / EXIT).stat().st_mtime
    if ended.get("code") == 0 and result and not result.get("stopped"):
        row.update(state="succeeded", result=result, reason=None)
    elif ended.get("code") == 0:
        row.update(state="cancelled", reason="stopped (checkpoint saved); rebuilt by --recover: `memtrain requeue` "
                                             "resumes it")
    else:
        row.update(state="failed", reason=f"{ended.get('reason') or 'failed'} (rebuilt by --recover)")
    return row


def _when(path: Path) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(path.stat().st_mtime)) + " (local time)"
