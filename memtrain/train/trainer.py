"""Trainer: allocates the training plan once, then runs steps inside it."""

from __future__ import annotations

import math
import time

import numpy as np

from memtrain.backend import small_ufunc_buffers
from memtrain.memory.arena import allocate
from memtrain.memory.plan import MemoryPlan, training_plan
from memtrain.nn import step
from memtrain.nn.mlp import MLP, _copy_in, evaluate_in
from memtrain.optim import Optimizer, make_optimizer
from memtrain.optim.schedules import Constant, Schedule


class Trainer:
    """Trainer(model, optimizer="adam", batch_size=32, ...).fit(X, y, epochs, validation=(Xv, yv)).

    optimizer: a name from memtrain.OPTIMIZERS ("lookahead:sgd" wraps) or an Optimizer
    schedule: a Schedule (memtrain.make_schedule) over optimizer steps; default constant
    clip_norm: scale the gradient down to this global norm when longer
    patience: early stopping after this many epochs without a better validation
        loss; the best weights are kept (a planned copy) and restored
    seed: data order and dropout masks (two independent streams)
    """

    def __init__(self, model: MLP, optimizer="adam", batch_size: int = 32, *, schedule: Schedule | None = None,
                 clip_norm: float | None = None, patience: int | None = None, seed: int = 0,
                 dataset_size: int | None = None, allocation_observer=None, **optimizer_hyper):
        self.model = model
        self.spec = model.spec
        self.backend = model.backend
        self.optimizer = optimizer if isinstance(optimizer, Optimizer) else make_optimizer(optimizer, **optimizer_hyper)
        if isinstance(optimizer, Optimizer) and optimizer_hyper:
            raise ValueError("optimizer: pass hyper-parameters to the Optimizer, not to the Trainer")
        self.notes = self.optimizer.adapt_to_dtype(self.spec.dtype)
        self.schedule = schedule or Constant(self.optimizer.lr)
        if clip_norm is not None and not (clip_norm > 0 and math.isfinite(clip_norm)):
            raise ValueError(f"clip_norm: expected a positive number, got {clip_norm!r}")
        self.clip_norm = clip_norm
        if patience is not None and (int(patience) != patience or patience < 1):
            raise ValueError(f"patience: expected a positive integer, got {patience!r}")
        self.patience = patience
        self.seed = int(seed)
        self.plan: MemoryPlan = training_plan(self.spec, self.optimizer, batch_size, self.backend.kind,
                                              dataset_size=dataset_size, keep_best=patience is not None)
        self.arrays = allocate(self.plan, self.backend.xp, existing={"params": model.params},
                               observer=allocation_observer)
        self.optimizer.init_state(self.arrays, model.params)
        self.grads = self.arrays["grads"]
        self.glayers = step.layer_views(self.spec, self.grads)
        self.buffers = step.StepBuffers(self.spec, self.arrays, "train")
        self.chunk = self.arrays.get("chunk")
        self.scratch = list(self.chunk) if self.chunk is not None else []
        self.data_rng = np.random.Generator(np.random.PCG64(self.seed))
        self.dropout_rng = self.backend.rng(self.seed + 1)
        self.steps = 0
        self.nonfinite_steps = 0
        self.last_grad_norm = float("nan")
        self.history: list = []

    @property
    def batch_size(self) -> int:
        return self.plan.batch_size

    # -- one step ----------------------------------------------------------
    def step(self, xb, yb) -> float:
        """One optimizer step on a batch (rows <= batch_size); returns its mean data loss."""
        b = len(xb)
        if not 0 < b <= self.batch_size:
            raise ValueError(f"batch: expected 1..{self.batch_size} rows, got {b}")
        v = self.buffers.at(b)
        _copy_in(v.x, xb)
        _copy_in(v.y, yb)
        return self._step_on(v)

    def _step_on(self, v) -> float:
        with small_ufunc_buffers():
            return self._step_inside(v)

    def _step_inside(self, v) -> float:
        spec, model = self.spec, self.model
        step.forward(spec, model.layers, v, train=True, rng=self.dropout_rng)
        loss = step.loss_sum(spec, v) / v.b
        step.backward(spec, model.layers, self.glayers, v)
        step.add_penalty_grad(spec, model.params, self.grads, self.chunk)
        norm = step.clip_by_norm(self.grads, self.clip_norm)
        self.last_grad_norm = norm
        if not (math.isfinite(loss) and math.isfinite(norm)):
            self.nonfinite_steps += 1  # skip: a non-finite update would poison every weight
            return loss
        lr = self.schedule(self.steps)
        self.optimizer.step(model.params, self.grads, self.arrays, self.scratch, lr, spec.layout)
        self.steps += 1
        return loss

    # -- epochs ------------------------------------------------------------
    def _order(self, n: int):
        """The permutation buffer for a dataset of n rows; it is part of the plan."""
        if "order" not in self.arrays or self.arrays["order"].shape[0] != n:
            self.plan = training_plan(self.spec, self.optimizer, self.batch_size, self.backend.kind,
                                      dataset_size=n, keep_best=self.patience is not None)
            self.arrays["order"] = np.zeros(n, dtype=np.intp)  # host: it indexes host data
        order = self.arrays["order"]
        order[...] = 1
        np.cumsum(order, out=order)
        order -= 1
        return order

    def fit(self, X, y, epochs: int = 10, validation=None, *, verbose: bool = False, callback=None) -> list:
        """Shuffled minibatches for `epochs`; validation loss/accuracy per epoch;
        early stopping (with `patience`) restores the best weights. Returns the history."""
        if int(epochs) != epochs or epochs < 1:
            raise ValueError(f"epochs: expected a positive integer, got {epochs!r}")
        X = self.model._inputs(X)
        y = self.model.prepare_labels(y)
        if len(X) != len(y):
            raise ValueError(f"y: {len(y)} labels for {len(X)} samples")
        X = np.ascontiguousarray(X, dtype=self.spec.dtype)
        if validation is not None:
            Xv = np.ascontiguousarray(self.model._inputs(validation[0]), dtype=self.spec.dtype)
            yv = self.model.prepare_labels(validation[1])
        n = len(X)
        order = self._order(n)
        best_loss, best_epoch, waited = math.inf, None, 0
        B = self.batch_size
        for epoch in range(1, int(epochs) + 1):
            t0 = time.perf_counter()
            self.data_rng.shuffle(order)  # in place
            total = 0.0
            for s in range(0, n, B):
                idx = order[s : s + B]
                v = self.buffers.at(len(idx))
                if isinstance(v.x, np.ndarray):
                    np.take(X, idx, axis=0, out=v.x)
                    np.take(y, idx, axis=0, out=v.y)
                else:
                    _copy_in(v.x, X[idx])
                    _copy_in(v.y, y[idx])
                total += self._step_on(v) * len(idx)
            record = {"epoch": epoch, "train_loss": total / n, "lr": self.schedule(max(self.steps - 1, 0)),
                      "grad_norm": self.last_grad_norm, "seconds": time.perf_counter() - t0}
            if validation is not None:
                ev = evaluate_in(self.spec, self.model.layers, self.buffers, Xv, yv)
                record.update(val_loss=ev["loss"], val_accuracy=ev["accuracy"])
            self.history.append(record)
            if verbose:
                print(_format_record(record))
            if callback is not None:
                callback(record)
            if self.patience is not None and validation is not None:
                if record["val_loss"] < best_loss:
                    best_loss, best_epoch, waited = record["val_loss"], epoch, 0
                    self.arrays["best_params"][...] = self.model.params
                else:
                    waited += 1
                    if waited >= self.patience:
                        break
        if self.patience is not None and best_epoch is not None:
            self.model.params[...] = self.arrays["best_params"]
            self.best_epoch = best_epoch
        return self.history

    def evaluate(self, X, y) -> dict:
        """Loss and accuracy using the training buffers (no extra memory)."""
        X = np.ascontiguousarray(self.model._inputs(X), dtype=self.spec.dtype)
        return evaluate_in(self.spec, self.model.layers, self.buffers, X, self.model.prepare_labels(y))


def _format_record(r: dict) -> str:
    parts = [f"epoch {r['epoch']}", f"loss {r['train_loss']:.4f}"]
    if "val_loss" in r:
        parts.append(f"val_loss {r['val_loss']:.4f}")
        if r.get("val_accuracy") is not None:
            parts.append(f"val_acc {r['val_accuracy']:.4f}")
    parts.append(f"{r['seconds']:.2f}s")
    return "  ".join(parts)


__all__ = ["Trainer"]
