"""Jobs and job transactions as QEMU 7.2's job.c runs them.

A :class:`Job` moves only along :data:`~bitlab.jobs.status.TRANSITIONS` and emits
JOB_STATUS_CHANGE on every real change. What a job does while running is its
driver's business (:class:`~bitlab.jobs.backup.BackupJob`); completion, the
transaction logic (waiting, pending, finalize, abort), cancel, pause and dismiss
live here, following job.c's functions of the same names.
"""

from __future__ import annotations

import errno as _errno
import os
import re
import weakref
from collections.abc import Callable
from typing import Any

from ..errors import QMPError, generic
from ..qmp_order import wire_member_order
from .status import COMPLETED, TRANSITIONS, VERBS

_ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")
# JOB_STATUS_CHANGE's data ({"id", "status"} in schema order) as QEMU sends it: its members' wire order
_ID_FIRST = wire_member_order(("id", "status"))[0] == "id"
ECANCELED = _errno.ECANCELED


def strerror(code: int) -> str:
    """strerror(3) for a positive errno, as glibc spells it."""
    return os.strerror(code)


def weak_method(method: Callable[..., None]) -> Callable[..., None]:
    """``method`` (a job's bound method) through a weak reference to the job, for a part the job owns
    to call back (its block-copy state) without a reference cycle; once nothing holds the job
    (dismissed, and no user keeps it) nobody can see what the call would have changed: it does nothing."""
    ref = weakref.ref(method.__self__)  # (what weakref.WeakMethod keeps, without its bound method rebuilt per call)
    func = method.__func__

    def call(*args: Any) -> None:
        owner = ref()
        if owner is not None:
            func(owner, *args)

    return call


