import pytest

from bitlab.units import format_size, parse_size


@pytest.mark.parametrize("text,value", [
    ("0", 0), ("512", 512), ("64k", 65536), ("64K", 65536), ("1M", 1 << 20), ("1.5M", 3 << 19),
    ("1G", 1 << 30), ("1T", 1 << 40), ("0x10000", 65536), ("32736k", 32736 * 1024), (4096, 4096),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text,value", [
    ("1.0", 1), ("65536.0", 65536), ("1.", 1), ("1.0b", 1), ("1.k", 1024), (" 1k", 1024), ("+1k", 1024),
    ("0x1k", 1024), ("0X2M", 2 << 20), ("0x1b", 0x1B), ("0x1e", 0x1E), ("0.5e", 1 << 59), ("0.0005k", 1),
    ("0.00048828125k", 1), ("0.0004k", 0), ("0.4995k", 511), ("0.1k", 102), ("1.00048828125k", 1025),
])
def test_parse_size_as_qemu_strtosz(text, value):
    """do_strtosz, as qemu-img 7.2 measure --size and qemu-io's write counts showed it: a fraction of zero
    needs no unit, a hex number takes a suffix (b and e are hex digits there), a fraction rounds half up."""
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "-1", "1.5", "64x", -5, True, "1 k", "1k ", ".5k", "0x1.8k", "0x",
                                  "0x10.0", "1kB", "1e3", "16E"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("value,text", [
    (0, "0 B"), (999, "999 B"), (1000, "0.977 KiB"), (65536, "64 KiB"), (67108864, "64 MiB"),
    (1 << 40, "1 TiB"), (1572864, "1.5 MiB"), (100000, "97.7 KiB"), (200704, "196 KiB"),
])
def test_format_size_like_size_to_str(value, text):
    assert format_size(value) == text
