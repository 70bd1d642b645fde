"""The `memtrain` command: parses and prints; the work lives in the library."""

from __future__ import annotations

import sys

import click

from memtrain import __version__
from memtrain.cli_lazy import LazyCommands
from memtrain.cli_types import BATCH, SIZE, FiniteFloat, model_options, plan_options
from memtrain.errors import ConfigError, ExitCode, MemtrainError
from memtrain.quickexit import run as run_and_exit
from memtrain.units import MAX_BATCH

_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())


class UserError(click.ClickException):
    """A MemtrainError on its way out: one line "memtrain: error: ...", exit status 2."""

    exit_code = ExitCode.USAGE

    def __init__(self, message: str, exit_code: int = ExitCode.USAGE):
        super().__init__(message)
        self.exit_code = exit_code  # a MemtrainError may say it is a failure (1), e.g. a full disk

    def show(self, file=None):
        click.echo(f"memtrain: error: {self.format_message()}", err=True)


class _Group(click.Group):
    """User errors (MemtrainError, click's usage errors) as one line and exit status 2;
    any other exception is a bug and keeps its traceback."""

    def main(self, args=None, prog_name=None, **kwargs):
        kwargs.pop("standalone_mode", None)
        try:
            rv = super().main(args, prog_name, standalone_mode=False, **kwargs)
        except _NO_ARGS as exc:  # plain `memtrain`: the help, as click would show it
            click.echo(exc.ctx.get_help())
            sys.exit(ExitCode.OK)
        except click.UsageError as exc:  # bad flags and values: one line, not click's three
            click.echo(f"memtrain: error: {exc.format_message()}", err=True)
            sys.exit(ExitCode.USAGE)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(ExitCode.FAILURE)
        sys.exit(rv if isinstance(rv, int) else ExitCode.OK)

    def format_commands(self, ctx, formatter):
        """Each command's first sentence whole (click cuts it at the terminal width with "...");
        the definition list wraps it instead."""
        rows = [(name, cmd.get_short_help_str(limit=1000)) for name in self.list_commands(ctx)
                if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MemtrainError as exc:
            raise UserError(str(exc), getattr(exc, "exit_code", ExitCode.USAGE)) from None
        except MemoryError as exc:  # NumPy's _ArrayMemoryError, CuPy's OutOfMemoryError: a size, not a bug
            raise UserError(_out_of_memory(exc)) from None


def _out_of_memory(exc) -> str:
    from memtrain.memory.budget import cpu_free  # noqa: PLC0415
    from memtrain.units import format_bytes  # noqa: PLC0415

    free, source = cpu_free()
    what = " ".join(str(exc).split()) or type(exc).__name__
    return (f"out of memory: {what}; {format_bytes(free)} ({free:,} B) is available ({source}); "
            "use a smaller batch, smaller layers or a smaller data set")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="memtrain")
def main():
    """Train feedforward networks on a GPU (CuPy) or CPU (NumPy), knowing
    exactly how much memory the training takes before anything is allocated."""


def _backend_for(device):
    """The CUDA backend when asked for and present; None for the CPU or a GPU-less planning run."""
    from memtrain.backend import _import_cupy, get_backend, parse_device  # noqa: PLC0415

    kind, _ = parse_device(device)
    if kind == "auto":
        raise ConfigError("device: estimate needs cpu, cuda or cuda:N (the device the plan is for)")
    if kind == "cpu":
        return None
    cupy, _why = _import_cupy()
    return get_backend(device) if cupy is not None else None


def _echo(text):
    click.echo(text)


# -- estimate ---------------------------------------------------------------------------


@main.command()
@plan_options
@click.option("--optimizer", help="Optimizer name, lookahead:<inner>, a list like sgd,adam, or 'all' for every "
              "optimizer side by side.  [default: adam, or the job file's]")
@click.option("--batch-size", "batch_size", help="N, a list 32,64,128, or a range 32:512 (doubling) / 32:512:32.  "
              "[default: the job file's (auto: solved as train solves it), the largest batch that fits "
              "--memory-limit, or 32]")
