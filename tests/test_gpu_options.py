"""--cuda-graph and --tf32: accepted where they mean something, one-line errors where not."""

import pytest
from click.testing import CliRunner

from memtrain.backend import get_backend, set_tf32
from memtrain.cli import main
from memtrain.config import from_dict
from memtrain.errors import ConfigError, DeviceError
from memtrain.train.job import run


def test_tf32_needs_a_cuda_device():
    with pytest.raises(DeviceError, match="tf32: needs a CUDA device"):
        set_tf32(get_backend("cpu"), True)
    set_tf32(get_backend("cpu"), False)  # off is the CPU's only state: a no-op


@pytest.mark.parametrize("key, value, message", [
    ("cuda_graph", "yes", "training.cuda_graph: expected true or false, got 'yes'"),
    ("tf32", 1, "training.tf32: expected true or false, got 1"),
])
def test_job_keys_are_typed(key, value, message):
    with pytest.raises(ConfigError, match=message):
        from_dict({"model": {"layers": [64, 10]}, "training": {key: value}})


def test_cuda_graph_on_the_cpu_fails_before_any_data(tmp_path):
    cfg = from_dict({"device": "cpu", "model": {"layers": [64, 10]}, "training": {"cuda_graph": True},
                     "data": {"dataset": str(tmp_path / "missing.npz")}, "output": {"dir": str(tmp_path / "out")}})
    with pytest.raises(DeviceError, match=r"training.cuda_graph: CUDA graphs need a CUDA device \(the device is cpu\)"):
        run(cfg, log_format="json", progress=False)


def test_cli_flags_reach_the_job(tmp_path):
    result = CliRunner().invoke(main, ["train", "--layers", "64,10", "--device", "cpu", "--tf32", "--epochs", "1",
                                       "--output-dir", str(tmp_path / "o")])
    assert result.exit_code == 2 and "tf32: needs a CUDA device" in result.output
    result = CliRunner().invoke(main, ["train", "--help"])
    assert "--cuda-graph / --no-cuda-graph" in result.output and "--tf32 / --no-tf32" in result.output
    result = CliRunner().invoke(main, ["train", "--layers", "64,10", "--device", "cpu", "--no-cuda-graph",
                                       "--epochs", "1", "--output-dir", str(tmp_path / "p"), "--log-format", "json"])
    assert result.exit_code == 0, result.output
