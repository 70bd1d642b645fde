"""Shared by the bench/gpu_*.py parts of bench/gpu_suite.sh: the device, a
deadline each part keeps, and the JSON each part writes."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # memtrain from this checkout


def backend_for(dry_run: bool):
    """cuda:0, or the CPU in --dry-run (the control flow, at toy sizes)."""
    from memtrain.backend import get_backend  # noqa: PLC0415

    return get_backend("cpu" if dry_run else "cuda")


class Deadline:
    """A part stops starting new work `margin` seconds before its limit (the shell's
    `timeout` is the hard stop behind it), and says what it skipped."""

    def __init__(self, seconds: float, margin: float = 5.0):
        self.end = time.monotonic() + seconds - margin
        self.skipped: list = []

    def left(self) -> float:
        return self.end - time.monotonic()

    def allows(self, what: str) -> bool:
        if self.left() > 0:
            return True
        self.skipped.append(what)
        return False


def write(path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, path)


def versions(backend) -> dict:
    import numpy as np  # noqa: PLC0415

    import memtrain  # noqa: PLC0415

    out = {"memtrain": memtrain.__version__, "numpy": np.__version__, "device": backend.name}
    if backend.is_cuda:
        cp = backend.xp
        props = cp.cuda.runtime.getDeviceProperties(backend.index)
        name = props["name"]
        out.update(cupy=cp.__version__, gpu=name.decode() if isinstance(name, bytes) else name,
                   cuda_runtime=cp.cuda.runtime.runtimeGetVersion(), cuda_driver=cp.cuda.runtime.driverGetVersion())
    return out
