"""bench/step_phases.py: its phase-by-phase step is the real Trainer step (bit-identical parameters)."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "step_phases.py"


@pytest.mark.parametrize("extra", [[], ["--no-fused"]], ids=["fused", "numpy"])
def test_the_phased_step_is_the_trainers_step(extra):
    out = subprocess.run([sys.executable, str(SCRIPT), "--layers", "20,16,12,4", "--batch-size", "8", "--steps", "5",
                          "--warmup", "2", "--optimizer", "adam,novograd", *extra], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("parameters bit-identical") == 2
    assert "| optimizer update |" in out.stdout and "GEMM limit" in out.stdout
    assert ("(fused)" in out.stdout) == (not extra)


def test_bad_layers_exit_2_with_one_line():
    out = subprocess.run([sys.executable, str(SCRIPT), "--layers", "20,x"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--layers" in out.stderr.strip().splitlines()[-1]


GEMM = Path(__file__).resolve().parent.parent / "bench" / "gemm_compare.py"


def test_gemm_compare_times_numpy_and_says_what_it_could_not_run():
    out = subprocess.run([sys.executable, str(GEMM), "--shape", "8,16,4", "--calls", "2", "--rounds", "2"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("numpy  8x16 @ 16x4 float32: ") and "GFLOP/s" in lines[0]
    assert lines[1].startswith(("torch  8x16", "torch: not run (")), lines  # timed, or said why not (no torch)
    bad = subprocess.run([sys.executable, str(GEMM), "--shape", "8,x,4"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--shape" in bad.stderr.strip().splitlines()[-1]
