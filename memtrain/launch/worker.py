"""The process every executor starts: `python -m memtrain.launch.worker LAUNCH.json`.

It runs one job from its JSON config (the same Job `memtrain train` runs), logging
JSON lines to stdout (the executor points stdout/stderr at the job's log file).
Exit status: 0 finished or stopped on SIGTERM/SIGINT after a checkpoint, 1 the job
failed, 2 a bad config (never retried), 3 it failed where another attempt may succeed
(out of memory in the final evaluation: its last checkpoint is kept, a service retries it).

Besides the log, it keeps two small files in the launch's run dir, each replaced
atomically (write to a temporary file, then rename), so a reader never sees half:
- progress.json: the latest epoch record (epoch, step, losses), the plan's total and
  the resident memory of the worker and its children (the metrics exporter), current
  and peak; rewritten on each of the Job's events (its on_event callback) and every second.
- memory.jsonl: {"t", "rss"} appended every second for the first two minutes, then every
  five seconds: the resident memory over time the service's job page draws against the plan.
- exit.json: {"code", "reason", "result"} (and "history", "train_rows" after a run: what
  sweep and compare rank by): how it ended. An executor that cannot wait
  on the process (it was started by an earlier service process) reads it; a process
  gone without one was killed. It is reserved as blanks (not JSON) when the worker starts,
  so the record can still be written on a disk that has filled since.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from memtrain.errors import ExitCode, JobFailed, MemtrainError
from memtrain.jsonable import plain
from memtrain.quickexit import exit_now

PROGRESS = "progress.json"
MEMORY = "memory.jsonl"
EXIT = "exit.json"
_KEEP = ("epoch", "step", "train_loss", "val_loss", "val_accuracy", "val_rmse", "val_mae", "val_r2", "lr",
         "batch_size", "total", "resident", "stopped", "signal")


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(json.dumps(obj, default=str))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


EXIT_ROOM = 16 * 1024  # bytes of exit.json reserved at start: the record fits even on a disk filled since


def reserve_exit(path: Path) -> None:
    """Blanks (not JSON: no exit record yet) in the blocks exit.json will need."""
    with contextlib.suppress(OSError):
        path.write_bytes(b" " * EXIT_ROOM)


def write_exit(path: Path, record: dict) -> None:
    """exit.json, atomically when the disk has room; else written over its reserved blocks (the
    process is ending: no one reads it before it has). Never raises: without it the exit status
    still says how the job ended."""
    try:
        write_json(path, record)
        return
    except OSError:
        pass
    record = {k: record.get(k) for k in ("code", "reason", "result")}  # the history would not fit the blocks
    data = json.dumps(record, default=str).encode()[:EXIT_ROOM]
    with contextlib.suppress(OSError), open(path, "r+b") as f:
        f.write(data)
        f.truncate(len(data))


def read_json(path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _rss_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def group_rss() -> dict:
    """{pid: (current, peak)} resident bytes of this process and its descendants (the exporter)."""
    pids, todo = [], [os.getpid()]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return {p: (_rss_kib(p, "VmRSS") * 1024, _rss_kib(p, "VmHWM") * 1024) for p in pids}


class ProgressFile:
    """The job's events (its `on_event` callback) collected into progress.json, rewritten on each
    event and every second with the resident memory of the worker and its children."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / PROGRESS
        self.state = {"event": "starting", "pid": os.getpid()}
        self.peaks = {}  # pid -> its peak: a child that has ended still counts (an upper bound)
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._every_second, daemon=True)
        self.save()  # "starting" at once: the service sees the worker (its signal handler is set) before any data loads
        self.thread.start()

    def on_event(self, event: str, fields: dict) -> None:
        """One Job event: its fields as the JSON log writes them (numbers, lists, strings)."""
        rec = json.loads(json.dumps(fields, default=plain))
        with self.lock:
            self.state["event"] = event
            self.state.update({k: rec[k] for k in _KEEP if k in rec})
            if event == "plan":
                self.state["planned_bytes"] = rec.get("total")
            if event == "checkpoint":
                self.state["checkpoint_step"] = rec.get("step")
        self.save()

    def save(self) -> None:
        group = group_rss()
        with self.lock:
            for pid, (rss, hwm) in group.items():
                self.peaks[pid] = max(self.peaks.get(pid, 0), rss, hwm)
            self.state.update(time=time.time(), rss_bytes=sum(r for r, _ in group.values()),
                              peak_rss_bytes=sum(self.peaks.values()))
            with contextlib.suppress(OSError):  # best effort: the next second tries again
                write_json(self.path, self.state)  # under the lock: the timer thread writes too

    def _every_second(self) -> None:
        started, last = time.time(), 0.0
        while not self._stop.wait(1.0):
            self.save()
            now = time.time()
            if now - last >= (1.0 if now - started < 120 else 5.0):  # a sample a second, then one per 5 s
                last = now
                self._sample(now)

    def _sample(self, now: float) -> None:
        with self.lock:
            line = json.dumps({"t": round(now, 2), "rss": self.state.get("rss_bytes")}) + "\n"
        try:
            with open(self.path.with_name(MEMORY), "a") as f:
                f.write(line)
        except OSError:  # a full disk: the samples are a view, the job goes on
            pass

    def close(self) -> None:
        self._stop.set()
        self.thread.join()  # not killed mid-write by the process's quick exit (a stray temporary file)
        self.save()


