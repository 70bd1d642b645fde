"""memtrain/kernels on the CPU: the generated sources and the launch logic.

The launches are recorded (no GPU): every optimizer, activation and output
unit gets its kernel, with arguments that match the kernel's C signature
in number and kind. tests/test_kernels_numerics.py runs the same kernels (host build, and on a
GPU) against the NumPy path.
"""

import re

import numpy as np
import pytest

from memtrain.kernels import activation, all_kernels, dispatch, loss, optim
from memtrain.kernels.source import DTYPES, N_SCALARS, prelude
from memtrain.memory.plan import training_plan
from memtrain.nn.activations import ACTIVATIONS, make_activation
from memtrain.nn.losses import OUTPUTS, make_output
from memtrain.nn.spec import ModelSpec
from memtrain.optim import OPTIMIZERS, make_optimizer
from memtrain.optim.base import slot_shape


class Recorder:
    """A launcher that checks each launch against the kernel's signature and records it."""

    def __init__(self):
        self.launches = []

    def _check(self, kernel, implicit: int, args):
        sig = re.search(rf"void {kernel.name}\((.*?)\) {{", kernel.source).group(1)
        params = [p.strip() for p in sig.split(",")][implicit:] if sig else []
        assert len(params) == len(args), (kernel.name, params, args)
        for p, a in zip(params, args):
            if "*" in p:
                assert isinstance(a, np.ndarray), (kernel.name, p, a)
            elif p.startswith("const long long"):
                assert isinstance(a, int) and not isinstance(a, bool), (kernel.name, p, a)
            else:
                assert p.startswith("const double") and isinstance(a, float), (kernel.name, p, a)
        self.launches.append(kernel.name)

    def elementwise(self, kernel, n, args):
        self._check(kernel, 1, args)

    def rows(self, kernel, rows, args):
        self._check(kernel, 1, args)

    def single(self, kernel, args):
        self._check(kernel, 0, args)

    def reduce(self, kernel, n, args):
        self._check(kernel, 1, args)

    def blocks(self, kernel, grid, threads, args):
        assert grid >= 1 and 32 <= threads <= 1024 and threads % 32 == 0
        self._check(kernel, 0, args)


def test_sources_are_generated_per_dtype_with_unique_names():
    kernels = all_kernels()
    names = [k.name for k in kernels]
    assert len(names) == len(set(names))
    for dtype in DTYPES:
        assert any(n.endswith(f"_{dtype}") for n in names)
    # 12 optimizers (+ tick, NovoGrad's norm, Lookahead's sync), 11 activations x 2, 3 output units
    flat = {n for n in optim.kernels("float32") if not n.endswith("_rows")}
    assert {n for n in flat if n not in ("tick", "grad_sq_norm", "novograd_norm", "lookahead_sync")} \
        | {"lookahead"} == set(OPTIMIZERS)
    # a trial array's twin of every update that is one element-wise kernel (+ tick's)
    fusable = {n for n in OPTIMIZERS if make_optimizer(n).rows_fusable}
    assert {n.removesuffix("_rows") for n in optim.kernels("float32") if n.endswith("_rows")} == fusable | {"tick"}
    assert set(activation.FORMULAS) == set(ACTIVATIONS)
    assert set(loss.BODIES) == set(OUTPUTS)
    assert len(kernels) == 1 + 3 * (len(optim.kernels("float32")) + 2 * len(ACTIVATIONS) + 1 + len(OUTPUTS))


def test_float16_is_stored_as_16_bits_and_computed_in_float():
    src = prelude("float16")
    assert "typedef unsigned short S;" in src and "typedef float T;" in src and "cvt.rn.f16.f32" in src
    assert "typedef double T;" in prelude("float64")
    assert "#include" not in "".join(k.source for k in all_kernels())  # NVRTC needs no include path


def _state(opt, P, groups, dtype="float32"):
    st = {f"opt.{s.name}": np.zeros(slot_shape(s, P, groups), dtype=s.dtype or dtype) for s in opt.all_slots()}
    st["step_scalars"] = np.zeros(N_SCALARS)
    return st