@click.option("--memory-limit", "memory_limit", type=SIZE, help="Memory to fit, e.g. 16GiB (1024-based) or 16GB "
              "(1000-based): prints the largest batch, less the safety margin autobatch keeps.")
@click.option("--memory", "memory_alias", type=SIZE, hidden=True)  # deprecated alias, kept for one release
@click.option("--margin", type=SIZE, help="Safety margin kept free.  [default: 256KiB (CPU) or 8MiB (CUDA) + 0.1% "
              "of the budget]")
@click.option("--max-batch", is_flag=True, help="Print the largest batch that fits --memory-limit, the GPU's free "
              "memory, or the CPU's default budget (25% of available memory, at most 4 GiB).")
@click.option("--multiple-of", type=click.IntRange(min=1), help="Round the largest batch down to a multiple of this (GPUs favour 8).")
@click.option("--power-of-two", is_flag=True, help="Round the largest batch down to a power of two.")
@click.option("--inference", is_flag=True, help="The inference plan: no gradients, optimizer state or saved activations.")
@click.option("--per-layer", is_flag=True, help="Each layer's parameters, per-sample activations and share.")
@click.option("--gpus", type=click.IntRange(min=1), help="Data-parallel view: per-GPU memory with optimizer state replicated vs sharded N ways.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--verify", is_flag=True, help="Also allocate the plan and run 3 real steps: estimated vs measured (see `memtrain profile`).")
@click.option("--trials", type=click.IntRange(min=1), help="K trials of this plan trained as one trial array: K x a trial's buffers + the data set and process once (and the largest K in --memory-limit).")
def estimate(config, layers, activation, output, dropout, dtype, device, overhead, fused, optimizer, batch_size,
             memory_limit, memory_alias, margin, max_batch, multiple_of, power_of_two, inference, per_layer, gpus,
             fmt, verify, trials):
    """Memory of a model + optimizer + batch + dtype, from the plan the trainer allocates.

    With --config it is the plan `memtrain train` runs for that job file: the data set
    in memory and an auto batch solved as train solves it.

    \b
    Examples:
      memtrain estimate --layers 784,1024,1024,10 --optimizer adam --batch-size 256
      memtrain estimate --layers 784,1024,1024,10 --optimizer sgd,adam --batch-size 256
      memtrain estimate --layers 784,4096,4096,10 --optimizer adam --memory-limit 16GiB
      memtrain estimate --config job.toml --per-layer --format json
    """
    from memtrain import render  # noqa: PLC0415
    from memtrain.profiler import estimate as est  # noqa: PLC0415

    if memory_alias is not None:
        click.echo("memtrain: warning: --memory is deprecated and will be removed in the next release; "
                   "use --memory-limit", err=True)
    memory = memory_limit if memory_limit is not None else memory_alias
    backend = _backend_for(device)
    req = est.build_setting(config=config, layers=layers, activation=activation, output=output, dropout=dropout,
                            dtype=dtype, optimizer=optimizer, device=device, overhead=overhead, inference=inference,
                            backend=backend, budget=memory, fused=fused)
    r = est.estimate(req, optimizer, batch_size, memory=memory, max_batch=max_batch, backend=backend, margin=margin,
                     multiple_of=multiple_of, power_of_two=power_of_two, per_layer=per_layer, gpus=gpus)
    _add_trial_array(r, req.setting, trials, memory, margin)
    if r["schema"] == est.TABLE_SCHEMA:
        _echo({"table": render.table_text, "json": render.to_json, "csv": render.table_csv}[fmt](r))
        return
    _echo({"table": render.estimate_text, "json": render.to_json, "csv": render.estimate_csv}[fmt](r))
    if trials and fmt != "json":  # the JSON holds it as "trial_array"
        _echo({"table": render.trials_text, "csv": render.trials_csv}[fmt](r["trial_array"]))
    if verify:
        name = (r["optimizer"] or {}).get("name", req.setting.optimizer)
        _run_profile(req.setting.with_optimizer(name), r["batch_size"], 3, None, fmt, backend)


