"""memtrain's fused kernels against the NumPy path (the reference), twice:

- `host`: the generated source built as C++ for the CPU (kernels/host.py), so
  the arithmetic of every kernel is checked here, without a GPU;
- `cuda`: the same source compiled by NVRTC and run on a GPU (marked `gpu`:
  skipped with the reason where CuPy sees no CUDA device).
Each kernel runs on the device's arrays; the same operation runs through the
CPU code on NumPy copies of the same inputs; the results must agree.
"""

from types import SimpleNamespace

import numpy as np
import pytest

from memtrain.kernels import dispatch
from memtrain.kernels.source import N_SCALARS, SC_GRAD_SQ, SC_LOSS, SC_LR
from memtrain.nn.activations import ACTIVATIONS, make_activation
from memtrain.nn.losses import OUTPUTS, make_output
from memtrain.nn.spec import ModelSpec
from memtrain.optim import OPTIMIZERS, make_optimizer
from memtrain.optim.base import standalone_state

TOL = {"float64": 1e-10, "float32": 2e-5, "float16": 2e-2}


@pytest.fixture(params=["host", pytest.param("cuda", marks=pytest.mark.gpu)])
def dev(request):
    """xp (numpy or cupy), asarray/asnumpy, and the launcher of that device."""
    if request.param == "host":
        return SimpleNamespace(xp=np, asarray=np.array, asnumpy=np.asarray,
                               launcher=request.getfixturevalue("host_launcher"))
    import cupy

    return SimpleNamespace(xp=cupy, asarray=cupy.asarray, asnumpy=cupy.asnumpy, launcher=dispatch.default_launcher())


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("name", [*OPTIMIZERS, "lookahead:sgd"])
def test_fused_update_matches_the_numpy_update(dev, name, dtype):
    spec = ModelSpec.create([30, 20, 5], dtype=dtype)
    rng = np.random.default_rng(0)
    P = spec.n_params
    p = rng.standard_normal(P).astype(dtype)
    cpu_opt, gpu_opt = make_optimizer(name), make_optimizer(name)
    for o in (cpu_opt, gpu_opt):
        o.adapt_to_dtype(dtype)
    # float16 kernels compute in float and store in half: their reference is the float32 path
    # (NumPy's half arithmetic rounds every intermediate; where Adam's v underflows the two differ by a step)
    ref = "float32" if dtype == "float16" else dtype
    cpu_state, scratch = standalone_state(cpu_opt, p.astype(ref), len(spec.layout))
    cpu_p = p.astype(ref)
    cpu_opt.init_state(cpu_state, cpu_p)
    gpu_p = dev.asarray(p)
    gpu_state = {k: dev.asarray(v.astype(dtype) if v.dtype == ref else v) for k, v in cpu_state.items()}
    gpu_state["step_scalars"] = dev.xp.zeros(N_SCALARS)
    for t in range(7):  # past Lookahead's k=5 and RAdam's warm-up
        g = (rng.standard_normal(P) * (t + 1)).astype(dtype)
        cpu_opt.step(cpu_p, g.astype(ref), cpu_state, scratch, 0.01, spec.layout)
        gpu_state["step_scalars"][SC_LR] = 0.01
        dispatch.optimizer_step(gpu_opt, gpu_p, dev.asarray(g), gpu_state, spec.layout, dev.launcher)
    np.testing.assert_allclose(dev.asnumpy(gpu_p).astype(np.float64), cpu_p.astype(np.float64),
                               rtol=TOL[dtype], atol=TOL[dtype])
    for key, value in cpu_state.items():
        np.testing.assert_allclose(dev.asnumpy(gpu_state[key]).astype(np.float64), value.astype(np.float64),
                                   rtol=TOL[dtype] * 10, atol=TOL[dtype] * 10, err_msg=key)


def test_a_nonfinite_step_loss_skips_the_update_on_the_device(dev):
    opt = make_optimizer("adam")
    p = dev.xp.ones(100, np.float32)
    state, _ = standalone_state(opt, dev.asnumpy(p))
    state = {k: dev.asarray(v) for k, v in state.items()}
    state["step_scalars"] = dev.xp.zeros(N_SCALARS)
    state["step_scalars"][SC_LOSS] = float("nan")
    state["step_scalars"][SC_LR] = 0.001
    dispatch.optimizer_step(opt, p, dev.xp.ones(100, np.float32), state, None, dev.launcher)
    assert float(p.sum()) == 100.0 and int(state["opt.count"]) == 0
    state["step_scalars"][SC_LOSS] = 1.0
    dispatch.optimizer_step(opt, p, dev.xp.ones(100, np.float32), state, None, dev.launcher)
    assert float(p.sum()) < 100.0 and int(state["opt.count"]) == 1


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_fused_bias_activation_matches_numpy(dev, name, dtype):
    cp = dev
    act = make_activation(name)
    rng = np.random.default_rng(1)
    z0 = rng.standard_normal((17, 9)).astype(dtype) * 3
    bias = rng.standard_normal(9).astype(dtype)
    alpha = np.full(9, 0.25, dtype) if name == "prelu" else None
    grad = rng.standard_normal((17, 9)).astype(dtype)
    # NumPy: z += b; a = g(z); then backward
    z, a, s = z0 + bias, np.empty_like(z0), np.empty_like(z0)
    act.forward(z, a, s, alpha)
    a_ref = a.copy()
    ga = np.zeros(9, dtype)
    act.backward(z, a, grad, s, alpha, ga)
    # GPU
    gz, ga_out = cp.asarray(z0), cp.xp.empty((17, 9), dtype)
    galpha = cp.xp.zeros(9, dtype)
    gal = cp.asarray(alpha) if alpha is not None else None
    launcher = dev.launcher
    dispatch.bias_activation_forward(act, gz, cp.asarray(bias), ga_out, gal, launcher)
    tol = TOL[dtype] * 10
    np.testing.assert_allclose(cp.asnumpy(ga_out).astype(float), a_ref.astype(float), rtol=tol, atol=tol)
    dispatch.activation_backward(act, gz, ga_out, cp.asarray(grad), gal, galpha, launcher)
    np.testing.assert_allclose(cp.asnumpy(gz).astype(float), z.astype(float), rtol=tol, atol=tol)
    if name == "prelu":
        np.testing.assert_allclose(cp.asnumpy(galpha).astype(float), ga.astype(float), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(OUTPUTS))
