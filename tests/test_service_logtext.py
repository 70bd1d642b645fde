"""`memtrain logs`' text form: the human lines of a JSON log (memtrain/service/logtext.py)."""

import json

from memtrain.service.logtext import human_lines, lines_of


def _ev(event, text=None, **fields):
    return json.dumps({"time": 1796285788.005, "event": event, **fields, **({"text": text} if text else {})})


def test_json_events_become_the_lines_train_prints():
    log = [
        _ev("plan", "plan      29.84 KiB: parameters 644 B", total=30552),
        _ev("epoch", "epoch 1/4  loss 0.7318  val_loss 0.3975", epoch=1),
        _ev("checkpoint", path="/x/ckpt-000000012.npz", reason="epoch", step=12),  # train prints none
        "/usr/lib/python3/dist-packages/numpy/core/_methods.py:173: RuntimeWarning: overflow encountered in reduce",
        "  ret = umr_sum(arr, axis, dtype, out, keepdims, where=where)",
        _ev("summary", "finished  4 epochs, 48 steps in 7.5 s\nvalidation loss 0.0895, RMSE 0.4232", epochs=4),
        "error: data.dataset: no such file",
    ]
    assert list(human_lines(log)) == [
        "plan      29.84 KiB: parameters 644 B",
        "epoch 1/4  loss 0.7318  val_loss 0.3975",
        "warning   overflow encountered in reduce (RuntimeWarning)",
        "finished  4 epochs, 48 steps in 7.5 s",
        "validation loss 0.0895, RMSE 0.4232",
        "error: data.dataset: no such file",
    ]


def test_a_log_from_before_the_text_field_still_reads():
    old = [json.dumps({"time": 1.0, "event": "epoch", "epoch": 3, "train_loss": 0.123456, "val_loss": 0.2}),
           json.dumps({"time": 1.0, "event": "checkpoint", "step": 9})]
    assert list(human_lines(old)) == ["epoch     epoch 3, train_loss 0.1235, val_loss 0.2"]


def test_chunks_split_mid_line_are_joined():
    assert list(lines_of(["ab", "c\nde", "f\n", "g"])) == ["abc", "def", "g"]
