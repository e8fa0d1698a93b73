"""Fuzzing ``bitlab serve``: thousands of malformed messages, then a correct answer.

The server runs in a thread of its own (its own event loop); Hypothesis talks to it
over a unix socket with plain blocking sockets. Each example opens a connection,
maybe negotiates (maybe with OOB), sends a few inputs cut at random points — random
bytes, QMP-ish fragments, random JSON, mutated valid commands — and either vanishes
or asks a marked ``query-version``, whose exact reply must come back after every
other reply, each of them a well-formed QMP reply. At the end: no Python error in
the server, no connection left, no task left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitlab import __version__
from bitlab.qmp.server import QMPServer

END = b'\xff{"execute": "query-version", "id": "end"}'
VERSION = f'{{"qemu": {{"micro": 0, "minor": 2, "major": 7}}, "package": "bitlab {__version__}"}}'
END_REPLIES = (f'{{"return": {VERSION}, "id": "end"}}\r\n'.encode(),
               b'{"id": "end", "error": {"class": "CommandNotFound", "desc": '
               b'"Expecting capabilities negotiation with \'qmp_capabilities\'"}}\r\n')
FRAGMENTS = [b'"execute"', b'"arguments"', b'"id"', b'"exec-oob"', b'"query-version"', b'"qmp_capabilities"',
             b'"query-block"', b'"query-jobs"', b'"enable"', b'"oob"', b"\\u", b"\\ud83d", b"\\ude00", b"\\u0000",
             b"true", b"false", b"null", b"1e400", b"-0", b"18446744073709551616", b"\xc0\x80", b"\xf0\x9f\x98\x80",
             b"\xef\xbf\xbe", b'{"execute":"query-version"}', b"{", b"}", b"[", b"]", b",", b":", b'"', b"'", b"\\",
             b" ", b"\n", b"\xff", b"\x00", b"%", b"x", b"0", b"1.5", b"-", b"e"]
VALID = [b'{"execute": "query-version", "id": 1}', b'{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}',
         b'{"execute": "query-block", "arguments": {}, "id": {"a": [1, 2.5, "x"]}}',
         b'{"execute": "block-dirty-bitmap-add", "arguments": {"node": "drive0", "name": "b", "granularity": 65536}}',
         b'{"execute": "human-monitor-command", "arguments": {"command-line": "qemu-io drive0 \\"write 0 64k\\""}}',
         b'{"exec-oob": "query-jobs", "id": "o"}']
INF = re.compile(r"(?:(?<=: )|(?<=, )|(?<=\[))-?inf\b")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)
messages = st.fixed_dictionaries({}, optional={
    "execute": st.sampled_from(["query-version", "query-block", "query-jobs", "nope", "qmp_capabilities"]) | st.text(
        max_size=6) | json_values,
    "arguments": st.just({}) | st.dictionaries(st.text(max_size=8), json_values, max_size=3) | json_values,
    "id": json_values,
    "exec-oob": st.sampled_from(["query-version", "nope"]) | json_values,
    "other": json_values,
})


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = draw(st.integers(0, 255))
        if op == "insert":
            data.insert(pos, byte)
        elif data:
            pos = min(pos, len(data) - 1)
            if op == "delete":
                del data[pos]
            else:
                data[pos] = byte
    return bytes(data)


inputs = st.one_of(
    st.binary(max_size=120),
    st.lists(st.sampled_from(FRAGMENTS), max_size=24).map(b"".join),
    messages.map(lambda m: json.dumps(m, allow_nan=False).encode()),
    messages.map(lambda m: json.dumps(m, ensure_ascii=False, allow_nan=False).encode("utf-8", "surrogatepass")),
    json_values.map(lambda v: json.dumps(v, allow_nan=False).encode()),
    mutated(),
)


class ServerThread:
    """A QMPServer with a drive, on a loop in a thread of its own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self.call(self._start())

    async def _start(self) -> QMPServer:
        server = QMPServer()
        server.vm.add_drive("drive0", "64M")
        await server.start_unix(self.path)
        return server

    def call(self, coro):  # noqa: ANN001, ANN201
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def restart_if_quit(self) -> None:
        """A random message may well be a valid ``quit``: that is an answer, not a failure."""
        if self.server.closing:
            self.call(self.server.serve())
            self.server = self.call(self._start())

    def stop(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.serve()
        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[ServerThread]:
    tmp = Path(tempfile.mkdtemp(prefix="blf"))
    srv = ServerThread(tmp / "qmp.sock")
    yield srv
    srv.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def _lines(conn: socket.socket) -> Iterator[bytes]:
    buf = b""
    while True:
        while b"\r\n" not in buf:
            chunk = conn.recv(1 << 20)
            if not chunk:
                if buf:
                    yield buf
                return
            buf += chunk
        line, buf = buf.split(b"\r\n", 1)
        yield line + b"\r\n"


def _well_formed(line: bytes) -> None:
    """One reply or event, as QEMU shapes them (``inf`` is QEMU's, not JSON's)."""
    obj = json.loads(INF.sub("0", line.decode("ascii")))
    keys = set(obj)
    assert keys in ({"return"}, {"return", "id"}, {"error"}, {"error", "id"}, {"event", "data", "timestamp"},
                    {"event", "timestamp"}), line
    if "error" in obj:
        assert set(obj["error"]) == {"class", "desc"}


@settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(chunks=st.lists(inputs, min_size=1, max_size=6), cuts=st.lists(st.integers(0, 400), max_size=3),
       mode=st.sampled_from(["raw", "negotiated", "oob"]), vanish=st.booleans())
def test_fuzz_server(fuzz_server: ServerThread, chunks: list[bytes], cuts: list[int], mode: str,
                     vanish: bool) -> None:
    fuzz_server.restart_if_quit()
    conn = socket.socket(socket.AF_UNIX)
    conn.settimeout(30)
    conn.connect(str(fuzz_server.path))
    try:
        lines = _lines(conn)
        assert next(lines).startswith(b'{"QMP": ')
        if mode != "raw":
            arg = b', "arguments": {"enable": ["oob"]}' if mode == "oob" else b""
            conn.sendall(b'{"execute": "qmp_capabilities"' + arg + b"}")
            assert next(lines) == b'{"return": {}}\r\n'
        data = b"".join(chunks)
        try:
            sent = 0
            for cut in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
                conn.sendall(data[sent:cut])
                sent = cut
            if vanish:
                return
            conn.sendall(END)
            for line in lines:
                if line in END_REPLIES:
                    break
                _well_formed(line)
            else:
                raise ConnectionResetError
        except (ConnectionResetError, BrokenPipeError):
            # the connection ended early: only ``quit`` may do that
            assert fuzz_server.server.closing, "the server closed a connection without quit"
    finally:
        with contextlib.suppress(OSError):
            conn.close()


def test_fuzz_leaves_a_healthy_server(fuzz_server: ServerThread) -> None:
    """After the fuzzing (this runs second): correct answers, nothing leaked, no Python error."""
    fuzz_server.restart_if_quit()
    conn = socket.socket(socket.AF_UNIX)
    conn.settimeout(30)
    conn.connect(str(fuzz_server.path))
    lines = _lines(conn)
    next(lines)
    conn.sendall(b'{"execute": "qmp_capabilities"}{"execute": "query-version", "id": 7}')
    assert next(lines) == b'{"return": {}}\r\n'
    assert next(lines) == f'{{"return": {VERSION}, "id": 7}}\r\n'.encode()
    conn.close()

    async def state() -> tuple[int, int, int]:
        await asyncio.wait_for(fuzz_server.server.no_clients(), 20)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return len(fuzz_server.server.clients), len(tasks), fuzz_server.server.internal_errors

    assert fuzz_server.call(state()) == (0, 0, 0)
