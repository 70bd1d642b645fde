"""The fused CPU kernels (memtrain/kernels/cpu) against the NumPy reference path.

Stated bounds (docs/architecture.md, "Fused CPU kernels"):
- optimizers, float32/float64: bit-identical to the reference, state included;
- optimizers, float16: one step is within F16_ULPS ulp (of the step's scale) of the exact
  (float64) step from the same float16 inputs; the reference, which rounds every
  intermediate to float16, within twice that;
- activations built from +, -, *, max, min (identity, ReLU, leaky/abs, PReLU): bit-identical
  in float32/float64, within 1 ulp in float16; those using tanh/exp/log1p/erf within
  ACT_ULPS ulp of max(|value|, 1) (numba's libm against NumPy's own SIMD functions);
- non-finite values land in the same places.
"""

import copy
import inspect
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from memtrain import MLP, Trainer
from memtrain.kernels.cpu import dispatch as cpu
from memtrain.kernels.cpu import optim as cpu_optim
from memtrain.nn.activations import make_activation
from memtrain.optim import OPTIMIZERS, make_optimizer
from memtrain.optim.base import standalone_state

LAYOUT = [SimpleNamespace(offset=0, size=600, kind="weight"), SimpleNamespace(offset=600, size=400, kind="bias")]
N = 1000
EXACT_ACTS = ("identity", "relu", "leaky_relu", "leaky_relu:1.5", "abs", "prelu")
F16_ULPS = 2.0
ACT_ULPS = {"sigmoid": 2, "tanh": 4, "softplus": 2, "gelu": 4, "swish:1.5": 12, "mish": 20}


def _start(name, dt, seed, steps=4):
    """An optimizer and its state after a few reference steps (moments, counters non-trivial)."""
    rng = np.random.default_rng(seed)
    opt = make_optimizer(name)
    opt.adapt_to_dtype(dt)
    p = rng.standard_normal(N).astype(dt)
    state, scratch = standalone_state(opt, p, n_groups=2)
    for _ in range(steps):
        opt.step(p, (rng.standard_normal(N) * 0.5).astype(dt), state, scratch, 1e-2, LAYOUT)
    return opt, p, state, scratch, (rng.standard_normal(N) * 0.5).astype(dt)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_fused_update_is_bit_identical_to_the_numpy_reference(name, dtype):
    opt, p, state, scratch, g = _start(name, np.dtype(dtype), seed=1)
    p2, state2 = p.copy(), copy.deepcopy(state)
    for k in range(6):  # past Lookahead's k = 5 sync and RAdam's un-rectified start
        gk = np.roll(g, k)
        opt.step(p, gk, state, scratch, 1e-2, LAYOUT)
        cpu.optimizer_step(opt, p2, gk, state2, 1e-2, LAYOUT)
    assert np.array_equal(p, p2)
    for key in state:
        assert np.array_equal(state[key], state2[key]), key


@pytest.mark.parametrize("name", [n for n in OPTIMIZERS if n not in ("novograd", "lookahead")])
def test_each_cpu_kernel_takes_the_arrays_and_scalars_its_optimizer_names(name):
    opt = make_optimizer(name)
    args = opt.kernel_args("cpu", opt.prepare(2, 1e-2))
    kernel_params = list(inspect.signature(getattr(cpu_optim, name).py_func).parameters)
    assert kernel_params[:2 + len(args.slots)] == ["p", "g", *args.slots]
    assert len(kernel_params) == 2 + len(args.slots) + len(args.scalars), (kernel_params, args)


@pytest.mark.parametrize("name", ["adam", "rprop", "radam", "momentum"])
def test_one_update_run_slice_by_slice_is_the_update_of_the_whole(name):
    """cpu.run, one optimizer's kernel on a flat slice with its scalars (what a trial array calls
    per trial), gives the same bits as one update over the whole vector."""
    opt, p, state, _, g = _start(name, np.dtype("float32"), seed=3)
    whole_p, whole_state = p.copy(), copy.deepcopy(state)
    cpu.optimizer_step(opt, whole_p, g, whole_state, 1e-2, LAYOUT)
    t = opt._tick(state)
    args = opt.kernel_args("cpu", opt.prepare(t, 1e-2))
    for lo, hi in ((0, 300), (300, N)):
        cpu.run(opt.name, [p[lo:hi], g[lo:hi]] + opt.slot_arrays(state, args.slots, lo, hi), args.scalars)
    assert np.array_equal(p, whole_p)
    for key in state:
        assert np.array_equal(state[key], whole_state[key]), key


