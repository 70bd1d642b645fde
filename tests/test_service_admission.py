"""Admission rules (memtrain/service/admission.py) on a simulated clock, with hypothesis:
committed <= budget at every instant, every job that fits alone runs, and the head's
wait is bounded by max(became head, queued + head_wait) + the longest run."""

from hypothesis import given, settings
from hypothesis import strategies as st

from memtrain.service.admission import Slot, Waiting, admit, blocking, place, reasons

BUDGETS = [1000, 600]


@st.composite
def traces(draw):
    n = draw(st.integers(1, 25))
    jobs = []
    for i in range(n):
        jobs.append({"id": f"j{i}", "need": draw(st.integers(1, max(BUDGETS))),
                     "arrive": draw(st.integers(0, 50)), "run": draw(st.integers(1, 30))})
    jobs.sort(key=lambda j: j["arrive"])  # submission order is FIFO order
    return jobs, draw(st.sampled_from([0, 5, 20, 10**6])), draw(st.integers(1, 3))


def simulate(jobs, head_wait, max_jobs):
    slots = [Slot(f"d{i}", "cpu", b, max_jobs=max_jobs) for i, b in enumerate(BUDGETS)]
    queue, running, started, ended, head_since = [], [], {}, {}, {}
    pending = list(jobs)
    t = 0
    max_run = max(j["run"] for j in jobs)
    while len(ended) < len(jobs):
        for j in [j for j in running if started[j["id"]][0] + j["run"] <= t]:
            running.remove(j)
            ended[j["id"]] = t
            s = next(s for s in slots if s.name == started[j["id"]][1])
            s.committed -= j["need"]
            s.running -= 1
        while pending and pending[0]["arrive"] <= t:
            queue.append(pending.pop(0))
        waiting = [Waiting(j["id"], "cpu", j["need"], j["arrive"]) for j in queue]
        for jid, dev in admit(waiting, slots, t, head_wait):
            j = next(j for j in queue if j["id"] == jid)
            queue.remove(j)
            running.append(j)
            started[jid] = (t, dev)
        for s in slots:
            assert 0 <= s.committed <= s.budget and s.running <= s.max_jobs
        if queue:  # the head: the first queued job that did not start
            head_since.setdefault(queue[0]["id"], t)
        t += 1
        assert t < 10_000, "a job never started"
    return started, head_since, max_run


@settings(max_examples=200, deadline=None)
@given(traces())
def test_budget_never_exceeded_every_job_runs_and_head_wait_is_bounded(trace):
    jobs, head_wait, max_jobs = trace
    started, head_since, max_run = simulate(jobs, head_wait, max_jobs)
    assert set(started) == {j["id"] for j in jobs}
    for j in jobs:
        if j["id"] in head_since:
            bound = max(head_since[j["id"]], j["arrive"] + head_wait) + max_run + 1
            assert started[j["id"]][0] <= bound, (j, head_wait)


def test_backfill_passes_a_waiting_head_only_within_head_wait():
    slot = Slot("cpu", "cpu", 100, committed=60, running=1, max_jobs=4)
    big, small = Waiting("big", "cpu", 50, 0.0), Waiting("small", "cpu", 30, 1.0)
    assert admit([big, small], [slot], now=10.0, head_wait=60) == [("small", "cpu")]
    slot = Slot("cpu", "cpu", 100, committed=60, running=1, max_jobs=4)
    assert admit([big, small], [slot], now=61.0, head_wait=60) == []


def test_head_wait_is_the_heads_own_wait_not_the_passing_jobs():
    """The head (queued at 0) has waited 61 s >= 60: a job queued at 50 (11 s old) may not pass it."""
    big, small = Waiting("big", "cpu", 50, 0.0), Waiting("small", "cpu", 30, 50.0)
    slot = Slot("cpu", "cpu", 100, committed=60, running=1, max_jobs=4)
    assert admit([big, small], [slot], now=61.0, head_wait=60) == []
    assert admit([big, small], [slot], now=59.0, head_wait=60) == [("small", "cpu")]
    assert (slot.committed, slot.running) == (90, 2)  # what the started job reserves, counted


@st.composite
def blocked_queues(draw):
    """A head that cannot fit, then jobs that would, each with its own arrival time: some
    younger than head_wait when the head is older, so the two waits separate."""
    head_wait = draw(st.integers(1, 100))
    head_at = draw(st.integers(0, 100))
    now = head_at + draw(st.integers(0, 2 * head_wait))
    later = draw(st.lists(st.integers(head_at, now), min_size=1, max_size=6))
    return head_wait, head_at, now, sorted(later)


