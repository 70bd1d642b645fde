"""Layer-wise second moments (course: NovoGrad)."""

from __future__ import annotations

import math

from memtrain.backend import array_module
from memtrain.optim.base import COUNT, KernelArgs, Optimizer, Slot, check_positive, check_unit, chunks


def novograd_group_update(p, g, m, s0, s1, *, lr, beta1, scale, weight_decay):
    """m <- beta1 m + (g / sqrt(v_l + eps) + d w); w <- w - lr m, for one layer's chunk.
    `scale` = 1/sqrt(v_l + eps) was computed from the layer's whole gradient."""
    xp = array_module(p)
    xp.multiply(g, scale, out=s0)
    if weight_decay:
        xp.multiply(p, weight_decay, out=s1)  # decoupled: d * w, not folded into g
        s0 += s1
    m *= beta1
    m += s0
    xp.multiply(m, lr, out=s0)
    p -= s0


class NovoGrad(Optimizer):
    """m: first moment (per parameter); v: second moment, one scalar per parameter tensor; count: t.
    - Course: NovoGrad (Ginsburg et al. 2019)."""

    name = "novograd"
    rows_fusable = False  # per-tensor norms between kernels: a trial array updates it per trial
    slots = (
        COUNT,
        Slot("m", "param", doc="first moment of the normalised gradient"),
        Slot("v", "per_layer", doc="moving average of the layer's squared gradient norm"),
    )
    scratch_count = 2

    def __init__(self, lr: float = 0.01, beta1: float = 0.95, beta2: float = 0.98, eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(lr)
        self.beta1 = check_unit("beta1", beta1)
        self.beta2 = check_unit("beta2", beta2)
        self.eps = check_positive("eps", eps)
        self.weight_decay = check_positive("weight_decay", weight_decay, allow_zero=True)

    def layer_scales(self, grads, state, t: int, layout):
        """Per parameter tensor: update v_l from ||g_l||^2 and yield (lo, hi, 1/sqrt(v_l + eps)).
        Shared by this NumPy step and the fused CPU kernels (kernels/cpu/dispatch.py)."""
        xp = array_module(grads)
        v = state["opt.v"]
        for li, group in enumerate(layout):
            lo, hi = group.offset, group.offset + group.size
            g_l = grads[lo:hi]
            norm2 = float(xp.dot(g_l, g_l))
            # v_1 = ||g_1||^2, then v_t = beta2 v + (1 - beta2) ||g_t||^2
            v_l = norm2 if t == 1 else self.beta2 * float(v[li]) + (1.0 - self.beta2) * norm2
            v[li] = v_l
            yield lo, hi, 1.0 / math.sqrt(v_l + self.eps)

    def step(self, params, grads, state, scratch, lr, layout):
        t = self._tick(state)
        m = state["opt.m"]
        for lo, hi, scale in self.layer_scales(grads, state, t, layout):
            for start, stop in chunks(hi - lo):
                n = stop - start
                a, b = lo + start, lo + stop
                novograd_group_update(params[a:b], grads[a:b], m[a:b], scratch[0][:n], scratch[1][:n], lr=lr,
                                      beta1=self.beta1, scale=scale, weight_decay=self.weight_decay)

    def kernel_args(self, device, pre=None):
        """The update kernel's arguments for one parameter tensor (its v is one scalar per tensor).
        cpu: pre holds lr and the tensor's scale 1/sqrt(v_l + eps) (layer_scales); cuda: pre holds
        the tensor's index, whose v_l the kernel reads on the device."""
        if device == "cuda":
            return KernelArgs(("m", "v"), (pre["layer"], self.beta1, self.eps, self.weight_decay))
        decay = self.weight_decay
        return KernelArgs(("m",), (pre["lr"], self.beta1, pre["scale"], decay, bool(decay)))

    def fused_step(self, kernels, params, grads, state, lr, layout):
        t = kernels.tick(state, "count")
        for lo, hi, pre in self._tensors(kernels, grads, state, t, lr, layout):
            args = self.kernel_args(kernels.device, pre)
            arrays = [params[lo:hi], grads[lo:hi]] + self.slot_arrays(state, args.slots, lo, hi)
            kernels.elementwise(self.name, arrays, args.scalars)

    def _tensors(self, kernels, grads, state, t, lr, layout):
        """Per parameter tensor: (lo, hi, what its update's kernel_args read)."""
        if t is not None:  # the host: v_l and its scale computed here, as the NumPy step computes them
            for lo, hi, scale in self.layer_scales(grads, state, t, layout):
                yield lo, hi, {"lr": lr, "scale": scale}
            return
        for li, group in enumerate(layout):  # the device: one block reduces ||g_l||^2 and updates v_l
            lo, hi = group.offset, group.offset + group.size
            kernels.block("novograd_norm", [grads[lo:hi], state["opt.v"], state["opt.count"]],
                          (hi - lo, li, self.beta2))
            yield lo, hi, {"layer": li}
