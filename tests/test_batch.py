import pytest
from hypothesis import given
from hypothesis import strategies as st

from memtrain.memory.batch import largest_batch, parse_batch_sizes, round_batch


@given(fixed=st.integers(0, 10**9), per=st.integers(1, 10**7), budget=st.integers(1, 10**11))
def test_largest_batch_is_exact_on_a_linear_plan(fixed, per, budget):
    f = largest_batch(lambda b: fixed + b * per, budget)
    if fixed + per > budget:
        assert f.batch_size == 0 and f.shortfall == fixed + per - budget
    else:
        assert f.batch_size == (budget - fixed) // per
        assert fixed + f.batch_size * per <= budget < fixed + (f.batch_size + 1) * per


@given(b=st.integers(1, 10**6), m=st.integers(1, 64))
def test_rounding(b, m):
    r = round_batch(b, multiple_of=m)
    assert r % m == 0 and r <= b < r + m
    p = round_batch(b, power_of_two=True)
    assert p & (p - 1) == 0 and p <= b < 2 * p


def test_rounded_batch_that_does_not_fit_reports_shortfall():
    f = largest_batch(lambda b: 100 * b, 500, multiple_of=8)
    assert f.batch_size == 0 and f.shortfall == 300


@pytest.mark.parametrize("text,expected", [
    ("256", [256]), ("32,64,128", [32, 64, 128]), ("32:256", [32, 64, 128, 256]), ("32:128:32", [32, 64, 96, 128]),
])
def test_parse_batch_sizes(text, expected):
    assert parse_batch_sizes(text) == expected


@pytest.mark.parametrize("bad", ["0", "-5", "a", "64:32", "1:2:3:4", "32:64:0", "", "3,,4"])
def test_bad_batch_sizes(bad):
    with pytest.raises(ValueError, match="batch-size"):
        parse_batch_sizes(bad)
