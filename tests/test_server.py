"""``bitlab serve``: QMP on the wire, checked with raw sockets, qemu.qmp, qmp-shell and real QEMU.

The exact bytes expected below are what qemu-storage-daemon 7.2 answered to the same
input (its version numbers replaced by bitlab's); ``test_same_bytes_as_qemu`` checks
that again whenever real QEMU is installed. Nothing here sleeps for a fixed time:
every wait is for a reply, an event or a process, with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import selectors
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from qemu.qmp import EventListener, ExecuteError, QMPClient

from bitlab import __version__
from bitlab.backends.qemu import qmp_chardev
from bitlab.qmp import qjson
from bitlab.qmp.server import QMPServer, realtime_machine
from bitlab.rt import RealtimeScheduler, WallClock
from bitlab.scenarios import FAIL_ON_READ, SEED_WRITES, run_seed

from .trace_replay import job_sequences, without_optional

VERSION = f'{{"qemu": {{"micro": 0, "minor": 2, "major": 7}}, "package": "bitlab {__version__}"}}'
GREETING = f'{{"QMP": {{"version": {VERSION}, "capabilities": ["oob"]}}}}\r\n'.encode()
NEGOTIATE = b'{"execute": "qmp_capabilities"}'
QSD = shutil.which("qemu-storage-daemon")
QMP_SHELL = Path(sys.executable).parent / "qmp-shell"
QEMU_VERSION = re.compile(rb'\{"qemu": \{"micro": \d+, "minor": 2, "major": 7\}, "package": "[^"]*"\}')


def run(coro, timeout: float = 60):  # noqa: ANN001, ANN201
    return asyncio.run(asyncio.wait_for(coro, timeout))


def err(desc: str, cls: str = "GenericError", id_: str | None = None) -> bytes:
    body = f'{{"error": {{"class": "{cls}", "desc": {qjson.quote(desc)}}}}}'
    if id_ is not None:
        body = f'{{"id": {id_}, "error": {{"class": "{cls}", "desc": {qjson.quote(desc)}}}}}'
    return body.encode() + b"\r\n"


def ok(value: str, id_: str | None = None) -> bytes:
    return (f'{{"return": {value}, "id": {id_}}}' if id_ is not None else f'{{"return": {value}}}').encode() + b"\r\n"


QV = b'{"execute": "query-version", "id": '
NEGOTIATION = "Expecting capabilities negotiation with 'qmp_capabilities'"
VERSION_REPLY = ok(VERSION)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for unix sockets (their paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="blq"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def serving(sock_dir: Path, **kwargs) -> AsyncIterator[QMPServer]:  # noqa: ANN003
    server = QMPServer(**kwargs)
    await server.start_unix(sock_dir / "qmp.sock")
    try:
        yield server
    finally:
        server.close()
        await server.serve()


class Raw:
    """A bare QMP connection: bytes in, lines out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.greeting = b""

    @classmethod
    async def open(cls, path: str | Path, negotiate: bool = False, oob: bool = False) -> Raw:
        raw = cls(*await asyncio.open_unix_connection(str(path), limit=1 << 26))
        raw.greeting = await raw.line()
        if negotiate:
            arg = b', "arguments": {"enable": ["oob"]}' if oob else b""
            assert await raw.ask(b'{"execute": "qmp_capabilities"' + arg + b"}") == [ok("{}")]
        return raw

    async def line(self) -> bytes:
        return await self.reader.readuntil(b"\r\n")

    async def ask(self, data: bytes) -> list[bytes]:
        """Send ``data``, then everything it caused: a 0xFF byte resets QEMU's lexer (a stray
        byte error) and a marked query-version shows where the answers end."""
        self.writer.write(data + b'\xff{"execute": "query-version", "id": "end"}')
        lines = []
        while True:
            line = await self.line()
            if line.endswith(b', "id": "end"}\r\n') or line.startswith(b'{"id": "end"'):
                break
            lines.append(line)
        assert lines and lines[-1] == err("JSON parse error, stray '\ufffd'")
        return lines[:-1]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


# --------------------------------------------------------------------------- the protocol's texts

