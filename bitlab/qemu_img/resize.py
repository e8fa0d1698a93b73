"""qemu-img resize: the image opened as a node and truncated the way block_resize does it."""

from __future__ import annotations

from ..block.graph import BlockGraph
from ..block.store import ImageStore
from ..errors import QMPError
from ..units import SizeTooLarge, parse_size
from . import cmdline
from ._common import INT64_MAX, USAGE, KeyFn, QemuImgError, QemuImgOutput, find_key, lock_hint, open_chain
from .image import RAW_PROBE_WARNING
from .qemu_opts import PREALLOC_MODES

SIZE_ERROR = ("qemu-img: Parameter 'size' expects a non-negative number below 2^64\n"
              "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
              "and exabytes, respectively.\n")
SHRINK_ERROR = ("qemu-img: Use the --shrink option to perform a shrink operation.\n"
                "qemu-img: warning: Shrinking an image will delete all data beyond the shrunken image's end. "
                "Before performing such an operation, make sure there is no important data there.\n")


def _prealloc_mode(text: str) -> None:
    """--preallocation, as img_resize's loop reads it."""
    if text not in PREALLOC_MODES:
        raise QemuImgError(f"qemu-img: Invalid preallocation mode '{text}'\n")


def img_resize(store: ImageStore, args: list[str], key_fn: KeyFn) -> str:
    """qemu-img resize [-f fmt] [-q] [--shrink] [--preallocation=off] filename [+ | -]size.

    As img_resize: the size is the last word (so ``-1M`` is not an option), a leading ``+``/``-``
    makes it relative; the image is opened read-write (the file lock), the new size must be
    positive, a smaller one needs ``--shrink``; then blk_truncate, whose errors are the driver's
    (:meth:`bitlab.block.node.BlockNode.resize`), and the image is closed (caches written back,
    persistent bitmaps stored)."""
    if len(args) < 2:
        raise QemuImgError(f"qemu-img: Not enough arguments\n{USAGE}")
    size_text = args[-1]
    opts, positional = cmdline.parse("resize", args[:-1], {"-f", "--preallocation", "-q", "--shrink"},
                                     {"--preallocation": _prealloc_mode})
    if len(positional) != 1:
        raise QemuImgError(f"qemu-img: Expecting image file name and size\n{USAGE}")
    prealloc = opts.get("--preallocation", "off")
    filename, fmt = positional[0], opts.get("-f")
    relative = {"+": 1, "-": -1}.get(size_text[:1], 0)
    number = size_text[1:] if relative else size_text
    try:
        n = parse_size(number)
    except SizeTooLarge:  # (qemu_strtosz: -ERANGE at 2^64 and past it)
        raise QemuImgError(f"qemu-img: Value '{number}' is out of range for parameter 'size'\n") from None
    except ValueError:
        raise QemuImgError(SIZE_ERROR) from None
    # (the chain's errors, its backing files' locks included; the graph below opens it)
    image = open_chain(store, key_fn, filename, fmt, "write", qcow2_open=False, content=False)[0].image
    warning = "" if fmt or image.is_qcow2 else RAW_PROBE_WARNING.format(filename)
    graph = BlockGraph(store, "/")  # the image alone, its backing chain opened below it
    driver = "qcow2" if image.is_qcow2 else "raw"
    try:
        node = graph.add({"driver": driver, "node-name": "qemu-img",
                          "file": {"driver": "file", "filename": find_key(key_fn, filename)}})
    except QMPError as err:
        hint = lock_hint(store, key_fn, filename, err.desc)
        raise QemuImgError(f"{warning}qemu-img: Could not open '{filename}': {err.desc}\n{hint}") from None
    try:
        current = node.size
        total = current + relative * n if relative else n
        if total > INT64_MAX:  # (an int64_t in QEMU: past it, negative)
            total -= 1 << 64
        if total <= 0:
            raise QemuImgError(f"{warning}qemu-img: New image size must be positive\n")
        if total <= current and prealloc != "off":
            raise QemuImgError(f"{warning}qemu-img: Preallocation can only be used for growing images\n")
        if total < current and "--shrink" not in opts:
            raise QemuImgError(warning + SHRINK_ERROR)
        try:
            node.resize(total, prealloc)
        except QMPError as err:
            raise QemuImgError(f"{warning}qemu-img: {err.desc}\n") from None
    finally:
        graph.close_all()
    return QemuImgOutput("" if "-q" in opts else "Image resized.\n", warning)
