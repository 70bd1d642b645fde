"""Warm workers: one process that has paid a worker's imports (the interpreter, NumPy, the
trainer, the job planning) forks one child per job, so a small job does not pay them again.

    python -m memtrain.launch.forkserver SOCKET

LocalExecutor(warm=True) starts it and asks it over a Unix socket (one JSON line each way:
{"spec", "run_dir", "log", "env"} -> {"pid"}). Isolation is as with a plain start, since each
job is still a process of its own: the child leaves the server's session (`setsid`, so the
service's SIGTERM and SIGKILL of the group reach the job alone), points stdin at /dev/null and
stdout/stderr at the job's log, takes the launch's environment, sets the BLAS and OpenMP
thread pools to the launch's limits at run time (their env vars are read when the libraries
load, which the server did before the launch was known), restores the default signal
dispositions, reseeds the global RNGs and then runs `worker.main` as `python -m
memtrain.launch.worker` would. A crash of one child is that child's: the server only forks and
reaps, and writes how each child ended to its run dir (STATUS: exit code or signal, CPU
seconds), which the executor reads as it reads a plain child's wait status.

CPU only: CUDA must never be initialised in a process that forks (a child inherits a context
it cannot use), so the server imports nothing that touches a GPU and a GPU launch is started
plainly. numba is not preloaded either: a small model's step does not load it (training.fused
= "auto"), a larger one loads it in its child as a plain worker would. The server leaves when
its parent (the service) has gone; the jobs it forked run on, as plain workers do.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import socket
import sys
import traceback
from pathlib import Path

STATUS = "worker-status.json"  # in the run dir: {"code": n} or {"signal": n}, and "cpu_seconds"
_BLAS_VARS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")


def preload() -> None:
    """What every worker imports before its job starts (the parts a fork can share)."""
    import numpy  # noqa: F401, PLC0415

    from memtrain.config import JobConfig  # noqa: F401, PLC0415
    from memtrain.launch import worker  # noqa: F401, PLC0415
    from memtrain.profiler.autobatch import auto_batch  # noqa: F401, PLC0415
    from memtrain.train.job import Job  # noqa: F401, PLC0415


def thread_limits(env: dict) -> dict:
    """{user_api: threads} a fresh process started with `env` would have: BLAS from the first of
    OPENBLAS/MKL/OMP_NUM_THREADS set, OpenMP from OMP_NUM_THREADS, else every core."""
    cores = os.cpu_count() or 1
    blas = next((env[k] for k in _BLAS_VARS if env.get(k)), cores)
    return {"blas": _positive(blas, cores), "openmp": _positive(env.get("OMP_NUM_THREADS") or cores, cores)}


def _positive(value, default: int) -> int:
    try:
        n = int(str(value).split(",")[0])
    except ValueError:
        return default
    return n if n > 0 else default


def _child(request: dict, ready: int) -> int:
    """In the forked child: become the job's own process, then run the worker."""
    os.setsid()
    # the handlers a fresh interpreter has, before the caller learns the pid: a cancel sent at once
    # must not reach the server's handler (which only notes it) in this process
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.write(ready, b"s")  # its session exists before the caller learns its pid (a killpg finds it)
    os.close(ready)
    null = os.open(os.devnull, os.O_RDONLY)
    log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)
    os.chdir(request["run_dir"])
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in request["env"].items()})
    from threadpoolctl import threadpool_info, threadpool_limits  # noqa: PLC0415 - only in a child

    for api, n in thread_limits(os.environ).items():
        threadpool_limits(limits=n, user_api=api)
    pools = ", ".join(f"{p['internal_api']} {p['num_threads']}" for p in threadpool_info())
    print(f"warm worker: forked by {os.getppid()}; threads: {pools or 'no pools'}", file=sys.stderr, flush=True)
    random.seed()
    import numpy as np  # noqa: PLC0415

    np.random.seed()  # the legacy global RNG: a fresh process seeds it from the OS, not from its parent
    sys.argv = [sys.argv[0], request["spec"]]
    from memtrain.launch import worker  # noqa: PLC0415

    return worker.main([request["spec"]])


def fork_job(request: dict, close: list) -> int:
    """Fork a child that runs the job; returns its pid (in the server)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        try:
            os.read(r, 1)  # the child has its own session (or has died: EOF)
        finally:
            os.close(r)
        return pid
    code = 1
    try:
        signal.set_wakeup_fd(-1)  # the server's wake-up pair is closed below: no signal writes to it
        os.close(r)
        for s in close:  # the server's sockets are not the job's
            s.close()
        code = _child(request, w)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # a bug: its traceback goes to the job's log, as a plain worker's would
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)  # never back into the server's loop


def reap(children: dict) -> None:
    """Wait for the children that have ended; each one's end goes to its run dir's STATUS."""
    while children:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        path = children.pop(pid, None)
        if path is None:
            continue
        end = {"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"code": os.waitstatus_to_exitcode(status)}
        end["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 3)
        tmp = path.with_name(f".{path.name}.tmp")
        with contextlib.suppress(OSError):  # a full disk: the worker's exit.json still says how it ended
            tmp.write_text(json.dumps(end))
            os.replace(tmp, path)


def serve(sock_path: str) -> int:
    parent = os.getppid()
    preload()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(16)
    stopping = []
    signal.signal(signal.SIGTERM, lambda s, f: stopping.append(s))
    # a child's end (SIGCHLD) wakes the loop through this pair, so its STATUS is written at once
    # rather than at the next 0.2 s tick (which is only for noticing that the parent has gone)
    wake, woken = socket.socketpair()
    wake.setblocking(False)
    woken.setblocking(False)
    signal.set_wakeup_fd(woken.fileno())
    signal.signal(signal.SIGCHLD, lambda s, f: None)
    print("ready", flush=True)
    children: dict = {}
    while not stopping and os.getppid() == parent:
        reap(children)
        with contextlib.suppress(InterruptedError):
            ready, _, _ = select.select([srv, wake], [], [], 0.2)
            if wake in ready:
                with contextlib.suppress(BlockingIOError):
                    wake.recv(4096)
            if srv in ready:
                _answer(srv, children, [wake, woken])
    signal.set_wakeup_fd(-1)
    for s in (srv, wake, woken):
        s.close()
    with contextlib.suppress(OSError):
        os.unlink(sock_path)
    return 0


def _answer(srv, children: dict, own: list) -> None:
    conn, _ = srv.accept()
    with conn:
        try:
            request = json.loads(conn.makefile("rb").readline())
            pid = fork_job(request, [srv, conn, *own])
        except (ValueError, KeyError, OSError) as exc:  # a bad request or no fork: the caller starts it plainly
            conn.sendall(json.dumps({"error": str(exc)}).encode() + b"\n")
            return
        children[pid] = Path(request["run_dir"]) / STATUS
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m memtrain.launch.forkserver SOCKET", file=sys.stderr)
        sys.exit(2)
    sys.exit(serve(sys.argv[1]))
