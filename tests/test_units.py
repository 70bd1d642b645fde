import pytest

from memtrain.units import format_bytes, parse_bytes


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
