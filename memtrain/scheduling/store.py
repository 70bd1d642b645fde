"""All of the service's state: one SQLite file (WAL) under the state dir.

Nothing lives only in memory: a job's config, plan, state, handle (executor name and
ref) and outcome are rows here, so a restarted service finds every job again. One
connection guarded by a lock (the scheduler thread and the HTTP handlers share it);
every write is one explicit transaction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from memtrain.errors import DiskFull, MemtrainError

log = logging.getLogger("memtrain.service")

SCHEMA_VERSION = 1
STATES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    config TEXT NOT NULL,            -- the validated job config (JSON)
    checked TEXT NOT NULL,           -- what planning needs to re-plan it (JSON)
    device_kind TEXT NOT NULL,       -- cpu | cuda: what it was planned for
    batch_request TEXT NOT NULL,     -- "auto" or the fixed batch (JSON)
    batch_size INTEGER,              -- the batch it runs with (set at start for auto)
    planned TEXT NOT NULL,           -- bytes by category at batch_size (JSON)
    planned_bytes INTEGER NOT NULL,  -- total of `planned`
    min_bytes INTEGER NOT NULL,      -- plan at batch 1 (what an auto job needs at least)
    reserved_bytes INTEGER NOT NULL DEFAULT 0,  -- plan + process overhead while running
    device TEXT,
    threads INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    submitted_at REAL NOT NULL,
    queued_at REAL NOT NULL,         -- when it (re-)entered the queue: the head-wait clock
    started_at REAL,
    ended_at REAL,
    reason TEXT,
    result TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    executor TEXT,
    ref TEXT,
    metrics_target TEXT,
    run_dir TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
CREATE TABLE IF NOT EXISTS sweeps (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    name TEXT NOT NULL,
    record TEXT NOT NULL,            -- the sweep file (base inline), its trials and their jobs (JSON)
    user TEXT NOT NULL,
    submitted_at REAL NOT NULL
);
"""
# columns added since schema version 1, added in place to a state dir that lacks them (an older
# memtrain ignores them)
ADDED_COLUMNS = {
    "priority": "INTEGER NOT NULL DEFAULT 0",  # higher starts first; FIFO within a priority
    "user": "TEXT NOT NULL DEFAULT 'default'",  # whose token submitted it (its quota)
    "sweep": "TEXT",  # the sweep (POST /sweeps) it runs trials of; NULL for a job file's job
    "trials": "INTEGER",  # how many of that sweep's trials it runs (K for a trial array, 1 alone)
    "rev": "INTEGER NOT NULL DEFAULT 0",  # +1 at every update: a page reads (seq, rev) and fetches changed rows only
    "final_progress": "TEXT",  # the progress record as the job ended (JSON): views do not read its file again
}
# a page's (seq, rev) from an index alone: the rows themselves (3 KB of JSON each) are read only when changed
PAGE_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_seq_rev ON jobs(seq, rev);
CREATE INDEX IF NOT EXISTS jobs_state_rev ON jobs(state, seq, rev);
"""

JSON_FIELDS = ("config", "checked", "planned", "result", "batch_request", "final_progress")
LAZY = ("config", "checked")  # the largest JSON, which a job's view never reads: decoded when first read


@dataclass(frozen=True)
class JobRow:
    """One stored job, as the columns above say (read only: Store.update writes). `config` (the
    validated job config) and `checked` (what planning re-plans it from) are decoded when first
    read: a page of views never reads them."""

    seq: int
    id: str
    name: str
    state: str
    config_json: str
    checked_json: str
    device_kind: str
    batch_request: int | str
    batch_size: int | None
    planned: dict
    planned_bytes: int
    min_bytes: int
    reserved_bytes: int
    device: str | None
    threads: int | None
    attempts: int
    max_attempts: int
    submitted_at: float
    queued_at: float
    started_at: float | None
    ended_at: float | None
    reason: str | None
    result: dict | None
    cancel_requested: int
    executor: str | None
    ref: str | None
    metrics_target: str | None
    run_dir: str
    priority: int = 0
    user: str = "default"
    sweep: str | None = None
    trials: int | None = None
    rev: int = 0
    final_progress: dict | None = None

    @cached_property
    def config(self) -> dict:
        return json.loads(self.config_json)

    @cached_property
    def checked(self) -> dict:
        return json.loads(self.checked_json)

    def columns(self) -> dict:
        """The row as Store.insert takes it (a copy of a job: bench/service_load.py)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "seq"}
        for k in LAZY:
            out[k] = getattr(self, k)
            del out[f"{k}_json"]
        return out

    def replace(self, **fields) -> "JobRow":
        """A copy with `fields` changed (what an event names, e.g. the device it starts on)."""
        return dataclasses.replace(self, **fields)


