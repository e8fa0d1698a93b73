"""qemu-img as an NBD client (block/nbd.c): the names and options that open an export of the machine's NBD
server, and what ``info``, ``map``, ``convert`` and ``compare`` see of it — the pull-mode backup tool's side.

A connection is made through the image store's ``nbd`` hook (set by the machine: its
:meth:`bitlab.block.export.BlockExports.connect`). ``x-dirty-bitmap`` asks for a meta context other than
``base:allocation``; qemu-img map then shows a bitmap's dirty ranges as ``"data": false`` (the client reads
NBD_STATE_DIRTY as a hole).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import numpy as np

from ..block.export import NBD_DEFAULT_PORT, NbdConnectError, NbdConnection
from ..block.extents import ExtentMap
from ..block.node import STATUS_DATA, STATUS_DATA_ZERO, STATUS_NONE, STATUS_ZERO
from ..block.store import ImageFile, ImageStore
from ..units import format_size
from ._common import MAP_HEADER, Layer, QemuImgError, map_hex
from ._common import NBD_SCHEMES as SCHEMES
from .image_opts import parse as parse_opts

EN_OPTSTR = ":exportname="
CLIENT_KEYS = ("server.type", "server.path", "server.host", "server.port", "path", "host", "port", "export",
               "x-dirty-bitmap")


@dataclass(frozen=True)
class NbdName:
    """Where an NBD client connects: a unix socket ``path`` or ``host``/``port``, the ``export`` (None: the
    default, ''), the meta context ``x-dirty-bitmap`` asks for; ``given``: the name or options as typed."""

    given: str
    kind: str
    path: str = ""
    host: str = ""
    port: str = ""
    export: str | None = None
    context: str | None = None

    @property
    def filename(self) -> str:
        """nbd_refresh_filename: the name the opened node goes by (qemu-img map's File column)."""
        tail = f"/{self.export}" if self.export is not None else ""
        if self.kind == "unix":
            return f"nbd+unix://{tail}?socket={self.path}"
        return f"nbd://{self.host}:{self.port}{tail}"

    def fail(self, reason: str) -> QemuImgError:
        return QemuImgError(f"qemu-img: Could not open '{self.given}': {reason}\n")


def is_nbd(name: str) -> bool:
    """Whether QEMU opens ``name`` with its NBD protocol driver (``nbd:``, ``nbd+tcp:``, ``nbd+unix:``)."""
    return name.split(":", 1)[0] in SCHEMES and ":" in name


def from_filename(name: str) -> NbdName:
    """nbd_parse_filename: a URL (``nbd+unix:///export?socket=path``, ``nbd://host[:port]/export``) or the
    legacy ``nbd:unix:path[:exportname=e]`` / ``nbd:host:port[:exportname=e]``."""
    if "://" in name:
        return _from_uri(name)
    missing = QemuImgError(f"qemu-img: Could not open '{name}': NBD server address missing\n")
    spec, export = name, None
    if EN_OPTSTR in spec:
        spec, export = spec.split(EN_OPTSTR, 1)
        if not export:  # (nbd_parse_filename gives up there: no address at all)
            raise missing
    if not spec.startswith("nbd:"):
        raise QemuImgError(f"qemu-img: Could not open '{name}': File name string for NBD must start with 'nbd:'\n")
    spec = spec[len("nbd:"):]
    if not spec:
        raise missing
    if spec.startswith("unix:"):
        return NbdName(name, "unix", path=spec[len("unix:"):], export=export)
    return _inet_parse(name, spec, export)


_URI_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/?#[]%")
_HEX = frozenset("0123456789abcdefABCDEF")


def _valid_uri(text: str) -> bool:
    """What QEMU's RFC 3986 parser (util/uri.c) accepts: its characters, and every ``%`` escaping two hex digits."""
    if not set(text) <= _URI_CHARS:
        return False
    return all(len(part) >= 2 and part[0] in _HEX and part[1] in _HEX for part in text.split("%")[1:])


def _query_params(query: str) -> list[tuple[str, str | None]]:
    """util/uri.c query_params_parse: sections end at '&', or else at ';'; an empty one or ``=value`` is
    skipped, ``name`` alone has no value."""
    params: list[tuple[str, str | None]] = []
    pos = 0
    while pos < len(query):
        end = query.find("&", pos)
        if end < 0:
            end = query.find(";", pos)
            end = len(query) if end < 0 else end
        section = query[pos:end]
        name, eq, value = section.partition("=")
        if section and not (eq and not name):
            params.append((unquote(name), unquote(value) if eq else None))
        pos = end + 1
    return params


def _from_uri(name: str) -> NbdName:
    """nbd_parse_uri (over util/uri.c's parser)."""
    bad = QemuImgError(f"qemu-img: Could not open '{name}': No valid URL specified\n")
    if not _valid_uri(name):
        raise bad
    try:
        uri = urlsplit(name)
        port = uri.port
    except ValueError:
        raise bad from None
    kind = SCHEMES.get(uri.scheme)
    if kind is None:
        raise bad
    export = unquote(uri.path.removeprefix("/")) or None
    query = _query_params(uri.query)
    if len(query) > 1 or (kind == "unix") != bool(query):
        raise bad
    if kind == "unix":
        if uri.netloc or query[0][0] != "socket":
            raise bad
        path = query[0][1]
        if path is None:
            raise QemuImgError(f"qemu-img: bitlab refuses '{name}': QEMU 7.2's qemu-img crashes on a socket "
                               "parameter without a value (segmentation fault, measured)\n")
        return NbdName(name, "unix", path=path, export=export)
    if not uri.hostname:
        raise bad
    return NbdName(name, "inet", host=uri.hostname, port=str(port or NBD_DEFAULT_PORT), export=export)


def _inet_parse(name: str, spec: str, export: str | None) -> NbdName:
    """util/qemu-sockets.c inet_parse: ``host:port`` (``:port``, ``[ipv6]:port``; a host of at most 64 characters,
    the port its first 32 up to a comma); of the options after it, those inet_parse reads are not simulated."""
    def fail(what: str) -> QemuImgError:
        return QemuImgError(f"qemu-img: Could not open '{name}': error parsing {what} '{spec}'\n")

    if spec.startswith(":"):
        host, rest, what = "", spec[1:], "port in address"
    elif spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        what = "IPv6 address"
        if not sep or not host or len(host) > 64 or not rest.startswith(":"):
            raise fail(what)
        rest = rest[1:]
    else:
        host, sep, rest = spec.partition(":")
        what = "address"
        if not sep or not host or len(host) > 64:
            raise fail(what)
    port = rest.partition(",")[0][:32]
    if not port:
        raise fail(what)
    options = rest[len(port):]
    if any(flag in options for flag in (",to=", ",ipv4", ",ipv6", ",keep-alive", ",mptcp")):
        raise QemuImgError(f"qemu-img: bitlab does not simulate the address options in '{name}'\n")
    return NbdName(name, "inet", host=host, port=port, export=export)


def from_image_opts(optstr: str) -> NbdName | None:
    """``--image-opts`` naming an NBD node (``driver=nbd,...``, or ``driver=raw,file.driver=nbd,file.…``);
    None for any other driver."""
    opts = parse_opts(optstr)
    prefix = ""
    if opts.get("driver") == "raw" and opts.get("file.driver") == "nbd":
        prefix = "file."
        opts = {k.removeprefix(prefix): v for k, v in opts.items() if k != "driver"}
    if opts.get("driver") != "nbd":
        return None
    others = [key for key in opts if key not in ("driver", *CLIENT_KEYS)]
    if others:
        raise QemuImgError(f"qemu-img: bitlab does not simulate the --image-opts option '{prefix}{others[0]}'\n")

    def fail(reason: str) -> QemuImgError:
        return QemuImgError(f"qemu-img: Could not open '{optstr}': {reason}\n")

    legacy = [key for key in ("path", "host", "port") if key in opts]
    if legacy and any(key.startswith("server.") for key in opts):
        raise fail("Cannot use 'server' and path/host/port at the same time")
    if "path" in opts and "host" in opts:
        raise fail("path and host may not be used at the same time")
    if "path" in opts and "port" in opts:
        raise fail("port may not be used without host")
    export, context = opts.get("export"), opts.get("x-dirty-bitmap")
    if "path" in opts:
        return NbdName(optstr, "unix", path=opts["path"], export=export, context=context)
    if "host" in opts:
        return NbdName(optstr, "inet", host=opts["host"], port=opts.get("port", NBD_DEFAULT_PORT), export=export,
                       context=context)
    kind = opts.get("server.type")
    if kind is None:
        raise fail("NBD server address missing")
    if kind == "unix" and "server.path" in opts:
        return NbdName(optstr, "unix", path=opts["server.path"], export=export, context=context)
    if kind == "inet" and "server.host" in opts and "server.port" in opts:
        return NbdName(optstr, "inet", host=opts["server.host"], port=opts["server.port"], export=export,
                       context=context)
    raise QemuImgError(f"qemu-img: bitlab does not simulate the NBD server address in '{optstr}'\n")


def name_of(image: str, image_opts: bool) -> NbdName | None:
    """The NBD name a subcommand's image argument is, if it is one."""
    if image_opts:
        return from_image_opts(image)
    return from_filename(image) if is_nbd(image) else None


def connect(store: ImageStore, name: NbdName, fmt: str | None, write: bool = False) -> NbdConnection:
    """Open ``name`` as qemu-img does (format ``fmt``, None: probed, which finds raw: an export shows a disk's
    content, not an image file), through the machine's NBD server."""
    if fmt not in (None, "raw"):
        if fmt == "qcow2":
            raise name.fail("Image is not in qcow2 format")
        raise QemuImgError(f"qemu-img: bitlab does not simulate the image format '{fmt}'\n")
    if store.nbd is None:
        raise name.fail(f"Failed to connect to '{name.path or f'{name.host}:{name.port}'}': "
                        "No such file or directory")
    where = name.path if name.kind == "unix" else f"{name.host}:{name.port}"
    try:
        return store.nbd(name.kind, where, name.export or "", name.context, write)
    except NbdConnectError as err:
        raise name.fail(str(err)) from None


def info(conn: NbdConnection, name: NbdName, output: str) -> str:
    """qemu-img info of an export: raw, its size, no disk size (the NBD driver answers neither
    get_allocated_file_size nor get_info: no dirty flag)."""
    size = conn.size
    if output == "json":
        return (f'{{\n    "virtual-size": {size},\n    "filename": "{name.filename}",\n'
                f'    "format": "raw"\n}}\n')
    return (f"image: {name.filename}\nfile format: raw\nvirtual size: {format_size(size)} ({size} bytes)\n"
            "disk size: unavailable\n")


def map_runs(conn: NbdConnection, start: int = 0, length: int | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """qemu-img map's entries for an export, as runs (starts, ends, STATUS_* codes): get_block_status on the NBD
    node (depth 0; data and zero as the client reports them, present where either), merged, cut to the range."""
    s, e, codes = conn.status()
    end = conn.size if length is None else min(conn.size, start + length)
    keep = (e > start) & (s < end)
    s, e, codes = np.maximum(s[keep], start), np.minimum(e[keep], end), codes[keep]
    if not s.size:
        return s, e, codes
    heads = np.flatnonzero(np.concatenate(([True], codes[1:] != codes[:-1])))  # (runs are contiguous)
    return s[heads], np.append(s[heads[1:]], e[-1]), codes[heads]


_JSON_FLAGS = {STATUS_ZERO: ('true', 'true', 'false'), STATUS_DATA: ('true', 'false', 'true'),
               STATUS_DATA_ZERO: ('true', 'true', 'true'), STATUS_NONE: ('false', 'false', 'false')}


def map_text(conn: NbdConnection, name: NbdName, output: str, start: int = 0, length: int | None = None) -> str:
    """qemu-img map of an export, json or human (dump_map_entry: the offset is the guest offset wherever the entry
    is present; the human table lists data that is not zeroes, named by the canonical URL)."""
    s, e, codes = map_runs(conn, start, length)
    if not s.size:  # (nothing to map: img_map still dumps an empty first entry)
        s, e, codes = np.array([start]), np.array([start]), np.array([STATUS_NONE])
    if output == "json":
        lines = []
        for lo, hi, code in zip(s.tolist(), e.tolist(), codes.tolist()):
            present, zero, data = _JSON_FLAGS[code]
            tail = f', "offset": {lo}}}' if code != STATUS_NONE else "}"
            lines.append(f'{{ "start": {lo}, "length": {hi - lo}, "depth": 0, "present": {present}, '
                         f'"zero": {zero}, "data": {data}{tail}')
        return "[" + ",\n".join(lines) + "]\n"
    rows = [f"{map_hex(lo):<16}{map_hex(hi - lo):<16}{map_hex(lo):<16}{name.filename}\n"
            for lo, hi in zip(s[codes == STATUS_DATA].tolist(), e[codes == STATUS_DATA].tolist())]
    return MAP_HEADER + "".join(rows)


def layer(conn: NbdConnection, name: NbdName, content: bool = True) -> Layer:
    """The export as a one-layer chain for the commands that read content (convert, compare): a raw image
    of what the client reads, outside every store (``content`` False: its size only, for measure)."""
    data = ExtentMap(conn.size)
    if content:
        s, e, v = conn.content()
        keep = v != 0
        if keep.any():
            data.write_batch(s[keep], (e - s)[keep], v[keep])
    return Layer(name.filename, ImageFile(name.filename, "raw", conn.size, data))


def open_chain(store: ImageStore, image: str, fmt: str | None) -> list[Layer] | None:
    """``image`` opened as a one-layer chain if it names an NBD export (see :func:`layer`), else None."""
    name = name_of(image, False)
    return None if name is None else [layer(connect(store, name, fmt), name)]
