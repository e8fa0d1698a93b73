"""The backup job (block/backup.c): a point-in-time copy driven by block-copy.

The job freezes its sync bitmap (an anonymous successor records new writes),
puts a copy-before-write filter above the source, copies what its sync mode asks
for, and at the end abdicates or reclaims the bitmap as its bitmap-mode says.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from ..bitmap import DirtyBitmap
from ..block.cbw import CbwNode
from ..block.node import BlockNode
from .block_copy import BlockCopy, Call
from .job import Job, JobManager, JobTxn, strerror, weak_method

ENOSPC = 28


def error_action(policy: str, errno: int) -> str:
    """backup_error_action's mapping of on-source-error / on-target-error."""
    if policy == "report":
        return "report"
    if policy == "ignore":
        return "ignore"
    if policy == "stop":
        return "stop"
    return "stop" if errno == ENOSPC else "report"  # enospc, auto


def _instant(node: BlockNode) -> bool:
    """Whether I/O on ``node`` completes without yielding: null-co without latency-ns, and raw or
    blkdebug over such a node (a request blkdebug fails does yield, but the failure ends the call)."""
    if node.driver == "null-co":
        return not node.options.get("latency-ns")
    child = node.child("file") if node.driver == "raw" else node.child("image") if node.driver == "blkdebug" else None
    return child is not None and _instant(child)


