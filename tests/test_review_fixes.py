"""Three small rules found in review: an array's run-time bound, how an array stopped at its
max_runtime is told, and a damaged sweep record under `serve --recover`."""

import json
from types import SimpleNamespace

from memtrain.scheduling.scheduler import _stopped_how
from memtrain.scheduling.store import Store
from memtrain.service import sweeps
from memtrain.service.recovery import JOB_FILE, SWEEP_FILE, _rebuild_sweeps


def _part(*limits):
    part = [SimpleNamespace(trial=SimpleNamespace(id=f"t{i}")) for i in range(len(limits))]
    by_trial = {f"t{i}": (None, SimpleNamespace(config={"training": {"max_runtime": x}}), None, None)
                for i, x in enumerate(limits)}
    return part, by_trial


def test_an_arrays_max_runtime_is_the_sum_of_its_trials():
    assert sweeps._array_runtime(*_part(600.0, 600.0, 30.0)) == 1230.0
    assert sweeps._array_runtime(*_part(600.0, None)) is None


def test_an_array_stopped_at_its_max_runtime_says_how_many_trials_stopped():
    result = {"array": [{"status": "stopped"}, {"status": "finished"}, {"status": "stopped"}], "stopped": "max_runtime"}
    assert _stopped_how(result) == "2 of its 3 trials stopped (checkpoint saved)"
    assert _stopped_how({"steps": 40, "stopped": "max_runtime"}) == "stopped at step 40 (checkpoint saved)"


def test_recover_skips_a_sweep_record_of_another_shape(tmp_path):
    jobs = tmp_path / "storage" / "jobs"
    good = {"id": "s1", "name": "lr", "user": "default", "submitted_at": "2026-12-03T00:00:00Z", "record": {"trials": 2}}
    for name, record in (("a", {"id": "s0", "name": "torn"}), ("b", good)):
        (jobs / name).mkdir(parents=True)
        (jobs / name / JOB_FILE).write_text("{}")
        (jobs / name / SWEEP_FILE).write_text(json.dumps(record))
    db = Store(tmp_path / "state" / "jobs.db")
    assert _rebuild_sweeps(db, tmp_path / "storage") == ["rebuilt 1 sweep(s) from their job dirs: s1"]
    assert db.sweep("s0") is None and db.sweep("s1")["name"] == "lr"
