"""Every buffer of a plan, written out from the memory model (docs/memory-model.md) for a small
model, so a change to one buffer's shape, dtype, category or batch flag is a failure here and
not only a rounding of the traced peak in tests/test_plan.py (which runs in milliseconds, so
mutation testing can run it for every mutant of memory/plan.py)."""

import numpy as np
import pytest

from memtrain.errors import ConfigError
from memtrain.kernels.source import N_SCALARS
from memtrain.memory.plan import CHUNK, Buffer, MemoryPlan, inference_plan, round_up, training_plan
from memtrain.nn.spec import ModelSpec
from memtrain.optim import make_optimizer

INTP = np.dtype(np.intp).name
SIZES = [5, 7, 6, 3]
P = 5 * 7 + 7 + 7 * 6 + 6 + 6 * 3 + 3  # n*k + k per layer


def spec(**kw):
    kw.setdefault("activation", "gelu")
    kw.setdefault("dropout", (0.8, 0.5))
    return ModelSpec.create(SIZES, **kw)


def rows(plan) -> dict:
    return {b.name: (b.category, tuple(b.shape), b.dtype, b.batched) for b in plan.buffers}


def expected(b, *, optimizer_slots, dropout=True, extra=()):
    """The buffers of a float32 softmax [5, 7, 6, 3] step on b rows (per micro-batch)."""
    f = "float32"
    out = {"params": ("parameters", (P,), f, False), "grads": ("gradients", (P,), f, False)}
    out.update(optimizer_slots)
    out.update({"x": ("data", (b, 5), f, True), "y": ("data", (b,), INTP, True)})
    for i, k in ((1, 7), (2, 6)):
        out[f"z{i}"] = ("activations", (b, k), f, True)
        out[f"a{i}"] = ("activations", (b, k), f, True)
        if dropout:
            out[f"mask{i}"] = ("activations", (b, k), f, True)
    if dropout:
        out["mask0"] = ("activations", (b, 5), f, True)
    out["z3"] = ("activations", (b, 3), f, True)
    out["out"] = ("activations", (b, 3), f, True)
    out["dA"] = ("workspace", (b * 7,), f, True)  # the widest hidden layer
    if dropout:
        out["dropout_uniform"] = ("workspace", (b * 7,), f, True)
    out["loss_rows"] = ("workspace", (2, b), f, True)
    out["label_index"] = ("workspace", (b,), INTP, True)  # softmax cross-entropy picks each row's label
    out["row_offsets"] = ("workspace", (b,), INTP, True)
    out.update(dict(extra))
    return out


ADAM = {"opt.m": ("optimizer_state", (P,), "float32", False), "opt.v": ("optimizer_state", (P,), "float32", False)}


def adam_slots(opt):
    # Adam's declared slots: m and v per parameter, and whatever step counter it declares
    out = dict(ADAM)
    for slot in opt.all_slots():
        if slot.name not in ("m", "v"):
            shape = {"param": (P,), "per_layer": (6,), "scalar": ()}[slot.kind]
            out[f"opt.{slot.name}"] = ("optimizer_state", shape, np.dtype(slot.dtype or "float32").name, False)
    return out


def test_a_fused_cpu_step_has_exactly_the_models_buffers():
    opt = make_optimizer("adam")
    plan = training_plan(spec(), opt, 4)
    assert rows(plan) == expected(4, optimizer_slots=adam_slots(opt))
    assert (plan.mode, plan.batch_size, plan.device, plan.micro_batch_size, plan.rows, plan.numba_kernels) == (
        "train", 4, "cpu", 4, 4, True)
    assert plan.total == plan.buffer_bytes == sum(b.nbytes for b in plan.buffers)
    assert plan.by_category()["parameters"] == P * 4 and plan.by_category()["gradients"] == P * 4
    assert plan.by_category()["overhead"] == 0


