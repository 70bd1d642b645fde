"""Measured memory: NVML (pynvml) for the GPU, CuPy's pool for what memtrain
allocated there, and tracemalloc / RSS / MemAvailable on the CPU.

Nothing here raises because a driver is missing: NVML problems become a
`NvmlState(ok=False, reason=...)` that callers print as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class NvmlState:
    ok: bool
    reason: str = ""
    driver_version: str = ""


def _pynvml():
    import pynvml  # noqa: PLC0415 - optional at run time: only GPU paths need it

    return pynvml


def nvml_state() -> NvmlState:
    try:
        nv = _pynvml()
    except ImportError:
        return NvmlState(False, "nvidia-ml-py (pynvml) is not installed")
    try:
        nv.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return NvmlState(False, f"no NVIDIA driver found ({exc})")
    try:
        return NvmlState(True, driver_version=_text(nv.nvmlSystemGetDriverVersion()))
    except Exception as exc:
        return NvmlState(False, f"NVML failed: {exc}")


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def normalize_pci_bus_id(bus_id: str) -> str:
    """NVML says 00000000:3B:00.0, CUDA says 0000:3b:00.0: compare on (domain, bus, device, function)."""
    dom, rest = str(bus_id).strip().split(":", 1)
    return f"{int(dom, 16):08X}:{rest.upper()}"


def gpu_list(with_processes: bool = True) -> list:
    """Every GPU NVML sees: index, uuid, name, PCI bus id, memory, health, processes."""
    state = nvml_state()
    if not state.ok:
        return []
    nv = _pynvml()
    out = []
    for i in range(nv.nvmlDeviceGetCount()):
        h = nv.nvmlDeviceGetHandleByIndex(i)
        out.append(_describe(nv, h, i, state.driver_version, with_processes))
    return out


def _optional(fn, *args):
    try:
        return fn(*args)
    except Exception:  # not supported on this device (e.g. power on some boards)
        return None


def _describe(nv, h, index, driver, with_processes) -> dict:
    mem = nv.nvmlDeviceGetMemoryInfo(h)
    util = _optional(nv.nvmlDeviceGetUtilizationRates, h)
    power = _optional(nv.nvmlDeviceGetPowerUsage, h)
    info = {
        "index": index,
        "uuid": _text(nv.nvmlDeviceGetUUID(h)),
        "name": _text(nv.nvmlDeviceGetName(h)),
        "pci_bus_id": normalize_pci_bus_id(_text(nv.nvmlDeviceGetPciInfo(h).busId)),
        "driver_version": driver,
        "memory_total": int(mem.total),
        "memory_used": int(mem.used),
        "memory_free": int(mem.free),
        "utilization": None if util is None else util.gpu / 100.0,
        "temperature_c": _optional(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU),
        "power_w": None if power is None else power / 1000.0,
    }
    if with_processes:
        procs = _optional(nv.nvmlDeviceGetComputeRunningProcesses, h) or []
        info["processes"] = [{"pid": p.pid, "used_bytes": p.usedGpuMemory} for p in procs]
    return info


def handle_for_cuda_device(index: int):
    """The NVML handle of CUDA device `index`: the CUDA ordinal need not equal the NVML
    index (CUDA_VISIBLE_DEVICES, FASTEST_FIRST). Matched by the device's UUID first, which
    on a MIG instance is the instance's own ("MIG-..."; its PCI bus id is the parent GPU's),
    then by PCI bus id (a CuPy or driver that reports no UUID)."""
    import cupy  # noqa: PLC0415

    nv = _pynvml()
    nv.nvmlInit()
    for uuid in cuda_uuids(cupy, index):
        try:
            return nv.nvmlDeviceGetHandleByUUID(uuid.encode())
        except Exception:  # NVMLError_NotFound: not this prefix (or an older driver)
            continue
    bus = normalize_pci_bus_id(cupy.cuda.Device(index).pci_bus_id)
    return nv.nvmlDeviceGetHandleByPciBusId(bus.encode() if isinstance(bus, str) else bus)


def cuda_uuids(cupy, index: int) -> list:
    """NVML's spellings of CUDA device `index`'s UUID: "GPU-..." for a whole GPU, "MIG-..." for a
    MIG instance (CUDA reports the same 16 bytes for both); [] where CuPy does not report it."""
    raw = cupy.cuda.runtime.getDeviceProperties(index).get("uuid")
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != 16:
        return []
    h = raw.hex()
    text = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return [f"GPU-{text}", f"MIG-{text}"]


def cuda_visible_id(uuid: str) -> str:
    """What CUDA_VISIBLE_DEVICES must hold to show a job the GPU NVML calls `uuid`: that uuid,
    or for a GPU in MIG mode its first MIG instance's ("MIG-..."), since the parent's UUID hides
    the instances from CUDA. NVML only (the service creates no CUDA context)."""
    try:
        nv = _pynvml()
        nv.nvmlInit()
        handle = nv.nvmlDeviceGetHandleByUUID(uuid.encode())
        current, _pending = nv.nvmlDeviceGetMigMode(handle)
        if current != nv.NVML_DEVICE_MIG_ENABLE:
            return uuid
        return _text(nv.nvmlDeviceGetUUID(nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, 0)))
    except Exception:  # no NVML, or a GPU without MIG (NVMLError_NotSupported): the GPU's own uuid
        return uuid


def active_pool(cupy):
    """The CuPy memory pool allocating now: the one installed with
    `cupy.cuda.set_allocator(pool.malloc)` (a capped pool, say), else the default pool.
    Reading the default pool while another allocates sees none of the plan."""
    pool = getattr(cupy.cuda.get_allocator(), "__self__", None)
    return pool if hasattr(pool, "used_bytes") else cupy.get_default_memory_pool()


def gpu_uuid(index: int) -> str:
    """NVML's uuid of CUDA device `index` ("" without NVML: the label stays empty, the job goes on)."""
    try:
        uuid = _pynvml().nvmlDeviceGetUUID(handle_for_cuda_device(index))
    except Exception:  # no driver library
        return ""
    return uuid.decode() if isinstance(uuid, bytes) else str(uuid)