def _add_trial_array(r, setting, trials, memory, margin) -> None:
    """--trials K: the report's "trial_array" (profiler/trials.py)."""
    if trials:
        from memtrain.profiler import trials as est_trials  # noqa: PLC0415

        r["trial_array"] = est_trials.array_report(setting, r, trials, budget=memory, margin=margin)


# -- profile ------------------------------------------------------------------------


def _run_profile(setting, batch, steps, tolerance, fmt, backend):
    from memtrain import render  # noqa: PLC0415
    from memtrain.backend import get_backend  # noqa: PLC0415
    from memtrain.profiler import verify  # noqa: PLC0415

    if setting.device == "cuda" and backend is None:
        get_backend("cuda")  # raises the clear "no CUDA device" error
    p = verify.profile(setting, batch, steps=steps, backend=backend,
                       tolerance=verify.DEFAULT_TOLERANCE if tolerance is None else tolerance)
    _echo(render.to_json(p) if fmt == "json" else render.profile_text(p))
    if not p["ok"]:
        sys.exit(ExitCode.FAILURE)


@main.command()
@plan_options
@click.option("--optimizer", help="Optimizer name or lookahead:<inner>.  [default: adam]")
@click.option("--batch-size", "batch_size", type=click.IntRange(min=1, max=MAX_BATCH), help="Batch size.  [default: 32]")
@click.option("--steps", type=click.IntRange(min=1), default=3, show_default=True, help="Real training steps to run.")
@click.option("--tolerance", type=FiniteFloat(min_val=0), default=0.005, show_default=True,
              help="Allowed |measured - planned| / planned (at least 64 KiB is always allowed); exit 1 beyond it.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def profile(config, layers, activation, output, dropout, dtype, device, overhead, fused, optimizer, batch_size, steps,
            tolerance, fmt):
    """Allocate the plan, run real training steps, and print estimated vs measured
    memory per category (CPU: tracemalloc; CUDA: CuPy pool peak and NVML).

    Exit status 1 when the error exceeds --tolerance.
    """
    from memtrain.profiler import estimate as est  # noqa: PLC0415

    backend = _backend_for(device)
    req = est.build_setting(config=config, layers=layers, activation=activation, output=output, dropout=dropout,
                            dtype=dtype, optimizer=optimizer, device=device, overhead=overhead, backend=backend,
                            fused=fused)
    _run_profile(req.setting, batch_size or (req.batches or [32])[0], steps, tolerance, fmt, backend)


# -- autobatch ------------------------------------------------------------------------


@main.command()
@plan_options
@click.option("--optimizer", help="Optimizer name or lookahead:<inner>.  [default: adam]")
@click.option("--memory-limit", type=SIZE, help="Memory to fit (e.g. 8GiB); default: the job file's memory_limit, "
              "else free GPU memory now (NVML), or on the CPU 25% of the available memory (MemAvailable, the "
              "cgroup limit and RLIMIT_AS), at most 4 GiB.")
@click.option("--max-batch-size", type=click.IntRange(min=1), help="Never solve or probe a larger batch.  "
              "[default: the job file's max_batch_size and training rows]")
