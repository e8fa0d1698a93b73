"""The host file under an image as the host file system holds it, and what QEMU 7.2 asks it about it.

The file system is ext4 with 4 KiB blocks (what QEMU runs on here, measured). A block of the file is a
hole, *unwritten* (allocated, reading as zeroes: ``fallocate(FALLOC_FL_ZERO_RANGE)``), or written.
``stat``'s ``st_blocks`` counts the allocated ones (unwritten too) and the blocks of the file's extent
tree: the inode holds four extents, more take a leaf block of 340 (an extent is a run of written or of
unwritten blocks, at most 32768 or 32767 of them). ``lseek(SEEK_DATA)`` reports written blocks only.

What a qcow2 file holds (block/qcow2.c, qcow2-refcount.c, qcow2-bitmap.c, file-posix.c; measured with
``stat`` and SEEK_DATA on files QEMU wrote):

- Metadata is written: the header, refcount table and first refcount block whole (qcow2_co_create), the
  L1 table's entries only (qcow2_grow_l1_table), L2 tables and refcount blocks whole (the caches write
  whole entries), a bitmap's data clusters whole, its table's entries and the bitmap directory's bytes.
  :class:`~bitlab.block.qcow2_host.HostLayout` keeps these writes as blocks (its ``fs`` map, which
  :func:`mark` and :func:`punch` keep).
- A data cluster in use is allocated whole: a request that fills part of a new cluster whose copy on
  write would be zeroes has file-posix zero the new clusters first (handle_alloc_space,
  ``BDRV_REQ_NO_FALLBACK``: ``FALLOC_FL_ZERO_RANGE``, unwritten), then writes its data; a copy on write of
  other bytes (a backing file's, a zero cluster's) writes the whole cluster. So a data cluster's written
  blocks are those its data touches (bitlab keeps the bytes written into a cluster), or all of it. These
  are derived from the image's content when asked (:func:`in_use`), not kept on every write.
- A cluster freed keeps its blocks (they are recorded in ``fs`` as it is freed) unless qcow2 passes its
  discard to a file node with ``discard=unmap``, which punches a hole (whole blocks only).

A raw file holds written blocks where it holds data (and its first block: allocate_first_block), unwritten ones
where a zero write that may not unmap (``FALLOC_FL_ZERO_RANGE``) or ``preallocation=falloc`` allocated them (the
image's ``unwritten`` block map), holes elsewhere (:func:`raw_blocks`).

QEMU asks the file system in two places. ``bdrv_get_allocated_file_size`` is ``st_blocks * 512``
(:func:`allocated_size`: ``actual-size``, qemu-img info's ``disk size``). And qcow2's block status, the
first time it is asked for an image opened, checks whether the image looks as if its metadata were
preallocated (qcow2_detect_metadata_preallocation, :func:`metadata_preallocated`): if the clusters with
a reference inside the file reach ``MAX(real * 10 / 9, real + 2)``, ``real`` being the clusters the file
allocates (``st_blocks * 512 / cluster_size``), every block status answer for data clusters asks the file
below (BDRV_BLOCK_RECURSE; bdrv_co_block_status with ``want_zero``; file-posix's SEEK_DATA/SEEK_HOLE):
its holes and unwritten blocks are then ``"zero": true, "data": true`` (:func:`file_pieces`). Stored
persistent bitmaps typically bring an image there: their tables and directory fill a few bytes of a
cluster each.

Not modelled: the host's page cache. Blocks QEMU read while they were unwritten stay in it as zeroes, and
SEEK_DATA then reports them as data (the kernel's readahead reads more than was asked).
"""

from __future__ import annotations

from bisect import bisect_right
from typing import TYPE_CHECKING

import numpy as np

from .extents import PREALLOC, ExtentMap, clip_runs

if TYPE_CHECKING:
    from .qcow2_host import HostLayout

BLOCK = 4096  # the file system's block
HOLE, UNWRITTEN, WRITTEN = 0, 1, 2  # a block's state
KEPT_HOLE = 3  # in a qcow2 layout's ``fs``: a hole of a preallocated cluster, known to be one (see _overlay)
FS_BLOCKS = 1 << 60  # blocks a file may have (the size of a block map)
MAX_EXTENT = {WRITTEN: 32768, UNWRITTEN: 32767}  # ext4: the longest extent, in blocks
IN_INODE = 4  # extents the inode holds
PER_BLOCK = 340  # extents a tree block holds: (4096 - 12) // 12

