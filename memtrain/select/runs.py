"""`memtrain runs`: the runs under a directory, one row each, and their loss curves.

A run is a directory with a run.json (written by memtrain.train.history). Runs an
older memtrain wrote have no run.json: a finished one is listed from its
model-final.json (state, epochs, test accuracy, best epoch from model-best.json;
no curves, no memory numbers), and one that never finished (checkpoints only) is
skipped with a note. matplotlib is imported only to plot (memtrain.select.plots).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from memtrain.errors import MemtrainError
from memtrain.nn.scores import ALL as SCORES
from memtrain.train.history import RUN, HistoryError, RunHistory, best
from memtrain.units import format_bytes

_MAX_DEPTH = 4  # runs/NAME/compare/OPTIMIZER: compare and sweep nest their runs
_LEGACY = "model-final.json"


@dataclass
class RunRow:
    """One row of `memtrain runs`: the JSON objects and CSV columns are these fields."""

    run: str  # the run directory, relative to DIR
    name: str | None = None
    job_id: str | None = None  # a service job's id (memtrain runs STATE_DIR)
    state: str | None = None  # running | finished | stopped | failed | interrupted
    epochs: int | None = None
    epochs_planned: int | None = None
    best_epoch: int | None = None
    best_val_loss: float | None = None
    best_val_accuracy: float | None = None
    best_val_rmse: float | None = None  # regression (a linear output): the scores at best_epoch
    best_val_mae: float | None = None
    best_val_r2: float | None = None
    test_loss: float | None = None
    test_accuracy: float | None = None
    test_rmse: float | None = None
    test_mae: float | None = None
    test_r2: float | None = None
    planned_bytes: int | None = None
    measured_peak_bytes: int | None = None
    device: str | None = None
    dataset: str | None = None
    optimizer: str | None = None
    batch_size: int | None = None
    started: str | None = None
    ended: str | None = None
    message: str | None = None
    source: str = RUN  # run.json, or model-final.json for a run an older memtrain wrote
    path: str = ""


FIELDS = tuple(f.name for f in dataclasses.fields(RunRow))


def list_runs(directory) -> dict:
    """{"dir", "runs": [row dicts, oldest first], "notes": [why a directory was skipped]}.
    `directory` may hold runs (at any depth up to 4) or be one run."""
    root = Path(directory)
    if not root.exists():
        raise MemtrainError(f"DIR: {str(root)!r} does not exist (a job writes its run to runs/NAME; "
                            "pass the directory that holds them)")
    if not root.is_dir():
        raise MemtrainError(f"DIR: {str(root)!r} is not a directory (pass a run directory or one that holds runs)")
    rows, notes = [], []
    for d in _run_dirs(root, notes):
        try:
            rows.append(_row(d, root, notes))
        except HistoryError as exc:
            notes.append(f"skipped {d}: {exc}")
    rows.sort(key=lambda r: (r.started or r.ended or "", r.run))
    return {"dir": str(root), "runs": [dataclasses.asdict(r) for r in rows], "notes": notes}


def _run_dirs(root: Path, notes: list) -> list[Path]:
    found = []
    for here, subdirs, files in os.walk(root):
        depth = len(Path(here).relative_to(root).parts)
        subdirs[:] = sorted(s for s in subdirs if not s.startswith(".") and s != "checkpoints" and depth < _MAX_DEPTH)
        if RUN in files or _LEGACY in files:
            found.append(Path(here))
        elif "checkpoints" in os.listdir(here) and "history.jsonl" not in files and not _holds_run(here, subdirs):
            notes.append(f"skipped {here}: checkpoints but no run.json or {_LEGACY} "
                         "(an unfinished run from an older memtrain)")
        elif "history.jsonl" in files:
            found.append(Path(here))
    return found


def _holds_run(here, subdirs) -> bool:
    """A directory whose run is one level down (a service job: jobs/ID/{checkpoints,output}) is no
    unfinished run of its own."""
    return any((Path(here) / s / RUN).exists() or (Path(here) / s / "history.jsonl").exists() for s in subdirs)


def _service_job(d: Path) -> dict:
    """{"name", "job_id"} of a service job's run (STATE_DIR/jobs/ID/output) that an older memtrain
    wrote without them, from the launch.json beside it; {} for any other run."""
    spec = d.parent / "launch.json"
    if d.name != "output" or not spec.is_file():
        return {}
    try:
        launch = json.loads(spec.read_text())
        return {"name": launch["config"]["name"], "job_id": launch["job_id"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _row(d: Path, root: Path, notes: list) -> RunRow:
    rel = str(d.relative_to(root)) if d != root else d.name
    h = RunHistory(d, warn=notes.append)  # garbled history lines: skipped, the run listed, a note says so
    info = h.info()
    if info is None and (d / _LEGACY).exists():
        return _legacy_row(d, rel)
    info = info or {"name": d.name, "state": "running"}  # a history without run.json: written mid-start
    if not info.get("job_id"):
        info = {**info, **_service_job(d)}
    records = h.read()
    b = best(records)
    row = RunRow(run=rel, path=str(d.resolve()), **{k: info.get(k) for k in FIELDS if k in info and k not in
                                                    ("run", "path", "source")})
    row.epochs = len(records) if records or row.epochs is None else row.epochs
    if b is not None:
        row.best_epoch, row.best_val_loss = b["epoch"], b["val_loss"]
        for k in SCORES:
            setattr(row, f"best_val_{k}", b.get(f"val_{k}"))
    if row.measured_peak_bytes is None:
        peaks = [r["measured_peak_bytes"] for r in records if r.get("measured_peak_bytes") is not None]
        row.measured_peak_bytes = max(peaks) if peaks else None
    if row.planned_bytes is None and records:
        row.planned_bytes = records[-1].get("planned_bytes")
    if row.state == "running" and not _alive(info):
        row.state = "interrupted"
    return row


def _alive(info: dict) -> bool:
    """A run marked running is alive unless its process, on this host, is gone (killed or crashed)."""
    pid = info.get("pid")
    if not isinstance(pid, int) or info.get("host") != socket.gethostname():
        return True  # another machine's run: we cannot tell
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _legacy_row(d: Path, rel: str) -> RunRow:
    meta = _json(d / _LEGACY)
    best_meta = _json(d / "model-best.json") if (d / "model-best.json").exists() else {}
    test = meta.get("test") or {}
    opt = meta.get("optimizer")
    ended = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((d / _LEGACY).stat().st_mtime))
    return RunRow(run=rel, name=meta.get("job"), state="finished", epochs=meta.get("epochs"),
                  best_epoch=best_meta.get("epoch"), best_val_loss=best_meta.get("val_loss"),
                  **{f"test_{k}": test.get(k) for k in ("loss", *SCORES)} if isinstance(test, dict) else {},
                  dataset=meta.get("dataset"), optimizer=opt if isinstance(opt, str) else None,
                  batch_size=meta.get("batch_size"), ended=ended, source=_LEGACY, path=str(d.resolve()))


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise HistoryError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise HistoryError(f"{path}: expected a JSON object")
    return data


# -- output ----------------------------------------------------------------------------------------


def table_text(report: dict) -> str:
    from memtrain.render import _table, score_cell  # noqa: PLC0415

    rows = report["runs"]
    if not rows:
        return f"no runs under {report['dir']}"
    headers = ["run", "state", "epochs", "best loss (ep)", "val", "test", "planned", "peak", "device",
               "date (UTC)"]
    body = []
    for r in rows:
        epochs = "-" if r["epochs"] is None else (f"{r['epochs']}/{r['epochs_planned']}" if r["epochs_planned"]
                                                  else str(r["epochs"]))
        loss = "-" if r["best_val_loss"] is None else f"{r['best_val_loss']:.4f} ({r['best_epoch']})"
        when = (r["started"] or r["ended"] or "-").replace("T", " ")[:16]
        body.append([_cut(_label(r), 28), r["state"] + ("*" if r["source"] != RUN else ""), epochs, loss,
                     score_cell(r, "best_val_", r2=False), score_cell(r, "test_", r2=False), _b(r["planned_bytes"]),
                     _b(r["measured_peak_bytes"]), r["device"] or "-", when])
    out = _table(headers, body, ["<", "<"] + [">"] * 6 + ["<", "<"])
    if any(r["source"] != RUN for r in rows):
        out += f"\n* written by an older memtrain: read from {_LEGACY} (no history or memory numbers)"
    return out


def table_json(report: dict) -> str:
    return json.dumps(report, indent=2)


def table_csv(report: dict) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    for r in report["runs"]:
        w.writerow({k: "" if r[k] is None else r[k] for k in FIELDS})
    return out.getvalue().rstrip("\n")


def _label(r: dict) -> str:
    """The run's directory, or for a service job its name and id (its directory is jobs/ID/output)."""
    return f"{r['name']} ({r['job_id']})" if r.get("job_id") else r["run"]


