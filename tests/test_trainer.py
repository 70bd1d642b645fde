"""The training loop on real data, determinism and early stopping."""

import time

import numpy as np
import pytest

from memtrain import MLP, Trainer, make_schedule
from memtrain.data import load_dataset


def test_digits_reaches_95_percent_quickly():
    d = load_dataset("digits", validation=0.2, test=0.2, standardize=True, seed=0)
    (Xtr, ytr), (Xva, yva), (Xte, yte) = (d.X_train, d.y_train), (d.X_val, d.y_val), (d.X_test, d.y_test)
    t0 = time.perf_counter()
    model = MLP([64, 128, 10], activation="relu", output="softmax", seed=0)
    trainer = Trainer(model, "adam", batch_size=32, patience=5, seed=0)
    trainer.fit(Xtr, ytr, epochs=30, validation=(Xva, yva))
    acc = model.evaluate(Xte, yte)["accuracy"]
    assert acc >= 0.95, acc
    assert time.perf_counter() - t0 < 30
    assert trainer.history[-1]["val_accuracy"] >= 0.9


def _run(seed, dropout=True):
    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((200, 10)), rng.integers(0, 3, 200)
    m = MLP([10, 16, 3], dropout=dropout, seed=seed)
    Trainer(m, "momentum", batch_size=16, seed=seed).fit(X, y, epochs=3)
    return m.params.copy()


def test_training_is_deterministic_given_a_seed():
    np.testing.assert_array_equal(_run(1), _run(1))
    assert not np.array_equal(_run(1), _run(2))


def test_early_stopping_restores_the_best_weights():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((64, 5)), rng.integers(0, 2, 64)  # pure noise: validation loss soon rises
    Xv, yv = rng.standard_normal((64, 5)), rng.integers(0, 2, 64)
    m = MLP([5, 64, 2], seed=0)
    t = Trainer(m, "adam", batch_size=8, patience=2, lr=0.05)
    hist = t.fit(X, y, epochs=50, validation=(Xv, yv))
    assert len(hist) < 50  # stopped early
    best = min(h["val_loss"] for h in hist)
    assert hist[t.best_epoch - 1]["val_loss"] == best
    assert m.evaluate(Xv, yv)["loss"] == pytest.approx(best, rel=1e-5)
    assert "best_params" in t.plan.names()


def test_schedule_drives_the_rate():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((32, 4)), rng.integers(0, 2, 32)
    m = MLP([4, 2], seed=0)
    before = m.params.copy()
    t = Trainer(m, "sgd", batch_size=32, schedule=make_schedule("step", 0.1, milestones=[1], gamma=0.0001))
    t.step(X, y)
    first = np.abs(m.params - before).max()
    mid = m.params.copy()
    t.step(X, y)
    assert np.abs(m.params - mid).max() < first * 1e-2


def test_nonfinite_steps_are_skipped_and_counted():
    m = MLP([2, 3, 2])
    t = Trainer(m, "sgd", batch_size=2)
    before = m.params.copy()
    with np.errstate(all="ignore"):
        loss = t.step(np.array([[np.inf, 1.0], [0.0, 1.0]]), np.array([0, 1]))
    assert not np.isfinite(loss)
    assert t.nonfinite_steps == 1 and t.steps == 0
    np.testing.assert_array_equal(m.params, before)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(optimizer="adamw"), "optimizer: unknown 'adamw'"),
        (dict(batch_size=0), "batch_size: expected a positive integer"),
        (dict(clip_norm=-1.0), "clip_norm: expected a positive number"),
        (dict(patience=0), "patience: expected a positive integer"),
        (dict(optimizer="adam", lr=-1), "lr: expected a positive number"),
    ],
)
def test_bad_trainer_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Trainer(MLP([2, 2]), **kwargs)


def test_fit_validates_its_data():
    t = Trainer(MLP([2, 2]), batch_size=2)
    with pytest.raises(ValueError, match="y: 3 labels for 2 samples"):
        t.fit(np.zeros((2, 2)), np.zeros(3, int))
    with pytest.raises(ValueError, match="epochs: expected a positive integer"):
        t.fit(np.zeros((2, 2)), np.zeros(2, int), epochs=0)
    with pytest.raises(ValueError, match=r"batch: expected 1..2 rows, got 3"):
        t.step(np.zeros((3, 2)), np.zeros(3, int))
