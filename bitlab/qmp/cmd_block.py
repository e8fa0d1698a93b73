"""Block node commands: blockdev-add/-del, query-named-block-nodes, query-block."""

from __future__ import annotations

from typing import Any

from ..block.info import block_device_info
from .commands import TABLE
from .types import BlockdevDel, BlockdevOptions, QueryNamedBlockNodes


@TABLE.command("blockdev-add", BlockdevOptions, boxed=True)
def qmp_blockdev_add(vm: Any, args: dict) -> None:
    vm.graph.add(args)


@TABLE.command("blockdev-del", BlockdevDel)
def qmp_blockdev_del(vm: Any, args: dict) -> None:
    vm.close_node(args["node-name"])


@TABLE.command("query-named-block-nodes", QueryNamedBlockNodes, wire_ordered=True)
def qmp_query_named_block_nodes(vm: Any, args: dict) -> list:
    return vm.graph.info_cache.entries(vm.graph.newest_first(), flat=args.get("flat", False))


@TABLE.command("query-block")
def qmp_query_block(vm: Any, args: dict) -> list:
    out = []
    for device, node in vm.graph.devices.items():
        # -drive if=none: a removable BlockBackend without a device model (so no io-status)
        out.append({"device": device, "locked": False, "removable": True, "inserted": block_device_info(node),
                    "type": "unknown"})
    return out
