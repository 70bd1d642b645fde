import numpy as np
import pytest

import memtrain.backend as backend
from memtrain.backend import array_module, get_backend, parse_device
from memtrain.errors import DeviceError


def test_cpu():
    b = get_backend("cpu")
    assert b.xp is np and b.name == "cpu" and not b.is_cuda


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cpu:0", "", "cuda:-1"])
def test_bad_device_strings(bad):
    with pytest.raises(DeviceError, match="device"):
        parse_device(bad)


def test_auto_falls_back_to_cpu_in_one_short_line_and_says_why_when_debugging(monkeypatch, capsys):
    why = "CuPy sees no CUDA device (CUDARuntimeError: cudaErrorInsufficientDriver: CUDA driver version is ...)"
    monkeypatch.setattr(backend, "_import_cupy", lambda: (None, why))
    monkeypatch.setattr(backend, "_nvml_gpus", lambda: 0)  # the driver lists no GPU
    monkeypatch.delenv("MEMTRAIN_DEBUG", raising=False)
    b = get_backend("auto", verbose=True)
    assert b.kind == "cpu"
    assert capsys.readouterr().err == "memtrain: no GPU found, using the CPU\n"
    monkeypatch.setenv("MEMTRAIN_DEBUG", "1")
    get_backend("auto", verbose=True)
    assert capsys.readouterr().err == f"memtrain: no GPU found, using the CPU\nmemtrain: debug: device auto -> cpu: {why}\n"
    get_backend("auto")
    assert capsys.readouterr().err == ""


def test_auto_on_a_gpu_cupy_cannot_use_says_why_and_the_fix(monkeypatch, capsys):
    monkeypatch.setattr(backend, "_import_cupy", lambda: (None, "CuPy is not installed or failed to import "
                                                                "(ModuleNotFoundError: No module named 'cupy')"))
    monkeypatch.setattr(backend, "_nvml_gpus", lambda: 2)
    assert get_backend("auto", verbose=True).kind == "cpu"
    assert capsys.readouterr().err == ("memtrain: 2 GPU(s) here, but CuPy is not installed or failed to import "
                                       "(ModuleNotFoundError: No module named 'cupy'); using the CPU (for the GPU: "
                                       "pip install 'memtrain[cuda12]', docs/gpu.md)\n")


def test_cuda_without_device_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(backend, "_import_cupy", lambda: (None, "CuPy sees no CUDA device"))
    with pytest.raises(DeviceError, match=r"device: cuda:1 was asked for but CuPy sees no CUDA device"):
        get_backend("cuda:1")


def test_array_module_numpy():
    assert array_module(np.zeros(2)) is np


def test_rng_fills_in_place():
    rng = get_backend("cpu").rng(3)
    out = np.zeros(5, np.float32)
    rng.random(out=out, dtype=np.float32)
    assert np.all((out > 0) & (out < 1))


@pytest.mark.gpu
def test_cuda_backend():
    b = get_backend("cuda")
    assert b.is_cuda and b.xp.__name__ == "cupy"
    assert array_module(b.xp.zeros(2)) is b.xp


def test_auto_without_an_nvidia_driver_does_not_import_cupy():
    """No driver paths: device auto is the CPU at once, without CuPy's import (0.2-1.5 s of a small job)."""
    import subprocess
    import sys

    code = ("import sys, memtrain.backend as b; b._DRIVER_PATHS = ('/nonexistent/nvidiactl',); "
            "print(b.get_backend('auto').kind, 'cupy' in sys.modules, 'pynvml' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["cpu", "False", "False"]
