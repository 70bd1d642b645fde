"""The scheduler's decisions, one tick at a time, with an executor that starts nothing and
answers as told (no process: these run in milliseconds, so mutation testing can run them
for every mutant of memtrain/scheduling/scheduler.py).

The store is the truth: what it says before a process exists, after it ends, after a
cancel and after a restart is what a service killed at that point would act on."""

import dataclasses
import json
import signal
import socket
import time

import pytest
from service_helpers import Scripted

from memtrain.launch.executor import Exit
from memtrain.launch.worker import EXIT
from memtrain.scheduling.scheduler import JobConflict
from memtrain.service.core import Service, Settings
from memtrain.units import format_bytes

GIB = 1024**3


def job(name="j", epochs=1, **training) -> bytes:
    return json.dumps({"name": name, "model": {"layers": [64, 16, 10]},
                       "training": {"epochs": epochs, "batch_size": 32, **training}}).encode()


@pytest.fixture
def service(tmp_path):
    ex = Scripted()
    s = Service(Settings(state_dir=tmp_path / "state", devices="cpu", budgets={"cpu": GIB}, cpu_overhead=1000,
                         max_jobs_per_device=2, executor=ex, metrics_ports=False))
    s.ex = ex
    yield s
    s.stop()


def max_jobs(service, n: int) -> None:
    devices = service.scheduler.devices
    devices["cpu"] = dataclasses.replace(devices["cpu"], max_jobs=n)


def submit(service, body=None) -> str:
    return service.submit(body or job(), "application/json")["id"]


# -- 5. launch after commit -----------------------------------------------------------------------


def test_the_store_says_running_before_the_executor_starts_the_process(service):
    seen = []
    service.ex.on_start = lambda launch: seen.append(service.store.get(launch.job_id))
    job_id = submit(service)
    (stored,) = seen
    assert stored.state == "running" and stored.device == "cpu" and stored.ref is None
    assert stored.attempts == 1 and stored.started_at is not None
    assert stored.reserved_bytes == stored.planned_bytes + 1000  # the plan and the process overhead
    after = service.store.get(job_id)
    assert after.ref == json.dumps({"n": 1}) and after.executor == "scripted"


def test_a_cancel_landing_between_commit_and_launch_reaches_the_process(service):
    def cancel_now(launch):
        service.cancel(launch.job_id)

    service.ex.on_start = cancel_now
    job_id = submit(service)
    stored = service.store.get(job_id)
    # the process was started: the store must know it (running, its handle), and the process must be told
    assert stored.state == "running" and stored.ref and stored.cancel_requested
    assert service.ex.cancelled == [job_id]
    service.ex.exits[job_id] = Exit(None, signal.SIGTERM)
    service.scheduler.tick()
    assert service.store.get(job_id).state == "cancelled"


def test_an_executor_that_cannot_start_fails_the_job_with_its_reason(service):
    def refuse(launch):
        raise OSError("no such interpreter")

    service.ex.on_start = refuse
    job_id = submit(service)
    stored = service.store.get(job_id)
    assert stored.state == "failed" and stored.reason == "could not start: no such interpreter"
    assert stored.reserved_bytes == 0 and stored.ended_at is not None


# -- admission glue: what is committed, where, how many ------------------------------------------


def test_jobs_start_while_slots_and_bytes_last_and_the_launch_is_the_plan(service):
    ids = [submit(service) for _ in range(3)]
    first, second, third = (service.store.get(i) for i in ids)
    assert [first.state, second.state, third.state] == ["running", "running", "queued"]  # 2 per device
    (slot,) = service.scheduler.device_loads()
    assert (slot.running, slot.committed) == (2, first.reserved_bytes + second.reserved_bytes)
    assert slot.budget == service.devices[0].budget_bytes and slot.max_jobs == 2
    launch = service.ex.launches[0]
    cpu = service.devices[0]
    assert launch.job_id == ids[0] and launch.device == "cpu" and launch.metrics_port is None
    assert launch.resources.planned_bytes == first.planned_bytes and launch.resources.overhead_bytes == 1000
    assert launch.resources.num_cpus == cpu.threads_per_job == first.threads
    assert launch.resources.device_capacity_bytes == cpu.budget_bytes
    env = dict(launch.env)
    assert env.pop("MEMTRAIN_PROCESS_OVERHEAD") == "1000"  # the worker takes off what the service counted
    assert set(env.values()) == {cpu.threads_per_job} and "OMP_NUM_THREADS" in env
    assert launch.run_dir == first.run_dir and launch.log_path == f"{first.run_dir}/job.log"
    assert launch.config["checkpoint"]["dir"] == f"{first.run_dir}/checkpoints"
    assert launch.config["training"]["memory_limit"] == cpu.budget_bytes and launch.config["device"] == "cpu"
    w = service.scheduler.waiting(third)
    assert (w.id, w.kind, w.need, w.queued_at, w.auto) == (ids[2], "cpu", third.planned_bytes + 1000,
                                                           third.queued_at, False)
    service.ex.exits[ids[0]] = Exit(0)
    service.scheduler.tick()
    assert service.store.get(ids[0]).state == "succeeded" and service.store.get(ids[2]).state == "running"


