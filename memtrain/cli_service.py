"""`memtrain serve` and its clients `submit`, `jobs`, `job`, `cancel`, `requeue`, `logs`, `sweep-status`:
parse, call, print.

Registered on the main group in memtrain/cli.py, whose group turns a MemtrainError into
one line "memtrain: error: ..." and exit status 2.
"""

from __future__ import annotations

import json
import sys

import click

from memtrain.cli_types import DEVICE_SIZE, DURATION, SIZE, SIZE_OR_ZERO
from memtrain.service import security
from memtrain.units import format_duration

STATES = ("queued", "running", "succeeded", "failed", "cancelled")


_STATE_OPTIONS = (
    click.option("--keep-checkpoints", default=10, show_default=True, type=click.IntRange(min=0), metavar="N",
                 help="Succeeded jobs whose checkpoints are kept (the newest N); older ones keep their model, "
                      "history and log only. Cancelled and failed jobs keep theirs (requeue resumes from them)."),
    click.option("--keep-checkpoints-hours", default=24.0, show_default=True, type=click.FloatRange(min=0),
                 metavar="H", help="...and for at most H hours after the job ended."),
    click.option("--recover", is_flag=True,
                 help="Rebuild a damaged or missing job store first: the damaged file is set aside, the rolling "
                      "backup (memtrain.sqlite.backup) restored, and every job found only in its job dir added "
                      "back; then serve."),
)


def _state_options(f):
    """--keep-checkpoints, --keep-checkpoints-hours and --recover: what becomes of the state dir."""
    for option in reversed(_STATE_OPTIONS):
        f = option(f)
    return f


def _limits(command):
    """serve's bounds on what a job, a user and a client may take."""
    command = click.option(
        "--user-quota", type=SIZE, metavar="SIZE",
        help="Memory the running jobs of one user (one token) may commit at once; a QUOTA in the token file "
             "overrides it for that user.  [default: no limit]")(command)
    command = click.option(
        "--request-timeout", type=click.FloatRange(min=0.1, max=3600), metavar="SECONDS",
        default=security.REQUEST_TIMEOUT, show_default=True,
        help="Seconds a client may take to send a whole request (headers and body); then 408 and close.")(command)
    return click.option(
        "--max-runtime", type=DURATION, default=format_duration(security.MAX_RUNTIME), show_default=True,
        help="Each job's run-time bound (per attempt) when it sets no training.max_runtime, and the most it "
             "may set: past it the job stops with a checkpoint and fails, saying why (90s, 30m, 2h, 1d).")(command)


@click.command()
@click.option("--state-dir", required=True, type=click.Path(file_okay=False),
              help="Where the SQLite state, each job's log, checkpoints and models live.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback needs --token-file.")
@click.option("--port", default=8470, show_default=True, type=click.IntRange(1, 65535))
@click.option("--devices", default="auto", show_default=True,
              help="auto (every GPU NVML lists, else the CPU), cpu, or cuda:0,cuda:1.")
@click.option("--budget", "budgets", multiple=True, type=DEVICE_SIZE, metavar="DEVICE=SIZE",
              help="Memory plans may commit on DEVICE (repeatable).  [default: MemAvailable or NVML free "
                   "memory now, less a reserve]")
@click.option("--token-file", type=click.Path(dir_okay=False),
              help="The bearer token every request but /healthz and the API's docs must send: one token, or a line "
                   "'NAME TOKEN [QUOTA]' per user (docs/service.md).")
@click.option("--data-root", "data_roots", multiple=True, type=click.Path(file_okay=False, exists=True),
              help="Jobs may read data files only under these dirs (repeatable). Without one, only the "
                   "built-in data sets (digits, synthetic:...).")
@click.option("--max-jobs-per-device", type=click.IntRange(min=1),
              help="Jobs running at once on one device.  [default: the CPU's cores; 8 per GPU]")
