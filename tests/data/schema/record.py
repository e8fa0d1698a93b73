"""Record real QEMU 7.2's introspection into this directory (run by hand, not by tests).

    .venv/bin/python tests/data/schema/record.py

Writes ``qsd-7.2.json.gz`` (qemu-storage-daemon) and ``system-7.2.json.gz``
(qemu-system-x86_64 -M none): each a dict with the replies of query-version,
query-qmp-schema, query-commands and (where QEMU has it) query-events.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError

from bitlab.backends.qemu import qmp_chardev

HERE = Path(__file__).parent
QUERIES = ("query-version", "query-qmp-schema", "query-commands", "query-events")


def _argv(kind: str, sock: str) -> list[str]:
    if kind == "qsd":
        return ["qemu-storage-daemon", "--chardev", qmp_chardev(sock),
                "--monitor", "chardev=qmp0"]
    return ["qemu-system-x86_64", "-M", "none", "-nodefaults", "-display", "none", "-accel", "tcg",
            "-chardev", qmp_chardev(sock), "-mon", "chardev=qmp0,mode=control"]


async def _record(kind: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        sock = f"{tmp}/qmp.sock"
        proc = subprocess.Popen(_argv(kind, sock))
        try:
            client = QMPClient(kind)
            for _ in range(200):
                try:
                    await client.connect(sock)
                    break
                except Exception:  # noqa: BLE001 - the socket is not there yet
                    await asyncio.sleep(0.02)
            out: dict = {}
            for query in QUERIES:
                try:
                    out[query] = await client.execute(query)
                except QMPError as err:
                    out[query] = {"error": str(err)}
            await client.disconnect()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    return out


def main() -> None:
    for kind in sys.argv[1:] or ("qsd", "system"):
        data = asyncio.run(_record(kind))
        path = HERE / f"{kind}-7.2.json.gz"
        text = json.dumps(data, indent=1, sort_keys=False) + "\n"
        with gzip.GzipFile(path, "wb", mtime=0) as fh:
            fh.write(text.encode())
        print(path, len(data["query-qmp-schema"]), "entries")


if __name__ == "__main__":
    main()
