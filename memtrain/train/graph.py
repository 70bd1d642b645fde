"""The GPU training step as a CUDA graph: captured once per shape, then replayed.

A step on a GPU is a few dozen kernel launches (GEMMs, memtrain's fused
kernels); for a small model the host's launch time is the step time. CuPy's
stream capture records the launches of one step into a graph that the
device then replays with one launch per step.

What makes that possible: every buffer is allocated by the plan before the
first step (fixed pointers), and everything that changes from step to step
is on the device (the learning rate in the step scalars, written before each
replay; the step counters and Adam's bias corrections, advanced by the
kernels; the loss, added up on the device and read back every `loss_every`
steps). The batch is gathered into the plan's x/y buffers before the replay,
outside the graph, because its rows differ per step.

Capture is tried on the second step of a shape (the first one compiles the
kernels and warms cuBLAS, which must not happen inside a capture). If it
fails, or the setup needs the host inside the step (dropout masks, l1/l2,
gradient accumulation), training continues eagerly and the
reason is logged once in the trainer's events.
"""

from __future__ import annotations

import functools
import math
import weakref

from memtrain.errors import DeviceError
from memtrain.kernels.source import SC_ACCUM, SC_CLIP, SC_GRAD_SQ, SC_LOSS, SC_LR
from memtrain.validate import check_scalar


class CupyCapture:
    """Stream capture with CuPy: a private non-blocking stream that the whole
    graph-mode step (batch gather, lr write, replay, loss read) runs on."""

    def __init__(self, cupy):
        self.cupy = cupy
        self.stream = cupy.cuda.Stream(non_blocking=True)

    def join_in(self) -> None:
        """This stream waits for the default stream's work (e.g. the epoch's order written there):
        a non-blocking stream does not otherwise."""
        self.stream.wait_event(self.cupy.cuda.Stream.null.record())

    def join_out(self) -> None:
        """The default stream waits for this step (evaluation and checkpoints run there)."""
        self.cupy.cuda.Stream.null.wait_event(self.stream.record())

    def capture(self, fn):
        with self.stream:
            self.stream.begin_capture()
            try:
                fn()
            except BaseException:
                try:  # leave the stream usable; the half-built graph is discarded
                    self.stream.end_capture()
                except Exception:  # noqa: BLE001 - the capture's own error is the one to report
                    pass
                raise
            return self.stream.end_capture()

    def launch(self, graph) -> None:
        graph.launch(stream=self.stream)


class StepGraph:
    """Replays one captured step per key; runs eagerly, with a reason, otherwise.

    `capture` has capture(fn) -> graph and launch(graph) (CupyCapture, or a
    fake in tests). `log(reason)` is called once when the graph path is given up."""

    def __init__(self, capture, log, *, warmup: int = 1):
        self.capture, self.log, self.warmup = capture, log, warmup
        self.graphs: dict = {}
        self.seen: dict = {}
        self.disabled: str | None = None
        self.replays = 0

    def disable(self, reason: str) -> None:
        if self.disabled is None:
            self.disabled = reason
            self.graphs.clear()
            self.log(reason)

    def run(self, key, fn, *, capturable: bool = True) -> str:
        """Run the step `fn` (device work only) for shape `key`; returns what happened:
        "eager", "warmup", "captured" or "replay". `capturable=False`: this shape runs
        eagerly (it would allocate inside a capture), the others are still captured."""
        if self.disabled is not None or not capturable:
            fn()
            return "eager"
        graph = self.graphs.get(key)
        if graph is not None:
            self.capture.launch(graph)
            self.replays += 1
            return "replay"
        self.seen[key] = self.seen.get(key, 0) + 1
        if self.seen[key] <= self.warmup:
            fn()
            return "warmup"
        try:
            graph = self.capture.capture(fn)
        except Exception as exc:  # noqa: BLE001 - any capture failure means: run eagerly
            self.disable(f"CUDA graph capture failed, training eagerly: {type(exc).__name__}: {exc}")
            fn()  # nothing ran during the failed capture: the step runs now
            return "eager"
        self.graphs[key] = graph
        self.capture.launch(graph)  # capturing executed nothing: this launch is the step
        return "captured"


def allocates_in_capture(spec, rows: int) -> bool:
    """Whether a step of `rows` rows has a (1,k)@(k,1) product: CuPy's tensordot then takes its
    m == n == 1 path, `(a.ravel() * b.ravel()).sum(out=c)`, whose product array comes from the
    pool. Inside a capture that block is freed after capture and the replays write to it, so
    such a step runs eagerly. The step's products are (b,n)@(n,k) forward, (n,b)@(b,k) for dW
    and (b,k)@(k,n) for dA: a one-row batch (an epoch's last, typically) through a layer of one
    unit, or at any batch size a one-unit layer fed by one input or one unit."""
    sizes = spec.sizes
    one_unit = any(k == 1 for k in sizes[1:])
    one_to_one = any(n == 1 and k == 1 for n, k in zip(sizes, sizes[1:]))
    return one_to_one or (rows == 1 and one_unit)


