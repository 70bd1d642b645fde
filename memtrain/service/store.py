"""All of the service's state: one SQLite file (WAL) under the state dir.

Nothing lives only in memory: a job's config, plan, state, handle (executor name and
ref) and outcome are rows here, so a restarted service finds every job again. One
connection guarded by a lock (the scheduler thread and the HTTP handlers share it);
every write is one explicit transaction.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

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
"""

JSON_FIELDS = ("config", "checked", "planned", "result", "batch_request")
NOT_VIEWED = ("config", "checked")  # the largest JSON, which a job's view never reads: a page leaves it undecoded


class Store:
    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.version = 0  # +1 per committed write: cached views are valid while it stands (one writer: this process)
        self._rows: dict = {}  # a page's rows, decoded (_decoded)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)  # IF NOT EXISTS: a no-op on an existing state dir
        with self.transaction() as db:
            row = db.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                raise RuntimeError(f"{self.path}: schema version {row[0]}, this memtrain reads {SCHEMA_VERSION}")

    @contextmanager
    def transaction(self):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self.version += 1

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writes ---------------------------------------------------------------------------

    def insert(self, job: dict) -> dict:
        """`job` holds the columns above except seq; returns the stored row."""
        row = {k: (json.dumps(v) if k in JSON_FIELDS and v is not None else v) for k, v in job.items()}
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self.transaction() as db:
            db.execute(f"INSERT INTO jobs ({cols}) VALUES ({marks})", tuple(row.values()))
        return self.get(job["id"])

    def update(self, job_id: str, *, expect_state: str | None = None, **fields) -> bool:
        """Set `fields`; with expect_state, only while the job is in that state (False otherwise)."""
        row = {k: (json.dumps(v) if k in JSON_FIELDS and v is not None else v) for k, v in fields.items()}
        sets = ", ".join(f"{k} = ?" for k in row)
        sql, args = f"UPDATE jobs SET {sets} WHERE id = ?", [*row.values(), job_id]
        if expect_state is not None:
            sql += " AND state = ?"
            args.append(expect_state)
        with self.transaction() as db:
            return db.execute(sql, args).rowcount == 1

    # -- reads ----------------------------------------------------------------------------

    def get(self, job_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _decode(row) if row else None

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
        return [_decode(r) for r in rows]

    def page(self, state: str | None, limit: int, before: int | None = None) -> tuple:
        """(rows, next): up to `limit` jobs, newest first, with seq below `before` (an index range:
        a page costs the same however many jobs are stored), their config and checked columns
        left as JSON text; `next` is the `before` of the following page, None on the last."""
        where, args = [], []
        if state is not None:
            where.append("state = ?")
            args.append(state)
        if before is not None:
            where.append("seq < ?")
            args.append(int(before))
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY seq DESC LIMIT ?", [*args, int(limit) + 1]).fetchall()
        more = len(rows) > limit
        rows = [self._decoded(r) for r in rows[:limit]]
        return rows, (rows[-1]["seq"] if more and rows else None)

    def _decoded(self, row) -> dict:
        """_decode of a page's row, kept while the row's values stay the same (a finished job's
        never change): a poll of an unchanged page decodes no JSON. The dict is shared: read only."""
        key = tuple(row)
        d = self._rows.get(key)
        if d is None:
            d = self._rows[key] = _decode(row, skip=NOT_VIEWED)
            if len(self._rows) > 4096:  # bounded; the oldest entries go first
                self._rows.pop(next(iter(self._rows)))
        return d

    def counts(self) -> dict:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        out = dict.fromkeys(STATES, 0)
        out.update({r[0]: r[1] for r in rows})
        return out


def _decode(row, skip=()) -> dict:
    d = dict(row)
    for k in JSON_FIELDS:
        if d.get(k) is not None and k not in skip:
            d[k] = json.loads(d[k])
    return d


def now() -> float:
    return time.time()
