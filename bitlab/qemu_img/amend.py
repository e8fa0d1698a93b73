"""qemu-img amend: a qcow2 image's options changed in place (qcow2_amend_options): its version, size and the
options it can only keep as they are."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..block import foreign
from ..block.extents import UNALLOCATED, ZERO, ZERO_ALLOC
from ..block.graph import BlockGraph
from ..block.paths import strip_file_protocol
from ..block.store import ImageFile, ImageStore
from ..errors import QMPError
from . import cmdline, qemu_opts
from ._common import KeyFn, QemuImgError, find_key, lock_hint, open_chain, open_image
from .image import RAW_PROBE_WARNING
from .qemu_opts import BOOL, NUMBER, SIZE, STRING

LUKS_AMEND = {"encrypt.state": STRING, "encrypt.keyslot": NUMBER, "encrypt.old-secret": STRING,
              "encrypt.new-secret": STRING, "encrypt.iter-time": NUMBER}
AMEND_OPTS = {**LUKS_AMEND, "size": SIZE, "compat": STRING, "backing_file": STRING, "backing_fmt": STRING,
              "data_file": STRING, "data_file_raw": BOOL, "lazy_refcounts": BOOL, "refcount_bits": NUMBER}
"""qcow2_amend_opts, in its order (the order qcow2_amend_options looks at them)."""
MUST_SPECIFY = "qemu-img: Must specify options (-o)\nTry 'qemu-img --help' for more information\n"
V3_HINT = "(use compat=1.1 or greater)"


def img_amend(store: ImageStore, args: list[str], key_fn: KeyFn) -> str:
    """qemu-img amend [-f fmt] [-q] [-t cache] [--force] -o options filename.

    As img_amend: the image opened read-write with its backing chain (its file lock), its driver's amend options
    read (an option only ``create`` takes: ``This option is only supported for image creation``), then
    qcow2_amend_options: ``compat`` upgraded first, the header written, the backing file and format left as they
    are (``Cannot amend the backing file``), ``size`` (an exact resize, shrinking too), ``compat`` downgraded
    last. A downgrade expands zero clusters (:func:`_expand_zero_clusters`), and loses the persistent bitmaps:
    stored as the image closes, in a v2 header no reader takes them from (:meth:`ImageFile.keep_v2_bitmaps`). What
    bitlab does not simulate it refuses: lazy refcounts, other refcount widths."""
    opts, positional = cmdline.parse("amend", args, {"-o", "-f", "-t", "-q", "--force"})
    if "-o" not in opts:
        raise QemuImgError(MUST_SPECIFY)
    if qemu_opts.has_help(opts["-o"]):
        raise QemuImgError("qemu-img: bitlab does not simulate 'qemu-img amend -o help'\n")
    if len(positional) != 1:
        raise QemuImgError("qemu-img: Expecting one image file name\n")
    cmdline.check_cache(opts, "-t")
    filename, fmt = positional[0], opts.get("-f")
    error = foreign.before_file(filename, fmt)
    if error is not None:
        raise QemuImgError(error)
    probed = open_image(store, key_fn, filename, None, "write", qcow2_open=False)  # (the file lock; -f raw reads bytes)
    if fmt not in foreign.SIMULATED:  # (a driver bitlab does not simulate: its open's error, or it has no amend)
        found = foreign.opened(strip_file_protocol(filename) or filename, fmt, probed, write=True, no_io=False)
        if found is not None:
            raise QemuImgError(foreign.could_not_open(filename, found))
        if fmt in foreign.OPENS:
            raise QemuImgError(f"qemu-img: Format driver '{fmt}' does not support option amendment\n")
        raise QemuImgError(foreign.not_simulated(fmt))
    if fmt == "raw" or not fmt and not probed.is_qcow2:
        warning = "" if fmt else RAW_PROBE_WARNING.format(filename)
        raise QemuImgError(f"{warning}qemu-img: Format driver 'raw' does not support option amendment\n")
    # (its errors, its backing files' locks included; the graph opens it)
    chain = open_chain(store, key_fn, filename, fmt, "write", qcow2_open=False, content=False)
    graph = BlockGraph(store, "/")  # (opened read-write: its persistent bitmaps loaded, in use; stored as it closes)
    try:
        node = graph.add({"driver": "qcow2", "node-name": "qemu-img", "discard": "unmap",
                          "file": {"driver": "file", "filename": find_key(key_fn, filename)}})
    except QMPError as err:  # (open_chain found the chain whole)
        hint = lock_hint(store, key_fn, filename, err.desc)
        raise QemuImgError(f"qemu-img: Could not open '{filename}': {err.desc}\n{hint}") from None
    try:
        _amend(node, _parse(opts["-o"]), len(chain) > 1)
    finally:
        graph.close_all()
        if node.image.compat == "0.10" and node.image.bitmaps:  # (downgraded: stored, but no v2 reader loads them)
            node.image.keep_v2_bitmaps()
    return ""


def _amend(node: Any, values: dict[str, int | bool | str], backing: bool) -> None:
    """qcow2_amend_options on the open image's node, the options given in the driver's order."""
    image = node.image
    given = set(values)
    version = 3 if image.compat == "1.1" else 2
    new_version = version
    for name in AMEND_OPTS:  # (each option given, in the driver's order)
        if name not in given:
            continue
        value = values[name]
        if name == "compat":
            if value in ("0.10", "v2"):
                new_version = 2
            elif value in ("1.1", "v3"):
                new_version = 3
            else:
                raise QemuImgError(f"qemu-img: Unknown compatibility level {value}\n")
        elif name.startswith("encrypt."):
            raise QemuImgError("qemu-img: Can't amend encryption options - encryption not present\n")
        elif name == "refcount_bits":
            bits = int(value)
            if bits <= 0 or bits > 64 or bits & (bits - 1):
                raise QemuImgError("qemu-img: Refcount width must be a power of two and may not exceed 64 bits\n")
        elif name == "data_file":
            raise QemuImgError("qemu-img: data-file can only be set for images that use an external data file\n")
        elif name == "data_file_raw" and value:
            raise QemuImgError("qemu-img: data-file-raw cannot be set on existing images\n")
    bits = int(values.get("refcount_bits", 16))
    if bits != 16 and new_version == 3:
        raise QemuImgError("qemu-img: bitlab does not simulate changing the refcount width ('refcount_bits')\n")
    if values.get("lazy_refcounts") and new_version == 3:
        raise QemuImgError("qemu-img: bitlab does not simulate lazy refcounts ('lazy_refcounts')\n")
    if new_version > version:  # qcow2_upgrade: the header written as v3
        image.compat = "1.1"
    if bits != 16:
        raise QemuImgError("qemu-img: Refcount widths other than 16 bits require compatibility level 1.1 or above "
                           f"{V3_HINT}\n")
    if ("backing_file" in given or "backing_fmt" in given) and (
            values.get("backing_file") != image.backing_file or values.get("backing_fmt") != image.backing_fmt):
        raise QemuImgError("qemu-img: Cannot amend the backing file\nYou can use 'qemu-img rebase' instead.\n")
    if values.get("lazy_refcounts"):
        raise QemuImgError("qemu-img: Lazy refcounts only supported with compatibility level 1.1 and above "
                           f"{V3_HINT}\n")
    size = int(values.get("size", 0))
    if size:  # (an exact truncate)
        try:
            node.resize(size)
        except QMPError as err:
            raise QemuImgError(f"qemu-img: {err.desc}\n") from None
    if new_version < version:
        _expand_zero_clusters(image, backing)
        image.compat = "0.10"


def _expand_zero_clusters(image: ImageFile, backing: bool) -> None:
    """qcow2_expand_zero_clusters, in guest order: a zero cluster that keeps its host cluster becomes a data
    cluster there, zeroes written into it; without a backing file a plain zero cluster is unallocated (it reads
    zeroes either way), over one it gets a host cluster of its own, zeroes written into it (bdrv_pwrite_zeroes:
    the file's blocks allocated)."""
    s, e, v = image.data.extents()
    zero = (v == ZERO_ALLOC) | (v == ZERO) & backing
    if zero.any():
        image.data.write_batch(s[zero], e[zero] - s[zero], np.zeros(int(zero.sum()), dtype=np.int64))
    plain = v == ZERO
    if plain.any() and not backing:
        image.data.write_batch(s[plain], e[plain] - s[plain], UNALLOCATED)


def _parse(text: str) -> dict[str, int | bool | str]:
    """The -o values against the amend options; an option only creation takes gets qemu-img's hint."""
    try:
        return qemu_opts.parse(text, AMEND_OPTS)
    except QemuImgError as err:
        try:
            qemu_opts.parse(text, {**AMEND_OPTS, **qemu_opts.CREATE_OPTS["qcow2"]})
        except QemuImgError:
            raise err from None
        raise QemuImgError(err.stderr + "This option is only supported for image creation\n") from None

