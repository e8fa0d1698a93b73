"""``copy-before-write``: the filter that copies what a guest write is about to overwrite.

A backup puts one above its source; a user opens one with ``blockdev-add`` (image fleecing).
Every guest write (or discard, with ``discard=unmap``) through the filter first has block-copy
copy the clusters it is about to overwrite, so the target keeps the source's content at the
filter's start. Two anonymous bitmaps live on the filter (QEMU 7.2): ``access`` (what the
snapshot API may read: every cluster, or those of the ``bitmap`` option) and ``done`` (clusters
the guest has written through the filter, whose old content is now on the target).

The snapshot API (``snapshot-access`` reads it, bitlab.block.snapshot_access): a read of a range
some part of which is not in ``access``, or after a failed copy with ``on-cbw-error``
``break-snapshot``, fails with EACCES; clusters in ``done`` are read from the target, the others
from the source. A discard drops clusters from ``access`` and from the copy.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

import numpy as np

from ..bitmap import DirtyBitmap
from ..errors import generic
from .ioerror import BlockIOError
from .node import BlockNode
from .throttle import timeout


def pdiscard_alignment(node: BlockNode) -> int:
    """bs->bl.pdiscard_alignment: qcow2's cluster, blkdebug's ``opt-discard``; raw and filters merge their
    children's; files and null-co have none (0)."""
    if node.driver == "qcow2":
        return node.cluster_size or 0
    own = int(node.options.get("opt-discard") or 0) if node.driver == "blkdebug" else 0
    return max([own] + [pdiscard_alignment(child) for role, child in node.children if role in ("file", "image")])


