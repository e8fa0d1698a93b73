"""Size strings as qemu-io and qemu-img read and print them ("64k", "1.5M", "64 MiB")."""

from __future__ import annotations

import math
import re

_SUFFIXES = {"": 0, "b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}
# qemu_strtosz: leading blanks, an optional plus, then hex (no fraction; a suffix is deprecated but taken, and
# b and e are hex digits there) or decimal with an optional fraction (no exponent), at most one suffix, no more
_SIZE_RE = re.compile(r"^\s*\+?(?:0[xX]([0-9a-fA-F]+)([kKmMgGtTpP]?)|(\d+)(\.\d*)?([bBkKmMgGtTpPeE]?))")

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


class SizeTooLarge(ValueError):
    """A well-formed size of 2**64 or more (qemu_strtosz's ERANGE)."""


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
    result, end = parse_size_prefix(str(value))
    if end != len(str(value)):
        raise ValueError(f"invalid size: {value!r}")
    return result


def parse_size_prefix(text: str, default_suffix: str = "") -> tuple[int, int]:
    """qemu_strtosz with an end pointer: the size at the start of ``text`` and where it ends (what follows
    is the caller's), ``default_suffix`` the unit of a number without one (``"M"``: qemu_strtosz_MiB)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"invalid size: {text!r}")
    hexa, hex_suffix, whole, frac, suffix = m.groups()
    if hexa is not None:
        result = int(hexa, 16) << _SUFFIXES[(hex_suffix or default_suffix).lower()]
    else:
        shift = _SUFFIXES[(suffix or default_suffix).lower()]
        # the fraction as do_strtosz keeps it: a 64-bit fixed-point number, scaled and rounded half up
        valf = int(float("0" + frac) * 2.0 ** 64) if frac and frac != "." else 0
        if valf and not shift:
            raise ValueError(f"invalid size: {text!r} (fractions need a unit)")
        scaled = valf << shift
        result = (int(whole or "0") << shift) + (scaled >> 64) + ((scaled >> 63) & 1)
    if result >= 1 << 64:
        raise SizeTooLarge(f"invalid size: {text!r} (too large)")
    return result, m.end()


def format_size(n: int) -> str:
    """Format like QEMU's size_to_str: ``%0.3g`` and a binary unit (1000 B -> "0.977 KiB")."""
    suffixes = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]
    _, exp = math.frexp(n / (1000.0 / 1024.0))
    i = max(0, (exp - 1) // 10)
    return f"{n / (1 << (i * 10)):0.3g} {suffixes[i]}B"
