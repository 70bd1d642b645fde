"""The CUDA-graph step's control flow, on the CPU with a fake capture.

Only a GPU can capture a real graph (tests/test_kernels_numerics.py, marked gpu); here the
fake records what would be captured and launched, or raises like a failed
capture, so warm-up, capture, replay and the eager fallback with its logged
reason are all exercised.
"""

import weakref
from types import SimpleNamespace

import numpy as np
import pytest

from memtrain import MLP, Trainer
from memtrain.kernels.source import N_SCALARS, SC_ACCUM, SC_LOSS
from memtrain.train import graph


class FakeCapture:
    def __init__(self, fail=None):
        self.fail, self.captured, self.launched = fail, [], []

    def capture(self, fn):
        if self.fail:
            raise self.fail
        self.captured.append(fn)
        return f"graph{len(self.captured)}"

    def launch(self, g):
        self.launched.append(g)


def test_warmup_then_capture_then_replay_per_shape():
    cap, log, ran = FakeCapture(), [], []
    g = graph.StepGraph(cap, log.append)
    assert [g.run(128, lambda: ran.append(128)) for _ in range(4)] == ["warmup", "captured", "replay", "replay"]
    assert ran == [128]  # only the warm-up ran eagerly; capturing runs nothing
    assert g.run(7, lambda: ran.append(7)) == "warmup"  # a new shape (last batch) warms up on its own
    assert cap.launched == ["graph1"] * 3 and g.replays == 2 and log == []


def test_a_failed_capture_falls_back_to_eager_with_the_reason_logged_once():
    cap, log, ran = FakeCapture(fail=RuntimeError("operation not permitted when stream is capturing")), [], []
    g = graph.StepGraph(cap, log.append)
    outcomes = [g.run(64, lambda: ran.append(1)) for _ in range(4)]
    assert outcomes == ["warmup", "eager", "eager", "eager"]
    assert len(ran) == 4  # every step ran exactly once, the failed capture's included
    assert log == ["CUDA graph capture failed, training eagerly: RuntimeError: "
                   "operation not permitted when stream is capturing"]
    assert g.disabled == log[0] and cap.launched == []


def test_the_real_capture_ends_a_failed_capture_and_reraises():
    events = []

    class Stream:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def begin_capture(self):
            events.append("begin")

        def end_capture(self):
            events.append("end")
            raise RuntimeError("capture invalidated")

    cap = graph.CupyCapture.__new__(graph.CupyCapture)
    cap.stream = Stream()
    with pytest.raises(ValueError, match="inside"):
        cap.capture(lambda: (_ for _ in ()).throw(ValueError("inside")))
    assert events == ["begin", "end"]


def test_graphs_are_off_on_the_cpu_and_refused_when_forced():
    m = MLP([4, 3, 2], device="cpu")
    assert Trainer(m, "sgd", 8)._graph is None
    with pytest.raises(ValueError, match="cuda_graph: CUDA graphs need a CUDA device"):
        Trainer(m, "sgd", 8, cuda_graph=True)
    t = Trainer(m, "sgd", 8, cuda_graph=False)
    assert graph.unsupported(t, 8) == "CUDA graphs need a CUDA device"


@pytest.mark.parametrize("change, reason", [
    ({"clip_norm": 1.0}, None), ({"dropout": (0.8, 0.5)}, "dropout"), ({"l2": 1e-4}, "l1/l2"),
    ({"rows": 16}, "gradient accumulation"), ({"kernels": "numpy"}, "CUDA kernels"), ({}, None)])
def test_what_keeps_a_step_out_of_a_graph(change, reason):
    spec = SimpleNamespace(dropout=change.get("dropout"), l1=0, l2=change.get("l2", 0))
    t = SimpleNamespace(spec=spec, backend=SimpleNamespace(is_cuda=True),
                        kernels=SimpleNamespace(name=change.get("kernels", "cuda")),
                        clip_norm=change.get("clip_norm"), micro_batch_size=8, fault_hook=None)
    got = graph.unsupported(t, change.get("rows", 8))
    assert (got is None) if reason is None else (reason in got)


