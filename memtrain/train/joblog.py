"""What a job prints: human lines with a tqdm bar, or one JSON object per line."""

from __future__ import annotations

import collections
import json
import time

from memtrain.errors import ConfigError
from memtrain.jsonable import plain
from memtrain.nn.scores import score_text
from memtrain.train.trainer import format_record
from memtrain.units import format_bytes

LOG_FORMATS = ("text", "json")


class JobLog:
    """Human lines, or one JSON object per line with --log-format json. `on_event(event, fields)`,
    when given, hears every event with its fields as they are logged (the worker's progress.json
    and exit record): a caller reads the Job's events, never its log's text."""

    def __init__(self, fmt: str, stream, on_event=None):
        if fmt not in LOG_FORMATS:
            raise ConfigError(f"log-format: expected text or json, got {fmt!r}")
        self.fmt, self.stream, self.on_event = fmt, stream, on_event

    def __call__(self, event: str, text: str = "", **fields):
        if self.on_event is not None:
            self.on_event(event, fields)
        if self.fmt == "json":
            # "text": the line the text log prints (none for an event it does not print, e.g. a
            # checkpoint), so `memtrain logs` shows a service job as `memtrain train` shows it
            extra = {"text": text} if text else {}
            print(json.dumps({"time": round(time.time(), 3), "event": event, **fields, **extra}, default=plain),
                  file=self.stream, flush=True)
        elif text:
            print(text, file=self.stream, flush=True)


class ProgressBar:
    """tqdm bar per epoch: loss, samples/s, memory. Off for JSON logs, when not wanted and when
    the stream is not a terminal (a log file gets the epoch lines only).

    samples/s is smoothed: samples over seconds of the last WINDOW observations (steps for the
    bar, epochs for the epoch lines), so a slow checkpoint step or a fast last batch moves it a
    little, not 50x, and a slow first epoch (imports, warm-up) drops out after WINDOW epochs
    instead of weighing on a whole run as an average seeded by it would."""

    WINDOW = 5

    def __init__(self, enabled, total, stream):
        self.enabled, self.total, self.stream, self.bar, self.epoch = enabled, total, stream, None, None
        self._window = collections.deque(maxlen=self.WINDOW)
        if enabled:
            import tqdm  # noqa: F401, PLC0415 - imported before tracing starts: the measured peak is the plan's

    def update(self, tr, loss, dt, peak):
        if not self.enabled:
            return
        if self.bar is None or self.epoch != tr.epoch:
            from tqdm import tqdm  # noqa: PLC0415 - tqdm only for a text log with a progress bar

            self.close()
            self.epoch = tr.epoch
            self.bar = tqdm(total=self.total, initial=tr.position - 1, desc=f"epoch {tr.epoch + 1}", file=self.stream,
                            leave=False, dynamic_ncols=True)
        rate = self.rate(tr.batch_size, dt)
        post = {"loss": f"{loss:.4f}", "samples/s": f"{rate:,.0f}" if rate else "-"}
        if peak is not None:
            post["mem"] = format_bytes(peak)
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def rate(self, samples, seconds) -> float | None:
        """The smoothed samples per second after one more step of `samples` in `seconds`."""
        self._window.append((float(samples), float(seconds)))
        total = sum(t for _, t in self._window)
        return sum(n for n, _ in self._window) / total if total > 0 else None

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def epoch_line(r, epochs, peak, planned, rate=None) -> str:
    line = format_record(r).replace(f"epoch {r['epoch']}", f"epoch {r['epoch']}/{epochs}", 1)
    line += f"  lr {r['lr']:.3g}"
    if rate:
        line += f"  {rate:,.0f} samples/s"
    if peak is not None:
        line += f"  peak {format_bytes(peak)} (plan {format_bytes(planned)})"
    return line


def plan_line(plan, resident) -> str:
    line = (f"plan      {format_bytes(plan.total)}: "
            + ", ".join(f"{k} {format_bytes(v)}" for k, v in plan.by_category().items() if v)
            + f"; data {'resident' if resident else 'streamed from the host'}")
    if "best_params" in plan.names():  # why parameters are twice what `estimate` shows without patience
        best = plan.allocated(plan.get("best_params"))
        line += (f"\n          parameters include the early-stopping copy of the best weights "
                 f"({format_bytes(best)}; training.patience)")
    return line


def memory_lines(s) -> list:
    """What the plan covers, measured, and the process's own overhead, each for what it is."""
    mem = f"memory    planned {format_bytes(s['planned_bytes'])}"
    if s["measured_peak_bytes"] is None:
        return [mem]
    err = s["measured_peak_bytes"] / s["planned_bytes"] - 1
    mem += (f", measured {format_bytes(s['measured_peak_bytes'])} ({err:+.2%}: the plan's buffers and step "
            "temporaries, tracemalloc)")
    lines = [mem]
    if s.get("python_objects_bytes") is not None:
        lines.append(f"          plus {format_bytes(s['python_objects_bytes'])} of the job loop's Python objects "
                     "(history, logs, progress; not training memory, not in the plan)")
    return lines


def summary_text(s) -> str:
    lines = [f"finished  {s['epochs']} epochs, {s['steps']} steps in {s['seconds']:.1f} s"]
    if s["best_epoch"] is not None:
        lines.append(f"best      epoch {s['best_epoch']} (validation loss; restored)")
    if s["val_loss"] is not None:
        lines.append(f"validation loss {s['val_loss']:.4f}{score_text(s, 'val_')}")
    if s["test_loss"] is not None:
        lines.append(f"test      loss {s['test_loss']:.4f}{score_text(s, 'test_')}")
    lines.extend(memory_lines(s))
    lines.append(f"model     {s['model']}" + (f" (best: {s['best_model']})" if s["best_model"] else ""))
    return "\n".join(lines)

