"""QAPI's socket address types (QEMU 7.2's qapi/sockets.json): NBD servers and exports, and the network block
drivers' options, take them."""

from __future__ import annotations

from .qapi import BOOL, STR, Builtin, Enum, Union_, m, struct

UINT16 = Builtin("uint16")

InetSocketAddressBase = struct("InetSocketAddressBase", m("host", STR), m("port", STR))
InetSocketAddress = struct(
    "InetSocketAddress",
    m("*numeric", BOOL), m("*to", UINT16), m("*ipv4", BOOL), m("*ipv6", BOOL), m("*keep-alive", BOOL),
    m("*mptcp", BOOL), base=InetSocketAddressBase,
)
UnixSocketAddress = struct("UnixSocketAddress", m("path", STR), m("*abstract", BOOL), m("*tight", BOOL))
VsockSocketAddress = struct("VsockSocketAddress", m("cid", STR), m("port", STR))
String = struct("String", m("str", STR))
SocketAddressType = Enum("SocketAddressType", ("inet", "unix", "vsock", "fd"))
_SOCKET_BRANCHES = {"inet": InetSocketAddress, "unix": UnixSocketAddress, "vsock": VsockSocketAddress, "fd": String}
SocketAddressLegacy = Union_(
    "SocketAddressLegacy",
    struct("q_obj_SocketAddressLegacy-base", m("type", SocketAddressType)),
    "type",
    {kind: struct(f"{data.name}Wrapper", m("data", data)) for kind, data in _SOCKET_BRANCHES.items()},
)
SocketAddress = Union_(
    "SocketAddress", struct("q_obj_SocketAddress-base", m("type", SocketAddressType)), "type", _SOCKET_BRANCHES,
)
