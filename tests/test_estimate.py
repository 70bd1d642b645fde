"""`memtrain estimate`: library reports and the command, incl. bad input."""

import json
import os

import pytest
from click.testing import CliRunner

from memtrain import MLP, Trainer
from memtrain.cli import main
from memtrain.memory.overhead import ASSUMED_CUDA_OVERHEAD
from memtrain.memory.plan import CATEGORIES
from memtrain.nn.spec import ModelSpec
from memtrain.optim import OPTIMIZERS
from memtrain.profiler import estimate as est


def run(*args):
    result = CliRunner().invoke(main, ["estimate", *args])
    return result.exit_code, result.output


def test_course_example():
    code, out = run("--layers", "784,32,20,10", "--dtype", "float64", "--optimizer", "sgd")
    assert code == 0
    assert "25,990 parameters" in out
    assert any(line.split()[:2] == ["parameters", "207,920"] for line in out.splitlines())
    assert "parameters + gradients + optimizer state = 2.00x" in out


def test_estimate_is_the_trainers_plan():
    """Never a second formula: the report's total is the plan a Trainer allocates."""
    spec = ModelSpec.create([784, 256, 10], activation="gelu", dropout=True)
    model = MLP.from_spec(spec)
    trainer = Trainer(model, "nadam", batch_size=48)
    r = est.report(est.Setting(spec, "nadam"), 48)
    assert r["total"] == trainer.plan.total
    assert [b["name"] for b in r["buffers"]] == trainer.plan.names()
    assert sum(b["nbytes"] for b in r["buffers"]) == trainer.plan.total


@pytest.mark.parametrize("name,state,total", [
    ("sgd", 0.0, 2.0), ("momentum", 1.0, 3.0), ("adam", 2.0, 4.0), ("adadelta", 2.0, 4.0), ("lookahead:adam", 3.0, 5.0),
])
def test_multipliers(name, state, total):
    code, out = run("--layers", "784,1024,1024,10", "--optimizer", name, "--batch-size", "256", "--format", "json")
    r = json.loads(out)
    assert r["multipliers"]["optimizer_state"] == pytest.approx(state, abs=1e-4)
    assert r["multipliers"]["params_grads_state"] == pytest.approx(total, abs=1e-4)


def test_json_schema_is_stable():
    code, out = run("--layers", "20,30,5", "--batch-size", "8", "--format", "json", "--per-layer", "--gpus", "2",
                    "--memory-limit", "1MiB")
    r = json.loads(out)
    assert code == 0 and r["schema"] == "memtrain.estimate/1"
    assert set(r) == {"schema", "mode", "model", "optimizer", "device", "batch_size", "categories", "total",
                      "multipliers", "overhead", "formula", "buffers", "max_batch", "per_layer", "data_parallel"}
    assert set(r["categories"]) == set(CATEGORIES)
    assert set(r["buffers"][0]) == {"name", "category", "shape", "dtype", "nbytes", "allocated", "layer", "batched"}
    f = r["formula"]
    assert r["total"] == f["fixed"] + 8 * f["per_sample"]
    mb = r["max_batch"]
    budget = 1024**2 - mb["margin"]  # the safety margin autobatch keeps
    assert mb["budget"] == budget and mb["memory_limit"] == 1024**2
    assert f["fixed"] + mb["batch_size"] * f["per_sample"] <= budget < f["fixed"] + (mb["batch_size"] + 1) * f["per_sample"]


def test_all_optimizers_side_by_side():
    code, out = run("--layers", "784,1024,1024,10", "--optimizer", "all", "--batch-size", "256", "--memory-limit", "1GiB",
                    "--format", "json")
    t = json.loads(out)
    assert code == 0 and t["schema"] == "memtrain.estimate-table/1"
    names = [r["optimizer"] for r in t["rows"]]
    assert sorted(n.split(":")[0] for n in names) == sorted(OPTIMIZERS)  # all 12
    totals = [r["total"] for r in t["rows"]]
    assert totals == sorted(totals)
    assert names[0] == "sgd" and names[-1] == "lookahead:adam"
    assert all(r["max_batch"] > 0 for r in t["rows"])
    code, text = run("--layers", "784,1024,1024,10", "--optimizer", "all", "--batch-size", "256", "--memory-limit", "1GiB")
    assert "max batch in 1.00 GiB" in text and "lookahead:adam" in text


def test_batch_lists_and_csv():
    code, out = run("--layers", "100,10", "--batch-size", "32:128", "--format", "csv")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].startswith("optimizer,batch_size,parameters")
    assert [line.split(",")[1] for line in lines[1:]] == ["32", "64", "128"]


