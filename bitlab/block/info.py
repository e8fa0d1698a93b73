"""BlockDeviceInfo and ImageInfo as QEMU 7.2 reports them (block/qapi.c).

Dicts are built in QAPI schema member order; :func:`bitlab.qmp_order.wire_order`
turns that into the order QEMU sends. ``qemu-img info`` reuses :func:`image_info`.
:class:`NodeInfoCache` keeps query-named-block-nodes entries while nothing they show changes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache

from ..qmp_order import wire_order
from ..units import format_size
from . import qcow2_trace
from .blkdebug import BlkdebugNode
from .node import BlockNode, FileNode, NullNode, Qcow2Node, round_sector
from .paths import node_full_backing_filename
from .store import ImageFile

VERIFY_CACHE = False  # True (the test suite): every entry NodeInfoCache answers with is checked against a new one


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
                    has_actual_size: bool = True, specific: bool = True) -> dict:
    """ImageInfo of an image file opened with its own format (qemu-img info). ``actual-size`` is what the
    file allocates on the host (:meth:`ImageFile.allocated_size`). Without ``specific``, no
    ``format-specific`` (for a caller that wants the other members only)."""
    fmt = fmt or image.fmt
    info: dict = {"filename": filename or image.name, "format": fmt, "dirty-flag": False}
    if has_actual_size:
        info["actual-size"] = image.allocated_size()
    if fmt == "qcow2":
        info["virtual-size"] = round_sector(image.size)
        info["cluster-size"] = image.cluster_size
        if image.backing_file:
            info["backing-filename"] = image.backing_file
            info["full-backing-filename"] = image.backing_file
            if image.backing_fmt:
                info["backing-filename-format"] = image.backing_fmt
        if specific:
            info["format-specific"] = qcow2_format_specific(image)
    else:
        info["virtual-size"] = round_sector(image.file_length())
    return info


FILTER_CHILD = {"copy-before-write": "file", "throttle": "file", "mirror_top": "backing", "commit_top": "backing",
                "copy-on-read": "file", "blkdebug": "image"}
"""The filters' filtered child (is_filter drivers)."""
JOB_FILTERS = ("mirror_top", "commit_top")
"""The filters a job puts in the graph whose filtered child is their backing link (block/mirror.c, block/commit.c)."""


def filter_or_cow(node: BlockNode) -> BlockNode | None:
    """bdrv_filter_or_cow_bs: what a filter (copy-before-write, throttle, mirror_top, blkdebug) filters, or a
    format's backing node."""
    role = FILTER_CHILD.get(node.driver)
    return node.child(role) if role is not None else node.backing


def skip_filters(node: BlockNode) -> BlockNode:
    """bdrv_skip_filters: down through the filters above a node to the first that is none."""
    while node.driver in FILTER_CHILD:
        below = node.child(FILTER_CHILD[node.driver])
        if below is None:
            return node
        node = below
    return node


def is_implicit_filter(node: BlockNode) -> bool:
    """bs->implicit: a filter a job put in the graph without a name of the caller's."""
    if node.driver in JOB_FILTERS:
        return node.auto_named
    return node.driver == "copy-on-read" and bool(getattr(node, "implicit", False))


def skip_implicit_filters(node: BlockNode) -> BlockNode:
    """bdrv_skip_implicit_filters."""
    while is_implicit_filter(node):
        below = node.child(FILTER_CHILD[node.driver])
        if below is None:
            break
        node = below
    return node


def chain_contains(top: BlockNode | None, node: BlockNode) -> bool:
    """bdrv_chain_contains: ``node`` is ``top`` or below it through filters and backing links."""
    while top is not None:
        if top is node:
            return True
        top = filter_or_cow(top)
    return False


def find_overlay(active: BlockNode, node: BlockNode | None) -> BlockNode | None:
    """bdrv_find_overlay: the node of ``active``'s chain (filters skipped) whose backing node is ``node``; with
    ``node`` None the chain's last node (bdrv_find_base)."""
    stop = skip_filters(node) if node is not None else None
    layer: BlockNode | None = skip_filters(active)
    while layer is not None:
        below = skip_filters(layer.backing) if layer.backing is not None else None
        if below is stop:
            return layer
        layer = below
    return None


