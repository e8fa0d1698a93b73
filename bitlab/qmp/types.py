"""QAPI types of the commands bitlab implements, named as in QEMU 7.2's qapi/*.json."""

from __future__ import annotations

from ..block.blkdebug import BLKDEBUG_EVENTS, IO_TYPES
from ..block.drivers import QEMU_DRIVERS
from ..block.throttle import LIMIT_KEYS
from .qapi import (
    ANY,
    BOOL,
    INT,
    INT32,
    INT64,
    NULL,
    STR,
    UINT32,
    UINT64,
    Alternate,
    Array,
    Enum,
    Struct,
    Union_,
    m,
    struct,
)

BlockDirtyBitmap = struct("BlockDirtyBitmap", m("node", STR), m("name", STR))
BlockDirtyBitmapAdd = struct(
    "BlockDirtyBitmapAdd",
    m("node", STR), m("name", STR), m("*granularity", UINT32), m("*persistent", BOOL), m("*disabled", BOOL),
)
BlockDirtyBitmapOrStr = Alternate("BlockDirtyBitmapOrStr", (STR, BlockDirtyBitmap))
BlockDirtyBitmapMerge = struct(
    "BlockDirtyBitmapMerge", m("node", STR), m("target", STR), m("bitmaps", Array(BlockDirtyBitmapOrStr)),
)
BlockDirtyBitmapSha256 = struct("BlockDirtyBitmapSha256", m("sha256", STR))

BlockDirtyInfo = struct(
    "BlockDirtyInfo",
    m("*name", STR), m("count", INT), m("granularity", UINT32), m("recording", BOOL), m("busy", BOOL),
    m("persistent", BOOL), m("*inconsistent", BOOL),
)

# -- blockdev-add ------------------------------------------------------------------

BlockdevDriver = Enum("BlockdevDriver", QEMU_DRIVERS)
BlockdevDiscardOptions = Enum("BlockdevDiscardOptions", ("ignore", "unmap"))
BlockdevDetectZeroesOptions = Enum("BlockdevDetectZeroesOptions", ("off", "on", "unmap"))
BlockdevCacheOptions = struct("BlockdevCacheOptions", m("*direct", BOOL), m("*no-flush", BOOL))
OnOffAuto = Enum("OnOffAuto", ("auto", "on", "off"))
BlockdevAioOptions = Enum("BlockdevAioOptions", ("threads", "native", "io_uring"))

BlockdevOptionsBase = struct(
    "BlockdevOptionsBase",
    m("driver", BlockdevDriver), m("*node-name", STR), m("*discard", BlockdevDiscardOptions),
    m("*cache", BlockdevCacheOptions), m("*read-only", BOOL), m("*auto-read-only", BOOL),
    m("*force-share", BOOL), m("*detect-zeroes", BlockdevDetectZeroesOptions),
)

# BlockdevRef is recursive (an alternate of BlockdevOptions and str); the union is
# completed below once its variants exist.
_variants: dict[str, Struct] = {}
BlockdevOptions = Union_("BlockdevOptions", BlockdevOptionsBase, "driver", _variants)
BlockdevRef = Alternate("BlockdevRef", (BlockdevOptions, STR))
BlockdevRefOrNull = Alternate("BlockdevRefOrNull", (BlockdevOptions, STR, NULL))

BlockdevOptionsNull = struct(
    "BlockdevOptionsNull", m("*size", INT), m("*latency-ns", UINT64), m("*read-zeroes", BOOL),
)
BlockdevOptionsFile = struct(
    "BlockdevOptionsFile",
    m("filename", STR), m("*pr-manager", STR), m("*locking", OnOffAuto), m("*aio", BlockdevAioOptions),
    m("*aio-max-batch", INT), m("*drop-cache", BOOL), m("*x-check-cache-dropped", BOOL),
)
BlockdevOptionsGenericFormat = struct("BlockdevOptionsGenericFormat", m("file", BlockdevRef))
BlockdevOptionsRaw = struct(
    "BlockdevOptionsRaw", m("*offset", INT), m("*size", INT), base=BlockdevOptionsGenericFormat,
)
BlockdevOptionsGenericCOWFormat = struct(
    "BlockdevOptionsGenericCOWFormat", m("*backing", BlockdevRefOrNull), base=BlockdevOptionsGenericFormat,
)
Qcow2OverlapCheckMode = Enum("Qcow2OverlapCheckMode", ("none", "constant", "cached", "all"))
Qcow2OverlapChecks = Alternate("Qcow2OverlapChecks", (
    struct("Qcow2OverlapCheckFlags", m("*template", Qcow2OverlapCheckMode),
           *(m(f"*{name}", BOOL) for name in ("main-header", "active-l1", "active-l2", "refcount-table",
                                              "refcount-block", "snapshot-table", "inactive-l1", "inactive-l2",
                                              "bitmap-directory"))),
    Qcow2OverlapCheckMode,
))
# crypto.json: what the qcow2 options and blockdev-create's encryption options share
QCryptoCipherAlgorithm = Enum("QCryptoCipherAlgorithm", (
    "aes-128", "aes-192", "aes-256", "des", "3des", "cast5-128", "serpent-128", "serpent-192", "serpent-256",
    "twofish-128", "twofish-192", "twofish-256",
))
QCryptoCipherMode = Enum("QCryptoCipherMode", ("ecb", "cbc", "xts", "ctr"))
QCryptoIVGenAlgorithm = Enum("QCryptoIVGenAlgorithm", ("plain", "plain64", "essiv"))
QCryptoHashAlgorithm = Enum("QCryptoHashAlgorithm", ("md5", "sha1", "sha224", "sha256", "sha384", "sha512",
                                                     "ripemd160"))
