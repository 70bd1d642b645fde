"""Per-parameter adaptive rates from accumulated squared gradients
(course: AdaGrad, RMSProp, AdaDelta)."""

from __future__ import annotations

from memtrain.backend import array_module
from memtrain.optim.base import Optimizer, Slot, check_positive, check_unit


def adagrad_update(p, g, r, s, *, lr, delta):
    """r <- r + g*g; theta <- theta - eps / (delta + sqrt r) * g."""
    xp = array_module(p)
    xp.multiply(g, g, out=s)
    r += s
    xp.sqrt(r, out=s)
    s += delta
    xp.divide(g, s, out=s)
    s *= lr
    p -= s


def rmsprop_update(p, g, r, s, *, lr, rho, delta):
    """r <- rho r + (1 - rho) g*g; theta <- theta - eps / sqrt(delta + r) * g."""
    xp = array_module(p)
    r *= rho
    xp.multiply(g, g, out=s)
    s *= 1.0 - rho
    r += s
    xp.add(r, delta, out=s)
    xp.sqrt(s, out=s)
    xp.divide(g, s, out=s)
    s *= lr
    p -= s


def adadelta_update(p, g, eg2, edx2, s0, s1, *, lr, gamma, eps):
    """Zeiler (2012): E[g2] <- gamma E[g2] + (1-gamma) g^2;
    dx = sqrt(E[dx2] + eps) / sqrt(E[g2] + eps) * g;
    E[dx2] <- gamma E[dx2] + (1-gamma) dx^2; theta <- theta - lr * dx.
    The course slide leaves eps out of the numerator; then E[dx2] stays 0 and
    nothing moves, so we follow the paper."""
    xp = array_module(p)
    eg2 *= gamma
    xp.multiply(g, g, out=s0)
    s0 *= 1.0 - gamma
    eg2 += s0
    xp.add(eg2, eps, out=s0)
    xp.sqrt(s0, out=s0)
    xp.add(edx2, eps, out=s1)
    xp.sqrt(s1, out=s1)
    s1 /= s0
    s1 *= g  # dx
    edx2 *= gamma
    xp.multiply(s1, s1, out=s0)
    s0 *= 1.0 - gamma
    edx2 += s0
    if lr != 1.0:
        s1 *= lr
    p -= s1


class AdaGrad(Optimizer):
    """r accumulates squared gradients. - Course: AdaGrad (Duchi et al. 2011)."""

    name = "adagrad"
    slots = (Slot("r", "param", doc="sum of squared gradients"),)

    def __init__(self, lr: float = 0.01, delta: float = 1e-7):
        super().__init__(lr)
        self.delta = check_positive("delta", delta)

    def host_scalars(self, pre):
        return pre["lr"], self.delta

    def update(self, p, g, st, s, pre):
        adagrad_update(p, g, st["r"], s[0], lr=pre["lr"], delta=self.delta)


class RMSProp(Optimizer):
    """r is the moving average of squared gradients. - Course: RMSProp (Hinton, lecture 6e, 2012)."""

    name = "rmsprop"
    slots = (Slot("r", "param", doc="moving average of squared gradients"),)

    def __init__(self, lr: float = 0.001, rho: float = 0.9, delta: float = 1e-6):
        super().__init__(lr)
        self.rho = check_unit("rho", rho)
        self.delta = check_positive("delta", delta)

    def host_scalars(self, pre):
        return pre["lr"], self.rho, 1.0 - self.rho, self.delta

    def update(self, p, g, st, s, pre):
        rmsprop_update(p, g, st["r"], s[0], lr=pre["lr"], rho=self.rho, delta=self.delta)


class AdaDelta(Optimizer):
    """eg2 = E[g^2], edx2 = E[dtheta^2]; needs no learning rate (lr only scales, default 1). - Course: AdaDelta (Zeiler 2012)."""

    name = "adadelta"
    slots = (
        Slot("eg2", "param", doc="moving average of squared gradients"),
        Slot("edx2", "param", doc="moving average of squared updates"),
    )
    scratch_count = 2

    def __init__(self, lr: float = 1.0, gamma: float = 0.95, eps: float = 1e-6):
        super().__init__(lr)
        self.gamma = check_unit("gamma", gamma)
        self.eps = check_positive("eps", eps)

    def host_scalars(self, pre):
        return pre["lr"], self.gamma, 1.0 - self.gamma, self.eps

    def update(self, p, g, st, s, pre):
        adadelta_update(p, g, st["eg2"], st["edx2"], s[0], s[1], lr=pre["lr"], gamma=self.gamma, eps=self.eps)
