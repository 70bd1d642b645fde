"""`memtrain sweep`: sweep files, memory planning and the shared scheduler's packing,
results.jsonl, resume after a kill, and bad input."""

import json
import os

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from memtrain.cli import main
from memtrain.config import from_dict
from memtrain.launch.executor import Exit, Handle
from memtrain.select import runner as rn
from memtrain.select import space as sp
from memtrain.select import sweep as sw

BASE = """
[base]
name = "b"
seed = 0
device = "cpu"
[base.model]
layers = [64, 32, 10]
[base.optimizer]
name = "adam"
lr = 0.003
beta1 = 0.85
[base.training]
batch_size = 64
epochs = 2
[base.data]
dataset = "digits"
"""

GRID = BASE + """
[search]
method = "grid"
[space]
lr = [0.001, 0.01]
optimizer = ["adam", "momentum"]
"""

RANDOM = BASE + """
[search]
method = "random"
trials = 4
seed = 3
[space]
lr = {log_uniform = [1e-4, 1e-1]}
dropout = {uniform = [0.0, 0.5]}
"""


def write(tmp_path, text, name="s.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_grid_of_4_runs_concurrently_and_writes_results_jsonl(tmp_path):
    out = tmp_path / "out"
    # --no-fuse: one worker process per trial (a fused sweep: tests/test_sweep_fuse.py); the NumPy step
    # (training.fused = false): a worker without numba starts with ~0.8 s of CPU less
    grid = GRID.replace("epochs = 2\n", "epochs = 2\nfused = false\n", 1)
    r = invoke("sweep", write(tmp_path, grid), "--output-dir", out, "--memory-limit", "64MiB", "--workers", "2",
               "--format", "json", "--no-fuse")
    assert r.exit_code == 0, r.output
    recs = lines(out / "results.jsonl")
    assert len(recs) == 4 and {x["status"] for x in recs} == {"finished"}
    assert sorted((x["params"]["lr"], x["params"]["optimizer"]) for x in recs) == [
        (0.001, "adam"), (0.001, "momentum"), (0.01, "adam"), (0.01, "momentum")]
    rep = json.loads(r.output[r.output.index("{"):])
    scores = [x["score"] for x in rep["rows"]]
    assert scores == sorted(scores) and rep["best"] == rep["rows"][0]["trial"]  # lowest validation loss first
    for x in recs:
        assert x["score"] == min(h["val_loss"] for h in x["history"])
        assert x["test_accuracy"] is not None  # reported, not used
        assert x["trial"] == sp.trial_id(x["params"])
        assert (out / "trials" / x["trial"] / "model-final.npz").exists()
        # run by the service's scheduler in a worker process, with the service's thread rule: cores // workers
        launch = json.loads((out / "trials" / x["trial"] / "launch.json").read_text())
        assert launch["env"]["OMP_NUM_THREADS"] == max(1, (os.cpu_count() or 1) // 2)
    # the schedule is printed before starting: each trial's plan, the scheduler's limits
    assert "at most 2 at a time" in r.output and r.output.count("trial     ") >= 4


def test_random_search_of_4_is_seeded_and_within_bounds(tmp_path):
    s = sp.load_sweep(write(tmp_path, RANDOM))
    trials = sp.expand(s)
    assert [t.params for t in trials] == [t.params for t in sp.expand(sp.load_sweep(write(tmp_path, RANDOM)))]
    assert len(trials) == 4
    for t in trials:
        assert 1e-4 <= t.params["lr"] <= 1e-1 and 0 <= t.params["dropout"] <= 0.5
    logs = []
    rep = sw.run_sweep(s, output_dir=tmp_path / "out", budget=2**30, workers=1, log=logs.append)
    recs = lines(tmp_path / "out" / "results.jsonl")
    assert len(recs) == 4 and len(rep["rows"]) == 4
    assert {x["trial"] for x in recs} == {t.id for t in trials}


class Killed(RuntimeError):
    pass


def test_a_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    s = sp.load_sweep(write(tmp_path, GRID))
    out = tmp_path / "out"
    ran = []

    def dies_after_two(cfg):
        # each finished trial is in results.jsonl before the next one starts (a kill loses none)
        assert (len(lines(out / "results.jsonl")) if (out / "results.jsonl").exists() else 0) == len(ran)
        if len(ran) == 2:
            raise Killed("simulated kill")
        ran.append(cfg.name)
        return sw.run_trial(cfg)

    with pytest.raises(Killed):
        sw.run_sweep(s, output_dir=out, budget=2**30, workers=1, runner=dies_after_two, log=lambda t: None)
    first = lines(out / "results.jsonl")
    assert len(first) == 2
    with pytest.raises(ValueError, match="--resume"):  # never overwrites an earlier sweep
        sw.run_sweep(s, output_dir=out, budget=2**30, workers=1, log=lambda t: None)
    again = []

    def counting(cfg):
        again.append(cfg.name)
        return sw.run_trial(cfg)

    rep = sw.run_sweep(s, output_dir=out, budget=2**30, workers=1, resume=True, runner=counting, log=lambda t: None)
    assert len(again) == 2 and not set(again) & set(ran)
    recs = lines(out / "results.jsonl")
    assert len(recs) == 4 and len({x["trial"] for x in recs}) == 4
    assert len(rep["rows"]) == 4
    assert recs[:2] == first  # appended, never rewritten


def test_a_line_cut_short_is_skipped_and_the_next_starts_fresh(tmp_path):
    p = tmp_path / "results.jsonl"
    rec = {"schema": sw.RECORD_SCHEMA, "trial": "a"}
    sw.append_result(p, rec)
    with open(p, "ab") as f:
        f.write(b'{"schema": "memtrain.sw')  # killed mid-write
    sw.append_result(p, {**rec, "trial": "b"})
    recs, warnings = sw.read_results(p)
    assert [r["trial"] for r in recs] == ["a", "b"] and len(warnings) == 1


def test_trials_that_cannot_fit_are_reported_and_skipped(tmp_path):
    text = GRID.replace('optimizer = ["adam", "momentum"]', 'layers = [[64, 32, 10], [64, 4096, 4096, 10]]')
    r = invoke("sweep", write(tmp_path, text), "--output-dir", tmp_path / "o", "--memory-limit", "4MiB", "--dry-run")
    assert r.exit_code == 0, r.output
    assert r.output.count("skipped   ") == 2 and "even at batch 1" in r.output
    assert "2 to run, 2 skipped" in r.output
    assert not (tmp_path / "o" / "results.jsonl").exists()  # --dry-run runs nothing


def test_trial_config_maps_names_to_job_keys(tmp_path):
    s = sp.load_sweep(write(tmp_path, GRID))
    t = sp.Trial(3, {"optimizer": "momentum", "lr": 0.05, "dropout": 0.25, "layers": [64, 8, 10], "l2": 1e-4,
                     "batch_size": "auto", "optimizer.alpha": 0.8})
    c = sp.trial_config(s, t, output_dir=tmp_path, metrics_port=9500)
    d = c.to_dict()
    assert d["optimizer"] == {"name": "momentum", "alpha": 0.8, "lr": 0.05}  # the base's beta1 was Adam's
    assert d["model"]["dropout"] == [1.0, 0.75]  # a drop rate of hidden units
    assert d["model"]["layers"] == [64, 8, 10] and c.model.l2 == 1e-4 and c.training.batch_size == "auto"
    assert c.training.patience == sp.DEFAULT_PATIENCE
    assert c.metrics.port == 9503 and c.name == f"s-{t.id}"
    assert c.output.dir == str(tmp_path / "trials" / t.id) and c.checkpoint.resume is True
    assert sp.trial_id({"a": 1, "b": [2]}) == sp.trial_id({"b": [2], "a": 1})
    assert sp.trial_config(s, sp.Trial(0, {"lr": 0.1}), output_dir=tmp_path).to_dict()["optimizer"] == {
        "name": "adam", "beta1": 0.85, "lr": 0.1}


class Steps:
    """An executor whose jobs each run for a few scheduler passes (a process that takes a while),
    checking at every start what the scheduler has running: the packing under test."""

    name = "steps"

    def __init__(self, size, budget, workers):
        self.size, self.budget, self.workers = size, budget, workers
        self.running, self.started = {}, []

    def start(self, launch):
        self.running[launch.job_id] = 1 + len(self.started) % 3
        self.started.append(launch.job_id)
        assert len(self.running) <= self.workers
        assert sum(self.size[k] for k in self.running) <= self.budget
        return Handle(launch.job_id, self.name, launch.job_id)

    def poll(self, h):
        self.running[h.ref] -= 1
        if self.running[h.ref] > 0:
            return None
        del self.running[h.ref]
        return Exit(0)

    def cancel(self, h):
        pass

    def adopt(self, h):
        return False

    def close(self):
        pass


@given(st.lists(st.integers(0, 1000), max_size=12), st.integers(0, 1000), st.integers(1, 4))
@settings(max_examples=40, deadline=None)
def test_the_shared_scheduler_never_runs_more_than_the_budget(tmp_path_factory, sizes, budget, workers):
    """A sweep's trials go to the service's scheduler: at no time do the running trials' plans exceed
    the budget or their number `workers`; each trial that fits runs once, one that does not never."""
    d = tmp_path_factory.mktemp("packing")
    cfg = from_dict({"name": "t", "model": {"layers": [64, 10]}, "output": {"dir": str(d / "o")},
                     "checkpoint": {"dir": str(d / "c")}})
    size = {f"t{i}": b for i, b in enumerate(sizes)}
    ex = Steps(size, budget, workers)
    dev = rn.device("cpu", budget, "given", workers)
    ended = {task.id: job for task, job, _ in rn.run_tasks([rn.Task(k, cfg, b) for k, b in size.items()], dev, ex,
                                                           poll_s=0)}
    assert sorted(ended) == sorted(size)  # every trial ends once
    assert sorted(ex.started) == sorted(k for k, b in size.items() if b <= budget)
    for k, job in ended.items():
        assert job.state == ("succeeded" if size[k] <= budget else "failed"), job.reason


def test_the_scheduler_packs_what_fits_together_and_runs_alone_what_must(tmp_path):
    cfg = from_dict({"name": "t", "model": {"layers": [64, 10]}, "output": {"dir": str(tmp_path / "o")},
                     "checkpoint": {"dir": str(tmp_path / "c")}})
    size = {"a": 6, "b": 5, "c": 4, "d": 11, "e": 1}
    seen = []

    class Watching(Steps):
        def start(self, launch):
            h = super().start(launch)
            seen.append(sorted(self.running))
            return h

    ex = Watching(size, 10, 2)
    ended = {t.id: j for t, j, _ in rn.run_tasks([rn.Task(k, cfg, b) for k, b in size.items()], rn.device(
        "cpu", 10, "given", 2), ex, poll_s=0)}
    assert seen[:2] == [["a"], ["a", "c"]]  # FIFO with backfill: b (5) waits for a (6); c (4) fits beside a
    assert ended["d"].state == "failed" and "never fits" in ended["d"].reason
    assert max(len(s) for s in seen) == 2


@pytest.mark.parametrize("space, search, field", [
    ("", 'method = "grid"', "space: empty"),
    ("colour = [1, 2]", 'method = "grid"', "space.colour: unknown hyper-parameter"),
    ("lr = {uniform = [0.1, 0.01]}", 'method = "random"\ntrials = 2', "space.lr: uniform needs low < high"),
    ("lr = {log_uniform = [0, 0.1]}", 'method = "random"\ntrials = 2', "space.lr: log_uniform needs positive"),
    ("lr = {log_uniform = [0.1, 0.1]}", 'method = "random"\ntrials = 2', "space.lr: log_uniform needs low < high"),
    ("lr = {log_uniform = [1e-4, 0.1]}", 'method = "random"\ntrials = 0', "search.trials"),
    ("lr = {log_uniform = [1e-4, 0.1]}", 'method = "grid"', "needs method = \"random\""),
    ("lr = {normal = [0, 1]}", 'method = "random"\ntrials = 2', "unknown distribution 'normal'"),
    ("dropout = [0.2, 1.0]", 'method = "grid"', "space.dropout: a drop rate"),
    ("lr = []", 'method = "grid"', "space.lr: empty list"),
    ("lr = [0.1]", 'method = "anneal"', "search.method"),
    ("lr = [0.1]", 'method = "grid"\nbudget = 3', "unknown key(s) in [search]: budget"),
])
def test_bad_sweep_files_are_one_line_exit_2(tmp_path, space, search, field):
    r = invoke("sweep", write(tmp_path, f"{BASE}\n[search]\n{search}\n[space]\n{space}\n"), "--dry-run")
    assert r.exit_code == 2, r.output
    assert r.output.startswith("memtrain: error: ") and field in r.output and r.output.count("\n") == 1


def test_a_value_the_job_refuses_names_the_trial(tmp_path):
    r = invoke("sweep", write(tmp_path, GRID.replace("lr = [0.001, 0.01]", 'activation = ["relu", "zigzag"]')),
               "--dry-run")
    assert r.exit_code == 2 and "trial " in r.output and "activation=zigzag" in r.output


def test_sweep_plot_and_help(tmp_path):
    pytest.importorskip("matplotlib")
    from memtrain.select.plots import sweep_plot

    rows = [{"trial": f"t{i}", "params": {"lr": lr, "optimizer": o, "layers": [64, n, 10]}, "score": 1 / (i + 1)}
            for i, (lr, o, n) in enumerate([(1e-3, "adam", 8), (1e-2, "sgd", 16), (3e-2, "adam", 8)])]
    rep = {"sweep": "s", "params": ["lr", "optimizer", "layers"], "metric": "val_loss", "rows": rows, "best": "t2"}
    sweep_plot(rep, tmp_path / "s.png", log_scale=["lr"])
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    r = invoke("sweep", "--help")
    assert r.exit_code == 0 and "--dry-run" in r.output and "--metrics-port" in r.output
