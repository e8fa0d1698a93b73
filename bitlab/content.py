"""What a disk reads, as runs of byte values — the unit backups are checked in.

Guest writes in bitlab (and in the real-QEMU backend) write one pattern byte over a range
(``qemu-io write -P``), so a disk's content is a short list of runs even at 1 TiB. Two
contents are equal when they read the same bytes everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .block.extents import ExtentMap


def _runs(starts: np.ndarray, ends: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Canonical runs: no empty runs, negative (unallocated/zero) values read as 0, equal neighbours merged."""
    starts, ends = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
    vals = np.where(np.asarray(vals, dtype=np.int64) < 0, 0, np.asarray(vals, dtype=np.int64))
    keep = ends > starts
    starts, ends, vals = starts[keep], ends[keep], vals[keep]
    if starts.size == 0:
        return starts, ends, vals
    new = np.ones(starts.size, dtype=bool)
    new[1:] = (vals[1:] != vals[:-1]) | (starts[1:] != ends[:-1])
    idx = np.flatnonzero(new)
    last = np.append(idx[1:], starts.size) - 1
    return starts[idx], ends[last], vals[idx]


@dataclass(frozen=True, eq=False)
class Content:
    """``size`` bytes as runs ``[starts[i], ends[i])`` reading ``vals[i]`` (0..255)."""

    size: int
    starts: np.ndarray
    ends: np.ndarray
    vals: np.ndarray

    @classmethod
    def from_runs(cls, size: int, starts, ends, vals) -> Content:
        return cls(int(size), *_runs(starts, ends, vals))

    @classmethod
    def blank(cls, size: int) -> Content:
        return cls.from_runs(size, [0], [size], [0])

    @classmethod
    def from_bytes(cls, data: np.ndarray) -> Content:
        """Runs of a byte array (e.g. a raw image read from disk), without a loop per byte."""
        data = np.asarray(data, dtype=np.uint8)
        if data.size == 0:
            return cls.from_runs(0, [], [], [])
        change = np.flatnonzero(data[1:] != data[:-1]) + 1
        starts = np.concatenate(([0], change))
        ends = np.append(change, data.size)
        return cls.from_runs(data.size, starts, ends, data[starts])

    @classmethod
    def from_map(cls, emap: ExtentMap) -> Content:
        return cls.from_runs(emap.size, *emap.extents())

    def to_map(self) -> ExtentMap:
        emap = ExtentMap(self.size, fill=0)
        if self.starts.size:
            emap.write_batch(self.starts, self.ends - self.starts, self.vals)
        return emap

    def overlay(self, starts, ends, vals) -> Content:
        """This content with the runs written over it (in order); the size stays."""
        emap = self.to_map()
        starts, ends = np.asarray(starts, dtype=np.int64), np.minimum(np.asarray(ends, dtype=np.int64), self.size)
        keep = ends > starts
        if keep.any():
            emap.write_batch(starts[keep], (ends - starts)[keep], np.asarray(vals, dtype=np.int64)[keep])
        return Content.from_map(emap)

    def resized(self, size: int) -> Content:
        """Cut to ``size`` bytes, or grown with zeroes (what a larger overlay reads past its backing)."""
        if size <= self.size:
            keep = self.starts < size
            return Content.from_runs(size, self.starts[keep], np.minimum(self.ends[keep], size), self.vals[keep])
        return Content.from_runs(size, np.append(self.starts, self.size), np.append(self.ends, size),
                                 np.append(self.vals, 0))

    def runs(self) -> list[tuple[int, int, int]]:
        """``(start, end, value)`` per run."""
        return [(int(s), int(e), int(v)) for s, e, v in zip(self.starts, self.ends, self.vals)]

    def first_difference(self, other: Content) -> int | None:
        """The first byte offset where the two read differently (a size difference counts), or None."""
        if self.size != other.size:
            return min(self.size, other.size)
        bounds = np.union1d(np.concatenate((self.starts, other.starts)), [])
        if bounds.size == 0:
            return None
        a = self.vals[np.searchsorted(self.starts, bounds, side="right") - 1]
        b = other.vals[np.searchsorted(other.starts, bounds, side="right") - 1]
        diff = np.flatnonzero(a != b)
        return int(bounds[diff[0]]) if diff.size else None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Content):
            return NotImplemented
        return (self.size == other.size and np.array_equal(self.starts, other.starts)
                and np.array_equal(self.ends, other.ends) and np.array_equal(self.vals, other.vals))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"{s}+{e - s}:{v:#x}" for s, e, v in self.runs()[:6])
        more = " …" if self.starts.size > 6 else ""
        return f"Content(size={self.size}, [{shown}{more}])"
