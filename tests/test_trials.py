"""Trial arrays (train/trials.py): every trial ends with the model it trains alone, bit for bit.

The reference is a Trainer with the trial's settings fitted alone (what a Job runs; the last
test runs a real Job). Tiny models and few epochs: the arithmetic, not the size, is tested.
"""

import numpy as np
import pytest

from memtrain import MLP, OPTIMIZERS, Trainer
from memtrain.errors import ConfigError
from memtrain.nn.spec import ModelSpec
from memtrain.nn.stacked import runs_of
from memtrain.optim.schedules import make_schedule
from memtrain.train.trials import TrialArray, TrialSetting

N, NV, B = 70, 20, 16


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    X, Xv = rng.standard_normal((N, 6)), rng.standard_normal((NV, 6))
    return X, Xv, {"softmax": (rng.integers(0, 3, N), rng.integers(0, 3, NV)),
                   "sigmoid": (rng.integers(0, 2, N), rng.integers(0, 2, NV)),
                   "linear": (rng.standard_normal((N, 3)), rng.standard_normal((NV, 3)))}


def alone(s: TrialSetting, X, y, val):
    """The trial trained by itself, as a Job builds it: model seed, trainer seed, schedule."""
    model = MLP.from_spec(s.spec, seed=s.seed if s.init_seed is None else s.init_seed)
    tr = Trainer(model, s.optimizer, B, schedule=s.schedule, clip_norm=s.clip_norm, patience=s.patience,
                 seed=s.seed, **dict(s.hyper))
    tr.fit(X, y, s.epochs, validation=val)
    return tr


def check_alone(results, X, y, val):
    for r in results:
        tr = alone(r.setting, X, y, val)
        assert r.trainer.steps == tr.steps and r.trainer.epoch == tr.epoch, r.setting.optimizer
        assert r.history == tr.history or _same_but_seconds(r.history, tr.history), r.setting.optimizer
        np.testing.assert_array_equal(r.model.params, tr.model.params, err_msg=r.setting.optimizer)
        assert r.trainer.stopped_early == tr.stopped_early


def _same_but_seconds(a, b) -> bool:
    strip = lambda h: [{k: v for k, v in rec.items() if k != "seconds"} for rec in h]  # noqa: E731
    return strip(a) == strip(b)


def _sizes(output):
    return [6, 8, 5, 1 if output == "sigmoid" else 3]


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_every_optimizer_is_exact(data, dtype):
    """All 12 optimizers in one array (their own slots, scalars and rates), with dropout on
    every other trial, l1/l2, clipping, a schedule and different epoch budgets."""
    X, Xv, labels = data
    y, yv = labels["softmax"]
    settings = []
    for k, name in enumerate(sorted(OPTIMIZERS)):
        spec = ModelSpec.create(_sizes("softmax"), "relu", "softmax", dtype=dtype,
                                dropout=(0.9, 0.7) if k % 2 else None, l2=1e-3 * (k % 3), l1=1e-3 * (k % 4 == 1))
        lr = 0.5 if name == "adadelta" else 0.02 * (1 + k % 3)
        sched = make_schedule("cosine", lr, total_steps=20) if k % 3 == 0 else None
        settings.append(TrialSetting(spec, name, {"lr": lr}, schedule=sched, seed=k, epochs=2 + k % 3,
                                     clip_norm=0.5 if k % 4 == 2 else None))
    results = TrialArray(settings, X, y, (Xv, yv), batch_size=B).train()
    assert [r.state for r in results] == ["finished"] * len(settings)
    assert [r.trainer.epoch for r in results] == [s.epochs for s in settings]
    check_alone(results, X, y, (Xv, yv))


ACTIVATIONS = [("relu", "softmax"), ("tanh", "sigmoid"), ("gelu", "linear"), ("prelu", "softmax"),
               ("leaky_relu:0.1", "linear"), ("sigmoid", "softmax"), ("mish", "sigmoid")]