def test_micro_batch_best_weights_and_a_resident_data_set():
    opt = make_optimizer("adam")
    plan = training_plan(spec(), opt, 4, micro_batch_size=2, keep_best=True, dataset_size=10,
                         resident_rows=(10, 3), overhead_bytes=1000, overhead_source="given")
    extra = {"grad_accum": ("gradients", (P,), "float32", False), "best_params": ("parameters", (P,), "float32", False),
             "order": ("data", (10,), INTP, False), "data_x": ("data", (10, 5), "float32", False),
             "data_y": ("data", (10,), INTP, False), "val_x": ("data", (3, 5), "float32", False),
             "val_y": ("data", (3,), INTP, False)}
    assert rows(plan) == expected(2, optimizer_slots=adam_slots(opt), extra=extra)
    assert (plan.batch_size, plan.micro_batch_size, plan.rows) == (4, 2, 2)
    assert plan.total == sum(b.nbytes for b in plan.buffers) + 1000 and plan.overhead_source == "given"
    assert plan.by_category()["overhead"] == 1000
    assert "val_x" not in rows(training_plan(spec(), opt, 4, resident_rows=(10, 0)))  # no validation rows
    with pytest.raises(ConfigError, match="micro_batch_size: 5 is larger than the batch size 4"):
        training_plan(spec(), opt, 4, micro_batch_size=5)
    assert training_plan(spec(), opt, 4, micro_batch_size=4).names() == training_plan(spec(), opt, 4).names()


def test_the_numpy_reference_step_keeps_its_scratch_and_regression_labels():
    sgd = make_optimizer("sgd")
    plan = training_plan(spec(l2=0.01), sgd, 4, fused=False)
    extra = {"act_scratch": ("workspace", (4 * 7,), "float32", True),
             "chunk": ("workspace", (max(sgd.scratch_count, 1), min(P, CHUNK)), "float32", False)}
    assert rows(plan) == expected(4, optimizer_slots={}, extra=extra) and not plan.numba_kernels
    plain = training_plan(spec(activation="relu", dropout=None), sgd, 4, fused=False)
    assert "act_scratch" not in plain.names() and ("chunk" in plain.names()) == bool(sgd.scratch_count)
    mse = ModelSpec.create(SIZES, output="linear")
    assert rows(training_plan(mse, sgd, 4))["y"] == ("data", (4, 3), "float32", True)
    one = ModelSpec.create([5, 3])
    assert "dA" not in training_plan(one, sgd, 4).names()  # no hidden layer: no hidden delta


def test_a_gpu_step_keeps_its_scalars_on_the_device_and_rounds_each_buffer():
    opt = make_optimizer("adam")
    plan = training_plan(spec(l1=0.001), opt, 4, "cuda:1", fused=False)
    extra = {"step_scalars": ("workspace", (N_SCALARS,), "float64", False),
             "chunk": ("workspace", (1, min(P, CHUNK)), "float32", False),
             "act_scratch": ("workspace", (4 * 7,), "float32", True)}  # GELU's backward on the GPU
    assert rows(plan) == expected(4, optimizer_slots=adam_slots(opt), extra=extra)
    assert plan.device == "cuda" and not plan.numba_kernels  # a GPU step is never the CPU's fused path
    assert plan.total == sum(round_up(b.nbytes, 512) for b in plan.buffers)
    assert "chunk" not in training_plan(spec(), opt, 4, "cuda").names()  # no l1/l2: no chunk


def test_inference_keeps_two_ping_pong_buffers():
    plan = inference_plan(spec(activation="prelu"), 4, overhead_bytes=10, overhead_source="measured")
    assert rows(plan) == {"params": ("parameters", (P + 13,), "float32", False),  # PReLU: one alpha per unit
                          "x": ("data", (4, 5), "float32", True), "y": ("data", (4,), INTP, True),
                          "ping": ("activations", (4 * 7,), "float32", True),
                          "pong": ("activations", (4 * 7,), "float32", True),
                          "act_scratch": ("workspace", (4 * 7,), "float32", True),
                          "loss_rows": ("workspace", (2, 4), "float32", True),
                          "label_index": ("workspace", (4,), INTP, True), "row_offsets": ("workspace", (4,), INTP, True)}
    assert (plan.mode, plan.device, plan.total) == ("inference", "cpu", sum(b.nbytes for b in plan.buffers) + 10)
    assert plan.overhead_source == "measured"
    assert "act_scratch" not in inference_plan(spec(), 4).names()  # GELU needs it only in backward
    assert inference_plan(spec(), 4, "cuda").device == "cuda"


