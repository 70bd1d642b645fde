"""A trial array on the CPU stand-in for CuPy (tests/cupy_standin.py): the GPU path's Python (device
arrays, CuPy's matmul on the stacked arrays, the per-trial CUDA kernels built for the host, the
data set on the device once) ends where each trial alone on the same device ends."""

import cupy_standin
import numpy as np
import pytest

from memtrain import MLP, Trainer
from memtrain.nn.spec import ModelSpec
from memtrain.train.trials import TrialArray, TrialSetting


@pytest.fixture
def cp(monkeypatch, host_launcher):
    return cupy_standin.install(monkeypatch, host_launcher)


def test_a_trial_array_on_the_device_ends_as_each_trial_alone(cp):
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((60, 8)), rng.integers(0, 3, 60)
    val = (X[:20], y[:20])
    spec = ModelSpec.create([8, 10, 3], "tanh", dtype="float64", dropout=(1.0, 0.8))
    settings = [TrialSetting(spec, opt, {"lr": 0.02}, seed=k, epochs=2 + k, patience=1 if k == 1 else None)
                for k, opt in enumerate(["adam", "momentum", "rmsprop"])]
    array = TrialArray(settings, X, y, val, batch_size=16, device="cuda")
    results = array.train()
    assert isinstance(array.arrays["params"], cp.ndarray) and isinstance(array.X, cp.ndarray)
    assert "data_x" not in array.arrays  # the data set once, shared by the trainers
    assert all(r.trainer.arrays["data_x"] is array.X for r in results)
    for r in results:
        s = r.setting
        model = MLP.from_spec(s.spec, seed=s.seed, device="cuda")
        alone = Trainer(model, s.optimizer, 16, seed=s.seed, patience=s.patience, cuda_graph=False, **s.hyper)
        alone.fit(X, y, s.epochs, validation=val)
        assert r.trainer.steps == alone.steps
        np.testing.assert_array_equal(r.model.params.get(), model.params.get())


def test_one_launch_per_optimizer_group_and_exact(cp):
    """Two trials of each of four optimizers (Adam: count, tick_rows; SGD: none; RAdam; Rprop's int8
    slot) plus a NovoGrad trial alone: each group's update is one `<name>_rows` launch per step (and
    one `tick_rows` where it counts steps); every trial ends as alone on the same device."""
    import cupy_standin as cs

    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((48, 8)), rng.integers(0, 3, 48)
    spec = ModelSpec.create([8, 10, 3], "relu", dtype="float32")
    opts = ["adam", "sgd", "radam", "rprop"] * 2 + ["novograd"]
    settings = [TrialSetting(spec, o, {"lr": 0.01 * (1 + k)}, seed=k, epochs=2, clip_norm=0.2 if k == 4 else None)
                for k, o in enumerate(opts)]
    array = TrialArray(settings, X, y, batch_size=16, device="cuda")
    assert sorted(g.trials for g in array._groups) == [[0, 4], [1, 5], [2, 6], [3, 7]]
    host = cs.StandinLauncher.__dict__["elementwise_rows"]
    launched = []

    def spy(self, kernel, n, trials, args):
        launched.append((kernel.name, trials))
        host(self, kernel, n, trials, args)

    cs.StandinLauncher.elementwise_rows = spy
    launcher = __import__("memtrain.kernels.dispatch", fromlist=["x"]).default_launcher()
    try:
        before = launcher.launches
        results = array.train()
        grouped = launcher.launches - before
        per_trial = TrialArray(settings, X, y, batch_size=16, device="cuda")
        per_trial._groups = []  # each trial's own launches, as before the rows kernels
        before = launcher.launches
        per_trial.train()
        alone = launcher.launches - before
    finally:
        cs.StandinLauncher.elementwise_rows = host
    steps = 2 * 3
    assert sorted(set(launched)) == [(f"memtrain_{o}_rows_float32", 2) for o in ("adam", "radam", "rprop", "sgd")]
    assert len(launched) == 4 * steps
    # per step, memtrain's update launches: Adam, RAdam 2 x (tick + update) -> tick_rows + rows each,
    # SGD, Rprop 2 x update -> rows each: 12 -> 6 (NovoGrad's, alone, the same both ways)
    assert alone - grouped == (12 - 6) * steps
    for r in results:
        s = r.setting
        model = MLP.from_spec(s.spec, seed=s.seed, device="cuda")
        alone = Trainer(model, s.optimizer, 16, seed=s.seed, clip_norm=s.clip_norm, cuda_graph=False, **s.hyper)
        alone.fit(X, y, s.epochs)
        assert r.trainer.steps == alone.steps == steps
        np.testing.assert_array_equal(r.model.params.get(), model.params.get(), err_msg=s.optimizer)
        np.testing.assert_array_equal(r.trainer.arrays["opt.count"].get() if "opt.count" in r.trainer.arrays
                                      else 0, alone.arrays["opt.count"].get() if "opt.count" in alone.arrays else 0)


@pytest.mark.parametrize("dtype, max_grid_y", [("float16", 65535), ("float64", 1)])
def test_a_rows_kernel_is_its_flat_kernel_row_by_row(host_launcher, monkeypatch, dtype, max_grid_y):
    """The host build of `adam_rows` over rows 2 and 0 of a stack (row strides, idx, per-trial
    hyper-parameters, each row's own step scalars and count) gives each row the bits of the flat
    `adam` kernel run on that row alone; row 1 is untouched. With a grid of one row (CUDA's
    gridDim.y limit made 1) the trials go in one launch each, with the same bits."""
    from memtrain.kernels import dispatch

    monkeypatch.setattr(dispatch, "MAX_GRID_Y", max_grid_y)
    from memtrain.kernels.source import N_SCALARS, SC_LR

    rng = np.random.default_rng(4)
    K, P = 3, 37
    p, g = rng.standard_normal((K, P)).astype(dtype), rng.standard_normal((K, P)).astype(dtype)
    m, v = (rng.standard_normal((K, P)) * 0.1).astype(dtype), rng.random((K, P)).astype(dtype)
    count, sc = np.array([3, 5, 7], dtype=np.int64), np.zeros((K, N_SCALARS))
    sc[:, SC_LR] = [0.01, 0.02, 0.03]
    hp = {0: (0.9, 0.999, 1e-4), 2: (0.8, 0.99, 1e-3)}  # b1, b2, eps of rows 0 and 2
    flat = [a.copy() for a in (p, m, v, count)]
    k = dispatch.optimizer_kernels(dtype)
    for r in (2, 0):
        rows = [a[r] for a in flat]
        host_launcher.elementwise(k["adam"], P, [rows[0], g[r], rows[1], rows[2], rows[3][None], sc[r], *hp[r]])
    dk = dispatch.DeviceKernels(host_launcher, None, dtype)
    idx = np.array([[2, 0]] * 6 + [[0, 1]], dtype=np.int64)
    hp_cols = np.array([hp[2], hp[0]]).T.copy()
    count_before = count.copy()
    dk.rows("adam", [p, g, m, v, count, sc], idx, hp_cols, counter=False)
    for a, b in zip((p, m, v), flat[:3], strict=True):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
    assert (p[1] == flat[0][1]).all()  # row 1 as it was (no trial of the launch owns it)
    assert (count == count_before).all()  # counter=False: the counts as given (the flat launches read them)
