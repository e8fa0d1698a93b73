"""change-backing-file: the backing file name written into an image of a device's chain (blockdev.c
qmp_change_backing_file), as management software does after a block-stream or block-commit. Only the image's
header changes: the node keeps the backing node it has."""

from __future__ import annotations

from typing import Any

from ..block.info import chain_contains, filter_or_cow
from ..block.reopen import set_read_only
from ..errors import generic
from .cmd_commit import _node
from .cmd_snapshot import root_node
from .commands import TABLE
from .qapi import STR, m, struct

ChangeBackingFile = struct("q_obj_change-backing-file-arg", m("device", STR), m("image-node-name", STR),
                           m("backing-file", STR))
MAX_NAME = 1023  # qcow2_change_backing_file: a longer name is EINVAL


@TABLE.command("change-backing-file", ChangeBackingFile)
def qmp_change_backing_file(vm: Any, args: dict) -> None:
    """The device's root (qmp_get_root_bs), the image's node, which must have a backing file (bdrv_find_base),
    the root's op blockers (BLOCK_OP_TYPE_CHANGE: a job's), the image in the root's chain; then the image
    reopened read-write if it is read-only (its persistent bitmaps marked in use, stored again as it goes back),
    and bdrv_change_backing_file with the image's own format as the backing format (as QEMU 7.2 passes it)."""
    graph = vm.graph
    device, name = args["device"], args["backing-file"]
    bs = root_node(graph, device)
    image_bs = _node(graph, args["image-node-name"])
    if filter_or_cow(image_bs) is None:
        raise generic("not allowing backing file change on an image without a backing file")
    if bs.job_blocker:
        raise generic(f"Node '{vm.device_or_node_name(bs)}' is busy: {bs.job_blocker}")
    if not chain_contains(bs, image_bs):
        raise generic(f"'{device}' and image file are not in the same chain")
    read_only = image_bs.read_only
    if read_only:
        set_read_only(graph, image_bs, False)
    try:
        image = getattr(image_bs, "image", None)
        if image is None or not image.is_qcow2:  # (no bdrv_change_backing_file: raw over a backing chain's node)
            raise generic(f"Could not change backing file to '{name}': Operation not supported")
        if len(name.encode()) > MAX_NAME:
            raise generic(f"Could not change backing file to '{name}': Invalid argument")
        image_bs.change_backing_file(name, image_bs.driver)
    finally:
        if read_only:
            set_read_only(graph, image_bs, True)
