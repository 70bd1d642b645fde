"""Admission rules (memtrain/scheduling/admission.py) on a simulated clock, with hypothesis:
committed <= budget at every instant, every job that fits alone runs, and the head's
wait is bounded by max(became head, queued + head_wait) + the longest run."""

from hypothesis import given, settings
from hypothesis import strategies as st

from memtrain.scheduling.admission import DeviceLoad, Quota, Waiting, admit, blocking, over_quota, place, reasons

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


def simulate(jobs, head_wait, max_jobs, quota=None):
    slots = [DeviceLoad(f"d{i}", "cpu", b, max_jobs=max_jobs) for i, b in enumerate(BUDGETS)]
    limits = quota or Quota()
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
        waiting = [Waiting(j["id"], "cpu", j["need"], j["arrive"], priority=j.get("priority", 0),
                           user=j.get("user", "default")) for j in queue]
        used = {}
        for j in running:
            used[j.get("user", "default")] = used.get(j.get("user", "default"), 0) + j["need"]
        quota = Quota(limits.default, limits.per_user, dict(used))
        for jid, dev in admit(waiting, slots, t, head_wait, quota=quota):
            j = next(j for j in queue if j["id"] == jid)
            queue.remove(j)
            running.append(j)
            started[jid] = (t, dev)
        for s in slots:
            assert 0 <= s.committed <= s.budget and s.running <= s.max_jobs
        for user, used in quota.used.items():  # what admit counted: the running jobs' own needs
            assert used == sum(j["need"] for j in running if j.get("user", "default") == user)
            assert limits.limit(user) is None or used <= limits.limit(user)
        if queue:  # the head: the first queued job that did not start
            head_since.setdefault(queue[0]["id"], t)
        t += 1
        assert t < 10_000, "a job never started"
    return started, head_since, max_run


USERS = ["alice", "bob", "carol"]


@st.composite
def shared_traces(draw):
    """Jobs with priorities and users, and quotas that hold each job alone (so every job can run)."""
    jobs, head_wait, max_jobs = draw(traces())
    for j in jobs:
        j["priority"] = draw(st.integers(-2, 2))
        j["user"] = draw(st.sampled_from(USERS))
    biggest = max(j["need"] for j in jobs)
    default = draw(st.one_of(st.none(), st.integers(biggest, 2 * max(BUDGETS))))
    per_user = {u: draw(st.integers(biggest, 2 * max(BUDGETS))) for u in USERS[:draw(st.integers(0, 2))]}
    return jobs, head_wait, max_jobs, Quota(default, per_user)


@settings(max_examples=200, deadline=None)
@given(shared_traces())
def test_quotas_and_budgets_hold_at_every_instant_and_every_job_runs(trace):
    jobs, head_wait, max_jobs, quota = trace
    started, _, _ = simulate(jobs, head_wait, max_jobs, quota)
    assert set(started) == {j["id"] for j in jobs}


@settings(max_examples=200, deadline=None)
@given(shared_traces())
def test_without_backfill_jobs_start_by_priority_then_submission(trace):
    """head_wait 0 and no quota: nothing passes the head, so of two jobs queued together the one
    of higher priority (or, within a priority, the earlier) never starts later."""
    jobs, _, max_jobs, _ = trace
    started, _, _ = simulate(jobs, 0, max_jobs)
    rank = {j["id"]: (-j["priority"], i) for i, j in enumerate(jobs)}
    for a in jobs:
        for b in jobs:
            together = max(a["arrive"], b["arrive"]) < min(started[a["id"]][0], started[b["id"]][0]) + 1
            if rank[a["id"]] < rank[b["id"]] and together:
                assert started[a["id"]][0] <= started[b["id"]][0], (a, b)


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
    slot = DeviceLoad("cpu", "cpu", 100, committed=60, running=1, max_jobs=4)
    big, small = Waiting("big", "cpu", 50, 0.0), Waiting("small", "cpu", 30, 1.0)
    assert admit([big, small], [slot], now=10.0, head_wait=60) == [("small", "cpu")]
    slot = DeviceLoad("cpu", "cpu", 100, committed=60, running=1, max_jobs=4)
    assert admit([big, small], [slot], now=61.0, head_wait=60) == []