QCryptoBlockOptionsQCow = struct("QCryptoBlockOptionsQCow", m("*key-secret", STR))
QCryptoBlockOptionsLUKS = struct("QCryptoBlockOptionsLUKS", m("*key-secret", STR))
BlockdevQcow2Encryption = Union_(
    "BlockdevQcow2Encryption",
    struct("q_obj_BlockdevQcow2Encryption-base",
           m("format", Enum("BlockdevQcow2EncryptionFormat", ("aes", "luks")))),
    "format",
    {"aes": QCryptoBlockOptionsQCow, "luks": QCryptoBlockOptionsLUKS},
)
BlockdevOptionsQcow2 = struct(
    "BlockdevOptionsQcow2",
    m("*lazy-refcounts", BOOL), m("*pass-discard-request", BOOL), m("*pass-discard-snapshot", BOOL),
    m("*pass-discard-other", BOOL), m("*overlap-check", Qcow2OverlapChecks), m("*cache-size", INT),
    m("*l2-cache-size", INT), m("*l2-cache-entry-size", INT), m("*refcount-cache-size", INT),
    m("*cache-clean-interval", INT), m("*encrypt", BlockdevQcow2Encryption), m("*data-file", BlockdevRef),
    base=BlockdevOptionsGenericCOWFormat,
)
OnCbwError = Enum("OnCbwError", ("break-guest-write", "break-snapshot"))
BlockdevOptionsCbw = struct(
    "BlockdevOptionsCbw",
    m("target", BlockdevRef), m("*bitmap", BlockDirtyBitmap), m("*on-cbw-error", OnCbwError),
    m("*cbw-timeout", UINT32), base=BlockdevOptionsGenericFormat,
)
_variants.update({"null-co": BlockdevOptionsNull, "null-aio": BlockdevOptionsNull,
                  "file": BlockdevOptionsFile, "raw": BlockdevOptionsRaw, "qcow2": BlockdevOptionsQcow2,
                  "copy-before-write": BlockdevOptionsCbw, "snapshot-access": BlockdevOptionsGenericFormat})

BlockdevDel = struct("q_obj_blockdev-del-arg", m("node-name", STR))
BlockdevReopen = struct("q_obj_blockdev-reopen-arg", m("options", Array(BlockdevOptions)))
QueryNamedBlockNodes = struct("q_obj_query-named-block-nodes-arg", m("*flat", BOOL))
HumanMonitorCommand = struct("q_obj_human-monitor-command-arg", m("command-line", STR), m("*cpu-index", INT))
BlockResize = struct("q_obj_block_resize-arg", m("*device", STR), m("*node-name", STR), m("size", INT))

# -- blkdebug ------------------------------------------------------------------------------

BlkdebugEvent = Enum("BlkdebugEvent", BLKDEBUG_EVENTS)
BlkdebugIOType = Enum("BlkdebugIOType", IO_TYPES)
BlkdebugInjectErrorOptions = struct(
    "BlkdebugInjectErrorOptions",
    m("event", BlkdebugEvent), m("*state", INT), m("*iotype", BlkdebugIOType), m("*errno", INT),
    m("*sector", INT), m("*once", BOOL), m("*immediately", BOOL),
)
BlkdebugSetStateOptions = struct(
    "BlkdebugSetStateOptions", m("event", BlkdebugEvent), m("*state", INT), m("new_state", INT),
)
BlockPermission = Enum("BlockPermission", ("consistent-read", "write", "write-unchanged", "resize"))
BlockdevOptionsBlkdebug = struct(
    "BlockdevOptionsBlkdebug",
    m("image", BlockdevRef), m("*config", STR), m("*align", INT), m("*max-transfer", INT32),
    m("*opt-write-zero", INT32), m("*max-write-zero", INT32), m("*opt-discard", INT32),
    m("*max-discard", INT32), m("*inject-error", Array(BlkdebugInjectErrorOptions)),
    m("*set-state", Array(BlkdebugSetStateOptions)), m("*take-child-perms", Array(BlockPermission)),
    m("*unshare-child-perms", Array(BlockPermission)),
)
_variants["blkdebug"] = BlockdevOptionsBlkdebug

