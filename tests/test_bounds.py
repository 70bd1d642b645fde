"""Sizes are bounded and bytes are Python ints: no OverflowError, no negative bytes."""

import json
import subprocess
import sys

import pytest

from memtrain.memory.plan import Buffer
from memtrain.units import MAX_BATCH, MAX_WIDTH

HUGE = str(10**30)


def memtrain(*args):
    """The real command in a child: a traceback would show on its stderr."""
    out = subprocess.run([sys.executable, "-m", "memtrain.cli", *args], capture_output=True, text=True, timeout=60)
    return out.returncode, out.stdout, out.stderr


@pytest.mark.parametrize("args,message", [
    (["estimate", "--batch-size", HUGE, "--layers", "64,10"], "batch-size: every size must be an integer from 1 to"),
    (["estimate", "--layers", f"64,{HUGE},10"], "every layer size must be from 1 to 2,147,483,647"),
    (["estimate", "--layers", "64,10", "--batch-size", "5076944270305263616"], "batch-size: every size must be"),
    (["estimate", "--layers", "64,10", "--batch-size", f"1:{HUGE}"], "batch-size: expected N"),
    (["estimate", "--layers", "64,10", "--batch-size", "1:1000000000:1"], "at most 1000 sizes"),
    (["profile", "--layers", "64,10", "--batch-size", HUGE], "Invalid value for '--batch-size'"),
    (["train", "--layers", "64,10", "--batch-size", HUGE], "expected auto or an integer from 1 to"),
    (["autobatch", "--layers", f"64,{2**31},10"], "every layer size must be from 1 to"),
])
def test_huge_sizes_are_one_line_and_exit_2(args, message):
    code, out, err = memtrain(*args)
    assert code == 2, (out, err)
    assert "Traceback" not in err and out == ""
    assert err.count("\n") == 1 and message in err, err


def test_bytes_are_exact_python_ints_at_the_bounds():
    b = Buffer("z", "activations", (MAX_BATCH, MAX_WIDTH), "float64")
    assert b.nbytes == MAX_BATCH * MAX_WIDTH * 8 > 2**63  # NumPy's int64 product would wrap here


def test_the_largest_batch_and_width_estimate_positive_bytes():
    code, out, err = memtrain("estimate", "--layers", f"64,{MAX_WIDTH},10", "--batch-size", str(MAX_BATCH),
                              "--format", "json")
    r = json.loads(out)
    assert code == 0, err
    assert r["total"] > 0 and all(v >= 0 for v in r["categories"].values())
    assert r["total"] == sum(b["nbytes"] for b in r["buffers"])
