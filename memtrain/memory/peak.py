"""PeakMeter: the measured peak of a job's training memory on the CPU.

tracemalloc is process-wide, so one meter traces at a time; the meter holds
what module globals used to (the peak before a checkpoint write, the bytes
allocated before tracing began), so a second job in the same process starts
from its own zero.
"""

from __future__ import annotations

import tracemalloc


class PeakMeter:
    """tracemalloc's peak since start(), checkpoint writes excluded (hold/reset
    around them), plus `untraced` bytes the plan counts that were allocated
    before tracing began (a data set the trainer adopted)."""

    def __init__(self):
        self.active = False
        self.held = 0  # the highest training peak seen before the last checkpoint write
        self.untraced = 0

    def start(self) -> None:
        self.held = self.untraced = 0
        tracemalloc.start()
        self.active = True

    def stop(self) -> None:
        if self.active and tracemalloc.is_tracing():
            tracemalloc.stop()
        self.active = False

    def peak(self) -> int | None:
        if not (self.active and tracemalloc.is_tracing()):
            return None
        return max(self.held, tracemalloc.get_traced_memory()[1]) + self.untraced

    def hold(self) -> None:
        """Before a checkpoint write: keep the training peak, then reset() after it."""
        if self.active and tracemalloc.is_tracing():
            self.held = max(self.held, tracemalloc.get_traced_memory()[1])

    def reset(self) -> None:
        if self.active and tracemalloc.is_tracing():
            tracemalloc.reset_peak()
