"""Gradient accumulation and out-of-memory recovery: the optimizer sees the same
mean gradient whether a batch runs whole, in micro-batches, or after an OOM; with dropout,
each micro-batch draws its own masks."""

import numpy as np
import pytest

from memtrain import MLP, Trainer
from memtrain.memory.plan import training_plan
from memtrain.optim import make_optimizer


def data(n=96, d=12, c=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, c, n)


def train(micro=None, fault=None, optimizer="adam", epochs=2, batch=32):
    X, y = data()
    m = MLP([12, 20, 16, 4], activation="tanh", dtype="float64", seed=0, l2=0.01)
    t = Trainer(m, optimizer, batch_size=batch, micro_batch_size=micro, seed=0, clip_norm=5.0)
    t.fault_hook = fault
    t.fit(X, y, epochs=epochs)
    return t


@pytest.mark.parametrize("micro", [16, 8, 5, 1])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rprop"])
def test_micro_batches_give_the_same_training(micro, optimizer):
    whole, parts = train(None, optimizer=optimizer), train(micro, optimizer=optimizer)
    np.testing.assert_allclose(parts.model.params, whole.model.params, rtol=1e-10, atol=1e-12)
    assert parts.micro_batch_size == micro and parts.batch_size == 32
    assert "grad_accum" in parts.plan.names() and "grad_accum" not in whole.plan.names()


def test_micro_batch_plan_is_smaller():
    from memtrain.nn.spec import ModelSpec

    spec = ModelSpec.create([784, 1024, 1024, 10])
    opt = make_optimizer("adam")
    full = training_plan(spec, opt, 4096).by_category()
    micro = training_plan(spec, opt, 4096, micro_batch_size=512).by_category()
    assert micro["activations"] == full["activations"] // 8
    assert micro["gradients"] == 2 * full["gradients"]  # the accumulator
    with pytest.raises(ValueError, match="micro_batch_size: 8192 is larger than the batch size 4096"):
        training_plan(spec, opt, 4096, micro_batch_size=8192)


class InjectOOM:
    """Raises MemoryError once, at the chosen step and micro-batch index."""

    def __init__(self, at_step, at_micro=0):
        self.at = (at_step, at_micro)
        self.fired = False

    def __call__(self, step, micro):
        if not self.fired and (step, micro) == self.at:
            self.fired = True
            raise MemoryError("injected")


@pytest.mark.parametrize("at", [(0, 0), (3, 0), (4, 1)])
def test_oom_mid_run_continues_with_smaller_micro_batches(at):
    whole = train(None)
    hook = InjectOOM(*at)
    if at[1] > 0:  # an OOM on the 2nd micro-batch needs micro-batching already
        t = train(16, fault=hook)
    else:
        t = train(None, fault=hook)
    assert hook.fired and t.oom_recoveries == 1
    before = 32 if at[1] == 0 else 16
    assert t.micro_batch_size == before // 2  # the micro-batch shrank
    assert t.batch_size == 32  # the effective batch did not
    assert t.steps == whole.steps  # no step lost or repeated
    np.testing.assert_allclose(t.model.params, whole.model.params, rtol=1e-5)
    assert t.events[0]["event"] == "oom_recovery" and t.events[0]["micro_batch_to"] == before // 2


def test_oom_at_micro_batch_one_is_raised():
    def always(step, micro):
        raise MemoryError("no memory at all")

    X, y = data()
    t = Trainer(MLP([12, 4]), "sgd", batch_size=2)
    t.fault_hook = always
    with pytest.raises(MemoryError):
        t.step(X[:2], y[:2])
    assert t.micro_batch_size == 1 and t.oom_recoveries == 1


