"""qemu-img convert: a chain's content copied into a new, flat raw or qcow2 image."""

from __future__ import annotations

from ..block.store import QCOW2_DEFAULT_CLUSTER, ImageStore
from ..units import parse_size
from ._common import KeyFn, QemuImgError, new_key, open_chain, options, split_args
from .layers import content


def img_convert(store: ImageStore, args: list[str], key_fn: KeyFn) -> str:
    """qemu-img convert [-f fmt] [-O raw|qcow2] [-o options] [-q] [-p] [-U] filename output_filename.

    Zero stretches are not written (the new image reads zeroes there): a qcow2 target allocates
    only the clusters holding non-zero bytes.
    """
    opts, positional = split_args(args, {"-f", "-O", "-o", "-S", "-m", "-t", "-T"},
                                  {"-q", "-p", "-U", "--force-share", "-W", "-n"})
    if len(positional) < 2:
        raise QemuImgError("qemu-img: Must specify image file name\n")
    if len(positional) > 2:
        raise QemuImgError("qemu-img: bitlab does not simulate converting several images into one\n")
    fmt = opts.get("-O", "raw")
    if fmt not in ("raw", "qcow2"):
        raise QemuImgError(f"qemu-img: bitlab does not simulate the image format '{fmt}'\n")
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
    data = v != 0
    target.data.write_batch(s[data], (e - s)[data], v[data])
    return ""

