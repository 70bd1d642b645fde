"""bench/throughput.py on a tiny model: worker processes, time-based alternating rounds, the GEMM limit."""

import importlib.util
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "bench" / "throughput.py"
TINY = ["--layers", "20,16,4", "--batch-size", "8", "--round-seconds", "0.05", "--repeats", "2", "--warmup", "0.05"]
HAS_TORCH = importlib.util.find_spec("torch") is not None


def run_bench(tmp_path, *extra):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--json", str(out), *extra],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text()), proc.stdout


def check_result(r, labels):
    # 2 m n k per product; 20-16-4: forward 2 products, backward gW x2 and one dA (none for the input)
    assert r["flop_per_step"] == 2 * 8 * (20 * 16 + 16 * 4) * 3 - 2 * 8 * 20 * 16
    assert [s["name"].split()[0] for s in r["gemm_shapes"]] == ["forward"] * 2 + ["backward"] * 3
    gemm = r["gemm_limit"]
    assert gemm["median"] > 0 and gemm["gflops_median"] > 0 and len(gemm["rates"]) == 2
    rounds = r["rounds"]
    assert [x["index"] for x in rounds] == list(range(len(rounds)))
    # every round is whole steps, at least --round-seconds long, and its rate is steps x batch / elapsed
    for x in rounds:
        assert x["steps"] >= 1 and x["elapsed_s"] >= 0.05
        assert x["samples_per_s"] == pytest.approx(x["steps"] * 8 / x["elapsed_s"])
    # one cycle per repeat: the GEMM round, then one round per framework, in the same order, one after another
    cycle = ["gemm", *labels]
    assert [x["who"] for x in rounds] == cycle * 2
    starts = [x["start_unix"] for x in rounds]
    ends = [x["end_unix"] for x in rounds]
    assert all(e <= s for e, s in zip(ends, starts[1:])), "rounds overlapped"
    assert set(r["frameworks"]) == set(labels)
    for label, f in r["frameworks"].items():
        rates = [x["samples_per_s"] for x in rounds if x["who"] == label]
        assert f["rates"] == rates and all(v > 0 for v in rates)
        assert f["median"] == statistics.median(rates) and f["best"] == max(rates)
        assert f["share_of_gemm_limit"] == pytest.approx(f["median"] / gemm["median"])
        assert f["warmup_samples_per_s"] > 0 and f["implementation"]


def test_memtrain_alone_with_threads_and_profile(tmp_path):
    report, stdout = run_bench(tmp_path, "--peer", "none", "--optimizer", "sgd", "--threads", "1", "--profile")
    (r,) = report["results"]
    (label,) = r["frameworks"]
    assert label.startswith("memtrain-")
    check_result(r, [label])
    assert "vs_torch_median" not in r["frameworks"][label]
    (worker,) = report["machine"]["workers"].values()
    assert worker["thread_env"]["NUMBA_NUM_THREADS"] == "1" and "torch" not in worker
    assert all(lib["num_threads"] == 1 for lib in worker["native_libraries"])
    assert r["profile"][label] and any("memtrain/" in row["function"] for row in r["profile"][label])
    assert report["machine"]["load_before"] is not None and report["machine"]["load_after"] is not None
    assert "| 20-16-4 | 8     | sgd" in stdout and "command: " in stdout


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed (pip install torch==2.13.0)")
def test_memtrain_and_torch_alternate_in_their_own_processes(tmp_path):
    report, _ = run_bench(tmp_path, "--peer", "torch", "--optimizer", "adam,sgd")
    assert [r["optimizer"] for r in report["results"]] == ["adam", "sgd"]
    workers = report["machine"]["workers"]
    (mt,) = [k for k in workers if k.startswith("memtrain-")]
    assert workers[mt]["pid"] != workers["torch"]["pid"] and "torch" not in workers[mt]
    assert workers["torch"]["torch"] and workers["torch"]["torch_threads"] >= 1
    for r in report["results"]:
        check_result(r, [mt, "torch"])
        f, t = r["frameworks"][mt], r["frameworks"]["torch"]
        assert f["vs_torch_median"] == pytest.approx(f["median"] / t["median"])
        assert f["vs_torch_best"] == pytest.approx(f["best"] / t["best"])


@pytest.mark.parametrize("args", [["--round-seconds", "0"], ["--layers", "5"], ["--memtrain-variants", "turbo"],
                                  ["--repeats", "x"], ["--optimizer", "adam,adam"]])
def test_bad_arguments_exit_2_with_one_line(tmp_path, args):
    out = tmp_path / "never.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), *args, "--json", str(out)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and args[0] in proc.stderr and "error" in proc.stderr
    assert not out.exists()


def test_the_fused_and_numpy_variants_each_get_their_worker(tmp_path):
    report, stdout = run_bench(tmp_path, "--peer", "none", "--optimizer", "adam", "--memtrain-variants", "fused,numpy")
    (r,) = report["results"]
    labels = list(r["frameworks"])
    assert len(labels) == 2 and all(label.startswith("memtrain-") for label in labels)
    check_result(r, labels)
    assert len({w["pid"] for w in report["machine"]["workers"].values()}) == 2
    assert "memtrain fused" in stdout and "memtrain numpy" in stdout
