"""The mirror job (block/mirror.c, QEMU 7.2): a live copy of a disk that ends in a switch-over.

The job puts a ``mirror_top`` filter above its source and an anonymous dirty bitmap on the source
(granularity: the target's cluster size, 4 KiB to 64 KiB). It marks what it must copy (sync ``full``:
the whole disk for blockdev-mirror, which zeroes the target; otherwise what the source's chain
allocates), then copies dirty chunks in iterations of up to ``buf-size`` bytes, at most 16 requests in
flight: data is read and written, what reads as zeroes is written as zeroes. When nothing is dirty and
nothing in flight it flushes the target and is ``ready`` (BLOCK_JOB_READY); from then on it copies
whatever the guest writes, and ``job-complete`` makes it drain, check once more, flush the target and switch
every parent of the source over to the target (the pivot). Cancelled before it is ready, or by force, it is
cancelled; a plain ``block-job-cancel`` once ready completes it without the switch.
"""

from __future__ import annotations

import errno as _errno
from functools import partial
from typing import Any

import numpy as np

from ..bitmap import DirtyBitmap
from ..block.info import skip_filters
from ..block.ioerror import BlockIOError
from ..block.mirror_top import MirrorTopNode
from ..block.node import STATUS_DATA_ZERO, BlockNode, Qcow2Node
from .backup import ENOSPC, error_action
from .block_copy import RateLimit, _zeroes_never_yield, io_time_ns
from .job import Job, JobManager, JobTxn, strerror, weak_method

MAX_IN_FLIGHT = 16
MAX_IO_BYTES = 1 << 20
DEFAULT_BUF_SIZE = MAX_IN_FLIGHT * MAX_IO_BYTES
SLICE_NS = 100_000_000  # BLOCK_JOB_SLICE_TIME
COPY, ZERO, DISCARD = "copy", "zero", "discard"


def default_granularity(target: BlockNode) -> int:
    """bdrv_get_default_bitmap_granularity: the target's cluster size within [4 KiB, 64 KiB], else 64 KiB."""
    cluster = target.cluster_size
    return max(4096, min(cluster, 65536)) if cluster else 65536


class _Op:
    """A MirrorOp: one request of an iteration, in flight until its write (or zero write) is done."""

    __slots__ = ("offset", "nbytes", "method", "runs", "error", "error_is_read", "timer", "chunks")

    def __init__(self, offset: int, nbytes: int, method: str, chunks: int) -> None:
        self.offset, self.nbytes, self.method, self.chunks = offset, nbytes, method, chunks
        self.runs: Any = None
        self.error: BlockIOError | None = None
        self.error_is_read = True
        self.timer: Any = None