# -- throttling: the throttle filter and its group object (qapi/qom.json) --------------------

OBJECT_TYPES = (
    "authz-list", "authz-listfile", "authz-pam", "authz-simple", "can-bus", "can-host-socketcan", "colo-compare",
    "cryptodev-backend", "cryptodev-backend-builtin", "cryptodev-backend-lkcf", "cryptodev-vhost-user",
    "dbus-vmstate", "filter-buffer", "filter-dump", "filter-mirror", "filter-redirector", "filter-replay",
    "filter-rewriter", "input-barrier", "input-linux", "iothread", "main-loop", "memory-backend-epc",
    "memory-backend-file", "memory-backend-memfd", "memory-backend-ram", "pef-guest", "pr-manager-helper", "qtest",
    "rng-builtin", "rng-egd", "rng-random", "secret", "secret_keyring", "sev-guest", "thread-context",
    "s390-pv-guest", "throttle-group", "tls-creds-anon", "tls-creds-psk", "tls-creds-x509", "tls-cipher-suites",
    "x-remote-object", "x-vfio-user-server",
)
"""QEMU 7.2's ObjectType (qapi/qom.json), in its order."""


ThrottleLimits = struct("ThrottleLimits", *(m(f"*{key}", INT) for key in LIMIT_KEYS))
BlockdevOptionsThrottle = struct("BlockdevOptionsThrottle", m("throttle-group", STR), m("file", BlockdevRef))
_variants["throttle"] = BlockdevOptionsThrottle
BlockdevOptionsCor = struct("BlockdevOptionsCor", m("*bottom", STR), base=BlockdevOptionsGenericFormat)
_variants["copy-on-read"] = BlockdevOptionsCor
ThrottleGroupProperties = struct(
    "ThrottleGroupProperties", m("*limits", ThrottleLimits), *(m(f"*x-{key}", INT) for key in LIMIT_KEYS),
)
ObjectType = Enum("ObjectType", OBJECT_TYPES)
ObjectOptions = Union_(
    "ObjectOptions", struct("q_obj_ObjectOptions-base", m("qom-type", ObjectType), m("id", STR)), "qom-type",
    {"throttle-group": ThrottleGroupProperties},
)
ObjectDel = struct("q_obj_object-del-arg", m("id", STR))
QomList = struct("q_obj_qom-list-arg", m("path", STR))
QomGet = struct("q_obj_qom-get-arg", m("path", STR), m("property", STR))
QomSet = struct("q_obj_qom-set-arg", m("path", STR), m("property", STR), m("value", ANY))
ObjectPropertyInfo = struct("ObjectPropertyInfo", m("name", STR), m("type", STR), m("*description", STR),
                            m("*default-value", ANY))

# -- backup ---------------------------------------------------------------------------------

MirrorSyncMode = Enum("MirrorSyncMode", ("top", "full", "none", "incremental", "bitmap"))
BitmapSyncMode = Enum("BitmapSyncMode", ("on-success", "never", "always"))
BlockdevOnError = Enum("BlockdevOnError", ("report", "ignore", "enospc", "stop", "auto"))
NewImageMode = Enum("NewImageMode", ("existing", "absolute-paths"))
BackupPerf = struct(
    "BackupPerf", m("*use-copy-range", BOOL), m("*max-workers", INT), m("*max-chunk", INT64),
)
BackupCommon = struct(
    "BackupCommon",
    m("*job-id", STR), m("device", STR), m("sync", MirrorSyncMode), m("*speed", INT), m("*bitmap", STR),
    m("*bitmap-mode", BitmapSyncMode), m("*compress", BOOL), m("*on-source-error", BlockdevOnError),
    m("*on-target-error", BlockdevOnError), m("*auto-finalize", BOOL), m("*auto-dismiss", BOOL),
    m("*filter-node-name", STR), m("*x-perf", BackupPerf),
)
DriveBackup = struct("DriveBackup", m("target", STR), m("*format", STR), m("*mode", NewImageMode),
                     base=BackupCommon)
