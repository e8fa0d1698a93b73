"""Where a qcow2 image's clusters live in its host file, allocated in the order writes arrive.

QEMU 7.2 (qcow2-refcount.c ``alloc_clusters_noref``) gives each allocation the first run of free
host clusters at or after ``free_cluster_index``, which an allocation moves past its clusters and a
freed cluster lowers again (to 0 when the image is opened). A write request (qcow2-cluster.c
``qcow2_alloc_host_offset``) works one L2 table at a time: the table first (``l2_allocate``, for any
write, zero write or discard into a stretch without one), then the request's new data clusters of
that stretch, contiguous, right after the host cluster the request used last if that one is free
(``qcow2_alloc_clusters_at``), else anywhere (first fit). A cluster that already has a host cluster
(data, or a zero cluster that kept it) is written in place. When an allocation reaches past the
clusters the refcount blocks cover, a new refcount block takes the first free cluster from
free_cluster_index and the allocation is retried (``alloc_refcount_block``): after a first-fit
allocation (which moved the index past itself), but at the first uncovered cluster inside a request's
continuation (``qcow2_alloc_clusters_at`` leaves the index alone), whose rest then follows the block.

It also keeps what qcow2's caches hold (qcow2-cache.c): which L2 tables and refcount blocks are dirty,
which cache waits for the other (``qcow2_cache_set_dependency``), and logs the metadata writes they
make (``l2_allocate``, a flush) and the data clusters freed, at host offsets, for the file node below;
with each guest cluster's zero flag (``QCOW_OFLAG_ZERO``), a request dirties a table exactly where it
changes an entry (``zero_in_l2_slice``, ``discard_in_l2_slice`` and ``qcow2_alloc_cluster_link_l2`` leave
the others alone).

:class:`HostLayout` keeps it sparse: the guest->host map is an :class:`ExtentMap` over guest
clusters whose value is ``host - guest`` (a contiguous allocation is one run), the L2 tables an
:class:`ExtentMap` over L1 entries, free space an :class:`ExtentMap` over host clusters. It follows
the image's content map: :meth:`HostLayout.before_merge` sees each batch of writes in order. While
the only free space is the file's tail, a batch allocates with one cumulative sum; with holes it
goes request by request (never cluster by cluster).

With :attr:`HostLayout.log` set (a list: a qcow2 node over a blkdebug node whose rules may see its requests),
the layout also records, in QEMU's order, the blkdebug events and the requests its work makes of the file
(:class:`bitlab.block.blkdebug.BlkdebugNode` runs them), and batches go request by request.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable

import numpy as np

from ..errors import generic
from . import hostfs
from .extents import SMALL_RUNS, UNALLOCATED, ZERO, ZERO_ALLOC, ExtentMap, _stab_max, range_items

NONE = -(1 << 62)  # guest map value: no host cluster
USED, FREE = 0, 1
HOST_SPACE = 1 << 56  # host clusters a file may ever have (the free map's size)
SMALL_BATCH = 8  # requests a batch may have for the plain-integer path
SMALL_ZERO_BATCH = 128  # zero writes a batch of them alone may have for it
MAX_FS_MARKS = 1024  # metadata writes kept before they go into the file's block map


def _first_touch(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For ranges ``[lo[i], hi[i])`` in order, the pieces of their union with the first range
    covering each: ``(starts, ends, owner)`` sorted by start."""
    bounds = np.sort(np.concatenate((lo, hi)))
    bounds = bounds[np.append(True, bounds[1:] != bounds[:-1])]
    if bounds.size < 2:
        return (np.zeros(0, dtype=np.int64),) * 3
    left = np.searchsorted(bounds, lo)
    right = np.searchsorted(bounds, hi)
    n = lo.size
    win = _stab_max(bounds.size - 1, left[::-1], right[::-1])  # largest reversed index: the first range
    keep = win >= 0
    return bounds[:-1][keep], bounds[1:][keep], (n - 1 - win)[keep]


def _inside(points: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Whether each point lies in one of the ranges ``[starts, ends)`` (sorted, disjoint)."""
    if not starts.size:
        return np.zeros(points.size, dtype=bool)
    j = np.searchsorted(starts, points, "right") - 1
    return (j >= 0) & (points < ends[np.maximum(j, 0)])


def _covered_before(c0: np.ndarray, c1: np.ndarray, among: np.ndarray) -> np.ndarray:
    """For ranges ``[c0[i], c1[i])`` in order: whether an earlier range of those ``among`` shares a point with each."""
    out = np.zeros(c0.size, dtype=bool)
    idx = np.flatnonzero(among & (c1 > c0))
    if not idx.size or bool((c0[1:] >= c1[:-1]).all()):  # (ranges in ascending order meet no earlier one)
        return out
    ps, pe, own = _first_touch(c0[idx], c1[idx])
    first = np.append(idx[own], np.iinfo(np.int64).max)  # the first range over each piece of their union
    a = np.searchsorted(pe, c0, "right")
    b = np.searchsorted(ps, c1, "left")  # pieces [a, b) meet range i
    has = np.flatnonzero((b > a) & (c1 > c0))
    if has.size:
        out[has] = np.minimum.reduceat(first, np.column_stack((a[has], b[has])).ravel())[::2] < has
    return out


def _joined(reqs: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Zero writes (guest cluster ranges, in order, and the value written) with each run of them back to back
    that sets the same zero flag made one write, for :meth:`HostLayout._small_batch`: the run changes the
    tables its writes change, meets each new table no earlier write met before the writes after it do, and
    sets the zero flags they set (so the batch does the same, in one step for the run instead of one a write)."""
    out = [reqs[0]]
    last_a, last_b, last_v = reqs[0]
    for a, b, v in reqs[1:]:
        if a == last_b and (v == UNALLOCATED) == (last_v == UNALLOCATED):
            last_b = b
            out[-1] = (last_a, b, last_v)
        else:
            out.append((a, b, v))
            last_a, last_b, last_v = a, b, v
    return out


def _back_to_back(c0: np.ndarray, c1: np.ndarray, values: np.ndarray,
                  vals: list[int]) -> list[tuple[int, int, int]] | None:
    """Zero writes over guest clusters ``[c0, c1)`` (``vals``: ``values`` as a list) that :func:`_joined` makes one
    write (each starting where the one before ends, all setting the same zero flag), as that write; else None.
    (Found in numpy: a new target zeroed by a backup gets many such writes.)"""
    if len(vals) < 2 or max(vals) >= 0 or bool((c0[1:] != c1[:-1]).any()):
        return None
    unalloc = values == UNALLOCATED
    if bool((unalloc != unalloc[0]).any()):
        return None
    return [(int(c0[0]), int(c1[-1]), vals[0])]


Ints = list[int] | np.ndarray  # host byte offsets or lengths of metadata writes (see HostLayout._write)
Runs = tuple[np.ndarray, np.ndarray, np.ndarray]


class Overlaid:
    """Content runs over guest bytes and writes over them, merged only when read (:func:`content_runs`): what a table
    noted inside a batch holds (see HostLayout._content), where most notes are never read."""

    __slots__ = ("base", "writes")

    def __init__(self, base: Runs, writes: Runs) -> None:
        self.base, self.writes = base, writes  # (starts, ends, values) each; the writes in order, later ones win


def content_runs(content: Runs | Overlaid) -> Runs:
    """A noted table's content as runs ``(starts, ends, values)``."""
    if not isinstance(content, Overlaid):
        return content
    (s, e, v), (a, b, w) = content.base, content.writes
    lo = int(s[0])
    now = ExtentMap(int(e[-1]) - lo)
    now.write_batch(s - lo, e - s, v)
    now.write_batch(a - lo, b - a, w)
    s, e, v = now.extents()
    return s + lo, e + lo, v


# an L2 table as the file holds it (see HostLayout.note_tables): the guest map's runs, the zero flags' runs and the
# content's runs (bytes; None where no cluster has a host cluster), and whether it has compressed clusters
TableState = tuple[Runs, Runs, Runs | Overlaid | None, bool]


def empty_table(lo: int, hi: int) -> TableState:
    """The state of an L2 table mapping nothing over guest clusters ``[lo, hi)``: no host cluster, no zero flag."""
    return (np.array([lo]), np.array([hi]), np.array([NONE])), _no_flags(lo, hi), None, False


def _no_flags(lo: int, hi: int) -> Runs:
    return np.array([lo]), np.array([hi]), np.zeros(1, dtype=np.int64)


def _columns(rows: list[tuple[int, ...]], n: int) -> tuple[np.ndarray, ...]:
    """Rows of ``n`` ints as ``n`` arrays."""
    if not rows:
        return (np.zeros(0, dtype=np.int64),) * n
    return tuple(np.array(column, dtype=np.int64) for column in zip(*rows))


def _ints(values: Ints) -> list[int]:
    return values.tolist() if isinstance(values, np.ndarray) else values


def _runs_with_ends(emap: ExtentMap) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    starts, vals = emap.runs()
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:]
    ends[-1] = emap.size
    return starts, ends, vals