class MirrorJob(Job):
    """One mirror: source -> target, through a mirror_top filter above the source."""

    job_type = "mirror"

    def __init__(self, manager: JobManager, job_id: str, *, graph: Any, source: BlockNode, target: BlockNode,
                 top: MirrorTopNode, sync: str, granularity: int, buf_size: int, zero_target: bool,
                 on_source_error: str = "report", on_target_error: str = "report", txn: JobTxn | None = None,
                 auto_finalize: bool = True, auto_dismiss: bool = True, speed: int = 0,
                 owns_target: bool = False, copy_mode: str = "background",
                 intermediates: tuple[BlockNode, ...] = ()) -> None:
        self.graph = graph
        # active commit (commit_active_start): the target is a node of the source's backing chain; the job is a
        # commit job, copies what the chain allocates above it, and holds the nodes between as intermediate nodes
        self.is_commit = sync == "commit"
        if self.is_commit:
            self.job_type = "commit"
        self.intermediates = intermediates
        self.frozen: list = []  # an active commit's frozen links (graph.freeze_chain)
        self.copy_mode = copy_mode
        self.source = source
        self.target = target
        self.top = top
        self.sync = sync
        self.granularity = granularity
        self.buf_size = -(-buf_size // granularity) * granularity
        self.zero_target = zero_target
        self.on_source_error = on_source_error
        self.on_target_error = on_target_error
        self.owns_target = owns_target
        self.rate = RateLimit()
        # QEMU 7.2: anonymous, on the source, recording (disabled with copy-mode write-blocking: the filter's
        # writes go to the target themselves; a write that does not pass the filter is not seen)
        self.dirty = DirtyBitmap(source.size, granularity, disabled=copy_mode == "write-blocking")
        self.ops: list[_Op] = []
        self.bytes_in_flight = 0
        self.buf_free = self.buf_size // granularity
        self.s_ret = 0
        self.s_err: str | None = None
        self.initialised = False
        self.should_complete = False
        self.waiting = False  # for a request in flight to end (mirror_wait_for_free_in_flight_slot)
        self.sleep: Any = None  # the timer of the job's sleep (rate limit, or the slice when ready)
        self.exit_drained = False  # mirror_run has returned: its drained section of the source lasts until the end
        self.asleep = False  # in a sleep that takes time (job->busy is false)
        self.idle = False  # ready, nothing dirty, asleep until a write (or a command) wakes it
        self.last_pause_ns = 0
        self.woken = False  # a pause ended the job's sleep: it returns as the job resumes
        self.slept_at = 0  # when the job went to sleep in ready, clean (it wakes every SLICE_NS from then)
        self.cursor = 0  # the dirty iterator's position
        self._count: int | None = None  # the dirty bytes, while the bitmap has changed only by iterations
        self.backing_after: BlockNode | None = None  # drive-mirror sync top / none: the target's backing node
        self.tables: set[int] = set()
        self.cow: DirtyBitmap | None = None  # chunks copied so far, where copies cover the target's clusters
        self.target_cluster = 0  # the target's L2 tables the job's requests have reached
        super().__init__(manager, job_id, txn=txn, auto_finalize=auto_finalize, auto_dismiss=auto_dismiss,
                         speed=speed)
        source.add_bitmap(self.dirty)
        top.attach(self)
        # (the scheduler's timers call back through weak references: no reference cycle runs through the machine)
        self._wake_cb = weak_method(self._wake)
        self._op_done_cb = weak_method(self._op_done)
        self.set_speed(speed)

    # -- what the job holds --------------------------------------------------------------
    def node_ids(self) -> set[int]:
        return {id(self.source), id(self.target), id(self.top)} | {id(node) for node in self.intermediates}

    def uses(self, node: Any) -> bool:
        return node is self.source or node is self.target or node is self.top or node in self.intermediates

    def block_links(self) -> list[tuple[str, Any]]:
        """'main node' (the filter), 'source', 'target' and an active commit's 'intermediate node's
        (block_job_create, block_job_add_bdrv)."""
        if self.graph.nodes.get(self.top.node_name) is not self.top:
            return []
        return [("main node", self.top), ("source", self.source), ("target", self.target),
                *(("intermediate node", node) for node in self.intermediates)]

    @property
    def is_ready(self) -> bool:
        """job_is_ready."""
        return self.status in ("ready", "standby")

    def set_speed(self, speed: int) -> None:
        self.speed = speed
        self.rate.set_speed(speed)

    def cancel_force(self, force: bool) -> bool:
        """mirror_cancel: before the job is ready every cancel is a forced one."""
        return force or not self.is_ready

    @property
    def now(self) -> int:
        return self.manager.scheduler.clock.now_ns

    # -- the dirty count --------------------------------------------------------------------
    def _dirty_count(self) -> int:
        """bdrv_get_dirty_count, counted again only after the bitmap changed other than by an iteration."""
        if self._count is None:
            self._count = self.dirty.count
        return self._count

    # -- the filter's side (bdrv_mirror_top_do_write) ------------------------------------------
    def copies_writes(self) -> bool:
        """should_copy_to_target: copy-mode write-blocking, the job set up (its first pass marked), not failed,
        not cancelled."""
        return self.copy_mode == "write-blocking" and self.initialised and self.s_ret >= 0 and not self.is_cancelled

    def write_prepare(self, offset: int, length: int) -> None:
        """active_write_prepare: the guest's write waits for the job's requests in flight over its range (they
        end now)."""
        for op in [op for op in self.ops if op.offset < offset + length and offset < op.offset + op.nbytes]:
            op.timer.cancel()
            waiting, self.waiting = self.waiting, False
            self._op_done(op)
            self.waiting = waiting

    def write_target(self, method: str, offset: int, length: int, payload: object) -> None:
        """do_sync_target_write: the write goes to the target too, counted in ``len`` and ``offset``; the job's
        bitmap (not recording in this mode) loses the granules it covers whole; an unaligned head or tail in a
        granule still dirty stays for the background copy."""
        g = self.granularity
        bits = self.dirty.bits
        if offset % g and bits[offset // g]:
            skip = g - offset % g
            if length <= skip:
                return
            offset, length = offset + skip, length - skip
            if payload is not None and method == "buffer":
                payload = _cut(payload, offset)
        end = offset + length
        if end % g and bits[(end - 1) // g]:
            if length <= end % g:
                return
            length -= end % g
        lo, hi = -(-offset // g) * g, (offset + length) // g * g
        if lo < hi:
            self.dirty.reset_range(lo, hi - lo)
        self._count = None
        self.progress_total += length
        try:
            if method == "write":
                self.target.write(offset, length, payload)
            elif method == "buffer":
                starts, ends, values = payload
                self.target.write_buffer(offset, length, starts, ends, values)
            elif method == "zero":
                self.target.write_zeroes(offset, length, True)
            else:
                self.target.discard(offset, length)
        except BlockIOError as err:
            self.dirty.set_range(offset // g * g, -(-(offset + length) // g) * g - offset // g * g)
            self._error(err.with_traceback(None), False)
            return
        self.progress_current += length

    def wrote(self) -> None:
        """A write through the filter: a job asleep in ready wakes at the end of its slice (mirror_run's
        job_sleep_ns(BLOCK_JOB_SLICE_TIME) while it is ready and clean)."""
        self._count = None
        if self.idle and self.sleep is None and not self.paused:
            slices = max(1, -(-(self.now - self.slept_at) // SLICE_NS))
            self.sleep = self.manager.scheduler.at(self.slept_at + slices * SLICE_NS, self._wake_cb)

    def _wake(self) -> None:
        self.sleep = None
        self.idle = self.asleep = False
        self.last_pause_ns = self.now  # (mirror_run: when the sleep returns)
        if not self.deferred_to_main_loop and not self.paused:
            self._loop()

    def _cancel_sleep(self) -> bool:
        """The job's sleep ends early (job_enter); whether it was asleep."""
        asleep = self.sleep is not None or self.idle
        if self.sleep is not None:
            self.sleep.cancel()
            self.sleep = None
        self.idle = self.asleep = False
        return asleep

    # -- running --------------------------------------------------------------------------
    def run(self) -> None:
        """mirror_run, resumed from wherever the job stopped (a sleep a pause ended returns now)."""
        if self._cancel_sleep() or self.woken:
            self.woken = False
            self.last_pause_ns = self.now
        if self.is_cancelled and not self.ops:
            self.run_returned(0)
            return
        if not self.initialised:
            self.initialised = True
            if self.is_commit:  # active commit grows a base smaller than the top
                if self.source.size > self.target.size:
                    self.target.resize(self.source.size)
            elif self.source.size != self.target.size:
                self._exit(-_errno.EINVAL, "Source and target image have different sizes")
                return
            self._cow_setup()
            self._dirty_init()
            self.last_pause_ns = self.now
        self._loop()

    def _cow_setup(self) -> None:
        """mirror_run: a target that names a backing file it has not opened, of clusters larger than the
        granularity, gets a COW bitmap (copies cover its whole clusters) and a buffer of at least a cluster."""
        tc = self.target.cluster_size or 512
        image = getattr(self.target, "image", None)
        if image is not None and image.backing_file and self.target.backing is None and self.granularity < tc:
            self.target_cluster = tc
            self.buf_size = max(self.buf_size, tc)
            self.buf_free = self.buf_size // self.granularity
            self.cow = DirtyBitmap(self.source.size, self.granularity, disabled=True)

    def _dirty_init(self) -> None:
        """mirror_dirty_init: what the first pass copies."""
        if self.sync == "none":
            return
        if self.zero_target:  # (bdrv_can_write_zeroes_with_unmap is false without discard=unmap on the target)
            if not (self.target.discard_unmap and self.target.driver in ("qcow2", "file")):
                self.dirty.set_range(0, self.source.size)
                return
            self.target.write_zeroes(0, self.target.size, True)  # the initial zeroing: no progress
        if self.is_commit:
            base: BlockNode | None = self.target
        elif self.sync == "top":
            base = skip_filters(self.source).backing
        else:
            base = None
        _allocated(self.source, base, self.dirty)

    def _loop(self) -> None:
        """mirror_run's loop, up to the next point where the job waits."""
        while True:
            self.waiting = False
            if self.s_ret < 0 and not self.ops:
                self._exit(self.s_ret, self.s_err)
                return
            if self.pause_point():
                return
            if self.is_cancelled or self.s_ret < 0:
                if self.ops:  # immediate_exit: mirror_wait_for_all_io
                    self.waiting = True
                    return
                self._exit(self.s_ret if self.s_ret < 0 else 0, self.s_err)
                return
            cnt = self._dirty_count()
            self.progress_total = self.progress_current + self.bytes_in_flight + cnt
            if self.now - self.last_pause_ns < SLICE_NS and self.io_status == "ok":
                if len(self.ops) >= MAX_IN_FLIGHT or self.buf_free == 0 or (cnt == 0 and self.ops):
                    self.waiting = True  # an op's end calls the loop again
                    return
                if cnt and not self._iteration():
                    self.waiting = True  # for the request in flight over the first dirty chunk
                    return
            should_complete = False
            if not self.ops and cnt == 0:
                if not self.is_ready:
                    self.target.flush()
                    self.transition("ready")
                    self.manager.emit("BLOCK_JOB_READY", self.event_data())
                should_complete = self.should_complete or self.cancelled
                cnt = self._dirty_count()
            if cnt == 0 and should_complete:
                self.target.flush()  # (mirror_flush once drained: the target's caches reach its file)
                self._exit(0)
                return
            if self.is_ready and not should_complete:
                if not self.ops and cnt == 0:
                    self.idle = True  # job_sleep_ns(SLICE): only a write can change anything
                    self.slept_at = self.now
                    return
                self.last_pause_ns = self.now
                continue
            delay = self.rate.delay(self.now, 0)  # block_job_ratelimit_sleep
            self.sleep = self.manager.scheduler.after(delay, self._wake_cb)
            self.asleep = delay > 0  # (a sleep of 0 only lets the main loop run: the job counts as busy)
            return

    def _iteration(self) -> bool:
        """mirror_iteration: the dirty chunks from the iterator's position on (up to buf-size), cleared, then
        one request per block-status answer. False if a request in flight over the first chunk must end first
        (mirror_wait_on_conflicts): its end runs the loop again."""
        g = self.granularity
        bits = self.dirty.bits
        first = bits.find(1, self.cursor // g)
        if first < 0:
            first = bits.find(1, 0)
        offset = first * g
        if any(op.offset < offset + g and offset < op.offset + op.nbytes for op in self.ops):
            self.cursor = offset
            return False
        stop = min(self.dirty.nbits, first + max(1, self.buf_size // g))
        end_bit = bits.find(0, first, stop)
        if end_bit < 0:
            end_bit = stop
        nb = max(1, min(end_bit - first, self._next_in_flight(offset) // g - first))
        self.cursor = (first + nb) * g
        self.dirty.reset_range(offset, nb * g)
        if self._count is not None:
            self._count -= nb * g  # (the nb chunks were all dirty)
        size = self.source.size
        max_io = max(self.buf_size // MAX_IN_FLIGHT, MAX_IO_BYTES)
        while nb > 0 and offset < size:
            end_run, is_data, is_zero = _status(self.source, offset, min(nb * g, size - offset))
            io = end_run - offset
            if is_data:
                io = min(io, max_io)
            io -= io % g
            method = COPY
            if io < g:
                io = g
            elif not is_data:
                tc = self.target.cluster_size or 1
                end = min(offset + io, size)
                if offset % tc == 0 and (end % tc == 0 or end == size):
                    method = ZERO if is_zero else DISCARD
            io = min(io, size - offset)
            start, length = offset, io
            if method == COPY:
                io = length = min(io, self.buf_size, g * 1024)  # mirror_co_read: buf-size and max_iov chunks
                if self.cow is not None:
                    start, length = self._cow_align(offset, io)
                    io = start + length - offset  # bytes_handled: up to the aligned end
            self._perform(start, length, method)
            self.rate.delay(self.now, io)  # block_job_ratelimit_processed_bytes
            offset += io
            nb -= -(-io // g)
        return True

    def _cow_align(self, offset: int, nbytes: int) -> tuple[int, int]:
        """mirror_cow_align: a copy whose first or last chunk the job has not copied yet covers the target's whole
        clusters (its backing file is not open: nothing else would fill the rest of a cluster)."""
        g, tc, size = self.granularity, self.target_cluster, self.source.size
        bits = self.cow.bits  # type: ignore[union-attr]
        start, end = offset, offset + nbytes
        need = not bits[offset // g] or not bits[(end - 1) // g]
        if need:
            start, end = offset // tc * tc, -(-end // tc) * tc
        most = g * 1024
        if end - start > most:
            end = start + (most // tc * tc if need else most)
        return start, min(end, size) - start

    def _next_in_flight(self, offset: int) -> int:
        """Where the first request in flight after ``offset`` begins (the in-flight bitmap's next set bit)."""
        starts = [op.offset for op in self.ops if op.offset + op.nbytes > offset]
        return max(min(starts), offset + self.granularity) if starts else 1 << 62

    def _perform(self, offset: int, nbytes: int, method: str) -> None:
        """mirror_perform: the request starts (a read now, its write when the read is done)."""
        chunks = -(-nbytes // self.granularity) if method == COPY else 0
        op = _Op(offset, nbytes, method, chunks)
        self.buf_free -= chunks
        self.bytes_in_flight += nbytes
        self.ops.append(op)
        if method == COPY:
            try:
                op.runs = self.source.pread(offset, nbytes)
            except BlockIOError as err:
                op.error = err.with_traceback(None)
        elif self._at_once(offset, nbytes, method):  # the request never yields: done in mirror_perform
            self._op_done(op)
            return
        # (several requests in flight complete in an order that varies in QEMU from run to run, and so do the
        # target's host clusters they allocate; bitlab's end in the order of their simulated durations)
        op.timer = self.manager.scheduler.after(io_time_ns(nbytes, method == COPY), partial(self._op_done_cb, op))

    def _at_once(self, offset: int, nbytes: int, method: str) -> bool:
        """Whether a zero write (or discard) on the target completes without yielding: a discard the target
        drops (no discard=unmap), a null-co target, a qcow2 one over a file whose L2 tables for the range exist
        (only its metadata cache changes; a new L2 table is written at once: that yields)."""
        target = self.target
        if method == DISCARD and not target.discard_unmap:
            return True
        if isinstance(target, Qcow2Node) and target.file.driver == "file":
            per = (target.cluster_size or 65536) ** 2 // 8  # guest bytes per L2 table
            tables = range(offset // per, (offset + nbytes - 1) // per + 1)
            layout = target.image._layout
            new = [i for i in tables if i not in self.tables and (layout is None or layout.l2_any_missing(i, i))]
            self.tables.update(tables)
            return not new
        return _zeroes_never_yield(target)

    def _op_done(self, op: _Op) -> None:
        """mirror_read_complete / mirror_write_complete, then mirror_iteration_done."""
        if op.error is None:
            try:
                if op.method == COPY:
                    starts, ends, vals = op.runs
                    self.target.write_buffer(op.offset, op.nbytes, starts, ends, vals)
                elif op.method == ZERO:
                    self.target.write_zeroes(op.offset, op.nbytes, True)
                else:
                    self.target.discard(op.offset, op.nbytes)
            except BlockIOError as err:
                op.error, op.error_is_read = err.with_traceback(None), False
        self.ops.remove(op)
        self.buf_free += op.chunks
        self.bytes_in_flight -= op.nbytes
        if op.error is None and self.cow is not None:
            self.cow.set_range(op.offset, op.nbytes)
        if op.error is not None:
            self.dirty.set_range(op.offset, op.nbytes)
            self._count = None
            self._error(op.error, op.error_is_read)
        else:
            self.progress_current += op.nbytes
        if self.waiting and not self.paused:
            self._loop()

    def _error(self, err: BlockIOError, is_read: bool) -> None:
        """mirror_error_action (block_job_error_action): the event, then the action."""
        action = error_action(self.on_source_error if is_read else self.on_target_error, err.errno)
        self.manager.emit("BLOCK_JOB_ERROR", {"device": self.id, "operation": "read" if is_read else "write",
                                              "action": action})
        if action == "report":
            if self.s_ret >= 0:
                self.s_ret, self.s_err = -err.errno, strerror(err.errno)
        elif action == "stop":
            if not self.user_paused:
                self.user_paused = True
                self.pause_count += 1
            self.io_status = "nospace" if err.errno == ENOSPC else "failed"

    def _exit(self, ret: int, err: str | None = None) -> None:
        """mirror_run returns; the source stays drained until mirror_exit_common (the job shows paused)."""
        self._cancel_sleep()
        self.exit_drained = True
        self.run_returned(ret, err)

    # -- pausing, cancelling ----------------------------------------------------------------
    def early_fail(self) -> None:
        """job_early_fail, then mirror_start_job's error path: the bitmap and the filter go."""
        self.transition("null")
        self.manager.jobs.remove(self)
        self.txn.jobs.remove(self)
        if self.dirty in self.source.bitmaps:
            self.source.bitmaps.remove(self.dirty)
        self.top.attach(None)
        self.graph.remove_mirror_top(self.top, None)

    def on_pause(self) -> None:
        """mirror_pause waits for the requests in flight (they end now); a sleep ends too (it returns when the
        job resumes)."""
        self.woken = self._cancel_sleep() or self.woken
        for op in list(self.ops):
            op.timer.cancel()
            self.waiting = False
            self._op_done(op)

    def on_cancel(self) -> None:
        """job_enter: the job wakes (from its sleep, or the pause a forced cancel ended) and sees the cancel; one
        waiting for a request in flight sees it when the request ends."""
        if self.deferred_to_main_loop or self.paused or self.waiting or not self.started:
            return
        if self._cancel_sleep() or self.woken:
            self.woken = False
            self.last_pause_ns = self.now
        self._loop()

    def complete_request(self) -> None:
        """mirror_complete (job-complete): the job switches over once it has drained."""
        if not self.is_ready:
            super().complete_request()
        self.should_complete = True
        if not self.paused and (self.sleep is not None or self.idle):
            self._cancel_sleep()
            self.last_pause_ns = self.now
            self._loop()

    def stop_work(self) -> None:
        self._cancel_sleep()
        for op in list(self.ops):
            op.timer.cancel()
        self.ops.clear()

    # -- the end ----------------------------------------------------------------------------
    def event_data(self) -> dict:
        """BLOCK_JOB_READY / _COMPLETED / _CANCELLED members (schema order)."""
        return {"type": self.job_type, "device": self.id, "len": self.progress_total,
                "offset": self.progress_current, "speed": self.speed}

    def commit(self) -> None:
        if self.backing_after is not None and self.target.backing is None:  # bdrv_set_backing_hd
            self.graph.set_backing(self.target, self.backing_after)
        self._exit_common(switch=self.should_complete)

    def abort(self) -> None:
        self._exit_common(switch=False)

    def _exit_common(self, *, switch: bool) -> None:
        """mirror_exit_common: the chain thawed, the bitmap goes, the target takes the source's place (when
        completing), the filter goes."""
        self.graph.unfreeze(self.frozen)
        if self.dirty in self.source.bitmaps:
            self.source.bitmaps.remove(self.dirty)
        self.top.attach(None)
        self.exit_drained = False
        self.graph.remove_mirror_top(self.top, self.target if switch else None)
        self.graph.job_blks_release(self)
        self.target.job_blocker = self.source.job_blocker = None
        for node in self.intermediates:
            node.job_blocker = None
        if self.owns_target:
            self.graph.release_job_target(self.target)

    def block_job_info(self) -> dict:
        info = super().block_job_info()
        info["busy"] = self.status in ("running", "ready") and not self.asleep and not self.idle
        info["ready"] = self.is_ready
        info["paused"] = info["paused"] or self.exit_drained
        return info


def _cut(runs: tuple, offset: int) -> tuple:
    """Runs (starts, ends, values) from ``offset`` on."""
    starts, ends, values = (np.asarray(a) for a in runs)
    keep = ends > offset
    return np.maximum(starts[keep], offset), ends[keep], values[keep]


def _status(node: BlockNode, offset: int, length: int) -> tuple[int, bool, bool]:
    """bdrv_co_block_status_above(source, NULL) over ``[offset, offset + length)``: where its first answer
    ends, whether it is data, whether it reads as zeroes. null-co answers for the whole range: zeroes with
    read-zeroes, else neither (the target's range is then discarded)."""
    bottom = skip_filters(node)
    if bottom.driver in ("null-co", "null-aio"):
        return offset + length, False, bottom.reports_zeroes
    s, e, zero = node.copy_status(offset, length)
    end = int(e[0])
    if bool(zero[0]):
        _, c_e, codes = node.status_codes(offset, end - offset)
        if codes[0] == STATUS_DATA_ZERO:  # (BDRV_BLOCK_DATA with ZERO, a preallocated image's hole: mirror copies it)
            return min(end, int(c_e[0])), True, False
        return end, False, True
    return end, True, False


def _allocated(node: BlockNode, base: BlockNode | None, into: DirtyBitmap) -> None:
    """bdrv_is_allocated_above(source, base_overlay): mark in ``into`` what the layers of the source's chain
    above ``base`` allocate (every layer without one)."""
    size = node.size
    stop = skip_filters(base) if base is not None else None
    layer: BlockNode | None = node
    while layer is not None:
        layer = skip_filters(layer)
        if layer is stop:
            break
        s, e, alloc = layer.is_allocated(0, size)
        keep = np.asarray(alloc, dtype=bool) & (np.asarray(e) > np.asarray(s))
        if keep.any():
            lo = np.asarray(s)[keep]
            hi = np.minimum(np.asarray(e)[keep], size)
            into.set_ranges(lo, hi - lo)
        layer = layer.backing
