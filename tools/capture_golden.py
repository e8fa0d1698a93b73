#!/usr/bin/env python3
"""Capture golden QMP transcripts from real QEMU 7.2 (qemu-storage-daemon).

Every scenario of ``tools/golden_scenarios.py`` (step kinds documented there)
runs in a fresh qemu-storage-daemon whose cwd is a fresh, empty work directory.
The exact replies (member order as on the wire), the events received after each
step (wire order, timestamp values set to null) and qemu-img results are
written to ``tests/golden/<group>.json``.  Masked so that reruns are identical:
the work directory's path (-> ``WORKDIR``), the two random digits of automatic
node names (``#block0NN``), ``actual-size`` values (-> null) and qemu-img's
``disk size:`` (-> ``DISK_SIZE``), which depend on the file system.

A step that kills the daemon ends its scenario with ``{"crashed": true,
"returncode": N, "stderr": ...}`` (``{"hung": true}`` if it stopped answering);
such a scenario is run a second time and the second run is kept.

Usage: ``.venv/bin/python tools/capture_golden.py [-o DIR] [-g GROUP ...] [-j N]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from golden_scenarios import GROUPS, SCENARIOS

QSD = "qemu-storage-daemon"
QEMU_IMG = "qemu-img"
QEMU_IO = "qemu-io"
REPO = Path(__file__).resolve().parent.parent
CONNECT_TIMEOUT = 5.0
STEP_TIMEOUT = 10.0
AUTO_NODE_RE = re.compile(r"(#block\d+)\d\d(?!\d)")
DISK_SIZE_RE = re.compile(r"disk size: [^\n]*")
ACTUAL_SIZE_RE = re.compile(r'"actual-size": \d+')

Json = Any


class Crashed(Exception):
    """The daemon died (or hung, ``returncode`` None) while a step was running."""

    def __init__(self, returncode: int | None) -> None:
        super().__init__(f"qemu-storage-daemon exited with {returncode}")
        self.returncode = returncode


def qsd_version() -> str:
    """First line of ``qemu-storage-daemon --version``."""
    out = subprocess.run([QSD, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0]


def substitute(value: Json, old: str, new: str) -> Json:
    """Return ``value`` with ``old`` replaced by ``new`` in every string (keys too)."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, list):
        return [substitute(v, old, new) for v in value]
    if isinstance(value, dict):
        return {substitute(k, old, new): substitute(v, old, new) for k, v in value.items()}
    return value


def scrub(value: Json) -> Json:
    """Mask what varies between runs: auto node-name digits, allocated sizes."""
    if isinstance(value, str):
        value = AUTO_NODE_RE.sub(r"\1NN", value)
        value = DISK_SIZE_RE.sub("disk size: DISK_SIZE", value)
        return ACTUAL_SIZE_RE.sub('"actual-size": null', value)
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, dict):
        return {scrub(k): None if k == "actual-size" else scrub(v) for k, v in value.items()}
    return value


def strip_timestamp(event: dict[str, Json]) -> dict[str, Json]:
    """Keep an event's ``timestamp`` member and its keys, drop their values."""
    out = dict(event)
    stamp = out.get("timestamp")
    if isinstance(stamp, dict):
        out["timestamp"] = {key: None for key in stamp}
    return out


