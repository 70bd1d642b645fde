"""A run's history on disk: `history.jsonl` (one line per epoch), `history.csv`
(the same rows for spreadsheets) and `run.json` (what the run is and how it ended).

Crash safety:
- `history.jsonl` is appended one complete line per write (a single `os.write`
  on an O_APPEND descriptor, then fsync; a job fsyncs it once per checkpoint
  instead, before the checkpoint). A kill can at worst leave a torn last
  line; the reader ignores it. A bad line anywhere else is corruption and an error.
- `history.csv` and `run.json` are replaced atomically (temporary file, fsync,
  rename). The CSV is a view of the JSONL written when the run ends (any state)
  and whenever the JSONL is rewritten (start, resume). It is not rewritten every
  epoch because that costs O(epochs) per epoch; the JSONL is the live file.
- On resume the JSONL is cut back to the checkpoint's epoch (`start(...,
  resume_from=epoch)`), so epochs trained after the last checkpoint and lost
  with the crash are dropped and retrained, never counted twice.

The layouts come from two dataclasses, `EpochRecord` and `RunInfo`: the JSON
keys, the CSV header and the accepted arguments are their fields.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import hashlib
import io
import json
import math
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from memtrain.errors import MemtrainError
from memtrain.nn.scores import ALL as SCORES
from memtrain.train.checkpoint import atomic_write

HISTORY = "history.jsonl"
HISTORY_CSV = "history.csv"
RUN = "run.json"
FORMAT = "memtrain.run/1"
STATES = ("running", "finished", "stopped", "failed")

_TRAINER = {"source": "trainer"}  # fields of Trainer's own epoch record (Trainer._end_epoch)


class HistoryError(MemtrainError):
    """A run's history or run.json cannot be read (corrupt beyond a torn last line)."""


@dataclass
class EpochRecord:
    """One epoch of one run: a line of history.jsonl, a row of history.csv."""

    epoch: int = field(metadata=_TRAINER)  # epochs completed, counting from 1
    train_loss: float = field(metadata=_TRAINER)
    lr: float | None = field(default=None, metadata=_TRAINER)
    grad_norm: float | None = field(default=None, metadata=_TRAINER)
    seconds: float | None = field(default=None, metadata=_TRAINER)  # wall time of the epoch's steps
    val_loss: float | None = field(default=None, metadata=_TRAINER)
    val_accuracy: float | None = field(default=None, metadata=_TRAINER)
    val_rmse: float | None = field(default=None, metadata=_TRAINER)  # regression (linear output) only
    val_mae: float | None = field(default=None, metadata=_TRAINER)
    val_r2: float | None = field(default=None, metadata=_TRAINER)
    steps: int | None = None  # optimizer steps done by the end of the epoch
    samples_per_second: float | None = None
    planned_bytes: int | None = None  # the MemoryPlan's total
    measured_peak_bytes: int | None = None  # the measured peak so far (None when not measured)
    time: float | None = None  # Unix time the line was written; filled in by append()


@dataclass
class RunInfo:
    """run.json: what a run is, where it stands and how it ended."""

    name: str
    job_id: str | None = None  # a service job's id (its run dir is STATE_DIR/jobs/ID/output)
    state: str = "running"  # running | finished | stopped | failed
    device: str | None = None
    dataset: str | None = None
    optimizer: str | None = None
    model: dict | None = None  # e.g. {"sizes": [64, 128, 10], "activation": "relu", "dtype": "float32"}
    batch_size: int | None = None
    micro_batch_size: int | None = None
    epochs_planned: int | None = None
    epochs: int | None = None  # completed; at finish() the count in history.jsonl
    steps: int | None = None
    planned_bytes: int | None = None
    planned_by_category: dict | None = None
    measured_peak_bytes: int | None = None
    best_epoch: int | None = None  # the epoch with the lowest validation loss
    best_val_loss: float | None = None
    best_val_accuracy: float | None = None  # the accuracy at best_epoch
    best_val_rmse: float | None = None  # regression: the scores at best_epoch
    best_val_mae: float | None = None
    best_val_r2: float | None = None
    test_loss: float | None = None
    test_accuracy: float | None = None
    test_rmse: float | None = None
    test_mae: float | None = None
    test_r2: float | None = None
    message: str | None = None  # why it stopped or failed
    config_hash: str | None = None
    started: str | None = None  # UTC, ISO 8601; kept across resumes
    resumed: str | None = None  # the latest resume
    resumes: int = 0
    ended: str | None = None
    updated: str | None = None
    host: str | None = None
    pid: int | None = None
    format: str = FORMAT


