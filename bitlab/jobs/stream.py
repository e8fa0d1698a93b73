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

import errno as _errno

from ..block.cor import CorNode, _allocated_above
from ..block.info import filter_or_cow, skip_filters
from ..block.ioerror import BlockIOError
from ..block.node import BlockNode
from ..block.reopen import set_read_only
from .backup import error_action
from .block_copy import RateLimit, io_time_ns
from .job import Job, JobManager, strerror, weak_method

STREAM_CHUNK = 512 * 1024


class StreamJob(Job):
    """One stream into ``target`` (the node), from its chain down to ``base_overlay``."""

    job_type = "stream"

    def __init__(self, manager: JobManager, job_id: str, *, graph: object, target: BlockNode, cor: CorNode,
                 base_overlay: BlockNode, above_base: BlockNode, intermediates: tuple[BlockNode, ...],
                 backing_file: str | None, on_error: str, target_read_only: bool, auto_finalize: bool = True,
                 auto_dismiss: bool = True, speed: int = 0) -> None:
        self.graph = graph
        self.target = target
        self.cor: CorNode | None = cor
        self.base_overlay = base_overlay
        self.above_base = above_base
        self.intermediates = intermediates
        self.backing_file = backing_file
        self.on_error = on_error
        self.target_read_only = target_read_only
        self.rate = RateLimit()
        self.offset = 0
        self.length = 0
        self.delay = 0
        self.error = 0  # the first error, kept even when ignored
        self.error_text: str | None = None
        self.op: tuple | None = None  # (offset, nbytes, failure or None, timer)
        self.sleep = None
        self.initialised = False
        super().__init__(manager, job_id, auto_finalize=auto_finalize, auto_dismiss=auto_dismiss, speed=speed)
        self._wake_cb = weak_method(self._wake)
        self._op_done_cb = weak_method(self._op_done)
        self.set_speed(speed)

    # -- what the job holds --------------------------------------------------------------
    def node_ids(self) -> set[int]:
        held = {id(self.target), *(id(node) for node in self.intermediates)}
        return held | ({id(self.cor)} if self.cor is not None else set())

    def block_links(self) -> list[tuple[str, object]]:
        """'main node' (the filter), 'active node', each 'intermediate node' (block_job_create,
        block_job_add_bdrv)."""
        main = [("main node", self.cor)] if self.cor is not None else []  # (the filter gone: see clean)
        return [*main, ("active node", self.target), *(("intermediate node", node) for node in self.intermediates)]

    def set_speed(self, speed: int) -> None:
        self.speed = speed
        self.rate.set_speed(speed)

    @property
    def now(self) -> int:
        return self.manager.scheduler.clock.now_ns

    # -- running --------------------------------------------------------------------------
    def run(self) -> None:
        """stream_run, resumed from wherever the job stopped."""
        self._cancel_sleep()
        if not self.initialised:
            self.initialised = True
            if skip_filters(self.target) is self.base_overlay:  # nothing to stream
                self.run_returned(0)
                return
            self.length = self.target.size
            self.progress_total = self.length  # job_progress_set_remaining
        self._loop()

    def _loop(self) -> None:
        """stream_run's loop, from its job_sleep_ns up to the next point where the job waits."""
        top = skip_filters(self.target)
        while True:
            if self.pause_point():
                return
            if self.is_cancelled or self.offset >= self.length:
                self._return()
                return
            offset = self.offset
            s, e, alloc = top.is_allocated(offset, min(STREAM_CHUNK, self.length - offset))
            n = int(e[0]) - offset
            copy = False
            if not bool(alloc[0]):  # allocated in the top: no need to copy
                below = top.backing
                n, copy = _allocated_above(skip_filters(below) if below is not None else None, self.base_overlay,
                                           offset, n)
                if not copy and n == 0:  # the end of the backing file: done
                    n = self.length - offset
            if not copy:
                self.progress_current += n
                self.offset += n
                self.delay = 0
                continue
            failure: BlockIOError | None = None
            try:
                assert self.cor is not None
                self.cor.prefetch(offset, n)
            except BlockIOError as err:
                failure = err.with_traceback(None)
            timer = self.manager.scheduler.after(io_time_ns(n, True), self._op_done_cb)
            self.op = (offset, n, failure, timer)
            return

    def _op_done(self) -> None:
        """The chunk's copy-on-read is done: the error policy, the progress, the rate limit's sleep."""
        assert self.op is not None
        _, nbytes, failure, _ = self.op
        self.op = None
        self.pausing = False
        if failure is not None:
            action = error_action(self.on_error, failure.errno)
            self.manager.emit("BLOCK_JOB_ERROR", {"device": self.id, "operation": "read", "action": action})
            if action == "stop":
                self.io_status = "nospace" if failure.errno == _errno.ENOSPC else "failed"
                if not self.user_paused:
                    self.user_paused = True
                    self.pause_count += 1
                self.sleep = self.manager.scheduler.after(self.delay, self._wake_cb)
                return
            if not self.error:
                self.error, self.error_text = -failure.errno, strerror(failure.errno)
            if action == "report":
                self._return()
                return
        self.progress_current += nbytes
        self.offset += nbytes
        self.delay = self.rate.delay(self.now, nbytes)
        self.sleep = self.manager.scheduler.after(self.delay, self._wake_cb)

    def _return(self) -> None:
        self.run_returned(self.error, self.error_text)

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
        self._cancel_sleep()
        if self.op is not None:
            self.op[3].cancel()
            self._op_done()
            self._cancel_sleep()

    def on_cancel(self) -> None:
        if self.deferred_to_main_loop or self.paused or self.op is not None or not self.started:
            return
        self._cancel_sleep()
        self._loop()

    def stop_work(self) -> None:
        self._cancel_sleep()
        if self.op is not None:
            self.op[3].cancel()
            self.op = None

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
        image = getattr(top, "image", None)
        if image is not None:
            unfiltered = skip_filters(base) if base is not None else None
            if unfiltered is None:
                image.backing_file, image.backing_fmt = None, None
            else:
                name = self.backing_file if self.backing_file is not None else unfiltered.filename
                image.backing_file, image.backing_fmt = name, unfiltered.driver
            top.auto_backing_file = image.backing_file  # (bdrv_change_backing_file)

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

    def block_job_info(self) -> dict:
        info = super().block_job_info()
        info["busy"] = self.op is not None
        return info
