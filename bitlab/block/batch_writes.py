"""Many write requests to one node at once, in their order where the order shows (block-copy's target writes, an
NBD client's restore): stretches of one kind go as one batch, a data request of several runs as one request.

A request is a data write of runs (``runs[ptr[i]:ptr[i + 1]]``), a zero write (kind ``ZERO``), or a zero write
that may unmap as ``unmap`` says (kind ``ZERO_UNMAP``: zeroes a target detects, or BDRV_REQ_MAY_UNMAP).
"""

from __future__ import annotations

import numpy as np

from . import wstats
from .extents import clip_runs
from .node import BlockNode, Qcow2Node
from .qcow2_host import HostLayout

DATA, ZERO, ZERO_UNMAP = 0, 1, 2

Runs = tuple[np.ndarray, np.ndarray, np.ndarray]


def order_needed(target: BlockNode, offsets: np.ndarray, io: np.ndarray, kind: np.ndarray, ptr: np.ndarray,
                 unmap: bool) -> str | None:
    """Where the writes' order shows, on a qcow2 target: "requests" — each in request order, a data request one
    request — where zero writes may allocate clusters (a v2 image's fall back to writing zeroes; a partial
    cluster's over a backing file's data too), where a zero write that may unmap frees host clusters before a data
    write that may take them, or a
    data request of several runs (one request: its clusters together) may meet free clusters before the file's
    end or need a new refcount block; "tables" where zero writes and data writes both reach L2 tables the image
    does not have yet (whichever comes first allocates one: an L2 table's first request goes first, then its
    others at once); else None."""
    if type(target) is not Qcow2Node:
        return None
    zeroes = kind != DATA
    mixed = bool(zeroes.any()) and not zeroes.all()
    several = bool((ptr[1:] - ptr[:-1] > 1).any())
    if not (mixed or several):
        return None
    layout = target.image.layout
    cs = target.image.cluster_size
    if mixed and (target.image.compat == "0.10" or target.backing is not None and bool(
            ((offsets[zeroes] | io[zeroes]) % cs).any())):
        return "requests"  # (zero writes may allocate: no zero flag in v2, a partial cluster over backing data)
    if mixed and unmap and _frees_before_data(layout, offsets // cs, -(-(offsets + io) // cs), kind == ZERO_UNMAP):
        return "requests"
    if several:
        span = int(offsets[-1] + io[-1]) - int(offsets[0])
        most = int((-(-io // cs) + 1).sum()) + span // (cs * (cs // 8)) + 2  # (data clusters, L2 tables: at most)
        if layout.has_holes() or layout.may_reach_uncovered(most):
            return "requests"  # (a new refcount block goes after the allocation needing it: the request's, whole)
    if mixed:
        per = cs // 8
        first, last = int(offsets[0]) // cs, (int(offsets[-1] + io[-1]) - 1) // cs
        if layout.l2_any_missing(first // per, last // per):
            return "tables"
    return None


def _frees_before_data(layout: HostLayout, c0: np.ndarray, c1: np.ndarray, unmaps: np.ndarray) -> bool:
    """Whether a zero write that may unmap reaches a cluster with a host cluster (clusters ``[c0, c1)`` of each
    request) before some data write."""
    data = np.flatnonzero(~unmaps)  # (requests of kind ZERO count as data here: they may allocate too)
    if not data.size or not unmaps[: data[-1]].any():
        return False
    k = np.flatnonzero(unmaps[: data[-1]])
    s, e, _ = layout.hosted(int(c0[k[0]]), int(c1[k[-1]]))
    if not s.size:
        return False
    j = np.searchsorted(e, c0[k], "right")  # the first hosted run ending after each request's first cluster
    return bool(((j < s.size) & (s[np.minimum(j, s.size - 1)] < c1[k])).any())


def write_in_order(target: BlockNode, offsets: np.ndarray, io: np.ndarray, kind: np.ndarray, ptr: np.ndarray,
                   runs: Runs, unmap: bool, detect: bool = False) -> None:
    """The writes in request order: stretches of requests of one kind at once, a data request of several runs as
    one request (:meth:`BlockNode.write_buffer`, detecting zeroes if ``detect``)."""
    starts, ends, vals = runs
    several = np.diff(ptr) > 1
    cut = np.flatnonzero((kind[1:] != kind[:-1]) | several[1:] | several[:-1]) + 1
    for a, b in zip(np.concatenate(([0], cut)).tolist(), np.concatenate((cut, [kind.size])).tolist()):
        k = int(kind[a])
        if k == ZERO:
            target.write_zeroes_batch(offsets[a:b], io[a:b])
        elif k == ZERO_UNMAP:
            target.write_zeroes_batch(offsets[a:b], io[a:b], unmap)
        elif several[a]:
            r0, r1 = int(ptr[a]), int(ptr[a + 1])
            target.write_buffer(int(offsets[a]), int(io[a]), starts[r0:r1], ends[r0:r1], vals[r0:r1], detect=detect)
        else:
            r0, r1 = int(ptr[a]), int(ptr[b])
            target.write_batch(starts[r0:r1], ends[r0:r1] - starts[r0:r1], vals[r0:r1])


def write_unordered(target: BlockNode, offsets: np.ndarray, io: np.ndarray, kind: np.ndarray, ptr: np.ndarray,
                    runs: Runs, unmap: bool) -> None:
    """The writes where their order does not matter but within a cluster: first the zero requests' parts in a
    qcow2 cluster whose first data request comes after them (:func:`_zeroes_first`: a partial zero write makes
    an unallocated cluster a zero cluster, and the data write then leaves the rest of it unwritten, where after
    the data it would write zeroes there), then the data requests' runs in one batch, then the other zero
    requests, then those that may unmap."""
    zoff, zlen, zflag = offsets[kind != DATA], io[kind != DATA], kind[kind != DATA] == ZERO_UNMAP
    # (only a zero request ending inside a cluster can share it with data after it: block-copy's never do)
    if type(target) is Qcow2Node and zoff.size and zoff.size < kind.size and \
            ((zoff + zlen) % target.image.cluster_size).any():
        first, zoff, zlen, zflag = _zeroes_first(target.image.cluster_size, offsets, io, kind, zoff, zlen, zflag)
        for flag in (False, True):
            mine = first[2] == flag
            if mine.any():
                target.write_zeroes_batch(first[0][mine], first[1][mine], unmap and flag)
    starts, ends, vals = runs
    if starts.size:
        if (kind != DATA).any():  # (their runs, if any, are written as zeroes below)
            keep = np.repeat(kind == DATA, np.diff(ptr))
            starts, ends, vals = starts[keep], ends[keep], vals[keep]
        if starts.size:
            target.write_batch(starts, ends - starts, vals)
    for flag in (False, True):
        mine = (zflag == flag) & (zlen > 0)
        if mine.any():
            target.write_zeroes_batch(zoff[mine], zlen[mine], unmap and flag)


def _zeroes_first(cs: int, offsets: np.ndarray, io: np.ndarray, kind: np.ndarray, zoff: np.ndarray,
                  zlen: np.ndarray, zflag: np.ndarray) -> tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray,
                                                               np.ndarray]:
    """The zero requests (``zoff``, ``zlen``, may-unmap ``zflag``, in order among ``offsets``) split where a part
    must go before the data: their last cluster's part, when it is partial and that cluster's first data request
    comes after it (bdrv_co_do_pwrite_zeroes sends a request's partial clusters as requests of their own).
    Returns those parts (offsets, lengths, flags) and the zero requests without them."""
    data = np.flatnonzero(kind == DATA)
    zidx = np.flatnonzero(kind != DATA)
    dend = offsets[data] + io[data]
    zend = zoff + zlen
    tail = (zend - 1) // cs * cs  # where the last cluster of each zero request starts
    j = np.searchsorted(dend, tail, "right")  # the first data request ending past that cluster's start
    jj = np.minimum(j, data.size - 1)
    early = (zend % cs != 0) & (j < data.size) & (offsets[data][jj] < tail + cs) & (data[jj] > zidx)
    cut = np.maximum(zoff, tail)
    first = (cut[early], (zend - cut)[early], zflag[early])
    zlen = np.where(early, cut - zoff, zlen)
    return first, zoff, zlen, zflag
def write_requests(target: BlockNode, offsets: np.ndarray, io: np.ndarray, kind: np.ndarray, ptr: np.ndarray,
                   runs: Runs, unmap: bool, detect: bool = False) -> None:
    """The requests (see the module docstring), in order where it shows (:func:`order_needed`)."""
    how = order_needed(target, offsets, io, kind, ptr, unmap)
    if how is None:
        write_unordered(target, offsets, io, kind, ptr, runs, unmap)
    elif how == "requests":
        write_in_order(target, offsets, io, kind, ptr, runs, unmap, detect)
    else:
        for a, b, alone in _by_table(target, offsets, io):
            part = _part(offsets, io, kind, ptr, runs, a, b)
            if alone:  # (the request that allocates the table, or one over several tables)
                write_in_order(target, *part, unmap, detect)
            else:
                write_unordered(target, *part, unmap)


def _by_table(target: Qcow2Node, offsets: np.ndarray, io: np.ndarray) -> list[tuple[int, int, bool]]:
    """The requests as stretches ``[a, b)`` in order, each the first request over an L2 table the image does not
    have yet or one over several tables (``alone``), or the others over one table (at once)."""
    cs = target.image.cluster_size
    per = cs // 8
    t0, t1 = offsets // cs // per, (offsets + io - 1) // cs // per
    lo, hi = int(t0[0]), int(t1[-1]) + 1
    missing = np.zeros(hi - lo, dtype=bool)
    missing[target.image.layout.l2_missing(lo, hi - 1) - lo] = True
    new_table = np.ones(t0.size, dtype=bool)
    new_table[1:] = t0[1:] != t1[:-1]
    alone = (t1 != t0) | (new_table & missing[t0 - lo])
    cut = np.flatnonzero(alone | np.append(False, alone[:-1]) | new_table)
    bounds = np.append(cut, t0.size).tolist()
    return [(a, b, bool(alone[a])) for a, b in zip(bounds[:-1], bounds[1:])]


def _part(offsets: np.ndarray, io: np.ndarray, kind: np.ndarray, ptr: np.ndarray, runs: Runs, a: int, b: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Runs]:
    """Requests ``[a, b)`` and their runs."""
    r0, r1 = int(ptr[a]), int(ptr[b])
    return offsets[a:b], io[a:b], kind[a:b], ptr[a : b + 1] - r0, (runs[0][r0:r1], runs[1][r0:r1], runs[2][r0:r1])


def write_plan(node: BlockNode, offsets: np.ndarray, lengths: np.ndarray, zero: np.ndarray, runs: Runs,
               unmap: bool = True) -> None:
    """A client's write requests in order (``offsets``, ``lengths``: byte arrays) through a BlockBackend of
    ``node``: data (its buffer the ``runs`` (starts, ends, values, sorted) over it; it holds data: no zeroes to
    detect) or, where ``zero``, write-zeroes that may unmap as ``unmap`` says. The node sees each request (its
    write threshold the one that crosses it), in order where the order shows."""
    if not offsets.size:
        return
    if node.write_threshold and not node.untracked:  # (the requests, not the runs of their buffers)
        wstats.check_batch(node, offsets, lengths)
    data = ~zero
    s, e, v, dptr = clip_runs(*runs, offsets[data], offsets[data] + lengths[data])
    counts = np.zeros(offsets.size, dtype=np.int64)
    counts[data] = np.diff(dptr)
    ptr = np.zeros(offsets.size + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    kind = np.where(zero, ZERO_UNMAP, DATA)
    write_requests(node, offsets, lengths, kind, ptr, (s, e, v), unmap, detect=True)
