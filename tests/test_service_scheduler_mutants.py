"""The scheduler's decisions that a mutation run (docs/testing.md, `make mutation MODULE=scheduler`)
found untested: requeue on request, the run-time limit the scheduler enforces itself, recovery
after a restart, cancels, metrics ports, progress records. Like tests/test_service_scheduler.py,
a tick at a time with an executor that starts nothing and answers as told (milliseconds each)."""

import dataclasses
import json
import os
import signal
import threading
import time
from types import SimpleNamespace

import pytest
from service_helpers import Scripted

from memtrain.launch.executor import Exit
from memtrain.launch.worker import EXIT, PROGRESS
from memtrain.scheduling.scheduler import JobConflict
from memtrain.service.core import Service, Settings
from memtrain.units import format_bytes

GIB = 1024**3


def job(**training) -> bytes:
    return json.dumps({"name": "j", "model": {"layers": [64, 16, 10]},
                       "training": {"epochs": 1, "batch_size": 32, **training}}).encode()


def make(tmp_path, **settings) -> Service:
    s = Service(Settings(**{"state_dir": tmp_path / "state", "devices": "cpu", "budgets": {"cpu": GIB},
                            "cpu_overhead": 1000, "max_jobs_per_device": 8, "executor": Scripted(),
                            "metrics_ports": False, **settings}))
    s.ex = s.settings.executor
    return s


@pytest.fixture
def service(tmp_path):
    s = make(tmp_path)
    yield s
    s.stop()


def submit(service, body=None) -> str:
    return service.submit(body or job(), "application/json")["id"]


def no_room(service) -> None:
    """Nothing more starts (a device of 0 jobs): what is queued stays queued."""
    service.scheduler.devices["cpu"] = dataclasses.replace(service.scheduler.devices["cpu"], max_jobs=0)


def after_restart(tmp_path, user: str = "default", **settings):
    """A job queued by a service that started none, then its state dir opened by a service with
    `settings` and ticked once: the job's row then."""
    (job_id,) = queued_for(tmp_path, [user])
    second = make(tmp_path, **settings)
    try:
        second.scheduler.tick()
        return second.store.get(job_id)
    finally:
        second.stop()


# -- requeue on request ---------------------------------------------------------------------------


def test_requeue_puts_a_cancelled_job_back_as_new_and_keeps_nothing_of_its_last_run(service):
    job_id = submit(service)
    service.cancel(job_id)
    service.store.update(job_id, attempts=2, metrics_target="127.0.0.1:9")
    with open(f"{service.store.get(job_id).run_dir}/{EXIT}", "w") as f:
        json.dump({"code": 0, "result": {"stopped": "SIGTERM", "steps": 4}}, f)
    service.ex.exits[job_id] = Exit(0)
    service.scheduler.tick()
    before = service.store.get(job_id)
    assert before.state == "cancelled" and before.result == {"stopped": "SIGTERM", "steps": 4}
    no_room(service)
    out = service.scheduler.requeue(job_id)
    assert out == service.store.get(job_id)
    assert (out.state, out.attempts, out.cancel_requested) == ("queued", 0, 0)
    assert (out.ended_at, out.result, out.device, out.reserved_bytes) == (None, None, None, 0)
    assert (out.executor, out.ref, out.metrics_target) == (None, None, None)
    assert out.queued_at >= before.ended_at
    assert out.reason == "requeued on request after it was cancelled; resumes from its checkpoint"
    assert service.events["requeued"] == 1


def test_requeue_of_a_failed_job_starts_it_again_and_a_live_or_finished_one_is_a_conflict(service):
    failed = submit(service)
    service.ex.exits[failed] = Exit(1, None, "ValueError: boom")
    service.scheduler.tick()
    assert service.store.get(failed).state == "failed"
    del service.ex.exits[failed]
    service.scheduler.requeue(failed)
    service.scheduler.tick()
    again = service.store.get(failed)
    assert (again.state, again.attempts, again.reason) == ("running", 1, None)
    assert [launch.job_id for launch in service.ex.launches] == [failed, failed]
    done = submit(service)
    service.store.update(done, state="succeeded")
    for job_id, state in ((failed, "running"), (done, "succeeded")):
        with pytest.raises(JobConflict, match=f"^job {job_id}: {state}; only a cancelled or failed job can be "
                                              "requeued$"):
            service.scheduler.requeue(job_id)
        assert service.store.get(job_id).state == state
    no_room(service)
    queued = submit(service)
    with pytest.raises(JobConflict, match="queued; only a cancelled or failed"):
        service.scheduler.requeue(queued)
    assert service.scheduler.requeue("nope") is None


