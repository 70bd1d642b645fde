""".npz data sets the memory budget must see: rows counted from the array headers (nothing
decompressed at submission), a header declaring rows the file does not hold refused in one
line before np.load allocates them, a decompressed size beyond the process' memory refused,
and loading split in place (peak RSS measured in a child process)."""

import io
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile

import numpy as np
import pytest

from memtrain.config import from_dict
from memtrain.data import header_rows
from memtrain.train.jobplan import DataRows, data_bytes, data_rows


def declared_rows_npz(path, rows=10**9, cols=64):
    """A 2 KB .npz whose X header declares `rows` x `cols` float32 (256 GB for 10**9 x 64)."""
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f4", "fortran_order": False, "shape": (rows, cols)})
    y = io.BytesIO()
    np.save(y, np.zeros(10, np.int64))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("X.npy", head.getvalue() + bytes(1000))
        z.writestr("y.npy", y.getvalue())
    return path


def test_a_header_declaring_10_9_rows_is_one_line_exit_2(tmp_path):
    path = declared_rows_npz(tmp_path / "huge.npz")
    job = tmp_path / "job.toml"
    job.write_text(f'name = "huge"\ndevice = "cpu"\n[model]\nlayers = [64, 8, 10]\n[training]\nbatch_size = 32\n'
                   f'epochs = 1\n[data]\ndataset = "{path}"\n')
    r = subprocess.run([sys.executable, "-m", "memtrain.cli", "train", str(job), "--output-dir", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert "X: its header declares shape (1000000000, 64) float32 (256,000,000,000 B) but the archive holds 1,000 B" \
        in r.stderr
    assert not (tmp_path / "o").exists()


def test_the_service_answers_422_for_it(tmp_path):
    from service_helpers import ThreadServer, digits_job

    declared_rows_npz(tmp_path / "huge.npz")
    with ThreadServer(tmp_path / "state", data_roots=(str(tmp_path),)) as s:
        job = digits_job("huge", data={"dataset": "huge.npz"})
        status, body = s.request("POST", "/jobs", job)
        assert status == 422 and set(body) == {"detail"} and "header declares shape (1000000000, 64)" in body["detail"]


def _config(path, **data):
    return from_dict({"name": "n", "device": "cpu", "model": {"layers": [64, 8, data.pop("outputs", 10)],
                                                                 "output": data.pop("output", "softmax")},
                      "training": {"batch_size": 16, "epochs": 1}, "data": {"dataset": str(path), **data}})


@pytest.mark.parametrize("case", ["fractions", "own validation and test", "regression", "float64 model"])
def test_rows_from_the_header_are_the_rows_the_job_loads(tmp_path, case):
    rng = np.random.default_rng(0)
    arrays = {"X": rng.normal(size=(1001, 64)).astype(np.float32), "y": rng.integers(0, 10, 1001)}
    data = {"validation": 0.15, "test": 0.1}
    if case == "own validation and test":
        arrays.update(X_val=arrays["X"][:77], y_val=arrays["y"][:77], X_test=arrays["X"][:50], y_test=arrays["y"][:50])
    if case == "regression":
        arrays["y"] = rng.normal(size=(1001, 3))
        data.update(output="linear", outputs=3)
    np.savez(tmp_path / "d.npz", **arrays)
    cfg = _config(tmp_path / "d.npz", **data)
    if case == "float64 model":
        cfg = cfg.with_overrides({"model.dtype": "float64"})
    spec = cfg.model_spec()
    got = header_rows(tmp_path / "d.npz", dtype=spec.dtype.name, output=spec.output.name, validation=0.15, test=0.1,
                      above=0)
    from memtrain.train.jobplan import load_job_data

    ds = load_job_data(cfg)
    assert got == (64, len(ds.X_train), len(ds.X_val), data_bytes(ds))


def test_a_large_npz_is_counted_without_decompressing_it(tmp_path):
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, X=np.zeros((300_000, 64), np.float32), y=np.zeros(300_000, np.int64))  # 79 MB
    assert path.stat().st_size < 1_000_000
    tracemalloc.start()
    rows = data_rows(_config(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert rows == DataRows(64, 180_000, 60_000, 240_000 * (64 * 4 + 8))  # the default 0.2 test and validation
    assert peak < 4 * 1024**2, peak  # the headers, not the 79 MB


def _child(code: str, room: int | None = None):
    cap = "" if room is None else textwrap.dedent(f"""
        import resource
        from memtrain.memory.measure import proc_kib
        resource.setrlimit(resource.RLIMIT_AS, (proc_kib("/proc/self/status", "VmSize") + {room}, resource.RLIM_INFINITY))
    """)
    pre = "import numpy, sklearn.utils\nfrom memtrain.data import load_dataset\n"
    return subprocess.run([sys.executable, "-c", pre + cap + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, env={"OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                            "PYTHONPATH": ":".join(sys.path)})


def test_a_decompressed_size_beyond_the_memory_left_is_refused_before_decompressing(tmp_path):
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, X=np.zeros((400_000, 64), np.float32), y=np.zeros(400_000, np.int64))  # 106 MB in 0.1 MB
    r = _child(f"""
        from memtrain.errors import DataError
        try:
            load_dataset({str(path)!r})
        except DataError as exc:
            print(exc)
    """, room=64 * 1024**2)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "bomb.npz: its arrays hold 100.71 MiB (105,600,000 B) decompressed but" in r.stdout
    assert "(RLIMIT_AS now); expected a smaller data set" in r.stdout


def test_loading_splits_in_place_peak_rss(tmp_path):
    """Measured: the process' peak RSS over its RSS before the load, against the arrays it ends with.
    Splitting by fancy indexing held two copies of X (2.23x here); in place, X plus its larger
    held-out split."""
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, X=np.zeros((200_000, 64), np.float32), y=np.zeros(200_000, np.int64))
    r = _child(f"""
        from memtrain.memory.measure import proc_kib
        before = proc_kib("/proc/self/status", "VmRSS")
        ds = load_dataset({str(path)!r}, validation=0.2, test=0.2, standardize=True)
        held = sum(a.nbytes for a in (ds.X_train, ds.y_train, ds.X_val, ds.y_val, ds.X_test, ds.y_test))
        print((proc_kib("/proc/self/status", "VmHWM") - before) / held)
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(r.stdout) < 1.4, r.stdout  # 1.20 measured (the larger held-out split and index arrays)
