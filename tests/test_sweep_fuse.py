"""`memtrain sweep` trains trials of one shape as one trial array (select/fuse.py,
train/arrayjob.py): each trial ends with the model, run dir and results line it gets as a
lone job (--no-fuse); trials of other shapes run alone; an array of other trials than the
unfinished one starts over (a retried or resumed array goes on from its checkpoint:
tests/test_array_resume.py)."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

# the real group (click caches each command's help option from the first context that builds it:
# a private group without -h made docs/cli.md's `-h, --help` depend on the test order)
from memtrain.cli import main
from memtrain.select import fuse
from memtrain.select import space as sp
from memtrain.select import sweep as sw

SWEEP = """
[base]
name = "f"
seed = 0
device = "cpu"
[base.model]
layers = [64, 16, 10]
[base.optimizer]
name = "adam"
lr = 0.003
[base.training]
batch_size = 128
epochs = 2
patience = 1
[base.data]
dataset = "digits"
[search]
method = "grid"
[space]
lr = [0.001, 0.05]
optimizer = ["adam", "momentum"]
dropout = [0.0, 0.2]
"""

# what differs between two runs of one trial however it is run: clocks, and the memory of the
# process (a fused trial's plan is its row of the array's; its peak is the array's, not measured per trial)
RUN_FIELDS = {"finished_at", "seconds", "samples_per_second", "planned_bytes", "planned_by_category",
              "measured_peak_bytes"}
CSV_FIELDS = {"seconds", "samples_per_second", "planned_bytes", "measured_peak_bytes", "time"}


def _sweep(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text(SWEEP)
    return sp.load_sweep(p)


def _run(tmp_path, name, **kw):
    out = tmp_path / name
    logs = []
    sw.run_sweep(_sweep(tmp_path), output_dir=out, budget=2**30, log=logs.append, **kw)
    return out, "\n".join(logs)


@pytest.fixture(scope="module")
def lone(tmp_path_factory):
    """The sweep with one job per trial, in this process (today's way, the reference)."""
    return _run(tmp_path_factory.mktemp("lone"), "out", fuse=False)[0]


def _records(out):
    return {r["trial"]: r for r in (json.loads(x) for x in (out / "results.jsonl").read_text().splitlines())}


def _history(path):
    with open(path) as f:
        return [{k: v for k, v in row.items() if k not in CSV_FIELDS} for row in csv.DictReader(f)]


def _same_as_lone(out, lone):
    got, want = _records(out), _records(lone)
    assert sorted(got) == sorted(want) and len(got) == 8
    for t, rec in want.items():
        assert {k: v for k, v in got[t].items() if k not in RUN_FIELDS} == {
            k: v for k, v in rec.items() if k not in RUN_FIELDS}
        for name in ("model-final.npz", "model-best.npz"):
            with np.load(out / "trials" / t / name) as a, np.load(lone / "trials" / t / name) as b:
                assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files), (t, name)
        assert _history(out / "trials" / t / "history.csv") == _history(lone / "trials" / t / "history.csv")
        run = json.loads((out / "trials" / t / "run.json").read_text())
        ref = json.loads((lone / "trials" / t / "run.json").read_text())
        assert run["state"] == "finished" and run["epochs"] == ref["epochs"] and run["test_loss"] == ref["test_loss"]


def test_a_fused_sweep_in_this_process_gives_each_trial_its_lone_model_and_results_row(tmp_path, lone):
    out, log = _run(tmp_path, "fused")
    # dropout 0 and 0.2 are one shape: all 8 trials form one array (one task, one plan)
    assert log.count("array     ") == 1 and "8 trials of one shape" in log
    _same_as_lone(out, lone)


def test_a_fused_sweep_in_worker_processes_gives_the_same(tmp_path, lone):
    p = tmp_path / "s.toml"
    p.write_text(SWEEP)
    out = tmp_path / "fused"
    r = CliRunner().invoke(main, ["sweep", str(p), "--output-dir", str(out), "--memory-limit", "1GiB",
                                  "--workers", "2"])
    assert r.exit_code == 0, r.output
    arrays = list((out / "arrays").iterdir())  # one worker for the array: its launch and exit record there
    assert len(arrays) == 1 and (arrays[0] / "launch.json").exists()
    assert len(json.loads((arrays[0] / "exit.json").read_text())["result"]["array"]) == 8
    assert not (out / "trials" / next(iter(_records(out))) / "launch.json").exists()
    _same_as_lone(out, lone)