@pytest.mark.parametrize("name", [*OPTIMIZERS, "lookahead:sgd", "lookahead:novograd"])
def test_each_optimizer_is_one_launch_over_the_flat_vector(name):
    spec = ModelSpec.create([5, 4, 3])
    opt = make_optimizer(name)
    P = spec.n_params
    rec = Recorder()
    dispatch.optimizer_step(opt, np.zeros(P, np.float32), np.zeros(P, np.float32), _state(opt, P, len(spec.layout)),
                            spec.layout, rec)
    base = opt.inner.name if name.startswith("lookahead") else name
    counted = base in ("adam", "nadam", "radam", "novograd")
    expected = (["memtrain_tick_float32"] if counted else [])
    if base == "novograd":  # a norm and an update per parameter tensor (its v is per tensor)
        expected += ["memtrain_novograd_norm_float32", "memtrain_novograd_float32"] * len(spec.layout)
    else:
        expected.append(f"memtrain_{base}_float32")
    if name.startswith("lookahead"):
        expected += ["memtrain_tick_float32", "memtrain_lookahead_sync_float32"]
    assert rec.launches == expected


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_each_activation_is_one_forward_and_one_backward_launch(name):
    act = make_activation(name)
    z, a, g = (np.zeros((4, 3), np.float16) for _ in range(3))
    alpha = np.zeros(3, np.float16) if name == "prelu" else None
    rec = Recorder()
    dispatch.bias_activation_forward(act, z, np.zeros(3, np.float16), a, alpha, rec)
    dispatch.activation_backward(act, z, a, g, alpha, np.zeros(3, np.float16), rec)
    expected = [f"memtrain_act_{name}_fwd_float16", f"memtrain_act_{name}_bwd_float16"]
    if name == "prelu":  # dL/dalpha: the column sums of grad * min(0, z)
        expected.append("memtrain_column_sum_float16")
    assert rec.launches == expected


def test_the_fixed_activation_parameter_reaches_the_kernel():
    assert activation.fixed_parameter(make_activation("leaky_relu:0.2")) == 0.2
    assert activation.fixed_parameter(make_activation("abs")) == -1.0
    assert activation.fixed_parameter(make_activation("swish:1.5")) == 1.5
    assert activation.fixed_parameter(make_activation("relu")) == 0.0


@pytest.mark.parametrize("name", list(OUTPUTS))
def test_each_output_unit_is_one_row_kernel(name):
    out = make_output(name)
    z = np.zeros((6, 4), np.float64)
    y = np.zeros(6, np.int64) if name == "softmax" else np.zeros((6, 4))
    rec = Recorder()
    dispatch.output_loss(out, z, np.zeros(4), y, np.zeros_like(z), np.zeros(N_SCALARS), rec)
    dispatch.step_begin(np.zeros(N_SCALARS), rec)
    assert rec.launches == [f"memtrain_loss_{name}_float64", "memtrain_step_begin_float64"]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_the_gpu_plan_has_no_optimizer_workspace(name):
    spec = ModelSpec.create([784, 256, 10])
    opt = make_optimizer(name)
    # against the CPU's NumPy reference plan (the fused CPU plan has no chunk either)
    cpu, cuda = training_plan(spec, opt, 64, "cpu", fused=False), training_plan(spec, opt, 64, "cuda")
    assert "chunk" not in cuda.names() and cuda.get("step_scalars").nbytes == 8 * N_SCALARS
    assert ("chunk" in cpu.names()) == (opt.scratch_count > 0) and "step_scalars" not in cpu.names()
    same = [b for b in cpu.buffers if b.name != "chunk"]
    assert same == [b for b in cuda.buffers if b.name != "step_scalars"]  # nothing else differs


def test_regularisation_keeps_one_chunk_on_the_gpu():
    spec = ModelSpec.create([20, 8, 3], l2=1e-4)
    plan = training_plan(spec, make_optimizer("adam"), 8, "cuda")
    assert plan.get("chunk").shape == (1, spec.n_params)


def test_the_bias_gradient_is_a_column_sum_launch():
    rec = Recorder()
    dispatch.column_sum(np.zeros((5, 300), np.float32), np.zeros(300, np.float32), rec)
    assert rec.launches == ["memtrain_column_sum_float32"]


def test_the_gradient_norm_is_one_reduction_into_the_step_scalars():
    rec = Recorder()
    dispatch.grad_sq_norm(np.zeros(100, np.float16), np.zeros(N_SCALARS), rec)
    assert rec.launches == ["memtrain_grad_sq_norm_float16"]
    assert "sc[4] = 0" in dispatch.begin_kernel().source  # reset at every step's start, with the loss


def test_no_dispatcher_keeps_a_table_of_optimizers():
    """Each optimizer owns its kernel's arguments (Optimizer.kernel_args, fused_step): the GPU and
    CPU dispatchers name no optimizer, so a new one needs its kernel and its class, nothing else."""
    from pathlib import Path

    import memtrain.kernels

    root = Path(memtrain.kernels.__file__).parent
    for path in (root / "dispatch.py", root / "cpu" / "dispatch.py"):
        text = path.read_text()
        named = [n for n in OPTIMIZERS if re.search(rf"\b{n}\b", text)]
        assert named == [], (path.name, named)


def test_kernel_scalars_are_typed():
    assert [type(x) for x in dispatch._scalars([3, 0.5])] == [np.int64, np.float64]
    with pytest.raises(TypeError, match="bool"):
        list(dispatch._scalars([True]))
