"""First and second moment methods (course: Adam, NAdam, RAdam)."""

from __future__ import annotations

import math

from memtrain.backend import array_module
from memtrain.optim.base import COUNT, Optimizer, Slot, check_positive, check_unit


def _moments(g, m, v, s, b1, b2):
    """m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g*g."""
    xp = array_module(g)
    m *= b1
    xp.multiply(g, 1.0 - b1, out=s)
    m += s
    v *= b2
    xp.multiply(g, g, out=s)
    s *= 1.0 - b2
    v += s


def _denominator(v, s, inv_sqrt_bc2, eps):
    """sqrt(v / (1 - b2^t)) + eps into s (eps outside the root, as in the paper)."""
    xp = array_module(v)
    xp.sqrt(v, out=s)
    s *= inv_sqrt_bc2
    s += eps
    return s


def adam_update(p, g, m, v, s, *, lr, b1, b2, eps, bc1, bc2):
    """theta <- theta - lr * m_hat / (sqrt(v_hat) + eps); m_hat = m/bc1, v_hat = v/bc2."""
    _moments(g, m, v, s, b1, b2)
    d = _denominator(v, s, 1.0 / math.sqrt(bc2), eps)
    array_module(p).divide(m, d, out=d)
    d *= lr / bc1
    p -= d


def nadam_update(p, g, m, v, s0, s1, *, lr, b1, b2, eps, bc1, bc2):
    """theta <- theta - lr / (sqrt(v_hat) + eps) * (b1 m_hat + (1-b1)/(1-b1^t) g)."""
    xp = array_module(p)
    _moments(g, m, v, s0, b1, b2)
    xp.multiply(m, b1 / bc1, out=s1)
    xp.multiply(g, (1.0 - b1) / bc1, out=s0)
    s1 += s0
    d = _denominator(v, s0, 1.0 / math.sqrt(bc2), eps)
    s1 /= d
    s1 *= lr
    p -= s1


def radam_update(p, g, m, v, s, *, lr, b1, b2, eps, bc1, bc2, rect):
    """Adam with the variance rectification r_t, or un-adapted momentum (rect None)."""
    _moments(g, m, v, s, b1, b2)
    xp = array_module(p)
    if rect is None:
        xp.multiply(m, lr / bc1, out=s)
    else:
        d = _denominator(v, s, 1.0 / math.sqrt(bc2), eps)
        xp.divide(m, d, out=d)
        d *= lr * rect / bc1
    p -= s


class _AdamFamily(Optimizer):
    slots = (
        COUNT,
        Slot("m", "param", doc="first moment (moving average of g)"),
        Slot("v", "param", doc="second moment (moving average of g*g)"),
    )

    def __init__(self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        super().__init__(lr)
        self.beta1 = check_unit("beta1", beta1)
        self.beta2 = check_unit("beta2", beta2)
        self.eps = check_positive("eps", eps)

    def prepare(self, t, lr):
        # Adam bias correction, 1/(1 - beta^t) (course: EMA bias correction)
        return {"lr": lr, "bc1": 1.0 - self.beta1**t, "bc2": 1.0 - self.beta2**t, "t": t}

    def _moment_scalars(self, pre) -> tuple:
        """The fused kernels' moment scalars: b1, 1-b1, b2, 1-b2, 1/sqrt(1 - b2^t), eps."""
        b1, b2 = self.beta1, self.beta2
        return b1, 1.0 - b1, b2, 1.0 - b2, 1.0 / math.sqrt(pre["bc2"]), self.eps


class Adam(_AdamFamily):
    """m, v: first and second moments; count: t. - Course: Adam (Kingma & Ba 2015)."""

    name = "adam"

    def host_scalars(self, pre):
        return self._moment_scalars(pre) + (pre["lr"] / pre["bc1"],)

    def update(self, p, g, st, s, pre):
        adam_update(p, g, st["m"], st["v"], s[0], lr=pre["lr"], b1=self.beta1, b2=self.beta2, eps=self.eps,
                    bc1=pre["bc1"], bc2=pre["bc2"])


class NAdam(_AdamFamily):
    """Adam with a Nesterov look-ahead on the first moment. - Course: NAdam (Dozat 2016)."""

    name = "nadam"
    scratch_count = 2

    def host_scalars(self, pre):
        b1, bc1 = self.beta1, pre["bc1"]
        return self._moment_scalars(pre) + (b1 / bc1, (1.0 - b1) / bc1, pre["lr"])

    def update(self, p, g, st, s, pre):
        nadam_update(p, g, st["m"], st["v"], s[0], s[1], lr=pre["lr"], b1=self.beta1, b2=self.beta2,
                     eps=self.eps, bc1=pre["bc1"], bc2=pre["bc2"])


def radam_rectifier(t: int, beta2: float):
    """r_t, or None while rho_t <= 4 (course: RAdam; Liu et al. 2020, which uses the course's > 4 test)."""
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * t * beta2**t / (1.0 - beta2**t)
    if rho_t <= 4.0:
        return None
    return math.sqrt(((rho_t - 4) * (rho_t - 2) * rho_inf) / ((rho_inf - 4) * (rho_inf - 2) * rho_t))


class RAdam(_AdamFamily):
    """Rectified Adam: un-adapted momentum until the variance estimate is trustworthy. - Course: RAdam (Liu et al. 2020)."""

    name = "radam"

    def prepare(self, t, lr):
        pre = super().prepare(t, lr)
        pre["rect"] = radam_rectifier(t, self.beta2)
        return pre

    def host_scalars(self, pre):
        # the kernel's last two: its step scale and whether r_t exists (else un-adapted momentum)
        lr, bc1, rect = pre["lr"], pre["bc1"], pre["rect"]
        return self._moment_scalars(pre) + ((lr * rect / bc1, True) if rect is not None else (lr / bc1, False))

    def update(self, p, g, st, s, pre):
        radam_update(p, g, st["m"], st["v"], s[0], lr=pre["lr"], b1=self.beta1, b2=self.beta2, eps=self.eps,
                     bc1=pre["bc1"], bc2=pre["bc2"], rect=pre["rect"])
