"""click parameter types and option groups shared by the `memtrain` commands.

Each type's convert() turns the flag's text into the value the library takes and
fails with click's own "Invalid value for '--flag': ..." line (exit 2).
"""

from __future__ import annotations

import click

from memtrain.units import MAX_BATCH, MAX_WIDTH, parse_bytes, parse_duration


class Size(click.ParamType):
    """A byte size: 16GiB (1024-based), 16GB (1000-based), 512MiB or a number of bytes."""

    name = "size"

    def __init__(self, allow_zero: bool = False):
        self.allow_zero = allow_zero

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return parse_bytes(value, "size", allow_zero=self.allow_zero)
        except ValueError as exc:
            self.fail(str(exc).split(": ", 1)[1], param, ctx)


class Duration(click.ParamType):
    """A duration: 90s, 30m, 2h, 1d or a number of seconds (at most 366d)."""

    name = "duration"

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        try:
            return parse_duration(value, "duration")
        except ValueError as exc:
            self.fail(str(exc).split(": ", 1)[1], param, ctx)


class DeviceSize(click.ParamType):
    """DEVICE=SIZE (serve's --budget): ("cpu", 3221225472) from cpu=3GiB."""

    name = "device=size"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        device, sep, size = value.partition("=")
        if not sep or not device.strip():
            self.fail(f"expected DEVICE=SIZE like cpu=3GiB or cuda:0=20GiB, got {value!r}", param, ctx)
        return device.strip().lower(), SIZE.convert(size, param, ctx)


class LayerList(click.ParamType):
    """Comma-separated layer sizes, inputs to outputs: 784,128,10."""

    name = "layers"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            sizes = [int(v) for v in value.split(",")]
        except ValueError:
            self.fail(f"expected comma-separated integers like 784,128,10, got {value!r}", param, ctx)
        if any(not 1 <= s <= MAX_WIDTH for s in sizes):
            self.fail(f"every layer size must be from 1 to {MAX_WIDTH:,}, got {value!r}", param, ctx)
        return sizes


class Dropout(click.ParamType):
    """off, course (keep 0.8 input / 0.5 hidden), or INPUT_KEEP,HIDDEN_KEEP."""

    name = "dropout"

    def convert(self, value, param, ctx):
        if isinstance(value, (bool, tuple)):
            return value
        v = value.strip().lower()
        if v in ("off", "none", "false", "0"):
            return False
        if v in ("on", "course", "true"):
            return True
        try:
            return tuple(float(p) for p in v.split(","))
        except ValueError:
            self.fail(f"expected off, course (keep 0.8/0.5) or INPUT_KEEP,HIDDEN_KEEP, got {value!r}", param, ctx)


class BatchValue(click.ParamType):
    """auto, or a positive integer (at most MAX_BATCH)."""

    name = "auto|N"

    def convert(self, value, param, ctx):
        if value == "auto":
            return value
        try:
            n = int(value) if not isinstance(value, bool) else 0
        except (TypeError, ValueError):
            n = 0
        if not 1 <= n <= MAX_BATCH:
            self.fail(f"expected auto or an integer from 1 to {MAX_BATCH:,}, got {value!r}", param, ctx)
        return n


class FiniteFloat(click.ParamType):
    """A finite number (not nan or inf), at least `min_val` when given: click's FloatRange lets nan through."""

    name = "float"

    def __init__(self, min_val: float | None = None):
        self.min_val = min_val

    def convert(self, value, param, ctx):
        from memtrain.validate import check_scalar  # noqa: PLC0415 - NumPy loads when a command runs, not for --help

        try:
            return check_scalar(float(value), "value", float, min_val=self.min_val)
        except (TypeError, ValueError):  # not a number, nan, inf, or below min_val (ConfigError is a ValueError)
            at_least = "" if self.min_val is None else f" >= {self.min_val:g}"
            self.fail(f"expected a finite number{at_least}, got {value!r}", param, ctx)


SIZE = Size()
SIZE_OR_ZERO = Size(allow_zero=True)
DEVICE_SIZE = DeviceSize()
DURATION = Duration()
LAYERS = LayerList()
DROPOUT = Dropout()
BATCH = BatchValue()

ACTIVATIONS_HELP = ("relu, gelu, tanh, sigmoid, leaky_relu[:a], prelu, abs, swish[:beta], mish, softplus, "
                    "identity")


def model_options(f):
    """The flags that describe a model (estimate, profile, autobatch and train); each
    overrides the same setting of the job file."""
    opts = [
        click.option("--layers", type=LAYERS, help="Layer sizes, inputs to outputs, e.g. 784,1024,1024,10."),
        click.option("--activation", help=f"Hidden activation: {ACTIVATIONS_HELP}.  [default: relu]"),
        click.option("--output", help="Output unit: softmax | sigmoid | linear.  [default: softmax]"),
        click.option("--dropout", type=DROPOUT, help="off, course (keep 0.8 input / 0.5 hidden), or INPUT,HIDDEN "
                     "keep probabilities."),
        click.option("--dtype", type=click.Choice(["float16", "float32", "float64"]),
                     help="Parameter dtype.  [default: float32]"),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def plan_options(f):
    """A job file and the device a plan is for, beside the model flags (estimate, profile, autobatch)."""
    opts = [
        click.option("--config", type=click.Path(dir_okay=False), help="Job file (TOML) with the model; flags "
                     "override it."),
        model_options,
        click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N (the device the plan "
                     "is for)."),
        click.option("--overhead", type=Size(allow_zero=True), help="Overhead to count beside the plan, e.g. "
                     "600MiB: a GPU's device overhead (default: measured on a GPU, else assumed 512 MiB), or the CPU "
                     "process overhead within --memory-limit (default: measured once per machine)."),
        click.option("--fused/--no-fused", default=None, help="CPU: the plan of memtrain's fused kernels, or of the "
                     "NumPy reference path (as `train --no-fused`).  [default: auto (fused from 100,000 "
                     "parameters), or the job file's]"),
    ]
    for o in reversed(opts):
        f = o(f)
    return f
