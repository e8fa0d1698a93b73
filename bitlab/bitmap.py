"""Dirty bitmaps as QEMU 7.2 keeps them (block/dirty-bitmap.c over util/hbitmap.c).

One bit per ``granularity`` bytes of the node, ``ceil(size / granularity)`` bits.
Bits are held in a little-endian :class:`bitarray.bitarray`, which is exactly the
byte layout QEMU hashes for ``x-debug-block-dirty-bitmap-sha256`` on x86 (LSB-first
bits in little-endian 64-bit words), so hashing needs no conversion.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from bitarray import bitarray

from .errors import generic

MAX_NAME_SIZE = 1023  # BDRV_BITMAP_MAX_NAME_SIZE


def _zeros(nbits: int) -> bitarray:
    bits = bitarray(nbits, endian="little")
    bits.setall(0)
    return bits


def bits_from_bool(mask: np.ndarray) -> bitarray:
    """A little-endian bitarray from a numpy bool array (C speed both ways)."""
    bits = bitarray(endian="little")
    bits.frombytes(np.packbits(mask, bitorder="little").tobytes())
    del bits[len(mask):]
    return bits


def bool_from_bits(bits: bitarray) -> np.ndarray:
    raw = np.frombuffer(bits.tobytes(), dtype=np.uint8)
    return np.unpackbits(raw, bitorder="little", count=len(bits)).astype(bool)


def merge_ranges(first: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of inclusive ranges ``first[i]..last[i]`` as sorted, disjoint, non-touching ranges."""
    order = np.argsort(first, kind="stable")
    first, last = first[order], last[order]
    reach = np.maximum.accumulate(last)
    new = np.empty(first.size, dtype=bool)
    new[0] = True
    np.greater(first[1:], reach[:-1] + 1, out=new[1:])
    starts = first[new]
    ends = reach[np.append(np.flatnonzero(new)[1:] - 1, first.size - 1)]
    return starts, ends


