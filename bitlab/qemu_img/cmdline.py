"""Each qemu-img subcommand's options, read as qemu-img 7.2 reads them (glibc getopt_long with its option
string and long options: :mod:`.getopt`), with qemu-img's texts for what getopt refuses.

Every subcommand but ``measure`` starts its option string with ``:``: glibc then prints nothing, and qemu-img
says ``missing argument for option '…'`` or ``unrecognized option '…'`` (naming ``argv[optind - 1]``) and its
usage line. ``-h``/``--help`` prints qemu-img's help, which bitlab does not simulate. An option qemu-img takes
that a subcommand here does not simulate is refused as such, where QEMU would act on it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

from . import qemu_opts
from ._common import USAGE, QemuImgError
from .getopt import GetoptError, LongOpts, getopt_long

HELP = {"help": (False, "-h")}
OBJECT = {"object": True}
IMAGE_OPTS = {"image-opts": False}
FORCE_SHARE = {"force-share": (False, "-U")}
SPECS: dict[str, tuple[str, LongOpts]] = {
    "create": (":F:b:f:ho:qu", {**HELP, **OBJECT}),
    "info": (":f:hU", {**HELP, "format": (True, "-f"), "output": True, "backing-chain": False, **OBJECT,
                       **IMAGE_OPTS, **FORCE_SHARE}),
    "check": (":hf:r:T:qU", {**HELP, "format": (True, "-f"), "repair": (True, "-r"), "output": True, **OBJECT,
                             **IMAGE_OPTS, **FORCE_SHARE}),
    "compare": (":hf:F:T:pqsU", {**HELP, **OBJECT, **IMAGE_OPTS, **FORCE_SHARE}),
    "map": (":f:s:l:hU", {**HELP, "format": (True, "-f"), "output": True, **OBJECT, **IMAGE_OPTS, **FORCE_SHARE,
                          "start-offset": (True, "-s"), "max-length": (True, "-l")}),
    "rebase": (":hf:F:b:upt:T:qU", {**HELP, **OBJECT, **IMAGE_OPTS, **FORCE_SHARE}),
    "commit": (":f:ht:b:dpqr:", {**HELP, **OBJECT, **IMAGE_OPTS}),
    "convert": (":hf:O:B:Cco:l:S:pt:T:qnm:WUr:F:", {**HELP, **OBJECT, **IMAGE_OPTS, **FORCE_SHARE,
                                                    "target-image-opts": False, "salvage": False,
                                                    "target-is-zero": False, "bitmaps": False,
                                                    "skip-broken-bitmaps": False}),
    "resize": (":f:hq", {**HELP, **OBJECT, **IMAGE_OPTS, "preallocation": True, "shrink": False}),
    "amend": (":ho:f:t:pq", {**HELP, **OBJECT, **IMAGE_OPTS, "force": False}),
    "bitmap": (":b:f:F:g:h", {**HELP, "add": False, "remove": False, "clear": False, "enable": False,
                              "disable": False, "merge": True, "source-file": (True, "-b"),
                              "source-format": (True, "-F"), "granularity": (True, "-g"), **OBJECT,
                              **IMAGE_OPTS}),
}
ACCUMULATED = ("-o",)  # accumulate_options: repeated -o join with commas, each checked


def not_simulated(sub: str, option: str) -> QemuImgError:
    return QemuImgError(f"qemu-img: bitlab does not simulate 'qemu-img {sub} {option}'\n")


def help_not_simulated() -> QemuImgError:
    return QemuImgError("qemu-img: bitlab does not simulate qemu-img's help (qemu-img prints it and exits with 0)\n")


CACHE_MODES = ("none", "off", "directsync", "writeback", "unsafe", "writethrough")  # bdrv_parse_cache_mode


def check_cache(opts: dict[str, str], key: str, what: str = "cache", returncode: int = 1) -> None:
    """A cache mode given with ``key`` (-t, -T), as bdrv_parse_cache_mode takes it, or qemu-img's error."""
    if key in opts and opts[key] not in CACHE_MODES:
        raise QemuImgError(f"qemu-img: Invalid {what} option: {opts[key]}\n", returncode)


def c_long(text: str) -> int | None:
    """qemu_strtol(text, NULL, 0): a whole C long (base 0: 0x hex, a leading 0 octal), or None."""
    body = text.lstrip(" \t\n\v\f\r")
    sign = -1 if body.startswith("-") else 1
    body = body[1:] if body[:1] in "+-" and body else body
    base = 16 if body[:2].lower() == "0x" else 8 if body.startswith("0") and len(body) > 1 else 10
    digits = body[2:] if base == 16 else body
    try:
        value = sign * int(digits, base) if digits and digits.isalnum() else None
    except ValueError:
        return None
    return value if value is not None and -(1 << 63) <= value < (1 << 63) else None


def parse(sub: str, args: list[str], simulated: Collection[str],
          check: Mapping[str, Callable[[str], object]] | None = None,
          ordered: list[tuple[str, str]] | None = None) -> tuple[dict[str, str], list[str]]:
    """The options of ``qemu-img SUB ARGS`` (option -> its argument, ``""`` for a flag; the last one given
    wins, ``-o`` accumulates) and the other words, in glibc's order. ``simulated`` are the options bitlab
    takes (``-f``, ``--output``: long options that stand for a letter come as the letter); ``check`` runs on
    an option's argument as qemu-img's loop does, in turn; ``ordered`` collects every option in order."""
    shortopts, longopts = SPECS[sub]
    opts: dict[str, str] = {}
    positional: list[str] = []
    try:
        for key, value in getopt_long(args, shortopts, longopts, sub, positional):
            text = "" if value is None else value
            if key == "-h":
                raise help_not_simulated()
            if key not in simulated:
                raise not_simulated(sub, key)
            if check and key in check:
                check[key](text)
            if key in ACCUMULATED:
                if not qemu_opts.valid_option_list(text):
                    raise QemuImgError(f"qemu-img: Invalid option list: {text}\n")
                text = f"{opts[key]},{text}" if key in opts else text
            opts[key] = text
            if ordered is not None:
                ordered.append((key, text))
    except GetoptError as err:
        what = "missing argument for option" if err.code == ":" else "unrecognized option"
        raise QemuImgError(f"qemu-img: {what} '{err.word}'\n{USAGE}") from None
    return opts, positional