def test_head_wait_is_the_heads_own_wait_not_the_passing_jobs():
    """The head (queued at 0) has waited 61 s >= 60: a job queued at 50 (11 s old) may not pass it."""
    big, small = Waiting("big", "cpu", 50, 0.0), Waiting("small", "cpu", 30, 50.0)
    slot = DeviceLoad("cpu", "cpu", 100, committed=60, running=1, max_jobs=4)
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
    slot = DeviceLoad("d", "cpu", 100, committed=60, running=1, max_jobs=10)
    queue = [Waiting("head", "cpu", 50, float(head_at))]
    queue += [Waiting(f"j{i}", "cpu", 1, float(t)) for i, t in enumerate(later)]
    started = [job for job, _ in admit(queue, [slot], float(now), head_wait)]
    if now - head_at >= head_wait:
        assert started == [], (head_wait, head_at, now, later)
    else:
        assert started == [f"j{i}" for i in range(len(later))]  # backfill while the head may still wait


def test_best_fit_and_auto_jobs_take_the_emptiest_device():
    slots = [DeviceLoad("a", "cuda", 100, committed=50), DeviceLoad("b", "cuda", 100, committed=10)]
    for s in slots:
        s.max_jobs = 4
    assert place(Waiting("x", "cuda", 40, 0), slots).name == "a"
    assert place(Waiting("y", "cuda", 40, 0, auto=True), slots).name == "b"
    assert place(Waiting("z", "cpu", 1, 0), slots) is None
    assert blocking(Waiting("w", "cuda", 95, 0), slots) == "needs 95 B, 90 B free on b"


def test_a_user_over_quota_waits_without_holding_up_others():
    slot = DeviceLoad("cpu", "cpu", 1000, max_jobs=4)
    quota = Quota(default=500, per_user={"bob": 900}, used={"alice": 400})
    queue = [Waiting("a2", "cpu", 200, 0.0, user="alice"), Waiting("b1", "cpu", 300, 1.0, user="bob"),
             Waiting("b2", "cpu", 300, 2.0, user="bob"), Waiting("a3", "cpu", 100, 3.0, user="alice")]
    # head_wait 0: a head would stop everything behind it; alice's a2 is over her quota, so it is no head
    assert admit(queue, [slot], now=100.0, head_wait=0, quota=quota) == [("b1", "cpu"), ("b2", "cpu"),
                                                                           ("a3", "cpu")]
    assert quota.used == {"alice": 500, "bob": 600}
    assert over_quota(queue[0], quota) == ("user alice's quota: needs 200 B, 500 B of 500 B committed by their "
                                           "running jobs")
    assert over_quota(queue[1], quota) is None and over_quota(queue[0], None) is None
    # every reason: the quota's first, and no "it fits" beside it
    assert reasons(queue[0], [slot], quota) == [over_quota(queue[0], quota)]
    full = DeviceLoad("cpu", "cpu", 1000, running=4, max_jobs=4)
    assert reasons(queue[0], [full], quota) == [over_quota(queue[0], quota), "all cpu job slots are taken (4 per "
                                                                             "device)"]


def test_priority_goes_first_and_an_auto_job_grows_only_into_its_quota():
    slot = DeviceLoad("cpu", "cpu", 1000, max_jobs=4)
    low, high = Waiting("low", "cpu", 100, 0.0), Waiting("high", "cpu", 100, 5.0, priority=3)
    auto = Waiting("auto", "cpu", 50, 6.0, auto=True, user="bob")
    rooms = {}

    def reserve(job, s, room):
        rooms[job.id] = room
        return room if job.auto else job.need

    quota = Quota(per_user={"bob": 300})
    assert admit([low, high, auto], [slot], 10.0, 0, reserve, quota) == [("high", "cpu"), ("low", "cpu"),
                                                                          ("auto", "cpu")]
    assert rooms == {"high": 1000, "low": 900, "auto": 300} and slot.committed == 500


