"""job-* and block-job-* commands, query-jobs and query-block-jobs (job-qmp.c, blockdev.c)."""

from __future__ import annotations

from typing import Any

from ..errors import generic
from .commands import TABLE
from .types import BlockJobCancel, BlockJobDevice, BlockJobId, BlockJobSetSpeed, JobId


@TABLE.command("query-jobs")
def qmp_query_jobs(vm: Any, args: dict) -> list:
    return [job.job_info() for job in reversed(vm.jobs.jobs)]  # newest first


@TABLE.command("query-block-jobs")
def qmp_query_block_jobs(vm: Any, args: dict) -> list:
    return [job.block_job_info() for job in reversed(vm.jobs.jobs) if job.is_block_job]


@TABLE.command("job-cancel", JobId)
def qmp_job_cancel(vm: Any, args: dict) -> None:
    vm.jobs.get(args["id"]).user_cancel(True)


@TABLE.command("job-pause", JobId)
def qmp_job_pause(vm: Any, args: dict) -> None:
    vm.jobs.get(args["id"]).user_pause()


@TABLE.command("job-resume", JobId)
def qmp_job_resume(vm: Any, args: dict) -> None:
    vm.jobs.get(args["id"]).user_resume()


@TABLE.command("job-complete", JobId)
def qmp_job_complete(vm: Any, args: dict) -> None:
    vm.jobs.get(args["id"]).user_complete()


@TABLE.command("job-finalize", JobId)
def qmp_job_finalize(vm: Any, args: dict) -> None:
    vm.jobs.get(args["id"]).user_finalize()


@TABLE.command("job-dismiss", JobId)
def qmp_job_dismiss(vm: Any, args: dict) -> None:
    vm.jobs.get(args["id"]).user_dismiss()


@TABLE.command("block-job-cancel", BlockJobCancel)
def qmp_block_job_cancel(vm: Any, args: dict) -> None:
    job = vm.jobs.get_block_job(args["device"])
    if job.user_paused and not args.get("force", False):
        raise generic(f"The block job for device '{args['device']}' is currently paused")
    job.user_cancel(args.get("force", False))


@TABLE.command("block-job-pause", BlockJobDevice)
def qmp_block_job_pause(vm: Any, args: dict) -> None:
    vm.jobs.get_block_job(args["device"]).user_pause()


@TABLE.command("block-job-resume", BlockJobDevice)
def qmp_block_job_resume(vm: Any, args: dict) -> None:
    vm.jobs.get_block_job(args["device"]).user_resume()


@TABLE.command("block-job-complete", BlockJobDevice)
def qmp_block_job_complete(vm: Any, args: dict) -> None:
    vm.jobs.get_block_job(args["device"]).user_complete()


@TABLE.command("block-job-set-speed", BlockJobSetSpeed)
def qmp_block_job_set_speed(vm: Any, args: dict) -> None:
    job = vm.jobs.get_block_job(args["device"])
    job.apply_verb("set-speed")
    if args["speed"] < 0:
        raise generic("Parameter 'speed' expects a non-negative value")
    job.set_speed(args["speed"])


@TABLE.command("block-job-finalize", BlockJobId)
def qmp_block_job_finalize(vm: Any, args: dict) -> None:
    vm.jobs.get_block_job(args["id"]).user_finalize()


@TABLE.command("block-job-dismiss", BlockJobId)
def qmp_block_job_dismiss(vm: Any, args: dict) -> None:
    vm.jobs.get_block_job(args["id"]).user_dismiss()
