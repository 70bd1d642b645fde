"""The memory a group of processes holds, each page counted once.

A page is private (one process maps it: its heap, NumPy's buffers, numba's compiled code)
or shared (a library's code and read-only data mapped by several processes: libpython,
NumPy's and OpenBLAS's shared objects). Summing the processes' resident sizes counts a
shared library once per process; this counts every process's private pages plus each
shared mapping once, at the most any of the processes has resident of it
(/proc/PID/smaps: Private_Clean + Private_Dirty, Shared_Clean + Shared_Dirty per mapping).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ \S+ ([0-9a-f]+) (\S+) (\d+)\s*(.*)$")
_FIELDS = {"Private_Clean": "private", "Private_Dirty": "private", "Shared_Clean": "shared",
           "Shared_Dirty": "shared"}


@dataclass(frozen=True)
class GroupMemory:
    private: int  # bytes only one process maps, summed over the processes
    shared: int  # bytes of pages several processes map, each mapping counted once

    @property
    def total(self) -> int:
        return self.private + self.shared


def group_memory(pids) -> GroupMemory:
    """Private pages of every process in `pids` plus their shared mappings counted once."""
    private, shared = 0, {}
    for pid in pids:
        for key, own, common in _mappings(pid):
            private += own
            shared[key] = max(shared.get(key, 0), common)
    return GroupMemory(private, sum(shared.values()))


def _mappings(pid):
    """(mapping key, private bytes, shared bytes) for each mapping of `pid`. A file mapping's
    key is the file and offset (the same pages in every process that maps them); an
    anonymous one is its own (pid, start address)."""
    key, counts = None, {"private": 0, "shared": 0}
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = _HEADER.match(line)
            if m:
                if key is not None:
                    yield key, counts["private"], counts["shared"]
                offset, dev, inode, path = m.groups()
                key = (dev, inode, offset, path) if inode != "0" else (pid, line.split(" ", 1)[0])
                counts = {"private": 0, "shared": 0}
                continue
            name, _, rest = line.partition(":")
            if name in _FIELDS:
                counts[_FIELDS[name]] += int(rest.split()[0]) * 1024  # smaps counts in kB
    if key is not None:
        yield key, counts["private"], counts["shared"]
