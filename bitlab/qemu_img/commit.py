"""qemu-img commit: write an image's data into a file of its backing chain (an active commit)."""

from __future__ import annotations

import numpy as np

from ..block.extents import UNALLOCATED, ZERO, ZERO_ALLOC, clip_runs
from ..block.paths import path_combine, path_has_protocol
from ..block.store import ImageFile, ImageStore
from . import cmdline
from ._common import USAGE, KeyFn, Layer, QemuImgError, cvtnum, find_key, open_chain
from .image import RAW_PROBE_WARNING
from .layers import DATA, UNALLOC, chain_status, content, cow_fill


def _granularity(base: Layer) -> int:
    """The mirror job's default granularity: the target's cluster size (at least 4 KiB), else 64 KiB."""
    return max(4096, base.image.cluster_size) if base.image.is_qcow2 else 65536


def commit_into(chain: list[Layer], base_index: int) -> None:
    """Copy what ``chain[:base_index]`` allocates into ``chain[base_index]``, as the mirror job does:
    each dirty chunk (granularity-aligned) is copied where the chain reads data, and written as
    zeroes (unmapped) where it reads zeroes."""
    base = chain[base_index]
    grows_over_backing = (base.size < chain[0].size and base_index + 1 < len(chain)
                          and chain[base_index + 1].size > base.size)
    if grows_over_backing and base.image.compat == "0.10":  # no zero clusters to cover the backing file
        raise QemuImgError("qemu-img: Block job failed: Operation not supported\n")
    for level in range(base_index):  # what the images above read from the base is about to change
        cow_fill(chain[level:])
    _grow(chain, base_index)
    above_s, above_e, above_c, above_d, _ = chain_status(chain[:base_index])
    grain = _granularity(base)
    size = min(chain[0].size, base.size)
    # past the end of a shorter backing file the zeroes count as allocated there (is_allocated_above)
    dirty = (above_c != UNALLOC) | (above_d < base_index - 1)
    ds, de = above_s[dirty] // grain * grain, np.minimum(-(-above_e[dirty] // grain) * grain, size)
    if not ds.size:
        return
    head = np.ones(ds.size, dtype=bool)  # rounded chunks of sorted runs: merge those that touch
    head[1:] = ds[1:] > de[:-1]
    firsts = np.flatnonzero(head)
    ds, de = ds[firsts], de[np.append(firsts[1:] - 1, ds.size - 1)]
    s, e, c, _, _ = chain_status(chain)
    ps, pe, run, _ = clip_runs(s, e, np.arange(s.size, dtype=np.int64), ds, de)
    ps, pe, is_data = _mirror_methods(ps, pe, c[run] == DATA, grain)
    base.image.reopened()  # qemu-img commit opens the base read-write
    data = base.image.data
    # in guest order, as the job copies: write zeroes with unmap (zero clusters; v2 has none: unallocated,
    # or data with a backing file) and data
    zs, ze = ps[~is_data], pe[~is_data]
    zv = np.full(zs.size, _zero_value(chain, base_index), dtype=np.int64)
    cs_ = ce_ = cv = np.zeros(0, dtype=np.int64)
    if is_data.any():
        cs_, ce_, cv, _ = clip_runs(*content(chain, 0, size), ps[is_data], pe[is_data])
        if not base.image.is_qcow2:  # (a raw file keeps the zeroes a data request writes)
            cv = np.where(cv == 0, ZERO_ALLOC, cv)
    offs = np.concatenate((zs, cs_))
    if offs.size:
        order = np.argsort(offs, kind="stable")
        data.write_batch(offs[order], np.concatenate((ze - zs, ce_ - cs_))[order], np.concatenate((zv, cv))[order])
    _dirty_bitmaps(base, ps, pe)


