"""A job that works through the disk a chunk at a time (block/commit.c's and block/stream.c's loops, QEMU 7.2).

Each turn of the loop is a pause point (job_sleep_ns), then the chunk at ``offset``: one that needs no copy only
advances ``offset`` (and the progress) at once; one that does takes its simulated I/O time, then the job sleeps as
its rate limit says (``speed`` counts what was copied). A pause or a cancel waits for the chunk in flight; a drain
ends it at once. A failed chunk goes by ``on-error``: report ends the job with the error, stop pauses it (resumed,
it tries the chunk again), ignore tries it again, or, for a job that keeps ignored errors (stream), goes on and
fails at the end all the same.
"""

from __future__ import annotations

import errno as _errno

from ..block.ioerror import BlockIOError
from .backup import error_action
from .block_copy import RateLimit, io_time_ns
from .job import Job, JobManager, strerror, weak_method


class ChunkedJob(Job):
    """The loop, its sleeps and its error policy; a job says what a chunk is (:meth:`chunk`), starts its copy
    (:meth:`start_copy`) and ends it (:meth:`end_copy`)."""

    keeps_ignored_errors = False  # stream_run: an ignored error still fails the job at the end

    def __init__(self, manager: JobManager, job_id: str, *, graph: object, on_error: str, auto_finalize: bool,
                 auto_dismiss: bool, speed: int) -> None:
        self.graph = graph
        self.on_error = on_error
        self.rate = RateLimit()
        self.offset = 0
        self.length = 0
        self.delay = 0  # delay_ns: the rate limit's wait after the last chunk copied
        self.op: tuple | None = None  # (offset, nbytes, what start_copy returned, timer): the chunk in flight
        self.sleep = None
        self.initialised = False
        self.error = 0  # the error the job returns with
        self.error_text: str | None = None
        super().__init__(manager, job_id, auto_finalize=auto_finalize, auto_dismiss=auto_dismiss, speed=speed)
        # (the scheduler's timers call back through weak references: no reference cycle runs through the machine)
        self._wake_cb = weak_method(self._wake)
        self._op_done_cb = weak_method(self._op_done)
        self.set_speed(speed)

    # -- what a job says -----------------------------------------------------------------
    def setup(self) -> bool:
        """The run's start (``length`` and the progress's total set); False if the job returned at once."""
        raise NotImplementedError

    def chunk(self, offset: int) -> tuple[int, bool]:
        """The chunk at ``offset``: its length, and whether it is copied."""
        raise NotImplementedError

    def start_copy(self, offset: int, nbytes: int) -> object:
        """Start the chunk's copy; what :meth:`end_copy` gets (a BlockIOError if it failed at once)."""
        raise NotImplementedError

    def end_copy(self, offset: int, nbytes: int, started: object) -> tuple[BlockIOError | None, bool]:
        """End the chunk's copy: its error, if any, and whether it was a read's."""
        raise NotImplementedError

    # -- the loop ----------------------------------------------------------------------------
    def set_speed(self, speed: int) -> None:
        self.speed = speed
        self.rate.set_speed(speed)

    @property
    def now(self) -> int:
        return self.manager.scheduler.clock.now_ns

    def run(self) -> None:
        """The job's run, resumed from wherever it stopped."""
        self._cancel_sleep()
        if not self.initialised:
            self.initialised = True
            if not self.setup():
                return
        self._loop()

    def _loop(self) -> None:
        """From a job_sleep_ns up to the next point where the job waits."""
        while True:
            if self.pause_point():
                return
            if self.is_cancelled or self.offset >= self.length:
                self.run_returned(self.error, self.error_text)
                return
            nbytes, copy = self.chunk(self.offset)
            if not copy:  # (the next sleep is of 0 ns, and nothing happens meanwhile)
                self.progress_current += nbytes
                self.offset += nbytes
                self.delay = 0
                continue
            started = self.start_copy(self.offset, nbytes)
            timer = self.manager.scheduler.after(io_time_ns(nbytes, not isinstance(started, BlockIOError)),
                                                 self._op_done_cb)
            self.op = (self.offset, nbytes, started, timer)
            return

    def _op_done(self) -> None:
        """The chunk's I/O is done: the error policy, the progress, the rate limit's sleep."""
        assert self.op is not None
        offset, nbytes, started, _ = self.op
        self.op = None
        self.pausing = False
        error, is_read = self.end_copy(offset, nbytes, started)
        if error is not None:
            action = error_action(self.on_error, error.errno)  # block_job_error_action
            self.manager.emit("BLOCK_JOB_ERROR", {"device": self.id, "operation": "read" if is_read else "write",
                                                  "action": action})
            if action == "stop":
                self.io_status = "nospace" if error.errno == _errno.ENOSPC else "failed"
                if not self.user_paused:
                    self.user_paused = True
                    self.pause_count += 1
            if action == "report" or (action == "ignore" and self.keeps_ignored_errors):
                if not self.error:
                    self.error, self.error_text = -error.errno, strerror(error.errno)
            if action == "report":
                self.run_returned(self.error, self.error_text)
                return
            if action == "stop" or not self.keeps_ignored_errors:  # (the same chunk again after the sleep)
                self.sleep = self.manager.scheduler.after(self.delay, self._wake_cb)
                return
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
        """A pause waits for the chunk in flight (the job pauses at its next sleep)."""
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

    def block_job_info(self) -> dict:
        info = super().block_job_info()
        info["busy"] = self.op is not None
        return info
