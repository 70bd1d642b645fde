"""`memtrain runs`: parse, call memtrain.select.runs, print.

Registered on the main group in memtrain/cli.py, whose group turns a
MemtrainError into one line "memtrain: error: ..." and exit 2.
"""

from __future__ import annotations

import click


@click.command()
@click.argument("directory", metavar="[DIR]", default="runs", required=False, type=click.Path(file_okay=True))
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--plot", type=click.Path(dir_okay=False),
              help="Write the training and validation loss curves of every run to this PNG (needs matplotlib).")
def runs(directory, fmt, plot):
    """List the runs under DIR, oldest first.

    One row per run under DIR (default: runs; or DIR is one run's directory):
    state, epochs, best validation loss and score, test score (accuracy, or RMSE
    for a regression: MAE and R^2 in json/csv), planned and measured memory,
    device and start time, read from each run's run.json and history.jsonl
    (docs/runs.md). On a service's state dir each job's run is named NAME (ID).

    \b
    Examples:
      memtrain runs
      memtrain runs runs/digits-demo --format json
      memtrain runs runs --plot runs.png
    """
    from memtrain.select import runs as rs  # noqa: PLC0415

    if plot:
        from memtrain.select.plots import _pyplot  # noqa: PLC0415

        _pyplot()  # no matplotlib: say so before reading anything
    report = rs.list_runs(directory)
    click.echo({"table": rs.table_text, "json": rs.table_json, "csv": rs.table_csv}[fmt](report))
    for note in report["notes"]:
        click.echo(f"note: {note}", err=True)
    if plot:
        n = rs.runs_plot(report, plot)
        click.echo(f"plot      {plot} ({n} run{'s' if n != 1 else ''})", err=True)