def allocated_above(top: BlockNode | None, bottom: BlockNode | None, offset: int, nbytes: int) -> tuple[int, bool]:
    """bdrv_is_allocated_above(top, bottom, include_base): whether a layer from ``top`` down to ``bottom``
    allocates the bytes at ``offset``, and for how many of ``nbytes``: the first layer that does answers, for no more
    than the layers above leave unallocated; where none does, the run all of them leave unallocated."""
    node = top
    while node is not None:
        s, e, alloc = node.is_allocated(offset, nbytes)
        nbytes = min(nbytes, int(e[0]) - offset)
        if bool(alloc[0]):
            return nbytes, True
        if node is bottom:
            break
        node = skip_filters(node.backing) if node.backing is not None else None
    return nbytes, False


def bitmap_directory_reads(every: Iterable[BlockNode], nodes: Iterable[BlockNode], *, flat: bool) -> None:
    """The reads a query's image infos make, in QEMU's order (each node's own, then unless ``flat`` the chain
    below it): qcow2_get_specific_info lists a v3 image's persistent bitmaps from its bitmap directory, read
    from the file every time (qcow2_get_bitmap_info_list). Over a blkdebug node with an armed rule that read
    may fail, and the query fails with it. ``every``: all the graph's nodes (none a blkdebug node with an armed
    rule: nothing can fail)."""
    if not [node for node in every if node.driver == "blkdebug" and node.active]:
        return
    for node in nodes:
        below: BlockNode | None = node
        while below is not None:
            if isinstance(below, Qcow2Node) and below.image.compat != "0.10":
                blk = below.child("file")
                if isinstance(blk, BlkdebugNode) and blk.active:
                    qcow2_trace.directory_read(below)
            below = None if flat else filter_or_cow(below)


def image_info(node: BlockNode, *, flat: bool = False, filename: str | None = None) -> dict:
    """ImageInfo of a node; unless ``flat``, with the chain below it as ``backing-image``.
    ``filename``: the node's filename, if the caller has it already."""
    info = _image_info(node, node.filename if filename is None else filename)
    below = filter_or_cow(node)
    if below is not None and not flat and "backing-image" not in info:
        spec = info.pop("format-specific", None)
        info["backing-image"] = image_info(below)
        if spec is not None:
            info["format-specific"] = spec
    return info


def _image_info(node: BlockNode, filename: str, specific: bool = True) -> dict:
    """The node's own ImageInfo members (``specific``: see :func:`file_image_info`)."""
    if isinstance(node, NullNode):
        return {"filename": filename, "format": node.driver, "actual-size": 0, "virtual-size": node.size}
    if isinstance(node, FileNode):  # (virtual-size: the file's length in whole sectors, FileNode.size)
        return file_image_info(node.image, fmt="file", filename=filename, specific=specific)
    if isinstance(node, Qcow2Node):
        # the allocated size comes from the protocol below; blkdebug does not answer
        info = file_image_info(node.image, filename=filename,
                               has_actual_size=isinstance(node.child("file"), FileNode), specific=specific)
        if "full-backing-filename" in info:  # relative to the node's directory
            info["full-backing-filename"] = node_full_backing_filename(node, node.image.backing_file or "")
        return info
    if isinstance(node, BlkdebugNode):  # answers bdrv_get_info from its image, no allocated size
        info = {"filename": filename, "format": node.driver}
        if _answers_get_info(node.inner):
            info["dirty-flag"] = False
        info["virtual-size"] = node.size
        return info
    # raw and filters: bdrv_get_info answers from below (file does, null-co does not); raw and a filter
    # show the cluster size of the qcow2 node below.
    info = {"filename": filename, "format": node.driver}
    bottom = node
    while (bottom.child("file") or bottom.child("backing")) is not None and not isinstance(bottom, Qcow2Node):
        bottom = bottom.child("file") or bottom.child("backing")  # type: ignore[assignment]
    if _answers_get_info(node):
        info["dirty-flag"] = False
    size = allocated_file_size(node)
    if size is not None:
        info["actual-size"] = size
    info["virtual-size"] = node.size
    if isinstance(bottom, Qcow2Node) and node.driver in ("raw", "copy-before-write", "throttle", "copy-on-read",
                                                         *JOB_FILTERS):  # (raw_get_info asks its file child too)
        info["cluster-size"] = bottom.image.cluster_size
    return info


