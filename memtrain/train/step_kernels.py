"""The kernels a training step's update runs, chosen once when the Trainer is built.

Three kinds, with the same calls (`begin`, `add_penalty_grad`, `optimizer_step`):
- "numpy": the reference. Each optimizer's chunked update (Optimizer.step) with
  the plan's chunk scratch; l1/l2 through the same scratch.
- "numba": memtrain's fused CPU kernels (kernels/cpu), compiled (or loaded from
  numba's cache) here, before the first step: one pass per update, no scratch.
- "cuda": memtrain's CUDA kernels (kernels/), reading the step's scalars from
  the plan's `step_scalars` buffer on the device; l1/l2 still run chunked.
Which kernel an optimizer's update launches and with what arguments is the
optimizer's own business (Optimizer.fused_step, Optimizer.kernel_args).
"""

from __future__ import annotations

from memtrain.kernels.source import SC_LR
from memtrain.nn import step


class NumpyStep:
    """The NumPy reference: what the fused kernels are tested against."""

    name = "numpy"
    activations = None  # nn/step.py runs the NumPy activations (with the plan's act_scratch)

    def begin(self) -> None:
        """At the start of a step (nothing to set for NumPy)."""

    def add_penalty_grad(self, spec, params, grads, arrays: dict) -> None:
        step.add_penalty_grad(spec, params, grads, arrays.get("chunk"))

    def optimizer_step(self, opt, params, grads, arrays: dict, lr, layout) -> None:
        chunk = arrays.get("chunk")
        opt.step(params, grads, arrays, list(chunk) if chunk is not None else [], lr, layout)


class NumbaStep:
    """memtrain's fused CPU kernels; also nn/step.py's fused bias + activation (`activations`)."""

    name = "numba"

    def __init__(self, cpu):
        self.cpu = cpu  # memtrain.kernels.cpu.dispatch, imported (with numba) by `choose`
        self.activations = self

    def begin(self) -> None:
        self.cpu.use_threads()

    def bias_activation_forward(self, act, z, bias, out, alpha) -> None:
        self.cpu.bias_activation_forward(act, z, bias, out, alpha)

    def activation_backward(self, act, z, a, grad, alpha, galpha, gbias) -> None:
        self.cpu.activation_backward(act, z, a, grad, alpha, galpha, gbias)

    def add_penalty_grad(self, spec, params, grads, arrays: dict) -> None:
        self.cpu.add_penalty_grad(spec, params, grads)

    def optimizer_step(self, opt, params, grads, arrays: dict, lr, layout) -> None:
        self.cpu.optimizer_step(opt, params, grads, arrays, lr, layout)


class CudaStep(NumpyStep):
    """memtrain's CUDA kernels: one launch per update (NovoGrad: two per tensor), graph-capturable."""

    name = "cuda"

    def __init__(self):
        # imported when a CUDA step is chosen, not with this module: a CPU job generates no CUDA
        # source (a small job's start-up); once here, not in every step
        from memtrain.kernels import dispatch  # noqa: PLC0415

        self.dispatch = dispatch

    def optimizer_step(self, opt, params, grads, arrays: dict, lr, layout) -> None:
        """lr is written to the step scalars, where the kernels read it; None: it is there already
        (a captured step, whose host writes it before each replay: train/graph.py)."""
        if lr is not None:
            arrays["step_scalars"][SC_LR] = lr
        self.dispatch.optimizer_step(opt, params, grads, arrays, layout, self.dispatch.default_launcher())


def choose(device: str, spec, optimizer, fused: bool) -> tuple:
    """(the step kernels for this device, None) or, where numba cannot run them here,
    (the NumPy reference, why). fused=False asks for the NumPy reference on the CPU."""
    if device == "cuda":
        return CudaStep(), None
    if not fused:
        return NumpyStep(), None
    kernels, why = numba_step(spec, optimizer)
    return (kernels, None) if kernels is not None else (NumpyStep(), why)


def numba_step(spec, optimizer) -> tuple:
    """(NumbaStep, None) with every kernel this step calls compiled (or loaded from numba's
    on-disk cache): numba is imported here, when a fused CPU step is built, and its compile time
    and allocations fall before the first (measured) step. (None, why) where numba is missing or
    cannot compile a kernel on this machine (float16 needs LLVM's half conversions)."""
    try:
        from memtrain.kernels.cpu import dispatch as cpu  # noqa: PLC0415 - numba only for a fused CPU step
    except ImportError as exc:
        return None, f"{exc.name or 'numba'} is not importable"
    from numba.core.errors import NumbaError  # noqa: PLC0415 - numba is importable here

    try:
        cpu.warm(spec, optimizer)
    except NumbaError as exc:
        return None, f"numba: {str(exc).strip().splitlines()[0]}"
    return NumbaStep(cpu), None
