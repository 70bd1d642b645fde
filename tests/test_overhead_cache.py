"""The CUDA overhead, measured once per GPU model and cached (memory/overhead_cache.py)."""

import json
from types import SimpleNamespace

from click.testing import CliRunner

from memtrain.cli import main
from memtrain.memory import overhead_cache as oc
from memtrain.memory.overhead import ASSUMED_CUDA_OVERHEAD


def test_measured_once_per_model_then_read_from_the_cache():
    calls = []

    def measure(index):
        calls.append(index)
        return 300_000_000 + index

    gpu = SimpleNamespace(index=1)
    assert oc.cuda_overhead(gpu, measure=measure, model_of=lambda i: "NVIDIA H200") == (300_000_001, "measured")
    assert oc.cuda_overhead(gpu, measure=measure, model_of=lambda i: "NVIDIA H200") == (300_000_001, "measured")
    assert calls == [1]  # the second device of the same model is not measured again
    assert oc.load()["NVIDIA H200"]["bytes"] == 300_000_001
    assert (oc.cache_dir() / oc.FILE).exists() and not list(oc.cache_dir().glob(".*"))  # atomic, no leftovers


def test_without_a_gpu_one_cached_model_is_used_else_assumed():
    assert oc.cuda_overhead(None) == (ASSUMED_CUDA_OVERHEAD, "assumed")
    oc.record("NVIDIA H100 80GB HBM3", 123 * 1024**2)
    assert oc.cuda_overhead(None) == (123 * 1024**2, "measured")
    oc.record("NVIDIA A100-SXM4-40GB", 456 * 1024**2)
    assert oc.cuda_overhead(None) == (ASSUMED_CUDA_OVERHEAD, "assumed")  # which one? ambiguous: assumed


def test_a_corrupt_cache_counts_as_empty():
    oc.cache_dir().mkdir(parents=True, exist_ok=True)
    (oc.cache_dir() / oc.FILE).write_text("{not json")
    assert oc.load() == {} and oc.cuda_overhead(None)[1] == "assumed"


def test_estimate_uses_the_cached_measurement(monkeypatch):
    import memtrain.backend as backend

    monkeypatch.setattr(backend, "_import_cupy", lambda: (None, "no CuPy"))
    oc.record("NVIDIA H200", 700 * 1024**2)
    result = CliRunner().invoke(main, ["estimate", "--layers", "100,10", "--device", "cuda", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["overhead"] == {"bytes": 700 * 1024**2, "source": "measured", "kind": "device"}
