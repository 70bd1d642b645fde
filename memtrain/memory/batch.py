"""The largest batch a plan allows: solved on the plan, nothing allocated.

plan(B).total is non-decreasing in B (every batched buffer grows with B), so
a binary search on the plan function finds the largest B with
plan(B).total <= budget exactly, CUDA's 512-byte rounding included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from memtrain.errors import ConfigError
from memtrain.units import MAX_BATCH
from memtrain.validate import check_scalar


@dataclass(frozen=True)
class BatchFit:
    batch_size: int  # 0 when not even batch 1 fits
    total: int  # plan total at that batch (0 if none)
    budget: int
    shortfall: int  # bytes missing for batch 1 (0 when it fits)

    @property
    def utilisation(self) -> float:
        return self.total / self.budget if self.budget else 0.0


def check_batch_rows(batch: int, n_train: int | None, field: str = "training.batch_size") -> None:
    """A fixed batch larger than the training rows would plan (and allocate) buffers no step
    ever fills: refused, as the auto batch is capped at the training rows."""
    if n_train and batch > n_train:
        raise ConfigError(f"{field}: {batch:,} is larger than the {n_train:,} training rows; expected at most "
                          f"{n_train:,} (every row in one batch), or auto")


def round_batch(b: int, multiple_of: int | None = None, power_of_two: bool = False) -> int:
    """Round down to a multiple (GPUs favour multiples of 8) or a power of two; 0 if none fits."""
    if power_of_two:
        return 1 << (b.bit_length() - 1) if b >= 1 else 0
    if multiple_of and multiple_of > 1:
        return (b // multiple_of) * multiple_of
    return b


def largest_batch(total_at: Callable[[int], int], budget: int, *, multiple_of: int | None = None,
                  power_of_two: bool = False, max_batch: int | None = None) -> BatchFit:
    """Largest B <= max_batch (default MAX_BATCH) with total_at(B) <= budget, rounded
    down as asked. Only plans are evaluated: nothing is allocated."""
    check_scalar(multiple_of, "multiple_of", int, min_val=1, allow_none=True)
    cap = MAX_BATCH if max_batch is None else check_scalar(max_batch, "max_batch_size", int, min_val=1,
                                                              max_val=MAX_BATCH)
    one = total_at(1)
    if one > budget:
        return BatchFit(0, 0, budget, one - budget)
    if total_at(cap) <= budget:
        lo = hi = cap
    else:  # total_at(1) fits, total_at(cap) does not
        lo, hi = 1, 2
        while hi < cap and total_at(hi) <= budget:  # exponential bracket, then bisect
            lo, hi = hi, hi * 2
        hi = min(hi, cap)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if total_at(mid) <= budget:
            lo = mid
        else:
            hi = mid
    b = round_batch(lo, multiple_of, power_of_two)
    if b == 0:  # nothing at the asked granularity fits
        need = total_at(multiple_of or 1)
        return BatchFit(0, 0, budget, max(need - budget, 0))
    return BatchFit(b, total_at(b), budget, 0)


MAX_SIZES = 1000  # sizes one range may list (a table row each)


def parse_batch_sizes(text) -> list:
    """ "256" | "32,64,128" | "32:512" (doubling) | "32:512:32" (arithmetic), all inclusive."""
    s = str(text).strip()
    err = (f"batch-size: expected N, a list like 32,64,128 or a range like 32:512 or 32:512:32 "
           f"(at most {MAX_SIZES} sizes, each up to {MAX_BATCH:,}), got {text!r}")
    try:
        if ":" in s:
            parts = [int(p) for p in s.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            start, stop = parts[0], parts[1]
            if start < 1 or stop < start or stop > MAX_BATCH:
                raise ValueError
            if len(parts) == 3:
                if parts[2] < 1 or (stop - start) // parts[2] >= MAX_SIZES:
                    raise ValueError
                sizes = list(range(start, stop + 1, parts[2]))
            else:
                sizes, b = [], start
                while b <= stop:
                    sizes.append(b)
                    b *= 2
        else:
            sizes = [int(p) for p in s.split(",")]
    except ValueError:
        raise ConfigError(err) from None
    if not sizes or any(not 1 <= b <= MAX_BATCH for b in sizes):
        raise ConfigError(f"batch-size: every size must be an integer from 1 to {MAX_BATCH:,}, got {text!r}")
    return sizes