class BackupJob(Job):
    """One backup: source -> target through a copy-before-write filter."""

    job_type = "backup"

    def __init__(self, manager: JobManager, job_id: str, *, graph: Any, source: BlockNode, target: BlockNode,
                 sync: str, bitmap: DirtyBitmap | None, bitmap_mode: str | None, cluster_size: int,
                 filter_name: str, on_source_error: str = "report", on_target_error: str = "report",
                 max_workers: int = 64, max_chunk: int = 0, txn: JobTxn | None = None,
                 auto_finalize: bool = True, auto_dismiss: bool = True, speed: int = 0,
                 owns_target: bool = False, use_copy_range: bool = False, compress: bool = False) -> None:
        self.graph = graph
        self.source = source
        self.target = target
        self.sync = sync
        self.sync_bitmap = bitmap
        self.bitmap_mode = bitmap_mode
        self.on_source_error = on_source_error
        self.on_target_error = on_target_error
        self.max_workers = max_workers
        self.max_chunk = max_chunk
        self.owns_target = owns_target
        self.initialised = False
        self.call: Call | None = None
        self.error_stopped = False  # an error paused the job (on-*-error stop); backup_loop retries after it
        self.bcs = BlockCopy(source, target, cluster_size, manager.scheduler, weak_method(self._progress))
        self.bcs.set_copy_opts(use_copy_range, compress)
        # copy-before-write: the filter copies what the guest is about to overwrite (errors fail the write)
        self.cbw = CbwNode(filter_name, cluster_size=cluster_size, before_write=self.bcs.copy_now,
                           size=source.size, auto_named=filter_name.startswith("#"))
        graph.insert_filter(source, self.cbw, target, self.bcs.bitmap)
        self.cbw.job_blocker = target.job_blocker = "block device is in use by block job: backup"
        try:
            super().__init__(manager, job_id, txn=txn, auto_finalize=auto_finalize, auto_dismiss=auto_dismiss,
                             speed=speed)
        except Exception:
            self.undo_create()
            raise
        self.set_speed(speed)

    def early_fail(self) -> None:
        """job_early_fail: a job that could not be set up goes straight to null."""
        self.transition("null")
        self.manager.jobs.remove(self)
        self.txn.jobs.remove(self)
        self.undo_create()

    def undo_create(self) -> None:
        """backup_job_create's error path: reclaim the bitmap, drop the filter."""
        if self.sync_bitmap is not None and self.sync_bitmap.successor is not None:
            child = self.sync_bitmap.successor
            self.sync_bitmap.reclaim()
            self.source.bitmaps.remove(child)
        self._drop_filter()
        self.target.job_blocker = None
        if self.owns_target:
            self.graph.release_job_target(self.target)

    def _drop_filter(self) -> None:
        """bdrv_cbw_drop: bdrv_replace_node_common drains the filter itself while its parents move down to the
        source, so a job whose filter sits above this one (an older backup of the same source) pauses, and
        resumes as its link moves; a job whose filter is below is not reached."""
        manager = self.__dict__.get("manager")  # (none yet when the job's creation failed)
        if manager is not None and manager.throttle_groups:  # a throttle node above is drained too
            manager.throttle_drain(self.cbw, True)
            try:
                self._drop_filter_drained(manager)
            finally:
                manager.throttle_drain(self.cbw, False)
            return
        self._drop_filter_drained(manager)

    def _drop_filter_drained(self, manager: Any) -> None:
        if manager is None or self.cbw.filtered_by is None:
            self.graph.remove_filter(self.cbw, self.bcs.bitmap, self.source)
            return
        above = []
        node = self.cbw.filtered_by
        while node is not None:
            above.append(node)
            node = node.filtered_by
        manager.drain_jobs([job for job in manager.jobs if getattr(job, "cbw", None) in above],
                           partial(self.graph.remove_filter, self.cbw, self.bcs.bitmap, self.source))

    def node_ids(self) -> set[int]:
        return {id(self.source), id(self.target), id(self.cbw)}

    def uses(self, node: Any) -> bool:
        """:meth:`Job.uses` without building :meth:`node_ids`."""
        return node is self.source or node is self.target or node is self.cbw

    def block_links(self) -> list[tuple[str, Any]]:
        """'main node' (the filter) and 'target', from creation until the job's clean drops the filter."""
        if self.graph.nodes.get(self.cbw.node_name) is not self.cbw:
            return []
        return [("main node", self.cbw), ("target", self.target)]

    # -- speed and progress -----------------------------------------------------------
    def set_speed(self, speed: int) -> None:
        """backup_set_speed: the new speed, and the background call woken (block_copy_kick)."""
        self.speed = speed
        self.bcs.rate.set_speed(speed)
        self.bcs.kick()

    def _progress(self, done: int, remaining: int) -> None:
        self.progress_current += done
        self.progress_total = self.progress_current + remaining

    # -- running ------------------------------------------------------------------------
    def run(self) -> None:
        """backup_run, resumed from wherever the job stopped."""
        self.error_stopped = False
        if self.is_cancelled:
            self.run_returned(0)
            return
        if not self.initialised:
            self.initialised = True
            self._init_bitmap()
        if self.sync == "none":
            return  # only copy-before-write works; the job ends when cancelled
        self._copy()

    def _copy(self) -> None:
        """backup_loop's block_copy_async (the call may even end before this returns)."""
        self.call = self.bcs.start(self.max_workers, self.max_chunk, weak_method(self._call_done))
        self.bcs.launch(self.call)

    def _init_bitmap(self) -> None:
        """backup_init_bcs_bitmap (and the sync=top pass over unallocated clusters)."""
        bcs = self.bcs
        if self.sync == "bitmap":
            bcs.bitmap.clear()
            bcs.bitmap.merge_from(self.sync_bitmap)
        else:
            bcs.bitmap.set_range(0, bcs.len)
        if self.sync == "top":
            bcs.reset_unallocated()
        self.progress_total = self.progress_current + bcs.remaining()

    def _call_done(self, call: Call) -> None:
        """backup_loop after a block-copy call ends."""
        self.call = None
        if self.status not in ("running", "ready"):
            return
        if self.pausing:  # backup_pause's call has ended
            if self.is_cancelled:
                self.pausing = False
                self.run_returned(0)
            else:
                self.pause_waited()
            return
        if self.is_cancelled or (call.error is None and not call.cancelled):
            self.run_returned(0)
            return
        if call.cancelled:  # paused: go on when resumed
            return
        err = call.error
        action = error_action(self.on_source_error if call.error_is_read else self.on_target_error, err.errno)
        self.manager.emit("BLOCK_JOB_ERROR", {"device": self.id, "operation": "read" if call.error_is_read
                                              else "write", "action": action})
        if action == "report":
            self.run_returned(-err.errno, strerror(err.errno))
        elif action == "ignore":
            self._copy()
        else:  # stop: the job is user-paused until resumed
            self.io_status = "nospace" if err.errno == ENOSPC else "failed"
            self.error_stopped = True
            self.user_paused = True
            self.pause_count += 1
            self.pause_point()

    def pause_wait(self) -> bool:
        """backup_pause cancels the call and waits for its requests in flight: those a throttle node holds
        take time (the others end at once, see :meth:`on_pause`)."""
        if self.call is not None and self.bcs.throttled_in_flight(self.call):
            self.bcs.cancel()
            return True
        return False

    def on_pause(self) -> None:
        """backup_pause cancels the block-copy call; requests in flight still complete (a drain
        waits for them), and the call is retried from the bitmap when the job resumes."""
        if self.call is not None:
            self.bcs.stop()
            self.call = None

    def on_cancel(self) -> None:
        if self.call is not None:
            self.bcs.cancel()
        elif self.error_stopped and self.sync != "none":
            # Stopped on an error: backup_loop retries once more before it sees the cancel,
            # so the requests it starts still complete, and so does the next task, created
            # before block-copy waited for a free worker (the spare). Between nodes whose I/O
            # never yields, that call copies everything before the job looks again.
            self.io_status, self.error_stopped = "ok", False
            self.call = self.bcs.start(self.max_workers, self.max_chunk, weak_method(self._call_done))
            if _instant(self.source) and _instant(self.target):
                self.bcs.launch(self.call)
                return
            self.call.spare = 1  # before the call's first requests (under a rate limit they start now)
            self.bcs.launch(self.call)
            self.manager.scheduler.after(0, self.bcs.cancel)
        elif not self.deferred_to_main_loop and self.status in ("running", "ready"):
            # Idle (sync=none waits in job_yield; a resumed job between calls): job_cancel enters
            # the job, backup_run returns and job_exit runs before the monitor's next command.
            self.run_returned(0)

    def stop_work(self) -> None:
        self.bcs.stop()
        self.call = None

    # -- the end --------------------------------------------------------------------------
    def _cleanup_sync_bitmap(self, ret: int) -> None:
        """backup_cleanup_sync_bitmap."""
        bm = self.sync_bitmap
        if bm is None:
            return
        sync = (ret == 0 or self.bitmap_mode == "always") and self.bitmap_mode != "never"
        node = self.source
        if sync:
            child = bm.abdicate()
            node.bitmaps.remove(bm)
            result = child
        else:
            child = bm.successor
            bm.reclaim()
            node.bitmaps.remove(child)
            result = bm
        if ret < 0 and self.bitmap_mode == "always":
            result.merge_from(self.bcs.bitmap)

    def commit(self) -> None:
        self._cleanup_sync_bitmap(0)

    def abort(self) -> None:
        self._cleanup_sync_bitmap(-1)

    def clean(self) -> None:
        """backup_clean: drop the filter (and a drive-backup's own target)."""
        self.bcs.stop()
        self._drop_filter()
        self.target.job_blocker = None
        if self.owns_target:
            self.graph.release_job_target(self.target)