def test_a_requeued_job_starts_at_once_under_the_scheduler_thread(tmp_path):
    s = make(tmp_path, tick=60)
    s.start()
    try:
        job_id = submit(s)
        s.ex.exits[job_id] = Exit(1)
        s.scheduler.wake()
        deadline = time.time() + 20
        while s.store.get(job_id).state != "failed":
            assert time.time() < deadline, "the failed job was not seen"
            time.sleep(0.02)
        del s.ex.exits[job_id]
        s.scheduler.requeue(job_id)  # the tick is a minute: only requeue's own wake starts it now
        while len(s.ex.launches) < 2:
            assert time.time() < deadline, "the requeued job did not start before the next tick"
            time.sleep(0.02)
    finally:
        s.stop()


# -- the run-time limit ---------------------------------------------------------------------------


def test_a_job_past_its_max_runtime_and_grace_is_stopped_once_and_fails_naming_the_limit(service):
    assert service.scheduler.runtime_grace == 60.0
    job_id = submit(service, job(max_runtime="10m"))
    started = time.time()
    service.store.update(job_id, started_at=started - 600 - 60 + 30)  # in its grace: the job stops itself
    service.scheduler.tick()
    assert service.store.get(job_id).cancel_requested == 0 and service.ex.cancelled == []
    service.store.update(job_id, started_at=started - 600 - 60 - 1)
    service.scheduler.tick()
    assert service.store.get(job_id).cancel_requested == 2 and service.ex.cancelled == [job_id]
    assert service.ex.cancelled_handles == [service.ex.handles[job_id]]
    service.scheduler.tick()
    assert service.ex.cancelled == [job_id]  # one SIGTERM
    service.ex.exits[job_id] = Exit(None, signal.SIGTERM)
    service.scheduler.tick()
    out = service.store.get(job_id)
    assert (out.state, out.reason, out.attempts) == ("failed", "ran past its max_runtime of 10m: stopped "
                                                              "by the service", 1)
    assert len(service.ex.launches) == 1  # not retried: it would run past again


def test_a_cancelled_job_is_not_stopped_again_for_its_runtime(service):
    job_id = submit(service, job(max_runtime="10s"))
    service.cancel(job_id)
    service.store.update(job_id, started_at=time.time() - 3600)
    service.scheduler.tick()
    assert service.store.get(job_id).cancel_requested == 1 and service.ex.cancelled == [job_id]


def test_a_running_job_not_yet_started_is_not_timed(service):
    job_id = submit(service, job(max_runtime="10s"))
    service.store.update(job_id, started_at=None)
    service.scheduler.tick()
    assert service.store.get(job_id).cancel_requested == 0 and service.ex.cancelled == []


def test_a_job_that_stopped_itself_at_its_max_runtime_fails_with_its_step_and_is_not_retried(service):
    job_id = submit(service, job(max_runtime=90))
    with open(f"{service.store.get(job_id).run_dir}/{EXIT}", "w") as f:
        json.dump({"code": 0, "result": {"stopped": "max_runtime", "steps": 12}}, f)
    service.ex.exits[job_id] = Exit(0)
    service.scheduler.tick()
    out = service.store.get(job_id)
    assert (out.state, out.reason) == ("failed", "ran past its max_runtime of 90s: stopped at step 12 "
                                                       "(checkpoint saved)")
    assert out.result == {"stopped": "max_runtime", "steps": 12} and len(service.ex.launches) == 1


# -- how a job ended, as JSON can carry it --------------------------------------------------------


def test_a_diverged_jobs_result_keeps_its_shape_with_none_for_nan_and_inf(service):
    job_id = submit(service)
    with open(f"{service.store.get(job_id).run_dir}/{EXIT}", "w") as f:
        f.write('{"code": 0, "result": {"steps": 3, "val_loss": NaN, "best": {"loss": Infinity, "epoch": 2},'
                ' "losses": [0.5, -Infinity, 0.25]}}')
    service.ex.exits[job_id] = Exit(0)
    service.scheduler.tick()
    out = service.store.get(job_id)
    assert out.state == "succeeded"
    assert out.result == {"steps": 3, "val_loss": None, "best": {"loss": None, "epoch": 2},
                             "losses": [0.5, None, 0.25]}


