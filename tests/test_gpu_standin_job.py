"""A whole GPU Job on the CPU stand-in for CuPy (tests/cupy_standin.py): validation on the device,
checkpoints, resume, the final evaluation; auto batch under a pool cap, and NVML that cannot see
this process. The Job, auto batch and profile code is memtrain's own, unchanged."""

import gc
import io
import json
import sys

import cupy_standin
import numpy as np
import nvml_standin
import pytest

from memtrain.config import from_dict
from memtrain.profiler.autobatch import auto_batch
from memtrain.train import checkpoint as ckpt
from memtrain.train.job import Job


@pytest.fixture
def cp(monkeypatch, host_launcher):
    cp = cupy_standin.install(monkeypatch, host_launcher)
    monkeypatch.setitem(sys.modules, "pynvml", nvml_standin.nvml())
    return cp


def _cfg(tmp_path, device="cuda", **training):
    return from_dict({
        "name": "g", "seed": 2, "device": device,
        "model": {"layers": [16, 24, 4], "activation": "relu"},
        "optimizer": {"name": "adam", "lr": 0.01},
        "training": {"epochs": 2, "batch_size": 16, **training},
        "data": {"dataset": "synthetic:classification(150, 16, 4)", "validation": 0.2, "test": 0.1},
        "checkpoint": {"every_steps": 3, "keep": 2},
        "output": {"dir": str(tmp_path / "out")}})


def _run(cfg, **kw):
    buf = io.StringIO()
    job = Job(cfg, log_format="json", progress=False, stream=buf, install_signals=False, batch_solver=auto_batch,
              **kw)
    return job, job.run(), [json.loads(line) for line in buf.getvalue().splitlines()]


def _params(out):
    with np.load(out / "model-final.npz", allow_pickle=False) as z:
        return z["params"]


