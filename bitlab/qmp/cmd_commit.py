"""block-commit: QEMU 7.2's checks (blockdev.c qmp_block_commit; block/mirror.c commit_active_start) in their
order, with their texts. A commit whose top is the active layer (or has a writer) is an active commit: a mirror
job of type ``commit`` from the top into the base, which becomes ready and switches the top's parents over to
the base at ``job-complete``."""

from __future__ import annotations

from typing import Any

from ..block import perms
from ..block.commit_top import CommitTopNode
from ..block.info import chain_contains, filter_or_cow, find_overlay, skip_filters
from ..block.reopen import set_read_only
from ..errors import QMPError, generic
from ..jobs.commit import CommitJob
from ..qemu_img import QemuImgError
from ..qemu_img._common import Layer
from ..qemu_img.commit import find_backing_image
from .cmd_mirror import COMMIT_BLOCKER, start_job
from .cmd_snapshot import root_node
from .commands import TABLE
from .types import BlockCommit


@TABLE.command("block-commit", BlockCommit)
def qmp_block_commit(vm: Any, args: dict) -> None:
    graph = vm.graph
    device = args["device"]
    # (libvirt probes with DeviceNotFound: the device's lookup comes before any other error)
    if graph.devices.get(device) is None and graph.nodes.get(device) is None:
        raise QMPError(f"Device '{device}' not found", "DeviceNotFound")
    bs = root_node(graph, device)
    _check_blocker(vm, bs)  # BLOCK_OP_TYPE_COMMIT_SOURCE
    top_bs = bs
    if "top-node" in args and "top" in args:
        raise generic("'top-node' and 'top' are mutually exclusive")
    if "top-node" in args:
        top_bs = _node(graph, args["top-node"])
        if not chain_contains(bs, top_bs):
            raise generic(f"'{args['top-node']}' is not in this backing file chain")
    elif args.get("top"):
        if bs.filename != args["top"]:
            top_bs = _find_backing_image(vm, bs, args["top"])
    if top_bs is None:
        raise generic(f"Top image file {args.get('top') or 'NULL'} not found")
    if "base-node" in args and "base" in args:
        raise generic("'base-node' and 'base' are mutually exclusive")
    if "base-node" in args:
        base_bs = _node(graph, args["base-node"])
        if not chain_contains(top_bs, base_bs):
            raise generic(f"'{args['base-node']}' is not in this backing file chain")
    elif args.get("base"):
        base_bs = _find_backing_image(vm, top_bs, args["base"])
        if base_bs is None:
            raise generic(f"Can't find '{args['base']}' in the backing chain")
    else:
        base_bs = find_overlay(top_bs, None)  # bdrv_find_base: the chain's last node
    below_base = filter_or_cow(base_bs)
    node = top_bs
    while node is not None and node is not below_base:  # BLOCK_OP_TYPE_COMMIT_TARGET
        _check_blocker(vm, node)
        node = filter_or_cow(node)
    if top_bs is base_bs:
        raise generic("cannot commit an image into itself")
    active = skip_filters(top_bs) is skip_filters(bs)
    if not active and _has_writer(graph, top_bs):  # (QEMU: an active commit of it)
        if "backing-file" in args:
            raise generic("'backing-file' specified, but 'top' has a writer on it")
        raise generic("bitlab does not simulate an active commit of a node below the active layer (a writer on "
                      f"'{top_bs.node_name}')")
    if not active:
        overlay = find_overlay(bs, top_bs)
        _check_blocker(vm, overlay)
        _commit_start(vm, args, bs, base_bs, top_bs)
        return
    if "backing-file" in args:
        raise generic("'backing-file' specified, but 'top' is the active layer")
    job_args = dict(args)
    if "job-id" not in job_args:  # (named after the device, even where the top is not its root)
        job_args["job-id"] = vm.device_name(bs)
    for key in ("on-source-error", "on-target-error"):
        job_args[key] = args.get("on-error", "report")
    reopened = base_bs.read_only
    if reopened:  # commit_active_start: the base becomes writable first
        set_read_only(graph, base_bs, False)
    try:
        start_job(vm, job_args, top_bs, base_bs, "commit", 0, zero_target=False)
    except QMPError:
        if reopened:
            set_read_only(graph, base_bs, True)
        raise