def test_a_job_waits_for_bytes_and_an_auto_job_takes_what_is_left(tmp_path):
    ex = Scripted()
    probe = Service(Settings(state_dir=tmp_path / "probe", devices="cpu", budgets={"cpu": GIB}, cpu_overhead=0,
                             executor=Scripted(), metrics_ports=False))
    planned = probe.submit(job(), "application/json")["planned_bytes"]
    probe.stop()
    budget = 2 * planned + 500  # two jobs fit (with 100 B overhead each), a third does not
    s = Service(Settings(state_dir=tmp_path / "s", devices="cpu", budgets={"cpu": budget}, cpu_overhead=100,
                         max_jobs_per_device=8, executor=ex, metrics_ports=False))
    try:
        ids = [submit(s) for _ in range(3)]
        assert [s.store.get(i).state for i in ids] == ["running", "running", "queued"]
        (slot,) = s.scheduler.device_loads()
        assert slot.committed == 2 * (planned + 100) <= budget
        assert s.job(ids[2])["reason"] == f"waiting: needs {format_bytes(planned + 100)}, 300 B free on cpu"
        ex.exits[ids[0]] = Exit(0)
        ex.exits[ids[1]] = Exit(0)
        s.scheduler.tick()  # both end and the third starts within the same tick
        assert s.store.get(ids[2]).state == "running"
        ex.exits[ids[2]] = Exit(0)
        s.scheduler.tick()
        auto = s.submit(job(batch_size="auto"), "application/json")
        stored = s.store.get(auto["id"])
        room = budget - 100
        assert stored.state == "running" and stored.planned_bytes <= room
        batch = stored.batch_size
        assert batch > 32 and ex.launches[-1].config["training"]["batch_size"] == batch
        bigger = planning_plan_at(stored, budget, batch + 1)
        assert batch == stored.checked["max_batch"] or bigger > room  # the largest that fits what is left
    finally:
        s.stop()


def planning_plan_at(stored, budget, batch) -> int:
    from memtrain.service import planning

    return planning.plan_at(planning.restore(stored), budget, batch).total


# -- how a job ends ------------------------------------------------------------------------------


def ended(service, exit_, *, result=None, cancel=False, attempts_left=True):
    """Submit a job, let its process end with `exit_` (and an exit record with `result`), tick."""
    job_id = submit(service)
    stored = service.store.get(job_id)
    if not attempts_left:
        service.store.update(job_id, attempts=stored.max_attempts)
    if result is not None:
        with open(f"{stored.run_dir}/{EXIT}", "w") as f:
            json.dump({"code": exit_.code, "result": result}, f)
    if cancel:
        service.cancel(job_id)
        assert service.ex.cancelled[-1] == job_id
    service.ex.exits[job_id] = exit_
    service.scheduler.tick()
    return service.store.get(job_id)


def test_a_clean_exit_succeeds_with_its_result_and_frees_its_bytes(service):
    out = ended(service, Exit(0), result={"steps": 27})
    assert (out.state, out.reason, out.result, out.reserved_bytes) == ("succeeded", None, {"steps": 27}, 0)
    assert out.ended_at is not None and service.events["started"] == 1
    assert service.scheduler.device_loads()[0].committed == 0


def test_a_job_that_finished_before_the_cancel_reached_it_succeeded(service):
    assert ended(service, Exit(0), result={"steps": 27}, cancel=True).state == "succeeded"


