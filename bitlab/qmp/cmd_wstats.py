"""Node write accounting commands: ``block-set-write-threshold`` (block/write-threshold.c) and
``query-blockstats`` (block/qapi.c), with their QAPI types.

What moves in query-blockstats: ``wr_highest_offset`` of every node (the end of the highest write
request that reached it) and a file node's discard counters. The BlockBackend counters (bytes,
operations, times, ``idle_time_ns``) are kept by device models and by qemu-io's ``aio_*`` commands,
neither of which bitlab has: they stay 0 (and ``idle_time_ns`` absent), as on QEMU for what bitlab does.
"""

from __future__ import annotations

from typing import Any

from ..block import wstats
from ..block.info import filter_or_cow
from ..block.node import BlockNode
from ..errors import generic
from .commands import TABLE
from .qapi import BOOL, INT, NUMBER, STR, UINT64, Array, Struct, Union_, m, struct
from .types import BlockdevDriver

BlockSetWriteThreshold = struct("q_obj_block-set-write-threshold-arg", m("node-name", STR),
                                m("write-threshold", UINT64))
QueryBlockstats = struct("q_obj_query-blockstats-arg", m("*query-nodes", BOOL))

_OPS = ("rd", "wr", "flush", "unmap")
BlockDeviceTimedStats = struct(
    "BlockDeviceTimedStats", m("interval_length", INT),
    *(m(f"{kind}_{op}_latency_ns", INT) for op in ("rd", "wr", "flush") for kind in ("min", "max", "avg")),
    m("avg_rd_queue_depth", NUMBER), m("avg_wr_queue_depth", NUMBER),
)
BlockLatencyHistogramInfo = struct("BlockLatencyHistogramInfo", m("boundaries", Array(UINT64)),
                                   m("bins", Array(UINT64)))
_COUNTERS = (
    "rd_bytes", "wr_bytes", "unmap_bytes", *(f"{op}_operations" for op in _OPS),
    *(f"{op}_total_time_ns" for op in _OPS), "wr_highest_offset", "rd_merged", "wr_merged", "unmap_merged",
)
_FAILED = (*(f"failed_{op}_operations" for op in _OPS), *(f"invalid_{op}_operations" for op in _OPS))
BlockDeviceStats = struct(
    "BlockDeviceStats",
    *(m(name, INT) for name in _COUNTERS), m("*idle_time_ns", INT), *(m(name, INT) for name in _FAILED),
    m("account_invalid", BOOL), m("account_failed", BOOL), m("timed_stats", Array(BlockDeviceTimedStats)),
    *(m(f"*{op}_latency_histogram", BlockLatencyHistogramInfo) for op in ("rd", "wr", "flush")),
)
BlockStatsSpecificFile = struct("BlockStatsSpecificFile", m("discard-nb-ok", UINT64), m("discard-nb-failed", UINT64),
                                m("discard-bytes-ok", UINT64))
BlockStatsSpecificNvme = struct("BlockStatsSpecificNvme", m("completion-errors", UINT64),
                                m("aligned-accesses", UINT64), m("unaligned-accesses", UINT64))
BlockStatsSpecific = Union_(
    "BlockStatsSpecific", struct("q_obj_BlockStatsSpecific-base", m("driver", BlockdevDriver)), "driver",
    {"file": BlockStatsSpecificFile, "host_device": BlockStatsSpecificFile, "nvme": BlockStatsSpecificNvme},
)
BlockStats = Struct("BlockStats", ())  # recursive (parent, backing): members set below; never hash it
object.__setattr__(BlockStats, "members", (
    m("*device", STR), m("*qdev", STR), m("*node-name", STR), m("stats", BlockDeviceStats),
    m("*driver-specific", BlockStatsSpecific), m("*parent", BlockStats), m("*backing", BlockStats),
))


@TABLE.command("block-set-write-threshold", BlockSetWriteThreshold)
def qmp_block_set_write_threshold(vm: Any, args: dict) -> None:
    """qmp_block_set_write_threshold: a node by node name (bdrv_find_node; a device name does not do)."""
    name = args["node-name"]
    node = vm.graph.nodes.get(name)
    if node is None:
        raise generic(f"Device '{name}' not found")
    wstats.set_threshold(node, args["write-threshold"], vm.sink.emit)


@TABLE.command("query-blockstats", QueryBlockstats, Array(BlockStats))
def qmp_query_blockstats(vm: Any, args: dict) -> list:
    """qmp_query_blockstats: with ``query-nodes``, every node (oldest first, node level); else every
    named BlockBackend (bitlab's ``-drive`` devices; qsd's exports are anonymous: none)."""
    if args.get("query-nodes"):
        return [_node_stats(node, False) for node in vm.graph.nodes.values()]
    out = []
    for device, root in vm.graph.devices.items():
        entry = {"device": device, **_node_stats(root, True)}
        entry["stats"]["account_invalid"] = entry["stats"]["account_failed"] = True  # -drive's defaults
        out.append(entry)
    return out


def _parent(node: BlockNode) -> BlockNode | None:
    """The primary child if it stores data or is filtered (bdrv_query_bds_stats)."""
    return node.child("image") if node.driver == "blkdebug" else node.child("file")


def _node_stats(node: BlockNode, blk_level: bool) -> dict:
    """bdrv_query_bds_stats: BlockStats of ``node`` (schema order)."""
    stats: dict = dict.fromkeys(_COUNTERS, 0)
    stats["wr_highest_offset"] = wstats.highest(node)
    stats.update(dict.fromkeys(_FAILED, 0))
    stats.update({"account_invalid": False, "account_failed": False, "timed_stats": []})
    out: dict = {"node-name": node.node_name, "stats": stats}
    if node.driver == "file":
        ok, nbytes = node.discards
        out["driver-specific"] = {"driver": "file", "discard-nb-ok": ok, "discard-nb-failed": 0,
                                  "discard-bytes-ok": nbytes}
    parent = _parent(node)
    if parent is not None:
        out["parent"] = _node_stats(parent, blk_level)
    below = filter_or_cow(node) if blk_level else None
    if below is not None:
        out["backing"] = _node_stats(below, blk_level)
    return out