def test_largest_batch_with_rounding():
    _, out = run("--layers", "784,4096,4096,10", "--memory-limit", "16GiB", "--multiple-of", "8", "--format", "json")
    b = json.loads(out)["max_batch"]["batch_size"]
    assert b % 8 == 0 and b > 0
    _, out = run("--layers", "784,4096,4096,10", "--memory-limit", "16GiB", "--power-of-two", "--format", "json")
    p = json.loads(out)["max_batch"]["batch_size"]
    assert p & (p - 1) == 0 and p <= b < 2 * p + 8


def test_inference_plan_allows_a_much_larger_batch():
    _, train = run("--layers", "784,4096,4096,10", "--memory-limit", "16GiB", "--format", "json")
    _, infer = run("--layers", "784,4096,4096,10", "--memory-limit", "16GiB", "--inference", "--format", "json")
    t, i = json.loads(train), json.loads(infer)
    assert i["mode"] == "inference" and i["optimizer"] is None
    assert i["categories"]["gradients"] == i["categories"]["optimizer_state"] == 0
    assert i["max_batch"]["batch_size"] > 2 * t["max_batch"]["batch_size"]


def test_cuda_plan_without_a_gpu_uses_the_assumed_overhead(monkeypatch):
    import memtrain.backend as backend

    monkeypatch.setattr(backend, "_import_cupy", lambda: (None, "no CuPy"))
    code, out = run("--layers", "100,10", "--device", "cuda", "--format", "json")
    r = json.loads(out)
    assert code == 0 and r["device"] == "cuda"
    assert r["overhead"] == {"bytes": ASSUMED_CUDA_OVERHEAD, "source": "assumed", "kind": "device"}
    assert all(b["allocated"] % 512 == 0 for b in r["buffers"])
    code, out = run("--layers", "100,10", "--device", "cuda", "--overhead", "300MiB", "--format", "json")
    assert json.loads(out)["overhead"] == {"bytes": 300 * 1024**2, "source": "given", "kind": "device"}


