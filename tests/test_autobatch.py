"""Auto batch size against a real memory limit, and its bad input."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from memtrain.backend import get_backend
from memtrain.cli import main
from memtrain.nn.spec import ModelSpec
from memtrain.profiler import autobatch as ab
from memtrain.profiler.estimate import Setting

CHILD = Path(__file__).parents[1] / "bench" / "rlimit_child.py"
# A hard cap is the honest check: the plan's own accounting cannot be the judge
# of the plan. RLIMIT_AS makes any allocation past CAP raise MemoryError, so
# "fits" below means a real step ran under the limit. A fixed mmap threshold
# keeps glibc from serving large arrays from a heap that only grows.
ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "1", "OPENBLAS_NUM_THREADS": "1",
       "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
CAP = 96 * 1024**2


def child(*args) -> str:
    out = subprocess.run([sys.executable, str(CHILD), *map(str, args)], capture_output=True, text=True, env=ENV,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_autobatch_finds_the_true_limit_with_at_most_two_probes():
    r = json.loads(child("auto", CAP))
    assert r["probes_used"] <= 2
    confirmed = r["confirmed"]
    # Real steps under the cap bracket the true limit (the largest batch that runs; whether a
    # batch fits is monotonic in it) without bisecting for it: the confirmed batch runs, so it
    # is at most the limit, and the first batch above confirmed / 0.98 does not, so the limit
    # is below it: confirmed >= 0.98 x the true limit. Three children instead of ~25.
    above = math.floor(confirmed / 0.98) + 1
    probes = [(p["batch_size"], p["planned"], p["measured"], p["outcome"]) for p in r["probes"]]
    assert child("trial", confirmed, CAP) == "fits", probes  # never an untested size that would not run
    assert child("trial", above, CAP) == "oom", (above, probes)


def test_a_probe_that_does_not_fit_is_corrected(monkeypatch):
    """Measured over the limit: the next probe is solved with the measured discrepancy."""
    setting = Setting(ModelSpec.create([64, 128, 10]), "adam")
    calls = []

    def fake_probe(s, b, budget, backend):
        calls.append(b)
        planned = s.plan(b).total
        extra = 300_000 if len(calls) == 1 else 0  # the first step measures 300 kB more than planned
        measured = planned + extra
        return ab.Probe(b, planned, measured, "fits" if measured <= budget else "over budget", 0.0)

    monkeypatch.setattr(ab, "probe", fake_probe)
    r = ab.auto_batch(setting, get_backend("cpu"), memory_limit=8 * 1024**2)
    assert len(r.probes) == 2 and r.confirmed < r.analytic
    assert setting.plan(r.confirmed).total + 300_000 <= 8 * 1024**2


def test_out_of_memory_probe_shrinks_and_retries(monkeypatch):
    setting = Setting(ModelSpec.create([64, 128, 10]), "sgd")

    def fake_probe(s, b, budget, backend):
        ok = len(r_calls) > 0
        r_calls.append(b)
        return ab.Probe(b, s.plan(b).total, s.plan(b).total if ok else None, "fits" if ok else "out of memory", 0.0)

    r_calls = []
    monkeypatch.setattr(ab, "probe", fake_probe)
    r = ab.auto_batch(setting, get_backend("cpu"), memory_limit=4 * 1024**2, multiple_of=8)
    assert r_calls[1] == int(r_calls[0] * 0.98) // 8 * 8 and r.confirmed == r_calls[1]


def test_real_probe_on_the_cpu():
    setting = Setting(ModelSpec.create([32, 64, 4]), "adam")
    r = ab.auto_batch(setting, get_backend("cpu"), memory_limit=2 * 1024**2, multiple_of=8)
    assert r.confirmed % 8 == 0 and r.probes[-1].outcome == "fits"
    assert r.probes[-1].measured <= 2 * 1024**2
    assert r.eval_batch > r.confirmed  # the inference plan needs far less per sample


def test_autobatch_command():
    res = CliRunner().invoke(main, ["autobatch", "--layers", "64,128,10", "--memory-limit", "4MiB"])
    assert res.exit_code == 0, res.output
    assert "analytic    B = " in res.output and "confirmed   B = " in res.output and "-> fits" in res.output
    res = CliRunner().invoke(main, ["autobatch", "--layers", "64,128,10", "--memory-limit", "4MiB",
                                    "--objective", "throughput", "--format", "json"])
    r = json.loads(res.output)
    assert r["schema"] == "memtrain.autobatch/1" and r["objective"] == "throughput" and r["throughput"]


@pytest.mark.parametrize("args,message", [
    (["--layers", "784,4096,10", "--memory-limit", "1MiB"], "memory-limit: 1.00 MiB less a 257.02 KiB margin is too small for batch 1"),
    (["--layers", "784,10", "--device", "cuda:0"], "device: cuda:0 was asked for but"),
])
def test_autobatch_bad_input(args, message, monkeypatch):
    import memtrain.backend as backend

    monkeypatch.setattr(backend, "_import_cupy", lambda: (None, "CuPy sees no CUDA device"))
    res = CliRunner().invoke(main, ["autobatch", *args])
    assert res.exit_code == 2 and message in res.output, res.output