class FakeTrainer(SimpleNamespace):
    """A trainer's attributes; weakly referable, as the GraphStepper holds its trainer weakly."""


def _stepper(loss_every):
    t = FakeTrainer(steps=0, nonfinite_steps=0, nonfinite_streak=0, events=[], last_grad_norm=0.0)
    s = graph.GraphStepper.__new__(graph.GraphStepper)
    s._trainer, s.loss_every, s._window_rows, s._last_mean, s._written = weakref.ref(t), loss_every, 0, float("nan"), {}
    return s, t


def test_loss_read_every_step_is_exact_and_a_nonfinite_step_is_not_counted():
    s, t = _stepper(1)
    sc = np.zeros(N_SCALARS)
    sc[SC_LOSS], s._window_rows = 12.0, 4
    assert s._account(sc, 4) == 3.0 and t.steps == 1
    sc[SC_LOSS] = np.inf
    assert s._account(sc, 4) == np.inf and t.steps == 1 and t.nonfinite_steps == 1


def test_loss_read_every_n_steps_gives_the_window_mean():
    s, t = _stepper(3)
    sc = np.zeros(N_SCALARS)
    got = []
    for k in range(6):
        sc[SC_ACCUM] += 2.0 * (k + 1) * 4  # mean loss of step k is 2(k+1), 4 rows
        s._window_rows += 4
        got.append(s._account(sc, 4))
    assert np.isnan(got[0]) and np.isnan(got[1]) and got[2] == 4.0  # (2+4+6)/3
    assert got[3] == got[4] == 4.0 and got[5] == 10.0 and t.steps == 6 and sc[SC_ACCUM] == 0
    with pytest.raises(ValueError, match="loss_every"):
        graph.GraphStepper(t, FakeCapture(), loss_every=0)


def test_a_graph_step_gathers_writes_lr_replays_and_reads(monkeypatch):
    calls, writes = [], []
    monkeypatch.setattr(graph, "device_step", lambda t, v: calls.append(("device", v.b)))

    class Scalars(np.ndarray):  # records the host's writes of lr (0) and clip_norm (5)
        def __setitem__(self, k, value):
            if k in (0, 5):
                writes.append((k, value))
            super().__setitem__(k, value)

    sc = np.zeros(N_SCALARS).view(Scalars)
    buffers = SimpleNamespace(at=lambda b: SimpleNamespace(b=b))
    t = FakeTrainer(steps=0, nonfinite_steps=0, nonfinite_streak=0, events=[], last_grad_norm=0.0,
                    buffers=buffers, arrays={"step_scalars": sc}, schedule=lambda step: 0.1 / (step + 1),
                    clip_norm=None, spec=SimpleNamespace(sizes=(4, 8, 3)))
    cap = FakeCapture()
    s = graph.GraphStepper(t, cap)

    def fill(v, lo, hi):
        calls.append(("fill", lo, hi))
        sc[SC_LOSS] = 2.0 * hi  # what the loss kernel would leave: a mean loss of 2

    losses = [s.step(8, fill) for _ in range(3)]
    assert losses == [2.0, 2.0, 2.0] and t.steps == 3 and t.last_lr == 0.1 / 3 and sc[0] == 0.1 / 3
    sc[0] = -1.0  # only a changed value is written again: the next lr (0.1/4) is
    s.step(8, fill)
    assert sc[0] == 0.1 / 4 and writes == [(0, 0.1), (5, 0.0), (0, 0.05), (0, 0.1 / 3), (0, -1.0), (0, 0.025)]
    assert calls[:4] == [("fill", 0, 8), ("device", 8), ("fill", 0, 8), ("fill", 0, 8)]  # warm-up eager, then graph
    assert len(cap.captured) == 1 and cap.launched == ["graph1"] * 3  # captured at step 2, replayed at 3 and 4
    t.buffers = SimpleNamespace(at=buffers.at)  # re-planned (OOM): the old graph's pointers are stale
    t.schedule = lambda step: 0.5  # a constant rate is written once, then not again
    s.step(8, fill)
    s.step(8, fill)
    assert sc[0] == 0.5
    assert len(cap.captured) == 2 and cap.launched[-1] == "graph2"  # captured again, not replayed
