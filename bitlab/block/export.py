"""Block exports and the NBD server, as QEMU 7.2's QMP sees them (block/export/export.c,
blockdev-nbd.c, nbd/server.c).

bitlab keeps the state QMP can observe — which exports exist, the node each one's
BlockBackend sits on, the bitmaps it holds busy — and serves no NBD protocol on a socket: guest data
still goes through ``vm.write`` (qemu-io). qemu-img's NBD client reaches the server through
:meth:`BlockExports.connect` (what one connection sees: :class:`NbdConnection`). An export's
BlockBackend is an anonymous parent of its node: it follows the node under a backup's copy-before-write
filter and back, as QEMU's ``bdrv_replace_node`` moves it (:class:`bitlab.block.graph.BlockGraph` keeps
them in ``blks``).
"""

from __future__ import annotations

import ipaddress
import posixpath
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..bitmap import DirtyBitmap
from . import batch_writes
from .info import FILTER_CHILD, filter_or_cow, skip_filters
from .node import STATUS_DATA, STATUS_DATA_ZERO, STATUS_NONE, STATUS_ZERO, BlockNode

NBD_DEFAULT_PORT = "10809"
NBD_MAX_REQUEST = 32 << 20  # NBD_MAX_BUFFER_SIZE: the server's max block, the client's max transfer and zero write
LOCAL_HOSTS = ("127.0.0.1", "localhost")
DIRTY_BITMAP_CONTEXT = "qemu:dirty-bitmap:"


class NbdConnectError(Exception):
    """An NBD client could not connect or negotiate: the reason, as QEMU's client words it."""


