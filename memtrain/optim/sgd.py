"""Gradient descent and its momentum variants (course: SGD, momentum, Nesterov)."""

from __future__ import annotations

from memtrain.backend import array_module
from memtrain.optim.base import Optimizer, Slot, check_unit


def sgd_update(p, g, s, *, lr):
    """theta <- theta - eps g."""
    p -= _scaled(g, lr, s)


def momentum_update(p, g, v, s, *, lr, alpha):
    """v <- alpha v - eps g; theta <- theta + v."""
    v *= alpha
    v -= _scaled(g, lr, s)
    p += v


def nesterov_update(p, g, v, s, *, lr, alpha):
    """Nesterov momentum with the parameters kept at the look-ahead point.

    The course's form evaluates g at theta~ = theta + alpha v. Storing
    phi = theta + alpha v instead (Sutskever et al. 2013; PyTorch does the
    same) makes that the ordinary gradient at the parameters, and the update
    becomes v <- alpha v - eps g; phi <- phi + alpha v - eps g.
    """
    v *= alpha
    eg = _scaled(g, lr, s)
    v -= eg
    p -= eg
    array_module(v).multiply(v, alpha, out=s)
    p += s


def _scaled(g, lr, s):
    """lr * g written into the scratch `s` (one pass, no temporary)."""
    return array_module(g).multiply(g, lr, out=s)


class SGD(Optimizer):
    """Plain minibatch SGD. - Course: SGD (Robbins & Monro 1951)."""

    name = "sgd"
    slots = ()

    def __init__(self, lr: float = 0.01):
        super().__init__(lr)

    def update(self, p, g, st, s, pre):
        sgd_update(p, g, s[0], lr=pre["lr"])


class Momentum(Optimizer):
    """SGD with momentum; v is the velocity. - Course: momentum (Polyak 1964)."""

    name = "momentum"
    slots = (Slot("v", "param", doc="velocity"),)

    def __init__(self, lr: float = 0.01, alpha: float = 0.9):
        super().__init__(lr)
        self.alpha = check_unit("alpha", alpha)

    def host_scalars(self, pre):
        return pre["lr"], self.alpha

    def update(self, p, g, st, s, pre):
        momentum_update(p, g, st["v"], s[0], lr=pre["lr"], alpha=self.alpha)


class Nesterov(Momentum):
    """Nesterov accelerated gradient; v is the velocity. - Course: Nesterov momentum (Nesterov 1983; Sutskever et al. 2013)."""

    name = "nesterov"

    def update(self, p, g, st, s, pre):
        nesterov_update(p, g, st["v"], s[0], lr=pre["lr"], alpha=self.alpha)


__all__ = ["SGD", "Momentum", "Nesterov"]