# (negotiated, oob, input, reply lines): all as qemu-storage-daemon 7.2 answered.
CASES = [
    # capability negotiation
    (False, False, b'{"execute": "query-version", "id": 5}', [err(NEGOTIATION, "CommandNotFound", "5")]),
    (False, False, b'{"execute": "nope"}', [err(NEGOTIATION, "CommandNotFound")]),
    (False, False, b'{"exec-oob": "query-version", "id": 4}',
     [err("QMP input member 'exec-oob' is unexpected", id_="4")]),
    (False, False, b'{"execute": "qmp_capabilities", "arguments": {"enable": ["bogus"]}}',
     [err("Parameter 'null' does not accept value 'bogus'")]),
    (False, False, b'{"execute": "qmp_capabilities", "arguments": {"enable": "oob"}}',
     [err("Invalid parameter type for 'enable', expected: array")]),
    (False, False, b'{"execute": "qmp_capabilities", "arguments": {"x": 1}}', [err("Parameter 'x' is unexpected")]),
    (False, False, b'{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}, "id": 1}', [ok("{}", "1")]),
    (True, False, b'{"execute": "qmp_capabilities", "id": 2}',
     [err("Capabilities negotiation is already complete, command ignored", "CommandNotFound", "2")]),
    (True, False, b'{"exec-oob": "query-version", "id": 4}',
     [err("QMP input member 'exec-oob' is unexpected", id_="4")]),
    (True, True, b'{"exec-oob": "query-version", "id": 4}',
     [err("The command query-version does not support OOB", id_="4")]),
    (True, True, b'{"execute": "a", "exec-oob": "b"}', [err("QMP input member 'execute' clashes with 'exec-oob'")]),
    (True, False, b'{"execute": "quit", "arguments": {"a": 1}}', [err("Parameter 'a' is unexpected")]),
    # the request object
    (True, False, b"[]", [err("QMP input must be a JSON object")]),
    (True, False, b'"str"', [err("QMP input must be a JSON object")]),
    (True, False, b'{"foo": 1}', [err("QMP input member 'foo' is unexpected")]),
    (True, False, b'{"id": 1}', [err("QMP input lacks member 'execute'", id_="1")]),
    (True, False, b'{"execute": 1}', [err("QMP input member 'execute' must be a string")]),
    (True, False, b'{"foo": 2, "execute": 1}', [err("QMP input member 'execute' must be a string")]),
    (True, False, b'{"execute": "qmp_capabilities", "arguments": null}',
     [err("QMP input member 'arguments' must be an object")]),
    (True, False, b'{"execute": "query-version", "arguments": {"a": 1}}', [err("Parameter 'a' is unexpected")]),
    (True, False, b'{"execute": "nope", "id": "x"}',
     [err("The command nope has not been found", "CommandNotFound", '"x"')]),
    (True, False, b'{"execute": "query-version\\u0000"}',
     [err("The command query-version\0 has not been found", "CommandNotFound")]),
    (True, False, b"{'execute': 'query-version'}", [VERSION_REPLY]),
    (True, False, b'{"execute":"query-version"}{"execute":"query-version","id":2}', [VERSION_REPLY, ok(VERSION, "2")]),
    # JSON errors
    (True, False, b"}", [err("JSON parse error, expecting value")]),
    (True, False, b"{]", [err("JSON parse error, expecting value")]),
    (True, False, b'{"execute": "query-version",}', [err("JSON parse error, expecting value")]),
    (True, False, b"foo\n", [err("JSON parse error, invalid keyword 'foo'")]),
    (True, False, b"123abc\n",
     [err("QMP input must be a JSON object"), err("JSON parse error, invalid keyword 'abc'")]),
    (True, False, b'{"a": 1, "a": 2}', [err("JSON parse error, duplicate key")]),
    (True, False, b'{"execute": "query-version" "id": 1}', [err("JSON parse error, expected separator in dict")]),
    (True, False, b"[1 2]", [err("JSON parse error, expected separator in list")]),
    (True, False, b"{1: 2}", [err("JSON parse error, key is not a string in object")]),
    (True, False, b'{"a" 1}', [err("JSON parse error, missing : in object pair")]),
    (True, False, b"\xff\xfe\n", [err("JSON parse error, stray '\ufffd'")] * 2),
    (True, False, b'{"execute": "q\xffv"}', [err("JSON parse error, stray '\"q\ufffd'"),
                                            err("JSON parse error, expecting value")]),
    (True, False, b"\x00", [err("JSON parse error, stray ''")]),
    (True, False, b"-\n", [err("JSON parse error, stray '-\n'")]),
    (True, False, b"012", [err("JSON parse error, stray '01'")]),
    (True, False, b"NaN\n", [err("JSON parse error, stray 'N'")]),
    (True, False, b"@,[1]\n", [err("JSON parse error, stray '@'"), err("JSON parse error, expecting value"),
                               err("QMP input must be a JSON object")]),
    (True, False, b'["a\tb"]', [err("JSON parse error, stray '\"a\t'"), err("JSON parse error, expecting value")]),
    (True, False, b'["\\x"]', [err("JSON parse error, invalid escape sequence in string")]),
    (True, False, b'["\\ud800"]', [err("JSON parse error, \\ud800 is not a valid Unicode character")]),
    (True, False, b'["\\uZZ"]', [err('JSON parse error, \\uZZ" is not a valid Unicode character')]),
    (True, False, b'["\\uffff"]', [err("JSON parse error, \\uffff is not a valid Unicode character")]),
    (True, False, b'["\xc3"]', [err("JSON parse error, invalid UTF-8 sequence in string")]),
    (True, False, b'["\xed\xa0\x80"]', [err("JSON parse error, invalid UTF-8 sequence in string")]),
    (True, False, b'["\xef\xbf\xbf"]', [err("JSON parse error, invalid UTF-8 sequence in string")]),
    # limits: nesting deeper than 1024 drops the message; the rest is read afresh
    (True, False, b"[" * 1024 + b"]" * 1024 + b"\n", [err("QMP input must be a JSON object")]),
    (True, False, b"[" * 1025 + b"]" * 1025 + b"\n",
     [err("JSON nesting depth limit exceeded")] + [err("JSON parse error, expecting value")] * 1025),
    # id echoed as sent, in QEMU's notation
    (True, False, QV + b'{"b": 1, "a": 2, "c": [true, false, null], "d": "x\\ty\\u0001\\/"}}',
     [ok(VERSION, '{"d": "x\\ty\\u0001/", "a": 2, "b": 1, "c": [true, false, null]}')]),
    (True, False, b'{"execute": "query-version", "id": 1e400}', [ok(VERSION, "inf")]),
    (True, False, b'{"execute": "query-version", "id": -1e400}', [ok(VERSION, "-inf")]),
    (True, False, b'{"execute": "query-version", "id": 0.1}', [ok(VERSION, "0.10000000000000001")]),
    (True, False, b'{"execute": "query-version", "id": 1E5}', [ok(VERSION, "100000")]),
    (True, False, b'{"execute": "query-version", "id": -0}', [ok(VERSION, "0")]),
    (True, False, b'{"execute": "query-version", "id": 18446744073709551615}', [ok(VERSION, "18446744073709551615")]),
    (True, False, b'{"execute": "query-version", "id": 18446744073709551616}', [ok(VERSION, "1.8446744073709552e+19")]),
    (True, False, QV + b'-9223372036854775809}', [ok(VERSION, "-9.2233720368547758e+18")]),
    (True, False, b'{"execute": "query-version", "id": "\xc3\xa9\xf0\x9f\x98\x80\x7f"}',
     [ok(VERSION, '"\\u00E9\\uD83D\\uDE00\\u007F"')]),
    (True, False, b'{"execute": "query-version", "id": "\xc0\x80"}', [ok(VERSION, '"\\u0000"')]),
    (True, False, b'{"execute": "query-version", "id": \'sq"x\\\'\'}', [ok(VERSION, '"sq\\"x\'"')]),
    (True, False, b'{"execute": "query-version", "id": ' + b"[" * 1023 + b"]" * 1023 + b"}",
     [ok(VERSION, "[" * 1023 + "]" * 1023)]),
]


