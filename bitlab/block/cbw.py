"""``copy-before-write``: the filter a backup puts above its source.

Every guest write (or discard) through the filter first has the backup copy the
clusters it is about to overwrite, so the target keeps the source's content at the
job's start. Two anonymous bitmaps live on the filter (QEMU 7.2): ``access``
(all set) and ``done`` (clusters the guest has written through the filter).
"""

from __future__ import annotations

from collections.abc import Callable

from ..bitmap import DirtyBitmap
from .node import BlockNode


class CbwNode(BlockNode):
    """Filter node: children ``file`` (the source) and ``target``."""

    driver = "copy-before-write"

    def __init__(self, node_name: str, *, cluster_size: int, before_write: Callable[[int, int], None],
                 size: int, **kw) -> None:
        super().__init__(node_name, **kw)
        self.before_write = before_write
        self.done = DirtyBitmap(size, cluster_size, disabled=True)
        access = DirtyBitmap(size, cluster_size, disabled=True, bits=~self.done.bits)  # every cluster
        self.add_bitmap(self.done)
        self.add_bitmap(access)

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
        self.before_write(offset, length)
        self.done.set_range(offset, length)

    def write(self, offset, length, value):
        self._dirty(offset, length)
        self._guard(offset, length)
        self.source.write(offset, length, value)

    def write_batch(self, offsets, lengths, values):
        self._dirty_batch(offsets, lengths)
        for off, ln in zip(offsets.tolist(), lengths.tolist()):
            self._guard(off, ln)
        self.source.write_batch(offsets, lengths, values)

    def write_zeroes(self, offset, length, unmap=False):
        self._dirty(offset, length)
        self._guard(offset, length)
        self.source.write_zeroes(offset, length, unmap)

    def discard(self, offset, length):
        """Nothing: bdrv_cbw_append opens the filter with BDRV_O_RDWR only, without BDRV_O_UNMAP,
        so bdrv_co_pdiscard returns at the filter (nothing copied, dirtied or discarded below)."""

    def read_extents(self, offset, length):
        return self.source.read_extents(offset, length)

    def pread(self, offset, length):
        return self.source.pread(offset, length)

    def block_status(self, offset, length):
        return self.source.block_status(offset, length)

    def is_allocated(self, offset, length):
        return self.source.is_allocated(offset, length)  # a filter: the node below answers