def test_plan_lookups_and_bad_values():
    plan = training_plan(spec(), make_optimizer("sgd"), 3)
    assert plan.get("z1") == Buffer("z1", "activations", (3, 7), "float32", layer=1, batched=True)
    with pytest.raises(KeyError):
        plan.get("nope")
    assert [b.layer for b in plan.buffers if b.name in ("mask0", "z2", "out")] == [0, 2, 3]
    with pytest.raises(ValueError, match="buffer w: unknown category 'weights'"):
        Buffer("w", "weights", (1,), "float32")
    assert Buffer("h", "data", (2**40, 2**30), "float64").nbytes == 2**73  # no int64 wrap
    assert (round_up(0, 512), round_up(1, 512), round_up(512, 512), round_up(513, 512)) == (0, 512, 512, 1024)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            training_plan(spec(), make_optimizer("sgd"), bad)
    assert MemoryPlan("train", 8, "cpu", ()).rows == 8


def test_dropout_of_the_input_or_of_the_hidden_layers_alone():
    sgd = make_optimizer("sgd")
    plain = rows(training_plan(spec(dropout=None), sgd, 4))
    assert not {"mask0", "mask1", "mask2", "dropout_uniform"} & set(plain)
    hidden = rows(training_plan(spec(dropout=(1.0, 0.5)), sgd, 4))
    assert {"mask1", "mask2"} <= set(hidden) and "mask0" not in hidden
    assert hidden["dropout_uniform"] == ("workspace", (4 * 7,), "float32", True)  # the widest hidden layer
    inputs = rows(training_plan(spec(dropout=(0.8, 1.0)), sgd, 4))
    assert "mask0" in inputs and not {"mask1", "mask2"} & set(inputs)
    assert inputs["dropout_uniform"] == ("workspace", (4 * 5,), "float32", True)  # the input's width
    wide64 = ModelSpec.create(SIZES, dropout=True, dtype="float64")
    assert training_plan(wide64, sgd, 4).get("dropout_uniform").dtype == "float64"  # drawn in the model's float64
    layers = {b.name: b.layer for b in training_plan(spec(), sgd, 4).buffers if b.layer is not None}
    assert layers == {"mask0": 0, "z1": 1, "a1": 1, "mask1": 1, "z2": 2, "a2": 2, "mask2": 2, "z3": 3, "out": 3}


def test_one_hidden_layer_has_a_delta_buffer_and_per_layer_slots_count_layers():
    two = ModelSpec.create([5, 7, 3], activation="prelu")
    assert training_plan(two, make_optimizer("sgd"), 4).get("dA").shape == (4 * 7,)
    assert inference_plan(two, 4).get("act_scratch").shape == (4 * 7,)
    novograd = make_optimizer("novograd")
    per_layer = [s for s in novograd.all_slots() if s.kind == "per_layer"]
    plan = training_plan(spec(), novograd, 4)
    assert per_layer and all(plan.get(f"opt.{s.name}").shape == (6,) for s in per_layer)  # weights and biases of 3


def test_defaults_and_limits():
    from memtrain.memory.plan import step_workspace
    from memtrain.units import MAX_BATCH

    plan = training_plan(spec(), make_optimizer("sgd"), 4)
    assert (plan.device, plan.overhead_bytes, plan.overhead_source) == ("cpu", 0, "none")
    infer = inference_plan(spec(), 4)
    assert (infer.batch_size, infer.device, infer.overhead_bytes, infer.overhead_source) == (4, "cpu", 0, "none")
    assert infer.total == sum(b.nbytes for b in infer.buffers)
    assert step_workspace(spec(), make_optimizer("adam"), "cpu") == []  # the fused step by default
    with pytest.raises(ValueError, match=r"micro_batch_size: expected a positive integer at most"):
        training_plan(spec(), make_optimizer("sgd"), 4, micro_batch_size=0)
    with pytest.raises(ValueError, match=r"batch_size: expected a positive integer at most"):
        training_plan(spec(), make_optimizer("sgd"), MAX_BATCH + 1)
    with pytest.raises(KeyError, match="nope"):
        plan.get("nope")
