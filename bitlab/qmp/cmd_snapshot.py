"""External snapshots: ``blockdev-snapshot-sync`` and ``blockdev-snapshot`` as QEMU 7.2 runs them
(blockdev.c external_snapshot_prepare / _commit / _abort / _clean, block.c bdrv_append).

Both commands are a transaction of one action, as in QEMU. The checks come in QEMU's order, with its
texts: the lookup, the op blockers, a flush of the old node (``An IO error has occurred`` if it fails; its
caches are written back whatever fails next), the overlay's name, its image (created unless ``mode`` is
``existing``, and left on disk whatever happens next), its opening, what the overlay may be, then
bdrv_append. Commit reopens the old node read-only; abort takes the overlay out again; clean drops an
overlay nobody holds (an overlay over a node without parents goes at once, as in QEMU).
"""

from __future__ import annotations

from typing import Any

from ..block import foreign, perms
from ..block.info import JOB_FILTERS
from ..block.ioerror import BlockIOError
from ..block.node import BlockNode, Qcow2Node
from ..errors import QMPError, generic
from ..qemu_img import QemuImgError
from .types import BlockdevDriver

FILTER_DRIVERS = ("blkdebug", "copy-before-write", "throttle")  # drivers with is_filter that bitlab simulates
BACKING_FORMATS = ("qcow2", "qcow", "qed", "vmdk")  # image formats with a backing file option


def lookup_device_or_node(graph: Any, device: str | None, node_name: str | None) -> BlockNode:
    """bdrv_lookup_bs(device, node_name): the device's root first, then the node name."""
    if device is not None and device in graph.devices:
        return graph.devices[device]
    if node_name is not None and node_name in graph.nodes:
        return graph.nodes[node_name]
    raise generic(f"Cannot find device='{device or ''}' nor node-name='{node_name or ''}'")


def root_node(graph: Any, device: str) -> BlockNode:
    """qmp_get_root_bs: a device's root, or a node nothing has as its child (``Need a root block node``)."""
    node = graph.lookup_bs(device)
    if any(child is node for parent in graph.nodes.values() for _, child in parent.children) or any(
            held is node and blk.role != "root" for _, held, blk, _ in graph.job_blks):  # (a job's link is none)
        raise generic("Need a root block node")
    return node


def snapshot_capable(node: BlockNode) -> bool:
    """bdrv_can_snapshot / bdrv_snapshot_list: qcow2, or raw passing it on to what it filters."""
    while node.driver == "raw" and node.child("file") is not None:  # bdrv_snapshot_fallback
        node = node.child("file")
    return node.driver == "qcow2"


def check_op_blockers(vm: Any, node: BlockNode) -> None:
    """bdrv_op_is_blocked (EXTERNAL_SNAPSHOT, MIRROR_SOURCE, MIRROR_TARGET, REPLACE): a job's nodes, and a node
    that is another's backing file (the newest such parent names the blocker)."""
    name = vm.device_or_node_name(node)
    if node.job_blocker:
        raise generic(f"Node '{name}' is busy: {node.job_blocker}")
    graph = vm.graph
    users = [parent for parent in graph.nodes.values()  # (a mirror_top's backing link is its filtered child)
             if any(role == "backing" and child is node for role, child in parent.children)
             and parent.driver not in JOB_FILTERS]
    if users:
        newest = max(users, key=lambda parent: graph.link_order.get((id(parent), "backing"), 0))
        raise generic(f"Node '{name}' is busy: node is used as backing hd of '{newest.node_name}'")