@pytest.mark.parametrize("negotiated, oob, data, expected", CASES, ids=[repr(c[2][:40]) for c in CASES])
def test_protocol_texts(sock_dir: Path, negotiated: bool, oob: bool, data: bytes, expected: list[bytes]) -> None:
    async def body() -> None:
        async with serving(sock_dir) as server:
            raw = await Raw.open(server.address.removeprefix("unix:"), negotiated, oob)
            assert await raw.ask(data) == expected
            await raw.close()
            assert server.internal_errors == 0
    run(body())


@pytest.mark.qemu
def test_same_bytes_as_qemu(sock_dir: Path) -> None:
    """Every case above, and the greeting, byte for byte against qemu-storage-daemon."""
    qsock = sock_dir / "qsd.sock"
    proc = subprocess.Popen([QSD, "--chardev", qmp_chardev(qsock, "m"),
                             "--monitor", "chardev=m"])

    def norm(line: bytes) -> bytes:
        return QEMU_VERSION.sub(VERSION.encode(), line)

    async def body() -> None:
        for _ in range(500):
            if qsock.exists():
                break
            await asyncio.sleep(0.01)
        async with serving(sock_dir) as server:
            bpath = server.address.removeprefix("unix:")
            for negotiated, oob, data, _ in CASES:
                answers = []
                for path in (qsock, bpath):
                    raw = await Raw.open(path, negotiated, oob)
                    answers.append([norm(line) for line in [raw.greeting, *await raw.ask(data)]])
                    await raw.close()
                assert answers[0] == answers[1], data
            raw = await Raw.open(qsock, True)
            raw.writer.write(b'{"execute": "quit"}')
            assert await raw.line() == ok("{}")

    try:
        run(body(), 120)
    finally:
        proc.terminate()
        proc.wait(10)


