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

A scenario with ``"machine": "system"`` runs in ``qemu-system-x86_64 -M none``
instead, with the scenario's ``"drives"`` given as ``-drive if=none,...`` (images
made with qemu-img first); its output records ``machine`` and ``drives``.  The
system emulator's qemu-io (HMP) prints to its stdout, not into the HMP reply, so
an ``hmp`` step also records that text as ``stdout`` (qemu-io's timing figures
masked as ``TIMING``) and what the emulator wrote to stderr meanwhile as
``stderr``.  Scenarios with ``"mark-reply": true`` record for every ``qmp`` or
``hmp`` step ``events-before-reply``: how many of the step's events came on the
wire before the command's reply.  ``wait-job`` and ``settle-jobs`` steps wait
for jobs (see tools/golden_scenarios.py); their query-jobs polls are not recorded.

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
import socket
import struct
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

from bitlab.backends.qemu import qmp_chardev

QSD = "qemu-storage-daemon"
QEMU_SYSTEM = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"
QEMU_IO = "qemu-io"
REPO = Path(__file__).resolve().parent.parent
CONNECT_TIMEOUT = 5.0
STEP_TIMEOUT = 10.0
AUTO_NODE_RE = re.compile(r"(#block\d+)\d\d(?!\d)")
DISK_SIZE_RE = re.compile(r"disk size: [^\n]*")
ACTUAL_SIZE_RE = re.compile(r'"actual-size": \d+')
# qemu-io's report line: "64 KiB, 1 ops; 00.00 sec (309.4909 MiB/sec and 4703.6467 ops/sec)"
TIMING_RE = re.compile(r"; [0-9:.]+(?: sec)? \([^()]*/sec and [^()]* ops/sec\)")
JOB_POLL = 0.005  # seconds between query-jobs polls of a settle-jobs step
SETTLE_TIMEOUT = 20.0
SETTLED_STATUSES = {"concluded", "pending", "paused"}

Json = Any


class Crashed(Exception):
    """The daemon died (or hung, ``returncode`` None) while a step was running."""

    def __init__(self, returncode: int | None) -> None:
        super().__init__(f"qemu-storage-daemon exited with {returncode}")
        self.returncode = returncode


def qsd_version(program: str = QSD) -> str:
    """First line of ``<program> --version`` (qemu-storage-daemon by default)."""
    out = subprocess.run([program, "--version"], capture_output=True, text=True, check=True)
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


