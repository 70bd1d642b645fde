"""Which queued jobs start now, and where: a pure function of bytes, counts and times.

Rules (docs/service.md states them; tests/test_service_admission.py checks them with
hypothesis on a simulated clock):

1. A job fits a device when the device has a free job slot and the committed bytes
   (the plans of its running jobs plus one process overhead each) plus the job's own
   plan and overhead stay within the device's budget. Committed <= budget always.
2. Best fit: of the devices a job fits, the one left with the least free bytes (an
   auto-batch job takes the one with the most, since it grows its batch into it).
3. FIFO with bounded backfill: jobs are taken in submission order. The first job
   that does not fit is the head. Later jobs may pass it (backfill) only while the
   head has waited less than `head_wait` seconds since it entered the queue. Once it
   has waited that long, nothing more starts until it has started.

Why the head's wait is bounded: from the moment the head has waited `head_wait` s
(or became the head, if later), no job starts; every running job ends within the
longest job's run time D, after which its devices are empty and the head (planned
at submission to fit an empty device) starts. So it waits at most
max(became head, queued + head_wait) + D (+ one scheduler tick).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Slot:
    """A device as admission sees it."""

    name: str
    kind: str
    budget: int
    committed: int = 0
    running: int = 0
    max_jobs: int = 1

    def room(self) -> int:
        return self.budget - self.committed


@dataclass(frozen=True)
class Waiting:
    """A queued job: `need` is its plan (at batch 1 for auto) plus the process overhead."""

    id: str
    kind: str
    need: int
    queued_at: float
    auto: bool = False


def place(job: Waiting, slots) -> Slot | None:
    fits = [s for s in slots if s.kind == job.kind and s.running < s.max_jobs and s.committed + job.need <= s.budget]
    if not fits:
        return None
    if job.auto:
        return max(fits, key=lambda s: (s.room(), s.name))
    return min(fits, key=lambda s: (s.room() - job.need, s.name))


def admit(queue, slots, now: float, head_wait: float, reserve=None) -> list:
    """[(job id, device name)] to start now, in order. `queue` is in FIFO order; `slots`
    are updated as jobs are placed. `reserve(job, slot)` returns the bytes the job will
    actually commit on that slot (an auto job: its solved batch's plan); default `need`."""
    starts = []
    head = None
    for job in queue:
        if head is not None and now - head.queued_at >= head_wait:
            break  # the head has waited long enough: nothing passes it any more
        slot = place(job, slots)
        if slot is None:
            if head is None:
                head = job
            continue
        slot.committed += job.need if reserve is None else reserve(job, slot)
        slot.running += 1
        starts.append((job.id, slot.name))
    return starts


def blocking(job: Waiting, slots) -> str:
    """Why a queued job waits, in words: every reason, not only the first (the status page,
    GET /jobs/{id} and the job page show it)."""
    return "; ".join(reasons(job, slots))


def reasons(job: Waiting, slots) -> list:
    """Each thing that keeps a queued job from starting now: no device of its kind, every job slot
    taken, too little free memory on every device; a job that fits waits its turn (FIFO)."""
    from memtrain.units import format_bytes  # noqa: PLC0415

    mine = [s for s in slots if s.kind == job.kind]
    if not mine:
        return [f"no {job.kind} device"]
    out = []
    best = max(mine, key=lambda s: s.room())
    if all(s.running >= s.max_jobs for s in mine):
        out.append(f"all {job.kind} job slots are taken ({best.max_jobs} per device)")
    if all(s.committed + job.need > s.budget for s in mine):
        out.append(f"needs {format_bytes(job.need)}, {format_bytes(max(0, best.room()))} free on {best.name}")
    if not out:  # it fits: an earlier job that does not is the head, and it has waited its head-wait
        out.append("it fits: it starts at the scheduler's next pass, unless an earlier job that does not fit "
                   "has waited past --head-wait (nothing passes that job then)")
    return out
