"""Which trials may run at the same time: a pure function of their planned bytes.

Trials run in waves, one wave after another; the trials of a wave run
concurrently in worker processes. A wave never holds more than `workers`
trials, and never trials whose plans together exceed the budget (a
hypothesis test in tests/test_sweep.py checks both). A trial whose plan alone
exceeds the budget is never scheduled: it is returned as skipped.

Packing is first-fit decreasing: the largest plan first, each into the first
wave with room for it. Waves are what `memtrain sweep` prints before it starts
and what it then runs, so the printed schedule is the schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memtrain.errors import ConfigError


@dataclass
class WavePlan:
    waves: list = field(default_factory=list)  # [[key, ...], ...] in the order they run
    skipped: list = field(default_factory=list)  # keys whose plan alone exceeds the budget
    budget: int = 0
    workers: int = 1


def plan_waves(items, budget: int, workers: int) -> WavePlan:
    """items: [(key, planned_bytes)]; waves of at most `workers` keys whose bytes sum to at most `budget`."""
    if budget < 0:
        raise ConfigError(f"budget: expected bytes >= 0, got {budget!r}")
    if workers < 1:
        raise ConfigError(f"workers: expected a positive integer, got {workers!r}")
    items = list(items)
    for key, nbytes in items:
        if nbytes < 0:
            raise ConfigError(f"planned bytes of {key!r}: expected >= 0, got {nbytes!r}")
    fits = [(k, b) for k, b in items if b <= budget]
    skipped = [k for k, b in items if b > budget]
    order = sorted(range(len(fits)), key=lambda i: (-fits[i][1], i))  # stable: ties keep input order
    waves, used = [], []
    for i in order:
        key, nbytes = fits[i]
        for w, wave in enumerate(waves):
            if len(wave) < workers and used[w] + nbytes <= budget:
                wave.append(key)
                used[w] += nbytes
                break
        else:
            waves.append([key])
            used.append(nbytes)
    return WavePlan(waves=waves, skipped=skipped, budget=budget, workers=workers)