def gpu_free_bytes(index: int) -> int:
    return int(_pynvml().nvmlDeviceGetMemoryInfo(handle_for_cuda_device(index)).free)


def process_gpu_bytes(index: int, pid: int | None = None, pci_bus_id: str | None = None) -> int | None:
    """This process's (or `pid`'s) memory on CUDA device `index` as NVML reports it
    (None if not listed). With `pci_bus_id` the device is found without CuPy (the
    exporter process, which never imports it)."""
    nv = _pynvml()
    pid = os.getpid() if pid is None else pid
    if pci_bus_id:
        nv.nvmlInit()
        handle = nv.nvmlDeviceGetHandleByPciBusId(normalize_pci_bus_id(pci_bus_id).encode())
    else:
        handle = handle_for_cuda_device(index)
    for p in nv.nvmlDeviceGetComputeRunningProcesses(handle):
        # None: the driver has no figure (pynvml's NVML_VALUE_NOT_AVAILABLE), e.g. under some vGPUs
        if p.pid == pid and p.usedGpuMemory is not None:
            return int(p.usedGpuMemory)
    return None  # not listed: in a container NVML reports the host's PIDs


# -- CPU -----------------------------------------------------------------------


def proc_kib(path: str, key: str) -> int:
    """A "Key:   123 kB" line of a /proc file, in bytes."""
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{key} not found in {path}")


def mem_available() -> int:
    """The kernel's estimate of memory available without swapping (MemAvailable)."""
    return proc_kib("/proc/meminfo", "MemAvailable")


def mem_total() -> int:
    return proc_kib("/proc/meminfo", "MemTotal")


def rss(pid: int | None = None) -> int:
    """Resident set size of this process (or of `pid`)."""
    with open(f"/proc/{pid or 'self'}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


# -- CuPy pool -----------------------------------------------------------------


def pool_peak_hook(pool):
    """A cupy.cuda.MemoryHook recording the pool's high-water mark while active
    (`with hook:`); `hook.peak` is in bytes, `hook.reset()` starts again."""
    import cupy  # noqa: PLC0415

    class PoolPeak(cupy.cuda.MemoryHook):
        name = "memtrain_pool_peak"

        def __init__(self):
            self.pool = pool
            self.peak = pool.used_bytes()

        def reset(self):
            self.peak = self.pool.used_bytes()

        def malloc_postprocess(self, device_id, size, mem_size, mem_ptr, pmem_id):
            self.peak = max(self.peak, self.pool.used_bytes())

    return PoolPeak()


def device_report() -> dict:
    """What `memtrain devices` shows: NVML's GPUs, or the CPU view and why there is no GPU."""
    state = nvml_state()
    report = {
        "schema": "memtrain.devices/1",
        "nvml": {"ok": state.ok, "reason": state.reason, "driver_version": state.driver_version},
        "gpus": gpu_list() if state.ok else [],
        "cpu": {"model": cpu_model(), "cores": os.cpu_count(), "memory_total": mem_total(),
                "memory_available": mem_available(), "process_rss": rss()},
    }
    return report
