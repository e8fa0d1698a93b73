"""``copy-on-read``: the filter a stream job puts above the node it streams into (block/copy-on-read.c and
block/io.c's bdrv_co_do_copy_on_readv, QEMU 7.2).

One child, ``file``; writes pass down. A read (the job's prefetch, or a guest's) of bytes its ``file`` node does not
allocate but a layer of the backing chain down to ``bottom`` does is copied into the ``file`` node first, in
whole clusters of it: read through the chain, written as data (or as a zero write where the data is all zeroes).
These are the driver's own writes, not requests on the node: the node's bitmaps, write threshold and statistics
do not see them (its file node does see qcow2's writes).
"""

from __future__ import annotations

import numpy as np

from .info import allocated_above, skip_filters
from .mirror_top import MirrorTopNode
from .node import BlockNode

MAX_BOUNCE_BUFFER = 32768 << 9  # block/io.c


class CorNode(MirrorTopNode):
    """The copy-on-read filter over ``file`` (the node streamed into); ``bottom``: the lowest node copied from."""

    driver = "copy-on-read"

    def __init__(self, node_name: str, *, bottom: BlockNode | None = None, implicit: bool = False, **kw) -> None:
        super().__init__(node_name, **kw)
        self.bottom = bottom
        self.implicit = implicit  # a stream job's, without filter-node-name
        self.frozen_keys: list = []  # the links down to bottom it froze (graph.freeze_chain)

    @property
    def source(self) -> BlockNode:
        node = self.child("file")
        assert node is not None
        return node

    def plain_filename(self) -> str | None:
        """An implicit filter's is its child's; any other has no filename of its own (``json:``)."""
        return self.source.filename if self.implicit else None

    def pread(self, offset, length):
        """cor_co_preadv_part: what needs it is copied first, then read as it is now."""
        self.prefetch(offset, length)
        return self.source.pread(offset, length)

    def prefetch(self, offset: int, length: int) -> int:
        """A read with BDRV_REQ_PREFETCH: only the copies. Returns the bytes copied into the ``file`` node."""
        top = self.source
        below = top.backing
        copied = 0
        pos, end = offset, offset + length
        while pos < end:
            s, e, alloc = top.is_allocated(pos, end - pos)
            n = int(e[0]) - pos
            if not bool(alloc[0]):
                if self.bottom is None:  # (no bottom: BDRV_REQ_COPY_ON_READ on whatever the node does not allocate)
                    copied += copy_on_read(top, pos, n)
                    pos += n
                    continue
                n, above = allocated_above(skip_filters(below) if below is not None else None, self.bottom, pos, n)
                if n == 0:
                    break
                if above:
                    copied += copy_on_read(top, pos, n)
            pos += n
        return copied


def copy_on_read(node: BlockNode, offset: int, length: int) -> int:
    """bdrv_co_do_copy_on_readv: the clusters of ``node`` around ``[offset, offset + length)`` that it does not
    allocate are read through its chain and written into it (zeroes as a zero write), not as requests on it.
    Returns the bytes written."""
    cs = node.cluster_size or 512
    lo, hi = offset // cs * cs, min(-(-(offset + length) // cs) * cs, node.size)
    written = 0
    pos = lo
    node.untracked = True
    try:
        while pos < hi:
            s, e, alloc = node.is_allocated(pos, hi - pos)
            pnum = int(e[0]) - pos
            if not bool(alloc[0]):
                pnum = min(pnum, MAX_BOUNCE_BUFFER)
                starts, ends, values = node.pread(pos, pnum)
                if not (np.asarray(values) > 0).any():  # buffer_is_zero
                    node.write_zeroes(pos, pnum, False)
                else:
                    node.write_buffer(pos, pnum, np.asarray(starts), np.asarray(ends), np.asarray(values),
                                      detect=False)
                written += pnum
            pos += pnum
    finally:
        node.untracked = False
    return written
