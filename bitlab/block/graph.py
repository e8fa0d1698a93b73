"""The block graph: every node, the devices above them, and QEMU's lookups.

Error texts here are QEMU's (block.c ``bdrv_lookup_bs``, block/monitor/bitmap-qmp-cmds.c
``block_dirty_bitmap_lookup``, block.c ``bdrv_open``, blockdev.c ``qmp_blockdev_del``),
raised as GenericError.
"""

from __future__ import annotations

import itertools
import posixpath
import random
import re
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any

from ..bitmap import DirtyBitmap
from ..errors import QMPError, generic
from ..qmp_order import wire_member_order
from . import foreign, perms, qcow2_opts, qcow2_trace, throttle
from .blkdebug import BlkdebugNode
from .cbw import CbwNode
from .cor import CorNode
from .info import FILTER_CHILD, NodeInfoCache
from .node import BlockNode, FileNode, NullNode, Qcow2Node, RawNode, raw_window_error, subtree_ids
from .paths import name_too_long, node_full_backing_filename, strip_file_protocol
from .snapshot_access import SnapshotAccessNode
from .store import ImageFile, ImageStore, StoredBitmap
from .throttle import ThrottleGroup, ThrottleNode, below_format

_NODE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")
MAX_NODE_NAME = 31  # sizeof(bs->node_name) - 1
MAX_BACKING_DEPTH = 100  # the implicit backing chain bitlab opens below a node, at most
INT64_MAX = (1 << 63) - 1


def _file_locks(graph: weakref.ref, image: Any) -> list[tuple[int, int]]:
    """perms.file_locks of the graph, while it exists (a machine that is gone holds no locks)."""
    alive = graph()
    return [] if alive is None else perms.file_locks(alive, image)


def _children(node: BlockNode) -> list[tuple[str, BlockNode]]:
    """A node's (role, child) links, for subtree walks."""
    return node.children


def id_wellformed(name: str) -> bool:
    """util/id.c: a letter first, then letters, digits, '-', '.', '_'."""
    return bool(_NODE_NAME_RE.match(name))


