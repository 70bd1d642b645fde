"""The CUDA device overhead, measured once per GPU model and remembered.

On the first use of a GPU model memtrain measures what the process holds on
the device beyond its own buffers: NVML's figure for this process after CUDA
initialisation and a cuBLAS GEMM, minus the bytes CuPy's pool still holds
(overhead.measure_cuda_overhead). The figure is kept per model in
`cuda-overhead.json` in the cache dir ($MEMTRAIN_CACHE_DIR, else
$XDG_CACHE_HOME/memtrain, else ~/.cache/memtrain), so later runs, and
`memtrain estimate --device cuda` on a machine without that GPU, use the
measurement instead of the assumed default.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from memtrain.memory import overhead as ovh

FILE = "cuda-overhead.json"


def cache_dir() -> Path:
    explicit = os.environ.get("MEMTRAIN_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "memtrain"


def load() -> dict:
    """{gpu model: {"bytes": n, ...}}; an unreadable or malformed file counts as empty."""
    try:
        data = json.loads((cache_dir() / FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict) and isinstance(v.get("bytes"), int)}


def record(model: str, nbytes: int, **details) -> None:
    """Remember a measurement (written atomically: a crash leaves the old file)."""
    data = load()
    data[model] = {"bytes": int(nbytes), "measured_at": round(time.time()), **details}
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, d / FILE)


def gpu_model(index: int) -> str:
    import cupy  # noqa: PLC0415 - CuPy only when a GPU is measured

    name = cupy.cuda.runtime.getDeviceProperties(index)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def cuda_overhead(backend=None, *, measure=ovh.measure_cuda_overhead, model_of=gpu_model) -> tuple:
    """(bytes, source) for a CUDA plan.

    With a GPU (`backend`): the cached figure of its model, else measured now and
    cached ("measured"). Without one: the cached figure when exactly one model is
    cached ("measured", it is that model's), else the assumed default ("assumed"), which is also
    the answer where NVML does not list this process (nothing is cached then)."""
    data = load()
    if backend is not None:
        model = model_of(backend.index)
        if model in data:
            return data[model]["bytes"], "measured"
        try:
            nbytes = measure(backend.index)
        except ovh.OverheadUnmeasured:  # NVML cannot see this process: assumed, and nothing cached
            return ovh.assumed("cuda")
        record(model, nbytes)
        return nbytes, "measured"
    if len(data) == 1:
        return next(iter(data.values()))["bytes"], "measured"
    return ovh.assumed("cuda")


PROCESS_FILE = "process-overhead.json"


def process_key() -> str:
    """What a CPU process overhead holds for: this Python, its NumPy and memtrain, this machine."""
    import platform  # noqa: PLC0415
    import sys  # noqa: PLC0415

    import numpy  # noqa: PLC0415

    from memtrain import __version__  # noqa: PLC0415

    return f"{platform.node()} {sys.executable} python {platform.python_version()} numpy {numpy.__version__} " \
           f"memtrain {__version__}"


def process_overhead(measure, *, key=None) -> tuple:
    """(bytes, source) of a CPU job's processes besides its plan: the cached figure for this
    machine and Python ("measured <when>"), else `measure()` now (a dict with "bytes"), cached.
    Where measuring fails, the assumed figure ("assumed"), and nothing is cached."""
    key = key or process_key()
    try:
        data = json.loads((cache_dir() / PROCESS_FILE).read_text())
        entry = data.get(key) if isinstance(data, dict) else None
    except (OSError, ValueError):
        data, entry = {}, None
    if isinstance(entry, dict) and isinstance(entry.get("bytes"), int):
        return entry["bytes"], f"measured {entry.get('measured', '')}".strip()
    try:
        found = measure()
    except ovh.OverheadUnmeasured:
        return ovh.assumed_process()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    data = data if isinstance(data, dict) else {}
    data[key] = {**found, "bytes": int(found["bytes"]), "measured": stamp}
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{PROCESS_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, d / PROCESS_FILE)
    return int(found["bytes"]), f"measured {stamp}"
