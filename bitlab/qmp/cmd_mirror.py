"""blockdev-mirror: QEMU 7.2's checks (blockdev.c qmp_blockdev_mirror, blockdev_mirror_common; block/mirror.c
mirror_start, mirror_start_job) in their order, with their texts."""

from __future__ import annotations

from typing import Any

from ..block import perms
from ..block.info import chain_contains, filter_or_cow, skip_filters
from ..block.mirror_top import MirrorTopNode
from ..errors import QMPError, generic
from ..jobs.mirror import DEFAULT_BUF_SIZE, MirrorJob, default_granularity
from .cmd_snapshot import check_op_blockers, root_node
from .commands import TABLE
from .types import BlockdevMirror, DriveMirror

JOB_BLOCKER = "block device is in use by block job: mirror"
COMMIT_BLOCKER = "block device is in use by block job: commit"


@TABLE.command("blockdev-mirror", BlockdevMirror)
def qmp_blockdev_mirror(vm: Any, args: dict) -> None:
    source = root_node(vm.graph, args["device"])
    target = vm.graph.lookup_bs(args["target"])
    mirror_common(vm, args, source, target, zero_target=args["sync"] == "full")


@TABLE.command("drive-mirror", DriveMirror)
def qmp_drive_mirror(vm: Any, args: dict) -> None:
    """qmp_drive_mirror: the target is a file, created (without a backing file for sync full) unless mode is
    'existing', then opened with the source's flags and no backing file; the job gives it the source's chain
    below as it completes (sync top: the source's backing node, none: the source)."""
    graph = vm.graph
    source = root_node(graph, args["device"])
    if source.job_blocker:  # (the early check, before the target is made)
        raise generic(f"Node '{vm.device_or_node_name(source)}' is busy: {source.job_blocker}")
    mode = args.get("mode", "absolute-paths")
    fmt = args.get("format")
    if fmt is None and mode != "existing":
        fmt = skip_filters(source).driver
    below = skip_filters(source)
    backing = below.backing
    sync = args["sync"]
    if backing is None and sync == "top":
        sync = "full"
    if sync == "none":
        backing = source
    if "replaces" in args and "node-name" not in args:
        raise generic("a node-name must be provided when replacing a named node of the graph")
    if mode != "existing":
        if sync == "full" or backing is None:
            vm.create_image(args["target"], fmt, source.size, None)
        else:
            vm.create_image(args["target"], fmt, source.size, backing, open_backing=False)
    opts: dict = {"driver": fmt or vm.probe_format(args["target"]), "backing": None,
                  "file": {"driver": "file", "filename": args["target"]}}
    if "node-name" in args:
        opts["node-name"] = args["node-name"]
    if source.discard_unmap:  # (the source's open flags: BDRV_O_UNMAP)
        opts["discard"] = "unmap"
    if opts["driver"] not in ("raw", "qcow2"):
        graph.open_foreign_by_name(args["target"], opts["driver"], read_only=False)
    target = graph.open(opts)
    zero_target = sync == "full" and (mode == "existing" or not _zero_init(target))
    try:
        job = mirror_common(vm, dict(args, sync=sync), source, target, zero_target=zero_target, owns_target=True)
    except QMPError:
        graph.release_job_target(target)
        raise
    if job is not None and sync != "full":
        job.backing_after = source if sync == "none" else backing  # MIRROR_SOURCE/OPEN_BACKING_CHAIN


def _zero_init(node: Any) -> bool:
    """bdrv_has_zero_init: a new qcow2 image without a backing file reads as zeroes; so does a file."""
    return node.driver in ("qcow2", "file") or (node.driver == "raw" and node.child("file").driver == "file")


def mirror_common(vm: Any, args: dict, source: Any, target: Any, *, zero_target: bool,
                  owns_target: bool = False) -> MirrorJob | None:
    """blockdev_mirror_common, then mirror_start."""
    sync = args["sync"]
    granularity = args.get("granularity", 0)
    if granularity and not 512 <= granularity <= 64 << 20:
        raise generic("Parameter 'granularity' expects a value in range [512B, 64MB]")
    if granularity & (granularity - 1):
        raise generic("Parameter 'granularity' expects a power of 2")
    check_op_blockers(vm, source)
    check_op_blockers(vm, target)
    if sync == "top" and source.backing is None:
        sync = "full"
    replaces = args.get("replaces")
    if replaces is not None:
        to_replace = vm.graph.nodes.get(replaces)
        if to_replace is None:
            raise generic(f"Failed to find node with node-name='{replaces}'")
        check_op_blockers(vm, to_replace)  # (BLOCK_OP_TYPE_REPLACE)
        if to_replace is not source:
            raise generic(f"Cannot replace '{replaces}' by a node mirrored from '{source.node_name}', because it "
                          "cannot be guaranteed that doing so would not lead to an abrupt change of visible data")
    if sync in ("incremental", "bitmap"):
        raise generic(f"Sync mode '{sync}' not supported")
    if args.get("unmap") is False:
        raise generic("bitlab does not simulate drive-mirror's unmap: false")
    return start_job(vm, args, source, target, sync, granularity, zero_target=zero_target, owns_target=owns_target)


