"""qemu-img compare: the first sector at which two images (read through their chains) differ."""

from __future__ import annotations

import numpy as np

from ..block.store import ImageStore
from . import cmdline, nbd
from ._common import USAGE, KeyFn, Layer, QemuImgError, open_chain
from .layers import DATA, UNALLOC, chain_status, content, file_status, first_difference, split_runs

SECTOR = 512


def status_answers(chain: list[Layer], size: int) -> tuple[np.ndarray, np.ndarray]:
    """bdrv_block_status_above's answers from offset 0 on, one per call: ``(starts, flags)`` with the
    flags allocated, data, zero, offset valid and EOF. A qcow2 layer answers for one L2 table at a
    time, so a run ends at the L2 table boundaries of every layer it was looked up in."""
    s, e, c, d, h, z = file_status(chain, *chain_status(chain))
    for level, layer in enumerate(chain):
        if layer.image.is_qcow2:
            cs = layer.image.cluster_size
            s, e, idx = split_runs(s, e, d >= level, cs * (cs // 8))
            c, d, h, z = c[idx], d[idx], h[idx], z[idx]
    keep = s < size
    s, e, c, d, h, z = s[keep], np.minimum(e[keep], size), c[keep], d[keep], h[keep], z[keep]
    bottom = len(chain) - 1  # unallocated above the bottom: past a shorter backing file, zeroes "allocated" there
    present = (c != UNALLOC) | (d < bottom)
    # EOF: the answer reaches the top image's end, or, unallocated all the way down, the bottom image's
    # (bdrv_co_common_block_status_above keeps the last layer's flags)
    eof = (e >= size) | (~present & (e == chain[bottom].size))
    flags = (present.astype(np.int64) | (c == DATA) << 1 | ((c != DATA) | z) << 2 | (h >= 0) << 3 | eof << 4)
    return s, flags


def _first_status_difference(chain1: list[Layer], chain2: list[Layer], size: int) -> int | None:
    s1, f1 = status_answers(chain1, size)
    s2, f2 = status_answers(chain2, size)
    bounds = np.union1d(s1, s2)
    if not bounds.size:
        return None
    a = f1[np.searchsorted(s1, bounds, "right") - 1]
    b = f2[np.searchsorted(s2, bounds, "right") - 1]
    diff = np.flatnonzero(a != b)
    return int(bounds[diff[0]]) if diff.size else None


def _nonzero(chain: list[Layer], lo: int, hi: int) -> int | None:
    s, e, v = content(chain, lo, hi)
    hit = np.flatnonzero(v != 0)
    return int(s[hit[0]]) if hit.size else None


def img_compare(store: ImageStore, args: list[str], key_fn: KeyFn) -> str:
    """qemu-img compare [-f fmt] [-F fmt] [-q] [-s] [-U] filename1 filename2 (exit 0 equal, 1 different,
    2 error)."""
    opts, positional = cmdline.parse("compare", args, {"-f", "-F", "-T", "-q", "-s", "-U"})
    if len(positional) != 2:
        raise QemuImgError(f"qemu-img: Expecting two image file names\n{USAGE}")
    cmdline.check_cache(opts, "-T", "source cache", 2)
    quiet, strict = "-q" in opts, "-s" in opts
    lock = "force-share" if "-U" in opts else "shared"
    try:  # -F does not default to -f: the second image's format is probed
        chain1 = nbd.open_chain(store, positional[0], opts.get("-f")) or \
            open_chain(store, key_fn, positional[0], opts.get("-f"), lock, on_disk=True)
        chain2 = nbd.open_chain(store, positional[1], opts.get("-F")) or \
            open_chain(store, key_fn, positional[1], opts.get("-F"), lock, on_disk=True)
    except QemuImgError as err:
        err.returncode = 2  # compare's exit status for an error
        raise
    if strict and any(nbd.is_nbd(name) for name in positional):
        raise QemuImgError("qemu-img: bitlab does not simulate 'qemu-img compare -s' of an NBD export\n", 2)
    size1, size2 = chain1[0].size, chain2[0].size

    def differ(text: str) -> QemuImgError:
        return QemuImgError("", 1, "" if quiet else text)

    if strict and size1 != size2:
        raise differ("Strict mode: Image size mismatch!\n")
    common = min(size1, size2)
    at = first_difference(content(chain1, 0, common), content(chain2, 0, common))
    if at is not None:
        at = at // SECTOR * SECTOR
    if strict:
        status_at = _first_status_difference(chain1, chain2, common)
        if status_at is not None and (at is None or status_at <= at):
            raise differ(f"Strict mode: Offset {status_at} block status mismatch!\n")
    if at is not None:
        raise differ(f"Content mismatch at offset {at}!\n")
    out = ""
    if size1 != size2:
        out = "Warning: Image size mismatch!\n"
        longer = chain1 if size1 > size2 else chain2
        at = _nonzero(longer, common, max(size1, size2))
        if at is not None:
            raise differ(out + f"Content mismatch at offset {at // SECTOR * SECTOR}!\n")
    return "" if quiet else out + "Images are identical.\n"