class Daemon:
    """One qemu-storage-daemon process plus its QMP connection and NBD exports."""

    def __init__(self, workdir: Path, ctldir: Path) -> None:
        self.workdir = workdir
        self.ctldir = ctldir
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: QMPClient | None = None
        self.exports: set[str] = set()
        self.nbd_started = False
        self.serial = 0

    @property
    def nbd_socket(self) -> Path:
        """Path of the NBD server's unix socket."""
        return self.ctldir / f"nbd{self.serial}.sock"

    async def start(self) -> None:
        """Spawn the daemon in the work directory and connect to its monitor."""
        self.serial += 1
        sock = self.ctldir / f"qmp{self.serial}.sock"
        log = (self.ctldir / f"qsd{self.serial}.log").open("wb")
        self.proc = subprocess.Popen(
            [QSD, "--chardev", f"socket,id=qmp0,path={sock},server=on,wait=off", "--monitor", "chardev=qmp0"],
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        self.exports = set()
        self.nbd_started = False
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while True:
            client = QMPClient("golden")
            try:
                await client.connect(str(sock))
                break
            except QMPError:
                if self.proc.poll() is not None:
                    raise Crashed(self.proc.returncode) from None
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.005)
        self.client = client

    async def stop(self) -> None:
        """Quit the daemon (kill it if it does not go) and disconnect."""
        if self.client is not None:
            with contextlib.suppress(Exception):
                if self.proc is not None and self.proc.poll() is None:
                    await asyncio.wait_for(self.client.execute("quit"), 2)
            with contextlib.suppress(Exception):
                await self.client.disconnect()
            self.client = None
        if self.proc is not None:
            try:
                await asyncio.to_thread(self.proc.wait, 2)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(self.proc.wait)
            self.proc = None

    def log_text(self) -> str:
        """Return the current daemon's stdout and stderr so far."""
        log = self.ctldir / f"qsd{self.serial}.log"
        return log.read_text(errors="replace") if log.exists() else ""

    async def kill(self) -> None:
        """SIGKILL the daemon (no clean shutdown) and disconnect."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(self.proc.wait)
        await self.stop()

    def drain_events(self) -> list[dict[str, Json]]:
        """Return (and forget) every event received so far, in wire order."""
        if self.client is None:
            return []
        return [strip_timestamp(dict(ev)) for ev in self.client.events.clear()]

    async def raw(self, msg: dict[str, Json]) -> dict[str, Json]:
        """Send ``msg`` as is (no ``id`` added) and return the reply object."""
        assert self.client is not None and self.proc is not None
        try:
            # _raw is qemu.qmp's documented way to send a message verbatim.
            reply = await asyncio.wait_for(self.client._raw(msg, assign_id=False), STEP_TIMEOUT)
        except (TimeoutError, QMPError, EOFError, OSError) as exc:
            try:
                returncode = await asyncio.to_thread(self.proc.wait, 2)
            except subprocess.TimeoutExpired:
                raise Crashed(None) from exc
            raise Crashed(returncode) from exc
        return dict(reply)

    async def command(self, execute: str, arguments: dict[str, Json]) -> dict[str, Json]:
        """Run a set-up command whose reply is not recorded."""
        return await self.raw({"execute": execute, "arguments": arguments})

    async def ensure_export(self, node: str) -> dict[str, Json] | None:
        """Export ``node`` writable over NBD; return an error reply or None."""
        if not self.nbd_started:
            reply = await self.command(
                "nbd-server-start",
                {"addr": {"type": "unix", "data": {"path": str(self.nbd_socket)}}},
            )
            if "error" in reply:
                return reply
            self.nbd_started = True
        if node not in self.exports:
            reply = await self.command(
                "block-export-add",
                {"type": "nbd", "id": f"exp-{node}", "node-name": node, "name": node, "writable": True},
            )
            if "error" in reply:
                return reply
            self.exports.add(node)
        return None


def run_tool(argv: list[str], cwd: Path) -> dict[str, Json]:
    """Run an external QEMU tool and return its stdout, stderr and exit code."""
    out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=30)
    return {"stdout": out.stdout, "stderr": out.stderr, "returncode": out.returncode}


async def guest_io(daemon: Daemon, kind: str, spec: dict[str, Json]) -> dict[str, Json]:
    """Perform a write, zero or discard through an NBD export with qemu-io."""
    node = spec["node"]
    failure = await daemon.ensure_export(node)
    if failure is not None:
        return {"ok": False, "setup": failure}
    off, length = spec["offset"], spec["length"]
    if kind == "write":
        cmd = f"write -P {spec.get('pattern', 0x41):#x} {off} {length}"
    elif kind == "zero":
        cmd = f"write -z {off} {length}"
    else:
        cmd = f"discard {off} {length}"
    url = f"nbd+unix:///{node}?socket={daemon.nbd_socket}"
    argv = [QEMU_IO, "-f", "raw", "-d", "unmap", url, "-c", cmd]
    result = await asyncio.to_thread(run_tool, argv, daemon.workdir)
    # qemu-io may exit 0 although the request failed ("write failed: ...").
    failed = "failed" in result["stdout"] or result["stderr"]
    if result["returncode"] == 0 and not failed:
        return {"ok": True}
    return {"ok": False, **result}


async def run_step(daemon: Daemon, step: dict[str, Json], workdir: str) -> Json:
    """Execute one step (with ``WORKDIR`` expanded) and return its raw result."""
    live = substitute(step, "WORKDIR", workdir)
    if "qmp" in live:
        if daemon.client is None:
            return {"not-running": True}
        return await daemon.raw(live["qmp"])
    if "qemu-img" in live:
        return await asyncio.to_thread(run_tool, [QEMU_IMG, *live["qemu-img"]], daemon.workdir)
    for kind in ("write", "zero", "discard"):
        if kind in live:
            return await guest_io(daemon, kind, live[kind])
    if "restart" in live:
        await daemon.stop()
        await daemon.start()
        return {"ok": True}
    if "kill" in live:
        await daemon.kill()
        await daemon.start()
        return {"ok": True}
    if "sleep" in live:
        await asyncio.sleep(live["sleep"])
        return {"ok": True}
    raise ValueError(f"unknown step kind: {step}")


async def run_scenario(scenario: dict[str, Json], root: Path) -> dict[str, Json]:
    """Run one scenario in its own daemon and work directory."""
    base = Path(tempfile.mkdtemp(prefix="golden-", dir=root))
    workdir, ctldir = base / "work", base / "ctl"
    workdir.mkdir()
    ctldir.mkdir()
    wd = str(workdir)
    daemon = Daemon(workdir, ctldir)
    records: list[dict[str, Json]] = []
    try:
        await daemon.start()
        for step in scenario["steps"]:
            if records:
                records[-1]["events"] += daemon.drain_events()
            record: dict[str, Json] = {"step": step, "reply": None, "events": []}
            records.append(record)
            try:
                record["reply"] = await run_step(daemon, step, wd)
            except Crashed as crash:
                if crash.returncode is None:
                    record["reply"] = {"hung": True}
                else:
                    record["reply"] = {"crashed": True, "returncode": crash.returncode, "stderr": daemon.log_text()}
                record["events"] += daemon.drain_events()
                break
            await asyncio.sleep(step.get("settle", 0))
            record["events"] += daemon.drain_events()
            if daemon.proc is not None and daemon.proc.poll() is not None and "qmp" in step:
                # The daemon exited (quit, or a crash after replying).
                if step["qmp"].get("execute") != "quit":
                    record["exited"] = daemon.proc.returncode
                await daemon.stop()
    finally:
        await daemon.stop()
        shutil.rmtree(base, ignore_errors=True)
    for record in records:
        record["reply"] = scrub(substitute(record["reply"], wd, "WORKDIR"))
        record["events"] = scrub(substitute(record["events"], wd, "WORKDIR"))
    return {"name": scenario["name"], "steps": records}


async def capture(groups: list[str], outdir: Path, jobs: int) -> None:
    """Capture the selected groups, ``jobs`` scenarios at a time."""
    version = qsd_version()
    root = Path(tempfile.mkdtemp(prefix="bitlab-golden-"))
    sem = asyncio.Semaphore(jobs)

    async def one(scenario: dict[str, Json]) -> dict[str, Json]:
        async with sem:
            result = await run_scenario(scenario, root)
            if any("crashed" in r["reply"] or "hung" in r["reply"] for r in result["steps"]):
                result = await run_scenario(scenario, root)  # rule out a rare random crash
            return result

    try:
        for group in groups:
            chosen = [s for s in SCENARIOS if s["group"] == group]
            results = await asyncio.gather(*(one(s) for s in chosen))
            path = outdir / f"{group}.json"
            doc = {"qemu": version, "scenarios": results}
            path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
            steps = sum(len(r["steps"]) for r in results)
            print(f"{path}: {len(results)} scenarios, {steps} steps, {path.stat().st_size // 1024} KiB")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    """Parse the command line and run the capture."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--outdir", type=Path, default=REPO / "tests" / "golden")
    parser.add_argument("-g", "--group", action="append", choices=GROUPS, help="capture only this group (repeatable)")
    parser.add_argument(
        "-j", "--jobs", type=int, default=os.cpu_count() or 1, help="scenarios run in parallel (default: CPU count)"
    )
    args = parser.parse_args()
    args.outdir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    asyncio.run(capture(args.group or list(GROUPS), args.outdir, max(1, args.jobs)))
    print(f"done in {time.monotonic() - start:.1f} s")


if __name__ == "__main__":
    main()
