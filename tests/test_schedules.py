"""memtrain.optim.schedules against the course's formulas (COURSE.md, "Learning-rate schedules").

A schedule maps k = 0, 1, 2, ... (the step about to be taken) to a rate.
"""

from __future__ import annotations

import math
import re

import pytest

from memtrain.optim.schedules import SCHEDULES, make_schedule

LR = 0.1


def approx(x):
    return pytest.approx(x, rel=1e-12, abs=1e-15)


def test_the_seven_schedules_are_listed():
    assert set(SCHEDULES) == {"constant", "step", "exponential", "cosine", "linear", "inverse_sqrt",
                              "cosine_restarts"}


def test_constant():
    s = make_schedule("constant", LR)
    assert [s(k) for k in (0, 1, 10, 10**6)] == [LR] * 4


def test_step_resnet():
    """Course: ResNet, x0.1 at epochs 30, 60, 90 (the defaults)."""
    s = make_schedule("step", LR)
    expected = {0: LR, 29: LR, 30: LR * 0.1, 59: LR * 0.1, 60: LR * 0.01, 89: LR * 0.01, 90: LR * 0.001,
                500: LR * 0.001}
    for k, rate in expected.items():
        assert s(k) == approx(rate), k


def test_step_custom_milestones_and_gamma():
    s = make_schedule("step", 1.0, milestones=(5, 8), gamma=0.5)
    assert [s(k) for k in range(10)] == [approx(r) for r in [1, 1, 1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25]]


def test_exponential():
    s = make_schedule("exponential", LR, gamma=0.9)
    for k in (0, 1, 7, 50):
        assert s(k) == approx(LR * 0.9**k)
    assert make_schedule("exponential", LR)(3) == approx(LR * 0.99**3)  # default gamma


