"""How much memory a plan may take: the free memory now, less a safety margin.

"Free" is what this process can really get: on the CPU the least of MemAvailable
(the host's), the room left under the process' cgroup limit (a container's
`memory.max`, v2, or `memory.limit_in_bytes`, v1) and the room left under its
RLIMIT_AS. An auto batch with no --memory-limit on the CPU takes a default share
of that (DEFAULT_CPU_SHARE, at most DEFAULT_CPU_CAP), not all of it: the machine
keeps running other things.
"""

from __future__ import annotations

import resource
from pathlib import Path

from memtrain.errors import DeviceError
from memtrain.memory import measure
from memtrain.memory.batch import largest_batch
from memtrain.units import format_bytes

# Safety margin when none is given: a fixed part plus 0.1% of the budget.
# CPU: tracemalloc's peak exceeded the plan by at most ~56 KiB over the whole
# verification grid (Python objects, NumPy's bounded ufunc buffers), and under
# a hard RLIMIT_AS cap the address space grew by ~0.03% more than the plan
# (page rounding and mmap headers of each buffer; bench/autobatch_vs_doubling.py).
# CUDA: an assumption, not yet measured in this project, for the pool's
# fragmentation beyond the 512-byte rounding the plan already counts.
DEFAULT_MARGIN = {"cpu": 256 * 1024, "cuda": 8 * 1024**2}
MARGIN_FRACTION = 0.001

DEFAULT_CPU_SHARE = 0.25
DEFAULT_CPU_CAP = 4 << 30

CGROUP_ROOT = Path("/sys/fs/cgroup")


def default_margin(kind: str, budget: int) -> int:
    return DEFAULT_MARGIN[kind] + int(MARGIN_FRACTION * budget)


def with_margin(kind: str, raw: int, margin: int | None = None) -> tuple:
    """(budget a plan must fit, margin): the one margin estimate and autobatch keep."""
    margin = default_margin(kind, raw) if margin is None else int(margin)
    return raw - margin, margin


def device_budget(backend) -> tuple:
    """Free memory now: (bytes, where it came from)."""
    if backend.is_cuda:
        return measure.gpu_free_bytes(backend.index), f"free on {backend.name} now (NVML)"
    return cpu_free()


def auto_budget(backend, already_allocated: int = 0) -> tuple:
    """What an auto batch without --memory-limit fits: all free memory on a GPU (the
    job owns it), a stated share of it on the CPU. `already_allocated`: bytes of the
    plan that exist already (a job's data set), added back to the free memory."""
    free, source = device_budget(backend)
    free += already_allocated
    if backend.is_cuda:
        return free, source
    return default_cpu_budget(free, source)


def default_cpu_budget(free: int, source: str) -> tuple:
    share = min(int(free * DEFAULT_CPU_SHARE), DEFAULT_CPU_CAP)
    return share, (f"default: {DEFAULT_CPU_SHARE:.0%} of available memory ({format_bytes(free)}, {source}), "
                   f"at most {format_bytes(DEFAULT_CPU_CAP)}; set --memory-limit")


def cpu_free() -> tuple:
    """(bytes, source): the least of MemAvailable, the cgroup's room and RLIMIT_AS's room."""
    candidates = [(measure.mem_available(), "MemAvailable")]
    room = cgroup_room()
    if room is not None:
        candidates.append((room, "cgroup memory limit"))
    room = rlimit_as_room()
    if room is not None:
        candidates.append((room, "RLIMIT_AS"))
    free, source = min(candidates)
    return max(free, 0), f"{source} now"


def rlimit_as_room() -> int | None:
    """Address space this process may still map under RLIMIT_AS (None: unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    return soft - measure.proc_kib("/proc/self/status", "VmSize")  # proc_kib is in bytes already


# Address space the libraries a job loads map (NumPy's and SciPy's OpenBLAS with their thread
# buffers, scikit-learn, numba/llvmlite): VmPeak of the demo job was 584 MiB on the 2-core dev VM
# (docs/example-job.toml, --device cpu). Under a lower RLIMIT_AS, SciPy's OpenBLAS spun at 100% CPU
# inside `import scipy.special` (256 MiB) and llvmlite failed to load (384, 512 MiB).
LIBRARY_ADDRESS_SPACE = 640 * 1024**2


def check_address_space_limit() -> None:
    """One line instead of a spinning import or a traceback: a job needs its libraries mapped."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY and soft < LIBRARY_ADDRESS_SPACE:
        raise DeviceError(f"RLIMIT_AS: this process may map {format_bytes(soft)} of address space (ulimit -v, "
                          f"prlimit --as); a job's libraries (OpenBLAS with its thread buffers, SciPy, scikit-learn, "
                          f"numba) map about {format_bytes(LIBRARY_ADDRESS_SPACE)} before any training memory: "
                          "raise the limit")


def cgroup_room(root: Path = CGROUP_ROOT, proc_cgroup: str = "/proc/self/cgroup") -> int | None:
    """Bytes left under the tightest memory limit of this process' cgroup and its
    ancestors (cgroup v2 memory.max - memory.current, v1 limit_in_bytes - usage_in_bytes);
    None when no limit is set or nothing can be read."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        hid, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hid == "0" and controllers == "":  # v2 unified hierarchy
            rooms += _walk(root, path, "memory.max", "memory.current")
        elif "memory" in controllers.split(","):  # v1 memory controller
            rooms += _walk(root / "memory", path, "memory.limit_in_bytes", "memory.usage_in_bytes")
    return min(rooms) if rooms else None


def _walk(base: Path, path: str, limit_file: str, usage_file: str) -> list:
    """limit - usage of the cgroup at `path` and each ancestor that sets a limit."""
    rooms, d = [], base / path.strip("/")
    while True:
        limit, usage = _read_int(d / limit_file), _read_int(d / usage_file)
        if limit is not None and usage is not None and limit < (1 << 60):  # v1's "no limit" is ~2**63
            rooms.append(limit - usage)
        if d == base or base not in d.parents:
            return rooms
        d = d.parent


def _read_int(p: Path) -> int | None:
    try:
        text = p.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (v2: no limit) -> None


def check_fits(total_at, batch: int, backend, already_allocated: int = 0, field: str = "training.batch_size",
               limit: int | None = None, limit_source: str = "training.memory_limit"):
    """Before anything is allocated: a fixed batch whose plan cannot fit the device's
    free memory, or `limit` (training.memory_limit) when that is less, is one clear error
    (bytes needed and available, the largest batch that fits), not a MemoryError
    half-way through building the trainer."""
    need = total_at(batch)
    free, source = device_budget(backend)
    free += already_allocated
    if limit is not None and limit < free:
        free, source = limit, limit_source
    if need <= free:
        return
    fit = largest_batch(total_at, free)
    largest = (f"the largest batch that fits is {fit.batch_size:,}" if fit.batch_size
               else f"not even batch 1 fits ({format_bytes(fit.shortfall)} short): use smaller layers or a "
               "smaller data set")
    raise DeviceError(f"{field}: batch {batch:,} needs {format_bytes(need)} ({need:,} B) but "
                        f"{format_bytes(free)} ({free:,} B) is available ({source}); {largest}")
