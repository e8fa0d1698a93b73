"""Reading an opened chain as qemu-img does: per-cluster allocation, block status and content.

Everything is vectorised over runs (numpy), never a Python loop per cluster. Run arrays are
``(starts, ends, ...)``, sorted and disjoint, covering the range asked for.

Host offsets (``qemu-img map``'s ``offset``) come from the image's host layout
(:mod:`bitlab.block.qcow2_host`): clusters where qcow2 allocated them, in the order they were written.
"""

from __future__ import annotations

import numpy as np

from ..block import hostfs
from ..block.extents import (
    PREALLOC,
    UNALLOCATED,
    ZERO,
    ZERO_ALLOC,
    ExtentMap,
    clip_runs,
    fill_holes,
    partial_cluster_holes,
)
from ..block.qcow2_host import NONE
from ..block.store import ImageFile
from ._common import Layer

# Allocation codes, ordered so that the strongest state of a cluster wins.
UNALLOC, ZERO_PLAIN, ZERO_HOSTED, DATA = 0, 1, 2, 3
RAW_BLOCK = 4096  # the host filesystem's block: the granularity of a raw file's holes

Runs = tuple[np.ndarray, np.ndarray, np.ndarray]
Runs4 = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _promote(starts: np.ndarray, ends: np.ndarray, codes: np.ndarray, unit: int, size: int,
             fill: int) -> Runs:
    """Round runs out to ``unit``-sized blocks; a block takes the strongest code touching it."""
    keep = codes != fill
    first = starts[keep] // unit
    last = -(-ends[keep] // unit)
    order = np.argsort(codes[keep], kind="stable")  # later writes win: strongest last
    blocks = ExtentMap(-(-size // unit), fill=fill)
    if first.size:
        blocks.write_batch(first[order], (last - first)[order], codes[keep][order])
    s, e, c = blocks.extents()
    return s * unit, np.minimum(e * unit, size), c


def allocation(image: ImageFile) -> Runs:
    """What each cluster of ``image`` holds (qcow2) or each filesystem block (raw): code runs."""
    s, e, v = image.data.extents()
    if not s.size:
        return s, e, v
    if not image.is_qcow2:  # QEMU writes the first block of every raw file it creates (allocate_first_block)
        first = min(RAW_BLOCK, image.data.size) if image.first_block else 0
        return _promote(np.append(s, 0), np.append(e, first), np.append(np.where(v != 0, DATA, ZERO_HOSTED), DATA),
                        RAW_BLOCK, image.data.size, ZERO_HOSTED)
    codes = np.select([v >= 0, v == ZERO_ALLOC, v == ZERO], [DATA, ZERO_HOSTED, ZERO_PLAIN], UNALLOC)
    return _promote(s, e, codes, image.cluster_size, image.data.size, UNALLOC)


def _ints(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


def split_runs(starts: np.ndarray, ends: np.ndarray, where: np.ndarray, step: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contiguous runs, those marked ``where`` cut at every multiple of ``step`` inside them.
    Returns the new starts and ends and, for each new run, the index of the run it came from."""
    extra = np.where(where, (ends - 1) // step - starts // step, 0)
    if not extra.any():
        return starts, ends, _ints(starts.size)
    idx = np.repeat(_ints(starts.size), extra + 1)
    k = _ints(idx.size) - np.repeat(np.cumsum(extra + 1) - (extra + 1), extra + 1)
    new_s = np.where(k == 0, starts[idx], (starts[idx] // step + k) * step)
    return new_s, np.append(new_s[1:], ends[-1]), idx


def layer_runs(layer: Layer, hosts: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A layer's allocation over its virtual size, with the host offset of each run (-1: none); a
    qcow2 run of host clusters is cut where they stop being contiguous in the file (``hosts`` False: no
    host offsets, all -1, for callers that only want the codes)."""
    image = layer.image
    s, e, c = allocation(image)
    if layer.size > image.data.size:  # the tail of the last sector
        s, e = np.append(s, image.data.size), np.append(e, layer.size)
        c = np.append(c, UNALLOC if image.is_qcow2 else c[-1] if c.size else DATA)
    if not image.is_qcow2:
        return s, e, c, s.copy()
    return host_runs(image, s, e, c) if hosts else (s, e, c, np.full(s.size, -1, dtype=np.int64))


def host_runs(image: ImageFile, s: np.ndarray, e: np.ndarray, c: np.ndarray) -> Runs4:
    """Runs ``(s, e, c)`` of a qcow2 image (cluster-aligned but at the disk's end) with the host offset
    of each: runs holding host clusters (``DATA``, ``ZERO_HOSTED``) cut where the layout's runs are."""
    cs = image.cluster_size
    hosted = (c == DATA) | (c == ZERO_HOSTED)
    host = np.full(s.size, -1, dtype=np.int64)
    if not hosted.any():
        return s, e, c, host
    hs, he = s[hosted], e[hosted]
    ps, pe, pv, ptr = image.layout.guest.gather(hs // cs, -(-he // cs))
    owner = np.repeat(np.flatnonzero(hosted), np.diff(ptr))
    bs, be = np.maximum(ps * cs, s[owner]), np.minimum(pe * cs, e[owner])
    bh = np.where(pv != NONE, (ps + pv) * cs + (bs - ps * cs), -1)
    keep = ~hosted
    out = [np.concatenate((s[keep], bs)), np.concatenate((e[keep], be)), np.concatenate((c[keep], c[owner])),
           np.concatenate((host[keep], bh))]
    order = np.argsort(out[0], kind="stable")
    return tuple(a[order] for a in out)  # type: ignore[return-value]


def chain_status(chain: list[Layer], level: int = 0, hosts: bool = True) -> tuple[np.ndarray, ...]:
    """Block status of ``chain[level:]`` as qemu-img map sees it: runs of
    ``(starts, ends, codes, depths, hosts)``. A cluster no layer allocates is ``UNALLOC`` at the
    bottom layer's depth; past the end of a shorter backing file, ``UNALLOC`` at the layer above
    (``hosts`` False: qcow2 layers give no host offsets, see layer_runs)."""
    s, e, c, h = layer_runs(chain[level], hosts)
    d = np.full(s.size, level, dtype=np.int64)
    holes = c == UNALLOC
    if level + 1 == len(chain) or not holes.any():
        return s, e, c, d, h
    bs, be, bc, bd, bh = chain_status(chain, level + 1, hosts)
    bsize = chain[level + 1].size
    hs, he = s[holes], e[holes]
    inside = hs < bsize
    ps, pe, run, _ = clip_runs(bs, be, _ints(bs.size), hs[inside], np.minimum(he[inside], bsize))
    ph = np.where(bh[run] >= 0, bh[run] + ps - bs[run], -1)
    past = he > bsize
    qs = np.maximum(hs[past], bsize)
    parts = [(s[~holes], e[~holes], c[~holes], d[~holes], h[~holes]), (ps, pe, bc[run], bd[run], ph),
             (qs, he[past], np.full(qs.size, UNALLOC), np.full(qs.size, level), np.full(qs.size, -1))]
    out = [np.concatenate([p[i] for p in parts]).astype(np.int64) for i in range(5)]
    order = np.argsort(out[0], kind="stable")
    return tuple(a[order] for a in out)


def file_status(chain: list[Layer], s: np.ndarray, e: np.ndarray, c: np.ndarray, d: np.ndarray,
                h: np.ndarray) -> tuple[np.ndarray, ...]:
    """:func:`chain_status` runs as bdrv_block_status_above answers with ``want_zero``: a qcow2 layer that
    looks as if its metadata were preallocated has the file below answer for its data clusters
    (:mod:`bitlab.block.hostfs`), so its data runs are cut where the file's holes and unwritten blocks
    begin and end, and those pieces are zero too. Returns ``(starts, ends, codes, depths, hosts, zero)``."""
    zero = np.zeros(s.size, dtype=bool)
    for level, layer in enumerate(chain):
        image = layer.image
        mine = np.flatnonzero((d == level) & (c == DATA) & (h >= 0))
        if not image.is_qcow2 or not mine.size:
            continue
        if not image.metadata_preallocated():
            continue
        blocks = image.host_blocks()
        ps, pe, pz, owner = hostfs.file_pieces(blocks, h[mine], h[mine] + (e[mine] - s[mine]))
        run = mine[owner]
        keep = np.setdiff1d(np.arange(s.size), mine)
        g_s = s[run] + ps - h[run]
        out = [np.concatenate((s[keep], g_s)), np.concatenate((e[keep], g_s + pe - ps)),
               np.concatenate((c[keep], c[run])), np.concatenate((d[keep], d[run])), np.concatenate((h[keep], ps)),
               np.concatenate((zero[keep], pz))]
        order = np.argsort(out[0], kind="stable")
        s, e, c, d, h, zero = (a[order] for a in out)
    return s, e, c, d, h, zero


def content(chain: list[Layer], lo: int, hi: int, level: int = 0) -> Runs:
    """What a guest reads from ``chain[level:]`` in ``[lo, hi)``: ``(starts, ends, values)`` with
    zeroes as 0 (past the end of a shorter backing file too)."""
    layer = chain[level]
    data = layer.image.data
    if hi <= lo:
        return (np.zeros(0, dtype=np.int64),) * 3
    s, e, v = data.extents(lo, min(hi, data.size) - lo) if lo < data.size else ((np.zeros(0, dtype=np.int64),) * 3)
    if hi > max(lo, data.size):
        s = np.append(s, max(lo, data.size))
        e = np.append(e, hi)
        v = np.append(v, UNALLOCATED if layer.image.is_qcow2 else 0)
    v = np.where((v == ZERO) | (v == ZERO_ALLOC) | (v == PREALLOC), 0, v)
    holes = v == UNALLOCATED
    if not holes.any():
        return s, e, v
    if level + 1 == len(chain):
        return s, e, np.where(holes, 0, v)
    return fill_holes(s, e, v, holes, chain[level + 1].size,
                      lambda off, length: content(chain, off, off + length, level + 1))


def first_difference(a: Runs, b: Runs) -> int | None:
    """The first byte at which two content run lists over the same range differ, or None."""
    bounds = np.union1d(a[0], b[0])
    if not bounds.size:
        return None
    va = a[2][np.searchsorted(a[0], bounds, "right") - 1]
    vb = b[2][np.searchsorted(b[0], bounds, "right") - 1]
    diff = np.flatnonzero(va != vb)
    return int(bounds[diff[0]]) if diff.size else None


def differing(a: Runs, b: Runs) -> tuple[np.ndarray, np.ndarray]:
    """The ranges where two content run lists over the same range differ: ``(starts, ends)``."""
    bounds = np.union1d(a[0], b[0])
    if not bounds.size:
        return bounds, bounds
    end = max(int(a[1][-1]), int(b[1][-1]))
    va = a[2][np.searchsorted(a[0], bounds, "right") - 1]
    vb = b[2][np.searchsorted(b[0], bounds, "right") - 1]
    diff = va != vb
    ends = np.append(bounds[1:], end)
    return bounds[diff], ends[diff]


def cow_fill(chain: list[Layer]) -> None:
    """Give the top image's partly written clusters the bytes qcow2 copied on write from the backing
    chain, so they keep their content when the backing file changes (bitlab keeps only what was
    written; qcow2 allocates whole clusters)."""
    image = chain[0].image
    if not image.is_qcow2 or len(chain) < 2:
        return
    q_s, q_e = partial_cluster_holes(*image.data.extents(), image.cluster_size, image.data.size)
    if not q_s.size:
        return
    bs, be, bv = content(chain, int(q_s[0]), int(q_e[-1]))  # the holes read through the backing chain
    ps, pe, pv, _ = clip_runs(bs, be, bv, q_s, q_e)
    image.data.write_batch(ps, pe - ps, pv)
