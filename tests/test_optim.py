"""memtrain.optim against the course's formula sheet (COURSE.md, "Optimizers").

Each optimizer's first steps on a small quadratic f(theta) = 1/2 sum a_i theta_i^2
(gradient a * theta) are compared with a reference written here from the
course's pseudo-code: plain NumPy, new arrays every step, course variable
names, no memtrain code. Where memtrain documents a reading of the course
(Nesterov's stored look-ahead point, Zeiler's AdaDelta, Rprop- without
backtracking, eps outside Adam's root), the reference makes the same choice
and says so.
"""

from __future__ import annotations

import inspect
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
from numpy.testing import assert_allclose

from memtrain.memory.plan import CHUNK, training_plan
from memtrain.nn.spec import ModelSpec
from memtrain.optim import OPTIMIZERS, make_optimizer
from memtrain.optim.adam import Adam
from memtrain.optim.base import standalone_state
from memtrain.optim.lookahead import Lookahead

# The quadratic: 6 parameters in 2 groups (4 + 2) so NovoGrad's per-layer
# second moment sees two different norms. The small entries cross zero within
# a few Rprop steps (sign flips), the zero entry has g = 0 throughout
# (sign 0: Rprop's factor 1; 0/eps in the adaptive methods).
A = np.array([1.0, 2.0, 0.5, 3.0, 1.5, 0.25])
THETA0 = np.array([1.0, -2.0, 0.004, -0.013, 0.0, 0.5])
GROUPS = [(0, 4), (4, 2)]
LAYOUT = [SimpleNamespace(offset=o, size=n) for o, n in GROUPS]
STEPS = 5
RTOL, ATOL = 1e-6, 1e-9


def grad(theta):
    return A_for(theta) * theta


def A_for(theta):
    """The curvature vector for `theta` (A's pattern tiled to its length)."""
    return np.resize(A, theta.shape)


# -- references, from the course's pseudo-code --------------------------------------


class RefSGD:
    """Course: theta <- theta - eps g."""

    def __init__(self, theta, lr=0.01):
        self.theta, self.lr = theta.copy(), lr

    def step(self, lr):
        g = grad(self.theta)
        self.theta = self.theta - lr * g

    def observed(self):
        return self.theta


class RefMomentum:
    """Course: v <- alpha v - eps g; theta <- theta + v."""

    def __init__(self, theta, lr=0.01, alpha=0.9):
        self.theta, self.lr, self.alpha = theta.copy(), lr, alpha
        self.v = np.zeros_like(theta)

    def step(self, lr):
        g = grad(self.theta)
        self.v = self.alpha * self.v - lr * g
        self.theta = self.theta + self.v

    def observed(self):
        return self.theta


class RefNesterov(RefMomentum):
    """Course, literally: theta~ = theta + alpha v; g at theta~; v <- alpha v - eps g;
    theta <- theta + v. memtrain stores the look-ahead point phi = theta + alpha v
    (its docstring), so that is what gets compared."""

    def step(self, lr):
        g = grad(self.theta + self.alpha * self.v)
        self.v = self.alpha * self.v - lr * g
        self.theta = self.theta + self.v

    def observed(self):
        return self.theta + self.alpha * self.v


class RefAdaGrad:
    """Course: r <- r + g*g; theta <- theta - eps/(delta + sqrt r) * g; delta ~ 1e-7."""

    def __init__(self, theta, lr=0.01, delta=1e-7):
        self.theta, self.lr, self.delta = theta.copy(), lr, delta
        self.r = np.zeros_like(theta)

    def step(self, lr):
        g = grad(self.theta)
        self.r = self.r + g * g
        self.theta = self.theta - lr / (self.delta + np.sqrt(self.r)) * g

    def observed(self):
        return self.theta


class RefRMSProp:
    """Course: r <- rho r + (1-rho) g*g; theta <- theta - eps/sqrt(delta + r) * g;
    delta ~ 1e-6, rho ~ 0.9."""

    def __init__(self, theta, lr=0.001, rho=0.9, delta=1e-6):
        self.theta, self.lr, self.rho, self.delta = theta.copy(), lr, rho, delta
        self.r = np.zeros_like(theta)

    def step(self, lr):
        g = grad(self.theta)
        self.r = self.rho * self.r + (1 - self.rho) * g * g
        self.theta = self.theta - lr / np.sqrt(self.delta + self.r) * g

    def observed(self):
        return self.theta