def test_progress_reads_an_integer_loss_as_a_float_and_is_parsed_again_only_when_the_file_changes(service):
    stored = service.store.get(submit(service))
    path = f"{stored.run_dir}/{PROGRESS}"
    with open(path, "w") as f:
        json.dump({"epoch": 1, "train_loss": 2, "val_loss": float("nan"), "time": 3}, f)
    first = service.scheduler.progress(stored)
    assert (first["epoch"], first["train_loss"], first["val_loss"], first["time"]) == (1, 2.0, None, 3.0)
    assert isinstance(first["train_loss"], float) and isinstance(first["time"], float)
    assert service.scheduler.progress(stored) is first  # unchanged: the same record, not parsed again
    with open(path, "w") as f:
        json.dump({"epoch": 22, "train_loss": 0.5}, f)  # another size: a new record
    second = service.scheduler.progress(stored)
    assert second is not first and (second["epoch"], second["train_loss"]) == (22, 0.5)
    assert service.scheduler.progress(stored) is second
    os.remove(path)  # gone (the run dir cleaned): nothing, and nothing kept for it
    assert set(service.scheduler.progress(stored).values()) == {None}
    assert service.scheduler.progress(stored) is not service.scheduler.progress(stored)


# -- the scheduler thread -------------------------------------------------------------------------


class FailsOnce(Scripted):
    """An executor whose first poll once armed raises, as a bug in an executor would."""

    def __init__(self):
        super().__init__()
        self.armed = self.failed = False

    def poll(self, handle):
        if self.armed and not self.failed:
            self.failed = True
            raise RuntimeError("executor bug")
        return super().poll(handle)


def test_a_failing_tick_is_logged_with_its_traceback_and_scheduling_goes_on(tmp_path, caplog):
    s = make(tmp_path, executor=FailsOnce(), tick=0.05)
    job_id = submit(s)
    with caplog.at_level("ERROR", logger="memtrain.service"):
        s.start()
        try:
            s.ex.armed = True
            s.ex.exits[job_id] = Exit(0)
            (thread,) = [t for t in threading.enumerate() if t.name == "memtrain-scheduler"]
            assert thread.daemon  # a service that exits without stop() is not held up by it
            deadline = time.time() + 20
            while s.store.get(job_id).state != "succeeded":
                assert time.time() < deadline, "scheduling stopped after a failed tick"
                time.sleep(0.02)
        finally:
            s.stop()
    failed = [r for r in caplog.records if r.name == "memtrain.service" and r.levelname == "ERROR"]
    assert [r.getMessage() for r in failed] == ["scheduler tick failed"]
    assert failed[0].exc_info[1].args == ("executor bug",)


# -- cancel ---------------------------------------------------------------------------------------


def test_a_second_cancel_of_a_running_job_sends_no_second_signal(service):
    job_id = submit(service)
    first = service.scheduler.cancel(job_id)
    again = service.scheduler.cancel(job_id)
    assert service.ex.cancelled == [job_id]
    assert first.cancel_requested == again.cancel_requested == 1 and again.state == "running"


def test_cancel_of_an_ended_job_says_whether_requeue_resumes_it(service):
    no_room(service)
    ids = {state: submit(service) for state in ("cancelled", "failed", "succeeded")}
    for state, job_id in ids.items():
        service.store.update(job_id, state=state)
    for state in ("cancelled", "failed"):
        with pytest.raises(JobConflict) as err:
            service.scheduler.cancel(ids[state])
        assert str(err.value) == (f"job {ids[state]}: already {state}; nothing to cancel (its files are kept; "
                                  f"`memtrain requeue {ids[state]}` resumes it)")
    with pytest.raises(JobConflict) as err:
        service.scheduler.cancel(ids["succeeded"])
    assert str(err.value) == f"job {ids['succeeded']}: already succeeded; nothing to cancel (its files are kept)"


# -- a retry ---------------------------------------------------------------------------------------


def test_a_retried_job_waits_from_its_requeue_and_keeps_no_scrape_target(service):
    no_room(service)
    job_id = submit(service)
    service.store.update(job_id, state="running", device="cpu", attempts=1, ref=json.dumps({"n": 9}),
                         executor="scripted", started_at=time.time() - 5, metrics_target="127.0.0.1:9100")
    service.ex.exits[job_id] = Exit(None, signal.SIGKILL)
    service.scheduler.tick()
    out = service.store.get(job_id)
    assert out.state == "queued" and out.metrics_target is None
    assert out.queued_at > out.submitted_at and out.queued_at >= out.started_at + 5


