"""qemu-img rebase: give an image a new backing file, copying what differs (safe) or not (-u)."""

from __future__ import annotations

import numpy as np

from ..block import foreign
from ..block.extents import UNALLOCATED, ZERO, clip_runs
from ..block.store import ImageStore, header_backing_fmt
from . import cmdline
from ._common import (
    USAGE,
    KeyFn,
    Layer,
    QemuImgError,
    backing_name,
    find_key,
    inner_reason,
    open_chain,
    open_image,
    opened_name,
    printed_before,
)
from .image import RAW_PROBE_WARNING
from .layers import UNALLOC, allocation, content, cow_fill, differing


def _copy_differences(chain: list[Layer], new_chain: list[Layer] | None) -> None:
    """Safe mode: where the image allocates nothing and the old backing content differs from the
    new one, write the old content (qcow2 allocates whole clusters, copying the rest from the old
    backing file). Past the end of the old backing file that content is zeroes, written as zeroes:
    whole clusters there become zero clusters."""
    top = chain[0]
    size = top.size
    old_size = chain[1].size if len(chain) > 1 else 0
    old = _view(chain[1:], size) if len(chain) > 1 else _zeroes(size)  # the old backing chain's content
    new = _zeroes(size) if new_chain is None else _view(new_chain, size)
    ds, de = differing(old, new)
    if not ds.size:
        return
    image = top.image
    unit = image.cluster_size if image.is_qcow2 else 512
    s, e, c = allocation(image)
    free_s, free_e = s[c == UNALLOC], e[c == UNALLOC]
    zero_from = -(-old_size // unit) * unit  # clusters wholly past the old backing file's end
    lo, hi = ds // unit * unit, np.minimum(-(-de // unit) * unit, size)
    for zeroes in (False, True):
        q_s, q_e = (np.maximum(lo, zero_from), hi) if zeroes else (lo, np.minimum(hi, zero_from))
        keep = q_e > q_s
        ws, we, _, _ = clip_runs(free_s, free_e, np.zeros(free_s.size, dtype=np.int64), q_s[keep], q_e[keep])
        if not ws.size:
            continue
        if zeroes:
            image.data.write_batch(ws, we - ws, _zero_value(chain))
        else:
            ps, pe, pv, _ = clip_runs(*old, ws, we)
            image.data.write_batch(ps, pe - ps, pv)


def _zero_value(chain: list[Layer]) -> int:
    """What writing zeroes leaves in the image: zero clusters; a qcow2 v2 image has none, so zero
    bytes with a backing file and, without one, unallocated clusters (which then show the new
    backing file: QEMU 7.2 does that)."""
    image = chain[0].image
    if not image.is_qcow2:
        return 0
    if image.compat != "0.10":
        return ZERO
    return 0 if len(chain) > 1 else UNALLOCATED


def _zeroes(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.array([0], dtype=np.int64), np.array([size], dtype=np.int64), np.array([0], dtype=np.int64))


def _view(chain: list[Layer], size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A chain's content over ``[0, size)``: zeroes past its end."""
    end = min(size, chain[0].size)
    s, e, v = content(chain, 0, end)
    if end < size:
        s, e, v = np.append(s, end), np.append(e, size), np.append(v, 0)
    return s, e, v


def _in_chain(key_fn: KeyFn, name: str, chain: list[Layer]) -> bool:
    """The new backing file is one of the old chain's files (bdrv_find_backing_image: qemu-img reuses it, no
    second open)."""
    try:
        key = find_key(key_fn, opened_name(name))
    except QemuImgError:  # (open_chain says why)
        return False
    return key is not None and any(find_key(key_fn, layer.name) == key for layer in chain[1:])


def img_rebase(store: ImageStore, args: list[str], key_fn: KeyFn) -> str:
    """qemu-img rebase [-f fmt] [-u] [-q] [-p] -b backing_file [-F backing_fmt] filename."""
    opts, positional = cmdline.parse("rebase", args, {"-f", "-F", "-b", "-t", "-T", "-u", "-q", "-U"})
    if len(positional) != 1:
        raise QemuImgError(f"qemu-img: Expecting one image file name\n{USAGE}")
    unsafe, backing, backing_fmt = "-u" in opts, opts.get("-b"), opts.get("-F")
    if not unsafe and backing is None:
        raise QemuImgError(f"qemu-img: Must specify backing file (-b) or use unsafe mode (-u)\n{USAGE}")
    cmdline.check_cache(opts, "-t")
    cmdline.check_cache(opts, "-T", "source cache")
    filename = positional[0]
    if unsafe:  # the old backing file need not exist
        top = Layer(filename, open_image(store, key_fn, filename, opts.get("-f"), "write"))
        try:  # (what the top's clusters hold: QEMU opens it without its backing file)
            chain = open_chain(store, key_fn, filename, opts.get("-f"), qcow2_open=False)
        except QemuImgError:
            chain = [top]
    else:
        chain = open_chain(store, key_fn, filename, opts.get("-f"), "write")
    image = chain[0].image
    warning = "" if "-f" in opts or image.is_qcow2 else RAW_PROBE_WARNING.format(filename)
    if backing_fmt is not None and foreign.unknown(backing_fmt):  # (bdrv_find_format, before the new file opens)
        raise QemuImgError(f"{warning}{foreign.module_lines(backing_fmt)}qemu-img: Invalid format name: "
                           f"'{backing_fmt}'\n")
    new_chain = None
    if not unsafe and backing:
        below = backing_name(filename, backing)
        try:
            new_chain = open_chain(store, key_fn, below, backing_fmt, qcow2_open=not _in_chain(key_fn, below, chain))
        except QemuImgError as err:
            reason = inner_reason(err, below)
            raise QemuImgError(f"{warning}{printed_before(err)}qemu-img: Could not open new backing file "
                               f"'{backing}': {reason}\n") from None
    if not image.is_qcow2:  # (nothing to copy: a raw image is all allocated) bdrv_change_backing_file
        reason = "backing format must be specified" if backing and not backing_fmt else "Operation not supported"
        name = "(null)" if backing is None else backing  # (printf's text for a NULL string)
        raise QemuImgError(f"{warning}qemu-img: Could not change the backing file to '{name}': {reason}\n")
    cow_fill(chain)
    if not unsafe:
        _copy_differences(chain, new_chain)
    if backing and not backing_fmt:
        raise QemuImgError(f"qemu-img: Could not change the backing file to '{backing}': "
                           "backing format must be specified\n")
    if backing:
        image.backing_file, image.backing_fmt = backing, header_backing_fmt(backing_fmt)
    else:
        image.backing_file, image.backing_fmt = None, None
    return ""