@click.option("--margin", type=SIZE, help="Safety margin kept free.  [default: 256KiB (CPU) or 8MiB (CUDA) + 0.1% of the budget]")
@click.option("--multiple-of", type=click.IntRange(min=1), help="Round the batch down to a multiple of this.  [default: 8 on CUDA]")
@click.option("--objective", type=click.Choice(["memory", "throughput"]), default="memory", show_default=True,
              help="memory: the largest batch that fits; throughput: the fastest batch up to that size.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def autobatch(config, layers, activation, output, dropout, dtype, device, overhead, fused, optimizer, memory_limit,
              max_batch_size, margin, multiple_of, objective, fmt):
    """The largest batch that fits, solved on the plan and confirmed by one real
    training step (a second probe only if the first one does not fit).

    \b
    Examples:
      memtrain autobatch --layers 784,1024,1024,10 --optimizer adam --memory-limit 2GiB
      memtrain autobatch --config job.toml --device cuda --objective throughput
    """
    from memtrain import render  # noqa: PLC0415
    from memtrain.backend import get_backend  # noqa: PLC0415
    from memtrain.profiler import autobatch as ab  # noqa: PLC0415
    from memtrain.profiler import estimate as est  # noqa: PLC0415

    backend = get_backend(device, verbose=True)
    req = est.build_setting(config=config, layers=layers, activation=activation, output=output, dropout=dropout,
                            dtype=dtype, optimizer=optimizer, device=backend.name, overhead=overhead,
                            backend=backend if backend.is_cuda else None, budget=memory_limit, fused=fused)
    setting, t = req.setting, (req.cfg.training if req.cfg is not None else None)
    if multiple_of is None:  # the Job's rounding: a multiple of 8 on a GPU
        from memtrain.train.jobplan import batch_multiple  # noqa: PLC0415

        multiple_of = batch_multiple(backend.kind)
    if t is not None:  # what `train` would solve for this job file: its limit, its cap, its rows
        memory_limit = memory_limit if memory_limit is not None else t.memory_limit
        max_batch_size = max_batch_size or t.max_batch_size
    log = None if fmt == "json" else (lambda p: _echo(render.probe_line(p)))
    result = ab.auto_batch(setting, backend, memory_limit=memory_limit, margin=margin, multiple_of=multiple_of,
                           max_batch=max_batch_size, dataset_size=req.n_train, log=log)
    if objective == "throughput":
        result.objective = "throughput"
        result.throughput = ab.fastest_batch(setting, backend, result.confirmed, multiple_of=multiple_of,
                                             log=None if fmt == "json" else (lambda b, r: _echo(
                                                 f"throughput  B = {b:,}: {r:,.0f} samples/s")))
    _echo(render.to_json(result.to_dict()) if fmt == "json" else render.autobatch_text(result))


# -- devices ---------------------------------------------------------------------------


@main.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def devices(fmt):
    """The GPUs NVML sees (memory, who uses it, health), or this CPU's memory
    when there is no NVIDIA driver."""
    from memtrain import render  # noqa: PLC0415
    from memtrain.memory.measure import device_report  # noqa: PLC0415

    report = device_report()
    _echo(render.to_json(report) if fmt == "json" else render.devices_text(report))


# -- train ---------------------------------------------------------------------------

# each flag of `train` and the JobConfig key it overrides (config.merge: None is "not given")
def _device_options(f):
    """train's device switches (their own group): --fused means nothing on a GPU (its step is always
    fused), --tf32 and --cuda-graph nothing on the CPU."""
    f = click.option("--fused/--no-fused", default=None,
                     help="CPU: memtrain's fused kernels (one pass per optimizer update and per bias + "
                          "activation); --no-fused runs the NumPy reference path.  [default: auto: fused from "
                          "100,000 parameters]")(f)
    f = click.option("--tf32/--no-tf32", default=None,
                     help="TF32 Tensor Cores for float32 matmuls on a GPU.  [default: off]")(f)
    return click.option("--cuda-graph/--no-cuda-graph", default=None,
                        help="Replay the GPU step as a CUDA graph.  [default: on where supported, never on the CPU]")(f)


_TRAIN_KEYS = {
    "name": "name", "seed": "seed", "device": "device", "layers": "model.layers", "activation": "model.activation",
    "output": "model.output", "dropout": "model.dropout", "dtype": "model.dtype", "optimizer": "optimizer.name",
    "lr": "optimizer.lr", "schedule": "schedule.name", "warmup": "schedule.warmup", "epochs": "training.epochs",
    "patience": "training.patience", "clip_norm": "training.clip_norm", "batch_size": "training.batch_size",
    "max_batch_size": "training.max_batch_size", "micro_batch_size": "training.micro_batch_size",
    "memory_limit": "training.memory_limit", "measure": "training.measure", "dataset": "data.dataset",
    "label_column": "data.label_column", "validation": "data.validation", "test": "data.test",
    "checkpoint_dir": "checkpoint.dir", "checkpoint_every": "checkpoint.every_steps", "resume": "checkpoint.resume",
    "output_dir": "output.dir", "metrics_port": "metrics.port", "metrics_host": "metrics.host",
    "metrics_linger": "metrics.linger", "cuda_graph": "training.cuda_graph", "tf32": "training.tf32",
    "fused": "training.fused",
}


