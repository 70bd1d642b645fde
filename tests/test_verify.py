"""`memtrain profile`: estimate vs tracemalloc measurement across models x optimizers x dtypes."""

import pytest

from memtrain.nn.spec import ModelSpec
from memtrain.profiler.estimate import Setting, all_optimizer_names
from memtrain.profiler.verify import profile

MODELS = [
    (dict(layer_sizes=[64, 128, 10]), 16),
    (dict(layer_sizes=[784, 256, 10], activation="tanh"), 64),
    (dict(layer_sizes=[100, 200, 200, 5], activation="gelu", dropout=True), 32),
]


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("optimizer", all_optimizer_names())
@pytest.mark.parametrize("model,B", MODELS, ids=["64-128-10", "784-256-10", "100-200-200-5-gelu-dropout"])
def test_profile_within_tolerance(model, B, optimizer, dtype):
    spec = ModelSpec.create(**model, dtype=dtype)
    r = profile(Setting(spec, optimizer), B, steps=3)
    assert r["ok"], (r["planned_total"], r["measured_total"])
    assert abs(r["error_bytes"]) <= max(0.005 * r["planned_total"], 64 * 1024)
    # each category is measured on its own, and agrees within a few KiB (array headers)
    for row in r["rows"]:
        assert abs(row["error_bytes"]) < 16 * 1024, row


def test_profile_reports_every_planned_category():
    r = profile(Setting(ModelSpec.create([10, 8, 3], dropout=True), "adam"), 4, steps=2)
    cats = {row["category"] for row in r["rows"]}
    assert cats == {"parameters", "gradients", "optimizer_state", "activations", "workspace", "data"}
    assert r["schema"] == "memtrain.profile/1" and r["source"] == "tracemalloc" and r["steps"] == 2


def test_profile_rejects_inference():
    with pytest.raises(ValueError, match="profile: --inference"):
        profile(Setting(ModelSpec.create([4, 2]), "sgd", inference=True), 2)
