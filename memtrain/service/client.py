"""The HTTP client behind `memtrain submit/jobs/job/cancel/logs` (standard library only).

Errors reach the user as one line: the service's own message for a 4xx, or
"no memtrain service is running at URL" when the connection is refused.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tomllib
import urllib.error
import urllib.request

from memtrain.config import read_toml
from memtrain.errors import MemtrainError
from memtrain.nn.scores import score_text
from memtrain.units import format_bytes

DEFAULT_SERVER = "http://127.0.0.1:8470"
PAGE = 1000  # jobs per request when listing (GET /jobs's largest page)


class ClientError(MemtrainError):
    """The service refused the request, or could not be reached."""


class Client:
    def __init__(self, server: str | None = None, token: str | None = None, timeout: float = 30.0):
        self.server = _check_url((server or os.environ.get("MEMTRAIN_SERVER") or DEFAULT_SERVER).rstrip("/"))
        self.token = token if token is not None else os.environ.get("MEMTRAIN_TOKEN")
        self.timeout = timeout

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json",
                stream: bool = False, with_headers: bool = False):
        """The answer's JSON (or text); with_headers: (that, the response's headers)."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.server + path, data=body, method=method, headers=headers)
        try:
            resp = urllib.request.urlopen(req, timeout=None if stream else self.timeout)
        except urllib.error.HTTPError as exc:
            raise ClientError(_detail(exc)) from None
        except urllib.error.URLError as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ConnectionRefusedError):
                raise ClientError(f"no memtrain service is running at {self.server} (start one with `memtrain serve`,"
                                  " or pass --server / set MEMTRAIN_SERVER)") from None
            raise ClientError(f"{self.server}: {reason}") from None
        if stream:
            return resp
        with resp:
            data = resp.read()
        out = json.loads(data) if resp.headers.get_content_type() == "application/json" else data.decode()
        return (out, resp.headers) if with_headers else out

    def submit(self, job: dict) -> dict:
        return self.request("POST", "/jobs", json.dumps(job).encode())

    def submit_sweep(self, sweep: dict) -> dict:
        """POST /sweeps: a sweep file's dict with its base job inline (load_submission)."""
        return self.request("POST", "/sweeps", json.dumps(sweep).encode())

    def sweep(self, sweep_id: str) -> dict:
        return self.request("GET", f"/sweeps/{_quote(sweep_id)}")

    def cancel_trial(self, job_id: str, trial_id: str) -> dict:
        return self.request("DELETE", f"/jobs/{_quote(job_id)}/trials/{_quote(trial_id)}")

    def wait_sweep(self, sweep_id: str, poll: float = 0.5) -> dict:
        """GET /sweeps/{id} until none of its jobs is queued or running; its report."""
        import time  # noqa: PLC0415 - only here

        while True:
            rep = self.sweep(sweep_id)
            if rep["state"] != "running":
                return rep
            time.sleep(poll)

    def jobs(self, state: str | None = None, limit: int | None = None) -> tuple:
        """(jobs newest first, more): up to `limit` (None: all), following the pages' Link headers;
        `more` says whether the service holds more than were fetched."""
        path = f"/jobs?limit={min(limit or PAGE, PAGE)}" + (f"&state={_quote(state)}" if state else "")
        out = []
        while path and (limit is None or len(out) < limit):
            page, headers = self.request("GET", path, with_headers=True)
            out += page
            path = _next_link(headers.get("Link"))
        more = path is not None or (limit is not None and len(out) > limit)
        return (out if limit is None else out[:limit]), more

    def job(self, job_id: str) -> dict:
        return self.request("GET", f"/jobs/{_quote(job_id)}")

    def cancel(self, job_id: str) -> dict:
        return self.request("DELETE", f"/jobs/{_quote(job_id)}")

    def requeue(self, job_id: str) -> dict:
        return self.request("POST", f"/jobs/{_quote(job_id)}/requeue")

    def log(self, job_id: str, lines: int = 200, follow: bool = False):
        """The log's last lines (str), or with follow an iterator of chunks until the job ends."""
        path = f"/jobs/{_quote(job_id)}/log?lines={int(lines)}"
        if not follow:
            return self.request("GET", path)
        resp = self.request("GET", path + "&follow=1", stream=True)
        return _chunks(resp)


