"""The devices the service places jobs on, their budgets and the per-process overhead.

Budget (what plans may commit on a device), unless --budget DEVICE=SIZE gives it:
- CPU: the free memory at start (memory/budget.py cpu_free: the least of MemAvailable, the
  room under the service's cgroup limit and under its RLIMIT_AS), less a reserve of 10% of
  it (at least 256 MiB) for the service itself and everything else on the machine.
- GPU: NVML's free memory at start (its total less what other processes hold),
  less a reserve of 256 MiB + 2% of it.

Overhead each job takes besides its plan (train/jobplan.py counted_overhead, the figure
`memtrain estimate` and `memtrain sweep` use too):
- CPU: the process overhead, --overhead when given, else measured once per machine and Python
  by train/process_probe.py (a tiny job with its metrics exporter; private pages plus shared
  pages once) and cached in the cache dir; the workers get the same figure
  (MEMTRAIN_PROCESS_OVERHEAD), so a job sizes its plan as the service admitted it.
- GPU: memtrain's measurement for the GPU's model when one is cached (memory/overhead_cache.py,
  stated as measured), else its assumed CUDA context size (memory/overhead.py, stated as assumed).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from memtrain.errors import MemtrainError
from memtrain.units import format_bytes

CPU_RESERVE_FRACTION = 0.10
CPU_RESERVE_MIN = 256 * 1024**2
GPU_RESERVE = 256 * 1024**2
GPU_RESERVE_FRACTION = 0.02


@dataclass(frozen=True)
class Device:
    name: str  # cpu | cuda:N
    kind: str  # cpu | cuda
    free_at_start_bytes: int  # the free memory at start (cpu_free / NVML free), the default budget's base
    budget_bytes: int  # what plans may commit here
    budget_source: str
    max_jobs: int
    overhead_bytes: int  # per job process
    overhead_source: str
    threads_per_job: int  # BLAS threads each job on it gets
    uuid: str = ""  # a GPU's NVML uuid: the jobs' CUDA_VISIBLE_DEVICES, whatever the CUDA ordinals

    def footprint(self, plan_total: int) -> int:
        """What a job with this plan takes of the budget: train/jobplan.py's footprint, plan + overhead."""
        from memtrain.train.jobplan import footprint  # noqa: PLC0415 - the trainer loads with the first job

        return footprint(plan_total, self.overhead_bytes)

    @property
    def index(self) -> int | None:
        return int(self.name.split(":")[1]) if self.kind == "cuda" else None

    def to_dict(self) -> dict:
        return asdict(self)


def parse_devices(text: str) -> list:
    """"auto", "cpu" or "cuda:0,cuda:1" -> device names ("auto": every GPU NVML lists, else cpu)."""
    text = (text or "auto").strip().lower()
    if text == "auto":
        return [f"cuda:{g['index']}" for g in _gpus()] or ["cpu"]
    names = [t.strip() for t in text.split(",") if t.strip()]
    for n in names:
        if n != "cpu" and not (n.startswith("cuda:") and n[5:].isdigit()):
            raise MemtrainError(f"--devices: expected auto, cpu or cuda:N[,cuda:M...], got {n!r}")
    if len(set(names)) != len(names):
        raise MemtrainError(f"--devices: {text!r} names a device twice")
    return names


def _gpus() -> list:
    try:
        from memtrain.memory.measure import gpu_list  # noqa: PLC0415

        return gpu_list(with_processes=False)
    except Exception:  # no NVML library or driver: no GPUs to place jobs on
        return []


def gpu_info(name: str, with_processes: bool = False) -> dict:
    """NVML's description of GPU `cuda:N`, N being NVML's index (as `memtrain devices` lists
    them). NVML only: the service never creates a CUDA context, which would take memory
    from the jobs."""
    index = int(name.split(":")[1])
    try:
        from memtrain.memory.measure import gpu_list  # noqa: PLC0415

        found = [g for g in gpu_list(with_processes=with_processes) if g["index"] == index]
    except Exception as exc:
        raise MemtrainError(f"--devices: {name}: cannot read it with NVML ({exc})") from None
    if not found:
        raise MemtrainError(f"--devices: {name}: NVML lists no GPU with index {index}")
    return found[0]