def _check_blocker(vm: Any, node: Any) -> None:
    """bdrv_op_is_blocked: a job's nodes (a backing file's blocker leaves commit and stream alone)."""
    if node.job_blocker:
        raise generic(f"Node '{vm.device_or_node_name(node)}' is busy: {node.job_blocker}")


def _node(graph: Any, name: str) -> Any:
    """bdrv_lookup_bs(NULL, name)."""
    node = graph.nodes.get(name)
    if node is None:
        raise generic(f"Cannot find device='' nor node-name='{name}'")
    return node


def _find_backing_image(vm: Any, top: Any, name: str) -> Any:
    """bdrv_find_backing_image: the node of ``top``'s chain (below it) that the file name designates, relative to
    each overlay's directory in turn; None if none does."""
    chain = []
    node: Any = skip_filters(top)
    while node is not None:
        chain.append(node)
        node = skip_filters(node.backing) if node.backing is not None else None
    layers = [Layer(n.filename or "", n.image) for n in chain]
    try:
        index = find_backing_image(layers, name, vm.graph.store_key)
    except QemuImgError:  # (a protocol bitlab does not simulate names nothing)
        return None
    return chain[index] if index else None


def _has_writer(graph: Any, node: Any) -> bool:
    """bdrv_get_cumulative_perm(top) & BLK_PERM_WRITE."""
    return bool(perms.PermView(graph).cumulative(node)[0] & perms.WRITE)


def _commit_start(vm: Any, args: dict, bs: Any, base: Any, top: Any) -> None:
    """commit_start (block/commit.c): the job on the active layer, the base made writable, the commit_top
    filter above the top, the job's links to the nodes from the top down to the base and to the base, the base's
    BlockBackend (a permission check) and the top's; the job starts."""
    graph = vm.graph
    if skip_filters(top) is skip_filters(base):
        raise generic("Invalid files for merge: top and base are the same")
    base_perms = perms.READ | perms.WRITE | (perms.RESIZE if base.size < top.size else 0)
    job_id = args.get("job-id")
    if job_id is None:
        job_id = vm.device_name(bs)
    speed = args.get("speed", 0)
    intermediates = []
    node = top
    while node is not None and node is not base:
        intermediates.append(node)
        node = filter_or_cow(node)
    job = CommitJob(vm.jobs, job_id, graph=graph, active=bs, top=top, base=base, filter_node=None,
                    intermediates=tuple(intermediates), backing_file=args.get("backing-file"),
                    on_error=args.get("on-error", "report"), base_read_only=base.read_only,
                    auto_finalize=args.get("auto-finalize", True), auto_dismiss=args.get("auto-dismiss", True),
                    speed=max(0, speed))
    desc = f"commit job '{job_id}'"
    try:
        if speed < 0:
            raise generic("Parameter 'speed' expects a non-negative value")
        if job.base_read_only:
            set_read_only(graph, base, False)
        name = args.get("filter-node-name")
        if name is None:
            name = graph.auto_name()
        else:
            graph.check_name(name)
        job.filter = CommitTopNode(name, auto_named=name.startswith("#"), options={"driver": "commit_top"})
        graph.insert_mirror_top(top, job.filter)  # bdrv_append
        view = perms.PermView(graph)
        blks = []
        for node in intermediates:  # (filters on the base would share consistent read: bitlab has none there)
            blks.append((node, perms.Blk(desc, 0, perms.WRITE_UNCHANGED | perms.WRITE, "intermediate node")))
        blks.append((base, perms.Blk(desc, 0, perms.ALL, "base")))
        blks.append((base, perms.Blk(perms.UNNAMED, base_perms, perms.READ | perms.WRITE_UNCHANGED)))
        blks.append((top, perms.Blk(perms.UNNAMED, 0, perms.ALL)))
        perms.add_links(view, blks)
    except QMPError:
        job.early_fail()
        raise
    graph.job_blk(job, bs, perms.Blk(desc, 0, perms.ALL, "main node"))
    for node, blk in blks:
        graph.job_blk(job, node, blk)
    for node in (bs, *intermediates, base):
        node.job_blocker = COMMIT_BLOCKER
    job.frozen = graph.freeze_chain(job.filter, base)  # bdrv_freeze_backing_chain(commit_top, base)
    job.start()