def test_a_cancelled_job_says_whether_it_saved_a_checkpoint(service):
    out = ended(service, Exit(0), result={"stopped": "SIGTERM"}, cancel=True)
    assert (out.state, out.reason) == ("cancelled", "cancelled on request (checkpoint saved)")
    out = ended(service, Exit(None, signal.SIGTERM), cancel=True)
    assert (out.state, out.reason) == ("cancelled", "cancelled on request")


def test_a_bad_config_fails_without_a_retry(service):
    out = ended(service, Exit(2, None, "training.epochs: expected >= 1"))
    assert (out.state, out.reason, out.attempts) == ("failed", "training.epochs: expected >= 1", 1)
    assert ended(service, Exit(2)).reason == "bad config (exit status 2)"


def test_an_error_exit_fails_with_its_last_log_line(service):
    assert ended(service, Exit(1, None, "ValueError: boom")).reason == "ValueError: boom"
    assert ended(service, Exit(4)).reason == "exit status 4"  # (3 is ExitCode.RETRY: retried)


def test_a_killed_job_is_retried_from_its_checkpoint_until_its_attempts_are_spent(service):
    out = ended(service, Exit(None, signal.SIGKILL, "killed by SIGKILL"))
    job_id = out.id
    # requeued, then started again by the same tick's admission: the second of its 2 attempts
    assert out.state == "running" and out.attempts == 2 and service.events["requeued"] == 1
    assert out.reason is None and len(service.ex.launches) == 2
    service.ex.exits[job_id] = Exit(None, signal.SIGKILL, "killed by SIGKILL")
    service.scheduler.tick()
    out = service.store.get(job_id)
    assert (out.state, out.reason) == ("failed", "killed by SIGKILL; gave up after 2 attempt(s)")
    out = ended(service, Exit(0), result={"stopped": "SIGTERM"}, attempts_left=False)  # a stop nobody asked for
    assert out.reason == "stopped by a signal it did not ask for; gave up after 2 attempt(s)"


def test_a_requeued_job_says_why_and_keeps_its_attempt_count(service):
    max_jobs(service, 1)
    blocker, job_id = submit(service), submit(service)
    service.store.update(job_id, state="running", device="cpu", attempts=1, ref=json.dumps({"n": 9}),
                         executor="scripted", reserved_bytes=5)
    service.ex.exits[job_id] = Exit(None, signal.SIGKILL)
    service.scheduler.tick()
    out = service.store.get(job_id)
    assert out.state == "queued" and out.attempts == 1 and out.reserved_bytes == 0
    assert out.reason == ("stopped by a signal it did not ask for; retrying from its last checkpoint "
                             "(attempt 2 of 2)")
    assert out.device is None and out.ref is None and out.queued_at >= out.submitted_at
    assert service.store.get(blocker).state == "running"


# -- cancel --------------------------------------------------------------------------------------


def test_cancel_a_queued_job_at_once_and_a_running_one_through_its_process(service):
    max_jobs(service, 1)
    running, queued = submit(service), submit(service)
    out = service.cancel(queued)
    assert (out["state"], out["reason"]) == ("cancelled", "cancelled on request (it had not started)")
    stored = service.store.get(queued)
    assert stored.reserved_bytes == 0 and stored.ended_at is not None and service.ex.cancelled == []
    assert service.cancel(running)["state"] == "running" and service.ex.cancelled == [running]
    assert service.store.get(running).cancel_requested
    assert service.cancel("nope") is None
    with pytest.raises(JobConflict, match=f"job {queued}: already cancelled; nothing to cancel"):
        service.cancel(queued)  # a second cancel changes nothing
    assert service.store.get(queued).state == "cancelled"


# -- restart -------------------------------------------------------------------------------------


def restarted(tmp_path, ex):
    return Service(Settings(state_dir=tmp_path / "state", devices="cpu", budgets={"cpu": GIB}, cpu_overhead=1000,
                            max_jobs_per_device=2, executor=ex, metrics_ports=False))


def test_after_a_restart_live_processes_are_readopted_and_gone_ones_resume(tmp_path):
    first = restarted(tmp_path, Scripted())
    alive, gone, finished = (submit(first) for _ in range(2)), None, None
    alive, gone = list(alive)
    max_jobs(first, 4)
    finished = submit(first)
    queued = submit(first)
    first.store.update(queued, state="queued", ref=json.dumps({"n": 7}), executor="scripted", attempts=1)
    first.stop()
    ex = Scripted()
    ex.alive = {alive}
    ex.exits[finished] = Exit(0)
    second = restarted(tmp_path, ex)
    try:
        second.scheduler.recover()
        a, g, f, q = (second.store.get(i) for i in (alive, gone, finished, queued))
        assert a.state == "running" and a.attempts == 1
        assert g.state == "queued" and g.attempts == 0 and g.ref is None
        assert g.reason == "the service restarted and its process was gone; resuming from its checkpoint"
        assert f.state == "succeeded"
        assert q.ref is None and q.attempts == 0  # handed over once, but its executor does not know it
    finally:
        second.stop()


