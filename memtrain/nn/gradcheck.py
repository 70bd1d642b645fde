"""Gradient checking by central differences (course: (f(x+eps) - f(x-eps)) / 2eps).

`gradcheck(model, X, y)` compares backprop's gradient of the full objective
(mean data loss + L1/L2 penalty) with the numerical one, parameter by
parameter. Dropout is checked with fixed masks (`masks`), since a fresh draw
per evaluation would make the objective random.
"""

from __future__ import annotations

import numpy as np

from memtrain.memory.arena import allocate
from memtrain.memory.plan import training_plan
from memtrain.nn import step
from memtrain.nn.mlp import _copy_in
from memtrain.optim.sgd import SGD


class _Probe:
    """A training plan at batch len(X), for evaluating loss and gradient."""

    def __init__(self, model, X, y, masks):
        self.model = model
        spec = model.spec
        plan = training_plan(spec, SGD(), len(X), model.backend.kind, fused=False)  # the NumPy reference
        self.arrays = allocate(plan, model.backend.xp, existing={"params": model.params})
        self.bufs = step.StepBuffers(spec, self.arrays, "train")
        self.X, self.y = np.asarray(X, dtype=spec.dtype), model.prepare_labels(y)
        self.masks = masks
        self.glayers = step.layer_views(spec, self.arrays["grads"])
        self.chunk = self.arrays.get("chunk")
        if self.chunk is None:
            self.chunk = model.backend.xp.zeros((1, 4096), dtype=spec.dtype)

    def objective(self, *, backward: bool = False) -> float:
        spec, v = self.model.spec, self.bufs.at(len(self.X))
        _copy_in(v.x, self.X)
        _copy_in(v.y, self.y)
        train = self.masks is not None
        if train:
            for i, m in enumerate(self.masks):
                if m is not None:
                    _copy_in(v.mask[i], m)
        step.forward(spec, self.model.layers, v, train=train, resample=False)
        loss = step.loss_sum(spec, v) / v.b + step.penalty(spec, self.model.params, self.chunk)
        if backward:
            step.backward(spec, self.model.layers, self.glayers, v)
            step.add_penalty_grad(spec, self.model.params, self.arrays["grads"], self.chunk)
        return loss


def analytic_gradient(model, X, y, masks=None):
    """(objective, gradient) by backprop, as NumPy."""
    probe = _Probe(model, X, y, masks)
    loss = probe.objective(backward=True)
    return loss, model.backend.to_numpy(probe.arrays["grads"]).copy()


def numerical_gradient(model, X, y, masks=None, eps: float = 1e-6) -> np.ndarray:
    probe = _Probe(model, X, y, masks)
    params = model.params
    out = np.zeros(params.shape[0])
    for j in range(params.shape[0]):
        orig = float(params[j])
        params[j] = orig + eps
        plus = probe.objective()
        params[j] = orig - eps
        minus = probe.objective()
        params[j] = orig
        out[j] = (plus - minus) / (2 * eps)
    return out


def gradcheck(model, X, y, masks=None, eps: float = 1e-6) -> float:
    """Largest relative error |a - n| / max(1e-8, |a| + |n|) over all parameters."""
    _, a = analytic_gradient(model, X, y, masks)
    n = numerical_gradient(model, X, y, masks, eps)
    return float(np.max(np.abs(a - n) / np.maximum(1e-8, np.abs(a) + np.abs(n))))
