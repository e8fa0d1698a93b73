"""Block node commands: blockdev-add/-del, block_resize, query-named-block-nodes, query-block,
x-debug-query-block-graph."""

from __future__ import annotations

from typing import Any

from ..block import perms
from ..block.info import JOB_FILTERS, bitmap_directory_reads, block_device_info
from ..block.reopen import blockdev_reopen
from ..block.xdbg import block_graph
from ..errors import generic
from .commands import TABLE
from .types import BlockdevDel, BlockdevOptions, BlockdevReopen, BlockResize, QueryNamedBlockNodes


@TABLE.command("blockdev-add", BlockdevOptions, boxed=True)
def qmp_blockdev_add(vm: Any, args: dict) -> None:
    vm.graph.add(args)


@TABLE.command("blockdev-reopen", BlockdevReopen)
def qmp_blockdev_reopen(vm: Any, args: dict) -> None:
    """qmp_blockdev_reopen (bitlab.block.reopen); each listed node drained while the reopen runs (its jobs
    pause and resume)."""
    drained: list = []

    def drain(node: Any) -> None:
        vm.jobs.drain_begin(node)
        drained.append(node)

    try:
        blockdev_reopen(vm.graph, args["options"], drain)
    finally:
        for node in drained:
            vm.jobs.drain_end(node)


@TABLE.command("blockdev-del", BlockdevDel)
def qmp_blockdev_del(vm: Any, args: dict) -> None:
    vm.close_node(args["node-name"])


@TABLE.command("block_resize", BlockResize)
def qmp_block_resize(vm: Any, args: dict) -> None:
    """qmp_block_resize: the node (bdrv_lookup_bs: a device's root, else a node name), a size that is
    not negative, no job's op blocker on the node, a BlockBackend that can take the resize permission,
    then the driver's truncate."""
    device, name = args.get("device"), args.get("node-name")
    node = vm.graph.devices.get(device) if device is not None else None
    if node is None and name is not None:
        node = vm.graph.nodes.get(name)
    if node is None:
        raise generic(f"Cannot find device='{device or ''}' nor node-name='{name or ''}'")
    if args["size"] < 0:
        raise generic("Parameter 'size' expects a >0 size")
    # op blockers: a backup's filter and target until the job is cleaned up (not its source), and any
    # node that is another's backing file (bdrv_backing_attach): a drive-backup sync=none target's source
    if node.job_blocker or any(role == "backing" and child is node
                               for parent in vm.graph.nodes.values() for role, child in parent.children):
        raise generic(f"Device '{device if device is not None else '(null)'}' is in use")
    perms.check_blk(vm.graph, node, perms.RESIZE)
    node.resize(args["size"])


@TABLE.command("query-named-block-nodes", QueryNamedBlockNodes, wire_ordered=True)
def qmp_query_named_block_nodes(vm: Any, args: dict) -> list:
    nodes, flat = vm.graph.newest_first(), args.get("flat", False)
    bitmap_directory_reads(nodes, reversed(nodes), flat=flat)  # (bdrv_named_nodes_list: the oldest node first)
    return vm.graph.info_cache.entries(nodes, flat=flat)


@TABLE.command("query-block")
def qmp_query_block(vm: Any, args: dict) -> list:
    out = []
    bitmap_directory_reads(vm.graph.nodes.values(), vm.graph.devices.values(), flat=False)
    for device, node in vm.graph.devices.items():
        while (node.driver in JOB_FILTERS or node.driver == "copy-on-read") and node.auto_named:
            node = node.child("backing") or node.child("file")  # bdrv_skip_implicit_filters
        # -drive if=none: a removable BlockBackend without a device model (so no io-status)
        out.append({"device": device, "locked": False, "removable": True, "inserted": block_device_info(node),
                    "type": "unknown"})
    return out


@TABLE.command("x-debug-query-block-graph")
def qmp_x_debug_query_block_graph(vm: Any, args: dict) -> dict:
    return block_graph(vm.graph, reversed(vm.jobs.jobs))  # QEMU's job list is newest first
