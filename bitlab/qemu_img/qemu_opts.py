"""QemuOpts as qemu-img reads ``-o`` (util/qemu-option.c): the option list, its items, their types.

``-o a=1,b=x,,y`` is a list of items split at single commas (a doubled comma is a comma in a value); an
item without ``=`` is a flag (``name`` is ``on``, ``noname`` is ``name`` ``off``). Each item is checked
as it is read, against the descriptions of the options the format accepts, in the order given.
"""

from __future__ import annotations

import re

from ..units import SizeTooLarge, parse_size
from ._common import QemuImgError

SIZE, NUMBER, BOOL, STRING = "size", "number", "bool", "string"
SIZE_HINT = ("Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
             "and exabytes, respectively.\n")
# creation options (each format's QemuOptsList, in QEMU's order, which the "Formatting" line follows; file-posix's
# appended to every format's, the names a format already has left out) and the defaults that line shows
FILE_OPTS = {"size": SIZE, "nocow": BOOL, "preallocation": STRING, "extent_size_hint": SIZE}
CRYPTO_OPTS = {"key-secret": STRING, "cipher-alg": STRING, "cipher-mode": STRING, "ivgen-alg": STRING,
               "ivgen-hash-alg": STRING, "hash-alg": STRING, "iter-time": NUMBER}
CREATE_OPTS = {
    "raw": {"size": SIZE},
    "qcow2": {"encryption": BOOL, "encrypt.format": STRING, **{f"encrypt.{k}": v for k, v in CRYPTO_OPTS.items()},
              "cluster_size": SIZE, "extended_l2": BOOL, "preallocation": STRING, "compression_type": STRING,
              "size": SIZE, "compat": STRING, "backing_file": STRING, "backing_fmt": STRING, "data_file": STRING,
              "data_file_raw": BOOL, "lazy_refcounts": BOOL, "refcount_bits": NUMBER},
    "luks": {**CRYPTO_OPTS, "size": SIZE},
}
DEFAULTS = {"qcow2": {"cluster_size": "65536", "extended_l2": "off", "compression_type": "zlib",
                      "lazy_refcounts": "off", "refcount_bits": "16"}}
PREALLOC_MODES = ("off", "metadata", "falloc", "full")
_TRUE, _FALSE = ("on", "yes", "true", "y"), ("off", "no", "false", "n")
_U64 = re.compile(r"^\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$")  # strtoull, base 0, all of it


def _value(text: str, at: int) -> tuple[str, int]:
    """get_opt_value: the value from ``at`` to the next single comma (``,,`` is a comma); and where it ended."""
    out = []
    while at < len(text):
        if text[at] == ",":
            if text[at + 1:at + 2] != ",":
                break
            at += 1
        out.append(text[at])
        at += 1
    return "".join(out), at


def valid_option_list(text: str) -> bool:
    """is_valid_option_list: no empty list, no empty item, no item starting with a comma, no trailing comma."""
    if not text:
        return False
    at = 0
    while at < len(text):
        value, at = _value(text, at)
        if not value or value.startswith(","):
            return False
        if at < len(text):  # at a comma
            at += 1
            if at == len(text):
                return False
    return True


def items(text: str) -> list[tuple[str, str]]:
    """get_opt_name_value over the list: ``(name, value)`` in order."""
    out = []
    at = 0
    while at < len(text):
        stop = len(text)
        for sep in "=,":
            found = text.find(sep, at)
            if found >= 0:
                stop = min(stop, found)
        name = text[at:stop]
        if stop < len(text) and text[stop] == "=":
            value, at = _value(text, stop + 1)
        else:  # a flag
            at = stop
            value = "on"
            if name.startswith("no"):
                name, value = name[2:], "off"
        out.append((name, value))
        if at < len(text):  # at a comma
            at += 1
    return out


def has_help(text: str) -> bool:
    """has_help_option: an item named ``help`` or ``?``."""
    return any(name in ("help", "?") for name, _ in items(text))


def parse_number(name: str, value: str) -> int:
    """parse_option_number: qemu_strtou64 with base 0 (``-1`` wraps to 2^64-1)."""
    m = _U64.match(value)
    if not m:
        raise QemuImgError(f"qemu-img: Parameter '{name}' expects a number\n")
    digits = m.group(2)
    number = int(digits, 16 if digits[:2] in ("0x", "0X") else 8 if digits.startswith("0") else 10)
    if number >= 1 << 64:
        raise QemuImgError(f"qemu-img: Value '{value}' is too large for parameter '{name}'\n")
    return (-number) % (1 << 64) if m.group(1) == "-" else number


def parse_value(name: str, kind: str, value: str) -> int | bool | str:
    """One item's value as its option's type reads it, or that type's error."""
    if kind == SIZE:
        try:
            return parse_size(value)
        except SizeTooLarge:
            raise QemuImgError(f"qemu-img: Value '{value}' is out of range for parameter '{name}'\n") from None
        except ValueError:
            raise QemuImgError(f"qemu-img: Parameter '{name}' expects a non-negative number below 2^64\n"
                               + SIZE_HINT) from None
    if kind == NUMBER:
        return parse_number(name, value)
    if kind == BOOL:
        if value in _TRUE or value in _FALSE:
            return value in _TRUE
        raise QemuImgError(f"qemu-img: Parameter '{name}' expects 'on' or 'off'\n")
    return value


def parse(text: str, desc: dict[str, str]) -> dict[str, int | bool | str]:
    """qemu_opts_do_parse against ``desc`` (name -> type): the values, the last of a name winning;
    raises the first item's error (an unknown name: ``Invalid parameter``)."""
    out: dict[str, int | bool | str] = {}
    for name, value in items(text):
        if name not in desc:
            raise QemuImgError(f"qemu-img: Invalid parameter '{name}'\n")
        out[name] = parse_value(name, desc[name], value)
    return out
