"""One definition per fact of a job's memory (memtrain/train/jobplan.py): for the same job file the
Job, `memtrain estimate`, the sweep's schedule and the service agree on it. GPU cases run on the
CPU stand-in for CuPy and NVML (tests/cupy_standin.py, tests/nvml_standin.py)."""

import io
import json
import subprocess
import sys
import tomllib

import pytest
from click.testing import CliRunner

from memtrain.cli import main
from memtrain.config import load
from memtrain.errors import ConfigError
from memtrain.memory.budget import default_margin
from memtrain.memory.process import group_memory
from memtrain.profiler.autobatch import auto_batch
from memtrain.profiler.estimate import build_setting
from memtrain.select import runner
from memtrain.select import space as sp
from memtrain.select import sweep as sw
from memtrain.service import devices, planning
from memtrain.train import jobplan
from memtrain.train.job import Job

MIB = 1024**2
JOB = """
name = "plan"
seed = 1
device = "{device}"
[model]
layers = [16, 64, 4]
[optimizer]
name = "adam"
[training]
batch_size = {batch}
epochs = 1
{training}
[data]
dataset = "synthetic:classification({rows}, 16, 4)"
validation = 0.2
"""


def job_file(tmp_path, device="cpu", batch='"auto"', rows=400, **training):
    path = tmp_path / f"job-{device}-{len(list(tmp_path.glob('job-*')))}.toml"
    extra = "\n".join(f"{k} = {json.dumps(v)}" for k, v in training.items())
    path.write_text(JOB.format(device=device, batch=batch, rows=rows, training=extra))
    return path


def job_phases(path, tmp_path) -> Job:
    """The Job up to its chosen batch: device, data, batch and plan (nothing trained)."""
    cfg = load(path).with_overrides({"output.dir": str(tmp_path / "out")})
    job = Job(cfg, log_format="json", progress=False, stream=io.StringIO(), install_signals=False,
              batch_solver=auto_batch)
    job.open_device()
    job.load_data()
    job.choose_batch()
    return job


