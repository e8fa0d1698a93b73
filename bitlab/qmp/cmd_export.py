"""NBD exports over QMP: nbd-server-start/-stop, block-export-add/-del, query-block-exports.

QEMU 7.2's checks in its order and with its texts (blockdev-nbd.c ``nbd_server_start``,
block/export/export.c ``blk_exp_add`` / ``qmp_block_export_del``, nbd/server.c
``nbd_export_create``), recorded in tests/golden/nbd_export.json. bitlab keeps only what QMP
observes (:mod:`bitlab.block.export`); it opens no socket and speaks no NBD, so addresses are
checked against bitlab's own rule instead: a unix socket inside the work directory (nothing
exists outside it: QEMU's text for a missing directory), or 127.0.0.1 / localhost. Only
``type: nbd`` exports are simulated.
"""

from __future__ import annotations

import posixpath
from typing import Any

from ..block import perms
from ..block.export import LOCAL_HOSTS, BlockExport, NbdServer, port_number
from ..block.graph import id_wellformed
from ..block.info import filter_or_cow
from ..block.node import BlockNode
from ..errors import generic
from .cmd_bitmap import ALLOW_RO, check_bitmap
from .commands import TABLE
from .qapi import BOOL, STR, UINT32, Array, Enum, Union_, m, struct
from .qapi import SIZE as QSIZE
from .socket_types import UINT16, SocketAddress, SocketAddressLegacy
from .types import BlockDirtyBitmapOrStr

NBD_MAX_STRING_SIZE = 4096  # export names and descriptions (nbd.h)
UNIX_PATH_MAX = 108  # sizeof(sun_path); the path needs no terminating NUL

# -- QAPI types (qapi/block-export.json; the sockets: bitlab/qmp/socket_types.py) -------------

NbdServerStart = struct(
    "q_obj_nbd-server-start-arg",
    m("addr", SocketAddressLegacy), m("*tls-creds", STR), m("*tls-authz", STR), m("*max-connections", UINT32),
)

BlockExportType = Enum("BlockExportType", ("nbd", "vhost-user-blk", "fuse", "vduse-blk"))
BlockExportOptionsNbdBase = struct("BlockExportOptionsNbdBase", m("*name", STR), m("*description", STR))
BlockExportOptionsNbd = struct(
    "BlockExportOptionsNbd", m("*bitmaps", Array(BlockDirtyBitmapOrStr)), m("*allocation-depth", BOOL),
    base=BlockExportOptionsNbdBase,
)
BlockExportOptionsVhostUserBlk = struct(
    "BlockExportOptionsVhostUserBlk", m("addr", SocketAddress), m("*logical-block-size", QSIZE),
    m("*num-queues", UINT16),
)
FuseExportAllowOther = Enum("FuseExportAllowOther", ("off", "on", "auto"))
BlockExportOptionsFuse = struct(
    "BlockExportOptionsFuse", m("mountpoint", STR), m("*growable", BOOL), m("*allow-other", FuseExportAllowOther),
)
BlockExportOptionsVduseBlk = struct(
    "BlockExportOptionsVduseBlk", m("name", STR), m("*num-queues", UINT16), m("*queue-size", UINT16),
    m("*logical-block-size", QSIZE), m("*serial", STR),
)
BlockExportOptions = Union_(
    "BlockExportOptions",
    struct(
        "q_obj_BlockExportOptions-base",
        m("type", BlockExportType), m("id", STR), m("*fixed-iothread", BOOL), m("*iothread", STR),
        m("node-name", STR), m("*writable", BOOL), m("*writethrough", BOOL),
    ),
    "type",
    {"nbd": BlockExportOptionsNbd, "vhost-user-blk": BlockExportOptionsVhostUserBlk, "fuse": BlockExportOptionsFuse,
     "vduse-blk": BlockExportOptionsVduseBlk},
)
BlockExportRemoveMode = Enum("BlockExportRemoveMode", ("safe", "hard"))
BlockExportDel = struct("q_obj_block-export-del-arg", m("id", STR), m("*mode", BlockExportRemoveMode))
NbdServerAddOptions = struct(
    "NbdServerAddOptions", m("device", STR), m("*writable", BOOL), m("*bitmap", STR), base=BlockExportOptionsNbdBase,
)
NbdServerRemove = struct("q_obj_nbd-server-remove-arg", m("name", STR), m("*mode", BlockExportRemoveMode))
BlockExportInfo = struct(
    "BlockExportInfo", m("id", STR), m("type", BlockExportType), m("node-name", STR), m("shutting-down", BOOL),
)


