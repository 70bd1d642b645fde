"""Malformed invocations of every command: exit status 2, one line on stderr and
nothing on stdout, no traceback, and nothing written (issue 12, "No traceback, no
garbage").

Each case runs the CLI in-process with click's CliRunner and catch_exceptions=False,
so an exception that would print a traceback fails the test instead of becoming an
exit status. The working directory is a scratch tree holding every file the cases
name; its listing (names, sizes, modification times) must not change.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from memtrain.cli import main

GOOD_JOB = """name = "fz"
seed = 0
device = "cpu"
[model]
layers = [64, 16, 10]
[training]
epochs = 1
"""

FILES = {
    "good.toml": GOOD_JOB,
    "binary.toml": b"\xff\xfe\x00\x01[model]\x00",
    "latin1.toml": "name = \"caf\xe9\"\n".encode("latin-1"),
    "syntax.toml": "[model\nlayers = [64, 10]\n",
    "bool-layers.toml": "device = \"cpu\"\n[model]\nlayers = [true, 10]\n",
    "float-layers.toml": "device = \"cpu\"\n[model]\nlayers = [64.5, 10]\n",
    "unknown-key.toml": "[model]\nlayers = [64, 10]\nlayer = 3\n",
    "bad-epochs.toml": "[model]\nlayers = [64, 10]\n[training]\nepochs = true\n",
    "sweep-unknown.toml": "base = \"good.toml\"\nsearchh = {}\n",
    "sweep-nobase.toml": "[search]\nlr = [0.1]\n",
    "sweep-missing-base.toml": "base = \"missing.toml\"\n[space]\nlr = [0.1]\n",
    "afile": "just a file\n",
    "text.csv": "a,b\nx,y\n",
}


def _write_arrays(root):
    rng = np.random.default_rng(0)
    np.savez(root / "x64.npz", X=rng.random((5, 64)))
    np.savez(root / "x7.npz", X=rng.random((40, 7)), y=rng.integers(0, 10, 40))
    np.savez(root / "nan64.npz", X=np.full((3, 64), np.nan))
    np.savez(root / "noX.npz", Z=np.zeros(3))
    (root / "notzip.npz").write_bytes(b"this is not a zip file")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A scratch working directory with a trained model and the files the cases name."""
    from memtrain.config import from_dict
    from memtrain.train.job import run

    root = tmp_path_factory.mktemp("fuzz")
    for name, content in FILES.items():
        (root / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    _write_arrays(root)
    cfg = from_dict({"name": "fz", "device": "cpu", "model": {"layers": [64, 16, 10]},
                     "training": {"epochs": 1}, "output": {"dir": str(root / "m")}})
    with open(os.devnull, "w") as devnull:
        run(cfg, progress=False, stream=devnull, install_signals=False)
    return root


def _listing(root) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


M = "m/model-final.npz"
L = ["--layers", "64,16,10"]

NO_SERVICE = ["--server", "http://127.0.0.1:9"]  # the discard port: nothing listens there

CASES = [
    # serve, and the client commands (no service is running: each must say so in one line)
    (["serve"], "--state-dir"),
    (["serve", "--state-dir", "s", "--host", "0.0.0.0"], "--token-file"),
    (["serve", "--state-dir", "s", "--port", "0"], "--port"),
    (["serve", "--state-dir", "s", "--budget", "nope"], "--budget"),
    (["serve", "--state-dir", "s", "--budget", "cpu=12XB"], "--budget"),
    (["serve", "--state-dir", "s", "--devices", "cuda:x"], "--devices"),
    (["serve", "--state-dir", "s", "--token-file", "nothere"], "--token-file"),
    (["serve", "--state-dir", "s", "--executor", "bogus"], "--executor"),
    (["serve", "--state-dir", "s", "--ray-address", "auto"], "--ray-address"),
    (["serve", "--state-dir", "s", "--storage", "good.toml"], "--storage"),
    (["serve", "--state-dir", "s", "--executor", "ray", "--devices", "cuda:0"], "--devices"),
    (["submit", "nothere.toml"], "nothere.toml"),
    (["submit", "binary.toml", *NO_SERVICE], "binary.toml"),
    (["submit", "good.toml", "--set", "nodots", *NO_SERVICE], "--set"),
    (["submit", "good.toml", *NO_SERVICE], "no memtrain service"),
    (["submit", "sweep-missing-base.toml", *NO_SERVICE], "missing.toml"),
    (["submit", "sweep-unknown.toml", *NO_SERVICE], "no memtrain service"),
    (["sweep-status"], "SWEEP_ID"),
    (["sweep-status", "abc", "--format", "xml"], "--format"),
    (["sweep-status", "abc", *NO_SERVICE], "no memtrain service"),
    (["cancel", "abc", "--trial", "t1", *NO_SERVICE], "no memtrain service"),
    (["jobs", "--state", "bogus"], "--state"),
    (["jobs", *NO_SERVICE], "no memtrain service"),
    (["jobs", "--server", "notaurl"], "--server"),
    (["job"], "JOB_ID"),
    (["job", "abc", *NO_SERVICE], "no memtrain service"),
    (["cancel", "abc", *NO_SERVICE], "no memtrain service"),
    (["requeue", "abc", *NO_SERVICE], "no memtrain service"),
    (["logs", "abc", "--lines", "-1"], "--lines"),
    (["logs", "abc", *NO_SERVICE], "no memtrain service"),
    # estimate
    (["estimate"], "layers"),
    (["estimate", "--layers", "64"], "layers"),
    (["estimate", "--layers", "64,abc,10"], "--layers"),
    (["estimate", "--layers", "64,0,10"], "layers"),
    (["estimate", "--layers", "64,-5,10"], "layers"),
    (["estimate", "--layers", ""], "layers"),
    (["estimate", *L, "--batch-size", "0"], "batch"),
    (["estimate", *L, "--batch-size", "-3"], "batch"),
    (["estimate", *L, "--batch-size", "abc"], "batch"),
    (["estimate", *L, "--batch-size", "512:32"], "batch"),
    (["estimate", *L, "--optimizer", "nope"], "optimizer"),
    (["estimate", *L, "--activation", "relu6"], "activation"),
    (["estimate", *L, "--dtype", "float8"], "--dtype"),
    (["estimate", *L, "--memory-limit", "12XB"], "--memory-limit"),
    (["estimate", *L, "--memory-limit", "-1GiB"], "--memory-limit"),
    (["estimate", *L, "--dropout", "1.5,0.5"], "dropout"),
    (["estimate", *L, "--device", "cuda:x"], "device"),
    (["estimate", *L, "--device", "auto"], "device"),
    (["estimate", "--config", "missing.toml"], "missing.toml"),
    (["estimate", "--config", "binary.toml"], "binary.toml"),
    (["estimate", "--config", "latin1.toml"], "latin1.toml"),
    (["estimate", "--config", "syntax.toml"], "syntax.toml"),
    (["estimate", "--config", "bool-layers.toml"], "layers"),
    (["estimate", "--config", "float-layers.toml"], "layers"),
    (["estimate", "--config", "unknown-key.toml"], "layer"),
    (["estimate", *L, "--gpus", "0"], "--gpus"),
    (["estimate", *L, "--multiple-of", "0"], "--multiple-of"),
    (["estimate", *L, "--overhead", "lots"], "--overhead"),
    (["estimate", *L, "--format", "xml"], "--format"),
    (["estimate", "--layers", "64,10", "--output", "sigmoid"], "sigmoid"),
    (["estimate", "--layers", "64,1"], "softmax"),
    (["estimate", *L, "--optimizer", "all", "--inference"], "inference"),
    (["estimate", *L, "--memory-limit", "1KiB"], "memory"),
    pytest.param(["estimate", *L, "--batch-size", str(10**30)], "batch"),
    pytest.param(["estimate", "--layers", f"64,{10**30},10"], "layers"),
    pytest.param(["estimate", "--layers", "64,10", "--batch-size", "5076944270305263616"], "batch"),
    # profile
    (["profile", *L, "--tolerance", "nan"], "--tolerance"),
    (["profile", *L, "--tolerance", "inf"], "--tolerance"),
    (["profile", *L, "--tolerance", "-1"], "--tolerance"),
    (["profile", *L, "--steps", "0"], "--steps"),
    (["profile", *L, "--batch-size", "0"], "--batch-size"),
    (["profile", "--config", "binary.toml"], "binary.toml"),
    # autobatch
    (["autobatch", *L, "--device", "cpu", "--memory-limit", "0"], "--memory-limit"),
    (["autobatch", *L, "--device", "cpu", "--margin", "abc"], "--margin"),
    (["autobatch", *L, "--device", "cpu", "--objective", "speed"], "--objective"),
    (["autobatch", *L, "--device", "cpu", "--multiple-of", "0"], "--multiple-of"),
    (["autobatch", "--config", "bool-layers.toml", "--device", "cpu"], "layers"),
    # devices
    (["devices", "--format", "xml"], "--format"),
    (["devices", "extra"], "extra"),
    # train
    (["train", "missing.toml"], "missing.toml"),
    (["train", "binary.toml"], "binary.toml"),
    (["train", "syntax.toml"], "syntax.toml"),
    (["train", "bool-layers.toml"], "layers"),
    (["train", "bad-epochs.toml"], "training.epochs"),
    (["train", "afile"], "afile"),
    (["train", "--device", "cpu", *L, "--epochs", "0"], "--epochs"),
    (["train", "--device", "cpu", *L, "--batch-size", "0"], "--batch-size"),
    (["train", "--device", "cpu", *L, "--lr", "abc"], "--lr"),
    (["train", "--device", "cpu", *L, "--lr", "nan"], "lr"),
    (["train", "--device", "cpu", *L, "--lr", "-1"], "lr"),
    (["train", "--device", "cpu", *L, "--schedule", "nope"], "schedule"),
    (["train", "--device", "cpu", *L, "--metrics-port", "70000"], "--metrics-port"),
    (["train", "--device", "cpu", *L, "--metrics-linger", "nan"], "linger"),
    (["train", "--device", "cpu", *L, "--memory-limit", "abc"], "--memory-limit"),
    (["train", "--device", "cpu", *L, "--log-format", "xml"], "--log-format"),
    (["train", "--device", "cpu", *L, "--checkpoint-every", "-1"], "--checkpoint-every"),
    (["train", "--device", "cpu", *L, "--optimizer", "nope"], "optimizer"),
    pytest.param(["train", "--device", "nope", *L], "device"),
    pytest.param(["train", "--device", "cpu", "--layers", "64,10", "--dataset", "x7.npz"], "7 features"),
    pytest.param(["train", "--device", "cpu", *L, "--dataset", "nothere.npz"], "nothere.npz"),
    # evaluate
    (["evaluate", "missing.npz", "--dataset", "digits"], "missing.npz"),
    (["evaluate", "afile", "--dataset", "digits"], "afile"),
    (["evaluate", M, "--dataset", "x7.npz"], "7 features"),
    (["evaluate", M, "--dataset", "x7.npz", "--split", "all"], "7 features"),
    (["evaluate", M, "--dataset", "nothere.npz"], "nothere.npz"),
    (["evaluate", M, "--dataset", "notzip.npz"], "notzip.npz"),
    (["evaluate", M, "--dataset", "digits", "--split", "train"], "--split"),
    (["evaluate", M, "--dataset", "digits", "--format", "xml"], "--format"),
    (["evaluate", M, "--dataset", "text.csv"], "text.csv"),
    # predict
    (["predict", M, "--input", "x64.npz", "--out", "afile/p.csv"], "--out"),
    (["predict", M, "--input", "x64.npz", "--out", "/proc/p.csv"], "--out"),
    (["predict", M, "--input", "x64.npz", "--out", "nodir/p.csv"], "--out"),
    (["predict", M, "--input", "x64.npz", "--out", "p.txt"], "--out"),
    (["predict", M, "--input", "x64.npz", "--out", "m"], "--out"),
    (["predict", M, "--input", "x7.npz", "--out", "p.csv"], "7 features"),
    (["predict", M, "--input", "nothere.npz", "--out", "p.csv"], "nothere.npz"),
    (["predict", M, "--input", "good.toml", "--out", "p.csv"], "--input"),
    (["predict", M, "--input", "nan64.npz", "--out", "p.csv"], "NaN"),
    (["predict", M, "--input", "noX.npz", "--out", "p.csv"], "X"),
    (["predict", M, "--input", "notzip.npz", "--out", "p.csv"], "notzip.npz"),
    (["predict", M, "--input", "text.csv", "--out", "p.csv"], "text.csv"),
    (["predict", M, "--input", "x64.npz", "--out", "p.csv", "--batch-size", "0"], "--batch-size"),
    (["predict", M, "--input", "x64.npz"], "--out"),
    (["predict", "missing.npz", "--input", "x64.npz", "--out", "p.csv"], "missing.npz"),
    # compare
    (["compare"], "--config"),
    (["compare", "--config", "missing.toml"], "missing.toml"),
    (["compare", "--config", "binary.toml"], "binary.toml"),
    (["compare", "--config", "good.toml", "--optimizers", "adam,nope"], "nope"),
    (["compare", "--config", "good.toml", "--target-accuracy", "2"], "--target-accuracy"),
    (["compare", "--config", "good.toml", "--epochs", "0"], "--epochs"),
    (["compare", "--config", "good.toml", "--format", "xml"], "--format"),
    # sweep
    (["sweep", "missing.toml"], "missing.toml"),
    (["sweep", "binary.toml"], "binary.toml"),
    (["sweep", "syntax.toml"], "syntax.toml"),
    (["sweep", "sweep-unknown.toml"], "searchh"),
    (["sweep", "sweep-nobase.toml"], "base"),
    (["sweep", "good.toml", "--workers", "0"], "--workers"),
    (["sweep", "good.toml", "--metrics-port", "0"], "--metrics-port"),
    (["sweep", "good.toml", "--memory-limit", "-5"], "--memory-limit"),
    # runs
    (["runs", "--format", "xml"], "--format"),
    (["runs", "nothere"], "nothere"),
    (["runs", "afile"], "afile"),
    (["runs", "a", "b"], "b"),
    # the group itself
    (["nonsense"], "nonsense"),
    (["--bogus"], "--bogus"),
]


def _id(case):
    args = case.values[0] if hasattr(case, "values") else case[0]
    return " ".join(args)[:60] or "no-args"


@pytest.mark.parametrize("args,names", CASES, ids=[_id(c) for c in CASES])
def test_malformed_invocation(world, monkeypatch, args, names):
    monkeypatch.chdir(world)
    before = _listing(world)
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    lines = result.stderr.splitlines()
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("memtrain: error: "), result.stderr
    assert names in lines[0], lines[0]
    assert "Traceback" not in result.output and result.stdout == "", result.output
    assert _listing(world) == before, "the invocation wrote or changed files"


def test_there_are_at_least_60_cases_across_every_command():
    commands = {c[0][0] if not hasattr(c, "values") else c.values[0][0] for c in CASES}
    assert len(CASES) >= 60
    assert set(main.commands) <= commands | {"--bogus", "nonsense"}, set(main.commands) - commands


@pytest.mark.parametrize("args", [["train", "binary.toml"], ["predict", M, "--input", "x64.npz", "--out",
                                                                 "afile/p.csv"]])
def test_the_real_entry_point_prints_one_line(world, args):
    """The installed entry point, in a real process: no traceback reaches the terminal."""
    before = _listing(world)
    p = subprocess.run([sys.executable, "-m", "memtrain.cli", *args], cwd=world, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
    assert _listing(world) == before
