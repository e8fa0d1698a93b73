"""What each byte of an image holds, kept sparse as runs.

An :class:`ExtentMap` is a piecewise-constant map from byte offset to a content
value: ``-1`` means "not allocated in this layer" (read through to the backing
image, or zeroes), ``-2`` a zero cluster (reads 0, holds no data), ``0..255`` a
byte pattern as written by ``qemu-io write -P``, and larger values opaque tokens. A 1 TiB image costs two numpy scalars
until written; a batch of a million writes is merged with numpy, not a Python loop.
"""

from __future__ import annotations

import numpy as np

UNALLOCATED = -1
ZERO = -2  # allocated as zeroes without data (a qcow2 zero cluster); reads as 0


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


class ExtentMap:
    """Byte offset -> content value, stored as sorted run starts and values."""

    __slots__ = ("size", "_starts", "_vals")

    def __init__(self, size: int, fill: int = UNALLOCATED) -> None:
        self.size = int(size)
        self._starts = np.zeros(1, dtype=np.int64)
        self._vals = np.full(1, fill, dtype=np.int64)

    def copy(self) -> ExtentMap:
        new = ExtentMap(self.size)
        new._starts, new._vals = self._starts.copy(), self._vals.copy()
        return new

    def __len__(self) -> int:
        """Number of runs (a measure of memory use)."""
        return int(self._starts.size)

    @property
    def nbytes(self) -> int:
        return int(self._starts.nbytes + self._vals.nbytes)

    def write(self, offset: int, length: int, value: int) -> None:
        """Set bytes ``[offset, offset+length)`` to ``value``."""
        end = min(offset + length, self.size)
        if length <= 0 or end <= offset:
            return
        starts, vals = self._starts, self._vals
        i = int(np.searchsorted(starts, offset, "left"))  # runs [0, i) start before offset
        j = int(np.searchsorted(starts, end, "left"))  # runs [i, j) are overwritten
        tail_val = vals[j - 1]
        new_starts = [offset]
        new_vals = [value]
        if end < self.size and not (j < starts.size and starts[j] == end):
            new_starts.append(end)
            new_vals.append(int(tail_val))
        ns = np.concatenate((starts[:i], new_starts, starts[j:]))
        nv = np.concatenate((vals[:i], new_vals, vals[j:]))
        self._starts, self._vals = self._compact(ns, nv)

    def write_batch(self, offsets: np.ndarray, lengths: np.ndarray, values: np.ndarray) -> None:
        """Apply many writes in order (later ones win), vectorised."""
        offsets = np.asarray(offsets, dtype=np.int64)
        ends = np.minimum(offsets + np.asarray(lengths, dtype=np.int64), self.size)
        values = np.broadcast_to(np.asarray(values, dtype=np.int64), offsets.shape)
        keep = ends > offsets
        offsets, ends, values = offsets[keep], ends[keep], values[keep]
        if offsets.size == 0:
            return
        bounds = np.unique(np.concatenate((self._starts, offsets, ends)))
        bounds = bounds[bounds < self.size]
        base = self._vals[np.searchsorted(self._starts, bounds, "right") - 1]
        left = np.searchsorted(bounds, offsets)
        right = np.searchsorted(bounds, ends)
        winner = _stab_max(bounds.size, left, right)
        seg_vals = np.where(winner >= 0, values[np.maximum(winner, 0)], base)
        self._starts, self._vals = self._compact(bounds, seg_vals)

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
        end = self.size if length is None else min(offset + length, self.size)
        if end <= offset:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        i = int(np.searchsorted(self._starts, offset, "right")) - 1
        j = int(np.searchsorted(self._starts, end, "left"))
        starts = self._starts[i:j].copy()
        vals = self._vals[i:j].copy()
        ends = np.append(starts[1:], end)
        starts[0] = offset
        ends = np.minimum(ends, end)
        return starts, ends, vals

    def value_at(self, offset: int) -> int:
        return int(self._vals[np.searchsorted(self._starts, offset, "right") - 1])

    def allocated_bytes(self) -> int:
        starts, ends, vals = self.extents()
        return int((ends - starts)[vals != UNALLOCATED].sum())

    def resize(self, size: int) -> None:
        """Grow (new bytes unallocated) or shrink."""
        if size < self.size:
            keep = self._starts < size
            self._starts, self._vals = self._starts[keep], self._vals[keep]
        elif size > self.size and self._vals[-1] != UNALLOCATED:
            self._starts = np.append(self._starts, self.size)
            self._vals = np.append(self._vals, UNALLOCATED)
        self.size = size

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExtentMap):
            return NotImplemented
        return (
            self.size == other.size
            and np.array_equal(self._starts, other._starts)
            and np.array_equal(self._vals, other._vals)
        )

    __hash__ = None  # type: ignore[assignment]