def test_a_process_of_another_executor_is_not_adopted(tmp_path):
    first = restarted(tmp_path, Scripted())
    job_id = submit(first)
    first.store.update(job_id, executor="ray")
    first.stop()
    ex = Scripted()
    ex.alive = {job_id}
    second = restarted(tmp_path, ex)
    try:
        second.scheduler.recover()
        assert second.store.get(job_id).state == "queued"
    finally:
        second.stop()


def test_a_queued_job_that_no_longer_fits_fails_naming_the_budget(tmp_path):
    first = restarted(tmp_path, Scripted())
    max_jobs(first, 0)  # nothing starts
    job_id = submit(first)
    first.stop()
    second = Service(Settings(state_dir=tmp_path / "state", devices="cpu", budgets={"cpu": 2048}, cpu_overhead=0,
                              executor=Scripted(), metrics_ports=False))
    try:
        second.scheduler.tick()
        out = second.store.get(job_id)
        assert out.state == "failed" and out.reason.startswith("never fits this service's devices: needs ")
        assert "; the largest cpu budget is 2.00 KiB (it was planned by a service run with other" in out.reason
    finally:
        second.stop()


# -- metrics ports ---------------------------------------------------------------------------------


def test_each_running_job_gets_its_own_metrics_port_and_the_scrape_address(tmp_path):
    ex = Scripted()
    s = Service(Settings(state_dir=tmp_path / "state", devices="cpu", budgets={"cpu": GIB}, cpu_overhead=0,
                         max_jobs_per_device=4, executor=ex, job_metrics_address="memtrain"))
    try:
        ids = [submit(s) for _ in range(3)]
        ports = [launch.metrics_port for launch in ex.launches]
        assert len(set(ports)) == 3 and all(ports)
        assert [launch.config["metrics"]["port"] for launch in ex.launches] == ports
        assert [s.store.get(i).metrics_target for i in ids] == [f"memtrain:{p}" for p in ports]
    finally:
        s.stop()


# -- what the survivors of a mutation run showed untested (docs/testing.md) ------------------------


def test_recover_keeps_a_handed_over_job_its_executor_still_holds_and_frees_one_it_lost(tmp_path):
    first = restarted(tmp_path, Scripted())
    max_jobs(first, 0)
    held, lost, other = submit(first), submit(first), submit(first)
    for job_id, executor in ((held, "scripted"), (lost, "scripted"), (other, "ray")):
        first.store.update(job_id, ref=json.dumps({"n": job_id}), executor=executor, attempts=2)
    first.stop()
    ex = Scripted()
    ex.alive = {held, other}  # `other` was started by another executor: this one cannot hold it
    second = restarted(tmp_path, ex)
    try:
        second.scheduler.recover()
        h, lo, o = (second.store.get(i) for i in (held, lost, other))
        assert (h.ref, h.executor, h.attempts) == (json.dumps({"n": held}), "scripted", 2)
        assert (lo.ref, lo.executor, lo.attempts, lo.state) == (None, None, 1, "queued")
        assert (o.ref, o.executor, o.attempts) == (None, None, 1)
    finally:
        second.stop()


