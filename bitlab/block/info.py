"""BlockDeviceInfo and ImageInfo as QEMU 7.2 reports them (block/qapi.c).

Dicts are built in QAPI schema member order; :func:`bitlab.qmp_order.wire_order`
turns that into the order QEMU sends. ``qemu-img info`` reuses :func:`image_info`.
"""

from __future__ import annotations

from .blkdebug import BlkdebugNode
from .node import BlockNode, FileNode, NullNode, Qcow2Node, round_sector
from .store import ImageFile


def qcow2_format_specific(image: ImageFile) -> dict:
    """ImageInfoSpecificQCow2 (schema order)."""
    data: dict = {"compat": image.compat}
    if image.compat != "0.10":
        data["lazy-refcounts"] = False
    if image.bitmaps:
        data["bitmaps"] = [
            {"name": sb.name, "granularity": sb.granularity,
             "flags": (["in-use"] if sb.in_use else []) + (["auto"] if sb.enabled else [])}
            for sb in image.bitmaps
        ]
    if image.compat != "0.10":
        data["corrupt"] = False
    data["refcount-bits"] = 16
    if image.compat != "0.10":
        data["extended-l2"] = False
    data["compression-type"] = "zlib"
    return {"type": "qcow2", "data": data}


def file_image_info(image: ImageFile, *, fmt: str | None = None, filename: str | None = None,
                    has_actual_size: bool = True) -> dict:
    """ImageInfo of an image file opened with its own format (qemu-img info)."""
    fmt = fmt or image.fmt
    info: dict = {"filename": filename or image.name, "format": fmt, "dirty-flag": False}
    if has_actual_size:
        info["actual-size"] = image.file_length()
    if fmt == "qcow2":
        info["virtual-size"] = round_sector(image.size)
        info["cluster-size"] = image.cluster_size
        if image.backing_file:
            info["backing-filename"] = image.backing_file
            info["full-backing-filename"] = image.backing_file
            if image.backing_fmt:
                info["backing-filename-format"] = image.backing_fmt
        info["format-specific"] = qcow2_format_specific(image)
    else:
        info["virtual-size"] = round_sector(image.file_length())
    return info


def filter_or_cow(node: BlockNode) -> BlockNode | None:
    """bdrv_filter_or_cow_bs: what a filter filters, or a format's backing node."""
    if node.driver == "copy-before-write":
        return node.child("file")
    return node.backing


def image_info(node: BlockNode, *, flat: bool = False) -> dict:
    """ImageInfo of a node; unless ``flat``, with the chain below it as ``backing-image``."""
    info = _image_info(node)
    below = filter_or_cow(node)
    if below is not None and not flat and "backing-image" not in info:
        spec = info.pop("format-specific", None)
        info["backing-image"] = image_info(below)
        if spec is not None:
            info["format-specific"] = spec
    return info


def _image_info(node: BlockNode) -> dict:
    if isinstance(node, NullNode):
        return {"filename": node.filename, "format": node.driver, "actual-size": 0, "virtual-size": node.size}
    if isinstance(node, FileNode):
        info = file_image_info(node.image, fmt="file", filename=node.filename)
        info["virtual-size"] = node.size
        return info
    if isinstance(node, Qcow2Node):
        # the allocated size comes from the protocol below; blkdebug does not answer
        return file_image_info(node.image, filename=node.filename,
                               has_actual_size=isinstance(node.child("file"), FileNode))
    if isinstance(node, BlkdebugNode):  # answers bdrv_get_info from its image, no allocated size
        return {"filename": node.filename, "format": node.driver, "dirty-flag": False, "virtual-size": node.size}
    # raw and filters: bdrv_get_info answers from below (file does, null-co does not); a filter
    # shows the cluster size of what it filters.
    info = {"filename": node.filename, "format": node.driver}
    bottom = node
    while bottom.child("file") is not None and not isinstance(bottom, Qcow2Node):
        bottom = bottom.child("file")
    if isinstance(bottom, (FileNode, Qcow2Node)):
        info["dirty-flag"] = False
    protocol = bottom
    while protocol.child("file") is not None:
        protocol = protocol.child("file")
    if not isinstance(protocol, BlkdebugNode):  # blkdebug cannot tell the allocated size
        info["actual-size"] = 0
    info["virtual-size"] = node.size
    if isinstance(bottom, Qcow2Node) and node.driver == "copy-before-write":
        info["cluster-size"] = bottom.image.cluster_size
    return info


def backing_depth(node: BlockNode) -> int:
    depth = 0
    below = filter_or_cow(node)
    while below is not None:
        depth += 1
        below = filter_or_cow(below)
    return depth


def block_device_info(node: BlockNode, *, flat: bool = False) -> dict:
    """BlockDeviceInfo, one entry of query-named-block-nodes (schema order)."""
    info: dict = {"file": node.filename, "node-name": node.node_name, "ro": node.read_only, "drv": node.driver}
    if isinstance(node, Qcow2Node) and node.image.backing_file and node.backing is not None:
        info["backing_file"] = node.image.backing_file
    info["backing_file_depth"] = 0 if flat else backing_depth(node)
    info["encrypted"] = False
    info["detect_zeroes"] = node.detect_zeroes
    for key in ("bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr"):
        info[key] = 0
    info["image"] = image_info(node, flat=flat)
    info["cache"] = {"writeback": True, "direct": node.cache_direct, "no-flush": node.cache_no_flush}
    info["write_threshold"] = 0
    if node.bitmaps:
        info["dirty-bitmaps"] = [bm.info() for bm in node.bitmaps]
    return info