def _threads(launch: dict) -> None:
    """The launch's env for this process's children (the exporter). BLAS reads its thread
    count when NumPy loads, which `import memtrain` has done by now: an executor must put
    Launch.env in the process's environment when it starts it (LocalExecutor does)."""
    for key, value in (launch.get("env") or {}).items():
        os.environ[str(key)] = str(value)


def _lock(run_dir: Path):
    """An exclusive lock on the run dir for the process's lifetime: should a caller ever start a
    second worker for the same job (a service killed between starting one and recording it), the
    second waits for the first to end and then resumes from its checkpoint, never beside it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / "worker.lock", "w")
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m memtrain.launch.worker LAUNCH.json", file=sys.stderr)
        return ExitCode.USAGE
    try:
        with open(argv[0]) as f:
            launch = json.load(f)
    except (OSError, ValueError) as exc:
        print(f"error: {argv[0]}: {exc}", file=sys.stderr, flush=True)
        return ExitCode.USAGE
    _threads(launch)
    stopper = Stopper()
    run_dir = Path(launch.get("run_dir") or Path(argv[0]).parent)
    lock = _lock(run_dir)  # noqa: F841 - held until the process exits
    reserve_exit(run_dir / EXIT)
    progress = ProgressFile(run_dir)
    try:
        code, reason, result, extra = _run(launch, progress, argv[0], stopper)
    except Exception as exc:  # a bug: its traceback goes to the log, and the caller still learns it ended
        progress.close()
        write_exit(run_dir / EXIT, {"code": int(ExitCode.FAILURE), "reason": f"{type(exc).__name__}: {exc}",
                                    "result": None})
        raise
    progress.close()
    write_exit(run_dir / EXIT, {"code": int(code), "reason": reason, "result": result, **extra})
    return code


class LogStream:
    """stdout for the job's log: a write that fails (a full disk under the log) is dropped, since
    the job's own writes say so and the exit record still tells how it ended."""

    def __init__(self, out):
        self.out = out

    def write(self, text: str) -> int:
        with contextlib.suppress(OSError):
            self.out.write(text)
        return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError):
            self.out.flush()


class Stopper:
    """SIGTERM/SIGINT for the worker's whole life, not only the Job's training loop: before the
    Job exists (or while it loads data) the signal is remembered and handed to it; after it has
    ended, ignored, so exit.json is still written. The default action, death, would leave a job
    stopped without its exit record or, mid-write, with half a checkpoint (any number of cancels
    must give one clean stop)."""

    def __init__(self):
        self.signal, self.job = None, None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, sig, frame) -> None:
        self.signal = self.signal or signal.Signals(sig).name
        if self.job is not None:
            self.job.stop(self.signal)

    def attach(self, job):
        self.job = job
        if self.signal is not None:
            job.stop(self.signal)
        return job


def _run(launch: dict, progress: ProgressFile, where: str, stopper: Stopper | None = None) -> tuple:
    """(exit code, reason or None, the job's summary without its history or None, and for a job
    that ran {"history", "train_rows"}: the epochs and training rows a sweep or compare ranks by)."""
    from memtrain.config import JobConfig  # noqa: PLC0415 - a usage error answers before the trainer loads
    from memtrain.profiler.autobatch import auto_batch  # noqa: PLC0415 - a usage error answers before the trainer loads
    from memtrain.train.job import Job  # noqa: PLC0415 - a usage error answers before the trainer loads

    if "array" in launch["config"]:
        return _run_array(launch, where, stopper, progress)
    try:
        cfg = JobConfig.from_dict(launch["config"], source=launch.get("job_id", where))
        run_info = {"name": cfg.name, "job_id": launch.get("job_id")}  # run.json names the job, not "output"
        job = Job(cfg, log_format="json", progress=False, stream=LogStream(sys.stdout), batch_solver=auto_batch,
                  run_info=run_info, on_event=progress.on_event)
        result = (stopper.attach(job) if stopper is not None else job).run()
    except JobFailed as exc:  # FinishFailed: exit 3, retried from its checkpoint
        _say(f"error: {exc}")
        return exc.exit_code, f"error: {exc}", None, {}
    except (MemtrainError, OSError, KeyError) as exc:
        # a MemtrainError may say it is a failure (exit 1, e.g. a full disk); other bad input is never retried
        _say(f"error: {exc}")
        return getattr(exc, "exit_code", ExitCode.USAGE), f"error: {exc}", None, {}
    extra = {"history": result.get("history"), "train_rows": job.train_rows}
    return ExitCode.OK, None, {k: v for k, v in result.items() if k != "history"}, extra