def test_recover_finishes_what_ended_while_away_and_says_what_it_readopted(tmp_path, caplog):
    first = restarted(tmp_path, Scripted())
    max_jobs(first, 8)
    alive, crashed, killed, recorded = (submit(first) for _ in range(4))
    done = submit(first)
    first.store.update(done, state="succeeded", ref=json.dumps({"n": 99}), executor="scripted")
    first.store.update(killed, attempts=2)
    run_dir = first.store.get(recorded).run_dir
    with open(f"{run_dir}/{EXIT}", "w") as f:
        json.dump({"code": 1, "reason": "ValueError: boom"}, f)
    first.stop()
    ex = Scripted()
    ex.alive = {alive}
    ex.exits = {crashed: Exit(1, None, "RuntimeError: bad"), killed: Exit(None), recorded: Exit(None),
                done: Exit(1)}
    second = restarted(tmp_path, ex)
    try:
        with caplog.at_level("INFO", logger="memtrain.service"):
            second.scheduler.recover()
        assert [r.getMessage() for r in caplog.records] == [f"job {alive}: re-adopted"]
        a, c, k, r, d = (second.store.get(i) for i in (alive, crashed, killed, recorded, done))
        assert a.state == "running"
        assert (c.state, c.reason) == ("failed", "RuntimeError: bad")
        # killed with no exit record: the process was gone, resumed from its checkpoint, not counted as an attempt
        assert (k.state, k.attempts, k.executor, k.ref) == ("queued", 1, None, None)
        # it wrote its exit record before the service saw it end: it ended, it is not resumed
        assert r.state == "failed"
        assert d.state == "succeeded"  # an ended job is not looked at again
    finally:
        second.stop()


def test_an_executor_that_admits_reads_how_a_job_ended_from_its_exit_record(tmp_path):
    from memtrain.scheduling.scheduler import Scheduler
    from memtrain.service.planned_jobs import PlannedJobs

    first = restarted(tmp_path, Scripted())
    max_jobs(first, 8)
    ok, failed, gone = (submit(first) for _ in range(3))
    for job_id, record in ((ok, {"code": 0, "result": {"steps": 3}}), (failed, {"code": 1, "reason": "boom"})):
        with open(f"{first.store.get(job_id).run_dir}/{EXIT}", "w") as f:
            json.dump(record, f)
    store, devices = first.store, first.devices
    ex = Scripted()
    ex.admits = True
    ex.exits = {ok: Exit(5), failed: Exit(5), gone: Exit(5)}  # not asked: the record is the truth
    try:
        Scheduler(store, ex, devices, jobs=PlannedJobs()).recover()
        states = {i: (store.get(i).state, store.get(i).reason) for i in (ok, failed, gone)}
        assert states[ok] == ("succeeded", None) and store.get(ok).result == {"steps": 3}
        assert states[failed] == ("failed", "boom")
        assert states[gone][0] == "queued"
    finally:
        first.stop()


def test_a_tick_polls_every_running_job_with_a_handle_and_nothing_else(service):
    max_jobs(service, 8)
    starting, running, finished = submit(service), submit(service), submit(service)
    service.store.update(starting, ref=None, executor=None)  # killed between commit and launch
    service.ex.exits[finished] = Exit(0)
    service.scheduler.tick()
    service.ex.exits = {running: Exit(1, None, "boom"), finished: Exit(1)}
    service.scheduler.tick()
    assert [service.store.get(i).state for i in (starting, running, finished)] == ["running", "failed",
                                                                                       "succeeded"]
    assert service.events["failed"] == 1 and service.events["succeeded"] == 1


def test_a_retried_auto_job_keeps_the_batch_its_checkpoint_has(tmp_path):
    from memtrain.service import planning

    ex = Scripted()
    s = Service(Settings(state_dir=tmp_path / "state", devices="cpu", budgets={"cpu": 64 * 1024**2},
                         cpu_overhead=1000, max_jobs_per_device=8, executor=ex, metrics_ports=False))
    try:
        other = submit(s)  # takes some of the room, so an auto job started now gets a smaller batch
        job_id = s.submit(job(batch_size="auto", max_batch_size=1024), "application/json")["id"]
        first = s.store.get(job_id)
        batch, room = first.batch_size, s.devices[0].budget_bytes - s.store.get(other).reserved_bytes - 1000
        fn = planning.plan_at(planning.restore(first), s.devices[0].budget_bytes, batch)
        assert first.planned_bytes == fn.total and first.planned == fn.by_category
        assert fn.total <= room < planning.plan_at(planning.restore(first), s.devices[0].budget_bytes,
                                                   batch + 1).total or batch == 1024
        ex.exits = {other: Exit(0), job_id: Exit(None, signal.SIGKILL)}
        s.scheduler.tick()  # the room is larger now; the retried job keeps its batch all the same
        again = s.store.get(job_id)
        assert again.attempts == 2 and again.batch_size == batch and ex.launches[-1].job_id == job_id
        assert ex.launches[-1].config["training"]["batch_size"] == batch
        assert (again.planned_bytes, again.planned) == (first.planned_bytes, first.planned)
    finally:
        s.stop()


