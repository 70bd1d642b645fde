"""The status page at `/`: what runs, what waits and why. Server-rendered HTML that
reloads itself every few seconds (no JavaScript); Grafana keeps the history."""

from __future__ import annotations

import html

from memtrain.service.client import age, progress_text, result_text
from memtrain.units import format_bytes

REFRESH_SECONDS = 5
PAGE_JOBS = 100  # the newest; the counts cover every stored job (GET /jobs pages through the rest)

STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em} h2{font-size:1.1em;margin-top:1.5em}
table{border-collapse:collapse} th,td{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.bar{position:relative;width:420px;height:18px;background:#eee;border:1px solid #999}
.bar div{position:absolute;top:0;left:0;height:100%}
.committed{background:#8ab4f8}.measured{background:#1a73e8;height:50%!important;top:25%!important}
.queued{color:#a56400}.running{color:#1a73e8}.succeeded{color:#188038}.failed{color:#c5221f}.cancelled{color:#777}
small{color:#555}
"""


def render(service) -> str:
    devices = service.device_views()
    jobs, more, _ = service.jobs_page(None, PAGE_JOBS)
    summary = ", ".join(f"{n} {s}" for s, n in service.store.counts().items() if n) or "no jobs yet"
    size = service.housekeeper.state_dir_bytes
    if size is not None:
        summary += f" · state dir {format_bytes(size)} on disk"
    shown = f"<p><small>The newest {PAGE_JOBS}; older ones: GET /jobs?cursor=...</small></p>" if more else ""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' "
             f"content='{REFRESH_SECONDS}'><title>memtrain serve</title><style>{STYLE}</style></head><body>",
             f"<h1>memtrain serve</h1><p>{html.escape(summary)} &middot; <a href='/docs'>API</a> &middot; "
             f"<a href='/metrics'>metrics</a></p>", _damaged(service.store.bad_rows), "<h2>Devices</h2>",
             _devices(devices), "<h2>Jobs</h2>", _jobs(jobs), shown,
             f"<p><small>Reloads every {REFRESH_SECONDS} s.</small></p></body></html>"]
    return "".join(parts)


def _damaged(bad_rows: dict) -> str:
    if not bad_rows:
        return ""
    n, ids = len(bad_rows), ", ".join(sorted(job_id for job_id, _ in bad_rows.values()))
    return (f"<p class='failed'>{n} damaged job row{'s' if n > 1 else ''} skipped ({html.escape(ids)}): "
            "<code>memtrain serve --recover</code> rebuilds them from their job dirs.</p>")


def _devices(devices) -> str:
    rows = ["<table><tr><th>device</th><th>memory: committed plans (light) and measured use (dark) of the "
            "budget</th><th>committed</th><th>measured</th><th>budget</th><th>jobs</th></tr>"]
    for d in devices:
        cap = max(1, d["capacity_bytes"])
        c, m = min(100.0, 100 * d["committed_bytes"] / cap), min(100.0, 100 * d["measured_bytes"] / cap)
        rows.append(
            f"<tr><td>{html.escape(d['device'])}</td><td><div class='bar'><div class='committed' "
            f"style='width:{c:.1f}%'></div><div class='measured' style='width:{m:.1f}%'></div></div></td>"
            f"<td class='n'>{format_bytes(d['committed_bytes'])}</td><td class='n'>{format_bytes(d['measured_bytes'])}"
            f"</td><td class='n'>{format_bytes(d['capacity_bytes'])}</td><td class='n'>{len(d['jobs'])} of "
            f"{d['max_jobs']}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _jobs(jobs) -> str:
    rows = ["<table><tr><th>id</th><th>name</th><th>state</th><th>device</th><th>planned</th><th>batch</th>"
            "<th>progress</th><th>age</th><th>why / outcome</th><th>log</th></tr>"]
    for j in jobs:  # newest first
        e = html.escape
        rows.append(
            f"<tr><td><a href='/jobs/{e(j['id'])}/page'>{e(j['id'])}</a></td><td><a href='/jobs/{e(j['id'])}/page'>"
            f"{e(j['name'])}</a>{_trials(j)}</td><td class='{e(j['state'])}'>{e(j['state'])}</td>"
            f"<td>{e(j['device'] or '-')}</td><td class='n'>{format_bytes(j['planned_bytes'])}</td>"
            f"<td class='n'>{e(str(j['batch_size'] or j['batch_request']))}</td><td>{e(progress_text(j))}</td>"
            f"<td class='n'>{age(j['submitted_at'])}</td><td>{e(_outcome(j))}</td>"
            f"<td><a href='/jobs/{e(j['id'])}/log'>log</a></td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _trials(j) -> str:
    """A sweep's trial array: its trial count beside its name (its page lists them)."""
    n = j.get("trials") or 0
    return f" <small>[{n} trials]</small>" if n > 1 else ""


def _outcome(j) -> str:
    r = j.get("result") or {}
    if j["state"] == "succeeded" and r.get("steps") is not None:
        return result_text(r)
    return j["reason"] or ""
