#!/usr/bin/env python3
"""Fuzz ``bitlab serve`` at length, and time its simple commands beside qemu-storage-daemon's.

``run(n)`` starts ``bitlab serve`` in a subprocess (one 64 MiB drive attached) and
throws ``n`` generated inputs at it — random bytes, QMP fragments, random JSON
messages, valid commands with a few bytes mutated, a few huge or deeply nested
ones — in batches over many connections, some of which vanish mid-batch. After
every batch a marked ``query-version`` must be answered (else: a hang), the
process must still run (else: a crash), and its stderr must show no Python error
caught inside a command (``bitlab internal error``). Then it times ``query-version``
over the socket, one round trip at a time and pipelined, on bitlab and, where it is
installed, on qemu-storage-daemon in the same run (goal: bitlab >= 1/2 of QEMU's rate).

Standalone: ``python benchmarks/fuzz.py [N]`` prints a table. Nothing here asserts.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bitlab.backends.qemu import qmp_chardev
from bitlab.qmp import TABLE

END = b'\xff{"execute": "query-version", "id": "end"}'
HANG_TIMEOUT = 20.0
FRAGMENTS = [b'"execute"', b'"arguments"', b'"id"', b'"exec-oob"', b'"query-version"', b'"qmp_capabilities"',
             b'"query-block"', b'"enable"', b'"oob"', b"\\u", b"\\ud83d", b"\\ude00", b"\\u0000", b"true", b"false",
             b"null", b"1e400", b"-0", b"18446744073709551616", b"\xc0\x80", b"\xf0\x9f\x98\x80", b"\xef\xbf\xbe",
             b'{"execute":"query-version"}', b"{", b"}", b"[", b"]", b",", b":", b'"', b"'", b"\\", b" ", b"\n",
             b"\xff", b"\x00", b"%", b"x", b"0", b"1.5", b"-", b"e"]
ALPHABET = (list(b'{}[],:"\'\\ \t\r\n') * 4 + list(b"0123456789-+.eE") * 2 + list(b"abcdefghijklmnopqrstuvwxyz")
            + list(b"ANZ%@/") + [0, 1, 0x1B, 0x1F, 0x7F, 0x80, 0xBF, 0xC0, 0xC3, 0xE2, 0xED, 0xEF, 0xF0, 0xF4, 0xF8,
                                 0xFC, 0xFD, 0xFE, 0xFF])
VALID = [b'{"execute": "query-version", "id": 1}', b'{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}',
         b'{"execute": "query-block", "arguments": {}, "id": {"a": [1, 2.5, "x"]}}',
         b'{"execute": "block-dirty-bitmap-add", "arguments": {"node": "drive0", "name": "b", "granularity": 65536}}',
         b'{"execute": "block-dirty-bitmap-remove", "arguments": {"node": "drive0", "name": "b"}}',
         b'{"execute": "human-monitor-command", "arguments": {"command-line": "qemu-io drive0 \\"write 0 64k\\""}}',
         b'{"execute": "query-jobs"}', b'{"exec-oob": "query-jobs", "id": "o"}']
# every command bitlab has (but quit), and one it has not
COMMANDS = sorted(name for name in TABLE.commands if name != "quit") + ["nope"]
KEYS = ["node", "name", "granularity", "device", "target", "sync", "job-id", "bitmap", "actions", "type", "data",
        "node-name", "driver", "size", "id", "speed", "format", "mode", "flat", "command-line", "bitmaps", "force",
        "enable", "persistent", "disabled", "properties", "completion-mode", "file", "filename", "image"]


class Generator:
    """The fuzz inputs, reproducible from a seed."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def text(self) -> str:
        parts = ["a", "Z", "é", "\0", "\n", '"', "\\", "/", "\U0001f600", "\uffff", "\ufdd0", "\x1f", "drive0", "id"]
        return "".join(self.rng.choice(parts) for _ in range(self.rng.randint(0, 6)))

    def value(self, depth: int = 0) -> object:
        r = self.rng.random()
        if depth > 4 or r < 0.35:
            return self.rng.choice([0, -1, 1.5, 2**63, 2**64, -(2**63) - 1, 1e300, True, False, None, self.text(),
                                    0.1, -0.0, 10**25, 65536, 512, "drive0", "bitmap0", "b", "full", "incremental",
                                    "top", "none", "null-co", "qcow2", "file", "t.qcow2", "existing", "grouped",
                                    'qemu-io drive0 "write 0 64k"', "info block", "block-dirty-bitmap-add",
                                    "drive-backup", "blockdev-backup", "on-success", "always", "never"])
        if r < 0.65:
            return [self.value(depth + 1) for _ in range(self.rng.randint(0, 4))]
        return {self.rng.choice([self.text(), *KEYS]): self.value(depth + 1) for _ in range(self.rng.randint(0, 4))}

    def message(self) -> bytes:
        msg: dict = {}
        for key in self.rng.sample(["execute", "arguments", "id", "exec-oob", "foo"], self.rng.randint(0, 4)):
            if key in ("execute", "exec-oob"):
                msg[key] = self.rng.choice([*COMMANDS, self.text(), 1, None])
            elif key == "arguments":
                msg[key] = self.rng.choice([{}, {"node": "drive0", "name": "b"}, {"enable": ["oob"]}, self.value(),
                                            {"x": 1}, self.arguments()])
            else:
                msg[key] = self.value()
        return json.dumps(msg, ensure_ascii=self.rng.random() < 0.5).encode("utf-8", "surrogatepass")

    def arguments(self) -> dict:
        """Plausible arguments: known member names, values both right and wrong."""
        return {self.rng.choice(KEYS): self.value(2) for _ in range(self.rng.randint(1, 6))}

    def mutated(self) -> bytes:
        data = bytearray(self.rng.choice(VALID))
        for _ in range(self.rng.randint(1, 4)):
            pos = self.rng.randint(0, len(data))
            op = self.rng.random()
            if op < 0.33 and data:
                del data[min(pos, len(data) - 1)]
            elif op < 0.66:
                data.insert(pos, self.rng.choice(ALPHABET))
            elif data:
                data[min(pos, len(data) - 1)] = self.rng.choice(ALPHABET)
        return bytes(data)

    def huge(self) -> bytes:
        kind = self.rng.randrange(4)
        if kind == 0:
            return b"[" * self.rng.randint(1000, 1100) + b"]" * self.rng.randint(1000, 1100)
        if kind == 1:
            return b'{"execute": "query-version", "id": "' + b"z" * self.rng.randint(1 << 16, 4 << 20) + b'"}'
        if kind == 2:
            return bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(1 << 12, 1 << 15)))
        return b"[" + b"1," * self.rng.randint(1 << 10, 1 << 16) + b"1]"

    def input(self) -> bytes:
        r = self.rng.random()
        if r < 0.0005:
            data = self.huge()
        elif r < 0.3:
            data = bytes(self.rng.choice(ALPHABET) for _ in range(self.rng.randint(1, 80)))
        elif r < 0.45:
            data = b"".join(self.rng.choice(FRAGMENTS) for _ in range(self.rng.randint(1, 24)))
        elif r < 0.75:
            data = self.message()
        else:
            data = self.mutated()
        return data.replace(b"quit", b"qu1t")  # keep the server up (a real quit is counted apart)