def test_a_job_another_executor_held_is_not_scraped_at_its_old_address_while_it_starts(tmp_path):
    """Handed to a cluster that had not started it, then a restart with another executor: recover()
    takes the job back (its handle is of no use here) and it starts here; Prometheus's target list
    never names the cluster's address for it, not even while its process starts."""
    first = make(tmp_path)
    no_room(first)
    job_id = submit(first)
    first.store.update(job_id, executor="ray", ref=json.dumps("actor-1"), metrics_target="10.0.0.7:9100")
    first.stop()
    second = make(tmp_path)
    try:
        second.scheduler.recover()
        assert second.store.get(job_id).ref is None
        seen = []
        second.ex.on_start = lambda launch: seen.append((second.store.get(launch.job_id).state, second.targets()))
        second.scheduler.tick()
        assert seen == [("running", [])] and second.targets() == []
        assert second.store.get(job_id).executor == "scripted"
    finally:
        second.stop()


# -- metrics ports ---------------------------------------------------------------------------------


class NoTarget(Scripted):
    """An executor whose handles carry no scrape target (it learns where a job runs later)."""

    def start(self, launch):
        h = super().start(launch)
        h = self.handles[launch.job_id] = dataclasses.replace(h, metrics_target=None)
        return h


def offer(monkeypatch, ports) -> None:
    from memtrain.scheduling import scheduler as sched

    offered = iter(ports)
    monkeypatch.setattr(sched, "free_port", lambda host: next(offered))


def test_ports_handed_out_lately_are_not_handed_out_again_before_their_jobs_report_them(tmp_path, monkeypatch):
    offer(monkeypatch, [5001, 5001, 5002, 5001, 5002, 5003])
    s = make(tmp_path, executor=NoTarget(), metrics_ports=True)
    try:
        ids = [submit(s) for _ in range(3)]
        assert [launch.metrics_port for launch in s.ex.launches] == [5001, 5002, 5003]
        assert [s.store.get(i).metrics_target for i in ids] == [None, None, None]
    finally:
        s.stop()


def test_after_a_restart_the_running_jobs_ports_are_taken_and_an_ended_jobs_port_is_free(tmp_path, monkeypatch):
    first = make(tmp_path)
    no_room(first)
    ipv6, ipv4, ended = submit(first), submit(first), submit(first)
    first.store.update(ipv6, state="running", device="cpu", metrics_target="[::1]:5001")
    first.store.update(ipv4, state="running", device="cpu", metrics_target="memtrain:5002")
    first.store.update(ended, state="succeeded", metrics_target="127.0.0.1:5003")
    first.stop()
    offer(monkeypatch, [5001, 5002, 5003])
    second = make(tmp_path, metrics_ports=True)
    try:
        submit(second)
        assert second.ex.launches[-1].metrics_port == 5003
    finally:
        second.stop()


# -- an auto batch ---------------------------------------------------------------------------------


def test_an_auto_batch_leaves_room_for_the_process_overhead(tmp_path):
    from memtrain.service import planning

    probe = make(tmp_path / "probe")
    stored = probe.store.get(submit(probe, job(batch_size="auto")))
    probe.stop()
    overhead = 64 * 1024  # far more than a sample's bytes: an auto batch that forgot it would show
    checked = planning.restore(stored)
    for target in (64, 1):
        budget = planning.plan_at(checked, GIB, target).total + overhead + 100
        s = make(tmp_path / f"b{target}", budgets={"cpu": budget}, cpu_overhead=overhead)
        try:
            out = s.store.get(submit(s, job(batch_size="auto")))
            batch = out.batch_size
            assert out.state == "running" and out.reserved_bytes == out.planned_bytes + overhead <= budget
            assert planning.plan_at(planning.restore(out), budget, batch + 1).total + overhead > budget
            assert batch == target or target > 1, batch  # only batch 1 fits: batch 1
            plan = planning.plan_at(planning.restore(out), budget, batch)
            assert (out.planned_bytes, out.planned) == (plan.total, plan.by_category)
        finally:
            s.stop()


def test_a_queued_job_whose_run_dir_was_removed_starts_in_a_new_one(service):
    import shutil

    no_room(service)
    job_id = submit(service)
    run_dir = service.store.get(job_id).run_dir
    shutil.rmtree(os.path.dirname(run_dir))  # the whole jobs folder, as a clean-up by hand would
    service.scheduler.devices["cpu"] = dataclasses.replace(service.scheduler.devices["cpu"], max_jobs=8)
    service.scheduler.tick()
    assert service.store.get(job_id).state == "running" and os.path.isdir(run_dir)
    assert service.ex.launches[-1].log_path == f"{run_dir}/job.log"


