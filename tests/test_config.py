import pytest

from memtrain.config import load


def write(tmp_path, text):
    p = tmp_path / "job.toml"
    p.write_text(text)
    return p


def test_a_job_file(tmp_path):
    cfg = load(write(tmp_path, """
name = "digits"
seed = 3
[model]
layers = [64, 128, 10]
activation = "gelu"
dropout = [0.8, 0.5]
dtype = "float64"
[optimizer]
name = "adam"
lr = 0.01
beta2 = 0.99
[training]
batch_size = 64
patience = 4
"""))
    spec = cfg.model_spec()
    assert spec.sizes == (64, 128, 10) and spec.activation.name == "gelu" and spec.dropout == (0.8, 0.5)
    assert cfg.optimizer_name() == "adam" and cfg.optimizer_hyper() == {"lr": 0.01, "beta2": 0.99}
    assert cfg.seed == 3 and cfg.training["batch_size"] == 64


def test_malformed_toml_gives_line_and_column(tmp_path):
    with pytest.raises(ValueError, match=r"invalid TOML: .*line 3, column"):
        load(write(tmp_path, "[model]\nlayers = [1, 2]\nactivation relu\n"))


def test_unknown_keys_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) in \[model\]: activaton; expected activation"):
        load(write(tmp_path, "[model]\nlayers = [2, 2]\nactivaton = 'relu'\n"))
    with pytest.raises(ValueError, match=r"unknown key\(s\) modle"):
        load(write(tmp_path, "[modle]\nlayers = [2, 2]\n"))


def test_missing_file_and_layers(tmp_path):
    with pytest.raises(ValueError, match="config: cannot read"):
        load(tmp_path / "nope.toml")
    with pytest.raises(ValueError, match="model.layers: missing"):
        load(write(tmp_path, "[model]\nactivation = 'relu'\n")).model_spec()
