"""QAPI types of ``blockdev-create``, named and shaped as in QEMU 7.2's qapi/block-core.json and crypto.json.

Every branch of BlockdevCreateOptions is here, also those bitlab refuses at run time (the schema lists
them all, as QEMU's does); drivers without a branch take the base members only.
"""

from __future__ import annotations

from .qapi import BOOL, INT, SIZE, STR, Array, Enum, Union_, m, struct
from .socket_types import InetSocketAddress, InetSocketAddressBase, SocketAddress
from .types import (
    BlockdevDriver,
    BlockdevRef,
    QCryptoBlockOptionsLUKS,
    QCryptoBlockOptionsQCow,
    QCryptoCipherAlgorithm,
    QCryptoCipherMode,
    QCryptoHashAlgorithm,
    QCryptoIVGenAlgorithm,
)

PreallocMode = Enum("PreallocMode", ("off", "metadata", "falloc", "full"))

# -- crypto.json ------------------------------------------------------------------------------

QCryptoBlockFormat = Enum("QCryptoBlockFormat", ("qcow", "luks"))
QCryptoBlockCreateOptionsLUKS = struct(
    "QCryptoBlockCreateOptionsLUKS",
    m("*cipher-alg", QCryptoCipherAlgorithm), m("*cipher-mode", QCryptoCipherMode),
    m("*ivgen-alg", QCryptoIVGenAlgorithm), m("*ivgen-hash-alg", QCryptoHashAlgorithm),
    m("*hash-alg", QCryptoHashAlgorithm), m("*iter-time", INT),
    base=QCryptoBlockOptionsLUKS,
)
QCryptoBlockCreateOptions = Union_(
    "QCryptoBlockCreateOptions",
    struct("QCryptoBlockOptionsBase", m("format", QCryptoBlockFormat)),
    "format",
    {"qcow": QCryptoBlockOptionsQCow, "luks": QCryptoBlockCreateOptionsLUKS},
)

# -- the network drivers' locations (block-core.json) -------------------------------------------

BlockdevOptionsGluster = struct(
    "BlockdevOptionsGluster",
    m("volume", STR), m("path", STR), m("server", Array(SocketAddress)), m("*debug", INT), m("*logfile", STR),
)
NFSTransport = Enum("NFSTransport", ("inet",))
NFSServer = struct("NFSServer", m("type", NFSTransport), m("host", STR))
BlockdevOptionsNfs = struct(
    "BlockdevOptionsNfs",
    m("server", NFSServer), m("path", STR), m("*user", INT), m("*group", INT), m("*tcp-syn-count", INT),
    m("*readahead-size", INT), m("*page-cache-size", INT), m("*debug", INT),
)
RbdImageEncryptionFormat = Enum("RbdImageEncryptionFormat", ("luks", "luks2"))
RbdEncryptionOptionsLUKSBase = struct("RbdEncryptionOptionsLUKSBase", m("key-secret", STR))
RbdEncryptionOptions = Union_(
    "RbdEncryptionOptions",
    struct("q_obj_RbdEncryptionOptions-base", m("format", RbdImageEncryptionFormat)),
    "format",
    {"luks": struct("RbdEncryptionOptionsLUKS", base=RbdEncryptionOptionsLUKSBase),
     "luks2": struct("RbdEncryptionOptionsLUKS2", base=RbdEncryptionOptionsLUKSBase)},
)
RbdAuthMode = Enum("RbdAuthMode", ("cephx", "none"))
BlockdevOptionsRbd = struct(
    "BlockdevOptionsRbd",
    m("pool", STR), m("*namespace", STR), m("image", STR), m("*conf", STR), m("*snapshot", STR),
    m("*encrypt", RbdEncryptionOptions), m("*user", STR), m("*auth-client-required", Array(RbdAuthMode)),
    m("*key-secret", STR), m("*server", Array(InetSocketAddressBase)),
)
RbdEncryptionCreateOptionsLUKSBase = struct(
    "RbdEncryptionCreateOptionsLUKSBase", m("*cipher-alg", QCryptoCipherAlgorithm), base=RbdEncryptionOptionsLUKSBase,
)
RbdEncryptionCreateOptions = Union_(
    "RbdEncryptionCreateOptions",
    struct("q_obj_RbdEncryptionCreateOptions-base", m("format", RbdImageEncryptionFormat)),
    "format",
    {"luks": struct("RbdEncryptionCreateOptionsLUKS", base=RbdEncryptionCreateOptionsLUKSBase),
     "luks2": struct("RbdEncryptionCreateOptionsLUKS2", base=RbdEncryptionCreateOptionsLUKSBase)},
)
SshHostKeyCheckMode = Enum("SshHostKeyCheckMode", ("none", "hash", "known_hosts"))
SshHostKeyCheckHashType = Enum("SshHostKeyCheckHashType", ("md5", "sha1", "sha256"))
SshHostKeyCheck = Union_(
    "SshHostKeyCheck",
    struct("q_obj_SshHostKeyCheck-base", m("mode", SshHostKeyCheckMode)),
    "mode",
    {"hash": struct("SshHostKeyHash", m("type", SshHostKeyCheckHashType), m("hash", STR))},
)
BlockdevOptionsSsh = struct(
    "BlockdevOptionsSsh",
    m("server", InetSocketAddress), m("path", STR), m("*user", STR), m("*host-key-check", SshHostKeyCheck),
)

