"""The commit job (block/commit.c, QEMU 7.2): an image below the active layer merged into its base.

The job puts a ``commit_top`` filter above the top it commits (the overlay's backing link then points at the
filter), holds the nodes from the top down to the base as intermediate nodes, and copies, in chunks of up to
512 KiB, what the layers above the base allocate: read through the top, written into the base through a
BlockBackend of its own (so the base's dirty bitmaps record every chunk). ``len`` is the top's size and
``offset`` passes over what needs no copy as well. On success the overlay's backing link goes to the base
and the overlay's image names the base as its backing file (``backing-file``, else the base's file name);
the intermediate nodes nobody else holds close when the job goes. A base that was read-only is read-only again
afterwards.
"""

from __future__ import annotations

from ..block.commit_top import CommitTopNode
from ..block.info import allocated_above, find_overlay, skip_filters
from ..block.ioerror import BlockIOError
from ..block.node import BlockNode, Qcow2Node
from ..block.reopen import set_read_only
from .chunked import ChunkedJob
from .job import JobManager

COMMIT_BUFFER_SIZE = 512 * 1024


class CommitJob(ChunkedJob):
    """One commit: ``top`` (and the layers down to ``base``) into ``base``."""

    job_type = "commit"

    def __init__(self, manager: JobManager, job_id: str, *, graph: object, active: BlockNode, top: BlockNode,
                 base: BlockNode, filter_node: CommitTopNode | None, intermediates: tuple[BlockNode, ...],
                 backing_file: str | None, on_error: str, base_read_only: bool, auto_finalize: bool = True,
                 auto_dismiss: bool = True, speed: int = 0) -> None:
        self.active = active
        self.top = top
        self.base = base
        self.filter = filter_node
        self.intermediates = intermediates
        self.backing_file = backing_file
        self.base_read_only = base_read_only
        self.base_overlay: BlockNode | None = None
        self.frozen: list = []  # the links from the filter down to the base (graph.freeze_chain)
        super().__init__(manager, job_id, graph=graph, on_error=on_error, auto_finalize=auto_finalize,
                         auto_dismiss=auto_dismiss, speed=speed)

    # -- what the job holds --------------------------------------------------------------
    def node_ids(self) -> set[int]:
        return {id(self.active), id(self.base), *(id(node) for node in self.intermediates)}

    def block_links(self) -> list[tuple[str, object]]:
        """'main node' (the active layer), each 'intermediate node', 'base' (block_job_create,
        block_job_add_bdrv)."""
        return [("main node", self.active), *(("intermediate node", node) for node in self.intermediates),
                ("base", self.base)]

    # -- commit_run ---------------------------------------------------------------------------
    def setup(self) -> bool:
        self.length = self.top.size
        self.progress_total = self.length  # job_progress_set_remaining
        if self.base.size < self.length:  # blk_co_truncate of the base
            self.base.resize(self.length)
        self.base_overlay = find_overlay(self.top, self.base)
        return True

    def chunk(self, offset: int) -> tuple[int, bool]:
        """bdrv_is_allocated_above(top, base_overlay): up to 512 KiB a layer above the base allocates, copied; else
        the run none of them allocates (QEMU asks 512 KiB at a time: the same progress, no copy)."""
        rest = self.length - offset
        nbytes, copy = allocated_above(skip_filters(self.top), self.base_overlay, offset, rest)
        if copy:
            return min(nbytes, COMMIT_BUFFER_SIZE), True
        return nbytes or rest, False

    def start_copy(self, offset: int, nbytes: int) -> object:
        try:
            return self.top.pread(offset, nbytes)
        except BlockIOError as err:
            return err.with_traceback(None)

    def end_copy(self, offset: int, nbytes: int, started: object) -> tuple[BlockIOError | None, bool]:
        """The read's error, else the write into the base's."""
        if isinstance(started, BlockIOError):
            return started, True
        starts, ends, values = started  # type: ignore[misc]
        try:
            self.base.write_buffer(offset, nbytes, starts, ends, values)
        except BlockIOError as err:
            return err.with_traceback(None), False
        return None, True

    # -- the end ----------------------------------------------------------------------------
    def commit(self) -> None:
        """commit_prepare: the chain thawed, bdrv_drop_intermediate(commit_top, base, backing_file)."""
        graph = self.graph
        graph.unfreeze(self.frozen)
        overlays = [node for node in graph.nodes.values()
                    if any(role == "backing" and child is self.filter for role, child in node.children)]
        name = self.backing_file if self.backing_file is not None else self.base.filename
        graph.remove_mirror_top(self.filter, self.base)
        for overlay in overlays:  # bdrv_backing_update_filename (a read-only overlay is writable meanwhile)
            if isinstance(overlay, Qcow2Node):
                overlay.change_backing_file(name, self.base.driver)
        graph.job_blks_release(self, backends_only=True)  # (blk_unref of the base's and the top's BlockBackends)
        # (the job's links, and the nodes only they hold, stay until the job goes: see dismiss)

    def abort(self) -> None:
        """commit_abort: the chain thawed, the filter goes, the overlay's backing link is back on the top."""
        self.graph.unfreeze(self.frozen)
        self.graph.job_blks_release(self)
        if self.filter is not None and self.graph.nodes.get(self.filter.node_name) is self.filter:
            self.graph.remove_mirror_top(self.filter, None)
        self._unblock()

    def clean(self) -> None:
        """commit_clean: a base that was read-only is again."""
        if self.base_read_only and not self.base.read_only and self.graph.nodes.get(self.base.node_name) is self.base:
            set_read_only(self.graph, self.base, True)

    def early_fail(self) -> None:
        """job_early_fail, then commit_start's error path: the base read-only again, the filter gone."""
        self.transition("null")
        self.manager.jobs.remove(self)
        self.txn.jobs.remove(self)
        if self.base_read_only and not self.base.read_only:
            set_read_only(self.graph, self.base, True)
        if self.filter is not None and self.graph.nodes.get(self.filter.node_name) is self.filter:
            self.graph.remove_mirror_top(self.filter, None)

    def dismiss(self) -> None:
        """The job goes (job_unref after its dismissal): its links go with it, and the nodes only they held."""
        super().dismiss()
        self.graph.job_blks_release(self)
        self._unblock()

    def _unblock(self) -> None:
        for node in (self.active, self.base, *self.intermediates):
            node.job_blocker = None