def test_config_file(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text("[model]\nlayers = [64, 128, 10]\ndtype = 'float64'\n[optimizer]\nname = 'rmsprop'\n"
                   "[training]\nbatch_size = 16\npatience = 3\n")
    code, out = run("--config", str(job), "--format", "json")
    r = json.loads(out)
    assert code == 0 and r["batch_size"] == 16 and r["optimizer"]["name"] == "rmsprop"
    assert r["model"]["dtype"] == "float64"
    assert "best_params" in [b["name"] for b in r["buffers"]]  # early stopping keeps the best weights
    code, out = run("--config", str(job), "--optimizer", "sgd", "--dtype", "float32", "--format", "json")
    r = json.loads(out)
    assert r["optimizer"]["name"] == "sgd" and r["model"]["dtype"] == "float32"  # flags override the file


def test_verify_runs_real_steps():
    code, out = run("--layers", "64,32,10", "--verify")
    assert code == 0 and "measured by tracemalloc" in out and "OK: |error|" in out


@pytest.mark.parametrize("args,message", [
    (["--layers", "784"], "layers: need at least 2 sizes"),
    (["--layers", "784,0,10"], "Invalid value for '--layers': every layer size must be from 1 to 2,147,483,647"),
    (["--layers", "784,x"], "Invalid value for '--layers'"),
    (["--layers", "784,10", "--optimizer", "adamw"], "optimizer: unknown 'adamw'; expected one of sgd, momentum"),
    (["--layers", "784,10", "--activation", "relux"], "activation: unknown 'relux'; expected one of identity"),
    (["--layers", "784,10", "--batch-size", "0"], "batch-size: every size must be an integer from 1 to 1,099,511,627,776"),
    (["--layers", "784,10", "--batch-size", "-4"], "batch-size"),
    (["--layers", "784,10", "--memory-limit", "16XB"], "Invalid value for '--memory-limit'"),
    (["--layers", "784,4096,4096,10", "--memory-limit", "1MiB"],
     "memory-limit: 1.00 MiB less the safety margin is too small for batch 1 of this plan; it needs"),
    (["--layers", "784,10", "--device", "gpu"], "device: expected cpu, auto, cuda or cuda:N"),
    ([], "layers: missing"),
    (["--config", "/nonexistent.toml"], "config: cannot read"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    code, out = run(*args)
    assert code == 2
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memtrain: error: ") and message in lines[0], out


def test_estimate_of_a_job_file_is_what_train_runs(tmp_path):
    """docs/example-job.toml: batch "auto" (16 MiB, max 128) and the digits data set in memory."""
    from memtrain.config import load, merge
    from memtrain.profiler.autobatch import auto_batch
    from memtrain.train.job import Job

    code, out = run("--config", "docs/example-job.toml", "--format", "json")
    r = json.loads(out)
    assert code == 0
    cfg = merge(load("docs/example-job.toml"), {"device": "cpu", "training.epochs": 1, "output.dir": str(tmp_path)})
    with open(os.devnull, "w") as devnull:
        job = Job(cfg, progress=False, stream=devnull, install_signals=False, batch_solver=auto_batch)
        job.open_device(), job.load_data(), job.choose_batch(), job.build_trainer()
        job.peak.stop()
    assert r["batch_size"] == job.batch_size == 128
    assert r["categories"] == job.plan.by_category() and r["total"] == job.plan.total
    assert "data_x" in [b["name"] for b in r["buffers"]]  # the resident data set is in the estimate


def test_estimate_and_autobatch_give_the_same_batch():
    code, out = run("--layers", "64,128,10", "--memory-limit", "8MiB", "--format", "json")
    e = json.loads(out)
    r = CliRunner().invoke(main, ["autobatch", "--layers", "64,128,10", "--memory-limit", "8MiB", "--format", "json"])
    a = json.loads(r.output)
    assert code == 0 and r.exit_code == 0
    assert e["max_batch"]["batch_size"] == a["analytic"] == a["confirmed"] == 4162  # same margin (auto: NumPy path)
    assert e["max_batch"]["margin"] == a["margin"]
    assert e["batch_size"] == 4162  # the report is at the solved batch, not at 32


def test_optimizer_takes_a_list_like_compare():
    code, out = run("--layers", "64,128,10", "--optimizer", "sgd,adam", "--batch-size", "64", "--format", "json")
    t = json.loads(out)
    assert code == 0 and t["schema"] == "memtrain.estimate-table/1"
    assert sorted(r["optimizer"] for r in t["rows"]) == ["adam", "sgd"]
    code, out = run("--layers", "64,128,10", "--optimizer", "sgd,adamw")
    assert code == 2 and "optimizer: unknown 'adamw'" in out


def test_memory_limit_is_the_one_spelling_and_memory_a_deprecated_alias():
    r = CliRunner().invoke(main, ["estimate", "--help"])
    assert "--memory-limit" in r.output and "--memory " not in r.output
    old = CliRunner().invoke(main, ["estimate", "--layers", "64,128,10", "--memory", "8MiB", "--format", "json"])
    new = CliRunner().invoke(main, ["estimate", "--layers", "64,128,10", "--memory-limit", "8MiB", "--format", "json"])
    assert old.exit_code == new.exit_code == 0
    assert "--memory is deprecated" in old.stderr and "use --memory-limit" in old.stderr
    assert json.loads(old.stdout) == json.loads(new.stdout)
    for cmd in ("estimate", "autobatch", "train", "sweep"):
        assert "--memory-limit" in CliRunner().invoke(main, [cmd, "--help"]).output


def test_no_fused_plans_the_numpy_reference_path_in_estimate_and_autobatch(tmp_path):
    args = ["--layers", "784,256,10", "--optimizer", "nadam", "--batch-size", "64", "--format", "json"]
    fused, ref = (json.loads(run(*args, *extra)[1]) for extra in ([], ["--no-fused"]))
    assert (fused["optimizer"]["kernels"], ref["optimizer"]["kernels"]) == ("fused", "numpy")
    # NAdam's two chunk rows of min(P, 65,536) float32 elements are the whole difference
    assert ref["total"] - fused["total"] == 2 * 65536 * 4
    job = tmp_path / "job.toml"
    job.write_text('[model]\nlayers = [64, 256, 10]\n[optimizer]\nname = "nadam"\n[training]\nbatch_size = 64\n'
                   'fused = false\n')  # digits: 64 features
    from_file, flipped = (json.loads(run("--config", str(job), *extra, "--format", "json")[1])
                          for extra in ([], ["--fused"]))
    assert from_file["optimizer"]["kernels"] == "numpy" and flipped["optimizer"]["kernels"] == "fused"
    assert from_file["total"] - flipped["total"] == 2 * 19210 * 4  # P = 64*256 + 256 + 256*10 + 10 < 65,536
    r = CliRunner().invoke(main, ["autobatch", "--layers", "64,128,10", "--memory-limit", "8MiB", "--no-fused",
                                  "--format", "json"])
    assert r.exit_code == 0 and json.loads(r.output)["confirmed"] == 4162  # 4,182 with the fused plan
