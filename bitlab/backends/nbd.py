"""A small NBD client for guest I/O on real QEMU, and qemu-io's report texts.

``qemu-io`` over an NBD URL flushes when it closes the image, which fires blkdebug's
``flush_to_disk`` rules and changes what a scenario observes. :class:`NBDClient` speaks just
enough of the protocol (fixed newstyle handshake, ``NBD_OPT_GO``, simple replies) to send
reads, writes, write-zeroes, trims and flushes one at a time, and never flushes unless asked.
:func:`qemu_io` runs one parsed qemu-io command with it and prints what qemu-io prints,
with real timings ("64 KiB, 1 ops; 00.00 sec (12.5 MiB/sec and 200.0000 ops/sec)").
"""

from __future__ import annotations

import errno
import math
import os
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from ..qmp.qemu_io import Request, cvtstr, dump_buffer

NBD_MAGIC = 0x4E42444D41474943  # "NBDMAGIC"
OPTS_MAGIC = 0x49484156454F5054  # "IHAVEOPT"
REP_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE = 1 << 0  # handshake flags (server) and client flags
FLAG_NO_ZEROES = 1 << 1
OPT_GO = 7
REP_ACK = 1
REP_INFO = 3
INFO_EXPORT = 0
INFO_BLOCK_SIZE = 3

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_WRITE_ZEROES = 0, 1, 2, 3, 4, 6
CMD_FLAG_FUA, CMD_FLAG_NO_HOLE = 1 << 0, 1 << 1

UNIX_PATH_MAX = 108  # sizeof(sun_path), the terminating NUL included
MAX_PAYLOAD = 32 << 20  # QEMU's NBD_MAX_BUFFER_SIZE: the most a READ or WRITE may carry
MAX_LENGTH = 1 << 30  # chunk size of TRIM and WRITE_ZEROES (the length field is 32-bit)

# NBD's error numbers, as QEMU's NBD client turns them into host errno values (others: EINVAL).
NBD_ERRNO = {1: errno.EPERM, 5: errno.EIO, 12: errno.ENOMEM, 22: errno.EINVAL, 28: errno.ENOSPC,
             75: errno.EOVERFLOW, 95: errno.ENOTSUP, 108: errno.ESHUTDOWN}


class NBDError(OSError):
    """The NBD server refused the connection or broke the protocol."""


Address = str | tuple[str, int]  # a unix socket's path, or (host, port) of a TCP socket


