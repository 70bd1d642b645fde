"""A training job: config -> data -> plan -> (auto) batch -> train with
checkpoints, signals, progress and metrics -> models and a summary.

`run(cfg)` is what `memtrain train` calls; everything it needs comes in
through the JobConfig and its arguments, so tests drive it directly.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from memtrain.backend import get_backend, set_tf32
from memtrain.memory.estimate import Setting
from memtrain.nn.mlp import MLP
from memtrain.optim import make_optimizer
from memtrain.optim.schedules import make_schedule
from memtrain.render import plain
from memtrain.train import checkpoint as ckpt
from memtrain.train.model_io import save_model
from memtrain.train.state import JobState
from memtrain.train.trainer import STOP, Trainer, format_record
from memtrain.units import format_bytes, parse_bytes

DEFAULTS = {
    "training": {"batch_size": 32, "max_batch_size": None, "micro_batch_size": None, "epochs": 10, "clip_norm": None,
                 "patience": None,
                 "max_nonfinite": 10, "memory_limit": None, "measure": True,
                 "cuda_graph": None, "tf32": False},  # cuda_graph None: on where supported
    "data": {"dataset": "digits", "label_column": None, "validation": 0.2, "validation_dataset": None, "test": 0.2,
             "standardize": True, "resident_share": 0.25},
    "checkpoint": {"dir": None, "every_steps": 0, "every_minutes": 10.0, "keep": 3, "resume": True},
    "metrics": {"port": None, "host": "127.0.0.1", "linger": 0},
    "output": {"dir": None},
}


class JobFailed(RuntimeError):
    """The job ran and could not go on (e.g. too many non-finite steps in a row): exit status 1."""


def _setting(cfg, section, key):
    return cfg.__dict__[section].get(key, DEFAULTS[section][key])


def _flag(cfg, key):
    """training.cuda_graph / training.tf32: true, false (or unset: the default)."""
    value = _setting(cfg, "training", key)
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"training.{key}: expected true or false, got {value!r}")
    return value


class _Log:
    """Human lines, or one JSON object per line with --log-format json."""

    def __init__(self, fmt: str, stream):
        if fmt not in ("text", "json"):
            raise ValueError(f"log-format: expected text or json, got {fmt!r}")
        self.fmt, self.stream = fmt, stream

    def __call__(self, event: str, text: str = "", **fields):
        if self.fmt == "json":
            print(json.dumps({"time": round(time.time(), 3), "event": event, **fields}, default=plain),
                  file=self.stream, flush=True)
        elif text:
            print(text, file=self.stream, flush=True)


def run(cfg, *, log_format: str = "text", progress: bool = True, stream=None, install_signals: bool = True) -> dict:
    """Run the job described by `cfg` (memtrain.config.JobConfig). Returns the summary.
    The metrics server and tracing are stopped however the job ends."""
    with contextlib.ExitStack() as resources:
        return _run(cfg, resources, log_format, progress, stream, install_signals)


def _run(cfg, resources, log_format, progress, stream, install_signals) -> dict:
    from memtrain.data import load_dataset  # noqa: PLC0415 - sklearn and friends only when a job runs

    stream = stream or sys.stdout
    log = _Log(log_format, stream)
    t_start = time.perf_counter()
    state = JobState(job=cfg.name)
    spec = cfg.model_spec()
    opt_name, hyper = cfg.optimizer_name(), cfg.optimizer_hyper()
    base_lr = make_optimizer(opt_name, **hyper).lr  # bad names and hyper-parameters fail before any work
    _schedule(cfg, base_lr, 1)  # so does a bad schedule
    epochs = _positive_int("training.epochs", _setting(cfg, "training", "epochs"))
    out_dir = Path(_setting(cfg, "output", "dir") or f"runs/{cfg.name}")
    ckpt_dir = Path(_setting(cfg, "checkpoint", "dir") or out_dir / "checkpoints")
    ckpt.check_writable(ckpt_dir)
    ckpt.check_writable(out_dir)
    backend = get_backend(cfg.device, verbose=log_format == "text")
    state.device, state.dtype = backend.name, spec.dtype.name
    state.model = f"{'-'.join(map(str, spec.sizes))} {spec.activation.describe()} {spec.output.name}"
    state.optimizer = opt_name
    state.gpu_index = backend.index if backend.is_cuda else None
    state.gpu_pci_bus_id = backend.xp.cuda.Device(backend.index).pci_bus_id if backend.is_cuda else ""
    state.gpu_uuid = _gpu_uuid(backend)
    set_tf32(backend, bool(_flag(cfg, "tf32")))  # raises for tf32 on the CPU; resets it otherwise
    if _flag(cfg, "cuda_graph") and not backend.is_cuda:
        raise ValueError(f"training.cuda_graph: CUDA graphs need a CUDA device (the device is {backend.name})")

    # -- data --------------------------------------------------------------------------
    ds = load_dataset(_setting(cfg, "data", "dataset"), dtype=spec.dtype.name,
                      label_column=_setting(cfg, "data", "label_column"),
                      validation=_setting(cfg, "data", "validation"),
                      validation_source=_setting(cfg, "data", "validation_dataset"),
                      test=_setting(cfg, "data", "test"), standardize=_setting(cfg, "data", "standardize"),
                      seed=cfg.seed, output=spec.output.name, n_outputs=spec.sizes[-1])
    if ds.n_features != spec.sizes[0]:
        raise ValueError(f"model.layers: the first size must equal the data's {ds.n_features} features "
                         f"({ds.name}), got {spec.sizes[0]}")
    log("data", f"data      {ds.describe()}", dataset=ds.name, train=len(ds.X_train),
        validation=0 if ds.X_val is None else len(ds.X_val), test=0 if ds.X_test is None else len(ds.X_test))

    # -- batch size: a checkpoint's, a given one, or solved on the plan and probed ------
    identity_probe = ckpt.list_checkpoints(ckpt_dir) if _setting(cfg, "checkpoint", "resume") else []
    batch = _setting(cfg, "training", "batch_size")
    micro = _setting(cfg, "training", "micro_batch_size")
    memory_limit = _setting(cfg, "training", "memory_limit")
    memory_limit = None if memory_limit is None else parse_bytes(memory_limit, "training.memory_limit")
    resident = _resident(ds, backend, memory_limit, _setting(cfg, "data", "resident_share"))
    n_val = 0 if ds.X_val is None else len(ds.X_val)
    setting = Setting(spec, opt_name, tuple(sorted(hyper.items())), backend.kind,
                      keep_best=bool(_setting(cfg, "training", "patience")),
                      resident_rows=(len(ds.X_train), n_val) if resident else None)
    # on the CPU the data set is in memory already when the free memory is read
    loaded = _data_bytes(ds) if (resident and not backend.is_cuda) else 0
    state.memory_budget = _budget(backend, memory_limit, loaded)
    auto_note = None
    if identity_probe and batch == "auto":
        batch = json.loads(identity_probe[0].read_text())["identity"]["batch_size"]
        auto_note = f"batch     {batch} (from the checkpoint being resumed)"
    elif batch == "auto":
        from memtrain.memory.autobatch import auto_batch  # noqa: PLC0415

        state.set_state("planning")
        r = auto_batch(setting, backend, memory_limit=memory_limit, multiple_of=8 if backend.is_cuda else None,
                       dataset_size=len(ds.X_train), already_allocated=loaded)
        cap = _setting(cfg, "training", "max_batch_size")
        cap = len(ds.X_train) if cap is None else min(_positive_int("training.max_batch_size", cap), len(ds.X_train))
        batch = min(r.confirmed, cap)
        why = "max_batch_size" if cap < len(ds.X_train) else "the whole training set"
        auto_note = (f"batch     auto: {r.confirmed:,} fits (analytic {r.analytic:,}, {len(r.probes)} probe(s), "
                     f"{r.seconds:.2f} s); using {batch:,}" + (f" ({why})" if batch < r.confirmed else ""))
        log("autobatch", auto_note, analytic=r.analytic, confirmed=r.confirmed, used=batch, probes=len(r.probes))
        auto_note = None
    batch = _positive_int("training.batch_size", batch)
    if micro == "auto":
        micro = _auto_micro(setting, batch, backend, memory_limit)
    if micro is not None:
        micro = _positive_int("training.micro_batch_size", micro)
        if micro > batch:
            raise ValueError(f"training.micro_batch_size: {micro} is larger than the batch size {batch}")
    if auto_note:
        log("batch", auto_note, batch_size=batch)

    # -- metrics -----------------------------------------------------------------------------------
    exporter = None
    port = _setting(cfg, "metrics", "port")
    linger = float(_setting(cfg, "metrics", "linger") or 0)
    if not (linger >= 0 and math.isfinite(linger)):
        raise ValueError(f"metrics.linger: expected seconds >= 0, got {linger!r}")
    if port is not None:
        exporter = _serve(state, port, _setting(cfg, "metrics", "host"), log)
        resources.callback(exporter.stop)

    def publish():
        if exporter is not None:
            exporter.publish(state)

    def linger_then(result):
        """A short job's final state stays scrapeable for `linger` seconds (not after an error)."""
        if exporter is not None and linger:
            _linger(linger, log)
        return result

    if progress and log_format == "text":
        import tqdm  # noqa: F401, PLC0415 - imported before tracing starts, so the measurement is the plan's

    # -- plan, model, trainer ----------------------------------------------------------------
    measure = bool(_setting(cfg, "training", "measure")) and not backend.is_cuda
    if measure:
        _HELD[0] = _UNTRACED[0] = 0
        tracemalloc.start()
        resources.callback(tracemalloc.stop)
    steps_per_epoch = -(-len(ds.X_train) // batch)
    schedule = _schedule(cfg, base_lr, epochs * steps_per_epoch)
    model = MLP.from_spec(spec, seed=cfg.seed, device=backend)
    trainer = Trainer(model, make_optimizer(opt_name, **hyper), batch, micro_batch_size=micro, schedule=schedule,
                      clip_norm=_setting(cfg, "training", "clip_norm"),
                      patience=_setting(cfg, "training", "patience"), seed=cfg.seed,
                      cuda_graph=_flag(cfg, "cuda_graph"))
    for note in trainer.notes:
        log("note", f"note      {note}", note=note)
    validation = (ds.X_val, ds.y_val) if ds.X_val is not None else None
    before = set(trainer.arrays)
    trainer.attach_data(ds.X_train, ds.y_train, validation, resident=resident)
    adopted = [a for k, a in trainer.arrays.items() if k not in before and k != "order" and isinstance(a, np.ndarray)
               and any(a is d for d in (ds.X_train, ds.y_train, ds.X_val, ds.y_val))]
    _UNTRACED[0] = sum(a.nbytes for a in adopted)
    plan = trainer.plan
    state.planned_bytes = plan.by_category()
    state.batch_size, state.micro_batch_size = trainer.batch_size, trainer.micro_batch_size
    log("plan", f"plan      {format_bytes(plan.total)}: " + ", ".join(
        f"{k} {format_bytes(v)}" for k, v in plan.by_category().items() if v)
        + f"; data {'resident' if resident else 'streamed from the host'}",
        planned_bytes=plan.by_category(), total=plan.total, resident=resident)

    identity = {**trainer.identity(), "dataset": ds.name, "seed": cfg.seed}
    if not _setting(cfg, "checkpoint", "resume") and ckpt.list_checkpoints(ckpt_dir):
        raise ValueError(f"checkpoint.dir: {ckpt_dir} already holds checkpoints of an earlier run; resume it "
                         "(--resume) or choose another --checkpoint-dir (nothing was overwritten)")
    if _setting(cfg, "checkpoint", "resume"):
        found = ckpt.load_latest(ckpt_dir, identity, warn=lambda m: log("warning", m, message=m))
        if found:
            arrays, record = found
            trainer.load_state(arrays, record["state"])
            state.steps, state.epoch = trainer.steps, trainer.epoch
            log("resume", f"resumed   from {ckpt_dir / record['npz']}: step {trainer.steps}, epoch "
                f"{trainer.epoch + 1}, batch {trainer.position}", step=trainer.steps, epoch=trainer.epoch,
                position=trainer.position)

    # -- the loop --------------------------------------------------------------------------------
    stop_signal = []
    previous = {}
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda s, f: stop_signal.append(signal.Signals(s).name))
    every_steps = int(_setting(cfg, "checkpoint", "every_steps") or 0)
    every_s = float(_setting(cfg, "checkpoint", "every_minutes") or 0) * 60
    keep = _positive_int("checkpoint.keep", _setting(cfg, "checkpoint", "keep"))
    max_nonfinite = _positive_int("training.max_nonfinite", _setting(cfg, "training", "max_nonfinite"))
    last_ckpt = [time.monotonic()]
    failure = []

    def save_checkpoint(reason):
        _hold_peak(measure)  # writing the .npz makes temporary copies: not the training step's memory
        state.set_state("checkpointing")
        path = ckpt.save(ckpt_dir, trainer.state_arrays(), trainer.state_meta(), identity, keep=keep)
        state.checkpoints += 1
        state.last_checkpoint_time = time.time()
        last_ckpt[0] = time.monotonic()
        state.set_state("training")
        publish()
        _reset_peak(measure)
        log("checkpoint", "", path=str(path), reason=reason, step=trainer.steps)

    bar = _Progress(progress and log_format == "text", steps_per_epoch, stream)
    step_t = [time.perf_counter()]

    n_train = len(ds.X_train)
    pool_hook = _pool_hook(backend)

    def on_step(tr, loss):
        now = time.perf_counter()
        dt = now - step_t[0]
        step_t[0] = now
        state.step_durations.observe(dt)
        state.steps = tr.steps
        state.samples += min(tr.batch_size, n_train - (tr.position - 1) * tr.batch_size)
        if pool_hook is not None:
            state.measured["cupy_pool_peak"] = pool_hook.peak
        peak = _peak(measure)
        if peak is not None:
            state.measured["tracemalloc_peak"] = peak  # includes the data set allocated before tracing began
        state.train_loss, state.gradient_norm, state.learning_rate = loss, tr.last_grad_norm, tr.last_lr
        state.nonfinite_steps, state.oom_recoveries = tr.nonfinite_steps, tr.oom_recoveries
        if tr.micro_batch_size != state.micro_batch_size:  # an OOM re-planned the step
            state.micro_batch_size, state.planned_bytes = tr.micro_batch_size, tr.plan.by_category()
        bar.update(tr, loss, dt, peak if peak is not None else state.measured.get("cupy_pool_peak"))
        publish()
        if tr.nonfinite_streak >= max_nonfinite:
            failure.append(f"training: {tr.nonfinite_streak} non-finite steps in a row (loss {loss}); stopped "
                           "with a checkpoint of the last good state (try a lower lr or clip_norm)")
            return STOP
        if stop_signal:
            return STOP
        if (every_steps and tr.steps % every_steps == 0) or (every_s and time.monotonic() - last_ckpt[0] >= every_s):
            save_checkpoint("interval")
        return None

    def on_epoch(tr, record):
        bar.close()
        state.epoch = tr.epoch
        state.validation_loss = record.get("val_loss", math.nan)
        acc = record.get("val_accuracy")
        state.validation_accuracy = math.nan if acc is None else acc
        publish()
        log("epoch", _epoch_line(record, epochs, _peak(measure), plan.total), **record)
        save_checkpoint("epoch")
        return None

    state.set_state("training")
    publish()
    remaining = epochs - trainer.epoch
    try:
        if pool_hook is not None:
            pool_hook.__enter__()
        if remaining > 0 and not trainer.stopped_early:
            trainer.fit(epochs=remaining, on_step=on_step, on_epoch=on_epoch)
    except BaseException:
        state.set_state("failed")
        publish()
        raise
    finally:
        if pool_hook is not None:
            pool_hook.__exit__(None, None, None)
        bar.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stop_signal or failure:
        save_checkpoint(stop_signal[0] if stop_signal else "non-finite")
        if failure:
            state.set_state("failed")
            publish()
            raise JobFailed(failure[0])
        log("stopped", f"stopped   on {stop_signal[0]} at step {trainer.steps}; checkpoint saved, resume with the "
            "same command", signal=stop_signal[0], step=trainer.steps)
        return linger_then({"stopped": stop_signal[0], "steps": trainer.steps})

    # -- results -------------------------------------------------------------------------------------
    state.set_state("evaluating")
    publish()
    train_peak = _peak(measure)  # before the test evaluation allocates its inference plan
    summary = _finish(cfg, ds, trainer, out_dir, plan, train_peak, time.perf_counter() - t_start)
    state.set_state("finished")
    publish()
    log("summary", _summary_text(summary), **summary)
    return linger_then(summary)