def _argv_bitlab(sock: str) -> list[str]:
    return [sys.executable, "-m", "bitlab.cli", "serve", "--socket", sock, "--drive", "drive0", "--quiet"]


def _argv_qsd(sock: str) -> list[str]:
    return [shutil.which("qemu-storage-daemon") or "qemu-storage-daemon", "--chardev",
            qmp_chardev(sock, "m"), "--monitor", "chardev=m"]


class Conn:
    """A blocking QMP connection reading whole lines."""

    def __init__(self, path: str, timeout: float = HANG_TIMEOUT) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = bytearray()
        self.greeting = self.line()

    def line(self) -> bytes:
        searched = 0
        while True:
            i = self.buf.find(b"\r\n", max(0, searched - 1))
            if i >= 0:
                line = bytes(self.buf[: i + 2])
                del self.buf[: i + 2]
                return line
            searched = len(self.buf)
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError
            self.buf += chunk

    def negotiate(self, oob: bool = False) -> None:
        arg = b', "arguments": {"enable": ["oob"]}' if oob else b""
        self.sock.sendall(b'{"execute": "qmp_capabilities"' + arg + b"}")
        self.line()

    def close(self) -> None:
        self.sock.close()


class Process:
    """A server process on a unix socket."""

    def __init__(self, argv_of: object, path: str, log: Path | None = None) -> None:
        self.argv_of, self.path, self.log = argv_of, path, log
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)
        err = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115 - kept for the process
        self.proc = subprocess.Popen(self.argv_of(self.path), stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                Conn(self.path, 5).close()
                return
            except OSError:
                time.sleep(0.01)
        raise RuntimeError(f"{self.argv_of(self.path)[0]} did not start")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.alive():
            try:
                conn = Conn(self.path, 5)
                conn.negotiate()
                conn.sock.sendall(b'{"execute": "quit"}')
                conn.close()
                self.proc.wait(10)
            except (OSError, EOFError, subprocess.TimeoutExpired):
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None


def rate(path: str, seconds: float = 1.0, pipelined: bool = False, repeats: int = 3) -> float:
    """query-version commands per second over the socket (median of ``repeats``)."""
    cmd = b'{"execute": "query-version"}'
    results = []
    conn = Conn(path)
    conn.negotiate()
    for _ in range(repeats):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            if pipelined:
                conn.sock.sendall(cmd * 200)
                for _ in range(200):
                    conn.line()
                count += 200
            else:
                conn.sock.sendall(cmd)
                conn.line()
                count += 1
        results.append(count / (time.perf_counter() - start))
    conn.close()
    return statistics.median(results)


def fuzz(server: Process, n: int, seed: int, log: Path) -> dict:
    """Throw ``n`` inputs at the server; count what went wrong."""
    gen = Generator(seed)
    out = {"inputs": 0, "batches": 0, "connections": 0, "vanished": 0, "replies": 0, "crashes": 0, "hangs": 0,
           "quits": 0, "bytes": 0}
    rng = random.Random(seed + 1)
    conn: Conn | None = None
    while out["inputs"] < n:
        if conn is None or rng.random() < 0.05:
            if conn is not None:
                conn.close()
            conn = Conn(server.path)
            out["connections"] += 1
            mode = rng.random()
            if mode < 0.8:
                conn.negotiate(oob=mode < 0.4)
        batch = [gen.input() for _ in range(min(n - out["inputs"], rng.randint(1, 100)))]
        data = b"".join(x + rng.choice([b"", b"\n", b" "]) for x in batch)
        out["inputs"] += len(batch)
        out["batches"] += 1
        out["bytes"] += len(data)
        try:
            conn.sock.sendall(data)
            if rng.random() < 0.01:  # vanish mid-batch
                conn.close()
                conn = None
                out["vanished"] += 1
                continue
            conn.sock.sendall(END)
            while True:
                line = conn.line()
                if line.startswith(b'{"return": {"qemu"') and line.endswith(b'"id": "end"}\r\n') \
                        or line.startswith(b'{"id": "end"'):
                    break
                out["replies"] += 1
        except (TimeoutError, EOFError, ConnectionError) as err:
            conn.close()
            conn = None
            time.sleep(0.05)
            if not server.alive():
                if server.proc is not None and server.proc.returncode == 0:
                    out["quits"] += 1  # a quit spelled with escapes: an answer, not a crash
                else:
                    out["crashes"] += 1
                server.start()
            elif isinstance(err, socket.timeout):
                out["hangs"] += 1
                server.stop()
                server.start()
            else:
                out["crashes"] += 1  # the server dropped a connection it should have kept
    if conn is not None:
        conn.close()
    text = log.read_text(errors="replace") if log.exists() else ""
    out["python_errors"] = text.count("bitlab internal error")
    # the last line of each traceback: what went wrong, for the report
    out["error_samples"] = sorted({chunk.strip().splitlines()[-1] for chunk in text.split("bitlab internal error")[1:]
                                   if chunk.strip()})[:10]
    out["crashes"] += out["python_errors"]
    return out


def run(n: int = 100_000, seed: int = 20240601, rate_seconds: float = 1.0) -> dict:
    """The long fuzz and the command rates; returns the figures (see the module docstring)."""
    tmp = Path(tempfile.mkdtemp(prefix="blz"))
    log = tmp / "serve.err"
    result: dict = {"n": n}
    try:
        server = Process(_argv_bitlab, str(tmp / "b.sock"), log)
        try:
            start = time.perf_counter()
            result.update(fuzz(server, n, seed, log))
            result["fuzz_seconds"] = time.perf_counter() - start
            big = b'{"execute": "query-version", "id": "' + b"a" * ((64 << 20) - 64) + b'"}'
            conn = Conn(server.path, 120)
            conn.negotiate()
            start = time.perf_counter()
            conn.sock.sendall(big)
            conn.line()
            result["big_message_seconds"] = time.perf_counter() - start
            conn.close()
            result["bitlab_rate"] = rate(server.path, rate_seconds)
            result["bitlab_rate_pipelined"] = rate(server.path, rate_seconds, pipelined=True)
        finally:
            server.stop()
        if shutil.which("qemu-storage-daemon"):
            qsd = Process(_argv_qsd, str(tmp / "q.sock"))
            try:
                result["qsd_rate"] = rate(qsd.path, rate_seconds)
                result["qsd_rate_pipelined"] = rate(qsd.path, rate_seconds, pipelined=True)
            finally:
                qsd.stop()
            result["ratio"] = result["bitlab_rate"] / result["qsd_rate"]
            result["ratio_pipelined"] = result["bitlab_rate_pipelined"] / result["qsd_rate_pipelined"]
        else:
            result["qsd_rate"] = None
            result["ratio"] = None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def table(r: dict) -> str:
    """The figures as a small table."""
    def goal(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    rows = [
        ("inputs", f"{r['inputs']:,}", f"{r['batches']:,} batches, {r['connections']:,} connections, "
                                       f"{r['vanished']} vanished mid-batch, {r['bytes'] / 1e6:.1f} MB"),
        ("replies", f"{r['replies']:,}", f"{r['inputs'] / r['fuzz_seconds']:,.0f} inputs/s"),
        ("crashes", str(r["crashes"]), f"goal 0: {goal(r['crashes'] == 0)} (Python errors {r['python_errors']})"),
        *(("", "", f"  {sample}") for sample in r.get("error_samples", [])),
        ("hangs", str(r["hangs"]), f"goal 0: {goal(r['hangs'] == 0)}"),
        ("64 MiB message", f"{r['big_message_seconds']:.2f} s", "read, parsed and echoed"),
    ]
    for label, key in (("query-version, round trips", ""), ("query-version, pipelined", "_pipelined")):
        bitlab, qsd = r[f"bitlab_rate{key}"], r.get(f"qsd_rate{key}")
        if qsd:
            ratio = bitlab / qsd
            rows.append((label, f"{bitlab:,.0f}/s", f"qemu-storage-daemon {qsd:,.0f}/s, ratio {ratio:.2f} "
                                                    f"(goal >= 0.5: {goal(ratio >= 0.5)})"))
        else:
            rows.append((label, f"{bitlab:,.0f}/s", "qemu-storage-daemon not installed"))
    width = max(len(a) for a, _, _ in rows)
    return "\n".join(f"  {a:<{width}}  {b:>12}  {c}" for a, b, c in rows)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    result = run(n)
    print(f"bitlab serve: fuzz ({n:,} inputs) and command rate")
    print(table(result))


if __name__ == "__main__":
    main()