class RefAdaDelta:
    """Zeiler (2012), as the course says to follow: eps in numerator and denominator,
    eps ~ 1e-6, gamma ~ 0.95. No learning rate in the course; memtrain's lr
    (default 1) scales the applied step only, E[dtheta^2] accumulates dtheta."""

    def __init__(self, theta, lr=1.0, gamma=0.95, eps=1e-6):
        self.theta, self.lr, self.gamma, self.eps = theta.copy(), lr, gamma, eps
        self.eg2 = np.zeros_like(theta)
        self.edx2 = np.zeros_like(theta)

    def step(self, lr):
        g = grad(self.theta)
        self.eg2 = self.gamma * self.eg2 + (1 - self.gamma) * g**2
        dtheta = np.sqrt(self.edx2 + self.eps) / np.sqrt(self.eg2 + self.eps) * g
        self.edx2 = self.gamma * self.edx2 + (1 - self.gamma) * dtheta**2
        self.theta = self.theta - lr * dtheta

    def observed(self):
        return self.theta


class RefAdam:
    """Course: s <- rho1 s + (1-rho1) g; r <- rho2 r + (1-rho2) g*g; s^ = s/(1-rho1^t);
    r^ = r/(1-rho2^t); theta <- theta - eps s^/(sqrt r^ + delta) (delta outside the
    root, as the paper). Defaults 0.001, 0.9, 0.999, 1e-8."""

    def __init__(self, theta, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8):
        self.theta, self.lr = theta.copy(), lr
        self.b1, self.b2, self.eps = beta1, beta2, eps
        self.s = np.zeros_like(theta)
        self.r = np.zeros_like(theta)
        self.t = 0

    def moments(self):
        self.t += 1
        g = grad(self.theta)
        self.s = self.b1 * self.s + (1 - self.b1) * g
        self.r = self.b2 * self.r + (1 - self.b2) * g * g
        return g, self.s / (1 - self.b1**self.t), self.r / (1 - self.b2**self.t)

    def step(self, lr):
        _, s_hat, r_hat = self.moments()
        self.theta = self.theta - lr * s_hat / (np.sqrt(r_hat) + self.eps)

    def observed(self):
        return self.theta


class RefNAdam(RefAdam):
    """Course: theta <- theta - eta/(sqrt R^ + eps) * (beta1 M^_t + (1-beta1)/(1-beta1^t) g_t)."""

    def step(self, lr):
        g, m_hat, r_hat = self.moments()
        lookahead = self.b1 * m_hat + (1 - self.b1) / (1 - self.b1**self.t) * g
        self.theta = self.theta - lr / (np.sqrt(r_hat) + self.eps) * lookahead


def course_rho(t, beta2):
    """Course (RAdam): rho_inf = 2/(1-beta2) - 1; rho_t = rho_inf - 2 t beta2^t/(1-beta2^t)."""
    rho_inf = 2 / (1 - beta2) - 1
    return rho_inf, rho_inf - 2 * t * beta2**t / (1 - beta2**t)


