"""block-stream: QEMU 7.2's checks (blockdev.c qmp_block_stream, block/stream.c stream_start) in their order,
with their texts; the stream job is :mod:`bitlab.jobs.stream`."""

from __future__ import annotations

from typing import Any

from ..block import perms
from ..block.cor import CorNode
from ..block.info import FILTER_CHILD, chain_contains, filter_or_cow, find_overlay
from ..block.reopen import set_read_only
from ..errors import QMPError, generic
from ..jobs.stream import StreamJob
from .cmd_commit import _find_backing_image, _node
from .commands import TABLE
from .types import BlockStream

STREAM_BLOCKER = "block device is in use by block job: stream"


@TABLE.command("block-stream", BlockStream)
def qmp_block_stream(vm: Any, args: dict) -> None:
    graph = vm.graph
    for a, b in (("base", "base-node"), ("base", "bottom"), ("bottom", "base-node")):
        if a in args and b in args:
            raise generic(f"'{a}' and '{b}' cannot be specified at the same time")
    device = args["device"]
    bs = graph.lookup_bs(device)
    base_bs = bottom_bs = None
    if "base" in args:
        base_bs = _find_backing_image(vm, bs, args["base"])
        if base_bs is None:
            raise generic(f"Can't find '{args['base']}' in the backing chain")
    if "base-node" in args:
        base_bs = _node(graph, args["base-node"])
        if bs is base_bs or not chain_contains(bs, base_bs):
            raise generic(f"Node '{args['base-node']}' is not a backing image of '{device}'")
    if "bottom" in args:
        bottom = args["bottom"]
        bottom_bs = _node(graph, bottom)
        if bottom_bs.driver in FILTER_CHILD:
            raise generic(f"Node '{bottom}' is a filter, use a non-filter node as 'bottom'")
        if not chain_contains(bs, bottom_bs):
            raise generic(f"Node '{bottom}' is not in a chain starting from '{device}'")
    end = filter_or_cow(bottom_bs) if bottom_bs is not None else base_bs
    node = bs
    while node is not None and node is not end:  # BLOCK_OP_TYPE_STREAM (a backing file's blocker allows it)
        if node.job_blocker:
            raise generic(f"Node '{vm.device_or_node_name(node)}' is busy: {node.job_blocker}")
        node = filter_or_cow(node)
    if base_bs is None and "backing-file" in args:
        raise generic("backing file specified, but streaming the entire chain")
    _stream_start(vm, args, bs, base_bs, bottom_bs)


def _stream_start(vm: Any, args: dict, bs: Any, base: Any, bottom: Any) -> None:
    """stream_start: the node made writable, the copy-on-read filter above it, the job, its BlockBackend on the
    filter and its links; the job starts."""
    graph = vm.graph
    if bottom is not None:
        base_overlay = above_base = bottom
    else:
        base_overlay = find_overlay(bs, base)
        if base_overlay is None:
            raise generic(f"'{base.node_name}' is not in the backing chain of '{bs.node_name}'")
        above_base = base_overlay
        while filter_or_cow(above_base) is not base and filter_or_cow(above_base) is not None:
            above_base = filter_or_cow(above_base)  # (only filters between the overlay and the base)
    read_only = bs.read_only
    if read_only:
        set_read_only(graph, bs, False)
    cor = job = None
    try:
        name = args.get("filter-node-name")
        if name is None:
            name = graph.auto_name()
        else:
            try:
                graph.check_name(name)
            except QMPError as err:  # (bdrv_insert_node)
                raise generic(f"Could not create node: {err.desc}") from None
        cor = CorNode(name, bottom=base_overlay, auto_named=name.startswith("#"),
                      implicit="filter-node-name" not in args,
                      options={"driver": "copy-on-read", "file": bs.node_name, "bottom": base_overlay.node_name})
        view = perms.PermView(graph)  # bdrv_insert_node: the filter takes the node's parents
        view.attach(cor, "file", bs)
        view.replace(bs, cor)
        error = view.first_error(cor)
        if error is not None:
            cor = None
            raise generic(error)
        graph.insert_mirror_top(bs, cor, "file")
        cor.frozen_keys = graph.freeze_chain(cor, base_overlay)  # cor_open: its chain down to bottom
        job_id = args.get("job-id")
        if job_id is None:
            job_id = vm.device_name(cor)
        speed = args.get("speed", 0)
        intermediates = []
        below = filter_or_cow(above_base)
        node = filter_or_cow(bs)
        while node is not None and node is not below:
            intermediates.append(node)
            node = filter_or_cow(node)
        job = StreamJob(vm.jobs, job_id, graph=graph, target=bs, cor=cor, base_overlay=base_overlay,
                        above_base=above_base, intermediates=tuple(intermediates),
                        backing_file=args.get("backing-file"), on_error=args.get("on-error", "report"),
                        target_read_only=read_only, auto_finalize=args.get("auto-finalize", True),
                        auto_dismiss=args.get("auto-dismiss", True), speed=max(0, speed))
        if speed < 0:
            raise generic("Parameter 'speed' expects a non-negative value")
        desc = f"stream job '{job_id}'"
        shared = perms.READ | perms.WRITE_UNCHANGED
        blks = [(cor, perms.Blk(perms.UNNAMED, perms.READ, shared | perms.WRITE)),
                (bs, perms.Blk(desc, 0, shared | perms.WRITE, "active node"))]
        blks += [(node, perms.Blk(desc, 0, shared, "intermediate node")) for node in intermediates]
        perms.add_links(perms.PermView(graph), blks)
    except QMPError:
        if job is not None:
            job.early_fail()
        if cor is not None:
            graph.remove_mirror_top(cor, None)
        if read_only:
            set_read_only(graph, bs, True)
        raise
    graph.job_blk(job, cor, perms.Blk(desc, 0, perms.ALL, "main node"))
    for node, blk in blks:
        graph.job_blk(job, node, blk)
    for node in (cor, bs, *intermediates):
        node.job_blocker = STREAM_BLOCKER
    job.start()