@click.option("--head-wait", default=300.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds smaller jobs may pass a queued job that does not fit yet; then nothing passes it.")
@click.option("--max-attempts", default=2, show_default=True, type=click.IntRange(min=1),
              help="Runs of a job killed by a signal it did not ask for (each resumes from its checkpoint).")
@click.option("--overhead", type=SIZE_OR_ZERO, metavar="SIZE",
              help="Per-process overhead of a CPU job.  [default: measured once per machine, as `estimate` counts it]")
@click.option("--job-metrics-host", default="127.0.0.1", show_default=True,
              help="Address each job's metrics exporter listens on (0.0.0.0 in a container).")
@click.option("--job-metrics-address", metavar="HOST",
              help="Host name Prometheus reaches the jobs' exporters at, in /prometheus/targets.  "
                   "[default: --job-metrics-host]")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where jobs run: processes on this machine, admitted by the service, or a Ray cluster that "
                   "places each job by its plan (pip install 'memtrain[ray]'; docs/cluster.md).")
@click.option("--ray-address", help="Ray cluster for --executor ray: host:port, auto or local.  [default: "
                                    "RAY_ADDRESS, else a cluster `ray start` began here, else a new local instance]")
@click.option("--storage", type=click.Path(file_okay=False),
              help="Where each job's checkpoints, output and log go; with --executor ray every node must see it "
                   "at this path.  [default: the state dir]")
@_limits
@_state_options
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve(executor, ray_address, budgets, **options):
    """Run the training service: an HTTP API (OpenAPI at /docs, status page at /) that
    plans each submitted job and starts it when its plan fits a device's budget.

    \b
    Examples:
      memtrain serve --state-dir runs/service --budget cpu=3GiB
      memtrain serve --state-dir /srv/memtrain --host 0.0.0.0 --token-file token --data-root /data
      memtrain serve --state-dir /srv/memtrain --token-file users --user-quota 8GiB
      memtrain serve --state-dir runs/service --executor ray --ray-address auto --storage /shared/memtrain
      memtrain serve --state-dir runs/service --recover
    """
    if ray_address is not None and executor != "ray":
        raise click.UsageError("--ray-address: only with --executor ray")
    from memtrain.service.server import run  # noqa: PLC0415

    run(executor=executor, ray_address=ray_address, budgets=dict(budgets), echo=lambda t: click.echo(t, err=True),
        **options)  # every other option by its name: settings_from's keywords


_server = click.option("--server", envvar="MEMTRAIN_SERVER", default="http://127.0.0.1:8470", show_default=True,
                       help="The service's URL (or MEMTRAIN_SERVER). The token comes from MEMTRAIN_TOKEN.")


def _client(server):
    from memtrain.service.client import Client  # noqa: PLC0415

    return Client(server)


def _fmt(default="table"):
    return click.option("--format", "fmt", type=click.Choice(["table", "json"]), default=default, show_default=True)


