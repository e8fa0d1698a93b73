import pytest

from bitlab.units import format_size, parse_size


@pytest.mark.parametrize("text,value", [
    ("0", 0), ("512", 512), ("64k", 65536), ("64K", 65536), ("1M", 1 << 20), ("1.5M", 3 << 19),
    ("1G", 1 << 30), ("1T", 1 << 40), ("0x10000", 65536), ("32736k", 32736 * 1024), (4096, 4096),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "-1", "1.5", "64x", -5, True])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("value,text", [
    (0, "0 B"), (999, "999 B"), (1000, "0.977 KiB"), (65536, "64 KiB"), (67108864, "64 MiB"),
    (1 << 40, "1 TiB"), (1572864, "1.5 MiB"), (100000, "97.7 KiB"), (200704, "196 KiB"),
])
def test_format_size_like_size_to_str(value, text):
    assert format_size(value) == text