class RecordingClient(QMPClient):
    """A QMP client that also notes the wire order of events and replies.

    ``event_log`` keeps every event of the connection; ``reply_mark`` is the
    number of events that had arrived when the latest reply came in.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.event_log: list[dict[str, Json]] = []
        self.reply_mark = 0

    async def _on_message(self, msg: Any) -> None:
        if "event" in msg:
            self.event_log.append(dict(msg))
        else:
            self.reply_mark = len(self.event_log)
        await super()._on_message(msg)


def drive_option(drive: dict[str, Json]) -> str:
    """The ``-drive`` argument for one scenario drive (blkdebug rules flattened)."""
    opts: dict[str, Json] = {"if": "none", "id": drive["id"], "format": drive.get("format", "qcow2")}
    if "blkdebug" in drive:
        opts["file"] = {"driver": "blkdebug", "image": {"filename": drive["file"]}, **drive["blkdebug"]}
    else:
        opts["file"] = drive["file"]
    opts.update(drive.get("options", {}))
    parts: list[str] = []

    def flatten(prefix: str, value: Json) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                flatten(f"{prefix}.{key}" if prefix else key, sub)
        elif isinstance(value, list):
            for index, sub in enumerate(value):
                flatten(f"{prefix}.{index}", sub)
        elif isinstance(value, bool):
            parts.append(f"{prefix}={'on' if value else 'off'}")
        else:
            parts.append(f"{prefix}={str(value).replace(',', ',,')}")

    flatten("", opts)
    return ",".join(parts)


class Daemon:
    """One QEMU process (qsd or the system emulator) plus its QMP connection and NBD exports."""

    def __init__(
        self, workdir: Path, ctldir: Path, machine: str = "qsd", drives: list[dict[str, Json]] | None = None
    ) -> None:
        self.workdir = workdir
        self.ctldir = ctldir
        self.machine = machine
        self.drives = drives or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: RecordingClient | None = None
        self.exports: set[str] = set()
        self.nbd_started = False
        self.serial = 0
        self.log_start = 0
        self.consumed: dict[tuple[str, str, int], int] = {}

    @property
    def stdout_log(self) -> Path:
        """Where the system emulator's stdout goes (qemu-io output of HMP commands)."""
        return self.ctldir / f"stdout{self.serial}.log"

    def stdout_text(self) -> str:
        """The system emulator's stdout so far."""
        path = self.stdout_log
        return path.read_text(errors="replace") if path.exists() else ""

    def argv(self, sock: Path) -> list[str]:
        """Command line of the QEMU process for this flavour."""
        chardev = qmp_chardev(sock)
        if self.machine == "qsd":
            return [QSD, "--chardev", chardev, "--monitor", "chardev=qmp0"]
        argv = ["stdbuf", "-o0", QEMU_SYSTEM, "-M", "none", "-nodefaults", "-display", "none", "-accel", "tcg"]
        for drive in self.drives:
            argv += ["-drive", drive_option(drive)]
        return [*argv, "-chardev", chardev, "-mon", "chardev=qmp0,mode=control"]

    @property
    def nbd_socket(self) -> Path:
        """Path of the NBD server's unix socket."""
        return self.ctldir / f"nbd{self.serial}.sock"

    async def start(self) -> None:
        """Spawn the daemon in the work directory and connect to its monitor."""
        self.serial += 1
        sock = self.ctldir / f"qmp{self.serial}.sock"
        self.log_start = 0
        log = self.log_path.open("wb")
        out = log if self.machine == "qsd" else self.stdout_log.open("wb")
        self.proc = subprocess.Popen(
            self.argv(sock),
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=log,
        )
        log.close()
        out.close()
        self.exports = set()
        self.nbd_started = False
        self.consumed = {}
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while True:
            client = RecordingClient("golden")
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
        self.log_start = self.log_path.stat().st_size  # past "QEMU waiting for connection on: ..."

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

    @property
    def log_path(self) -> Path:
        """Where the current daemon's stderr (and a storage daemon's stdout) goes."""
        return self.ctldir / f"qsd{self.serial}.log"

    def log_text(self) -> str:
        """Return what the current daemon wrote there since its monitor connected."""
        log = self.log_path
        return log.read_bytes()[self.log_start:].decode(errors="replace") if log.exists() else ""

    async def kill(self) -> None:
        """SIGKILL the daemon (no clean shutdown) and disconnect."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(self.proc.wait)
        await self.stop()

    def events_seen(self) -> int:
        """How many events this connection has received so far."""
        return len(self.client.event_log) if self.client is not None else 0

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


NBD_OPTS_MAGIC = 0x49484156454F5054  # "IHAVEOPT"
NBD_REP_MAGIC = 0x3E889045565A9
NBD_REQUEST_MAGIC = 0x25609513
NBD_REPLY_MAGIC = 0x67446698


def nbd_write_noflush(sock: Path, name: str, offset: int, data: bytes) -> int:
    """Write ``data`` over NBD with a minimal client that never sends a flush.

    qemu-io flushes when it closes its NBD node, which triggers blkdebug's
    ``flush_to_disk`` event on the exported node; this client sends only
    NBD_OPT_GO, one NBD_CMD_WRITE and NBD_CMD_DISC.  Returns the NBD error
    number of the write (0 = success).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(STEP_TIMEOUT)
        conn.connect(str(sock))
        stream = conn.makefile("rb")

        def read(count: int) -> bytes:
            data_in = stream.read(count)
            if len(data_in) != count:
                raise OSError("NBD server closed the connection")
            return data_in

        magic, opts, _flags = struct.unpack(">QQH", read(18))
        if magic != 0x4E42444D41474943 or opts != NBD_OPTS_MAGIC:
            raise OSError("not an NBD newstyle server")
        conn.sendall(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
        payload = struct.pack(">I", len(name)) + name.encode() + struct.pack(">H", 0)
        conn.sendall(struct.pack(">QII", NBD_OPTS_MAGIC, 7, len(payload)) + payload)  # NBD_OPT_GO
        while True:
            rmagic, _opt, rtype, rlen = struct.unpack(">QIII", read(20))
            if rmagic != NBD_REP_MAGIC:
                raise OSError("bad NBD option reply")
            read(rlen)
            if rtype == 1:  # NBD_REP_ACK
                break
            if rtype & 0x80000000:
                raise OSError(f"NBD_OPT_GO refused ({rtype:#x})")
        conn.sendall(struct.pack(">IHHQQI", NBD_REQUEST_MAGIC, 0, 1, 1, offset, len(data)) + data)
        rmagic, error, _handle = struct.unpack(">IIQ", read(16))
        if rmagic != NBD_REPLY_MAGIC:
            raise OSError("bad NBD reply")
        conn.sendall(struct.pack(">IHHQQI", NBD_REQUEST_MAGIC, 0, 2, 2, 0, 0))  # NBD_CMD_DISC
        return int(error)


async def guest_io(daemon: Daemon, kind: str, spec: dict[str, Json]) -> dict[str, Json]:
    """Perform a write, zero, discard or flush through an NBD export with qemu-io.

    A write with ``"flush": false`` goes through :func:`nbd_write_noflush` instead.
    """
    node = spec["node"]
    failure = await daemon.ensure_export(node)
    if failure is not None:
        return {"ok": False, "setup": failure}
    if kind == "flush":
        cmd = "flush"
    else:
        off, length = spec["offset"], spec["length"]
        if kind == "write" and spec.get("flush", True) is False:
            data = bytes([spec.get("pattern", 0x41)]) * length
            error = await asyncio.to_thread(nbd_write_noflush, daemon.nbd_socket, node, off, data)
            return {"ok": True} if error == 0 else {"ok": False, "nbd-error": error}
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


async def wait_job(daemon: Daemon, spec: dict[str, Json]) -> dict[str, Json]:
    """Wait for a JOB_STATUS_CHANGE ``{id, status}`` not yet claimed by an earlier wait-job.

    Only events since the job's latest ``created`` count (job ids can be reused).
    """
    job_id, status = spec["id"], spec["status"]
    deadline = time.monotonic() + spec.get("timeout", 10)
    while daemon.client is not None:
        born, matches = -1, 0
        for index, ev in enumerate(daemon.client.event_log):
            data = ev.get("data", {})
            if ev.get("event") != "JOB_STATUS_CHANGE" or data.get("id") != job_id:
                continue
            if data.get("status") == "created" and status != "created":
                born, matches = index, 0
            elif data.get("status") == status:
                matches += 1
        key = (job_id, status, born)
        if matches > daemon.consumed.get(key, 0):
            daemon.consumed[key] = daemon.consumed.get(key, 0) + 1
            return {"ok": True}
        if time.monotonic() > deadline or (daemon.proc is not None and daemon.proc.poll() is not None):
            break
        await asyncio.sleep(0.002)
    return {"timeout": True}


async def settle_jobs(daemon: Daemon) -> dict[str, Json]:
    """Poll query-jobs (unrecorded) until no job runs: [] or all concluded/pending/paused, twice in a row."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    previous: Json = None
    while time.monotonic() < deadline:
        reply = await daemon.command("query-jobs", {})
        jobs = reply.get("return")
        if not isinstance(jobs, list):
            return {"timeout": True}
        settled = all(job.get("status") in SETTLED_STATUSES for job in jobs)
        state = [(job.get("id"), job.get("status")) for job in jobs]
        if settled and state == previous:
            return {"ok": True}
        previous = state if settled else None
        await asyncio.sleep(JOB_POLL)
    return {"timeout": True}


async def run_step(daemon: Daemon, step: dict[str, Json], workdir: str) -> Json:
    """Execute one step (with ``WORKDIR`` expanded) and return its raw result."""
    live = substitute(step, "WORKDIR", workdir)
    if "qmp" in live:
        if daemon.client is None:
            return {"not-running": True}
        return await daemon.raw(live["qmp"])
    if "hmp" in live:
        if daemon.client is None:
            return {"not-running": True}
        return await daemon.raw({"execute": "human-monitor-command", "arguments": {"command-line": live["hmp"]}})
    if "wait-job" in live:
        return await wait_job(daemon, live["wait-job"])
    if "settle-jobs" in live:
        return await settle_jobs(daemon)
    if "qemu-img" in live:
        return await asyncio.to_thread(run_tool, [QEMU_IMG, *live["qemu-img"]], daemon.workdir)
    for kind in ("write", "zero", "discard", "flush"):
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


def create_drives(drives: list[dict[str, Json]], workdir: Path) -> None:
    """Make the images of a system scenario's drives (those with a ``size``)."""
    for drive in drives:
        if "size" in drive:
            argv = [QEMU_IMG, "create", "-f", drive.get("format", "qcow2"), drive["file"], str(drive["size"])]
            result = run_tool(argv, workdir)
            if result["returncode"] != 0:
                raise RuntimeError(f"cannot create {drive['file']}: {result['stderr']}")


async def run_scenario(scenario: dict[str, Json], root: Path) -> dict[str, Json]:
    """Run one scenario in its own daemon and work directory."""
    base = Path(tempfile.mkdtemp(prefix="golden-", dir=root))
    workdir, ctldir = base / "work", base / "ctl"
    workdir.mkdir()
    ctldir.mkdir()
    wd = str(workdir)
    machine = scenario.get("machine", "qsd")
    drives = scenario.get("drives", [])
    mark_reply = bool(scenario.get("mark-reply"))
    daemon = Daemon(workdir, ctldir, machine, drives)
    records: list[dict[str, Json]] = []
    try:
        await asyncio.to_thread(create_drives, drives, workdir)
        await daemon.start()
        for step in scenario["steps"]:
            if records:
                records[-1]["events"] += daemon.drain_events()
            record: dict[str, Json] = {"step": step, "reply": None, "events": []}
            records.append(record)
            seen_before = daemon.events_seen()
            hmp_system = "hmp" in step and machine == "system"
            stdout_before = len(daemon.stdout_text()) if hmp_system else 0
            stderr_before = len(daemon.log_text()) if hmp_system else 0
            try:
                record["reply"] = await run_step(daemon, step, wd)
                if mark_reply and ("qmp" in step or "hmp" in step) and daemon.client is not None:
                    record["events-before-reply"] = daemon.client.reply_mark - seen_before
                reply = record["reply"]
                if "hmp" in step and isinstance(reply, dict) and isinstance(reply.get("return"), str):
                    reply["return"] = TIMING_RE.sub("; TIMING", reply["return"])
                if hmp_system:
                    record["stdout"] = TIMING_RE.sub("; TIMING", daemon.stdout_text()[stdout_before:])
                    record["stderr"] = daemon.log_text()[stderr_before:]
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
        for stream in ("stdout", "stderr"):
            if stream in record:
                record[stream] = scrub(substitute(record[stream], wd, "WORKDIR"))
    result: dict[str, Json] = {"name": scenario["name"]}
    if machine != "qsd":
        result["machine"] = machine
        result["drives"] = drives
    result["steps"] = records
    return result


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
            doc: dict[str, Json] = {"qemu": version}
            if any(s.get("machine") == "system" for s in chosen):
                doc["qemu-system"] = qsd_version(QEMU_SYSTEM)
            doc["scenarios"] = results
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