Ranges = tuple[np.ndarray, np.ndarray]
Runs = tuple[np.ndarray, np.ndarray, np.ndarray]

COPIED = 1  # a guest cluster of ``layout.cow_written`` whose copy on write wrote it whole

_EMPTY = np.zeros(0, dtype=np.int64)


def touched(starts: np.ndarray, ends: np.ndarray) -> Ranges:
    """The blocks byte ranges ``[starts, ends)`` touch: (first block, block count)."""
    first = np.asarray(starts, dtype=np.int64) // BLOCK
    return first, -(-np.asarray(ends, dtype=np.int64) // BLOCK) - first


def new_fs() -> ExtentMap:
    """A file's block map: holes."""
    return ExtentMap(FS_BLOCKS, fill=HOLE)


def mark(fs: ExtentMap, offsets: np.ndarray, lengths: np.ndarray, state: int = WRITTEN) -> None:
    """Bytes ``[offsets, offsets + lengths)`` written (or zeroed: ``UNWRITTEN``): the blocks they touch."""
    offsets = np.asarray(offsets, dtype=np.int64)
    first, n = touched(offsets, offsets + np.asarray(lengths, dtype=np.int64))
    fs.write_batch(first, n, state)


def punch(fs: ExtentMap, offsets: np.ndarray, lengths: np.ndarray) -> None:
    """``fallocate(FALLOC_FL_PUNCH_HOLE)`` of byte ranges: the blocks wholly inside them become holes (a
    partly covered block is zeroed, and stays)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    first = -(-offsets // BLOCK)
    last = (offsets + np.asarray(lengths, dtype=np.int64)) // BLOCK
    keep = last > first
    if keep.any():
        fs.write_batch(first[keep], (last - first)[keep], HOLE)


def cut(fs: ExtentMap, length: int) -> None:
    """The file truncated to ``length`` bytes: its blocks past the end are gone."""
    first = -(-length // BLOCK)
    fs.write(first, FS_BLOCKS - first, HOLE)


def union(starts: np.ndarray, ends: np.ndarray) -> Ranges:
    """Ranges (any order) merged where they meet or touch: sorted, disjoint."""
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    if starts.size < 2:
        return starts, ends
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], np.maximum.accumulate(ends[order])
    new = np.ones(starts.size, dtype=bool)
    new[1:] = starts[1:] > ends[:-1]
    last = np.append(np.flatnonzero(new)[1:] - 1, starts.size - 1)
    return starts[new], ends[last]


def _intersect(a: Ranges, b: Ranges) -> Ranges:
    """The intersection of two sets of sorted, disjoint ranges."""
    if not a[0].size or not b[0].size:
        return _EMPTY, _EMPTY
    bounds = np.unique(np.concatenate((a[0], a[1], b[0], b[1])))
    seg = bounds[:-1]
    both = _covers(a, seg) & _covers(b, seg)
    return union(seg[both], bounds[1:][both])


def _covers(ranges: Ranges, points: np.ndarray) -> np.ndarray:
    starts, ends = ranges
    if not starts.size:
        return np.zeros(points.size, dtype=bool)
    j = np.searchsorted(starts, points, "right") - 1
    return (j >= 0) & (points < ends[np.maximum(j, 0)])


def in_use(layout: HostLayout, data: ExtentMap, c0: int = 0, c1: int | None = None
           ) -> tuple[Ranges, Ranges, Ranges, Ranges]:
    """The host clusters in use for guest clusters ``[c0, c1)``, as host byte ranges: the data clusters
    (allocated whole), the bytes of them written (the data, or the whole cluster where its copy on write
    copied the backing file's data: ``layout.cow_written``), and the hosted clusters without data (zero
    clusters that kept their host cluster: written or not as they were when zeroed, which ``fs`` recorded).
    A cluster ``preallocation=metadata`` made (PREALLOC) is neither: its blocks are holes but for what was
    written into it since (qcow2 writes into it in place, without handle_alloc_space); the fourth ranges are
    those clusters."""
    cs = layout.cs
    hs, he, hv = layout.hosted(c0, c1)
    if not hs.size:
        return (_EMPTY, _EMPTY), (_EMPTY, _EMPTY), (_EMPTY, _EMPTY), (_EMPTY, _EMPTY)
    ps, pe, pv, ptr = data.gather(hs * cs, np.minimum(he * cs, data.size))
    shift = np.repeat(hv, np.diff(ptr)) * cs  # guest byte -> host byte, piece by piece
    isdata = pv >= 0
    clusters = union((ps[isdata] // cs) * cs + shift[isdata], -(-pe[isdata] // cs) * cs + shift[isdata])
    pre = pv == PREALLOC
    bounds_of, kept = clusters, (_EMPTY, _EMPTY)
    if pre.any():  # preallocated clusters: allocated as their data's blocks are, no more (no handle_alloc_space)
        held = clusters
        isdata = isdata & ~pre
        kept = union((ps[pre] // cs) * cs + shift[pre], -(-pe[pre] // cs) * cs + shift[pre])
        clusters = _subtract(union((ps[isdata] // cs) * cs + shift[isdata],
                                    -(-pe[isdata] // cs) * cs + shift[isdata]), kept)
        bounds_of = held
    if cs <= BLOCK and not pre.any():  # a cluster's data writes its blocks whole (a partial block is read, changed,
        written = clusters  # written)
    else:
        if cs <= BLOCK:
            ws, we = (ps[isdata] // cs) * cs + shift[isdata], -(-pe[isdata] // cs) * cs + shift[isdata]
        else:
            ws, we = ps[isdata] + shift[isdata], pe[isdata] + shift[isdata]
        cs_, ce_, cv, cptr = layout.cow_written.gather(hs, he)
        copied = cv == COPIED
        if copied.any():
            own = np.repeat(hv, np.diff(cptr))[copied]
            ws, we = np.concatenate((ws, (cs_[copied] + own) * cs)), np.concatenate((we, (ce_[copied] + own) * cs))
        written = union(ws, we)
    hosted = union((hs + hv) * cs, (he + hv) * cs)
    bounds = np.unique(np.concatenate((hosted[0], hosted[1], bounds_of[0], bounds_of[1])))
    seg = bounds[:-1]
    bare = _covers(hosted, seg) & ~_covers(bounds_of, seg)
    return clusters, written, union(seg[bare], bounds[1:][bare]), kept


def _subtract(a: Ranges, b: Ranges) -> Ranges:
    """Sorted disjoint ranges ``a`` less the sorted disjoint ranges ``b``."""
    if not a[0].size or not b[0].size:
        return a
    bounds = np.unique(np.concatenate((a[0], a[1], b[0], b[1])))
    seg = bounds[:-1]
    keep = _covers(a, seg) & ~_covers(b, seg)
    return union(seg[keep], bounds[1:][keep])


def record(layout: HostLayout, data: ExtentMap, c0: int, c1: int) -> None:
    """Guest clusters ``[c0, c1)`` are about to lose their host clusters (freed, or zeroed keeping them):
    ``fs`` keeps what the file system holds there."""
    _overlay(layout.fs_blocks(), *in_use(layout, data, c0, c1))


def _overlay(blocks: ExtentMap, clusters: Ranges, written: Ranges, bare: Ranges, kept: Ranges) -> None:
    """Data clusters over a block map: unwritten, with their written bytes; preallocated clusters' holes kept
    (KEPT_HOLE), with their written bytes; hosted clusters without data written where the map has holes (a copy's
    zero clusters, never seen as data; not a preallocated cluster zeroed, whose holes are kept)."""
    _fill_holes(blocks, kept, KEPT_HOLE)
    if kept[0].size and not clusters[0].size and written[0].size:
        first, n = touched(*written)
        blocks.write_batch(first, n, WRITTEN)
    _fill_holes(blocks, bare, WRITTEN)
    if clusters[0].size:
        first, n = touched(*clusters)
        blocks.write_batch(first, n, UNWRITTEN)
        first, n = touched(*written)
        blocks.write_batch(first, n, WRITTEN)


def _fill_holes(blocks: ExtentMap, ranges: Ranges, state: int) -> None:
    """The holes of ``blocks`` in the blocks byte ``ranges`` touch take ``state``."""
    if ranges[0].size:
        first, n = touched(*ranges)
        s, e, v, _ = blocks.gather(first, first + n)
        holes = v == HOLE
        if holes.any():
            blocks.write_batch(s[holes], (e - s)[holes], state)


def qcow2_blocks(layout: HostLayout, data: ExtentMap, file_length: int) -> Runs:
    """The blocks of a qcow2 file of ``file_length`` bytes: runs (first block, end block, state)."""
    nblocks = -(-file_length // BLOCK)
    blocks = ExtentMap(max(nblocks, 1), fill=HOLE)
    s, e, v = layout.fs_blocks().extents(0, nblocks)
    held = v != HOLE
    blocks.write_batch(s[held], (e - s)[held], v[held])
    _overlay(blocks, *in_use(layout, data))
    if not nblocks:
        return _EMPTY, _EMPTY, _EMPTY
    s, e, v = blocks.extents(0, nblocks)
    kept = v == KEPT_HOLE
    if kept.any():  # (holes to the file system)
        blocks.write_batch(s[kept], (e - s)[kept], HOLE)
        s, e, v = blocks.extents(0, nblocks)
    return s, e, v


def raw_blocks(data: ExtentMap, first_block: bool = True, unwritten: ExtentMap | None = None) -> Runs:
    """The blocks of a raw file: written where it holds anything but holes (data, and zeroes written as data:
    ZERO_ALLOC), and the first block, which QEMU writes into every raw file it creates (allocate_first_block),
    unless a zero write or discard over it since (``first_block`` False); elsewhere unwritten where the
    ``unwritten`` block map says so (what zero writes allocated)."""
    nblocks = -(-data.size // BLOCK)
    blocks = ExtentMap(max(nblocks, 1), fill=HOLE)
    if unwritten is not None and nblocks:
        us, ue, uv = unwritten.extents(0, nblocks)
        held = uv == UNWRITTEN
        blocks.write_batch(us[held], (ue - us)[held], UNWRITTEN)
    s, e, v = data.extents()
    first, n = touched(s[v != 0], e[v != 0])
    head = min(1, nblocks) if first_block else 0
    blocks.write_batch(np.append(first, 0), np.append(n, head), WRITTEN)
    return blocks.extents(0, nblocks) if nblocks else (_EMPTY, _EMPTY, _EMPTY)


def tree_blocks(extents: int) -> int:
    """The blocks of a file's extent tree: none while the inode holds its extents, else a leaf per 340
    (and an index block per 340 leaves past the four the inode points to)."""
    if extents <= IN_INODE:
        return 0
    leaves = -(-extents // PER_BLOCK)
    return leaves + (-(-leaves // PER_BLOCK) if leaves > IN_INODE else 0)


def extent_count(runs: Runs) -> int:
    """The extents of a file with these blocks (runs of one state; compact, as an ExtentMap keeps them)."""
    s, e, v = runs
    held = v != HOLE
    cap = np.where(v[held] == WRITTEN, MAX_EXTENT[WRITTEN], MAX_EXTENT[UNWRITTEN])
    return int((-(-(e[held] - s[held]) // cap)).sum())


def allocated_size(runs: Runs) -> int:
    """``st_blocks * 512`` of a file with these blocks (bdrv_get_allocated_file_size)."""
    s, e, v = runs
    return (int((e - s)[v != HOLE].sum()) + tree_blocks(extent_count(runs))) * BLOCK


def plain_allocation(layout: HostLayout, data: ExtentMap, file_length: int) -> int | None:
    """:func:`allocated_size` of :func:`qcow2_blocks`, without them, for the common file (None for others):
    ``fs`` plain (nothing freed, no bitmaps: so every cluster below the end is in use, all allocated),
    clusters of 4 KiB or more, few runs of content. What is not written there is the L1 table's clusters past
    its entries (a hole) and the parts of data clusters their data leave (unwritten)."""
    cs = layout.cs
    if not layout.fs_plain or cs < BLOCK:
        return None
    if not layout.grown:  # what qcow2_co_create wrote, in one extent
        return -(-file_length // BLOCK) * BLOCK
    top = layout.top
    if file_length != top * cs:
        return None
    head = -(-(layout.l1_offset + 8 * layout.l1_entries) // BLOCK)  # header, refcounts, L1 entries: written
    tail = ((3 + layout.l1_clusters) * cs // BLOCK, top * cs // BLOCK)  # the other clusters: allocated
    starts, vals = data.runs()
    if starts.size > FEW_RUNS:
        return None
    s, v = starts.tolist(), vals.tolist()
    if PREALLOC in v:  # (preallocated clusters are not allocated whole)
        return None
    if any([x >= 0 and (a % cs or b % cs) for a, b, x in zip(s, s[1:] + [data.size], v)]):
        unwritten = _unwritten_blocks(layout, s, v, data.size)
    else:
        unwritten = []  # (data in whole clusters only)
    runs: list[list[int]] = [[0, head, WRITTEN]]
    at = tail[0]
    for first, end in unwritten + [(tail[1], tail[1])]:
        for lo, hi, state in ((at, first, WRITTEN), (first, end, UNWRITTEN)):
            if hi <= lo:
                continue
            if runs[-1][1] == lo and runs[-1][2] == state:
                runs[-1][1] = hi
            else:
                runs.append([lo, hi, state])
        at = end
    extents = sum([-(-(hi - lo) // MAX_EXTENT[state]) for lo, hi, state in runs])
    return (head + tail[1] - tail[0] + tree_blocks(extents)) * BLOCK


FEW_RUNS = 64  # content runs plain_allocation works through in plain ints


def _unwritten_blocks(layout: HostLayout, starts: list[int], vals: list[int], size: int) -> list[tuple[int, int]]:
    """The unwritten blocks of the data clusters of content runs ``starts/vals`` (plain ints), as host block
    ranges, sorted and merged: only a cluster a data run begins or ends inside can have any (unless its copy
    on write copied a backing file's data)."""
    cs = layout.cs
    ends = starts[1:] + [size]
    partial = set()
    for a, b, v in zip(starts, ends, vals):
        if v >= 0:
            partial.update([c for c, cut in ((a // cs, a % cs), ((b - 1) // cs, b % cs)) if cut])
    out = []
    for c in sorted(partial):
        lo, hi = c * cs, (c + 1) * cs
        i, j = bisect_right(starts, lo) - 1, bisect_right(starts, hi - 1)
        pieces = [(max(a, lo), min(b, hi), v) for a, b, v in zip(starts[i:j], ends[i:j], vals[i:j])]
        if layout.cow_written.peek(c) == COPIED:
            continue  # (written whole)
        written = [((a - lo) // BLOCK, -(-(b - lo) // BLOCK)) for a, b, v in pieces if v >= 0]
        host = (c + layout.guest.peek(c)) * cs // BLOCK  # (a look that merges nothing)
        at = 0
        for first, end in written + [(cs // BLOCK, cs // BLOCK)]:
            if first > at:
                out.append((host + at, host + first))
            at = max(at, end)
    out.sort()
    merged: list[tuple[int, int]] = []
    for lo, hi in out:
        if merged and merged[-1][1] == lo:
            merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged


def metadata_preallocated(layout: HostLayout, file_length: int, allocated: int) -> bool:
    """qcow2_detect_metadata_preallocation: the clusters with a reference inside the file (its length
    counted in whole sectors, bdrv_getlength) against the clusters it allocates (``allocated`` bytes)."""
    cs = layout.cs
    real = allocated // cs
    threshold = max(real * 10 // 9, real + 2)
    return layout.used_before(-(-(-(-file_length // 512) * 512) // cs)) >= threshold


def file_pieces(runs: Runs, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, ...]:
    """file-posix's block status (SEEK_DATA/SEEK_HOLE) over host byte ranges ``[starts, ends)``: their
    pieces ``(starts, ends, zero, owner)``, zero where the file has a hole or unwritten blocks or has
    ended (BDRV_BLOCK_EOF), the pieces of range ``owner`` in order, the ranges in order."""
    bs, be, bv = runs
    nbytes = int(be[-1]) * BLOCK if be.size else 0
    last = np.minimum(ends, nbytes)
    ps, pe, pv, ptr = clip_runs(bs * BLOCK, be * BLOCK, bv, np.minimum(starts, nbytes), last)
    owner = np.repeat(np.arange(starts.size), np.diff(ptr))
    past = np.flatnonzero(ends > last)
    out_s = np.concatenate((ps, np.maximum(starts[past], nbytes)))
    out_e = np.concatenate((pe, ends[past]))
    out_z = np.concatenate((pv != WRITTEN, np.ones(past.size, dtype=bool)))
    out_o = np.concatenate((owner, past))
    order = np.lexsort((out_s, out_o))
    return out_s[order], out_e[order], out_z[order], out_o[order]