def _create_overlay(vm: Any, filename: str, fmt: str, old: BlockNode) -> None:
    """bdrv_img_create(snapshot-file, format, old's filename, old's format, size of old)."""
    if fmt not in BlockdevDriver.values or foreign.unknown(fmt):
        raise QMPError(f"Unknown file format '{fmt}'", printed=foreign.module_lines(fmt))
    if not foreign.creatable(fmt):
        raise generic(f"Format driver '{fmt}' does not support image creation")
    if fmt not in BACKING_FORMATS:
        raise generic(f"Backing file not supported for file format '{fmt}'")
    if fmt != "qcow2":
        raise generic(f"bitlab does not simulate the image format '{fmt}'")
    try:  # the old node is open: its file is not opened again to check it (-u)
        vm.qemu_img("create", "-f", fmt, "-b", old.filename, "-F", old.driver, "-u", filename, str(old.size))
    except QemuImgError as err:
        first = err.stderr.strip().splitlines()[0].removeprefix("qemu-img: ").removeprefix(f"{filename}: ")
        raise generic(first) from None


class ExternalSnapshot:
    """One external snapshot action (ExternalSnapshotState)."""

    def __init__(self, vm: Any, kind: str, data: dict) -> None:
        self.vm, self.kind, self.data = vm, kind, data
        self.old: BlockNode | None = None
        self.new: BlockNode | None = None
        self.opened = False  # the overlay was opened here (blockdev-snapshot-sync): clean lets it go
        self.appended = False

    def prepare(self) -> None:
        vm, data = self.vm, self.data
        graph = vm.graph
        sync = self.kind == "blockdev-snapshot-sync"
        if sync:
            device, node_name = data.get("device"), data.get("node-name")
        else:
            device = node_name = data["node"]
        old = self.old = lookup_device_or_node(graph, device, node_name)
        vm.jobs.drain_begin(old)  # paired with clean
        check_op_blockers(vm, old)
        if not old.read_only:  # (the caches written back whatever fails next)
            try:
                old.flush()
            except BlockIOError:
                raise generic("An IO error has occurred") from None
        if sync:
            fmt = data.get("format", "qcow2")
            new_name = data.get("snapshot-node-name")
            if node_name is not None and new_name is None:
                raise generic("New overlay node-name missing")
            if new_name is not None and (new_name in graph.devices or new_name in graph.nodes):
                raise generic("New overlay node-name already in use")
            if data.get("mode", "absolute-paths") != "existing":
                _create_overlay(vm, data["snapshot-file"], fmt, old)
            opts: dict = {"driver": fmt, "file": {"driver": "file", "filename": data["snapshot-file"]}}
            if new_name is not None:
                opts["node-name"] = new_name
            if fmt not in BlockdevDriver.values:
                raise generic(f"Unknown driver '{fmt}'")
            if fmt not in ("raw", "qcow2"):  # (QEMU's error opening it, or bitlab's refusal)
                graph.open_foreign_by_name(data["snapshot-file"], fmt, read_only=old.read_only)
            new = self.new = graph.open(opts, read_only=old.read_only, no_backing=True)
            self.opened = True
        else:
            new = self.new = graph.lookup_bs(data["overlay"])
        if perms.PermView(graph).cumulative(new)[0] & perms.READ:
            raise generic("The overlay is already in use")
        if new.driver in FILTER_DRIVERS:
            raise generic("Filters cannot be used as overlays")
        if new.backing is not None:
            raise generic("The overlay already has a backing image")
        if not isinstance(new, Qcow2Node):
            raise generic("The overlay does not support backing images")
        graph.append(new, old)
        self.appended = True

    def commit(self) -> None:
        """The old node becomes read-only: bdrv_reopen_set_read_only, whose error nobody asks for (a failed flush
        of its queue leaves it read-write)."""
        assert self.old is not None
        try:
            self.vm.graph.reopen_read_only(self.old)
        except BlockIOError:
            pass

    def abort(self) -> None:
        if self.appended and self.new is not None and self.old is not None:
            self.vm.graph.unappend(self.new, self.old)
            self.appended = False

    def clean(self) -> None:
        if self.old is not None:
            self.vm.jobs.drain_end(self.old)
        if self.opened and self.new is not None:
            self.vm.graph._drop_unowned(self.new)


__all__ = ["ExternalSnapshot", "check_op_blockers", "lookup_device_or_node", "root_node", "snapshot_capable"]
