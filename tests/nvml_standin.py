"""A stand-in for pynvml, reading the CuPy stand-in's device (tests/cupy_standin.py).

Written from pynvml's documented API, for what memtrain calls: a process list that does or does
not include this process (in a container NVML lists the host's PIDs), a per-process figure that
may be None (pynvml's NVML_VALUE_NOT_AVAILABLE), handles by UUID and PCI bus id, MIG mode.
"""

from __future__ import annotations

import os
import types

from cupy_standin import DEVICE_TOTAL, mem_get_info


class NVMLError(Exception):
    pass


def nvml(*, pid=None, used_none=False, mig=False) -> types.ModuleType:
    """A pynvml for the stand-in device. It lists one process, `pid` (this one by default; a
    container's NVML lists host PIDs), using the context plus every pool; `used_none`: the driver
    gives no per-process figure (pynvml then sets usedGpuMemory to None). `mig`: the device is a
    MIG instance of a GPU whose own UUID and handle differ (CUDA's UUID is the instance's)."""
    h = bytes(range(16)).hex()
    own = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    handles = {"GPU-11111111-2222-3333-4444-555555555555": "parent", f"MIG-{own}": "mig"} if mig else {
        f"GPU-{own}": "gpu"}
    nv = types.ModuleType("pynvml")
    nv.NVMLError = NVMLError
    nv.NVML_TEMPERATURE_GPU = 0
    nv.nvmlInit = lambda: None
    nv.nvmlSystemGetDriverVersion = lambda: "550.54"
    nv.nvmlDeviceGetCount = lambda: 1
    nv.nvmlDeviceGetHandleByIndex = lambda i: "parent" if mig else "gpu"
    nv.nvmlDeviceGetHandleByPciBusId = lambda bus: "parent" if mig else "gpu"

    def by_uuid(uuid):
        text = uuid.decode() if isinstance(uuid, bytes) else uuid
        if text not in handles:
            raise NVMLError("Not Found")
        return handles[text]

    nv.nvmlDeviceGetHandleByUUID = by_uuid
    nv.nvmlDeviceGetUUID = lambda handle: next(u for u, v in handles.items() if v == handle)
    nv.nvmlDeviceGetName = lambda handle: "Stand-in GPU (CPU)"
    nv.NVML_DEVICE_MIG_ENABLE = 1
    nv.nvmlDeviceGetMigMode = lambda handle: (1, 1) if handle == "parent" else (0, 0)
    nv.nvmlDeviceGetMigDeviceHandleByIndex = lambda handle, i: "mig"

    def processes(handle):
        used = None if used_none else DEVICE_TOTAL - mem_get_info()[0]
        return [types.SimpleNamespace(pid=os.getpid() if pid is None else pid, usedGpuMemory=used)]

    nv.nvmlDeviceGetComputeRunningProcesses = processes
    nv.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(
        total=DEVICE_TOTAL, free=mem_get_info()[0], used=DEVICE_TOTAL - mem_get_info()[0])
    return nv