def _next_link(header: str | None) -> str | None:
    """The path of a Link header's rel="next" (RFC 8288), as GET /jobs sends it."""
    for part in (header or "").split(","):
        target, _, params = part.partition(";")
        if 'rel="next"' in params.replace(" ", "") and target.strip().startswith("<"):
            return target.strip()[1:-1]
    return None


def _check_url(url: str) -> str:
    """--server must be an http(s) URL: urllib raises a bare ValueError for anything else."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest:
        raise ClientError(f"--server: expected a URL like {DEFAULT_SERVER}, got {url!r}")
    return url


def _chunks(resp):
    with resp:
        while True:
            chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
            if not chunk:
                return
            yield chunk.decode("utf-8", "replace")


def _quote(text: str) -> str:
    from urllib.parse import quote  # noqa: PLC0415

    return quote(str(text), safe="")


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
        detail = body.get("detail") if isinstance(body, dict) else None
    except ValueError:
        detail = None
    return str(detail) if detail else f"HTTP {exc.code} {exc.reason}"


# -- job files ------------------------------------------------------------------------------


def load_submission(path, sets=()) -> tuple:
    """("job", a job file's dict) or ("sweep", a sweep file's dict with its base job inline: the
    service reads no client files). A sweep file is one with a [space] or [search] table or a base
    (select/space.py); --set overrides go to its base job."""
    from pathlib import Path  # noqa: PLC0415 - only for a sweep file's base path

    data = read_toml(path, "job file")
    if not ({"space", "search", "base"} & set(data)):
        return "job", load_job(path, sets)
    base = data.get("base")
    if isinstance(base, str):  # relative to the sweep file, as `memtrain sweep` reads it
        bp = Path(base) if Path(base).is_absolute() else Path(path).parent / base
        data["base"] = read_toml(bp, "sweep base job file")
    if isinstance(data.get("base"), dict):
        _apply_sets(data["base"], sets, path)
    return "sweep", data


def load_job(path, sets=()) -> dict:
    """A TOML job file as a dict, with `section.key=value` overrides (values read as TOML)."""
    data = read_toml(path, "job file")  # one reader: unreadable, not UTF-8 and bad TOML are one line each
    _apply_sets(data, sets, path)
    return data


def _apply_sets(data: dict, sets, path) -> None:
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise MemtrainError(f"--set: expected section.key=value, got {item!r}")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text  # a bare word is a string: --set data.dataset=digits
        *sections, name = key.strip().split(".")
        node = data
        for s in sections:
            node = node.setdefault(s, {})
            if not isinstance(node, dict):
                raise MemtrainError(f"--set: {key}: {s} is not a table in {path}")
        node[name] = value


# -- text output ---------------------------------------------------------------------------------


def jobs_table(jobs: list, now: float | None = None) -> str:
    rows = [("ID", "NAME", "USER", "PRI", "STATE", "DEVICE", "PLANNED", "BATCH", "PROGRESS", "AGE", "REASON")]
    for j in jobs:
        rows.append((j["id"], j["name"] + (f" [{j['trials']} trials]" if (j.get("trials") or 0) > 1 else ""),
                     j.get("user", "default"), str(j.get("priority", 0)), j["state"],
                     j["device"] or "-", format_bytes(j["planned_bytes"]),
                     str(j["batch_size"] or j["batch_request"]), progress_text(j), age(j["submitted_at"], now),
                     _short(j["reason"] or "", 60)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _short(text: str, n: int) -> str:
    """At most n characters, cut after a whole reason ("; ") or word, marked with "...": a table cell
    must not end mid-number (`memtrain job ID` gives the whole reason)."""
    if len(text) <= n:
        return text
    head = text[: n - 3]
    cut = head.rfind("; ")
    cut = cut if cut >= n // 3 else head.rfind(" ")
    return (head[:cut] if cut > 0 else head).rstrip(";, ") + "..."


def progress_text(job: dict) -> str:
    p = job.get("progress") or {}
    if p.get("epoch") is None:
        return "-" if job["state"] == "queued" else (p.get("event") or "-")
    text = f"epoch {p['epoch']}"
    if p.get("val_accuracy") is not None:  # the metric named: "val 0.0000" read like 0% accuracy
        return text + f" val_acc {p['val_accuracy']:.4f}"
    if p.get("val_rmse") is not None:
        return text + f" val_rmse {p['val_rmse']:.4g}"
    if p.get("val_loss") is not None:
        return text + f" val_loss {p['val_loss']:.4f}"
    if p.get("train_loss") is not None:
        return text + f" loss {p['train_loss']:.4f}"
    return text


def age(iso: str | None, now: float | None = None) -> str:
    if not iso:
        return "-"
    t = dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    s = max(0, int((now or dt.datetime.now(dt.timezone.utc).timestamp()) - t))
    return f"{s}s" if s < 120 else (f"{s // 60}m" if s < 7200 else f"{s // 3600}h")


def job_text(j: dict) -> str:
    lines = [f"{'id':<12}{j['id']}", f"{'name':<12}{j['name']}", f"{'state':<12}{j['state']}",
             f"{'user':<12}{j.get('user', 'default')}", f"{'priority':<12}{j.get('priority', 0)}",
             f"{'device':<12}{j['device'] or '-'}",
             f"{'planned':<12}{format_bytes(j['planned_bytes'])}: " + ", ".join(
                 f"{k} {format_bytes(v)}" for k, v in j["planned"].items() if v),
             f"{'batch':<12}{j['batch_size'] or j['batch_request']}",
             f"{'attempts':<12}{j['attempts']} of {j['max_attempts']}",
             f"{'submitted':<12}{j['submitted_at']}", f"{'started':<12}{j['started_at'] or '-'}",
             f"{'ended':<12}{j['ended_at'] or '-'}", f"{'progress':<12}{progress_text(j)}"]
    if j["reason"]:
        lines.append(f"{'reason':<12}{j['reason']}")
    if j.get("sweep"):
        lines.append(f"{'sweep':<12}{j['sweep']} ({j.get('trials')} trial(s) in this job)")
    for t in j.get("trial_runs") or []:
        lines.append(f"{'trial':<12}{t['trial']} {t['state']:<10} {t['run_dir']}"
                     + (f"  ({t['reason']})" if t.get("reason") and t["state"] != "succeeded" else ""))
    r = j.get("result") or {}
    if r.get("steps") is not None:
        lines.append(f"{'result':<12}{result_text(r)}")
    if r.get("model"):
        lines.append(f"{'model':<12}{r['model']}")
    return "\n".join(lines)


def result_text(r: dict) -> str:
    """A finished job's outcome in one line: its test scores (else validation's), steps and time."""
    which = "test" if r.get("test_loss") is not None else ("validation" if r.get("val_loss") is not None else None)
    prefix = "test_" if which == "test" else "val_"
    scores = f"{which} loss {r[prefix + 'loss']:.4f}{score_text(r, prefix)}; " if which else ""
    took = f" in {r['seconds']:.1f} s" if r.get("seconds") is not None else ""
    return f"{scores}{r.get('steps')} steps{took}"


def sweep_submitted_text(out: dict) -> str:
    """What `memtrain submit SWEEP.toml` prints on stderr: the sweep's jobs (arrays and lone trials)."""
    lines = [f"sweep {out['name']} ({out['id']}): {out['trials']} trial(s) as {len(out['jobs'])} job(s)"]
    for j in out["jobs"]:
        what = f"trial array of {j['trials']} trials" if j["trials"] > 1 else "lone trial"
        lines.append(f"  job {j['id']}: {what}, {format_bytes(j['planned_bytes'])} planned, {j['state']}")
    for s in out["skipped"]:
        lines.append(f"  skipped {s['trial']}: {s['reason']}")
    return "\n".join(lines)


def sweep_text(rep: dict) -> str:
    """GET /sweeps/{id} as `memtrain sweep` prints its ranking, then every trial's job, state and run dir."""
    from memtrain.select.sweep import report_text  # noqa: PLC0415 - the sweep's own table

    lines = [f"sweep     {rep['sweep']} ({rep['id']}): {rep['trials']} trial(s), {rep['state']}", report_text(rep)]
    for t in rep["runs"]:
        lines.append(f"run       {t['trial']} job {t['job']} {t['state']:<10} {t['run_dir']}")
    return "\n".join(lines)