# -- nbd-server-start / -stop -----------------------------------------------------------------

def _check_address(vm: Any, addr: dict) -> dict:
    """The flattened SocketAddress, after bitlab's rule for where it may listen."""
    kind, data = addr["type"], addr["data"]
    if kind == "fd":
        raise generic("only QEMU supports file descriptor passing")  # qemu-storage-daemon's monitor
    if kind == "unix":
        path = data["path"]
        if len(path.encode()) > UNIX_PATH_MAX:
            raise generic(f"UNIX socket path '{path}' is too long")
        full = posixpath.normpath(path if posixpath.isabs(path) else posixpath.join(vm.workdir, path))
        if not full.startswith(vm.workdir.rstrip("/") + "/"):  # nothing exists outside the work directory
            raise generic(f"Failed to bind socket to {path}: No such file or directory")
        return {"type": "unix", **data, "path": full}
    if kind == "inet" and data["host"] in LOCAL_HOSTS:
        port = data["port"]
        if port_number(port) is None:
            raise generic(f"address resolution failed for {data['host']}:{port}: Servname not supported "
                          "for ai_socktype")
        return {"type": "inet", **data}
    raise generic(f"bitlab's NBD server listens only on a unix socket in its work directory or on "
                  f"127.0.0.1 / localhost, not on {kind} {data}")


@TABLE.command("nbd-server-start", NbdServerStart)
def qmp_nbd_server_start(vm: Any, args: dict) -> None:
    """nbd_server_start: one server at a time; the listener first, then the TLS credentials."""
    exports = vm.exports
    if exports.server is not None:
        raise generic("NBD server already running")
    addr = _check_address(vm, args["addr"])
    if "tls-creds" in args:
        vm.objects.touch()  # (looked up in /objects)
        raise generic(f"No TLS credentials with id '{args['tls-creds']}'")  # bitlab has no objects
    exports.server = NbdServer(addr, None, args.get("tls-authz"), args.get("max-connections", 0))


@TABLE.command("nbd-server-stop")
def qmp_nbd_server_stop(vm: Any, args: dict) -> None:
    """Every NBD export goes (oldest first, each with BLOCK_EXPORT_DELETED), then the server."""
    if vm.exports.server is None:
        raise generic("NBD server not running")
    vm.exports.close_all("nbd")
    vm.exports.server = None


# -- block-export-add -------------------------------------------------------------------------

def _export_bitmaps(vm: Any, node: BlockNode, refs: list, readonly: bool) -> list:
    """nbd_export_create's bitmap loop: each one found, then checked, in the order given."""
    found = []
    for ref in refs:
        if isinstance(ref, str):
            holder: BlockNode | None = node
            bm = None
            while holder is not None:
                bm = holder.find_bitmap(ref)
                if bm is not None:
                    break
                holder = filter_or_cow(holder)
            if bm is None or holder is None:
                raise generic(f"Bitmap '{ref}' is not found")
            if readonly and not holder.read_only and not bm.disabled:
                raise generic(f"Enabled bitmap '{ref}' incompatible with readonly export")
        else:
            _, bm = vm.graph.lookup_bitmap(ref["node"], ref["name"])
        check_bitmap(bm, ALLOW_RO)
        found.append(bm)
    return found


@TABLE.command("block-export-add", BlockExportOptions, boxed=True)
def qmp_block_export_add(vm: Any, args: dict) -> None:
    add_export(vm, args)


