"""block-copy: copy the dirty clusters of a copy bitmap from source to target.

As block/block-copy.c does it: clusters of the *job cluster size*; tasks of
contiguous dirty clusters up to 1 MiB (16 MiB once x-perf ``use-copy-range`` worked:
:meth:`BlockCopy.set_copy_opts`), split where the source's block status
extent ends (:meth:`BlockCopy.classify`; zero extents are written as zeroes, without
a read, and a cluster whose extent is shorter than it is copied as data); up to
``max_workers`` tasks in flight; a rate limit checked before each task. A task
clears its bits when it starts and sets them again if it fails. Reads happen
when a task starts (that is the point in time its data belongs to), writes when
it completes, on the machine's simulated clock. A task is whole clusters for the
bitmap, the progress and the rate limit (the last cluster counts whole, so ``len``
is the disk rounded up to the job's cluster); its I/O stops at the end of the disk.

Zero clusters on the target: a zero task is a write-zeroes request (no unmap: the
target's clusters keep their host clusters). A data task is one write request of
its whole buffer, so a target opened with detect-zeroes (drive-backup opens its
target with ``detect-zeroes=unmap``) turns a task whose buffer is all zeroes into a
write-zeroes request that may unmap (:meth:`BlockNode.write_buffer`); a task that
mixes data and zero bytes stays data, every cluster of it.

The bulk path
-------------
One task per scheduler event is exact but costs Python work per task. When nothing
can observe the requests one by one — no rate limit (speed 0), only null-co, file,
raw and qcow2 nodes under the source and the target (so no blkdebug rule can see a
request), no task in flight — ``_launch`` starts a :class:`Batch` instead: the next
tasks, cut exactly as the per-task path cuts them, computed with numpy from the
bitmap and the source's block status. All of them start at once (their bits are
cleared in one slice, the source is read once and clipped to the tasks) and the
batch completes in one scheduler event (one target write batch for data, one for
zeroes, one progress report). Zero tasks never read the source, so a source with
other nodes below it (blkdebug) still gets batches of them, up to its first data task.

Timing: the batch runs in *waves* of ``max_workers`` tasks (durations from
:func:`io_time_ns`): a wave that another follows lasts the mean duration of its tasks
(the per-task path's pool starts a new task as soon as any one ends, so it stays busy),
the batch's last wave lasts its longest task (the pool drains); the batch's event is
at the end of its last wave. A batch holds at most ``BULK_MAX_TASKS`` tasks and only
the waves that end by the scheduler's horizon (``until`` of ``run(until)``; a bare
``step()`` gets one wave) — always at least its first wave. This is the per-task
path's timing exactly when a batch has at most ``max_workers`` tasks or tasks of one
duration, and close otherwise (1M random clusters of a 1 TiB disk: 2.422932 simulated
seconds, the per-task path 2.422953). Timestamps can differ between the two
paths; the data copied, the bitmaps, and the progress (``offset``/``len``) of a job
that runs to its end do not.

Anything that reaches the copy while a batch is in flight — a guest write through
copy-before-write, a pause, a cancel or a stop (say another job of the transaction
failed) — first *settles* the batch to the current time: waves already over
complete now, the wave in progress stays in flight, later waves are put back (bits
set again, as if never started). So every state anything can see is the wave
model's state at that time. One case keeps the per-task path: a qcow2 target where
the batch would write zeroes (zero tasks, or zeroes the target detects) over clusters
that hold data (the image file's size is a high-water mark that could depend on the
order of the writes).

The count of dirty clusters is kept while a call runs (``bitarray.count`` over the
whole bitmap once per call, not once per task).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import numpy as np

from ..bitmap import DirtyBitmap, bits_from_bool, range_mask
from ..block import batch_writes, throttle, wstats
from ..block.blkdebug import BlockIOError
from ..block.extents import UNALLOCATED, ZERO, clip_runs, range_items
from ..block.node import FEW_EXTENTS, BlockNode, FileNode, NullNode, Qcow2Node, RawNode
from ..block.throttle import admitted, backing_reads, block_until, throttle_path

MAX_BUFFER = 1 << 20  # BLOCK_COPY_MAX_BUFFER
MAX_COPY_RANGE = 16 << 20  # BLOCK_COPY_MAX_COPY_RANGE
NO_LIMIT = 1 << 62
INT_MAX = (1 << 31) - 1  # a call's max-chunk of 0: the method's chunk size only
# block_copy_set_copy_opts: how data is copied (BlockCopyMethod, zero tasks aside)
READ_WRITE, RANGE_SMALL, RANGE_FULL = "read-write", "copy-range-small", "copy-range-full"
READ_WRITE_CLUSTER = "read-write-cluster"  # compress: one cluster a task
RANGES = (RANGE_SMALL, RANGE_FULL)
SLICE_NS = 100_000_000  # BLOCK_COPY_SLICE_TIME
# The simulated storage: every request costs a latency plus its bytes at this rate.
LATENCY_NS = 50_000
BYTES_PER_S = 2 << 30
ERROR_NS = 1_000  # blkdebug completes a failed request from a bottom half, before any real I/O

BULK = True  # False: always the per-task path (tests compare the two)
ZERO_RUN, DATA_RUN, ONE_CLUSTER = 0, 1, 2  # cluster kinds (BlockCopy.classify)
BULK_MAX_TASKS = 1 << 20  # tasks one batch may hold (bounds its memory)
FEW_RUNS = 16  # dirty runs a plan finds with bitarray's searches before it turns to numpy
FEW_TASKS = 128  # tasks a plan cuts in plain ints (more: numpy, faster past about this many)
PLAN_FEW = True  # False: plans always vectorised (tests compare the two)
# Drivers whose batched I/O is exactly their one-by-one I/O (exact types, not subclasses).
BULK_DRIVERS = (NullNode, FileNode, RawNode, Qcow2Node)


def io_time_ns(nbytes: int, read: bool) -> int:
    """Simulated duration of one task (read and write, or a zero write)."""
    transfer = nbytes * 1_000_000_000 // BYTES_PER_S
    return LATENCY_NS * (2 if read else 1) + (2 * transfer if read else 0)


class RateLimit:
    """util/throttle's RateLimit (include/qemu/ratelimit.h), on the simulated clock."""

    def __init__(self) -> None:
        self.speed = 0
        self.slice_quota = 0
        self.slice_start = 0
        self.slice_end = 0
        self.dispatched = 0

    def set_speed(self, speed: int) -> None:
        self.speed = speed
        self.slice_quota = max(1, speed * SLICE_NS // 1_000_000_000)

    def delay(self, now: int, n: int) -> int:
        """ratelimit_calculate_delay (QEMU 7.2): account ``n`` bytes; 0 to go on now, else the
        nanoseconds to wait."""
        if not self.speed:
            return 0
        if self.slice_end < now:
            self.slice_start, self.slice_end, self.dispatched = now, now + SLICE_NS, 0
        self.dispatched += n
        if self.dispatched < self.slice_quota:
            return 0
        delay_slices = self.dispatched / self.slice_quota
        self.slice_end = self.slice_start + int(delay_slices * SLICE_NS)
        return self.slice_end - now


@dataclass
class Task:
    """A task of whole clusters (``nbytes`` counts the last cluster whole, as QEMU's ``req.bytes``
    does for progress and the rate limit); its I/O stops at the end of the disk."""

    offset: int
    nbytes: int
    zero: bool
    method: str = READ_WRITE  # the copy's method when the task was made
    written: bool = False  # copy_range wrote the target as the task started
    runs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    error: BlockIOError | None = None
    error_is_read: bool = True


@dataclass(eq=False)
class Batch:
    """Tasks the bulk path started together, run ``workers`` at a time in waves.

    Task ``i`` copies ``[offsets[i], offsets[i] + nbytes[i])`` (whole clusters; its I/O stops at the
    end of the disk), as zeroes if ``zero[i]``,
    else the source runs ``run_s/run_e/run_v[ptr[i]:ptr[i+1]]`` read when it started; those
    the target's detect-zeroes turns into write-zeroes requests are ``detected[i]``.
    Wave ``w`` holds tasks ``w*workers`` on and starts at ``wave_start[w]``; the next wave
    starts when it ends, the last one ends at ``end``.
    """

    offsets: np.ndarray
    nbytes: np.ndarray
    zero: np.ndarray
    run_s: np.ndarray
    run_e: np.ndarray
    run_v: np.ndarray
    ptr: np.ndarray
    wave_start: np.ndarray
    end: int
    workers: int
    detected: np.ndarray
    error = None  # batches run where no request can fail
    error_is_read = True

    def __len__(self) -> int:
        return int(self.offsets.size)

    def wave_end(self, w: int) -> int:
        return int(self.wave_start[w + 1]) if w + 1 < self.wave_start.size else self.end

    def part(self, i0: int, i1: int, wave_start: np.ndarray, end: int) -> Batch:
        p0, p1 = int(self.ptr[i0]), int(self.ptr[i1])
        return Batch(self.offsets[i0:i1], self.nbytes[i0:i1], self.zero[i0:i1], self.run_s[p0:p1],
                     self.run_e[p0:p1], self.run_v[p0:p1], self.ptr[i0 : i1 + 1] - p0, wave_start, end,
                     self.workers, self.detected[i0:i1])


@dataclass
class Call:
    """One block_copy_async call over the whole disk."""

    max_workers: int
    max_chunk: int
    done: Callable[[Call], None]
    cursor: int = 0
    in_flight: int = 0
    found: bool = False
    error: BlockIOError | None = None
    error_is_read: bool = True
    cancelled: bool = False
    spare: int = 0  # a task created before the cancel was seen: it takes the first freed worker
    method: str | None = None  # the method of the next task (made as the last one started), None: the copy's
    finished: bool = False
    timers: list = field(default_factory=list)
    tasks: list = field(default_factory=list)  # (timer, task or batch) in flight
    sleep: Any = None  # the rate limiter's sleep the call's loop is in (its timer), if any


def cluster_size_for(target: BlockNode) -> int:
    """block_copy_calculate_cluster_size: max(64 KiB, the target's cluster size)."""
    return max(65536, target.cluster_size or 0)


def _no_progress(done: int, remaining: int) -> None:
    """A copy-before-write node of the user's has no job to report progress to."""


def cbw_block_copy(source: BlockNode, target: BlockNode, bitmap: DirtyBitmap | None, scheduler: Any) -> BlockCopy:
    """block_copy_state_new for a copy-before-write node opened by blockdev-add: the copy bitmap holds the
    ``bitmap`` option's bits (merged to the copy's clusters), or every cluster; data is read and written."""
    bcs = BlockCopy(source, target, cluster_size_for(target), scheduler, _no_progress)
    if bitmap is not None:
        bcs.bitmap.bits.setall(0)
        bcs.bitmap.merge_from(bitmap)
    bcs.set_copy_opts(False)
    return bcs


class BlockCopy:
    """The copy state shared by a backup job and its copy-before-write filter."""

    def __init__(self, source: BlockNode, target: BlockNode, cluster_size: int, scheduler: Any,
                 on_progress: Callable[[int, int], None]) -> None:
        self.source = source
        self.target = target
        self.cluster_size = cluster_size
        self.scheduler = scheduler
        self.on_progress = on_progress  # (bytes done now, remaining)
        self.len = source.size
        self.bitmap = DirtyBitmap(self.len, cluster_size, disabled=True)
        self.bitmap.bits.setall(1)  # every cluster to copy
        self.in_flight_bytes = 0
        self.skip_unallocated = False
        self.rate = RateLimit()
        self.method = READ_WRITE
        self.compress = False  # data tasks write with BDRV_REQ_WRITE_COMPRESSED (backup's ``compress``)
        self.ranges = False  # whether copy_range reaches a file on both sides
        # block_copy_max_transfer, aligned down to the cluster (blkdebug's max-transfer, through the parents)
        limit = min(_max_transfer(source) or INT_MAX, _max_transfer(target) or INT_MAX, INT_MAX)
        self.max_transfer = limit // cluster_size * cluster_size
        self.call: Call | None = None
        self._nset: int | None = None  # set bits of the bitmap, kept while a call runs

    def set_copy_opts(self, use_copy_range: bool, compress: bool = False) -> None:
        """block_copy_set_copy_opts (x-perf ``use-copy-range``): data starts copied by copy_range in tasks
        of up to 1 MiB; the first one that succeeds makes the tasks made after it up to 16 MiB
        (``RANGE_FULL``), the first one that fails goes back to read and write for good. copy_range
        writes the target without detect-zeroes (bdrv_co_copy_range_internal): a drive-backup target's
        zero-filled data stays data. It works between qcow2, raw and file nodes over files (the image
        store is one file system); any other node on the way answers ENOTSUP. On a qcow2 target over
        such a node QEMU has allocated the cluster first: not simulated (its copy falls back at once).
        ``compress`` copies one cluster a task, by read and write, whatever ``use_copy_range`` says, each data
        task's write compressed (:meth:`Qcow2Node.write_compressed_clusters`; zero tasks write zeroes, without the
        flag), and so does a ``max_transfer`` below the cluster size; a larger one caps the tasks."""
        self.compress = compress
        cluster_tasks = compress or self.max_transfer < self.cluster_size  # (copy_range ignores max_transfer)
        self.method = READ_WRITE_CLUSTER if cluster_tasks else RANGE_SMALL if use_copy_range else READ_WRITE
        self.ranges = _copies_ranges(self.source) and _copies_ranges(self.target)  # data reaches files

    def chunk(self, method: str) -> int:
        """block_copy_chunk_size: the most a task made with ``method`` may copy."""
        if method == READ_WRITE_CLUSTER:
            return self.cluster_size
        return min(max(self.cluster_size, MAX_COPY_RANGE if method == RANGE_FULL else MAX_BUFFER), self.max_transfer)

    # -- progress ------------------------------------------------------------------------
    def remaining(self) -> int:
        nset = self.bitmap.bits.count() if self._nset is None else self._nset
        return (nset << self.bitmap.shift) + self.in_flight_bytes

    def _report(self, done: int) -> None:
        self.on_progress(done, self.remaining())

    def _clusters(self, nbytes: int) -> int:
        return -(-nbytes // self.cluster_size)

    def _io(self, task: Task) -> int:
        """The bytes a task reads and writes (block_copy_do_copy: up to the end of the disk)."""
        return min(task.offset + task.nbytes, self.len) - task.offset

    # -- tasks ---------------------------------------------------------------------------
    def _next_task(self, offset: int, limit: int, method: str | None = None) -> Task | None:
        """block_copy_task_create + block status: the next dirty run at or after ``offset``.

        The run is cut at ``limit`` (at most :meth:`chunk` of ``method``, by default the copy's) and
        where the source's block status answer ends (:meth:`classify`). It is whole clusters, even past
        the end of the disk (block_copy_block_status aligns the last one up).
        """
        cs = self.cluster_size
        method = method or self.method
        found = self.bitmap.bits.find(1, offset // cs)
        if found < 0:
            return None
        end_bit = self.bitmap.bits.find(0, found)
        if end_bit < 0:
            end_bit = self.bitmap.nbits
        start = found * cs
        end = min(end_bit * cs, start + max(cs, min(limit, self.chunk(method)) // cs * cs))
        k0, k1, kind = self.classify(start, min(end, self.len))
        return Task(start, min(int(k1[0]) * cs, end) - start, zero=kind[0] == ZERO_RUN, method=method)

    def classify(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """block_copy_block_status over the clusters of ``[start, end)`` (``start`` cluster-aligned):
        runs of clusters ``[k0, k1)`` with their ``kind``. A cluster is ``ZERO_RUN`` or ``DATA_RUN`` when
        the source's status extent at its start (:meth:`BlockNode.copy_status`) covers all of it, and
        its task may go on to the end of that extent; otherwise QEMU copies that one cluster as data
        (``ONE_CLUSTER``: an extent shorter than the job's cluster). An extent reaching ``end`` covers
        the last cluster too (QEMU aligns up at the end of the disk) if it reaches a cluster further
        from the start of its first cluster (a task starting in a partial last cluster copies it as data)."""
        s, e, zero = self.source.copy_status(start, end - start)
        if s.size <= FEW_EXTENTS:
            return kinds_few(s.tolist(), e.tolist(), zero.tolist(), end, self.cluster_size)
        return kinds(s, e, zero, end, self.cluster_size)

    def reset_unallocated(self) -> None:
        """sync=top: clusters the source's top layer does not allocate need no copy."""
        starts, ends, allocated = self.source.is_allocated(0, self.len)
        cs = self.cluster_size
        keep = DirtyBitmap(self.len, cs)
        if allocated.any():
            keep.bits |= bits_from_bool(range_mask(keep.nbits, starts[allocated] // cs, (ends[allocated] - 1) // cs))
        self.bitmap.bits &= keep.bits
        self._nset = None

    def _begin(self, task: Task) -> None:
        """The task starts: its bits are cleared and, for data, the source is read now."""
        self.bitmap.reset_range(task.offset, task.nbytes)
        if self._nset is not None:
            self._nset -= self._clusters(task.nbytes)
        self.in_flight_bytes += task.nbytes
        if task.zero:
            if task.method in RANGES:  # zeroes allocate as they start too (qcow2 holds its lock meanwhile)
                self.target.write_zeroes(task.offset, self._io(task))
                task.written = True
            return
        if task.method in RANGES and self._copy_range(task):
            return
        try:
            task.runs = self.source.pread(task.offset, self._io(task))
        except BlockIOError as err:  # (kept without its traceback: its frames would hold the task in a cycle)
            task.error, task.error_is_read = err.with_traceback(None), True

    def _finish(self, task: Task | Batch) -> bool:
        """The task ends: write the target (unless the read failed or copy_range wrote it); True on success."""
        if isinstance(task, Batch):
            self._finish_batch(task, 0, len(task))
            return True
        self.in_flight_bytes -= task.nbytes
        if not task.zero and task.method == self.method and task.method in RANGES:
            # block_copy_task_entry: copy_range's outcome sets the method
            self.method = RANGE_FULL if task.written else READ_WRITE
        if task.error is None and not task.written:
            try:
                if task.zero:
                    self.target.write_zeroes(task.offset, self._io(task))
                elif self.compress:
                    starts, ends, vals = task.runs
                    self.target.write_compressed_clusters(np.array([task.offset // self.cluster_size]),
                                                          np.array([self._io(task)]), starts, ends, vals)
                else:
                    starts, ends, vals = task.runs
                    self.target.write_buffer(task.offset, self._io(task), starts, ends, vals)
            except BlockIOError as err:
                task.error, task.error_is_read = err.with_traceback(None), False
        if task.error is not None:
            self.bitmap.set_range(task.offset, task.nbytes)
            if self._nset is not None:
                self._nset += self._clusters(task.nbytes)
            self._report(0)
            return False
        self._report(task.nbytes)
        return True

    def _copy_range(self, task: Task) -> bool:
        """bdrv_co_copy_range as the task starts; False where it answers ENOTSUP (block-copy then reads and
        writes). The target (qcow2_co_copy_range_to) allocates its clusters then, in the order tasks start.
        qcow2_co_copy_range_from goes cluster by cluster: the clusters holding no data (zero ones, unallocated
        ones past the backing chain) are a write-zeroes request on the target, even when a data cluster after
        them then fails; data clusters are copied if a file lies below (blkdebug or null-co: ENOTSUP). Raw and
        file copy every byte. Nothing detects zeroes."""
        if type(self.target) not in (Qcow2Node, RawNode, FileNode):
            return False  # (no copy_range at the target's top: ENOTSUP before anything)
        io = self._io(task)
        if type(self.source) is not Qcow2Node:
            if not self.ranges:
                return False
            starts, ends, vals = task.runs = self.source.read_extents(task.offset, io)
            self.target.write_buffer(task.offset, io, starts, ends, vals, detect=False)
            task.written = True
            return True
        s, e, zero = self.source.copy_status(task.offset, io, recurse=False)
        for lo, hi, z in zip(s.tolist(), e.tolist(), zero.tolist()):
            if z:
                self.target.write_zeroes(lo, hi - lo)
                continue
            if not self.ranges:
                return False
            starts, ends, vals = self.source.read_extents(lo, hi - lo)
            self.target.write_buffer(lo, hi - lo, starts, ends, vals, detect=False)
        task.written = True
        return True

    # -- synchronous copy (copy-before-write) ----------------------------------------------
    def copy_now(self, offset: int, length: int) -> None:
        """Copy every dirty cluster overlapping the range before a guest write lands."""
        cs = self.cluster_size
        start = offset // cs * cs
        end = min(-(-(offset + length) // cs), self.bitmap.nbits) * cs
        call = self.call
        if call is not None and not call.finished:
            self._settle(call)
            self._end_failed_reads(call, start, end)
            self._wait_in_flight(call, start, end)
        pos = start
        error = None
        reading: list[Task] = []  # data tasks whose read yields: they write after the loop, in order
        read_at_once = _never_yields(self.source)
        method = self.method  # every task of the range is made before the first one ends
        while pos < end:
            task = self._next_task(pos, end - pos, method)
            if task is None or task.offset >= end:
                break
            task.nbytes = min(task.nbytes, end - task.offset)
            self._begin(task)
            # The range's tasks all start before the first one ends (a worker each): a zero task's
            # write and a read are issued as its task starts, a data task writes once its read is
            # back (at once from a source that never yields, else after every task has started).
            # Only a request failing without yielding (blkdebug's ``immediately``) stops the loop
            # before the next task (aio_task_pool_status).
            if task.zero or read_at_once or task.error is not None:
                if not self._finish(task) and error is None:
                    error = task.error
                    if _immediately(task):
                        break
            else:
                reading.append(task)
            pos = task.offset + task.nbytes
        for task in reading:
            if not self._finish(task) and error is None:
                error = task.error
        if error is not None:
            raise error

    def _end_failed_reads(self, call: Call, start: int, end: int) -> None:
        """copy-before-write waits for the requests in flight on its range (block_copy_wait_one).
        A task whose read failed has ended in QEMU by then: here it ends now, so its bits are
        back and the guest write copies those clusters first (the failure stays the job's)."""
        failed = self._end_tasks_on(call, start, end, failed=True)
        for task in failed:
            if call.error is None:
                call.error, call.error_is_read = task.error, task.error_is_read
        if failed and call.in_flight == 0:
            call.timers.append(self.scheduler.after(0, lambda: self._launch(call)))  # ends the call

    def _wait_in_flight(self, call: Call, start: int, end: int) -> None:
        """block_copy_wait_one: copy-before-write waits for the requests in flight on its range,
        so they have completed (and counted as progress) when the guest write returns.

        Only under a rate limit, where the requests in flight are QEMU's exactly (the first ones of
        each slice); without one they are the timing model's, and a batch's wave stays in flight. A task
        waiting at a throttle node is waited for as QEMU does: the guest's request blocks while the machine
        runs until the task is done."""
        if throttle.open_nodes and self.throttled_in_flight(call):
            block_until(self.scheduler, lambda: not any(isinstance(tm, _Steps) and t.offset < end
                                                        and start < t.offset + t.nbytes for tm, t in call.tasks))
        if not self.rate.speed:
            return
        waited = self._end_tasks_on(call, start, end, failed=False)
        if waited and call.sleep is None:  # the loop waits for them (the call ends after the guest's write)
            call.timers.append(self.scheduler.after(0, lambda: self._launch(call)))

    def _end_tasks_on(self, call: Call, start: int, end: int, *, failed: bool) -> list[Task]:
        """End now the single tasks in flight on ``[start, end)`` whose read failed (``failed``) or
        did not; return them."""
        ending = [(tm, t) for tm, t in call.tasks if isinstance(t, Task) and (t.error is not None) == failed
                  and t.offset < end and start < t.offset + t.nbytes]
        for timer, task in ending:
            timer.cancel()
            call.tasks = [(tm, t) for tm, t in call.tasks if t is not task]
            call.in_flight -= 1
            self._finish(task)
        return [task for _, task in ending]

    # -- asynchronous copy (the job's background copy) ---------------------------------------
    def start(self, max_workers: int, max_chunk: int, done: Callable[[Call], None]) -> Call:
        self.call = Call(max_workers, max_chunk or NO_LIMIT, done)
        self._nset = self.bitmap.bits.count()
        return self.call

    def launch(self, call: Call) -> None:
        """block_copy_async enters the call's coroutine at once: under a rate limit its first
        requests start now (their clusters are no longer dirty for a guest write's copy-before-write).
        Without one, what is in flight when is the timing model's: the call starts when time runs
        (so that a batch keeps its whole waves); but through a throttle node its requests start now too,
        so a guest's write right after the command meets them there (measured: it waits for them)."""
        if not self.rate.speed and not (throttle.open_nodes and (throttle_path(self.source)
                                                                 or throttle_path(self.target))):
            self.scheduler.after(0, lambda: self._launch(call))
            return
        self._launch(call)

    def throttled_in_flight(self, call: Call) -> bool:
        """Whether a task of the call is on its way through a throttle node."""
        return any(isinstance(tm, _Steps) for tm, _ in call.tasks)

    def cancel(self) -> None:
        call = self.call
        if call is not None and not call.finished:
            self._settle(call)
            call.cancelled = True
            if call.in_flight == 0:
                self._end(call)

    def _launch(self, call: Call) -> None:
        if call.finished:
            return
        first = None  # the per-task path's next task, if the bulk path already made it
        if call.in_flight == 0 and not call.cancelled and call.error is None:
            started = self._launch_batch(call)
            if started is True:
                return
            first = started or None
        while call.in_flight < call.max_workers and not call.cancelled and call.error is None:
            task, first = first or self._next_task(call.cursor, call.max_chunk, call.method), None
            if task is None:
                if call.found and self.bitmap.count:
                    call.cursor, call.found, call.method = 0, False, None  # another pass: bits came back
                    continue
                break
            now = self.scheduler.clock.now_ns
            wait = self.rate.delay(now, 0)
            if wait > 0:
                call.sleep = self.scheduler.after(wait, lambda: self._wake(call))
                call.timers.append(call.sleep)
                return
            self.rate.delay(now, task.nbytes)
            self._start_task(call, task)
            if task.error is not None and _immediately(task):
                break
        if call.in_flight == 0:
            self._end(call)

    def _start_task(self, call: Call, task: Task) -> None:
        """The task starts (its read now) and completes after its I/O time, or at once (no worker
        held) when it writes zeroes that need no I/O (:meth:`_zeroes_at_once`)."""
        call.found = True
        call.cursor = task.offset + task.nbytes
        at_once = task.zero and self._zeroes_at_once(task)
        if throttle.open_nodes:  # (a throttle node somewhere: the task's requests may pass one)
            src = [(node, self._io(task)) for node in throttle_path(self.source)]
            if not task.zero:
                src += backing_reads(self.source, task.offset, self._io(task))
            tgt = [(node, self._io(task)) for node in throttle_path(self.target)]
            with admitted():  # (a throttle's wait is the task's own, below)
                self._begin(task)
        else:
            src = tgt = []
            self._begin(task)
        call.method = self.method  # block-copy's loop makes the next task now, before it waits for a worker
        if at_once:
            if not self._finish(task) and call.error is None:
                call.error, call.error_is_read = task.error, task.error_is_read
            return
        call.in_flight += 1
        if (src or tgt) and task.error is None and not task.written:
            self._start_throttled(call, task, src, tgt)
            return
        delay = io_time_ns(self._io(task), not task.zero)
        if task.error is not None:  # an injected error: at once, or from a bottom half (next loop turn)
            delay = 0 if _immediately(task) else ERROR_NS
        timer = self.scheduler.after(delay, lambda t=task: self._complete(call, t))
        call.timers.append(timer)
        call.tasks.append((timer, task))

    def _start_throttled(self, call: Call, task: Task, src: list, tgt: list) -> None:
        """A task whose read or write passes throttle nodes (``src``, ``tgt``: each with its request's bytes):
        the read waits at each throttle on the source's way, including backing nodes the read reaches
        (throttle_group_co_io_limits_intercept), takes its time, then the write waits for the target's and
        takes its time; then the task completes."""
        io = self._io(task)
        steps = _Steps(self.scheduler)
        call.timers.append(steps)
        call.tasks.append((steps, task))
        transfer = io * 1_000_000_000 // BYTES_PER_S

        def complete() -> None:
            with admitted():
                self._complete(call, task)

        def write() -> None:
            steps.through(tgt, True, lambda: steps.after(LATENCY_NS + transfer * (not task.zero), complete))

        if task.zero:
            write()
        else:
            steps.through(src, False, lambda: steps.after(LATENCY_NS + transfer, write))

    def _zero_batch_at_once(self, offsets: np.ndarray, nbytes: np.ndarray) -> bool:
        """:meth:`_zeroes_at_once` for every zero task of a batch (their clusters ``offsets``/``nbytes``)."""
        return self._zeroes_at_once(Task(int(offsets[0]), int(offsets[-1] + nbytes[-1] - offsets[0]), True))

    def _zeroes_at_once(self, task: Task) -> bool:
        """Whether a zero task completes inside aio_task_pool_start_task, never yielding: qcow2 (v3)
        writes zeroes into its L2 table in the cache, with no I/O once the table exists, so the task
        holds no worker and block-copy's loop goes straight on to the next task. A table yet to be
        allocated is written (it yields). null-co (and raw over it) never yields either."""
        target = self.target
        if type(target) is not Qcow2Node:
            return _zeroes_never_yield(target)
        if target.image.compat == "0.10":
            return False
        cs = target.image.cluster_size
        first, last = task.offset // cs, (task.offset + self._io(task) - 1) // cs
        return not target.image.layout.l2_any_missing(first // (cs // 8), last // (cs // 8))

    def _complete(self, call: Call, task: Task | Batch) -> None:
        call.tasks = [(tm, t) for tm, t in call.tasks if t is not task]
        call.in_flight -= 1
        if not self._finish(task) and call.error is None:
            call.error, call.error_is_read = task.error, task.error_is_read
        if call.spare and call.cancelled and call.error is None:
            # block_copy_task_run: the spare runs unless a task has failed (the pool's status)
            call.spare = 0
            spare = self._next_task(call.cursor, call.max_chunk, call.method)
            if spare is not None:
                self._start_task(call, spare)
        if call.in_flight == 0 and (call.cancelled or call.error is not None):
            self._end(call)
        elif not call.cancelled and call.error is None and call.sleep is None:
            # a free worker: the loop goes on, unless it sleeps on the rate limiter (then it
            # goes on when it wakes, even if nothing is left to copy by then)
            self._launch(call)

    def _wake(self, call: Call) -> None:
        call.sleep = None
        call.method = None  # the task that met the rate limit is made again
        self._launch(call)

    def kick(self) -> None:
        """block_copy_kick (a new speed): a call sleeping on the rate limiter wakes at once."""
        call = self.call
        if call is not None and not call.finished and call.sleep is not None:
            call.sleep.cancel()
            self._wake(call)

    def _end(self, call: Call) -> None:
        if not call.finished:
            call.finished = True
            self._nset = None
            call.done(call)

    def stop(self) -> None:
        """End the running call now: tasks in flight still complete (job_finish_sync waits
        for them), nothing new starts."""
        call = self.call
        if call is None or call.finished:
            return
        self._settle(call)
        for timer in call.timers:
            timer.cancel()
        tasks, call.tasks = call.tasks, []
        for _, task in tasks:
            self._finish(task)
        call.in_flight = 0
        call.finished = True
        self._nset = None

    # -- the bulk path (see the module docstring) ------------------------------------------
    def _launch_batch(self, call: Call) -> bool | Task:
        """Start the next batch (True); False if the per-task path must go on instead, or the task it
        goes on with when this found it (a data task where only zero tasks may be batched)."""
        if not (BULK and not self.rate.speed and _plain(self.target)) or self.method not in (READ_WRITE,
                                                                                            READ_WRITE_CLUSTER):
            return False  # (copy_range: task by task, see set_copy_opts)
        # Zero tasks never read the source: with blkdebug (or anything) below it, a batch of
        # zero tasks is still exact; it ends before the first data task.
        zeroes_only = not _plain(self.source)
        if zeroes_only:  # the per-task path's first task (as the plan would find, at a fraction of its cost)
            first = self._next_task(call.cursor, call.max_chunk, call.method)
            if first is None or not first.zero:
                return first or False  # (the per-task path takes it as it is: nothing changed since)
        plan = self._plan(call, zeroes_only)
        if plan is None:
            return False
        offsets, nbytes, zero, nclusters, wave_start, end = plan
        if zero.all() and self._zero_batch_at_once(offsets, nbytes):
            # zero tasks that need no I/O complete as they start and hold no worker (as on the per-task
            # path, :meth:`_start_task`): the batch takes no time, and the data task after it starts now
            now = self.scheduler.clock.now_ns
            wave_start, end = np.full(wave_start.size, now, dtype=np.int64), now
        detects = self.target.zero_detected() is not None
        if not detects and not self._zeroes_keep_allocation(offsets, nbytes, zero):
            return False  # (checked before the read: this repeats at every launch)
        run_s, run_e, run_v, ptr = self._read(offsets, nbytes, zero)
        detected = self._detected(zero, run_v, ptr) if detects else np.zeros(zero.size, dtype=bool)
        if detects and not self._zeroes_keep_allocation(offsets, nbytes, zero | detected):
            return False
        cs = self.cluster_size
        if self.compress and not zero.all():  # a data task onto a cluster with a host offset fails (EIO): task by task
            data = ~(zero | detected)
            first, count = offsets[data] // cs, -(-(offsets[data] + nbytes[data]) // cs) - offsets[data] // cs
            clusters = range_items(first, count)
            if clusters.size and self.target.compressed_write_meets_host(clusters):
                return False
        # Every dirty bit from the first task to the last belongs to a task of the batch.
        self.bitmap.bits[int(offsets[0]) // cs : self._clusters(int(offsets[-1] + nbytes[-1]))] = 0
        if self._nset is not None:
            self._nset -= nclusters
        self.in_flight_bytes += int(nbytes.sum())
        batch = Batch(offsets, nbytes, zero, run_s, run_e, run_v, ptr, wave_start, end, call.max_workers, detected)
        call.found = True
        call.cursor = int(offsets[-1] + nbytes[-1])
        call.in_flight += 1
        self._schedule(call, batch)
        call.method = self.method  # (block-copy's loop makes the next task as the batch's last one starts)
        return True

    def _schedule(self, call: Call, batch: Batch) -> None:
        timer = self.scheduler.at(batch.end, lambda: self._complete(call, batch))
        call.timers.append(timer)
        call.tasks.append((timer, batch))

    def _plan(self, call: Call, zeroes_only: bool = False) -> tuple | None:
        """The next tasks as the per-task path would cut them, in whole waves up to the horizon."""
        cs = self.cluster_size
        bits = self.bitmap.bits
        first = bits.find(1, min(call.cursor // cs, len(bits)))
        if first < 0:
            return None
        now = self.scheduler.clock.now_ns
        horizon = getattr(self.scheduler, "horizon_ns", None)
        horizon = now if horizon is None else max(horizon, now)
        workers = max(1, call.max_workers)
        chunk = max(1, min(call.max_chunk, self.chunk(self.method)) // cs)  # clusters per task at most
        want = int(min(BULK_MAX_TASKS, (1 + (horizon - now) // LATENCY_NS) * workers))
        rs, re = self._dirty_runs(first, want, want * chunk)
        # Cut the runs where the source's block status answers end (classify: whole clusters).
        lo, hi = int(rs[0]) * cs, min(int(re[-1]) * cs, self.len)
        k0, _, kind = self.classify(lo, hi)
        if PLAN_FEW and rs.size <= FEW_RUNS and k0.size <= 2 * FEW_EXTENTS:
            segments = _segments_few(rs.tolist(), re.tolist(), k0.tolist(), kind.tolist())
            if sum(-(-(e - s) // chunk) for s, e, _ in segments) <= FEW_TASKS:
                return self._plan_few(segments, zeroes_only, now, horizon, workers, chunk, want)
        seg_s, seg_e = rs, re
        bounds = k0[1:]
        if bounds.size:
            r = np.maximum(np.searchsorted(rs, bounds, "right") - 1, 0)
            inside = (bounds > rs[r]) & (bounds < re[r])
            if inside.any():
                seg_s = np.sort(np.concatenate((rs, bounds[inside])), kind="stable")
                seg_e = np.minimum(np.append(seg_s[1:], np.iinfo(np.int64).max),
                                   re[np.searchsorted(rs, seg_s, "right") - 1])
        seg_data = kind[np.searchsorted(k0, seg_s, "right") - 1] != ZERO_RUN
        # Chunks of at most `chunk` clusters from the start of each segment.
        if seg_s.size == 1:  # one segment (say a whole disk of zeroes): a task every `chunk` clusters
            s0, e0 = int(seg_s[0]), int(seg_e[0])
            t_s = np.arange(s0, e0, chunk, dtype=np.int64)
            t_e = np.minimum(t_s + chunk, e0)
            zero = np.full(t_s.size, not seg_data[0])
        else:
            pieces = -(-(seg_e - seg_s) // chunk)
            if pieces.max() == 1:
                t_s, t_e, zero = seg_s, seg_e, ~seg_data
            else:
                owner = np.repeat(np.arange(seg_s.size), pieces)
                nth = np.arange(owner.size) - np.repeat(np.cumsum(pieces) - pieces, pieces)
                t_s = seg_s[owner] + nth * chunk
                t_e = np.minimum(t_s + chunk, seg_e[owner])
                zero = ~seg_data[owner]
        if self.len % cs:  # a task starting in the partial last cluster is data (classify)
            zero = zero & (t_s != self.len // cs)
        if zeroes_only:
            stop = int(np.argmin(zero)) if not zero.all() else zero.size
            # A task that follows would start in a free worker of a partial last wave (zero tasks all
            # last LATENCY_NS), and its read can be seen (blkdebug): keep whole waves only, unless
            # nothing follows.
            if stop < zero.size or bits.find(1, int(t_e[stop - 1]) if stop else 0) >= 0:
                stop = stop // workers * workers
            if stop == 0:
                return None
            t_s, t_e, zero = t_s[:stop], t_e[:stop], zero[:stop]
        # Waves of `workers` tasks: a wave followed by another lasts the mean of its tasks (the
        # pool stays busy), the last one its longest task (the pool drains).
        nbytes = (t_e - t_s) * cs
        io = np.minimum(t_e * cs, self.len) - t_s * cs
        dur = np.where(zero, LATENCY_NS, 2 * LATENCY_NS + 2 * (io * 1_000_000_000 // BYTES_PER_S))
        if dur.size <= workers:  # a single wave (what the general case below comes to, in fewer steps)
            n = min(dur.size, want)
            wave_start = np.array([now], dtype=np.int64)
            end = int(now + dur[:n].max())
        else:
            firsts = np.arange(0, dur.size, workers)
            wave_end = now + np.cumsum(-(-np.add.reduceat(dur, firsts) // workers))
            nwaves = max(1, int(wave_end.searchsorted(horizon, "right")))
            n = min(dur.size, nwaves * workers, want)
            nwaves = -(-n // workers)
            wave_start = np.concatenate(([now], wave_end[: nwaves - 1])).astype(np.int64)
            end = int(wave_start[-1] + dur[firsts[nwaves - 1] : n].max())
        nclusters = int((t_e[:n] - t_s[:n]).sum())
        return t_s[:n] * cs, nbytes[:n], zero[:n], nclusters, wave_start, end

    def _plan_few(self, segments: list[tuple[int, int, bool]], zeroes_only: bool, now: int, horizon: int,
                  workers: int, chunk: int, want: int) -> tuple | None:
        """:meth:`_plan` from its segments (clusters ``[s, e)``, data or not) on, in plain ints, for a plan of
        at most ``FEW_TASKS`` tasks (numpy's cost per call dwarfs the work then)."""
        cs, size = self.cluster_size, self.len
        t_s: list[int] = []
        t_e: list[int] = []
        zero: list[bool] = []
        for s, e, data in segments:  # chunks of at most `chunk` clusters from the start of each segment
            starts = range(s, e, chunk)
            t_s += starts
            t_e += starts[1:]
            t_e.append(e)
            zero += [not data] * len(starts)
        if size % cs and size // cs in t_s:  # a task starting in the partial last cluster is data (classify)
            zero[t_s.index(size // cs)] = False
        if zeroes_only:
            stop = zero.index(False) if False in zero else len(zero)
            if stop < len(zero) or self.bitmap.bits.find(1, t_e[stop - 1] if stop else 0) >= 0:
                stop = stop // workers * workers  # whole waves only (see _plan)
            if stop == 0:
                return None
            t_s, t_e, zero = t_s[:stop], t_e[:stop], zero[:stop]
        all_zero = all(zero)
        if all_zero:
            dur = [LATENCY_NS] * len(zero)
        else:
            dur = [LATENCY_NS if z else io_time_ns(min(e * cs, size) - s * cs, True) for s, e, z in zip(t_s, t_e, zero)]
        if len(dur) <= workers:  # a single wave
            n = min(len(dur), want)
            wave_start = [now]
            end = now + max(dur[:n])
        else:
            firsts = range(0, len(dur), workers)
            wave_end = list(accumulate((-(-sum(dur[f:f + workers]) // workers) for f in firsts), initial=now))[1:]
            nwaves = max(1, bisect_right(wave_end, horizon))
            n = min(len(dur), nwaves * workers, want)
            nwaves = -(-n // workers)
            wave_start = [now] + wave_end[: nwaves - 1]
            end = wave_start[-1] + max(dur[firsts[nwaves - 1]:n])
        nclusters = sum(t_e[:n]) - sum(t_s[:n])
        first = np.array(t_s[:n], dtype=np.int64)  # (each list made an array once)
        clusters = np.array(t_e[:n], dtype=np.int64) - first
        return (first * cs, clusters * cs, np.ones(n, dtype=bool) if all_zero else np.array(zero[:n], dtype=bool),
                nclusters, np.array(wave_start, dtype=np.int64), end)

    def _dirty_runs(self, first: int, max_runs: int, max_clusters: int) -> tuple[np.ndarray, np.ndarray]:
        """Runs of set bits from bit ``first`` on, [starts, ends), enough for ``max_runs`` runs or
        ``max_clusters`` clusters (a longer last run is cut there)."""
        few = self._few_dirty_runs(first, max_runs, max_clusters)
        if few is not None:
            return few
        bits = self.bitmap.bits
        nbits = len(bits)
        raw = np.frombuffer(bits, dtype=np.uint8)
        width = max(1 << 16, 64 * max_runs)
        while True:
            stop = min(nbits, first + width)
            rs, re = _set_runs(raw, first, stop)
            if stop < nbits and re[-1] == stop:  # the last run goes on past the window
                nxt = bits.find(0, stop)
                re[-1] = nbits if nxt < 0 else nxt
            if stop == nbits or rs.size >= max_runs or int((re - rs).sum()) >= max_clusters:
                break
            width *= 4
        del raw
        rs, re = rs[:max_runs], re[:max_runs]
        total = np.cumsum(re - rs)
        k = int(np.searchsorted(total, max_clusters, "left"))
        if k < rs.size:  # tasks past max_clusters clusters are never needed
            rs, re = rs[: k + 1], re[: k + 1]
            re[-1] -= int(total[k]) - max_clusters
        return rs, re

    def _detected(self, zero: np.ndarray, run_v: np.ndarray, ptr: np.ndarray) -> np.ndarray:
        """Data tasks whose buffer is all zeroes, if the target detects zeroes (:meth:`BlockNode.write_buffer`:
        they become write-zeroes requests)."""
        if self.target.zero_detected() is None:
            return np.zeros(zero.size, dtype=bool)
        nonzero = np.concatenate(([0], np.cumsum(run_v != 0)))
        return ~zero & (nonzero[ptr[1:]] == nonzero[ptr[:-1]])

    def _few_dirty_runs(self, first: int, max_runs: int, max_clusters: int) -> tuple[np.ndarray, np.ndarray] | None:
        """:meth:`_dirty_runs` by bitarray's own searches, when the answer has at most ``FEW_RUNS`` runs
        (the usual case: numpy's per-call cost dwarfs the work then); None if it has more."""
        bits = self.bitmap.bits
        nbits = len(bits)
        rs: list[int] = []
        re: list[int] = []
        total = 0
        start = first
        while len(rs) < FEW_RUNS:
            end = bits.find(0, start)
            if end < 0:
                end = nbits
            take = min(end - start, max_clusters - total)
            rs.append(start)
            re.append(start + take)
            total += take
            if total >= max_clusters or len(rs) >= max_runs:
                break
            start = bits.find(1, end)
            if start < 0:
                break
        else:
            return None
        return np.array(rs, dtype=np.int64), np.array(re, dtype=np.int64)

    def _zeroes_keep_allocation(self, offsets: np.ndarray, nbytes: np.ndarray, zero: np.ndarray) -> bool:
        """False if zero writes would reach clusters of a qcow2 target that hold something."""
        target = self.target
        if type(target) is not Qcow2Node or not zero.any():
            return True
        _, run_v = target.image.data.runs()
        if run_v.size <= FEW_EXTENTS and all(v in (UNALLOCATED, ZERO) for v in run_v.tolist()):
            return True  # no cluster anywhere holds something (a new target)
        return self._zeroes_keep_allocation_general(offsets, nbytes, zero)

    def _zeroes_keep_allocation_general(self, offsets: np.ndarray, nbytes: np.ndarray, zero: np.ndarray) -> bool:
        """:meth:`_zeroes_keep_allocation` over the clusters the zero writes reach."""
        target = self.target
        cs, size = target.image.cluster_size, target.size
        off = offsets[zero]
        end = off + nbytes[zero]
        first = -(-off // cs) * cs  # the whole clusters Qcow2Node._store_zeroes makes zero clusters
        last = np.where(end >= size, -(-size // cs) * cs, end // cs * cs)
        whole = last > first
        if not whole.any():
            return True
        _, _, vals, _ = target.image.data.gather(first[whole], last[whole])
        return not bool(((vals != UNALLOCATED) & (vals != ZERO)).any())

    def _read(self, offsets: np.ndarray, nbytes: np.ndarray, zero: np.ndarray) -> tuple:
        """The source content of every data task: one read over them all, clipped to each."""
        if zero.all():
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty, np.zeros(offsets.size + 1, dtype=np.int64)
        ends = np.minimum(offsets + nbytes, self.len)
        data = ~zero
        lo, hi = int(offsets[data][0]), int(ends[data][-1])
        st, en, vals = self.source.read_extents(lo, hi - lo)
        return clip_runs(st, en, vals, offsets, np.where(zero, offsets, ends))

    def _finish_batch(self, batch: Batch, i0: int, i1: int) -> None:
        """Tasks ``[i0, i1)`` of a batch complete: target writes, one progress report. An armed write threshold
        (:func:`_threshold_hits`) fires before the writes with several workers (a zero task writes as it starts);
        with one, between the writes of the tasks before its request and the request's own."""
        if i1 <= i0:
            return
        done = int(batch.nbytes[i0:i1].sum())
        self.in_flight_bytes -= done
        armed = [node for node in _same_requests(self.target) if node.write_threshold]
        hits = _threshold_hits(armed, batch.offsets[i0:i1], batch.nbytes[i0:i1], batch.zero[i0:i1], self.len,
                               batch.workers) if armed else []
        start = i0
        for k, node, offset, length in hits:
            if batch.workers == 1:
                self._write_span(batch, start, i0 + k)
                start = i0 + k
            wstats.check(node, offset, length)
        self._write_span(batch, start, i1)
        self._report(done)

    def _write_span(self, batch: Batch, i0: int, i1: int) -> None:
        """The target writes of tasks ``[i0, i1)`` of a batch."""
        if i1 <= i0:
            return
        nbytes = batch.nbytes[i0:i1]
        p0, p1 = int(batch.ptr[i0]), int(batch.ptr[i1])
        detected = batch.detected[i0:i1]
        offsets, zero = batch.offsets[i0:i1], batch.zero[i0:i1]
        io = np.minimum(offsets + nbytes, self.len) - offsets
        ptr = batch.ptr[i0 : i1 + 1] - p0
        runs = batch.run_s[p0:p1], batch.run_e[p0:p1], batch.run_v[p0:p1]
        if self.compress:
            self._write_compressed(offsets, io, np.where(zero, 1, np.where(detected, 2, 0)), ptr, runs)
        else:
            kind = np.where(zero, batch_writes.ZERO, np.where(detected, batch_writes.ZERO_UNMAP, batch_writes.DATA))
            batch_writes.write_requests(self.target, offsets, io, kind, ptr, runs, bool(self.target.zero_detected()))

    def _write_compressed(self, offsets: np.ndarray, io: np.ndarray, kind: np.ndarray, ptr: np.ndarray,
                          runs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        """A compressed backup's target writes, in task order (one cluster a task): stretches of zero tasks
        (``kind`` 1) as zero writes, of tasks whose zeroes the target detects (2) as zero writes that may unmap
        as it says, of data tasks (0) compressed at once."""
        starts, ends, vals = runs
        cut = np.flatnonzero(kind[1:] != kind[:-1]) + 1
        for a, b in zip(np.concatenate(([0], cut)).tolist(), np.concatenate((cut, [kind.size])).tolist()):
            if kind[a]:
                unmap = kind[a] == 2 and bool(self.target.zero_detected())
                self.target.write_zeroes_batch(offsets[a:b], io[a:b], unmap)
            else:
                r0, r1 = int(ptr[a]), int(ptr[b])
                self.target.write_compressed_clusters(offsets[a:b] // self.cluster_size, io[a:b], starts[r0:r1],
                                                      ends[r0:r1], vals[r0:r1])

    def _settle(self, call: Call) -> None:
        """Bring a batch in flight to the wave model's state now (see the module docstring)."""
        now = self.scheduler.clock.now_ns
        found = [(tm, b) for tm, b in call.tasks if isinstance(b, Batch) and now < b.end]
        if not found:
            return
        timer, batch = found[0]
        w = int(np.searchsorted(batch.wave_start, now, "right")) - 1
        n, i0 = len(batch), w * batch.workers
        i1 = min(n, i0 + batch.workers)
        if i0 == 0 and i1 == n:
            return
        self._finish_batch(batch, 0, i0)  # waves already over
        if i1 < n:  # waves not started yet: as if never taken
            offsets, nbytes = batch.offsets[i1:], batch.nbytes[i1:]
            self.bitmap.set_ranges(offsets, nbytes)
            if self._nset is not None:
                self._nset += int((-(-nbytes // self.cluster_size)).sum())
            self.in_flight_bytes -= int(nbytes.sum())
            call.cursor = int(offsets[0])
        timer.cancel()
        call.timers.remove(timer)
        call.tasks.remove((timer, batch))
        self._schedule(call, batch.part(i0, i1, batch.wave_start[w : w + 1], batch.wave_end(w)))


class _Steps:
    """A throttled task's steps (waits at throttle nodes, timed I/O), cancelled as one timer is: a step
    after :meth:`cancel` does nothing (a request a throttle queued still takes its turn there)."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.timer: Any = None
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        if self.timer is not None:
            self.timer.cancel()

    def after(self, delay: int, fn: Callable[[], None]) -> None:
        if not self.cancelled:
            self.timer = self.scheduler.after(delay, fn)

    def through(self, requests: list, is_write: bool, then: Callable[[], None]) -> None:
        """Pass each throttle node with its request's bytes in turn (the topmost first), then ``then()``."""
        if self.cancelled:
            return
        if not requests:
            then()
            return
        (node, nbytes), rest = requests[0], requests[1:]
        node.group.intercept(node.member, nbytes, is_write, lambda: self.through(rest, is_write, then))


def _same_requests(target: BlockNode) -> list[BlockNode]:
    """The target and the nodes below it that see its write requests as they are (a raw node's file)."""
    nodes = [target]
    while type(nodes[-1]) is RawNode:
        nodes.append(nodes[-1].file)
    return nodes


def _threshold_hits(armed: list[BlockNode], offsets: np.ndarray, nbytes: np.ndarray, zero: np.ndarray, end: int,
                    workers: int) -> list[tuple[int, BlockNode, int, int]]:
    """Where the write thresholds of ``armed`` (nodes of :func:`_same_requests`, top down) fire, in the order
    they do: (task index, node, the request's offset and length). They see the tasks' write requests as QEMU
    sends them: with one worker in task order; with several a zero task writes as soon as it starts, a data
    task after its read (block_copy_do_copy). A data task is one request, whatever runs its buffer holds; a
    node fires on the first request past its threshold, request by request, top down."""
    order = np.arange(offsets.size) if workers == 1 else np.concatenate((np.flatnonzero(zero), np.flatnonzero(~zero)))
    offs = offsets[order]
    lens = np.minimum(offs + nbytes[order], end) - offs
    hits = []
    for depth, node in enumerate(armed):
        past = np.flatnonzero(offs + lens > node.write_threshold)
        if past.size:
            i = int(past[0])
            hits.append((i, depth, int(order[i]), node, int(offs[i]), int(lens[i])))
    return [(k, node, offset, length) for _, _, k, node, offset, length in sorted(hits, key=lambda h: h[:2])]


def _segments_few(rs: list[int], re: list[int], k0: list[int], kind: list[int]) -> list[tuple[int, int, bool]]:
    """The dirty runs ``[rs, re)`` cut where classify's runs (starting at ``k0``, of ``kind``) start inside
    them: segments ``(start, end, data)`` (:meth:`BlockCopy._plan`'s vectorised cut, in plain ints)."""
    cuts = []
    for b in k0[1:]:
        r = max(bisect_right(rs, b) - 1, 0)
        if rs[r] < b < re[r]:
            cuts.append(b)
    seg_s = sorted(rs + cuts) if cuts else rs
    out = []
    for i, s in enumerate(seg_s):
        e = re[bisect_right(rs, s) - 1]
        if cuts and i + 1 < len(seg_s):
            e = min(seg_s[i + 1], e)
        out.append((s, e, kind[bisect_right(k0, s) - 1] != ZERO_RUN))
    return out


def _plain(node: BlockNode) -> bool:
    """A node tree of drivers whose batched I/O is exact (no blkdebug anywhere)."""
    if type(node) not in BULK_DRIVERS:
        return False
    for _, child in node.children:
        if not _plain(child):
            return False
    return True


def _set_runs(raw: np.ndarray, b0: int, b1: int) -> tuple[np.ndarray, np.ndarray]:
    """Runs [starts, ends) of set bits among bits ``[b0, b1)`` of little-endian bytes ``raw``."""
    lo, hi = b0 >> 3, (b1 + 7) >> 3
    x = raw[lo:hi].copy()
    x[0] &= (0xFF << (b0 & 7)) & 0xFF
    if b1 & 7:
        x[-1] &= (1 << (b1 & 7)) - 1
    before = np.zeros_like(x)  # the bit before each bit 0: bit 7 of the previous byte
    before[1:] = x[:-1] >> 7
    after = np.zeros_like(x)  # the bit after each bit 7: bit 0 of the next byte
    after[:-1] = (x[1:] & 1) << 7
    firsts = x & ~((x << 1) | before)
    lasts = x & ~((x >> 1) | after)
    return _bit_positions(firsts, lo), _bit_positions(lasts, lo) + 1


_BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little").astype(bool)
_POPCOUNT = _BYTE_BITS.sum(axis=1)
_NTH_BIT = np.array([np.flatnonzero(row).tolist() + [0] * (8 - row.sum()) for row in _BYTE_BITS], dtype=np.int64)


def _bit_positions(x: np.ndarray, byte0: int) -> np.ndarray:
    """Positions of the set bits of little-endian bytes ``x`` (bit 0 at ``byte0 * 8``), sorted."""
    nz = np.flatnonzero(x)
    v = x[nz]
    count = _POPCOUNT[v]
    if count.max(initial=0) <= 1:  # sparse bitmaps: one run edge per byte
        return (nz.astype(np.int64) + byte0) * 8 + _NTH_BIT[v, 0]
    owner = np.repeat(np.arange(nz.size), count)
    nth = np.arange(owner.size) - np.repeat(np.cumsum(count) - count, count)
    return (nz[owner].astype(np.int64) + byte0) * 8 + _NTH_BIT[v[owner], nth]


def _max_transfer(node: BlockNode) -> int:
    """bl.max_transfer (0: no limit): blkdebug's ``max-transfer``, else the smallest of its children's
    (bdrv_merge_limits)."""
    own = node.options.get("max-transfer", 0) if node.driver == "blkdebug" else 0
    if own:
        return own
    least = 0
    for _, child in node.children:
        n = _max_transfer(child)
        if n and (not least or n < least):
            least = n
    return least


def _copies_ranges(node: BlockNode) -> bool:
    """Whether bdrv_co_copy_range reaches a file through ``node`` (qcow2 with its backing chain, raw, file)."""
    if type(node) is FileNode:
        return True
    if type(node) is RawNode:
        return _copies_ranges(node.file)
    if type(node) is Qcow2Node:
        return _copies_ranges(node.file) and (node.backing is None or _copies_ranges(node.backing))
    return False


def _zeroes_never_yield(node: BlockNode) -> bool:
    """A write-zeroes request that completes without yielding: null-co without latency-ns, raw over such
    a node, blkdebug over one with no error rules (a failed request completes from a bottom half)."""
    if type(node) is NullNode:
        return not node.options.get("latency-ns")
    if type(node) is RawNode:
        return _zeroes_never_yield(node.file)
    if node.driver == "blkdebug":
        inner = node.child("image")
        return not node.options.get("inject-error") and inner is not None and _zeroes_never_yield(inner)
    return False


def _never_yields(node: BlockNode) -> bool:
    """Whether a request that succeeds completes without yielding: null-co without latency-ns, and raw
    or blkdebug over such a node (blkdebug yields only for a request it fails)."""
    if type(node) is NullNode:
        return not node.options.get("latency-ns")
    below = node.file if type(node) is RawNode else node.child("image") if node.driver == "blkdebug" else None
    return below is not None and _never_yields(below)


def _immediately(task: Task) -> bool:
    return task.error is not None and task.error.immediately


def kinds(s: np.ndarray, e: np.ndarray, zero: np.ndarray, end: int, cs: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:meth:`BlockCopy.classify`'s runs ``[k0, k1)`` of clusters of size ``cs`` and their kinds, from the
    source's status extents ``[s, e)`` (zero or not) over a range ending at ``end``."""
    a = -(-s // cs)  # the clusters whose start lies in each extent: a .. ceil(e / cs) - 1
    b = np.where((e >= end) & (e - a * cs >= cs), -(-e // cs), e // cs)  # those it covers whole: a .. b - 1
    covered = b > a
    short = (b < -(-e // cs)) & (b >= a)  # the extent ends inside cluster b, which starts in it
    # Each extent gives its covered run, then its short cluster: interleaved, they are in order.
    keep = np.column_stack((covered, short)).ravel()
    k0 = np.column_stack((a, b)).ravel()[keep]
    k1 = np.column_stack((b, b + 1)).ravel()[keep]
    kind = np.column_stack((np.where(zero, ZERO_RUN, DATA_RUN), np.full(a.size, ONE_CLUSTER))).ravel()[keep]
    return k0, k1, kind


def kinds_few(s: list[int], e: list[int], zero: list[bool], end: int, cs: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`kinds` of a few status extents, in plain ints."""
    k0, k1, kind = [], [], []
    for start, stop, z in zip(s, e, zero):
        a = -(-start // cs)
        up = -(-stop // cs)
        b = up if stop >= end and stop - a * cs >= cs else stop // cs
        if b > a:  # the clusters it covers whole
            k0.append(a)
            k1.append(b)
            kind.append(ZERO_RUN if z else DATA_RUN)
        if a <= b < up:  # the short cluster it ends in
            k0.append(b)
            k1.append(b + 1)
            kind.append(ONE_CLUSTER)
    return np.array(k0, dtype=np.int64), np.array(k1, dtype=np.int64), np.array(kind, dtype=np.int64)