@click.command()
@click.argument("job_file", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a key of the job file (of a sweep's base job; repeatable), e.g. --set training.epochs=5.")
@click.option("--priority", type=int, metavar="N",
              help="Higher starts first; jobs of one priority in submission order.  [default: the job file's "
                   "priority, else 0]")
@click.option("--format", "fmt", type=click.Choice(["id", "json"]), default="id", show_default=True)
@click.option("--wait", is_flag=True, help="A sweep: wait until its trials have ended, then print them ranked.")
@_server
def submit(job_file, sets, priority, fmt, wait, server):
    """Submit a job file, or a sweep file (SWEEP.toml, as `memtrain sweep` reads it), to the service;
    prints the job's or the sweep's id (--format json: the whole answer). A sweep's same-shape trials
    run as trial arrays, one process each; `memtrain sweep-status ID` ranks its trials.

    \b
    Examples:
      memtrain submit job.toml --set training.batch_size=auto
      memtrain submit job.toml --priority 10
      memtrain submit sweep.toml --wait
    """
    from memtrain.service.client import load_submission  # noqa: PLC0415

    kind, data = load_submission(job_file, sets)
    if priority is not None:
        data["priority"] = priority
    client = _client(server)
    out = client.submit(data) if kind == "job" else client.submit_sweep(data)
    click.echo(json.dumps(out) if fmt == "json" else out["id"])
    if kind == "sweep" and fmt == "id":
        from memtrain.service.client import sweep_submitted_text  # noqa: PLC0415

        click.echo(sweep_submitted_text(out), err=True)
    if kind == "sweep" and wait:
        _print_sweep(client.wait_sweep(out["id"]), "table")


@click.command("sweep-status")
@click.argument("sweep_id")
@_fmt()
@_server
def sweep_status(sweep_id, fmt, server):
    """A submitted sweep's ended trials ranked by its validation metric (as `memtrain sweep` prints
    them), then every trial's job, state and run dir."""
    _print_sweep(_client(server).sweep(sweep_id), fmt)


def _print_sweep(rep, fmt):
    from memtrain.service.client import sweep_text  # noqa: PLC0415

    click.echo(json.dumps(rep, indent=1) if fmt == "json" else sweep_text(rep))


@click.command()
@click.option("--state", type=click.Choice(STATES), help="Only jobs in this state.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(min=0),
              help="The newest N jobs (0: all of them).")
@_fmt()
@_server
def jobs(state, limit, fmt, server):
    """List the service's jobs, newest first: state, device, planned bytes, batch, progress, age."""
    from memtrain.service.client import jobs_table  # noqa: PLC0415

    rows, more = _client(server).jobs(state, limit or None)
    click.echo(json.dumps(rows, indent=1) if fmt == "json" else jobs_table(rows))
    if more:
        click.echo(f"(the newest {limit} shown; --limit 0 lists all)", err=True)


@click.command()
@click.argument("job_id")
@_fmt()
@_server
def job(job_id, fmt, server):
    """Show one job: its plan, state, progress, and result or reason."""
    from memtrain.service.client import job_text  # noqa: PLC0415

    j = _client(server).job(job_id)
    click.echo(json.dumps(j, indent=1) if fmt == "json" else job_text(j))


@click.command()
@click.argument("job_id")
@click.option("--trial", metavar="TRIAL_ID",
              help="Only this trial of a sweep's job: in a trial array it stops with a checkpoint, the others "
                   "train on.")
@_server
def cancel(job_id, trial, server):
    """Cancel a job (a whole trial array): a queued one at once; a running one checkpoints, then
    stops. --trial: one trial of it.

    \b
    Examples:
      memtrain cancel 1a2b3c4d
      memtrain cancel 1a2b3c4d --trial 5e6f7a8b9c
    """
    if trial is not None:
        t = _client(server).cancel_trial(job_id, trial)
        click.echo(f"{job_id} trial {t['trial']}: {t['state']}")
        return
    j = _client(server).cancel(job_id)
    if j["state"] == "running":
        note = "running; stopping (it checkpoints first)"
    elif j["state"] == "cancelled":
        note = "cancelled"
    else:
        note = f"already {j['state']}; nothing to cancel"
    click.echo(f"{j['id']}: {note}")


@click.command()
@click.argument("job_id")
@_server
def requeue(job_id, server):
    """Put a cancelled or failed job back in the queue under the same id: it resumes from its
    newest good checkpoint and ends as if it had never been interrupted.

    \b
    Examples:
      memtrain cancel 1a2b3c4d && memtrain requeue 1a2b3c4d
    """
    j = _client(server).requeue(job_id)
    click.echo(f"{j['id']}: {j['state']}; resumes from its checkpoint")


@click.command()
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
@click.option("--lines", "-n", default=200, show_default=True, type=click.IntRange(min=0),
              help="Lines of the log file from the end to start with.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: the lines `memtrain train` prints; json: the job's raw JSON events.")
@_server
def logs(job_id, follow, lines, fmt, server):
    """Print a job's log as `memtrain train` prints it (--format json: its JSON events);
    --follow streams it until the job ends.

    \b
    Examples:
      memtrain logs 4dda1a3d --follow
      memtrain logs 4dda1a3d --format json -n 20
    """
    from memtrain.service.logtext import human_lines, lines_of  # noqa: PLC0415

    out = _client(server).log(job_id, lines, follow)
    chunks = out if follow else [out]
    if fmt == "json":
        for chunk in chunks:
            sys.stdout.write(chunk)
            sys.stdout.flush()
        return
    for line in human_lines(lines_of(chunks)):
        click.echo(line)


COMMANDS = (serve, submit, jobs, job, cancel, requeue, logs, sweep_status)
