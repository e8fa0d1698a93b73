"""block-copy: copy the dirty clusters of a copy bitmap from source to target.

As block/block-copy.c does it: clusters of the *job cluster size*; tasks of
contiguous dirty clusters up to 1 MiB, split where the source switches between
data and zeroes (zero runs are written as zeroes, without a read); up to
``max_workers`` tasks in flight; a rate limit checked before each task. A task
clears its bits when it starts and sets them again if it fails. Reads happen
when a task starts (that is the point in time its data belongs to), writes when
it completes, on the machine's simulated clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..bitmap import DirtyBitmap, bits_from_bool, range_mask
from ..block.blkdebug import BlockIOError
from ..block.node import BlockNode

MAX_BUFFER = 1 << 20  # BLOCK_COPY_MAX_BUFFER
SLICE_NS = 100_000_000  # BLOCK_COPY_SLICE_TIME
# The simulated storage: every request costs a latency plus its bytes at this rate.
LATENCY_NS = 50_000
BYTES_PER_S = 2 << 30


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
    offset: int
    nbytes: int
    zero: bool
    runs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    error: BlockIOError | None = None
    error_is_read: bool = True


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
    finished: bool = False
    timers: list = field(default_factory=list)
    tasks: list = field(default_factory=list)  # (timer, task) in flight


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
        self.bitmap.set_range(0, self.len)
        self.in_flight_bytes = 0
        self.skip_unallocated = False
        self.rate = RateLimit()
        self.call: Call | None = None

    # -- progress ------------------------------------------------------------------------
    def remaining(self) -> int:
        return self.bitmap.count + self.in_flight_bytes

    def _report(self, done: int) -> None:
        self.on_progress(done, self.remaining())

    # -- tasks ---------------------------------------------------------------------------
    def _next_task(self, offset: int, limit: int) -> Task | None:
        """block_copy_task_create + block status: the next dirty run at or after ``offset``.

        The run is cut at ``limit`` (at most 1 MiB) and where the source switches
        between data and zeroes, looked at cluster by cluster.
        """
        cs = self.cluster_size
        found = self.bitmap.bits.find(1, offset // cs)
        if found < 0:
            return None
        end_bit = self.bitmap.bits.find(0, found)
        if end_bit < 0:
            end_bit = self.bitmap.nbits
        start = found * cs
        end = min(end_bit * cs, start + max(cs, min(limit, MAX_BUFFER) // cs * cs), self.len)
        kinds = self.cluster_kinds(start, end)
        changes = np.flatnonzero(kinds != kinds[0])
        stop = min(start + (int(changes[0]) if changes.size else kinds.size) * cs, end)
        return Task(start, stop - start, zero=not bool(kinds[0]))

    def cluster_kinds(self, start: int, end: int) -> np.ndarray:
        """One bool per cluster of ``[start, end)``: True if any byte of it is data."""
        cs = self.cluster_size
        nclusters = -(-(end - start) // cs)
        starts, ends, is_data = self.source.block_status(start, end - start)
        if not is_data.any():
            return np.zeros(nclusters, dtype=bool)
        first = (starts[is_data] - start) // cs
        last = (ends[is_data] - 1 - start) // cs
        return range_mask(nclusters, first, last)

    def reset_unallocated(self) -> None:
        """sync=top: clusters the source's top layer does not allocate need no copy."""
        starts, ends, allocated = self.source.is_allocated(0, self.len)
        cs = self.cluster_size
        keep = DirtyBitmap(self.len, cs)
        if allocated.any():
            keep.bits |= bits_from_bool(range_mask(keep.nbits, starts[allocated] // cs, (ends[allocated] - 1) // cs))
        self.bitmap.bits &= keep.bits

    def _begin(self, task: Task) -> None:
        """The task starts: its bits are cleared and, for data, the source is read now."""
        self.bitmap.reset_range(task.offset, task.nbytes)
        self.in_flight_bytes += task.nbytes
        if not task.zero:
            try:
                task.runs = self.source.pread(task.offset, task.nbytes)
            except BlockIOError as err:
                task.error, task.error_is_read = err, True

    def _finish(self, task: Task) -> bool:
        """The task ends: write the target (unless the read failed); True on success."""
        self.in_flight_bytes -= task.nbytes
        if task.error is None:
            try:
                if task.zero:
                    self.target.write_zeroes(task.offset, task.nbytes)
                else:
                    starts, ends, vals = task.runs
                    self.target.write_batch(starts, ends - starts, vals)
            except BlockIOError as err:
                task.error, task.error_is_read = err, False
        if task.error is not None:
            self.bitmap.set_range(task.offset, task.nbytes)
            self._report(0)
            return False
        self._report(task.nbytes)
        return True

    # -- synchronous copy (copy-before-write) ----------------------------------------------
    def copy_now(self, offset: int, length: int) -> None:
        """Copy every dirty cluster overlapping the range before a guest write lands."""
        cs = self.cluster_size
        start = offset // cs * cs
        end = min(-(-(offset + length) // cs) * cs, self.len)
        pos = start
        while pos < end:
            task = self._next_task(pos, end - pos)
            if task is None or task.offset >= end:
                return
            task.nbytes = min(task.nbytes, end - task.offset)
            self._begin(task)
            if not self._finish(task):
                raise task.error
            pos = task.offset + task.nbytes

    # -- asynchronous copy (the job's background copy) ---------------------------------------
    def start(self, max_workers: int, max_chunk: int, done: Callable[[Call], None]) -> Call:
        self.call = Call(max_workers, max_chunk or MAX_BUFFER, done)
        self.scheduler.after(0, lambda: self._launch(self.call))
        return self.call

    def cancel(self) -> None:
        call = self.call
        if call is not None and not call.finished:
            call.cancelled = True
            if call.in_flight == 0:
                self._end(call)

    def _launch(self, call: Call) -> None:
        if call.finished:
            return
        while call.in_flight < call.max_workers and not call.cancelled and call.error is None:
            task = self._next_task(call.cursor, call.max_chunk)
            if task is None:
                if call.found and self.bitmap.count:
                    call.cursor, call.found = 0, False  # another pass: bits came back
                    continue
                break
            now = self.scheduler.clock.now_ns
            wait = self.rate.delay(now, 0)
            if wait > 0:
                call.timers.append(self.scheduler.after(wait, lambda: self._launch(call)))
                return
            self.rate.delay(now, task.nbytes)
            call.found = True
            call.cursor = task.offset + task.nbytes
            self._begin(task)
            call.in_flight += 1
            delay = 0 if (task.error is not None and _immediately(task)) else io_time_ns(task.nbytes, not task.zero)
            timer = self.scheduler.after(delay, lambda t=task: self._complete(call, t))
            call.timers.append(timer)
            call.tasks.append((timer, task))
            if task.error is not None and _immediately(task):
                break
        if call.in_flight == 0:
            self._end(call)

    def _complete(self, call: Call, task: Task) -> None:
        call.tasks = [(tm, t) for tm, t in call.tasks if t is not task]
        call.in_flight -= 1
        if not self._finish(task) and call.error is None:
            call.error, call.error_is_read = task.error, task.error_is_read
        if call.in_flight == 0 and (call.cancelled or call.error is not None):
            self._end(call)
        elif not call.cancelled and call.error is None:
            self._launch(call)

    def _end(self, call: Call) -> None:
        if not call.finished:
            call.finished = True
            call.done(call)

    def stop(self) -> None:
        """End the running call now: tasks in flight still complete (job_finish_sync waits
        for them), nothing new starts."""
        call = self.call
        if call is None or call.finished:
            return
        call.finished = True
        for timer in call.timers:
            timer.cancel()
        for _, task in call.tasks:
            self._finish(task)
        call.tasks = []
        call.in_flight = 0


def _immediately(task: Task) -> bool:
    return task.error is not None and task.error.immediately
