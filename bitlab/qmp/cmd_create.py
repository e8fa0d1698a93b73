"""blockdev-create (block/create.c qmp_blockdev_create)."""

from __future__ import annotations

from typing import Any

from ..block.create import CreateFailed, Work, check_driver, prepare
from ..jobs.create import CreateJob
from .commands import TABLE
from .create_types import BlockdevCreate


@TABLE.command("blockdev-create", BlockdevCreate)
def qmp_blockdev_create(vm: Any, args: dict) -> None:
    """The driver checked, the job created (job_create's id checks) and started: the driver's create runs
    in the job, which ends with QEMU's error where QEMU's does. Where QEMU would create something bitlab's
    image store cannot hold, the command fails instead and no job is left."""
    options = args["options"]
    check_driver(options["driver"])
    if isinstance(options.get("encrypt"), dict) and "key-secret" in options["encrypt"]:
        vm.objects.touch()  # (qcrypto_secret_lookup looks the secret up in /objects)
    vm.jobs.check_new_id(args["job-id"])
    work: Work | CreateFailed
    try:
        work = prepare(vm.graph, options)
    except CreateFailed as failed:
        work = failed
    CreateJob(vm.jobs, args["job-id"], work).start()