@pytest.mark.parametrize("name, kernels", [("lookahead:sgd", ("sgd", "lookahead_sync")),
                                           ("lookahead:novograd", ("novograd", "lookahead_sync"))])
def test_building_the_step_compiles_every_kernel_its_update_calls(name, kernels, monkeypatch):
    """Lookahead syncs on its k-th step only: the warm-up still runs its sync before step one."""
    from memtrain.nn.spec import ModelSpec
    from memtrain.train.step_kernels import numba_step

    ran, real = [], cpu.run
    monkeypatch.setattr(cpu, "run", lambda kernel, arrays, scalars: (ran.append(kernel), real(kernel, arrays, scalars)))
    step, why = numba_step(ModelSpec.create([3, 2], dtype="float64"), make_optimizer(name))
    assert why is None and step.name == "numba"
    assert set(kernels) <= set(ran), ran


def _ulps_from_exact(x, exact, before, dt):
    """In float16 ulps of max(|theta before|, |exact theta after|): the step's own scale (an
    update that cancels theta to ~0 would otherwise be judged by the ulp of ~0)."""
    scale = np.maximum(np.abs(before.astype(np.float64)), np.abs(exact))
    spacing = np.spacing(scale.astype(dt)).astype(np.float64)
    return float(np.max(np.abs(x.astype(np.float64) - exact) / spacing))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_a_float16_fused_step_is_within_two_ulp_of_the_exact_step(name):
    dt = np.dtype("float16")
    for seed in range(3):
        opt, p, state, scratch, g = _start(name, dt, seed)
        exact_p = p.astype(np.float64)
        exact_state = {k: v.astype(np.float64) if v.dtype == dt else v.copy() for k, v in state.items()}
        _, exact_scratch = standalone_state(opt, exact_p, n_groups=2)
        opt.step(exact_p, g.astype(np.float64), exact_state, exact_scratch, 1e-2, LAYOUT)
        before, fused_p, fused_state = p.copy(), p.copy(), copy.deepcopy(state)
        cpu.optimizer_step(opt, fused_p, g, fused_state, 1e-2, LAYOUT)
        opt.step(p, g, state, scratch, 1e-2, LAYOUT)
        fused, ref = _ulps_from_exact(fused_p, exact_p, before, dt), _ulps_from_exact(p, exact_p, before, dt)
        assert fused <= F16_ULPS and ref <= 2 * F16_ULPS, (seed, fused, ref)


def _activation_pass(act, z0, bias, alpha, grad, fused: bool):
    z, out = z0.copy(), np.empty_like(z0)
    galpha, gbias = np.zeros(z0.shape[1], z0.dtype), np.zeros(z0.shape[1], z0.dtype)
    if fused:
        cpu.bias_activation_forward(act, z, bias, out, alpha)
    else:
        with np.errstate(all="ignore"):
            z += bias
            act.forward(z, out, np.empty_like(z), alpha)
    a = out.copy()
    if fused:
        cpu.activation_backward(act, z, a, grad, alpha, galpha, gbias)
    else:
        with np.errstate(all="ignore"):
            act.backward(z, a, grad, np.empty_like(z), alpha, galpha)
            np.sum(z, axis=0, out=gbias)
    return out, z, galpha, gbias


def _act_ulps(a, b):
    """ulp of max(|value|, 1); non-finite values must sit in the same places."""
    finite = np.isfinite(a)
    assert np.array_equal(finite, np.isfinite(b))
    assert np.array_equal(a[~finite], b[~finite], equal_nan=True)
    a64, b64 = a[finite].astype(np.float64), b[finite].astype(np.float64)
    unit = np.spacing(np.maximum(np.maximum(np.abs(a64), np.abs(b64)), 1.0).astype(a.dtype)).astype(np.float64)
    return float((np.abs(a64 - b64) / unit).max())


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("name", list(EXACT_ACTS) + list(ACT_ULPS))
def test_fused_bias_activation_and_backward_match_the_reference(name, dtype):
    act, dt, rng = make_activation(name), np.dtype(dtype), np.random.default_rng(0)
    z0 = (rng.standard_normal((64, 33)) * 4).astype(dt)
    z0[0, :5] = [0.0, -0.0, np.inf, -np.inf, np.nan]
    bias, grad = rng.standard_normal(33).astype(dt), rng.standard_normal((64, 33)).astype(dt)
    alpha = (rng.random(33) * 0.5).astype(dt)
    ref = _activation_pass(act, z0, bias, alpha, grad, fused=False)
    fused = _activation_pass(act, z0, bias, alpha, grad, fused=True)
    bound = ACT_ULPS.get(name, 0 if dt != np.float16 else 1)
    for part, r, f in zip(("forward", "backward", "dL/dalpha"), ref, fused):
        if part == "dL/dalpha" and name != "prelu":
            continue
        assert _act_ulps(r, f) <= bound, (part, _act_ulps(r, f))
    # the bias gradient summed in the backward pass is NumPy's sum over rows of that delta, bit for bit
    assert np.array_equal(fused[3], np.sum(fused[1], axis=0), equal_nan=True)
    if name in EXACT_ACTS and dt != np.float16:
        assert np.array_equal(fused[3], ref[3], equal_nan=True)