def test_replan_keeps_parameters_and_state():
    t = train(None, epochs=1)
    m_state = t.arrays["opt.m"]
    t.replan(8)
    assert t.arrays["opt.m"] is m_state and t.arrays["params"] is t.model.params
    assert t.arrays["z1"].shape == (8, 20)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_each_micro_batch_of_a_step_draws_its_own_dropout_masks(fused):
    """Masks from (seed, 1, step, micro-batch): two micro-batches of one step must not share them."""
    X, y = data()
    m = MLP([12, 20, 16, 4], activation="tanh", dtype="float64", seed=0, dropout=True)
    t = Trainer(m, "adam", batch_size=16, micro_batch_size=8, seed=3, fused=fused)
    masks = {}

    def before_pass(step, micro):
        if micro == 1:  # the buffers still hold micro-batch 0's masks
            masks[step] = [t.arrays[f"mask{i}"][:8].copy() for i in range(3)]

    t.fault_hook = before_pass
    t.step(X[:16], y[:16])
    second = [t.arrays[f"mask{i}"][:8] for i in range(3)]
    for first, other in zip(masks[0], second):
        assert set(np.unique(first)) == {0.0, 1.0 / (0.8 if first is masks[0][0] else 0.5)}
        assert not np.array_equal(first, other)


# Adam, [12, 20, 16, 4] tanh with the course's dropout (0.8/0.5), batch 32 in micro-batches of 8, seed 3, 2
# epochs of 96 rows: the parameters this code trained, recorded (float64; the fused and reference paths agree
# to the last digits). A change to how masks are drawn changes them far beyond the tolerance.
DROPOUT_MICRO_REFERENCE = {"sum": 10.69022178470195, "sumsq": 38.32190429046824,
                           "at": {0: 0.12102929724520986, 100: -0.011733580788230015, 250: 0.0018660920357326976,
                                  400: -0.37856313188936974, 600: -0.4161353254628456, 663: 0.0022779354418578793}}


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_a_dropout_run_in_micro_batches_ends_at_the_recorded_parameters(fused):
    X, y = data()
    m = MLP([12, 20, 16, 4], activation="tanh", dtype="float64", seed=0, dropout=True)
    t = Trainer(m, "adam", batch_size=32, micro_batch_size=8, seed=3, fused=fused)
    t.fit(X, y, epochs=2)
    p, ref = np.asarray(t.model.params), DROPOUT_MICRO_REFERENCE
    assert t.steps == 6 and p.size == 664
    np.testing.assert_allclose([p.sum(), (p * p).sum()], [ref["sum"], ref["sumsq"]], rtol=1e-9)
    np.testing.assert_allclose([p[i] for i in ref["at"]], list(ref["at"].values()), rtol=1e-9, atol=1e-12)


def test_a_jobs_oom_recovery_is_in_its_log(tmp_path, monkeypatch):
    """The job log says when an OOM shrank the micro-batch (the service's job page lists it)."""
    import io
    import json

    from memtrain.config import from_dict
    from memtrain.train.job import Job

    original = Job.build_trainer

    def with_fault(self):
        original(self)
        self.trainer.fault_hook = InjectOOM(3, 0)

    monkeypatch.setattr(Job, "build_trainer", with_fault)
    cfg = from_dict({"name": "oom", "seed": 0, "device": "cpu", "model": {"layers": [64, 16, 10]},
                     "training": {"batch_size": 32, "epochs": 1}, "data": {"dataset": "digits"},
                     "output": {"dir": str(tmp_path / "out")}, "checkpoint": {"dir": str(tmp_path / "ck")}})
    log = io.StringIO()
    Job(cfg, log_format="json", progress=False, stream=log, install_signals=False).run()
    events = [json.loads(line) for line in log.getvalue().splitlines()]
    oom = [e for e in events if e["event"] == "oom_recovery"]
    assert len(oom) == 1 and oom[0]["micro_batch_from"] == 32 and oom[0]["micro_batch_to"] == 16
    assert oom[0]["text"].startswith("oom       out of memory (MemoryError) at step 3: micro-batch 32 -> 16")
