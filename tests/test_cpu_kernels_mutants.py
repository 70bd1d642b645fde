"""The fused CPU step's dispatch (memtrain/kernels/cpu/dispatch.py and each optimizer's kernel
arguments): cases a mutation run (docs/testing.md, `make mutation MODULE=cpu-dispatch`) found
untested. float32 and small models only: every kernel compiles once per dtype."""

from types import SimpleNamespace

import numba
import numpy as np
import pytest

from memtrain import MLP, Trainer
from memtrain.kernels.cpu import activation as A
from memtrain.kernels.cpu import dispatch as cpu
from memtrain.kernels.cpu import optim as K
from memtrain.nn.spec import ModelSpec
from memtrain.optim import make_optimizer
from memtrain.optim.base import standalone_state
from memtrain.train.step_kernels import numba_step

LAYOUT = [SimpleNamespace(offset=0, size=600, kind="weight"), SimpleNamespace(offset=600, size=400, kind="bias")]


def _steps(name, fused, steps, **hyper):
    rng = np.random.default_rng(7)
    opt = make_optimizer(name, **hyper)
    p = rng.standard_normal(1000).astype(np.float32)
    state, scratch = standalone_state(opt, p, n_groups=2)
    for _ in range(steps):
        g = (rng.standard_normal(1000) * 0.5).astype(np.float32)
        if fused:
            cpu.optimizer_step(opt, p, g, state, 1e-2, LAYOUT)
        else:
            opt.step(p, g, state, scratch, 1e-2, LAYOUT)
    return p, state


@pytest.mark.parametrize("name, hyper", [("radam", {}), ("novograd", {"weight_decay": 0.01})],
                         ids=["radam-from-its-first-step", "novograd-weight-decay"])
def test_fused_updates_from_the_first_step_and_with_weight_decay_are_the_reference(name, hyper):
    """RAdam's first steps are un-rectified (another kernel branch); NovoGrad's decay is a flag."""
    (p, state), (ref_p, ref_state) = _steps(name, True, 6, **hyper), _steps(name, False, 6, **hyper)
    assert np.array_equal(p, ref_p)
    for key in state:
        assert np.array_equal(state[key], ref_state[key]), key


def test_fused_training_with_l2_alone_is_the_reference():
    def train(fused):
        rng = np.random.default_rng(0)
        X, y = rng.standard_normal((96, 12)).astype(np.float32), rng.integers(0, 3, 96)
        model = MLP([12, 8, 3], l2=1e-2, seed=2)
        Trainer(model, "sgd", 32, seed=5, fused=fused).fit(X, y, epochs=1)
        return model.params.copy()

    assert np.array_equal(train(True), train(False))


def test_building_a_step_runs_each_of_its_kernels_on_the_models_dtype_before_the_first_step(monkeypatch):
    """So that each kernel is compiled for that dtype before a measured step (dispatch.warm)."""
    seen = []

    def spy(module, name):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a: (seen.extend((name, x.dtype) for x in a if hasattr(x, "dtype")
                                                                  and x.ndim), real(*a)))

    for name in ("adam", "penalty_grad"):
        spy(K, name)
    for name in ("swish_forward", "swish_backward"):
        spy(A, name)
    step, why = numba_step(ModelSpec.create([3, 4, 2], activation="swish", dtype="float32", l2=1e-3),
                           make_optimizer("adam"))
    assert why is None
    assert {name for name, _ in seen} == {"adam", "penalty_grad", "swish_forward", "swish_backward"}
    assert {dtype for _, dtype in seen} == {np.dtype("float32")}  # every array: params, gradients, state


def test_a_step_runs_the_kernels_on_the_threads_it_was_built_with(monkeypatch):
    monkeypatch.setattr(cpu, "_THREADS", [])
    cpu.use_threads()
    assert numba.get_num_threads() == 1  # before any step was built: one
    monkeypatch.setenv("MEMTRAIN_CPU_THREADS", "2")
    numba_step(ModelSpec.create([3, 2], dtype="float32"), make_optimizer("sgd"))
    numba.set_num_threads(1)
    cpu.use_threads()
    assert numba.get_num_threads() == min(2, numba.config.NUMBA_NUM_THREADS)
    cpu._THREADS[:] = [1]
    cpu.use_threads()
    assert numba.get_num_threads() == 1