def _connect(address: Address, timeout: float) -> socket.socket:
    if isinstance(address, tuple):
        return socket.create_connection(address, timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with reachable(address) as path:
            sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


@contextmanager
def reachable(path: str) -> Iterator[str]:
    """A name to connect to the unix socket ``path`` by: itself, or for a name too long for a socket
    address (QEMU bound it relative to its own directory) a short symlink to it, while in use."""
    if len(os.fsencode(path)) < UNIX_PATH_MAX or path.startswith("\0"):
        yield path
        return
    with tempfile.TemporaryDirectory() as folder:
        os.symlink(path, os.path.join(folder, "s"))
        yield os.path.join(folder, "s")


class NBDClient:
    """One NBD connection to a named export on a unix socket (a path) or TCP (host, port).

    The request methods return a host errno (0 on success); they never send a flush of
    their own. ``size`` is the export's size in bytes.
    """

    def __init__(self, address: Address, export: str, timeout: float = 30.0) -> None:
        self._sock = _connect(address, timeout)
        self._sock.settimeout(timeout)
        self._handle = 0
        self.size = 0
        self.flags = 0
        self.max_payload = MAX_PAYLOAD
        try:
            self._handshake(export)
        except BaseException:
            self._sock.close()
            raise

    # -- wire -----------------------------------------------------------------------------
    def _recv(self, count: int) -> bytes:
        data = bytearray()
        while len(data) < count:
            chunk = self._sock.recv(min(count - len(data), 1 << 20))
            if not chunk:
                raise NBDError("the NBD server closed the connection")
            data += chunk
        return bytes(data)

    def _handshake(self, export: str) -> None:
        magic, opts, server_flags = struct.unpack(">QQH", self._recv(18))
        if magic != NBD_MAGIC or opts != OPTS_MAGIC or not server_flags & FLAG_FIXED_NEWSTYLE:
            raise NBDError("not a fixed-newstyle NBD server")
        self._sock.sendall(struct.pack(">I", FLAG_FIXED_NEWSTYLE | (server_flags & FLAG_NO_ZEROES)))
        name = export.encode()
        payload = struct.pack(">I", len(name)) + name + struct.pack(">HH", 1, INFO_BLOCK_SIZE)
        self._sock.sendall(struct.pack(">QII", OPTS_MAGIC, OPT_GO, len(payload)) + payload)
        while True:
            magic, _option, reply, length = struct.unpack(">QIII", self._recv(20))
            data = self._recv(length)
            if magic != REP_MAGIC:
                raise NBDError("bad NBD option reply")
            if reply == REP_ACK:
                return
            if reply & 0x80000000:
                message = data.decode(errors="replace") or f"error {reply:#x}"
                raise NBDError(f"NBD export '{export}' refused: {message}")
            if reply == REP_INFO and len(data) >= 2:
                kind = struct.unpack(">H", data[:2])[0]
                if kind == INFO_EXPORT:
                    self.size, self.flags = struct.unpack(">QH", data[2:12])
                elif kind == INFO_BLOCK_SIZE:
                    self.max_payload = min(MAX_PAYLOAD, struct.unpack(">III", data[2:14])[2])

    def _request(self, command: int, offset: int = 0, length: int = 0, data: bytes = b"", flags: int = 0) -> int:
        """Send one request and read its simple reply's header; the host errno."""
        self._handle += 1
        self._sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, flags, command, self._handle, offset, length) + data)
        magic, error, handle = struct.unpack(">IIQ", self._recv(16))
        if magic != SIMPLE_REPLY_MAGIC or handle != self._handle:
            raise NBDError("bad NBD reply")
        return NBD_ERRNO.get(error, errno.EINVAL) if error else 0

    # -- requests ---------------------------------------------------------------------------
    def write(self, offset: int, length: int, pattern: int, *, fua: bool = False) -> int:
        """Write ``length`` bytes of ``pattern`` (in chunks the server accepts), each with FUA if asked."""
        for start, size in _chunks(offset, length, self.max_payload):
            err = self._request(CMD_WRITE, start, size, bytes([pattern & 0xFF]) * size, flags=CMD_FLAG_FUA * fua)
            if err:
                return err
        return 0

    def write_zeroes(self, offset: int, length: int, *, may_unmap: bool = False, fua: bool = False) -> int:
        """Write zeroes; like qemu-io's ``write -z`` without ``-u``, no holes unless ``may_unmap``."""
        flags = (0 if may_unmap else CMD_FLAG_NO_HOLE) | CMD_FLAG_FUA * fua
        for start, size in _chunks(offset, length, MAX_LENGTH):
            err = self._request(CMD_WRITE_ZEROES, start, size, flags=flags)
            if err:
                return err
        return 0

    def trim(self, offset: int, length: int) -> int:
        """Discard a range (NBD_CMD_TRIM)."""
        for start, size in _chunks(offset, length, MAX_LENGTH):
            err = self._request(CMD_TRIM, start, size)
            if err:
                return err
        return 0

    def flush(self) -> int:
        """NBD_CMD_FLUSH: the only way this client flushes."""
        return self._request(CMD_FLUSH)

    def read(self, offset: int, length: int, pattern: int | None = None,
             verify: tuple[int, int] | None = None, keep: bytearray | None = None) -> tuple[int, bool]:
        """Read a range; returns (errno, whether every byte equals ``pattern``), looking only at the
        bytes ``[verify[0], verify[0] + verify[1])`` if given (qemu-io ``read -s``/``-l``); the bytes
        read are added to ``keep`` if given (``read -v``)."""
        matches = True
        lo, hi = (offset, offset + length) if verify is None else (verify[0], verify[0] + verify[1])
        for start, size in _chunks(offset, length, self.max_payload):
            err = self._request(CMD_READ, start, size)
            if err:
                return err, matches
            data = self._recv(size)
            if keep is not None:
                keep += data
            a, b = max(lo, start) - start, min(hi, start + size) - start
            if pattern is not None and matches and b > a and data[a:b].count(pattern & 0xFF) != b - a:
                matches = False
        return 0, matches

    def close(self) -> None:
        """NBD_CMD_DISC (no flush), then close the socket."""
        try:
            self._handle += 1
            self._sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, self._handle, 0, 0))
        except OSError:
            pass
        finally:
            self._sock.close()

    def __enter__(self) -> NBDClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _chunks(offset: int, length: int, most: int) -> list[tuple[int, int]]:
    """(offset, length) pieces of at most ``most`` bytes; none for an empty range."""
    return [(start, min(most, offset + length - start)) for start in range(offset, offset + length, most)]


