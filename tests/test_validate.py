import numpy as np
import pytest

from memtrain.errors import ConfigError
from memtrain.validate import check_choice, check_dtype, check_scalar


@pytest.mark.parametrize("value", [True, False, np.bool_(True)])
def test_true_is_never_an_integer_nor_a_number(value):
    with pytest.raises(ConfigError, match=r"^epochs: expected a positive integer, got"):
        check_scalar(value, "epochs", int, min_val=1)
    with pytest.raises(ConfigError, match=r"^lr: expected"):
        check_scalar(value, "lr", float, min_val=0)


def test_integers_and_numbers():
    assert check_scalar(np.int64(3), "n", int, min_val=1) == 3 and type(check_scalar(np.int64(3), "n", int)) is int
    assert check_scalar(2, "x", float) == 2.0 and isinstance(check_scalar(2, "x", float), float)
    for bad in (2.0, "2", None, [2]):
        with pytest.raises(ConfigError, match=r"^n: expected an integer"):
            check_scalar(bad, "n", int)
    for bad in (float("nan"), float("inf"), "0.1"):
        with pytest.raises(ConfigError, match=r"^x: expected a number"):
            check_scalar(bad, "x", float)
    assert check_scalar(None, "x", float, allow_none=True) is None


@pytest.mark.parametrize("include,lo_ok,hi_ok", [("both", True, True), ("left", True, False),
                                                 ("right", False, True), ("neither", False, False)])
def test_boundaries(include, lo_ok, hi_ok):
    for v, ok in ((0.0, lo_ok), (1.0, hi_ok), (0.5, True), (-0.1, False), (1.1, False)):
        if ok:
            assert check_scalar(v, "p", float, min_val=0, max_val=1, include_boundaries=include) == v
        else:
            with pytest.raises(ConfigError, match=r"^p: expected a number in [\[(]0, 1[\])], got"):
                check_scalar(v, "p", float, min_val=0, max_val=1, include_boundaries=include)


def test_messages_have_one_shape():
    with pytest.raises(ConfigError, match=r"^keep: expected a positive integer, got 0$"):
        check_scalar(0, "keep", int, min_val=1)
    with pytest.raises(ConfigError, match=r"^every: expected an integer >= 0, got -1$"):
        check_scalar(-1, "every", int, min_val=0)
    with pytest.raises(ConfigError, match=r"^clip: expected a positive number, got 0.0$"):
        check_scalar(0.0, "clip", float, min_val=0, include_boundaries="neither")
    with pytest.raises(ConfigError, match=r"^mode: expected one of a, b, got 'c'$"):
        check_choice("c", "mode", ("a", "b"))
    assert check_dtype("float16").name == "float16"
    with pytest.raises(ConfigError, match=r"^dtype: expected one of float16, float32, float64, got 'int8'$"):
        check_dtype("int8")


def test_the_trainer_and_the_job_agree_that_true_is_not_patience():
    from memtrain.config import from_dict
    from memtrain.nn.mlp import MLP
    from memtrain.train.trainer import Trainer

    with pytest.raises(ConfigError, match="patience: expected a positive integer, got True"):
        Trainer(MLP([4, 3, 2]), "sgd", 2, patience=True)
    with pytest.raises(ConfigError, match="training.patience: expected a positive integer, got True"):
        from_dict({"model": {"layers": [4, 2]}, "training": {"patience": True}})
