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
    assert cfg.seed == 3 and cfg.training.batch_size == 64


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


def _full():
    from memtrain.config import from_dict

    return from_dict({
        "name": "rt", "seed": 5, "device": "cpu",
        "model": {"layers": [64, 32, 10], "activation": "leaky_relu:0.3", "dropout": [0.9, 0.6], "dtype": "float64",
                  "l2": 1e-4, "init": "he"},
        "optimizer": {"name": "lookahead:adam", "lr": 0.01, "lookahead_k": 7},
        "schedule": {"name": "step", "milestones": [10, 20], "gamma": 0.5, "warmup": 3},
        "training": {"batch_size": "auto", "max_batch_size": 256, "micro_batch_size": 16, "epochs": 4,
                     "clip_norm": 1.5, "patience": 2, "memory_limit": "2GiB", "measure": False},
        "data": {"dataset": "synthetic:classification(100,64,10)", "validation": 0.1, "standardize": False},
        "checkpoint": {"dir": "/tmp/x", "every_steps": 50, "every_minutes": 0.5, "keep": 1, "resume": False},
        "metrics": {"port": 0, "host": "0.0.0.0", "linger": 2},
        "output": {"dir": "/tmp/out"},
    })


@pytest.mark.parametrize("make", [lambda: _full(), lambda: __import__("memtrain.config").config.JobConfig()])
def test_to_dict_from_dict_round_trips_exactly_through_json(make):
    import json
    import pickle

    from memtrain.config import JobConfig

    cfg = make()
    d = cfg.to_dict()
    again = JobConfig.from_dict(json.loads(json.dumps(d)))
    assert again == cfg and again.to_dict() == d
    assert pickle.loads(pickle.dumps(cfg)) == cfg  # sweep ships configs to worker processes
    assert hash(cfg) == hash(again)


def test_sections_own_their_defaults_and_parse_sizes():
    from memtrain.config import JobConfig

    cfg = _full()
    assert cfg.training.memory_limit == 2 * 1024**3 and cfg.training.batch_size == "auto"
    assert cfg.optimizer.hyper == (("lookahead_k", 7), ("lr", 0.01)) and cfg.model.dropout == (0.9, 0.6)
    d = JobConfig()
    assert d.training.epochs == 10 and d.checkpoint.keep == 3 and d.metrics.host == "127.0.0.1"
    # no name: a run directory of its own, named by what it trains (issue 12)
    run = f"runs/memtrain-{d.run_hash()}"
    assert d.output_dir.as_posix() == run and d.checkpoint_dir.as_posix() == f"{run}/checkpoints"


def test_overrides_go_through_one_merge():
    from memtrain.config import merge

    cfg = _full()
    paths = cfg.with_overrides({"checkpoint.dir": "/srv/ck", "output.dir": "/srv/out", "metrics.port": 9100,
                                "training.epochs": None})
    assert (paths.checkpoint.dir, paths.output.dir, paths.metrics.port) == ("/srv/ck", "/srv/out", 9100)
    assert paths.training.epochs == 4 and cfg.checkpoint.dir == "/tmp/x"  # None: not given; the original stays
    other = merge(cfg, {"optimizer.name": "sgd", "optimizer.lr": 0.2})
    assert other.to_dict()["optimizer"] == {"name": "sgd", "lr": 0.2}  # lookahead_k was not SGD's
    same = merge(cfg, {"optimizer.name": "lookahead:adam", "optimizer.lr": 0.2})
    assert dict(same.optimizer.hyper) == {"lookahead_k": 7, "lr": 0.2}
    with pytest.raises(ValueError, match=r"^training.epochs: expected a positive integer, got 0$"):
        merge(cfg, {"training.epochs": 0})


@pytest.mark.parametrize("section,key,value,message", [
    ("training", "epochs", True, "training.epochs: expected a positive integer, got True"),
    ("training", "batch_size", 1.5, "training.batch_size: expected auto or a positive integer, got 1.5"),
    ("training", "memory_limit", "2 parsecs", "training.memory_limit: expected a size like 16GiB"),
    ("checkpoint", "keep", 0, "checkpoint.keep: expected a positive integer, got 0"),
    ("checkpoint", "resume", "yes", "checkpoint.resume: expected true or false, got 'yes'"),
    ("metrics", "port", 70000, "metrics.port: expected an integer in [0, 65535], got 70000"),
    ("optimizer", "lr", -1, "lr: expected a positive number, got -1"),
    ("schedule", "name", "sometimes", "schedule: unknown 'sometimes'"),
    ("model", "activation", "relu6", "activation: unknown"),
])
def test_wrong_types_are_one_line_naming_the_key(tmp_path, section, key, value, message):
    import json

    from memtrain.config import from_dict

    data = {"model": {"layers": [4, 2]}, section: {key: value}}
    if section == "model":
        data["model"]["layers"] = [4, 2]
    with pytest.raises(ValueError) as e:
        from_dict(json.loads(json.dumps(data)), source="job.toml")
    assert str(e.value).startswith("config job.toml: ") and message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("content,offset,byte", [
    (b"\xff\xfe\x00\x01[model]", 0, "0xff"),  # a binary file given as a job file
    ("name = \"caf\xe9\"\n".encode("latin-1"), 11, "0xe9"),  # Latin-1, not UTF-8
])
def test_a_file_that_is_not_utf8_text_is_named(tmp_path, content, offset, byte):
    from memtrain.config import ConfigError

    p = tmp_path / "job.toml"
    p.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        load(p)
    assert str(e.value) == (f"config {p}: not UTF-8 text (byte {byte} at offset {offset}); TOML files are UTF-8")


def test_a_sweep_file_that_is_not_utf8_text_is_named(tmp_path):
    from memtrain.config import ConfigError
    from memtrain.select.space import load_sweep

    p = tmp_path / "sweep.toml"
    p.write_bytes(b"base = \"job.toml\"\n\x80")
    with pytest.raises(ConfigError, match=r"^sweep .*sweep.toml: not UTF-8 text \(byte 0x80 at offset 18\)"):
        load_sweep(p)


@pytest.mark.parametrize("layers", ["[true, 10]", "[64, false]", "[64.5, 10]", "[64.0, 10]", '["64", 10]', '"64,10"'])
def test_layer_sizes_must_be_integers_not_booleans_or_floats(tmp_path, layers):
    """int(True) is 1 and int(64.5) is 64: such a file is a mistake, never read as [1, 10] or [64, 10]."""
    with pytest.raises(ValueError, match=r"layers: expected a list of positive integers, got "):
        load(write(tmp_path, f"[model]\nlayers = {layers}\n"))