# -- an executor that admits jobs itself (Ray's way, without Ray) ------------------------------------


class Cluster(Scripted):
    """Admits by itself: a job handed over runs once `started` names it; one node of 1 GiB."""

    admits = True

    def __init__(self):
        super().__init__()
        self.started = set()

    def largest_memory(self):
        return GIB

    def running(self, handle):
        self._check(handle)
        return handle.job_id in self.started

    def metrics_target(self, handle, port):
        self._check(handle)
        return f"10.0.0.7:{port}"


def cluster(tmp_path, **settings) -> Service:
    return make(tmp_path, executor=Cluster(), budgets={}, **settings)


def test_every_queued_job_is_handed_over_at_once_and_runs_when_the_executor_starts_it(tmp_path):
    s = cluster(tmp_path)
    try:
        ids = [submit(s) for _ in range(3)]
        assert [launch.job_id for launch in s.ex.launches] == ids  # no slots here: the cluster decides
        for job_id in ids:
            out = s.store.get(job_id)
            assert (out.state, out.started_at, out.attempts, out.device) == ("queued", None, 1, "ray")
            assert out.ref and out.reserved_bytes == out.planned_bytes + 1000
        assert s.events["started"] == 0
        first, second, third = ids
        s.ex.started.add(first)
        s.ex.exits[second] = Exit(0)
        s.scheduler.tick()
        a, b, c = (s.store.get(i) for i in ids)
        assert a.state == "running" and a.started_at is not None and s.events["started"] == 1
        assert b.state == "succeeded" and b.started_at is not None
        assert c.state == "queued" and len(s.ex.launches) == 3  # still the executor's: not handed twice
        s.cancel(third)
        assert s.store.get(third).state == "cancelled" and s.ex.cancelled == [third]
    finally:
        s.stop()


def test_a_handed_over_job_is_scraped_at_its_nodes_address_unless_its_exporter_is_on_loopback(tmp_path,
                                                                                              monkeypatch):
    offer(monkeypatch, [5001, 5002])
    s = cluster(tmp_path / "any", metrics_ports=True, job_metrics_host="0.0.0.0")
    try:
        job_id = submit(s)
        s.ex.started.add(job_id)
        s.scheduler.tick()
        assert s.store.get(job_id).metrics_target == "10.0.0.7:5001"
    finally:
        s.stop()
    s = cluster(tmp_path / "loopback", metrics_ports=True)
    try:
        job_id = submit(s)
        s.ex.started.add(job_id)
        s.scheduler.tick()
        assert s.store.get(job_id).metrics_target == "127.0.0.1:5002"
    finally:
        s.stop()


def test_a_handed_over_auto_job_plans_for_the_whole_node_and_a_user_waits_at_their_quota(tmp_path):
    from memtrain.service import planning

    s = cluster(tmp_path)
    try:
        out = s.store.get(submit(s, job(batch_size="auto", max_batch_size=256)))
        assert out.batch_size == 256 and out.reserved_bytes == out.planned_bytes + 1000
        plan = planning.plan_at(planning.restore(out), GIB, 256)
        assert (out.planned_bytes, out.planned) == (plan.total, plan.by_category)
    finally:
        s.stop()
    probe = make(tmp_path / "probe")
    need = probe.store.get(submit(probe)).planned_bytes + 1000
    probe.stop()
    s = cluster(tmp_path / "quota", user_quota=2 * need)
    try:
        ids = [submit(s) for _ in range(3)]
        assert [launch.job_id for launch in s.ex.launches] == ids[:2]  # the third would pass the quota
        s.ex.exits[ids[0]] = Exit(0)
        s.scheduler.tick()
        assert [launch.job_id for launch in s.ex.launches] == ids
    finally:
        s.stop()


# -- users' quotas and what one admission pass commits ----------------------------------------------


def one_job_bytes(tmp_path, overhead=1000) -> int:
    """What one job() commits: its plan and the process overhead."""
    probe = make(tmp_path / "probe")
    planned = probe.store.get(submit(probe)).planned_bytes
    probe.stop()
    return planned + overhead


def test_a_users_running_jobs_count_against_their_quota_and_others_do_not(tmp_path):
    need = one_job_bytes(tmp_path)
    s = make(tmp_path, user_quota=2 * need)
    try:
        ann = [s.submit(job(), "application/json", user="ann")["id"] for _ in range(3)]
        bob = s.submit(job(), "application/json", user="bob")["id"]
        assert [s.store.get(i).state for i in ann + [bob]] == ["running", "running", "queued", "running"]
        assert s.scheduler.quota().used == {"ann": 2 * need, "bob": need}
        s.store.update(ann[0], state="succeeded", reserved_bytes=0)  # ended: commits nothing
        s.scheduler.tick()
        assert s.store.get(ann[2]).state == "running"
    finally:
        s.stop()