class HostLayout:
    """The host clusters of one qcow2 file: metadata, L2 tables and data, and the free ones."""

    def __init__(self, size: int, cluster_size: int) -> None:
        self.cs = cluster_size
        self.per_l2 = cluster_size // 8  # guest clusters per L2 table
        self.refblock_span = cluster_size * 8 // 16  # host clusters one refcount block covers (16-bit refcounts)
        self.size = size
        nclusters = -(-size // cluster_size)
        self.l1_entries = -(-nclusters // self.per_l2)
        self.l1_clusters = -(-8 * self.l1_entries // cluster_size)
        self.l1_offset = 3 * cluster_size  # the L1 table: after header, refcount table and block
        # told of guest clusters [lo, hi) about to lose their host clusters, while the content still has them
        self.on_unhost: Callable[[int, int], None] | None = None
        # the content of guest bytes [lo, hi) as runs (starts, ends, values): what a table noted as the file holds
        # it keeps of its data clusters (see note_tables)
        self.read_content: Callable[[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
        self.log: list | None = None  # events and requests, in order, while someone records them
        self.reset()

    def reset(self) -> None:
        """A new file: header, refcount table, refcount block, L1 table (qcow2_co_create)."""
        nclusters = -(-self.size // self.cs)
        self.guest = ExtentMap(max(nclusters, 1), fill=NONE)
        self.zero_flag = ExtentMap(max(nclusters, 1), fill=0)  # 1 where the L2 entry has QCOW_OFLAG_ZERO
        # hostfs.COPIED where a partial write's copy on write copied the backing file's data (wrote the cluster whole)
        self.cow_written = ExtentMap(max(nclusters, 1), fill=0)
        self.l2 = ExtentMap(HOST_SPACE, fill=-1)  # by L1 index (an L1 table may grow)
        self.meta = 3 + self.l1_clusters
        self.free = ExtentMap(HOST_SPACE, fill=FREE)
        self.free.write(0, self.meta, USED)
        self.top = self.meta  # clusters the file holds (it shrinks only when qcow2 shrinks)
        self.partial_end: int | None = None  # the file's length when its last cluster is a new L1 table
        self.end_rounded = False  # the new file's length rounded up to whole sectors (see align_end)
        self.padded_from: int | None = None  # the file's end before align_end rounded it up (no write reached it)
        self.fci = 0
        self.refblocks = 1
        self.grown = False  # anything allocated since the file was made
        self.bitmap_clusters: dict[str, list[tuple[int, int]]] = {}  # a stored bitmap's data and table
        self.directory: tuple[int, int] | None = None  # the bitmap directory: (first cluster, clusters)
        self.refblock_hosts = [2]  # the host cluster of each refcount block
        self.reftable = (1, 1)  # the refcount table: (first host cluster, clusters)
        self.dirty_refblocks: set[int] = set()  # refcount blocks changed in the cache, not written yet
        self.dirty_l2: set[int] = set()  # L2 tables (L1 indices) changed in the cache, not written yet
        self.written: list[tuple[np.ndarray, np.ndarray]] = []  # metadata writes (byte offsets, lengths)
        self.discarded: list[tuple[np.ndarray, np.ndarray]] = []  # guest data clusters freed (host byte ranges)
        self.cached_from: int | None = None  # while a request frees clusters: its first entry not yet passed
        self.one_request = False  # the next batch of data writes is one request (a buffer's runs)
        self.depends: dict[str, str | None] = {"l2": None, "rb": None}  # qcow2_cache_set_dependency
        # the file's blocks (hostfs): what qcow2_co_create writes (header, refcount table and block whole,
        # the L1 table's entries), then every metadata write, freed clusters, punched holes
        self.fs = hostfs.new_fs()
        # metadata writes not in ``fs`` yet: first what qcow2_co_create wrote
        self._fs_marks: list[tuple] = [([0, self.l1_offset], [3 * self.cs, 8 * self.l1_entries])]
        # ``fs`` holds only what creating the file and writing L2 tables and refcounts wrote, nothing was freed
        self.fs_plain = True
        self.bitmaps_freed: list[tuple[int, int]] = []  # data clusters of stored bitmaps just dropped (runs)
        self.l2_cached: set[int] = set()  # L2 tables (L1 indices) in the cache: allocated or read since the open
        self.rb_cached: set[int] = set()  # refcount blocks in the cache (their reads since the open)
        self.stale_l1: set[int] = set()  # L1 entries on disk pointing at a freed L2 table (a failed flush)
        self.compressed = ExtentMap(max(nclusters, 1), fill=0)  # 1 where the L2 entry is a compressed cluster's
        self.any_compressed = False  # (a compressed cluster was ever written: the guards look only then)
        self.free_byte_offset = 0  # qcow2_alloc_bytes: where the next compressed cluster may go (0: a new cluster)
        # a compressed cluster's L2 entry, by guest cluster: its chunk's host byte offset (-1: none) and compressed
        # size (made with the first compressed cluster)
        self._chunk_maps: tuple[ExtentMap, ExtentMap] | None = None
        self.chunks_freed = False  # (a compressed cluster was ever freed: free_byte_offset may point into a freed one)
        # what the file holds of L2 tables the cache changed (see note_tables): by L1 index, valid while dirty
        self.disk_tables: dict[int, TableState | None] = {}
        self.disk_op: tuple[list[int], list[int], int] | None = None  # the last change noted (see settle_tables)
        self.l2_writebacks = 0  # write-backs of the L2 table cache so far
        self.in_op = False  # a batch of content writes is under way (its requests are noted with it)
        # the batch under way: its writes (byte offsets, ends, values), which the content map takes only at its
        # end, and how many of them the layout has taken so far (what a table noted in the batch holds: _content)
        self.merging: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.merged = 0
        # host clusters whose refcount changed since the refcount cache was last written back, ranges in order (each
        # change an allocation or a free: the file holds the other state where a cluster changed an odd number of times)
        self.rc_since: list[tuple] = []
        self.cut_noted: set[int] = set()  # tables the change in progress noted as a write-back left them

    # -- what a recorder sees (log) --------------------------------------------------------------
    def _ev(self, name: str, times: int = 1) -> None:
        """A blkdebug event qcow2 fires on its file (BLKDBG_EVENT)."""
        if self.log is not None and times > 0:
            self.log.append(("ev", name, times))

    def _refcount_events(self, start: int, end: int, scanned: int | None = None) -> None:
        """update_refcount over host clusters ``[start, end)``: alloc_refcount_block and load_refcount_block
        for each refcount block it meets, which is read from the file where the cache lacks it (for an
        allocation, the blocks its search for free clusters from ``scanned`` met were read first)."""
        if self.log is None or end <= start:
            return
        span = self.refblock_span
        if scanned is not None:
            for block in range(min(scanned, start) // span, min((end - 1) // span + 1, self.refblocks)):
                self._read_refblock(block)
        for block in range(start // span, (end - 1) // span + 1):
            self._ev("refblock_alloc")
            self._ev("refblock_load")
            self._read_refblock(block)
            self.log.append(("rc", block))  # (its refcounts change in the cache here)

    def _read_refblock(self, block: int) -> None:
        if block not in self.rb_cached and block < len(self.refblock_hosts):
            self.rb_cached.add(block)
            self.log.append(("r", self.refblock_hosts[block] * self.cs, self.cs, "rb", block))

    def load_l2(self, index: int) -> None:
        """The cache gets L2 table ``index`` (l2_load): read from the file if it is not there yet."""
        if index in self.l2_cached:
            return
        self.l2_cached.add(index)
        host = self.l2.look(index)
        if self.log is not None and host >= 0:
            self._ev("l2_load")
            self.log.append(("r", host * self.cs, self.cs, "l2", index))

    # -- what the file holds of the L2 tables the cache changed -----------------------------------
    def note_tables(self, c0: int | np.ndarray, c1: int | np.ndarray, frees: bool | np.ndarray = False) -> None:
        """Before a change of guest clusters ``[c0, c1)`` (ints, or arrays of ranges): the state of each of their L2
        tables that is clean in the cache, which the file holds as it is (a reader without QEMU's cache, qemu-img
        ``-U``, sees it until the table is written back: :mod:`bitlab.block.qcow2_disk`). A dirty table keeps the
        state noted before; where the change may write the L2 cache back (a new table, clusters freed, the
        refcount cache waiting for it, a new refcount block) its state now is noted too, in case the change leaves
        it dirty after a write-back (see :meth:`settle_tables`). ``frees``: the change may free clusters (an array:
        the values written, which free where one is below 0)."""
        if self.in_op:
            return
        self.settle_tables()
        per = self.per_l2
        if not isinstance(c0, np.ndarray):
            if c1 <= c0:
                return
            tables: list[int] = list(range(int(c0) // per, (int(c1) - 1) // per + 1))
        else:
            first, last = int(c0.min()) // per, (int(c1.max()) - 1) // per
            if last - first <= 1:  # (one table or two: both, touched or not)
                tables = list(range(first, last + 1))
            else:  # (a mask over the tables: a batch may hold a million requests)
                keep = c1 > c0
                t0, t1 = c0[keep] // per, (c1[keep] - 1) // per + 1
                mask = np.zeros(last + 1, dtype=bool)
                mask[t0] = True
                mask[t1 - 1] = True
                wide = t1 - t0 > 2
                if wide.any():
                    mask[range_items(t0[wide], t1[wide] - t0[wide])] = True
                tables = np.flatnonzero(mask).tolist()
        dirty, noted = self.dirty_l2, self.disk_tables
        before: list[int] = []
        may_write_back = None
        for index in tables:
            if index not in dirty or index not in noted:
                noted[index] = self._table_state(index)
                continue
            if may_write_back is None:
                if isinstance(frees, np.ndarray):
                    frees = bool((frees < 0).any())
                may_write_back = (frees or self.depends["rb"] is not None
                                  or self.l2_any_missing(tables[0], tables[-1])
                                  or self.may_reach_uncovered(int(np.sum(np.asarray(c1) - np.asarray(c0)))
                                                              + len(tables) + 1))
            if may_write_back:
                before.append(index)
        self.disk_op = (before, [self._table_state(i) for i in before], self.l2_writebacks)
        self.cut_noted.clear()

    def _note_cut(self, after: np.ndarray, data: tuple[np.ndarray, ...], zeros: tuple[np.ndarray, ...]) -> None:
        """A batch writes the L2 cache back for a new table after its data clusters ``data`` (guest clusters
        ``(starts, ends)``) linked and its zero writes ``zeros`` (``(lo, hi, flag)``) set their zero flags, while
        the rest of it changes the L2 tables ``after`` later: each of those dirty now is held by the file as it
        was before the batch with those links and flags (it is dirty again once the rest changes it)."""
        per = self.per_l2
        op = self.disk_op
        before = {} if op is None else dict(zip(op[0], op[1]))
        starts, ends = data
        z_lo, z_hi, z_flag = zeros
        for index in sorted(set(after.tolist()) & self.dirty_l2):
            lo = index * per
            hi = min(lo + per, self.guest.size)
            linked, zeroed = (starts < hi) & (ends > lo), (z_lo < hi) & (z_hi > lo)
            if not linked.any() and not zeroed.any():
                continue  # (held as before the batch: note_tables and settle_tables)
            if index in before:
                state = before[index]
            else:
                state = self.disk_tables[index] if index in self.disk_tables else self._table_state(index)
            if state is None:
                state = empty_table(lo, hi)
            (g_s, g_e, g_v), (f_s, f_e, f_v), content, compressed = state
            runs, flags = ExtentMap(hi - lo, fill=NONE), ExtentMap(hi - lo, fill=0)
            runs.write_batch(g_s - lo, g_e - g_s, g_v)
            flags.write_batch(f_s - lo, f_e - f_s, f_v)
            if linked.any():
                p_s, p_e, p_v, _ = self.guest.gather(np.maximum(starts[linked], lo), np.minimum(ends[linked], hi))
                runs.write_batch(p_s - lo, p_e - p_s, p_v)
                flags.write_batch(p_s - lo, p_e - p_s, np.zeros(p_s.size, dtype=np.int64))
            if zeroed.any():
                a, b = np.maximum(z_lo[zeroed], lo) - lo, np.minimum(z_hi[zeroed], hi) - lo
                flags.write_batch(a, b - a, z_flag[zeroed])
            if content is None and self.read_content is not None:
                content = self._content(lo * self.cs, min(hi * self.cs, self.size))
            (r_s, r_e, r_v), (q_s, q_e, q_v) = _runs_with_ends(runs), _runs_with_ends(flags)
            state = ((r_s + lo, r_e + lo, r_v), (q_s + lo, q_e + lo, q_v), content, compressed)
            self.disk_tables[index] = state
            self.cut_noted.add(index)

    def settle_tables(self) -> None:
        """The last change noted is over: a table that was dirty before it and that the change wrote back and left
        dirty again is held by the file as it was before the change (as near as bitlab tells: a batch's requests
        all count as one)."""
        op, self.disk_op = self.disk_op, None
        if op is None:
            return
        tables, states, writebacks = op
        if self.l2_writebacks != writebacks:
            for index, state in zip(tables, states):
                if index in self.dirty_l2 and index not in self.cut_noted:
                    self.disk_tables[index] = state
        if len(self.disk_tables) > 2 * len(self.dirty_l2) + 64:  # (forget the tables written back since)
            self.disk_tables = {i: v for i, v in self.disk_tables.items() if i in self.dirty_l2}

    def stale_tables(self) -> dict[int, TableState | None]:
        """The L2 tables the file holds otherwise than the cache (dirty, noted): their state there."""
        self.settle_tables()
        dirty = self.dirty_l2
        return {i: v for i, v in self.disk_tables.items() if i in dirty}

    def _table_state(self, index: int) -> TableState | None:
        """L2 table ``index`` as it is now (None: nothing in it, no cluster allocated or zero)."""
        lo = index * self.per_l2
        n = min(self.per_l2, self.guest.size - lo)
        if n <= 0:
            return None
        _, g_vals = self.guest.runs()
        flags = self._flags_any()
        if g_vals.size == 1 and g_vals[0] == NONE and not flags:  # (nothing hosted anywhere: a new image, say)
            return None
        guest = self.guest.extents(lo, n)
        hosted = bool((guest[2] != NONE).any())
        if not hosted and not flags:
            return None
        zero = self.zero_flag.extents(lo, n) if flags else _no_flags(lo, lo + n)
        content = None
        if hosted and self.read_content is not None:
            content = self._content(lo * self.cs, min((lo + n) * self.cs, self.size))
        return guest, zero, content, self.any_compressed and self.compressed_in(lo, lo + n)

    def _content(self, lo: int, hi: int) -> Runs | Overlaid:
        """Guest bytes ``[lo, hi)``: the content map's runs, with the writes of the batch under way that the layout
        has taken already (the map merges the batch only after the layout took all of it)."""
        assert self.read_content is not None
        runs = self.read_content(lo, hi)
        if self.merging is None or not self.merged:
            return runs
        offsets, ends, values = (a[:self.merged] for a in self.merging)
        meet = (offsets < hi) & (ends > lo)
        if not meet.any():
            return runs
        return Overlaid(runs, (np.maximum(offsets[meet], lo), np.minimum(ends[meet], hi), values[meet]))

    # -- free space ---------------------------------------------------------------------------
    def _free_runs(self) -> tuple[np.ndarray, np.ndarray]:
        s, e, v = _runs_with_ends(self.free)
        return s[v == FREE], e[v == FREE]

    def has_holes(self) -> bool:
        """Whether the next clusters allocated might not be the file's tail: free host clusters lie before
        the file's end, or free_cluster_index is past it (a shrink cut the file below clusters it freed
        after the index had moved on: QEMU then allocates from the index, leaving a hole)."""
        starts, vals = self.free.runs()
        # (a few runs, the usual case, counted in plain integers)
        free = vals.tolist().count(FREE) if vals.size <= SMALL_RUNS else int(np.count_nonzero(vals == FREE))
        return free > 1 or int(starts[-1]) < self.top or self.fci > self.top

    def _take(self, start: int, n: int, counted: bool = True) -> None:
        self.free.write(start, n, USED)
        if start + n > self.top:
            self.top, self.partial_end = start + n, None
        elif start + n == self.top:  # the file's partly written last cluster, freed and taken again: written whole
            self.partial_end = None
        self.grown = True
        if counted:
            self._refcounts_changed_range(start, start + n)

    def _refcounts_changed(self, starts: np.ndarray, ends: np.ndarray) -> None:
        """The refcount blocks covering host clusters ``[starts, ends)`` become dirty in the cache."""
        self.rc_since.append((starts, ends))
        if len(self.rc_since) > 256:
            self.flipped()  # (kept short)
        span = self.refblock_span
        first, last = starts // span, (ends - 1) // span
        n = last - first + 1
        if n.size and int(n.max()) == 1:
            self.dirty_refblocks.update(first.tolist())
            self.rb_cached.update(first.tolist())
            return
        for a, b in zip(first.tolist(), last.tolist()):  # (a range over several refcount blocks)
            self.dirty_refblocks.update(range(a, b + 1))
            self.rb_cached.update(range(a, b + 1))

    # -- metadata writes (the qcow2 caches) -----------------------------------------------------
    def _write(self, offsets: Ints, lengths: Ints, kind: str = "", keys: list | None = None) -> None:
        """Metadata writes at host byte ``offsets`` of ``lengths`` (lists of ints or int64 arrays, kept as they
        are: most are dropped unread, and :meth:`drain_written` and :meth:`fs_blocks` make arrays of the rest)."""
        if len(offsets):
            # (shared with _fs_marks: neither list's entries are changed in place, only concatenated)
            self.written.append((offsets, lengths))
            self._fs_marks.append((offsets, lengths))
            if len(self._fs_marks) > MAX_FS_MARKS:
                self.fs_blocks()
            if self.log is not None:
                offs, lens = _ints(offsets), _ints(lengths)
                for i, (off, n) in enumerate(zip(offs, lens)):
                    self.log.append(("w", off, n, kind, None if keys is None else keys[i]))

    def _flush_cache(self, which: str, sync: bool = True) -> None:
        """qcow2_cache_flush of the L2 table cache (``l2``) or the refcount block cache (``rb``): the
        cache it depends on first, if it has a dirty entry (qcow2_cache_entry_flush), then the file
        flushed (not for ``sync`` False: qcow2_cache_write alone)."""
        dirty = self.dirty_l2 if which == "l2" else self.dirty_refblocks
        dep = self.depends[which]
        if dep is not None and dirty:
            self.depends[which] = None
            if self.log is not None:
                self.log.append(("dep", which, dep))  # (a failure before "dep-done" leaves the dependency)
            self._flush_cache(dep)
            if self.log is not None:
                self.log.append(("dep-done",))
        if which == "l2":
            self._write_back_l2()
        else:
            self._write_back_refblocks()
        if self.log is not None:
            self.log.append(("end", which))  # (qcow2_cache_write writes every entry, then fails)
            if sync:
                self.log.append(("f",))

    def _set_dependency(self, cache: str, dependency: str) -> None:
        """qcow2_cache_set_dependency: ``cache`` is written only after ``dependency``; a dependency the
        other way round is flushed first."""
        if self.log is not None:  # (qcow2 goes on whether these flushes fail or not)
            self.log.append(("soft", 1))
        if self.depends[dependency] is not None:
            self.depends[dependency], dep = None, self.depends[dependency]
            self._flush_cache(dep)
        if self.depends[cache] not in (None, dependency):
            self.depends[cache], dep = None, self.depends[cache]
            self._flush_cache(dep)
        self.depends[cache] = dependency
        if self.log is not None:
            self.log.append(("soft", -1))

    def _write_back_refblocks(self) -> None:
        """The refcount block cache written: each dirty block whole."""
        if not self.dirty_refblocks:
            return
        known, cs = self.refblock_hosts, self.cs
        blocks = sorted(self.dirty_refblocks)
        if blocks[-1] >= len(known):  # (blocks without a host cluster yet are left out)
            blocks = [i for i in blocks if i < len(known)]
        self.dirty_refblocks.clear()
        self.rc_since = []
        if self.log is not None:
            for block in blocks:
                self._ev("refblock_update_part")
                self._write([known[block] * cs], [cs], "rb", [block])
            return
        self._write([known[i] * cs for i in blocks], [cs] * len(blocks))

    def _write_back_l2(self) -> None:
        """The L2 table cache written: each dirty table whole."""
        if not self.dirty_l2:
            return
        self.l2_writebacks += 1
        if self.log is not None:
            for index in sorted(self.dirty_l2):
                host = self.l2.look(index)
                if host >= 0:
                    self._ev("l2_update")
                    self._write([host * self.cs], [self.cs], "l2", [index])
            self.dirty_l2.clear()
            return
        if len(self.dirty_l2) <= SMALL_BATCH:  # a few tables: looked up one by one
            found = [self.l2.look(i) for i in sorted(self.dirty_l2)]  # (the tables just allocated stay pending)
            offsets: Ints = [h * self.cs for h in found if h >= 0]
        else:
            index = np.array(sorted(self.dirty_l2), dtype=np.int64)
            _, _, hosts, _ = self.l2.gather(index, index + 1)
            offsets = hosts[hosts >= 0] * self.cs
        self.dirty_l2.clear()
        self._write(offsets, [self.cs] * len(offsets))

    def flush(self) -> None:
        """qcow2_write_caches: the L2 table cache, then the refcount block cache (each after the one it
        depends on)."""
        self._flush_cache("l2", sync=False)
        self._flush_cache("rb", sync=False)

    def _l2_allocate(self, index: int) -> None:
        """l2_allocate: a cluster for the table, the refcount block cache flushed, the new table written
        with every other dirty one (the L2 cache flushed), then its L1 entry (8 bytes, written at once and
        flushed: bdrv_pwrite_sync)."""
        if self.log is not None:
            self.log.append(("mark", "table", index))  # (a failure from here on frees its cluster again)
        host = self.alloc(1)
        if self.log is not None:
            self.log.append(("mark", "table", host))
        self.l2.write(index, 1, host)
        self._flush_cache("rb")
        self.dirty_l2.add(index)
        self.l2_cached.add(index)
        self._ev("l2_alloc_write")
        self._flush_cache("l2")
        self._ev("l1_update")
        self._write([self.l1_offset + 8 * index], [8], "l1", [index])
        self.stale_l1.discard(index)
        if self.log is not None:
            self.log += [("f",), ("mark", "end")]

    def free_again(self, host: int, n: int, discard: bool) -> None:
        """A recorder's steps of qcow2_free_clusters of host clusters ``[host, host + n)`` that an operation took
        and gives back after a failure (the layout itself is as before the operation): ``cluster_free``, the
        dependency flush, the refcount block's events, then (``discard``: QCOW2_DISCARD_ALWAYS, an L2 table's)
        the discard of the clusters."""
        self._ev("cluster_free")
        self._set_dependency("rb", "l2")
        self._refcount_events(host, host + n)
        if discard:
            self.log.append(("d", host * self.cs, n * self.cs))

    def drain_discarded(self, ordered: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The discards qcow2 passed to the file for the data clusters freed since the last call: host byte
        offsets and lengths, one per stretch adjacent on the host that one request freed (qcow2_process_discards:
        each entry of ``discarded`` is a request's, whose stretches are merged). In host order, or ``ordered``
        (for a write threshold on the file, which sees them one by one) in the order of qcow2's list of
        discards (:func:`_discard_list`)."""
        if not self.discarded:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        merged = [(_discard_list if ordered else _merged)(*d) for d in self.discarded]
        starts = np.concatenate([m[0] for m in merged])
        ends = np.concatenate([m[1] for m in merged])
        self.discarded.clear()
        return starts * self.cs, (ends - starts) * self.cs

    def forget_writes(self) -> None:
        """The file is opened anew: the metadata writes and discards made before are no file node's to hear."""
        self.written.clear()
        self.discarded.clear()

    def drain_written_end(self) -> int:
        """:meth:`drain_written` for a reader of their highest end only (0 without any): no arrays made."""
        end = 0
        for offsets, lengths in self.written:
            if type(offsets) is list and type(lengths) is list:  # (a few ints: no numpy)
                for o, n in zip(offsets, lengths):
                    if o + n > end:
                        end = o + n
            else:
                end = max(end, int((np.asarray(offsets, dtype=np.int64) + np.asarray(lengths, dtype=np.int64)).max()))
        self.written.clear()
        return end

    def drain_written(self) -> tuple[np.ndarray, np.ndarray]:
        """The metadata writes since the last call: (host byte offsets, lengths)."""
        if not self.written:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        offsets = np.concatenate([np.asarray(w[0], dtype=np.int64) for w in self.written])
        lengths = np.concatenate([np.asarray(w[1], dtype=np.int64) for w in self.written])
        self.written.clear()
        return offsets, lengths

    def may_reach_uncovered(self, clusters: int) -> bool:
        """Whether ``clusters`` more host clusters from the file's end may need a new refcount block."""
        return self.top + clusters > self.refblocks * self.refblock_span

    def _refblocks_for(self, start: int, end: int) -> bool:
        """New refcount blocks for an allocation ``[start, end)`` (its clusters counted): each the first free
        cluster from ``end`` on (alloc_refcount_block, then the allocation is retried in place: the clusters
        past those the blocks covered are counted again after the caches' write-back, the file's new block
        holding them free). True where a block did not fit into the refcount table, which then grew: the
        allocation is to be tried again (free_cluster_index lowered by the old table's clusters)."""
        while end > self.refblocks * self.refblock_span:
            covered = self.refblocks * self.refblock_span
            fs, fe = self._free_runs()
            i = int(np.searchsorted(fe, end, "right"))
            block = max(int(fs[i]), end)
            self._hook_refblock(block)
            self._take(block, 1, counted=False)
            if covered > start:  # (counted down and up again: dirty, as the file has them)
                self._refcounts_changed_range(start, covered)
                self._refcounts_changed_range(start, covered)
            self._refcounts_changed_range(covered, end)
            self.refblocks = len(self.refblock_hosts)
            if self._table_full():
                self._grow_reftable(self.refblocks - 1, block)
                return True
        return False

    def _table_full(self) -> bool:
        """Whether the refcount blocks have outgrown the refcount table (the last one has no entry)."""
        return len(self.refblock_hosts) > self.reftable[1] * self.cs // 8

    def _hook_refblock(self, host: int, write_back: bool = True) -> None:
        """A new refcount block at host cluster ``host`` (alloc_refcount_block): the L2 table cache written
        back (the refcount table is written next), the block (counting itself) written with every dirty one
        (the refcount block cache flushed), then its refcount table entry (8 bytes, at once, where the refcount
        table has room: else it grows, :meth:`_grow_reftable`). ``write_back``
        False: a batch's, whose caches :meth:`_batch_tables` writes back at its last cut."""
        if write_back:
            self._flush_cache("l2")
        index = len(self.refblock_hosts)
        self.refblock_hosts.append(host)
        self.rb_cached.add(index)
        if self.log is not None:
            self.log.append(("new-refblock", index))  # (not simulated for blkdebug: see qcow2 nodes)
        if write_back:
            self.dirty_refblocks.add(index)
            self._flush_cache("rb")
        else:  # (written at once, whole)
            self._write([host * self.cs], [self.cs])
        table, clusters = self.reftable
        if index < clusters * self.cs // 8:
            self._write([table * self.cs + 8 * index], [8], "reftable", [index])

    def _first_fit(self, n: int) -> int:
        """The first host cluster of the first ``n`` free ones in a row from free_cluster_index (the free map
        ends with free space: there is one). A few free runs are looked at in plain ints."""
        starts, vals = self.free.runs()
        if starts.size > SMALL_RUNS:
            return self._first_fit_general(n)
        fci = self.fci
        for a, b, v in zip(starts.tolist(), starts[1:].tolist() + [self.free.size], vals.tolist()):
            if v == FREE:
                a = a if a > fci else fci
                if b - a >= n:
                    return a
        raise AssertionError("no free space left")  # (the map's last run is free, up to HOST_SPACE)

    def _first_fit_general(self, n: int) -> int:
        """:meth:`_first_fit` in numpy."""
        fs, fe = self._free_runs()
        i = int(np.searchsorted(fe, self.fci, "right"))
        start = np.maximum(fs[i:], self.fci)
        fit = np.flatnonzero(fe[i:] - start >= n)
        return int(start[fit[0]])

    def alloc(self, n: int) -> int:
        """alloc_clusters_noref: the first ``n`` free clusters in a row from free_cluster_index. The discards a
        request freeing clusters has cached so far are passed first (they may be for these clusters), after
        qcow2_alloc_clusters fired ``cluster_alloc``."""
        self._ev("cluster_alloc")  # (qcow2_alloc_clusters)
        if self.cached_from is not None:
            self._pass_cached()
        pos = self._first_fit(n)
        self._refcount_events(pos, pos + n, scanned=self.fci)
        self._take(pos, n)
        self.fci = pos + n
        if self._refblocks_for(pos, pos + n):  # (-EAGAIN after the table grew: counted down, searched again)
            self.free.write(pos, n, FREE)
            self._refcounts_changed_range(pos, pos + n)
            self.fci = min(self.fci, pos)
            return self.alloc(n)
        return pos

    def alloc_at(self, pos: int, n: int) -> int:
        """qcow2_alloc_clusters_at: as many of ``n`` clusters from ``pos`` on as are free."""
        fs, fe = self._free_runs()
        i = int(np.searchsorted(fe, pos, "right"))
        if i >= fs.size or fs[i] > pos:
            return 0
        k = min(n, int(fe[i]) - pos)
        self._refcount_events(pos, pos + k, scanned=pos)
        span = self.refblock_span
        while pos + k > self.refblocks * span:  # update_refcount reaches an uncovered cluster: -EAGAIN
            covered = self.refblocks * span
            # alloc_refcount_block: the first free cluster from free_cluster_index, the clusters counted so
            # far ([pos, covered)) in use; they are counted down again (lowering the index), then retried
            j = int(np.searchsorted(fe, self.fci, "right"))
            at = max(int(fs[j]), self.fci)
            if pos <= at < covered:
                at = covered
            if covered > pos:  # (counted when the caches are written back, counted down and up again after)
                self._take(pos, covered - pos)
            self._hook_refblock(at)
            self._take(at, 1, counted=False)
            if covered > pos:
                self._refcounts_changed_range(pos, covered)
            self.refblocks = len(self.refblock_hosts)
            self.fci = min(at + 1, pos) if covered > pos else at + 1
            if pos <= at < pos + k:
                k = at - pos
            if self._table_full():  # (the new table and blocks may lie inside what was free)
                self._grow_reftable(self.refblocks - 1, at)
                fs, fe = self._free_runs()
                i = int(np.searchsorted(fe, pos, "right"))
                k = min(k, int(fe[i]) - pos) if i < fs.size and fs[i] <= pos else 0
            fs, fe = self._free_runs()
        if k:
            self._take(pos, k)
        return k

    def release(self, starts: np.ndarray, ends: np.ndarray) -> None:
        """Host clusters ``[starts, ends)`` lose their last reference."""
        keep = ends > starts
        if not keep.any():
            return
        starts, ends = starts[keep], ends[keep]
        self.fs_plain = False
        if self.log is not None:  # qcow2_free_clusters for each cluster (qcow2_free_any_cluster)
            self._ev("cluster_free")
            self.log.append(("soft", 1))  # (qcow2_free_clusters ignores update_refcount's failure)
        self._set_dependency("rb", "l2")  # update_refcount, decreasing
        if self.log is not None:
            first = int(starts[0])
            self._refcount_events(first, first + 1)
            for a, b in zip(starts.tolist(), ends.tolist()):  # (the other blocks they meet, read once)
                for block in range(a // self.refblock_span, (b - 1) // self.refblock_span + 1):
                    self._read_refblock(block)
                    self.log.append(("rc", block))
            n = int((ends - starts).sum())
            if n > 1:
                self.log.append(("seq", ("cluster_free", "refblock_alloc", "refblock_load"), n - 1))
            self.log.append(("soft", -1))
        self.free.write_batch(starts, ends - starts, FREE)
        self._refcounts_changed(starts, ends)
        self.fci = min(self.fci, int(starts.min()))

    def reopen(self) -> None:
        """The image is opened again: free_cluster_index starts at 0, the caches empty (whoever had it open
        before wrote them back on closing it, as qemu-img does)."""
        self.fci = 0
        self.free_byte_offset = 0
        self.dirty_l2.clear()
        self.dirty_refblocks.clear()
        self.depends = {"l2": None, "rb": None}
        self.l2_cached.clear()
        self.rb_cached.clear()
        self.disk_tables, self.disk_op, self.rc_since = {}, None, []  # (the file as the cache has it)

    # -- L2 tables ------------------------------------------------------------------------
    def l2_missing(self, lo: int, hi: int) -> np.ndarray:
        """The L2 tables of ``[lo, hi]`` (indices) that do not exist."""
        s, e, v = self.l2.extents(lo, hi + 1 - lo)
        none = v < 0
        n = e[none] - s[none]
        return np.repeat(s[none], n) + np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)

    def l2_any_missing(self, lo: int, hi: int) -> bool:
        """Whether an L2 table of ``[lo, hi]`` (indices) does not exist (:meth:`l2_missing` not empty)."""
        return bool((self.l2.extents(lo, hi + 1 - lo)[2] < 0).any())

    def touch_l2(self, c0: int, c1: int) -> None:
        """get_cluster_table for guest clusters ``[c0, c1)``: L2 tables where there are none."""
        if c1 <= c0:
            return
        for index in self.l2_missing(c0 // self.per_l2, (c1 - 1) // self.per_l2).tolist():
            self._l2_allocate(index)

    def tables_used(self, c0: int, c1: int) -> None:
        """Guest clusters ``[c0, c1)`` were looked up without a recorder (their L2 tables are in the cache now)."""
        if c1 > c0:
            self.l2_cached.update(range(c0 // self.per_l2, (c1 - 1) // self.per_l2 + 1))

    # -- guest clusters ---------------------------------------------------------------------
    def hosted(self, c0: int = 0, c1: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Runs of guest clusters in ``[c0, c1)`` holding a host cluster: (starts, ends, host - guest)."""
        s, e, v = self.guest.extents(c0, None if c1 is None else c1 - c0)
        keep = v != NONE
        return s[keep], e[keep], v[keep]

    def host_pieces(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Guest byte ranges ``[lo, hi)`` where they have host clusters, one piece per stretch of
        contiguous host clusters (as qcow2_co_preadv_part/pwritev_part split a request), in order:
        (range index, host byte offset, length)."""
        cs = self.cs
        lo, hi = np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64)
        keep = np.flatnonzero(hi > lo)
        if not keep.size:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        lo, hi = lo[keep], hi[keep]
        c_lo, c_hi = int(lo.min()) // cs, -(-int(hi.max()) // cs)
        rs, re, rv = self.guest.extents(c_lo, c_hi - c_lo)
        bounds = rs[1:] * cs
        a = np.searchsorted(bounds, lo, "right")
        n = np.searchsorted(bounds, hi, "left") - a + 1  # pieces of each range
        idx = np.repeat(np.arange(lo.size), n)
        k = np.arange(idx.size) - np.repeat(np.cumsum(n) - n, n)
        run = np.repeat(a, n) + k
        ps = np.where(k == 0, lo[idx], rs[run] * cs)
        pe = np.minimum(re[run] * cs, hi[idx])
        val = rv[run]
        hosted = val != NONE
        return keep[idx[hosted]], (ps + val * cs)[hosted], (pe - ps)[hosted]

    def _request(self, c0: int, c1: int) -> None:
        """A data write over guest clusters ``[c0, c1)``, one L2 table after another. A recorder (``log``) also
        gets the request's pieces: markers for its clusters ("data", first, end, "new"/"copied"/"zero"), and
        "piece-end" where qcow2_alloc_host_offset stops gathering a piece contiguous on the host (its task
        writes the data next). A piece's task links its clusters once its data is written and qcow2's lock is free:
        after the request's last allocation, or (the recorder aside) when the allocation of a piece two or more
        after it waited for I/O (a new L2 table) ends, before the next piece's (qcow2_co_pwritev_part holds the
        lock while it allocates a piece; when the data writes complete is the host's timing: measured at 512-byte
        clusters, pieces of new tables each, this is QEMU's choice for 3, 5, 6 and 7 of them, one task fewer than
        QEMU's for 4 and 8)."""
        self.note_tables(c0, c1)
        expected = -1
        flags = self._flags_any()
        log = self.log
        links: list[int] = []  # (the tables of the pieces whose task has not linked yet)
        piece = False  # (a recorder's: a piece is open, its task not started)
        for index in range(c0 // self.per_l2, (c1 - 1) // self.per_l2 + 1):
            lo, hi = max(c0, index * self.per_l2), min(c1, (index + 1) * self.per_l2)
            yielded = False
            if self.l2.look(index) < 0:
                self._l2_allocate(index)
                yielded = True
            elif log is not None:
                self.load_l2(index)
            s, e, v = self.guest.extents(lo, hi - lo)
            # new clusters, or zero clusters keeping theirs: their L2 entries change (qcow2_alloc_cluster_link_l2)
            linked = bool((v == NONE).any()) or flags and bool(self.zero_flag.extents(lo, hi - lo)[2].any())
            for a, b, d in zip(s.tolist(), e.tolist(), v.tolist()):
                if d != NONE:  # written in place (COPIED)
                    if log is not None:
                        if piece and expected != a + d:  # (the host offset jumps: the piece ends)
                            log.append(("piece-end",))
                        self._log_copied(a, b)
                        piece = True
                    expected = a + d + (b - a)
                    continue
                while b > a:
                    if expected >= 0:  # (qcow2_alloc_clusters_at, where the piece goes on)
                        k = self.alloc_at(expected, b - a)
                        if k:
                            self.guest.write(a, k, expected - a)
                            if log is not None:
                                log.append(("data", a, a + k, "new"))
                            a += k
                            expected += k
                            continue
                    if log is not None and piece:
                        log.append(("piece-end",))
                    pos = self.alloc(b - a)
                    self.guest.write(a, b - a, pos - a)
                    if log is not None:
                        log.append(("data", a, b, "new"))
                        piece = True
                    expected = pos + (b - a)
                    a = b
            if yielded and links and log is None and links[0] <= index - 2:
                # (the tasks of the pieces two or more before this one wrote their data while l2_allocate waited for
                # I/O: each links once this piece's allocation lets go of the lock, before the next piece's)
                ready = [t for t in links if t <= index - 2]
                self._link(ready)
                links = links[len(ready):]
            if linked:
                links.append(index)
        if piece:
            log.append(("piece-end",))
        if links:  # (the last pieces' tasks link them after the last allocation: a later table's l2_allocate wrote
            # the cache back before they did)
            if log is not None:
                log.append(("links", 1))  # (qcow2_alloc_cluster_link_l2 runs in a task whose data was written)
            self._link(links)
            if log is not None:
                log.append(("links", -1))
        if flags:
            self.zero_flag.write(c0, c1 - c0, 0)
        if self.any_compressed:  # (qcow2_alloc_cluster_link_l2 frees the old entries: QCOW2_DISCARD_NEVER)
            self.free_compressed(c0, c1, discard=False)

    def _link(self, tables: list[int]) -> None:
        """qcow2_alloc_cluster_link_l2 of a request's pieces in these L2 tables: each dirty in the cache, which
        then waits for the refcount blocks."""
        for index in tables:
            self._set_dependency("l2", "rb")
            self.dirty_l2.add(index)

    def _log_copied(self, a: int, b: int) -> None:
        """A recorder's markers for hosted clusters ``[a, b)`` written in place: zero clusters keeping their host
        cluster ("zero") apart, their task treats them as new ones (keep_old_clusters, copy-on-write)."""
        zs, ze, zv = self.zero_flag.extents(a, b - a)
        for za, zb, z in zip(zs.tolist(), ze.tolist(), zv.tolist()):
            self.log.append(("data", za, zb, "zero" if z else "copied"))

    def _flags_any(self) -> bool:
        """Whether any guest cluster is a zero cluster (its L2 entry has the zero flag)."""
        _, vals = self.zero_flag.runs()
        return vals.size > 1 or bool(vals[0])

    def zero_request(self, c0: int, c1: int, f0: int, f1: int, value: int = ZERO) -> None:
        """A zero write over guest clusters ``[c0, c1)``, table by table: an L2 table where missing; the
        host clusters of ``[f0, f1)`` (the clusters it covers whole) freed, unless ``value`` (the content it
        leaves: zero clusters, ones keeping their host cluster, or unallocated clusters as in a v2 image)
        keeps them; the table changed (dirty in the cache) where an entry changes, its zero flag or its host
        cluster (zero_in_l2_slice and discard_in_l2_slice leave an entry that stays, and its table, alone)."""
        self.note_tables(c0, c1, frees=True)
        flag = int(value != UNALLOCATED)
        self.cached_from = len(self.discarded)
        last = self.size // self.cs if self.size % self.cs else -1  # a partial last cluster
        for index in range(c0 // self.per_l2, (c1 - 1) // self.per_l2 + 1):
            lo, hi = max(c0, index * self.per_l2), min(c1, (index + 1) * self.per_l2)
            if self.l2.look(index) < 0:
                self._l2_allocate(index)
            elif self.log is not None:
                self.load_l2(index)
            a, b = max(lo, f0), min(hi, f1)
            frees = b > a and value != ZERO_ALLOC and bool(self.hosted(a, b)[0].size)
            compressed = b > a and self.compressed_in(a, b)  # (zero_in_l2_slice unmaps them always)
            if frees or compressed or bool((self.zero_flag.extents(lo, hi - lo)[2] != flag).any()):
                self.dirty_l2.add(index)
            if compressed:
                self.free_compressed(a, b, discard=True)
            if frees:
                if a < last < b:  # the block layer sends the disk's partial last cluster as a request of its own
                    self.unhost(a, last)
                    self._pass_cached()
                    a = last
                self.unhost(a, b)
        self._pass_cached(end=True)
        self.zero_flag.write(c0, c1 - c0, flag)

    def _pass_cached(self, end: bool = False) -> None:
        """qcow2_process_discards: a request freeing clusters caches their discards (s->cache_discards) and merges
        those adjacent on the host (update_refcount_discard); it passes them on at its ``end``, or before it
        allocates a cluster (a new L2 table: alloc_clusters_noref). Those passed together make one entry of
        ``discarded``; a recorder (``log``) gets them where they are passed instead: ``("d", offset, length)``,
        whose failure qcow2 ignores (a request that fails later does not take them back)."""
        mark = self.cached_from
        assert mark is not None
        if len(self.discarded) > mark + 1:
            new = self.discarded[mark:]
            self.discarded[mark:] = [(np.concatenate([d[0] for d in new]), np.concatenate([d[1] for d in new]))]
        if self.log is not None and len(self.discarded) > mark:
            starts, ends = _merged(*self.discarded.pop())
            self.log += [("d", a * self.cs, (b - a) * self.cs) for a, b in zip(starts.tolist(), ends.tolist())]
        self.cached_from = None if end else len(self.discarded)

    def discard(self, c0: int, c1: int, zero: str = "none") -> None:
        """qcow2_cluster_discard over guest clusters ``[c0, c1)``, before the content it leaves is written:
        table by table, an L2 table where missing, and the clusters holding host clusters changed and
        freed. ``zero``: which entries become zero clusters in the same step (discard_in_l2_slice, before the
        next table's allocation may flush the L2 cache): "hosted" (a v3 image), "all" (one with a backing
        file), "none" (a v2 image, a full discard); the content's zero write then changes nothing more."""
        self.note_tables(c0, c1, frees=True)
        self.cached_from = len(self.discarded)
        for index in range(c0 // self.per_l2, (c1 - 1) // self.per_l2 + 1):
            lo, hi = max(c0, index * self.per_l2), min(c1, (index + 1) * self.per_l2)
            if self.l2.look(index) < 0:
                self._l2_allocate(index)
            elif self.log is not None:
                self.load_l2(index)
            hs, he, _ = self.hosted(lo, hi)
            zs, ze, compressed = hs, he, False
            if self.any_compressed:  # (allocated too: a zero cluster where one was, freed the same way)
                c_s, c_e = self.compressed_runs(lo, hi)
                compressed = bool(c_s.size)
                order = np.argsort(np.concatenate((hs, c_s)))
                zs, ze = np.concatenate((hs, c_s))[order], np.concatenate((he, c_e))[order]
            changed = bool(zs.size)
            if zero == "all":
                changed = changed or bool((self.zero_flag.extents(lo, hi - lo)[2] != 1).any())
                self.zero_flag.write(lo, hi - lo, 1)
            elif zero == "hosted" and zs.size:
                self.zero_flag.write_batch(zs, ze - zs, 1)
            if changed:
                self.dirty_l2.add(index)
            if hs.size:
                self.unhost(lo, hi)
            if compressed:
                self.free_compressed(lo, hi, discard=True)
        self._pass_cached(end=True)

    def unhost(self, lo: int, hi: int) -> None:
        """Guest clusters ``[lo, hi)`` drop their host clusters."""
        s, e, v = self.hosted(lo, hi)
        if s.size:
            if self.on_unhost is not None:
                self.on_unhost(lo, hi)
            self.fs_plain = False
            self.cow_written.write(lo, hi - lo, 0)
            self.guest.write(lo, hi - lo, NONE)
            self.release(s + v, e + v)
            self.discarded.append((s + v, e + v))

    # -- a batch of content writes ----------------------------------------------------------
    def before_merge(self, offsets: np.ndarray, ends: np.ndarray, values: np.ndarray) -> None:
        """Content writes ``[offsets, ends)`` of ``values`` (bytes, in order) reach the image (``one_request``:
        data writes side by side that are one request's)."""
        cs = self.cs
        self.note_tables(offsets // cs, -(-ends // cs), values)
        self.in_op = True
        self.merging, self.merged = (offsets, ends, values), 0
        try:
            self._merge(offsets, ends, values)
        finally:
            self.in_op = False
            self.merging = None

    def _merge(self, offsets: np.ndarray, ends: np.ndarray, values: np.ndarray) -> None:
        """:meth:`before_merge`'s work."""
        cs = self.cs
        if self.one_request:
            self._request(int(offsets.min()) // cs, -(-int(ends.max()) // cs))
            return
        if self.log is not None or self.any_compressed and self.compressed_in(int(offsets.min()) // cs,
                                                                               -(-int(ends.max()) // cs)):
            # (a recorder sees every request's own steps; compressed clusters are freed request by request)
            for o, e, v in zip(offsets.tolist(), ends.tolist(), values.tolist()):
                if v >= 0:
                    self._request(o // cs, -(-e // cs))
                else:
                    f0 = -(-o // cs)
                    f1 = -(-e // cs) if e >= self.size else e // cs
                    self.zero_request(o // cs, -(-e // cs), f0, f1, v)
            return
        if offsets.size <= SMALL_ZERO_BATCH:  # a few requests: plain integers where numpy's fixed cost dominates
            vals = values.tolist()
            zeros = min(vals) < 0
            if not zeros:
                small = len(vals) <= SMALL_BATCH
            else:  # zero writes alone into an image hosting nothing: they free nothing
                _, g_vals = self.guest.runs()
                small = max(vals) < 0 and g_vals.size == 1 and g_vals[0] == NONE
            if small and not zeros and any((e - 1) // (cs * self.per_l2) - o // (cs * self.per_l2) > 1
                                           for o, e in zip(offsets.tolist(), ends.tolist())):
                small = False  # (a request over three L2 tables or more: its first tasks link before it ends)
            if small and not self.has_holes():
                reqs = _back_to_back(offsets // cs, -(-ends // cs), values, vals) if zeros and len(vals) > 1 else None
                if reqs is None:
                    reqs = [(o // cs, -(-e // cs), v) for o, e, v in zip(offsets.tolist(), ends.tolist(), vals)]
                if self._small_batch(reqs):
                    return
        c0, c1 = offsets // cs, -(-ends // cs)
        data = values >= 0
        zeroing = ~data  # zero clusters (keeping their host cluster or not), unallocated ones
        single = self._links_in_place(c0, c1, data)  # requests that go one by one
        if not zeroing.any():
            if not single.any() and not self.has_holes() and self._below_table(c0, c1, data) == c0.size:
                self._batch(c0, c1, data, zeroing)
                return
            f0 = f1 = c0
        else:
            f0 = -(-offsets // cs)  # the clusters a zero write covers whole
            f1 = np.where(ends >= self.size, c1, ends // cs)
            frees = zeroing & (values != ZERO_ALLOC) & (f1 > f0)
            if frees.any():
                frees &= self._may_free(f0, f1, c0[data], c1[data])
            # a zero write after another write over its clusters, a data write after a zero write over
            # its: what the entries held before it depends on the order
            single |= frees | _covered_before(c0, c1, np.ones(c0.size, dtype=bool)) & zeroing
            single |= _covered_before(c0, c1, zeroing) & data
        flags = values != UNALLOCATED
        n, i = offsets.size, 0
        while i < n:
            if not self.has_holes():
                rest = np.flatnonzero(single[i:])
                k = i + int(rest[0]) if rest.size else n
                k = i + self._below_table(c0[i:k], c1[i:k], data[i:k])  # (the table grows request by request)
                if k > i:
                    if i:
                        self._renote(c0[i:k], c1[i:k], values[i:k], i)
                    self._batch(c0[i:k], c1[i:k], data[i:k], zeroing[i:k], flags[i:k])
                    i = k
                    continue
            if i:
                self._renote(c0[i:i + 1], c1[i:i + 1], values[i:i + 1], i)
            if data[i]:
                self._request(int(c0[i]), int(c1[i]))
            else:
                self.zero_request(int(c0[i]), int(c1[i]), int(f0[i]), int(f1[i]), int(values[i]))
            i += 1

    def _renote(self, c0: np.ndarray, c1: np.ndarray, values: np.ndarray, done: int) -> None:
        """:meth:`note_tables` before a later step of one merge (the merge noted its tables before its first), after
        its first ``done`` writes: each step is a change of its own, and a write-back in it writes the tables as
        the steps before left them (their content too)."""
        self.merged = done
        self.in_op = False
        try:
            self.note_tables(c0, c1, values)
        finally:
            self.in_op = True

    def _below_table(self, c0: np.ndarray, c1: np.ndarray, data: np.ndarray) -> int:
        """How many of these requests, from the first, surely allocate nothing past what the refcount table's blocks
        may count (data clusters, an L2 table each table they reach, a refcount block a span: at most)."""
        room = self.reftable[1] * self.cs // 8 * self.refblock_span - self.end_cluster()
        if c0.size and int((c1 - c0).sum()) + 2 * c0.size + 2 < room // 2:  # (the usual case: far below)
            return c0.size
        most = np.cumsum(np.where(data, c1 - c0, 0) + (c1 - 1) // self.per_l2 - c0 // self.per_l2 + 2)
        most += most // self.refblock_span + 1
        return int(np.searchsorted(most, room, "right"))

    def _links_in_place(self, c0: np.ndarray, c1: np.ndarray, data: np.ndarray) -> np.ndarray:
        """Which data requests cover a zero cluster keeping its host cluster (written in place, its L2
        entry changes: qcow2_alloc_cluster_link_l2)."""
        out = np.zeros(c0.size, dtype=bool)
        if not self._flags_any() or not data.any():
            return out
        d = np.flatnonzero(data & (c1 > c0))
        s, e, v, ptr = self.zero_flag.gather(c0[d], c1[d])
        on = v == 1
        if on.any():
            owner = np.repeat(d, np.diff(ptr))[on]
            _, _, g, g_ptr = self.guest.gather(s[on], e[on])
            out[owner[np.repeat(np.arange(owner.size), np.diff(g_ptr))[g != NONE]]] = True
        return out

    def _small_batch(self, reqs: list[tuple[int, int, int]]) -> bool:
        """:meth:`_batch` for a few requests (guest cluster ranges, in order, and the value written: zero
        writes, which must free nothing, have a negative one) into a file without holes, in plain integers,
        unless a new refcount block is needed, a data write meets a zero cluster or a zero write an earlier
        write (then False, nothing done)."""
        P = self.per_l2
        reqs = [r for r in reqs if r[1] > r[0]]
        if not reqs:
            return True
        flags = self._flags_any()
        zeros = reqs[0][2] < 0  # (zero writes alone, or data writes alone)
        if zeros:
            reqs = _joined(reqs)
            end = 0
            for a, b, _ in reqs:
                if a < end:  # not in ascending order: do two meet?
                    spans = sorted((a, b) for a, b, _ in reqs)
                    if any(spans[k + 1][0] < spans[k][1] for k in range(len(spans) - 1)):
                        return False
                    break
                end = b
        elif flags and any(self.zero_flag.extents(a, b - a)[2].any() for a, b, _ in reqs):
            return False
        g_starts = g_vals = None  # the guest map's runs as lists (a few runs; the loop below changes no map)
        if not zeros:
            starts, vals = self.guest.runs()
            if starts.size <= SMALL_RUNS:
                g_starts, g_vals = starts.tolist() + [self.guest.size], vals.tolist()
        events: list[tuple[int, int, int, int]] = []  # (owner, guest cluster, 0 table / 1 data, end or index)
        seen_tables: set[int] = set()
        z_tab: list[tuple[int, int]] = []  # (owner, index): the tables a zero write changes
        for o, (a, b, v) in enumerate(reqs):
            stretch = range(a // P, (b - 1) // P + 1)
            if v < 0:  # (nothing is hosted: an entry changes where its zero flag does)
                flag = int(v != UNALLOCATED)
                if not flags:
                    if flag:
                        z_tab.extend([(o, index) for index in stretch])
                else:
                    for index in stretch:
                        lo, hi = max(a, index * P), min(b, (index + 1) * P)
                        if (self.zero_flag.extents(lo, hi - lo)[2] != flag).any():
                            z_tab.append((o, index))
            else:
                new = [(a, b)]
                if g_starts is None:
                    s, e, v = self.guest.extents(a, b - a)
                    taken = [(x, y) for x, y, d in zip(s.tolist(), e.tolist(), v.tolist()) if d != NONE]
                else:  # (the runs of [a, b) found in the lists)
                    i, j = bisect_right(g_starts, a) - 1, bisect_left(g_starts, b)
                    taken = [(max(g_starts[k], a), min(g_starts[k + 1], b)) for k in range(i, j) if g_vals[k] != NONE]
                for x, y in taken + [(x, y) for x, y, w in reqs[:o] if w >= 0]:  # hosted, or an earlier request's
                    new = [(p, q) for lo, hi in new for p, q in ((lo, min(hi, x)), (max(lo, y), hi)) if q > p]
                for lo, hi in new:  # cut at L2 tables
                    while lo < hi:
                        cut = min(hi, (lo // P + 1) * P)
                        events.append((o, lo, 1, cut))
                        lo = cut
            for index in stretch:
                if index not in seen_tables:
                    seen_tables.add(index)
                    if self.l2.look(index) < 0:
                        events.append((o, max(a, index * P), 0, index))
        events.sort()  # (by owner, guest cluster, table before data: no two events have all three alike)
        top = self.top
        end = top + sum([1 if t == 0 else x - g for _, g, t, x in events])
        if end > self.refblocks * self.refblock_span:
            return False
        tables, pos_last, host_last, host = [], -1, -1, top
        for i, (_, g, t, x) in enumerate(events):
            if t == 0:
                self.l2.write(x, 1, host)
                self.l2_cached.add(x)
                tables.append(x)
                pos_last, host_last = i, host
                host += 1
            else:
                self.guest.write(g, x - g, host - g)
                host += x - g
        d_tab = [(i, g // P, o) for i, (o, g, t, _) in enumerate(events) if t == 1]
        if d_tab and self.depends["rb"] == "l2":
            self._set_dependency("l2", "rb")
        if not tables:
            self.dirty_l2.update([d for _, d, _ in d_tab])
            self.dirty_l2.update([index for _, index in z_tab])
            if end > top:  # a batch that allocates nothing changes no refcount
                self._refcounts_changed_range(top, end)
            linked_after = bool(d_tab)
        else:
            cut_owner, last_index = events[pos_last][0], events[pos_last][3]
            z_before = [o < cut_owner or (o == cut_owner and index < last_index) for o, index in z_tab]
            self._refcounts_changed_range(top, host_last + 1)
            self.dirty_l2.update(tables)
            # (a request's data tasks link their clusters after its last allocation: see _batch_tables)
            self.dirty_l2.update([d for i, d, o in d_tab if i < pos_last and o != cut_owner])
            self.dirty_l2.update([index for (_, index), before in zip(z_tab, z_before) if before])
            self._flush_cache("rb")
            pre = [(g, x) for i, (o, g, t, x) in enumerate(events) if t == 1 and i < pos_last and o != cut_owner]
            flagged = [(max(reqs[o][0], index * P), min(reqs[o][1], (index + 1) * P),
                        int(reqs[o][2] != UNALLOCATED)) for (o, index), before in zip(z_tab, z_before) if before]
            if pre or flagged:  # (else the tables changed after it are held as before the batch: note_tables)
                after = [d for i, d, o in d_tab if i > pos_last or o == cut_owner]
                after += [index for (_, index), before in zip(z_tab, z_before) if not before]
                if after:
                    self._note_cut(np.array(after), _columns(pre, 2), _columns(flagged, 3))
            self._flush_cache("l2")
            self._write([self.l1_offset + 8 * i for i in sorted(tables)], [8] * len(tables))
            self.dirty_l2.update([d for i, d, o in d_tab if i > pos_last or o == cut_owner])
            self.dirty_l2.update([index for (_, index), before in zip(z_tab, z_before) if not before])
            if end > host_last + 1:
                self._refcounts_changed_range(host_last + 1, end)
            linked_after = bool(d_tab) and (d_tab[-1][0] > pos_last or d_tab[-1][2] == cut_owner)  # (in event order)
        if linked_after:
            self._set_dependency("l2", "rb")
        if events:
            self._take(top, end - top, counted=False)
            self.fci = end
        if zeros:  # the zero flags, a write for each stretch of requests back to back setting the same
            a0, b0, f0 = reqs[0][0], reqs[0][1], reqs[0][2] != UNALLOCATED
            for a, b, v in reqs[1:]:
                if a != b0 or (v != UNALLOCATED) != f0:
                    self.zero_flag.write(a0, b0 - a0, f0)
                    a0, f0 = a, v != UNALLOCATED
                b0 = b
            self.zero_flag.write(a0, b0 - a0, f0)
        return True

    def flipped(self) -> tuple[np.ndarray, np.ndarray]:
        """Runs of host clusters ``(starts, ends)`` allocated or freed an odd number of times since the refcount
        cache was last written back: the file's refcount blocks hold the other state for them."""
        if not self.rc_since:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        starts = np.concatenate([np.atleast_1d(np.asarray(a, dtype=np.int64)) for a, _ in self.rc_since])
        ends = np.concatenate([np.atleast_1d(np.asarray(b, dtype=np.int64)) for _, b in self.rc_since])
        bounds = np.unique(np.concatenate((starts, ends)))
        depth = np.zeros(bounds.size, dtype=np.int64)
        np.add.at(depth, np.searchsorted(bounds, starts), 1)
        np.add.at(depth, np.searchsorted(bounds, ends), -1)
        odd = np.flatnonzero(np.cumsum(depth)[:-1] % 2 == 1)
        starts, ends = bounds[odd], bounds[odd + 1]
        self.rc_since = [(starts, ends)] if starts.size else []
        return starts, ends

    def _refcounts_changed_range(self, start: int, end: int) -> None:
        """:meth:`_refcounts_changed` for one range ``[start, end)``."""
        self.rc_since.append((start, end))
        span = self.refblock_span
        self.dirty_refblocks.update(range(start // span, (end - 1) // span + 1))
        self.rb_cached.update(range(start // span, (end - 1) // span + 1))

    def _may_free(self, f0: np.ndarray, f1: np.ndarray, d0: np.ndarray, d1: np.ndarray) -> np.ndarray:
        """Whether each range ``[f0, f1)`` meets a hosted cluster or a range ``[d0, d1)`` (conservative)."""
        hs, he, _ = self.hosted()
        out = np.zeros(f0.size, dtype=bool)
        for s, e in ((hs, he), (np.sort(d0), np.maximum.accumulate(d1[np.argsort(d0)]) if d0.size else d1)):
            if s.size:
                j = np.searchsorted(s, f1, "left") - 1  # the last range starting before f1
                out |= (j >= 0) & (e[np.maximum(j, 0)] > f0)
        return out

    def _batch(self, c0: np.ndarray, c1: np.ndarray, data: np.ndarray, zeroing: np.ndarray,
               flags: np.ndarray | None = None) -> None:
        """Requests that free nothing, the free space being the file's tail: L2 tables and data
        clusters take the next clusters in request order (a cumulative sum). A zero write sets the zero
        flag (``flags``; all by default) or clears it (unallocated clusters); none may meet an earlier
        request's clusters, nor a data request an earlier zero write's, nor a zero cluster holding a host
        cluster (what an entry held before a request is then what it held before the batch)."""
        P = self.per_l2
        if flags is None:
            flags = np.ones(c0.size, dtype=bool)
        touch = (data | zeroing) & (c1 > c0)
        if not touch.all():  # (requests are numbered among those that remain)
            c0, c1, data, zeroing, flags = c0[touch], c1[touch], data[touch], zeroing[touch], flags[touch]
        if not c0.size:
            return
        z_tab, z_owner, z_ranges = self._zero_tables(c0, c1, zeroing, flags)
        ascending = bool(np.all(c0[1:] >= c1[:-1]))  # and disjoint: guest order is request order
        # new data clusters: each to the first request touching it, where nothing was hosted
        every = bool(data.all())
        d = np.arange(c0.size) if every else np.flatnonzero(data)
        if d.size:
            if ascending:
                ps, pe, owner = (c0, c1, d) if every else (c0[d], c1[d], d)
            else:
                ps, pe, own = _first_touch(c0[d], c1[d])
                owner = d[own]
            _, g_vals = self.guest.runs()
            if g_vals.size > 1 or g_vals[0] != NONE:  # (nothing is hosted yet in a new image)
                qs, qe, qv, ptr = self.guest.gather(ps, pe)
                new = qv == NONE
                owner = np.repeat(owner, np.diff(ptr))[new]
                ps, pe = qs[new], qe[new]
            if ps.size > 1:  # a request's new clusters in a row are one allocation (a refcount block goes after all)
                join = (ps[1:] == pe[:-1]) & (owner[1:] == owner[:-1])
                if join.any():
                    head = np.append(True, ~join)
                    ps, pe, owner = ps[head], pe[np.append(~join, True)], owner[head]
            if ps.size:  # cut at L2 tables
                extra = (pe - 1) // P - ps // P
                if extra.any():
                    rep = np.repeat(np.arange(ps.size), extra + 1)
                    k = np.arange(rep.size) - np.repeat(np.cumsum(extra + 1) - (extra + 1), extra + 1)
                    nps = np.where(k == 0, ps[rep], (ps[rep] // P + k) * P)
                    npe = np.minimum(np.append(nps[1:], 0), pe[rep])
                    last = np.append(rep[1:] != rep[:-1], True)
                    npe = np.where(last, pe[rep], npe)
                    ps, pe, owner = nps, npe, owner[rep]
        else:
            ps = pe = owner = np.zeros(0, dtype=np.int64)
        # new L2 tables: each to the first request touching its stretch
        s0, s1 = c0 // P, (c1 - 1) // P + 1
        if ascending and np.all(s1 - s0 == 1):  # each request in one table: its first request is its first
            first = np.append(True, s0[1:] != s0[:-1])
            tab, t_owner = s0[first], np.flatnonzero(first)
        else:
            ts, te, town = _first_touch(s0, s1)
            n = te - ts
            tab = np.repeat(ts, n) + np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
            t_owner = np.repeat(town, n)
        if tab.size:
            lv_s, lv_e, lv, lptr = self.l2.gather(tab, tab + 1)
            missing = lv < 0
            tab, t_owner = tab[missing], t_owner[missing]
        t_key = np.maximum(c0[t_owner], tab * P)
        nt, nd = tab.size, ps.size
        ev_n = np.concatenate((np.ones(nt, dtype=np.int64), pe - ps))
        if not ev_n.size:
            empty = np.zeros(0, dtype=np.int64)
            self._batch_caches(empty, 0, empty, empty, empty, empty, empty, z_tab, z_owner, self.top, (empty, empty),
                               z_ranges)
            return
        if ascending:  # two lists sorted by guest cluster to merge, a table before the data it maps
            order = np.empty(nt + nd, dtype=np.int64)
            order[np.arange(nt) + np.searchsorted(ps, t_key, "left")] = np.arange(nt)
            order[np.arange(nd) + np.searchsorted(t_key, ps, "right")] = nt + np.arange(nd)
        else:
            ev_owner = np.concatenate((t_owner, owner))
            ev_key = np.concatenate((t_key, ps))
            ev_type = np.concatenate((np.zeros(nt, dtype=np.int64), np.ones(nd, dtype=np.int64)))
            order = np.lexsort((ev_type, ev_key, ev_owner))
        counts = ev_n[order]
        host = self.top + np.cumsum(counts) - counts
        cont = None
        if ps.size and int(host[-1] + counts[-1]) > self.refblocks * self.refblock_span:
            cont = self._continues(order, nt, ps, pe, owner, c0)
        host, end, (split, before, rest), crossed = self._with_refblocks(host, counts, cont)
        at = np.empty_like(host)
        at[order] = host
        if nt:
            self.l2.write_batch(tab, 1, at[:nt])
            self.l2_cached.update(tab.tolist())
        if ps.size:
            self.guest.write_batch(ps, pe - ps, at[nt:] - ps)
            if split.size:  # the clusters after a refcount block placed inside a request's allocation
                d = order[split] - nt
                self.guest.write_batch(ps[d] + before, pe[d] - ps[d] - before, rest - ps[d] - before)
        self._batch_caches(order, nt, tab, t_owner, at, ps // P, owner, z_tab, z_owner, end, (ps, pe), z_ranges,
                           crossed)
        self._take(self.top, end - self.top, counted=False)
        self.fci = end

    def _zero_tables(self, c0: np.ndarray, c1: np.ndarray, zeroing: np.ndarray, flags: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The L2 tables the zero writes of a batch change, with the request changing each and the guest clusters
        ``(lo, hi, flag)`` it sets there: where an entry's zero flag changes (zero_in_l2_slice; no zero write here
        frees a cluster, none meets an earlier request); then the zero flags set and cleared as the batch leaves
        them."""
        P = self.per_l2
        z = np.flatnonzero(zeroing)
        had_flags = self._flags_any()
        if had_flags and z.size < c0.size:  # data writes clear the zero flags of the clusters they allocate
            d = np.flatnonzero(~zeroing)
            s, e, v, _ = self.zero_flag.gather(c0[d], c1[d])
            on = v == 1
            if on.any():
                self.zero_flag.write_batch(s[on], e[on] - s[on], 0)
        if not z.size:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, (empty, empty, empty)
        n = (c1[z] - 1) // P - c0[z] // P + 1
        z_tab = np.repeat(c0[z] // P, n) + np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        z_owner = np.repeat(z, n)
        flag = flags[z_owner].astype(np.int64)
        lo, hi = np.maximum(c0[z_owner], z_tab * P), np.minimum(c1[z_owner], (z_tab + 1) * P)
        if had_flags:
            _, _, v, ptr = self.zero_flag.gather(lo, hi)
            piece = np.repeat(np.arange(lo.size), np.diff(ptr))
            changed = np.bincount(piece[v != flag[piece]], minlength=lo.size) > 0
        else:
            changed = flag == 1
        if changed.any():  # (the flags of a table's clusters change where any of them does)
            self.zero_flag.write_batch(lo[changed], hi[changed] - lo[changed], flag[changed])
        return z_tab[changed], z_owner[changed], (lo[changed], hi[changed], flag[changed])

    def _batch_caches(self, order: np.ndarray, nt: int, tab: np.ndarray, t_owner: np.ndarray, at: np.ndarray,
                      d_tab: np.ndarray, d_owner: np.ndarray, z_tab: np.ndarray, z_owner: np.ndarray,
                      end: int, pieces: tuple[np.ndarray, np.ndarray], zeros: tuple[np.ndarray, ...],
                      crossed: tuple[int, ...] | None = None) -> None:
        """What a batch leaves in the caches and writes: each new table's l2_allocate writes back what
        is dirty by then, so the last one writes everything dirtied before it (refcount blocks of the
        clusters allocated so far, the tables of the requests before it, every new table); ``z_tab``:
        the tables its zero writes change (``z_owner``: which); ``pieces``: the data pieces' guest clusters
        ``(starts, ends)``, one per entry of ``d_tab``; ``zeros``: the zero writes' ``(lo, hi, flag)``, one per entry
        of ``z_tab``; ``crossed``: where the last new refcount block wrote the caches back (see
        :meth:`_with_refblocks`)."""
        if d_tab.size and self.depends["rb"] == "l2":  # the first link flushes the L2 cache (before the batch)
            self._set_dependency("l2", "rb")
        if not nt and crossed is None:
            self.dirty_l2.update(np.unique(np.concatenate((d_tab, z_tab))).tolist())
            if end > self.top:  # a batch that allocates nothing changes no refcount
                self._refcounts_changed(np.array([self.top]), np.array([end]))
            linked_after = bool(d_tab.size)
        else:
            linked_after = self._batch_tables(order, nt, tab, t_owner, at, d_tab, d_owner, z_tab, z_owner, end,
                                              pieces, zeros, crossed)
        if linked_after:  # links after the last table's write-back leave the L2 cache depending
            self._set_dependency("l2", "rb")

    def _batch_tables(self, order: np.ndarray, nt: int, tab: np.ndarray, t_owner: np.ndarray, at: np.ndarray,
                      d_tab: np.ndarray, d_owner: np.ndarray, z_tab: np.ndarray, z_owner: np.ndarray,
                      end: int, pieces: tuple[np.ndarray, np.ndarray], zeros: tuple[np.ndarray, ...],
                      crossed: tuple[int, ...] | None = None) -> bool:
        """:meth:`_batch_caches` where the batch writes the caches back: the last new table's l2_allocate or, if it
        comes later, the last new refcount block's alloc_refcount_block (``crossed``: the L2 cache, then the
        refcount blocks, the allocation's clusters past what they covered left to its retry); whether data
        links follow. (A request's data tasks link their clusters after its last allocation: those of the
        request whose allocation writes the caches back come after it.)"""
        pos = np.empty(order.size, dtype=np.int64)
        pos[order] = np.arange(order.size)
        cut = -1
        if nt:
            last = int(np.argmax(pos[:nt]))
            cut, cut_owner, cut_tab = int(pos[last]), int(t_owner[last]), int(tab[last])
            piece_tab = cut_tab  # (the L2 table of the piece whose allocation writes the caches back)
            host_last = int(at[last])
            # the host clusters whose refcounts change before the write-back ([starts], [ends]), and after it
            rc_before, rc_after = ([self.top], [host_last + 1]), ([host_last + 1], [end])
        recount: list[int] = []
        if crossed is not None and crossed[0] > cut:
            cut, covered = crossed[:2]
            event = int(order[cut])
            cut_owner = int(t_owner[event]) if event < nt else int(d_owner[event - nt])
            cut_tab = int(tab[event]) if event < nt else -1
            piece_tab = cut_tab if event < nt else int(d_tab[event - nt])
            rc_before, rc_after = ([self.top], [covered]), ([covered], [end])
            recount = [int(at[event]), covered]  # (counted down after the write-back, then again: dirty, as written)
        if crossed is not None:  # (a new block counts itself as it is written: never counted again)
            blocks = [b for b in crossed[2:] if b >= rc_after[0][0]]
            rc_after = ([rc_after[0][0], *(b + 1 for b in blocks)], [*blocks, end])
        if recount and recount[1] > recount[0]:
            rc_after = ([recount[0], recount[0], *rc_after[0]], [recount[1], recount[1], *rc_after[1]])
        self._refcounts_changed(np.array(rc_before[0]), np.array(rc_before[1]))
        d_before = (pos[nt:] < cut) & (d_owner != cut_owner)
        own = (t_owner == cut_owner) & (tab < piece_tab)  # (its earlier pieces' tasks may have linked: see _request)
        if own.any():
            d_before |= (pos[nt:] < cut) & (d_owner == cut_owner) & (d_tab <= int(tab[own].max()) - 2)
        z_before = (z_owner < cut_owner) | ((z_owner == cut_owner) & (z_tab < cut_tab))  # (table by table)
        self.dirty_l2.update(np.unique(np.concatenate((tab, d_tab[d_before], z_tab[z_before]))).tolist())
        self._flush_cache("rb")
        after = np.concatenate((d_tab[~d_before], z_tab[~z_before]))
        if after.size and (d_before.any() or z_before.any()):  # (else they are held as before the batch)
            self._note_cut(after, (pieces[0][d_before], pieces[1][d_before]), tuple(z[z_before] for z in zeros))
        self._flush_cache("l2")
        self._write(self.l1_offset + 8 * tab, np.full(nt, 8, dtype=np.int64))
        self.dirty_l2.update(np.unique(np.concatenate((d_tab[~d_before], z_tab[~z_before]))).tolist())
        u0, u1 = np.array(rc_after[0]), np.array(rc_after[1])
        if (u1 > u0).any():
            self._refcounts_changed(u0[u1 > u0], u1[u1 > u0])
        return bool((~d_before).any())

    def _continues(self, order: np.ndarray, nt: int, ps: np.ndarray, pe: np.ndarray, owner: np.ndarray,
                   c0: np.ndarray) -> Callable[[int], bool]:
        """For allocations in ``order`` (``nt`` L2 tables, then data pieces ``[ps, pe)`` of requests
        ``owner`` starting at ``c0``): whether the one at a position goes where its request's previous
        cluster ends (the file's end then), taken by qcow2_alloc_clusters_at, not qcow2_alloc_clusters."""
        top = self.top

        def continues(q: int) -> bool:
            e = int(order[q])
            if e < nt:
                return False
            d = e - nt
            start = int(ps[d])
            if start <= int(c0[owner[d]]):
                return False
            if q == 0:
                value = int(self.guest.value_at(start - 1))
                return value != NONE and start + value == top
            before = int(order[q - 1])
            return before >= nt and int(pe[before - nt]) == start

        return continues

    def _with_refblocks(self, host: np.ndarray, counts: np.ndarray, cont: Callable[[int], bool] | None = None
                        ) -> tuple[np.ndarray, int, tuple[np.ndarray, np.ndarray, np.ndarray], tuple[int, ...] | None]:
        """Allocations in a row from the file's end (``cont``: which continue their request's previous
        cluster, qcow2_alloc_clusters_at). A new refcount block takes the cluster after the allocation
        that first reaches past the covered clusters (alloc_refcount_block: the first free cluster from
        free_cluster_index, which that allocation moved past itself); one continuing a request puts it
        at the first uncovered cluster instead, and the rest of its clusters follow the block. Returns
        the hosts, the new end, the allocations so split: (positions, clusters before the block,
        host of the rest), and where the last block was needed (None: no new block): (the allocation's position,
        the host clusters covered before it, then every new block's host cluster), its caches' write-back
        (:meth:`_batch_tables`)."""
        ends = host + counts
        n, k, last = host.size, 0, 0
        after: list[int] = []
        second = np.zeros(n, dtype=bool)  # (the rest of a split allocation)
        taken: set[int] = set()  # allocations whose continuation cluster a block took
        splits = 0
        span = self.refblock_span
        crossed: tuple[int, ...] | None = None
        while True:  # the k refcount blocks so far sit after allocations <= i: each shifts what follows
            covered = (self.refblocks + k) * span
            i = max(int(np.searchsorted(ends, covered - k, "right")), last)
            if i >= n:
                break
            crossed = (i - splits, covered)  # (the allocation, numbered as given, and what was covered)
            if cont is not None and not second[i] and i not in taken and cont(i - splits):
                m = covered - int(host[i]) - k  # the block at the first uncovered cluster, inside this one
                counts = np.insert(counts, i + 1, int(counts[i]) - m)
                counts[i] = m
                host = np.insert(host, i + 1, int(host[i]) + m)
                ends = host + counts
                second = np.insert(second, i + 1, True)
                n += 1
                splits += 1  # (every split so far lies before any allocation still to look at)
                last = i + 1
            else:
                last = i
            taken.add(i + 1)  # (the block takes the cluster the next one would have continued at)
            after.append(i)
            k += 1
        self.refblocks += k
        if k:
            shift = np.zeros(n + 1, dtype=np.int64)
            np.add.at(shift, np.array(after, dtype=np.int64) + 1, 1)
            host = host + np.cumsum(shift)[:n]
            blocks = [int(host[i] + counts[i]) + after[:j].count(i) for j, i in enumerate(after)]
            for block in blocks:  # each new block right after its allocation (and the blocks before)
                self._hook_refblock(block, write_back=False)
            assert crossed is not None
            crossed = (*crossed, *blocks)
        end = int(host[-1] + counts[-1]) + after.count(n - 1)
        if not second.any():
            empty = np.zeros(0, dtype=np.int64)
            return host, end, (empty, empty, empty), crossed
        j = np.flatnonzero(second)
        first = ~second
        return host[first], end, (np.cumsum(first)[j] - 1, counts[j - 1], host[j]), crossed

    # -- compressed clusters (qcow2-cluster.c qcow2_alloc_compressed_cluster_offset) ------------------
    def compressed_fit(self, clusters: np.ndarray, sizes: np.ndarray) -> bool:
        """Whether writing these compressed clusters surely stays inside the host clusters the refcount blocks
        cover (a new refcount block for qcow2_alloc_bytes, its -EAGAIN retry, is not simulated)."""
        tables = np.unique(clusters // self.per_l2)
        need = self.top + 2 * tables.size + int(sizes.sum()) // self.cs + 2
        return need <= self.refblocks * self.refblock_span

    def write_compressed(self, clusters: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """Compressed clusters written one after another (guest ``clusters``, none holding a host cluster, of
        ``sizes`` bytes): for each its L2 table where there is none (get_cluster_table), then its bytes
        (qcow2_alloc_bytes, :meth:`_alloc_bytes`) and its L2 entry, dirty in the cache after the refcount blocks
        (qcow2_cache_set_dependency). The file grows only by the bytes written. Returns their host byte offsets."""
        cs = self.cs
        self.note_tables(clusters, clusters + 1, frees=True)
        end_before = (self.partial_end or self.top * cs) if self.grown else 0
        offsets = np.empty(clusters.size, dtype=np.int64)
        tables = clusters // self.per_l2
        cuts = np.concatenate(([0], np.flatnonzero(tables[1:] != tables[:-1]) + 1, [clusters.size])).tolist()
        for a, b in zip(cuts[:-1], cuts[1:]):  # (one L2 table after another)
            index = int(tables[a])
            if self.l2.look(index) < 0:
                self._l2_allocate(index)
            self._alloc_bytes(sizes[a:b], offsets[a:b])
            self._set_dependency("l2", "rb")
            self.dirty_l2.add(index)
        ones = np.ones(clusters.size, dtype=np.int64)
        self.compressed.write_batch(clusters, ones, ones)
        if self._chunk_maps is None:
            n = self.compressed.size
            self._chunk_maps = (ExtentMap(n, fill=-1), ExtentMap(n, fill=0))
        at, size = self._chunk_maps
        at.write_batch(clusters, ones, offsets)
        size.write_batch(clusters, ones, np.asarray(sizes, dtype=np.int64))
        self.zero_flag.write_batch(clusters, ones, np.zeros(clusters.size, dtype=np.int64))
        self.any_compressed = True
        self.padded_from = None
        self._fs_marks.append((offsets, sizes))  # (the compressed bytes alone are written)
        self.fs_plain = False
        hi = int((offsets + sizes).max())
        if (hi - 1) // cs == self.top - 1:  # the file ends in a cluster of compressed bytes
            end = max(hi, end_before) if end_before > (self.top - 1) * cs else hi
            self.partial_end = None if end >= self.top * cs else end
        return offsets

    def _alloc_bytes(self, sizes: np.ndarray, out: np.ndarray) -> None:
        """qcow2_alloc_bytes for chunks of ``sizes`` bytes in order (their offsets into ``out``): each goes at
        free_byte_offset if it fits in that cluster; else a new cluster is taken (alloc_clusters_noref: first fit
        from free_cluster_index) and the chunk runs on into it if it follows that cluster, or starts it. A chunk
        that ends its cluster exactly leaves no free_byte_offset. One step per new cluster that is not the file's
        tail; while the free space is the tail alone, the rest go in one cumulative sum."""
        cs = self.cs
        csum = np.cumsum(sizes)
        i, n = 0, sizes.size
        while i < n:
            prev = int(csum[i - 1]) if i else 0
            fbo = self.free_byte_offset
            if fbo and cs - fbo % cs >= int(sizes[i]):
                limit = (fbo // cs + 1) * cs
                if self.chunks_freed and self.free.look(fbo // cs) == FREE:  # (freed since: refcount 0, taken again)
                    self._take(fbo // cs, 1)
            else:
                new = self._first_fit(1)
                if not (fbo and -(-fbo // cs) == new):
                    fbo = new * cs
                self._take(new, 1)
                self.fci = new + 1
                limit = (new + 1) * cs
                if not self.has_holes():  # (the clusters after it are the tail: the chunks run on through them)
                    extra = -(-(fbo + int(csum[-1]) - prev) // cs) - (new + 1)
                    if extra > 0:
                        self._take(new + 1, extra)
                        self.fci = new + 1 + extra
                        limit += extra * cs
            k = int(np.searchsorted(csum, limit - fbo + prev, "right"))
            out[i:k] = fbo + csum[i:k] - sizes[i:k] - prev
            end = fbo + int(csum[k - 1]) - prev
            self._refcounts_changed_range(fbo // cs, (end - 1) // cs + 1)
            self.free_byte_offset = 0 if end % cs == 0 else end
            i = k

    def align_end(self) -> None:
        """An empty compressed write: the file truncated to its length in whole sectors (bdrv_getlength rounds
        up), which a file ending in compressed bytes grows to."""
        if not self.grown:
            self.end_rounded = True
        elif self.partial_end:
            self.padded_from = self.partial_end  # (a truncate: bs->wr_highest_offset stays where the writes ended)
            self.partial_end = -(-self.partial_end // 512) * 512

    def chunks(self, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The compressed clusters of guest clusters ``[c0, c1)``: (guest clusters, their chunks' host byte offsets,
        compressed sizes)."""
        if self._chunk_maps is None:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        at, sizes = self._chunk_maps
        c1 = min(c1, at.size)
        s, _, v = at.extents(c0, max(c1 - c0, 0))
        keep = v >= 0  # (one run a cluster: no two chunks share an offset)
        s, v = s[keep], v[keep]
        _, _, size, _ = sizes.gather(s, s + 1)
        return s, v, size

    def _chunk_clusters(self, offsets: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """The host clusters chunks touch (each one or two: update_refcount over its bytes), with repeats."""
        return np.concatenate((offsets // self.cs, (offsets + sizes - 1) // self.cs))

    def free_compressed(self, c0: int, c1: int, discard: bool) -> None:
        """qcow2_free_any_cluster for the compressed clusters of guest clusters ``[c0, c1)`` (their L2 entries
        change): qcow2_free_clusters over each chunk's bytes counts every host cluster it touches down by one
        (update_refcount, decreasing: the refcount block cache then waits for the L2 table cache); a host cluster
        no chunk touches any more is free again (free_cluster_index lowered to it) and, with ``discard``
        (QCOW2_DISCARD_REQUEST passed through, see the node), its discard queued. free_byte_offset is left as it
        is, even inside a freed cluster (qcow2_alloc_bytes then puts the next chunk there)."""
        clusters, offsets, sizes = self.chunks(c0, c1)
        if not clusters.size:
            return
        n = clusters.size
        ones, zeros = np.ones(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
        self.compressed.write_batch(clusters, ones, zeros)
        assert self._chunk_maps is not None  # (there are chunks)
        at, size = self._chunk_maps
        at.write_batch(clusters, ones, ones * -1)
        size.write_batch(clusters, ones, zeros)
        touched = np.unique(self._chunk_clusters(offsets, sizes))
        _, left, left_sizes = self.chunks(0, self.compressed.size)
        freed = touched[~np.isin(touched, self._chunk_clusters(left, left_sizes))]
        self._set_dependency("rb", "l2")
        self._refcounts_changed(touched, touched + 1)
        self.chunks_freed = True
        if freed.size:
            self.fs_plain = False
            self.free.write_batch(freed, np.ones(freed.size, dtype=np.int64), np.full(freed.size, FREE))
            self.fci = min(self.fci, int(freed[0]))
            if discard:
                self.discarded.append((freed, freed + 1))

    def free_byte_offset_reused(self, cluster: int, size: int) -> bool:
        """Whether the chunk of guest ``cluster`` (``size`` bytes, the next one written) goes at free_byte_offset
        into a host cluster freed since and taken again for something else, or about to be taken for the cluster's
        new L2 table (qcow2_alloc_bytes checks only that its refcount is not at its maximum: QEMU 7.2 writes the
        chunk into it, over data or metadata)."""
        fbo, cs = self.free_byte_offset, self.cs
        if not (self.chunks_freed and fbo and cs - fbo % cs >= size):
            return False
        if self.free.look(fbo // cs) == FREE:
            return self.l2.look(cluster // self.per_l2) < 0 and self._first_fit(1) == fbo // cs
        _, left, left_sizes = self.chunks(0, self.compressed.size)
        return not bool(np.isin(fbo // cs, self._chunk_clusters(left, left_sizes)))

    def compressed_in(self, c0: int, c1: int) -> bool:
        """Whether a guest cluster of ``[c0, c1)`` is a compressed cluster."""
        if not self.any_compressed or c1 <= c0:
            return False
        return bool(self.compressed.extents(c0, min(c1, self.compressed.size) - c0)[2].any())

    def compressed_runs(self, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray]:
        """Runs of compressed guest clusters in ``[c0, c1)``: (starts, ends)."""
        s, e, v = self.compressed.extents(c0, min(c1, self.compressed.size) - c0)
        return s[v == 1], e[v == 1]

    def compressed_count(self) -> int:
        """Guest clusters that are compressed clusters."""
        if not self.any_compressed:
            return 0
        s, e, v = _runs_with_ends(self.compressed)
        return int((e - s)[v == 1].sum())

    # -- persistent bitmaps --------------------------------------------------------------------
    def store_bitmap(self, name: str, nonzero: np.ndarray, table_clusters: int) -> None:
        """store_bitmap: a cluster for each of the bitmap's data clusters holding a set bit, one
        after another, then its table (its old clusters stay until :meth:`drop_bitmap`)."""
        runs = []
        for _ in range(int(np.count_nonzero(nonzero))):  # (at most 1024 clusters: 64 MiB of bits)
            runs.append((self.alloc(1), 1))
        if runs:  # (store_bitmap_data writes each data cluster whole)
            hostfs.mark(self.fs_blocks(), np.array([r[0] for r in runs]) * self.cs, np.full(len(runs), self.cs))
            self.fs_plain = False
        table = self.alloc(table_clusters)
        runs.append((table, table_clusters))
        self._written_partly(table, table_clusters, 8 * nonzero.size)  # one entry per data cluster
        self.bitmap_clusters[f"new:{name}"] = runs

    def drop_bitmap(self, name: str) -> None:
        """free_bitmap_clusters: a bitmap's old data clusters and table."""
        runs = self.bitmap_clusters.pop(name, [])
        self.bitmaps_freed += runs[:-1]  # (the table comes last)
        if runs:
            self.release(np.array([r[0] for r in runs]), np.array([r[0] + r[1] for r in runs]))

    def _written_partly(self, start: int, n: int, nbytes: int) -> None:
        """Clusters ``[start, start + n)`` just allocated get only their first ``nbytes`` written: if
        they end the file, the file ends there."""
        hostfs.mark(self.fs_blocks(), np.array([start * self.cs]), np.array([nbytes]))
        self.fs_plain = False
        if start + n == self.top:
            self.partial_end = start * self.cs + nbytes

    def store_directory(self, clusters: int, nbytes: int = 0) -> None:
        """update_ext_header_and_dir: a new bitmap directory of ``nbytes`` (none for no bitmaps), then the
        old one freed, then the old clusters of the bitmaps just stored (``new:`` entries take their names)."""
        old = self.directory
        self.directory = (self.alloc(clusters), clusters) if clusters else None
        if self.directory is not None:
            self._written_partly(*self.directory, nbytes)
        if old is not None:
            self.release(np.array([old[0]]), np.array([old[0] + old[1]]))
        for key in [k for k in self.bitmap_clusters if k.startswith("new:")]:
            name = key[4:]
            self.drop_bitmap(name)
            self.bitmap_clusters[name] = self.bitmap_clusters.pop(key)

    # -- what it amounts to ----------------------------------------------------------------
    def used_clusters(self) -> int:
        """Host clusters in use (refcount > 0)."""
        s, e, v = _runs_with_ends(self.free)
        return int((e - s)[v == USED].sum())

    def used_before(self, end: int) -> int:
        """Host clusters in use (refcount > 0) among the first ``end``."""
        s, e, v = _runs_with_ends(self.free)
        used = v == USED
        return int((np.minimum(e[used], end) - np.minimum(s[used], end)).sum())

    def fs_blocks(self) -> ExtentMap:
        """``fs`` with every metadata write so far in it."""
        if self._fs_marks:
            marks, self._fs_marks = self._fs_marks, []
            hostfs.mark(self.fs, np.concatenate([np.asarray(m[0], dtype=np.int64) for m in marks]),
                        np.concatenate([np.asarray(m[1], dtype=np.int64) for m in marks]))
        return self.fs

    def punch(self, offsets: np.ndarray, lengths: np.ndarray) -> None:
        """The file node punched holes at these byte ranges (a discard qcow2 passed, ``discard=unmap``)."""
        hostfs.punch(self.fs_blocks(), offsets, lengths)
        self.fs_plain = False

    def end_cluster(self) -> int:
        """One past the last host cluster in use (qemu-img check's image end offset / cluster)."""
        starts, vals = self.free.runs()
        return int(starts[-1]) if vals[-1] == FREE else HOST_SPACE

    def l2_count(self) -> int:
        s, e, v = _runs_with_ends(self.l2)
        return int((e - s)[v >= 0].sum())

    def resize(self, size: int) -> None:
        """The virtual disk grows or shrinks (the L1 table stays where it is)."""
        self.size = size
        old, new = self.guest.size, max(-(-size // self.cs), 1)
        self.guest.resize(new)
        self.zero_flag.resize(new)
        self.cow_written.resize(new)
        self.compressed.resize(new)
        for chunk_map in self._chunk_maps or ():
            chunk_map.resize(new)
        if new > old:
            self.guest.write(old, new - old, NONE)
            self.zero_flag.write(old, new - old, 0)
            self.compressed.write(old, new - old, 0)
            if self._chunk_maps is not None:
                self._chunk_maps[0].write(old, new - old, -1)
                self._chunk_maps[1].write(old, new - old, 0)

    def reconcile(self, c0: int, c1: int, starts: np.ndarray, ends: np.ndarray) -> None:
        """Guest clusters ``[c0, c1)`` hold a host cluster exactly where runs ``[starts, ends)``
        (clusters, sorted, disjoint) say: the others drop theirs, the missing ones are allocated."""
        hs, he, _ = self.hosted(c0, c1)
        if np.array_equal(hs, starts) and np.array_equal(he, ends):
            return
        bounds = np.unique(np.concatenate(([c0, c1], hs, he, starts, ends)))
        seg = bounds[:-1]
        in_layout, in_data = _inside(seg, hs, he), _inside(seg, starts, ends)
        for a, b in zip(seg[in_layout & ~in_data].tolist(), bounds[1:][in_layout & ~in_data].tolist()):
            self.unhost(a, b)
        for a, b in zip(seg[in_data & ~in_layout].tolist(), bounds[1:][in_data & ~in_layout].tolist()):
            self._request(a, b)

    # -- preallocation=falloc|full (qcow2_co_truncate) ----------------------------------------
    def refcount_area(self, start: int, additional: int, exact: bool = True) -> int:
        """qcow2_refcount_area: refcount blocks and a new refcount table for the clusters up to ``start +
        additional`` and themselves, from host cluster ``start`` on (past the clusters in use): the blocks the table
        lacks from the one covering ``start`` on, then the table (``exact`` False: half as many entries again); every
        block of the area written (the refcount block cache flushed), the table whole, the header pointed at it (12
        bytes at 48), the old table freed. Returns the cluster after the table."""
        cs, span = self.cs, self.refblock_span
        total, _ = refcount_metadata(start + additional, cs, generous=not exact)
        per_table = cs // 8
        entries = total if exact else total + -(-total // 2)
        clusters = -(-entries // per_table)
        area = start // span
        hosts = self.refblock_hosts[:clusters * per_table]
        if area > len(hosts):  # (alloc_refcount_block's new block far past the clusters it counts)
            raise generic("bitlab does not simulate a refcount table with a gap (a refcount block past the clusters "
                          "the one before it counts)")
        fresh = max(total - len(hosts), 0)
        hosts += range(start, start + fresh)
        table = start + fresh
        end = table + clusters
        self.refblock_hosts, self.refblocks = hosts, len(hosts)
        self._take(start, end - start)
        self.dirty_refblocks.update(range(area, total))
        self.rb_cached.update(range(area, total))
        self._flush_cache("rb")
        self._write([table * cs, 48], [clusters * cs, 12])
        old = self.reftable
        self.reftable = (table, clusters)
        self.release(np.array([old[0]]), np.array([old[0] + old[1]]))
        return end

    def _grow_reftable(self, index: int, host: int) -> None:
        """alloc_refcount_block past the refcount table's end: refcount block ``index`` (at ``host``, written) goes
        into a new table, made with the blocks it lacks at the start of the next stretch of clusters no block counts
        (qcow2_refcount_area with room to spare); the caller's allocation is then tried again (-EAGAIN)."""
        span = self.refblock_span
        used = max(index * span + 1, host + 1)
        self.refcount_area(-(-used // span) * span, 0, exact=False)

    def preallocate(self, c0: int, mode: str) -> None:
        """A truncate with ``preallocation=falloc`` or ``full`` over the guest clusters from ``c0`` to the disk's end
        (qcow2_co_truncate): the refcount structures for them and their L2 tables after the file's last cluster in
        use (:meth:`refcount_area`), the data clusters right after in one run, the file grown over them from its
        old end (``falloc``: allocated, unwritten; ``full``: zeroes written), then L2 table by L2 table their entries
        linked (qcow2_alloc_cluster_link_l2; l2_allocate takes the first free cluster from free_cluster_index, which
        the old refcount table's freed clusters lowered), a host cluster ``c0`` had freed after its table's links;
        the caches written back, the header's size (8 bytes at 24)."""
        cs = self.cs
        n = max(-(-self.size // cs) - c0, 0)
        length = self.top
        at = self.refcount_area(self.end_cluster(), n + -(-n // self.per_l2) + 1)
        if not n:
            return
        i0, i1 = c0 // self.per_l2, (c0 + n - 1) // self.per_l2 + 1
        self._take(at, n)
        grown = max(length, at)
        hostfs.mark(self.fs_blocks(), np.array([grown * cs]), np.array([(at + n - grown) * cs]),
                    hostfs.UNWRITTEN if mode == "falloc" else hostfs.WRITTEN)
        self.fs_plain = False
        old = self.guest.peek(c0)
        missing = self.l2_missing(i0, i1 - 1)
        if old != NONE:  # (its table exists: linked first, then the old cluster freed)
            self.release(np.array([c0 + old]), np.array([c0 + old + 1]))
        if missing.size:
            hosts = self._first_free(missing.size)
            self.free.write_batch(hosts, np.ones(hosts.size, dtype=np.int64), USED)
            self.top = max(self.top, int(hosts[-1]) + 1)
            self.partial_end = None
            self._refcounts_changed(hosts, hosts + 1)
            self.fci = int(hosts[-1]) + 1
            self.l2.write_batch(missing, np.ones(missing.size, dtype=np.int64), hosts)
            self._flush_cache("rb")
            self._write(np.concatenate((hosts * cs, self.l1_offset + 8 * missing)),
                        np.concatenate((np.full(hosts.size, cs), np.full(missing.size, 8))))
            self.l2_cached.update(missing.tolist())
        self.guest.write(c0, n, at - c0)
        self.zero_flag.write(c0, n, 0)
        self.dirty_l2.update(range(i0, i1))
        self.depends["l2"] = "rb"
        self.flush()
        self._write([24], [8])

    def _first_free(self, n: int) -> np.ndarray:
        """The first ``n`` free host clusters from free_cluster_index on, in order."""
        fs, fe = self._free_runs()
        fs = np.maximum(fs, self.fci)
        keep = fe > fs
        fs, fe = fs[keep], fe[keep]
        take = np.minimum(fe - fs, np.maximum(n - (np.cumsum(fe - fs) - (fe - fs)), 0))
        return range_items(fs[take > 0], take[take > 0])

    # -- block_resize ------------------------------------------------------------------------
    def l1_needed(self, size: int) -> int:
        """L1 entries a disk of ``size`` bytes needs (size_to_l1)."""
        clusters = -(-size // self.cs)
        return -(-clusters // self.per_l2)

    def grow_l1(self, entries: int) -> None:
        """qcow2_grow_l1_table with an exact size: a table of ``entries`` entries in clusters newly
        allocated, the refcount block cache flushed, the table written (its entries only), the header
        pointed at it (12 bytes at 36), then the old table's clusters freed."""
        n = -(-8 * entries // self.cs)
        new = self.alloc(n)
        self._written_partly(new, n, 8 * entries)
        self._flush_cache("rb")
        self._write(np.array([new * self.cs, 36]), np.array([8 * entries, 12]))
        old, old_n = self.l1_offset // self.cs, self.l1_clusters
        self.l1_offset, self.l1_entries, self.l1_clusters = new * self.cs, entries, n
        self.release(np.array([old]), np.array([old + old_n]))

    def shrink_l1(self, entries: int) -> None:
        """qcow2_shrink_l1_table: the entries from ``entries`` on written as zeroes and their L2 tables
        freed (their discard passed on); the table keeps its size."""
        if entries >= self.l1_entries:
            return
        self._write(np.array([self.l1_offset + 8 * entries]), np.array([8 * (self.l1_entries - entries)]))
        s, e, v = self.l2.extents(entries, self.l1_entries - entries)
        hosts = np.concatenate([np.full(int(b - a), h) for a, b, h in zip(s, e, v) if h >= 0] or [np.zeros(0)])
        hosts = np.sort(hosts.astype(np.int64))[::-1]  # freed from the last entry down
        self.l2.write(entries, self.l1_entries - entries, -1)
        self.dirty_l2.difference_update(range(entries, self.l1_entries))
        for host in hosts.tolist():
            self.release(np.array([host]), np.array([host + 1]))
            self.discarded.append((np.array([host]), np.array([host + 1])))

    def caches_renewed(self) -> None:
        """qcow2_update_options_prepare at a resize's end: the old caches flushed before new ones replace them,
        the L2 table cache then the refcount block cache (qcow2_cache_flush: each with the file's flush)."""
        self._flush_cache("l2")
        self._flush_cache("rb")

    def shrink_reftable(self) -> None:
        """qcow2_shrink_reftable (a shrink, after the L1 table's): the refcount blocks at the end of the refcount table
        that count nothing but themselves leave it, their clusters freed (qcow2_discard_refcount_block: the block
        counting one set to 0, free_cluster_index lowered, the discard passed on). (QEMU drops such a block in the
        middle of the table too: bitlab keeps those.)"""
        span = self.refblock_span
        while self.refblocks > 1:
            i = self.refblocks - 1
            host = self.refblock_hosts[i]
            lo, hi = i * span, min((i + 1) * span, self.free.size)
            s, e, v = self.free.extents(lo, hi - lo)
            used = int((e - s)[v == USED].sum()) - int(lo <= host < hi)
            if used > 0:
                return
            self.refblock_hosts.pop()
            self.refblocks -= 1
            self.dirty_refblocks.discard(i)
            self.rb_cached.discard(i)
            self.free.write(host, 1, FREE)
            if not lo <= host < hi:  # (counted in another block, which changes)
                self._refcounts_changed_range(host, host + 1)
            self.fci = min(self.fci, host)
            self.discarded.append((np.array([host]), np.array([host + 1])))

    def truncate_file(self) -> None:
        """The file cut after its last cluster in use (qcow2 shrinking: qcow2_get_last_cluster)."""
        end = self.end_cluster()
        if self.grown and end < self.top:
            self.top, self.partial_end = end, None
            hostfs.cut(self.fs_blocks(), end * self.cs)
            self.fs_plain = False

    @classmethod
    def in_guest_order(cls, size: int, cluster_size: int, starts: np.ndarray,
                       ends: np.ndarray) -> HostLayout:
        """A layout for clusters ``[starts, ends)`` written in ascending guest order."""
        layout = cls(size, cluster_size)
        i, data = 0, np.ones(starts.size, dtype=bool)
        while i < starts.size:  # (in one batch, unless the refcount table must grow on the way)
            k = i + layout._below_table(starts[i:], ends[i:], data[i:])
            if k > i and not layout.has_holes():
                layout._batch(starts[i:k], ends[i:k], data[i:k], ~data[i:k])
                i = k
            else:
                layout._request(int(starts[i]), int(ends[i]))
                i += 1
        layout.dirty_l2.clear()  # (as a file just opened: nothing in the caches)
        layout.dirty_refblocks.clear()
        layout.written.clear()
        layout.depends = {"l2": None, "rb": None}
        return layout


def refcount_metadata(clusters: int, cluster_size: int, refcount_order: int = 4, generous: bool = False
                      ) -> tuple[int, int]:
    """qcow2_refcount_metadata_size: the refcount blocks and table clusters that count ``clusters`` host clusters
    and themselves (the fixed point; ``generous``: room for a table half as large again), as (blocks, table)."""
    per_block, per_table = cluster_size * 8 // (1 << refcount_order), cluster_size // 8
    blocks = table = n = 0
    while True:
        last = n
        blocks = -(-(clusters + table + blocks) // per_block)
        table = -(-blocks // per_table)
        n = clusters + blocks + table
        if n == last and generous:
            clusters += -(-table // 2)
            n, generous = 0, False
        elif n == last:
            return blocks, table


def _discard_list(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint ranges ``[starts, ends)`` freed in this order, as qcow2's list of discards holds them
    (update_refcount_discard: a range that touches an entry joins the first such, which then takes in any other
    entry touching it; else it goes last). So an entry is a stretch of touching ranges, and it sits where its
    first range arrived: the stretches of :func:`_merged`, ordered by their earliest range."""
    return _merged(starts, ends, by_arrival=True)


def _merged(starts: np.ndarray, ends: np.ndarray, by_arrival: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint ranges ``[starts, ends)`` sorted, those that touch merged into one (``by_arrival``: the merged
    stretches ordered by the earliest of their ranges in the order given, not by offset)."""
    if starts.size < 2:
        return starts, ends
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], ends[order]
    first = np.ones(s.size, dtype=bool)
    first[1:] = s[1:] != e[:-1]
    last = np.ones(s.size, dtype=bool)
    last[:-1] = first[1:]
    if not by_arrival:
        return s[first], e[last]
    group = np.cumsum(first) - 1
    earliest = np.full(int(group[-1]) + 1, s.size, dtype=np.int64)
    np.minimum.at(earliest, group, order)
    by = np.argsort(earliest, kind="stable")
    return s[first][by], e[last][by]