def test_greeting(sock_dir: Path) -> None:
    async def body() -> None:
        async with serving(sock_dir) as server:
            raw = await Raw.open(sock_dir / "qmp.sock")
            assert raw.greeting == GREETING
            await raw.close()
            assert server.internal_errors == 0
    run(body())


# --------------------------------------------------------------------------- the JSON layer


def test_qjson_round_trip() -> None:
    data = {"b": [1, -2, 2.5, True, False, None], "a": "é\U0001f600\0\"\\/\n", "c": {}}
    text = qjson.dumps(data)
    assert text == '{"b": [1, -2, 2.5, true, false, null], "a": "\\u00E9\\uD83D\\uDE00\\u0000\\"\\\\/\\n", "c": {}}'
    assert qjson.loads(text.encode()) == data


def test_qjson_streams_across_reads() -> None:
    """Messages split anywhere, even inside a UTF-8 sequence or between a number and its end."""
    data = b'{"execute": "x", "id": "\xc3\xa9"}123 [4]{"a":\n1}'
    for cut in range(1, len(data)):
        streamer = qjson.JSONStreamer()
        out = streamer.feed(data[:cut]) + streamer.feed(data[cut:])
        assert [m.value for m in out] == [{"execute": "x", "id": "é"}, 123, [4], {"a": 1}], cut