def _positive_int(field, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{field}: expected a positive integer, got {value!r}")
    return int(value)


def _schedule(cfg, lr, total_steps):
    s = dict(cfg.schedule)
    name = s.pop("name", "constant")
    s.setdefault("total_steps", total_steps)
    return make_schedule(name, lr, **s)


def _auto_micro(setting, batch, backend, memory_limit) -> int | None:
    """The largest micro-batch whose plan fits; None when the whole batch fits."""
    from memtrain.memory.autobatch import default_margin, device_budget  # noqa: PLC0415
    from memtrain.memory.batch import largest_batch  # noqa: PLC0415
    from memtrain.memory.plan import training_plan  # noqa: PLC0415

    raw = memory_limit if memory_limit is not None else device_budget(backend)[0]
    budget = raw - default_margin(backend.kind, raw)
    opt = setting.make_optimizer()

    def total(m):
        return training_plan(setting.spec, opt, batch, setting.device, micro_batch_size=min(m, batch),
                             keep_best=setting.keep_best, resident_rows=setting.resident_rows,
                             dataset_size=setting.resident_rows[0] if setting.resident_rows else None).total

    fit = largest_batch(total, budget)
    if not fit.batch_size:
        raise ValueError(f"training.micro_batch_size: even a micro-batch of 1 needs {format_bytes(fit.shortfall)} more")
    return None if fit.batch_size >= batch else fit.batch_size


def _linger(seconds, log) -> None:
    log("linger", f"metrics   still served for {seconds:g} s (metrics.linger); Ctrl-C ends it", seconds=seconds)
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        pass


def _gpu_uuid(backend) -> str:
    """NVML's uuid of the job's GPU ("" on the CPU, or without NVML)."""
    if not backend.is_cuda:
        return ""
    from memtrain.memory import measure  # noqa: PLC0415

    try:
        uuid = measure._pynvml().nvmlDeviceGetUUID(measure.handle_for_cuda_device(backend.index))
    except Exception:  # no driver library: the label stays empty, the job goes on
        return ""
    return uuid.decode() if isinstance(uuid, bytes) else str(uuid)


def _budget(backend, memory_limit, loaded) -> float:
    """What the job's plan is sized to fit, for the headroom metric."""
    from memtrain.memory.autobatch import device_budget  # noqa: PLC0415

    if memory_limit is not None:
        return float(memory_limit)
    try:
        return float(device_budget(backend)[0] + loaded)
    except Exception:  # no NVML or /proc: the metric is left out, the job goes on
        return float("nan")


def _data_bytes(ds) -> int:
    return sum(a.nbytes for a in (ds.X_train, ds.y_train, ds.X_val, ds.y_val) if a is not None)


def _resident(ds, backend, memory_limit, share) -> bool:
    """CPU: the data set is in host memory either way, so it is in the plan. CUDA: on the
    device when it takes at most `share` of the memory budget, else streamed batch by batch."""
    if not backend.is_cuda:
        return True
    from memtrain.memory.autobatch import device_budget  # noqa: PLC0415

    budget = memory_limit if memory_limit is not None else device_budget(backend)[0]
    return _data_bytes(ds) <= float(share) * budget


def _serve(state, port, host, log):
    """The exporter in its own process (memtrain/exporter.py): scrapes cost the steps nothing."""
    from memtrain.exporter import Exporter  # noqa: PLC0415

    port = _positive_int("metrics.port", port) if port != 0 else 0
    try:
        exporter = Exporter(state, port, host)
    except OSError as exc:
        raise ValueError(f"metrics.port: cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    log("metrics", f"metrics   http://{host}:{exporter.port}/metrics", url=f"http://{host}:{exporter.port}/metrics")
    return exporter


_UNTRACED = [0]  # bytes of plan buffers allocated before tracing began (the adopted data set)
_HELD = [0]  # the highest training peak seen before the last checkpoint write


def _peak(measure) -> int | None:
    """Measured peak of the training's memory on the CPU: tracemalloc's peak since the
    model was built (checkpoint writes excluded), plus the data set arrays the plan
    adopted, which were allocated before tracing began."""
    if not (measure and tracemalloc.is_tracing()):
        return None
    return max(_HELD[0], tracemalloc.get_traced_memory()[1]) + _UNTRACED[0]


def _hold_peak(measure) -> None:
    if measure and tracemalloc.is_tracing():
        _HELD[0] = max(_HELD[0], tracemalloc.get_traced_memory()[1])


def _reset_peak(measure) -> None:
    if measure and tracemalloc.is_tracing():
        tracemalloc.reset_peak()


def _pool_hook(backend):
    if not backend.is_cuda:
        return None
    from memtrain.memory.measure import pool_peak_hook  # noqa: PLC0415

    return pool_peak_hook(backend.xp.get_default_memory_pool())


class _Progress:
    """tqdm bar per epoch: loss, samples/s, memory. Off for JSON logs or when not wanted."""

    def __init__(self, enabled, total, stream):
        self.enabled, self.total, self.stream, self.bar, self.epoch = enabled, total, stream, None, None

    def update(self, tr, loss, dt, peak):
        if not self.enabled:
            return
        if self.bar is None or self.epoch != tr.epoch:
            from tqdm import tqdm  # noqa: PLC0415

            self.close()
            self.epoch = tr.epoch
            self.bar = tqdm(total=self.total, initial=tr.position - 1, desc=f"epoch {tr.epoch + 1}", file=self.stream,
                            leave=False, dynamic_ncols=True)
        post = {"loss": f"{loss:.4f}", "samples/s": f"{tr.batch_size / dt:,.0f}" if dt > 0 else "-"}
        if peak is not None:
            post["mem"] = format_bytes(peak)
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _epoch_line(r, epochs, peak, planned) -> str:
    line = format_record(r).replace(f"epoch {r['epoch']}", f"epoch {r['epoch']}/{epochs}", 1)
    line += f"  lr {r['lr']:.3g}"
    if peak is not None:
        line += f"  peak {format_bytes(peak)} (plan {format_bytes(planned)})"
    return line


def _finish(cfg, ds, trainer, out_dir, plan, peak, seconds) -> dict:
    model = trainer.model
    prep = ds.preprocessing()
    data = {"dataset": _setting(cfg, "data", "dataset"), "validation": _setting(cfg, "data", "validation"),
            "test": _setting(cfg, "data", "test"), "standardize": _setting(cfg, "data", "standardize"),
            "seed": cfg.seed, "label_column": _setting(cfg, "data", "label_column")}
    common = {"job": cfg.name, "dataset": ds.name, "data": data, "preprocessing": prep,
              "optimizer": trainer.optimizer.describe(),
              "batch_size": trainer.batch_size, "steps": trainer.steps, "epochs": trainer.epoch}
    best_path = out_dir / "model-best"
    final_path = out_dir / "model-final"
    had_best = trainer.best_epoch is not None
    test = model.evaluate(ds.X_test, ds.y_test) if ds.X_test is not None else None
    if had_best:
        # fit() restored the best weights; the final ones are the best ones for early stopping jobs
        save_model(best_path, model, {**common, "epoch": trainer.best_epoch, "val_loss": trainer.best_loss,
                                      "test": test})
    save_model(final_path, model, {**common, "test": test})
    last = trainer.history[-1] if trainer.history else {}
    return {
        "job": cfg.name, "steps": trainer.steps, "epochs": trainer.epoch,
        "best_epoch": trainer.best_epoch if had_best else None,
        "train_loss": last.get("train_loss"), "val_loss": last.get("val_loss"),
        "val_accuracy": last.get("val_accuracy"),
        "test_loss": None if test is None else test["loss"], "test_accuracy": None if test is None else test["accuracy"],
        "seconds": seconds, "batch_size": trainer.batch_size, "micro_batch_size": trainer.micro_batch_size,
        "oom_recoveries": trainer.oom_recoveries, "nonfinite_steps": trainer.nonfinite_steps,
        "planned_bytes": plan.total, "planned_by_category": plan.by_category(), "measured_peak_bytes": peak,
        "history": trainer.history,
        "model": str(final_path.with_suffix(".npz")), "best_model": str(best_path.with_suffix(".npz")) if had_best else None,
    }


def _summary_text(s) -> str:
    lines = [f"finished  {s['epochs']} epochs, {s['steps']} steps in {s['seconds']:.1f} s"]
    if s["best_epoch"] is not None:
        lines.append(f"best      epoch {s['best_epoch']} (validation loss; restored)")
    if s["val_accuracy"] is not None:
        lines.append(f"validation loss {s['val_loss']:.4f}, accuracy {s['val_accuracy']:.4f}")
    if s["test_accuracy"] is not None:
        lines.append(f"test      loss {s['test_loss']:.4f}, accuracy {s['test_accuracy']:.4f}")
    mem = f"memory    planned {format_bytes(s['planned_bytes'])}"
    if s["measured_peak_bytes"] is not None:
        err = s["measured_peak_bytes"] / s["planned_bytes"] - 1
        mem += (f", measured peak while training {format_bytes(s['measured_peak_bytes'])} "
                f"(tracemalloc, {err:+.2%}: the plan plus the job loop's Python objects)")
    lines.append(mem)
    lines.append(f"model     {s['model']}" + (f" (best: {s['best_model']})" if s["best_model"] else ""))
    return "\n".join(lines)
