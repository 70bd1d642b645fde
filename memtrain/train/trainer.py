"""Trainer: allocates the training plan once, then runs steps inside it.

Out-of-memory during a step (MemoryError on the CPU, CuPy's OutOfMemoryError
on a GPU) does not end the job: the trainer halves the micro-batch, re-plans,
reallocates only what changed, and runs the SAME step again as gradient
accumulation over smaller micro-batches, so the optimizer still sees the mean
gradient of the full batch and no step is lost or repeated.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np

from memtrain.backend import small_ufunc_buffers
from memtrain.memory.arena import allocate
from memtrain.memory.plan import MemoryPlan, training_plan
from memtrain.nn import step
from memtrain.nn.mlp import MLP, _copy_in, evaluate_in
from memtrain.optim import Optimizer, make_optimizer
from memtrain.optim.schedules import Constant, Schedule


def oom_errors() -> tuple:
    """The exceptions that mean "out of memory" on the backends loaded now."""
    errors = [MemoryError]
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        errors.append(cupy.cuda.memory.OutOfMemoryError)
    return tuple(errors)


class Trainer:
    """Trainer(model, optimizer="adam", batch_size=32, ...).fit(X, y, epochs, validation=(Xv, yv)).

    optimizer: a name from memtrain.OPTIMIZERS ("lookahead:sgd" wraps) or an Optimizer
    micro_batch_size: rows per forward/backward pass; smaller than batch_size
        means gradient accumulation (the optimizer sees the full batch's mean gradient)
    schedule: a Schedule (memtrain.make_schedule) over optimizer steps; default constant
    clip_norm: scale the gradient down to this global norm when longer
    patience: early stopping after this many epochs without a better validation
        loss; the best weights are kept (a planned copy) and restored
    seed: data order and dropout masks (two independent streams)
    """

    def __init__(self, model: MLP, optimizer="adam", batch_size: int = 32, *, micro_batch_size: int | None = None,
                 schedule: Schedule | None = None, clip_norm: float | None = None, patience: int | None = None,
                 seed: int = 0, dataset_size: int | None = None, allocation_observer=None, **optimizer_hyper):
        self.model = model
        self.spec = model.spec
        self.backend = model.backend
        if isinstance(optimizer, Optimizer) and optimizer_hyper:
            raise ValueError("optimizer: pass hyper-parameters to the Optimizer, not to the Trainer")
        self.optimizer = optimizer if isinstance(optimizer, Optimizer) else make_optimizer(optimizer, **optimizer_hyper)
        self.notes = self.optimizer.adapt_to_dtype(self.spec.dtype)
        self.schedule = schedule or Constant(self.optimizer.lr)
        if clip_norm is not None and not (clip_norm > 0 and math.isfinite(clip_norm)):
            raise ValueError(f"clip_norm: expected a positive number, got {clip_norm!r}")
        self.clip_norm = clip_norm
        if patience is not None and (int(patience) != patience or patience < 1):
            raise ValueError(f"patience: expected a positive integer, got {patience!r}")
        self.patience = patience
        self.seed = int(seed)
        self.plan: MemoryPlan = self._make_plan(batch_size, micro_batch_size, dataset_size)
        self.arrays = allocate(self.plan, self.backend.xp, existing={"params": model.params},
                               observer=allocation_observer)
        self.optimizer.init_state(self.arrays, model.params)
        self._bind()
        self.data_rng = np.random.Generator(np.random.PCG64(self.seed))
        self.dropout_rng = self.backend.rng(self.seed + 1)
        self.steps = 0
        self.nonfinite_steps = 0
        self.oom_recoveries = 0
        self.events: list = []  # OOM recoveries and other things a job log should show
        self.last_grad_norm = float("nan")
        self.history: list = []
        self.fault_hook = None  # tests: called (step, micro_index) before each pass; may raise MemoryError

    def _make_plan(self, batch_size, micro_batch_size, dataset_size=None) -> MemoryPlan:
        return training_plan(self.spec, self.optimizer, batch_size, self.backend.kind,
                             micro_batch_size=micro_batch_size, dataset_size=dataset_size,
                             keep_best=self.patience is not None)

    def _bind(self):
        """(Re)derive views after (re)allocation."""
        self.grads = self.arrays["grads"]
        self.glayers = step.layer_views(self.spec, self.grads)
        self.buffers = step.StepBuffers(self.spec, self.arrays, "train")
        self.chunk = self.arrays.get("chunk")
        self.scratch = list(self.chunk) if self.chunk is not None else []

    @property
    def batch_size(self) -> int:
        return self.plan.batch_size

    @property
    def micro_batch_size(self) -> int:
        return self.plan.rows

    # -- re-planning -------------------------------------------------------
    def replan(self, micro_batch_size: int) -> None:
        """Switch to another micro-batch: buffers whose shape is unchanged (parameters,
        gradients, optimizer state) are kept; the others are freed, then reallocated."""
        order = self.arrays.get("order")
        plan = self._make_plan(self.batch_size, micro_batch_size, order.shape[0] if order is not None else None)
        keep = {}
        for buf in plan.buffers:
            a = self.arrays.get(buf.name)
            if a is not None and tuple(a.shape) == tuple(buf.shape) and a.dtype.name == buf.dtype:
                keep[buf.name] = a
        self.arrays = {}
        self.buffers = None
        _free_device_pool(self.backend)
        self.plan = plan
        self.arrays = allocate(plan, self.backend.xp, existing=keep)
        self._bind()

    # -- one step ----------------------------------------------------------
    def step(self, xb, yb) -> float:
        """One optimizer step on a batch (rows <= batch_size); returns its mean data loss."""
        b = len(xb)
        if not 0 < b <= self.batch_size:
            raise ValueError(f"batch: expected 1..{self.batch_size} rows, got {b}")

        def fill(v, lo, hi):
            _copy_in(v.x, xb[lo:hi])
            _copy_in(v.y, yb[lo:hi])

        return self._step(b, fill)

    def _step(self, b: int, fill) -> float:
        """Run the step; on out-of-memory halve the micro-batch and run the same step again."""
        while True:
            try:
                with small_ufunc_buffers():
                    return self._step_inside(b, fill)
            except oom_errors() as exc:
                m = self.micro_batch_size
                if m <= 1:
                    raise
                new = max(1, m // 2)
                self.events.append({"event": "oom_recovery", "step": self.steps, "micro_batch_from": m,
                                    "micro_batch_to": new, "error": type(exc).__name__})
                self.oom_recoveries += 1
                self.replan(new)

    def _step_inside(self, b: int, fill) -> float:
        spec, model = self.spec, self.model
        m = self.micro_batch_size
        accumulate = b > m
        G = self.arrays["grad_accum"] if accumulate else self.grads
        xp = self.backend.xp
        total = 0.0
        for k, lo in enumerate(range(0, b, m)):
            n = min(m, b - lo)
            if self.fault_hook is not None:
                self.fault_hook(self.steps, k)
            v = self.buffers.at(n)
            fill(v, lo, lo + n)
            step.forward(spec, model.layers, v, train=True, rng=self.dropout_rng)
            total += step.loss_sum(spec, v)
            step.backward(spec, model.layers, self.glayers, v)
            if accumulate:
                # each micro-batch's gradient is its own mean; weight it by its share of the batch
                if lo == 0:
                    xp.multiply(self.grads, n / b, out=G)
                else:
                    self.grads *= n / b
                    G += self.grads
        loss = total / b
        step.add_penalty_grad(spec, model.params, G, self.chunk)
        norm = step.clip_by_norm(G, self.clip_norm)
        self.last_grad_norm = norm
        if not (math.isfinite(loss) and math.isfinite(norm)):
            self.nonfinite_steps += 1  # skip: a non-finite update would poison every weight
            return loss
        lr = self.schedule(self.steps)
        self.optimizer.step(model.params, G, self.arrays, self.scratch, lr, spec.layout)
        self.steps += 1
        return loss

    # -- epochs ------------------------------------------------------------
    def _order(self, n: int):
        """The permutation buffer for a dataset of n rows; it is part of the plan."""
        if "order" not in self.arrays or self.arrays["order"].shape[0] != n:
            self.plan = self._make_plan(self.batch_size, self.plan.micro_batch_size, n)
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
                total += self._step(len(idx), _gather(X, y, idx)) * len(idx)
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


def _gather(X, y, idx):
    """fill(v, lo, hi): rows idx[lo:hi] of the host data into the plan's batch buffers."""

    def fill(v, lo, hi):
        rows = idx[lo:hi]
        if isinstance(v.x, np.ndarray):
            np.take(X, rows, axis=0, out=v.x)  # no temporary: straight into the buffer
            np.take(y, rows, axis=0, out=v.y)
        else:
            _copy_in(v.x, X[rows])
            _copy_in(v.y, y[rows])

    return fill


def _free_device_pool(backend) -> None:
    if backend.is_cuda:
        backend.xp.get_default_memory_pool().free_all_blocks()


def _format_record(r: dict) -> str:
    parts = [f"epoch {r['epoch']}", f"loss {r['train_loss']:.4f}"]
    if "val_loss" in r:
        parts.append(f"val_loss {r['val_loss']:.4f}")
        if r.get("val_accuracy") is not None:
            parts.append(f"val_acc {r['val_accuracy']:.4f}")
    parts.append(f"{r['seconds']:.2f}s")
    return "  ".join(parts)