def allocated_file_size(node: BlockNode) -> int | None:
    """bdrv_get_allocated_file_size: null-co 0, a file what its blocks take, raw and filters what their
    child takes, qcow2 its file's; None where a protocol driver cannot tell (blkdebug: -ENOTSUP)."""
    while True:
        if isinstance(node, NullNode):
            return 0
        if isinstance(node, FileNode):
            return node.image.allocated_size()
        if isinstance(node, BlkdebugNode):
            return None
        child = node.child("file") or (node.child("backing") if node.driver in JOB_FILTERS else None)
        if child is None:
            return None
        node = child


def _answers_get_info(node: BlockNode) -> bool:
    """bdrv_get_info succeeds (so ImageInfo has ``dirty-flag``): file and qcow2 answer; raw, blkdebug
    and filters ask the node below them; null-co and snapshot-access (not a filter) do not answer."""
    while not isinstance(node, (FileNode, Qcow2Node)):
        if node.driver == "snapshot-access":
            return False
        below = node.child("file") or node.child("image") or (
            node.child("backing") if node.driver in JOB_FILTERS else None)
        if below is None:
            return False
        node = below
    return True


PROTOCOL_DRIVERS = ("file", "null-co", "null-aio", "blkdebug")  # drivers with a protocol_name too


def driver_names(node: BlockNode) -> list[str]:
    """The driver's format_name, then its protocol_name if it has one (qemu-io ``info`` prints both)."""
    return [node.driver] * (2 if node.driver in PROTOCOL_DRIVERS else 1)