def _mirror_methods(ps: np.ndarray, pe: np.ndarray, is_data: np.ndarray, grain: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mirror_iteration's choice per block-status run: zeroes are written as zeroes only for whole
    granules of a run that reads zeroes; a shorter stretch is copied, a granule at a time, as data.
    Returns the pieces again with ``copy`` marking those copied."""
    zero = ~is_data
    if not ((ps[zero] % grain != 0) | (pe[zero] % grain != 0)).any():
        return ps, pe, is_data
    out_s, out_e, out_copy = [], [], []
    k, n = 0, ps.size
    o = int(ps[0])
    while k < n:  # one step per decision (per run, not per cluster)
        if o >= pe[k]:
            k += 1
            if k < n:
                o = max(o, int(ps[k]))
            continue
        left = int(pe[k]) - o
        if zero[k] and left >= grain:
            step, copy = left // grain * grain, False
        else:
            step, copy = (grain if left < grain else left // grain * grain), True
        end = o + step
        j = k
        while j + 1 < n and pe[j] < end and ps[j + 1] == pe[j]:
            j += 1  # a copied granule reaches into the next runs
        end = min(end, int(pe[j]))
        out_s.append(o), out_e.append(end), out_copy.append(copy)
        o = end
        k = j
    return np.array(out_s, dtype=np.int64), np.array(out_e, dtype=np.int64), np.array(out_copy, dtype=bool)


def _zero_value(chain: list[Layer], base_index: int) -> int:
    """What writing zeroes (with unmap) leaves in the base: a zero cluster, or in a qcow2 v2 image
    unallocated clusters without a backing file and zero bytes with one."""
    image = chain[base_index].image
    if not image.is_qcow2:
        return 0
    if image.compat != "0.10":
        return ZERO
    return 0 if base_index + 1 < len(chain) else UNALLOCATED


def _grow(chain: list[Layer], base_index: int) -> None:
    """A base shorter than the top grows to its length (bdrv_co_truncate, as block_resize grows it): the rest
    of its old last cluster reads as that cluster does (:meth:`ImageFile.expose_tail`); where the base's own
    backing file is longer, the new clusters become zero clusters and the rest of the old last cluster is
    written as zero bytes, so that it all keeps reading zeroes."""
    base, length = chain[base_index], chain[0].size
    image, old = base.image, base.size
    if old >= length or not image.is_qcow2:
        return
    image.size = length
    image.data.resize(length)
    image.expose_tail(old)
    if base_index + 1 < len(chain) and chain[base_index + 1].size > old:
        start = min(-(-old // image.cluster_size) * image.cluster_size, length)
        if length > start:
            image.data.write(start, length - start, ZERO)
        if start > old:
            image.data.write(old, start - old, 0)


def _dirty_bitmaps(base: Layer, starts: np.ndarray, ends: np.ndarray) -> None:
    """Enabled persistent bitmaps of the base record the commit's writes (one step per range)."""
    for stored in base.image.bitmaps:
        if stored.enabled and not stored.in_use:
            g = stored.granularity
            for lo, hi in zip((starts // g).tolist(), (-(-ends // g)).tolist()):
                stored.bits[lo:hi] = 1


def find_backing_image(chain: list[Layer], name: str, key_fn: KeyFn) -> int:
    """bdrv_find_backing_image: the index of the image ``name`` designates in ``chain`` (0 if none).
    A relative name is relative to the directory of each overlay in turn (not to the working
    directory); with a protocol prefix on either side the names are compared as text."""
    for level in range(len(chain) - 1):
        overlay, below = chain[level], chain[level + 1]
        named = overlay.image.backing_file or ""
        if path_has_protocol(name) or path_has_protocol(named):
            if name in (named, below.name):
                return level + 1
            continue
        wanted = find_key(key_fn, path_combine(overlay.name, name))
        if wanted is not None and wanted == find_key(key_fn, below.name):
            return level + 1
    return 0


def img_commit(store: ImageStore, args: list[str], key_fn: KeyFn) -> str:
    """qemu-img commit [-q] [-f fmt] [-b base] [-d] [-p] [-r rate] filename."""
    opts, positional = cmdline.parse("commit", args, {"-f", "-b", "-t", "-r", "-q", "-d"},
                                     {"-r": lambda v: cvtnum("rate limit", v)})
    if len(positional) != 1:
        raise QemuImgError(f"qemu-img: Expecting one image file name\n{USAGE}")
    cmdline.check_cache(opts, "-t")
    filename = positional[0]
    chain = open_chain(store, key_fn, filename, opts.get("-f"), "write")
    if len(chain) == 1:  # (a raw image probed and opened read-write: the block layer's warning first)
        warning = "" if "-f" in opts or chain[0].image.is_qcow2 else RAW_PROBE_WARNING.format(filename)
        raise QemuImgError(f"{warning}qemu-img: Image does not have a backing file\n")
    base_name = opts.get("-b")
    if base_name is None:
        base_index = 1
    else:
        base_index = find_backing_image(chain, base_name, key_fn)
        if not base_index:
            raise QemuImgError(f"qemu-img: Did not find '{base_name}' in the backing chain of '{filename}'\n")
    commit_into(chain, base_index)
    restore_bitmaps(chain[base_index].image)  # the job done, the base goes back to read-only
    if base_name is None and "-d" not in opts:
        chain[0].image.make_empty()
    restore_bitmaps(chain[0].image)  # closed: it was opened read-write
    return "" if "-q" in opts else "Image committed.\n"


def restore_bitmaps(image: ImageFile) -> None:
    """An image opened read-write stores its consistent persistent bitmaps anew when it closes or goes back
    to read-only (see BlockGraph._store_bitmaps); with none to write it is left alone."""
    if not image.is_qcow2 or all(b.in_use for b in image.bitmaps):
        return
    image.bitmaps = [b if b.in_use else b.anew() for b in image.bitmaps]

