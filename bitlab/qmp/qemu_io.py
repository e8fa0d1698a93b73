"""qemu-io's command line, as QEMU 7.2's qemu-io-cmds.c reads it (for HMP ``qemu-io``).

bitlab runs ``read``, ``readv``, ``write``, ``writev``, ``discard``, ``flush``, ``alloc``, ``map``,
``length`` and ``info`` (and their one-letter names). Their checks come in qemu-io's order with
its texts, and on its streams: the argument count and getopt's complaints on stderr, the usage
line and every other complaint on stdout.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache

from ..units import SizeTooLarge, parse_size

BDRV_REQUEST_MAX_BYTES = 2147483136  # MIN(SIZE_MAX, INT_MAX) aligned down to the sector
_I64_MAX = (1 << 63) - 1


@dataclass(frozen=True)
class Command:
    """One of qemu-io's commands: its names, argument counts, getopt letters (``:`` takes an
    argument), usage text, and the letters bitlab does not simulate."""

    name: str
    altname: str
    argmin: int
    argmax: int  # -1: no limit
    optstring: str
    args: str
    oneline: str
    unsimulated: str = ""
    getopt: bool = True  # alloc, map, length and info read their words as they are

    @property
    def usage(self) -> str:
        return f"{self.name} {self.args} -- {self.oneline}\n" if self.args else f"{self.name} -- {self.oneline}\n"


COMMANDS = {cmd.name: cmd for cmd in (
    Command("read", "r", 2, -1, "bCl:pP:qs:v", "[-abCqv] [-P pattern [-s off] [-l len]] off len",
            "reads a number of bytes at a specified offset", unsimulated="bC"),
    Command("readv", "", 2, -1, "CP:qv", "[-Cqv] [-P pattern] off len [len..]",
            "reads a number of bytes at a specified offset", unsimulated="C"),
    Command("write", "w", 2, -1, "bcCfnpP:qs:uz", "[-bcCfnquz] [-P pattern | -s source_file] off len",
            "writes a number of bytes at a specified offset", unsimulated="bCns"),
    Command("writev", "", 2, -1, "CfqP:", "[-Cfq] [-P pattern] off len [len..]",
            "writes a number of bytes at a specified offset", unsimulated="C"),
    Command("discard", "d", 2, -1, "Cq", "[-Cq] off len", "discards a number of bytes at a specified offset",
            unsimulated="C"),
    Command("flush", "f", 0, 0, "", "", "flush all in-core file state to disk"),
    Command("alloc", "a", 1, 2, "", "offset [count]", "checks if offset is allocated in the file", getopt=False),
    Command("map", "", 0, 0, "", "", "prints the allocated areas of a file", getopt=False),
    Command("length", "l", 0, 0, "", "", "gets the length of the current file", getopt=False),
    Command("info", "i", 0, 0, "", "", "prints information about the current file", getopt=False),
    Command("truncate", "t", 1, 3, "m:", "[-m prealloc_mode] off", "truncates the current file at the given offset"),
)}
PREALLOC_MODES = ("off", "metadata", "falloc", "full")
ALIASES = {cmd.altname: cmd for cmd in COMMANDS.values() if cmd.altname}
# qemu-io 7.2's other commands in HMP: they exist in QEMU, bitlab does not run them
OTHER_COMMANDS = {"abort", "aio_flush", "aio_read", "aio_write", "break", "help", "?", "remove_break", "reopen",
                  "resume", "sigraise", "sleep", "wait_break"}
VECTORED = ("readv", "writev")


class QemuIoError(Exception):
    """A command qemu-io refuses before any I/O: what it prints on stdout and on stderr."""

    def __init__(self, stdout: str = "", stderr: str = "", monitor: str = "") -> None:
        super().__init__((stderr + stdout + monitor).strip())
        self.stdout = stdout
        self.stderr = stderr
        self.monitor = monitor  # error_report's text: under HMP it is the monitor's reply


@dataclass(frozen=True)
class Request:
    """A parsed command: ``verb`` (read, write, discard, flush), its range and flags."""

    verb: str
    offset: int = 0
    length: int = 0
    pattern: int | None = None  # write: the byte written (0xcd if None); read: the byte verified
    pattern_offset: int = 0  # read -s
    pattern_count: int = 0  # read -l (the verified stretch)
    zero: bool = False  # write -z
    unmap: bool = False  # write -z -u
    quiet: bool = False  # -q: no report lines
    verbose: bool = False  # read -v, readv -v: the buffer dumped
    prealloc: str = "off"  # truncate -m
    fua: bool = False  # write -f, writev -f: Force Unit Access
    compress: bool = False  # write -c: BDRV_REQ_WRITE_COMPRESSED (a zero write, -z, ignores it)
    warnings: tuple[str, ...] = field(default=())  # warn_report texts (hex with a suffix)


def _cvtnum_error(text: str, too_large: bool = False) -> QemuIoError:
    if too_large:
        return QemuIoError(f"Parsing error: argument too large -- {text}\n")
    return QemuIoError(f"Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- {text}\n")


_NUMBER = re.compile(r"\+?(?:(0[xX][0-9a-fA-F]+)|(\d+)(?:\.(\d*))?)([bBkKmMgGtTpPeE]?)")


def cvtnum(text: str, warnings: list[str]) -> int:
    """qemu-io's cvtnum (qemu_strtosz, :func:`~bitlab.units.parse_size`, at most INT64_MAX): bytes by default,
    binary suffixes, a fraction only with a suffix (rounded half up), hex (with a suffix: accepted, with QEMU's
    deprecation warning)."""
    m = _NUMBER.fullmatch(text)
    if m is None:
        raise _cvtnum_error(text)
    try:
        value = parse_size(text)
    except SizeTooLarge:
        raise _cvtnum_error(text, too_large=True) from None
    except ValueError:
        raise _cvtnum_error(text) from None
    if m.group(1) is not None and m.group(4):
        warnings.append(f"Using a multiplier suffix on hex numbers is deprecated: {text}")
    if value > _I64_MAX:
        raise _cvtnum_error(text, too_large=True)
    return value


_STRTOL = re.compile(r"[+-]?(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


def _pattern(text: str) -> int:
    """parse_pattern: strtol with base 0 (hex, octal, decimal) over the whole word, one byte."""
    value = -1
    if _STRTOL.fullmatch(text):
        body = text.lstrip("+-")
        base = 16 if body[:2].lower() == "0x" else 8 if body.startswith("0") else 10
        value = int(body, base) * (-1 if text.startswith("-") else 1)
    if not 0 <= value <= 255:
        raise QemuIoError(f"{text} is not a valid pattern byte\n")
    return value


def _getopt(cmd: Command, typed: str, words: list[str], args: list[str]) -> Iterator[tuple[str, str]]:
    """GNU getopt, permuting: yields the options in order (the caller checks each as it comes) and
    collects the other words in ``args``; ``--`` ends the options; a letter followed by ``:`` takes
    the rest of its word or the next word. An unknown letter: getopt's complaint, then the usage."""
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--":
            args += words[i + 1:]
            return
        if word.startswith("-") and len(word) > 1:
            j = 1
            while j < len(word):
                letter = word[j]
                k = cmd.optstring.find(letter)
                if k < 0 or letter == ":":
                    raise QemuIoError(cmd.usage, f"{typed}: invalid option -- '{letter}'\n")
                if cmd.optstring[k + 1 : k + 2] == ":":
                    if j + 1 < len(word):
                        yield letter, word[j + 1:]
                    elif i + 1 < len(words):
                        i += 1
                        yield letter, words[i]
                    else:
                        raise QemuIoError(cmd.usage, f"{typed}: option requires an argument -- '{letter}'\n")
                    break
                yield letter, ""
                j += 1
        else:
            args.append(word)
        i += 1


