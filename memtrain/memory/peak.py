"""PeakMeter: the measured peak of a job's training memory on the CPU.

tracemalloc is process-wide, so one meter traces at a time; the meter holds
what module globals used to (the peak before a checkpoint write, the bytes
allocated before tracing began), so a second job in the same process starts
from its own zero.

Modes (`training.measure`):
  "sampled"  the default: trace the first SAMPLE_STEPS training steps, then stop
             tracing. The steps are identical from then on (every buffer is the
             plan's, allocated once), so their peak is the job's; tracing every
             step would cost 2-70% of the step time and grow the process (the
             tracer keeps a record per allocation).
  "exact"    trace every step of the job (the peak of everything, always).
  "off"      no measurement.

What is reported is split in two: `peak()` is what the plan covers (NumPy's
buffers and step temporaries: tracemalloc's peak less the Python objects), and
`overhead()` is the Python objects the job loop holds (progress bar, history,
the tracer's view of the interpreter), which no plan of the training covers.
NumPy reports its data allocations to tracemalloc in its own domain, which is
how the two are told apart.
"""

from __future__ import annotations

import tracemalloc

import numpy as np

MODES = ("sampled", "exact", "off")
SAMPLE_STEPS = 5
_NUMPY_DOMAIN = np.lib.tracemalloc_domain


class PeakMeter:
    """tracemalloc's peak since start(), checkpoint writes excluded (hold/reset
    around them), plus `untraced` bytes the plan counts that were allocated
    before tracing began (a data set the trainer adopted)."""

    def __init__(self, mode: str = "sampled", sample_steps: int = SAMPLE_STEPS):
        if mode not in MODES:
            raise ValueError(f"measure: expected one of {', '.join(MODES)}, got {mode!r}")
        self.mode, self.sample_steps = mode, sample_steps
        self.active = False  # tracing now
        self.held = 0  # the highest training peak seen before the last checkpoint write
        self.untraced = 0
        self.python_bytes = None  # Python objects traced at the last split (None: not split yet)
        self._frozen = None  # sampled mode, after sampling: the traced peak
        self._steps = 0

    def start(self) -> None:
        if self.mode == "off":
            return
        self.held = self.untraced = self._steps = 0
        self._frozen = self.python_bytes = None
        tracemalloc.start()
        self.active = True

    def stop(self) -> None:
        if self.active and tracemalloc.is_tracing():
            tracemalloc.stop()
        self.active = False

    def step_done(self) -> None:
        """After each training step: a sampled meter stops tracing after its sample."""
        if not self.active:
            return
        self._steps += 1
        if self.mode == "sampled" and self._steps >= self.sample_steps:
            self._split()
            self._frozen = self._traced_peak()
            self.stop()
        elif self.mode == "exact" and self.python_bytes is None and self._steps >= self.sample_steps:
            self._split()

    def _split(self) -> None:
        """The Python objects traced now: everything but NumPy's own domain."""
        snap = tracemalloc.take_snapshot()
        numpy = snap.filter_traces([tracemalloc.DomainFilter(True, _NUMPY_DOMAIN)])
        total = tracemalloc.get_traced_memory()[0]
        self.python_bytes = max(0, total - sum(s.size for s in numpy.statistics("filename")))

    def _traced_peak(self) -> int:
        return max(self.held, tracemalloc.get_traced_memory()[1])

    def measured_total(self) -> int | None:
        """tracemalloc's peak (plan and Python objects) plus the untraced bytes, or None."""
        if self._frozen is not None:
            return self._frozen + self.untraced
        if not (self.active and tracemalloc.is_tracing()):
            return None
        return self._traced_peak() + self.untraced

    def peak(self) -> int | None:
        """The peak of what the plan covers, or None when not measured."""
        total = self.measured_total()
        if total is None:
            return None
        return total - (self.python_bytes or 0)

    def overhead(self) -> int | None:
        """The job loop's Python objects (not the plan's), once split; None before."""
        return self.python_bytes

    def hold(self) -> None:
        """Before a checkpoint write: keep the training peak, then reset() after it."""
        if self.active and tracemalloc.is_tracing():
            self.held = self._traced_peak()

    def reset(self) -> None:
        if self.active and tracemalloc.is_tracing():
            tracemalloc.reset_peak()
