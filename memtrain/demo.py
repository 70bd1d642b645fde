"""`make demo`: train the course's kind of network on real data (scikit-learn's
8x8 digits) and show its memory plan next to what the training really used."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np

from memtrain import MLP, Trainer
from memtrain.units import format_bytes


def load_digits_split(seed: int = 0):
    from sklearn.datasets import load_digits  # noqa: PLC0415 - the demo's data, an optional extra

    d = load_digits()
    X, y = d.data.astype(np.float64), d.target
    order = np.random.default_rng(seed).permutation(len(X))
    X, y = X[order], y[order]
    n_test = n_val = len(X) // 5
    Xtr, ytr = X[n_test + n_val :], y[n_test + n_val :]
    mean, std = Xtr.mean(0), Xtr.std(0) + 1e-8  # standardise on training statistics only
    X = (X - mean) / std
    return (X[n_test + n_val :], ytr), (X[n_test : n_test + n_val], y[n_test : n_test + n_val]), (X[:n_test], y[:n_test])


def main() -> None:
    (Xtr, ytr), (Xva, yva), (Xte, yte) = load_digits_split()
    tracemalloc.start()
    model = MLP([64, 128, 10], activation="relu", output="softmax", seed=0)
    trainer = Trainer(model, "adam", batch_size=32, patience=5, seed=0, dataset_size=len(Xtr))
    print(f"model     {model.spec.describe()}, {model.spec.n_params:,} parameters")
    print(f"optimizer {trainer.optimizer.describe()}, batch {trainer.batch_size}")
    print("memory plan (bytes the trainer allocates, by category):")
    for cat, nbytes in trainer.plan.by_category().items():
        if nbytes:
            print(f"  {cat:16s} {format_bytes(nbytes):>12s}")
    print(f"  {'total':16s} {format_bytes(trainer.plan.total):>12s}")
    t0 = time.perf_counter()
    trainer.fit(Xtr, ytr, epochs=30, validation=(Xva, yva), verbose=True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    test = model.evaluate(Xte, yte)
    print(f"best epoch {trainer.best_epoch}, test accuracy {test['accuracy']:.4f}, "
          f"{time.perf_counter() - t0:.1f} s")
    print(f"memory: planned {format_bytes(trainer.plan.total)}, measured peak (tracemalloc, incl. the "
          f"data set and Python objects) {format_bytes(peak)}")


if __name__ == "__main__":
    main()