class JobTxn:
    """A group of jobs that complete together; the list is newest first (QLIST_INSERT_HEAD)."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.aborting = False

    def add(self, job: Job) -> None:
        self.jobs.insert(0, job)
        job.txn = self


class JobManager:
    """All jobs of a machine, with the machine's event sink and scheduler."""

    def __init__(self, emit: Callable[[str, dict], Any], scheduler: Any,
                 emit_wire: Callable[[str, dict], Any]) -> None:
        self.emit = emit
        self.emit_wire = emit_wire  # for data in wire order already (EventSink.emit_wire)
        self.scheduler = scheduler
        self.jobs: list[Job] = []
        self.drained: dict[int, int] = {}  # id(node) -> drain count
        # the graph's drain of its throttle nodes (node, or None for all; begin) and the groups whose nodes
        # it reaches (nothing to do while there is none): the machine sets both
        self.throttle_drain: Callable[[Any, bool], None] = lambda node, begin: None
        self.throttle_groups: dict = {}

    # -- drained sections (bdrv_drained_begin / _end) -----------------------------------
    def drain_begin(self, node: Any) -> None:
        """Jobs using the node stop at a pause point until the section ends (the newest first: its link is the
        newest parent up the node's graph, and bdrv_parent_drained_begin walks the parents newest first)."""
        key = id(node)
        self.drained[key] = self.drained.get(key, 0) + 1
        if self.throttle_groups:  # throttle_co_drain_begin: their queued requests go now
            self.throttle_drain(node, True)
        if self.drained[key] == 1:
            for job in list(reversed(self.jobs)):
                if job.uses(node):
                    job.drain_pause()

    def drain_end(self, node: Any) -> None:
        """The section ends: its jobs go on (the first requests of a job resumed here start before a throttle
        node's own end of the section, which bdrv_drain_invoke schedules for the next loop turn)."""
        key = id(node)
        self.drained[key] -= 1
        if self.drained[key] == 0:
            del self.drained[key]
            for job in list(reversed(self.jobs)):
                if job.uses(node) and job.drain_paused:
                    job.drain_paused = False
                    job.resume()
        if self.throttle_groups:
            self.throttle_drain(node, False)

    def drain_section(self, node: Any) -> None:
        """bdrv_drained_begin then _end on ``node``: the jobs using it pause and resume."""
        self.drain_begin(node)
        self.drain_end(node)

    def drain_jobs(self, jobs: list[Job], during: Callable[[], Any]) -> None:
        """A drained section that reaches ``jobs`` (the newest first), around ``during``."""
        paused = []
        for job in reversed(jobs):
            if not job.drain_paused:
                job.drain_pause()
                if job.drain_paused:
                    paused.append(job)
        try:
            during()
        finally:
            for job in paused:
                job.drain_paused = False
                job.resume()

    def drain_all(self, nodes: list[Any]) -> None:
        """bdrv_drain_all_begin, then bdrv_drain_all_end, over ``nodes`` in the order they were made:
        each node's drain pauses the jobs linked to it (block_job_add_bdrv's links: a backup's filter
        and target, not its source), so a block job pauses at the first of its nodes and resumes at
        the last (its pause count drops to zero only there)."""
        if self.throttle_groups:  # bdrv_drain_all_begin reaches every throttle node too
            self.throttle_drain(None, True)
        at = {id(node): i for i, node in enumerate(nodes)}
        spans = []
        for job in list(self.jobs):
            places = [at[id(node)] for _, node in job.block_links() if id(node) in at]
            if places:
                spans.append((min(places), max(places), job))
        paused = []
        for _, _, job in sorted(spans, key=lambda span: span[0]):
            if not job.drain_paused:
                job.drain_pause()
                if job.drain_paused:
                    paused.append(job)
        for _, _, job in sorted(spans, key=lambda span: span[1]):
            if job in paused:
                job.drain_paused = False
                job.resume()
        if self.throttle_groups:
            self.throttle_drain(None, False)

    def attach_drained(self, job: Job) -> None:
        """A job created on a drained node starts out paused by the drain."""
        if not job.drain_paused and not self.drained.keys().isdisjoint(job.node_ids()):
            job.drain_paused = True
            job.pause_count += 1

    def cancel_sync_all(self) -> None:
        """What QEMU does with its jobs as it exits after ``quit`` (qemu_cleanup, qemu-storage-daemon's
        main): bdrv_drain_all_begin pauses every running job, then job_cancel_sync_all force-cancels the
        newest job and waits until it has completed, again and again until none is left (a concluded
        job is dismissed)."""
        for job in list(self.jobs):
            job.drain_pause()
        for _ in range(4 * len(self.jobs) + 4):
            if not self.jobs:
                return
            job = self.jobs[-1]  # job_next: the newest
            job.cancel(True)
            while not job.completed and self.scheduler.step():
                pass
        raise AssertionError(f"jobs left after cancelling them all: {[job.id for job in self.jobs]}")

    def find(self, job_id: str) -> Job | None:
        for job in self.jobs:
            if job.id == job_id:
                return job
        return None

    def get(self, job_id: str) -> Job:
        """job-* lookup."""
        job = self.find(job_id)
        if job is None:
            raise generic("Job not found")
        return job

    def get_block_job(self, job_id: str) -> Job:
        """block-job-* lookup: class DeviceNotActive."""
        job = self.find(job_id)
        if job is None or not job.is_block_job:
            raise QMPError(f"Block job '{job_id}' not found", "DeviceNotActive")
        return job

    def check_new_id(self, job_id: str | None) -> None:
        """job_create's id checks."""
        if job_id is None:
            raise generic("An explicit job ID is required")
        if not _ID_RE.match(job_id):
            raise generic(f"Invalid job ID '{job_id}'")
        if self.find(job_id) is not None:
            raise generic(f"Job ID '{job_id}' already in use")


