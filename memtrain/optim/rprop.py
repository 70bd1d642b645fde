"""Resilient backpropagation (course: Rprop)."""

from __future__ import annotations

from memtrain.backend import array_module
from memtrain.errors import ConfigError
from memtrain.optim.base import Optimizer, Slot, check_positive


def rprop_update(p, g, step, prev_sign, s0, s1, s2, *, eta_plus, eta_minus, step_min, step_max):
    """Rprop- as the course writes it: per weight, U <- U*eta+ if sign(g) equals
    the previous sign, U*eta- if it flipped, unchanged if either is 0; U is
    clipped to [step_min, step_max]; theta <- theta - U * sign(g); the sign is
    stored (int8). No backtracking (the slides' undo-on-flip variant is not
    implemented).

    The factor is computed branch-free from f = sign(g)*prev in {-1, 0, 1}:
    factor = 1 + f*(a*f + b) with a = (eta+ + eta- - 2)/2, b = (eta+ - eta-)/2.
    """
    xp = array_module(p)
    xp.sign(g, out=s0)
    xp.multiply(s0, prev_sign, out=s1)  # f
    xp.copyto(prev_sign, s0, casting="unsafe")
    xp.multiply(s1, s1, out=s2)  # f^2 = |f|
    s2 *= (eta_plus + eta_minus - 2.0) / 2.0
    s1 *= (eta_plus - eta_minus) / 2.0
    s1 += s2
    s1 += 1.0
    step *= s1
    xp.clip(step, step_min, step_max, out=step)
    s0 *= step
    p -= s0


class Rprop(Optimizer):
    """step: per-weight step size U; prev_sign: sign of the previous gradient (int8). - Course: Rprop (Riedmiller & Braun 1993)."""

    name = "rprop"
    scratch_count = 3

    def __init__(self, lr: float = 0.01, eta_plus: float = 1.2, eta_minus: float = 0.5,
                 step_min: float = 1e-6, step_max: float = 50.0):
        # lr is the initial step size U0
        super().__init__(lr)
        self.eta_plus = check_positive("eta_plus", eta_plus)
        self.eta_minus = check_positive("eta_minus", eta_minus)
        if not self.eta_minus < 1.0 < self.eta_plus:
            raise ConfigError(f"eta_minus/eta_plus: expected eta_minus < 1 < eta_plus, got {eta_minus}, {eta_plus}")
        self.step_min = check_positive("step_min", step_min)
        self.step_max = check_positive("step_max", step_max)
        if not self.step_min <= self.lr <= self.step_max:
            raise ConfigError(f"lr: the initial step must lie in [step_min, step_max], got {lr}")
        self.slots = (
            Slot("step", "param", init=self.lr, doc="per-weight step size U"),
            Slot("prev_sign", "param", "int8", doc="sign of the previous gradient"),
        )

    def host_scalars(self, pre):
        # the factor 1 + f (a f + b) of rprop_update, its a and b computed once per step
        a, b = (self.eta_plus + self.eta_minus - 2.0) / 2.0, (self.eta_plus - self.eta_minus) / 2.0
        return a, b, self.step_min, self.step_max

    def update(self, p, g, st, s, pre):
        rprop_update(p, g, st["step"], st["prev_sign"], s[0], s[1], s[2], eta_plus=self.eta_plus,
                     eta_minus=self.eta_minus, step_min=self.step_min, step_max=self.step_max)
