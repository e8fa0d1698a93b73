"""``snapshot-access``: a read-only view of a copy-before-write filter's snapshot (image fleecing).

Reads, block status and discards go to the snapshot API of the node below (bitlab.block.cbw); a node
below that has none answers ENOTSUP, and so do writes. Its link to its child takes no permission and
shares all (snapshot_access_child_perm).
"""

from __future__ import annotations

import errno

import numpy as np

from .ioerror import BlockIOError
from .node import BlockNode


class SnapshotAccessNode(BlockNode):
    """One child, ``file``: a copy-before-write filter (any other node answers ENOTSUP)."""

    driver = "snapshot-access"

    @property
    def file(self) -> BlockNode:
        node = self.child("file")
        assert node is not None
        return node

    @property
    def size(self) -> int:
        return self.file.size

    def plain_filename(self) -> str | None:
        return self.file.filename

    def _snapshot(self, operation: str):
        """The node below, if it has the snapshot API; else ENOTSUP."""
        below = self.file
        if not hasattr(below, "snapshot_read"):
            raise BlockIOError(errno.ENOTSUP, operation)
        return below

    def read_extents(self, offset, length):
        return self._snapshot("read").snapshot_read(offset, length)

    def pread(self, offset, length):
        return self.read_extents(offset, length)

    def block_status(self, offset, length):
        return self._snapshot("read").snapshot_status(offset, length)

    def copy_status(self, offset, length):
        return self._snapshot("read").snapshot_copy_status(offset, length)

    def is_allocated(self, offset, length):
        """snapshot_access_co_block_status: the snapshot must be readable over the whole range asked; then
        all of it is allocated here."""
        self._snapshot("read").snapshot_check(offset, length)
        return np.array([offset]), np.array([offset + length]), np.array([True])

    def write(self, offset, length, value):
        raise BlockIOError(errno.ENOTSUP, "write")

    def write_batch(self, offsets, lengths, values):
        raise BlockIOError(errno.ENOTSUP, "write")

    def write_zeroes(self, offset, length, unmap=False):
        raise BlockIOError(errno.ENOTSUP, "write")

    def discard(self, offset, length):
        """snapshot_access_co_pdiscard, on a node opened with discard=unmap (else nothing happens)."""
        if self.discard_unmap:
            self._snapshot("discard").snapshot_discard(offset, length)

    def flush(self) -> None:
        """Nothing to flush of its own; bdrv_co_flush goes on to the child it reads (nothing written there)."""