def range_mask(nbits: int, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Bool mask of length ``nbits`` with every ``first[i]..last[i]`` (inclusive) set.

    Ranges are merged first, so the difference array fits in int8 (one byte per bit).
    """
    starts, ends = merge_ranges(first, last)
    diff = np.zeros(nbits + 1, dtype=np.int8)
    diff[starts] = 1
    diff[ends + 1] = -1
    return np.cumsum(diff[:nbits], dtype=np.int8).view(bool)


# bdrv_dirty_bitmap_check flags
BUSY, RO, INCONSISTENT = 1, 2, 4
DEFAULT = BUSY | RO | INCONSISTENT
ALLOW_RO = BUSY | INCONSISTENT


def check_bitmap(bm: DirtyBitmap, flags: int) -> None:
    """bdrv_dirty_bitmap_check: the first failing condition wins (QMPError with QEMU's text)."""
    if flags & BUSY and bm.busy:
        raise generic(f"Bitmap '{bm.name}' is currently in use by another operation and cannot be used")
    if flags & RO and bm.readonly:
        raise generic(f"Bitmap '{bm.name}' is readonly and cannot be modified")
    if flags & INCONSISTENT and bm.inconsistent:
        raise generic(f"Bitmap '{bm.name}' is inconsistent and cannot be used")


@dataclass(eq=False)
class DirtyBitmap:
    """A BdrvDirtyBitmap: bits plus QEMU's state flags.

    ``name`` is None for anonymous (internal) bitmaps such as a backup's successor.
    """

    size: int
    granularity: int
    name: str | None = None
    disabled: bool = False
    busy: bool = False
    persistent: bool = False
    inconsistent: bool = False
    readonly: bool = False
    successor: DirtyBitmap | None = None
    bits: bitarray = field(default=None, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.granularity < 1 or self.granularity & (self.granularity - 1):
            raise ValueError("granularity must be a power of two")
        if self.bits is None:
            self.bits = _zeros(self.nbits)

    # -- geometry ---------------------------------------------------------------
    @property
    def shift(self) -> int:
        return self.granularity.bit_length() - 1

    @property
    def nbits(self) -> int:
        return (self.size + self.granularity - 1) >> self.shift

    # -- reading ----------------------------------------------------------------
    @property
    def count(self) -> int:
        """Dirty bytes as QEMU reports them: set bits x granularity (not clamped)."""
        return self.bits.count() << self.shift

    @property
    def recording(self) -> bool:
        succ = self.successor
        return not self.disabled or (succ is not None and not succ.disabled)

    def sha256(self) -> str:
        """QEMU's x-debug-block-dirty-bitmap-sha256: bits padded to 64-bit words."""
        raw = self.bits.tobytes()
        pad = -len(raw) % 8 if raw else 8  # hbitmap keeps at least one 64-bit word
        return hashlib.sha256(raw + b"\0" * pad).hexdigest()

    def dirty_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """Byte ranges (starts, lengths) of runs of set bits, clamped to the node size."""
        mask = bool_from_bits(self.bits).view(np.int8)
        edges = np.diff(np.concatenate(([0], mask, [0])))
        starts = np.flatnonzero(edges == 1).astype(np.int64) << self.shift
        ends = np.minimum(np.flatnonzero(edges == -1).astype(np.int64) << self.shift, self.size)
        return starts, ends - starts

    def info(self) -> dict:
        """BlockDirtyInfo in QAPI schema member order."""
        out: dict = {}
        if self.name is not None:
            out["name"] = self.name
        out["count"] = self.count
        out["granularity"] = self.granularity
        out["recording"] = self.recording
        out["busy"] = self.busy
        out["persistent"] = self.persistent
        if self.inconsistent:
            out["inconsistent"] = True
        return out

    # -- writing ----------------------------------------------------------------
    def set_range(self, offset: int, length: int) -> None:
        """Mark bytes ``[offset, offset+length)`` dirty (hbitmap_set); 0 length is a no-op."""
        if length <= 0:
            return
        first = offset >> self.shift
        last = min((offset + length - 1) >> self.shift, self.nbits - 1)
        if first <= last:
            self.bits[first : last + 1] = 1

    def set_ranges(self, offsets: np.ndarray, lengths: np.ndarray) -> None:
        """Vectorised :meth:`set_range` for many byte ranges at once."""
        offsets = np.asarray(offsets, dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64)
        keep = lengths > 0
        if not keep.all():
            offsets, lengths = offsets[keep], lengths[keep]
        if offsets.size == 0:
            return
        first = offsets >> self.shift
        last = np.minimum((offsets + lengths - 1) >> self.shift, self.nbits - 1)
        ok = first <= last
        first, last = first[ok], last[ok]
        if first.size == 0:
            return
        # (a mask of the span only: a request's few bits cost its time, not the whole bitmap's)
        lo, hi = int(first.min()), int(last.max()) + 1
        if np.array_equal(first, last):
            mask = np.zeros(hi - lo, dtype=bool)
            mask[first - lo] = True
        else:
            mask = range_mask(hi - lo, first - lo, last - lo)
        if hi - lo == self.nbits:
            self.bits |= bits_from_bool(mask)
        else:
            self.bits[lo:hi] |= bits_from_bool(mask)

    def reset_range(self, offset: int, length: int) -> None:
        """Clear whole chunks (hbitmap_reset requires granularity alignment)."""
        if offset % self.granularity or (length % self.granularity and offset + length < self.size):
            raise ValueError("reset range must be granularity-aligned")
        first = offset >> self.shift
        last = min((offset + length - 1) >> self.shift, self.nbits - 1)
        if length > 0 and first <= last:
            self.bits[first : last + 1] = 0

    def clear(self) -> None:
        self.bits.setall(0)

    def merge_from(self, src: DirtyBitmap) -> None:
        """``self |= src`` (hbitmap_merge), re-gridding when granularities differ.

        A coarse source bit dirties every overlapping fine bit; a fine source bit
        dirties the whole covering coarse bit. Sizes must match.
        """
        if src.size != self.size:
            raise ValueError("bitmaps are of different sizes")
        if src.granularity == self.granularity:
            self.bits |= src.bits
            return
        src_mask = bool_from_bits(src.bits)
        if src.granularity > self.granularity:
            factor = src.granularity // self.granularity
            mask = np.repeat(src_mask, factor)[: self.nbits]
        else:
            factor = self.granularity // src.granularity
            pad = -len(src_mask) % factor
            if pad:
                src_mask = np.concatenate((src_mask, np.zeros(pad, dtype=bool)))
            mask = src_mask.reshape(-1, factor).any(axis=1)[: self.nbits]
        self.bits |= bits_from_bool(mask)

    def grow(self, size: int) -> None:
        """bdrv_dirty_bitmap_truncate when a write past its end grows the node: new bits are clean."""
        if size > self.size:
            self.size = size
            self.bits.extend(_zeros(self.nbits - len(self.bits)))
            if self.successor is not None:
                self.successor.grow(size)

    def truncate(self, size: int) -> None:
        """bdrv_dirty_bitmap_truncate (block_resize): the node's new length; bits past a shrunk end
        are gone, new ones clean (its successor too)."""
        self.size = size
        if self.nbits < len(self.bits):
            del self.bits[self.nbits:]
        else:
            self.bits.extend(_zeros(self.nbits - len(self.bits)))
        if self.successor is not None:
            self.successor.truncate(size)

    def snapshot(self) -> bitarray:
        """A copy of the bits (for rollback)."""
        return self.bits.copy()

    def restore(self, bits: bitarray) -> None:
        self.bits = bits.copy()

    # -- freezing for backup (successor / abdicate / reclaim) ---------------------
    def create_successor(self) -> DirtyBitmap:
        """Freeze: an anonymous successor takes over recording; self becomes busy."""
        child = DirtyBitmap(self.size, self.granularity, disabled=self.disabled)
        self.disabled = True
        self.successor = child
        self.busy = True
        return child

    def abdicate(self) -> DirtyBitmap:
        """The successor replaces this bitmap, taking its name and persistence."""
        child = self.successor
        assert child is not None
        child.name, child.persistent = self.name, self.persistent
        self.successor = None
        self.busy = False
        return child

    def reclaim(self) -> DirtyBitmap:
        """Merge the successor back into this bitmap and unfreeze it."""
        child = self.successor
        assert child is not None
        self.bits |= child.bits
        self.disabled = child.disabled
        self.successor = None
        self.busy = False
        return self
