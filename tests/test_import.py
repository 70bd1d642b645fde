import json
import subprocess
import sys


def test_import_memtrain_stays_light():
    code = (
        "import sys, json, memtrain; "
        "print(json.dumps([m for m in ('cupy', 'click', 'prometheus_client', 'pynvml', 'sklearn', 'ray', 'numba', 'llvmlite') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_public_api():
    import memtrain

    for name in memtrain.__all__:
        assert hasattr(memtrain, name), name
    assert memtrain.__version__.count(".") == 2


def test_the_cli_does_not_load_the_trainer():
    """`memtrain --help` stays fast: the commands import the library when they run."""
    code = "import sys, memtrain.cli; print([m for m in ('memtrain.train.trainer', 'numpy') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# What `memtrain train` of a CPU job never calls, so never imports (issue 22: a small job's start-up):
# the other commands' modules, the service, the CUDA kernels' source and launches, the readers of
# file formats the job does not read, and the libraries only other paths use (the job's ReLU needs
# no SciPy; its 9,610 parameters take the NumPy path, so no numba).
NOT_ON_A_CPU_TRAIN = (
    "memtrain.cli_select", "memtrain.cli_runs", "memtrain.cli_service", "memtrain.service", "memtrain.scheduling",
    "memtrain.select", "memtrain.launch", "memtrain.kernels.dispatch", "memtrain.kernels.activation",
    "memtrain.kernels.loss", "memtrain.kernels.optim", "memtrain.data.idx", "memtrain.data.npzfile",
    "memtrain.data.csvfile", "memtrain.data.inputs", "memtrain.data.synthetic", "memtrain.train.trials",
    "sklearn", "scipy", "numba", "cupy", "prometheus_client", "click.testing",
)


def test_memtrain_train_of_a_cpu_job_imports_only_what_it_runs(tmp_path):
    """The job runs as `memtrain train` runs it (the click command, its exporter, checkpoints and
    history), then the process lists what it imported."""
    code = (
        "import json, sys\n"
        "from memtrain.cli import main\n"
        "try:\n"
        "    main(['train', '--dataset', 'digits', '--layers', '64,16,10', '--epochs', '1', '--batch-size', '64',\n"
        f"          '--device', 'cpu', '--metrics-port', '0', '--output-dir', {str(tmp_path / 'run')!r}])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    assert {"memtrain.train.job", "memtrain.data.digits", "memtrain.exporter"} <= loaded  # it did train
    assert (tmp_path / "run" / "model-final.npz").is_file()
    imported = sorted(m for m in loaded if m in NOT_ON_A_CPU_TRAIN or m.startswith(tuple(
        f"{p}." for p in NOT_ON_A_CPU_TRAIN)))
    assert imported == []


def test_the_lazy_command_table_is_a_whole_mapping():
    """Names need no import; every operation that yields a command imports it (or removes it unread)."""
    from memtrain.cli_lazy import LazyCommands

    table = LazyCommands({"a": 1}, {"b": "json:dumps", "c": "json:loads", "a": "json:nothing"})
    assert sorted(table) == ["a", "b", "c"] and len(table) == 3 and "b" in table and table._lazy.keys() == {"b", "c"}
    assert table.get("b") is json.dumps and table.get("zz", 0) == 0 and table["a"] == 1
    del table["c"]  # never imported
    assert "c" not in table and dict(table) == {"a": 1, "b": json.dumps}
    table["b"] = 2
    assert table.pop("b") == 2 and list(table) == ["a"] and repr(table) == "LazyCommands(['a'])"