def parse_qemu_io(line: str) -> Request:
    """One qemu-io command line; raises :class:`QemuIoError` with qemu-io's output where it refuses."""
    return _parse(line)


@lru_cache(maxsize=1024)
def _parse(line: str) -> Request:
    """:func:`parse_qemu_io`, remembered per line (a pure function of the text; a refusal raises anew)."""
    words = line.split()
    if not words:
        return Request("")
    typed = words[0]
    cmd = COMMANDS.get(typed) or ALIASES.get(typed)
    if cmd is None:
        if typed in OTHER_COMMANDS:
            raise QemuIoError(stderr=f"bitlab's qemu-io runs {', '.join(COMMANDS)}; "
                                     f"\"{typed}\" is not simulated\n")
        raise QemuIoError(stderr=f"command \"{typed}\" not found\n")
    count = len(words) - 1
    if count < cmd.argmin or (cmd.argmax != -1 and count > cmd.argmax):
        expected = (f"at least {cmd.argmin}" if cmd.argmax == -1 else str(cmd.argmin) if cmd.argmin == cmd.argmax
                    else f"between {cmd.argmin} and {cmd.argmax}")
        raise QemuIoError(stderr=f"bad argument count {count} to {typed}, expected {expected} arguments\n")
    if cmd.name in ("flush", "map", "length", "info"):
        return Request(cmd.name)
    warnings: list[str] = []
    if cmd.name == "alloc":  # alloc_f reads argv itself: no getopt; 512 bytes unless a count is given
        offset = cvtnum(words[1], warnings)
        return Request("alloc", offset, cvtnum(words[2], warnings) if count == 2 else 512,
                       warnings=tuple(warnings))
    args: list[str] = []
    flags: dict[str, str] = {}
    pattern = None
    pattern_offset = pattern_count = None
    for letter, value in _getopt(cmd, typed, words[1:], args):  # each option is checked as it comes
        if letter == "P":
            pattern = _pattern(value)
        elif letter == "s" and cmd.name == "read":
            pattern_offset = cvtnum(value, warnings)
        elif letter == "l":
            pattern_count = cvtnum(value, warnings)
        elif letter == "m" and value not in PREALLOC_MODES:
            raise QemuIoError(monitor=f"Invalid preallocation mode '{value}'\n")
        flags[letter] = value
    if cmd.name == "truncate":  # the first word that is not an option (a parse error names argv[1])
        try:
            offset = cvtnum(args[0], warnings)
        except QemuIoError:
            raise _cvtnum_error(words[1]) from None
        return Request("truncate", offset, prealloc=str(flags.get("m", "off")), warnings=tuple(warnings))
    if cmd.name in VECTORED:
        return _vectored(cmd, args, flags, pattern, warnings)
    if len(args) != 2:
        raise QemuIoError(cmd.usage)
    if cmd.name == "write":
        _write_checks(flags)
    offset = cvtnum(args[0], warnings)
    length = cvtnum(args[1], warnings)
    if length > BDRV_REQUEST_MAX_BYTES:
        tail = " without -n" if cmd.name == "write" else ""
        raise QemuIoError(f"length cannot exceed {BDRV_REQUEST_MAX_BYTES}{tail}, given {args[1]}\n")
    if cmd.name == "write" and ("b" in flags or "c" in flags):  # (whole sectors only)
        for value, what in ((offset, "offset"), (length, "count")):
            if value % 512:
                raise QemuIoError(f"{value} is not a sector-aligned value for '{what}'\n")
    if cmd.name == "read":
        if (pattern_count is not None or pattern_offset is not None) and pattern is None:
            raise QemuIoError(cmd.usage)
        pattern_offset = pattern_offset or 0
        if pattern_count is None:
            pattern_count = length - pattern_offset
        if pattern_count < 0 or pattern_count + pattern_offset > length:
            raise QemuIoError("pattern verification range exceeds end of read data\n")
    unsimulated = [letter for letter in flags if letter in cmd.unsimulated]
    if unsimulated:
        raise QemuIoError(stderr=f"bitlab's qemu-io does not simulate {cmd.name} -{unsimulated[0]}\n")
    return Request(cmd.name, offset, length, pattern, pattern_offset or 0,
                   length if pattern_count is None else pattern_count, zero="z" in flags,
                   unmap="u" in flags, quiet="q" in flags, verbose="v" in flags, fua="f" in flags,
                   compress="c" in flags, warnings=tuple(warnings))