def free_now(name: str) -> int:
    """Free memory now: memory/budget.py cpu_free (as every job reads it), or NVML's free memory of the GPU."""
    from memtrain.memory.budget import cpu_free  # noqa: PLC0415

    if name == "cpu":
        return cpu_free()[0]
    return int(gpu_info(name)["memory_free"])


def gpu_process_bytes(name: str, pids) -> int:
    """NVML's used memory of the processes `pids` on GPU `name` (the jobs' own measurement)."""
    pids = set(pids)
    return sum(int(p["used_bytes"] or 0) for p in gpu_info(name, True).get("processes", []) if p["pid"] in pids)


def default_budget(name: str, cap: int) -> tuple:
    if name == "cpu":
        reserve = max(CPU_RESERVE_MIN, int(CPU_RESERVE_FRACTION * cap))
        return max(0, cap - reserve), f"free memory {format_bytes(cap)} less a {format_bytes(reserve)} reserve"
    reserve = GPU_RESERVE + int(GPU_RESERVE_FRACTION * cap)
    return max(0, cap - reserve), f"NVML free {format_bytes(cap)} less a {format_bytes(reserve)} reserve"


def discover(devices: str, budgets: dict, *, max_jobs: int | None, cpu_overhead: int | None = None,
             cores: int | None = None) -> list:
    """The Device list the scheduler uses; `budgets` maps a device name to bytes (--budget)."""
    names = parse_devices(devices)
    unknown = set(budgets) - set(names)
    if unknown:
        raise MemtrainError(f"--budget: {', '.join(sorted(unknown))} is not among the devices ({', '.join(names)})")
    cores = cores or os.cpu_count() or 1
    out = []
    for name in names:
        kind = "cpu" if name == "cpu" else "cuda"
        cap = free_now(name)
        budget, source = (budgets[name], "given") if name in budgets else default_budget(name, cap)
        jobs = max_jobs or (cores if kind == "cpu" else 8)
        if kind == "cpu":
            over, over_source = cpu_overhead_bytes(cpu_overhead)
            threads = max(1, cores // jobs)
        else:
            over, over_source = gpu_overhead_bytes(gpu_info(name).get("name", ""))
            threads = 1
        uuid = gpu_info(name)["uuid"] if kind == "cuda" else ""
        out.append(Device(name, kind, cap, budget, source, jobs, over, over_source, threads, uuid))
    return out


def cluster(executor, budgets: dict, *, cpu_overhead: int | None = None) -> list:
    """With an executor that places jobs itself (Ray): one device, `ray`, whose budget is what one
    job may plan: the largest node's memory resource (a job runs on one node), or --budget ray=SIZE
    when smaller. The executor, not the service, decides how many run at once, so the job slots are
    unbounded here; each job gets one BLAS thread (and reserves one CPU on its node)."""
    unknown = set(budgets) - {"ray"}
    if unknown:
        raise MemtrainError(f"--budget: with --executor ray the one device is `ray` (one node's memory), got "
                            f"{', '.join(sorted(unknown))}")
    largest = executor.largest_memory()
    if largest <= 0:
        raise MemtrainError(f"--executor {executor.name}: no alive node with a CPU and a memory resource")
    budget, source = largest, f"the largest {executor.name} node's memory resource"
    if "ray" in budgets and budgets["ray"] < largest:
        budget, source = budgets["ray"], "given"
    over, over_source = cpu_overhead_bytes(cpu_overhead)
    return [Device("ray", "cpu", largest, budget, source, 1_000_000, over, over_source, 1)]


def gpu_overhead_bytes(model: str) -> tuple:
    """(bytes, source) for a GPU: memtrain's measurement for this GPU model when one is cached
    (memory/overhead_cache: any memtrain run on such a GPU records it), else the assumed CUDA
    context. The service itself never measures: that would take a CUDA context of its own."""
    from memtrain.memory import overhead, overhead_cache  # noqa: PLC0415 - only when a GPU is served

    cached = overhead_cache.load().get(model)
    if cached is not None:
        return cached["bytes"], "measured"
    return overhead.assumed("cuda")


def cpu_overhead_bytes(given: int | None = None) -> tuple:
    """(bytes, how it was found): --overhead, else the process overhead every planner counts
    (train/jobplan.py: MEMTRAIN_PROCESS_OVERHEAD, the cached measurement, or measured now)."""
    if given is not None:
        return int(given), "given"
    from memtrain.train.jobplan import process_overhead  # noqa: PLC0415 - the trainer loads only when measuring

    return process_overhead()