BlockdevBackup = struct("BlockdevBackup", m("target", STR), base=BackupCommon)
MirrorCopyMode = Enum("MirrorCopyMode", ("background", "write-blocking"))
BlockdevMirror = struct(
    "q_obj_blockdev-mirror-arg",
    m("*job-id", STR), m("device", STR), m("target", STR), m("*replaces", STR), m("sync", MirrorSyncMode),
    m("*speed", INT), m("*granularity", UINT32), m("*buf-size", INT), m("*on-source-error", BlockdevOnError),
    m("*on-target-error", BlockdevOnError), m("*filter-node-name", STR), m("*copy-mode", MirrorCopyMode),
    m("*auto-finalize", BOOL), m("*auto-dismiss", BOOL),
)
DriveMirror = struct(
    "DriveMirror",
    m("*job-id", STR), m("device", STR), m("target", STR), m("*format", STR), m("*node-name", STR),
    m("*replaces", STR), m("sync", MirrorSyncMode), m("*mode", NewImageMode), m("*speed", INT),
    m("*granularity", UINT32), m("*buf-size", INT), m("*on-source-error", BlockdevOnError),
    m("*on-target-error", BlockdevOnError), m("*unmap", BOOL), m("*copy-mode", MirrorCopyMode),
    m("*auto-finalize", BOOL), m("*auto-dismiss", BOOL),
)
BlockCommit = struct(
    "q_obj_block-commit-arg",
    m("*job-id", STR), m("device", STR), m("*base-node", STR), m("*base", STR), m("*top-node", STR),
    m("*top", STR), m("*backing-file", STR), m("*speed", INT), m("*on-error", BlockdevOnError),
    m("*filter-node-name", STR), m("*auto-finalize", BOOL), m("*auto-dismiss", BOOL),
)
BlockStream = struct(
    "q_obj_block-stream-arg",
    m("*job-id", STR), m("device", STR), m("*base", STR), m("*base-node", STR), m("*backing-file", STR),
    m("*bottom", STR), m("*speed", INT), m("*on-error", BlockdevOnError), m("*filter-node-name", STR),
    m("*auto-finalize", BOOL), m("*auto-dismiss", BOOL),
)

# -- jobs -----------------------------------------------------------------------------------

JobId = struct("q_obj_job-cancel-arg", m("id", STR))
BlockJobDevice = struct("q_obj_block-job-pause-arg", m("device", STR))
BlockJobCancel = struct("q_obj_block-job-cancel-arg", m("device", STR), m("*force", BOOL))
BlockJobSetSpeed = struct("q_obj_block-job-set-speed-arg", m("device", STR), m("speed", INT))
BlockJobId = struct("q_obj_block-job-finalize-arg", m("id", STR))

# -- transaction ----------------------------------------------------------------------------

BlockdevSnapshot = struct("BlockdevSnapshot", m("node", STR), m("overlay", STR))
BlockdevSnapshotInternal = struct("BlockdevSnapshotInternal", m("device", STR), m("name", STR))
BlockdevSnapshotDeleteInternal = struct("q_obj_blockdev-snapshot-delete-internal-sync-arg", m("device", STR),
                                        m("*id", STR), m("*name", STR))
BlockdevSnapshotSync = struct(
    "BlockdevSnapshotSync",
    m("*device", STR), m("*node-name", STR), m("snapshot-file", STR), m("*snapshot-node-name", STR),
    m("*format", STR), m("*mode", NewImageMode),
)
Abort = struct("Abort")
TRANSACTION_ACTIONS = {
    "abort": Abort,
    "block-dirty-bitmap-add": BlockDirtyBitmapAdd,
    "block-dirty-bitmap-remove": BlockDirtyBitmap,
    "block-dirty-bitmap-clear": BlockDirtyBitmap,
    "block-dirty-bitmap-enable": BlockDirtyBitmap,
    "block-dirty-bitmap-disable": BlockDirtyBitmap,
    "block-dirty-bitmap-merge": BlockDirtyBitmapMerge,
    "blockdev-backup": BlockdevBackup,
    "blockdev-snapshot": BlockdevSnapshot,
    "blockdev-snapshot-internal-sync": BlockdevSnapshotInternal,
    "blockdev-snapshot-sync": BlockdevSnapshotSync,
    "drive-backup": DriveBackup,
}
TransactionActionKind = Enum("TransactionActionKind", tuple(TRANSACTION_ACTIONS))
TransactionAction = Union_(
    "TransactionAction",
    struct("q_obj_TransactionAction-base", m("type", TransactionActionKind)),
    "type",
    {kind: struct(f"{data.name}Wrapper", m("data", data)) for kind, data in TRANSACTION_ACTIONS.items()},
)
ActionCompletionMode = Enum("ActionCompletionMode", ("individual", "grouped"))
TransactionProperties = struct("TransactionProperties", m("*completion-mode", ActionCompletionMode))
TransactionArgs = struct(
    "q_obj_transaction-arg", m("actions", Array(TransactionAction)), m("*properties", TransactionProperties),
)

# The drivers bitlab does not simulate get their branches of BlockdevOptions here (last: they use the types above).
from . import driver_types  # noqa: E402, F401