@settings(max_examples=200, deadline=None)
@given(blocked_queues())
def test_nothing_passes_a_head_that_has_waited_head_wait(case):
    head_wait, head_at, now, later = case
    slot = Slot("d", "cpu", 100, committed=60, running=1, max_jobs=10)
    queue = [Waiting("head", "cpu", 50, float(head_at))]
    queue += [Waiting(f"j{i}", "cpu", 1, float(t)) for i, t in enumerate(later)]
    started = [job for job, _ in admit(queue, [slot], float(now), head_wait)]
    if now - head_at >= head_wait:
        assert started == [], (head_wait, head_at, now, later)
    else:
        assert started == [f"j{i}" for i in range(len(later))]  # backfill while the head may still wait


def test_best_fit_and_auto_jobs_take_the_emptiest_device():
    slots = [Slot("a", "cuda", 100, committed=50), Slot("b", "cuda", 100, committed=10)]
    for s in slots:
        s.max_jobs = 4
    assert place(Waiting("x", "cuda", 40, 0), slots).name == "a"
    assert place(Waiting("y", "cuda", 40, 0, auto=True), slots).name == "b"
    assert place(Waiting("z", "cpu", 1, 0), slots) is None
    assert blocking(Waiting("w", "cuda", 95, 0), slots) == "needs 95 B, 90 B free on b"


def test_the_head_stops_backfill_at_exactly_head_wait_and_reserve_sets_the_commitment():
    big, small = Waiting("big", "cpu", 50, 10.0), Waiting("small", "cpu", 30, 11.0)
    assert admit([big, small], [Slot("cpu", "cpu", 100, committed=60, max_jobs=4)], now=70.0, head_wait=60) == []
    slot = Slot("cpu", "cpu", 100, committed=60, max_jobs=4)
    seen = []

    def reserve(job, s):
        seen.append((job.id, s.name))
        return 35  # an auto job commits its solved batch's plan, not its batch-1 need

    assert admit([big, small], [slot], now=69.0, head_wait=60, reserve=reserve) == [("small", "cpu")]
    assert seen == [("small", "cpu")] and (slot.committed, slot.running) == (95, 1)


def test_blocking_says_why_a_job_waits():
    full = [Slot("a", "cpu", 100, committed=10, running=2, max_jobs=2)]
    assert blocking(Waiting("w", "cpu", 5, 0), full) == "all cpu job slots are taken (2 per device)"
    over = [Slot("a", "cpu", 100, committed=120, running=1, max_jobs=2)]  # over-committed by a restart
    assert blocking(Waiting("w", "cpu", 5, 0), over) == "needs 5 B, 0 B free on a"
    assert blocking(Waiting("w", "cuda", 5, 0), over) == "no cuda device"
    assert place(Waiting("w", "cpu", 40, 0), [Slot("a", "cpu", 100, committed=60, max_jobs=2)]).name == "a"


def test_a_waiting_job_hears_every_reason_it_waits():
    """mid-2 of issue 24 waited for a slot and for memory, and heard only of the slot."""
    full = Slot("cpu", "cpu", 100, committed=90, running=2, max_jobs=2)
    assert reasons(Waiting("w", "cpu", 50, 0), [full]) == [
        "all cpu job slots are taken (2 per device)", "needs 50 B, 10 B free on cpu"]
    assert blocking(Waiting("w", "cpu", 50, 0), [full]) == (
        "all cpu job slots are taken (2 per device); needs 50 B, 10 B free on cpu")
    assert reasons(Waiting("w", "cpu", 5, 0), [full]) == ["all cpu job slots are taken (2 per device)"]
    room = Slot("cpu", "cpu", 100, committed=10, running=1, max_jobs=2)
    assert reasons(Waiting("w", "cpu", 50, 0), [room])[0].startswith("it fits: it starts at the scheduler's next")
    assert reasons(Waiting("w", "cuda", 5, 0), [room]) == ["no cuda device"]


def test_a_job_that_fits_exactly_is_told_it_starts_soon():
    exact = Slot("cpu", "cpu", 100, committed=60, running=1, max_jobs=2)
    assert reasons(Waiting("w", "cpu", 40, 0), [exact]) == [
        "it fits: it starts at the scheduler's next pass, unless an earlier job that does not fit has waited past "
        "--head-wait (nothing passes that job then)"]
