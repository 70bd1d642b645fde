"""A service job's log as `memtrain train` prints it: `memtrain logs` reads the job's JSON lines
and prints each event's "text" (the line the text log has), nothing for the events the text log
keeps quiet about (checkpoints), and Python warnings as one line without their source path.

Standard library only: the client imports it.
"""

from __future__ import annotations

import json
import re

# "/path/to/numpy/core/_methods.py:173: RuntimeWarning: overflow encountered in reduce"
_WARNING = re.compile(r"^\S.*?\.py:\d+: (?P<kind>\w*Warning): (?P<message>.*)$")
_QUIET = {"checkpoint"}  # events the text log does not print


def human_lines(lines):
    """The human lines for an iterable of log lines (str, without or with their newline)."""
    after_warning = False
    for raw in lines:
        line = raw.rstrip("\n")
        if after_warning and line.startswith("  "):  # the warning's source line, as warnings prints it
            after_warning = False
            continue
        after_warning = False
        m = _WARNING.match(line)
        if m:
            after_warning = True
            yield f"warning   {m['message']} ({m['kind']})"
            continue
        rec = _json(line)
        if rec is None:
            if line.strip():
                yield line  # "error: ...", a traceback: as they are
            continue
        text = rec.get("text")
        if text:
            yield from text.split("\n")
        elif rec.get("event") not in _QUIET and "text" not in rec:
            yield _fallback(rec)


def _json(line: str) -> dict | None:
    if not line.startswith("{"):
        return None
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) and "event" in rec else None


def _fallback(rec: dict) -> str:
    """An event logged by a memtrain from before the "text" field: its name and fields, briefly."""
    fields = ", ".join(f"{k} {_short(v)}" for k, v in rec.items() if k not in ("time", "event"))
    return f"{str(rec['event']):<9} {fields}".rstrip()


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    text = json.dumps(v) if isinstance(v, (dict, list)) else str(v)
    return text if len(text) <= 60 else text[:57] + "..."


def lines_of(chunks):
    """Whole lines from a stream of text chunks (a followed log arrives in pieces)."""
    buf = ""
    for chunk in chunks:
        buf += chunk
        *done, buf = buf.split("\n")
        yield from done
    if buf:
        yield buf
