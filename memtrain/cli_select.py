"""`memtrain compare` and `memtrain sweep`: parse, call memtrain.select, print.

Registered on the main group in memtrain/cli.py (`main.add_command(compare)`),
whose group turns a MemtrainError into one line "memtrain: error: ..." and exit 2.
"""

from __future__ import annotations

import os

import click

from memtrain.cli_types import SIZE


def _echo(text):
    click.echo(text)


def _log(text):
    click.echo(text, err=True)


@click.command()
@click.option("--config", required=True, type=click.Path(dir_okay=False), help="Job file (TOML): model, data, seed, epochs.")
@click.option("--optimizers", default=None, help="Comma-separated names, e.g. adam,nadam,sgd,lookahead:adam.  "
              "[default: all 12]")
@click.option("--lr", type=float, help="One learning rate for every optimizer (default: each optimizer's own).")
@click.option("--epochs", type=click.IntRange(min=1), help="Epoch budget (default: the job file's).")
@click.option("--target-accuracy", type=click.FloatRange(min=0, max=1, min_open=True),
              help="Also report the first epoch whose validation accuracy reaches this, e.g. 0.9.")
@click.option("--output-dir", help="Models go to OUTPUT_DIR/compare/<optimizer>.  [default: runs/NAME]")
@click.option("--fuse/--no-fuse", default=True, show_default=True,
              help="Train the optimizers as one trial array in this process (same results, each run's dir as "
              "alone); --no-fuse trains them one after another, one job each.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write validation-loss curves and memory bars to this PNG (needs matplotlib).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
def compare(config, optimizers, lr, epochs, target_accuracy, output_dir, fuse, plot, fmt):
    """Train the job in --config once per optimizer (same model, data, seed and epochs)
    and print one table ranked by the best validation loss. The test score is
    reported, never used to rank (accuracy; RMSE, MAE and R^2 for a linear output).

    \b
    Examples:
      memtrain compare --config job.toml --optimizers adam,nadam,sgd,momentum --target-accuracy 0.9
      memtrain compare --config job.toml --epochs 10 --plot compare.png --format csv
      memtrain compare --config job.toml --no-fuse     # one job per optimizer
    """
    from memtrain.config import load  # noqa: PLC0415
    from memtrain.profiler.estimate import all_optimizer_names  # noqa: PLC0415
    from memtrain.select import compare as cmp  # noqa: PLC0415

    if plot:
        from memtrain.select.plots import _pyplot  # noqa: PLC0415

        _pyplot()  # no matplotlib: say so before training anything
    cfg = load(config)
    names = cmp.parse_optimizers(optimizers) if optimizers is not None else all_optimizer_names()
    rep = cmp.compare(cfg, names, lr=lr, epochs=epochs, output_dir=output_dir or f"runs/{cfg.name}",
                      target_accuracy=target_accuracy, log=_log if fmt == "table" else None, fuse=fuse)
    _echo({"table": cmp.table_text, "json": cmp.table_json, "csv": cmp.table_csv}[fmt](rep))
    if plot:
        from memtrain.select.plots import compare_plot  # noqa: PLC0415

        compare_plot(rep, plot, title=f"{cfg.name}: {len(names)} optimizers")
        _log(f"plot      {plot}")


def _sweep_budget(ex, device: str, memory_limit):
    """(device kind, budget, where it came from): one node of the cluster, or this machine."""
    if ex is not None:
        from memtrain.select.runner import cluster_budget  # noqa: PLC0415

        return cluster_budget(ex, device, memory_limit)
    from memtrain.backend import get_backend  # noqa: PLC0415
    from memtrain.memory.budget import device_budget  # noqa: PLC0415

    backend = get_backend(device)
    if memory_limit is not None:
        return backend.kind, memory_limit, "--memory-limit"
    return (backend.kind, *device_budget(backend))


@click.command()
@click.argument("sweep_file", type=click.Path(dir_okay=False))
@click.option("--output-dir", help="Where results.jsonl and each trial's output go.  [default: runs/SWEEP_NAME]")
@click.option("--memory-limit", type=SIZE, help="Memory the trials running at once must fit together, e.g. 4GiB.  "
              "[default: free memory now]")
@click.option("--workers", type=click.IntRange(min=1), help="At most this many trials at once.  [default: CPU count]")
@click.option("--resume", is_flag=True, help="Continue: skip the trials already in results.jsonl.")
@click.option("--dry-run", is_flag=True, help="Print the memory plan and schedule only.")
@click.option("--fuse/--no-fuse", default=True, show_default=True,
              help="Train trials of one shape (layers, activation, output, dtype, batch, data set and seed) as one "
              "trial array in one worker; --no-fuse runs each trial as its own job.")
@click.option("--metrics-port", type=click.IntRange(min=1, max=65535),
              help="Trial i serves metrics on PORT+i as job <sweep>-<trial id>; an array on its first's, by trial.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write the validation metric against each hyper-parameter to this PNG.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where trials run: local worker processes, started as their plans fit, or a Ray cluster that "
              "places each trial by its planned memory (pip install 'memtrain[ray]'; docs/cluster.md).")
@click.option("--ray-address", help="Ray cluster to use with --executor ray: host:port, auto or local.  "
              "[default: RAY_ADDRESS, else a cluster `ray start` began here, else a new local instance]")
def sweep(sweep_file, output_dir, memory_limit, workers, resume, dry_run, fuse, metrics_port, plot, fmt, executor,
          ray_address):
    """Grid or random search over a job's hyper-parameters (SWEEP_FILE: see
    docs/choosing-an-optimizer.md). Every trial's memory is planned first; trials
    that cannot fit are skipped, the rest run concurrently while their plans fit
    the budget together. Trials are ranked on the validation set only.

    \b
    Examples:
      memtrain sweep sweep.toml --dry-run
      memtrain sweep sweep.toml --memory-limit 2GiB --workers 2 --plot sweep.png
      memtrain sweep sweep.toml --resume
      memtrain sweep sweep.toml --executor ray --ray-address auto --output-dir /shared/runs/s
    """
    from memtrain.select import space as sp  # noqa: PLC0415
    from memtrain.select import sweep as sw  # noqa: PLC0415

    if plot:
        from memtrain.select.plots import _pyplot  # noqa: PLC0415

        _pyplot()
    s = sp.load_sweep(sweep_file)
    if ray_address is not None and executor != "ray":
        raise click.UsageError("--ray-address: only with --executor ray")
    ex = None
    if executor == "ray":
        from memtrain.launch.ray import RayExecutor  # noqa: PLC0415

        ex = RayExecutor(ray_address)
    try:
        kind, budget, source = _sweep_budget(ex, s.base.device, memory_limit)
        rep = sw.run_sweep(s, output_dir=output_dir or f"runs/{s.name}", budget=budget, budget_source=source,
                           workers=workers or (None if ex else os.cpu_count() or 1), device_kind=kind,
                           resume=resume, dry_run=dry_run, metrics_port=metrics_port, log=_echo if dry_run else _log,
                           executor=ex, fuse=fuse)
    finally:
        if ex is not None:
            ex.close()
    if not dry_run:
        _print_sweep(s, rep, fmt, plot)


def _print_sweep(s, rep, fmt, plot):
    from memtrain.select import sweep as sw  # noqa: PLC0415

    if fmt == "json":
        from memtrain.render import to_json  # noqa: PLC0415

        _echo(to_json(rep))
    else:
        _echo(sw.report_text(rep))
    if plot:
        from memtrain.select.plots import sweep_plot  # noqa: PLC0415

        log_scale = [n for n, d in s.space.items() if (isinstance(d, dict) and "log_uniform" in d) or n == "lr"]
        sweep_plot(rep, plot, log_scale=log_scale)
        _log(f"plot      {plot}")