def test_cancel_records_exactly_what_it_did(service):
    max_jobs(service, 8)
    running = submit(service)
    service.cancel(running)
    assert service.store.get(running).cancel_requested == 1
    assert service.ex.cancelled_handles == [service.ex.handles[running]]
    done = submit(service)
    service.store.update(done, state="succeeded")
    with pytest.raises(JobConflict, match="already succeeded; nothing to cancel"):
        service.cancel(done)
    assert service.store.get(done).state == "succeeded"
    handed = submit(service)
    service.store.update(handed, state="queued", reserved_bytes=7)  # handed to an executor that admits
    out = service.cancel(handed)
    assert out["state"] == "cancelled" and service.store.get(handed).reserved_bytes == 0
    assert service.ex.cancelled[-1] == handed


def test_progress_is_the_workers_progress_record_with_every_field_named(service):
    from memtrain.launch.worker import PROGRESS

    job_id = submit(service)
    stored = service.store.get(job_id)
    assert set(service.scheduler.progress(stored).values()) == {None}  # nothing written yet
    from memtrain.scheduling.scheduler import PROGRESS_FIELDS

    typed = {k: {int: i, float: i + 0.5, str: f"e{i}"}[kind] for i, (k, kind) in enumerate(PROGRESS_FIELDS.items())}
    with open(f"{stored.run_dir}/{PROGRESS}", "w") as f:
        json.dump(typed | {"secret": "x"}, f)
    assert service.scheduler.progress(stored) == typed
    with open(f"{stored.run_dir}/{PROGRESS}", "w") as f:
        json.dump({k: [1] for k in PROGRESS_FIELDS} | {"step": 7}, f)  # a wrong type is None, never an error
    assert service.scheduler.progress(stored) == dict.fromkeys(PROGRESS_FIELDS) | {"step": 7}


def test_an_ended_jobs_progress_is_the_record_it_ended_with_kept_in_its_row(service):
    from memtrain.launch.worker import PROGRESS

    job_id = submit(service)
    path = f"{service.store.get(job_id).run_dir}/{PROGRESS}"
    with open(path, "w") as f:
        json.dump({"epoch": 3, "step": 30, "train_loss": "NaN"}, f)  # a wrong type is kept as None
    assert service.job(job_id)["progress"]["step"] == 30  # running: its file
    service.cancel(job_id)
    service.ex.exits[job_id] = Exit(None, signal.SIGTERM)
    service.scheduler.tick()
    ended = service.store.get(job_id)
    assert ended.state == "cancelled" and ended.final_progress["step"] == 30
    assert ended.final_progress["epoch"] == 3 and ended.final_progress["train_loss"] is None
    with open(path, "w") as f:
        f.write("not json {")  # written after it ended, not by its worker: views keep what it ended with
    assert service.job(job_id)["progress"] == ended.final_progress
    assert service.jobs_page(None, 5)[0][0]["progress"] == ended.final_progress
    legacy = ended.replace(final_progress=None)  # a row stored before rows kept the record: its file
    assert set(service.progress(legacy).values()) == {None}
    service.requeue(job_id)
    assert service.store.get(job_id).final_progress is None and service.job(job_id)["progress"] == {}


def test_metrics_ports_are_never_handed_out_twice(tmp_path, monkeypatch):
    from memtrain.scheduling import scheduler as sched

    offered = iter([5001, 5001, 5002, 5001, 5002, 5003, 5001, 5002, 5003, 5004])
    hosts = []
    monkeypatch.setattr(sched, "free_port", lambda host: hosts.append(host) or next(offered))
    ex = Scripted()
    s = Service(Settings(state_dir=tmp_path / "state", devices="cpu", budgets={"cpu": GIB}, cpu_overhead=0,
                         max_jobs_per_device=8, executor=ex, job_metrics_host="127.0.0.2"))
    try:
        ids = [submit(s) for _ in range(3)]
        assert [launch.metrics_port for launch in ex.launches] == [5001, 5002, 5003]
        assert set(hosts) == {"127.0.0.2"} and ex.launches[0].metrics_host == "127.0.0.2"
        assert ex.launches[0].config["metrics"] == {**ex.launches[0].config["metrics"], "host": "127.0.0.2",
                                                    "port": 5001}
        assert [s.store.get(i).metrics_target for i in ids] == [f"127.0.0.1:{p}" for p in (5001, 5002, 5003)]
        s.scheduler._recent_ports = []  # as after a restart: the running jobs' targets still hold their ports
        submit(s)
        assert ex.launches[-1].metrics_port == 5004
    finally:
        s.stop()


