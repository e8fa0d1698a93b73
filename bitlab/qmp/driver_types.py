"""QAPI option types of the block drivers bitlab does not simulate (QEMU 7.2's qapi/block-core.json).

They complete BlockdevOptions: the input visitor checks each driver's members as QEMU's does, and
``query-qmp-schema`` shows every branch; opening such a node is still refused by the block graph.
Imported at the end of :mod:`bitlab.qmp.types`, which it completes. The CONFIG_BLKIO drivers
(io_uring, nvme-io_uring, virtio-blk-*) are not in Debian's build, so they have no branch here either.
"""

from __future__ import annotations

from .create_types import BlockdevOptionsGluster, BlockdevOptionsNfs, BlockdevOptionsRbd, BlockdevOptionsSsh
from .qapi import BOOL, INT, STR, UINT32, UINT64, Array, Enum, Struct, Union_, m, struct
from .socket_types import SocketAddress
from .types import (
    BlockdevDriver,
    BlockdevOptionsFile,
    BlockdevOptionsGenericCOWFormat,
    BlockdevOptionsGenericFormat,
    BlockdevRef,
    QCryptoBlockOptionsQCow,
    _variants,
)

BlockdevOptionsBlklogwrites = struct(
    "BlockdevOptionsBlklogwrites",
    m("file", BlockdevRef), m("log", BlockdevRef), m("*log-sector-size", UINT32), m("*log-append", BOOL),
    m("*log-super-update-interval", UINT64),
)
BlockdevOptionsBlkverify = struct("BlockdevOptionsBlkverify", m("test", BlockdevRef), m("raw", BlockdevRef))
BlockdevOptionsBlkreplay = struct("BlockdevOptionsBlkreplay", m("image", BlockdevRef))

# -- curl ------------------------------------------------------------------------------------------

BlockdevOptionsCurlBase = struct(
    "BlockdevOptionsCurlBase",
    m("url", STR), m("*readahead", INT), m("*timeout", INT), m("*username", STR), m("*password-secret", STR),
    m("*proxy-username", STR), m("*proxy-password-secret", STR),
)
BlockdevOptionsCurlHttp = struct(
    "BlockdevOptionsCurlHttp", m("*cookie", STR), m("*cookie-secret", STR), base=BlockdevOptionsCurlBase,
)
BlockdevOptionsCurlHttps = struct(
    "BlockdevOptionsCurlHttps", m("*cookie", STR), m("*sslverify", BOOL), m("*cookie-secret", STR),
    base=BlockdevOptionsCurlBase,
)
BlockdevOptionsCurlFtp = struct("BlockdevOptionsCurlFtp", base=BlockdevOptionsCurlBase)
BlockdevOptionsCurlFtps = struct("BlockdevOptionsCurlFtps", m("*sslverify", BOOL), base=BlockdevOptionsCurlBase)

# -- iscsi, nbd, nvme ------------------------------------------------------------------------------

IscsiTransport = Enum("IscsiTransport", ("tcp", "iser"))
IscsiHeaderDigest = Enum("IscsiHeaderDigest", ("crc32c", "none", "crc32c-none", "none-crc32c"))
BlockdevOptionsIscsi = struct(
    "BlockdevOptionsIscsi",
    m("transport", IscsiTransport), m("portal", STR), m("target", STR), m("*lun", INT), m("*user", STR),
    m("*password-secret", STR), m("*initiator-name", STR), m("*header-digest", IscsiHeaderDigest),
    m("*timeout", INT),
)
BlockdevOptionsNbd = struct(
    "BlockdevOptionsNbd",
    m("server", SocketAddress), m("*export", STR), m("*tls-creds", STR), m("*tls-hostname", STR),
    m("*x-dirty-bitmap", STR), m("*reconnect-delay", UINT32), m("*open-timeout", UINT32),
)
BlockdevOptionsNVMe = struct("BlockdevOptionsNVMe", m("device", STR), m("namespace", INT))

# -- formats and filters ---------------------------------------------------------------------------

