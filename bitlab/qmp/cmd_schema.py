"""``query-qmp-schema``, and the reply types of the commands bitlab implements.

The reply types are named and shaped as in QEMU 7.2's qapi/block-core.json,
job.json, control.json and introspect.json (tests/test_schema.py checks them
against real QEMU's schema). :data:`RETURNS` attaches them to the registered
commands when this module is imported (it imports the modules that register
them first), so the command table stays the single source ``query-qmp-schema``
is generated from.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from . import cmd_bitmap, cmd_block, cmd_job, cmd_misc, cmd_runstate, cmd_wstats, hmp, transaction  # noqa: F401  (registered first)
from .commands import TABLE
from .events import JobStatus, JobType
from .qapi import BOOL, INT, INT64, STR, UINT32, UINT64, Array, Enum, QType, Struct, Union_, m, struct
from .schema import SchemaInfo, schema_info
from .types import (
    BlockdevDetectZeroesOptions,
    BlockDirtyBitmapSha256,
    BlockDirtyInfo,
    BlockPermission,
    QCryptoCipherAlgorithm,
    QCryptoCipherMode,
    QCryptoHashAlgorithm,
    QCryptoIVGenAlgorithm,
)

# -- ImageInfo (recursive: backing-image, and vmdk extents) ------------------------------------

# Members set below, once the types it refers to exist. Being recursive, ImageInfo must
# never be hashed (the frozen dataclass hash would not terminate).
ImageInfo = Struct("ImageInfo", ())

SnapshotInfo = struct(
    "SnapshotInfo",
    m("id", STR), m("name", STR), m("vm-state-size", INT), m("date-sec", INT), m("date-nsec", INT),
    m("vm-clock-sec", INT), m("vm-clock-nsec", INT), m("*icount", INT),
)
QCryptoBlockInfoLUKSSlot = struct(
    "QCryptoBlockInfoLUKSSlot", m("active", BOOL), m("*iters", INT), m("*stripes", INT), m("key-offset", INT),
)
QCryptoBlockInfoLUKS = struct(
    "QCryptoBlockInfoLUKS",
    m("cipher-alg", QCryptoCipherAlgorithm), m("cipher-mode", QCryptoCipherMode),
    m("ivgen-alg", QCryptoIVGenAlgorithm), m("*ivgen-hash-alg", QCryptoHashAlgorithm),
    m("hash-alg", QCryptoHashAlgorithm), m("payload-offset", INT), m("master-key-iters", INT), m("uuid", STR),
    m("slots", Array(QCryptoBlockInfoLUKSSlot)),
)
BlockdevQcow2EncryptionFormat = Enum("BlockdevQcow2EncryptionFormat", ("aes", "luks"))
ImageInfoSpecificQCow2Encryption = Union_(
    "ImageInfoSpecificQCow2Encryption",
    struct("ImageInfoSpecificQCow2EncryptionBase", m("format", BlockdevQcow2EncryptionFormat)),
    "format",
    {"luks": QCryptoBlockInfoLUKS},
)
Qcow2BitmapInfoFlags = Enum("Qcow2BitmapInfoFlags", ("in-use", "auto"))
Qcow2BitmapInfo = struct(
    "Qcow2BitmapInfo", m("name", STR), m("granularity", UINT32), m("flags", Array(Qcow2BitmapInfoFlags)),
)
Qcow2CompressionType = Enum("Qcow2CompressionType", ("zlib", "zstd"))
ImageInfoSpecificQCow2 = struct(
    "ImageInfoSpecificQCow2",
    m("compat", STR), m("*data-file", STR), m("*data-file-raw", BOOL), m("*extended-l2", BOOL),
    m("*lazy-refcounts", BOOL), m("*corrupt", BOOL), m("refcount-bits", INT),
    m("*encrypt", ImageInfoSpecificQCow2Encryption), m("*bitmaps", Array(Qcow2BitmapInfo)),
    m("compression-type", Qcow2CompressionType),
)
ImageInfoSpecificVmdk = struct(
    "ImageInfoSpecificVmdk", m("create-type", STR), m("cid", INT), m("parent-cid", INT), m("extents", Array(ImageInfo)),
)
RbdImageEncryptionFormat = Enum("RbdImageEncryptionFormat", ("luks", "luks2"))
ImageInfoSpecificRbd = struct("ImageInfoSpecificRbd", m("*encryption-format", RbdImageEncryptionFormat))
_SPECIFIC = {"qcow2": ImageInfoSpecificQCow2, "vmdk": ImageInfoSpecificVmdk, "luks": QCryptoBlockInfoLUKS,
             "rbd": ImageInfoSpecificRbd}
ImageInfoSpecificKind = Enum("ImageInfoSpecificKind", tuple(_SPECIFIC))
ImageInfoSpecific = Union_(
    "ImageInfoSpecific",
    struct("q_obj_ImageInfoSpecific-base", m("type", ImageInfoSpecificKind)),
    "type",
    {kind: struct(f"ImageInfoSpecific{name}Wrapper", m("data", data))
     for (kind, data), name in zip(_SPECIFIC.items(), ("QCow2", "Vmdk", "LUKS", "Rbd"))},
)
object.__setattr__(ImageInfo, "members", (
    m("filename", STR), m("format", STR), m("*dirty-flag", BOOL), m("*actual-size", INT), m("virtual-size", INT),
    m("*cluster-size", INT), m("*encrypted", BOOL), m("*compressed", BOOL), m("*backing-filename", STR),
    m("*full-backing-filename", STR), m("*backing-filename-format", STR), m("*snapshots", Array(SnapshotInfo)),
    m("*backing-image", ImageInfo), m("*format-specific", ImageInfoSpecific),
))

# -- query-named-block-nodes, query-block ------------------------------------------------------

BlockdevCacheInfo = struct("BlockdevCacheInfo", m("writeback", BOOL), m("direct", BOOL), m("no-flush", BOOL))
_THROTTLE = ("bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr")
BlockDeviceInfo = struct(
    "BlockDeviceInfo",
    m("file", STR), m("*node-name", STR), m("ro", BOOL), m("drv", STR), m("*backing_file", STR),
    m("backing_file_depth", INT), m("encrypted", BOOL), m("detect_zeroes", BlockdevDetectZeroesOptions),
    *(m(name, INT) for name in _THROTTLE),
    m("image", ImageInfo),
    *(m(f"*{name}_max", INT) for name in _THROTTLE),
    *(m(f"*{name}_max_length", INT) for name in _THROTTLE),
    m("*iops_size", INT), m("*group", STR), m("cache", BlockdevCacheInfo), m("write_threshold", INT),
    m("*dirty-bitmaps", Array(BlockDirtyInfo)),
)
BlockDeviceIoStatus = Enum("BlockDeviceIoStatus", ("ok", "failed", "nospace"))
BlockInfo = struct(
    "BlockInfo",
    m("device", STR), m("*qdev", STR), m("type", STR), m("removable", BOOL), m("locked", BOOL),
    m("*inserted", BlockDeviceInfo), m("*tray_open", BOOL), m("*io-status", BlockDeviceIoStatus),
)

# -- x-debug-query-block-graph ----------------------------------------------------------------

XDbgBlockGraphNodeType = Enum("XDbgBlockGraphNodeType", ("block-backend", "block-job", "block-driver"))
XDbgBlockGraph = struct(
    "XDbgBlockGraph",
    m("nodes", Array(struct("XDbgBlockGraphNode", m("id", UINT64), m("type", XDbgBlockGraphNodeType),
                            m("name", STR)))),
    m("edges", Array(struct("XDbgBlockGraphEdge", m("parent", UINT64), m("child", UINT64), m("name", STR),
                            m("perm", Array(BlockPermission)), m("shared-perm", Array(BlockPermission))))),
)

# -- jobs -------------------------------------------------------------------------------------

JobInfo = struct(
    "JobInfo",
    m("id", STR), m("type", JobType), m("status", JobStatus), m("current-progress", INT64),
    m("total-progress", INT64), m("*error", STR),
)
BlockJobInfo = struct(
    "BlockJobInfo",
    m("type", STR), m("device", STR), m("len", INT64), m("offset", INT64), m("busy", BOOL), m("paused", BOOL),
    m("speed", INT64), m("io-status", BlockDeviceIoStatus), m("ready", BOOL), m("status", JobStatus),
    m("auto-finalize", BOOL), m("auto-dismiss", BOOL), m("*error", STR),
)

# -- monitor ----------------------------------------------------------------------------------

VersionTriple = struct("VersionTriple", m("major", INT), m("minor", INT), m("micro", INT))
VersionInfo = struct("VersionInfo", m("qemu", VersionTriple), m("package", STR))
CommandInfo = struct("CommandInfo", m("name", STR))

RETURNS: dict[str, QType] = {
    "query-block": Array(BlockInfo),
    "query-named-block-nodes": Array(BlockDeviceInfo),
    "query-jobs": Array(JobInfo),
    "query-block-jobs": Array(BlockJobInfo),
    "x-debug-block-dirty-bitmap-sha256": BlockDirtyBitmapSha256,
    "query-version": VersionInfo,
    "query-commands": Array(CommandInfo),
    "human-monitor-command": STR,
    "query-qmp-schema": Array(SchemaInfo),
    "x-debug-query-block-graph": XDbgBlockGraph,
    "blockdev-snapshot-delete-internal-sync": SnapshotInfo,
}
"""Reply types of commands registered without one (QEMU's ``returns``)."""


@TABLE.command("query-qmp-schema")
def qmp_query_qmp_schema(vm: Any, args: dict) -> list:
    return schema_info()


def attach_returns(returns: dict[str, QType] = RETURNS) -> None:
    """Set ``returns`` on the registered commands named in ``returns``."""
    for name, qtype in returns.items():
        cmd = TABLE.commands.get(name)
        if cmd is not None and cmd.returns is None:
            TABLE.commands[name] = dataclasses.replace(cmd, returns=qtype)


attach_returns()
