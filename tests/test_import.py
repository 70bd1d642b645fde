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