def _vectored(cmd: Command, args: list[str], flags: dict[str, str], pattern: int | None,
              warnings: list[str]) -> Request:
    """readv_f / writev_f after getopt: the offset, then create_iovec's lengths, one request."""
    if len(args) < 2:
        raise QemuIoError(cmd.usage)
    offset = cvtnum(args[0], warnings)
    total = 0
    for text in args[1:]:
        length = cvtnum(text, warnings)
        if length > BDRV_REQUEST_MAX_BYTES:
            raise QemuIoError(f"Argument '{text}' exceeds maximum size {BDRV_REQUEST_MAX_BYTES}\n")
        if total > BDRV_REQUEST_MAX_BYTES - length:
            raise QemuIoError(f"The total number of bytes exceed the maximum size {BDRV_REQUEST_MAX_BYTES}\n")
        total += length
    unsimulated = [letter for letter in flags if letter in cmd.unsimulated]
    if unsimulated:
        raise QemuIoError(stderr=f"bitlab's qemu-io does not simulate {cmd.name} -{unsimulated[0]}\n")
    return Request(cmd.name, offset, total, pattern, 0, total, quiet="q" in flags, verbose="v" in flags,
                   fua="f" in flags, warnings=tuple(warnings))


_PRINTABLE = bytes(c if chr(c).isascii() and chr(c).isalnum() else ord(".") for c in range(256))


def dump_buffer(data: bytes, offset: int) -> str:
    """qemu-io's dump_buffer (read -v): 16 bytes a line, the address in hex, the bytes in hex, then
    the bytes that are letters or digits (C locale), dots for the rest."""
    lines = []
    for i in range(0, len(data), 16):  # one line of output each: bounded by what is printed
        chunk = data[i:i + 16]
        lines.append(f"{offset + i:08x}:  {chunk.hex(' ')}  {chunk.translate(_PRINTABLE).decode()}\n")
    return "".join(lines)


def cvtstr(value: float) -> str:
    """qemu-io's cvtstr: three decimals and a binary unit, a ".000" cut off."""
    suffix = "bytes"
    for shift, unit in ((60, "EiB"), (50, "PiB"), (40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if value >= 1 << shift:
            value, suffix = value / (1 << shift), unit
            break
    text = f"{value:.3f}"
    return (text[: text.index(".000")] if ".000" in text else text) + " " + suffix


def _write_checks(flags: dict[str, str]) -> None:
    """write_f's checks of its flags, in its order."""
    zero = "z" in flags
    if "b" in flags and zero:
        raise QemuIoError("-b and -z cannot be specified at the same time\n")
    if "f" in flags and ("b" in flags or "c" in flags):
        raise QemuIoError("-f and -b or -c cannot be specified at the same time\n")
    if "n" in flags and not zero:
        raise QemuIoError("-n requires -z to be specified\n")
    if "u" in flags and not zero:
        raise QemuIoError("-u requires -z to be specified\n")
    if zero + ("P" in flags) + ("s" in flags) > 1:
        raise QemuIoError("Only one of -z, -P, and -s can be specified at the same time\n")
