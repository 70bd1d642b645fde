"""Mutation testing of one safety-critical module with mutmut (`make mutation MODULE=name`).

The module's files are mutated in a scratch copy of this checkout (build/mutation/NAME, so
an interrupted run never leaves a mutant in the tree), each mutant runs only against the
module's tests (mutation/modules.toml), and the score is killed / (mutants - equivalent),
where the equivalent mutants are the ones docs/testing.md lists with its reason. Exit
status 1 when the score is under 90%, 2 for an unknown module.

    python mutation/run.py admission            # run, then report
    python mutation/run.py admission --report   # report the last run again
    python mutation/run.py admission --resume   # re-run what the last run did not kill, with today's tests
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = tomllib.loads((ROOT / "mutation" / "modules.toml").read_text())
THRESHOLD = 0.90
# mutmut's exit codes per mutant (mutmut.stats.status_by_exit_code): a timeout is a kill (the
# mutant made its tests hang), and so is a crash of the test process (SIGABRT, SIGSEGV: e.g. a
# numba kernel given a slice shorter than its loop); "no tests" is a survivor (nothing would notice it)
KILLED = {1, 3, 24, -24, 36, -6, -11}
EQUIVALENT_ROW = re.compile(r"^\|\s*`?(memtrain\.[\w.ǁ]+__mutmut_\d+)`?\s*\|")


def scratch_copy(name: str, module: dict) -> Path:
    """The tracked and new files of this checkout, with mutmut's settings for this module."""
    work = ROOT / "build" / "mutation" / name
    shutil.rmtree(work, ignore_errors=True)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split("\n")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / rel)
    write_settings(work, module)
    return work


def write_settings(work: Path, module: dict) -> None:
    """mutmut's settings for this module, in place of any an earlier run wrote (--resume: today's
    list of tests)."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    settings = {"source_paths": ["memtrain"], "only_mutate": module["files"],
                "pytest_add_cli_args_test_selection": module["tests"],
                # a mutant that raises half-way through a constructor leaks its open files: noise, not a kill
                "pytest_add_cli_args": ["-p", "no:cacheprovider", "-q", "-W", "ignore::ResourceWarning"]}
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    (work / "pyproject.toml").write_text(pyproject + "\n".join(lines) + "\n")


def run(name: str, module: dict, children: int, resume: bool = False) -> int:
    work = ROOT / "build" / "mutation" / name
    names = module["mutants"]
    if resume and (work / "mutants").is_dir():
        # only what the last run did not kill, against the tests as they are now (new tests added)
        names = sorted(k for k, v in results(name, module).items() if v not in KILLED)
        shutil.copytree(ROOT / "tests", work / "tests", dirs_exist_ok=True)
        write_settings(work, module)
    else:
        work = scratch_copy(name, module)
    # mutmut puts its mutants/ first on sys.path; a PYTHONPATH naming this checkout would hide them
    # (the tests of modules.toml start no subprocess, which would import the unmutated package)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | module.get("env", {})
    cmd = ["nice", "-n", "19", sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *names]
    shown = " ".join([f"{k}={v}" for k, v in module.get("env", {}).items()] + cmd[:9]
                     + (names if len(names) <= 3 else [f"<{len(names)} mutants>"]))
    print(f"mutation: {name}: {shown} (in {work})", flush=True)
    before = exit_codes(work) if resume else {}
    with open(work / "mutmut.log", "a" if resume else "w") as log:
        status = subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    keep_verdicts(work, before)
    return status


def exit_codes(work: Path) -> dict:
    return {k: v for meta in (work / "mutants").rglob("*.py.meta")
            for k, v in json.loads(meta.read_text())["exit_code_by_key"].items()}


def keep_verdicts(work: Path, before: dict) -> None:
    """mutmut forgets every verdict when the list of tests changes (its config fingerprint); a
    resumed run re-tests only the mutants not yet killed, so the others keep the last run's verdict
    (tests were added since, none removed)."""
    for meta in (work / "mutants").rglob("*.py.meta"):
        data = json.loads(meta.read_text())
        codes = data["exit_code_by_key"]
        lost = {k: before[k] for k, v in codes.items() if v is None and before.get(k) is not None}
        if lost:
            codes.update(lost)
            meta.write_text(json.dumps(data, indent=4))


def equivalents() -> dict:
    """Mutant name -> reason, from docs/testing.md's table of equivalent mutants."""
    out, doc = {}, ROOT / "docs" / "testing.md"
    for line in (doc.read_text() if doc.exists() else "").splitlines():
        m = EQUIVALENT_ROW.match(line)
        if m:
            out[m.group(1)] = line.rstrip("|").rsplit("|", 1)[-1].strip()
    return out


def results(name: str, module: dict) -> dict:
    """Mutant name -> exit code, for this module's mutants of the last run (less `exclude`: code whose
    tests cannot run per mutant, named with the reason in modules.toml and docs/testing.md)."""
    codes = {}
    for meta in (ROOT / "build" / "mutation" / name / "mutants").rglob("*.py.meta"):
        codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    def matches(name, patterns):
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    return {k: v for k, v in codes.items() if matches(k, module["mutants"]) and not matches(k, module.get("exclude", []))}


def report(name: str, module: dict) -> bool:
    codes, equivalent = results(name, module), equivalents()
    if not codes:
        print(f"mutation: {name}: no results (run it first)")
        return False
    eq = [k for k in codes if k in equivalent]
    counted = {k: v for k, v in codes.items() if k not in equivalent}
    killed = sum(v in KILLED for v in counted.values())
    survivors = sorted(k for k, v in counted.items() if v not in KILLED)
    score = killed / len(counted) if counted else 1.0
    print(f"mutation: {name}: {len(codes)} mutants, {len(eq)} equivalent, {killed} of {len(counted)} killed: "
          f"{score:.1%} (threshold {THRESHOLD:.0%})")
    for k in survivors:
        print(f"  survived: {k} (exit {codes[k]}): see it with `cd build/mutation/{name} && mutmut show {k}`")
    return score >= THRESHOLD


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("module", help=f"one of: {', '.join(MODULES)}")
    ap.add_argument("--report", action="store_true", help="report the last run without running again")
    ap.add_argument("--resume", action="store_true",
                    help="re-run only the mutants the last run did not kill (or did not reach), with today's tests")
    ap.add_argument("--children", type=int, default=1, help="mutants tested at once (default 1: a shared machine)")
    args = ap.parse_args()
    if args.module not in MODULES:
        print(f"mutation: module: expected one of {', '.join(MODULES)}, got {args.module!r}", file=sys.stderr)
        return 2
    module = MODULES[args.module]
    if not args.report:
        run(args.module, module, args.children, args.resume)
    return 0 if report(args.module, module) else 1


if __name__ == "__main__":
    sys.exit(main())