def test_qjson_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Token count and size limits (2 Mi tokens, 64 MiB: measured on QEMU, checked here scaled down)."""
    monkeypatch.setattr(qjson, "MAX_TOKEN_COUNT", 9)
    # 9 tokens pass; the 10th is refused, and the closing bracket then stands alone
    out = qjson.JSONStreamer().feed(b"[1,1,1,1]" + b"[1,1,1,1,1]")
    assert [m.error or m.value for m in out] == [[1] * 4, "JSON token count limit exceeded",
                                                 "JSON parse error, expecting value"]
    monkeypatch.setattr(qjson, "MAX_TOKEN_SIZE", 20)
    # each token is checked as it arrives: bytes so far + its length + 1 must stay <= the limit
    out = qjson.JSONStreamer().feed(b'["123456789012345"]["1234567890123456"]["12345678901234567"]')
    assert [m.error or m.value for m in out] == [["123456789012345"], "JSON token size limit exceeded",
                                                 "JSON token size limit exceeded",
                                                 "JSON parse error, expecting value"]
    # one token longer than the limit is cut by the lexer; what follows is read afresh
    out = qjson.JSONStreamer().feed(b'"' + b"a" * 25 + b'"\n')
    assert [m.error or m.value for m in out][0] == "JSON token size limit exceeded"


# --------------------------------------------------------------------------- real time


def test_wall_clock() -> None:
    clock = WallClock()
    a, b = clock.now_ns, clock.now_ns
    assert a <= b and abs(a - time.time_ns()) < 10**9
    stamp = clock.timestamp()
    assert set(stamp) == {"seconds", "microseconds"} and 0 <= stamp["microseconds"] < 10**6
    clock.now_ns = a - 10**9  # the past: nothing happens
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_realtime_scheduler_fires_in_order() -> None:
    async def body() -> None:
        sched = RealtimeScheduler()
        sched.attach(asyncio.get_running_loop())
        fired: list[tuple[str, int, int]] = []
        done = asyncio.Event()
        for name, ms in (("c", 30), ("a", 10), ("b", 20)):
            when = sched.clock.now_ns + ms * 1_000_000
            sched.at(when, lambda n=name, w=when: (fired.append((n, w, sched.clock.now_ns)),
                                                   n == "c" and done.set()))
        await asyncio.wait_for(done.wait(), 5)
        assert [f[0] for f in fired] == ["a", "b", "c"]
        assert all(now >= when for _, when, now in fired)  # never early
        sched.detach()
    run(body())


def test_realtime_scheduler_survives_a_failing_timer() -> None:
    async def body() -> None:
        errors: list[BaseException] = []
        sched = RealtimeScheduler(on_error=errors.append)
        sched.attach(asyncio.get_running_loop())
        done = asyncio.Event()
        sched.after(0, lambda: 1 / 0)
        sched.after(1000, done.set)
        await asyncio.wait_for(done.wait(), 5)
        assert len(errors) == 1 and isinstance(errors[0], ZeroDivisionError)
        sched.detach()
    run(body())


def test_realtime_scheduler_synchronous_step_waits() -> None:
    sched = RealtimeScheduler()
    when = sched.clock.now_ns + 2_000_000
    seen = []
    sched.at(when, lambda: seen.append(sched.clock.now_ns))
    assert sched.step()
    assert seen[0] >= when


def test_speed_throttles_in_real_time(sock_dir: Path) -> None:
    """A backup at 1 MiB/s has copied its first chunk only; lifting the limit lets it finish."""
    async def body() -> None:
        async with serving(sock_dir) as server:
            server.vm.add_drive("drive0", "64M")
            client = QMPClient("speed")
            await client.connect(str(sock_dir / "qmp.sock"))
            listener = EventListener("BLOCK_JOB_COMPLETED")
            client.register_listener(listener)
            await client.execute("drive-backup", {"device": "drive0", "target": "t.qcow2", "sync": "full",
                                                  "format": "qcow2", "speed": 1 << 20})
            job = (await client.execute("query-block-jobs"))[0]
            assert job["speed"] == 1 << 20 and job["offset"] <= 1 << 20 < job["len"] == 64 << 20
            await client.execute("block-job-set-speed", {"device": "drive0", "speed": 0})
            event = await asyncio.wait_for(listener.get(), 20)
            assert event["data"]["offset"] == event["data"]["len"] == 64 << 20
            await client.disconnect()
    run(body())


# --------------------------------------------------------------------------- qemu.qmp against the server


async def _jobs_ended(listener: EventListener, events: list[dict], n: int) -> None:
    """Collect events until ``n`` jobs in all have reached the status ``null``."""
    while sum(1 for e in events if e["event"] == "JOB_STATUS_CHANGE" and e["data"]["status"] == "null") < n:
        events.append(dict(await listener.get()))


@pytest.mark.parametrize("mode", ["individual", "grouped"])
def test_seed_scenario_over_qmp(sock_dir: Path, mode: str) -> None:
    """The seed scenario through qemu.qmp: the jobs' events and the bitmaps are those of the
    in-process run (up to QEMU's own run-to-run variation: a ``waiting`` before ``aborting``)."""
    drives = ("drive0", "drive1")

    async def body() -> dict:
        async with serving(sock_dir) as server:
            for d in drives:  # bitlab serve --drive drive0 --drive drive1 --fail-read drive1
                server.vm.add_drive(d, "64M", blkdebug=FAIL_ON_READ if d == "drive1" else None)
            client = QMPClient("seed")
            await client.connect(str(sock_dir / "qmp.sock"))
            events: list[dict] = []
            listener = EventListener()
            client.register_listener(listener)
            anchor = [{"type": "block-dirty-bitmap-add",
                       "data": {"node": d, "name": f"bitmap{d[-1]}", "granularity": 65536}} for d in drives]
            anchor += [{"type": "drive-backup", "data": {"device": d, "target": f"d{d[-1]}-full.qcow2",
                                                         "sync": "full", "format": "qcow2"}} for d in drives]
            assert await client.execute("transaction", {"actions": anchor}) == {}
            await asyncio.wait_for(_jobs_ended(listener, events, 2), 20)
            for d, offset, length, pattern in SEED_WRITES:
                line = f'qemu-io {d} "write -P {pattern:#x} {offset} {length}"'
                assert await client.execute("human-monitor-command", {"command-line": line}) == ""
            before = {b["device"]: b["inserted"]["dirty-bitmaps"][0]["count"]
                      for b in await client.execute("query-block")}
            since = len(events)
            actions = [{"type": "drive-backup",
                        "data": {"device": d, "bitmap": f"bitmap{d[-1]}", "format": "qcow2",
                                 "sync": "incremental", "target": f"d{d[-1]}-incr-1.qcow2"}} for d in drives]
            args: dict = {"actions": actions}
            if mode != "individual":
                args["properties"] = {"completion-mode": mode}
            assert await client.execute("transaction", args) == {}
            await asyncio.wait_for(_jobs_ended(listener, events, 4), 20)
            after = {b["device"]: b["inserted"]["dirty-bitmaps"][0]["count"]
                     for b in await client.execute("query-block")}
            sha = {d: (await client.execute("x-debug-block-dirty-bitmap-sha256",
                                            {"node": d, "name": f"bitmap{d[-1]}"}))["sha256"] for d in drives}
            await client.disconnect()
            assert server.internal_errors == 0
            return {"seqs": job_sequences(events[since:]), "before": before, "after": after, "sha": sha}

    got = run(body())
    ref = run_seed(mode, "drive1")
    ref_seqs = job_sequences([e for d in ref.drives.values() for e in d.events])
    for d in drives:
        assert without_optional(got["seqs"][d]) == without_optional(ref_seqs[d]), d
        assert got["before"][d] == ref.drives[d].count_before
        assert got["after"][d] == ref.drives[d].count_after
        assert got["sha"][d] == ref.machine.qmp("x-debug-block-dirty-bitmap-sha256",
                                                {"node": d, "name": f"bitmap{d[-1]}"})["sha256"]


def test_events_go_to_every_negotiated_client(sock_dir: Path) -> None:
    """Both clients get all events of a job one of them started; a client that has not
    negotiated gets none (QEMU sends events only after qmp_capabilities)."""
    async def body() -> None:
        async with serving(sock_dir) as server:
            server.vm.add_drive("drive0", "64M")
            path = str(sock_dir / "qmp.sock")
            silent = await Raw.open(path)
            clients, listeners = [], []
            for name in ("a", "b"):
                client = QMPClient(name)
                await client.connect(path)
                listener = EventListener("JOB_STATUS_CHANGE")
                client.register_listener(listener)
                clients.append(client)
                listeners.append(listener)
            await clients[0].execute("drive-backup", {"device": "drive0", "target": "t.qcow2", "sync": "full",
                                                      "format": "qcow2"})
            seen = [[], []]
            for i, listener in enumerate(listeners):
                while not seen[i] or seen[i][-1] != "null":
                    seen[i].append((await asyncio.wait_for(listener.get(), 20))["data"]["status"])
            assert seen[0] == seen[1]
            assert seen[0][0] == "created" and seen[0][-3:] == ["pending", "concluded", "null"]
            # the first line the silent client gets after negotiating is the reply, no event
            silent.writer.write(NEGOTIATE)
            assert await silent.line() == ok("{}")
            with pytest.raises(ExecuteError, match="has not been found"):
                await clients[1].execute("no-such-command")
            for client in clients:
                await client.disconnect()
            await silent.close()
    run(body())


def test_ids_and_replies_stay_with_their_client(sock_dir: Path) -> None:
    async def body() -> None:
        async with serving(sock_dir) as server:
            path = server.address.removeprefix("unix:")
            a, b = await Raw.open(path, True), await Raw.open(path, True)
            a.writer.write(b'{"execute": "query-version", "id": "a1"}{"execute": "nope", "id": "a2"}')
            b.writer.write(b'{"execute": "query-version", "id": {"client": "b"}}')
            assert await b.line() == ok(VERSION, '{"client": "b"}')
            assert await a.line() == ok(VERSION, '"a1"')
            assert await a.line() == err("The command nope has not been found", "CommandNotFound", '"a2"')
            await a.close()
            await b.close()
    run(body())


def test_quit_closes_everything(sock_dir: Path) -> None:
    async def body() -> None:
        server = QMPServer()
        path = await server.start_unix(sock_dir / "qmp.sock")
        other = await Raw.open(path, True)
        client = QMPClient("quitter")
        await client.connect(path)
        assert await client.execute("quit") == {}
        await asyncio.wait_for(server.serve(), 10)
        assert await other.reader.read() == b""  # the other client sees the end, too
        assert not os.path.exists(path)
        with contextlib.suppress(Exception):
            await client.disconnect()
        assert server.clients == set()
    run(body())


def test_socket_mode_0600_and_no_overwrite(sock_dir: Path) -> None:
    async def body() -> None:
        async with serving(sock_dir):
            mode = os.stat(sock_dir / "qmp.sock").st_mode
            assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
            busy = QMPServer()
            with pytest.raises(FileExistsError, match="in use"):
                await busy.start_unix(sock_dir / "qmp.sock")
        plain = sock_dir / "notes.txt"
        plain.write_text("keep me")
        with pytest.raises(FileExistsError, match="not a socket"):
            await QMPServer().start_unix(plain)
        assert plain.read_text() == "keep me"
    run(body())


def test_tcp_only_on_loopback() -> None:
    async def body() -> None:
        server = QMPServer()
        with pytest.raises(ValueError, match="refusing to listen on '0.0.0.0'"):
            await server.start_tcp(0, "0.0.0.0")
        port = await server.start_tcp(0)
        assert server._servers[0].sockets[0].getsockname()[0] == "127.0.0.1"
        client = QMPClient("tcp")
        await client.connect(("127.0.0.1", port))
        assert (await client.execute("query-version"))["package"] == f"bitlab {__version__}"
        await client.disconnect()
        server.close()
        await server.serve()
    run(body())


def test_vanishing_clients_and_garbage_leave_the_server_serving(sock_dir: Path) -> None:
    """Clients that send half a message, a job start or megabytes and vanish; afterwards
    another client is served, no connection lingers and no task is left behind."""
    async def body() -> None:
        async with serving(sock_dir) as server:
            server.vm.add_drive("drive0", "64M")
            path = str(sock_dir / "qmp.sock")
            tasks_before = len(asyncio.all_tasks())
            for data in (b'{"execute": "query-ver', b'{"execute": "drive-backup", "arguments": {"device": "drive0", '
                         b'"target": "v.qcow2", "sync": "full", "format": "qcow2"}}',
                         b"[" * 100_000, b'{"execute": "query-version", "id": "' + b"x" * (4 << 20) + b'"}',
                         os.urandom(1 << 20)):
                raw = await Raw.open(path, True)
                raw.writer.write(data)
                raw.writer.transport.abort()
            raw = await Raw.open(path, True)
            assert await raw.ask(b'{"execute": "query-version"}') == [VERSION_REPLY]
            big = b'{"execute": "query-version", "id": "' + b"y" * (8 << 20) + b'"}'
            raw.writer.write(big)
            assert await raw.line() == ok(VERSION, '"' + "y" * (8 << 20) + '"')
            await raw.close()
            await asyncio.wait_for(server.no_clients(), 20)
            assert server.clients == set()
            assert len(asyncio.all_tasks()) == tasks_before
            assert server.internal_errors == 0
    run(body())


# --------------------------------------------------------------------------- the command line


def _serve(*args: str) -> tuple[subprocess.Popen, str]:
    """``bitlab serve ARGS`` in a subprocess; returns it and the address it announced."""
    proc = subprocess.Popen([sys.executable, "-m", "bitlab.cli", "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout=30):
        proc.kill()
        raise AssertionError("bitlab serve did not announce itself")
    line = proc.stdout.readline().decode()
    assert "listening on " in line, line + proc.stderr.read().decode()
    return proc, line.split("listening on ", 1)[1].split()[0]


def test_cli_refuses_other_hosts() -> None:
    proc = subprocess.run([sys.executable, "-m", "bitlab.cli", "serve", "--port", "0", "--host", "0.0.0.0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "refusing to listen on '0.0.0.0'" in proc.stderr and "127.0.0.1" in proc.stderr


def test_cli_refuses_to_replace_a_file(sock_dir: Path) -> None:
    target = sock_dir / "important"
    target.write_text("data")
    proc = subprocess.run([sys.executable, "-m", "bitlab.cli", "serve", "--socket", str(target)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "is not a socket" in proc.stderr
    assert target.read_text() == "data"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_signal_shuts_down_cleanly(sock_dir: Path, sig: signal.Signals) -> None:
    path = sock_dir / "qmp.sock"
    proc, address = _serve("--socket", str(path))
    try:
        assert address == f"unix:{path}"
        conn = socket.socket(socket.AF_UNIX)
        conn.settimeout(30)
        conn.connect(str(path))
        assert conn.recv(4096) == GREETING
        proc.send_signal(sig)
        assert proc.wait(30) == 0
        assert conn.recv(4096) == b""
        assert not path.exists()
        assert b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_cli_tcp_and_drives() -> None:
    proc, address = _serve("--port", "0", "--drive", "drive0", "--drive", "drive1:16M", "--fail-read", "drive1")
    host, port = address.removeprefix("tcp:").rsplit(":", 1)
    assert host == "127.0.0.1"

    async def body() -> list:
        client = QMPClient("cli")
        await client.connect((host, int(port)))
        blocks = await client.execute("query-block")
        await client.execute("quit")
        with contextlib.suppress(Exception):
            await client.disconnect()
        return blocks

    try:
        blocks = run(body())
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    sizes = {b["device"]: b["inserted"]["image"]["virtual-size"] for b in blocks}
    assert sizes == {"drive0": 64 << 20, "drive1": 16 << 20}
    assert blocks[1]["inserted"]["file"].startswith("json:") or "blkdebug" in json.dumps(blocks[1])


@pytest.mark.skipif(not QMP_SHELL.exists(), reason="qmp-shell (qemu.qmp) not installed")
def test_qmp_shell(sock_dir: Path) -> None:
    """qemu.qmp's qmp-shell, fed on stdin, in QMP and in HMP mode; qemu-io's text appears
    on the server's stdout, as QEMU prints it on its own."""
    path = sock_dir / "qmp.sock"
    proc, _ = _serve("--socket", str(path), "--drive", "drive0")
    env = {**os.environ, "HOME": str(sock_dir)}  # qmp-shell keeps its history there
    try:
        shell = subprocess.run(
            [str(QMP_SHELL), str(path)], env=env, capture_output=True, text=True, timeout=60,
            input="query-version\n"
                  "block-dirty-bitmap-add node=drive0 name=bitmap0 granularity=65536\n"
                  "transaction(\n"
                  "block-dirty-bitmap-clear node=drive0 name=bitmap0\n"
                  ")\n"
                  "query-nothing\n")
        assert shell.returncode == 0, shell.stderr
        assert "Connected to QEMU 7.2.0" in shell.stdout
        assert f'{{"return": {VERSION}}}' in shell.stdout
        assert shell.stdout.count('{"return": {}}') == 2
        assert '{"error": {"class": "CommandNotFound", "desc": "The command query-nothing has not been found"}}' \
            in shell.stdout
        hmp = subprocess.run([str(QMP_SHELL), "-H", str(path)], env=env, capture_output=True, text=True, timeout=60,
                             input='qemu-io drive0 "write -P 0x41 0 64k"\ninfo block\n')
        assert hmp.returncode == 0, hmp.stderr
        assert "drive0" in hmp.stdout and "Cache mode" in hmp.stdout
        conn = socket.socket(socket.AF_UNIX)
        conn.settimeout(30)
        conn.connect(str(path))
        conn.recv(4096)
        conn.sendall(NEGOTIATE + b'{"execute": "quit"}')
        assert proc.wait(30) == 0
        assert "wrote 65536/65536 bytes at offset 0" in proc.stdout.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_realtime_machine_runs_jobs_synchronously_too() -> None:
    """Without a loop, the real-time machine's run() waits for the jobs in real time."""
    vm = realtime_machine()
    vm.add_drive("drive0", "4M")
    vm.qmp("drive-backup", {"device": "drive0", "target": "t.qcow2", "sync": "full", "format": "qcow2"})
    vm.run()
    assert vm.events[-1]["data"] == {"status": "null", "id": "drive0"}
    assert vm.events[-1]["timestamp"]["seconds"] >= time.time() - 60
