"""``mirror_top``: the filter a mirror job puts above its source (block/mirror.c, QEMU 7.2).

It has one child, ``backing`` (a filter whose filtered child is its backing link), and passes every
request down; a guest's writes reach the source through it, where the job's dirty bitmap (an
anonymous bitmap on the source, in QEMU 7.2) records them. It is implicit (``#block…``) unless the
job's ``filter-node-name`` names it, and goes when the job ends. A discard through it is dropped: the
node is opened read-write without ``discard=unmap``.
"""

from __future__ import annotations

import weakref

from .node import BlockNode


class MirrorTopNode(BlockNode):
    """The mirror job's filter over ``source`` (its ``backing`` child)."""

    driver = "mirror_top"
    _job: weakref.ref | None = None  # the mirror job (see _do_write), held weakly: the job holds the filter

    @property
    def job(self):
        return self._job() if self._job is not None else None

    def attach(self, job) -> None:
        """The job takes the filter (or, None, lets go of it)."""
        self._job = weakref.ref(job) if job is not None else None

    def __init__(self, node_name: str, **kw) -> None:
        super().__init__(node_name, **kw)
        self.stop = False  # mirror_exit_common: the filter no longer forwards permissions
        self.is_commit = False  # an active commit's: its target is in the source's backing chain

    @property
    def source(self) -> BlockNode:
        node = self.child("backing")
        assert node is not None
        return node

    @property
    def backing(self) -> BlockNode | None:
        return None  # (its backing link is the filtered child, not a backing file)

    @property
    def size(self) -> int:
        return self.source.size

    @property
    def image(self):  # the image file below, for format drivers above
        return getattr(self.source, "image", None)

    @property
    def cluster_size(self) -> int | None:
        return self.source.cluster_size  # bdrv_get_info: a filter answers for what it filters

    @property
    def reports_zeroes(self) -> bool:
        return self.source.reports_zeroes

    def plain_filename(self) -> str | None:
        return self.source.filename  # bdrv_mirror_top_refresh_filename

    # (``job``: the mirror job's side of bdrv_mirror_top_do_write, None once it has let go of the filter: its
    # ``copies_writes()`` says whether a write goes to the target too (copy-mode write-blocking), ``write_prepare``
    # waits for the job's requests in flight over the range, ``write_target`` writes the target, ``wrote`` tells
    # it a guest wrote)
    def _do_write(self, offset: int, length: int, method: str, below, payload=None) -> None:
        job = self.job
        active = job is not None and job.copies_writes()
        if active:
            job.write_prepare(offset, length)
        below()
        if active:
            job.write_target(method, offset, length, payload)
        if job is not None:
            job.wrote()

    def write(self, offset, length, value):
        self._dirty(offset, length)
        self._do_write(offset, length, "write", lambda: self.source.write(offset, length, value), value)

    def write_batch(self, offsets, lengths, values):
        if self.job is not None and self.job.copies_writes():  # (each request is mirrored on its own)
            for off, ln, v in zip(offsets.tolist(), lengths.tolist(), values.tolist()):
                self.write(off, ln, v)
            return
        self._dirty_batch(offsets, lengths)
        self.source.write_batch(offsets, lengths, values)
        if self.job is not None:
            self.job.wrote()

    def _write_buffer_data(self, offset, length, starts, ends, values, detect):
        self._dirty(offset, length)
        self._do_write(offset, length, "buffer",
                       lambda: self.source.write_buffer(offset, length, starts, ends, values, detect),
                       (starts, ends, values))

    def write_zeroes(self, offset, length, unmap=False):
        self._dirty(offset, length)
        self._do_write(offset, length, "zero",
                       lambda: self.source.write_zeroes(offset, length, unmap and self.source.discard_unmap))

    def discard(self, offset, length):
        if not self.discard_unmap:
            return
        self._dirty(offset, length, discard=True)
        self._do_write(offset, length, "discard", lambda: self.source.discard(offset, length))

    def flush(self) -> None:
        """bdrv_mirror_top_flush, the driver's own flush: its source's (bdrv_co_flush then neither fires events
        nor flushes other children)."""
        if not self.read_only and self.child("backing") is not None:
            self.source.flush()

    def read_extents(self, offset, length):
        return self.source.read_extents(offset, length)

    def pread(self, offset, length):
        return self.source.pread(offset, length)

    def block_status(self, offset, length):
        return self.source.block_status(offset, length)

    def copy_status(self, offset, length, recurse=True):
        return self.source.copy_status(offset, length)

    def status_codes(self, offset, length):
        return self.source.status_codes(offset, length)

    def is_allocated(self, offset, length):
        return self.source.is_allocated(offset, length)
