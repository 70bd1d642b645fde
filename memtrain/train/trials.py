"""Trial arrays: K trials of one shape on one data set, trained as one.

    array = TrialArray([TrialSetting(spec, "adam", {"lr": lr}, seed=s, epochs=20), ...], X, y,
                       validation=(Xv, yv), batch_size=32)
    results = array.train()     # one TrialResult per setting, in order

Each trial is an ordinary Trainer (train/trainer.py) whose plan buffers are one
row of the array's stacked buffers (memory/trials.py) and whose data set is the
array's one copy. A step runs every training trial's forward and backward with
the GEMMs batched over the trials (nn/stacked.py), then each trial's own
Trainer.update: its l1/l2, clipping, non-finite guard, schedule and fused
optimizer kernel on its row of the flat vectors. Each trial keeps its own seed
(initialisation, data order, dropout masks), optimizer, schedule, patience and
epoch budget, so it ends with the model it trains alone (bit-identical where
the GEMM gives a slice the bits of a lone call; tests/test_trials.py).

Trials that finish (epochs done, stopped early, failed) stop costing compute:
`finished="compact"` runs the GEMMs over the contiguous ranges of the trials
still training; "mask" keeps one GEMM over all K (bench/trials.py measures both).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from memtrain.backend import get_backend
from memtrain.errors import ConfigError
from memtrain.memory.plan import training_plan
from memtrain.memory.trials import array_plan, stacks
from memtrain.nn import stacked, step
from memtrain.nn.mlp import MLP
from memtrain.optim import make_optimizer
from memtrain.train import trial_update
from memtrain.train.trainer import Trainer, _gather, _rows, cpu_kernels
from memtrain.validate import check_scalar

FINISHED = ("compact", "mask")


@dataclass(frozen=True)
class TrialSetting:
    """One trial: what it shares with its array (the spec's widths, activation, output and
    dtype) and what is its own (everything else).

    spec: a ModelSpec (its l1, l2, dropout, init and bias_init are the trial's own)
    optimizer, hyper: a name from memtrain.OPTIMIZERS and its hyper-parameters
    schedule: a Schedule over optimizer steps (None: the optimizer's constant lr)
    seed: data order and dropout masks; init_seed: the weights (None: seed, as a Job does)
    max_nonfinite: fail the trial after this many non-finite steps in a row (None: never)
    """

    spec: object
    optimizer: str = "adam"
    hyper: dict = field(default_factory=dict)
    schedule: object = None
    clip_norm: float | None = None
    patience: int | None = None
    seed: int = 0
    init_seed: int | None = None
    epochs: int = 10
    max_nonfinite: int | None = None
    name: str = ""

    def shape_key(self) -> tuple:
        """What trials of one array must share."""
        s = self.spec
        return s.sizes, s.activation.describe(), s.output.name, s.dtype.name


@dataclass
class TrialResult:
    """A trial after train(): its Trainer (history, state_arrays(), state_meta()), model and end."""

    index: int
    setting: TrialSetting
    trainer: Trainer
    state: str = "training"  # then "finished", "stopped_early", "failed" or "stopped" (stop())
    message: str = ""

    @property
    def model(self) -> MLP:
        return self.trainer.model

    @property
    def history(self) -> list:
        return self.trainer.history


class TrialArray:
    """K trials of one shape trained as one (see the module's docstring).

    settings: TrialSetting per trial; X, y (and validation=(Xv, yv)): the one data set
    batch_size: rows per step, the same for every trial; device: "cpu" (or "cuda")
    fused: the fused CPU kernels where numba runs them (as Trainer(fused=...))
    finished: "compact" (GEMMs over the trials still training) or "mask" (over all K)
    """

    def __init__(self, settings, X, y, validation=None, *, batch_size: int = 32, device="cpu", fused: bool = True,
                 finished: str = "compact", allocation_observer=None):
        self.settings = list(settings)
        if not self.settings:
            raise ConfigError("trials: an array needs at least one trial")
        bad = next((s for s in self.settings if s.shape_key() != self.settings[0].shape_key()), None)
        if bad is not None:
            raise ConfigError(f"trials: every trial of an array needs the model {self.settings[0].spec.describe()}, "
                              f"got {bad.spec.describe()}")
        if finished not in FINISHED:
            raise ConfigError(f"finished: expected one of {', '.join(FINISHED)}, got {finished!r}")
        self.finished = finished
        self.batch_size = check_scalar(batch_size, "batch_size", int, min_val=1)
        self.backend = get_backend(device) if isinstance(device, str) else device
        for s in self.settings:
            check_scalar(s.epochs, "epochs", int, min_val=1)
        spec0 = self.settings[0].spec
        probe = MLP.__new__(MLP)  # the data checks read only the spec: no parameters allocated for them
        probe.spec = spec0
        self.X = _rows(probe._inputs(X), spec0.dtype)
        self.y = probe.prepare_labels(y)
        self.validation = None if validation is None else (
            _rows(probe._inputs(validation[0]), spec0.dtype), probe.prepare_labels(validation[1]))
        del probe
        self._device_data = {}
        self.plans, optimizers, fused_ok = self._trial_plans(fused)
        self.plan = array_plan(self.plans)
        self.arrays = {s.buffer.name: self.backend.xp.zeros(s.buffer.shape, dtype=s.buffer.dtype)
                       for s in stacks(self.plans)}
        if allocation_observer is not None:
            for s in stacks(self.plans):
                allocation_observer(s.buffer, self.arrays[s.buffer.name])
        self.results = self._build_trials(optimizers, fused_ok)
        self._groups = trial_update.optimizer_groups(self.results, self.plans, self.arrays)
        self._penalized = trial_update.penalized(self.results, self.plans)
        self._views = {}

    @property
    def K(self) -> int:
        return len(self.settings)

    def _trial_plans(self, fused: bool) -> tuple:
        """Each trial's own plan, as its Trainer will make it (trainer._make_plan after attach_data)."""
        n, n_val = len(self.X), (len(self.validation[0]) if self.validation is not None else 0)
        plans, optimizers, fused_ok = [], [], []
        for s in self.settings:
            opt = make_optimizer(s.optimizer, **dict(s.hyper))
            cpu = cpu_kernels(s.spec, opt)[0] if (fused and not self.backend.is_cuda) else None
            plans.append(training_plan(s.spec, opt, self.batch_size, self.backend.kind, dataset_size=n,
                                       resident_rows=(n, n_val), keep_best=s.patience is not None,
                                       fused=cpu is not None))
            optimizers.append(opt)
            fused_ok.append(cpu is not None)
        return plans, optimizers, fused_ok

    def _build_trials(self, optimizers, fused_ok) -> list:
        views = [{} for _ in self.settings]
        for s in stacks(self.plans):
            for k, r in s.rows:
                views[k][s.source] = self.arrays[s.buffer.name][r, ...]  # a view, 0-d ones too
        results = []
        for k, s in enumerate(self.settings):
            model = MLP.from_spec(s.spec, seed=s.seed if s.init_seed is None else s.init_seed, device=self.backend,
                                  params=views[k]["params"])
            tr = Trainer(model, optimizers[k], self.batch_size, schedule=s.schedule, clip_norm=s.clip_norm,
                         patience=s.patience, seed=s.seed, dataset_size=len(self.X), fused=fused_ok[k],
                         existing=views[k], cuda_graph=False)
            self._share_data(tr)
            tr.attach_data(self.X, self.y, self.validation)
            own = [name for name, a in tr.arrays.items() if not _shares(a, views[k].get(name), self, name)]
            if own:  # the array's plan would not be what runs: a bug, not a user error
                raise RuntimeError(f"trial {k}: buffers {own} are not the array's")
            results.append(TrialResult(k, s, tr))
        return results

    def _share_data(self, tr) -> None:
        """On a GPU the data set is copied to the device once, for every trial: the trainer finds
        it among its arrays (attach_data keeps buffers it already has). On the CPU the trainers
        adopt the array's host arrays themselves."""
        if not self.backend.is_cuda:
            return
        if not self._device_data:
            xp = self.backend.xp
            data = {"data_x": self.X, "data_y": self.y}
            if self.validation is not None:
                data.update(val_x=self.validation[0], val_y=self.validation[1])
            self._device_data = {name: xp.asarray(a) for name, a in data.items()}
            self.X, self.y = self._device_data["data_x"], self._device_data["data_y"]
            if self.validation is not None:
                self.validation = self._device_data["val_x"], self._device_data["val_y"]
        tr.arrays.update(self._device_data)

    def active(self) -> list:
        return [r for r in self.results if r.state == "training"]

    def stop(self, index: int | None = None, reason: str = "stop") -> None:
        """Stop one trial (index) or all, after the step running now: a cancel, from any thread.
        A stopped trial keeps its parameters and counters as they are (its Trainer's state_arrays
        and state_meta say where it stopped); the others train on."""
        for r in self.results if index is None else [self.results[index]]:
            if r.state == "training":
                r.state, r.message = "stopped", f"stopped on {reason}"

    def train(self, on_epoch=None, on_step=None, after_epoch=None) -> list:
        """Train every trial to its end (its epochs, early stopping, or failure); returns the results.
        on_epoch(result, record) is called after each trial's epoch; on_step(trials) after each step
        of the array, after_epoch() once the epoch has ended for all its trials (a runner's
        checkpoints). An array restored mid-epoch (train/arraystate.py) goes on from its position."""
        n = len(self.X)
        n_batches = -(-n // self.batch_size)
        while self.active():
            t0 = time.perf_counter()
            trials = self.active()
            start = trials[0].trainer.position  # the trials still training stand at one position
            for r in trials:
                tr = r.trainer
                tr._shuffle(tr.arrays["order"], tr.epoch)
                if tr.position == 0:  # a restored epoch keeps the loss summed before its checkpoint
                    tr._epoch_loss = 0.0
            for _ in range(start, n_batches):
                trials = [r for r in trials if r.state == "training"]
                if trials:
                    self._step(trials)
                    if on_step is not None:
                        on_step(trials)
            seconds = time.perf_counter() - t0
            trials = [r for r in trials if r.state == "training"]
            evs = self._evaluate(trials)
            for r in trials:
                self._end_epoch(r, n, seconds, on_epoch, evs.get(r.index))
            if after_epoch is not None and trials:
                after_epoch()
        return self.results

    def _evaluate(self, trials) -> dict:
        """The validation of every trial ending an epoch, together (CPU); {} = each on its own."""
        if self.validation is None or self.backend.is_cuda or not trials:
            return {}
        relu, softmax = self._stacked_ops
        return stacked.evaluate(self._stack, [(r.index, r.trainer.spec, r.trainer.model.layers, r.trainer.buffers)
                                              for r in trials], *self.validation, relu=relu, softmax=softmax)

    def _end_epoch(self, r, n, seconds, on_epoch, ev=None) -> None:
        tr = r.trainer
        record = tr._end_epoch(n, seconds, self.validation, ev)
        if on_epoch is not None:
            on_epoch(r, record)
        if tr.stopped_early or tr.epoch >= r.setting.epochs:
            r.state = "stopped_early" if tr.stopped_early else "finished"
            if tr.patience is not None:
                tr.restore_best()  # as Trainer.fit does at its end

    def _stack(self, b: int):
        if b not in self._views:
            self._views[b] = stacked.stack_views(self.settings[0].spec, self.arrays, b)
        return self._views[b]

    def _runs(self, trials) -> list:
        if self.finished == "mask":
            return [(0, self.K)]
        return stacked.runs_of(r.index for r in trials)

    def _step(self, trials) -> None:
        """One step of every trial in `trials` (all at the same batch position of their epoch)."""
        pos = trials[0].trainer.position
        B = self.batch_size
        b = min(B, len(self.X) - pos * B)
        s, runs = self._stack(b), self._runs(trials)
        # a full batch on the CPU: one take per run of trials (its output, whole rows of the stacked
        # batch buffers, is contiguous, so NumPy writes it in place); else each trial's own gather
        stacked_gather = b == B and not self.backend.is_cuda
        if stacked_gather:
            for lo, hi in runs:
                rows = self.arrays["order"][lo:hi, pos * B : pos * B + b]
                np.take(self.X, rows, axis=0, out=s.x[lo:hi], mode="clip")
                np.take(self.y, rows, axis=0, out=s.y[lo:hi], mode="clip")
        views, rngs = [], []
        for r in trials:
            tr = r.trainer
            v = tr.buffers.at(b)
            if not stacked_gather:
                _gather(self.X, self.y, tr.arrays["order"][pos * B : pos * B + b])(v, 0, b)
            views.append(v)
            rngs.append(tr._dropout_rng(0))
        trials[0].trainer.kernels.begin()  # numba's thread count for this thread (the trials share it)
        relu, softmax = self._stacked_ops
        stacked.forward(s, [(r.trainer.spec, r.trainer.model.layers, v, g)
                            for r, v, g in zip(trials, views, rngs, strict=True)], runs, relu=relu)
        if softmax:
            sums = stacked.softmax_loss(s, runs)
            losses = [sums[r.index] for r in trials]
            stacked.softmax_delta(s, runs)
        else:
            losses = [step.loss_sum(r.trainer.spec, v) for r, v in zip(trials, views, strict=True)]
        stacked.backward(s, [(r.trainer.spec, r.trainer.model.layers, r.trainer.glayers, v)
                             for r, v in zip(trials, views, strict=True)], runs, relu=relu, delta_done=softmax)
        self._update(trials, losses, b)

    @property
    def _stacked_ops(self) -> tuple:
        """(relu, softmax): which element-wise work runs over the whole stack (on the CPU, where
        NumPy's operations on the stack are the reference's, bit for bit); the rest runs per trial."""
        if self.backend.is_cuda:
            return False, False
        spec = self.settings[0].spec
        return spec.activation.name == "relu", spec.output.name == "softmax"

    def _update(self, trials, losses, b: int) -> None:
        """The l1/l2 penalties (one call for the trials that have one), each trial's clipping, guard
        and rate (Trainer.update_rate), then the optimizer updates, one fused kernel per optimizer
        group (train/trial_update.py)."""
        lrs = {}
        done = trial_update.add_penalties(self.results, self._penalized, self.arrays, trials)
        for r, loss_sum in zip(trials, losses, strict=True):
            tr, loss = r.trainer, loss_sum / b
            lr = tr.update_rate(tr.grads, loss, penalty=r.index not in done)
            if lr is not None:
                lrs[r.index] = lr
            tr._epoch_loss += loss * b
            tr.position += 1
            limit = r.setting.max_nonfinite
            if limit is not None and tr.nonfinite_streak >= limit:
                r.state = "failed"
                r.message = f"training: {tr.nonfinite_streak} non-finite steps in a row (loss {loss})"
        trial_update.update(self.results, self._groups, lrs)


def _shares(a, view, array: TrialArray, name: str) -> bool:
    """Is this trainer buffer the array's (a row of a stack, or its one data set)?"""
    if view is not None:
        return a is view
    shared = {"data_x": array.X, "data_y": array.y}
    if array.validation is not None:
        shared.update(val_x=array.validation[0], val_y=array.validation[1])
    return a is shared.get(name, np.empty(0))



def setting_from_config(cfg, n_train: int, batch_size: int, name: str = "") -> TrialSetting:
    """The trial a Job of `cfg` trains (train/job.py build_trainer): its spec, optimizer, schedule
    over epochs x steps per epoch, clipping, patience, seed (weights, data order, dropout) and
    non-finite limit; the batch size is the array's."""
    t = cfg.training
    steps_per_epoch = -(-int(n_train) // int(batch_size))
    schedule = cfg.schedule.make(cfg.optimizer.make().lr, t.epochs * steps_per_epoch)
    return TrialSetting(cfg.model_spec(), cfg.optimizer.name, dict(cfg.optimizer.hyper), schedule=schedule,
                        clip_norm=t.clip_norm, patience=t.patience, seed=cfg.seed, epochs=t.epochs,
                        max_nonfinite=t.max_nonfinite, name=name)