def test_the_head_stops_backfill_at_exactly_head_wait_and_reserve_sets_the_commitment():
    big, small = Waiting("big", "cpu", 50, 10.0), Waiting("small", "cpu", 30, 11.0)
    assert admit([big, small], [DeviceLoad("cpu", "cpu", 100, committed=60, max_jobs=4)], now=70.0, head_wait=60) == []
    slot = DeviceLoad("cpu", "cpu", 100, committed=60, max_jobs=4)
    seen = []

    def reserve(job, s, room):
        seen.append((job.id, s.name))
        return 35  # an auto job commits its solved batch's plan, not its batch-1 need

    assert admit([big, small], [slot], now=69.0, head_wait=60, reserve=reserve) == [("small", "cpu")]
    assert seen == [("small", "cpu")] and (slot.committed, slot.running) == (95, 1)


def test_blocking_says_why_a_job_waits():
    full = [DeviceLoad("a", "cpu", 100, committed=10, running=2, max_jobs=2)]
    assert blocking(Waiting("w", "cpu", 5, 0), full) == "all cpu job slots are taken (2 per device)"
    over = [DeviceLoad("a", "cpu", 100, committed=120, running=1, max_jobs=2)]  # over-committed by a restart
    assert blocking(Waiting("w", "cpu", 5, 0), over) == "needs 5 B, 0 B free on a"
    assert blocking(Waiting("w", "cuda", 5, 0), over) == "no cuda device"
    assert place(Waiting("w", "cpu", 40, 0), [DeviceLoad("a", "cpu", 100, committed=60, max_jobs=2)]).name == "a"


def test_a_waiting_job_hears_every_reason_it_waits():
    """mid-2 of issue 24 waited for a slot and for memory, and heard only of the slot."""
    full = DeviceLoad("cpu", "cpu", 100, committed=90, running=2, max_jobs=2)
    assert reasons(Waiting("w", "cpu", 50, 0), [full]) == [
        "all cpu job slots are taken (2 per device)", "needs 50 B, 10 B free on cpu"]
    assert blocking(Waiting("w", "cpu", 50, 0), [full]) == (
        "all cpu job slots are taken (2 per device); needs 50 B, 10 B free on cpu")
    assert reasons(Waiting("w", "cpu", 5, 0), [full]) == ["all cpu job slots are taken (2 per device)"]
    room = DeviceLoad("cpu", "cpu", 100, committed=10, running=1, max_jobs=2)
    assert reasons(Waiting("w", "cpu", 50, 0), [room])[0].startswith("it fits: it starts at the scheduler's next")
    assert reasons(Waiting("w", "cuda", 5, 0), [room]) == ["no cuda device"]


def test_a_job_that_fits_exactly_is_told_it_starts_soon():
    exact = DeviceLoad("cpu", "cpu", 100, committed=60, running=1, max_jobs=2)
    assert reasons(Waiting("w", "cpu", 40, 0), [exact]) == [
        "it fits: it starts at the scheduler's next pass, unless an earlier job that does not fit has waited past "
        "--head-wait (nothing passes that job then)"]


def test_a_users_quota_is_named_among_every_reason_with_what_they_use_and_may_use():
    """The words a queued job's page shows for a quota: what it needs, what the user's running
    jobs commit (nothing yet is 0 B) and the user's own limit, also beside "no device"."""
    quota = Quota(default=1000, per_user={"ann": 3000}, used={"ann": 2500})
    gpu = DeviceLoad("cuda:0", "cuda", budget=10_000)
    ann = Waiting("a", "cpu", need=600, queued_at=0.0, user="ann")
    assert blocking(ann, [gpu], quota) == (
        "user ann's quota: needs 600 B, 2.44 KiB of 2.93 KiB committed by their running jobs; no cpu device")
    bob = Waiting("b", "cuda", need=1200, queued_at=0.0, user="bob")  # uses nothing yet: 0 B, the default limit
    assert blocking(bob, [gpu], quota) == "user bob's quota: needs 1.17 KiB, 0 B of 1000 B committed by their running jobs"
    assert reasons(Waiting("c", "cpu", need=10, queued_at=0.0, user="bob"), [gpu], quota) == ["no cpu device"]
