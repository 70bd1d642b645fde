"""Ending a command-line process without tearing the interpreter down.

After a command returns, CPython finalises: it clears every module's namespace and
collects what that frees, NumPy's and memtrain's included. A 1-epoch job of
docs/example-job.toml spent 8.6-10.0 ms there (strace: from reaping its exporter to
exit_group, three runs; 0.4-0.6 ms with this); an interpreter that has only imported a
job's modules, 25-54 ms (bench/startup_parts.py: the same imports with and without
os._exit). Nothing a finished command needs happens in it: its files are closed and
fsynced by then. So the console script (and the job worker) end as mypy's `--fast-exit` does: the atexit functions (logging's flush, coverage's
save, weakref finalizers such as a TemporaryDirectory's cleanup) run, the standard
streams are flushed, then `os._exit`. Where that cannot stand for a normal exit (another
non-daemon thread still runs, whose join the interpreter would wait for; a stream
cannot be flushed; an exit code that is not an int) it exits normally.

Only the process's entry points use this: in-process callers (tests with click's
CliRunner, the Python API) call `cli.main` and get a SystemExit as always.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading


def run(main) -> None:
    """Calls click's `main` in standalone mode (it always ends in SystemExit) and exits quickly."""
    try:
        main()
    except SystemExit as exc:
        exit_now(exc.code)
    exit_now(0)


def exit_now(code) -> None:
    """os._exit(code) after the atexit functions and a flush; sys.exit(code) where that is not safe."""
    if code is None:
        code = 0
    if not isinstance(code, int) or _other_threads():
        sys.exit(code)  # the interpreter's way: prints a str code, joins the threads
    atexit._run_exitfuncs()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):  # a closed pipe or stream: the interpreter reports it as it always does
        sys.exit(code)
    os._exit(code & 0xFF)  # as the interpreter exits with sys.exit(code)


def _other_threads() -> bool:
    main = threading.main_thread()
    return any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate())