def test_an_unfinished_array_starts_over_on_resume_and_keeps_finished_results(tmp_path, lone):
    """Results lines lost for 3 of an array's 8 trials (results are appended when the array ends)
    while their run dirs hold checkpoints: --resume keeps every line already written and runs the
    3 as a new array (another id: no array checkpoint of its own), from its start, moving the
    partial run dirs aside, and ends with the lone models."""
    out, _ = _run(tmp_path, "fused")
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:5]) + "\n")  # as if killed before 3 trials' lines
    gone = [json.loads(x)["trial"] for x in lines[5:]]
    out2, log = _run(tmp_path, "fused", resume=True)
    assert "3 trials of one shape" in log
    for t in gone:
        assert list((out / "trials").glob(f"{t}.earlier-*")), t  # the partial run set aside, not deleted
    _same_as_lone(out2, lone)


def _plan(tmp_path, text):
    p = tmp_path / "g.toml"
    p.write_text(text)
    s = sp.load_sweep(p)
    return sw.plan_trials(s, sp.expand(s), output_dir=tmp_path / "o", budget=2**30, device_kind="cpu")


@pytest.mark.parametrize("space, groups", [
    ('lr = [0.001, 0.01]\noptimizer = ["adam", "sgd"]', [4]),  # optimizers and lr differ: one array
    ("batch_size = [32, 64]\nlr = [0.001, 0.01]", [2, 2]),  # one array per batch size
    ("layers = [[64, 16, 10], [64, 32, 10]]\nlr = [0.001, 0.01]", [2, 2]),  # one per layer widths
    ('activation = ["relu", "tanh"]\nlr = [0.001, 0.01]', [2, 2]),
    ('dtype = ["float32", "float64"]\nlr = [0.001, 0.01]', [2, 2]),
    ('batch_size = ["auto", 64]\nlr = [0.001, 0.01]', [1, 1, 2]),  # an auto batch runs alone
    ("lr = [0.001]", [1]),
])
def test_trials_group_by_shape_batch_and_data(tmp_path, space, groups):
    plans = _plan(tmp_path, SWEEP[:SWEEP.index("[space]")] + "[space]\n" + space + "\n")
    got = fuse.groups(plans, "cpu")
    assert sorted(len(g) for g in got) == sorted(groups)
    assert sorted(tp.trial.id for g in got for tp in g) == sorted(tp.trial.id for tp in plans)
    for g in got:
        assert len({fuse.group_key(tp.cfg, tp.resident, "cpu") for tp in g}) == 1
    assert all(len(g) == 1 for g in fuse.groups(plans, "cuda"))  # arrays run on the CPU only, for now


def test_a_trial_runs_alone_where_an_array_would_not_train_it_as_its_job(tmp_path):
    cfg = _plan(tmp_path, SWEEP)[0].cfg
    key = fuse.group_key(cfg, True, "cpu")
    assert key is not None
    assert fuse.group_key(cfg.with_overrides({"seed": 1}), True, "cpu") != key  # the seed draws the split
    assert fuse.group_key(cfg, False, "cpu") is None  # data streamed from disk
    for change in ({"training.max_runtime": 60}, {"training.micro_batch_size": 32}):
        assert fuse.group_key(cfg.with_overrides(change), True, "cpu") is None, change
    # trials with a metrics port fuse with each other (the array serves them all, labelled `trial`), not
    # with trials without one
    ports = [fuse.group_key(cfg.with_overrides({"metrics.port": p}), True, "cpu") for p in (9400, 9401)]
    assert ports[0] == ports[1] != key


# the lone job's 2-D matmul warns on overflow (a CLI run prints the warning; the trainer's guard handles it)
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")
def test_a_diverging_trial_of_an_array_fails_as_its_lone_job_does(tmp_path):
    # patience 5 (the sweep's default): the diverging trial fails on its non-finite steps, not stopping early
    text = SWEEP[:SWEEP.index("[space]")].replace("patience = 1\n", "") + '[space]\nlr = [0.001, 1e12]\noptimizer = ["sgd"]\n'
    p = tmp_path / "s.toml"
    p.write_text(text)
    s = sp.load_sweep(p)
    outs = {}
    for fused in (True, False):
        out = tmp_path / str(fused)
        sw.run_sweep(s, output_dir=out, budget=2**30, log=lambda line: None, fuse=fused)
        outs[fused] = out
    got, want = _records(outs[True]), _records(outs[False])
    assert sorted(r["status"] for r in got.values()) == ["failed", "finished"]
    for t, rec in want.items():
        assert (got[t]["status"], got[t]["error"], got[t]["score"]) == (rec["status"], rec["error"], rec["score"])
        ckpts = [sorted(x.name for x in (o / "trials" / t / "checkpoints").iterdir()) for o in outs.values()]
        assert ckpts[0] == ckpts[1]  # the failed one too: its last good state, as alone
        runs = [json.loads((o / "trials" / t / "run.json").read_text()) for o in outs.values()]
        assert runs[0]["state"] == runs[1]["state"] and runs[0]["message"] == runs[1]["message"]