class BlockGraph:
    """All nodes and named devices, with QEMU's lookups and open/close rules.

    ``nodes`` keeps creation order; queries list the newest first, as QEMU does.
    """

    def __init__(self, store: ImageStore, workdir: str, seed: int = 0, machine: bool = False) -> None:
        self.store = store
        self.workdir = workdir.rstrip("/")
        self.nodes: dict[str, BlockNode] = {}
        self.devices: dict[str, BlockNode] = {}
        self.monitor_owned: set[str] = set()
        self.blks: list = []  # anonymous BlockBackends on nodes (block exports): objects with a ``node``
        self.job_held: set[str] = set()  # backup filters: their job holds them, whoever their parents are
        # a mirror job's links (block_job_create, block_job_add_bdrv, its target's BlockBackend): (id(owner), node,
        # perms.Blk, stamp key), for the permission checks
        self.job_blks: list[tuple[Any, BlockNode, Any, tuple]] = []
        self.frozen: set[tuple[int, str]] = set()  # (id(parent), role): links a job or a bottom froze
        self._rng = random.Random(seed)
        self._auto_counter = 0
        self.info_cache = NodeInfoCache()  # query-named-block-nodes entries
        self._backing_names: list[str] = []  # the names an implicit backing chain being opened has (_open_backing)
        if machine or store.locks is None:  # the machine's graph (a restarted machine's now): another program
            # (qemu-img) meets its file locks (weakly: the store holds no cycle to the graph)
            store.locks = partial(_file_locks, weakref.ref(self))
        # permissions (bitlab.block.perms): when each link was made (QEMU lists a node's parents newest
        # first), keyed (id(parent node), role), ("device", name) or ("blk", id(blk)); what each device takes
        self.link_order: dict[tuple, int] = {}
        self.device_perm: dict[str, int] = {}
        self.born: dict[tuple, int] = {}  # when each BlockBackend (device or export) was made: their list order
        self._stamps = itertools.count(1)
        # Bumped by every change made here that a permission check reads (bitlab.block.perms): a link made
        # or moved (stamp), a node opened, closed or reopened read-only, a backup filter inserted or dropped.
        # Not by what other modules change: the BlockBackends' list (an export's goes with no stamp; one
        # comes with one) and what devices take (device_perm): perms.check_blk keys on those itself.
        self.perm_version = 0
        self.blk_checked: tuple | None = None  # perms.check_blk's last check that passed: (its key, id(node))
        self.guests: dict[int, tuple[BlockNode, BlockNode]] = {}  # id(node) -> (node, where its guest is now)
        # block-copy for a copy-before-write node of the user's: (source, target, bitmap or None) -> a BlockCopy
        # (bitlab.jobs.block_copy; the machine sets it: the jobs layer sits above this one)
        self.block_copy_factory: Callable[[BlockNode, BlockNode, DirtyBitmap | None], Any] | None = None
        self.throttle_groups: dict[str, ThrottleGroup] = {}  # object-add's throttle groups (the machine's)
        self._throttle_drained: dict[int | None, list[list[ThrottleNode]]] = {}  # drained sections, by node
        self._throttle_ends: list[tuple[Any, list]] = []  # drained sections' ends not run yet (timer, [node])

    def stamp(self, key: tuple) -> None:
        """A link made (or moved) now: the newest parent of its child."""
        self.link_order[key] = next(self._stamps)
        self.perm_version += 1

    def new_backend(self, key: tuple) -> None:
        """A BlockBackend made now (``("device", name)`` or ``("blk", id(export))``): its root link is
        its node's newest parent, and it goes last in QEMU's list of BlockBackends."""
        self.stamp(key)
        self.born[key] = self.link_order[key]

    # -- lookups ------------------------------------------------------------------
    def device_or_node_name(self, node: BlockNode) -> str:
        """bdrv_get_device_or_node_name: the device above the node, else its node name."""
        for device, root in self.devices.items():
            if root is node:
                return device
        return node.node_name

    def lookup_bs(self, name: str) -> BlockNode:
        """bdrv_lookup_bs(device, node): device names first, then node names."""
        node = self.devices.get(name) or self.nodes.get(name)
        if node is None:
            raise generic(f"Cannot find device='{name}' nor node-name='{name}'")
        return node

    def lookup_node(self, name: str) -> BlockNode:
        """The lookup the bitmap commands use: ``Node 'x' not found``."""
        node = self.devices.get(name) or self.nodes.get(name)
        if node is None:
            raise generic(f"Node '{name}' not found")
        return node

    def lookup_bitmap(self, node_name: str, name: str) -> tuple[BlockNode, DirtyBitmap]:
        """block_dirty_bitmap_lookup: ``Node 'x' not found``, ``Dirty bitmap 'y' not found``."""
        node = self.lookup_node(node_name)
        bm = node.find_bitmap(name)
        if bm is None:
            raise generic(f"Dirty bitmap '{name}' not found")
        return node, bm

    def newest_first(self) -> list[BlockNode]:
        return list(reversed(self.nodes.values()))

    # -- files --------------------------------------------------------------------
    def store_key(self, filename: str) -> str:
        """The image store's name for a path (relative to the work directory, as QEMU's own working
        directory is). Nothing exists outside the work directory: a path that leaves it (absolute, or
        through ``..``) gives QEMU's text for a missing file."""
        path = filename
        if posixpath.isabs(path):
            if not path.startswith(self.workdir + "/"):
                raise generic(f"Could not open '{filename}': No such file or directory")
            path = path[len(self.workdir) + 1:]
        path = posixpath.normpath(path)
        if path == ".." or path.startswith("../"):
            raise generic(f"Could not open '{filename}': No such file or directory")
        return path

    # -- naming -------------------------------------------------------------------
    def auto_name(self) -> str:
        """util/id.c id_generate: '#block', a counter, two random digits."""
        name = f"#block{self._auto_counter}{self._rng.randrange(100):02d}"
        self._auto_counter += 1
        return name

    def check_name(self, name: str) -> None:
        if not id_wellformed(name):
            raise generic(f"Invalid node-name: '{name}'")
        if len(name) > MAX_NODE_NAME:
            raise generic("Node name too long")
        if name in self.nodes:
            raise generic(f"Duplicate nodes with node-name='{name}'")
        if name in self.devices:
            raise generic(f"node-name={name} is conflicting with a device id")

    # -- opening ------------------------------------------------------------------
    def add(self, opts: dict) -> BlockNode:
        """blockdev-add: open a node tree owned by the monitor."""
        if "node-name" not in opts:
            raise generic("'node-name' must be specified for the root node")
        node = self.open(opts)
        self.monitor_owned.add(node.node_name)
        return node

    def open(self, opts: dict, *, read_only: bool = False, no_backing: bool = False) -> BlockNode:
        """Open one node (and its children) from checked BlockdevOptions (``no_backing``: BDRV_O_NO_BACKING,
        the backing file the image names is not opened)."""
        if foreign.unknown(opts["driver"]):  # (bdrv_fill_options: a block module Debian's QEMU does not have)
            raise QMPError(f"Unknown driver '{opts['driver']}'", printed=foreign.module_lines(opts["driver"]))
        name = opts.get("node-name")
        if name is not None:
            self.check_name(name)
        if opts.get("detect-zeroes") == "unmap" and opts.get("discard") != "unmap":
            raise generic("setting detect-zeroes to unmap is not allowed without setting discard "
                          "operation to unmap")
        driver = opts["driver"]
        ro = bool(opts.get("read-only", read_only))

        def named(node: BlockNode) -> BlockNode:
            node.read_only = ro
            self.nodes[node.node_name] = node
            self.perm_version += 1
            return node

        common = {"options": opts}
        if driver in ("null-co", "null-aio"):
            if opts.get("latency-ns", 0) >= 1 << 63:  # (a uint64 null_file_open keeps in an int64)
                raise generic("latency-ns is invalid")
            size = opts.get("size", 1 << 30)
            if size < 0:
                raise generic("Parameter 'size' expects a non-negative number below 2^64 "
                              "(bitlab refuses this: QEMU 7.2 aborts on a negative null-co size)")
            if -(-size // 512) * 512 > INT64_MAX:
                raise generic("Could not refresh total sector count: File too large")
            node: BlockNode = NullNode(name or self.auto_name(), size=size, driver=driver,
                                       read_zeroes=opts.get("read-zeroes", False),
                                       auto_named=name is None, **common)
            return named(node)
        if driver == "file":
            key = self.store_key(opts["filename"])
            if key not in self.store:
                raise generic(f"Could not open '{opts['filename']}': No such file or directory")
            if self.store[key].unknown:
                raise generic(self.store[key].unknown)
            image = self.store[key]
            if image.is_qcow2 and image._layout is not None and not (self.store.locks and self.store.locks(image)):
                # (nothing has the file open: the writes earlier openers made, qemu-img's too, are not this node's)
                image._layout.forget_writes()
            node = FileNode(name or self.auto_name(), image=image, auto_named=name is None, **common)
            return named(node)
        if driver == "blkdebug":
            if "config" in opts:
                raise generic("Could not read blkdebug config file: No such file or directory")
            # a protocol-level driver: it is named before it opens its own child
            node = BlkdebugNode(name or self.auto_name(), inject_error=opts.get("inject-error", []),
                                set_state=opts.get("set-state", []), auto_named=name is None, **common)
            named(node)
            try:
                inner = self._child(opts["image"], opts, ro)
                if inner is node:  # (a reference to its own name: bdrv_attach_child's check)
                    raise generic(f"Making '{node.node_name}' a image child of '{node.node_name}' would create a "
                                  "cycle")
            except QMPError:
                self.nodes.pop(node.node_name, None)
                self.perm_version += 1
                raise
            try:
                perms.check_attach(self, node, "image", inner)
            except QMPError:
                self.nodes.pop(node.node_name, None)
                self.perm_version += 1
                self._drop_unowned(inner)
                raise
            self._attach(node, "image", inner)
            problem = blkdebug_constraints(opts)
            if problem is not None:
                self.release(node)
                raise generic(problem)
            # an empty list is left over when QEMU flattens the options: an option blkdebug does not take
            empty = [key for key in ("inject-error", "set-state", "take-child-perms", "unshare-child-perms")
                     if opts.get(key) == []]
            if empty:
                self.release(node)
                first = wire_member_order(tuple(empty))[0]
                raise generic(f"Block protocol 'blkdebug' doesn't support the option '{first}'")
            return node
        if driver in ("raw", "qcow2"):
            file_node = self._child(opts["file"], opts, ro)
            image = getattr(file_node, "image", None)
            if driver == "qcow2" and (image is None or not image.is_qcow2):
                stand_in = BlockNode(name or "", options=opts)  # qcow2_open attaches its file, then reads it
                stand_in.driver, stand_in.read_only = "qcow2", ro
                try:
                    perms.check_attach(self, stand_in, "file", file_node)
                finally:
                    self._drop_unowned(file_node)
                raise generic("Image is not in qcow2 format")
            throttled = below_format(file_node) if throttle.open_nodes else None
            if throttled is not None and (driver == "qcow2" or "offset" in opts or "size" in opts):
                self._drop_unowned(file_node)
                raise generic(f"bitlab does not simulate a {driver} node over a throttle node "
                              f"('{throttled.node_name}'): put the throttle node above the format node")
            if driver == "raw":
                node = RawNode(name or self.auto_name(), auto_named=name is None, **common)
            else:
                node = Qcow2Node(name or self.auto_name(), image=image, auto_named=name is None, **common)
            node.read_only = ro  # what its link to the file takes depends on it
            try:  # bdrv_attach_child: a node given by reference may have parents that share less
                perms.check_attach(self, node, "file", file_node)
            except QMPError:
                self._drop_unowned(file_node)
                raise
            if driver == "raw":
                problem = raw_window_error(opts, file_node.size)
                if problem is not None:
                    self._drop_unowned(file_node)
                    raise generic(problem)
            marked = rewritten = False
            if driver == "qcow2":
                if file_node.driver == "blkdebug":  # (its reads: a blkdebug rule may fail one)
                    problem = qcow2_trace.open_reads(image, file_node)
                    if problem is not None:
                        self._drop_unowned(file_node)
                        raise generic(problem)
                self._check_qcow2_open(opts, image, file_node)
                if image.v2_bitmaps and not ro and file_node.driver == "blkdebug":
                    self._drop_unowned(file_node)
                    raise generic("bitlab does not simulate the blkdebug events and requests of the header a qcow2 "
                                  "node rewrites as it opens (a v2 image's bitmaps extension dropped)")
                rewritten = image.opened(self.store.warn, not ro)  # (qcow2_read_extensions)
                if file_node.driver == "blkdebug":  # (qcow2_load_dirty_bitmaps, before the backing file opens)
                    problem, marked = qcow2_trace.bitmap_open(image, file_node, ro)
                    if problem is not None:
                        self._drop_unowned(file_node)
                        raise generic(problem)
            self._attach(node, "file", file_node)
            named(node)
            if isinstance(node, Qcow2Node):
                if rewritten:
                    node.header_written()
                try:
                    if not no_backing:
                        self._open_backing(node, opts)
                except Exception:
                    self.release(node)
                    raise
                self._load_bitmaps(node, told=marked)
            return node
        if driver == "copy-before-write":
            node, at = self._open_cbw(opts, name, ro)
            named(node)
            later = list(self.nodes.items())[at:-1]  # the target's nodes, opened after it was named: moved behind it
            for key, _ in later:
                del self.nodes[key]
            self.nodes.update(later)
            return node
        if driver == "snapshot-access":
            return named(self._open_snapshot_access(opts, name, ro))
        if driver == "throttle":
            return named(self._open_throttle(opts, name, ro))
        if driver == "copy-on-read":
            return named(self._open_cor(opts, name, ro))
        if driver in foreign.FORMATS and "file" in opts:
            self._open_foreign(driver, opts, name, ro)
        self._refuse_foreign(driver, opts, ro)
        raise generic(f"bitlab does not simulate the '{driver}' block driver "
                      "(supported: null-co, null-aio, file, raw, qcow2, blkdebug, copy-before-write, "
                      "snapshot-access, throttle, copy-on-read)")

    def drain_throttles(self, node: BlockNode | None, begin: bool) -> None:
        """A drained section's begin or end at the throttle nodes it reaches: ``node`` and every node above
        it (bdrv_drained_begin drains the parents), or with None every node (bdrv_drain_all). Until the end
        has run, a throttle node lets every request go (io_limits_disabled). The end reaches the nodes the
        begin reached, from a coroutine bdrv_drain_invoke schedules for the next turn of the main loop, or
        sooner: a drained section's begin polls the main loop (AIO_WAIT_WHILE), which runs the ends waiting."""
        if not self.throttle_groups:
            return
        key = None if node is None else id(node)
        if not begin:  # the nodes the section's begin reached (links may have moved since: bdrv_drop_filter)
            for tnode in self._throttle_drained[key].pop():
                end = [tnode]
                timer = tnode.group.scheduler.after(0, partial(self._throttle_end, end))
                self._throttle_ends.append((timer, end))
            return
        for timer, end in self._throttle_ends:  # (the begin's poll)
            timer.cancel()
            self._throttle_end(end)
        if node is None:
            reached = [n for n in self.nodes.values() if isinstance(n, ThrottleNode)]
        else:
            reached, todo, seen = [], [node], {id(node)}
            while todo:
                below = todo.pop()
                if isinstance(below, ThrottleNode):
                    reached.append(below)
                for parent in self.nodes.values():
                    if id(parent) not in seen and any(child is below for _, child in parent.children):
                        seen.add(id(parent))
                        todo.append(parent)
        self._throttle_drained.setdefault(key, []).append(reached)
        for tnode in reached:
            tnode.group.drain_begin(tnode.member)

    def _throttle_end(self, end: list) -> None:
        """throttle_co_drain_end, once (from its scheduled coroutine or a later drain's poll)."""
        if end:
            tnode = end.pop()
            tnode.group.drain_end(tnode.member)
        self._throttle_ends = [(timer, e) for timer, e in self._throttle_ends if e]

    def _open_throttle(self, opts: dict, name: str | None, ro: bool) -> ThrottleNode:
        """throttle_open: the ``file`` child (opened before the node is named), then the group
        (throttle_parse_options), which must exist."""
        file_node = self._child(opts["file"], opts, ro)
        group = self.throttle_groups.get(opts["throttle-group"])
        if group is None:
            self._drop_unowned(file_node)
            raise generic(f"Throttle group '{opts['throttle-group']}' does not exist")
        node = ThrottleNode(name or self.auto_name(), group=group, auto_named=name is None, options=opts)
        node.read_only = ro
        try:
            perms.check_attach(self, node, "file", file_node)
        except QMPError:
            node.close()
            self._drop_unowned(file_node)
            raise
        self._attach(node, "file", file_node)
        return node

    def _open_cor(self, opts: dict, name: str | None, ro: bool) -> CorNode:
        """cor_open: the ``file`` child (opened before the node is named), then ``bottom``: a node that exists and is
        no filter (the chain down to it is frozen: not simulated)."""
        file_node = self._child(opts["file"], opts, ro)
        bottom = None
        if "bottom" in opts:
            bottom = self.nodes.get(opts["bottom"])
            error = None
            if bottom is None:
                error = f"Bottom node '{opts['bottom']}' not found"
            elif bottom.driver in FILTER_CHILD:
                error = f"Bottom node '{opts['bottom']}' is a filter"
            if error is not None:
                self._drop_unowned(file_node)
                raise generic(error)
        node = CorNode(name or self.auto_name(), bottom=bottom, auto_named=name is None, options=opts)
        self._attach_file(node, file_node, ro)
        if bottom is not None:  # cor_open: bdrv_freeze_backing_chain(bs, bottom)
            node.frozen_keys = self.freeze_chain(node, bottom)
        return node

    def _open_snapshot_access(self, opts: dict, name: str | None, ro: bool) -> SnapshotAccessNode:
        """snapshot_access_open: its one child, ``file`` (opened before the node is named, as every ``file``)."""
        file_node = self._child(opts["file"], opts, ro)
        node = SnapshotAccessNode(name or self.auto_name(), auto_named=name is None, options=opts)
        self._attach_file(node, file_node, ro)
        return node

    def _attach_file(self, node: BlockNode, file_node: BlockNode, ro: bool) -> None:
        """A filter opened over its ``file`` child: the link if the permissions allow it, else the child goes
        again (unless something else holds it)."""
        node.read_only = ro
        try:
            perms.check_attach(self, node, "file", file_node)
        except QMPError:
            self._drop_unowned(file_node)
            raise
        self._attach(node, "file", file_node)

    def _open_cbw(self, opts: dict, name: str | None, ro: bool) -> tuple[CbwNode, int]:
        """cbw_open: the file child (bdrv_open_inherit opens a ``file`` before bdrv_open_common names the node),
        the target child (after), the bitmap (block_dirty_bitmap_lookup), then block-copy's state (its cluster
        size from the target, its copy bitmap on the source: the bitmap's bits, or all); the ``access`` bitmap
        starts as the copy bitmap. The guest of the source now writes through the filter (as after QEMU's
        ``qom-set`` of a device's drive onto it). Returns the node and where it goes in ``nodes``."""
        source = self._child(opts["file"], opts, ro)
        at, auto_named = len(self.nodes), name is None
        name = name or self.auto_name()
        opened = [source]
        try:
            target = self._child(opts["target"], opts, ro)
            opened.append(target)
            bitmap = None
            if "bitmap" in opts:
                bitmap = self.lookup_bitmap(opts["bitmap"]["node"], opts["bitmap"]["name"])[1]
                if bitmap.size != source.size:
                    raise generic(f"Cannot create block-copy-state: Failed to merge bitmap '{bitmap.name}' to "
                                  f"internal copy-bitmap: Bitmaps are of different sizes (destination size is "
                                  f"{source.size}, source size is {bitmap.size}) and can't be merged")
            if target.size < source.size:  # (QEMU 7.2 accepts it, then aborts at a copy past the target's end)
                raise generic("bitlab does not simulate a copy-before-write target smaller than its file "
                              f"({target.size} and {source.size} bytes): QEMU 7.2 aborts at the first copy "
                              "past the target's end")
            assert self.block_copy_factory is not None
            bcs = self.block_copy_factory(source, target, bitmap)
            node = CbwNode(name, cluster_size=bcs.cluster_size, before_write=bcs.copy_now, size=source.size,
                           access_bits=bcs.bitmap.bits, copy_bitmap=bcs.bitmap,
                           break_snapshot=opts.get("on-cbw-error") == "break-snapshot", auto_named=auto_named,
                           options=opts)
            node.read_only = ro
            perms.check_attach(self, node, "file", source)
            view = perms.PermView(self)
            view.attach(node, "file", source)
            view.attach(node, "target", target)
            view.check(target)
        except QMPError:
            for child in opened:
                self._drop_unowned(child)
            raise
        self._attach(node, "file", source)
        self._attach(node, "target", target)
        source.add_bitmap(bcs.bitmap)
        self._move_guests(source, node)
        return node, at

    def _check_qcow2_open(self, opts: dict, image: ImageFile, file_node: BlockNode) -> None:
        """qcow2_do_open after the header: the runtime options (bitlab.block.qcow2_opts), then an external
        data file (bitlab's images never have one: the child is opened, then refused), then what bitlab
        does not simulate."""
        error = qcow2_opts.open_error(opts, image)
        if error is None and "data-file" in opts:
            try:
                data_file = self._child(opts["data-file"], opts, bool(opts.get("read-only", False)))
            except QMPError:
                self._drop_unowned(file_node)
                raise
            self._drop_unowned(data_file)
            error = "'data-file' can only be set for images with an external data file"
        error = error or qcow2_opts.not_simulated(opts, image)
        if error is not None:
            self._drop_unowned(file_node)
            raise generic(error)

    def _open_backing(self, node: Qcow2Node, opts: dict) -> None:
        image = node.image
        backing = opts.get("backing", "auto")
        if backing is None:
            return
        if backing != "auto":
            if isinstance(backing, dict) and image.backing_file:
                _check_named_backing(backing)
            try:
                child = self._child(backing, opts, True)
            except QMPError as err:
                raise generic(f"Could not open backing file: {err.desc}") from None
            self._attach(node, "backing", child)
            return
        if not image.backing_file:
            return
        names = self._backing_names  # (the names the chain above was opened under, this node's last)
        own = names[-1] if names else _opened_name(node)
        if own in names[:-1]:  # (the same name again: QEMU opens it again and again)
            raise generic(f"bitlab does not simulate a backing chain that loops ('{own}' is a backing file "
                          "of itself): QEMU 7.2 opens it again and again and does not answer")
        if len(names) >= MAX_BACKING_DEPTH:
            raise generic(f"bitlab does not simulate a backing chain more than {MAX_BACKING_DEPTH} images deep (one "
                          "that loops through a directory has names that grow: QEMU 7.2 opens it until one is too "
                          "long)")
        # bdrv_open_backing_file: a relative name is relative to the image's directory
        filename = node_full_backing_filename(node, image.backing_file) or ""
        found = foreign.looked_up(image.backing_fmt)  # (the driver, before the file is looked for)
        if found is not None:
            raise QMPError(f"Could not open backing file: {found[1]}", printed=found[0])
        path = strip_file_protocol(filename)
        if path is None:
            raise generic(f"Could not open backing file: bitlab does not simulate the protocol of '{filename}'")
        if name_too_long(path):
            raise generic(f"Could not open backing file: Could not open '{path}': File name too long")
        try:
            key = self.store_key(path)
        except QMPError:
            key = None
        if key not in self.store:
            raise generic(f"Could not open backing file: Could not open '{path}': No such file or directory")
        fmt = image.backing_fmt or self.store[key].fmt
        if fmt not in ("raw", "qcow2"):
            try:
                self.open_foreign_by_name(path, fmt, read_only=True)
            except QMPError as err:
                raise QMPError(f"Could not open backing file: {err.desc}", printed=err.printed) from None
        pushed = [path] if names else [own, path]
        names += pushed
        try:
            child = self.open({"driver": fmt, "file": {"driver": "file", "filename": path}}, read_only=True)
        except QMPError as err:  # bdrv_open_backing_file: error_prepend (at every level of the chain)
            raise QMPError(f"Could not open backing file: {err.desc}", printed=err.printed) from None
        finally:
            del names[-len(pushed):]
        self._attach(node, "backing", child)
        # bdrv_open_backing_file: an implicit backing file is the one the image names (auto_backing_file)
        node.auto_backing_file = child.filename

    def open_foreign_by_name(self, path: str, fmt: str, *, read_only: bool) -> None:
        """Open the file ``path`` by its name with a driver ``fmt`` bitlab does not simulate, as QEMU opens a backing
        file or a drive-backup target: always an error, QEMU's (the driver's look-up and its parse of the name, the
        file missing, its locks, the driver reading it: bitlab.block.foreign) or bitlab's refusal."""
        found = foreign.looked_up(fmt)
        if found is not None:
            raise foreign.qmp_error(found)
        key = self.store_key(path)
        if key not in self.store:
            raise generic(f"Could not open '{path}': No such file or directory")
        if fmt in foreign.FORMATS:  # (a format over its file: the file's locks first)
            self.open({"driver": fmt, "file": {"driver": "file", "filename": path}}, read_only=read_only)
        found = foreign.opened(path, fmt, self.store[key], write=not read_only, no_io=False)
        if found is None:
            raise generic(f"bitlab does not simulate opening '{path}' by its name with the '{fmt}' driver")
        raise foreign.qmp_error(found)

    def _open_foreign(self, driver: str, opts: dict, name: str | None, ro: bool) -> None:
        """A format driver bitlab does not simulate, over a file it does: its file child opened (and, for most,
        attached: its permissions), then the driver's error reading it (bitlab.block.foreign); bitlab's refusal
        where QEMU would read bytes bitlab does not have."""
        file_node = self._child(opts["file"], opts, ro)
        try:
            image = file_node.image if isinstance(file_node, FileNode) else None
            if image is not None and foreign.attaches_first(driver, not ro):
                stand_in = BlockNode(name or "", options=opts)  # (a format node's permissions on its file)
                stand_in.driver, stand_in.read_only = "qcow2", ro
                perms.check_attach(self, stand_in, "file", file_node)
            found = None if image is None else foreign.opened(file_node.filename, driver, image, write=not ro,
                                                              no_io=False)
        finally:
            self._drop_unowned(file_node)
        if found is not None:
            raise foreign.qmp_error(found)

    def _refuse_foreign(self, driver: str, opts: dict, ro: bool) -> None:
        """The errors QEMU's driver bitlab does not simulate gives before it would open anything bitlab refuses:
        its file child's (a missing reference, file or node name), a host device's file that is none."""
        if driver in ("host_device", "host_cdrom"):
            path = opts["filename"]
            if self.store_key(path) not in self.store:
                raise generic(f"Could not open '{path}': No such file or directory")
            raise generic(f"'{driver}' driver requires '{path}' to be either a character or block device")
        if driver == "quorum" and not opts["children"]:
            raise generic("Number of provided children must be 1 or more")
        if "file" in opts:
            self._drop_unowned(self._child(opts["file"], opts, ro))

    def _child(self, ref: dict | str, parent_opts: dict, read_only: bool) -> BlockNode:
        if isinstance(ref, str):
            return self.lookup_bs(ref)
        inherited = dict(ref)
        if "cache" in parent_opts and "cache" not in inherited:  # bdrv_inherited_options: detect-zeroes is
            inherited["cache"] = parent_opts["cache"]  # never inherited, and discard defaults to unmap
        inherited.setdefault("discard", "unmap")
        return self.open(inherited, read_only=bool(parent_opts.get("read-only", read_only)))

    def _attach(self, parent: BlockNode, role: str, child: BlockNode) -> None:
        parent.children.append((role, child))
        child.parents += 1
        self.stamp((id(parent), role))

    # -- filters (a backup's copy-before-write) ---------------------------------------------
    def insert_filter(self, source: BlockNode, cbw: BlockNode, target: BlockNode, copy_bitmap: DirtyBitmap) -> None:
        """bdrv_cbw_append: the filter takes the source's place under all its parents (bdrv_replace_node):
        devices, exports, an earlier backup's filter, an overlay's or an earlier sync=none target's
        backing link; not a parent inside the filter's own subtree (should_update_child: that would
        make a loop), such as this job's sync=none target."""
        self.nodes[cbw.node_name] = cbw
        self.job_held.add(cbw.node_name)
        self.perm_version += 1
        self._attach(cbw, "file", source)
        self._attach(cbw, "target", target)
        source.add_bitmap(copy_bitmap)
        cbw.filtered_by = source.filtered_by
        source.filtered_by = cbw
        self._replace_node(source, cbw)

    def remove_filter(self, cbw: BlockNode, copy_bitmap: DirtyBitmap, owner: BlockNode) -> None:
        """bdrv_cbw_drop: what the filter filtered (the source, or a later backup's filter)
        is back in its place under every parent; the copy bitmap leaves the job's source ``owner``."""
        if copy_bitmap in owner.bitmaps:
            owner.bitmaps.remove(copy_bitmap)
        source = cbw.child("file")
        assert source is not None
        self._replace_node(cbw, source)
        source.filtered_by = cbw.filtered_by
        for _, child in cbw.children:
            child.parents -= 1
        cbw.children = []
        cbw.filtered_by = None
        self.job_held.discard(cbw.node_name)
        self.nodes.pop(cbw.node_name, None)
        self.perm_version += 1
        self.guests.pop(id(cbw), None)

    def insert_mirror_top(self, source: BlockNode, top: BlockNode, role: str = "backing") -> None:
        """mirror_start_job's bdrv_append (or stream_start's bdrv_insert_node, ``role`` 'file'): the filter gets
        the source as its child and takes its place under every parent (devices, exports, nodes)."""
        self.nodes[top.node_name] = top
        self.job_held.add(top.node_name)
        self._attach(top, role, source)
        self._replace_node(source, top)

    def remove_mirror_top(self, top: BlockNode, target: BlockNode | None) -> None:
        """mirror_exit_common: with ``target`` (the switch-over), what sat on the source sits on the target;
        then the filter's parents go down to what it filtered, and the filter goes. A source nobody holds any
        more (a device's implicit nodes) closes."""
        self.unfreeze(getattr(top, "frozen_keys", []))  # (a copy-on-read node's chain to its bottom)
        source = top.child("backing") or top.child("file")
        assert source is not None
        if target is not None:
            self._replace_child(top, source, target, self.link_order)
            self.stamp((id(top), top.children[-1][0]))
            below = target
        else:
            below = source
        self._replace_node(top, below)
        for _, child in top.children:
            child.parents -= 1
        top.children = []
        self.job_held.discard(top.node_name)
        self.nodes.pop(top.node_name, None)
        self.perm_version += 1
        self.guests.pop(id(top), None)
        if id(source) in self.guests:  # a guest that addresses the source by name writes to it again (HMP qemu-io
            self.guests[id(source)] = (source, source)  # on the node's name, a new NBD client of it)
        if target is not None:
            self._drop_unowned(source)

    def job_blk(self, owner: Any, node: BlockNode, blk: Any) -> None:
        """A job's link to ``node`` (or its BlockBackend on it): the node's newest parent."""
        key = ("jobblk", id(blk))
        self.job_blks.append((id(owner), node, blk, key))  # (the job's id: the graph holds no job)
        self.stamp(key)

    def job_blks_release(self, owner: Any, backends_only: bool = False) -> None:
        """The job's links go (block_job_remove_all_bdrv, blk_unref; ``backends_only``: its BlockBackends, not its
        links); a node only they held closes."""
        released = []
        for entry in [e for e in self.job_blks if e[0] == id(owner) and (e[2].role == "root" or not backends_only)]:
            self.job_blks.remove(entry)
            self.link_order.pop(entry[3], None)
            released.append(entry[1])
        self.perm_version += 1
        for node in dict.fromkeys(released):
            if self.nodes.get(node.node_name) is node:
                self._drop_unowned(node)

    def pass_filter(self, source: BlockNode, target: BlockNode, name: str, cluster_size: int) -> None:
        """A backup that fails after bdrv_cbw_append (the max-chunk check): its copy-before-write filter
        is appended and dropped again, and the links it moved come back detached and attached again (the
        newest children of their parents, the newest parents of the source)."""
        cbw = CbwNode(name, cluster_size=cluster_size, before_write=lambda offset, length: None, size=source.size,
                      auto_named=name.startswith("#"))
        copy_bitmap = DirtyBitmap(source.size, cluster_size, disabled=True)
        self.insert_filter(source, cbw, target, copy_bitmap)
        self.remove_filter(cbw, copy_bitmap, source)

    def _replace_node(self, old: BlockNode, new: BlockNode) -> None:
        """bdrv_replace_node: every parent of ``old`` outside ``new``'s subtree now points at ``new``."""
        self._move_backends(old, new, self._move_node_links(old, new))

    def _move_node_links(self, old: BlockNode, new: BlockNode) -> list[tuple]:
        """:meth:`_replace_node`'s node parents: the links of ``old``'s parents outside ``new``'s subtree
        move to ``new``; returns their keys (``link_order``'s)."""
        inside: set[int] | None = None  # new's subtree, walked once a parent of old other than new is found
        moved: list[tuple] = []
        for parent in self.nodes.values():
            for _, child in parent.children:
                if child is old:
                    break
            else:
                continue  # not a parent of old
            if parent is new:  # (new is in its own subtree)
                continue
            if inside is None:
                inside = subtree_ids(new, _children)
            if id(parent) not in inside:
                moved += [(id(parent), role) for role, child in parent.children if child is old]
                self._replace_child(parent, old, new, self.link_order)
        return moved

    def _move_backends(self, old: BlockNode, new: BlockNode, moved: list[tuple]) -> None:
        """:meth:`_replace_node`'s BlockBackends and guests: devices, exports and guests on ``old`` move to
        ``new``; then every moved link (``moved``: the node links already moved) is stamped."""
        for device, root in self.devices.items():
            if root is old:
                self.devices[device] = new
                moved.append(("device", device))
        for blk in self.blks:
            if blk.node is old:
                blk.node = new
                moved.append(("blk", id(blk)))
        self._move_guests(old, new)
        # each moved link goes to the head of new's parents, newest of old's first: their order reverses
        if len(moved) > 1:
            moved.sort(key=lambda key: -self.link_order.get(key, 0))
        for key in moved:
            self.stamp(key)

    def _move_guests(self, old: BlockNode, new: BlockNode) -> None:
        """The guests on ``old`` (its own, and those that came up onto it) are on ``new`` now."""
        for key, (node, at) in list(self.guests.items()):
            if at is old:
                self.guests[key] = (node, new)
        if self.guest_view(old) is old:  # (its guest had not moved, or where it went is closed)
            self.guests[id(old)] = (old, new)

    @staticmethod
    def _replace_child(parent: BlockNode, old: BlockNode, new: BlockNode, link_order: dict) -> None:
        """A link moved to ``new`` is detached from its parent and attached again: it becomes the parent's
        newest child (QEMU 7.2's bdrv_child_cb_detach / _attach). QEMU moves the links newest first, so
        among several moved links of one parent the oldest ends up newest."""
        moved = [role for role, child in parent.children if child is old]
        moved.sort(key=lambda role: -link_order.get((id(parent), role), 0))
        parent.children = [link for link in parent.children if link[1] is not old] + [(role, new) for role in moved]
        old.parents -= len(moved)
        new.parents += len(moved)

    def release_job_target(self, target: BlockNode) -> None:
        """A drive-backup (or drive-mirror) target opened for the job goes with it, unless something holds it
        now (a mirror's switch-over put it under the source's parents)."""
        self._drop_unowned(target)

    def set_backing(self, node: BlockNode, backing: BlockNode) -> None:
        """bdrv_set_backing_hd."""
        self._attach(node, "backing", backing)

    def freeze_chain(self, top: BlockNode, base: BlockNode | None) -> list[tuple[int, str]]:
        """bdrv_freeze_backing_chain(top, base): the filter and backing links from ``top`` down to ``base``; the keys
        to give :meth:`unfreeze` (the caller has checked that none is frozen already)."""
        keys = []
        node: BlockNode | None = top
        while node is not None and node is not base:
            role = FILTER_CHILD.get(node.driver) or "backing"
            child = node.child(role)
            if child is None:
                break
            keys.append((id(node), role))
            node = child
        self.frozen.update(keys)
        return keys

    def unfreeze(self, keys: list[tuple[int, str]]) -> None:
        self.frozen.difference_update(keys)

    def replace_backing(self, node: BlockNode, new: BlockNode | None) -> None:
        """bdrv_set_backing_hd: the node's backing link goes to ``new`` (or away); the old backing node, and the
        chain below it, close where nobody else holds them (``new`` is held throughout)."""
        if node.child("backing") is new:
            return
        if new is not None:
            new.parents += 1
        self.detach_backing(node)
        if new is not None:
            new.parents -= 1
            self.set_backing(node, new)
        self.perm_version += 1

    def filter_view(self, node: BlockNode) -> BlockNode:
        """The topmost backup filter above ``node`` (up the filters' 'file' links), or the node itself."""
        while node.filtered_by is not None:
            node = node.filtered_by
        return node

    def guest_view(self, node: BlockNode) -> BlockNode:
        """Where a guest's I/O to ``node`` enters. The guest is like a parent of the node (a BlockBackend,
        as the device's or an export's): it moves with every bdrv_replace_node — up to a backup's filter
        and back, up to an external snapshot's overlay — unless where it went is closed (an overlay nobody
        held goes at once: bitlab's guest holds nothing), then it is back on the node."""
        moved = self.guests.get(id(node))
        if moved is None or moved[0] is not node or self.nodes.get(moved[1].node_name) is not moved[1]:
            return node
        return moved[1]

    # -- external snapshots (block.c bdrv_append) ------------------------------------------------
    def append(self, new: BlockNode, old: BlockNode) -> None:
        """bdrv_append: ``new`` gets ``old`` as its backing child and takes its place under every other
        parent (devices, exports, nodes). Nothing changes if the links would make a cycle or conflict."""
        if id(new) in subtree_ids(old, lambda node: node.children):  # bdrv_recurse_has_child
            raise generic(f"Making '{old.node_name}' a backing child of '{new.node_name}' would create a cycle")
        view = perms.PermView(self)
        view.attach(new, "backing", old)
        view.replace(old, new)
        view.check(new)
        self.set_backing(new, old)
        self._replace_node(old, new)

    def detach_backing(self, node: BlockNode) -> None:
        """blockdev-reopen's ``backing: null``: the link goes; the old backing node closes unless held."""
        child = node.child("backing")
        if child is None:
            return
        node.children = [(role, c) for role, c in node.children if role != "backing"]
        child.parents -= 1
        self.link_order.pop((id(node), "backing"), None)
        self.perm_version += 1
        self._drop_unowned(child)

    def unappend(self, new: BlockNode, old: BlockNode) -> None:
        """external_snapshot_abort: the overlay drops its backing link, ``old`` is back under its parents."""
        new.children = [(role, child) for role, child in new.children if not (role == "backing" and child is old)]
        old.parents -= 1
        self.link_order.pop((id(new), "backing"), None)
        self._replace_node(new, old)

    def reopen_read_only(self, node: BlockNode) -> None:
        """bdrv_reopen_set_read_only(node, true): its queue (the node, then the children it opened itself) is
        flushed first (bdrv_reopen_multiple; BlockIOError if a flush fails, nothing reopened), then each becomes
        read-only; a qcow2 node stores its persistent bitmaps, which become read-only; the locks its file node
        holds follow from what it takes now."""
        for queued in self._reopen_queue(node):
            queued.flush()
        self._set_read_only(node)

    def _set_read_only(self, node: BlockNode) -> None:
        if node.read_only:
            return
        if isinstance(node, Qcow2Node):
            self.store_bitmaps_read_only(node)
        node.read_only = True  # (its file node's locks follow from what the read-only node takes)
        self.perm_version += 1
        for role, child in node.children:
            if role in ("file", "image") and child.node_name not in self.monitor_owned:
                self._set_read_only(child)

    def _reopen_queue(self, node: BlockNode) -> list[BlockNode]:
        """bdrv_reopen_queue_child's order: the node, then (depth first) the children it opened itself."""
        queue = [node]
        for role, child in node.children:
            if role in ("file", "image") and child.node_name not in self.monitor_owned:
                queue += self._reopen_queue(child)
        return queue

    def store_bitmaps_read_only(self, node: Qcow2Node) -> None:
        """qcow2_reopen_bitmaps_ro (a qcow2 node reopened read-only, or staying so): the caches written back,
        the persistent bitmaps stored, then read-only. A persistent bitmap not stored yet on a node that is
        read-only already cannot be: ``No write access`` (qcow2_store_persistent_dirty_bitmaps)."""
        if node.read_only:
            if any(bm.persistent and not bm.readonly for bm in node.bitmaps):
                raise generic("No write access")
        else:
            node.write_back()
            self._store_bitmaps(node)
        for bm in node.bitmaps:
            if bm.persistent:
                bm.readonly = True

    def reopen_bitmaps_rw(self, node: Qcow2Node) -> None:
        """qcow2_reopen_bitmaps_rw (a qcow2 node made read-write): every stored bitmap not in use is marked in
        use (the header and the directory rewritten in place) and its bitmap is writable again. A stored bitmap
        with no read-only bitmap of its name, or an inconsistent one, stops it: QEMU reports that on stderr
        only and changes nothing."""
        marked = []
        for stored in node.image.bitmaps:
            if stored.in_use:
                continue
            bm = next((b for b in node.bitmaps if b.name == stored.name), None)
            if bm is None or not bm.readonly or bm.inconsistent:
                return
            marked.append((stored, bm))
        if not marked:
            return
        for stored, _ in marked:
            stored.in_use = True
        node.mark_bitmaps_in_use()
        for _, bm in marked:
            bm.readonly = False

    # -- persistent bitmaps -------------------------------------------------------
    def _load_bitmaps(self, node: Qcow2Node, told: bool = False) -> None:
        """Persistent bitmaps come back on open (oldest first); one left in use is inconsistent. Opened
        read-write, qcow2 marks them in use: the header, the directory in place, the header again
        (:meth:`Qcow2Node.mark_bitmaps_in_use`; ``told``: a blkdebug file already had those writes)."""
        marked = False
        for stored in node.image.bitmaps:
            bm = DirtyBitmap(node.size, stored.granularity, name=stored.name, persistent=True,
                             disabled=not stored.enabled)
            if stored.in_use:
                bm.inconsistent, bm.disabled = True, True
            else:
                bm.bits = stored.bits.copy()
            bm.readonly = node.read_only
            node.add_bitmap(bm)
            if not node.read_only:
                marked = marked or not stored.in_use
                stored.in_use = True
        if marked and not told:
            node.mark_bitmaps_in_use()

    def _store_bitmaps(self, node: Qcow2Node) -> None:
        """On a clean close every persistent bitmap is written to the image: the bitmap directory
        keeps its order, new bitmaps are appended newest first (qcow2_store_persistent_dirty_bitmaps); with no
        bitmap to write (none, or only inconsistent ones), the image is left alone."""
        if node.read_only:
            return
        live = {bm.name: bm for bm in node.bitmaps if bm.persistent}
        if all(bm.inconsistent or bm.readonly for bm in live.values()):
            return  # nothing to write (need_write): the directory stays where it is, in-use flags stay set
        blk = node.file
        if isinstance(blk, BlkdebugNode) and blk.may_fail(qcow2_trace.WRITE_EVENTS):
            node.image.unknown = (f"bitlab does not know what QEMU 7.2 left in '{node.image.name}': node "
                                  f"'{node.node_name}' stored its persistent bitmaps through blkdebug "
                                  f"'{blk.node_name}', whose rules may fail those requests (not simulated)")
            return
        stored = []
        for old in node.image.bitmaps:
            bm = live.pop(old.name, None)
            if bm is not None:  # (a read-only one is as stored: QEMU skips it, its table stays)
                stored.append(old if bm.inconsistent or bm.readonly else self._stored(bm))
        stored += [self._stored(bm) for bm in node.bitmaps if bm.persistent and bm.name in live]
        node.image.bitmaps = stored
        node.discard_freed_bitmaps()

    @staticmethod
    def _stored(bm: DirtyBitmap) -> StoredBitmap:
        return StoredBitmap(bm.name or "", bm.granularity, bm.bits.copy(),
                            enabled=not bm.disabled or bm.successor is not None)

    # -- closing ------------------------------------------------------------------
    def release(self, node: BlockNode, *, clean: bool = True) -> None:
        """Close a node and the children only it held."""
        self.unfreeze(getattr(node, "frozen_keys", []))
        if clean and isinstance(node, Qcow2Node):
            node.close_flush()  # bdrv_close flushes first
            self._store_bitmaps(node)
        elif isinstance(node, Qcow2Node):  # (killed: the file keeps what the caches wrote back)
            node.image.crash()
        if isinstance(node, CbwNode) and node.copy_bitmap is not None:  # block_copy_state_free
            source = node.child("file")
            if source is not None and node.copy_bitmap in source.bitmaps:
                source.bitmaps.remove(node.copy_bitmap)
            for key, (guest, at) in list(self.guests.items()):  # its guests go back down to what it filtered
                if at is node and source is not None:
                    self.guests[key] = (guest, source)
        if isinstance(node, ThrottleNode):
            node.close()
        for _, child in node.children:
            child.parents -= 1
            self._drop_unowned(child, clean=clean)
        node.children = []
        self.nodes.pop(node.node_name, None)
        self.perm_version += 1
        self.monitor_owned.discard(node.node_name)
        self.guests.pop(id(node), None)

    def _drop_unowned(self, node: BlockNode, *, clean: bool = True) -> None:
        """Close a node nobody holds any more (neither a parent, the monitor, nor a device)."""
        if any(root is node for root in self.devices.values()) or any(blk.node is node for blk in self.blks):
            return
        if node.node_name in self.job_held or any(held is node for _, held, _, _ in self.job_blks):
            return  # (a job's link holds it: block_job_add_bdrv's reference)
        if node.parents == 0 and node.node_name not in self.monitor_owned:
            self.release(node, clean=clean)

    def delete(self, name: str) -> None:
        """blockdev-del: only nodes made by blockdev-add, and only when nothing uses them."""
        node = self.nodes.get(name)
        if node is None:
            raise generic(f"Failed to find node with node-name='{name}'")
        if any(blk.node is node for blk in self.blks) or any(
                n is node and blk.role == "root" for _, n, blk, _ in self.job_blks):
            raise generic(f"Node {name} is in use")
        if node.job_blocker:  # op blockers (BLOCK_OP_TYPE_DRIVE_DEL) come before the monitor's ownership
            raise generic(f"Node '{name}' is busy: {node.job_blocker}")
        for parent in self.nodes.values():
            for role, child in parent.children:
                if child is node and role == "backing":
                    raise generic(f"Node '{name}' is busy: node is used as backing hd of '{parent.node_name}'")
        if name not in self.monitor_owned:
            raise generic(f"Node {name} is not owned by the monitor")
        if node.parents or any(dev is node for dev in self.devices.values()):
            raise generic(f"Block device {name} is in use")
        self.release(node)

    def close_all(self, *, clean: bool = True) -> None:
        """Quit (clean) or die (not clean): every node goes, newest first."""
        for node in self.newest_first():
            if node.node_name in self.nodes and node.parents == 0:
                self.release(node, clean=clean)
        for node in self.newest_first():
            self.release(node, clean=clean)


INT_MAX = (1 << 31) - 1


def blkdebug_constraints(opts: dict) -> str | None:
    """blkdebug_open's checks of its limits, in its order: ``align`` a power of two, the others below INT_MAX and
    multiples of the alignment (at least the file's request alignment, 1 byte), the maxima of their optimum too."""
    align = opts.get("align", 0)
    if align and (align < 0 or align >= INT_MAX or align & (align - 1)):
        return f"Cannot meet constraints with align {align}"
    align = max(align, 1)
    for key, multiple_of in (("max-transfer", None), ("opt-write-zero", None), ("max-write-zero", "opt-write-zero"),
                             ("opt-discard", None), ("max-discard", "opt-discard")):
        value = opts.get(key, 0)
        unit = max(opts.get(multiple_of, 0), align) if multiple_of else align
        if value and (value < 0 or value >= INT_MAX or value % unit):
            return f"Cannot meet constraints with {key} {value}"
    return None


def _opened_name(node: Qcow2Node) -> str:
    """The name a format node's file was opened under (as given: QEMU joins backing file names to it)."""
    below = node.child("file")
    while below is not None and not isinstance(below, FileNode):
        below = below.child("image") or below.child("file")
    name = below.options.get("filename") if below is not None else None
    return name if isinstance(name, str) else node.image.name


def _check_named_backing(options: dict) -> None:
    """bdrv_open_backing_file: backing options that do not give ``file.filename`` are opened with the file name
    the image names as well, which reaches the first protocol node below: one given by reference, or a blkdebug
    node whose image is given by reference or with a file name of its own, cannot take it."""
    file = options.get("file")
    if isinstance(file, dict) and file.get("driver") == "blkdebug":
        file = file.get("image")
        if isinstance(file, dict) and "filename" in file:
            raise generic("Could not open backing file: Can't specify 'file' and 'filename' options at the same time")
    if isinstance(file, str):
        raise generic("Could not open backing file: Cannot reference an existing block device with additional "
                      "options or a new filename")

