"""A qcow2 node's requests to a blkdebug node below it, with QEMU 7.2's blkdebug events, in QEMU's order.

block/qcow2*.c fire events on the file child (BLKDBG_EVENT) around the requests they make of it, and
block/io.c fires ``pwritev``/``pwritev_zero``, ``pwritev_done`` and the read-modify-write ones on the
blkdebug node itself for each write request that reaches it. An armed rule fails the next request of its
type, whichever it is: metadata or data. Measured with qemu-io's ``break``/``resume`` on QEMU 7.2 (every
event suspends the request; the order in which they come is the trace) and with inject-error rules on
qemu-storage-daemon.

While an operation of a qcow2 node runs, its host layout (:mod:`.qcow2_host`) records what it does to the
metadata: L2 tables loaded or allocated (``l2_load``; ``cluster_alloc``, ``refblock_alloc``,
``refblock_load``, the refcount block cache written and flushed, ``l2_alloc_write``, the L2 cache
written and flushed, ``l1_update``: one sector of the L1 table, written and flushed), data clusters
allocated, clusters freed (``cluster_free`` for each) and the discards of those that qcow2 passes (before a new
cluster is allocated, ``cluster_alloc`` first, or at the request's end), cache write-backs
(``refblock_update_part``, ``l2_update``), with a marker where each piece of the guest's data goes. :func:`run`
turns the markers into the data's own steps (qcow2_co_pwritev_task): ``write_aio`` and the write; for new
clusters the guest write covers only in part (copy-on-write), either ``cluster_alloc_space`` and a
write-zeroes request of the new clusters when the rest reads as zeroes (handle_alloc_space), or ``cow_read``
(the rest read through the backing file: ``read_backing_aio``), ``write_aio``, ``cow_write`` and one write of
the clusters (perform_cow), and runs the lot through the blkdebug node.

When a request fails the operation fails with its errno, and the image is left as QEMU leaves it: the
pieces of a guest write whose data was written and linked keep it, an L2 table whose allocation
completed stays (its data cluster is freed again: qcow2_alloc_cluster_abort), everything else is as it
was (a failed L2 table, L1 or refcount write frees what the allocation took). A cache write-back writes
every dirty entry and fails at its end; the entries whose writes failed stay dirty.

The pieces of a read or of a guest write run as parallel tasks (aio_task_pool): each task runs until it waits
for its first I/O (its first request checked and sent on), qcow2 meanwhile allocates and starts the next piece,
and the tasks go on once the last has started (:meth:`BlkdebugNode.run`). A failed task lets the others go on;
qcow2 starts no further piece once one has ended failed (at once with ``immediately``), and the pieces it never
started keep what they held. A zero write or discard goes L2 table by L2 table: one failing in a later table
leaves the tables before it changed. Not simulated for blkdebug: new refcount blocks (their own events, the
refcount table entry and the allocation's retry: refused), and which of the tasks waiting for their I/O goes on
first (QEMU: as the host's I/O completes; bitlab: in the order they started, each to its end).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import generic
from .extents import clip_runs
from .ioerror import BlockIOError
from .qcow2_host import NONE

if TYPE_CHECKING:
    from .blkdebug import BlkdebugNode

# the events a qcow2 operation may fire on its file, by kind of operation
IO_WRITE_EVENTS = frozenset({"pwritev", "pwritev_zero", "pwritev_done", "pwritev_rmw_head", "pwritev_rmw_after_head",
                             "pwritev_rmw_tail", "pwritev_rmw_after_tail"})
WRITE_EVENTS = IO_WRITE_EVENTS | {"cluster_alloc", "refblock_alloc", "refblock_load", "refblock_update_part",
                                  "l2_alloc_write", "l2_update", "l1_update", "l2_load", "cluster_alloc_space",
                                  "cow_read", "cow_write", "read_backing_aio", "write_aio", "cluster_free"}
READ_EVENTS = frozenset({"l2_load", "read_aio", "read_backing_aio"})
RESIZE_EVENTS = WRITE_EVENTS | {"l1_grow_alloc_table", "l1_grow_write_table", "l1_grow_activate_table",
                                "l1_shrink_write_table", "l1_shrink_free_l2_clusters"}
FLUSH_EVENTS = IO_WRITE_EVENTS | {"refblock_update_part", "l2_update"}
COW_MERGE_READS = 16384  # perform_cow reads both COW regions at once if the data between is no longer


def tracer(node: Any, events: frozenset[str], flushed: bool = False) -> BlkdebugNode | None:
    """The blkdebug node under a qcow2 ``node`` if its rules may see an operation that fires (some of)
    ``events``: then the operation goes request by request (see :meth:`BlkdebugNode.sees`). ``flushed``: the
    operation may end with a flush of the blkdebug node (a zero write or discard allocating an L2 table ends
    with its L1 entry's bdrv_pwrite_sync), so whether a later flush reaches a rule that fails flushes depends on
    its requests: traced then too."""
    file = node.child("file")
    if file is None or file.driver != "blkdebug" or node.tracing:
        return None
    if not file.sees(events) and not (flushed and file.fails_flushes()):
        return None
    return file


class _Snapshot:
    """What a failed operation gives back: the image's content and host layout as they were."""

    def __init__(self, image: Any) -> None:
        self.image = image
        starts, vals = image.data.runs()
        self.starts, self.vals, self.size = starts.copy(), vals.copy(), image.data.size
        self.file_length = image.file_length()
        layout = image.layout
        log, hook, layout.log, layout.on_unhost = layout.log, layout.on_unhost, None, None  # (not the image)
        self.layout = copy.deepcopy(layout)
        layout.log, layout.on_unhost = log, hook

    def restore(self) -> None:
        data = self.image.data
        data.runs()  # (nothing pending is left over)
        data._starts, data._vals, data.size = self.starts, self.vals, self.size
        data.version += 1
        self.image._follow(self.layout)
        self.layout.written.clear()
        self.layout.discarded.clear()


class _Marks:
    """Where the steps of the items stand: an L2 table's allocation done, a piece of data written."""

    def __init__(self) -> None:
        self.tables: dict[int, int] = {}  # L1 index -> the item after which its allocation is complete
        self.pieces: list[tuple[int, int, int]] = []  # (item, guest start, guest end): data written and linked
        self.tasks: dict[int, tuple[int, int, list]] = {}  # the item beginning a piece's task -> (start, end, runs)


def run(node: Any, blk: BlkdebugNode, op: Callable[[], None], length: int, always: bool = False,
        frees: bool = False, done: tuple[int, Callable[[int], None]] | None = None) -> None:
    """Run ``op`` (a change of the qcow2 ``node``'s image over ``length`` bytes) with its host layout recording,
    then its events and requests through ``blk``; on a failure (BlockIOError) the image is left as QEMU leaves
    it. ``always``/``frees``: which discards the clusters it frees pass (see Qcow2Node._passes_discards).
    ``done``: for a zero write or discard, which qcow2 carries out L2 table by L2 table (qcow2_cluster_zeroize,
    qcow2_cluster_discard), its start and the same change up to a guest offset: the tables before the one whose
    request failed keep it (:func:`_tables_done`)."""
    image = node.image
    layout = image.layout
    clusters = -(-length // layout.cs) + 2 * (-(-length // (layout.cs * layout.per_l2)) + 1)
    near = max(layout.top, layout.fci) + 2 * clusters + 8 >= layout.refblocks * layout.refblock_span  # (refused)
    snap = _Snapshot(image) if near or blk.may_fail(WRITE_EVENTS) else None  # (nothing to give back otherwise)
    zero_before = image.layout.zero_flag.copy()
    layout = image.layout
    layout.log = []
    node.tracing = True
    requests: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    node.trace_requests = requests
    try:
        op()
        layout = image.layout  # (every write merged: the log is complete)
        log = layout.log
    finally:
        image.layout.log = None
        node.tracing = False
        node.trace_requests = None
    marks = _Marks()
    if any([entry[0] == "new-refblock" for entry in log]):
        if snap is not None:
            snap.restore()
        raise generic("bitlab does not simulate the requests of a new qcow2 refcount block for blkdebug "
                      f"('{blk.node_name}')")
    if not ((frees or always) and node._passes_discards(always, below=False)):
        log = [entry for entry in log if entry[0] != "d"]  # (the discards it passed: see HostLayout._pass_cached)
    items = _expand(node, log, requests, zero_before, marks)
    layout.written.clear()
    layout.discarded.clear()
    try:
        entries = blk.run(items)
    except BlockIOError as err:
        assert snap is not None
        _refcounts_lost(node, blk)
        if err.main:  # type: ignore[attr-defined]
            _failed(node, snap, marks, requests, items, err, done)
        else:
            _tasks_failed(node, snap, marks, zero_before, items, err)
        _redirty(image.layout, err.entries)  # type: ignore[attr-defined]
        _give_back(node, blk, items, err, sends=not (frees or always))
        raise
    _refcounts_lost(node, blk)
    _redirty(image.layout, entries)


def _refcounts_lost(node: Any, blk: BlkdebugNode) -> None:
    """A refcount block read failed in qcow2_free_clusters, which goes on without it: that cluster keeps its
    refcount with nothing pointing at it (a leak, which bitlab does not model: it refuses the image afterwards),
    and the block is not in the cache (nor are changes to it) until a later read of it succeeds."""
    if blk.uncached:
        layout = node.image.layout
        layout.rb_cached.difference_update(blk.uncached)
        layout.dirty_refblocks.difference_update(blk.uncached)
        blk.uncached = set()
    if blk.refcounts_lost:
        blk.refcounts_lost = False
        node.image.unknown = (f"bitlab does not know what QEMU 7.2 left in '{node.image.name}': a refcount block read "
                              f"failed as node '{node.node_name}' freed clusters (blkdebug '{blk.node_name}'): QEMU "
                              "goes on, and those clusters leak")


def _tasks_failed(node: Any, snap: _Snapshot, marks: _Marks, zero_before: Any, items: list,
                  err: BlockIOError) -> None:
    """The image after only tasks failed: the failed pieces' guest bytes hold what they held and their new
    clusters are unlinked and free again (qcow2_alloc_cluster_abort); so are the pieces qcow2 no longer allocated
    and started once a task had failed (``stopped``); the rest stays where it went."""
    image = node.image
    layout, data = image.layout, image.data
    ends = np.append(snap.starts[1:], snap.size)
    stopped: int | None = err.stopped  # type: ignore[attr-defined]
    unstarted = [] if stopped is None else [task for task in marks.tasks if task >= stopped]
    if stopped is not None and not _allocations_only(items, stopped, err.done):  # type: ignore[attr-defined]
        image.unknown = (f"bitlab does not know what QEMU 7.2 left in '{image.name}': a guest write's task failed, "
                         "and qcow2 stopped before a piece whose allocation bitlab traced with its metadata requests")
    for task in err.tasks + unstarted:  # type: ignore[attr-defined]
        lo, hi, piece = marks.tasks[task]
        s, e, v, _ = clip_runs(snap.starts, ends, snap.vals, np.array([lo]), np.array([hi]))
        watch, data.watch = data.watch, None  # (the content as it was: nothing to allocate for it)
        try:
            data.write_batch(s, e - s, v)
            data.runs()
        finally:
            data.watch = watch
        for c0, c1, kind in piece:
            if kind == "new":
                hs, he, hv = layout.hosted(c0, c1)
                layout.guest.write(c0, c1 - c0, NONE)
                layout.release(hs + hv, he + hv)
            zs, ze, zv = zero_before.extents(c0, c1 - c0)  # (a zero cluster stays one)
            layout.zero_flag.write_batch(zs, ze - zs, zv)
    _unlinked_tables(layout, snap, marks, items, err, err.tasks + unstarted)  # type: ignore[attr-defined]
    layout.written.clear()
    layout.discarded.clear()
    _file_end(node, snap, [item for item, ok in zip(items, err.done) if ok])  # type: ignore[attr-defined]


def _allocations_only(items: list, stopped: int, done: list[bool]) -> bool:
    """Whether the operation's own steps from item ``stopped`` on, which QEMU never took, are events and updates
    of refcount blocks the steps it took updated too: the layout undoes them by freeing the clusters again."""
    updated = {item[1] for item, ok in zip(items[:stopped], done) if ok and item[0] == "rc"}
    inside = _in_task(items)
    return all(item[0] in ("ev", "seq", "soft", "links", "task", "task-end") or (item[0] == "rc" and item[1] in updated)
               for item, task in zip(items[stopped:], inside[stopped:]) if not task or item[0] == "task")


def _unlinked_tables(layout: Any, snap: _Snapshot, marks: _Marks, items: list, err: BlockIOError,
                     gone: list[int]) -> None:
    """An L2 table only tasks that failed or never started (``gone``) used is not dirty in the cache: they never
    linked their clusters (qcow2_alloc_cluster_link_l2 marks it dirty), unless it was dirty before and no flush of
    the L2 cache came between."""
    per = layout.per_l2

    def tables(task: int) -> set[int]:
        return {t for c0, c1, _ in marks.tasks[task][2] for t in range(c0 // per, (c1 - 1) // per + 1)}

    failed: set[int] = set().union(*(tables(task) for task in gone))
    linked: set[int] = set().union(*(tables(task) for task in marks.tasks if task not in gone))
    first = min(marks.tasks)
    flushed = any(item == ("end", "l2") and ok for item, ok in zip(items[:first], err.done))  # type: ignore[attr-defined]
    before = set() if flushed else snap.layout.dirty_l2
    layout.dirty_l2.difference_update(failed - linked - before)


def _give_back(node: Any, blk: BlkdebugNode, items: list, err: BlockIOError, sends: bool) -> None:
    """The steps QEMU takes after requests failed inside an L2 table's allocation (l2_allocate frees its
    cluster at once) or in tasks (qcow2_alloc_cluster_abort frees their new clusters as they end):
    qcow2_free_clusters for each, whose own failures go unnoticed. A freed L2 table's discard is sent
    (``sends``) unless the operation caches its discards (a zero write or a discard: they are dropped with its
    failure, qcow2_process_discards)."""
    at: int = err.at  # type: ignore[attr-defined]
    frees: list[tuple[int, int, bool]] = []  # (host cluster, clusters, an L2 table's)
    main = [item for item, task in zip(items[:at], _in_task(items[:at])) if item[0] == "mark" and not task]
    if len(main) >= 2 and main[-1][1] == "table" and main[-2][1] == "table":  # (the second holds its cluster)
        frees.append((main[-1][2], 1, True))
    for task in err.tasks:  # type: ignore[attr-defined]
        frees += [(host, n, False) for host, n in items[task][1]]
    layout = node.image.layout
    layout.log = log = []
    try:
        for host, n, table in frees:
            layout.free_again(host, n, discard=sends and table)
    finally:
        layout.log = None
    layout.written.clear()
    if log:
        _redirty(layout, blk.run([("soft", 1)] + log + [("soft", -1)]))
        _refcounts_lost(node, blk)


def _in_task(items: list) -> list[bool]:
    """Which items lie inside a ("task", ...) ... ("task-end",) bracket."""
    out, inside = [], False
    for item in items:
        if item[0] == "task":
            inside = True
        elif item[0] == "task-end":
            inside = False
        out.append(inside)
    return out


def _redirty(layout: Any, entries: list[tuple[str, object]]) -> None:
    """Cache entries whose writes failed stay dirty."""
    for kind, key in entries:
        (layout.dirty_refblocks if kind == "rb" else layout.dirty_l2).add(key)


def _failed(node: Any, snap: _Snapshot, marks: _Marks, requests: list, items: list, err: BlockIOError,
            done_tables: tuple[int, Callable[[int], None]] | None = None) -> None:
    """The image after requests failed: as it was, but for the data pieces written and linked (their tasks
    done: their content), the tables a zero write or discard finished (``done_tables``: see :func:`run`) and the
    L2 tables allocated (in the same places); the refcount blocks whose counts changed stay dirty (what was
    allocated is freed again in the cache), what was read stays in the caches, and the file keeps the length the
    writes that reached it gave it."""
    snap.restore()
    image = node.image
    executed: list[bool] = err.done  # type: ignore[attr-defined]
    node.tracing = True  # (again, but recording nothing: what QEMU did before the failure)
    try:
        for lo, hi in [(lo, hi) for item, lo, hi in marks.pieces if executed[item]]:
            for offsets, ends, values in requests:
                keep = (ends > lo) & (offsets < hi)
                if keep.any():
                    o, e = np.maximum(offsets[keep], lo), np.minimum(ends[keep], hi)
                    image.data.write_batch(o, e - o, values[keep])
        if done_tables is not None:  # (in QEMU's order: a later table's allocation comes after their changes)
            _tables_done(node, items, err.at, *done_tables)  # type: ignore[attr-defined]
        tables = sorted(index for index, item in marks.tables.items() if executed[item])
        layout = image.layout
        per = layout.per_l2
        for index in tables:
            layout.touch_l2(index * per, index * per + 1)
        layout.written.clear()
        layout.discarded.clear()
    finally:
        node.tracing = False
    done = [item for item, ok in zip(items, executed) if ok]
    at: int = err.at  # type: ignore[attr-defined]
    if items[at] == ("f",) and items[at - 1][0] == "w" and items[at - 1][3] == "l1" and executed[at - 1]:
        layout.stale_l1.add(items[at - 1][4])  # (l2_allocate gives its table back; the entry was written)
    layout.dirty_refblocks.update(item[1] for item in done if item[0] == "rc")
    layout.rb_cached.update(item[4] for item in done if item[0] == "r" and item[3] == "rb")  # (read: cached)
    layout.l2_cached.update(item[4] for item in done if item[0] == "r" and item[3] == "l2")
    _file_end(node, snap, done)


def _tables_done(node: Any, items: list, at: int, start: int, change: Callable[[int], None]) -> None:
    """A zero write or discard that failed in L2 table ``t`` (its read, or its allocation) leaves the tables
    before it done: their entries changed in the cache (zeroes, clusters freed; the discards it cached are
    dropped with the failure: qcow2_process_discards). ``change(upto)`` makes the change up to that table."""
    table = None
    allocating = False  # (l2_allocate marks its table's index, then its host cluster)
    for item in items[:at + 1]:
        if item[0] == "r" and item[3] == "l2":
            table = item[4]
        elif item[0] == "mark" and item[1] == "table":
            if not allocating:
                table = item[2]
            allocating = not allocating
    if table is None:
        return
    layout = node.image.layout
    upto = table * layout.per_l2 * layout.cs
    if upto <= start:
        return
    # (recorded as run() records, then dropped: its requests are those already made, none reaches the file; the
    # refcount blocks it reads are in the cache only if those reads succeeded then: see _failed)
    cached = set(layout.rb_cached)
    tracing = node.tracing
    node.tracing, node.trace_requests, layout.log = True, [], []
    try:
        change(upto)
        layout = node.image.layout
        layout.written.clear()
        layout.discarded.clear()
        layout.rb_cached = cached
        layout.dirty_refblocks.intersection_update(cached)  # (one that could not be read has no changes cached)
    finally:
        node.tracing, node.trace_requests, node.image.layout.log = tracing, None, None


def _file_end(node: Any, snap: _Snapshot, done: list) -> None:
    """The file's length after a failure: as before the operation, or as far as the writes that reached it went
    (it never shrinks here; clusters allocated but not written do not lengthen it)."""
    layout, cs = node.image.layout, node.image.cluster_size
    end = max((item[1] + item[2] for item in done if item[0] in ("w", "z")), default=0)
    end = -(-end // node.file.align) * node.file.align  # (as blkdebug padded the requests)
    before = snap.layout
    if end > snap.file_length:
        layout.top, layout.partial_end, layout.grown = -(-end // cs), end if end % cs else None, True
    else:
        layout.top, layout.partial_end, layout.grown = before.top, before.partial_end, before.grown


def _expand(node: Any, log: list, requests: list, zero_before: Any, marks: _Marks) -> list:
    """The layout's log with each piece's markers turned into its task's steps."""
    cs = node.image.cluster_size
    items: list = []
    request: tuple[int, int] | None = None
    piece: list[tuple[int, int, str]] = []
    for entry in log:
        kind = entry[0]
        if kind == "req":
            request = entry[1], entry[2]
        elif kind == "data":
            piece.append(entry[1:])
        elif kind == "piece-end":
            assert request is not None
            lo, hi = max(request[0], piece[0][0] * cs), min(request[1], piece[-1][1] * cs)
            guest = node.image.layout.guest
            new = [(int(guest.value_at(c0)) + c0, c1 - c0) for c0, c1, k in piece if k == "new"]
            marks.tasks[len(items)] = (lo, hi, piece)
            items.append(("task", new))  # (a failure in it frees its new clusters again)
            items += _task(node, zero_before, lo, hi, piece)
            marks.pieces.append((len(items) - 1, lo, hi))
            items.append(("task-end",))
            piece = []
        else:
            if kind == "w" and entry[3] == "l1":  # qcow2_write_l1_entry: the entries of one aligned block
                size = max(8, min(node.file.align, cs))
                entry = ("w", entry[1] // size * size, size, "l1", entry[4])
            items.append(entry)
            if kind == "f" and len(items) >= 2 and items[-2][0] == "w" and items[-2][3] == "l1":
                marks.tables[items[-2][4]] = len(items) - 1
    return items


def _task(node: Any, zero_before: Any, lo: int, hi: int, piece: list[tuple[int, int, str]]) -> list:
    """qcow2_co_pwritev_task of guest bytes ``[lo, hi)`` over clusters ``piece`` ((first, end, kind) runs,
    contiguous on the host): each run of new clusters (or zero clusters keeping theirs) the data covers
    only in part is an L2Meta with copy-on-write regions. handle_alloc_space zeroes one whose regions read
    as zeroes (``cluster_alloc_space``, a write-zeroes request of its clusters); the data is written
    (``write_aio``) unless merge_cow joins it to the one L2Meta it fills the middle of; then perform_cow
    reads each L2Meta's regions (``cow_read``: one read if the data between is short, else one each;
    the backing file answers) and writes them (``cow_write``), the merged one with the data."""
    cs = node.image.cluster_size
    guest = node.image.layout.guest
    shift = int(guest.value_at(piece[0][0])) * cs  # guest byte + shift = host byte
    metas = []
    for c0, c1, kind in piece:
        if kind == "copied":
            continue
        start, end = max(lo, c0 * cs), min(hi, c1 * cs)
        regions = [r for r in ((c0 * cs, start), (end, c1 * cs)) if r[1] > r[0]]
        if regions:
            metas.append((c0, c1, start, end, regions))
    items: list = []
    cow = []
    for meta in metas:
        c0, c1, _, _, regions = meta
        if all(_reads_zero(node, zero_before, a, b) for a, b in regions):  # handle_alloc_space
            items += [("ev", "cluster_alloc_space", 1), ("z", c0 * cs + shift, (c1 - c0) * cs, "cow", None)]
        else:
            cow.append(meta)
    merged = next((m for m in cow if (m[2], m[3]) == (lo, hi)), None)  # (merge_cow: the data fills its middle)
    if merged is None:
        items += [("ev", "write_aio", 1), ("w", lo + shift, hi - lo, "data", None)]
    for meta in cow:  # perform_cow
        c0, c1, start, end, regions = meta
        head = (c0 * cs, start) if start > c0 * cs else None
        tail = (end, c1 * cs) if end < c1 * cs else None
        reads = [(head[0], tail[1])] if head and tail and end - start <= COW_MERGE_READS else regions
        for a, b in reads:
            items.append(("ev", "cow_read", 1))
            if not zero_before.value_at(a // cs):
                items += _read_backing(node, a, b)
        if meta is merged:
            first, last = regions[0][0], regions[-1][1]
            items += [("ev", "write_aio", 1), ("ev", "cow_write", 1), ("w", first + shift, last - first, "data", None)]
        else:
            for a, b in regions:
                items += [("ev", "cow_write", 1), ("w", a + shift, b - a, "data", None)]
    return items


def _reads_zero(node: Any, zero_before: Any, a: int, b: int) -> bool:
    """is_zero_cow for one COW region ``[a, b)`` of a cluster being allocated: a zero cluster, no backing file,
    or one that has no data there (past its end too)."""
    cs = node.image.cluster_size
    if zero_before.value_at(a // cs):
        return True
    backing = node.backing
    if backing is None or a >= backing.size:
        return True
    return not _backing_data(backing, a, min(b, backing.size))


def _backing_data(backing: Any, a: int, b: int) -> bool:
    if getattr(backing, "status_data", None) is not None:
        return bool(backing.status_data(a, b))
    return bool(backing.block_status(a, b - a)[2].any())


def read_items(node: Any, offset: int, length: int) -> list:
    """qcow2_co_preadv_part: table by table (``l2_load`` and its read where the cache lacks it), piece by
    piece in guest order: data clusters contiguous on the host (``read_aio``, a read), unallocated ones
    (``read_backing_aio``, the backing file's read, or nothing without one), zero clusters (nothing)."""
    image = node.image
    layout = image.layout
    cs, per = image.cluster_size, layout.per_l2
    end = offset + length
    c0, c1 = offset // cs, -(-end // cs)
    layout.log = items = []
    try:
        for index in range(c0 // per, (c1 - 1) // per + 1):
            lo, hi = max(c0, index * per), min(c1, (index + 1) * per)
            if layout.l2.value_at(index) >= 0:
                layout.load_l2(index)
            for a, b, kind, host in _pieces(layout, lo, hi):
                g_lo, g_hi = max(a * cs, offset), min(b * cs, end)
                if kind == "data":
                    host_lo = g_lo + (host - a) * cs
                    items += [("task", []), ("ev", "read_aio", 1), ("r", host_lo, g_hi - g_lo, "data", None),
                              ("task-end",)]
                elif kind == "unallocated" and node.backing is not None:
                    items += [("task", [])] + _read_backing(node, g_lo, g_hi) + [("task-end",)]
    finally:
        layout.log = None
    return items


def _read_backing(node: Any, a: int, b: int) -> list:
    """An unallocated stretch ``[a, b)`` read from the backing file (nothing without one): its event, then
    the backing node's own read of what lies before its end (past it, zeroes)."""
    backing = node.backing
    if backing is None:
        return []
    items: list = [("ev", "read_backing_aio", 1)]
    if a < backing.size:
        end = min(b, backing.size)
        items.append(("call", lambda: backing.pread(a, end - a)))
    return items


def _pieces(layout: Any, c0: int, c1: int) -> list[tuple[int, int, str, int]]:
    """Guest clusters ``[c0, c1)`` as qcow2_get_host_offset cuts them: runs of one kind ("data" contiguous
    on the host, "zero", "unallocated"), with the host cluster of each data run's start."""
    gs, ge, gv = layout.guest.extents(c0, c1 - c0)
    zs, ze, zv = layout.zero_flag.extents(c0, c1 - c0)
    bounds = np.unique(np.concatenate((gs, ge, zs, ze)))
    out: list[tuple[int, int, str, int]] = []
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        d = int(gv[np.searchsorted(gs, a, "right") - 1])
        z = int(zv[np.searchsorted(zs, a, "right") - 1])
        kind = "zero" if z else "data" if d != NONE else "unallocated"
        host = a + d if kind == "data" else -1
        if out and out[-1][2] == kind and out[-1][1] == a and (kind != "data" or out[-1][3] + (a - out[-1][0]) == host):
            out[-1] = (out[-1][0], b, kind, out[-1][3])
        else:
            out.append((a, b, kind, host))
    return out


def write_back(node: Any, blk: BlkdebugNode) -> None:
    """qcow2_write_caches: every dirty L2 table, then every dirty refcount block, each written after its
    event; an entry whose write failed stays dirty and the write-back fails (BlockIOError)."""
    layout = node.image.layout
    layout.log = []
    try:
        layout.flush()
        items = layout.log
    finally:
        layout.log = None
    layout.written.clear()
    try:
        entries = blk.run(items)
    except BlockIOError as err:
        _redirty(layout, err.entries)  # type: ignore[attr-defined]
        _not_written(layout, items, err.done)  # type: ignore[attr-defined]
        raise
    _redirty(layout, entries)


def _not_written(layout: Any, items: list, done: list[bool]) -> None:
    """After a failed write-back: the entries it did not reach stay dirty (qcow2_cache_entry_flush skips an entry
    whose dependency flush failed, and qcow2_write_caches stops after a cache that failed), and a dependency
    whose flush did not complete stays (qcow2_cache_flush_dependency clears it only then)."""
    _redirty(layout, [(item[3], item[4]) for item, ok in zip(items, done)
                      if not ok and item[0] == "w" and item[3] in ("rb", "l2")])
    open_deps: list[tuple[str, str]] = []
    for item, ok in zip(items, done):
        if item[0] == "dep":
            open_deps.append((item[1], item[2]))
        elif item[0] == "dep-done":
            which, dep = open_deps.pop()
            if not ok:
                layout.depends[which] = dep


OPEN_ERRORS = {"header": "Could not read qcow2 header", "l1": "Could not read L1 table",
               "reftable": "Could not initialize refcount handling",
               "ext": "qcow2_read_extension: ERROR: pread fail from offset {offset}",
               "format": "ERROR: ext_backing_format: Could not read format name",
               "bitmaps": "bitmaps_ext: Could not read ext header", "backing": "Could not read backing file name"}
FEATURE_TABLE = 384  # QEMU 7.2's feature name table extension: 8 features of 48 bytes


def _extension_reads(image: Any) -> list:
    """qcow2_read_extensions' reads, then the backing file name's, for the header qcow2_update_header writes:
    after the header (112 bytes, v2 72) the backing format extension, the feature table (v3), the bitmaps
    extension, the end marker, the backing file name; each extension's 8-byte header is read, the data only
    of the backing format's and of the bitmaps extension (the feature table is skipped)."""
    offset = 72 if image.compat == "0.10" else 112
    extensions: list[tuple[str | None, int]] = []
    if image.backing_file and image.backing_fmt:
        extensions.append(("format", len(image.backing_fmt.encode())))
    if image.compat != "0.10":
        extensions.append((None, FEATURE_TABLE))
    if image.bitmaps:
        extensions.append(("bitmaps", 24))
    items: list = []
    for kind, length in extensions:
        items.append(("r", offset, 8, "ext", None))
        if kind is not None:
            items.append(("r", offset + 8, length, kind, None))
        offset += 8 + -(-length // 8) * 8
    items.append(("r", offset, 8, "ext", None))  # QCOW2_EXT_MAGIC_END
    if image.backing_file:
        items.append(("r", offset + 8, len(image.backing_file.encode()), "backing", None))
    return items


def open_reads(image: Any, blk: BlkdebugNode) -> str | None:
    """qcow2_do_open's reads: the header (112 bytes), the L1 table, then ``reftable_load`` and the refcount
    table (whole clusters), the header extensions and the backing file's name (:func:`_extension_reads`: a rule
    armed by ``reftable_load`` fails them where its sector is in the request, which blkdebug's ``align`` pads);
    QEMU's error if one fails. (The persistent bitmaps' reads come later: :func:`bitmap_open`.)"""
    if not blk.sees(frozenset({"reftable_load"})):
        return None
    layout = image.layout
    cs = image.cluster_size
    items: list = [("r", 0, 104 if image.compat == "0.10" else 112, "header", None)]
    if layout.l1_entries:
        items.append(("r", layout.l1_offset, 8 * layout.l1_entries, "l1", None))
    table, clusters = layout.reftable
    items += [("ev", "reftable_load", 1), ("r", table * cs, clusters * cs, "reftable", None), *_extension_reads(image)]
    try:
        blk.run(items)
    except BlockIOError as err:
        _, offset, _, kind, _ = items[err.at]  # type: ignore[attr-defined]
        return f"{OPEN_ERRORS[kind].format(offset=offset)}: {os.strerror(err.errno)}"
    return None


BITMAP_ERRORS = {"bmdir": "Failed to read bitmap directory",
                 "bmtable": "Could not read bitmap_table table from image for bitmap '{name}'",
                 "bmdata": "Could not read bitmap '{name}' from image", "mark": "Can't update bitmap directory"}


def _bitmap_reads(image: Any) -> list | None:
    """qcow2_load_dirty_bitmaps' reads: the bitmap directory, then for each bitmap not in use (in the directory's
    order) its table (8 bytes an entry) and its data clusters in the table's order (a zero entry is not read);
    None where the layout does not know where they are."""
    where = image.directory_range()
    clusters = image.layout.bitmap_clusters
    if where is None or any(b.name not in clusters for b in image.bitmaps if not b.in_use):
        return None
    cs = image.cluster_size
    items: list = [("r", where[0], where[1], "bmdir", None)]
    for bitmap in image.bitmaps:
        if bitmap.in_use:  # (load_bitmap: its data is unusable, nothing more is read)
            continue
        runs = clusters[bitmap.name]
        nbytes = -(-len(bitmap.bits) // 8)
        entries = -(-nbytes // cs)  # (one for each cluster of the bitmap's bytes)
        items.append(("r", runs[-1][0] * cs, 8 * entries, "bmtable", bitmap.name))
        items += [("r", start * cs, cs, "bmdata", bitmap.name) for start, _ in runs[:-1]]
    return items


def bitmap_open(image: Any, blk: BlkdebugNode, read_only: bool) -> tuple[str | None, bool]:
    """qcow2_load_dirty_bitmaps as the blkdebug node below sees it: the reads of :func:`_bitmap_reads`, then, on
    a read-write open of bitmaps not in use, update_ext_header_and_dir_in_place: the header (autoclear bit
    dropped; qcow2_update_header writes the whole first cluster) and a flush, the directory in place (bitmaps
    in use), the header and a flush, the header (bit set again) and a flush. Returns QEMU's error if a request
    fails (None) and whether the marking writes were made here. A failure after the first header write
    leaves the image without its bitmaps' autoclear bit (QEMU then drops them and leaks their clusters:
    bitlab marks the image unknown); one at the last flush leaves them in use."""
    if not image.bitmaps:
        return None, False
    items = _bitmap_reads(image)
    if items is None:
        return None, False
    marks = not read_only and any(not b.in_use for b in image.bitmaps)
    if marks:
        where = image.directory_range()
        header = ("w", 0, image.cluster_size, "mark", None)
        items += [header, ("f",), ("w", where[0], where[1], "mark", None), header, ("f",), header, ("f",)]
    try:
        blk.run(items)
    except BlockIOError as err:
        at = err.at  # type: ignore[attr-defined]
        kind, name = (items[at][3], items[at][4]) if items[at][0] != "f" else ("mark", None)
        first_write = next(i for i, item in enumerate(items) if item[0] == "w") if marks else len(items)
        if marks and at == len(items) - 1:  # (the header and directory say in use)
            for bitmap in image.bitmaps:
                bitmap.in_use = True
        elif at > first_write:
            image.unknown = (f"bitlab does not know what QEMU 7.2 left in '{image.name}': qcow2 could not mark its "
                             f"persistent bitmaps in use (blkdebug '{blk.node_name}'), its bitmaps' autoclear bit "
                             "is left unset (QEMU drops them and leaks their clusters)")
        return f"{BITMAP_ERRORS[kind].format(name=name)}: {os.strerror(err.errno)}", marks
    return None, marks


def directory_read(node: Any) -> None:
    """bitmap_list_load's read of the bitmap directory, as a blkdebug node below sees it, where a command reads it
    first (with bitmaps stored): qcow2_co_remove_persistent_dirty_bitmap (whether or not the bitmap is among them;
    for a stored one, what follows — a new directory, the caches flushed, the header, the bitmap's clusters freed —
    is not traced: :func:`bitmap_unstore_refused`) and qcow2_truncate_bitmaps_check. Its failure is the
    command's."""
    blk = node.child("file")
    where = node.image.directory_range()
    if blk is None or blk.driver != "blkdebug" or where is None:
        return
    try:
        blk.read_request(*where)
    except BlockIOError as err:
        raise generic(f"{BITMAP_ERRORS['bmdir']}: {os.strerror(err.errno)}") from None


def bitmap_unstore_refused(node: Any) -> str | None:
    """Why bitlab refuses to remove a stored bitmap from ``node``'s image: a blkdebug rule below may see it."""
    blk = node.child("file")
    if blk is None or blk.driver != "blkdebug" or not blk.sees(WRITE_EVENTS | {"flush_to_os", "flush_to_disk"}):
        return None
    return (f"bitlab does not simulate the blkdebug events and requests of removing a persistent bitmap from "
            f"'{node.image.name}' (blkdebug '{blk.node_name}' has rules that may see them)")