def _run_array(launch: dict, where: str, stopper: Stopper | None, progress: ProgressFile | None = None) -> tuple:
    """A sweep's trial array (select/fuse.py): each trial's config under "array", each writing its
    own run dir; the exit record's result holds every trial's outcome, in order, as {"array": [...]}.
    The array checkpoints into its run dir's checkpoints/ and resumes from there when retried;
    `stop-trials.json` there (request_trial_stop) stops single trials while it runs."""
    from memtrain.config import JobConfig  # noqa: PLC0415 - a usage error answers before the trainer loads
    from memtrain.train.arrayjob import run_array  # noqa: PLC0415 - a usage error answers before the trainer loads

    run_dir = Path(launch.get("run_dir") or Path(where).parent)
    watcher, runs = None, []
    try:
        cfgs = [JobConfig.from_dict(c, source=f"{launch.get('job_id', where)} trial {i}")
                for i, c in enumerate(launch["config"]["array"])]

        def attach(run):
            nonlocal watcher
            runs.append(run)
            if stopper is not None:
                stopper.attach(run)
            watcher = TrialStops(run_dir / STOP_TRIALS, run)
            if progress is not None:  # the trials' epochs into the array's progress.json
                for job in run.jobs:
                    job.log.on_event = _array_progress(progress)

        outcomes = run_array(cfgs, attach=attach, run_dir=run_dir, log=LogStream(sys.stdout),
                             on_event=None if progress is None else progress.on_event)
    except (MemtrainError, OSError, KeyError) as exc:
        _say(f"error: {exc}")
        return getattr(exc, "exit_code", ExitCode.USAGE), f"error: {exc}", None, {}
    finally:
        if watcher is not None:
            watcher.close()
    result = {"array": outcomes}
    if runs and runs[0].stop_reason:  # the whole array stopped (a cancel, a signal): as a stopped lone job says
        result["stopped"] = runs[0].stop_reason
    return ExitCode.OK, None, result, {}


def _array_progress(progress: ProgressFile):
    """A trial's events into the array's progress.json: its epoch and step only (the trials train in
    step; their losses are each trial's own, in its run dir), so a service shows the array's epoch."""

    def on_event(event: str, fields: dict) -> None:
        if event != "plan":  # a trial's own plan, not the array's
            progress.on_event(event, {k: fields[k] for k in ("epoch", "step") if k in fields})

    return on_event


STOP_TRIALS = "stop-trials.json"  # in an array's run dir: {"<trial index>": "<reason>"}, the trials to stop


def request_trial_stop(run_dir, index: int, reason: str = "cancel") -> None:
    """Ask the array worker of `run_dir` to stop trial `index` (its place in the array's config)
    after its current step; the others train on. Kept in the run dir, so a retried worker (and a
    resumed array) stops it too. Atomic: the worker never reads half a request."""
    from memtrain.validate import check_scalar  # noqa: PLC0415

    index = check_scalar(index, "trial", int, min_val=0)
    path = Path(run_dir) / STOP_TRIALS
    asked = read_json(path) or {}
    asked.setdefault(str(index), str(reason))
    write_json(path, asked)


class TrialStops:
    """Reads an array's stop-trials.json at start and twice a second, and stops each trial named
    there (ArrayRun.stop_trial) once."""

    def __init__(self, path: Path, run, every: float = 0.5):
        self.path, self.run, self.seen = path, run, set()
        self._stop = threading.Event()
        self.check()
        self.thread = threading.Thread(target=self._loop, args=(every,), daemon=True)
        self.thread.start()

    def check(self) -> None:
        asked = read_json(self.path)
        for key, reason in (asked.items() if isinstance(asked, dict) else ()):
            if key in self.seen or not key.isdigit():
                continue
            self.seen.add(key)
            try:
                self.run.stop_trial(int(key), str(reason))
            except MemtrainError as exc:  # an index the array does not have: said, never fatal
                _say(f"warning: {self.path}: {exc}")

    def _loop(self, every: float) -> None:
        while not self._stop.wait(every):
            self.check()

    def close(self) -> None:
        self._stop.set()
        self.thread.join()


def _say(line: str) -> None:
    with contextlib.suppress(OSError):  # the log on a full disk: the line goes to exit.json anyway
        print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":
    exit_now(main())  # the atexit functions, then os._exit: no interpreter teardown (memtrain/quickexit.py)
