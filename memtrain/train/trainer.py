"""Trainer: allocates the training plan once, then runs steps inside it.

Randomness is counter-based: the data order of epoch e comes from the stream
(seed, 0, e) and the dropout masks of step t from (seed, 1, t, micro-batch).
A resumed job therefore recreates every random draw from (epoch, position,
step) alone, which is what makes resume bit-exact.

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

from memtrain.backend import array_module, small_ufunc_buffers
from memtrain.errors import ConfigError
from memtrain.memory.arena import allocate
from memtrain.memory.measure import active_pool
from memtrain.memory.plan import MemoryPlan, training_plan
from memtrain.nn import step
from memtrain.nn.mlp import MLP, _copy_in, evaluate_in
from memtrain.nn.scores import REGRESSION
from memtrain.optim import Optimizer, make_optimizer
from memtrain.optim.schedules import Constant, Schedule
from memtrain.train import graph, step_kernels
from memtrain.validate import check_scalar

STOP = "stop"  # what an on_step/on_epoch callback returns to end fit() after this step


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
    seed: data order and dropout masks (independent counter-based streams)
    cuda_graph: capture the GPU step as a CUDA graph (None: where supported; never on the CPU)
    loss_every: in graph mode, read the loss back every N steps (between reads step() returns the last mean)
    fused: on the CPU, run memtrain's fused kernels (numba; compiled once per machine and cached):
        one pass per optimizer update and per bias + activation, no scratch in the plan.
        False runs the NumPy reference path (the GPU always runs its fused CUDA kernels)
    existing: plan buffers allocated by the caller (a trial array's views into its stacked
        arrays, train/trials.py): used as they are, each checked against the plan
    """

    def __init__(self, model: MLP, optimizer="adam", batch_size: int = 32, *, micro_batch_size: int | None = None,
                 schedule: Schedule | None = None, clip_norm: float | None = None, patience: int | None = None,
                 seed: int = 0, dataset_size: int | None = None, allocation_observer=None, cuda_graph=None,
                 loss_every: int = 1, fused: bool = True, existing: dict | None = None, **optimizer_hyper):
        self.model = model
        self.spec = model.spec
        self.backend = model.backend
        if isinstance(optimizer, Optimizer) and optimizer_hyper:
            raise ConfigError("optimizer: pass hyper-parameters to the Optimizer, not to the Trainer")
        self.optimizer = optimizer if isinstance(optimizer, Optimizer) else make_optimizer(optimizer, **optimizer_hyper)
        self.notes = self.optimizer.adapt_to_dtype(self.spec.dtype)
        self.schedule = schedule or Constant(self.optimizer.lr)
        self.clip_norm = check_scalar(clip_norm, "clip_norm", float, min_val=0, include_boundaries="neither",
                                      allow_none=True)
        self.patience = check_scalar(patience, "patience", int, min_val=1, allow_none=True)
        self.seed = check_scalar(seed, "seed", int)
        self._data_rows = (None, None)  # (n_train, n_val) resident in the plan, else None
        # the update's kernels (NumPy reference, numba or CUDA), chosen once: train/step_kernels.py
        self.kernels, why = step_kernels.choose(self.backend.kind, self.spec, self.optimizer, fused)
        if why:
            self.notes.append(f"fused CPU kernels unavailable ({why}): the NumPy reference path runs")
        self.plan: MemoryPlan = self._make_plan(batch_size, micro_batch_size, dataset_size)
        self.arrays = allocate(self.plan, self.backend.xp, existing={**(existing or {}), "params": model.params},
                               observer=allocation_observer)
        self.optimizer.init_state(self.arrays, model.params)
        self._bind()
        # progress, all of it saved in a checkpoint
        self.steps = 0
        self.epoch = 0  # completed epochs
        self.position = 0  # batches done in the current epoch
        self.nonfinite_steps = 0
        self.nonfinite_streak = 0
        self.oom_recoveries = 0
        self.best_loss, self.best_epoch, self.waited = math.inf, None, 0
        self.stopped_early = False
        self.history: list = []
        self.events: list = []  # OOM recoveries and other things a job log should show
        self.last_grad_norm = float("nan")
        self.last_lr = float("nan")
        self.fault_hook = None  # tests: called (step, micro_index) before each pass; may raise MemoryError
        self._host_data = None
        # CUDA graph step (train/graph.py): None = on where supported; loss read every `loss_every` steps
        self._graph = graph.for_trainer(self, cuda_graph, loss_every=loss_every)

    def _make_plan(self, batch_size, micro_batch_size, dataset_size=None) -> MemoryPlan:
        resident = self._data_rows if self._data_rows[0] is not None else None
        return training_plan(self.spec, self.optimizer, batch_size, self.backend.kind,
                             micro_batch_size=micro_batch_size, dataset_size=dataset_size, resident_rows=resident,
                             keep_best=self.patience is not None, fused=self.kernels.name == "numba")

    def _bind(self):
        """(Re)derive views after (re)allocation."""
        self.grads = self.arrays["grads"]
        self.glayers = step.layer_views(self.spec, self.grads)
        self.buffers = step.StepBuffers(self.spec, self.arrays, "train", cpu=self.kernels.activations)

    @property
    def batch_size(self) -> int:
        return self.plan.batch_size

    @property
    def micro_batch_size(self) -> int:
        return self.plan.rows

    def _dataset_size(self):
        order = self.arrays.get("order")
        return None if order is None else order.shape[0]

    # -- re-planning -------------------------------------------------------
    def replan(self, micro_batch_size: int | None = None) -> None:
        """Re-plan (another micro-batch, or data attached) and reallocate: buffers whose
        shape is unchanged (parameters, gradients, optimizer state, the data set) are
        kept; the others are freed first, then allocated."""
        micro = self.plan.micro_batch_size if micro_batch_size is None else micro_batch_size
        plan = self._make_plan(self.batch_size, micro, self._dataset_size())
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

    # -- data ----------------------------------------------------------------
    def attach_data(self, X, y, validation=None, *, resident: bool = True, test=None) -> None:
        """Give the trainer its data set. resident=True puts it in the plan (on a GPU:
        on the device) and copies it in once; resident=False streams each batch from
        the host arrays. Arrays already in the model dtype are used without a copy on
        the CPU. Also plans the epoch permutation. `test` (X, y): the test split a CPU
        job holds in memory until its final evaluation, counted in the plan (adopted)."""
        X = _rows(self.model._inputs(X), self.spec.dtype)
        y = self.model.prepare_labels(y)
        if not resident and array_module(X) is not np:
            raise ConfigError("X: streamed data (resident=False) must be host arrays; these are on the device")
        if len(X) != len(y):
            raise ConfigError(f"y: {len(y)} labels for {len(X)} samples")
        if len(X) == 0:
            raise ConfigError("X: the training set is empty")
        val = None
        if validation is not None:
            Xv = _rows(self.model._inputs(validation[0]), self.spec.dtype)
            yv = self.model.prepare_labels(validation[1])
            if len(Xv) != len(yv):
                raise ConfigError(f"validation y: {len(yv)} labels for {len(Xv)} samples")
            val = (Xv, yv)
        n_val = len(val[0]) if val else 0
        held = resident and not self.backend.is_cuda and test is not None
        tst = (_rows(self.model._inputs(test[0]), self.spec.dtype), self.model.prepare_labels(test[1])) if held else None
        self._data_rows = ((len(X), n_val) + ((len(tst[0]),) if tst else ())) if resident else (None, None)
        if resident and not self.backend.is_cuda:
            # the caller's arrays are already what the plan lists: adopt them, no copy
            for name, a in (("data_x", X), ("data_y", y)) + ((("val_x", val[0]), ("val_y", val[1])) if val else ()) \
                    + ((("test_x", tst[0]), ("test_y", tst[1])) if tst else ()):
                self.arrays[name] = a
        plan = self._make_plan(self.batch_size, self.plan.micro_batch_size, len(X))
        self.arrays = {k: v for k, v in self.arrays.items() if k in plan.names()}
        self.plan = plan
        missing = [b for b in plan.buffers if b.name not in self.arrays]
        for buf in missing:
            # the permutation indexes host data when streaming, device data when resident
            xp = np if (buf.name == "order" and not resident) else self.backend.xp
            self.arrays[buf.name] = xp.zeros(buf.shape, dtype=buf.dtype)
        if resident and self.backend.is_cuda:
            for name, a in (("data_x", X), ("data_y", y)) + ((("val_x", val[0]), ("val_y", val[1])) if val else ()):
                _copy_in(self.arrays[name], a)  # host or device arrays alike
        self._host_data = None if resident else (X, y, val)

    def _train_data(self):
        if self._host_data is not None:
            return self._host_data[0], self._host_data[1]
        return self.arrays["data_x"], self.arrays["data_y"]

    def _val_data(self):
        if self._host_data is not None:
            return self._host_data[2]
        if "val_x" in self.arrays:
            return self.arrays["val_x"], self.arrays["val_y"]
        return None

    # -- one step ----------------------------------------------------------
    def step(self, xb, yb) -> float:
        """One optimizer step on a batch (rows <= batch_size); returns its mean data loss."""
        b = len(xb)
        if not 0 < b <= self.batch_size:
            raise ConfigError(f"batch: expected 1..{self.batch_size} rows, got {b}")

        def fill(v, lo, hi):
            _copy_in(v.x, xb[lo:hi])
            _copy_in(v.y, yb[lo:hi])

        return self._step(b, fill)

    def _step(self, b: int, fill) -> float:
        """Run the step; on out-of-memory halve the micro-batch and run the same step again."""
        while True:
            try:
                with small_ufunc_buffers():
                    if self._graph is not None and self._graph_ok(b):
                        return self._graph.step(b, fill)
                    return self._step_inside(b, fill)
            except oom_errors() as exc:
                m = self.micro_batch_size
                if m <= 1:
                    raise
                error = type(exc).__name__
            # re-planned outside the except block: until it ends, the traceback keeps the failed
            # step's frames, whose buffer views would hold the old plan while the new one allocates
            new = max(1, m // 2)
            self.events.append({"event": "oom_recovery", "step": self.steps, "micro_batch_from": m,
                                "micro_batch_to": new, "error": error})
            self.oom_recoveries += 1
            self.replan(new)

    def _graph_ok(self, b: int) -> bool:
        reason = graph.unsupported(self, b)
        if reason is not None:
            self._graph.graph.disable(f"CUDA graph off: {reason}")
        return reason is None and self._graph.graph.disabled is None

    def _dropout_rng(self, micro: int):
        return self.backend.rng((self.seed, 1, self.steps, micro)) if self.spec.dropout else None

    def _step_inside(self, b: int, fill) -> float:
        spec, model = self.spec, self.model
        m = self.micro_batch_size
        accumulate = b > m
        G = self.arrays["grad_accum"] if accumulate else self.grads
        xp = self.backend.xp
        total = 0.0
        self.kernels.begin()
        for k, lo in enumerate(range(0, b, m)):
            n = min(m, b - lo)
            if self.fault_hook is not None:
                self.fault_hook(self.steps, k)
            v = self.buffers.at(n)
            fill(v, lo, lo + n)
            step.forward(spec, model.layers, v, train=True, rng=self._dropout_rng(k))
            total += step.loss_sum(spec, v)
            step.backward(spec, model.layers, self.glayers, v)
            if accumulate:
                # each micro-batch's gradient is its own mean; weight it by its share of the batch
                if lo == 0:
                    xp.multiply(self.grads, n / b, out=G)
                else:
                    self.grads *= n / b
                    G += self.grads
        return self.update(G, total / b)

    def update(self, G, loss: float) -> float:
        """The rest of a step after its gradient G: l1/l2, clipping, the non-finite guard, the
        schedule's rate and the optimizer's update; returns `loss`."""
        lr = self.update_rate(G, loss)
        if lr is not None:
            self.kernels.optimizer_step(self.optimizer, self.model.params, G, self.arrays, lr, self.spec.layout)
            self.steps += 1
        return loss

    def update_rate(self, G, loss: float, penalty: bool = True):
        """`update` up to the optimizer's kernel: l1/l2, clipping, the non-finite guard (None: this
        step is skipped) and this step's rate. A trial array calls it per trial (penalty=False where
        it added the trial's l1/l2 itself, with others'), then updates the trials of one optimizer
        group with one kernel and adds their steps."""
        spec, model = self.spec, self.model
        if penalty:
            self.kernels.add_penalty_grad(spec, model.params, G, self.arrays)
        norm = step.clip_by_norm(G, self.clip_norm, self.arrays.get("step_scalars"))
        self.last_grad_norm = norm
        if not (math.isfinite(loss) and math.isfinite(norm)):
            self.nonfinite_steps += 1  # skip: a non-finite update would poison every weight
            self.nonfinite_streak += 1
            return None
        self.nonfinite_streak = 0
        self.last_lr = lr = self.schedule(self.steps)
        return lr

    # -- epochs ------------------------------------------------------------
    def _shuffle(self, order, epoch: int) -> None:
        """The permutation of `epoch`, from its own stream: recreated exactly on resume."""
        host = order if isinstance(order, np.ndarray) else np.empty(order.shape, dtype=np.intp)
        host[...] = 1
        np.cumsum(host, out=host)
        host -= 1
        np.random.Generator(np.random.PCG64([self.seed, 0, epoch])).shuffle(host)
        if host is not order:
            order.set(host)

    def fit(self, X=None, y=None, epochs: int = 10, validation=None, *, verbose: bool = False, on_step=None,
            on_epoch=None, resident: bool = True) -> list:
        """Train for `epochs` epochs (an epoch interrupted by a checkpoint counts as one
        and is finished first) over shuffled minibatches; validation loss/accuracy
        per epoch; early stopping (with `patience`) restores the best weights.
        X, y may be omitted after attach_data(). `on_step(trainer, loss)` and
        `on_epoch(trainer, record)` may return STOP. Returns the history."""
        check_scalar(epochs, "epochs", int, min_val=1)
        if X is not None:
            self.attach_data(X, y, validation, resident=resident)
        elif "order" not in self.arrays:
            raise ConfigError("X: no data; pass X, y or call attach_data() first")
        Xd, yd = self._train_data()
        val = self._val_data()
        order = self.arrays["order"]
        n, B = len(order), self.batch_size
        n_batches = -(-n // B)
        target = self.epoch + int(epochs)
        stop = False
        while self.epoch < target and not stop and not self.stopped_early:
            t0 = time.perf_counter()
            self._shuffle(order, self.epoch)
            if self.position == 0:
                self._epoch_loss = 0.0
            while self.position < n_batches:
                idx = order[self.position * B : (self.position + 1) * B]
                loss = self._step(len(idx), _gather(Xd, yd, idx))
                self._epoch_loss += loss * len(idx)
                self.position += 1
                if on_step is not None and on_step(self, loss) == STOP:
                    stop = True
                    break
            if stop:
                break
            record = self._end_epoch(n, time.perf_counter() - t0, val)
            if verbose:
                print(format_record(record))
            if on_epoch is not None and on_epoch(self, record) == STOP:
                break
        if self.stopped_early or (self.epoch >= target and self.patience is not None):
            self.restore_best()
        return self.history

    def _end_epoch(self, n, seconds, val, ev=None) -> dict:
        """ev: the validation's evaluate_in() result when the caller has it (a trial array evaluates
        its trials together)."""
        self.epoch += 1
        self.position = 0
        record = {"epoch": self.epoch, "train_loss": self._epoch_loss / n, "lr": self.last_lr,
                  "grad_norm": self.last_grad_norm, "seconds": seconds}
        if val is not None:
            if ev is None:
                ev = evaluate_in(self.spec, self.model.layers, self.buffers, val[0], val[1])
            record.update(val_loss=ev["loss"], val_accuracy=ev["accuracy"])
            record.update({f"val_{k}": ev[k] for k in REGRESSION if ev[k] is not None})
            if self.patience is not None:
                if ev["loss"] < self.best_loss:
                    self.best_loss, self.best_epoch, self.waited = ev["loss"], self.epoch, 0
                    self.arrays["best_params"][...] = self.model.params
                else:
                    self.waited += 1
                    self.stopped_early = self.waited >= self.patience
        self.history.append(record)
        return record

    def restore_best(self) -> None:
        """Put the best weights seen (early stopping) back into the model."""
        if self.best_epoch is not None:
            self.model.params[...] = self.arrays["best_params"]

    def evaluate(self, X, y) -> dict:
        """Loss and accuracy using the training buffers (no extra memory)."""
        X = _rows(self.model._inputs(X), self.spec.dtype)
        return evaluate_in(self.spec, self.model.layers, self.buffers, X, self.model.prepare_labels(y))

    # -- checkpoint contents -------------------------------------------------
    def state_arrays(self) -> dict:
        """Every array a resume needs, as host NumPy: parameters, each optimizer slot, best weights."""
        names = ["params"] + [n for n in self.arrays if n.startswith("opt.")] + (
            ["best_params"] if "best_params" in self.arrays else [])
        return {n: self.backend.to_numpy(self.arrays[n]) for n in names}

    def state_meta(self) -> dict:
        """Counters and early-stopping state: what a resume needs besides the arrays (not the history,
        which grows every epoch: the run's history file keeps it)."""
        return {
            "steps": self.steps, "epoch": self.epoch, "position": self.position,
            "epoch_loss": getattr(self, "_epoch_loss", 0.0),
            "nonfinite_steps": self.nonfinite_steps, "oom_recoveries": self.oom_recoveries,
            "micro_batch_size": self.micro_batch_size,
            "best_loss": None if math.isinf(self.best_loss) else self.best_loss, "best_epoch": self.best_epoch,
            "waited": self.waited, "stopped_early": self.stopped_early, "seed": self.seed,
            "kernels": self.kernels.name,  # the step's path: a resume on another is not bit-identical
        }

    def identity(self) -> dict:
        """What a checkpoint must match: model, optimizer (with hyper-parameters), dtype, batch."""
        return {"model": self.spec.identity(), "optimizer": self.optimizer.describe(),
                "batch_size": self.batch_size, "dtype": self.spec.dtype.name}

    def load_state(self, arrays: dict, meta: dict) -> None:
        if meta["micro_batch_size"] != self.micro_batch_size:
            self.replan(meta["micro_batch_size"])  # as the interrupted run had it after any OOM
        for name, a in arrays.items():
            if name not in self.arrays:
                continue
            dst = self.arrays[name]
            if tuple(dst.shape) != a.shape or dst.dtype != a.dtype:
                raise ConfigError(f"checkpoint: {name} is {a.shape} {a.dtype}, expected {tuple(dst.shape)} {dst.dtype}")
            if self.backend.is_cuda:
                dst.set(a)
            else:
                dst[...] = a
        self.steps, self.epoch, self.position = meta["steps"], meta["epoch"], meta["position"]
        self._epoch_loss = meta.get("epoch_loss", 0.0)
        self.nonfinite_steps, self.oom_recoveries = meta["nonfinite_steps"], meta["oom_recoveries"]
        self.best_loss = math.inf if meta["best_loss"] is None else meta["best_loss"]
        self.best_epoch, self.waited = meta["best_epoch"], meta["waited"]
        self.stopped_early = meta["stopped_early"]
        # the run's history file holds the epochs (the job restores them); older checkpoints carry them
        self.history = list(meta.get("history", ()))


def cpu_kernels(spec, optimizer) -> tuple:
    """Compile (or load from numba's cache) every fused CPU kernel a step of this model and
    optimizer calls, before anything is measured: (step kernels, None), or (None, why) where
    numba cannot run them here (train/step_kernels.py numba_step)."""
    return step_kernels.numba_step(spec, optimizer)


def _rows(X, dtype):
    """Host data as a contiguous array of the model dtype; device data as it is (it is copied into
    the plan's buffers on the device, where the cast happens)."""
    return np.ascontiguousarray(X, dtype=dtype) if array_module(X) is np else X


def _gather(X, y, idx):
    """fill(v, lo, hi): rows idx[lo:hi] of the data set into the plan's batch buffers."""

    def fill(v, lo, hi):
        rows = idx[lo:hi]
        if isinstance(v.x, np.ndarray):
            # mode="clip": with the default "raise", NumPy buffers the whole output (a
            # second batch); the rows are a permutation's, always in range
            np.take(X, rows, axis=0, out=v.x, mode="clip")
            np.take(y, rows, axis=0, out=v.y, mode="clip")
        elif not isinstance(X, np.ndarray):  # resident on the device
            X.take(rows, axis=0, out=v.x)
            y.take(rows, axis=0, out=v.y)
        else:  # streamed from the host
            _copy_in(v.x, X[rows])
            _copy_in(v.y, y[rows])

    return fill


def _free_device_pool(backend) -> None:
    if backend.is_cuda:
        active_pool(backend.xp).free_all_blocks()


def format_record(r: dict) -> str:
    parts = [f"epoch {r['epoch']}", f"loss {r['train_loss']:.4f}"]
    if "val_loss" in r:
        parts.append(f"val_loss {r['val_loss']:.4f}")
        if r.get("val_accuracy") is not None:
            parts.append(f"val_acc {r['val_accuracy']:.4f}")
        parts += [f"val_{k} {r[f'val_{k}']:.4g}" for k in REGRESSION if r.get(f"val_{k}") is not None]
    parts.append(f"{r['seconds']:.2f}s")
    return "  ".join(parts)