def test_the_scheduler_thread_runs_ticks_until_stopped(tmp_path):
    from memtrain.scheduling.scheduler import free_port

    ex = Scripted()
    s = Service(Settings(state_dir=tmp_path / "state", devices="cpu", budgets={"cpu": GIB}, cpu_overhead=0,
                         executor=ex, metrics_ports=False, tick=60))
    s.start()
    try:
        job_id = submit(s)
        ex.exits[job_id] = Exit(0)
        s.scheduler.wake()  # the tick is a minute: only the wake makes it look now
        deadline = time.time() + 20
        while s.store.get(job_id).state != "succeeded":
            assert time.time() < deadline, "the scheduler thread did not tick after wake()"
            time.sleep(0.02)
    finally:
        s.stop()
    assert ex.closed and not s.scheduler._thread.is_alive()
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # free, as promised


def test_a_job_cancelled_while_the_job_before_it_starts_is_never_launched(service):
    max_jobs(service, 0)
    first, second = submit(service), submit(service)
    max_jobs(service, 8)
    service.ex.on_start = lambda launch: service.cancel(second) if launch.job_id == first else None
    service.scheduler.tick()  # both are admitted together; the second is cancelled before its turn
    assert [launch.job_id for launch in service.ex.launches] == [first]
    assert service.store.get(second).state == "cancelled" and service.store.get(first).state == "running"


def test_a_gpu_job_is_launched_on_its_gpu_by_uuid(tmp_path, monkeypatch):
    from memtrain.memory import measure

    gpus = [{"index": 0, "uuid": "GPU-aaaa", "name": "Fake A", "memory_free": 20 * GIB, "processes": []},
            {"index": 1, "uuid": "", "name": "Fake B", "memory_free": 20 * GIB, "processes": []}]
    monkeypatch.setattr(measure, "gpu_list", lambda with_processes=True: gpus)
    ex = Scripted()
    s = Service(Settings(state_dir=tmp_path / "state", devices="cuda:0,cuda:1", executor=ex, metrics_ports=False,
                         max_jobs_per_device=1,
                         budgets={"cuda:0": 2 * GIB, "cuda:1": 3 * GIB}))
    try:
        body = json.loads(job())
        body["device"] = "cuda"
        for _ in range(2):
            s.submit(json.dumps(body).encode(), "application/json")
        # best fit puts the first on the GPU left with less room (cuda:0), the second on the other
        by_device = {launch.device: launch for launch in ex.launches}
        assert by_device["cuda:0"].env["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa"
        assert by_device["cuda:1"].env["CUDA_VISIBLE_DEVICES"] == 1  # no uuid from NVML: its index (str()ed at launch)
        assert {launch.config["device"] for launch in ex.launches} == {"cuda:0"}  # the one GPU it can see
        assert by_device["cuda:1"].config["training"]["memory_limit"] == 3 * GIB
    finally:
        s.stop()


def test_what_a_queued_job_needs_and_whether_it_can_ever_fit(service):
    max_jobs(service, 0)
    row = service.store.get(submit(service))  # a stored row, its fields changed below
    w = service.scheduler.waiting(row.replace(id="x", device_kind="cuda", batch_request="auto", min_bytes=10,
                                              planned_bytes=99, queued_at=1.5, priority=0, user="default"))
    assert (w.id, w.kind, w.need, w.queued_at, w.auto) == ("x", "cuda", 10, 1.5, True)  # no cuda device: no overhead
    w = service.scheduler.waiting(row.replace(id="y", device_kind="cpu", batch_request=32, min_bytes=10,
                                              planned_bytes=99, queued_at=2.5, priority=2, user="ann"))
    assert (w.need, w.auto, w.priority, w.user) == (99 + 1000, False, 2, "ann")
    max_jobs(service, 0)
    job_id = submit(service)
    budget = service.devices[0].budget_bytes
    service.store.update(job_id, planned_bytes=budget - 1000)  # plan + overhead == the budget: it fits, alone
    assert service.scheduler._can_ever_fit(service.store.get(job_id))
    service.store.update(job_id, planned_bytes=budget - 999)
    assert not service.scheduler._can_ever_fit(service.store.get(job_id))
    assert service.store.get(job_id).state == "failed"
