"""What each byte of an image holds, kept sparse as runs.

An :class:`ExtentMap` is a piecewise-constant map from byte offset to a content
value: ``-1`` means "not allocated in this layer" (read through to the backing
image, or zeroes), ``-2`` a zero cluster (reads 0, holds no data), ``0..255`` a
byte pattern as written by ``qemu-io write -P``, and larger values opaque tokens.
A 1 TiB image costs two numpy scalars until written; a batch of a million writes
is merged with numpy, not a Python loop.

Writes are not merged at once: they go to a *pending log* (in order), and the log
is merged into the runs, in one vectorised :meth:`ExtentMap.write_batch`, the
first time anything reads the map. So a million single writes (one per copied
cluster of a backup) cost a million appends and one merge, not a million
array rebuilds. Every method that looks at ``_starts``/``_vals`` calls
:meth:`ExtentMap._flush` first.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable

import numpy as np

UNALLOCATED = -1
ZERO = -2  # allocated as zeroes without data (a qcow2 zero cluster); reads as 0
ZERO_ALLOC = -3  # a qcow2 zero cluster that keeps its host cluster; reads as 0
# a qcow2 data cluster preallocation=metadata made (preallocate_co): data to qcow2 (its L2 entry, its host cluster),
# but nothing was written into it: it reads as 0 and its file blocks are holes (a token no write makes)
PREALLOC = (1 << 62) - 1
_EMPTY = np.zeros(0, dtype=np.int64)


def touched_mask(first: np.ndarray, last: np.ndarray, n: int) -> np.ndarray:
    """A mask of ``n`` items, set in every range ``[first, last)``."""
    delta = np.zeros(n + 1, dtype=np.int64)
    np.add.at(delta, first, 1)
    np.add.at(delta, last, -1)
    return np.cumsum(delta[:-1]) > 0


def range_items(first: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Every item of the ranges ``[first[i], first[i] + count[i])``, range after range (no loop per item)."""
    return np.repeat(first - np.cumsum(count) + count, count) + np.arange(int(count.sum()))


