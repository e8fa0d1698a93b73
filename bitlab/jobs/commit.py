"""The commit job (block/commit.c, QEMU 7.2): an image below the active layer merged into its base.

The job puts a ``commit_top`` filter above the top it commits (the overlay's backing link then points at the
filter), holds the nodes from the top down to the base as intermediate nodes, and copies, in chunks of up to
512 KiB, what the layers above the base allocate: read through the top, written into the base through a
BlockBackend of its own (so the base's dirty bitmaps record every chunk). ``len`` is the top's size and
``offset`` passes over what needs no copy as well. On success the overlay's backing link goes to the base
and the overlay's image names the base as its backing file (``backing-file``, else the base's file name);
the intermediate nodes nobody else holds close. A base that was read-only is read-only again afterwards.
"""

from __future__ import annotations

import numpy as np

from ..block.commit_top import CommitTopNode
from ..block.info import skip_filters
from ..block.ioerror import BlockIOError
from ..block.node import BlockNode
from ..block.reopen import set_read_only
from .backup import error_action
from .block_copy import RateLimit, io_time_ns
from .job import Job, JobManager, strerror, weak_method

COMMIT_BUFFER_SIZE = 512 * 1024


class CommitJob(Job):
    """One commit: ``top`` (and the layers down to ``base``) into ``base``."""

    job_type = "commit"

    def __init__(self, manager: JobManager, job_id: str, *, graph: object, active: BlockNode, top: BlockNode,
                 base: BlockNode, filter_node: CommitTopNode | None, intermediates: tuple[BlockNode, ...],
                 backing_file: str | None, on_error: str, base_read_only: bool, auto_finalize: bool = True,
                 auto_dismiss: bool = True, speed: int = 0) -> None:
        self.graph = graph
        self.active = active
        self.top = top
        self.base = base
        self.filter = filter_node
        self.intermediates = intermediates
        self.backing_file = backing_file
        self.on_error = on_error
        self.base_read_only = base_read_only
        self.rate = RateLimit()
        self.offset = 0
        self.length = 0
        self.delay = 0  # delay_ns: the rate limit's wait after the last chunk copied
        self.op: tuple | None = None  # (offset, nbytes, runs or error, timer): the chunk being copied
        self.sleep = None
        self.initialised = False
        self.base_overlay: BlockNode | None = None
        super().__init__(manager, job_id, auto_finalize=auto_finalize, auto_dismiss=auto_dismiss, speed=speed)
        self._wake_cb = weak_method(self._wake)
        self._op_done_cb = weak_method(self._op_done)
        self.set_speed(speed)

    # -- what the job holds --------------------------------------------------------------
    def node_ids(self) -> set[int]:
        return {id(self.active), id(self.base), *(id(node) for node in self.intermediates)}

    def block_links(self) -> list[tuple[str, object]]:
        """'main node' (the active layer), each 'intermediate node', 'base' (block_job_create,
        block_job_add_bdrv)."""
        return [("main node", self.active), *(("intermediate node", node) for node in self.intermediates),
                ("base", self.base)]

    def set_speed(self, speed: int) -> None:
        self.speed = speed
        self.rate.set_speed(speed)

    @property
    def now(self) -> int:
        return self.manager.scheduler.clock.now_ns

    # -- running --------------------------------------------------------------------------
    def run(self) -> None:
        """commit_run, resumed from wherever the job stopped."""
        self._cancel_sleep()
        if not self.initialised:
            self.initialised = True
            self.length = self.top.size
            self.progress_total = self.length  # job_progress_set_remaining
            if self.base.size < self.length:  # blk_co_truncate of the base
                self.base.resize(self.length)
            self.base_overlay = _overlay_of(self.top, self.base)
        self._loop()

    def _loop(self) -> None:
        """commit_run's loop, from its job_sleep_ns up to the next point where the job waits."""
        while True:
            if self.pause_point():
                return
            if self.is_cancelled or self.offset >= self.length:
                self.run_returned(0)
                return
            end, copy = _next_chunk(self.top, self.base_overlay, self.offset, self.length)
            if not copy:  # (nothing to copy: the next sleep is of 0 ns, and nothing happens meanwhile)
                self.progress_current += end - self.offset
                self.offset = end
                self.delay = 0
                continue
            nbytes = end - self.offset
            try:
                payload: object = self.top.pread(self.offset, nbytes)
            except BlockIOError as err:
                payload = err.with_traceback(None)
            timer = self.manager.scheduler.after(io_time_ns(nbytes, not isinstance(payload, BlockIOError)),
                                                 self._op_done_cb)
            self.op = (self.offset, nbytes, payload, timer)
            return

    def _op_done(self) -> None:
        """The chunk's read (and write) are done: the error policy, the progress, the rate limit's sleep."""
        assert self.op is not None
        offset, nbytes, payload, _ = self.op
        self.op = None
        self.pausing = False
        error, is_read = (payload, True) if isinstance(payload, BlockIOError) else (None, True)
        if error is None:
            starts, ends, values = payload  # type: ignore[misc]
            try:
                self.base.write_buffer(offset, nbytes, starts, ends, values)
            except BlockIOError as err:
                error, is_read = err.with_traceback(None), False
        if error is not None:
            action = error_action(self.on_error, error.errno)
            self.manager.emit("BLOCK_JOB_ERROR", {"device": self.id, "operation": "read" if is_read else "write",
                                                  "action": action})
            if action == "report":
                self.run_returned(-error.errno, strerror(error.errno))
                return
            if action == "stop":
                self.io_status = "nospace" if error.errno == 28 else "failed"
                if not self.user_paused:
                    self.user_paused = True
                    self.pause_count += 1
        else:
            self.progress_current += nbytes
            self.offset += nbytes
            self.delay = self.rate.delay(self.now, nbytes)  # block_job_ratelimit_get_delay
        self.sleep = self.manager.scheduler.after(self.delay, self._wake_cb)

    def _wake(self) -> None:
        self.sleep = None
        if not self.deferred_to_main_loop and not self.paused:
            self._loop()

    def _cancel_sleep(self) -> bool:
        if self.sleep is None:
            return False
        self.sleep.cancel()
        self.sleep = None
        return True

    # -- pausing, cancelling ----------------------------------------------------------------
    def pause_wait(self) -> bool:
        """A pause waits for the chunk being copied (the job pauses at its next sleep)."""
        return self.op is not None

    def on_pause(self) -> None:
        """The job is paused: a sleep ends (the loop goes on when it resumes); a chunk a drain caught in flight
        ends now (the drain waits for it)."""
        self._cancel_sleep()
        if self.op is not None:
            self.op[3].cancel()
            self._op_done()
            self._cancel_sleep()

    def on_cancel(self) -> None:
        """job_enter: a sleeping job wakes and sees the cancel; one copying sees it after the chunk."""
        if self.deferred_to_main_loop or self.paused or self.op is not None or not self.started:
            return
        self._cancel_sleep()  # (asleep, or left a pause whose sleep it had ended)
        self._loop()

    def stop_work(self) -> None:
        self._cancel_sleep()
        if self.op is not None:
            self.op[3].cancel()
            self.op = None

    # -- the end ----------------------------------------------------------------------------
    def commit(self) -> None:
        """commit_prepare: bdrv_drop_intermediate(commit_top, base, backing_file)."""
        graph = self.graph
        overlays = [node for node in graph.nodes.values()
                    if any(role == "backing" and child is self.filter for role, child in node.children)]
        name = self.backing_file if self.backing_file is not None else self.base.filename
        graph.remove_mirror_top(self.filter, self.base)
        for overlay in overlays:  # bdrv_backing_update_filename (a read-only overlay is writable meanwhile)
            image = getattr(overlay, "image", None)
            if image is not None:
                image.backing_file, image.backing_fmt = name, self.base.driver
                overlay.auto_backing_file = name  # (bdrv_change_backing_file)
        graph.job_blks_release(self, backends_only=True)  # (blk_unref of the base's and the top's BlockBackends)
        # (the job's links, and the nodes only they hold, stay until the job goes: see dismiss)

    def abort(self) -> None:
        """commit_abort: the filter goes, the overlay's backing link is back on the top."""
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

    def block_job_info(self) -> dict:
        info = super().block_job_info()
        info["busy"] = self.op is not None
        return info


