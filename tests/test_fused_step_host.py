"""The whole GPU training step (the GPU plan, nn/step.py's fused branch, the
trainer's fused update, the graph stepper) on the CPU: NumPy arrays, and
memtrain's CUDA kernels built as C++ for the host (kernels/host.py). It must
train exactly as the CPU path does. What stays for a GPU: CuPy's GEMMs and a
real stream capture (tests/test_kernels_numerics.py, marked gpu)."""

import numpy as np
import pytest

from memtrain import MLP, Trainer
from memtrain.kernels import dispatch
from memtrain.train import graph


@pytest.fixture
def gpu_step_on_cpu(monkeypatch, host_launcher):
    import memtrain.train.trainer as trainer_mod
    from memtrain.train import step_kernels

    real, choose = trainer_mod.training_plan, step_kernels.choose
    monkeypatch.setattr(trainer_mod, "training_plan",
                        lambda spec, opt, batch, device="cpu", **kw: real(spec, opt, batch, "cuda", **kw))
    monkeypatch.setattr(step_kernels, "choose", lambda device, *a: choose("cuda", *a))
    monkeypatch.setattr(dispatch, "_DEFAULT", [host_launcher])


CASES = [
    ("relu", "softmax", "sgd", None),
    ("gelu", "softmax", "adam", None),
    ("prelu", "softmax", "momentum", None),
    ("swish:1.5", "sigmoid", "rmsprop", None),
    ("tanh", "linear", "novograd", None),
    ("leaky_relu:0.1", "softmax", "lookahead:rprop", None),
    ("mish", "softmax", "nadam", 8),  # gradient accumulation: micro-batches of 8
]


def _data(output, n=96, d=12, c=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    if output == "softmax":
        return X, rng.integers(0, c, n), [d, 16, 10, c]
    if output == "sigmoid":
        return X, (rng.random((n, 1)) > 0.5).astype(float), [d, 16, 10, 1]
    return X, rng.standard_normal((n, c)), [d, 16, 10, c]


def _train(act, output, opt, micro, steps=6, clip=None):
    X, y, layers = _data(output)
    m = MLP(layers, activation=act, output=output, dtype="float64", seed=3)
    t = Trainer(m, opt, 16, micro_batch_size=micro, clip_norm=clip)
    losses = [t.step(X[i * 16:(i + 1) * 16], y[i * 16:(i + 1) * 16]) for i in range(steps)]
    return t, losses


@pytest.mark.parametrize("act, output, opt, micro", CASES)
def test_the_fused_gpu_step_trains_as_the_cpu_step(act, output, opt, micro, request):
    cpu, cpu_losses = _train(act, output, opt, micro)
    request.getfixturevalue("gpu_step_on_cpu")
    fused, fused_losses = _train(act, output, opt, micro)
    assert "step_scalars" in fused.arrays and "chunk" not in fused.arrays  # the GPU plan
    assert fused.kernels.name == "cuda" and cpu.kernels.name == "numba"
    np.testing.assert_allclose(fused_losses, cpu_losses, rtol=1e-10)
    np.testing.assert_allclose(fused.model.params, cpu.model.params, rtol=1e-9, atol=1e-12)
    for name in cpu.arrays:
        if name.startswith("opt."):
            np.testing.assert_allclose(fused.arrays[name], cpu.arrays[name], rtol=1e-9, atol=1e-12, err_msg=name)


class ReplayCapture:
    """Capture records the step's closure; a launch runs it again, as a replay would."""

    def __init__(self):
        self.captures = 0

    def capture(self, fn):
        self.captures += 1
        return fn

    def launch(self, g):
        g()


@pytest.mark.parametrize("loss_every, clip, opt", [(1, None, "adam"), (3, None, "adam"), (1, 0.05, "adam"),
                                                   (1, 0.05, "novograd")])
def test_the_graph_stepper_trains_as_the_cpu_step(monkeypatch, request, loss_every, clip, opt):
    cpu, cpu_losses = _train("relu", "softmax", opt, None, clip=clip)  # the CPU reference, on the CPU plan
    request.getfixturevalue("gpu_step_on_cpu")
    monkeypatch.setattr(graph, "unsupported", lambda t, rows: None)  # a CPU trainer, run as if on a GPU
    X, y, layers = _data("softmax")
    m = MLP(layers, activation="relu", output="softmax", dtype="float64", seed=3)
    t = Trainer(m, opt, 16, clip_norm=clip)
    cap = ReplayCapture()
    t._graph = graph.GraphStepper(t, cap, loss_every=loss_every)
    losses = [t.step(X[i * 16:(i + 1) * 16], y[i * 16:(i + 1) * 16]) for i in range(6)]
    assert cap.captures == 1 and t._graph.graph.replays == 4 and t.steps == 6
    np.testing.assert_allclose(m.params, cpu.model.params, rtol=1e-9, atol=1e-12)
    assert t.last_grad_norm == pytest.approx(cpu.last_grad_norm, rel=1e-9)  # computed on the device
    if clip is not None:
        assert t.last_grad_norm > clip  # so the updates above were clipped, on the device
    if loss_every == 1:
        np.testing.assert_allclose(losses, cpu_losses, rtol=1e-10)
    else:  # read at steps 3 and 6: the mean of each window of three
        assert np.isnan(losses[0]) and losses[2] == pytest.approx(np.mean(cpu_losses[:3]), rel=1e-10)
        assert losses[5] == pytest.approx(np.mean(cpu_losses[3:]), rel=1e-10)