def estimate(path, *args) -> dict:
    r = CliRunner().invoke(main, ["estimate", "--config", str(path), "--format", "json", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def sweep_trial(path, tmp_path, budget: int, kind: str):
    sweep = sp.from_sweep_dict({"base": str(path), "space": {"lr": [0.001]}})
    (tp,) = sw.plan_trials(sweep, sp.expand(sweep), output_dir=tmp_path / "sweep", budget=budget, device_kind=kind)
    return tp


def service_checked(path, kind="cpu"):
    return planning.validate(tomllib.loads(path.read_text()), device_kinds=(kind,))


def test_the_batch_cap_is_one_rule(tmp_path):
    path = job_file(tmp_path, memory_limit="64MiB", max_batch_size=40)
    job = job_phases(path, tmp_path)
    cap = jobplan.batch_cap(job.train_rows, 40)
    assert cap == 40 < job.train_rows
    assert job.batch_size == cap
    assert estimate(path)["batch_size"] == cap
    assert jobplan.plan_job(load(path)).batch_size == cap
    checked = service_checked(path)
    assert checked.max_batch == cap and planning.largest_batch(checked, 64 * MIB, 64 * MIB) == cap


def test_the_process_overhead_is_one_figure_and_the_batch_leaves_room_for_it(tmp_path, monkeypatch):
    over = 3 * MIB
    monkeypatch.setenv("MEMTRAIN_PROCESS_OVERHEAD", str(over))
    limit = 4 * MIB
    path = job_file(tmp_path, rows=4000, memory_limit=limit)
    source = "given (MEMTRAIN_PROCESS_OVERHEAD)"
    r = estimate(path)
    assert r["overhead"] == {"bytes": over, "source": source, "kind": "process"}
    b = r["batch_size"]
    job = job_phases(path, tmp_path)
    assert (job.budget.overhead, job.budget.overhead_source) == (over, source)
    assert job.batch_size == b  # the Job solves what estimate solved: the plan plus the process in the limit
    plan = job.setting.plan
    room = limit - default_margin("cpu", limit)
    assert b < job.train_rows and plan(b).total + over <= room < plan(b + 1).total + over
    assert r["total"] == plan(b).total + over
    fixed = job_file(tmp_path, batch=32)
    tp = sweep_trial(fixed, tmp_path, 64 * MIB, "cpu")
    assert tp.overhead == (over, source)
    assert tp.planned_bytes == jobplan.plan_job(tp.cfg).total + over
    (cpu,) = devices.discover("cpu", {"cpu": 64 * MIB}, max_jobs=1)
    assert (cpu.overhead_bytes, cpu.overhead_source) == (over, source)
    p = planning.plan(planning.validate(tp.cfg.to_dict()), cpu.budget_bytes)  # the trial's job, submitted
    assert cpu.footprint(p.total) == tp.planned_bytes  # what the service admits is what the sweep reserves
    assert planning.worker_env(cpu) == {"MEMTRAIN_PROCESS_OVERHEAD": str(over)}  # and what its worker takes off


def test_a_limit_below_the_process_overhead_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMTRAIN_PROCESS_OVERHEAD", str(300 * MIB))
    path = job_file(tmp_path, memory_limit="256MiB")
    with pytest.raises(ConfigError, match=r"training.memory_limit: 256.00 MiB is the job's whole memory, and its "
                                          r"process overhead alone is 300.00 MiB \(given \(MEMTRAIN_PROCESS_OVERHEAD"):
        job_phases(path, tmp_path)


def test_estimate_cpu_measures_the_process_overhead_once_and_every_planner_uses_it(tmp_path, monkeypatch):
    """`memtrain estimate --device cpu --memory-limit 1GiB`: the process overhead is measured (a tiny job
    in a fresh interpreter, private pages plus shared ones once), cached, and in the largest batch's total."""
    monkeypatch.delenv("MEMTRAIN_PROCESS_OVERHEAD")
    r = CliRunner().invoke(main, ["estimate", "--device", "cpu", "--layers", "784,1024,10", "--memory-limit",
                                  "1GiB", "--format", "json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    over = out["overhead"]
    assert over["kind"] == "process" and over["source"].startswith("measured 20")
    assert 30 * MIB < over["bytes"] < 1024 * MIB  # the interpreter, NumPy, SciPy, numba: tens to hundreds of MiB
    fit = out["max_batch"]
    assert fit["batch_size"] > 0 and fit["total"] <= 1024**3 - fit["margin"]
    assert out["categories"]["overhead"] == over["bytes"]  # the largest batch's total holds it
    monkeypatch.setattr(jobplan, "_measure_process", lambda: pytest.fail("measured twice"))
    assert jobplan.process_overhead() == (over["bytes"], over["source"])
    assert jobplan.counted_overhead("cpu") == (over["bytes"], over["source"])  # the sweep's
    assert devices.cpu_overhead_bytes() == (over["bytes"], over["source"])  # the service's


def test_shared_pages_are_counted_once():
    """Two interpreters map the same libpython and NumPy: counted as a group, those pages count once."""
    code = "import numpy, sys; sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        me, other = group_memory(["self"]), group_memory([child.pid])
        both = group_memory(["self", child.pid])
    finally:
        child.stdin.close()
        child.stdout.close()
        child.wait(30)
    assert both.private == pytest.approx(me.private + other.private, rel=0.05)
    # this process runs threads (the numba warm-up) that turn a few shared pages private between the
    # reads: a page or a few of slack; counted once, the group is megabytes below the sum
    assert max(me.shared, other.shared) - MIB <= both.shared < me.shared + other.shared - 4 * MIB


def test_free_memory_is_one_definition(monkeypatch):
    """The service reads the free memory a job reads: a cgroup limit counts for both."""
    from memtrain.memory import budget as bud
    from memtrain.memory import measure

    monkeypatch.setattr(bud, "cgroup_room", lambda *a: 1024 * MIB)
    monkeypatch.setattr(measure, "mem_available", lambda: 8 * 1024 * MIB)
    assert devices.free_now("cpu") == bud.cpu_free()[0] == 1024 * MIB
    (cpu,) = devices.discover("cpu", {}, max_jobs=1, cpu_overhead=0)
    assert cpu.free_at_start_bytes == 1024 * MIB and cpu.budget_bytes == 1024 * MIB - devices.CPU_RESERVE_MIN


# -- on a GPU (the stand-in) ------------------------------------------------------------------------


GPU_OVERHEAD = 96 * 1024  # the stand-in GPU's device overhead, as if measured and cached (small: small limits)


@pytest.fixture
def cp(monkeypatch, host_launcher):
    import cupy_standin
    import nvml_standin

    from memtrain.memory import overhead_cache

    cp = cupy_standin.install(monkeypatch, host_launcher)
    monkeypatch.setitem(sys.modules, "pynvml", nvml_standin.nvml())
    overhead_cache.record(overhead_cache.gpu_model(0), GPU_OVERHEAD)  # the cache is the test's own (conftest)
    return cp


def test_residency_on_a_gpu_is_one_rule(cp, tmp_path):
    """The data set stays on the device when it takes at most resident_share of the limit."""
    for limit, resident in ((64 * MIB, True), (640 * 1024, False)):
        path = job_file(tmp_path, device="cuda", batch=16, rows=4000, memory_limit=limit)
        job = job_phases(path, tmp_path / str(limit))
        nbytes = jobplan.rows_of(job.data).nbytes
        assert jobplan.is_resident("cuda", nbytes, limit, 0.25) is resident
        assert job.resident is resident
        assert (build_setting(config=str(path), device="cuda").setting.resident_rows is not None) is resident
        assert jobplan.plan_job(load(path), device_kind="cuda").resident is resident  # the sweep's and service's
        served = planning.plan(service_checked(path, "cuda"), 64 * MIB)
        assert served.by_category == jobplan.plan_job(load(path), device_kind="cuda").by_category()
        tp = sweep_trial(path, tmp_path / f"s{limit}", limit, "cuda")
        assert tp.planned_bytes == jobplan.plan_job(tp.cfg, device_kind="cuda").total + tp.overhead[0]


def test_a_gpu_batch_is_rounded_by_one_rule(cp, tmp_path):
    setting = jobplan.plan_job(load(job_file(tmp_path, device="cuda", rows=40000, memory_limit=24 * MIB)),
                               device_kind="cuda").setting

    def unrounded(limit):
        return jobplan.solve(setting, limit - GPU_OVERHEAD - default_margin("cuda", limit)).batch_size

    limit = next(n for n in range(24 * MIB, 25 * MIB, 1024) if unrounded(n) % 8)  # rounding has work to do
    path = job_file(tmp_path, device="cuda", rows=40000, memory_limit=limit)
    job = job_phases(path, tmp_path)
    b, unrounded = job.batch_size, unrounded(limit)
    assert b % 8 == 0 and b < unrounded and b > unrounded - 8  # rounded down to a multiple of 8
    assert jobplan.plan_job(load(path), device_kind="cuda").batch_size == b
    assert estimate(path, "--device", "cuda")["batch_size"] == b
    checked = service_checked(path, "cuda")
    room = limit - GPU_OVERHEAD - default_margin("cuda", limit)
    assert planning.largest_batch(checked, limit, room) == b


def test_a_gpu_memory_limit_is_the_jobs_whole_memory_as_on_the_cpu(cp, tmp_path, monkeypatch):
    """One rule on both devices: the CUDA context (device overhead) is taken from memory_limit before
    the plan, by the Job as by `memtrain estimate --config` (no --overhead 0 needed) and the sweep."""
    limit = 24 * MIB
    path = job_file(tmp_path, device="cuda", rows=40000, memory_limit=limit)
    job = job_phases(path, tmp_path)
    assert (job.budget.overhead, job.budget.overhead_source) == (GPU_OVERHEAD, "measured")
    r = estimate(path, "--device", "cuda")
    assert r["overhead"]["bytes"] == GPU_OVERHEAD and r["overhead"]["kind"] == "device"
    b, plan = job.batch_size, job.setting.plan
    assert r["batch_size"] == b and r["total"] == plan(b).total + GPU_OVERHEAD
    assert plan(b).total + GPU_OVERHEAD <= limit - default_margin("cuda", limit) < plan(b + 8).total + GPU_OVERHEAD
    tp = sweep_trial(path, tmp_path / "sweep", limit, "cuda")
    assert tp.planned_bytes == limit and tp.overhead == (GPU_OVERHEAD, "measured")  # the trial's job fits it
    gpu = runner.device("cuda", limit, "given", 1, overhead=tp.overhead)  # a sweep's or service's GPU
    told = planning.worker_env(gpu)
    assert told == {"MEMTRAIN_DEVICE_OVERHEAD": str(GPU_OVERHEAD)}  # its worker takes off what it was admitted with
    small = job_file(tmp_path, device="cuda", memory_limit=GPU_OVERHEAD)
    with pytest.raises(ConfigError, match=r"training.memory_limit: 96.00 KiB is the job's whole memory, and its "
                                          r"device overhead alone is 96.00 KiB \(measured: the CUDA context"):
        job_phases(small, tmp_path / "small")
    monkeypatch.setenv("MEMTRAIN_DEVICE_OVERHEAD", str(2 * GPU_OVERHEAD))
    assert job_phases(path, tmp_path / "told").budget.overhead == 2 * GPU_OVERHEAD