class Job:
    """One job: status, pause bookkeeping, progress, and job.c's lifecycle."""

    job_type = "backup"
    is_block_job = True

    def __init__(self, manager: JobManager, job_id: str, *, txn: JobTxn | None = None,
                 auto_finalize: bool = True, auto_dismiss: bool = True, speed: int = 0) -> None:
        manager.check_new_id(job_id)
        self.manager = manager
        self.id = job_id
        self.status = "undefined"
        self.auto_finalize = auto_finalize
        self.auto_dismiss = auto_dismiss
        self.speed = speed
        self.pause_count = 1  # job_create: a job starts paused until job_start
        self.user_paused = False
        self.paused = False  # sitting at a pause point
        self.pausing = False  # the driver's pause waits for requests in flight (throttled ones) to end
        self.busy = False
        self.cancelled = False
        self.force_cancel = False
        self.started = False
        self.deferred_to_main_loop = False  # run() has returned
        self.ret = 0
        self.err: str | None = None
        self.io_status = "ok"
        self.progress_current = 0
        self.progress_total = 0
        self._saved_status = "running"
        self.drain_paused = False
        self.txn: JobTxn
        manager.jobs.append(self)
        (txn or JobTxn()).add(self)
        self.transition("created")

    # -- state ----------------------------------------------------------------------
    def transition(self, status: str) -> None:
        """job_state_transition: only legal moves; JOB_STATUS_CHANGE when it changes."""
        if status not in TRANSITIONS[self.status]:
            raise AssertionError(f"illegal job transition {self.status} -> {status} ({self.id})")
        old, self.status = self.status, status
        if old != status:
            data = {"id": self.id, "status": status} if _ID_FIRST else {"status": status, "id": self.id}
            self.manager.emit_wire("JOB_STATUS_CHANGE", data)

    def apply_verb(self, verb: str) -> None:
        if self.status not in VERBS[verb]:
            raise generic(f"Job '{self.id}' in state '{self.status}' cannot accept command verb '{verb}'")

    @property
    def completed(self) -> bool:
        return self.status in COMPLETED

    @property
    def is_cancelled(self) -> bool:
        """job_is_cancelled: cancelled by force (every backup cancel is forced)."""
        return self.cancelled and self.force_cancel

    def uses(self, node: Any) -> bool:
        return id(node) in self.node_ids()

    def node_ids(self) -> set[int]:
        """The nodes the job holds (a drain of any of them pauses it)."""
        return set()

    def block_links(self) -> list[tuple[str, Any]]:
        """A block job's links to its nodes (block_job_add_bdrv), in the order it made them, while it
        holds them."""
        return []

    def drain_pause(self) -> None:
        """A drained section begins: pause now (bdrv_drained_begin polls until the job stops)."""
        if self.drain_paused or self.completed or self.deferred_to_main_loop:
            return
        self.drain_paused = True
        self.pause_count += 1
        if self.started and not self.paused:
            self.pause_point()

    # -- driver hooks ---------------------------------------------------------------
    def run(self) -> None:
        """Start the driver's work; it calls :meth:`run_returned` when done."""
        raise NotImplementedError

    def on_pause(self) -> None:
        """A pause was requested; the driver reaches a pause point soon."""

    def on_resume(self) -> None:
        """The job left a pause point."""

    def on_cancel(self) -> None:
        """Cancellation requested while running."""

    def stop_work(self) -> None:
        """Drop whatever the driver has scheduled (the job is being finished synchronously)."""

    def commit(self) -> None: ...

    def abort(self) -> None: ...

    def clean(self) -> None: ...

    def event_data(self) -> dict:
        """BLOCK_JOB_COMPLETED / _CANCELLED members (schema order)."""
        return {"type": self.job_type, "device": self.id, "len": self.progress_total,
                "offset": self.progress_current, "speed": self.speed}

    # -- lifecycle (job.c) ------------------------------------------------------------
    def start(self) -> None:
        """job_start: leave 'created'; the coroutine stops at its first pause point."""
        self.started = True
        self.busy = True
        self.pause_count -= 1
        self.transition("running")
        self.pause_point()
        if not self.paused:
            self.run()

    def pause_point(self) -> bool:
        """job_pause_point: pause here if asked to; True if the job is now paused."""
        if self.pause_count > 0 and not self.is_cancelled:
            if self.pausing:
                return True
            if not self.paused and not self.drain_paused and self.pause_wait():
                self.pausing = True  # job_pause_point: the driver's pause returns when they have ended
                return True
            if not self.paused:
                self.paused = True
                self.busy = False
                self._saved_status = self.status
                self.transition("standby" if self.status == "ready" else "paused")
                self.on_pause()
            return True
        return False

    def pause_wait(self) -> bool:
        """The driver's pause (before the job is paused): True if it waits for requests that take time to
        end; it then calls :meth:`pause_waited`. (A drain's pause does not wait here: a drained throttle node
        lets its requests go, and they end within the drained section.)"""
        return False

    def pause_waited(self) -> None:
        """The driver's pause returned (job_pause_point): the job pauses if it is still asked to, else its
        coroutine goes on."""
        self.pausing = False
        if self.pause_count > 0 and not self.is_cancelled:
            self.pause_point()
        elif not self.deferred_to_main_loop and self.status in ("running", "ready"):
            self.run()

    def leave_pause(self) -> None:
        """The coroutine resumes from its pause point (job_enter after the last resume)."""
        if not self.paused:
            return
        self.paused = False
        self.busy = True
        self.transition(self._saved_status)
        self.on_resume()

    def pause(self) -> None:
        """job_pause: one more reason to stop; the job wakes and reaches its pause point at once."""
        self.pause_count += 1
        if not self.paused and self.status in ("running", "ready") and not self.deferred_to_main_loop:
            self.pause_point()

    def resume(self) -> None:
        """job_resume: one reason fewer; at zero the job goes on."""
        if self.pause_count <= 0:
            return
        self.pause_count -= 1
        if self.pause_count == 0 and self.paused:
            self.leave_pause()
            if not self.deferred_to_main_loop:
                self.run()

    def user_pause(self) -> None:
        """job-pause / block-job-pause."""
        self.apply_verb("pause")
        if self.user_paused:
            raise generic("Job is already paused")
        self.user_paused = True
        self.pause()

    def user_resume(self) -> None:
        """job-resume / block-job-resume."""
        if not self.user_paused or self.pause_count <= 0:
            raise generic("Can't resume a job that was not paused")
        self.apply_verb("resume")
        self.io_status = "ok"
        self.user_paused = False
        self.resume()

    def run_returned(self, ret: int, err: str | None = None) -> None:
        """The driver's run() returned; job_exit follows in the same main-loop turn.

        (QEMU schedules job_exit as a bottom half, which runs before the monitor can
        handle another command; bitlab runs it right away.)
        """
        self.deferred_to_main_loop = True
        self.busy = False
        self.ret = ret
        if err is not None:
            self.err = err
        self.completed_cb()

    def completed_cb(self) -> None:
        """job_completed."""
        if self.completed:
            return
        self.update_rc()
        if self.ret:
            txn_abort(self)
        else:
            txn_success(self)

    def update_rc(self) -> None:
        """job_update_rc: a cancelled job fails with ECANCELED; failing jobs go aborting."""
        if not self.ret and self.is_cancelled:
            self.ret = -ECANCELED
        if self.ret:
            if self.err is None:
                self.err = strerror(-self.ret)
            self.transition("aborting")

    def cancel_force(self, force: bool) -> bool:
        """The driver's .cancel: whether a cancel is a forced one (backup's: always)."""
        return True

    def complete_request(self) -> None:
        """The driver's .complete (job-complete); a job without one cannot be completed."""
        raise generic(f"The active block job '{self.id}' cannot be completed")

    def cancel_async(self, force: bool) -> None:
        """job_cancel_async (the driver's .cancel says whether the cancel is forced)."""
        force = self.cancel_force(force)
        if self.user_paused:
            self.user_paused = False
            self.pause_count -= 1
        if not self.deferred_to_main_loop or force:
            self.cancelled = True
            self.force_cancel |= force

    def cancel(self, force: bool) -> None:
        """job_cancel."""
        if self.status == "concluded":
            self.dismiss()
            return
        self.cancel_async(force)
        if not self.started:
            self.completed_cb()
        elif self.deferred_to_main_loop:
            if self.is_cancelled:
                txn_abort(self)
        else:
            if self.paused and (self.pause_count <= 0 or self.is_cancelled):
                self.leave_pause()  # job_enter wakes it; a force-cancelled job does not pause again
            self.on_cancel()

    def user_cancel(self, force: bool) -> None:
        self.apply_verb("cancel")
        self.cancel(force)

    def finalize_single(self) -> None:
        """job_finalize_single: commit or abort, clean, the end event, concluded."""
        self.update_rc()
        if not self.ret:
            self.commit()
        else:
            self.abort()
        self.clean()
        if self.started and self.is_block_job:
            if self.is_cancelled:
                self.manager.emit("BLOCK_JOB_CANCELLED", self.event_data())
            else:
                data = self.event_data()
                if self.ret:
                    data["error"] = self.err
                self.manager.emit("BLOCK_JOB_COMPLETED", data)
        if self in self.txn.jobs:
            self.txn.jobs.remove(self)
        self.transition("concluded")
        if self.auto_dismiss or not self.started:
            self.dismiss()

    def dismiss(self) -> None:
        """job_do_dismiss: concluded -> null; the job disappears."""
        self.transition("null")
        if self in self.manager.jobs:
            self.manager.jobs.remove(self)

    def finish_now(self) -> None:
        """job_finish_sync for a cancelled job: it stops at once and reports aborting.

        A paused job first leaves its pause point (a force-cancelled job does not pause).
        """
        if self.started:
            self.stop_work()
            self.deferred_to_main_loop = True
            self.busy = False
            if self.paused:
                self.paused = False
                self.transition(self._saved_status)
        self.update_rc()

    def user_finalize(self) -> None:
        self.apply_verb("finalize")
        do_finalize(self)

    def user_dismiss(self) -> None:
        self.apply_verb("dismiss")
        self.dismiss()

    def user_complete(self) -> None:
        """job_complete: the verb, then no complete after a cancel, then the driver's."""
        self.apply_verb("complete")
        if self.cancelled:
            raise generic(f"The active block job '{self.id}' cannot be completed")
        self.complete_request()

    # -- queries ----------------------------------------------------------------------
    def job_info(self) -> dict:
        """JobInfo (schema order)."""
        info: dict = {"id": self.id, "type": self.job_type, "status": self.status,
                      "current-progress": self.progress_current, "total-progress": self.progress_total}
        if self.ret or self.is_cancelled:
            info["error"] = self.err or strerror(ECANCELED)
        return info

    def block_job_info(self) -> dict:
        """BlockJobInfo (schema order)."""
        # busy: whether the job's coroutine runs. A backup waits for block-copy (or sleeps) whenever
        # the monitor can look, so QEMU shows false there; but not in backup_pause, which yields the
        # coroutine itself while the requests it waits for take their time (a throttle node's).
        info: dict = {"type": self.job_type, "device": self.id, "len": self.progress_total,
                      "offset": self.progress_current, "busy": self.pausing, "paused": self.pause_count > 0,
                      "speed": self.speed, "io-status": self.io_status, "ready": False, "status": self.status,
                      "auto-finalize": self.auto_finalize, "auto-dismiss": self.auto_dismiss}
        if self.ret or self.is_cancelled:
            info["error"] = self.err or strerror(ECANCELED)
        return info


# -- transactions (job.c job_completed_txn_*) ------------------------------------------


def txn_success(job: Job) -> None:
    """job_completed_txn_success: wait for the others, then all go pending together."""
    job.transition("waiting")
    if any(not other.completed for other in job.txn.jobs):
        return
    for other in list(job.txn.jobs):
        other.transition("pending")
        if not other.auto_finalize:
            other.manager.emit("BLOCK_JOB_PENDING", {"type": other.job_type, "id": other.id})
    if all(other.auto_finalize for other in job.txn.jobs):
        do_finalize(job)


def do_finalize(job: Job) -> None:
    """job_do_finalize: finalize every job of the transaction, in list order."""
    for other in list(job.txn.jobs):
        other.finalize_single()


def txn_abort(job: Job) -> None:
    """job_completed_txn_abort: force-cancel the others, then finalize everyone."""
    txn = job.txn
    if txn.aborting:
        return
    txn.aborting = True
    for other in list(txn.jobs):
        if other is not job:
            other.cancel_async(True)
    while txn.jobs:
        other = txn.jobs[0]
        if not other.completed:
            other.finish_now()
        other.finalize_single()
