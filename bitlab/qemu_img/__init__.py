"""``qemu-img`` on the machine's image store, with qemu-img 7.2's texts and exit codes.

One module per concern: :mod:`.image` (create, info, check), :mod:`.compare`, :mod:`.mapping`
(map), :mod:`.rebase`, :mod:`.commit`, :mod:`.convert`, :mod:`.measure`, :mod:`.amend`; :mod:`.layers` reads chains
(allocation, block status, content) for them, vectorised.
"""

from __future__ import annotations

from ..block.store import ImageStore
from ._common import INT64_MAX, KeyFn, Layer, QemuImgError, QemuImgOutput, open_chain
from .amend import img_amend
from .bitmap import img_bitmap
from .commit import img_commit
from .compare import img_compare
from .convert import img_convert
from .image import QCOW2_MAX_L1_ENTRIES, SIZE_HELP, check, create, info
from .layers import content as read_chain
from .mapping import img_map
from .measure import img_measure
from .rebase import img_rebase
from .resize import img_resize

COMMANDS = {"create": create, "info": info, "check": check, "compare": img_compare, "map": img_map,
            "rebase": img_rebase, "commit": img_commit, "convert": img_convert, "resize": img_resize,
            "bitmap": img_bitmap, "measure": img_measure, "amend": img_amend}

QEMU_IMG_COMMANDS = ("amend", "bench", "bitmap", "check", "commit", "compare", "convert", "create", "dd", "info", "map",
                     "measure", "snapshot", "rebase", "resize")  # qemu-img 7.2's (qemu-img-cmds.h)

IMAGE_OPTS_NOT_SIMULATED = ("compare", "convert", "commit", "rebase", "resize", "amend")
"""Subcommands whose --image-opts bitlab refuses (info, check, map and bitmap take it: :mod:`.image_opts`;
measure refuses it itself)."""


def run(store: ImageStore, args: list[str], key_fn: KeyFn = lambda name: name) -> QemuImgOutput:
    """Run a qemu-img subcommand; returns its stdout (with ``.stderr``: its warnings) or raises QemuImgError."""
    if not args:
        raise QemuImgError("qemu-img: Not enough arguments\nTry 'qemu-img --help' for more information\n")
    sub, rest = args[0], list(args[1:])
    if sub not in COMMANDS:
        if sub not in QEMU_IMG_COMMANDS and not sub.startswith("-"):  # (img_cmds: the name given in full)
            raise QemuImgError(f"qemu-img: Command not found: {sub}\nTry 'qemu-img --help' for more information\n")
        raise QemuImgError(f"qemu-img: bitlab does not simulate 'qemu-img {sub}' yet\n")
    if sub in IMAGE_OPTS_NOT_SIMULATED and "--image-opts" in rest[:rest.index("--") if "--" in rest else None]:
        raise QemuImgError(f"qemu-img: bitlab does not simulate 'qemu-img {sub} --image-opts'\n")
    said: list[str] = []  # (a warning each time qcow2 opens an image that has one)
    store.warn = lambda name, text: said.append(f"qemu-img: {text}")
    try:
        out = COMMANDS[sub](store, rest, key_fn)
    except QemuImgError as err:
        err.stderr = "".join(said) + err.stderr
        raise
    finally:
        store.warn = None
    return QemuImgOutput(out, "".join(said) + getattr(out, "stderr", ""))


__all__ = ["QemuImgError", "QemuImgOutput", "KeyFn", "Layer", "open_chain", "read_chain",
           "run", "create", "info", "check", "img_compare", "img_map", "img_rebase",
           "img_commit", "img_convert", "img_resize", "img_bitmap", "img_measure", "img_amend",
           "COMMANDS", "INT64_MAX", "QCOW2_MAX_L1_ENTRIES", "SIZE_HELP"]