# -- qemu-io's texts -------------------------------------------------------------------------
def timestr(seconds: float) -> str:
    """qemu-io's timestr: "00.01 sec" below a second, else "H:MM:SS.ss"."""
    whole = int(seconds)
    if not whole:
        return f"{seconds:05.2f} sec"
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60 + seconds - whole:05.2f}"


def report(verb: str, offset: int, length: int, seconds: float) -> str:
    """qemu-io's two report lines for one request that took ``seconds``."""
    rate = length / seconds if seconds > 0 else math.inf
    ops = 1 / seconds if seconds > 0 else math.inf
    return (f"{verb} {length}/{length} bytes at offset {offset}\n"
            f"{cvtstr(length)}, 1 ops; {timestr(seconds)} ({cvtstr(rate)}/sec and {ops:.4f} ops/sec)\n")


def qemu_io(address: Address, export: str, req: Request, timeout: float = 30.0) -> str:
    """Run one parsed qemu-io command (:func:`bitlab.qmp.qemu_io.parse_qemu_io`) over NBD; its output.

    ``write`` / ``writev`` (a pattern, or zeroes that may unmap with ``-u``), ``read`` / ``readv`` (the
    pattern verified over ``-s``/``-l``, the buffer dumped with ``-v``), ``discard``, ``flush`` and
    ``length``; ``-q`` without the report lines; none of them flushes except ``flush``. A range past
    the end fails with EIO before anything is sent, as qemu-io's own bounds check does. ``alloc``,
    ``map``, ``info`` and ``truncate`` need the block layer itself: ValueError.
    """
    verb, offset, length = req.verb, req.offset, req.length
    if verb not in ("read", "readv", "write", "writev", "discard", "flush", "length"):
        raise ValueError(f"qemu-io command {verb!r} is not supported over NBD")
    with NBDClient(address, export, timeout) as nbd:
        if verb == "flush":
            nbd.flush()
            return ""  # (qemu-io 7.2's flush_f prints nothing when the flush fails)
        if verb == "length":
            return f"{cvtstr(nbd.size)}\n"
        if offset < 0 or offset + length > nbd.size:
            return f"{verb} failed: {os.strerror(errno.EIO)}\n"
        start = time.perf_counter()
        matches = True
        check_at = offset + req.pattern_offset
        kept = bytearray() if req.verbose and not req.quiet else None
        if verb == "write" and req.zero:
            err = nbd.write_zeroes(offset, length, may_unmap=req.unmap, fua=req.fua)
        elif verb in ("write", "writev"):
            err = nbd.write(offset, length, 0xCD if req.pattern is None else req.pattern, fua=req.fua)
        elif verb == "discard":
            err = nbd.trim(offset, length)
        else:
            err, matches = nbd.read(offset, length, req.pattern, verify=(check_at, req.pattern_count), keep=kept)
        seconds = time.perf_counter() - start
    if err:
        return f"{verb} failed: {os.strerror(err)}\n"
    out = "" if matches else f"Pattern verification failed at offset {check_at}, {req.pattern_count} bytes\n"
    if req.quiet:
        return out
    if kept is not None:
        out += dump_buffer(bytes(kept), offset)
    return out + report({"write": "wrote", "writev": "wrote", "readv": "read"}.get(verb, verb), offset, length,
                        seconds)
