"""The stream job (block/stream.c, QEMU 7.2): the data of a node's backing chain pulled into the node.

The job puts a ``copy-on-read`` filter above the node (it takes the node's parents), then walks the disk in
chunks of up to 512 KiB: what the node allocates itself is skipped, what a layer of its backing chain down to
the base's overlay (or ``bottom``) allocates is read through the filter with BDRV_REQ_PREFETCH, which copies it
into the node in whole clusters (copy-on-read: not requests on the node, so its bitmaps do not see them). ``len``
is the disk's size. At the end the node's backing link goes to the base (none: the whole chain was streamed)
and its image names the base as its backing file (``backing-file``, else the base's file name); the nodes in
between that nobody holds close. An error the job ignored still fails it at the end (the backing file stays).
"""

from __future__ import annotations

from ..block.cor import CorNode
from ..block.info import allocated_above, filter_or_cow, skip_filters
from ..block.ioerror import BlockIOError
from ..block.node import BlockNode, Qcow2Node
from ..block.reopen import set_read_only
from .chunked import ChunkedJob
from .job import JobManager

STREAM_CHUNK = 512 * 1024


class StreamJob(ChunkedJob):
    """One stream into ``target`` (the node), from its chain down to ``base_overlay``."""

    job_type = "stream"
    keeps_ignored_errors = True

    def __init__(self, manager: JobManager, job_id: str, *, graph: object, target: BlockNode, cor: CorNode,
                 base_overlay: BlockNode, above_base: BlockNode, intermediates: tuple[BlockNode, ...],
                 backing_file: str | None, on_error: str, target_read_only: bool, auto_finalize: bool = True,
                 auto_dismiss: bool = True, speed: int = 0) -> None:
        self.target = target
        self.cor: CorNode | None = cor
        self.base_overlay = base_overlay
        self.above_base = above_base
        self.intermediates = intermediates
        self.backing_file = backing_file
        self.target_read_only = target_read_only
        super().__init__(manager, job_id, graph=graph, on_error=on_error, auto_finalize=auto_finalize,
                         auto_dismiss=auto_dismiss, speed=speed)

    # -- what the job holds --------------------------------------------------------------
    def node_ids(self) -> set[int]:
        held = {id(self.target), *(id(node) for node in self.intermediates)}
        return held | ({id(self.cor)} if self.cor is not None else set())

    def block_links(self) -> list[tuple[str, object]]:
        """'main node' (the filter), 'active node', each 'intermediate node' (block_job_create,
        block_job_add_bdrv)."""
        main = [("main node", self.cor)] if self.cor is not None else []  # (the filter gone: see clean)
        return [*main, ("active node", self.target), *(("intermediate node", node) for node in self.intermediates)]

    # -- stream_run ---------------------------------------------------------------------------
    def setup(self) -> bool:
        if skip_filters(self.target) is self.base_overlay:  # nothing to stream
            self.run_returned(0)
            return False
        self.length = self.target.size
        self.progress_total = self.length  # job_progress_set_remaining
        return True

    def chunk(self, offset: int) -> tuple[int, bool]:
        """What the node allocates is skipped; where it allocates nothing, up to 512 KiB a layer of its chain
        down to the base's overlay allocates is copied, else the run none of them allocates is skipped (QEMU
        asks 512 KiB at a time: the same progress, no copy)."""
        top = skip_filters(self.target)
        rest = self.length - offset
        s, e, alloc = top.is_allocated(offset, rest)
        nbytes = int(e[0]) - offset
        if bool(alloc[0]):  # allocated in the top: no need to copy
            return nbytes, False
        below = top.backing
        nbytes, copy = allocated_above(skip_filters(below) if below is not None else None, self.base_overlay,
                                       offset, nbytes)
        if copy:
            return min(nbytes, STREAM_CHUNK), True
        return nbytes or rest, False  # (0: the end of the backing file: done)

    def start_copy(self, offset: int, nbytes: int) -> object:
        """stream_populate: a prefetch read through the filter (it copies)."""
        try:
            assert self.cor is not None
            self.cor.prefetch(offset, nbytes)
        except BlockIOError as err:
            return err.with_traceback(None)
        return None

    def end_copy(self, offset: int, nbytes: int, started: object) -> tuple[BlockIOError | None, bool]:
        return (started, True) if isinstance(started, BlockIOError) else (None, True)

    # -- the end ----------------------------------------------------------------------------
    def commit(self) -> None:
        """stream_prepare: the filter goes; the node's backing link goes to the base, its image names it."""
        self._drop_filter()
        top = skip_filters(self.target)
        base = filter_or_cow(self.above_base)
        if top.backing is None:  # (bdrv_cow_child: nothing to relink)
            return
        graph = self.graph
        if hasattr(top, "fill_cow"):
            top.fill_cow()  # (the bytes qcow2 copied into partly written clusters from the old chain)
        graph.replace_backing(top, base)
        if isinstance(top, Qcow2Node):
            unfiltered = skip_filters(base) if base is not None else None
            if unfiltered is None:
                top.change_backing_file(None, None)
            else:
                name = self.backing_file if self.backing_file is not None else unfiltered.filename
                top.change_backing_file(name, unfiltered.driver)

    def clean(self) -> None:
        """stream_clean: the filter goes (if it has not), the node read-only again if it was."""
        self._drop_filter()
        self.graph.job_blks_release(self, backends_only=True)  # blk_unref(s->blk)
        if self.target_read_only and not self.target.read_only:
            set_read_only(self.graph, self.target, True)

    def _drop_filter(self) -> None:
        """bdrv_cor_filter_drop: the filter's parents go down to the node."""
        if self.cor is not None:
            if self.graph.nodes.get(self.cor.node_name) is self.cor:
                self.graph.remove_mirror_top(self.cor, None)
            self.cor = None

    def dismiss(self) -> None:
        """The job goes (job_unref after its dismissal): its links go with it, and the nodes only they held."""
        super().dismiss()
        self.graph.job_blks_release(self)
        for node in (self.target, *self.intermediates):
            node.job_blocker = None

    def early_fail(self) -> None:
        self.transition("null")
        self.manager.jobs.remove(self)
        self.txn.jobs.remove(self)