def unsupported(trainer, rows: int) -> str | None:
    """Why this trainer's step cannot be captured (None: it can)."""
    spec = trainer.spec
    if not trainer.backend.is_cuda:
        return "CUDA graphs need a CUDA device"
    if trainer.kernels.name != "cuda":
        return "the step does not run memtrain's CUDA kernels"
    if spec.dropout:
        return "dropout draws its masks on the host each step"
    if spec.l1 or spec.l2:
        return "l1/l2 penalties run the chunked update"
    if rows > trainer.micro_batch_size:
        return "gradient accumulation runs a host loop over micro-batches"
    if trainer.fault_hook is not None:
        return "a fault hook runs on the host each step"
    return None


class GraphStepper:
    """The trainer's graph-mode step: gather, write lr, replay, read the loss every N steps."""

    def __init__(self, trainer, capture, *, loss_every: int = 1):
        # weak: the trainer holds its stepper, and a cycle would keep a dropped trainer's device
        # buffers allocated until the next full garbage collection
        self._trainer = weakref.ref(trainer)
        self.loss_every = check_scalar(loss_every, "loss_every", int, min_val=1)
        self.graph = StepGraph(capture, functools.partial(_log_event, self._trainer))
        self.stream = getattr(capture, "stream", None)
        self._window_rows = 0
        self._last_mean = float("nan")
        self._buffers_id = None
        self._written: dict = {}  # (array id, index) -> the value last written to the step scalars

    @property
    def trainer(self):
        return self._trainer()

    def step(self, rows: int, fill) -> float:
        t = self.trainer
        if id(t.buffers) != self._buffers_id:  # re-planned: captured pointers are stale
            self.graph.graphs.clear()
            self._written.clear()
            self._buffers_id = id(t.buffers)
        ctx = self.stream if self.stream is not None else _NoStream()
        capture = self.graph.capture
        with ctx:
            getattr(capture, "join_in", _nothing)()
            v = t.buffers.at(rows)
            fill(v, 0, rows)
            sc = t.arrays["step_scalars"]
            t.last_lr = lr = t.schedule(t.steps)
            # read by the update kernels inside the graph; written only when they change, since
            # each write is a launch and a small model's step is a few dozen microseconds
            self._write(sc, SC_LR, lr)
            self._write(sc, SC_CLIP, t.clip_norm or 0.0)  # updates scale g by max_norm/||g|| when longer
            self.graph.run(rows, lambda: device_step(t, v), capturable=not allocates_in_capture(t.spec, rows))
            getattr(capture, "join_out", _nothing)()
            self._window_rows += rows
            return self._account(sc, rows)

    def _write(self, sc, index: int, value: float) -> None:
        key = (id(sc), index)
        if self._written.get(key) != value:
            sc[index] = value
            self._written[key] = value

    def _account(self, sc, rows) -> float:
        t = self.trainer
        if self.loss_every == 1:
            vals = _host(sc)  # one read: this step's loss and gradient norm
            loss = float(vals[SC_LOSS]) / rows
            t.last_grad_norm = math.sqrt(vals[SC_GRAD_SQ]) if vals[SC_GRAD_SQ] >= 0 else float("nan")
            self._window_rows = 0
            if not (math.isfinite(loss) and math.isfinite(t.last_grad_norm)):  # skipped on the device
                t.nonfinite_steps += 1
                t.nonfinite_streak += 1
                return loss
            t.nonfinite_streak = 0
            t.steps += 1
            return loss
        t.steps += 1
        if t.steps % self.loss_every == 0:
            vals = _host(sc)  # the one host synchronisation of the window
            total = float(vals[SC_ACCUM])
            t.last_grad_norm = math.sqrt(vals[SC_GRAD_SQ]) if vals[SC_GRAD_SQ] >= 0 else float("nan")
            sc[SC_ACCUM] = 0.0
            self._last_mean = total / self._window_rows
            self._window_rows = 0
            if not math.isfinite(total):
                t.nonfinite_steps += 1  # at least one step of the window was skipped on the device
        return self._last_mean


def _log_event(trainer_ref, reason: str) -> None:
    t = trainer_ref()
    if t is not None:
        t.events.append({"event": "cuda_graph_off", "step": t.steps, "reason": reason})


def device_step(trainer, v) -> None:
    """Forward, fused loss, backward and fused update: device work only (capturable)."""
    from memtrain.kernels import dispatch  # noqa: PLC0415 - only the GPU step needs them
    from memtrain.nn import step  # noqa: PLC0415 - only the GPU step needs them

    spec, model = trainer.spec, trainer.model
    step.forward(spec, model.layers, v, train=True)
    step.loss_sum(spec, v, read=False)
    step.backward(spec, model.layers, trainer.glayers, v)
    dispatch.grad_sq_norm(trainer.grads, v.sc, dispatch.default_launcher())  # the updates skip a non-finite one
    # lr None: the stepper wrote it to the step scalars before the replay, where the update reads it
    trainer.kernels.optimizer_step(trainer.optimizer, model.params, trainer.grads, trainer.arrays, None, spec.layout)


def _host(a):
    """A device array's values on the host (one copy); NumPy arrays as they are."""
    return a.get() if hasattr(a, "get") else a


def _nothing() -> None:
    return None


class _NoStream:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def for_trainer(trainer, enabled, *, loss_every: int = 1):
    """A GraphStepper when graphs are on (None: on where supported), else None."""
    if enabled is False or not trainer.backend.is_cuda:
        if enabled:
            raise DeviceError("cuda_graph: CUDA graphs need a CUDA device (device is cpu)")
        return None
    return GraphStepper(trainer, CupyCapture(trainer.backend.xp), loss_every=loss_every)
