"""Free memory is what the process can get (cgroup, RLIMIT_AS), and an auto batch
without --memory-limit is bounded before it probes: never all the machine's memory."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from memtrain.backend import get_backend
from memtrain.memory import budget as bud
from memtrain.nn.spec import ModelSpec
from memtrain.profiler import autobatch as ab
from memtrain.train.setting import Setting

ROOM = 384 * 1024**2  # address space a child may still map under RLIMIT_AS
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}


def capped(code: str, room: int = ROOM, cwd=None):
    """Runs `code` in a child whose RLIMIT_AS is `room` bytes above its address space after imports."""
    prelude = textwrap.dedent(f"""
        import resource, sys
        import numpy
        import memtrain.cli, memtrain.config, memtrain.render, memtrain.data, sklearn.datasets
        import memtrain.profiler.autobatch, memtrain.profiler.estimate, memtrain.train.job  # before the cap
        from memtrain.memory.measure import proc_kib
        vm = proc_kib("/proc/self/status", "VmSize")  # bytes
        resource.setrlimit(resource.RLIMIT_AS, (vm + {room}, resource.RLIM_INFINITY))
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          env=ENV, timeout=120, cwd=cwd)


def test_cgroup_v2_room_is_the_tightest_limit_less_usage(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "memory.max").write_text("1000000\n")
    (tmp_path / "a" / "memory.current").write_text("400000\n")
    (tmp_path / "a" / "b" / "memory.max").write_text("max\n")  # no limit of its own
    (tmp_path / "a" / "b" / "memory.current").write_text("300000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/a/b\n")
    assert bud.cgroup_room(tmp_path, str(proc)) == 600_000
    (tmp_path / "a" / "b" / "memory.max").write_text("500000\n")
    assert bud.cgroup_room(tmp_path, str(proc)) == 200_000


def test_cgroup_v1_room_and_no_limit(tmp_path):
    d = tmp_path / "memory" / "job"
    d.mkdir(parents=True)
    (d / "memory.limit_in_bytes").write_text(str(2 * 1024**3))
    (d / "memory.usage_in_bytes").write_text(str(1024**3))
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text(str(2**63 - 4096))  # v1's "unlimited"
    (tmp_path / "memory" / "memory.usage_in_bytes").write_text("5")
    proc = tmp_path / "cgroup"
    proc.write_text("12:pids:/job\n4:cpu,memory:/job\n")
    assert bud.cgroup_room(tmp_path, str(proc)) == 1024**3
    proc.write_text("12:pids:/job\n")
    assert bud.cgroup_room(tmp_path, str(proc)) is None


def test_free_memory_respects_rlimit_as():
    """The limit is set ROOM bytes above the address space: the reported room is ROOM, less
    what the few lines after setrlimit mapped (a unit slip, KiB for bytes, is off by ~1000x)."""
    out = capped("""
        from memtrain.memory.budget import cpu_free, rlimit_as_room
        print(rlimit_as_room(), *cpu_free(), sep="|")
    """)
    assert out.returncode == 0, out.stderr
    room, free, source = out.stdout.strip().split("|")
    assert ROOM - 8 * 1024**2 <= int(room) <= ROOM
    assert int(free) == int(room) and source == "RLIMIT_AS now"


def test_estimate_max_batch_fits_the_process_limit_not_the_host():
    out = capped("""
        from memtrain.cli import main
        main(["estimate", "--layers", "64,128,10", "--max-batch", "--format", "json"])
    """)
    assert out.returncode == 0, out.stderr
    mb = json.loads(out.stdout)["max_batch"]
    assert mb["memory_limit"] <= ROOM * bud.DEFAULT_CPU_SHARE  # MemAvailable would be the host's memory
    assert "default: 25% of available memory" in mb["budget_source"] and "RLIMIT_AS" in mb["budget_source"]


def test_autobatch_without_a_limit_uses_the_stated_default_and_fits_it():
    out = capped("""
        from memtrain.cli import main
        main(["autobatch", "--layers", "64,128,10", "--format", "json"])
    """)
    assert out.returncode == 0, out.stderr  # no MemoryError: nothing beyond the budget was allocated
    r = json.loads(out.stdout)
    assert r["budget"] + r["margin"] <= ROOM * bud.DEFAULT_CPU_SHARE
    assert r["budget_source"].startswith("default: 25% of available memory") and "--memory-limit" in r["budget_source"]
    assert r["probes_used"] == 1 and r["probes"][0]["measured"] <= r["budget"] + r["margin"]


def test_the_default_cpu_budget_is_capped():
    free = 64 * 1024**3
    b, source = bud.default_cpu_budget(free, "MemAvailable now")
    assert b == bud.DEFAULT_CPU_CAP == 4 * 1024**3 and "at most 4.00 GiB" in source
    assert bud.default_cpu_budget(1000, "x")[0] == 250