@pytest.mark.parametrize("activation,output", ACTIVATIONS)
def test_activations_and_outputs_are_exact(data, activation, output):
    X, Xv, labels = data
    y, yv = labels[output]
    settings = [TrialSetting(ModelSpec.create(_sizes(output), activation, output, dtype="float32",
                                              dropout=(1.0, 0.8) if k else None), opt, {"lr": 0.01}, seed=k, epochs=2)
                for k, opt in enumerate(["adam", "momentum", "rmsprop"])]
    check_alone(TrialArray(settings, X, y, (Xv, yv), batch_size=B).train(), X, y, (Xv, yv))


@pytest.mark.parametrize("finished", ["compact", "mask"])
def test_early_stopping_and_finished_trials(data, finished):
    """Trials that stop early (patience 1, a rate that overshoots) or run out of epochs leave the
    array; the rest train on, exactly as alone, however the finished ones are skipped."""
    X, Xv, labels = data
    y, yv = labels["softmax"]
    spec = ModelSpec.create(_sizes("softmax"), "relu", "softmax", dtype="float64")
    settings = [TrialSetting(spec, "sgd", {"lr": lr}, seed=1, epochs=e, patience=p)
                for lr, e, p in [(3.0, 6, 1), (0.05, 2, None), (0.05, 6, 2), (2.0, 6, 1), (0.1, 4, None)]]
    results = TrialArray(settings, X, y, (Xv, yv), batch_size=B, finished=finished).train()
    assert "stopped_early" in [r.state for r in results]
    check_alone(results, X, y, (Xv, yv))


def test_nonfinite_trial_fails_alone(data):
    """A trial whose steps go non-finite fails by itself; the others finish unchanged."""
    X, Xv, labels = data
    y, yv = labels["linear"]
    spec = ModelSpec.create(_sizes("linear"), "relu", "linear", dtype="float64")
    settings = [TrialSetting(spec, "sgd", {"lr": 1e200}, epochs=4, max_nonfinite=2),
                TrialSetting(spec, "adam", {"lr": 0.01}, epochs=3)]
    with np.errstate(all="ignore"):
        bad, good = TrialArray(settings, X, y, (Xv, yv), batch_size=B).train()
    assert bad.state == "failed" and "non-finite" in bad.message
    assert good.state == "finished"
    check_alone([good], X, y, (Xv, yv))