# -- the branches of BlockdevCreateOptions ------------------------------------------------------

BlockdevQcow2Version = Enum("BlockdevQcow2Version", ("v2", "v3"))
Qcow2CompressionType = Enum("Qcow2CompressionType", ("zlib", "zstd"))
BlockdevVhdxSubformat = Enum("BlockdevVhdxSubformat", ("dynamic", "fixed"))
BlockdevVmdkSubformat = Enum("BlockdevVmdkSubformat", (
    "monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat", "streamOptimized",
))
BlockdevVmdkAdapterType = Enum("BlockdevVmdkAdapterType", ("ide", "buslogic", "lsilogic", "legacyESX"))
BlockdevVpcSubformat = Enum("BlockdevVpcSubformat", ("dynamic", "fixed"))

CREATE_BRANCHES = {
    "file": struct(
        "BlockdevCreateOptionsFile",
        m("filename", STR), m("size", SIZE), m("*preallocation", PreallocMode), m("*nocow", BOOL),
        m("*extent-size-hint", SIZE),
    ),
    "gluster": struct(
        "BlockdevCreateOptionsGluster",
        m("location", BlockdevOptionsGluster), m("size", SIZE), m("*preallocation", PreallocMode),
    ),
    "luks": struct(
        "BlockdevCreateOptionsLUKS",
        m("file", BlockdevRef), m("size", SIZE), m("*preallocation", PreallocMode),
        base=QCryptoBlockCreateOptionsLUKS,
    ),
    "nfs": struct("BlockdevCreateOptionsNfs", m("location", BlockdevOptionsNfs), m("size", SIZE)),
    "parallels": struct(
        "BlockdevCreateOptionsParallels", m("file", BlockdevRef), m("size", SIZE), m("*cluster-size", SIZE),
    ),
    "qcow": struct(
        "BlockdevCreateOptionsQcow",
        m("file", BlockdevRef), m("size", SIZE), m("*backing-file", STR), m("*encrypt", QCryptoBlockCreateOptions),
    ),
    "qcow2": struct(
        "BlockdevCreateOptionsQcow2",
        m("file", BlockdevRef), m("*data-file", BlockdevRef), m("*data-file-raw", BOOL), m("*extended-l2", BOOL),
        m("size", SIZE), m("*version", BlockdevQcow2Version), m("*backing-file", STR),
        m("*backing-fmt", BlockdevDriver), m("*encrypt", QCryptoBlockCreateOptions), m("*cluster-size", SIZE),
        m("*preallocation", PreallocMode), m("*lazy-refcounts", BOOL), m("*refcount-bits", INT),
        m("*compression-type", Qcow2CompressionType),
    ),
    "qed": struct(
        "BlockdevCreateOptionsQed",
        m("file", BlockdevRef), m("size", SIZE), m("*backing-file", STR), m("*backing-fmt", BlockdevDriver),
        m("*cluster-size", SIZE), m("*table-size", INT),
    ),
    "rbd": struct(
        "BlockdevCreateOptionsRbd",
        m("location", BlockdevOptionsRbd), m("size", SIZE), m("*cluster-size", SIZE),
        m("*encrypt", RbdEncryptionCreateOptions),
    ),
    "ssh": struct("BlockdevCreateOptionsSsh", m("location", BlockdevOptionsSsh), m("size", SIZE)),
    "vdi": struct(
        "BlockdevCreateOptionsVdi", m("file", BlockdevRef), m("size", SIZE), m("*preallocation", PreallocMode),
    ),
    "vhdx": struct(
        "BlockdevCreateOptionsVhdx",
        m("file", BlockdevRef), m("size", SIZE), m("*log-size", SIZE), m("*block-size", SIZE),
        m("*subformat", BlockdevVhdxSubformat), m("*block-state-zero", BOOL),
    ),
    "vmdk": struct(
        "BlockdevCreateOptionsVmdk",
        m("file", BlockdevRef), m("size", SIZE), m("*extents", Array(BlockdevRef)),
        m("*subformat", BlockdevVmdkSubformat), m("*backing-file", STR), m("*adapter-type", BlockdevVmdkAdapterType),
        m("*hwversion", STR), m("*toolsversion", STR), m("*zeroed-grain", BOOL),
    ),
    "vpc": struct(
        "BlockdevCreateOptionsVpc",
        m("file", BlockdevRef), m("size", SIZE), m("*subformat", BlockdevVpcSubformat), m("*force-size", BOOL),
    ),
}
"""Each driver's create options (the union's branches, in block-core.json's order)."""

BlockdevCreateOptions = Union_(
    "BlockdevCreateOptions",
    struct("q_obj_BlockdevCreateOptions-base", m("driver", BlockdevDriver)),
    "driver",
    CREATE_BRANCHES,
)
BlockdevCreate = struct("q_obj_blockdev-create-arg", m("job-id", STR), m("options", BlockdevCreateOptions))
