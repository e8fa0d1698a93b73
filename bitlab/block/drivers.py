"""The block drivers QEMU 7.2 knows by name (qapi/block-core.json ``BlockdevDriver``): a format QEMU has no
driver for is unknown to it (bdrv_find_format), one bitlab does not simulate is refused as such."""

from __future__ import annotations

QEMU_DRIVERS = (
    "blkdebug", "blklogwrites", "blkreplay", "blkverify", "bochs", "cloop", "compress",
    "copy-before-write", "copy-on-read", "dmg", "file", "snapshot-access", "ftp", "ftps",
    "gluster", "host_cdrom", "host_device", "http", "https", "iscsi", "luks", "nbd",
    "nfs", "null-aio", "null-co", "nvme", "parallels", "preallocate", "qcow",
    "qcow2", "qed", "quorum", "raw", "rbd", "replication", "ssh", "throttle", "vdi", "vhdx",
    "vmdk", "vpc", "vvfat",
)
