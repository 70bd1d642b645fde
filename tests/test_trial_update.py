"""A trial array's optimizer updates, one fused kernel per optimizer group (train/trial_update.py):
every trial still ends bit-identical to its lone run, and the grouped trials really ran as one
`<optimizer>_rows` call per step (numba on the CPU; tests/test_trials_gpu_standin.py for the GPU's)."""

import numpy as np
import pytest
from test_trials import B, N, check_alone

from memtrain import OPTIMIZERS
from memtrain.kernels.cpu import dispatch as cpu
from memtrain.kernels.cpu import optim as cpu_optim
from memtrain.kernels.optim import kernels as cuda_kernels
from memtrain.nn.spec import ModelSpec
from memtrain.optim import make_optimizer
from memtrain.optim.schedules import make_schedule
from memtrain.train.trials import TrialArray, TrialSetting

FUSABLE = sorted(n for n in OPTIMIZERS if make_optimizer(n).rows_fusable)


@pytest.fixture
def rows_calls(monkeypatch):
    """The rows kernels a test ran: (optimizer, trials in the call) per call."""
    calls, real = [], cpu.run_rows

    def spy(name, arrays, idx, sc):
        calls.append((name, idx.shape[1]))
        real(name, arrays, idx, sc)

    def penalty_spy(specs, params, grads, idx):
        calls.append(("penalty", idx.shape[1]))
        real_penalty(specs, params, grads, idx)

    real_penalty = cpu.add_penalty_grad_rows
    monkeypatch.setattr(cpu, "run_rows", spy)
    monkeypatch.setattr(cpu, "add_penalty_grad_rows", penalty_spy)
    return calls


def _data(seed=7):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, 6)), rng.integers(0, 3, N), rng.standard_normal((20, 6)), rng.integers(0, 3, 20)


def _settings(names, dtype, per_group=2):
    """per_group trials of each optimizer, each with its own rate, seed, epochs, dropout, l1/l2,
    clipping and schedule."""
    out = []
    for k in range(per_group * len(names)):
        name = names[k % len(names)]
        spec = ModelSpec.create([6, 8, 5, 3], "relu", "softmax", dtype=dtype, dropout=(0.9, 0.7) if k % 2 else None,
                                l2=1e-3 * (k % 3), l1=1e-3 * (k % 4 == 1))
        lr = 0.5 if name == "adadelta" else 0.02 * (1 + k % 3)
        sched = make_schedule("cosine", lr, total_steps=20) if k % 3 == 0 else None
        out.append(TrialSetting(spec, name, {"lr": lr}, schedule=sched, seed=k, epochs=2 + k % 3,
                                clip_norm=0.5 if k % 4 == 2 else None))
    return out


def test_every_fusable_optimizer_runs_one_kernel_per_group_and_is_exact(rows_calls):
    """float32, two trials of each fusable optimizer: one rows call per group and step while both
    train, the flat kernel for the one left after the other's epochs end."""
    X, y, Xv, yv = _data()
    array = TrialArray(_settings(FUSABLE, "float32"), X, y, (Xv, yv), batch_size=B)
    assert sorted(tuple(g.trials) for g in array._groups) == [(k, k + len(FUSABLE)) for k in range(len(FUSABLE))]
    rows_calls.clear()  # the warm-up's calls (each group's kernel compiled when the array is built)
    results = array.train()
    penalties = [n for name, n in rows_calls if name == "penalty"]
    rows_calls[:] = [c for c in rows_calls if c[0] != "penalty"]
    # the l1/l2 of every penalised trial of a step in one call: 14 of the 20 trials have one
    with_penalty = [s for s in array.settings if s.spec.l1 or s.spec.l2]
    assert len(with_penalty) == 14 and penalties[0] == 14 and len(penalties) == 4 * -(-N // B)
    assert {name for name, _ in rows_calls} == set(FUSABLE) and {n for _, n in rows_calls} == {2}
    steps = -(-N // B)
    # per group: both trials' common epochs in rows calls (the shorter one's budget)
    expected = sum(min(r.setting.epochs for r in results if r.setting.optimizer == o) * steps for o in FUSABLE)
    assert len(rows_calls) == expected
    check_alone(results, X, y, (Xv, yv))


@pytest.mark.parametrize("dtype", ["float64", "float16"])
def test_groups_are_exact_in_every_dtype(dtype, rows_calls):
    X, y, Xv, yv = _data(3)
    results = TrialArray(_settings(["adam"], dtype, per_group=3), X, y, (Xv, yv), batch_size=B).train()
    assert {n for _, n in rows_calls} >= {3}
    check_alone(results, X, y, (Xv, yv))


def test_a_failing_trial_leaves_its_group_and_novograd_and_lookahead_update_alone(rows_calls):
    """A trial whose steps go non-finite stops updating (the rest of its group runs without it);
    NovoGrad and Lookahead are not grouped: per-tensor norms, a sync every k steps."""
    X, y, Xv, yv = _data(5)
    spec = ModelSpec.create([6, 8, 3], "relu", "softmax", dtype="float64")
    settings = [TrialSetting(spec, "sgd", {"lr": 1e200}, epochs=4, max_nonfinite=2, seed=0)]
    settings += [TrialSetting(spec, "sgd", {"lr": 0.05 * k}, epochs=3, seed=k) for k in (1, 2)]
    settings += [TrialSetting(spec, o, {"lr": 0.01}, epochs=2, seed=k) for k, o in
                 enumerate(["novograd", "novograd", "lookahead", "lookahead"], 3)]
    array = TrialArray(settings, X, y, (Xv, yv), batch_size=B)
    assert [g.trials for g in array._groups] == [[0, 1, 2]]
    rows_calls.clear()
    with np.errstate(all="ignore"):
        results = array.train()
    assert results[0].state == "failed" and [r.state for r in results[1:]] == ["finished"] * 6
    # its first step is finite (a huge one): all three; then its skipped steps are not in the calls
    assert rows_calls[0] == ("sgd", 3) and rows_calls[-1] == ("sgd", 2)
    check_alone(results[1:], X, y, (Xv, yv))


@pytest.mark.parametrize("name", FUSABLE)
def test_each_rows_kernel_takes_its_flat_kernels_arrays(name):
    """The CPU rows kernel takes the flat kernel's arrays, then idx and the scalar rows; the CUDA
    source has a rows twin of the update for every dtype (NVRTC compiles it with the others:
    tests/test_kernels_compile.py)."""
    flat = list(__import__("inspect").signature(getattr(cpu_optim, name).py_func).parameters)
    rows = list(__import__("inspect").signature(getattr(cpu_optim, f"{name}_rows").py_func).parameters)
    opt = make_optimizer(name)
    n_arrays = 2 + len(opt.kernel_args("cpu", opt.prepare(1, 1.0)).slots)
    assert rows == [f"{a}_stack" for a in flat[:n_arrays]] + ["idx", "sc"]
    for dtype in ("float16", "float32", "float64"):
        assert f"memtrain_{name}_rows_{dtype}" == cuda_kernels(dtype)[f"{name}_rows"].name
