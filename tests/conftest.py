import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from memtrain.backend import _import_cupy


def _cuda_reason():
    cupy, why = _import_cupy()
    return None if cupy is not None else why


_CUDA_MISSING = _cuda_reason()


def pytest_collection_modifyitems(config, items):
    _gpu_marks_are_visible(items)
    if _CUDA_MISSING is None:
        return
    skip = pytest.mark.skip(reason=f"no CUDA device: {_CUDA_MISSING}")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


def _gpu_marks_are_visible(items):
    """bench/gpu_suite.sh runs `pytest -m gpu` on the files whose text marks a test `mark.gpu` (collecting
    every module would cost the short GPU window ~10 s): a gpu test marked some other way would be
    missed there, so it is an error here."""
    hidden = {str(i.path) for i in items if i.get_closest_marker("gpu") is not None and "mark.gpu" not in _text(i.path)}
    if hidden:
        raise pytest.UsageError(f"gpu-marked tests in files without the text 'mark.gpu': {sorted(hidden)}")


@functools.cache
def _text(path):
    return Path(path).read_text()


_WARMUP = []


def _warm_numba_cache() -> None:
    """Fills numba's cache with every fused CPU kernel from a process of its own (tests/numba_warmup.py):
    ~90 s of one core on a fresh clone that the test processes would otherwise spend compiling, each the
    kernels its own tests reach. One warm-up per run: under pytest-xdist (`make test`) the controller
    starts it, never a worker."""
    if _WARMUP or not _lock_numba_cache_writes():  # no numba: nothing to compile (the tests say what runs instead)
        return
    warmup = Path(__file__).with_name("numba_warmup.py")
    _WARMUP.append(subprocess.Popen([sys.executable, str(warmup)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL))


def pytest_sessionstart(session):
    """A run of the whole directory (or of test_cpu_kernels.py, which compiles every kernel) starts
    the warm-up before collecting, which takes a while itself."""
    opt, here = session.config.option, Path(__file__).parent
    if os.environ.get("PYTEST_XDIST_WORKER"):  # compiles beside the other workers (and the warm-up)
        _lock_numba_cache_writes()
        return
    if opt.collectonly or opt.keyword or opt.markexpr:
        return
    if any(Path(a.split("::")[0]).resolve() in (here, here / "test_cpu_kernels.py") for a in session.config.args):
        _warm_numba_cache()


def _lock_numba_cache_writes() -> bool:
    """numba_warmup.lock_numba_cache_writes in this process; False where numba is not installed."""
    from numba_warmup import lock_numba_cache_writes  # noqa: PLC0415 - numba only for such a run

    try:
        lock_numba_cache_writes()
    except ImportError:
        return False
    return True


def pytest_collection_finish(session):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if not session.config.option.collectonly and any(i.path.name == "test_cpu_kernels.py" for i in session.items):
        _warm_numba_cache()


def pytest_sessionfinish(session, exitstatus):
    for proc in _WARMUP:  # a whole run outlasts it; a short one stops it here
        proc.kill()
        proc.wait()


_USER_CACHE = []


def pytest_configure(config):
    """A cache dir of the run's own for what starts before a test's own (module fixtures: a service, a
    Ray job's reference run): no process of the suite reads or writes the user's memtrain cache."""
    _USER_CACHE.append(os.environ.get("MEMTRAIN_CACHE_DIR"))
    os.environ["MEMTRAIN_CACHE_DIR"] = tempfile.mkdtemp(prefix="memtrain-test-cache-")


def pytest_unconfigure(config):
    shutil.rmtree(os.environ["MEMTRAIN_CACHE_DIR"], ignore_errors=True)
    saved = _USER_CACHE.pop()
    if saved is None:
        os.environ.pop("MEMTRAIN_CACHE_DIR", None)
    else:
        os.environ["MEMTRAIN_CACHE_DIR"] = saved


@pytest.fixture(autouse=True)
def _private_cache_dir(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's cache (the measured CUDA overhead per GPU model)."""
    monkeypatch.setenv("MEMTRAIN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    # Most tests size plans of a few KiB against limits of a few KiB or MiB: they are given no process
    # overhead. The tests of the overhead itself (tests/test_jobplan.py) set or unset it.
    monkeypatch.setenv("MEMTRAIN_PROCESS_OVERHEAD", "0")


@pytest.fixture(scope="session")
def host_launcher(tmp_path_factory):
    """memtrain's CUDA kernels built as C++ for this CPU (memtrain/kernels/host.py); skips without g++."""
    from memtrain.kernels import all_kernels
    from memtrain.kernels.host import HostLauncher, HostUnavailable

    try:
        return HostLauncher(all_kernels(), tmp_path_factory.mktemp("host-kernels"))
    except HostUnavailable as exc:
        pytest.skip(str(exc))
