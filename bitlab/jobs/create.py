"""The ``create`` job of blockdev-create (block/create.c): one step of progress around the driver's create.

QEMU creates it with JOB_DEFAULT | JOB_MANUAL_DISMISS: it finalizes itself and then stays ``concluded``
until ``job-dismiss``. It is no block job (no BLOCK_JOB_* events, not in query-block-jobs). A create that
fails before its first wait for I/O ends before the command returns; otherwise the rest runs at the same
simulated instant, once the clock is stepped (``vm.run()``), after the command's reply — as on QEMU, where
``waiting``, ``pending`` and ``concluded`` come after the reply.
"""

from __future__ import annotations

from ..block.create import CreateFailed, Work
from .job import Job, JobManager


class CreateJob(Job):
    """blockdev_create_run: progress 0 of 1, the driver's create, progress 1 of 1."""

    job_type = "create"
    is_block_job = False

    def __init__(self, manager: JobManager, job_id: str, work: Work | CreateFailed) -> None:
        super().__init__(manager, job_id, auto_finalize=True, auto_dismiss=False)
        self.work = work

    def run(self) -> None:
        self.progress_total = self.progress_current + 1  # job_progress_set_remaining(1)
        if isinstance(self.work, CreateFailed) and self.work.early:
            self._done(self.work)  # before the first wait: job_exit runs before the command's reply
        else:
            self.manager.scheduler.after(0, self._create)

    def _create(self) -> None:
        try:
            if isinstance(self.work, CreateFailed):
                raise self.work
            self.work()
        except CreateFailed as failed:
            self._done(failed)
            return
        self._done(None)

    def _done(self, failed: CreateFailed | None) -> None:
        self.progress_current += 1  # job_progress_update(1), whatever the result
        if failed is None:
            self.run_returned(0)
        else:
            self.run_returned(-failed.errno, failed.message)

    def pause(self) -> None:
        """job_pause: counted, but the driver's create has no pause point, so the job runs on."""
        self.pause_count += 1