def add_export(vm: Any, args: dict) -> None:
    """blk_exp_add, then nbd_export_create (checked BlockExportOptions)."""
    exports = vm.exports
    export_id = args["id"]
    if not id_wellformed(export_id):
        raise generic("Invalid block export id")
    if exports.find(export_id) is not None:
        raise generic(f"Block export id '{export_id}' is already in use")
    node = vm.graph.nodes.get(args["node-name"])  # bdrv_lookup_bs(NULL, node-name): node names only
    if node is None:
        raise generic(f"Cannot find device='' nor node-name='{args['node-name']}'")
    writable = args.get("writable", False)
    if writable and node.read_only:
        raise generic("Cannot export read-only node as writable")
    if "iothread" in args:
        raise generic(f'iothread "{args["iothread"]}" not found')  # bitlab has no iothreads
    # blk_insert_bs: the export's BlockBackend reads (and writes), sharing all; later (nbd_export_create)
    # it stops sharing resize
    inserted, unshared_resize = perms.check_export(vm.graph, node, writable)
    if inserted is not None:
        raise generic(inserted)
    if args["type"] != "nbd":  # where QEMU's driver would create the export
        raise generic(f"bitlab simulates only NBD exports, not '{args['type']}'")
    # nbd_export_create
    if exports.server is None:
        raise generic("NBD server not running")
    name = args.get("name", node.node_name)
    if len(name.encode()) > NBD_MAX_STRING_SIZE:
        raise generic(f"export name '{name}' too long")
    description = args.get("description")
    if description is not None and len(description.encode()) > NBD_MAX_STRING_SIZE:
        raise generic(f"description '{description}' too long")
    if exports.find_name(name) is not None:
        raise generic(f"NBD server already has export named '{name}'")
    if unshared_resize is not None:
        raise generic(unshared_resize)
    bitmaps = _export_bitmaps(vm, node, args.get("bitmaps", []), readonly=not writable)
    exp = BlockExport(export_id, node, name, description=description, writable=writable,
                      writethrough=args.get("writethrough", False),
                      allocation_depth=args.get("allocation-depth", False), bitmaps=bitmaps)
    exports.add(exp)
    vm.graph.new_backend(("blk", id(exp)))


@TABLE.command("block-export-del", BlockExportDel)
def qmp_block_export_del(vm: Any, args: dict) -> None:
    """Without NBD clients (bitlab has none) ``safe`` and ``hard`` both delete at once."""
    exp = vm.exports.find(args["id"])
    if exp is None:
        raise generic(f"Export '{args['id']}' is not found")
    vm.exports.delete(exp)


# -- the deprecated pair (blockdev-nbd.c): block-export-add / -del under other names ---------------

@TABLE.command("nbd-server-add", NbdServerAddOptions, boxed=True)
def qmp_nbd_server_add(vm: Any, args: dict) -> None:
    """A device or node; the export's id and name default to ``device``; a read-only node is
    exported read-only instead of refused."""
    node = vm.graph.lookup_bs(args["device"])
    name = args.get("name", args["device"])
    opts: dict = {"type": "nbd", "id": name, "node-name": node.node_name, "name": name}
    for key in ("description", "writable"):
        if key in args:
            opts[key] = args[key]
    if "bitmap" in args:
        opts["bitmaps"] = [args["bitmap"]]
    if node.read_only:
        opts["writable"] = False
    add_export(vm, opts)


@TABLE.command("nbd-server-remove", NbdServerRemove)
def qmp_nbd_server_remove(vm: Any, args: dict) -> None:
    """block-export-del by another name (every bitlab export is an NBD export)."""
    qmp_block_export_del(vm, {"id": args["name"], **({"mode": args["mode"]} if "mode" in args else {})})


@TABLE.command("query-block-exports", returns=Array(BlockExportInfo))
def qmp_query_block_exports(vm: Any, args: dict) -> list:
    return [exp.info() for exp in vm.exports.exports]