def _b(v) -> str:
    return "-" if v is None else format_bytes(v)


def _cut(s: str, n: int) -> str:
    return s if len(s) <= n else "..." + s[-(n - 3):]


# -- plot -----------------------------------------------------------------------------------------


def runs_plot(report: dict, path) -> int:
    """Training (dashed) and validation (solid) loss per epoch of every run with a
    history, one colour per run. Returns how many runs were drawn."""
    from memtrain.select.plots import _pyplot  # noqa: PLC0415

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 5.5))
    colours = plt.get_cmap("tab20" if len(report["runs"]) > 10 else "tab10")
    drawn = 0
    for r in report["runs"]:
        recs = RunHistory(r["path"], warn=lambda m: None).read() if r["source"] == RUN else []  # noted in the list
        if not recs:
            continue
        c = colours(drawn % colours.N)
        ax.plot([x["epoch"] for x in recs if "train_loss" in x], [x["train_loss"] for x in recs if "train_loss" in x],
                linestyle="--", color=c, alpha=0.7, label=f"{r['run']} (training)")
        val = [x for x in recs if "val_loss" in x]
        if val:
            ax.plot([x["epoch"] for x in val], [x["val_loss"] for x in val], color=c, label=f"{r['run']} (validation)")
        drawn += 1
    if not drawn:
        plt.close(fig)
        raise MemtrainError(f"plot: no run under {report['dir']} has a history.jsonl to draw")
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(f"runs under {report['dir']}: training (dashed) and validation (solid) loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise MemtrainError(f"plot: cannot write {path} ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)
    return drawn
