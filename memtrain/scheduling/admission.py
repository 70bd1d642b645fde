"""Which queued jobs start now, and where: a pure function of bytes, counts and times.

Rules (docs/service.md states them; tests/test_service_admission.py checks them with
hypothesis on a simulated clock):

1. A job fits a device when the device has a free job slot and the committed bytes
   (the plans of its running jobs plus one process overhead each) plus the job's own
   plan and overhead stay within the device's budget. Committed <= budget always.
2. Best fit: of the devices a job fits, the one left with the least free bytes (an
   auto-batch job takes the one with the most, since it grows its batch into it).
3. Priority, then FIFO with bounded backfill: jobs are taken by priority (higher
   first), in submission order within a priority. The first job that does not fit is
   the head. Later jobs may pass it (backfill) only while the
   head has waited less than `head_wait` seconds since it entered the queue. Once it
   has waited that long, nothing more starts until it has started.
4. A user's quota: the bytes a user's running jobs commit (over all devices) plus the
   job's own stay within that user's quota. A job over its user's quota waits and is
   never the head: one user's queue cannot hold up another's.

Why the head's wait is bounded: from the moment the head has waited `head_wait` s
(or became the head, if later), no job starts; every running job ends within the
longest job's run time D, after which its devices are empty and the head (planned
at submission to fit an empty device) starts. So it waits at most
max(became head, queued + head_wait) + D (+ one scheduler tick), as long as no job of a
higher priority arrives meanwhile (it goes ahead: that is what a priority is).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DeviceLoad:
    """A device as admission sees it: its budget, the bytes and job slots its running jobs hold."""

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
    priority: int = 0
    user: str = "default"


@dataclass
class Quota:
    """Bytes each user may commit at once over all devices: `per_user` overrides `default`;
    None is no limit. `used` is what each user's running jobs commit now."""

    default: int | None = None
    per_user: dict = field(default_factory=dict)
    used: dict = field(default_factory=dict)

    def limit(self, user: str) -> int | None:
        return self.per_user.get(user, self.default)

    def left(self, user: str) -> int | None:
        limit = self.limit(user)
        return None if limit is None else limit - self.used.get(user, 0)


def order(queue) -> list:
    """Higher priority first; within a priority the queue's own (submission) order: sorted() is stable."""
    return sorted(queue, key=lambda job: -job.priority)


def place(job: Waiting, slots) -> DeviceLoad | None:
    fits = [s for s in slots if s.kind == job.kind and s.running < s.max_jobs and s.committed + job.need <= s.budget]
    if not fits:
        return None
    if job.auto:
        return max(fits, key=lambda s: (s.room(), s.name))
    return min(fits, key=lambda s: (s.room() - job.need, s.name))


def admit(queue, slots, now: float, head_wait: float, reserve=None, quota: Quota | None = None) -> list:
    """[(job id, device name)] to start now, in order. `queue` is in FIFO order; `slots`
    (and `quota.used`) are updated as jobs are placed. `reserve(job, slot, room)` returns the
    bytes the job will actually commit on that slot with at most `room` bytes (an auto job:
    its solved batch's plan); default `need`."""
    starts = []
    head = None
    quota = quota or Quota()
    for job in order(queue):
        if head is not None and now - head.queued_at >= head_wait:
            break  # the head has waited long enough: nothing passes it any more
        left = quota.left(job.user)
        if left is not None and job.need > left:
            continue  # over its user's quota: it waits, and is not the head
        slot = place(job, slots)
        if slot is None:
            if head is None:
                head = job
            continue
        room = slot.room() if left is None else min(slot.room(), left)
        took = job.need if reserve is None else reserve(job, slot, room)
        slot.committed += took
        slot.running += 1
        quota.used[job.user] = quota.used.get(job.user, 0) + took
        starts.append((job.id, slot.name))
    return starts


def over_quota(job: Waiting, quota: Quota | None) -> str | None:
    """Why a job waits for its user's quota, in words; None when the quota lets it start."""
    from memtrain.units import format_bytes  # noqa: PLC0415

    left = None if quota is None else quota.left(job.user)
    if left is None or job.need <= left:
        return None
    return (f"user {job.user}'s quota: needs {format_bytes(job.need)}, {format_bytes(quota.used.get(job.user, 0))} "
            f"of {format_bytes(quota.limit(job.user))} committed by their running jobs")


def blocking(job: Waiting, slots, quota: Quota | None = None) -> str:
    """Why a queued job waits, in words: every reason, not only the first (the status page,
    GET /jobs/{id} and the job page show it)."""
    return "; ".join(reasons(job, slots, quota))


def reasons(job: Waiting, slots, quota: Quota | None = None) -> list:
    """Each thing that keeps a queued job from starting now: its user's quota, no device of its
    kind, every job slot taken, too little free memory on every device; a job that fits waits its
    turn (FIFO)."""
    from memtrain.units import format_bytes  # noqa: PLC0415

    over = over_quota(job, quota)
    mine = [s for s in slots if s.kind == job.kind]
    if not mine:
        return [over] * bool(over) + [f"no {job.kind} device"]
    out = [over] if over else []
    best = max(mine, key=lambda s: s.room())
    if all(s.running >= s.max_jobs for s in mine):
        out.append(f"all {job.kind} job slots are taken ({best.max_jobs} per device)")
    if all(s.committed + job.need > s.budget for s in mine):
        out.append(f"needs {format_bytes(job.need)}, {format_bytes(max(0, best.room()))} free on {best.name}")
    if not out:  # it fits: an earlier job that does not is the head, and it has waited its head-wait
        out.append("it fits: it starts at the scheduler's next pass, unless an earlier job that does not fit "
                   "has waited past --head-wait (nothing passes that job then)")
    return out