EPOCH_FIELDS = tuple(f.name for f in dataclasses.fields(EpochRecord))
TRAINER_FIELDS = tuple(f.name for f in dataclasses.fields(EpochRecord) if f.metadata.get("source") == "trainer")
RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunInfo))


def utc_now() -> str:
    """UTC, ISO 8601, to the millisecond (runs started within a second still sort in order)."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def config_hash(config: dict) -> str:
    """12 hex digits of the SHA-256 of a config's canonical JSON (sorted keys)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def trainer_history(records: list[dict]) -> list[dict]:
    """The records as Trainer.history holds them (only the trainer's own keys), to
    rebuild `trainer.history` on resume."""
    return [{k: r[k] for k in TRAINER_FIELDS if k in r} for r in records]


def best(records: list[dict]) -> dict | None:
    """The record with the lowest validation loss (the first one on ties), or None."""
    scored = [r for r in records if _finite(r.get("val_loss"))]
    return min(scored, key=lambda r: r["val_loss"]) if scored else None


class RunHistory:
    """The history files of one run directory (the job's output dir).

    The job calls `start` once it knows what it runs, `append` at every epoch end
    (before that epoch's checkpoint), `update` when something in run.json changes,
    and `finish` when it ends in any way. `read` works on any run, live or not.
    """

    def __init__(self, directory, warn=None):
        self.dir = Path(directory)
        # bad lines are skipped and reported through `warn` (the job's log; default: stderr)
        self.warn = warn or (lambda message: print(message, file=sys.stderr))
        self.jsonl = self.dir / HISTORY
        self.csv = self.dir / HISTORY_CSV
        self.run_json = self.dir / RUN

    # -- writing ---------------------------------------------------------------------------------

    def start(self, info: dict, *, resume_from: int | None = None, fallback: list[dict] | None = None) -> list[dict]:
        """Begin (or resume) the run: write run.json with state running and return the
        epochs kept. A fresh run (`resume_from=None`) empties the history; a resumed
        run keeps the epochs up to `resume_from` (the checkpoint's epoch) and drops
        the rest, its `started` time stays and `resumes` counts up. `fallback`: the
        records to keep instead when the file has none (a checkpoint written by an
        older memtrain carries the history itself)."""
        unknown = set(info) - set(RUN_FIELDS)
        if unknown:
            raise TypeError(f"RunHistory.start: not RunInfo fields: {', '.join(sorted(unknown))}")
        self.dir.mkdir(parents=True, exist_ok=True)
        now = utc_now()
        old = self._lenient_run_json() if resume_from is not None else None
        # the history's two files without a directory fsync: run.json's below, in the same directory,
        # makes all three renames durable (two fsyncs fewer at every job's start, issue 22)
        kept = self.truncate(resume_from if resume_from is not None else 0, sync_dir=False)
        if resume_from is not None and not kept and fallback:
            for r in fallback:
                if r.get("epoch", 0) <= resume_from:
                    self.append({k: v for k, v in r.items() if k in EPOCH_FIELDS})
            kept = self.read()
        run = RunInfo(**{"name": self.dir.name, **info})
        run.state, run.ended, run.message = "running", None, None
        run.started, run.updated, run.host, run.pid = now, now, socket.gethostname(), os.getpid()
        if old is not None:
            run.started = old.get("started") or now
            run.resumed, run.resumes = now, int(old.get("resumes") or 0) + 1
        run.epochs = len(kept)
        self._write_run(dataclasses.asdict(run))
        return kept

    def append(self, record: dict, *, durable: bool = True, **extra) -> dict:
        """Add one epoch: the trainer's record plus the job's fields (`steps`,
        `samples_per_second`, `planned_bytes`, `measured_peak_bytes`). One line,
        written whole and fsync'ed (`durable=False`: not fsync'ed; `sync()` later, as
        a job does before each checkpoint). Returns what was written."""
        values = {**record, **extra}
        unknown = set(values) - set(EPOCH_FIELDS)
        if unknown:
            raise TypeError(f"RunHistory.append: not EpochRecord fields: {', '.join(sorted(unknown))}")
        values.setdefault("time", round(time.time(), 3))
        record = EpochRecord(**values)  # the layout's one definition checks the fields
        # its fields are numbers or None: a shallow read is asdict()'s result without its deep copy
        # of each value (~0.2 ms of every epoch, issue 22)
        row = {name: getattr(record, name) for name in EPOCH_FIELDS}
        line = (json.dumps(_clean(row), separators=(",", ":"), allow_nan=False) + "\n").encode()
        fd = os.open(self.jsonl, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                if os.write(fd, line) != len(line):
                    raise OSError(errno.ENOSPC, "short write (disk full?)", str(self.jsonl))
                if durable:
                    os.fsync(fd)
            except OSError:
                # cut a partial line off, or the next epoch's line would be glued to it mid-file
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)
        return row

    def sync(self) -> None:
        """fsync history.jsonl: the lines appended with `durable=False` are on disk after it."""
        try:
            fd = os.open(self.jsonl, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def update(self, **fields) -> None:
        """Change fields of run.json (e.g. planned_bytes once the plan is made), atomically."""
        run = self._read_run_json()
        unknown = set(fields) - set(RUN_FIELDS)
        if unknown:
            raise TypeError(f"RunHistory.update: not RunInfo fields: {', '.join(sorted(unknown))}")
        run.update(fields, updated=utc_now())
        self._write_run(run)

    def finish(self, state: str, summary: dict | None = None, *, message: str | None = None) -> dict:
        """End the run in `state` (finished, stopped or failed): run.json gets the
        state, the end time, the best validation epoch from the history and the
        keys of `summary` (e.g. the job's summary) that are RunInfo fields; the
        others are ignored. history.csv is written. Returns run.json's content."""
        if state not in STATES[1:]:
            raise ValueError(f"state: expected one of {', '.join(STATES[1:])}, got {state!r}")
        run = self._lenient_run_json() or dataclasses.asdict(RunInfo(name=self.dir.name))
        run.update({k: v for k, v in (summary or {}).items() if k in RUN_FIELDS and k not in ("state", "format")})
        records = self.read()
        b = best(records)
        run.update(state=state, message=message, ended=utc_now(), updated=utc_now(), epochs=len(records))
        if records and records[-1].get("steps") is not None and run.get("steps") is None:
            run["steps"] = records[-1]["steps"]
        if b is not None:
            run.update(best_epoch=b["epoch"], best_val_loss=b["val_loss"],
                       **{f"best_val_{k}": b.get(f"val_{k}") for k in SCORES})
        # the csv first, then run.json with the directory fsync that makes both renames durable: a
        # run.json that says "finished" is never durable without its csv, even if the csv's write fails
        self.write_csv(records, sync_dir=False)
        self._write_run(run)
        return run

    def truncate(self, epoch: int, *, sync_dir: bool = True) -> list[dict]:
        """Keep the records of epochs 1..`epoch` (and drop a torn last line):
        rewrites history.jsonl and history.csv atomically. Returns the records kept.
        sync_dir=False: the caller writes another file of this directory next (atomic_write)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch: expected an integer >= 0, got {epoch!r}")
        kept = self.read(upto_epoch=epoch) if self.jsonl.exists() else []
        data = "".join(json.dumps(r, separators=(",", ":"), allow_nan=False) + "\n" for r in kept).encode()
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.jsonl, lambda f: f.write(data), sync_dir=False)  # the csv's makes it durable
        self.write_csv(kept, sync_dir=sync_dir)
        return kept

    def write_csv(self, records: list[dict] | None = None, *, sync_dir: bool = True) -> None:
        """history.csv from the JSONL (or the given records), replaced atomically."""
        records = self.read() if records is None else records
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=EPOCH_FIELDS, lineterminator="\n")
        w.writeheader()
        for r in records:
            w.writerow({k: "" if r.get(k) is None else r[k] for k in EPOCH_FIELDS})
        atomic_write(self.csv, lambda f: f.write(buf.getvalue().encode()), sync_dir=sync_dir)

    # -- reading ---------------------------------------------------------------------------------

    def read(self, upto_epoch: int | None = None) -> list[dict]:
        """The epoch records in order (missing fields left out), at most up to
        `upto_epoch`. A torn last line (a kill mid-write) is ignored; any other line that
        is not an epoch record (a garbled file) is skipped with one warning naming them;
        a later record for an epoch already seen replaces the earlier one."""
        try:
            data = self.jsonl.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise HistoryError(f"{self.jsonl}: cannot be read ({exc.strerror})") from None
        lines = data.split(b"\n")[:-1]  # after the last newline: a torn line, or nothing
        by_epoch: dict[int, dict] = {}
        bad = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            r = _epoch_record(line)
            if r is None:
                bad.append(n)
            elif upto_epoch is None or r["epoch"] <= upto_epoch:
                by_epoch[r["epoch"]] = {k: v for k, v in r.items() if v is not None}
        if bad:
            shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            self.warn(f"memtrain: {self.jsonl}: skipped {len(bad)} line(s) that are not epoch records "
                      f"(garbled file): line {shown}")
        return [by_epoch[e] for e in sorted(by_epoch)]

    def info(self) -> dict | None:
        """run.json's content, or None when the run has none (e.g. an older memtrain wrote it)."""
        return self._read_run_json(missing_ok=True)

    def _lenient_run_json(self) -> dict | None:
        """For the writers: a missing or damaged run.json is replaced, not a reason to stop training."""
        try:
            return self._read_run_json(missing_ok=True)
        except HistoryError:
            return None

    def _read_run_json(self, *, missing_ok: bool = False) -> dict | None:
        try:
            run = json.loads(self.run_json.read_text())
        except FileNotFoundError:
            if missing_ok:
                return None
            raise HistoryError(f"{self.run_json}: not found (start() writes it)") from None
        except (OSError, ValueError) as exc:
            raise HistoryError(f"{self.run_json}: not valid JSON ({exc})") from None
        if not isinstance(run, dict) or run.get("format") != FORMAT:
            raise HistoryError(f"{self.run_json}: not a memtrain run file (expected format {FORMAT})")
        return run

    def _write_run(self, run: dict, *, sync_dir: bool = True) -> None:
        data = json.dumps(_clean(run), indent=1, allow_nan=False).encode() + b"\n"
        atomic_write(self.run_json, lambda f: f.write(data), sync_dir=sync_dir)


def _epoch_record(line: bytes) -> dict | None:
    try:
        r = json.loads(line)
    except ValueError:  # UnicodeDecodeError included
        return None
    ok = isinstance(r, dict) and isinstance(r.get("epoch"), int) and not isinstance(r["epoch"], bool)
    return r if ok else None


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _clean(obj):
    """JSON-ready: NumPy scalars as Python numbers, NaN/inf as null (JSON has neither)."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