def test_a_queued_job_over_a_smaller_quota_after_a_restart_fails_naming_the_quota(tmp_path):
    need = one_job_bytes(tmp_path)
    out = after_restart(tmp_path, "ann", user_quota=need - 1)
    assert (out.state, out.reason) == ("failed", f"never fits this service's devices: needs "
                                             f"{format_bytes(need)}; user ann's quota is {format_bytes(need - 1)} "
                                             "(it was planned by a service run with other --user-quota or token "
                                             "file)")
    third = make(tmp_path, user_quota=need)  # exactly its need: it fits
    try:
        out = third.store.get(third.submit(job(), "application/json", user="ann")["id"])
        assert out.state == "running"
    finally:
        third.stop()


def test_a_queued_job_over_its_users_own_quota_after_a_restart_fails_naming_it(tmp_path):
    """The token file's quota of that user, not the --user-quota of everyone (none here)."""
    from memtrain.service.security import Tokens

    need = one_job_bytes(tmp_path)
    out = after_restart(tmp_path, "ann", token=Tokens({"a" * 32: "ann"}, {"ann": need - 1}))
    assert (out.state, out.reason) == ("failed", f"never fits this service's devices: needs {format_bytes(need)}; "
                                                 f"user ann's quota is {format_bytes(need - 1)} (it was planned "
                                                 "by a service run with other --user-quota or token file)")


def test_a_job_whose_process_is_starting_counts_against_its_users_quota(tmp_path):
    """Running from the commit on, before the executor has handed back its handle: a view of the
    user's next job taken in that window says the quota is taken, as it will be a moment later."""
    need = one_job_bytes(tmp_path)
    s = make(tmp_path, user_quota=need)
    try:
        no_room(s)
        first, second = (s.submit(job(), "application/json", user="ann")["id"] for _ in range(2))
        s.scheduler.devices["cpu"] = dataclasses.replace(s.scheduler.devices["cpu"], max_jobs=8)
        seen = []
        s.ex.on_start = lambda launch: seen.append((launch.job_id, s.job_view(s.store.get(second))["reason"]))
        s.scheduler.tick()
        taken = (f"waiting: user ann's quota: needs {format_bytes(need)}, {format_bytes(need)} of "
                 f"{format_bytes(need)} committed by their running jobs")
        assert seen == [(first, taken)] and s.job_view(s.store.get(second))["reason"] == taken
    finally:
        s.stop()


def test_a_queued_job_over_a_smaller_budget_after_a_restart_fails_naming_the_budget(tmp_path):
    need = one_job_bytes(tmp_path)
    out = after_restart(tmp_path, budgets={"cpu": need - 1})
    assert (out.state, out.reason) == ("failed", f"never fits this service's devices: needs {format_bytes(need)}; "
                                                 f"the largest cpu budget is {format_bytes(need - 1)} (it was "
                                                 "planned by a service run with other --budget/--devices)")


def test_a_queued_gpu_job_after_a_restart_without_a_gpu_fails_naming_the_missing_device(tmp_path, monkeypatch):
    from memtrain.memory import measure

    gpus = [{"index": 0, "uuid": "GPU-aaaa", "name": "Fake A", "memory_free": 20 * GIB, "processes": []}]
    monkeypatch.setattr(measure, "gpu_list", lambda with_processes=True: gpus)
    first = make(tmp_path, devices="cpu,cuda:0", budgets={"cpu": GIB, "cuda:0": GIB})
    first.scheduler.devices = {name: dataclasses.replace(d, max_jobs=0) for name, d in first.scheduler.devices.items()}
    body = json.loads(job())
    body["device"] = "cuda"
    job_id = first.submit(json.dumps(body).encode(), "application/json")["id"]
    first.stop()
    second = make(tmp_path)
    try:
        second.scheduler.tick()
        out = second.store.get(job_id)
        assert (out.state, out.reason) == ("failed", f"never fits this service's devices: needs "
                                                     f"{format_bytes(out.planned_bytes)}; no cuda device (it was "
                                                     "planned by a service run with other --budget/--devices)")
    finally:
        second.stop()