@main.command()
@click.argument("job_file", required=False, type=click.Path(dir_okay=False))
@click.option("--name", help="Job name (the `job` label of its metrics; output dir runs/NAME).  "
              "[default: runs/memtrain-<hash of the config>]")
@model_options
@click.option("--optimizer", help="Optimizer name or lookahead:<inner>.")
@click.option("--lr", type=float, help="Learning rate.")
@click.option("--schedule", help="constant, step, exponential, cosine, linear, inverse_sqrt, cosine_restarts.")
@click.option("--warmup", type=click.IntRange(min=0), help="Steps of linear learning-rate warm-up.")
@click.option("--epochs", type=click.IntRange(min=1))
@click.option("--patience", type=click.IntRange(min=1), help="Early stopping after N epochs without a better "
              "validation loss (the best weights are kept).")
@click.option("--clip-norm", type=float, help="Clip the gradient's global norm to this value.")
@click.option("--batch-size", type=BATCH, help="auto (largest that fits, probed) or N.")
@click.option("--max-batch-size", type=click.IntRange(min=1), help="Upper bound for --batch-size auto.")
@click.option("--micro-batch-size", type=BATCH, help="auto or N: gradient accumulation below the batch size.")
@click.option("--memory-limit", type=SIZE, help="Memory the job must fit, e.g. 2GiB (default: free GPU memory, or on "
              "the CPU 25% of the available memory, at most 4 GiB); a fixed batch beyond it is refused.")
@click.option("--dataset", help="digits, a .npz/.csv/IDX file, or synthetic:classification(n,d,classes).")
@click.option("--label-column", help="The label column of a CSV data set (default: the last).")
@click.option("--validation", type=float, help="Share of the rows held out for validation, e.g. 0.2.")
@click.option("--test", type=float, help="Share of the rows held out for the test.")
@click.option("--device", help="cpu, cuda, cuda:N or auto.")
@click.option("--seed", type=int)
@click.option("--checkpoint-dir", help="Where checkpoints go (default OUTPUT_DIR/checkpoints).")
@click.option("--checkpoint-every", type=click.IntRange(min=0), help="Also checkpoint every N steps.")
@click.option("--resume/--no-resume", default=None, help="Resume from the newest checkpoint if there is one.  [default: resume]")
@click.option("--output-dir", help="Where the models go.  [default: runs/NAME]")
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), help="Serve Prometheus metrics on this port.")
@click.option("--metrics-host", help="Address to bind the metrics server to.  [default: 127.0.0.1]")
@click.option("--metrics-linger", type=click.FloatRange(min=0), help="Keep serving the final metrics this many seconds after the job ends.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: progress bar (on a terminal) and lines; json: one JSON object per line, its line in text.")
@click.option("--progress/--no-progress", default=True, help="The progress bar (only ever on a terminal).  "
              "[default: progress]")
@click.option("--measure", type=click.Choice(["sampled", "exact", "off"]),
              help="CPU memory measurement: the first steps (sampled), every step (exact, slower) or off.  "
              "[default: sampled]")
