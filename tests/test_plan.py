"""The plan is what the trainer allocates: checked with tracemalloc on the CPU."""

import tracemalloc

import numpy as np
import pytest

from memtrain import MLP, OPTIMIZERS, Trainer
from memtrain.memory.plan import CATEGORIES, CUDA_ALIGNMENT, inference_plan, training_plan
from memtrain.nn.spec import ModelSpec
from memtrain.optim import make_optimizer

MODELS = [([64, 128, 10], 32), ([784, 256, 128, 10], 64), ([100, 300, 300, 300, 20], 100)]
TOLERANCE = (0.005, 64 * 1024)  # 0.5% or 64 KiB, whichever is larger


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    out = {}
    for sizes, B in MODELS:
        X = rng.standard_normal((3 * B, sizes[0])).astype(np.float32)
        out[tuple(sizes)] = (X, rng.integers(0, sizes[-1], 3 * B))
    # warm up lazy imports and NumPy's first-call caches outside the traced region
    m = MLP([4, 3, 2], activation="gelu", dropout=True)
    Trainer(m, "adam", batch_size=2).step(np.zeros((2, 4)), np.zeros(2, int))
    return out


def traced_run(sizes, B, optimizer, activation, dropout, X, y, dtype="float32"):
    # the step's kernels loaded (compiled, on a cold numba cache) before tracing: machine code is the
    # process's overhead, not the plan's, and which test process compiled them first is a matter of order
    warm = Trainer(MLP([4, 3, 2], activation=activation, dropout=dropout, dtype=dtype), make_optimizer(optimizer), 2)
    warm.step(np.zeros((2, 4), dtype), np.zeros(2, int))
    tracemalloc.start()
    try:
        model = MLP(sizes, activation=activation, dropout=dropout, dtype=dtype)
        trainer = Trainer(model, make_optimizer(optimizer), batch_size=B)
        for i in range(3):
            trainer.step(X[i * B : (i + 1) * B], y[i * B : (i + 1) * B])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return trainer.plan.total, peak


@pytest.mark.parametrize("sizes,B", MODELS, ids=lambda v: "-".join(map(str, v)) if isinstance(v, list) else str(v))
@pytest.mark.parametrize("dropout", [None, True], ids=["nodrop", "dropout"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_traced_peak_equals_plan(data, sizes, B, optimizer, activation, dropout):
    X, y = data[tuple(sizes)]
    planned, peak = traced_run(sizes, B, optimizer, activation, dropout, X, y)
    allowed = max(TOLERANCE[0] * planned, TOLERANCE[1])
    assert abs(peak - planned) <= allowed, f"planned {planned}, traced peak {peak}"
    assert peak >= planned  # the plan never claims more than was really allocated


def test_inference_plan_is_what_predict_allocates(data):
    sizes, B = MODELS[1]
    X, _ = data[tuple(sizes)]
    model = MLP(sizes, activation="gelu")
    model.predict(X[:8])  # warm
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        out = model.predict(X, batch_size=B)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    plan = inference_plan(model.spec, B)
    expected = plan.total - plan.get("params").nbytes + out.nbytes  # params exist already; the result is returned
    assert abs((peak - base) - expected) <= TOLERANCE[1]


def test_plan_is_linear_in_the_batch():
    spec = ModelSpec.create([784, 512, 256, 10], activation="gelu", dropout=True)
    opt = make_optimizer("adam")
    t1, t2, t7 = (training_plan(spec, opt, b).total for b in (1, 2, 7))
    per_sample = t2 - t1
    assert t7 == t1 + 6 * per_sample  # total(B) = fixed + B * per_sample, exactly, on the CPU
    batched = sum(b.nbytes for b in training_plan(spec, opt, 1).buffers if b.batched)
    assert per_sample == batched


def test_inference_needs_far_less_than_training():
    spec = ModelSpec.create([784, 1024, 1024, 10])
    train = training_plan(spec, make_optimizer("adam"), 256).by_category()
    infer = inference_plan(spec, 256).by_category()
    assert infer["gradients"] == infer["optimizer_state"] == 0
    assert infer["activations"] == 2 * 256 * 1024 * 4  # two ping-pong buffers of the widest layer
    assert train["activations"] > 2 * infer["activations"]


def test_cuda_rounds_each_buffer_to_512_bytes():
    spec = ModelSpec.create([3, 5, 2])
    cpu, cuda = training_plan(spec, make_optimizer("sgd"), 3), training_plan(spec, make_optimizer("sgd"), 3, "cuda")
    for buf in cuda.buffers:
        assert cuda.allocated(buf) % CUDA_ALIGNMENT == 0 and cuda.allocated(buf) >= buf.nbytes
    assert cuda.total == len(cuda.buffers) * 512  # every buffer of this tiny model fits one unit
    assert cpu.total == sum(b.nbytes for b in cpu.buffers)


def test_plan_names_and_categories():
    spec = ModelSpec.create([10, 8, 6, 3], activation="gelu", dropout=(0.8, 0.5))
    plan = training_plan(spec, make_optimizer("rprop"), 4, dataset_size=100, fused=False)
    names = plan.names()
    for expected in ["params", "grads", "opt.step", "opt.prev_sign", "x", "y", "order", "mask0", "z1", "a1",
                     "mask1", "z2", "a2", "mask2", "z3", "out", "dA", "act_scratch", "dropout_uniform", "chunk"]:
        assert expected in names
    assert plan.get("opt.prev_sign").dtype == "int8"
    # the fused CPU step (the default) keeps intermediates in registers: no chunk, no activation scratch
    fused = training_plan(spec, make_optimizer("rprop"), 4, dataset_size=100)
    assert fused.numba_kernels and not plan.numba_kernels
    assert set(names) - set(fused.names()) == {"act_scratch", "chunk"}
    saved = plan.get("act_scratch").nbytes + plan.get("chunk").nbytes
    assert plan.total - fused.total == saved == 4 * 8 * 4 + 3 * spec.n_params * 4
    assert set(plan.by_category()) == set(CATEGORIES)
    with pytest.raises(ValueError, match="batch_size: expected a positive integer"):
        training_plan(spec, make_optimizer("sgd"), 0)