def test_auto_batch_is_capped_before_it_probes(monkeypatch):
    setting = Setting(ModelSpec.create([64, 128, 10]), "adam")
    probed = []
    real = ab.probe
    monkeypatch.setattr(ab, "probe", lambda s, b, budget, backend: probed.append(b) or real(s, b, budget, backend))
    r = ab.auto_batch(setting, get_backend("cpu"), memory_limit=1024**3, max_batch=100, dataset_size=500)
    assert r.analytic == r.confirmed == 100 and probed == [100]  # the plan alone allows ~500,000
    r = ab.auto_batch(setting, get_backend("cpu"), memory_limit=1024**3, dataset_size=300)
    assert r.analytic == 300 and probed == [100, 300]


def test_a_job_auto_batch_without_a_limit_never_probes_beyond_its_rows(tmp_path):
    """The README's command: 1,079 training rows, so no batch above 1,079 is solved or probed
    (it probed ~24.7 GB on a 24 GiB machine); a 1 GiB address-space cap would stop anything bigger.
    --device cpu: `auto` would try CuPy, whose CUDA libraries map most of that address space."""
    out = capped("""
        from memtrain.cli import main
        main(["train", "--layers", "64,32,10", "--dataset", "digits", "--batch-size", "auto", "--epochs", "1",
              "--log-format", "json", "--name", "bounded", "--device", "cpu"])
    """, room=1024**3, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    auto = next(e for e in events if e.get("event") == "autobatch")
    assert auto["analytic"] == auto["confirmed"] == auto["used"] == 1079 and auto["probes"] == 1


# -- the rules as functions, with the machine's answers stood in for (fast: mutation testing runs these) ------


def test_the_margin_is_a_fixed_part_plus_a_thousandth():
    assert bud.default_margin("cpu", 10**9) == 256 * 1024 + 10**6
    assert bud.default_margin("cuda", 10**9) == 8 * 1024**2 + 10**6
    assert bud.with_margin("cpu", 10**9) == (10**9 - 256 * 1024 - 10**6, 256 * 1024 + 10**6)
    assert bud.with_margin("cuda", 10**9, margin=5) == (10**9 - 5, 5)


def test_the_default_cpu_budget_is_a_quarter_of_free_memory_at_most_4_gib():
    share, source = bud.default_cpu_budget(8 * 1024**3, "MemAvailable now")
    assert share == 2 * 1024**3
    assert source == ("default: 25% of available memory (8.00 GiB, MemAvailable now), at most 4.00 GiB; "
                      "set --memory-limit")
    assert bud.default_cpu_budget(64 * 1024**3, "x")[0] == 4 * 1024**3


def test_cpu_free_is_the_least_of_memavailable_cgroup_and_rlimit(monkeypatch):
    monkeypatch.setattr(bud.measure, "mem_available", lambda: 900)
    monkeypatch.setattr(bud, "cgroup_room", lambda: None)
    monkeypatch.setattr(bud, "rlimit_as_room", lambda: None)
    assert bud.cpu_free() == (900, "MemAvailable now")
    monkeypatch.setattr(bud, "cgroup_room", lambda: 700)
    assert bud.cpu_free() == (700, "cgroup memory limit now")
    monkeypatch.setattr(bud, "rlimit_as_room", lambda: 500)
    assert bud.cpu_free() == (500, "RLIMIT_AS now")
    monkeypatch.setattr(bud, "rlimit_as_room", lambda: -20)  # already past the limit: nothing is free
    assert bud.cpu_free() == (0, "RLIMIT_AS now")


def test_rlimit_as_room_is_the_soft_limit_less_the_address_space(monkeypatch):
    monkeypatch.setattr(bud.resource, "getrlimit", lambda which: (bud.resource.RLIM_INFINITY, 5))
    assert bud.rlimit_as_room() is None
    seen = []
    monkeypatch.setattr(bud.resource, "getrlimit", lambda which: seen.append(which) or (10 * 1024**2, 5))
    monkeypatch.setattr(bud.measure, "proc_kib", lambda path, key: seen.append((path, key)) or 4 * 1024**2)  # bytes
    assert bud.rlimit_as_room() == 6 * 1024**2
    assert seen == [bud.resource.RLIMIT_AS, ("/proc/self/status", "VmSize")]


class _Backend:
    def __init__(self, cuda):
        self.is_cuda, self.index, self.name = cuda, 1, "cuda:1" if cuda else "cpu"


def test_device_and_auto_budgets(monkeypatch):
    monkeypatch.setattr(bud.measure, "gpu_free_bytes", lambda index: 1000 * (index + 1))
    monkeypatch.setattr(bud, "cpu_free", lambda: (8 * 1024**3, "MemAvailable now"))
    assert bud.device_budget(_Backend(True)) == (2000, "free on cuda:1 now (NVML)")
    assert bud.device_budget(_Backend(False)) == (8 * 1024**3, "MemAvailable now")
    assert bud.auto_budget(_Backend(True), already_allocated=5) == (2005, "free on cuda:1 now (NVML)")
    share, source = bud.auto_budget(_Backend(False), already_allocated=4 * 1024**3)
    assert share == 3 * 1024**3 and source == ("default: 25% of available memory (12.00 GiB, MemAvailable now), at "
                                               "most 4.00 GiB; set --memory-limit")
    assert bud.auto_budget(_Backend(True)) == (2000, "free on cuda:1 now (NVML)")  # nothing allocated by default


def test_check_fits_names_the_batch_the_bytes_and_the_largest_that_fits(monkeypatch):
    monkeypatch.setattr(bud, "cpu_free", lambda: (10_000, "MemAvailable now"))
    total_at = lambda b: 1000 + 100 * b  # noqa: E731
    bud.check_fits(total_at, 90, _Backend(False))  # 10,000 B: fits exactly
    bud.check_fits(total_at, 95, _Backend(False), already_allocated=500)  # the data set already counted
    try:
        bud.check_fits(total_at, 91, _Backend(False), field="training.micro_batch_size")
    except bud.DeviceError as exc:
        assert str(exc) == ("training.micro_batch_size: batch 91 needs 9.86 KiB (10,100 B) but 9.77 KiB (10,000 B) "
                            "is available (MemAvailable now); the largest batch that fits is 90")
    else:
        raise AssertionError("a batch that does not fit passed")
    monkeypatch.setattr(bud, "cpu_free", lambda: (500, "RLIMIT_AS now"))
    try:
        bud.check_fits(total_at, 1, _Backend(False))
    except bud.DeviceError as exc:
        assert str(exc).endswith("(RLIMIT_AS now); not even batch 1 fits (600 B short): use smaller layers or a "
                                 "smaller data set")
        assert str(exc).startswith("training.batch_size: batch 1 needs 1.07 KiB (1,100 B)")


def _limits(d, limit, usage, v1=False):
    d.mkdir(parents=True, exist_ok=True)
    names = ("memory.limit_in_bytes", "memory.usage_in_bytes") if v1 else ("memory.max", "memory.current")
    (d / names[0]).write_text(f"{limit}\n")
    (d / names[1]).write_text(f"{usage}\n")


def test_cgroup_room_reads_odd_names_both_hierarchies_and_the_unlimited_bound(tmp_path):
    proc = tmp_path / "cgroup"
    _limits(tmp_path / "a:b" / "boxX", 5000, 1000)  # a cgroup name may hold ':' and end in any letter
    proc.write_text("0::/a:b/boxX\n")
    assert bud.cgroup_room(tmp_path, str(proc)) == 4000
    _limits(tmp_path / "memory" / "job", 9000, 1000, v1=True)  # a hybrid host: v1 memory controller and v2
    proc.write_text("0::/a:b/boxX\n4:memory:/job\n")
    assert bud.cgroup_room(tmp_path, str(proc)) == 4000
    proc.write_text("4:memory:/job\n0::/a:b/boxX\n")
    assert bud.cgroup_room(tmp_path, str(proc)) == 4000
    proc.write_text("3::/a:b/boxX\n")  # no controller on a v1 line: not the unified hierarchy either
    assert bud.cgroup_room(tmp_path, str(proc)) is None
    _limits(tmp_path / "memory" / "job", 3000, 1000, v1=True)  # the tighter one counts, whichever line comes first
    proc.write_text("4:memory:/job\n0::/a:b/boxX\n")
    assert bud.cgroup_room(tmp_path, str(proc)) == 2000
    _limits(tmp_path, 700, 200)  # a line with its fields missing reads as the root of the unified hierarchy
    proc.write_text("0\n")
    assert bud.cgroup_room(tmp_path, str(proc)) == 500
    _limits(tmp_path / "memory" / "job", 1 << 60, 0, v1=True)  # at and past 2**60: v1's way of saying unlimited
    proc.write_text("4:memory:/job\n")
    assert bud.cgroup_room(tmp_path, str(proc)) is None
    _limits(tmp_path / "memory" / "job", (1 << 60) - 1, 1, v1=True)
    assert bud.cgroup_room(tmp_path, str(proc)) == (1 << 60) - 2
    assert bud.cgroup_room(tmp_path, str(tmp_path / "missing")) is None


def test_cgroup_room_reads_this_process_cgroup_by_default(tmp_path):
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        path = line.split(":", 2)[2].strip("/")
        _limits(tmp_path / path, 10_000, 4_000)
        _limits(tmp_path / "memory" / path, 10_000, 4_000, v1=True)
    assert bud.cgroup_room(tmp_path) == 6_000


def test_train_under_a_256_mib_address_space_fails_in_one_line_not_a_spin(tmp_path):
    """SciPy's OpenBLAS spun at 100% CPU inside its import under RLIMIT_AS 256 MiB until killed."""
    import resource
    import time

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "memtrain.cli", "train", os.path.join(repo, "docs", "example-job.toml"),
                        "--device", "cpu", "--output-dir", str(tmp_path / "out")], capture_output=True, text=True,
                       env=ENV, timeout=60, cwd=tmp_path,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (256 * 1024**2, resource.RLIM_INFINITY)))
    assert r.returncode == 2 and time.monotonic() - t < 30
    assert r.stderr.startswith("memtrain: error: RLIMIT_AS: this process may map 256.00 MiB of address space")
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