BlockdevOptionsLUKS = struct("BlockdevOptionsLUKS", m("*key-secret", STR), base=BlockdevOptionsGenericFormat)
BlockdevOptionsPreallocate = struct(
    "BlockdevOptionsPreallocate", m("*prealloc-align", INT), m("*prealloc-size", INT),
    base=BlockdevOptionsGenericFormat,
)
BlockdevQcowEncryption = Union_(
    "BlockdevQcowEncryption",
    struct("q_obj_BlockdevQcowEncryption-base",
           m("format", Enum("BlockdevQcowEncryptionFormat", ("aes",)))),
    "format",
    {"aes": QCryptoBlockOptionsQCow},
)
BlockdevOptionsQcow = struct(
    "BlockdevOptionsQcow", m("*encrypt", BlockdevQcowEncryption), base=BlockdevOptionsGenericCOWFormat,
)
QuorumReadPattern = Enum("QuorumReadPattern", ("quorum", "fifo"))
BlockdevOptionsQuorum = struct(
    "BlockdevOptionsQuorum",
    m("*blkverify", BOOL), m("children", Array(BlockdevRef)), m("vote-threshold", INT),
    m("*rewrite-corrupted", BOOL), m("*read-pattern", QuorumReadPattern),
)
ReplicationMode = Enum("ReplicationMode", ("primary", "secondary"))
BlockdevOptionsReplication = struct(
    "BlockdevOptionsReplication", m("mode", ReplicationMode), m("*top-id", STR), base=BlockdevOptionsGenericFormat,
)
BlockdevOptionsVVFAT = struct(
    "BlockdevOptionsVVFAT",
    m("dir", STR), m("*fat-type", INT), m("*floppy", BOOL), m("*label", STR), m("*rw", BOOL),
)

UNSIMULATED_BRANCHES: dict[str, Struct] = {
    "blklogwrites": BlockdevOptionsBlklogwrites,
    "blkverify": BlockdevOptionsBlkverify,
    "blkreplay": BlockdevOptionsBlkreplay,
    "bochs": BlockdevOptionsGenericFormat,
    "cloop": BlockdevOptionsGenericFormat,
    "compress": BlockdevOptionsGenericFormat,
    "dmg": BlockdevOptionsGenericFormat,
    "ftp": BlockdevOptionsCurlFtp,
    "ftps": BlockdevOptionsCurlFtps,
    "gluster": BlockdevOptionsGluster,
    "host_cdrom": BlockdevOptionsFile,
    "host_device": BlockdevOptionsFile,
    "http": BlockdevOptionsCurlHttp,
    "https": BlockdevOptionsCurlHttps,
    "iscsi": BlockdevOptionsIscsi,
    "luks": BlockdevOptionsLUKS,
    "nbd": BlockdevOptionsNbd,
    "nfs": BlockdevOptionsNfs,
    "nvme": BlockdevOptionsNVMe,
    "parallels": BlockdevOptionsGenericFormat,
    "preallocate": BlockdevOptionsPreallocate,
    "qcow": BlockdevOptionsQcow,
    "qed": BlockdevOptionsGenericCOWFormat,
    "quorum": BlockdevOptionsQuorum,
    "rbd": BlockdevOptionsRbd,
    "replication": BlockdevOptionsReplication,
    "ssh": BlockdevOptionsSsh,
    "vdi": BlockdevOptionsGenericFormat,
    "vhdx": BlockdevOptionsGenericFormat,
    "vmdk": BlockdevOptionsGenericCOWFormat,
    "vpc": BlockdevOptionsGenericFormat,
    "vvfat": BlockdevOptionsVVFAT,
}
"""The branches of BlockdevOptions for the drivers bitlab does not simulate."""

BRANCH_ORDER = (
    "blkdebug", "blklogwrites", "blkverify", "blkreplay", "bochs", "cloop", "compress", "copy-before-write",
    "copy-on-read", "dmg", "file", "ftp", "ftps", "gluster", "host_cdrom", "host_device", "http", "https",
    "iscsi", "luks", "nbd", "nfs", "null-aio", "null-co", "nvme", "parallels", "preallocate", "qcow2", "qcow",
    "qed", "quorum", "raw", "rbd", "replication", "snapshot-access", "ssh", "throttle", "vdi", "vhdx", "vmdk",
    "vpc", "vvfat",
)
"""BlockdevOptions' branches as block-core.json declares them (not BlockdevDriver's order): the schema
lists its variants so."""


def _complete() -> None:
    """Add the branches to BlockdevOptions and put all of them in QEMU's order."""
    branches = {**_variants, **UNSIMULATED_BRANCHES}
    assert sorted(branches) == sorted(BRANCH_ORDER) == sorted(BlockdevDriver.values), "a driver without a branch"
    _variants.clear()
    _variants.update((driver, branches[driver]) for driver in BRANCH_ORDER)


_complete()