def driver_info(node: BlockNode) -> tuple[int, int] | None:
    """bdrv_get_info: (cluster size, VM state offset), or None where it fails (null-co). qcow2 keeps
    VM state after the last L2 table's worth of disk; file answers zeroes; raw and filters ask below;
    snapshot-access fails."""
    while not isinstance(node, (FileNode, Qcow2Node)):
        if node.driver == "snapshot-access":
            return None
        below = node.child("file") or node.child("image")
        if below is None:
            return None
        node = below
    if isinstance(node, FileNode):
        return 0, 0
    cs = node.image.cluster_size
    per_l1_entry = cs * (cs // 8)
    return cs, -(-node.image.size // per_l1_entry) * per_l1_entry


def format_specific(node: BlockNode) -> dict | None:
    """bdrv_get_specific_info of the node itself (ImageInfoSpecific): qcow2 has one."""
    return qcow2_format_specific(node.image) if isinstance(node, Qcow2Node) else None


def image_info_dump(info: dict) -> str:
    """bdrv_image_info_dump's text of one ImageInfo (qemu-img info, HMP ``info block -v``)."""
    size = format_size(info["actual-size"]) if "actual-size" in info else "unavailable"
    lines = [f"image: {info['filename']}", f"file format: {info['format']}",
             f"virtual size: {format_size(info['virtual-size'])} ({info['virtual-size']} bytes)", f"disk size: {size}"]
    if info.get("encrypted"):
        lines.append("encrypted: yes")
    if "cluster-size" in info:
        lines.append(f"cluster_size: {info['cluster-size']}")
    if info.get("dirty-flag"):
        lines.append("cleanly shut down: no")
    if "backing-filename" in info:
        lines.append(f"backing file: {info['backing-filename']}")
        if "full-backing-filename" not in info:
            lines[-1] += " (cannot determine actual path)"
        elif info["full-backing-filename"] != info["backing-filename"]:
            lines[-1] += f" (actual path: {info['full-backing-filename']})"
        if "backing-filename-format" in info:
            lines.append(f"backing file format: {info['backing-filename-format']}")
    if "format-specific" in info:
        lines.append("Format specific information:")
        lines += dump_specific(wire_order(info["format-specific"]["data"]), 4)
    return "\n".join(lines) + "\n"


def dump_specific(value: object, indent: int) -> list[str]:
    """bdrv_image_info_specific_dump's lines for a QAPI value (members in wire order): dashes in names
    become spaces, lists are numbered, nested values go four columns further in."""
    pad = " " * indent
    items = value.items() if isinstance(value, dict) else ((f"[{i}]", item) for i, item in enumerate(value))
    lines: list[str] = []
    for key, item in items:
        label = key.replace("-", " ") if isinstance(value, dict) else key
        if isinstance(item, (dict, list)):
            lines.append(f"{pad}{label}:")
            lines += dump_specific(item, indent + 4)
        else:
            lines.append(f"{pad}{label}: {_scalar(item)}")
    return lines


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def backing_depth(node: BlockNode) -> int:
    depth = 0
    below = filter_or_cow(node)
    while below is not None:
        depth += 1
        below = filter_or_cow(below)
    return depth


def block_device_info(node: BlockNode, *, flat: bool = False) -> dict:
    """BlockDeviceInfo, one entry of query-named-block-nodes (schema order)."""
    filename = node.filename  # a ``json:`` filename takes some building: once per entry
    info: dict = {"file": filename, "node-name": node.node_name, "ro": node.read_only, "drv": node.driver}
    if node.backing is not None:  # bdrv_cow_bs(bs)->filename
        info["backing_file"] = node.backing.filename
    info["backing_file_depth"] = 0 if flat else backing_depth(node)
    info["encrypted"] = False
    info["detect_zeroes"] = node.detect_zeroes
    for key in ("bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr"):
        info[key] = 0
    info["image"] = image_info(node, flat=flat, filename=filename)
    info["cache"] = {"writeback": True, "direct": node.cache_direct, "no-flush": node.cache_no_flush}
    info["write_threshold"] = node.write_threshold
    if node.bitmaps:
        info["dirty-bitmaps"] = [bm.info() for bm in node.bitmaps]
    return info


def _image_state(image: ImageFile) -> tuple:
    """Every field of an image file that an entry shows, except its length (see :class:`NodeInfoCache`)."""
    stored = image.bitmaps
    return (image.name, image.fmt, image.size, image.cluster_size, image.backing_file, image.backing_fmt,
            image.compat, tuple([(sb.name, sb.granularity, sb.in_use, sb.enabled) for sb in stored]) if stored else ())


def _subtree_state(node: BlockNode, memo: dict) -> tuple[tuple, tuple[ImageFile, ...]]:
    """What an entry for ``node`` is built from, except its dirty bitmaps and file lengths: the node
    itself, its image file and, recursively, its children (filenames, backing chains and filters all
    live below a node); and the image files of that subtree, whose lengths the entry shows. Other
    node fields change only in a blockdev-add or a blockdev-reopen (``reopens`` counts them). ``memo``: by
    node, and by the id of an image file."""
    got = memo.get(node)
    if got is None:
        image = node.__dict__.get("image")  # file and qcow2 nodes; blkdebug's image is its child's
        image_state, images = None, ()
        if image is not None:  # a format node and its file node share one image
            image_state = memo.get(id(image))
            if image_state is None:
                image_state = memo[id(image)] = _image_state(image)
            images = (image,)
        links = []
        for role, child in node.children:
            kid_state, kid_images = memo.get(child) or _subtree_state(child, memo)
            links.append((role, kid_state))
            images += kid_images
        got = memo[node] = ((node, node.read_only, node.reopens, image_state, tuple(links)), images)
    return got


def _live_sizes(node: BlockNode, info: dict) -> bool:
    """Bring the sizes in ``info`` (an ImageInfo of ``node``, with its ``backing-image`` chain) up
    to date: ``actual-size`` and ``virtual-size`` are the members that follow the data written.
    False if the members present differ from what the node would show now (rebuild instead)."""
    while True:
        fresh = _image_info(node, "", specific=False)  # (the sizes are all it looks at)
        for key in ("actual-size", "virtual-size"):
            if (key in fresh) != (key in info):
                return False
            if key in fresh:
                info[key] = fresh[key]
        info = info.get("backing-image")
        if info is None:
            return True
        below = filter_or_cow(node)
        if below is None:
            return False
        node = below


class NodeInfoCache:
    """query-named-block-nodes entries, rebuilt only when something an entry shows has changed.

    Invalidation rule: an entry is reused while its node's :func:`_subtree_state` (the node,
    its image file and every node and image file below it) is equal to the one it was built
    from. If only the lengths of those image files changed (data was written), the entry is
    kept and its sizes are brought up to date (:func:`_live_sizes`). Dirty bitmaps change with
    every write, so ``dirty-bitmaps`` is built on every query.
    The cache keeps its own entries, which no reply ever holds: every reply gets a copy
    (:func:`_copy`: new containers, shared scalars), and an entry a query builds goes into the
    reply as it is while the cache keeps a copy of it.
    """

    def __init__(self) -> None:
        # (node, flat) -> (state built from, file lengths then, entry without dirty-bitmaps in wire
        # order, member order with dirty-bitmaps)
        self._entries: dict[tuple[BlockNode, bool], tuple[tuple, tuple[int, ...], dict, tuple[str, ...]]] = {}

    def entries(self, nodes: list[BlockNode], *, flat: bool) -> list[dict]:
        """:func:`block_device_info` of each node, in wire order (the order QEMU sends)."""
        memo: dict = {}
        out = []
        for node in nodes:
            state, images = memo.get(node) or _subtree_state(node, memo)
            lengths = tuple([image.allocation_key() for image in images])
            key = (node, flat)
            cached = self._entries.get(key)
            entry = None  # a dict built just now goes into the reply as it is
            if cached is None or cached[0] != state:
                cached, entry = self._build(node, flat, state, lengths)
            elif cached[1] != lengths:
                if _live_sizes(node, cached[2]["image"]):  # (the cache's own entry, brought up to date)
                    cached = (state, lengths, cached[2], cached[3])
                else:
                    cached, entry = self._build(node, flat, state, lengths)
            self._entries[key] = cached
            if entry is None:
                entry = _copy(cached[2])
            entry["write_threshold"] = node.write_threshold  # (block-set-write-threshold: not in the state)
            if node.bitmaps:
                entry["dirty-bitmaps"] = [wire_order(bm.info()) for bm in node.bitmaps]
                entry = {key: entry[key] for key in cached[3]}
            if VERIFY_CACHE:
                _verify_entry(node, flat, entry)
            out.append(entry)
        alive = set(nodes)
        for key in [key for key in self._entries if key[0] not in alive]:
            del self._entries[key]
        return out

    @staticmethod
    def _build(node: BlockNode, flat: bool, state: tuple,
               lengths: tuple[int, ...]) -> tuple[tuple[tuple, tuple[int, ...], dict, tuple[str, ...]], dict]:
        """A new cache entry, and the entry itself (in wire order: new containers, shared with nothing)."""
        info = block_device_info(node, flat=flat)
        info.pop("dirty-bitmaps", None)
        entry = wire_order(info)
        return (state, lengths, _copy(entry), _order_with_bitmaps(tuple(info))), entry


def _verify_entry(node: BlockNode, flat: bool, entry: dict) -> None:
    """An entry :class:`NodeInfoCache` answered with, against one built anew (members, values and their wire
    order): a stale entry (something it shows changed without changing its state) is an AssertionError."""
    want = wire_order(block_device_info(node, flat=flat))
    if json.dumps(entry) != json.dumps(want):
        raise AssertionError(f"query-named-block-nodes cache: stale entry for {node.node_name!r}:\n"
                             f"{json.dumps(entry)}\n!=\n{json.dumps(want)}")


def _copy(entry: dict) -> dict:
    """A copy of a JSON object as the cache keeps one: new dicts and lists all the way down, the same scalars."""
    out = entry.copy()
    for key, value in entry.items():
        kind = type(value)
        if kind is dict:
            out[key] = _copy(value)
        elif kind is list:
            out[key] = _copy_list(value)
    return out


def _copy_list(items: list) -> list:
    """:func:`_copy` of a JSON array."""
    return [_copy(item) if type(item) is dict else _copy_list(item) if type(item) is list else item for item in items]


@lru_cache(maxsize=64)
def _order_with_bitmaps(members: tuple[str, ...]) -> tuple[str, ...]:
    """Where ``dirty-bitmaps`` goes among the other members (wire order depends on the names only)."""
    return tuple(wire_order(dict.fromkeys((*members, "dirty-bitmaps"))))
