"""Learning-rate schedules (course: learning-rate schedules), pure functions of the step k.

A schedule maps k = 0, 1, 2, ... (the optimizer step about to be taken) to a
rate. Decide per step or per epoch by what you count as k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from memtrain.errors import ConfigError
from memtrain.validate import check_scalar


class Schedule:
    name = ""

    def __call__(self, k: int) -> float:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class Constant(Schedule):
    lr: float
    name = "constant"

    def __call__(self, k):
        return self.lr


@dataclass(frozen=True)
class StepDecay(Schedule):
    """lr * gamma^(number of milestones passed); ResNet: gamma 0.1 at 30, 60, 90."""

    lr: float
    milestones: tuple = (30, 60, 90)
    gamma: float = 0.1
    name = "step"

    def __call__(self, k):
        return self.lr * self.gamma ** sum(1 for m in self.milestones if k >= m)


@dataclass(frozen=True)
class Exponential(Schedule):
    lr: float
    gamma: float = 0.99
    name = "exponential"

    def __call__(self, k):
        return self.lr * self.gamma**k


@dataclass(frozen=True)
class Cosine(Schedule):
    """alpha_k = 1/2 alpha_0 (1 + cos(k pi / T)), held at the end after T."""

    lr: float
    total: int
    name = "cosine"

    def __call__(self, k):
        k = min(k, self.total)
        return 0.5 * self.lr * (1.0 + math.cos(math.pi * k / self.total))


@dataclass(frozen=True)
class Linear(Schedule):
    """alpha_0 (1 - k/T), held at 0 after T."""

    lr: float
    total: int
    name = "linear"

    def __call__(self, k):
        return self.lr * max(0.0, 1.0 - k / self.total)


@dataclass(frozen=True)
class InverseSqrt(Schedule):
    """alpha_0 / sqrt(k), with k counted from 1 (the first step takes alpha_0)."""

    lr: float
    name = "inverse_sqrt"

    def __call__(self, k):
        return self.lr / math.sqrt(k + 1)


@dataclass(frozen=True)
class CosineRestarts(Schedule):
    """Cosine annealing with warm restarts (SGDR): periods T0, T0*mult, T0*mult^2, ..."""

    lr: float
    period: int
    mult: float = 1.0
    name = "cosine_restarts"

    def __call__(self, k):
        t, length = k, float(self.period)
        while t >= length:
            t -= length
            length *= self.mult
        return 0.5 * self.lr * (1.0 + math.cos(math.pi * t / length))


@dataclass(frozen=True)
class Warmup(Schedule):
    """Linear warm-up from lr/steps to the inner schedule's rate over `steps`, then the inner schedule."""

    inner: Schedule
    steps: int
    name = "warmup"

    def __call__(self, k):
        if k < self.steps:
            return self.inner(0) * (k + 1) / self.steps
        return self.inner(k - self.steps)


SCHEDULES = ("constant", "step", "exponential", "cosine", "linear", "inverse_sqrt", "cosine_restarts")


def make_schedule(name: str = "constant", lr: float = 0.001, *, total_steps: int | None = None,
                  warmup: int = 0, milestones=(30, 60, 90), gamma: float | None = None,
                  period: int | None = None, mult: float = 1.0) -> Schedule:
    """Build a schedule by name; `warmup` > 0 puts a linear warm-up in front of it."""
    key = str(name).strip().lower()
    lr = check_scalar(lr, "lr", float, min_val=0, include_boundaries="neither")
    total_steps = check_scalar(total_steps, "total_steps", int, allow_none=True)
    if key not in SCHEDULES:
        raise ConfigError(f"schedule: unknown {name!r}; expected one of {', '.join(SCHEDULES)}")
    warmup = check_scalar(warmup, "warmup", int, min_val=0)
    needs_total = key in ("cosine", "linear")
    if needs_total and (not total_steps or total_steps <= 0):
        raise ConfigError(f"total_steps: schedule {key} needs a positive number of steps, got {total_steps!r}")
    gamma = check_scalar(gamma, "gamma", float, min_val=0, max_val=1, include_boundaries="right", allow_none=True)
    mult = check_scalar(mult, "mult", float, min_val=1)
    period = check_scalar(period, "period", int, min_val=1, allow_none=True)
    if key == "constant":
        s = Constant(lr)
    elif key == "step":
        if any(int(m) <= 0 for m in milestones) or list(milestones) != sorted(milestones):
            raise ConfigError(f"milestones: expected increasing positive steps, got {list(milestones)}")
        s = StepDecay(lr, tuple(int(m) for m in milestones), 0.1 if gamma is None else gamma)
    elif key == "exponential":
        s = Exponential(lr, 0.99 if gamma is None else gamma)
    elif key == "cosine":
        s = Cosine(lr, int(total_steps) - int(warmup) if total_steps > warmup else int(total_steps))
    elif key == "linear":
        s = Linear(lr, int(total_steps) - int(warmup) if total_steps > warmup else int(total_steps))
    elif key == "inverse_sqrt":
        s = InverseSqrt(lr)
    else:
        p = period or (total_steps or 0)
        if p <= 0:
            raise ConfigError("period: cosine_restarts needs a positive period (or total_steps)")
        s = CosineRestarts(lr, int(p), float(mult))
    return Warmup(s, int(warmup)) if warmup else s
