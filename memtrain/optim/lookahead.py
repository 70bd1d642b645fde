"""Lookahead: slow and fast weights around any inner optimizer (course: Lookahead)."""

from __future__ import annotations

from memtrain.backend import array_module
from memtrain.errors import ConfigError
from memtrain.optim.base import KernelArgs, Optimizer, Slot, check_unit, chunks
from memtrain.validate import check_scalar


def lookahead_sync(p, slow, s, *, alpha):
    """phi <- phi + alpha (theta - phi); theta <- phi."""
    xp = array_module(p)
    xp.subtract(p, slow, out=s)
    s *= alpha
    slow += s
    xp.copyto(p, slow)


class Lookahead(Optimizer):
    """The inner optimizer's slots plus slow: the slow weights phi; la_count: inner steps taken.
    - Course: Lookahead (Zhang et al. 2019)."""

    name = "lookahead"
    rows_fusable = False  # the inner update, then a sync every k steps: a trial array updates it per trial

    def __init__(self, inner: Optimizer, k: int = 5, alpha: float = 0.5):
        if isinstance(inner, Lookahead):
            raise ConfigError("optimizer: lookahead cannot wrap lookahead")
        self.inner = inner
        self.k = check_scalar(k, "k", int, min_val=1)
        self.alpha = check_unit("alpha", alpha, closed=True)
        self.lr = inner.lr
        # Wrappers add slots (optax's lookahead): inner state + one copy of the parameters.
        self.slots = tuple(inner.all_slots()) + (
            Slot("slow", "param", doc="slow weights phi"),
            Slot("la_count", "scalar", "int64", doc="inner steps since the start"),
        )
        self.scratch_count = max(inner.scratch_count, 1)

    def describe(self) -> str:
        return f"lookahead(k={self.k}, alpha={self.alpha:g}, {self.inner.describe()})"

    def init_state(self, state, params):
        self.inner.init_state(state, params)
        state["opt.slow"][...] = params  # phi starts at theta
        state["opt.la_count"][...] = 0

    def step(self, params, grads, state, scratch, lr, layout):
        self.inner.step(params, grads, state, scratch, lr, layout)
        state["opt.la_count"][...] += 1
        if int(state["opt.la_count"]) % self.k == 0:
            slow = state["opt.slow"]
            for start, stop in chunks(params.shape[0]):
                lookahead_sync(params[start:stop], slow[start:stop], scratch[0][: stop - start], alpha=self.alpha)

    def kernel_args(self, device, pre=None):
        """Lookahead's own kernel is the sync of the slow weights (the inner update is the inner's).
        On a GPU it tests la_count % k itself: a captured step cannot branch on the host."""
        if device == "cuda":
            return KernelArgs(("slow", "la_count"), (int(self.k), float(self.alpha)))
        return KernelArgs(("slow",), (self.alpha,))

    def fused_step(self, kernels, params, grads, state, lr, layout):
        self.inner.fused_step(kernels, params, grads, state, lr, layout)
        n = kernels.tick(state, "la_count")
        if n is None or n % self.k == 0:
            args = self.kernel_args(kernels.device)
            kernels.elementwise("lookahead_sync", [params] + self.slot_arrays(state, args.slots), args.scalars)