def discard_pieces(offset: int, length: int, align: int) -> list[tuple[int, int]]:
    """bdrv_co_pdiscard's requests to the driver (request alignment 1): a head up to the first ``align``
    boundary, the aligned middle, a tail."""
    if align <= 1:
        return [(offset, offset + length)]
    end = offset + length
    cuts = sorted({offset, end, min(end, -(-offset // align) * align), max(offset, end // align * align)})
    return [(lo, hi) for lo, hi in zip(cuts, cuts[1:]) if hi > lo]


class CbwNode(BlockNode):
    """Filter node: children ``file`` (the source) and ``target``.

    ``before_write(offset, length)`` copies the range's clusters (BlockCopy.copy_now);
    ``access_bits``: the clusters the snapshot API may read (default: all); ``copy_bitmap``: block-copy's
    bitmap (a snapshot discard clears it); ``break_snapshot``: on-cbw-error break-snapshot."""

    driver = "copy-before-write"

    def __init__(self, node_name: str, *, cluster_size: int, before_write: Callable[[int, int], None],
                 size: int, access_bits=None, copy_bitmap: DirtyBitmap | None = None,
                 break_snapshot: bool = False, **kw) -> None:
        super().__init__(node_name, **kw)
        self.before_write = before_write
        self.done = DirtyBitmap(size, cluster_size, disabled=True)
        bits = ~self.done.bits if access_bits is None else access_bits.copy()  # (~: every cluster)
        self.access = DirtyBitmap(size, cluster_size, disabled=True, bits=bits)
        self.add_bitmap(self.done)
        self.add_bitmap(self.access)
        self.copy_bitmap = copy_bitmap
        self.break_snapshot = break_snapshot
        self.timeout_ns = int(self.options.get("cbw-timeout", 0)) * 1_000_000_000  # 0: none
        self.snapshot_error = 0  # the errno of the first failed copy (break-snapshot): the snapshot is gone

    @property
    def source(self) -> BlockNode:
        node = self.child("file")
        assert node is not None
        return node

    @property
    def size(self) -> int:
        return self.source.size

    def plain_filename(self) -> str | None:
        return self.source.filename

    def _guard(self, offset: int, length: int) -> None:
        """cbw_do_copy_before_write: copy first; a failure fails the guest's request, or with break-snapshot
        breaks the snapshot instead (no copy is tried after that)."""
        if self.snapshot_error:
            return
        try:
            with timeout(self.timeout_ns) as record:
                self.before_write(offset, length)
            if record[2]:  # cbw-timeout struck: the copy completed, but too late
                raise BlockIOError(errno.ETIMEDOUT, "write")
        except BlockIOError as err:
            if not self.break_snapshot:
                raise
            self.snapshot_error = err.errno
            return
        self.done.set_range(offset, length)

    # (each request keeps the source it was made over: while its copy waits, at a throttle node, the backup may
    # end and drop this filter; in QEMU the drop drains the filter, waiting for the request first)
    def write(self, offset, length, value):
        source = self.source
        self._dirty(offset, length)
        self._guard(offset, length)
        source.write(offset, length, value)

    def write_batch(self, offsets, lengths, values):
        source = self.source
        self._dirty_batch(offsets, lengths)
        for off, ln in zip(offsets.tolist(), lengths.tolist()):
            self._guard(off, ln)
        source.write_batch(offsets, lengths, values)

    def write_zeroes(self, offset, length, unmap=False):
        """cbw_co_pwrite_zeroes: bdrv_co_pwrite_zeroes on the source keeps BDRV_REQ_MAY_UNMAP only if the source
        was opened with discard=unmap (a guest's own request to the source keeps it either way)."""
        source = self.source
        self._dirty(offset, length)
        self._guard(offset, length)
        source.write_zeroes(offset, length, unmap and source.discard_unmap)

    def discard(self, offset, length):
        """cbw_co_pdiscard: copy first, then discard below; only on a filter opened with discard=unmap
        (bdrv_cbw_append opens a backup's with BDRV_O_RDWR only: there nothing is copied or discarded)."""
        if not self.discard_unmap:
            return
        source = self.source
        self._dirty(offset, length, discard=True)
        for lo, hi in discard_pieces(offset, length, self._discard_alignment()):
            self._guard(lo, hi - lo)  # (a failed copy fails the discard: the pieces after it are not tried)
            source.discard(lo, hi - lo)

    def _discard_alignment(self) -> int:
        """bs->bl.pdiscard_alignment: the filter merges its children's (bdrv_merge_limits)."""
        return max(pdiscard_alignment(child) for _, child in self.children)

    def read_extents(self, offset, length):
        return self.source.read_extents(offset, length)

    def pread(self, offset, length):
        return self.source.pread(offset, length)

    def block_status(self, offset, length):
        return self.source.block_status(offset, length)

    def copy_status(self, offset, length):
        return self.source.copy_status(offset, length)  # (bdrv_co_block_status_from_file: the node below's answer)

    def status_codes(self, offset, length):
        return self.source.status_codes(offset, length)

    def is_allocated(self, offset, length):
        return self.source.is_allocated(offset, length)  # a filter: the node below answers

    # -- the snapshot API (cbw_snapshot_read_lock and friends) -------------------------------
    def snapshot_check(self, offset: int, length: int, operation: str = "read") -> None:
        """cbw_snapshot_read_lock: EACCES once the snapshot broke, or if part of the range is not in ``access``."""
        if self.snapshot_error:
            raise BlockIOError(errno.EACCES, operation)
        if length > 0:
            shift = self.access.shift
            if not self.access.bits[offset >> shift:((offset + length - 1) >> shift) + 1].all():
                raise BlockIOError(errno.EACCES, operation)

    def snapshot_read(self, offset: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """cbw_co_preadv_snapshot: runs (starts, ends, values) of the point-in-time content; each stretch of
        clusters the guest has overwritten is read from the target, the others from the source.

        QEMU 7.2's hbitmap_status answers "not done" for a stretch of ``done`` clusters that ends before the
        end of the range asked (fixed in QEMU 8.0): such a stretch is read from the source, whose data the guest
        has overwritten there; only a last stretch that reaches the end of the read comes from the target."""
        return self._snapshot_runs(offset, length, "pread")

    def snapshot_status(self, offset: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """cbw_co_snapshot_block_status: block status runs (starts, ends, is_data), each stretch asked of the
        node :meth:`snapshot_read` reads it from."""
        return self._snapshot_runs(offset, length, "block_status")

    def snapshot_copy_status(self, offset: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Block status as block-copy asks it of a snapshot-access node (runs (starts, ends, zero)): each answer
        ends where the stretch it was asked of ends, so a backup's tasks are cut there too."""
        return self._snapshot_runs(offset, length, "copy_status")

    def _snapshot_runs(self, offset: int, length: int, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``method`` (pread, block_status, copy_status) of the node each stretch of the range comes from."""
        self.snapshot_check(offset, length)
        if length <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        target = self.child("target")
        assert target is not None
        bits, shift = self.done.bits, self.done.shift
        end = offset + length
        parts = []
        pos = offset
        while pos < end:
            done = bits[pos >> shift]
            nxt = bits.find(not done, pos >> shift)
            stop = end if nxt < 0 else min(end, nxt << shift)
            node = target if done and stop == end else self.source
            parts.append(getattr(node, method)(pos, stop - pos))
            pos = stop
        if len(parts) == 1:
            return parts[0]
        return tuple(np.concatenate([part[i] for part in parts]) for i in range(3))  # type: ignore[return-value]

    def snapshot_discard(self, offset: int, length: int) -> None:
        """cbw_co_pdiscard_snapshot (QEMU 7.2): the range leaves ``access`` and the copy, and is discarded on the
        target. 7.2 does not align it: a range that does not start on a cluster, or ends inside one short of
        the end of the disk, fails hbitmap_reset's assertion (QEMU aborts; bitlab refuses it)."""
        cs = self.access.granularity
        if length <= 0:
            return
        if offset % cs or (length % cs and offset + length != self.size):
            raise generic(f"bitlab refuses this: QEMU 7.2 aborts on a discard of the snapshot that is not "
                          f"aligned to its {cs}-byte clusters (hbitmap_reset's assertion)")
        self.access.reset_range(offset, length)
        if self.copy_bitmap is not None:
            self.copy_bitmap.reset_range(offset, length)
        target = self.child("target")
        assert target is not None
        target.discard(offset, length)
