"""blockdev-backup and drive-backup: QEMU 7.2's checks (blockdev.c do_backup_common,
block/backup.c backup_job_create) in their order, with their texts.

Both commands are a transaction of one action, as in QEMU (blockdev_do_action).
"""

from __future__ import annotations

from typing import Any

from ..bitmap import DirtyBitmap
from ..block import perms
from ..errors import QMPError, generic
from ..jobs.backup import BackupJob
from ..jobs.block_copy import cluster_size_for
from ..jobs.job import JobTxn
from .cmd_bitmap import ALLOW_RO, BUSY, DEFAULT, check_bitmap

INT_MAX = (1 << 31) - 1
JOB_BLOCKER = "block device is in use by block job: backup"


def _check_blocked(vm: Any, node: Any) -> None:
    """bdrv_op_is_blocked: nodes a running job uses refuse to serve another backup."""
    if getattr(node, "job_blocker", None):
        raise generic(f"Node '{vm.device_or_node_name(node)}' is busy: {node.job_blocker}")


def do_backup_common(vm: Any, args: dict, source: Any, target: Any, txn: JobTxn | None,
                     owns_target: bool = False) -> BackupJob:
    """Validate a BackupCommon and create the job (JOB_STATUS_CHANGE created)."""
    sync = args["sync"]
    perf = args.get("x-perf", {})
    max_workers = perf.get("max-workers", 64)
    max_chunk = perf.get("max-chunk", 0)
    bitmap_name = args.get("bitmap")
    mode = args.get("bitmap-mode")
    if sync in ("bitmap", "incremental") and bitmap_name is None:
        raise generic(f"must provide a valid bitmap name for '{sync}' sync mode")
    if sync == "incremental":
        if mode is not None and mode != "on-success":
            raise generic("Bitmap sync mode must be 'on-success' when using sync mode 'incremental'")
        sync, mode = "bitmap", "on-success"
    bitmap: DirtyBitmap | None = None
    if bitmap_name is not None:
        bitmap = source.find_bitmap(bitmap_name)
        if bitmap is None:
            raise generic(f"Bitmap '{bitmap_name}' could not be found")
        if mode is None:
            raise generic("Bitmap sync mode must be given when providing a bitmap")
        check_bitmap(bitmap, ALLOW_RO)
        if sync == "none":
            raise generic("sync mode 'none' does not produce meaningful bitmap outputs")
        if mode == "never" and sync != "bitmap":
            raise generic(f"Bitmap sync mode 'never' has no meaningful effect when combined with sync mode '{sync}'")
    if bitmap_name is None and mode is not None:
        raise generic("Cannot specify bitmap sync mode without a bitmap")
    # backup_job_create
    if source is target:
        raise generic("Source and target cannot be the same")
    below = target
    while below.driver == "throttle":  # bdrv_supports_compressed_writes: a filter asks what it filters
        below = below.child("file")
    if args.get("compress") and below.driver != "qcow2":
        raise generic(f"Compression is not supported for this drive {vm.device_name(target)}")
    _check_blocked(vm, source)
    _check_blocked(vm, target)
    if not 1 <= max_workers <= INT_MAX:
        raise generic(f"max-workers must be between 1 and {INT_MAX}")
    if max_chunk < 0:
        raise generic("max-chunk must be zero (which means no limit) or positive")
    if bitmap is not None:
        if mode != "never":
            check_bitmap(bitmap, DEFAULT)
        check_bitmap(bitmap, BUSY)
        if bitmap.successor is not None:
            raise generic("Cannot create a successor for a bitmap that already has one")
        source.add_bitmap(bitmap.create_successor())
    try:
        if target.size != source.size:
            raise generic("Source and target image have different sizes")
        # bdrv_cbw_append opens the filter node
        filter_name = args.get("filter-node-name")
        try:
            if filter_name is None:
                filter_name = vm.graph.auto_name()
            else:
                vm.graph.check_name(filter_name)
            check = perms.BackupCheck(vm.graph, source, target, filter_name)
            check.create(target)  # the filter's links: a read-only target, or one whose parents share no writes
        except QMPError as err:
            raise generic(f"Could not create node: {err.desc}") from None
        check.replace()  # the filter under the source's parents
        cluster = cluster_size_for(target)
        if max_chunk and max_chunk < cluster:  # backup_job_create checks it with the filter in place
            vm.graph.pass_filter(source, target, filter_name, cluster)
            raise generic(f"Required max-chunk ({max_chunk}) is less than backup cluster size ({cluster})")
    except QMPError:
        _reclaim(source, bitmap)
        raise
    job_id = args.get("job-id")
    if job_id is None:
        job_id = vm.device_name(source)
    try:  # block_job_add_bdrv, once job_create has made the job: the job's link makes the filter share no
        check.job(job_id)  # writes on the source (nor its overlay on its backing)
        link_error = None
    except QMPError as err:
        link_error = err
    speed = args.get("speed", 0)
    job = BackupJob(
        vm.jobs, job_id, graph=vm.graph, source=source, target=target, sync=sync, bitmap=bitmap,
        bitmap_mode=mode, cluster_size=cluster, filter_name=filter_name,
        on_source_error=args.get("on-source-error", "report"), on_target_error=args.get("on-target-error", "report"),
        max_workers=max_workers, max_chunk=max_chunk, txn=txn, auto_finalize=args.get("auto-finalize", True),
        auto_dismiss=args.get("auto-dismiss", True), speed=max(0, speed), owns_target=owns_target,
        use_copy_range=perf.get("use-copy-range", False), compress=args.get("compress", False),
    )
    if link_error is not None:
        job.early_fail()
        raise link_error
    if speed < 0:
        job.early_fail()
        raise generic("Parameter 'speed' expects a non-negative value")
    vm.jobs.attach_drained(job)
    return job