def test_a_job_that_fills_the_budget_exactly_and_passes_the_quota_is_refused_for_the_quota(service):
    from memtrain.scheduling import admission

    no_room(service)
    job_id = submit(service)
    budget = service.devices[0].budget_bytes
    service.store.update(job_id, planned_bytes=budget - 1000)
    service.scheduler.limits = admission.Quota(budget - 1)
    assert not service.scheduler._can_ever_fit(service.store.get(job_id))
    assert "; user default's quota is " in service.store.get(job_id).reason


def test_one_admission_pass_commits_each_jobs_overhead_too(tmp_path):
    overhead = 1024**2  # more than a plan: a pass that forgot it would start a third job
    need = one_job_bytes(tmp_path, overhead)
    s = make(tmp_path, budgets={"cpu": 2 * need + 100}, cpu_overhead=overhead)
    try:
        no_room(s)
        ids = [submit(s) for _ in range(3)]
        s.scheduler.devices["cpu"] = dataclasses.replace(s.scheduler.devices["cpu"], max_jobs=8)
        s.scheduler.tick()  # all three in one pass
        assert [s.store.get(i).state for i in ids] == ["running", "running", "queued"]
    finally:
        s.stop()


def test_a_job_cancelled_before_it_started_never_starts(service):
    no_room(service)
    job_id = submit(service)
    service.cancel(job_id)
    service.scheduler.devices["cpu"] = dataclasses.replace(service.scheduler.devices["cpu"], max_jobs=8)
    service.scheduler.tick()
    assert service.ex.launches == [] and service.store.get(job_id).state == "cancelled"


# -- the start's last steps -------------------------------------------------------------------------


def test_a_job_that_could_not_start_counts_as_failed(service):
    def refuse(launch):
        raise OSError("no such interpreter")

    service.ex.on_start = refuse
    submit(service)
    assert service.events.get("failed") == 1 and service.events["started"] == 0


class IPv6(Scripted):
    def start(self, launch):
        h = super().start(launch)
        h = self.handles[launch.job_id] = dataclasses.replace(h, metrics_target=f"[::1]:{launch.metrics_port}")
        return h


def test_the_scrape_address_replaces_the_host_of_an_ipv6_target(tmp_path, monkeypatch):
    offer(monkeypatch, [5001])
    s = make(tmp_path, executor=IPv6(), metrics_ports=True, job_metrics_address="memtrain")
    try:
        assert s.store.get(submit(s)).metrics_target == "memtrain:5001"
    finally:
        s.stop()


# -- a GPU job's plan depends on its device's budget (its data set stays on the GPU when it fits) -------


def test_a_gpu_auto_job_is_planned_against_its_devices_budget_and_keeps_that_plan_when_retried(tmp_path,
                                                                                              monkeypatch):
    from memtrain.memory import measure
    from memtrain.service import planning

    gpus = [{"index": 0, "uuid": "GPU-aaaa", "name": "Fake A", "memory_free": 20 * GIB, "processes": []}]
    monkeypatch.setattr(measure, "gpu_list", lambda with_processes=True: gpus)
    probe = make(tmp_path / "probe", devices="cuda:0", budgets={"cuda:0": GIB})
    overhead = probe.devices[0].overhead_bytes
    probe.stop()
    budget = overhead + 600_000  # room for the data set and a batch of a few hundred, not the whole set
    s = make(tmp_path, devices="cuda:0", budgets={"cuda:0": budget})
    try:
        body = json.loads(job(batch_size="auto"))
        body["device"] = "cuda"
        job_id = s.submit(json.dumps(body).encode(), "application/json")["id"]
        out = s.store.get(job_id)
        batch, checked = out.batch_size, planning.restore(out)
        assert out.state == "running" and 8 <= batch < checked.max_batch
        assert out.reserved_bytes == out.planned_bytes + overhead <= budget
        plan = planning.plan_at(checked, budget, batch)
        assert (out.planned_bytes, out.planned) == (plan.total, plan.by_category)
        assert plan.by_category["data"] > 0  # resident: the budget holds the data set
        assert planning.plan_at(checked, budget, batch + 8).total + overhead > budget  # the largest that fits
        s.ex.exits[job_id] = Exit(None, signal.SIGKILL)
        s.scheduler.tick()
        again = s.store.get(job_id)
        assert (again.state, again.attempts, again.batch_size) == ("running", 2, batch)
        assert (again.planned_bytes, again.planned) == (plan.total, plan.by_category)
    finally:
        s.stop()


