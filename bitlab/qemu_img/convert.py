"""qemu-img convert: a chain's content copied into a new, flat raw or qcow2 image."""

from __future__ import annotations

import numpy as np

from ..block.store import QCOW2_DEFAULT_CLUSTER, ImageStore
from ..units import parse_size
from ._common import KeyFn, QemuImgError, new_key, open_chain, options, split_args
from .layers import content

MAX_SPARSE = 16 << 20  # MAX_BUF_SECTORS sectors
SPARSE_SIZE_ERROR = ("qemu-img: Invalid buffer size for sparse output specified. You may use k, M, G, T, P or E "
                     "suffixes for\nqemu-img: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.\n")
SPARSE_RANGE_ERROR = ("qemu-img: Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 "
                      "up to 16777216. Select 0 to disable sparse detection (fully allocates output).\n")


def img_convert(store: ImageStore, args: list[str], key_fn: KeyFn) -> str:
    """qemu-img convert [-f fmt] [-O raw|qcow2] [-o options] [-q] [-p] [-U] filename output_filename.

    Zero stretches are not written (the new image reads zeroes there): a qcow2 target allocates
    only the clusters holding non-zero bytes; with ``-S 0`` every byte is written (fully allocated).
    """
    opts, positional = split_args(args, {"-f", "-O", "-o", "-S", "-m", "-t", "-T"},
                                  {"-q", "-p", "-U", "--force-share", "-W", "-n"})
    if len(positional) < 2:
        raise QemuImgError("qemu-img: Must specify image file name\n")
    if len(positional) > 2:
        raise QemuImgError("qemu-img: bitlab does not simulate converting several images into one\n")
    sparse = 4096  # -S: zero stretches at least this long are not written (0: everything is)
    if "-S" in opts:
        try:
            sparse = parse_size(opts["-S"])
        except ValueError:
            raise QemuImgError(SPARSE_SIZE_ERROR) from None
        if sparse % 512 or sparse > MAX_SPARSE:
            raise QemuImgError(SPARSE_RANGE_ERROR)
    fmt = opts.get("-O", "raw")
    if fmt not in ("raw", "qcow2"):
        raise QemuImgError(f"qemu-img: bitlab does not simulate the image format '{fmt}'\n")
    if fmt == "raw" and not sparse:  # (a raw file's holes are its zero blocks here: written zeroes would be too)
        raise QemuImgError("qemu-img: bitlab does not simulate a fully allocated raw output (-S 0)\n")
    lock = None if "-U" in opts or "--force-share" in opts else "shared"
    chain = open_chain(store, key_fn, positional[0], opts.get("-f"), lock)
    size = chain[0].size
    s, e, v = content(chain, 0, size)
    key = new_key(key_fn, positional[1], f"error while converting {fmt}: ")
    if fmt == "raw":
        target = store.create(key, "raw", size)
    else:
        cluster = parse_size(options(opts.get("-o", "")).get("cluster_size", QCOW2_DEFAULT_CLUSTER))
        target = store.create(key, "qcow2", size, cluster_size=cluster)
    data = v != 0 if sparse else np.ones(v.size, dtype=bool)  # -S 0: zeroes written too (fully allocated)
    target.data.write_batch(s[data], (e - s)[data], v[data])
    return ""