class StoreDamaged(MemtrainError):
    """The SQLite file fails its integrity check: the service refuses to start (one line naming
    `memtrain serve --recover`) rather than run on, or over, a damaged history."""


class Store:
    ROWS_KEPT = 4096  # decoded rows kept for pages; past it, the longest kept go first

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.bad_rows: dict = {}  # seq -> (job id, why): rows whose JSON does not decode, skipped by every read
        self.version = 0  # +1 per committed write: cached views are valid while it stands (one writer: this process)
        self._rows: dict = {}  # seq -> (rev, JobRow): a page's rows, decoded (page)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        try:
            self._open()
        except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
            self._db.close()
            raise StoreDamaged(damaged_message(self.path, str(exc))) from None
        self.list()  # every row read once: damaged ones are logged and counted now, not at their first read

    def _open(self) -> None:
        check = self._db.execute("PRAGMA quick_check").fetchall()
        if [tuple(r) for r in check] != [("ok",)]:
            self._db.close()
            raise StoreDamaged(damaged_message(self.path, "quick_check: " + "; ".join(str(r[0]) for r in check[:3])))
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)  # IF NOT EXISTS: a no-op on an existing state dir
        with self.transaction() as db:
            row = db.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                raise MemtrainError(f"{self.path}: schema version {row[0]}, this memtrain reads {SCHEMA_VERSION}")
            have = {r[1] for r in db.execute("PRAGMA table_info(jobs)")}
            for name, decl in ADDED_COLUMNS.items():
                if name not in have:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")
            db.execute("CREATE INDEX IF NOT EXISTS jobs_sweep ON jobs(sweep)")  # GET /sweeps/ID: its jobs
            for sql in filter(str.strip, PAGE_INDEXES.split(";")):
                db.execute(sql)

    def backup(self, dest) -> None:
        """A consistent copy of the whole store at `dest` (SQLite's online backup API: writers wait
        only for the copy), replaced atomically: a crash leaves the previous backup whole."""
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.tmp")
        tmp.unlink(missing_ok=True)
        out = sqlite3.connect(str(tmp))
        try:
            with self._lock:
                self._db.backup(out)
        finally:
            out.close()
        os.replace(tmp, dest)

    def changes(self) -> int:
        """Rows changed through this connection so far (a backup is due when it moved)."""
        with self._lock:
            return self._db.total_changes

    @contextmanager
    def transaction(self):
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                self.version += 1
            except sqlite3.OperationalError as exc:
                if "full" not in str(exc):  # SQLITE_FULL: "database or disk is full"
                    raise
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")  # the failed COMMIT may leave the transaction open
                raise DiskFull(f"state dir: {self.path.parent} is full ({exc}); nothing was written: free some "
                               "space and submit again (the jobs already stored are intact)") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writes ---------------------------------------------------------------------------

    def insert(self, job: dict) -> JobRow:
        """`job` holds the columns above except seq (a new job's, by name); returns the stored row."""
        with self.transaction() as db:
            _insert_job(db, job)
        return self.get(job["id"])

    def insert_sweep(self, sweep: dict, jobs: list) -> None:
        """A sweep's record and the rows of its jobs (arrays and lone trials), in one transaction:
        a sweep is stored whole or not at all."""
        with self.transaction() as db:
            db.execute("INSERT INTO sweeps (id, name, record, user, submitted_at) VALUES (?, ?, ?, ?, ?)",
                       (sweep["id"], sweep["name"], json.dumps(sweep["record"]), sweep["user"], sweep["submitted_at"]))
            for job in jobs:
                _insert_job(db, job)

    def sweep(self, sweep_id: str) -> dict | None:
        """A sweep's stored record (with its id, name, user and submitted_at), or None."""
        with self._lock:
            row = self._db.execute("SELECT * FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
        if row is None:
            return None
        return {**json.loads(row["record"]), "id": row["id"], "name": row["name"], "user": row["user"],
                "submitted_at": row["submitted_at"]}

    def sweep_jobs(self, sweep_id: str) -> list:
        """The rows of a sweep's jobs, in submission order."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE sweep = ? ORDER BY seq", (sweep_id,)).fetchall()
        return [job for job in map(self._decode, rows) if job is not None]

    def update(self, job_id: str, *, expect_state: str | None = None, **fields) -> bool:
        """Set `fields`; with expect_state, only while the job is in that state (False otherwise)."""
        row = {k: (json.dumps(v) if k in JSON_FIELDS and v is not None else v) for k, v in fields.items()}
        sets = ", ".join([*(f"{k} = ?" for k in row), "rev = rev + 1"])
        sql, args = f"UPDATE jobs SET {sets} WHERE id = ?", [*row.values(), job_id]
        if expect_state is not None:
            sql += " AND state = ?"
            args.append(expect_state)
        with self.transaction() as db:
            return db.execute(sql, args).rowcount == 1

    def delete(self, job_id: str) -> None:
        """Only `memtrain serve --recover` deletes: a damaged row it rebuilds from the job's dir."""
        with self.transaction() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        self.bad_rows = {seq: v for seq, v in self.bad_rows.items() if v[0] != job_id}

    # -- reads ----------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRow | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        job = self._decode(row)
        if job is None:
            raise StoreDamaged(f"job {job_id}: its stored row is damaged ({self.bad_rows[row['seq']][1]}); "
                               "`memtrain serve --recover` rebuilds it from its job dir")
        return job

    def list(self, state: str | None = None, limit: int | None = None) -> list:
        sql, args = "SELECT * FROM jobs", []
        if state is not None:
            sql += " WHERE state = ?"
            args.append(state)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [job for job in map(self._decode, rows) if job is not None]

    def _decode(self, row) -> JobRow | None:
        """The row with its JSON columns decoded; None for a damaged one (skipped by lists, logged
        once, counted in bad_rows): one bad row must not take the whole job list down."""
        try:
            return _decode(row)
        except ValueError as exc:
            if row["seq"] not in self.bad_rows:
                self.bad_rows[row["seq"]] = (row["id"], f"invalid JSON: {exc}")
                log.warning("store: skipped the damaged row of job %s (invalid JSON: %s)", row["id"], exc)
            return None

    def page(self, state: str | None, limit: int, before: int | None = None) -> tuple:
        """(rows, next): up to `limit` jobs, newest first, with seq below `before`, their config and
        checked columns left as JSON text; `next` is the `before` of the following page, None on the
        last. Each row is the same object while its rev stands (views tell "unchanged" by identity):
        a page reads (seq, rev) from an index and fetches only the rows it does not hold, so it costs
        the same however many jobs are stored, and a page of unchanged jobs decodes nothing."""
        where, args = [], []
        if state is not None:
            where.append("state = ?")
            args.append(state)
        if before is not None:
            where.append("seq < ?")
            args.append(int(before))
        sql = "SELECT seq, rev FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        with self._lock:
            keys = self._db.execute(sql + " ORDER BY seq DESC LIMIT ?", [*args, int(limit) + 1]).fetchall()
            more, keys = len(keys) > limit, keys[:limit]
            got = {}
            for seq, rev in keys:
                kept = self._rows.get(seq)
                if kept is not None and kept[0] == rev:
                    got[seq] = kept[1]
            stale = [seq for seq, _ in keys if seq not in got and seq not in self.bad_rows]
            for i in range(0, len(stale), 500):  # SQLite's bound on parameters (999 before 3.32)
                chunk = stale[i:i + 500]
                for row in self._db.execute(f"SELECT * FROM jobs WHERE seq IN ({','.join('?' * len(chunk))})", chunk):
                    job = self._keep(row)
                    if job is not None:
                        got[job.seq] = job
        return [got[seq] for seq, _ in keys if seq in got], (keys[-1][0] if more and keys else None)

    def _keep(self, row) -> JobRow | None:
        """A page's row decoded and kept under its seq with its rev (a finished job's never changes);
        None for a damaged one, which is recorded in bad_rows instead."""
        try:
            job = _decode(row, eager=False)
        except ValueError:
            return self._decode(row)  # records it as damaged: None
        self._rows.pop(job.seq, None)  # re-inserted: the newest stay, the oldest go first
        self._rows[job.seq] = (job.rev, job)
        while len(self._rows) > self.ROWS_KEPT:
            self._rows.pop(next(iter(self._rows)))
        return job

    def counts(self) -> dict:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        out = dict.fromkeys(STATES, 0)
        out.update({r[0]: r[1] for r in rows})
        return out


def _insert_job(db, job: dict) -> None:
    row = {k: (json.dumps(v) if k in JSON_FIELDS and v is not None else v) for k, v in job.items()}
    db.execute(f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})", tuple(row.values()))


def damaged_message(path: Path, detail: str) -> str:
    detail = " ".join(detail.split())  # quick_check's report spans lines: the message is one
    return (f"{path}: the job store is damaged ({detail}); nothing was changed. `memtrain serve --state-dir "
            f"{path.parent} --recover` rebuilds it from its backup and the job dirs (the damaged file is kept "
            "beside it)")


def _decode(row, eager: bool = True) -> JobRow:
    """A JobRow of a SQLite row; ValueError for JSON that does not decode (`eager`: the lazy
    columns are decoded now too, so a damaged one is found at this read)."""
    d = dict(row)
    for k in JSON_FIELDS:
        if k not in LAZY and d.get(k) is not None:
            d[k] = json.loads(d[k])
    job = JobRow(**{(f"{k}_json" if k in LAZY else k): v for k, v in d.items()})
    if eager:
        for k in LAZY:
            getattr(job, k)
    return job


def now() -> float:
    return time.time()