class RefRAdam(RefAdam):
    """Course: if rho_t > 4: r_t = sqrt(((rho_t-4)(rho_t-2)rho_inf)/((rho_inf-4)(rho_inf-2)rho_t)),
    theta <- theta - alpha r_t m^_t / v^_t, v^_t = sqrt(v_t/(1-beta2^t)) (+ eps = 1e-8,
    as memtrain and the paper's code); else theta <- theta - alpha m^_t."""

    def __init__(self, theta, **hyper):
        super().__init__(theta, **hyper)
        self.branches = []

    def step(self, lr):
        _, m_hat, v_bc = self.moments()
        rho_inf, rho_t = course_rho(self.t, self.b2)
        if rho_t > 4:
            r_t = math.sqrt(((rho_t - 4) * (rho_t - 2) * rho_inf) / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            v_hat = np.sqrt(v_bc)
            self.theta = self.theta - lr * r_t * m_hat / (v_hat + self.eps)
            self.branches.append("adaptive")
        else:
            self.theta = self.theta - lr * m_hat
            self.branches.append("momentum")


class RefRprop:
    """Course: theta <- theta - U * sign(g); U <- U*1.2 if the sign matches the
    previous one, U*0.5 if it flipped (unchanged when either is 0); U0 = 0.01,
    clipped to [1e-6, 50]. Rprop- without backtracking (memtrain's choice). The
    rate passed to step is ignored: the step sizes are the rates."""

    def __init__(self, theta, lr=0.01, eta_plus=1.2, eta_minus=0.5, step_min=1e-6, step_max=50.0):
        self.theta, self.lr = theta.copy(), lr
        self.eta_plus, self.eta_minus = eta_plus, eta_minus
        self.step_min, self.step_max = step_min, step_max
        self.U = [lr] * theta.size
        self.prev = [0] * theta.size

    def step(self, lr):
        g = grad(self.theta)
        theta = list(self.theta)
        for i, gi in enumerate(g):
            sign = 1 if gi > 0 else -1 if gi < 0 else 0
            if sign * self.prev[i] > 0:
                self.U[i] *= self.eta_plus
            elif sign * self.prev[i] < 0:
                self.U[i] *= self.eta_minus
            self.U[i] = min(max(self.U[i], self.step_min), self.step_max)
            theta[i] -= self.U[i] * sign
            self.prev[i] = sign
        self.theta = np.array(theta)

    def observed(self):
        return self.theta


class RefNovoGrad:
    """Course (per layer l): v_1 = ||g_1||^2, then v_t = beta2 v + (1-beta2)||g_t||^2;
    m_t = beta1 m + (g_t/sqrt(v_t + eps) + d w_t) (m_0 = 0, so m_1 = g_1/sqrt(v_1 + eps)
    + d w_0: the course's g_1/sqrt(v_1) up to O(eps/v)); w <- w - lambda_t m_t."""

    def __init__(self, theta, lr=0.01, beta1=0.95, beta2=0.98, eps=1e-8, weight_decay=0.0, groups=GROUPS):
        self.theta, self.lr, self.groups = theta.copy(), lr, groups
        self.b1, self.b2, self.eps, self.d = beta1, beta2, eps, weight_decay
        self.m = np.zeros_like(theta)
        self.v = [None] * len(groups)

    def step(self, lr):
        g = grad(self.theta)
        new_theta, new_m = self.theta.copy(), self.m.copy()
        for layer, (off, size) in enumerate(self.groups):
            sl = slice(off, off + size)
            norm2 = float(np.sum(g[sl] ** 2))
            self.v[layer] = norm2 if self.v[layer] is None else self.b2 * self.v[layer] + (1 - self.b2) * norm2
            new_m[sl] = self.b1 * self.m[sl] + (g[sl] / math.sqrt(self.v[layer] + self.eps) + self.d * self.theta[sl])
            new_theta[sl] = self.theta[sl] - lr * new_m[sl]
        self.theta, self.m = new_theta, new_m

    def observed(self):
        return self.theta


class RefLookahead:
    """Course: slow weights phi (starting at theta), fast weights theta; every k
    inner-optimizer steps phi <- phi + alpha (theta - phi) and theta <- phi.
    Defaults k = 5, alpha = 0.5 (Zhang et al. 2019); inner optimizer Adam."""

    def __init__(self, theta, inner="adam", lookahead_k=5, lookahead_alpha=0.5, **hyper):
        self.inner = REFERENCES[inner](theta, **hyper)
        self.lr = self.inner.lr
        self.k, self.alpha = lookahead_k, lookahead_alpha
        self.phi = theta.copy()
        self.inner_steps = 0
        self.synced = 0

    def step(self, lr):
        self.inner.step(lr)
        self.inner_steps += 1
        if self.inner_steps % self.k == 0:
            self.phi = self.phi + self.alpha * (self.inner.theta - self.phi)
            self.inner.theta = self.phi.copy()
            self.synced += 1

    def observed(self):
        return self.inner.observed()


REFERENCES = {
    "sgd": RefSGD,
    "momentum": RefMomentum,
    "nesterov": RefNesterov,
    "adagrad": RefAdaGrad,
    "rmsprop": RefRMSProp,
    "adadelta": RefAdaDelta,
    "adam": RefAdam,
    "nadam": RefNAdam,
    "radam": RefRAdam,
    "rprop": RefRprop,
    "novograd": RefNovoGrad,
    "lookahead": RefLookahead,
}

# (optimizer name, hyper-parameters, rate multipliers per step). Defaults run at
# the optimizer's own rate; the non-default cases also vary the rate per step
# (as a schedule would), which the optimizer must use instead of its own lr.
CONSTANT = (1.0,) * STEPS
VARYING = (1.0, 0.5, 2.0, 1.0, 0.25)
CASES = [
    ("sgd", {}, CONSTANT),
    ("sgd", {"lr": 0.3}, VARYING),
    ("momentum", {}, CONSTANT),
    ("momentum", {"lr": 0.1, "alpha": 0.5}, VARYING),
    ("nesterov", {}, CONSTANT),
    ("nesterov", {"lr": 0.1, "alpha": 0.99}, VARYING),
    ("adagrad", {}, CONSTANT),
    ("adagrad", {"lr": 0.5, "delta": 1e-3}, VARYING),
    ("rmsprop", {}, CONSTANT),
    ("rmsprop", {"lr": 0.01, "rho": 0.5, "delta": 1e-4}, VARYING),
    ("adadelta", {}, CONSTANT),
    ("adadelta", {"lr": 0.5, "gamma": 0.9, "eps": 1e-4}, VARYING),
    ("adam", {}, CONSTANT),
    ("adam", {"lr": 0.1, "beta1": 0.5, "beta2": 0.9, "eps": 1e-3}, VARYING),
    ("nadam", {}, CONSTANT),
    ("nadam", {"lr": 0.1, "beta1": 0.8, "beta2": 0.95, "eps": 1e-4}, VARYING),
    ("radam", {}, CONSTANT),
    ("radam", {"lr": 0.05, "beta1": 0.8, "beta2": 0.9}, VARYING),
    ("rprop", {}, CONSTANT),
    ("rprop", {"lr": 0.5, "eta_plus": 1.5, "eta_minus": 0.3, "step_min": 0.1, "step_max": 0.8}, VARYING),
    ("novograd", {}, CONSTANT),
    ("novograd", {"lr": 0.05, "beta1": 0.9, "beta2": 0.5, "weight_decay": 0.1}, VARYING),
    ("lookahead", {}, CONSTANT),
    ("lookahead:adam", {"lr": 0.1, "beta1": 0.8, "lookahead_k": 3, "lookahead_alpha": 0.8}, VARYING),
    ("lookahead:sgd", {"lr": 0.1, "lookahead_k": 2, "lookahead_alpha": 0.5}, VARYING),
]


def _case_id(case):
    name, hyper, _ = case
    return name + ("-" + "-".join(f"{k}={v}" for k, v in hyper.items()) if hyper else "-defaults")


def make_reference(name, hyper, theta0=THETA0):
    base, _, inner = name.partition(":")
    if base == "lookahead" and inner:
        return RefLookahead(theta0, inner=inner, **hyper)
    return REFERENCES[base](theta0, **hyper)


def run_memtrain(name, hyper, rates, theta0=THETA0, layout=LAYOUT):
    opt = make_optimizer(name, **hyper)
    params = theta0.copy()
    state, scratch = standalone_state(opt, params, len(layout))
    lr0 = opt.lr
    out = []
    for f in rates:
        grads = grad(params)
        opt.step(params, grads, state, scratch, lr0 * f, layout)
        out.append(params.copy())
    return opt, state, out


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_first_steps_match_course_reference(case):
    name, hyper, rates = case
    opt, _, got = run_memtrain(name, hyper, rates)
    ref = make_reference(name, hyper)
    # the default learning rate is part of the course's defaults too
    assert opt.lr == pytest.approx(ref.lr)
    for t, (f, params) in enumerate(zip(rates, got), start=1):
        ref.step(ref.lr * f)
        assert_allclose(params, ref.observed(), rtol=RTOL, atol=ATOL, err_msg=f"{name} {hyper} step {t}")
    # the trajectory really moved (a no-op optimizer would match a no-op reference)
    assert not np.allclose(got[-1], THETA0, rtol=0, atol=1e-6)


def test_radam_cases_exercise_both_branches():
    """rho_t <= 4 for t <= 4 and > 4 at t = 5, for the default beta2 and for 0.9."""
    for hyper in ({}, {"beta2": 0.9}):
        ref = RefRAdam(THETA0, **hyper)
        for _ in range(STEPS):
            ref.step(ref.lr)
        assert ref.branches == ["momentum"] * 4 + ["adaptive"]


def test_rprop_cases_exercise_flips_growth_and_clipping():
    ref = RefRprop(THETA0)
    prev = THETA0.copy()
    flips = grows = 0
    for _ in range(STEPS):
        ref.step(0.0)
        flips += int(np.sum(np.sign(ref.theta) * np.sign(prev) < 0))
        prev = ref.theta.copy()
    grows = sum(u > 0.01 for u in ref.U)
    assert flips > 0 and grows > 0
    ref = RefRprop(THETA0, lr=0.5, eta_plus=1.5, eta_minus=0.3, step_min=0.1, step_max=0.8)
    seen = set()
    for _ in range(STEPS):
        ref.step(0.0)
        seen.update(ref.U)
    assert 0.8 in seen and 0.1 in seen  # both clip bounds are hit


def test_rprop_state_after_steps():
    """The step sizes U and the stored signs (int8) after 5 steps equal the reference's."""
    _, state, _ = run_memtrain("rprop", {}, CONSTANT)
    ref = RefRprop(THETA0)
    for _ in range(STEPS):
        ref.step(0.0)
    assert state["opt.prev_sign"].dtype == np.int8
    assert state["opt.prev_sign"].tolist() == ref.prev
    assert_allclose(state["opt.step"], ref.U, rtol=RTOL)


def test_novograd_second_moment_is_per_layer():
    _, state, _ = run_memtrain("novograd", {}, CONSTANT)
    ref = RefNovoGrad(THETA0)
    for _ in range(STEPS):
        ref.step(ref.lr)
    assert state["opt.v"].shape == (len(GROUPS),)
    assert_allclose(state["opt.v"], ref.v, rtol=RTOL)
    assert int(state["opt.count"]) == STEPS


@pytest.mark.parametrize("name,hyper,k", [("lookahead", {}, 5), ("lookahead:sgd", {"lookahead_k": 2}, 2)])
def test_lookahead_slow_weights(name, hyper, k):
    """phi starts at theta, moves only at every k-th step, and theta equals phi right after."""
    opt = make_optimizer(name, **hyper)
    params = THETA0.copy()
    state, scratch = standalone_state(opt, params, len(LAYOUT))
    assert_allclose(state["opt.slow"], THETA0, rtol=0, atol=0)
    for t in range(1, STEPS + 1):
        before = state["opt.slow"].copy()
        opt.step(params, A * params, state, scratch, opt.lr, LAYOUT)
        assert int(state["opt.la_count"]) == t
        if t % k:
            assert_allclose(state["opt.slow"], before, rtol=0, atol=0)
        else:
            assert not np.allclose(state["opt.slow"], before)
            assert_allclose(params, state["opt.slow"], rtol=0, atol=0)


# -- chunking: vectors longer than one chunk ------------------------------------------


@pytest.mark.parametrize("case", [c for c in CASES if c[1]] + [("novograd", {}, CONSTANT)], ids=_case_id)
def test_longer_than_a_chunk_matches_elementwise(case):
    """Per-weight optimizers treat every element alone, so a vector of THETA0's pattern
    tiled past CHUNK must match the short run at every position: a chunk boundary or a
    short last chunk is no different. NovoGrad's norms differ with group size, so it
    gets a vectorised reference over the same 2 groups instead."""
    name, hyper, rates = case
    n = 2 * CHUNK + 10  # two full chunks and a short one
    big_theta = np.resize(THETA0, n)
    if name == "novograd":
        groups = [(0, CHUNK + 7), (CHUNK + 7, n - CHUNK - 7)]
        layout = [SimpleNamespace(offset=o, size=k) for o, k in groups]
        _, _, got = run_memtrain(name, hyper, rates, big_theta, layout)
        ref = RefNovoGrad(big_theta, groups=groups, **hyper)
        for f, params in zip(rates, got):
            ref.step(ref.lr * f)
            assert_allclose(params, ref.observed(), rtol=RTOL, atol=ATOL)
        return
    _, _, small = run_memtrain(name, hyper, rates)
    _, _, big = run_memtrain(name, hyper, rates, big_theta)
    for s, b in zip(small, big):
        assert_allclose(b, np.resize(s, n), rtol=1e-12, atol=1e-15)


# -- the state is declared ---------------------------------------------------------------

P = "param"
_ADAM_SLOTS = (("count", "scalar", "int64"), ("m", P, None), ("v", P, None))
EXPECTED_SLOTS = {
    "sgd": (),
    "momentum": (("v", P, None),),
    "nesterov": (("v", P, None),),
    "adagrad": (("r", P, None),),
    "rmsprop": (("r", P, None),),
    "adadelta": (("eg2", P, None), ("edx2", P, None)),
    "adam": _ADAM_SLOTS,
    "nadam": _ADAM_SLOTS,
    "radam": _ADAM_SLOTS,
    "rprop": (("step", P, None), ("prev_sign", P, "int8")),
    "novograd": (("count", "scalar", "int64"), ("m", P, None), ("v", "per_layer", None)),
    "lookahead": _ADAM_SLOTS + (("slow", P, None), ("la_count", "scalar", "int64")),
}
# params + grads + optimizer state, in units of the parameters (course: memory slides)
EXPECTED_MULTIPLIER = {
    "sgd": 2,
    "momentum": 3,
    "nesterov": 3,
    "adagrad": 3,
    "rmsprop": 3,
    "adadelta": 4,
    "adam": 4,
    "nadam": 4,
    "radam": 4,
    "rprop": 3.25,  # step size U (float32) + the sign as int8: 1/4 of a float32
    "novograd": 3,  # m per parameter; v is one scalar per parameter tensor
    "lookahead": 5,  # Adam's 4 + the slow weights
}


def test_coverage_registry_and_tables_agree():
    """Chainer's TestAllOptimizersCoverage: every list names the same 12 optimizers."""
    names = set(OPTIMIZERS)
    assert len(names) == 12
    assert set(REFERENCES) == names
    assert set(EXPECTED_SLOTS) == names
    assert set(EXPECTED_MULTIPLIER) == names
    assert {c[0].partition(":")[0] for c in CASES} == names
    # each optimizer runs with its defaults and with some non-default setting
    for name in names:
        assert any(c[0] == name and not c[1] for c in CASES), name
        assert any(c[0].startswith(name) and c[1] for c in CASES), name


@pytest.mark.parametrize("name", list(EXPECTED_SLOTS))
def test_slots_are_declared(name):
    opt = make_optimizer(name)
    got = tuple((s.name, s.kind, s.dtype) for s in opt.all_slots())
    assert got == EXPECTED_SLOTS[name]
    # state exists, initialised, before the first step, with declared shapes and dtypes
    params = np.ones(6, dtype=np.float32)
    state, _ = standalone_state(opt, params, 3)
    assert set(state) == {f"opt.{s[0]}" for s in EXPECTED_SLOTS[name]}
    for slot_name, kind, dtype in EXPECTED_SLOTS[name]:
        arr = state[f"opt.{slot_name}"]
        assert arr.shape == {"param": (6,), "per_layer": (3,), "scalar": ()}[kind]
        assert arr.dtype == np.dtype(dtype or "float32")


def test_initial_state_values():
    opt = make_optimizer("rprop", lr=0.03)
    state, _ = standalone_state(opt, np.ones(4), 1)
    assert_allclose(state["opt.step"], 0.03)  # U0 = lr
    assert not state["opt.prev_sign"].any()
    opt = make_optimizer("lookahead:momentum")
    state, _ = standalone_state(opt, THETA0.copy(), 2)
    assert_allclose(state["opt.slow"], THETA0, rtol=0, atol=0)
    assert not state["opt.v"].any() and int(state["opt.la_count"]) == 0


def test_lookahead_wraps_inner_slots():
    """Wrappers add slots: lookahead:X = X's slots + slow + la_count, for every X."""
    for inner in OPTIMIZERS:
        if inner == "lookahead":
            continue
        la = make_optimizer(f"lookahead:{inner}")
        inner_slots = make_optimizer(inner).all_slots()
        assert la.all_slots()[: len(inner_slots)] == inner_slots
        assert [(s.name, s.kind, s.dtype) for s in la.all_slots()[len(inner_slots):]] == [
            ("slow", "param", None), ("la_count", "scalar", "int64")]


@pytest.mark.parametrize("name", [*OPTIMIZERS, "lookahead:rprop"])
def test_hyper_parameters_are_the_init_signature(name):
    """scikit-learn's get_params: `hyper` reads the __init__ arguments (a wrapped optimizer's in
    its place), so a new argument is in describe() and the checkpoint identity without a list."""
    opt = make_optimizer(name, lr=0.02)
    own = list(inspect.signature(type(opt).__init__).parameters)[1:]
    if isinstance(opt, Lookahead):  # inner, k, alpha: the inner optimizer's hyper-parameters in its place
        assert list(opt.hyper) == list(opt.inner.hyper) + own[1:]
        own = own[1:]
    else:
        assert list(opt.hyper) == own
    assert opt.hyper["lr"] == 0.02 and all(opt.hyper[k] == getattr(opt, k) for k in own)
    last = own[-1]  # a changed argument shows in describe(), which a checkpoint must match
    key = f"lookahead_{last}" if isinstance(opt, Lookahead) else last
    assert make_optimizer(name, **{"lr": 0.02, key: opt.hyper[last] / 2 or 0.1}).describe() != opt.describe()


def test_describe_is_unchanged_by_deriving_hyper():
    """describe() is in every checkpoint's identity: the derived order is the old hand-written one."""
    assert make_optimizer("adam").describe() == "adam(lr=0.001, beta1=0.9, beta2=0.999, eps=1e-08)"
    assert make_optimizer("rprop").describe() == "rprop(lr=0.01, eta_plus=1.2, eta_minus=0.5, step_min=1e-06, step_max=50)"
    assert make_optimizer("lookahead:novograd").describe() == (
        "lookahead(k=5, alpha=0.5, novograd(lr=0.01, beta1=0.95, beta2=0.98, eps=1e-08, weight_decay=0))")
    assert make_optimizer("lookahead:sgd").hyper == {"lr": 0.01, "k": 5, "alpha": 0.5}


@pytest.mark.parametrize("name", [n for n in OPTIMIZERS if n not in ("novograd", "lookahead")])
def test_kernel_args_name_declared_slots_and_the_gpu_takes_the_hyper_parameters(name):
    opt = make_optimizer(name)
    declared = {s.name for s in opt.all_slots()}
    gpu, cpu = opt.kernel_args("cuda"), opt.kernel_args("cpu", opt.prepare(3, 0.01))
    assert set(gpu.slots) <= declared and set(cpu.slots) <= declared
    assert gpu.scalars == tuple(v for k, v in opt.hyper.items() if k != "lr")
    assert all(type(x) in (float, bool) for x in cpu.scalars)


@pytest.mark.parametrize("name", list(EXPECTED_MULTIPLIER))
def test_memory_multiplier(name):
    spec = ModelSpec.create([64, 32, 10])
    opt = make_optimizer(name)
    plan = training_plan(spec, opt, batch_size=1)
    cats = plan.by_category()
    p_bytes = cats["parameters"]
    assert p_bytes == (64 * 32 + 32 + 32 * 10 + 10) * 4
    per_param = sum(b.nbytes for b in plan.buffers
                    if b.category == "optimizer_state" and b.shape == (spec.n_params,))
    assert (p_bytes + cats["gradients"] + per_param) / p_bytes == EXPECTED_MULTIPLIER[name]
    # the scalar and per-layer slots add only a few bytes
    total = (p_bytes + cats["gradients"] + cats["optimizer_state"]) / p_bytes
    assert total == pytest.approx(EXPECTED_MULTIPLIER[name], abs=0.01)
    assert total >= EXPECTED_MULTIPLIER[name]


# -- hyper-parameter validation ----------------------------------------------------------

BAD = [
    ("sgd", {"lr": -0.1}, "lr"),
    ("sgd", {"lr": 0}, "lr"),
    ("sgd", {"lr": "fast"}, "lr"),
    ("momentum", {"alpha": 1.5}, "alpha"),
    ("momentum", {"alpha": -0.1}, "alpha"),
    ("nesterov", {"lr": float("nan")}, "lr"),
    ("nesterov", {"alpha": 1.0}, "alpha"),
    ("adagrad", {"delta": 0}, "delta"),
    ("adagrad", {"lr": -1}, "lr"),
    ("rmsprop", {"rho": 1.0}, "rho"),
    ("rmsprop", {"delta": -1e-6}, "delta"),
    ("adadelta", {"eps": 0}, "eps"),
    ("adadelta", {"gamma": 1.2}, "gamma"),
    ("adam", {"beta1": 1.5}, "beta1"),
    ("adam", {"beta2": -0.5}, "beta2"),
    ("adam", {"eps": 0}, "eps"),
    ("nadam", {"beta1": 1.5}, "beta1"),
    ("nadam", {"lr": float("inf")}, "lr"),
    ("radam", {"beta2": 1.0}, "beta2"),
    ("radam", {"eps": -1}, "eps"),
    ("rprop", {"eta_minus": 1.0}, "eta_minus"),
    ("rprop", {"eta_minus": 1.5}, "eta_minus"),
    ("rprop", {"eta_plus": 0.9}, "eta_plus"),
    ("rprop", {"step_min": 0}, "step_min"),
    ("rprop", {"lr": 100.0}, "lr"),  # U0 above step_max
    ("novograd", {"weight_decay": -0.1}, "weight_decay"),
    ("novograd", {"beta1": 1.5}, "beta1"),
    ("lookahead", {"lookahead_k": 0}, "k"),
    ("lookahead", {"lookahead_k": 2.5}, "k"),
    ("lookahead", {"lookahead_k": None}, "k"),
    ("lookahead", {"lookahead_k": "two"}, "k"),
    ("lookahead", {"lookahead_alpha": 1.5}, "alpha"),
    ("lookahead:sgd", {"lr": -1}, "lr"),
]


@pytest.mark.parametrize("name,hyper,field", BAD, ids=[f"{n}-{f}-{h[next(iter(h))]}" for n, h, f in BAD])
def test_bad_hyperparameter_names_the_field(name, hyper, field):
    with pytest.raises(ValueError) as exc:
        make_optimizer(name, **hyper)
    assert re.search(rf"(?<![A-Za-z0-9_]){field}(?![A-Za-z0-9_])", str(exc.value)), str(exc.value)


def test_every_optimizer_has_a_bad_value_case():
    assert {n.partition(":")[0] for n, _, _ in BAD} == set(OPTIMIZERS)


@pytest.mark.parametrize("name", [*OPTIMIZERS, "lookahead:sgd"])
def test_unknown_keyword_is_named(name):
    with pytest.raises(ValueError, match="learning_rate"):
        make_optimizer(name, learning_rate=0.1)


@pytest.mark.parametrize("bad", ["adamw", "", "sgd:adam", "lookahead:lookahead", "lookahead:adamw"])
def test_unknown_or_malformed_name(bad):
    with pytest.raises(ValueError) as exc:
        make_optimizer(bad)
    msg = str(exc.value)
    assert "optimizer" in msg
    if bad in ("adamw", "", "lookahead:adamw"):
        for valid in OPTIMIZERS:
            assert valid in msg


def test_name_is_case_and_space_insensitive():
    assert make_optimizer(" Adam ").name == "adam"
    assert make_optimizer("LookAhead:SGD").inner.name == "sgd"


# -- course numbers ----------------------------------------------------------------------


def test_adam_bias_correction_course_numbers():
    """Course (EMA bias correction): 1/(1 - beta^k), beta = 0.9: k = 2 -> 5.26, k = 100 -> 1.000027."""
    adam = Adam()
    assert 1 / adam.prepare(2, 1e-3)["bc1"] == pytest.approx(1 / (1 - 0.9**2), rel=1e-12)
    assert round(1 / adam.prepare(2, 1e-3)["bc1"], 3) == 5.263
    assert round(1 / adam.prepare(100, 1e-3)["bc1"], 6) == 1.000027
    assert adam.prepare(2, 1e-3)["bc2"] == pytest.approx(1 - 0.999**2, rel=1e-12)


@pytest.mark.parametrize("eta,expected", [(0.2, 0.060466), (0.05, 3.486784), (1.1, 61.917364)])
def test_gradient_descent_on_x_squared(eta, expected):
    """Course: gradient descent on f(x) = x^2 from x = 10 for 10 steps (1.1 diverges)."""
    opt = make_optimizer("sgd")
    x = np.array([10.0])
    state, scratch = standalone_state(opt, x, 1)
    layout = [SimpleNamespace(offset=0, size=1)]
    for _ in range(10):
        opt.step(x, 2 * x, state, scratch, eta, layout)
    assert x[0] == pytest.approx(expected, abs=1e-6)