def test_without_validation_and_a_partial_last_batch(data):
    X, _, labels = data
    y, _ = labels["softmax"]
    spec = ModelSpec.create(_sizes("softmax"), "swish", "softmax", dtype="float32", dropout=True)
    settings = [TrialSetting(spec, "nadam", {"lr": 0.01}, seed=k, init_seed=100 + k, epochs=2) for k in range(3)]
    results = TrialArray(settings, X, y, batch_size=B).train()
    assert N % B and all(r.trainer.steps == 2 * -(-N // B) for r in results)
    check_alone(results, X, y, None)


def test_trials_of_another_shape_are_refused(data):
    X, _, labels = data
    y, _ = labels["softmax"]
    a = TrialSetting(ModelSpec.create([6, 8, 3]))
    with pytest.raises(ConfigError, match="trials: every trial of an array needs the model"):
        TrialArray([a, TrialSetting(ModelSpec.create([6, 9, 3]))], X, y)
    with pytest.raises(ConfigError, match="trials: an array needs at least one trial"):
        TrialArray([], X, y)
    with pytest.raises(ConfigError, match="finished"):
        TrialArray([a], X, y, finished="sometimes")


def test_runs_of():
    assert runs_of([4, 0, 1, 2, 7]) == [(0, 3), (4, 5), (7, 8)]
    assert runs_of([]) == []


def test_a_trial_ends_with_the_model_its_job_writes(tmp_path):
    """The end-to-end reference: `memtrain train`'s Job (seeded split, cosine schedule with warm-up,
    dropout, early stopping) writes model-final.npz; the same config as a trial of an array (beside
    a trial of another rate) ends with exactly those parameters."""
    import os

    from memtrain.config import from_dict
    from memtrain.train.job import load_job_data, run
    from memtrain.train.trials import setting_from_config

    job = {"name": "t", "seed": 3, "device": "cpu",
           "model": {"layers": [10, 12, 3], "activation": "tanh", "dropout": [0.9, 0.8]},
           "optimizer": {"name": "adam", "lr": 0.01}, "schedule": {"name": "cosine", "warmup": 3},
           "training": {"batch_size": 16, "epochs": 4, "patience": 1},
           "data": {"dataset": "synthetic:classification(120, 10, 3)", "validation": 0.25, "standardize": False},
           "output": {"dir": str(tmp_path / "out")}}
    cfg = from_dict(job)
    with open(os.devnull, "w") as devnull:
        run(cfg, progress=False, stream=devnull, install_signals=False)
    with np.load(tmp_path / "out" / "model-final.npz", allow_pickle=False) as z:
        final = z["params"]
    ds = load_job_data(cfg)
    other = from_dict({**job, "optimizer": {"name": "sgd", "lr": 0.1}})
    settings = [setting_from_config(c, len(ds.X_train), 16) for c in (other, cfg)]
    results = TrialArray(settings, ds.X_train, ds.y_train, (ds.X_val, ds.y_val), batch_size=16,
                         fused=cfg.fused).train()  # the path the job ran (fused = "auto")
    np.testing.assert_array_equal(results[1].model.params, final)


def test_the_array_plan_is_what_it_allocates():
    """tracemalloc over building and training an array: its peak is the array's plan (the data set,
    allocated before, counted once; each trial's Python objects, TRIAL_OBJECT_BYTES) within
    test_plan's tolerance; the plan is K trials' buffers plus one data set and one process overhead."""
    import tracemalloc

    from memtrain.memory.trials import TRIAL_OBJECT_BYTES, array_plan

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((256, 100)).astype(np.float32), rng.integers(0, 10, 256).astype(np.intp)
    spec = ModelSpec.create([100, 300, 10], "gelu", dropout=True)
    settings = [TrialSetting(spec, opt, {"lr": 0.01}, seed=k, epochs=1, patience=1 if k == 1 else None)
                for k, opt in enumerate(["adam", "sgd", "rprop", "adam", "lookahead:momentum"])]
    TrialArray(settings, X[:40], y[:40], (X[:8], y[:8]), batch_size=32).train()  # warm NumPy, numba, imports
    tracemalloc.start()
    try:
        array = TrialArray(settings, X, y, (X[:64], y[:64]), batch_size=32)
        array.train()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    plan = array.plan
    outside = X.nbytes + y.nbytes + X[:64].nbytes + y[:64].nbytes  # the caller's data: allocated before
    planned = plan.total - outside
    assert plan.buffer_bytes - outside <= peak <= planned + max(0.005 * planned, 64 * 1024), (planned, peak)
    # data and process once
    plans = array.plans
    data = sum(b.nbytes for b in plans[0].buffers if b.name in ("data_x", "data_y", "val_x", "val_y"))
    assert data == outside and plan.by_category()["data"] == sum(
        b.nbytes for p in plans for b in p.buffers if b.category == "data") - 4 * data
    again = array_plan(plans, overhead_bytes=10 << 20)
    assert again.total == sum(p.total for p in plans) - 4 * data + (10 << 20) + 5 * TRIAL_OBJECT_BYTES


def test_stop_one_trial_then_the_rest(data):
    """stop(k) takes one trial out after the current step (the others go on exactly as alone);
    stop() ends the array."""
    X, Xv, labels = data
    y, yv = labels["softmax"]
    spec = ModelSpec.create(_sizes("softmax"), "relu", "softmax", dtype="float64")
    settings = [TrialSetting(spec, "adam", {"lr": 0.01}, seed=k, epochs=3) for k in range(3)]
    array = TrialArray(settings, X, y, (Xv, yv), batch_size=B)
    array.train(on_epoch=lambda r, rec: array.stop(1, "cancel") if r.index == 0 and rec["epoch"] == 1 else None)
    states = [r.state for r in array.results]
    assert states == ["finished", "stopped", "finished"] and array.results[1].message == "stopped on cancel"
    assert array.results[1].trainer.epoch == 1
    check_alone([array.results[0], array.results[2]], X, y, (Xv, yv))
    again = TrialArray(settings, X, y, (Xv, yv), batch_size=B)
    again.train(on_epoch=lambda r, rec: again.stop())
    assert [r.trainer.epoch for r in again.results] == [1, 1, 1] and not again.active()
