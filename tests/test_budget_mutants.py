"""memory/budget.py's one-line refusals, in-process and in milliseconds (the process-starting tests
of tests/test_budget.py are too slow to run per mutant: mutation/modules.toml)."""

import resource

import pytest

from memtrain.backend import get_backend
from memtrain.errors import DeviceError
from memtrain.memory import budget as bud
from memtrain.units import format_bytes


def test_a_memory_limit_below_free_memory_is_the_budget_and_named():
    with pytest.raises(DeviceError) as e:
        bud.check_fits(lambda b: 1000 * b, 10, get_backend("cpu"), limit=5_000)
    assert str(e.value) == ("training.batch_size: batch 10 needs 9.77 KiB (10,000 B) but 4.88 KiB (5,000 B) is "
                            "available (training.memory_limit); the largest batch that fits is 5")
    bud.check_fits(lambda b: 1000 * b, 5, get_backend("cpu"), limit=5_000)  # exactly the limit fits


def _with_soft_as(soft):
    """check_address_space_limit's answer under a soft RLIMIT_AS of `soft`, restored at once
    (the limit only refuses new mappings; the check maps nothing before it raises)."""
    old = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (soft, old[1]))
    try:
        bud.check_address_space_limit()
        return None
    except DeviceError as exc:
        return exc
    finally:
        resource.setrlimit(resource.RLIMIT_AS, old)


def test_an_address_space_limit_below_what_the_libraries_map_is_one_line():
    if resource.getrlimit(resource.RLIMIT_AS)[1] != resource.RLIM_INFINITY:
        pytest.skip("the hard RLIMIT_AS is set here: a soft limit cannot be raised back above it")
    low = bud.LIBRARY_ADDRESS_SPACE - 4096
    err = _with_soft_as(low)
    assert str(err) == (f"RLIMIT_AS: this process may map {format_bytes(low)} of address space (ulimit -v, prlimit "
                        f"--as); a job's libraries (OpenBLAS with its thread buffers, SciPy, scikit-learn, numba) map "
                        f"about {format_bytes(bud.LIBRARY_ADDRESS_SPACE)} before any training memory: raise the limit")
    assert _with_soft_as(bud.LIBRARY_ADDRESS_SPACE) is None  # exactly what they map: allowed
    assert _with_soft_as(resource.RLIM_INFINITY) is None  # no limit