def test_the_scheduler_says_how_far_past_its_max_runtime_a_job_was_stopped(service, caplog):
    job_id = submit(service, job(max_runtime="10m"))
    service.store.update(job_id, started_at=time.time() - 600 - 61.4)
    with caplog.at_level("WARNING", logger="memtrain.service"):
        service.scheduler.tick()
    assert [r.getMessage() for r in caplog.records if r.name == "memtrain.service"] == [
        f"job {job_id}: 61 s past its max_runtime and still running; stopping it"]


def test_the_progress_cache_keeps_the_newest_4096_records(tmp_path, service):
    jobs = []
    for i in range(4097):
        run_dir = tmp_path / "runs" / str(i)
        run_dir.mkdir(parents=True)
        (run_dir / PROGRESS).write_text('{"epoch": 1}')
        jobs.append(SimpleNamespace(run_dir=str(run_dir)))
    seen = [service.scheduler.progress(j) for j in jobs]
    assert service.scheduler.progress(jobs[1]) is seen[1]  # still kept
    assert service.scheduler.progress(jobs[0]) is not seen[0]  # the oldest went first
    assert service.scheduler.progress(jobs[0]) == seen[0]


# -- a cluster's quota, one hand-over pass at a time ------------------------------------------------


def queued_for(tmp_path, users) -> list:
    """Jobs queued by a service that started none (its restart hands them over in one pass)."""
    first = make(tmp_path)
    no_room(first)
    ids = [first.submit(job(), "application/json", user=u)["id"] for u in users]
    first.stop()
    return ids


def test_one_hand_over_pass_counts_each_users_jobs_against_their_quota(tmp_path):
    need = one_job_bytes(tmp_path)
    ann1, ann2, ann3, bob = queued_for(tmp_path, ["ann", "ann", "ann", "bob"])
    s = make(tmp_path, executor=Cluster(), budgets={}, user_quota=2 * need)
    try:
        s.scheduler.tick()
        assert [launch.job_id for launch in s.ex.launches] == [ann1, ann2, bob]  # ann's third waits, bob's not
        assert s.scheduler.quota().used == {"ann": 2 * need, "bob": need}
        s.ex.started.add(bob)
        s.ex.exits[ann1] = Exit(0)
        s.scheduler.tick()
        assert s.store.get(bob).state == "running" and s.store.get(ann1).state == "succeeded"
        assert [launch.job_id for launch in s.ex.launches] == [ann1, ann2, bob, ann3]
        ended = s.store.get(ann1)
        s.scheduler.tick()  # an ended job is not looked at again
        assert s.store.get(ann1) == ended and s.events.get("succeeded") == 1
    finally:
        s.stop()


def test_a_handed_over_auto_job_plans_within_what_its_users_quota_leaves(tmp_path):
    from memtrain.service import planning

    need = one_job_bytes(tmp_path)
    s = make(tmp_path, executor=Cluster(), budgets={}, user_quota=need)
    try:
        out = s.store.get(s.submit(job(batch_size="auto"), "application/json", user="ann")["id"])
        assert out.reserved_bytes == out.planned_bytes + 1000 <= need
        bigger = planning.plan_at(planning.restore(out), GIB, out.batch_size + 1).total
        assert bigger + 1000 > need  # the largest batch the quota holds
    finally:
        s.stop()


class Cluster6(Cluster):
    """Its jobs' exporters listen on IPv6 (all addresses); it names each job's node."""

    def start(self, launch):
        h = super().start(launch)
        h = self.handles[launch.job_id] = dataclasses.replace(h, metrics_target=f"[::]:{launch.metrics_port}")
        return h


def test_a_handed_over_jobs_scrape_address_over_ipv6_and_on_every_loopback_name(tmp_path, monkeypatch):
    offer(monkeypatch, [5001, 5002, 5003])
    s = make(tmp_path / "v6", executor=Cluster6(), budgets={}, metrics_ports=True, job_metrics_host="::")
    try:
        job_id = submit(s)
        s.ex.started.add(job_id)
        s.scheduler.tick()
        assert s.store.get(job_id).metrics_target == "10.0.0.7:5001"
    finally:
        s.stop()
    for host, port in (("localhost", 5002), ("::1", 5003)):
        s = make(tmp_path / str(port), executor=Cluster6(), budgets={}, metrics_ports=True,
                 job_metrics_host=host)
        try:
            job_id = submit(s)
            s.ex.started.add(job_id)
            s.scheduler.tick()
            assert s.store.get(job_id).metrics_target == f"[::]:{port}"  # reachable on its own machine only
        finally:
            s.stop()