def _overlay_of(top: BlockNode, base: BlockNode) -> BlockNode | None:
    """bdrv_find_overlay(top, base): the node of top's chain whose backing node is the base."""
    node: BlockNode | None = skip_filters(top)
    stop = skip_filters(base)
    while node is not None:
        below = node.backing
        nxt = skip_filters(below) if below is not None else None
        if nxt is stop:
            return node
        node = nxt
    return None


def _next_chunk(top: BlockNode, base_overlay: BlockNode | None, offset: int, length: int) -> tuple[int, bool]:
    """bdrv_is_allocated_above(top, base_overlay, include_base, offset, 512 KiB): where the answer ends, and
    whether a layer from the top down to the base's overlay allocates the bytes at ``offset``: the first layer
    that does answers, for no more than the layers above leave unallocated. Where no layer allocates, the
    answer runs on to the next byte one does (QEMU asks 512 KiB at a time: the same progress, no copy)."""
    layers = []
    node: BlockNode | None = skip_filters(top)
    while node is not None:
        layers.append(node)
        if node is base_overlay:
            break
        node = skip_filters(node.backing) if node.backing is not None else None
    nbytes = min(COMMIT_BUFFER_SIZE, length - offset)
    for layer in layers:
        s, e, alloc = layer.is_allocated(offset, nbytes)
        nbytes = min(nbytes, int(e[0]) - offset)
        if bool(alloc[0]):
            return offset + nbytes, True
    end = length  # nothing allocated here: on to where a layer allocates
    for layer in layers:
        s, e, alloc = layer.is_allocated(offset, length - offset)
        hit = np.flatnonzero(np.asarray(alloc, dtype=bool))
        if hit.size:
            end = min(end, int(np.asarray(s)[hit[0]]))
    return max(end, offset + nbytes), False
