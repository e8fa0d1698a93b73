"""A qcow2 image as its file holds it while QEMU's L2 table cache holds more: what qemu-img ``-U`` reads.

QEMU 7.2 keeps a changed L2 table in its cache (qcow2-cache.c) and writes it to the file only when the cache is
written back: a new table's ``l2_allocate`` (which writes every dirty table first), a flush, the node closing or
going read-only, a mirror's completion. Data clusters reach the file at once. A reader of the file alone —
``qemu-img`` with ``-U`` (force-share) while a running QEMU has the image open read-write — sees the L2 tables
as they were last written: the clusters allocated since are not allocated for it (``map -U`` leaves them out,
``compare -U`` finds a mismatch, ``convert -U`` copies what they held before), zero clusters made since are
still the data they held, and ``check -U`` counts neither.

The layout notes each table's state before the first change after a write-back (:meth:`HostLayout.note_tables`);
:func:`on_disk` builds, from those of the tables still dirty, the content, guest map, zero flags and used host
clusters the file describes; the refcount blocks hold what they held when the refcount cache was last written back
(``HostLayout.rc_since``), so ``check -U`` finds the clusters a written refcount block counts that no
written table references yet (leaked: an ``l2_allocate`` writes the refcounts of the clusters allocated so far,
the request's links come after it). A table holding compressed clusters is taken as the cache has it, and an image
holding any is not checked so (their clusters' refcounts count chunks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .extents import UNALLOCATED, ZERO, ZERO_ALLOC, ExtentMap, clip_runs
from .qcow2_host import FREE, NONE, USED, HostLayout, Runs, TableState, content_runs, empty_table


@dataclass
class OnDisk:
    """An image as its file describes it: the content, guest map, zero flags and referenced host clusters (a free
    map), and the host clusters whose refcount the file has but nothing references (``leaked``) or the other way
    round (``unreferenced``: refcount 0), as runs ``(starts, ends)``."""

    data: ExtentMap
    guest: ExtentMap
    zero: ExtentMap
    free: ExtentMap
    leaked: tuple[np.ndarray, np.ndarray]
    unreferenced: tuple[np.ndarray, np.ndarray]


_DATA = -10  # (a code of its own: the entry maps a data cluster)


def _at(runs: Runs, points: np.ndarray) -> np.ndarray:
    """The value of runs ``(starts, ends, values)`` (covering the points) at each point."""
    return runs[2][np.searchsorted(runs[0], points, "right") - 1]


def _table(layout: HostLayout, index: int, state: TableState | None
           ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] | None:
    """One stale table: (content writes, guest map writes, free map writes) as arrays ``[starts, lengths,
    values]`` (content in bytes, the maps in clusters), or None where it is taken as the cache has it."""
    per, cs = layout.per_l2, layout.cs
    lo = index * per
    hi = min(lo + per, layout.guest.size)
    if hi <= lo:
        return None
    if state is None:
        state = empty_table(lo, hi)
    disk_g, disk_z, content, compressed = state
    if compressed or layout.any_compressed and layout.compressed_in(lo, hi):
        return None
    now_g = layout.guest.extents(lo, hi - lo)
    now_z = layout.zero_flag.extents(lo, hi - lo)
    bounds = np.unique(np.concatenate([r[0] for r in (disk_g, disk_z, now_g, now_z)] + [np.array([lo, hi])]))
    bounds = bounds[(bounds >= lo) & (bounds <= hi)]
    seg, end = bounds[:-1], bounds[1:]
    dg, dz, ng, nz = (_at(r, seg) for r in (disk_g, disk_z, now_g, now_z))
    hosted = dg != NONE
    code = np.where(hosted, np.where(dz != 0, ZERO_ALLOC, _DATA), np.where(dz != 0, ZERO, UNALLOCATED))
    data = code == _DATA
    same = data & (ng == dg) & (nz == 0)
    # the content: the entries' codes where they hold no data, the bytes noted where the data is not the cache's
    b_lo, b_hi = seg * cs, np.minimum(end * cs, layout.size)
    plain = ~data & (b_hi > b_lo)
    c_s, c_e, c_v = [b_lo[plain]], [b_hi[plain]], [code[plain]]
    old = data & ~same & (b_hi > b_lo)
    if old.any() and content is not None:
        ps, pe, pv, _ = clip_runs(*content_runs(content), b_lo[old], b_hi[old])
        c_s.append(ps), c_e.append(pe), c_v.append(pv)
    starts = np.concatenate(c_s)
    order = np.argsort(starts, kind="stable")
    writes = [starts[order], (np.concatenate(c_e) - starts)[order], np.concatenate(c_v)[order]]
    # the guest map's runs as the file has them; host clusters the cache took since are free there
    changed = (ng != dg) | (nz != dz)
    guest = [seg[changed], (end - seg)[changed], dg[changed]]
    gone = changed & (ng != NONE)
    back = changed & hosted
    free = [np.concatenate((seg[gone] + ng[gone], seg[back] + dg[back])),
            np.concatenate(((end - seg)[gone], (end - seg)[back])),
            np.concatenate((np.full(int(gone.sum()), FREE), np.full(int(back.sum()), USED)))]
    zero = [seg[changed], (end - seg)[changed], dz[changed]]
    return writes, guest + zero, free


def _refcounts(layout: HostLayout) -> ExtentMap:
    """The refcounts (USED/FREE by host cluster) the file holds: the cache's, but where a cluster was allocated or
    freed an odd number of times since the refcount cache was last written back."""
    starts, ends = layout.flipped()
    if not starts.size:
        return layout.free
    held = layout.free.copy()
    s, e, v, _ = layout.free.gather(starts, ends)
    held.write_batch(s, e - s, np.where(v == USED, FREE, USED))
    return held


def _differ(held: ExtentMap, referenced: ExtentMap, state: int) -> tuple[np.ndarray, np.ndarray]:
    """Runs of host clusters ``held`` has in ``state`` and ``referenced`` not."""
    hs, hv = held.runs()
    rs, rv = referenced.runs()
    bounds = np.union1d(hs, rs)
    a, b = hv[np.searchsorted(hs, bounds, "right") - 1], rv[np.searchsorted(rs, bounds, "right") - 1]
    ends = np.append(bounds[1:], held.size)
    pick = (a == state) & (b != state)
    return bounds[pick], ends[pick]


def on_disk(layout: HostLayout, content: ExtentMap) -> OnDisk | None:
    """The image as its file describes it, where the caches hold more (None: the file holds what they do)."""
    stale = layout.stale_tables()
    parts = [p for p in (_table(layout, i, stale[i]) for i in sorted(stale)) if p is not None]
    data, guest, zero, free = content, layout.guest, layout.zero_flag, layout.free
    if parts:
        data, guest, zero, free = content.copy(), guest.copy(), zero.copy(), free.copy()
        for writes, maps, frees in parts:
            if writes[0].size:
                data.write_batch(*writes)
            if maps[0].size:
                guest.write_batch(*maps[:3])
                zero.write_batch(*maps[3:])
            if frees[0].size:
                free.write_batch(*frees)
    none = (np.zeros(0, dtype=np.int64),) * 2
    held = None if layout.any_compressed else _refcounts(layout)
    leaked, unreferenced = (none, none) if held is None else (_differ(held, free, USED), _differ(held, free, FREE))
    if not parts and not leaked[0].size and not unreferenced[0].size:
        return None
    return OnDisk(data, guest, zero, free, leaked, unreferenced)
