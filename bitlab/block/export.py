"""Block exports and the NBD server, as QEMU 7.2's QMP sees them (block/export/export.c,
blockdev-nbd.c, nbd/server.c).

bitlab keeps the state QMP can observe — which exports exist, the node each one's
BlockBackend sits on, the bitmaps it holds busy — and serves no NBD protocol: guest data
still goes through ``vm.write`` (qemu-io). An export's BlockBackend is an anonymous parent of
its node: it follows the node under a backup's copy-before-write filter and back, as QEMU's
``bdrv_replace_node`` moves it (:class:`bitlab.block.graph.BlockGraph` keeps them in ``blks``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..bitmap import DirtyBitmap
from .node import BlockNode


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

    def close_all(self, export_type: str | None = None) -> None:
        """blk_exp_close_all_type: every export (of the type), oldest first."""
        for exp in reversed(list(self.exports)):
            if export_type is None or exp.type == export_type:
                self.delete(exp)