@_device_options
def train(job_file, log_format, progress, **flags):
    """Run a training job from JOB_FILE (TOML; see docs/job-file.md) and/or flags; flags
    override the file. Checkpoints every checkpoint.min_interval (10 s) at an epoch's end, after
    the last epoch and on SIGTERM/SIGINT (then exits 0); resumes from the newest checkpoint.

    \b
    Examples:
      memtrain train docs/example-job.toml
      memtrain train --layers 64,128,10 --dataset digits --batch-size auto --epochs 20
      memtrain train job.toml --metrics-port 9464 --log-format json
    """
    from memtrain.config import JobConfig, load, merge  # noqa: PLC0415 - the command loads the library when it runs: --help stays fast
    from memtrain.profiler.autobatch import auto_batch  # noqa: PLC0415 - the command loads the library when it runs: --help stays fast
    from memtrain.train.job import Job, JobFailed  # noqa: PLC0415 - the command loads the library when it runs: --help stays fast

    cfg = merge(load(job_file) if job_file else JobConfig(), {key: flags[flag] for flag, key in _TRAIN_KEYS.items()})
    try:
        Job(cfg, log_format=log_format, progress=progress, batch_solver=auto_batch).run()
    except JobFailed as exc:
        click.echo(f"memtrain: job failed: {exc}", err=True)
        sys.exit(exc.exit_code)


# -- evaluate / predict ---------------------------------------------------------------


@main.command()
@click.argument("model_file", type=click.Path(dir_okay=False))
@click.option("--dataset", help="digits, a .npz/.csv/IDX file, or synthetic:...  [default: the job's data set, "
              "recorded in the model]")
@click.option("--label-column", help="The label column of a .csv data set.  [default: the job's, for its data set]")
@click.option("--split", type=click.Choice(["test", "all"]),
              help="test: the job's held-out test rows (the ones it reported); all: every row, training rows "
              "included.  [default: test when the data set is the job's and it kept a test split, else all]")
@click.option("--device", default="cpu", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def evaluate(model_file, dataset, label_column, split, device, fmt):
    """Loss and accuracy (a linear output: RMSE, MAE and R^2) of a saved model
    (model-final.npz / model-best.npz), and which rows they are over: by default the
    job's held-out test rows.

    \b
    Examples:
      memtrain evaluate runs/digits-demo/model-best.npz
      memtrain evaluate runs/digits-demo/model-best.npz --split all --format json
      memtrain evaluate model-final.npz --dataset new.csv --label-column y
    """
    from memtrain import render  # noqa: PLC0415
    from memtrain.train.predict import describe, evaluate_model  # noqa: PLC0415

    r = evaluate_model(model_file, dataset, label_column=label_column, split=split, device=device)
    _echo(render.to_json(r) if fmt == "json" else describe(r))


@main.command()
@click.argument("model_file", type=click.Path(dir_okay=False))
@click.option("--input", "input_file", required=True, type=click.Path(dir_okay=False),
              help="A .npz (array X) or .csv (header row; features only, or --label-column to drop).")
@click.option("--label-column", help="A .csv column to ignore (the labels).")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False),
              help="Where predictions go: .csv (class and probabilities) or .npy (the raw outputs); "
              "written whole or not at all.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True)
def predict(model_file, input_file, label_column, out_file, device, batch_size):
    """Outputs of a saved model for new inputs (the job's standardisation is applied)."""
    from memtrain.train.predict import predict_file  # noqa: PLC0415

    n = predict_file(model_file, input_file, out_file, label_column=label_column, device=device,
                     batch_size=batch_size)
    _echo(f"wrote {n:,} predictions to {out_file}")


# compare and sweep (model selection), runs, and the service's commands live in their own modules,
# imported when one of their commands is looked up (`memtrain train` imports none of them)
main.commands = LazyCommands(main.commands, {
    "compare": "memtrain.cli_select:compare", "sweep": "memtrain.cli_select:sweep", "runs": "memtrain.cli_runs:runs",
    **{name: f"memtrain.cli_service:{attr}" for name, attr in (
        ("serve", "serve"), ("submit", "submit"), ("jobs", "jobs"), ("job", "job"), ("cancel", "cancel"),
        ("requeue", "requeue"), ("logs", "logs"), ("sweep-status", "sweep_status"))},
})


def entry() -> None:
    """The `memtrain` console script: main, then the process ends without the interpreter's
    teardown (memtrain/quickexit.py). In-process callers (click's CliRunner) call main."""
    run_and_exit(main)


if __name__ == "__main__":  # pragma: no cover
    entry()
