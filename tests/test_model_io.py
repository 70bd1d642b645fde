"""Saved models carry their identity as fields: every activation parameter survives a
save and load exactly, and the older display-text format is converted."""

import json

import numpy as np
import pytest

from memtrain.errors import ModelFileError
from memtrain.nn.activations import ACTIVATIONS
from memtrain.nn.mlp import MLP
from memtrain.nn.spec import ModelSpec
from memtrain.train.model_io import FORMAT, load_model, save_model

# each activation with a parameter other than its default (those without one as they are)
NON_DEFAULT = {"leaky_relu": "leaky_relu:0.3", "prelu": "prelu:0.1", "swish": "swish:2.0"}


def _model(activation, **kw):
    spec = ModelSpec.create([6, 9, 7, 3], activation, dropout=(0.9, 0.6), dtype="float64", l2=1e-3, init="glorot",
                            **kw)
    m = MLP.from_spec(spec, seed=3)
    rng = np.random.default_rng(1)
    m.params[...] = rng.standard_normal(m.params.shape)  # every weight (PReLU's alphas too) away from its init
    return m


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation_round_trips_with_exact_predictions(tmp_path, name):
    m = _model(NON_DEFAULT.get(name, name), bias_init=0.05)
    save_model(tmp_path / "m", m, {"job": "t"})
    again, meta = load_model(tmp_path / "m.npz")
    assert meta["format"] == FORMAT
    assert again.spec == m.spec  # activation name and parameters, output, dropout, init, dtype: fields
    assert again.spec.activation.params() == m.spec.activation.params()
    X = np.random.default_rng(2).standard_normal((11, 6))
    assert np.array_equal(again.predict(X), m.predict(X))


def test_the_parameter_is_a_field_not_display_text(tmp_path):
    save_model(tmp_path / "m", _model("swish:2.0"), {})
    model = json.loads((tmp_path / "m.json").read_text())["model"]
    assert model["activation"] == {"name": "swish", "params": {"beta": 2.0}}
    assert (model["output"], model["dropout"], model["init"], model["dtype"]) == ("softmax", [0.9, 0.6], "glorot",
                                                                                  "float64")


def _as_v1(path, activation_text):
    """Rewrites a saved model's JSON as memtrain.model/1 wrote it."""
    meta = json.loads(path.read_text())
    m = meta["model"]
    meta["format"] = "memtrain.model/1"
    meta["model"] = {"sizes": m["sizes"], "activation": activation_text, "output": m["output"], "dtype": m["dtype"],
                     "n_params": m["n_params"], "dropout": m["dropout"], "l1": m["l1"], "l2": m["l2"]}
    path.write_text(json.dumps(meta))


def test_an_older_file_is_converted_with_its_parameter(tmp_path):
    m = _model("leaky_relu:0.3")
    save_model(tmp_path / "m", m, {})
    _as_v1(tmp_path / "m.json", "leaky_relu(alpha=0.3)")
    again, _ = load_model(tmp_path / "m.npz")
    assert again.spec.activation.params() == {"alpha": 0.3}  # not the default 0.01
    X = np.random.default_rng(2).standard_normal((5, 6))
    assert np.array_equal(again.predict(X), m.predict(X))


def test_an_unreadable_older_activation_is_a_clear_error(tmp_path):
    save_model(tmp_path / "m", _model("relu"), {})
    _as_v1(tmp_path / "m.json", "relu6 (clipped)")
    with pytest.raises(ModelFileError, match=r"names an activation memtrain cannot read: 'relu6 \(clipped\)'"):
        load_model(tmp_path / "m.npz")
