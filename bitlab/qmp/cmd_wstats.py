"""Node write accounting commands: ``block-set-write-threshold`` (block/write-threshold.c)."""

from __future__ import annotations

from typing import Any

from ..block import wstats
from ..errors import generic
from .commands import TABLE
from .qapi import STR, UINT64, m, struct

BlockSetWriteThreshold = struct("q_obj_block-set-write-threshold-arg", m("node-name", STR),
                                m("write-threshold", UINT64))


@TABLE.command("block-set-write-threshold", BlockSetWriteThreshold)
def qmp_block_set_write_threshold(vm: Any, args: dict) -> None:
    """qmp_block_set_write_threshold: a node by node name (bdrv_find_node; a device name does not do)."""
    name = args["node-name"]
    node = vm.graph.nodes.get(name)
    if node is None:
        raise generic(f"Device '{name}' not found")
    wstats.set_threshold(node, args["write-threshold"], vm.emit)
