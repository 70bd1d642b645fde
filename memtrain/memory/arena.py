"""Allocate a plan's buffers, once, and nothing else."""

from __future__ import annotations

from memtrain.errors import ConfigError
from memtrain.memory.plan import MemoryPlan


def allocate(plan: MemoryPlan, xp, *, existing: dict | None = None, observer=None) -> dict:
    """name -> array for every buffer of `plan`.

    `existing` supplies buffers owned elsewhere (the model's parameters); each
    must match the plan's shape and dtype exactly, so what runs is what was
    planned. Everything is zero-filled: a reused buffer never leaks stale
    values. `observer(buf, array)` is called after each allocation, so a
    profiler can attribute measured bytes to buffers.
    """
    existing = existing or {}
    arrays = {}
    for buf in plan.buffers:
        if buf.name in existing:
            a = existing[buf.name]
            if tuple(a.shape) != tuple(buf.shape) or a.dtype.name != buf.dtype:
                raise ConfigError(
                    f"buffer {buf.name}: expected {buf.shape} {buf.dtype}, got {tuple(a.shape)} {a.dtype.name}"
                )
            arrays[buf.name] = a
        else:
            arrays[buf.name] = xp.zeros(buf.shape, dtype=buf.dtype)
            if observer is not None:
                observer(buf, arrays[buf.name])
    return arrays
