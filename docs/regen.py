"""The transcripts in docs/ from the commands they show, so a figure in a doc is what the
command prints (docs/cli.md is generated the same way: `python -m memtrain.clidoc`, which
`python docs/regen.py` also runs).

A transcript is a fenced block right after a comment line

    <!-- regen [check] [from=REGEX] [keep=REGEX] [tail=N] [mask=REGEX] -->

whose lines starting with "$ " are the commands. regen runs every command of a doc in order,
in one fresh scratch directory with docs/ linked in (so `docs/example-job.toml` is found and
runs/ starts empty), and writes under each command what it printed (stdout and stderr, as a
terminal shows them), cut down as the comment says, "..." marking lines left out:
from: from the first line matching REGEX; keep: only lines matching REGEX; tail: the last N.
A `<!-- stamp -->...<!-- /stamp -->` span gets the date, time (UTC) and machine of the run.

    python docs/regen.py                        # rewrite the docs below (and docs/cli.md)
    python docs/regen.py --check                # exit 1 when a `check` block drifted

`check` marks the cheap blocks: tests/test_docs_regen.py re-runs them and fails when their
figures differ from the doc's, durations and what `mask` matches (a measured peak) left out of
the comparison, since those vary from run to run.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
TRANSCRIPT_DOCS = ("getting-started.md",)
MARK = re.compile(r"^<!-- regen(?P<opts>[^>]*)-->\n```[^\n]*\n(?P<body>.*?)^```$", re.M | re.S)
STAMP = re.compile(r"<!-- stamp -->.*?<!-- /stamp -->", re.S)
DURATION = re.compile(r"\d+(?:\.\d+)? s\b")  # "1.6 s", "0.15 s": vary from run to run


def options(text: str) -> dict:
    out = {}
    for word in shlex.split(text):
        key, _, value = word.partition("=")
        out[key] = value if value else True
    return out


def commands(body: str) -> list:
    return [line[2:] for line in body.splitlines() if line.startswith("$ ")]


def run(command: str, cwd: Path) -> str:
    """What `command` prints in `cwd`, stdout and stderr in the order written. `memtrain` is this
    checkout's (python -m memtrain.cli with ROOT on the path)."""
    argv = shlex.split(command)
    if argv[0] == "memtrain":
        argv = [sys.executable, "-m", "memtrain.cli", *argv[1:]]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "COLUMNS": "100"}
    p = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=600)
    return p.stdout


def cut(output: str, opts: dict) -> list:
    """The lines of `output` the block's options keep, "..." where some were left out."""
    lines = output.rstrip("\n").splitlines()
    keep = [True] * len(lines)
    if "from" in opts:
        first = next((i for i, line in enumerate(lines) if re.search(opts["from"], line)), len(lines))
        keep = [i >= first for i in range(len(lines))]
    if "keep" in opts:
        keep = [k and bool(re.search(opts["keep"], line)) for k, line in zip(keep, lines)]
    if "tail" in opts:
        n = int(opts["tail"])
        keep = [k and i >= len(lines) - n for i, k in enumerate(keep)]
    out = []
    for k, line in zip(keep, lines):
        if k:
            out.append(line)
        elif not out or out[-1] != "...":
            out.append("...")
    return out


def block(body: str, opts: dict, cwd: Path) -> str:
    out = []
    for command in commands(body):
        out.append(f"$ {command}")
        out += cut(run(command, cwd), opts)
    return "\n".join(out) + "\n"


def render(text: str) -> str:
    """`text` with every transcript re-run."""
    with tempfile.TemporaryDirectory(prefix="memtrain-regen-") as tmp:
        cwd = Path(tmp)
        (cwd / "docs").symlink_to(DOCS)

        def one(m):
            fence = m.group(0)[:m.start("body") - m.start()]
            return fence + block(m.group("body"), options(m.group("opts")), cwd) + "```"

        return MARK.sub(one, text)


def drifted(text: str) -> list:
    """(doc's block, what its commands print now) of each `check` block that differs, masked.
    Run in order in one scratch directory, as render runs them (the cheap blocks come first)."""
    out = []
    with tempfile.TemporaryDirectory(prefix="memtrain-regen-") as tmp:
        cwd = Path(tmp)
        (cwd / "docs").symlink_to(DOCS)
        for m in MARK.finditer(text):
            opts = options(m.group("opts"))
            if not opts.get("check"):
                continue
            old, new = m.group("body"), block(m.group("body"), opts, cwd)
            if masked(old, opts) != masked(new, opts):
                out.append((old, new))
    return out


def masked(text: str, opts: dict) -> str:
    if "mask" in opts:
        text = re.sub(opts["mask"], "#", text)
    return DURATION.sub("# s", text)


def stamp() -> str:
    """When and where: the date, the cores and memory of this machine."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d, %H:%M UTC")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"<!-- stamp -->{now}; {os.cpu_count()} cores, {memory:.0f} GiB, {platform.machine()}<!-- /stamp -->"


def main(argv) -> int:
    if "--check" in argv:
        bad = [(name, old, new) for name in TRANSCRIPT_DOCS for old, new in drifted((DOCS / name).read_text())]
        for name, old, new in bad:
            print(f"docs/{name}: this transcript drifted; run python docs/regen.py\n--- doc\n{old}--- now\n{new}",
                  file=sys.stderr)
        return 1 if bad else 0
    for name in TRANSCRIPT_DOCS:
        path = DOCS / name
        path.write_text(STAMP.sub(lambda m: stamp(), render(path.read_text())))
    from memtrain.clidoc import render as cli_reference  # noqa: PLC0415 - the checkout's, with ROOT on the path

    (DOCS / "cli.md").write_text(cli_reference())
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