def _train(fused, **kw):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((300, 12)).astype(np.float32), rng.integers(0, 3, 300)
    model = MLP([12, 16, 8, 3], activation=kw.pop("activation", "relu"), dropout=kw.pop("dropout", None),
                l1=kw.pop("l1", 0.0), l2=kw.pop("l2", 0.0), seed=2)
    tr = Trainer(model, kw.pop("optimizer", "adam"), 32, seed=5, fused=fused, **kw)
    tr.fit(X, y, epochs=2, validation=(X[:50], y[:50]))
    return model.params.copy(), tr


@pytest.mark.parametrize("kw", [
    {},
    {"optimizer": "lookahead:nesterov", "activation": "prelu", "dropout": (0.9, 0.7), "l1": 1e-4, "l2": 1e-3},
    {"optimizer": "rprop", "activation": "leaky_relu", "micro_batch_size": 8, "clip_norm": 0.5},
], ids=["adam-relu", "lookahead-prelu-dropout-l1-l2", "rprop-accumulation-clip"])
def test_fused_training_is_bit_identical_to_the_reference_and_plans_no_scratch(kw):
    fused, tr = _train(True, **dict(kw))
    ref, tr_ref = _train(False, **dict(kw))
    assert np.array_equal(fused, ref)
    assert tr.plan.numba_kernels and not tr_ref.plan.numba_kernels
    assert "chunk" not in tr.arrays and "chunk" in tr_ref.arrays
    assert tr.history[-1]["val_loss"] == tr_ref.history[-1]["val_loss"]


STATS = """
import json, sys, numpy as np
import memtrain
light = 'numba' not in sys.modules
from memtrain import MLP, Trainer
Trainer(MLP([4, 3, 2]), "adagrad", 2, fused=False)
reference_light = 'numba' not in sys.modules
Trainer(MLP([4, 3, 2], activation="mish"), "adagrad", 2)
from memtrain.kernels.cpu import activation, optim
used = [optim.adagrad, activation.mish_forward, activation.mish_backward]
print(json.dumps({"light": light, "reference_light": reference_light,
                  "misses": sum(sum(f.stats.cache_misses.values()) for f in used),
                  "hits": sum(sum(f.stats.cache_hits.values()) for f in used)}))
"""


def test_kernels_compile_once_per_machine_and_numba_loads_only_for_a_fused_step(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    first, second = (json.loads(subprocess.run([sys.executable, "-c", STATS], capture_output=True, text=True,
                                               check=True, env=env, timeout=300).stdout) for _ in range(2))
    assert first["light"] and first["reference_light"]  # import memtrain / the NumPy path load no numba
    assert second["misses"] == 0 and second["hits"] >= 3  # the second process compiles nothing


def test_a_bad_thread_count_is_one_line_naming_the_variable(tmp_path):
    from click.testing import CliRunner

    from memtrain.cli import main

    r = CliRunner().invoke(main, ["train", "--layers", "64,16,10", "--epochs", "1", "--output-dir", str(tmp_path / "o"),
                                  "--no-progress", "--fused"], env={"MEMTRAIN_CPU_THREADS": "two"})
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines()[-1] == \
        "memtrain: error: MEMTRAIN_CPU_THREADS: expected a positive integer, got 'two'"
    assert not (tmp_path / "o").exists()


def test_without_numba_the_trainer_falls_back_to_the_reference_and_says_so():
    code = ("import sys; sys.modules['numba'] = None\n"
            "from memtrain import MLP, Trainer\n"
            "tr = Trainer(MLP([4, 3, 2]), 'adam', 2)\n"
            "print(tr.plan.numba_kernels, tr.kernels.name, tr.notes)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == ("False numpy ['fused CPU kernels unavailable (numba is not importable): "
                                  "the NumPy reference path runs']")