@pytest.mark.parametrize("T", [10, 100, 7])
def test_cosine(T):
    """Course: alpha_k = 1/2 alpha_0 (1 + cos(k pi / T)); held at 0 after T."""
    s = make_schedule("cosine", LR, total_steps=T)
    for k in range(T + 1):
        assert s(k) == approx(0.5 * LR * (1 + math.cos(k * math.pi / T))), k
    assert s(0) == approx(LR)
    assert s(T) == pytest.approx(0.0, abs=1e-15)
    assert s(T + 5) == pytest.approx(0.0, abs=1e-15)
    if T % 2 == 0:
        assert s(T // 2) == approx(LR / 2)


@pytest.mark.parametrize("T", [10, 100])
def test_linear(T):
    """Course: alpha_0 (1 - k/T); held at 0 after T."""
    s = make_schedule("linear", LR, total_steps=T)
    for k in range(T + 1):
        assert s(k) == approx(LR * (1 - k / T)), k
    assert s(T // 2) == approx(LR / 2)
    assert s(2 * T) == 0.0


def test_inverse_sqrt():
    """Course: alpha_0 / sqrt(k) with k counted from 1: memtrain's step k = 0 is the
    course's first step (k = 1), so s(k) = alpha_0 / sqrt(k + 1)."""
    s = make_schedule("inverse_sqrt", LR)
    assert s(0) == approx(LR)
    assert s(3) == approx(LR / 2)
    assert s(99) == approx(LR / 10)
    for k in (1, 10, 1000):
        assert s(k) == approx(LR / math.sqrt(k + 1))


def test_cosine_restarts_fixed_period():
    """SGDR with mult 1: a cosine over T0 steps, restarting at T0, 2 T0, ..."""
    T0 = 10
    s = make_schedule("cosine_restarts", LR, period=T0)
    for k in range(35):
        t = k % T0
        assert s(k) == approx(0.5 * LR * (1 + math.cos(math.pi * t / T0))), k
    for restart in (10, 20, 30):
        assert s(restart) == approx(LR)
        assert s(restart - 1) < 0.03 * LR


def test_cosine_restarts_growing_periods():
    """Periods T0, T0*mult, T0*mult^2: restarts at T0, T0 + T0*mult, ..."""
    T0, mult = 10, 2
    s = make_schedule("cosine_restarts", LR, period=T0, mult=mult)
    starts = [0, 10, 30, 70]  # period lengths 10, 20, 40
    for start, length in zip(starts, (10, 20, 40)):
        assert s(start) == approx(LR)
        assert s(start + length // 2) == approx(LR / 2)
        for t in (1, length // 4, length - 1):
            assert s(start + t) == approx(0.5 * LR * (1 + math.cos(math.pi * t / length))), (start, t)
    assert s(29) < s(30)  # a restart, not a continued decay


def test_cosine_restarts_period_from_total_steps():
    s = make_schedule("cosine_restarts", LR, total_steps=8)
    assert s(4) == approx(LR / 2)
    assert s(8) == approx(LR)


# -- warm-up ----------------------------------------------------------------------


def test_warmup_ramps_then_hands_over_to_constant():
    """A linear ramp from lr/w up to lr over w steps, then the schedule itself."""
    w = 4
    s = make_schedule("constant", LR, warmup=w)
    assert [s(k) for k in range(w)] == [approx(LR * (k + 1) / w) for k in range(w)]
    assert all(s(k) == approx(LR) for k in range(w, 20))
    rates = [s(k) for k in range(w + 1)]
    assert rates == sorted(rates) and rates[0] < LR  # starts low, never overshoots


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_warmup_then_decay_ends_at_total_steps(name):
    """Warm-up counts toward total_steps: the decay runs over the remaining T - w steps."""
    T, w = 100, 10
    s = make_schedule(name, LR, total_steps=T, warmup=w)
    for k in range(w):
        assert s(k) == approx(LR * (k + 1) / w)
    for k in range(w, T + 1):
        frac = (k - w) / (T - w)
        expected = 0.5 * LR * (1 + math.cos(math.pi * frac)) if name == "cosine" else LR * (1 - frac)
        assert s(k) == pytest.approx(expected, rel=1e-12, abs=1e-15), k
    assert s(w) == approx(LR)
    assert s(T) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("name,kw", [("step", {}), ("exponential", {"gamma": 0.9}), ("inverse_sqrt", {}),
                                     ("cosine_restarts", {"period": 10})])
def test_warmup_in_front_of_any_schedule(name, kw):
    """Warm-up up to the schedule's first rate, then the schedule from its own k = 0."""
    w = 5
    plain = make_schedule(name, LR, **kw)
    s = make_schedule(name, LR, warmup=w, **kw)
    assert [s(k) for k in range(w)] == [approx(plain(0) * (k + 1) / w) for k in range(w)]
    for k in range(w, w + 40):
        assert s(k) == approx(plain(k - w))


def test_zero_warmup_is_the_plain_schedule():
    assert make_schedule("cosine", LR, total_steps=10, warmup=0)(3) == make_schedule("cosine", LR, total_steps=10)(3)


# -- validation ---------------------------------------------------------------------

BAD = [
    ({"name": "cyclic"}, "schedule"),
    ({"name": "cosine"}, "total_steps"),
    ({"name": "cosine", "total_steps": 0}, "total_steps"),
    ({"name": "linear", "total_steps": -5}, "total_steps"),
    ({"name": "constant", "warmup": -1}, "warmup"),
    ({"name": "constant", "warmup": 2.5}, "warmup"),
    ({"name": "constant", "lr": 0.0}, "lr"),
    ({"name": "constant", "lr": -0.1}, "lr"),
    ({"name": "constant", "lr": float("nan")}, "lr"),
    ({"name": "step", "gamma": 1.5}, "gamma"),
    ({"name": "exponential", "gamma": 0.0}, "gamma"),
    ({"name": "step", "milestones": (60, 30)}, "milestones"),
    ({"name": "step", "milestones": (0, 30)}, "milestones"),
    ({"name": "cosine_restarts"}, "period"),
    ({"name": "cosine_restarts", "period": 10, "mult": 0.5}, "mult"),
]


@pytest.mark.parametrize("kw,field", BAD, ids=[f"{kw['name']}-{field}-{i}" for i, (kw, field) in enumerate(BAD)])
def test_bad_arguments_name_the_field(kw, field):
    kw = dict(kw)
    name = kw.pop("name")
    lr = kw.pop("lr", LR)
    with pytest.raises(ValueError) as exc:
        make_schedule(name, lr, **kw)
    assert re.search(rf"(?<![A-Za-z0-9_]){field}(?![A-Za-z0-9_])", str(exc.value)), str(exc.value)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as exc:
        make_schedule("cyclic", LR)
    for valid in SCHEDULES:
        assert valid in str(exc.value)


def test_name_is_case_and_space_insensitive():
    assert make_schedule(" Cosine ", LR, total_steps=10)(5) == approx(LR / 2)