def start_job(vm: Any, args: dict, source: Any, target: Any, sync: str, granularity: int, *,
              zero_target: bool, owns_target: bool = False) -> MirrorJob:
    """mirror_start_job: the filter, the job, the target's BlockBackend, the job's links; the job starts.
    ``sync`` "commit": an active commit (commit_active_start) into ``target``, a node of the source's chain."""
    granularity = granularity or default_granularity(target)
    buf_size = args.get("buf-size", 0)
    if buf_size < 0:
        raise generic("Invalid parameter 'buf-size'")
    buf_size = buf_size or DEFAULT_BUF_SIZE
    if skip_filters(source) is skip_filters(target):
        raise generic("Can't mirror node into itself")
    commit = sync == "commit"
    if chain_contains(source, target) and not commit:
        raise generic("bitlab does not simulate a mirror into a node of the source's backing chain")
    graph = vm.graph
    name = args.get("filter-node-name")
    if name is None:
        name = graph.auto_name()
    else:
        graph.check_name(name)
    job_id = args.get("job-id")
    if job_id is None:
        job_id = vm.device_name(source)
    top = MirrorTopNode(name, auto_named=name.startswith("#"), options={"driver": "mirror_top"})
    top.is_commit = commit
    graph.insert_mirror_top(source, top)
    speed = args.get("speed", 0)
    try:
        job = MirrorJob(vm.jobs, job_id, graph=graph, source=source, target=target, top=top, sync=sync,
                        granularity=granularity, buf_size=buf_size, zero_target=zero_target,
                        on_source_error=args.get("on-source-error", "report"),
                        on_target_error=args.get("on-target-error", "report"),
                        auto_finalize=args.get("auto-finalize", True), auto_dismiss=args.get("auto-dismiss", True),
                        speed=max(0, speed), owns_target=owns_target,
                        copy_mode=args.get("copy-mode", "background"),
                        intermediates=tuple(_intermediates(source, target)) if commit else ())
    except QMPError:
        graph.remove_mirror_top(top, None)
        raise
    try:
        if speed < 0:
            raise generic("Parameter 'speed' expects a non-negative value")
        target_blk = perms.Blk(perms.UNNAMED, perms.WRITE, perms.WRITE_UNCHANGED)
        if commit:  # the base in active use: anything but resize is shared; a smaller base grows
            target_blk = perms.Blk(perms.UNNAMED, perms.WRITE | (perms.RESIZE if target.size < source.size else 0),
                                   perms.WRITE_UNCHANGED | perms.READ | perms.WRITE)
        desc = f"{job.job_type} job '{job_id}'"
        # blk_insert_bs: the target's BlockBackend; an active commit's block_job_add_bdrv of each intermediate
        # node (they disappear: no other job may use them)
        intermediate = perms.Blk(desc, 0, perms.WRITE_UNCHANGED | perms.WRITE, "intermediate node")
        perms.add_links(perms.PermView(graph), [(target, target_blk), *((n, intermediate) for n in job.intermediates)])
    except QMPError:
        job.early_fail()
        raise
    graph.job_blk(job, top, perms.Blk(desc, perms.READ, perms.READ | perms.WRITE_UNCHANGED | perms.WRITE,
                                      "main node"))
    graph.job_blk(job, target, target_blk)
    graph.job_blk(job, source, perms.Blk(desc, 0, perms.WRITE_UNCHANGED | perms.WRITE | perms.READ, "source"))
    graph.job_blk(job, target, perms.Blk(desc, 0, perms.ALL, "target"))
    for node in job.intermediates:  # (a link of its own each: the graph keys a link by its Blk)
        graph.job_blk(job, node, perms.Blk(desc, 0, intermediate.shared, intermediate.role))
    for node in (top, source, target, *job.intermediates):
        node.job_blocker = JOB_BLOCKER if not commit else COMMIT_BLOCKER
    if commit:  # bdrv_freeze_backing_chain(mirror_top, target)
        job.frozen = graph.freeze_chain(top, target)
    vm.jobs.attach_drained(job)
    job.start()
    return job


def _intermediates(source: Any, base: Any) -> list:
    """The nodes between an active commit's top and its base (bdrv_filter_or_cow_bs from the top's down)."""
    out = []
    node = filter_or_cow(source)
    while node is not None and node is not base:
        out.append(node)
        node = filter_or_cow(node)
    return out