def _stab_max(nseg: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """For each segment ``0..nseg-1``, the largest ``i`` with ``left[i] <= seg < right[i]``.

    An offline segment tree in numpy: range updates decompose level by level,
    then maxima are pushed down to the leaves in one pass. -1 where none covers.
    """
    size = 1 << max(1, (nseg - 1).bit_length())
    tree = np.full(2 * size, -1, dtype=np.int64)
    idx = np.arange(left.size, dtype=np.int64)
    lo, hi = left.astype(np.int64) + size, right.astype(np.int64) + size
    live = lo < hi
    lo, hi, idx = lo[live], hi[live], idx[live]
    while lo.size:
        odd = (lo & 1).astype(bool)
        np.maximum.at(tree, lo[odd], idx[odd])
        lo = lo + odd
        odd = (hi & 1).astype(bool)
        hi = hi - odd
        np.maximum.at(tree, hi[odd], idx[odd])
        lo >>= 1
        hi >>= 1
        live = lo < hi
        lo, hi, idx = lo[live], hi[live], idx[live]
    level = 2
    while level < 2 * size:
        kids = slice(level, 2 * level)
        np.maximum(tree[kids], np.repeat(tree[level // 2 : level], 2), out=tree[kids])
        level *= 2
    return tree[size : size + nseg]


def partial_cluster_holes(starts: np.ndarray, ends: np.ndarray, vals: np.ndarray, cluster: int,
                          size: int) -> tuple[np.ndarray, np.ndarray]:
    """The unallocated pieces of partly written clusters (an image's extents ``starts``/``ends``/``vals`` of
    ``size`` bytes, ``cluster`` bytes a cluster), in order: what qcow2 copied on write from the backing chain
    when it allocated them."""
    holes = vals == UNALLOCATED
    hs, he = starts[holes], ends[holes]
    head_end = np.minimum(he, -(-hs // cluster) * cluster)
    tail_start = np.maximum(head_end, he // cluster * cluster)
    has_head = (hs % cluster != 0) & (head_end > hs)
    has_tail = (he % cluster != 0) & (he < size) & (he > tail_start)
    q_s = np.concatenate((hs[has_head], tail_start[has_tail]))
    q_e = np.concatenate((head_end[has_head], he[has_tail]))
    order = np.argsort(q_s, kind="stable")
    return q_s[order], q_e[order]


def clip_runs(starts: np.ndarray, ends: np.ndarray, vals: np.ndarray, q_starts: np.ndarray,
              q_ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The runs ``(starts, ends, vals)`` (sorted, disjoint) clipped to each query range, vectorised.

    Returns ``(starts, ends, vals, ptr)``: the pieces of every query range in order, query
    ``i`` owning pieces ``ptr[i]:ptr[i+1]``. Parts of a query that no run covers are left out
    (runs from ``read_extents`` cover their whole window, so for queries inside it nothing is).
    """
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    vals = np.asarray(vals, dtype=np.int64)
    q_starts = np.asarray(q_starts, dtype=np.int64)
    q_ends = np.asarray(q_ends, dtype=np.int64)
    first = ends.searchsorted(q_starts, "right")  # first run ending after the query starts
    last = starts.searchsorted(q_ends, "left")  # runs [first, last) start before it ends
    counts = np.where(q_ends > q_starts, np.maximum(last - first, 0), 0)
    ptr = np.zeros(q_starts.size + 1, dtype=np.int64)
    counts.cumsum(out=ptr[1:])
    total = int(ptr[-1])
    if total == 0:
        return _EMPTY, _EMPTY, _EMPTY, ptr
    if total == np.count_nonzero(counts):  # no query spans two runs (the usual case)
        owner = counts.nonzero()[0]
        run = first[owner]
    else:
        owner = np.repeat(np.arange(q_starts.size, dtype=np.int64), counts)
        run = np.arange(total, dtype=np.int64) - ptr[owner] + first[owner]
    out_s = np.maximum(starts[run], q_starts[owner])
    out_e = np.minimum(ends[run], q_ends[owner])
    return out_s, out_e, vals[run], ptr


def fill_holes(starts: np.ndarray, ends: np.ndarray, vals: np.ndarray, holes: np.ndarray, backing_size: int,
               read) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs with their ``holes`` filled from a backing file: ``read(offset, length)`` over the holes'
    whole span, clipped to each hole, and 0 past the backing file's end; vectorised, runs in order."""
    hs, he = starts[holes], ends[holes]
    inside = hs < backing_size
    parts_s, parts_e, parts_v = [starts[~holes]], [ends[~holes]], [vals[~holes]]
    if inside.any():
        lo, hi = int(hs[inside][0]), int(min(he[inside][-1], backing_size))
        bs, be, bv = read(lo, hi - lo)
        cs, ce, cv, _ = clip_runs(bs, be, np.asarray(bv, dtype=np.int64), hs[inside],
                                  np.minimum(he[inside], backing_size))
        parts_s.append(cs), parts_e.append(ce), parts_v.append(cv)
    past = he > backing_size
    parts_s.append(np.maximum(hs[past], backing_size)), parts_e.append(he[past])
    parts_v.append(np.zeros(int(past.sum()), dtype=np.int64))
    out_s = np.concatenate(parts_s).astype(np.int64)
    order = np.argsort(out_s, kind="stable")
    return (out_s[order], np.concatenate(parts_e).astype(np.int64)[order],
            np.concatenate(parts_v).astype(np.int64)[order])


SMALL_RUNS = 32  # runs a map may have for its single writes and look-ups to work on plain integers
SMALL_MERGE = 8  # pending writes merged one after the other, in plain integers, into a map of a few runs
SMALL_PENDING = 8  # pending single writes ExtentMap.look looks through instead of merging them
_FIRST_START = np.zeros(1, dtype=np.int64)  # a new map's one run starts at 0
_FIRST_START.flags.writeable = False
_FILLS: dict[int, np.ndarray] = {}  # a new map's one value, by value (read-only)


def _fill(value: int) -> np.ndarray:
    """A read-only array of one value, shared by the new maps filled with it."""
    arr = _FILLS.get(value)
    if arr is None:
        arr = np.array([value], dtype=np.int64)
        arr.flags.writeable = False
        if len(_FILLS) < 16:
            _FILLS[value] = arr
    return arr


def _write_runs(starts: list[int], vals: list[int], size: int, offset: int, end: int,
                value: int) -> tuple[list[int], list[int]]:
    """:meth:`ExtentMap._write_now` on runs as lists: bytes ``[offset, end)`` (inside the map) set to
    ``value``; the runs stay compact (no two neighbours hold one value). Returns new lists."""
    i = bisect_left(starts, offset)  # runs [0, i) start before offset
    j = bisect_left(starts, end)  # runs [i, j) are overwritten
    tail_val = vals[j - 1]
    new_s = starts[:i]
    new_v = vals[:i]
    if i == 0 or vals[i - 1] != value:
        new_s.append(offset)
        new_v.append(value)
    rest = j  # the first old run kept after the write
    if end < size and not (j < len(starts) and starts[j] == end):  # the overwritten run goes on
        if tail_val != value:
            new_s.append(end)
            new_v.append(tail_val)
    elif j < len(starts) and vals[j] == value:  # the next run starts at `end` with this value
        rest = j + 1
    new_s += starts[rest:]
    new_v += vals[rest:]
    return new_s, new_v


class ExtentMap:
    """Byte offset -> content value, stored as sorted run starts and values (plus a pending log)."""

    __slots__ = ("size", "_starts", "_vals", "_log", "_po", "_pl", "_pv", "version", "watch")

    def __init__(self, size: int, fill: int = UNALLOCATED) -> None:
        self.size = int(size)
        self._starts = _FIRST_START  # (read-only arrays, shared: every change makes new ones)
        vals = _FILLS.get(fill) if type(fill) is int else None  # (the usual fills, shared, without a call)
        self._vals = _fill(int(fill)) if vals is None else vals
        self._log: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (offsets, ends, values), in order
        self._po: list[int] = []  # single writes not yet in _log: offsets, lengths, values
        self._pl: list[int] = []
        self._pv: list[int] = []
        self.version = 0  # bumped by every change, so derived figures can be cached
        self.watch = None  # told of every batch of writes, in order, as it is merged (a qcow2 host layout)

    # -- the pending log --------------------------------------------------------------
    def _seal(self) -> None:
        """Move buffered single writes into the log as one chunk (keeps the order)."""
        if self._po:
            offs = np.array(self._po, dtype=np.int64)
            self._log.append((offs, offs + np.array(self._pl, dtype=np.int64), np.array(self._pv, dtype=np.int64)))
            self._po, self._pl, self._pv = [], [], []

    def _flush(self) -> None:
        """Merge every pending write into the runs (later writes win)."""
        if not self._po and not self._log:
            return
        if self.watch is None and not self._log and len(self._po) == 1:  # one write, no one to tell: as it is
            offset, length, value = self._po[0], self._pl[0], self._pv[0]
            self._po, self._pl, self._pv = [], [], []
            self._write_now(offset, length, value)
            return
        self._seal()
        log, self._log = self._log, []
        if len(log) == 1:
            offsets, ends, values = log[0]
        else:
            offsets = np.concatenate([c[0] for c in log])
            ends = np.concatenate([c[1] for c in log])
            values = np.concatenate([c[2] for c in log])
        if self.watch is not None:
            self.watch.before_merge(offsets, ends, values)
        if offsets.size == 1:
            self._write_now(int(offsets[0]), int(ends[0] - offsets[0]), int(values[0]))
        else:
            self._merge(offsets, ends, values)
        if self.watch is not None:
            self.watch.after_merge(offsets, ends, values)

    @property
    def pending(self) -> int:
        """Writes logged but not merged yet."""
        return len(self._po) + sum(c[0].size for c in self._log)

    # -- reading ----------------------------------------------------------------------
    def copy(self) -> ExtentMap:
        self._flush()
        new = ExtentMap(self.size)
        new._starts, new._vals = self._starts.copy(), self._vals.copy()
        return new

    def __len__(self) -> int:
        """Number of runs (a measure of memory use)."""
        self._flush()
        return int(self._starts.size)

    @property
    def nbytes(self) -> int:
        self._flush()
        return int(self._starts.nbytes + self._vals.nbytes)

    def runs(self) -> tuple[np.ndarray, np.ndarray]:
        """The merged run starts and values (read-only views)."""
        self._flush()
        return self._starts, self._vals

    # -- writing ----------------------------------------------------------------------
    def write(self, offset: int, length: int, value: int) -> None:
        """Set bytes ``[offset, offset+length)`` to ``value`` (logged; merged on the next read)."""
        if length <= 0 or offset >= self.size:  # (nothing inside the map)
            return
        self._po.append(int(offset))
        self._pl.append(int(length))
        self._pv.append(int(value))
        self.version += 1

    def _write_now(self, offset: int, length: int, value: int) -> None:
        end = min(offset + length, self.size)
        if length <= 0 or end <= offset:
            return
        if self._starts.size <= SMALL_RUNS:  # a few runs: in plain integers, where numpy's fixed cost dominates
            starts, vals = _write_runs(self._starts.tolist(), self._vals.tolist(), self.size, offset, end, value)
            self._starts, self._vals = np.array(starts, dtype=np.int64), np.array(vals, dtype=np.int64)
            return
        starts, vals = self._starts, self._vals
        # runs [0, i) start before offset, runs [i, j) are overwritten
        i, j = starts.searchsorted((offset, end), "left").tolist()
        tail_val = int(vals[j - 1])
        # The runs are compact (no two neighbours hold one value) and stay so: equal values can
        # only meet where the new run touches the run before it and the run after it.
        new_starts: list[int] = []
        new_vals: list[int] = []
        if i == 0 or int(vals[i - 1]) != value:
            new_starts.append(offset)
            new_vals.append(value)
        rest = j  # the first old run kept after the write
        if end < self.size and not (j < starts.size and starts[j] == end):  # the overwritten run goes on
            if tail_val != value:
                new_starts.append(end)
                new_vals.append(tail_val)
        elif j < starts.size and int(vals[j]) == value:  # the next run starts at `end` with this value
            rest = j + 1
        self._starts = np.concatenate((starts[:i], np.array(new_starts, dtype=np.int64), starts[rest:]))
        self._vals = np.concatenate((vals[:i], np.array(new_vals, dtype=np.int64), vals[rest:]))

    def write_batch(self, offsets: np.ndarray, lengths: np.ndarray, values: np.ndarray) -> None:
        """Apply many writes in order (later ones win): logged, merged vectorised on the next read."""
        offsets = np.array(offsets, dtype=np.int64, ndmin=1)  # a copy: the caller may reuse its arrays
        ends = np.minimum(offsets + np.asarray(lengths, dtype=np.int64), self.size)
        values_in = values
        values = np.empty(offsets.shape, dtype=np.int64)
        values[...] = values_in  # broadcast, and a copy
        keep = ends > offsets
        if not keep.all():
            offsets, ends, values = offsets[keep], ends[keep], values[keep]
        if offsets.size == 0:
            return
        self._seal()
        self._log.append((offsets, ends, values))
        self.version += 1

    def _merge(self, offsets: np.ndarray, ends: np.ndarray, values: np.ndarray) -> None:
        """Merge writes ``[offsets, ends)`` (in order, later wins) into the runs."""
        if offsets.size <= SMALL_MERGE and self._starts.size <= SMALL_RUNS:
            # a few writes into a few runs: one after the other, in plain integers (the runs are compact,
            # so they come out as the vectorised merge leaves them)
            size = self.size
            writes = [(offset, min(end, size), value)
                      for offset, end, value in zip(offsets.tolist(), ends.tolist(), values.tolist())]
            if all([0 <= offset < end for offset, end, _ in writes]):
                starts, vals = self._starts.tolist(), self._vals.tolist()
                for offset, end, value in writes:
                    starts, vals = _write_runs(starts, vals, size, offset, end, value)
                self._starts, self._vals = np.array(starts, dtype=np.int64), np.array(vals, dtype=np.int64)
                return
        if (offsets[1:] >= offsets[:-1]).all():
            if (ends[:-1] <= offsets[1:]).all():
                if (ends[:-1] == offsets[1:]).all() and (values == values[0]).all():
                    # Back to back, one value (a job's zero tasks): one write of the whole stretch.
                    self._write_now(int(offsets[0]), int(ends[-1] - offsets[0]), int(values[0]))
                    return
                self._merge_disjoint(offsets, ends, values)
                return
        else:
            order = np.argsort(offsets, kind="stable")
            if (ends[order[:-1]] <= offsets[order[1:]]).all():
                self._merge_disjoint(offsets[order], ends[order], values[order])
                return
        bounds = np.unique(np.concatenate((self._starts, offsets, ends)))
        bounds = bounds[bounds < self.size]
        base = self._vals[np.searchsorted(self._starts, bounds, "right") - 1]
        left = np.searchsorted(bounds, offsets)
        right = np.searchsorted(bounds, ends)
        winner = _stab_max(bounds.size, left, right)
        seg_vals = np.where(winner >= 0, values[np.maximum(winner, 0)], base)
        self._starts, self._vals = self._compact(bounds, seg_vals)

    def _merge_disjoint(self, offsets: np.ndarray, ends: np.ndarray, values: np.ndarray) -> None:
        """Writes that do not overlap (sorted): no winner to pick, a linear merge."""
        starts, vals = self._starts, self._vals
        j = np.searchsorted(offsets, starts, "right") - 1  # the write starting at or before each run start
        covered = (j >= 0) & (starts < ends[np.maximum(j, 0)])
        keep_s, keep_v = starts[~covered], vals[~covered]
        # Each write, then the old content again (unless the map ends or the next write starts
        # there): the points interleave in order.
        tail = ends < self.size
        tail[:-1] &= ends[:-1] != offsets[1:]
        pts = np.column_stack((offsets, ends)).ravel()
        pts_v = np.column_stack((values, vals[np.searchsorted(starts, ends, "right") - 1])).ravel()
        keep = np.ones(pts.size, dtype=bool)
        keep[1::2] = tail
        pts, pts_v = pts[keep], pts_v[keep]
        # The old run starts no write covers go in between; one equal to a write's end holds the
        # value that tail holds, and goes first (so the tail is the duplicate dropped).
        at = np.searchsorted(pts, keep_s, "left")
        all_s = np.insert(pts, at, keep_s)
        all_v = np.insert(pts_v, at, keep_v)
        first = np.empty(all_s.size, dtype=bool)
        first[0] = True
        np.not_equal(all_s[1:], all_s[:-1], out=first[1:])
        self._starts, self._vals = self._compact(all_s[first], all_v[first])

    @staticmethod
    def _compact(starts: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        starts = np.asarray(starts, dtype=np.int64)
        vals = np.asarray(vals, dtype=np.int64)
        change = np.empty(vals.size, dtype=bool)
        change[0] = True
        np.not_equal(vals[1:], vals[:-1], out=change[1:])
        return starts[change], vals[change]

    def extents(self, offset: int = 0, length: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Runs overlapping ``[offset, offset+length)``, clipped: (starts, ends, values)."""
        self._flush()
        end = self.size if length is None else min(offset + length, self.size)
        if end <= offset:
            return _EMPTY, _EMPTY, _EMPTY
        n = self._starts.size
        if n <= SMALL_RUNS and offset >= 0:  # a few runs: found in plain integers
            run_starts = self._starts.tolist()
            i = bisect_right(run_starts, offset) - 1
            j = bisect_left(run_starts, end)
            starts = np.array(run_starts[i:j], dtype=np.int64)
            starts[0] = offset
            return starts, np.array(run_starts[i + 1 : j] + [end], dtype=np.int64), self._vals[i:j].copy()
        if n == 1 or (offset == 0 and end == self.size):  # one run, or the whole map (runs start at 0)
            i, j = 0, n
        else:
            i = int(self._starts.searchsorted(offset, "right")) - 1
            j = int(self._starts.searchsorted(end, "left"))
        starts = self._starts[i:j].copy()
        vals = self._vals[i:j].copy()
        ends = np.empty(starts.size, dtype=np.int64)  # each run ends where the next starts (before `end`)
        ends[:-1] = starts[1:]
        ends[-1] = end
        starts[0] = offset
        return starts, ends, vals

    def gather(self, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The runs inside each range ``[starts[i], ends[i])`` (sorted, disjoint), vectorised.

        Returns ``(starts, ends, values, ptr)`` as :func:`clip_runs` does.
        """
        self._flush()
        run_ends = np.empty(self._starts.size, dtype=np.int64)
        run_ends[:-1] = self._starts[1:]
        run_ends[-1] = self.size
        return clip_runs(self._starts, run_ends, self._vals, np.minimum(starts, self.size),
                         np.minimum(ends, self.size))

    def any_in(self, starts: np.ndarray, ends: np.ndarray, picks: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """For each range ``[starts[i], ends[i])``: whether a run inside it holds a value ``picks`` (run values ->
        booleans) picks. (:meth:`gather`'s values of each range, looked at as counts: no pieces made.)"""
        self._flush()
        picked = picks(self._vals)
        q_starts, q_ends = np.minimum(starts, self.size), np.minimum(ends, self.size)
        if not picked.any():
            return np.zeros(q_starts.size, dtype=bool)
        count = np.zeros(picked.size + 1, dtype=np.int64)  # picked runs before each run
        np.cumsum(picked, out=count[1:])
        first = np.maximum(self._starts.searchsorted(q_starts, "right") - 1, 0)  # the run each range starts in
        last = self._starts.searchsorted(q_ends, "left")  # runs [first, last) meet the range
        return (q_ends > q_starts) & (count[np.maximum(last, first)] > count[first])

    def value_at(self, offset: int) -> int:
        self._flush()
        return self._run_value(offset)

    def _run_value(self, offset: int) -> int:
        """The value of the run holding ``offset``, the pending writes aside."""
        if self._starts.size <= SMALL_RUNS:  # a few runs: found in plain integers
            return self._vals.tolist()[bisect_right(self._starts.tolist(), offset) - 1]
        return int(self._vals[self._starts.searchsorted(offset, "right") - 1])

    def peek(self, offset: int) -> int:
        """:meth:`value_at` without merging the pending writes (the last one covering ``offset`` wins): for a
        look at a few offsets that should not cost a merge."""
        for o, n, v in zip(reversed(self._po), reversed(self._pl), reversed(self._pv)):
            if o <= offset < o + n:
                return v
        for offsets, ends, values in reversed(self._log):
            hit = np.flatnonzero((offsets <= offset) & (offset < ends))
            if hit.size:
                return int(values[hit[-1]])
        return self._run_value(offset)

    def look(self, offset: int) -> int:
        """:meth:`value_at`, through :meth:`peek` while a few single writes alone are pending (looking through
        them costs less than merging them; whoever reads the runs next merges them)."""
        if self._log or not self._po or len(self._po) > SMALL_PENDING:
            return self.value_at(offset)
        return self.peek(offset)

    def allocated_bytes(self) -> int:
        starts, ends, vals = self.extents()
        return int((ends - starts)[vals != UNALLOCATED].sum())

    def resize(self, size: int) -> None:
        """Grow (new bytes unallocated) or shrink."""
        self._flush()
        if size < self.size:
            keep = self._starts < size
            self._starts, self._vals = self._starts[keep], self._vals[keep]
        elif size > self.size and (not self._vals.size or self._vals[-1] != UNALLOCATED):
            self._starts = np.append(self._starts, self.size)
            self._vals = np.append(self._vals, UNALLOCATED)
        self.size = size
        self.version += 1
        if self.watch is not None:
            self.watch.resized(size)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExtentMap):
            return NotImplemented
        self._flush()
        other._flush()
        return (
            self.size == other.size
            and np.array_equal(self._starts, other._starts)
            and np.array_equal(self._vals, other._vals)
        )

    __hash__ = None  # type: ignore[assignment]
