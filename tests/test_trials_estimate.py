"""`memtrain estimate --trials K`: the trial array's plan, linear in K, data and process once."""

import json

from click.testing import CliRunner

from memtrain.cli import main
from memtrain.memory.plan import training_plan
from memtrain.memory.trials import TRIAL_OBJECT_BYTES, array_plan
from memtrain.nn.spec import ModelSpec
from memtrain.optim import make_optimizer


def run(*args):
    return CliRunner().invoke(main, ["estimate", *args])


def test_trials_json_is_the_array_plan():
    r = run("--layers", "64,128,10", "--batch-size", "32", "--optimizer", "adam", "--trials", "32",
            "--overhead", "100MiB", "--memory-limit", "1GiB", "--format", "json", "--fused")
    assert r.exit_code == 0, r.output
    a = json.loads(r.output)["trial_array"]
    one = training_plan(ModelSpec.create([64, 128, 10]), make_optimizer("adam"), 32, overhead_bytes=100 << 20)
    expected = array_plan([one] * 32, overhead_bytes=100 << 20)
    assert a["trials"] == 32 and a["total"] == expected.total
    assert a["categories"]["overhead"] == (100 << 20) + 32 * TRIAL_OBJECT_BYTES  # one process, not 32
    assert a["total"] == a["fixed"] + 32 * a["per_trial"]
    assert a["separate"] == 32 * (one.total + TRIAL_OBJECT_BYTES) and a["saved"] == 31 * (100 << 20)
    m = a["max_trials"]
    assert a["fixed"] + m["trials"] * a["per_trial"] <= m["after_margin"] < a["fixed"] + (m["trials"] + 1) * a["per_trial"]


def test_trials_table_counts_a_job_files_data_once(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text('[model]\nlayers = [64, 32, 10]\n[training]\nbatch_size = 16\n[data]\ndataset = "digits"\n')
    r = run("--config", str(job), "--trials", "4")
    assert r.exit_code == 0, r.output
    assert "trial array: 4 trials" in r.output and "total(K) =" in r.output and "the array saves" in r.output
    j = json.loads(run("--config", str(job), "--trials", "4", "--format", "json").output)
    single, a = j["categories"]["data"], j["trial_array"]["categories"]["data"]
    own = sum(b["nbytes"] for b in j["buffers"] if b["name"] in ("order", "x", "y"))
    assert a == single + 3 * own  # each trial its own epoch order and batch; the data set's rows once
    csv = run("--config", str(job), "--trials", "4", "--format", "csv").output
    assert f"array:total,{j['trial_array']['total']}" in csv


def test_trials_bad_input_is_one_line():
    for args, message in [(["--trials", "0"], "--trials"), (["--trials", "2", "--inference"], "trials:"),
                          (["--trials", "2", "--optimizer", "sgd,adam"], "trials:")]:
        r = run("--layers", "64,128,10", *args)
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