@pytest.mark.parametrize("C", [1, 10, 1000])
def test_fused_loss_and_gradient_match_numpy(dev, name, dtype, C):
    cp = dev
    if name == "softmax" and C == 1:
        pytest.skip("softmax needs two classes")
    out_unit = make_output(name)
    rng = np.random.default_rng(2)
    b = 33
    z0 = rng.standard_normal((b, C)).astype(dtype) * 4
    bias = rng.standard_normal(C).astype(dtype)
    if name == "softmax":
        y = rng.integers(0, C, b).astype(np.intp)
    else:
        y = (rng.random((b, C)) > 0.5).astype(dtype) if name == "sigmoid" else rng.standard_normal((b, C)).astype(dtype)
    z, out = z0 + bias, np.empty((b, C), dtype)
    rows, index = np.empty((2, b), dtype), np.empty(b, np.intp)
    offsets = np.arange(b, dtype=np.intp) * C
    if name == "sigmoid" and C > 1:
        pytest.skip("the NumPy sigmoid loss is written for one output unit")
    total = out_unit.loss_sum(z, out, y, rows, index, offsets)
    out_unit.delta(out, y, rows, index)
    gz, gout, sc = cp.asarray(z0), cp.xp.empty((b, C), dtype), cp.xp.zeros(N_SCALARS)
    dispatch.output_loss(out_unit, gz, cp.asarray(bias), cp.asarray(y), gout, sc, dev.launcher)
    tol = TOL[dtype] * 10
    assert float(sc[SC_LOSS]) == pytest.approx(total, rel=tol)
    np.testing.assert_allclose(cp.asnumpy(gout), out, rtol=tol, atol=tol)
    np.testing.assert_allclose(cp.asnumpy(gz), z, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_column_sum_matches_numpy(dev, dtype):
    cp = dev
    x = np.random.default_rng(3).standard_normal((300, 45)).astype(dtype)
    out = cp.xp.empty(45, dtype)
    dispatch.column_sum(cp.asarray(x), out, dev.launcher)
    np.testing.assert_allclose(cp.asnumpy(out).astype(float), x.astype(float).sum(axis=0), rtol=TOL[dtype] * 10,
                               atol=TOL[dtype] * 10)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_gradient_norm_matches_numpy(dev, dtype):
    g = np.random.default_rng(4).standard_normal(70_001).astype(dtype)
    sc = dev.xp.zeros(N_SCALARS)
    dispatch.grad_sq_norm(dev.asarray(g), sc, dev.launcher)
    assert float(sc[SC_GRAD_SQ]) == pytest.approx(float(np.dot(g.astype(float), g.astype(float))), rel=1e-12)


def test_a_nonfinite_gradient_skips_the_update_on_the_device(dev):
    opt = make_optimizer("momentum")
    p = dev.xp.ones(10, np.float32)
    state, _ = standalone_state(opt, dev.asnumpy(p))
    state = {k: dev.asarray(v) for k, v in state.items()}
    state["step_scalars"] = sc = dev.xp.zeros(N_SCALARS)
    sc[SC_LR] = 0.1
    g = dev.asarray(np.array([1.0] * 9 + [np.inf], np.float32))
    dispatch.grad_sq_norm(g, sc, dev.launcher)
    dispatch.optimizer_step(opt, p, g, state, None, dev.launcher)
    assert float(p.sum()) == 10.0 and float(state["opt.v"].sum()) == 0.0


@pytest.mark.gpu
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_graph_and_eager_training_agree_with_the_cpu(optimizer):
    from memtrain import MLP, Trainer

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((256, 20)).astype(np.float32), rng.integers(0, 3, 256)
    params = {}
    for device, g in (("cpu", False), ("cuda", False), ("cuda", True)):
        m = MLP([20, 32, 3], seed=1, device=device)
        t = Trainer(m, optimizer, 32, cuda_graph=g)
        losses = [t.step(X[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32]) for i in range(8)]
        params[(device, g)] = (m.backend.to_numpy(m.params), losses, t)
    cpu = params[("cpu", False)]
    for key in (("cuda", False), ("cuda", True)):
        np.testing.assert_allclose(params[key][0], cpu[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(params[key][1], cpu[1], rtol=1e-4)
    graphed = params[("cuda", True)][2]
    assert graphed._graph.graph.disabled is None, graphed.events
    assert graphed._graph.graph.replays == 6  # step 1 warms up, step 2 is captured, 3..8 replay
