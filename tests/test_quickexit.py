"""The console script's quick exit (memtrain/quickexit.py): the same exit status and output as a
normal exit, atexit functions run, and a normal exit wherever a quick one would lose something."""

import subprocess
import sys
from pathlib import Path

import pytest


def run(code: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)


PRELUDE = "import atexit, sys, threading, time; from memtrain.quickexit import exit_now\n"


@pytest.mark.parametrize(("code", "status"), [(None, 0), (0, 0), (2, 2), (3, 3), (256, 0), (-1, 255)])
def test_the_exit_status_is_what_sys_exit_gives(code, status):
    quick = run(PRELUDE + f"exit_now({code!r})")
    normal = run(f"import sys; sys.exit({code!r})")
    assert quick.returncode == normal.returncode == status, quick.stderr


def test_atexit_functions_run_and_buffered_output_is_flushed():
    r = run(PRELUDE + "atexit.register(print, 'atexit ran'); sys.stdout.write('x' * 100000); exit_now(4)")
    assert r.returncode == 4
    assert r.stdout == "x" * 100000 + "atexit ran\n"


def test_a_string_code_and_a_running_thread_take_the_normal_exit():
    r = run(PRELUDE + "exit_now('memtrain: error: it failed')")
    assert (r.returncode, r.stderr.strip()) == (1, "memtrain: error: it failed")
    # a non-daemon thread the interpreter would join: its output is not cut off
    r = run(PRELUDE + "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start(); exit_now(0)")
    assert (r.returncode, r.stdout) == (0, "thread done\n")


def test_the_console_script_exits_as_before(tmp_path):
    """`memtrain` (the installed script calls cli.entry): its statuses, its stderr line, --version."""
    script = Path(sys.executable).with_name("memtrain")
    if not script.exists():
        pytest.skip(f"no console script beside {sys.executable}")
    ok = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.startswith("memtrain, version ")
    bad = subprocess.run([str(script), "train", str(tmp_path / "missing.toml")], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("memtrain: error: config: cannot read ")
    usage = subprocess.run([str(script), "train", "--no-such-option"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "No such option" in usage.stderr
    assert "entry()" in script.read_text()  # the script pyproject.toml names, not cli.main