def test_a_gpu_job_validates_checkpoints_resumes_and_evaluates_as_the_cpu_job(cp, tmp_path):
    """Defect 2 at the Job level: every GPU Job keeps its small data set and validation split on the
    device; the first epoch's end evaluated them through np.ascontiguousarray and crashed."""
    _, ref, ref_log = _run(_cfg(tmp_path / "cpu", device="cpu", epochs=3, fused=False))
    job, first, log = _run(_cfg(tmp_path / "a"))
    assert job.state.device == "cuda:0" and job.resident and first["epochs"] == 2
    assert isinstance(job.trainer.arrays["val_x"], cp.ndarray) and job.state.measured["cupy_pool_peak"] > 0
    val = [e["val_loss"] for e in ref_log if e["event"] == "epoch"]
    assert [e["val_loss"] for e in log if e["event"] == "epoch"] == pytest.approx(val[:2], rel=1e-6)
    assert ckpt.list_checkpoints(tmp_path / "a" / "out" / "checkpoints")
    # the same run dir, one more epoch: resumed from the checkpoint on the device
    job, second, log = _run(_cfg(tmp_path / "a", epochs=3))
    assert any(e["event"] == "resume" for e in log) and second["epochs"] == 3
    assert second["steps"] == ref["steps"] and second["test_accuracy"] == ref["test_accuracy"]
    assert second["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-6)
    np.testing.assert_allclose(_params(tmp_path / "a" / "out"), _params(tmp_path / "cpu" / "out"), rtol=1e-5,
                               atol=1e-6)


def test_a_gpu_job_with_micro_batches_and_a_last_partial_batch(cp, tmp_path):
    job, s, _ = _run(_cfg(tmp_path, batch_size=32, micro_batch_size=8))
    assert job.trainer.micro_batch_size == 8 and job.train_rows % 32 and s["epochs"] == 2
    assert np.isfinite(s["val_loss"])


def test_auto_batch_on_cuda_under_a_pool_cap_compares_like_with_like(cp, tmp_path):
    """Defect 3: a probe measured the pool peak plus the CUDA context against a limit whose plan has no
    context, and read the default pool while a capped one allocated. With a 32 MiB cap and the
    stand-in's 300 MiB context the corrected budget went negative."""
    from memtrain.profiler.autobatch import probe

    limit = 32 * 1024**2
    pool = cp.cuda.MemoryPool()
    pool.set_limit(size=limit)  # a real cap: allocations past it raise OutOfMemoryError
    cp.cuda.set_allocator(pool.malloc)
    # memory_limit is the job's whole memory: the context is taken from it, the pool's buffers get the cap
    cfg = _cfg(tmp_path, batch_size="auto", memory_limit=limit + cupy_standin.CONTEXT_BYTES, epochs=1)
    cfg = cfg.with_overrides({"data.dataset": "synthetic:classification(3000, 16, 4)",
                              "model.layers": [16, 512, 512, 4]})
    job, s, log = _run(cfg)
    auto = next(e for e in log if e["event"] == "autobatch")
    assert auto["probes"] == 1 and auto["confirmed"] < job.train_rows and s["batch_size"] == auto["confirmed"]
    assert s["batch_size"] % 8 == 0 and s["epochs"] == 1
    assert s["planned_bytes"] <= job.state.measured["cupy_pool_peak"] <= limit  # the capped pool, read
    over = next(b for b in range(auto["confirmed"], 10**5, 64) if job.setting.plan(b).total > limit)
    assert probe(job.setting, over, limit, job.backend).outcome == "out of memory"  # the cap is real


@pytest.mark.parametrize("blind", [{"pid": 1}, {"used_none": True}], ids=["host-pids", "no-figure"])
def test_profile_and_auto_batch_go_on_where_nvml_cannot_see_this_process(cp, monkeypatch, blind):
    """Defect 4: in a container NVML lists host PIDs, and some drivers give no per-process figure
    (usedGpuMemory None); measuring the context then raised, ending every probe and profile."""
    from memtrain.backend import get_backend
    from memtrain.memory import measure, overhead_cache
    from memtrain.memory.overhead import ASSUMED_CUDA_OVERHEAD
    from memtrain.nn.spec import ModelSpec
    from memtrain.profiler.estimate import Setting
    from memtrain.profiler.verify import profile

    monkeypatch.setitem(sys.modules, "pynvml", nvml_standin.nvml(**blind))
    backend = get_backend("cuda")
    assert measure.process_gpu_bytes(0) is None
    setting = Setting(ModelSpec.create([16, 32, 4]), "adam", device="cuda")
    r = profile(setting, 32, steps=2, backend=backend)
    assert (r["overhead"]["bytes"], r["overhead"]["source"]) == (ASSUMED_CUDA_OVERHEAD, "assumed")
    assert r["overhead"]["note"].startswith("NVML does not list this process on the device")
    assert r["nvml_process"] is None and r["ok"] and r["measured_total"] > ASSUMED_CUDA_OVERHEAD
    ab = auto_batch(setting, backend, memory_limit=16 * 1024**2, multiple_of=8)
    assert ab.probes[-1].outcome == "fits" and ab.confirmed > 0
    # `estimate --device cuda`: the assumed figure, and nothing cached as a measurement
    assert overhead_cache.cuda_overhead(backend) == (ASSUMED_CUDA_OVERHEAD, "assumed") and overhead_cache.load() == {}


def test_where_nvml_sees_this_process_the_context_is_measured(cp):
    from memtrain.backend import get_backend
    from memtrain.nn.spec import ModelSpec
    from memtrain.profiler.estimate import Setting
    from memtrain.profiler.verify import profile

    gc.collect()  # pools of earlier tests still in reference cycles would count, as on a device
    active = cp.get_default_memory_pool()
    others = sum(p.total_bytes() for p in cupy_standin._S.pools if p is not active)
    r = profile(Setting(ModelSpec.create([16, 32, 4]), "adam", device="cuda"), 32, steps=2, backend=get_backend("cuda"))
    assert r["overhead"] == {"bytes": cupy_standin.CONTEXT_BYTES + others, "source": "measured", "note": ""}
    assert r["ok"] and r["nvml_process"] >= cupy_standin.CONTEXT_BYTES + r["planned_total"] - r["overhead"]["bytes"]


def test_on_a_mig_instance_nvml_reads_the_instance_and_jobs_are_shown_it(cp, monkeypatch):
    """Matched by PCI bus id, a MIG instance resolved to its parent GPU; and CUDA_VISIBLE_DEVICES set to
    the parent's UUID hides the instances."""
    from memtrain.memory import measure

    monkeypatch.setitem(sys.modules, "pynvml", nvml_standin.nvml(mig=True))
    assert measure.handle_for_cuda_device(0) == "mig"
    assert measure.gpu_uuid(0) == "MIG-00010203-0405-0607-0809-0a0b0c0d0e0f"
    parent = "GPU-11111111-2222-3333-4444-555555555555"
    assert measure.cuda_visible_id(parent) == "MIG-00010203-0405-0607-0809-0a0b0c0d0e0f"
    monkeypatch.setitem(sys.modules, "pynvml", nvml_standin.nvml())
    assert measure.gpu_uuid(0) == "GPU-00010203-0405-0607-0809-0a0b0c0d0e0f"
    assert measure.cuda_visible_id(measure.gpu_uuid(0)) == measure.gpu_uuid(0)


@pytest.mark.parametrize("part", ["gpu_profile", "gpu_autobatch", "gpu_throughput"])
def test_the_gpu_suite_parts_run_their_cuda_branches_on_the_stand_in(cp, monkeypatch, tmp_path, part):
    """bench/gpu_suite.sh's parts at their dry-run sizes, but on the (stand-in) CUDA backend: the
    branches a dry run on the CPU never takes (capped pool, pool peaks, graph on/off, NVML)."""
    import importlib
    from pathlib import Path

    from memtrain.backend import get_backend

    bench = Path(__file__).resolve().parents[1] / "bench"
    monkeypatch.syspath_prepend(str(bench))
    mod = importlib.import_module(part)
    monkeypatch.setattr(mod, "backend_for", lambda dry_run: get_backend("cuda"))
    out = tmp_path / f"{part}.json"
    assert mod.main(["--out", str(out), "--time-limit", "120", "--dry-run"]) == 0
    data = json.loads(out.read_text())
    assert data["versions"]["device"] == "cuda:0" and data["rows"] and not data["skipped"]
    if part == "gpu_profile":
        assert all(r["ok"] and r["nvml_process"] for r in data["rows"]), data["rows"]
    elif part == "gpu_autobatch":
        row = data["rows"][0]  # under the cap: confirmed in one probe, never above what brute force finds
        assert row["probes"] == 1 and row["brute_force_complete"] and 0 < row["confirmed"] <= row["brute_force"]
    else:
        rows = data["rows"]
        assert {r["graph"] for r in rows} == {False, True} and all(r["peak_bytes"] > 0 for r in rows)
