import pytest

from memtrain.backend import _import_cupy


def _cuda_reason():
    cupy, why = _import_cupy()
    return None if cupy is not None else why


_CUDA_MISSING = _cuda_reason()


def pytest_collection_modifyitems(config, items):
    if _CUDA_MISSING is None:
        return
    skip = pytest.mark.skip(reason=f"no CUDA device: {_CUDA_MISSING}")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


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