@dataclass(frozen=True)
class NbdConnection:
    """What one NBD client sees of an export: its size, its content and its block status (the meta context
    it negotiated: ``base:allocation``, or the bitmap ``x-dirty-bitmap`` named)."""

    export: BlockExport
    bitmap: DirtyBitmap | None = None
    depth: bool = False  # the qemu:allocation-depth context

    @property
    def size(self) -> int:
        return self.export.node.size

    def check_simulated(self, write: bool = False) -> None:
        """What bitlab does not simulate below the export: a blkdebug node with rules (it would see the server's
        requests), a copy-on-read node (it would copy what they read); for a client that writes (``write``: the
        export must be writable, or QEMU's client fails to open it), a job's filter at the top or a throttle node."""
        node = self.export.node
        if write:
            if not self.export.writable:
                raise NbdConnectError("Could not open image: Permission denied")
            if node.driver in FILTER_CHILD:
                raise NbdConnectError(f"bitlab does not simulate an NBD client writing through the {node.driver} "
                                      f"node '{node.node_name}' (a job's filter)")
        todo = [node]
        while todo:
            here = todo.pop()
            if here.driver == "copy-on-read" or (here.driver == "blkdebug" and getattr(here, "rules", None)):
                raise NbdConnectError(f"bitlab does not simulate an NBD client's requests through the {here.driver} "
                                      f"node '{here.node_name}'")
            if write and here.driver == "throttle":
                raise NbdConnectError(f"bitlab does not simulate an NBD client writing through the throttle node "
                                      f"'{here.node_name}'")
            todo.extend(child for _, child in here.children)

    def write(self, offsets: np.ndarray, lengths: np.ndarray, zero: np.ndarray,
              runs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        """The client's write requests in order (``offsets``, ``lengths``: byte arrays) — data (NBD_CMD_WRITE, its
        buffer the ``runs`` (starts, ends, values) over it; it holds data: no zeroes to detect) or, where ``zero``,
        NBD_CMD_WRITE_ZEROES without NO_HOLE (may unmap) — each split at the client's 32 MiB limit, through the
        export's BlockBackend: its node sees each request (its write threshold the one that crosses it), in
        order where the order shows (:mod:`.batch_writes`); then its flush as the client disconnects."""
        node = self.export.node
        per = np.maximum(-(-lengths // NBD_MAX_REQUEST), 1)
        if (per > 1).any():
            first = np.repeat(offsets, per)
            k = np.arange(first.size, dtype=np.int64) - np.repeat(np.cumsum(per) - per, per)
            ends = np.repeat(offsets + lengths, per)
            offsets = first + k * NBD_MAX_REQUEST
            lengths = np.minimum(offsets + NBD_MAX_REQUEST, ends) - offsets
            zero = np.repeat(zero, per)
        batch_writes.write_plan(node, offsets, lengths, zero, runs)
        node.flush()

    def status(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Runs (starts, ends, STATUS_* codes) as QEMU's NBD client answers block status (nbd_client_co_block_status:
        a hole is not data, a zero flag zeroes). ``base:allocation``: the export's node's bdrv_block_status_above
        (blockstatus_to_extents). A bitmap's context sends dirty as NBD_STATE_DIRTY, the bit the client reads as
        NBD_STATE_HOLE: dirty is neither data nor zeroes, clean is data (qemu-img map's x-dirty-bitmap hack)."""
        size = self.size
        if self.depth:
            return self._depth_status()
        if self.bitmap is None:
            return skip_filters(self.export.node).status_codes(0, size)
        starts, lengths = self.bitmap.dirty_ranges()  # (maximal runs, in order)
        keep = starts < size
        starts, ends = starts[keep], np.minimum(starts + lengths, size)[keep]
        bounds = np.empty(2 * starts.size + 2, dtype=np.int64)  # clean, dirty, clean, ..., clean
        bounds[0], bounds[-1] = 0, size
        bounds[1:-1:2], bounds[2:-1:2] = starts, ends
        codes = np.tile(np.array([STATUS_DATA, STATUS_NONE]), starts.size + 1)[:-1]
        real = bounds[1:] > bounds[:-1]  # (no empty clean run before, between or after)
        return bounds[:-1][real], bounds[1:][real], codes[real]

    def _depth_status(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``qemu:allocation-depth`` (blockalloc_to_extents): the depth of the layer each range is allocated in
        (bdrv_is_allocated_above down the filters and backing files: 1 the export's node, 0 nowhere; a layer
        shorter than the range allocates past its end), which the client reads as flags: bit 0 a hole, bit 1
        zeroes."""
        size = self.size
        bounds, depth = np.array([0, size]), np.zeros(1, dtype=np.int64)
        node: BlockNode | None = self.export.node
        level = 0
        while node is not None and (depth == 0).any():
            level += 1
            s, e, allocated = node.is_allocated(0, min(size, node.size)) if node.size else (
                np.zeros(0, dtype=np.int64),) * 3
            s, e = s[np.asarray(allocated, dtype=bool)], e[np.asarray(allocated, dtype=bool)]
            if node.size < size:  # (past a shorter layer's end: allocated there)
                s, e = np.append(s, node.size), np.append(e, size)
            new = np.unique(np.concatenate((bounds, s, e)))
            owner = np.searchsorted(bounds, new[:-1], "right") - 1
            d = depth[owner]
            j = np.searchsorted(s, new[:-1], "right") - 1
            hit = (j >= 0) & (new[:-1] < e[np.maximum(j, 0)]) if s.size else np.zeros(d.size, dtype=bool)
            bounds, depth = new, np.where((d == 0) & hit, level, d)
            node = filter_or_cow(node)
        data, zero = (depth & 1) == 0, (depth & 2) != 0
        codes = np.select([data & zero, data, zero], [STATUS_DATA_ZERO, STATUS_DATA, STATUS_ZERO], STATUS_NONE)
        return bounds[:-1], bounds[1:], codes

    def content(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What the client (qemu-img convert, compare) reads from the whole export: runs (starts, ends, values),
        zeroes as 0. It reads extent by extent as the server's block status answers (zeroes it does not read), so
        through a snapshot-access node no read ends after a stretch of copied clusters it started in (QEMU 7.2's
        wide-read trap, see :meth:`bitlab.block.cbw.CbwNode.snapshot_read`, does not bite); elsewhere one read
        of everything reads the same."""
        node = self.export.node
        if skip_filters(node).driver != "snapshot-access":
            s, e, v = node.read_extents(0, self.size)
            return s, e, np.where(v < 0, 0, v)
        starts, ends, zero = node.copy_status(0, self.size)
        parts = [(starts[zero], ends[zero], np.zeros(int(zero.sum()), dtype=np.int64))]
        parts += [node.read_extents(int(a), int(b - a)) for a, b in zip(starts[~zero], ends[~zero])]
        s, e, v = (np.concatenate([part[i] for part in parts]).astype(np.int64) for i in range(3))
        order = np.argsort(s, kind="stable")
        return s[order], e[order], np.where(v[order] < 0, 0, v[order])


@dataclass(eq=False)
class BlockExport:
    """One export: its id, the node under its BlockBackend, and what ``block-export-add`` set."""

    id: str
    node: BlockNode
    name: str
    type: str = "nbd"
    description: str | None = None
    writable: bool = False
    writethrough: bool = False
    allocation_depth: bool = False
    bitmaps: list[DirtyBitmap] = field(default_factory=list)

    def info(self) -> dict:
        """BlockExportInfo (query-block-exports), members in QAPI order."""
        return {"id": self.id, "type": self.type, "node-name": self.node.node_name, "shutting-down": False}


@dataclass(frozen=True)
class NbdServer:
    """The running NBD server: its (flattened) address and options."""

    addr: dict
    tls_creds: str | None = None
    tls_authz: str | None = None
    max_connections: int = 0


class BlockExports:
    """A machine's NBD server and its block exports.

    ``exports`` is QEMU's ``block_exports`` list: the newest first (``QLIST_INSERT_HEAD``), which is
    the order ``query-block-exports`` shows. Closing several at once (``nbd-server-stop``, ``quit``)
    deletes them oldest first, each with its ``BLOCK_EXPORT_DELETED``.
    """

    def __init__(self, blks: list, emit: Callable[..., object], release: Callable[[BlockNode], None],
                 drain: Callable[[BlockNode], None] = lambda node: None) -> None:
        self.blks = blks  # the graph's anonymous BlockBackends, exports among them
        self.emit = emit
        self.release = release  # closes a node nothing holds any more (the export may have been the last)
        self.drain = drain  # a drained section of a node: its jobs pause and resume
        self.server: NbdServer | None = None
        self.exports: list[BlockExport] = []

    def find(self, export_id: str) -> BlockExport | None:
        """blk_exp_find."""
        return next((exp for exp in self.exports if exp.id == export_id), None)

    def find_name(self, name: str) -> BlockExport | None:
        """nbd_export_find: an NBD export by its export name."""
        return next((exp for exp in self.exports if exp.type == "nbd" and exp.name == name), None)

    def add(self, exp: BlockExport) -> None:
        """The export is created: its bitmaps become busy and its BlockBackend sits on its node."""
        for bm in exp.bitmaps:
            bm.busy = True
        self.exports.insert(0, exp)
        self.blks.append(exp)

    def delete(self, exp: BlockExport) -> None:
        """blk_exp_delete_bh: the export goes (its node drained twice on the way: the jobs using it pause and
        resume twice, measured on the system emulator), its bitmaps are released, BLOCK_EXPORT_DELETED."""
        self.drain(exp.node)
        self.drain(exp.node)
        for bm in exp.bitmaps:
            bm.busy = False
        self.exports.remove(exp)
        self.blks.remove(exp)
        if exp.node.driver != "copy-before-write":  # a backup's filter lives as long as its job
            self.release(exp.node)
        self.emit("BLOCK_EXPORT_DELETED", {"id": exp.id})

    def connect(self, kind: str, where: str, name: str, context: str | None, workdir: str,
                write: bool = False) -> NbdConnection:
        """An NBD client (qemu-img) connects to ``where`` (a unix socket's path, relative to ``workdir``, or
        ``host:port``), asks for the export ``name`` and the meta context ``context`` (None: base:allocation).
        NbdConnectError with the client's reason where it would fail."""
        server = self.server
        if kind == "unix":
            full = posixpath.normpath(where if posixpath.isabs(where) else posixpath.join(workdir, where))
            if not where:  # (an empty path: measured)
                raise NbdConnectError("Failed to connect to '': Connection refused")
            if server is None or server.addr["type"] != "unix" or server.addr["path"] != full:
                raise NbdConnectError(f"Failed to connect to '{where}': No such file or directory")
        else:
            host, _, port = where.rpartition(":")
            if port_number(port) is None:  # (getaddrinfo)
                raise NbdConnectError(f"address resolution failed for {where}: Servname not supported for ai_socktype")
            if not _is_address(host) and host != "localhost":
                raise NbdConnectError(f"address resolution failed for {where}: Name or service not known")
            if host not in LOCAL_HOSTS and not (host.startswith("127.") or host == "::1"):
                raise NbdConnectError(f"bitlab's NBD client reaches only this machine's NBD server (127.0.0.1 or "
                                      f"localhost), not {where}")
            if server is None or server.addr["type"] != "inet" or host not in LOCAL_HOSTS or \
                    port_number(server.addr["port"]) != port_number(port):
                raise NbdConnectError(f"Failed to connect to '{where}': Connection refused")
        exp = self.find_name(name)
        if exp is None:
            raise NbdConnectError(f"Requested export not available\nserver reported: export '{name}' not present")
        bitmap = None
        if context is not None and context != "base:allocation":
            wanted = context.removeprefix(DIRTY_BITMAP_CONTEXT) if context.startswith(DIRTY_BITMAP_CONTEXT) else None
            bitmap = next((bm for bm in exp.bitmaps if bm.name == wanted), None)
            if bitmap is None:  # (the server did not agree to the context: nbd_open fails)
                if context == "qemu:allocation-depth" and exp.allocation_depth:
                    conn = NbdConnection(exp, depth=True)
                    conn.check_simulated()
                    return conn
                raise NbdConnectError("Could not open image: Invalid argument")
        conn = NbdConnection(exp, bitmap)
        conn.check_simulated(write)
        return conn

    def close_all(self, export_type: str | None = None) -> None:
        """blk_exp_close_all_type: every export (of the type), oldest first."""
        for exp in reversed(list(self.exports)):
            if export_type is None or exp.type == export_type:
                self.delete(exp)


def port_number(port: str) -> int | None:
    """A port as getaddrinfo reads it: a number, or a TCP service's name; None if neither."""
    if port.isdigit():
        return int(port)
    try:
        return socket.getservbyname(port, "tcp")
    except OSError:
        return None


def _is_address(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address (resolved without a name service)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
