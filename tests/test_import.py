import json
import subprocess
import sys


def test_import_memtrain_stays_light():
    code = (
        "import sys, json, memtrain; "
        "print(json.dumps([m for m in ('cupy', 'click', 'prometheus_client', 'pynvml', 'sklearn', 'ray') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_public_api():
    import memtrain

    for name in memtrain.__all__:
        assert hasattr(memtrain, name), name
    assert memtrain.__version__.count(".") == 2
