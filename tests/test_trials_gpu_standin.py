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
