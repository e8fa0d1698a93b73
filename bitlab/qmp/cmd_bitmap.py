"""The block-dirty-bitmap-* commands (block/monitor/bitmap-qmp-cmds.c, block/dirty-bitmap.c)."""

from __future__ import annotations

from typing import Any

from ..bitmap import ALLOW_RO, BUSY, DEFAULT, MAX_NAME_SIZE, RO, DirtyBitmap, check_bitmap
from ..block import qcow2_trace
from ..errors import generic
from .commands import TABLE
from .types import (
    BlockDirtyBitmap,
    BlockDirtyBitmapAdd,
    BlockDirtyBitmapMerge,
    BlockDirtyBitmapSha256,
)

QCOW2_MAX_BITMAPS = 65535
BME_MAX_PHYS_SIZE = 64 << 20  # a stored bitmap's data may not exceed 64 MiB


def default_granularity(node: Any) -> int:
    """bdrv_get_default_bitmap_granularity: cluster size clamped to [4 KiB, 64 KiB]."""
    cluster = node.cluster_size
    if not cluster:
        return 65536
    return min(max(cluster, 4096), 65536)


def _can_store_persistent(vm: Any, node: Any, name: str, granularity: int) -> None:
    """bdrv_can_store_new_dirty_bitmap: qcow2 only; a name in use; then qcow2's constraints."""
    label = vm.device_or_node_name(node)
    if node.driver != "qcow2":
        raise generic(f"Can't store persistent bitmaps to {label}: Operation not supported")
    if node.find_bitmap(name) is not None:  # (before qcow2's own checks: a loaded bitmap is also stored)
        raise generic(f"Bitmap already exists: {name}")
    prefix = f"Can't make bitmap '{name}' persistent in '{label}': "
    if node.image.compat == "0.10":
        raise generic(prefix + "Cannot store dirty bitmaps in qcow2 v2 files")
    shift = granularity.bit_length() - 1
    if shift < 9:
        raise generic(prefix + "Granularity exceeds minimum (512 bytes)")
    if shift > 31:
        raise generic(prefix + "Granularity exceeds maximum (2147483648 bytes)")
    nbits = -(-node.size // granularity)
    if -(-nbits // 8) > BME_MAX_PHYS_SIZE:
        raise generic(prefix + "Too much space will be occupied by the bitmap. Use larger granularity")
    if len(name.encode()) > MAX_NAME_SIZE:
        raise generic(prefix + f"Name length exceeds maximum ({MAX_NAME_SIZE} characters)")
    stored = node.image.bitmaps
    if len(stored) >= QCOW2_MAX_BITMAPS:
        raise generic(prefix + "Maximum number of persistent bitmaps is already reached")
    if any(sb.name == name for sb in stored):
        raise generic(prefix + "Bitmap with the same name is already stored")


def add_bitmap(vm: Any, args: dict) -> DirtyBitmap:
    """qmp_block_dirty_bitmap_add; returns the new bitmap (for transactions)."""
    name = args["name"]
    if name == "":
        raise generic("Bitmap name cannot be empty")
    node = vm.graph.lookup_bs(args["node"])
    if "granularity" in args:
        granularity = args["granularity"]
        if granularity < 512 or granularity & (granularity - 1):
            raise generic("Granularity must be power of 2 and at least 512")
    else:
        granularity = default_granularity(node)
    persistent = args.get("persistent", False)
    if persistent:
        _can_store_persistent(vm, node, name, granularity)
    if node.find_bitmap(name) is not None:
        raise generic(f"Bitmap already exists: {name}")
    if len(name.encode()) > MAX_NAME_SIZE:
        raise generic(f"Bitmap name too long: {name}")
    bm = DirtyBitmap(node.size, granularity, name=name)
    node.add_bitmap(bm)
    if args.get("disabled", False):
        bm.disabled = True
    bm.persistent = persistent
    return bm


@TABLE.command("block-dirty-bitmap-add", BlockDirtyBitmapAdd)
def qmp_add(vm: Any, args: dict) -> None:
    add_bitmap(vm, args)


@TABLE.command("block-dirty-bitmap-remove", BlockDirtyBitmap)
def qmp_remove(vm: Any, args: dict) -> None:
    node, bm = vm.graph.lookup_bitmap(args["node"], args["name"])
    check_bitmap(bm, BUSY | RO)
    unstore(node, bm)
    node.bitmaps.remove(bm)


def unstore(node: Any, bm: DirtyBitmap) -> None:
    """A persistent bitmap stored in the image leaves it at once (:meth:`Qcow2Node.unstore_bitmap`); one not
    stored yet leaves the image as it is."""
    if not bm.persistent or node.driver != "qcow2" or not node.image.bitmaps:
        return
    qcow2_trace.directory_read(node)  # (the directory is read first: over blkdebug, that read may fail)
    if any(sb.name == bm.name for sb in node.image.bitmaps):
        refused = qcow2_trace.bitmap_unstore_refused(node)
        if refused is not None:
            raise generic(refused)
        node.unstore_bitmap(bm.name)


@TABLE.command("block-dirty-bitmap-clear", BlockDirtyBitmap)
def qmp_clear(vm: Any, args: dict) -> None:
    _, bm = vm.graph.lookup_bitmap(args["node"], args["name"])
    check_bitmap(bm, DEFAULT)
    bm.clear()


@TABLE.command("block-dirty-bitmap-enable", BlockDirtyBitmap)
def qmp_enable(vm: Any, args: dict) -> None:
    _, bm = vm.graph.lookup_bitmap(args["node"], args["name"])
    check_bitmap(bm, ALLOW_RO)
    bm.disabled = False


@TABLE.command("block-dirty-bitmap-disable", BlockDirtyBitmap)
def qmp_disable(vm: Any, args: dict) -> None:
    _, bm = vm.graph.lookup_bitmap(args["node"], args["name"])
    check_bitmap(bm, ALLOW_RO)
    bm.disabled = True


def merge_bitmaps(vm: Any, args: dict) -> DirtyBitmap:
    """block_dirty_bitmap_merge: sources gather into an anonymous bitmap, then the target.

    Each source is looked up, then the target checked (bdrv_merge_dirty_bitmap checks its
    destination first), then the source. On any error the target is unchanged.
    """
    node, dst = vm.graph.lookup_bitmap(args["node"], args["target"])
    sources = args["bitmaps"]
    if not sources:
        # QEMU 7.2 crashes (SIGSEGV) on an empty list; bitlab answers instead.
        raise generic("Parameter 'bitmaps' must not be empty "
                      "(bitlab refuses this: QEMU 7.2 crashes on an empty list)")
    anon = DirtyBitmap(dst.size, dst.granularity)
    for src_ref in sources:
        if isinstance(src_ref, str):
            src = node.find_bitmap(src_ref)
            if src is None:
                raise generic(f"Dirty bitmap '{src_ref}' not found")
        else:
            _, src = vm.graph.lookup_bitmap(src_ref["node"], src_ref["name"])
        check_bitmap(dst, DEFAULT)  # QEMU 7.2: a busy target fails once a source is found, before its checks
        check_bitmap(src, ALLOW_RO)
        if src.size != anon.size:
            raise generic(
                f"Bitmaps are of different sizes (destination size is {anon.size}, "
                f"source size is {src.size}) and can't be merged"
            )
        anon.merge_from(src)
    dst.merge_from(anon)
    return dst


@TABLE.command("block-dirty-bitmap-merge", BlockDirtyBitmapMerge)
def qmp_merge(vm: Any, args: dict) -> None:
    merge_bitmaps(vm, args)


@TABLE.command("x-debug-block-dirty-bitmap-sha256", BlockDirtyBitmap, returns=BlockDirtyBitmapSha256)
def qmp_sha256(vm: Any, args: dict) -> dict:
    _, bm = vm.graph.lookup_bitmap(args["node"], args["name"])
    return {"sha256": bm.sha256()}
