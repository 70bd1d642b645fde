"""The page of one job at /jobs/{id}/page: its state, plan against measured memory, why it waits,
its curves (loss, accuracy or RMSE/MAE/R^2, memory over time, throughput), checkpoints, events
and config. Server-rendered HTML with inline SVG charts (svg.py): no JavaScript, nothing loaded
from elsewhere, so it works on a machine with no internet. It reloads itself while the job is
queued or running.

Everything it shows is read from files the job already writes (output/history.jsonl,
memory.jsonl, job.log, checkpoints/) and the job's row: a page view changes nothing.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

from memtrain.launch.worker import MEMORY
from memtrain.service import svg
from memtrain.service.client import progress_text, result_text
from memtrain.service.core import iso, tail
from memtrain.service.logtext import human_lines
from memtrain.service.page import REFRESH_SECONDS, STYLE
from memtrain.service.sweeps import trial_views
from memtrain.train.checkpoint import list_checkpoints
from memtrain.train.history import HistoryError, RunHistory
from memtrain.units import format_bytes

# log events the page lists (a checkpoint is counted in the checkpoints table instead); "plan" is
# logged once per attempt, so a retried job shows each of its starts
EVENTS = ("plan", "resume", "oom_recovery", "cuda_graph_off", "warning", "stopped", "autobatch", "note", "already_finished",
          "summary")
_e = html.escape
_PAGE_STYLE = STYLE + """
.grid2{display:grid;grid-template-columns:repeat(auto-fill,minmax(570px,1fr));gap:10px}
.chart{border:1px solid #ddd;background:#fff}.chart .ct{font-weight:600;font-size:13px}
.chart .tick,.chart .lg{font-size:11px;fill:#444}.chart .axis{stroke:#888}.chart .grid{stroke:#eee}
.chart .empty{fill:#999}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px}dt{color:#555}dd{margin:0}
pre{background:#f6f6f6;padding:8px;max-width:1150px;overflow:auto}
td.t{white-space:nowrap}
"""


def render_job(service, job_id: str) -> str | None:
    """The job's page, or None when there is no such job."""
    row = service.store.get(job_id)
    if row is None:
        return None
    view = service.job_view(row)
    run = Path(row.run_dir)
    try:
        history = RunHistory(run / "output").read()
    except HistoryError:  # corrupt beyond a torn last line: the page still shows the rest
        history = []
    active = row.state in ("queued", "running")
    refresh = f"<meta http-equiv='refresh' content='{REFRESH_SECONDS}'>" if active else ""
    title = f"{row.name} ({row.id})"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'>{refresh}<title>{_e(title)} - memtrain serve</title>"
             f"<style>{_PAGE_STYLE}</style></head><body>",
             f"<p><a href='/'>&larr; all jobs</a> &middot; <a href='/jobs/{_e(row.id)}'>JSON</a> &middot; "
             f"<a href='/jobs/{_e(row.id)}/log'>log</a></p>",
             f"<h1>{_e(row.name)} <small>{_e(row.id)}</small> "
             f"<span class='{_e(row.state)}'>{_e(row.state)}</span></h1>",
             _overview(service, row, view, history),
             _trials(service, row),
             "<h2>Curves</h2><div class='grid2'>", *_charts(row, history, _samples(run / MEMORY), service), "</div>",
             "<h2>Memory: the plan by category against what was measured</h2>", _memory(service, row, view, history),
             "<h2>Checkpoints</h2>", _checkpoints(run / "checkpoints"),
             "<h2>Events</h2>", _events(row, run / "job.log"),
             f"<h2>Log <small>the last lines, as <code>memtrain logs {_e(row.id)}</code> prints them; "
             f"<a href='/jobs/{_e(row.id)}/log'>the JSON events</a></small></h2>", _log(run / "job.log"),
             "<h2>Config</h2>", f"<pre>{_e(json.dumps(row.config, indent=1))}</pre>",
             f"<p><small>{'Reloads every %d s while the job is active.' % REFRESH_SECONDS if active else ''}"
             "</small></p></body></html>"]
    return "".join(parts)


# -- overview ----------------------------------------------------------------------------------


def _trials(service, row) -> str:
    """A sweep's job: each of its trials (an array's several) with its state and run dir."""
    if not row.sweep:
        return ""
    body = "".join(f"<tr><td>{_e(t['trial'])}</td><td>{_e(json.dumps(t['params']))}</td>"
                   f"<td class='{_e(t['state'])}'>{_e(t['state'])}</td><td><code>{_e(t['run_dir'])}</code></td></tr>"
                   for t in trial_views(service, row))
    return (f"<h2>Trials <small>of sweep <a href='/sweeps/{_e(row.sweep)}'>{_e(row.sweep)}</a>, ranked there; "
            f"<code>memtrain cancel {_e(row.id)} --trial ID</code> stops one</small></h2>"
            f"<table><tr><th>trial</th><th>parameters</th><th>state</th><th>run dir</th></tr>{body}</table>")


def _overview(service, row, view, history) -> str:
    now = time.time()
    items = [("state", row.state), ("device", row.device or "-"),
             ("batch", _batch(row, history)), ("attempts", f"{row.attempts} of {row.max_attempts}"),
             ("submitted", iso(row.submitted_at)), ("queued for", _queued_for(row, now)),
             ("ran for", _ran_for(row, now)), ("progress", progress_text(view))]
    if row.state == "queued":
        items.insert(1, ("position", _position(service, row)))
    if row.ended_at:
        items.append(("ended", iso(row.ended_at)))
    r = row.result or {}
    if r.get("steps") is not None:
        items.append(("result", result_text(r)))
    out = ["<dl>"] + [f"<dt>{_e(k)}</dt><dd>{_e(str(v))}</dd>" for k, v in items]
    reason = view["reason"]
    if reason and row.state == "queued" and reason.startswith("waiting: "):
        # every reason it waits, one per line (the status page shows them joined by "; ")
        why, _, earlier = reason[len("waiting: "):].partition(" (earlier: ")
        lis = "".join(f"<li>{_e(w)}</li>" for w in why.split("; "))
        out.append(f"<dt>waiting for</dt><dd><ul>{lis}</ul>{_e('earlier: ' + earlier.rstrip(')')) if earlier else ''}"
                   "</dd>")
    elif reason:
        out.append(f"<dt>reason</dt><dd>{_e(reason)}</dd>")
    out.append("</dl>")
    return "".join(out)


def _batch(row, history) -> str:
    size = row.batch_size
    text = str(size) if size else "not chosen yet"
    if row.batch_request == "auto":
        text += " (auto: the largest that fits the budget)"
    return text


def _position(service, row) -> str:
    queued = [j.id for j in service.store.list("queued")]  # FIFO: submission order
    n = queued.index(row.id) + 1 if row.id in queued else None
    return "-" if n is None else f"{n} of {len(queued)} queued (first come, first served; smaller jobs may pass)"


def _queued_for(row, now) -> str:
    end = row.started_at if row.started_at else (now if row.state == "queued" else row.ended_at or now)
    return duration(end - row.submitted_at) + (" so far" if row.state == "queued" else "")


def _ran_for(row, now) -> str:
    if not row.started_at:
        return "-"
    end = row.ended_at or now
    return duration(end - row.started_at) + (" so far" if row.state == "running" else "")


def duration(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


# -- charts ------------------------------------------------------------------------------------


def _charts(row, history, samples, service) -> list:
    ep = [r["epoch"] for r in history]
    col = lambda key: [(e, r.get(key)) for e, r in zip(ep, history)]  # noqa: E731
    charts = [svg.Chart("Loss per epoch", [svg.Series("training", col("train_loss"), svg.COLORS[0], dashed=True),
                                           svg.Series("validation", col("val_loss"), svg.COLORS[1])],
                        x_label="epoch")]
    if any(r.get("val_rmse") is not None for r in history):
        charts.append(svg.Chart("Validation RMSE and MAE (regression)",
                                [svg.Series("RMSE", col("val_rmse"), svg.COLORS[2]),
                                 svg.Series("MAE", col("val_mae"), svg.COLORS[4])], x_label="epoch", y_zero=True))
        charts.append(svg.Chart("Validation R^2", [svg.Series("R^2", col("val_r2"), svg.COLORS[3])], x_label="epoch"))
    else:
        charts.append(svg.Chart("Validation accuracy", [svg.Series("accuracy", col("val_accuracy"), svg.COLORS[2])],
                                x_label="epoch", y_format=lambda v: f"{v:.0%}" if abs(v) >= 0.1 else f"{v:.1%}"))
    charts.append(_memory_chart(row, history, samples, service))
    charts.append(svg.Chart("Throughput", [svg.Series("samples/s", col("samples_per_second"), svg.COLORS[0])],
                            x_label="epoch", y_zero=True, y_format=lambda v: f"{v:,.0f}"))
    return [svg.render(c) for c in charts]


def _memory_chart(row, history, samples, service) -> svg.Chart:
    """Resident memory of the job's processes over time against the plan (and the plan plus the
    measured process overhead the service reserves), with the plan's own measured peak per epoch."""
    t0 = samples[0][0] if samples else (history[0].get("time") if history else None)
    rss = [(t - t0, b) for t, b in samples] if t0 else []
    peaks = [(r["time"] - t0, r.get("measured_peak_bytes")) for r in history if t0 and r.get("time")]
    planned = row.planned_bytes
    levels = [("plan", planned, "#8ab4f8")]
    peak = svg.Series("plan, measured peak", peaks, svg.COLORS[2])
    if row.device_kind == "cuda":  # the plan is on the GPU: the host's resident memory is no measure of it
        return svg.Chart("GPU memory over time (CuPy pool peak per epoch)", [peak], x_label="seconds since the first sample",
                         levels=levels, y_zero=True, y_binary=True, y_format=_bytes_tick)
    device = next((d for d in service.devices if d.name == row.device), None)
    if device is not None:
        levels.append(("plan + overhead", device.footprint(planned), "#a56400"))
    return svg.Chart("Memory over time", [svg.Series("resident", rss, svg.COLORS[0]), peak],
                     x_label="seconds since the first sample", levels=levels, y_zero=True, y_binary=True,
                     y_format=_bytes_tick)


def _bytes_tick(v: float) -> str:
    return format_bytes(int(v)).replace(".00 ", " ")  # "256 MiB", not "256.00 MiB"


def _samples(path: Path) -> list:
    """[(unix time, resident bytes)] from memory.jsonl (a torn last line is skipped)."""
    out = []
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        try:
            rec = json.loads(line)
            if isinstance(rec.get("t"), (int, float)) and isinstance(rec.get("rss"), int):
                out.append((rec["t"], rec["rss"]))
        except (ValueError, AttributeError):
            continue
    return out


# -- memory, checkpoints, events -----------------------------------------------------------------


def _memory(service, row, view, history) -> str:
    planned = row.planned or {}
    total = max(1, row.planned_bytes)
    rows = ["<table><tr><th>category</th><th class='n'>planned</th><th>share of the plan</th></tr>"]
    for cat, b in planned.items():
        if b:
            rows.append(f"<tr><td>{_e(cat)}</td><td class='n'>{format_bytes(b)}</td><td><div class='bar' "
                        f"style='width:240px'><div class='committed' style='width:{100 * b / total:.1f}%'></div>"
                        f"</div></td></tr>")
    rows.append(f"<tr><th>plan</th><th class='n'>{format_bytes(row.planned_bytes)}</th><th></th></tr></table>")
    peak = next((r["measured_peak_bytes"] for r in reversed(history) if r.get("measured_peak_bytes")), None)
    peak = (row.result or {}).get("measured_peak_bytes") or peak
    device = next((d for d in service.devices if d.name == row.device), None)
    p = view["progress"] or {}
    items = []
    if peak:
        items.append(("plan's buffers, measured peak", f"{format_bytes(peak)} ({peak / total - 1:+.2%} against the "
                      "plan; tracemalloc on the CPU, the CuPy pool on a GPU)"))
    if device is not None:
        items.append(("process overhead", f"{format_bytes(device.overhead_bytes)} ({device.overhead_source})"))
    if p.get("rss_bytes"):
        items.append(("resident now" if row.state == "running" else "resident, last reading",
                      f"{format_bytes(p['rss_bytes'])} (the job's processes: interpreter, libraries, exporter and "
                      "the plan)"))
    if p.get("peak_rss_bytes"):
        items.append(("resident peak", format_bytes(p["peak_rss_bytes"])))
    rows.append("<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items) + "</dl>")
    return "".join(rows)


def _checkpoints(directory: Path) -> str:
    found = list_checkpoints(directory)
    if not found:
        return "<p>none yet</p>"
    rows = ["<table><tr><th>checkpoint</th><th class='n'>size</th><th>written (UTC)</th></tr>"]
    for js in found:
        npz = js.with_suffix(".npz")
        try:
            size, mtime = npz.stat().st_size, js.stat().st_mtime
        except OSError:  # removed by `keep` between the listing and here
            continue
        rows.append(f"<tr><td>{_e(npz.name)}</td><td class='n'>{format_bytes(size)}</td><td>{iso(mtime)}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _events(row, log: Path) -> str:
    items = [(row.submitted_at, "submitted", f"planned {format_bytes(row.planned_bytes)}")]
    for line in tail(log, 20000).decode("utf-8", "replace").splitlines():  # tail() reads the last 256 KiB
        if line.startswith("error:"):
            items.append((None, "error", line[len("error:"):].strip()))
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("event") in EVENTS:
            text = rec.get("text") or ", ".join(f"{k} {v}" for k, v in rec.items() if k not in ("time", "event"))
            items.append((rec.get("time"), rec["event"], text.split("\n")[0]))
    if row.started_at:
        items.append((row.started_at, "started", f"on {row.device or '-'} (attempt {row.attempts})"))
    if row.ended_at:
        items.append((row.ended_at, row.state, row.reason or ""))
    items.sort(key=lambda i: i[0] if i[0] is not None else float("inf"))
    rows = ["<table><tr><th>time (UTC)</th><th>event</th><th>what</th></tr>"]
    rows += [f"<tr><td class='t'>{iso(t) if t else '-'}</td><td>{_e(k)}</td><td>{_e(v)}</td></tr>"
             for t, k, v in items]
    return "".join(rows) + "</table>"


def _log(log: Path, lines: int = 40) -> str:
    text = "\n".join(list(human_lines(tail(log, 400).decode("utf-8", "replace").splitlines()))[-lines:])
    return f"<pre>{_e(text)}</pre>" if text else "<p>nothing logged yet</p>"