def _reclaim(source: Any, bitmap: DirtyBitmap | None) -> None:
    if bitmap is not None and bitmap.successor is not None:
        child = bitmap.successor
        bitmap.reclaim()
        source.bitmaps.remove(child)


def blockdev_backup_prepare(vm: Any, args: dict, txn: JobTxn | None) -> tuple[Any, BackupJob]:
    """blockdev_backup_prepare: look both nodes up, drain the source, create the job."""
    source = vm.graph.lookup_bs(args["device"])
    target = vm.graph.lookup_bs(args["target"])
    vm.jobs.drain_begin(source)
    try:
        return source, do_backup_common(vm, args, source, target, txn)
    except QMPError as err:
        err.drained = source  # type: ignore[attr-defined]
        raise


def drive_backup_prepare(vm: Any, args: dict, txn: JobTxn | None) -> tuple[Any, BackupJob]:
    """drive_backup_prepare: the target is a file, created unless mode is 'existing'."""
    mode = args.get("mode", "absolute-paths")
    source = vm.graph.lookup_bs(args["device"])
    vm.jobs.drain_begin(source)
    try:
        fmt = args.get("format")
        if fmt is None and mode != "existing":
            fmt = source.driver
        _check_blocked(vm, source)
        sync = args["sync"]
        backing_for_new = None
        if sync == "top":
            cow = source.backing
            if cow is None:
                args = dict(args, sync="full")
            else:
                backing_for_new = cow
        if sync == "none":
            backing_for_new = source
        if mode != "existing":
            vm.create_image(args["target"], fmt, source.size, backing_for_new, open_backing=sync != "none")
        opts: dict = {"discard": "unmap", "detect-zeroes": "unmap",
                      "file": {"driver": "file", "filename": args["target"]}}
        opts["driver"] = fmt or vm.probe_format(args["target"])
        if opts["driver"] not in ("raw", "qcow2"):
            vm.graph.open_foreign_by_name(args["target"], opts["driver"], read_only=False)
        if sync == "none":
            opts["backing"] = None
        target = vm.graph.open(opts)
        if sync == "none":
            vm.graph.set_backing(target, source)
        try:
            return source, do_backup_common(vm, args, source, target, txn, owns_target=True)
        except QMPError:
            vm.graph.release_job_target(target)
            raise
    except QMPError as err:
        err.drained = source  # type: ignore[attr-defined]
        raise
