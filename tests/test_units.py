import pytest

from memtrain.units import format_bytes, format_duration, parse_bytes, parse_duration


@pytest.mark.parametrize("text,expected", [
    ("16GiB", 16 * 1024**3), ("16GB", 16 * 1000**3), ("16gib", 16 * 1024**3), ("512MiB", 512 * 1024**2),
    ("1.5KiB", 1536), ("2048", 2048), ("1e9", 10**9), ("3 MB", 3_000_000), (4096, 4096),
])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


def test_gb_and_gib_are_distinguished():
    assert parse_bytes("16GiB") - parse_bytes("16GB") == 16 * (1024**3 - 1000**3)


@pytest.mark.parametrize("bad", ["16XB", "", "GiB", "-1GiB", "0", "1..2GB"])
def test_bad_sizes_name_the_field(bad):
    with pytest.raises(ValueError, match="memory: expected a"):
        parse_bytes(bad)


def test_format_bytes_is_1024_based_and_labelled():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.50 KiB"
    assert format_bytes(16 * 1024**3) == "16.00 GiB"


@pytest.mark.parametrize("bad", ["1e400GiB", 10**400, 1e300, float("nan"), float("inf"), 2**63])
def test_sizes_past_2_63_bytes_are_one_line_not_an_overflow(bad):
    with pytest.raises(ValueError, match=r"^memory: expected a size below 8 EiB \(2\*\*63 bytes\), got "):
        parse_bytes(bad)
    assert parse_bytes(2**60 + 1) == 2**60 + 1  # an int stays exact


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("2h", 7200), ("1.5d", 129600), (45, 45),
                                           ("0.5", 0.5), ("366d", 366 * 86400)])
def test_durations(text, seconds):
    assert parse_duration(text, "training.max_runtime") == seconds
    assert parse_duration(format_duration(seconds), "x") == seconds


@pytest.mark.parametrize("bad", ["soon", "0s", -1, "367d", float("nan"), True, "1e400s", "2w"])
def test_bad_durations_name_the_field(bad):
    with pytest.raises(ValueError, match=r"^training.max_runtime: expected a duration like 90s"):
        parse_duration(bad, "training.max_runtime")
