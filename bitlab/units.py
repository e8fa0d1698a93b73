"""Size strings as qemu-io and qemu-img read and print them ("64k", "1.5M", "64 MiB")."""

from __future__ import annotations

import math
import re

_SUFFIXES = {"": 0, "b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}
_SIZE_RE = re.compile(r"^\s*(0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?|\.\d+)\s*([bBkKmMgGtTpPeE]?)\s*$")

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


def parse_size(value: str | int) -> int:
    """Parse a size the way qemu_strtosz does: bytes by default, binary suffixes.

    Accepts integers, hex (``0x10000``), and decimals with a suffix (``1.5M``).
    Raises ValueError for anything else, including negative numbers.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid size: {value}")
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"invalid size: {value!r}")
    number, suffix = m.group(1), m.group(2).lower()
    shift = _SUFFIXES[suffix]
    if number.lower().startswith("0x"):
        result = int(number, 16) << shift
    elif "." in number:
        if not suffix or suffix == "b":
            raise ValueError(f"invalid size: {value!r} (fractions need a unit)")
        whole, _, frac = number.partition(".")
        result = (int(whole or "0") << shift) + int(float("0." + (frac or "0")) * (1 << shift))
    else:
        result = int(number) << shift
    if result >= 1 << 64:
        raise ValueError(f"invalid size: {value!r} (too large)")
    return result


def format_size(n: int) -> str:
    """Format like QEMU's size_to_str: ``%0.3g`` and a binary unit (1000 B -> "0.977 KiB")."""
    suffixes = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]
    _, exp = math.frexp(n / (1000.0 / 1024.0))
    i = max(0, (exp - 1) // 10)
    return f"{n / (1 << (i * 10)):0.3g} {suffixes[i]}B"
