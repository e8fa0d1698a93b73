#!/usr/bin/env python3
"""Record real QEMU 7.2's block mirror job (blockdev-mirror / drive-mirror) for the simulator author.

    .venv/bin/python tools/probe_mirror.py --daemon qsd|system --out DIR [--only NAME[,NAME]] [--repeat N]

Every scenario (see SCENARIOS) runs on fresh daemons (one per phase) in fresh temp directories and is written to
DIR/<daemon>/<scenario>.json: {"scenario", "daemon", "version", "runs": [{"phases": [{"name", "workdir", "steps"}]}]}.
A step is one of
  {"kind": "qmp", "execute", "arguments", "reply": {"return"|"error"}, "events": [...], "events-before-reply": n}
  {"kind": "poll", "t", "query-jobs", "query-block-jobs", "events", "repeat": n}  (identical consecutive polls merged)
  {"kind": "wait", "seconds", "events"}           events that arrived while only listening
  {"kind": "shell", "argv", "rc", "stdout", "stderr"}   qemu-img / qemu-io
  {"kind": "hmp", ... as qmp, plus "stdout": what the system emulator printed (HMP qemu-io writes there)}
  {"kind": "note", "text"}
Events are full dicts (timestamps included), in wire order, attached to the step during which they were read.
A raw JSON socket is used (not QMPClient) so that the order of events and replies is exactly the wire order.
"""

from __future__ import annotations

import argparse
import json
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

MiB = 1 << 20
QSD = "qemu-storage-daemon"
SYSTEM = "qemu-system-x86_64"


class Died(Exception):
    pass


class Daemon:
    """One QEMU process with a raw QMP socket; everything it does is appended to ``steps``."""

    def __init__(self, kind: str, workdir: Path, steps: list, drives: list[str] | None = None) -> None:
        self.kind = kind
        self.dir = workdir
        self.steps = steps
        self.drives = drives or []
        self.sock_path = workdir / "qmp.sock"
        self.nbd_sock = workdir / "nbd.sock"
        self.events: list[dict] = []
        self.serial = 0
        self.exports: set[str] = set()
        self.nbd = False
        self.buf = b""
        self.stdout_path = workdir / "stdout.log"
        self.stdout_pos = 0
        chardev = f"socket,id=qmp0,path={self.sock_path},server=on,wait=on"
        if kind == "qsd":
            argv = [QSD, "--chardev", chardev, "--monitor", "chardev=qmp0"]
        else:
            argv = ["stdbuf", "-o0", SYSTEM, "-M", "none", "-nodefaults", "-display", "none", "-accel", "tcg"]
            for d in self.drives:
                argv += ["-drive", d]
            argv += ["-chardev", chardev, "-mon", "chardev=qmp0,mode=control"]
        self.argv = argv
        self.proc = subprocess.Popen(argv, cwd=workdir, stdin=subprocess.DEVNULL,
                                     stdout=self.stdout_path.open("wb"), stderr=(workdir / "stderr.log").open("wb"))
        deadline = time.monotonic() + 10
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.s.connect(str(self.sock_path))
                break
            except OSError as err:
                self.s.close()
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise Died(f"daemon did not start: rc={self.proc.poll()} "
                               f"{(workdir / 'stderr.log').read_text(errors='replace')}") from err
                time.sleep(0.002)
        self.greeting = self._read_msg(5)
        self.qmp("qmp_capabilities")

    # --- wire -------------------------------------------------------------------------------------------
    def _read_msg(self, timeout: float | None) -> dict | None:
        end = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = None if end is None else max(0.0, end - time.monotonic())
            r, _, _ = select.select([self.s], [], [], left)
            if not r:
                return None
            chunk = self.s.recv(1 << 20)
            if not chunk:
                raise Died(f"QMP connection closed; rc={self.proc.poll()} "
                           f"stderr={(self.dir / 'stderr.log').read_text(errors='replace')[-2000:]}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        if not line.strip():
            return self._read_msg(timeout)
        return json.loads(line)

    def _drain(self, seconds: float = 0.0) -> None:
        end = time.monotonic() + seconds
        while True:
            msg = self._read_msg(max(0.0, end - time.monotonic()))
            if msg is None:
                return
            self.events.append(msg)

    def _take_events(self) -> list[dict]:
        ev, self.events = self.events, []
        return ev

    def raw(self, execute: str, arguments: dict | None = None, timeout: float = 30) -> tuple[dict, int]:
        self._drain(0)
        n_before = len(self.events)
        self.serial += 1
        ident = f"c{self.serial}"
        msg: dict = {"execute": execute}
        if arguments is not None:
            msg["arguments"] = arguments
        msg["id"] = ident
        self.s.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            m = self._read_msg(timeout)
            if m is None:
                raise Died(f"no reply to {execute} in {timeout}s")
            if "event" in m:
                self.events.append(m)
                continue
            if m.get("id") == ident:
                m = {k: v for k, v in m.items() if k != "id"}
                return m, len(self.events) - n_before

    def qmp(self, execute: str, arguments: dict | None = None, note: str | None = None, record: bool = True,
            settle: float = 0.0) -> dict:
        """Send a command; record it with its reply and all events since the previous step."""
        t = time.monotonic()
        reply, before = self.raw(execute, arguments)
        if settle:
            self._drain(settle)
        if record:
            step = {"kind": "qmp", "execute": execute}
            if arguments is not None:
                step["arguments"] = arguments
            step["reply"] = reply
            step["ms"] = round((time.monotonic() - t) * 1000, 2)
            step["events-before-reply"] = before
            step["events"] = self._take_events()
            if note:
                step["note"] = note
            self.steps.append(step)
        return reply

    def ok(self, execute: str, arguments: dict | None = None, **kw) -> Any:
        r = self.qmp(execute, arguments, **kw)
        return r.get("return")

    def hmp(self, line: str) -> dict:
        reply, before = self.raw("human-monitor-command", {"command-line": line})
        out = self._stdout()
        step = {"kind": "hmp", "execute": "human-monitor-command", "arguments": {"command-line": line},
                "reply": reply, "stdout": out, "events-before-reply": before, "events": self._take_events()}
        self.steps.append(step)
        return step

    def _stdout(self) -> str:
        data = self.stdout_path.read_bytes()
        out = data[self.stdout_pos:].decode(errors="replace")
        self.stdout_pos = len(data)
        return out

    def note(self, text: str) -> None:
        self.steps.append({"kind": "note", "text": text})

    def wait(self, seconds: float) -> list[dict]:
        self._drain(seconds)
        ev = self._take_events()
        self.steps.append({"kind": "wait", "seconds": seconds, "events": ev})
        return ev

    # --- jobs --------------------------------------------------------------------------------------------
    def poll(self, until: Callable[[list, list, list], bool], interval: float = 0.005, timeout: float = 30.0,
             dedupe: bool = True) -> tuple[list, list]:
        """Poll query-jobs and query-block-jobs until ``until(jobs, block_jobs, events_so_far)``."""
        start = time.monotonic()
        seen: list[dict] = []
        last = None
        while True:
            j, _ = self.raw("query-jobs")
            b, _ = self.raw("query-block-jobs")
            jobs, bjobs = j.get("return", j), b.get("return", b)
            ev = self._take_events()
            seen += ev
            t = round(time.monotonic() - start, 4)
            key = json.dumps([jobs, bjobs])
            if dedupe and not ev and last is not None and last["_key"] == key:
                last["repeat"] += 1
                last["t-last"] = t
            else:
                last = {"kind": "poll", "t": t, "query-jobs": jobs, "query-block-jobs": bjobs, "events": ev,
                        "repeat": 0, "_key": key}
                self.steps.append(last)
            if until(jobs, bjobs, seen):
                break
            if time.monotonic() - start > timeout:
                self.note(f"poll timed out after {timeout}s")
                break
            time.sleep(interval)
        for s in self.steps:
            s.pop("_key", None)
        return jobs, bjobs

    def wait_status(self, job: str, statuses: set[str] | str, timeout: float = 30.0, **kw) -> tuple[list, list]:
        if isinstance(statuses, str):
            statuses = {statuses}

        def cond(jobs, bjobs, ev):
            st = [x["status"] for x in jobs if x["id"] == job]
            if "gone" in statuses and not st:
                return True
            return bool(st) and st[0] in statuses
        return self.poll(cond, timeout=timeout, **kw)

    def wait_gone(self, job: str, timeout: float = 30.0, **kw) -> tuple[list, list]:
        return self.wait_status(job, {"gone"}, timeout=timeout, **kw)

    def wait_event(self, name: str, timeout: float = 30.0, **kw) -> tuple[list, list]:
        return self.poll(lambda j, b, ev: any(e["event"] == name for e in ev), timeout=timeout, **kw)

    # --- graph & guest I/O -----------------------------------------------------------------------------
    def graph(self, tag: str = "") -> None:
        self.qmp("query-named-block-nodes", {"flat": True}, note=tag or None)
        self.qmp("x-debug-query-block-graph", note=tag or None)
        if self.kind == "system":
            self.qmp("query-block", note=tag or None)

    def export(self, node: str) -> None:
        """NBD export of ``node`` for guest writes (qsd; also usable on the system emulator)."""
        if not self.nbd:
            self.qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": str(self.nbd_sock)}}})
            self.nbd = True
        self.qmp("block-export-add", {"type": "nbd", "id": f"exp-{node}", "node-name": node, "name": node,
                                      "writable": True})
        self.exports.add(node)

    def gw(self, node: str, cmd: str, via: str | None = None) -> str:
        """Guest I/O: NBD (qsd, or via='nbd') or HMP qemu-io (system emulator)."""
        via = via or ("hmp" if self.kind == "system" else "nbd")
        if via == "hmp":
            st = self.hmp(f'qemu-io {node} "{cmd}"')
            return st["stdout"] + json.dumps(st["reply"])
        self._drain(0)
        r = shell(self, ["qemu-io", "-f", "raw", f"nbd+unix:///{node}?socket={self.nbd_sock}", "-c", cmd])
        self.steps[-1]["events"] = self._take_events()
        return r.stdout + r.stderr

    def close(self) -> None:
        if getattr(self, "closed", False):
            return
        self.closed = True
        try:
            if self.proc.poll() is None:
                try:
                    self.qmp("quit", settle=0.05)
                except (Died, OSError) as e:
                    self.note(f"quit: connection ended before/after the reply ({e!r})")
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.note("daemon killed after quit timeout")
        finally:
            self.s.close()
            err = (self.dir / "stderr.log").read_text(errors="replace")
            if err.strip():
                self.steps.append({"kind": "note", "text": "daemon stderr", "stderr": err})
            if self.kind == "system":
                out = self._stdout()
                if out.strip():
                    self.steps.append({"kind": "note", "text": "daemon stdout (rest)", "stdout": out})


def shell(d: Daemon | None, argv: list[str], cwd: Path | None = None, record: bool = True,
          steps: list | None = None) -> subprocess.CompletedProcess:
    cwd = cwd or (d.dir if d else None)
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
    if record:
        target = steps if steps is not None else d.steps
        target.append({"kind": "shell", "argv": argv, "rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr})
    return r


def img(dirp: Path, name: str, size: str = "64M", *opts: str, writes: list[str] = (), steps: list | None = None,
        fmt: str = "qcow2") -> str:
    """Create an image file in ``dirp`` (qemu-img) and write data into it offline with qemu-io."""
    shell(None, ["qemu-img", "create", "-f", fmt, *opts, name, size], cwd=dirp, steps=steps)
    for w in writes:
        shell(None, ["qemu-io", "-f", fmt, name, "-c", w], cwd=dirp, steps=steps)
    return name


def qcow(node: str, filename: str, **extra) -> dict:
    d = {"driver": "qcow2", "node-name": node, "file": {"driver": "file", "node-name": f"{node}-file",
                                                       "filename": filename}}
    d.update(extra)
    return d


DATA = ["write -P 0x41 0 1M", "write -P 0x42 5M 64k", "write -P 0x43 10M 512"]


# =====================================================================================================================
class Ctx:
    """One run of one scenario: phases, each with its own fresh daemon and temp dir."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.root = root
        self.phases: list[dict] = []
        self.daemons: list[Daemon] = []

    def phase(self, name: str, files: Callable[[Path, list], None] | None = None,
              drives: list[str] | None = None, kind: str | None = None) -> Daemon:
        wd = Path(tempfile.mkdtemp(prefix="mirror-", dir=self.root))
        steps: list = []
        self.phases.append({"name": name, "workdir": str(wd), "steps": steps})
        if files:
            files(wd, steps)
        d = Daemon(kind or self.kind, wd, steps, drives)
        self.phases[-1]["daemon"] = d.kind
        self.phases[-1]["argv"] = d.argv
        self.daemons.append(d)
        return d

    def close(self) -> None:
        for d in self.daemons:
            try:
                d.close()
            except Exception as e:  # noqa: BLE001
                d.note(f"close failed: {e!r}")
                if d.proc.poll() is None:
                    d.proc.kill()
                    d.proc.wait()
        self.daemons = []


def two_images(src_writes=DATA, tgt_size="64M", tgt_opts=(), extra=None):
    def files(wd: Path, steps: list) -> None:
        img(wd, "src.qcow2", "64M", writes=src_writes, steps=steps)
        img(wd, "tgt.qcow2", tgt_size, *tgt_opts, steps=steps)
        if extra:
            extra(wd, steps)
    return files


def add_pair(d: Daemon, tgt: dict | None = None) -> None:
    d.qmp("blockdev-add", qcow("src", "src.qcow2"))
    d.qmp("blockdev-add", tgt or qcow("tgt", "tgt.qcow2"))


def mirror(d: Daemon, **kw) -> dict:
    args = {"job-id": "j", "device": "src", "target": "tgt", "sync": "full"}
    args.update(kw)
    args = {k: v for k, v in args.items() if v is not None}
    return d.qmp("blockdev-mirror", args)


def finish_ready(d: Daemon, job: str = "j", cmd: str = "job-complete") -> None:
    """Wait for READY, then complete and wait until the job is gone."""
    d.wait_status(job, {"ready", "concluded", "gone"})
    d.ok(cmd, {"id": job} if cmd.startswith("job-") else {"device": job})
    d.wait_gone(job)


def kill_job(d: Daemon, job: str) -> None:
    d.qmp("block-job-cancel", {"device": job, "force": True})
    d.wait_status(job, {"gone", "concluded"})
    jobs = d.ok("query-jobs", record=False) or []
    if any(x["id"] == job for x in jobs):
        d.qmp("job-dismiss", {"id": job})


def try_mirror(d: Daemon, note: str, **kw) -> dict:
    """A blockdev-mirror expected to fail; if it starts a job, cancel it (force) and wait."""
    d.note(note)
    r = mirror(d, **kw)
    if "return" in r:
        kill_job(d, kw.get("job-id", "j") or "src")
    return r


def offline_check(d: Daemon, checks: list[tuple[str, str]],
                  compare: tuple[str, str] | None = ("src.qcow2", "tgt.qcow2")) -> None:
    """After blockdev-del of the nodes: qemu-img map/compare and qemu-io reads on the files."""
    for f in {c[0] for c in checks} | ({compare[1]} if compare else set()):
        shell(d, ["qemu-img", "map", "--output=json", "-U", f])
    if compare:
        shell(d, ["qemu-img", "compare", "-U", *compare])
    for f, c in checks:
        fmt = "raw" if f.endswith(".raw") else "qcow2"
        shell(d, ["qemu-io", "-r", "-U", "-f", fmt, f, "-c", c])


# =====================================================================================================================
def sc_schema(c: Ctx) -> None:
    d = c.phase("schema")
    d.qmp("query-version")
    schema, _ = d.raw("query-qmp-schema")
    ents = {e["name"]: e for e in schema["return"]}

    def resolve(name, depth=0, seen=None):
        seen = seen if seen is not None else set()
        e = ents.get(name)
        if e is None or name in seen or depth > 3:
            return name
        seen.add(name)
        e = dict(e)
        if e["meta-type"] == "object":
            e["members"] = [dict(m, type_resolved=resolve(m["type"], depth + 1, seen)) for m in e["members"]]
        elif e["meta-type"] == "array":
            e["element-type_resolved"] = resolve(e["element-type"], depth + 1, seen)
        elif e["meta-type"] == "alternate":
            e["members"] = [dict(m, type_resolved=resolve(m["type"], depth + 1, seen)) for m in e["members"]]
        return e

    out = {}
    for cmd in ("blockdev-mirror", "drive-mirror", "block-job-complete", "job-complete", "block-job-cancel",
                "blockdev-backup"):
        e = ents.get(cmd)
        if e:
            out[cmd] = {"command": e, "arg-type": resolve(e["arg-type"])}
    for ev in ("BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED", "BLOCK_JOB_ERROR",
               "JOB_STATUS_CHANGE", "BLOCK_JOB_PENDING"):
        e = ents.get(ev)
        if e:
            out[ev] = {"event": e, "arg-type": resolve(e.get("arg-type", ""))}
    # query-jobs / query-block-jobs return types
    for cmd in ("query-jobs", "query-block-jobs"):
        e = ents.get(cmd)
        if e:
            out[cmd] = {"command": e, "ret-type": resolve(e["ret-type"])}
    d.steps.append({"kind": "note", "text": "schema extract", "schema": out})


def sc_errors(c: Ctx) -> None:
    def files(wd, steps):
        img(wd, "src.qcow2", "64M", writes=["write -P 0x41 0 8M"], steps=steps)
        for n in ("tgt", "tgt2", "bk", "src2", "ov"):
            img(wd, f"{n}.qcow2", "64M", steps=steps)
        img(wd, "tgt32.qcow2", "32M", steps=steps)

    # --- A: errors of the command itself ------------------------------------------------------------------
    d = c.phase("static", files)
    add_pair(d)
    d.qmp("blockdev-add", qcow("tgt32", "tgt32.qcow2"))
    d.qmp("blockdev-add", {"driver": "null-co", "node-name": "n0", "size": 64 * MiB, "read-zeroes": True})
    try_mirror(d, "device missing", device="nope")
    try_mirror(d, "target missing", target="nope")
    try_mirror(d, "device == target", target="src")
    try_mirror(d, "target of different size (32M)", target="tgt32")
    for g in (1000, 256, 512, 128 * MiB, 64 * MiB, 0):
        try_mirror(d, f"granularity {g}", granularity=g)
    for b in (0, -1, 1, 4096):
        try_mirror(d, f"buf-size {b}", **{"buf-size": b})
    try_mirror(d, "speed -1", speed=-1)
    for s in ("incremental", "bitmap", "none", "top", "bogus"):
        try_mirror(d, f"sync {s}", sync=s)
    d.qmp("block-dirty-bitmap-add", {"node": "src", "name": "b0", "granularity": 65536})
    for s in ("incremental", "bitmap", "full"):
        try_mirror(d, f"sync {s} with bitmap argument", sync=s, bitmap="b0")
    try_mirror(d, "job-id '#x'", **{"job-id": "#x"})
    try_mirror(d, "job-id ''", **{"job-id": ""})
    d.note("job-id omitted (blockdev-add node src)")
    r = mirror(d, **{"job-id": None})
    if "return" in r:
        jobs = d.ok("query-jobs")
        for jb in jobs:
            kill_job(d, jb["id"])
    try_mirror(d, "filter-node-name that exists (n0)", **{"filter-node-name": "n0"})
    try_mirror(d, "filter-node-name that is the source", **{"filter-node-name": "src"})
    try_mirror(d, "filter-node-name '#f'", **{"filter-node-name": "#f"})
    try_mirror(d, "filter-node-name 'myfilter' (valid)", **{"filter-node-name": "myfilter", "speed": 65536})
    try_mirror(d, "replaces missing node", replaces="nope")
    try_mirror(d, "replaces the source itself", replaces="src")
    try_mirror(d, "replaces the target", replaces="tgt")
    try_mirror(d, "replaces n0 (unrelated)", replaces="n0")
    try_mirror(d, "copy-mode write-blocking", **{"copy-mode": "write-blocking"})
    try_mirror(d, "copy-mode bogus", **{"copy-mode": "bogus"})
    try_mirror(d, "on-source-error enospc", **{"on-source-error": "enospc"})
    try_mirror(d, "on-target-error enospc", **{"on-target-error": "enospc"})
    try_mirror(d, "on-source-error stop + on-target-error ignore", **{"on-source-error": "stop",
                                                                       "on-target-error": "ignore"})
    try_mirror(d, "target n0 (null-co, no parent)", target="n0")
    try_mirror(d, "source n0 (null-co) to tgt", device="n0")
    try_mirror(d, "unmap false", unmap=False)
    try_mirror(d, "auto-finalize/auto-dismiss false", **{"auto-finalize": False, "auto-dismiss": False})
    d.qmp("job-complete", {"id": "nope"})
    d.qmp("block-job-complete", {"device": "nope"})
    d.qmp("block-job-cancel", {"device": "nope"})
    d.qmp("job-cancel", {"id": "nope"})

    # --- B: with a slow mirror running ----------------------------------------------------------------------
    d = c.phase("running-mirror", files)
    add_pair(d)
    for n in ("tgt2", "bk", "src2"):
        d.qmp("blockdev-add", qcow(n, f"{n}.qcow2"))
    mirror(d, speed=65536)
    d.wait_status("j", "running")
    d.graph("while running")
    try_mirror(d, "job-id duplicate of a running job (src2->tgt2)", device="src2", target="tgt2")
    d.poll(lambda *a: True)
    try_mirror(d, "second mirror of the same source (j2, to tgt2)", **{"job-id": "j2"}, target="tgt2")
    d.poll(lambda *a: True)
    try_mirror(d, "second mirror of the same source to the same target", **{"job-id": "j2"})
    d.poll(lambda *a: True)
    try_mirror(d, "mirror src2 to tgt (target busy)", **{"job-id": "j2"}, device="src2")
    d.poll(lambda *a: True)
    d.note("blockdev-backup of the source while the mirror runs")
    r = d.qmp("blockdev-backup", {"job-id": "b", "device": "src", "target": "bk", "sync": "full", "speed": 65536})
    d.poll(lambda *a: True)
    if "return" in r:
        kill_job(d, "b")
    d.note("blockdev-backup of the mirror target while the mirror runs")
    r = d.qmp("blockdev-backup", {"job-id": "b2", "device": "tgt", "target": "bk", "sync": "full", "speed": 65536})
    d.poll(lambda *a: True)
    if "return" in r:
        kill_job(d, "b2")
    d.qmp("blockdev-del", {"node-name": "src"})
    d.poll(lambda *a: True)
    d.qmp("blockdev-del", {"node-name": "tgt"})
    d.poll(lambda *a: True)
    d.qmp("job-complete", {"id": "j"})
    d.poll(lambda *a: True)
    d.qmp("block-job-complete", {"device": "j"})
    d.poll(lambda *a: True)
    d.qmp("job-finalize", {"id": "j"})
    d.poll(lambda *a: True)
    d.qmp("job-dismiss", {"id": "j"})
    d.poll(lambda *a: True)
    d.qmp("block-job-finalize", {"id": "j"})
    d.poll(lambda *a: True)
    d.qmp("block-job-dismiss", {"id": "j"})
    d.poll(lambda *a: True)
    d.qmp("block-job-set-speed", {"device": "j", "speed": -1})
    d.poll(lambda *a: True)
    d.graph("still running")
    kill_job(d, "j")
    d.graph("after force cancel")

    # --- C: running blockdev-backup, then a mirror of its source ---------------------------------------------
    d = c.phase("running-backup", files)
    add_pair(d)
    d.qmp("blockdev-add", qcow("bk", "bk.qcow2"))
    d.qmp("blockdev-backup", {"job-id": "b", "device": "src", "target": "bk", "sync": "full", "speed": 65536})
    d.wait_status("b", "running")
    try_mirror(d, "mirror of a source that has a running blockdev-backup")
    d.qmp("block-job-complete", {"device": "b"})
    d.qmp("job-complete", {"id": "b"})
    try_mirror(d, "mirror of the backup's target", device="bk", **{"job-id": "j3"})
    try_mirror(d, "mirror to the backup's target", target="bk", **{"job-id": "j4"})
    kill_job(d, "b")

    # --- D: target with a parent ------------------------------------------------------------------------------
    d = c.phase("target-with-parent", files)
    add_pair(d)
    d.qmp("blockdev-add", qcow("ov", "ov.qcow2", backing="tgt"))
    try_mirror(d, "target is the backing of another node (ov)")
    d.qmp("blockdev-del", {"node-name": "ov"})
    d.export("tgt")
    try_mirror(d, "target exported writable over NBD")
    d.qmp("block-export-del", {"id": "exp-tgt"})
    d.wait(0.1)
    d.qmp("block-export-add", {"type": "nbd", "id": "ro", "node-name": "tgt", "name": "tgt", "writable": False})
    try_mirror(d, "target exported read-only over NBD")
    d.qmp("block-export-del", {"id": "ro"})
    d.wait(0.1)
    d.export("src")
    try_mirror(d, "source exported writable over NBD (mirror starts?)")
    d.graph("after")
    d.qmp("blockdev-add", qcow("ov", "ov.qcow2", backing="src"))
    try_mirror(d, "source is the backing of another node (ov)", speed=65536)
    if c.kind == "system":
        d.hmp("qemu-io src \"write -P 0x55 0 64k\"")


def sc_full_basic(c: Ctx) -> None:
    for name, extra in (("default", {}), ("manual", {"auto-finalize": False, "auto-dismiss": False})):
        d = c.phase(name, two_images())
        add_pair(d)
        d.graph("before")
        mirror(d, **extra)
        d.wait_status("j", {"ready", "concluded", "gone"})
        d.wait(0.05)
        d.qmp("query-jobs")
        d.qmp("query-block-jobs")
        d.graph("while ready")
        d.qmp("job-complete", {"id": "j"})
        if extra:
            d.wait_status("j", {"pending", "concluded", "gone"})
            d.graph("pending")
            d.qmp("job-finalize", {"id": "j"})
            d.wait_status("j", {"concluded", "gone"})
            d.graph("concluded")
            d.qmp("job-dismiss", {"id": "j"})
        d.wait_gone("j")
        d.wait(0.05)
        d.graph("after complete")
        d.qmp("blockdev-del", {"node-name": "tgt"})
        d.qmp("blockdev-del", {"node-name": "src"})
        d.graph("after blockdev-del")
        offline_check(d, [("tgt.qcow2", "read -P 0x41 0 1M"), ("tgt.qcow2", "read -P 0x42 5M 64k"),
                          ("tgt.qcow2", "read -P 0x43 10M 512")])
        shell(d, ["qemu-img", "map", "--output=json", "-U", "src.qcow2"])
        shell(d, ["qemu-img", "info", "-U", "--output=json", "tgt.qcow2"])


def sc_full_nulls(c: Ctx) -> None:
    d = c.phase("null-co-source", two_images(src_writes=[]))
    d.qmp("blockdev-add", {"driver": "null-co", "node-name": "src", "size": 64 * MiB, "read-zeroes": True})
    d.qmp("blockdev-add", qcow("tgt", "tgt.qcow2"))
    mirror(d)
    finish_ready(d)
    d.graph("after")
    d.qmp("blockdev-del", {"node-name": "tgt"})
    offline_check(d, [], compare=None)
    shell(d, ["qemu-img", "map", "--output=json", "-U", "tgt.qcow2"])

    d = c.phase("null-co-source-no-read-zeroes", two_images(src_writes=[]))
    d.qmp("blockdev-add", {"driver": "null-co", "node-name": "src", "size": 64 * MiB})
    d.qmp("blockdev-add", qcow("tgt", "tgt.qcow2"))
    mirror(d)
    finish_ready(d)
    d.qmp("blockdev-del", {"node-name": "tgt"})
    shell(d, ["qemu-img", "map", "--output=json", "-U", "tgt.qcow2"])

    d = c.phase("empty-qcow2-source", two_images(src_writes=[]))
    add_pair(d)
    mirror(d)
    finish_ready(d)
    d.qmp("blockdev-del", {"node-name": "tgt"})
    d.qmp("blockdev-del", {"node-name": "src"})
    offline_check(d, [])

    def raw_t(wd, steps):
        img(wd, "tgt.raw", "64M", fmt="raw", steps=steps)
    d = c.phase("raw-file-target", two_images(extra=raw_t))
    d.qmp("blockdev-add", qcow("src", "src.qcow2"))
    d.qmp("blockdev-add", {"driver": "file", "node-name": "tgt", "filename": "tgt.raw"})
    mirror(d)
    finish_ready(d)
    d.graph("after")
    d.qmp("blockdev-del", {"node-name": "tgt"})
    d.qmp("blockdev-del", {"node-name": "src"})
    offline_check(d, [("tgt.raw", "read -P 0x41 0 1M"), ("tgt.raw", "read -P 0x42 5M 64k")],
                  compare=None)
    shell(d, ["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "raw", "src.qcow2", "tgt.raw"])

    d = c.phase("null-co-target", two_images())
    d.qmp("blockdev-add", qcow("src", "src.qcow2"))
    d.qmp("blockdev-add", {"driver": "null-co", "node-name": "tgt", "size": 64 * MiB, "read-zeroes": True})
    mirror(d)
    finish_ready(d)
    d.graph("after")


def sc_writes_after_ready(c: Ctx) -> None:
    checks = [("tgt.qcow2", "read -P 0x44 2M 1M"), ("tgt.qcow2", "read -P 0x45 0 64k"),
              ("tgt.qcow2", "read -P 0x41 64k 960k"), ("tgt.qcow2", "read -P 0x42 5M 64k")]
    vias = ["nbd", "hmp"] if c.kind == "system" else ["nbd"]
    for via in vias:
        d = c.phase(f"node-src-via-{via}", two_images())
        add_pair(d)
        if via == "nbd":
            d.export("src")
        mirror(d)
        d.wait_status("j", {"ready", "concluded", "gone"})
        d.graph("ready")
        d.gw("src", "write -P 0x44 2M 1M", via=via)
        d.poll(lambda *a: True)
        d.qmp("query-named-block-nodes", {"flat": True})
        d.wait(0.05)
        d.poll(lambda *a: True)
        d.gw("src", "write -P 0x45 0 64k", via=via)
        d.poll(lambda *a: True)
        d.wait(0.1)
        d.poll(lambda *a: True)
        d.qmp("job-complete", {"id": "j"})
        d.wait_gone("j")
        d.graph("after")
        if via == "nbd":
            d.qmp("block-export-del", {"id": "exp-src"})
            d.wait(0.1)
        d.qmp("blockdev-del", {"node-name": "tgt"})
        d.qmp("blockdev-del", {"node-name": "src"})
        offline_check(d, checks)
        shell(d, ["qemu-img", "map", "--output=json", "-U", "src.qcow2"])
    if c.kind == "system":
        def files(wd, steps):
            two_images()(wd, steps)
        d = c.phase("drive0-source", files, drives=["if=none,id=drive0,file=src.qcow2,format=qcow2"])
        d.qmp("blockdev-add", qcow("tgt", "tgt.qcow2"))
        d.qmp("query-block")
        d.graph("before")
        d.hmp('qemu-io drive0 "write -P 0x46 20M 64k"')
        d.qmp("blockdev-mirror", {"device": "drive0", "target": "tgt", "sync": "full"})
        jobs = d.ok("query-jobs")
        jid = jobs[0]["id"] if jobs else "drive0"
        d.wait_status(jid, {"ready", "concluded", "gone"})
        d.qmp("query-block")
        d.graph("ready")
        d.hmp('qemu-io drive0 "write -P 0x44 2M 1M"')
        d.poll(lambda *a: True)
        d.qmp("query-block")
        d.hmp('qemu-io drive0 "write -P 0x45 0 64k"')
        d.poll(lambda *a: True)
        d.wait(0.1)
        d.poll(lambda *a: True)
        d.hmp('qemu-io tgt "write -P 0x47 30M 64k"')
        d.hmp('qemu-io drive0 "read -P 0x44 2M 1M"')
        d.qmp("job-complete", {"id": jid})
        d.wait_gone(jid)
        d.qmp("query-block")
        d.graph("after")
        d.hmp('qemu-io drive0 "read -P 0x45 0 64k"')
        d.hmp('qemu-io drive0 "read -P 0x46 20M 64k"')
        d.close()
        offline_check(d, checks + [("tgt.qcow2", "read -P 0x46 20M 64k")])
        shell(d, ["qemu-img", "map", "--output=json", "-U", "tgt.qcow2"])


def sc_cancel(c: Ctx) -> None:
    files = two_images(src_writes=["write -P 0x41 0 8M"])
    d = c.phase("a-before-ready-speed-1MiB", files)
    add_pair(d)
    mirror(d, speed=MiB)
    d.poll(lambda j, b, ev: bool(j) and j[0]["current-progress"] > 0)
    d.wait(1.5)
    d.poll(lambda *a: True)
    d.graph("running")
    d.qmp("block-job-cancel", {"device": "j"})
    d.wait_gone("j")
    d.wait(0.05)
    d.graph("after cancel")
    for case, cmd, args in (("b-ready-soft", "block-job-cancel", {"device": "j"}),
                            ("c-ready-force", "block-job-cancel", {"device": "j", "force": True}),
                            ("d-ready-job-cancel", "job-cancel", {"id": "j"})):
        d = c.phase(case, files)
        add_pair(d)
        mirror(d)
        d.wait_status("j", {"ready", "concluded", "gone"})
        d.wait(0.02)
        d.qmp(cmd, args)
        d.wait_gone("j")
        d.wait(0.05)
        d.graph("after cancel")
        d.qmp("blockdev-del", {"node-name": "tgt"})
        d.qmp("blockdev-del", {"node-name": "src"})
        shell(d, ["qemu-img", "compare", "-U", "src.qcow2", "tgt.qcow2"])
    if c.kind == "system":
        for case, args in (("f-drive0-ready-soft", {"device": "drive0"}),
                           ("g-drive0-ready-force", {"device": "drive0", "force": True}),
                           ("h-drive0-running-soft", {"device": "drive0"})):
            d = c.phase(case, files, drives=["if=none,id=drive0,file=src.qcow2,format=qcow2"])
            d.qmp("blockdev-add", qcow("tgt", "tgt.qcow2"))
            d.qmp("query-block")
            d.qmp("blockdev-mirror", {"device": "drive0", "target": "tgt", "sync": "full",
                                      **({"speed": MiB} if "running" in case else {})})
            if "running" in case:
                d.poll(lambda j, b, ev: bool(j) and j[0]["current-progress"] > 0)
            else:
                d.wait_status("drive0", {"ready"})
            d.graph("before cancel")
            d.qmp("block-job-cancel", args)
            d.wait_gone("drive0")
            d.graph("after cancel")
            d.hmp('qemu-io drive0 "write -P 0x66 0 64k"')
            d.qmp("query-block")
    d = c.phase("e-ready-manual-soft", files)
    add_pair(d)
    mirror(d, **{"auto-finalize": False, "auto-dismiss": False})
    d.wait_status("j", {"ready"})
    d.qmp("block-job-cancel", {"device": "j"})
    d.wait_status("j", {"pending", "concluded"})
    d.qmp("job-finalize", {"id": "j"})
    d.wait_status("j", {"concluded"})
    d.qmp("job-dismiss", {"id": "j"})
    d.wait_gone("j")
    d.graph("after")


def sc_sync_top(c: Ctx) -> None:
    def files(wd, steps):
        img(wd, "base.qcow2", "64M", writes=["write -P 0x61 0 1M", "write -P 0x63 3M 64k"], steps=steps)
        img(wd, "src.qcow2", "64M", "-b", "base.qcow2", "-F", "qcow2", writes=["write -P 0x62 1M 1M"], steps=steps)
        img(wd, "tgt.qcow2", "64M", "-b", "base.qcow2", "-F", "qcow2", steps=steps)
        img(wd, "tgtnb.qcow2", "64M", steps=steps)

    cases = [("top-tgt-with-backing", "top", qcow("tgt", "tgt.qcow2")),
             ("top-tgt-backing-null", "top", qcow("tgt", "tgt.qcow2", backing=None)),
             ("top-tgt-no-backing-file", "top", qcow("tgt", "tgtnb.qcow2")),
             ("full-tgt-no-backing-file", "full", qcow("tgt", "tgtnb.qcow2")),
             ("full-tgt-with-backing", "full", qcow("tgt", "tgt.qcow2"))]
    for name, sync, tgt in cases:
        d = c.phase(name, files)
        d.qmp("blockdev-add", qcow("src", "src.qcow2"))
        d.qmp("blockdev-add", tgt)
        d.graph("before")
        mirror(d, sync=sync)
        finish_ready(d)
        d.graph("after")
        d.qmp("blockdev-del", {"node-name": "tgt"})
        d.qmp("blockdev-del", {"node-name": "src"})
        f = tgt["file"]["filename"]
        shell(d, ["qemu-img", "map", "--output=json", "-U", f])
        shell(d, ["qemu-img", "compare", "-U", "src.qcow2", f])
        for cmd in ("read -P 0x61 0 1M", "read -P 0x62 1M 1M", "read -P 0x63 3M 64k"):
            shell(d, ["qemu-io", "-r", "-U", "-f", "qcow2", f, "-c", cmd])
    # sync none
    for name, tgt in (("none-tgt-with-backing", qcow("tgt", "tgt.qcow2")),
                      ("none-tgt-no-backing-file", qcow("tgt", "tgtnb.qcow2"))):
        d = c.phase(name, files)
        d.qmp("blockdev-add", qcow("src", "src.qcow2"))
        d.qmp("blockdev-add", tgt)
        if c.kind == "qsd":
            d.export("src")
        mirror(d, sync="none")
        d.wait_status("j", {"ready", "concluded", "gone"})
        d.graph("ready")
        d.gw("src", "write -P 0x71 8M 64k")
        d.poll(lambda *a: True)
        d.gw("src", "write -P 0x72 1M 4k")
        d.poll(lambda *a: True)
        d.wait(0.05)
        d.qmp("job-complete", {"id": "j"})
        d.wait_gone("j")
        d.graph("after")
        if c.kind == "qsd":
            d.qmp("block-export-del", {"id": "exp-src"})
            d.wait(0.1)
        d.qmp("blockdev-del", {"node-name": "tgt"})
        d.qmp("blockdev-del", {"node-name": "src"})
        f = tgt["file"]["filename"]
        shell(d, ["qemu-img", "map", "--output=json", "-U", f])
        for cmd in ("read -P 0x71 8M 64k", "read -P 0x72 1M 4k", "read -P 0x62 1052672 61440"):
            shell(d, ["qemu-io", "-r", "-U", "-f", "qcow2", f, "-c", cmd])


def sc_bitmaps(c: Ctx) -> None:
    def files(wd, steps):
        two_images()(wd, steps)
        img(wd, "bk.qcow2", "64M", steps=steps)
    d = c.phase("node-src", files)
    add_pair(d)
    d.qmp("blockdev-add", qcow("bk", "bk.qcow2"))
    d.qmp("block-dirty-bitmap-add", {"node": "src", "name": "b0", "granularity": 65536})
    if c.kind == "qsd":
        d.export("src")
    d.gw("src", "write -P 0x51 0 64k")
    d.gw("src", "write -P 0x52 3M 100")
    d.qmp("query-named-block-nodes", {"flat": True}, note="before mirror")
    mirror(d)
    d.qmp("query-named-block-nodes", {"flat": True}, note="just after blockdev-mirror")
    d.wait_status("j", {"ready", "concluded", "gone"})
    d.qmp("query-named-block-nodes", {"flat": True}, note="ready")
    d.gw("src", "write -P 0x53 7M 64k")
    d.qmp("query-named-block-nodes", {"flat": True}, note="ready, after write")
    d.qmp("block-dirty-bitmap-add", {"node": "src", "name": "b1", "granularity": 65536})
    d.qmp("x-debug-block-dirty-bitmap-sha256", {"node": "src", "name": "b0"})
    d.qmp("transaction", {"actions": [
        {"type": "block-dirty-bitmap-add", "data": {"node": "src", "name": "b2", "granularity": 65536}},
        {"type": "blockdev-backup", "data": {"job-id": "bk0", "device": "src", "target": "bk", "sync": "full",
                                             "speed": 65536}}]})
    jobs = d.ok("query-jobs")
    if any(x["id"] == "bk0" for x in jobs):
        d.graph("backup + mirror")
        kill_job(d, "bk0")
    d.qmp("query-named-block-nodes", {"flat": True}, note="after transaction")
    d.qmp("block-dirty-bitmap-add", {"node": "tgt", "name": "t0", "granularity": 65536})
    d.qmp("job-complete", {"id": "j"})
    d.wait_gone("j")
    d.graph("after pivot")
    d.gw("src" if c.kind == "system" else "src", "write -P 0x54 9M 64k")
    d.qmp("query-named-block-nodes", {"flat": True}, note="after a write through the export/HMP on src")


def sc_bitmaps_drive(c: Ctx) -> None:
    if c.kind != "system":
        c.phase("skipped").note("system emulator only")
        return
    d = c.phase("drive0", two_images(), drives=["if=none,id=drive0,file=src.qcow2,format=qcow2"])
    d.qmp("blockdev-add", qcow("tgt", "tgt.qcow2"))
    d.qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "b0", "granularity": 65536})
    d.hmp('qemu-io drive0 "write -P 0x51 0 64k"')
    d.hmp('qemu-io drive0 "write -P 0x52 3M 100"')
    d.qmp("query-block", note="before")
    d.qmp("blockdev-mirror", {"device": "drive0", "target": "tgt", "sync": "full"})
    d.qmp("query-block", note="just after blockdev-mirror")
    d.wait_status("drive0", {"ready", "concluded", "gone"})
    d.qmp("query-block", note="ready")
    d.hmp('qemu-io drive0 "write -P 0x53 7M 64k"')
    d.qmp("query-block", note="ready after write")
    d.graph("ready")
    d.qmp("job-complete", {"id": "drive0"})
    d.wait_gone("drive0")
    d.qmp("query-block", note="after pivot")
    d.graph("after pivot")
    d.hmp('qemu-io drive0 "write -P 0x54 9M 64k"')
    d.qmp("query-block", note="after pivot + write")
    d.qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "b1", "granularity": 65536})
    d.qmp("query-block", note="after bitmap-add on drive0")


def sc_job_errors(c: Ctx) -> None:
    src_bd = {"driver": "qcow2", "node-name": "src",
              "file": {"driver": "blkdebug", "node-name": "src-dbg",
                       "inject-error": [{"event": "read_aio", "errno": 5, "once": True}],
                       "image": {"driver": "file", "node-name": "src-file", "filename": "src.qcow2"}}}
    tgt_bd = {"driver": "qcow2", "node-name": "tgt",
              "file": {"driver": "blkdebug", "node-name": "tgt-dbg",
                       "inject-error": [{"event": "write_aio", "errno": 5, "once": True}],
                       "image": {"driver": "file", "node-name": "tgt-file", "filename": "tgt.qcow2"}}}
    def on_source(d: Daemon) -> Any:
        return d.qmp("blockdev-add", src_bd), d.qmp("blockdev-add", qcow("tgt", "tgt.qcow2"))

    def on_target(d: Daemon) -> Any:
        return d.qmp("blockdev-add", qcow("src", "src.qcow2")), d.qmp("blockdev-add", tgt_bd)

    for side, mk in (("source", on_source), ("target", on_target)):
        for action in ("report", "stop", "ignore", "enospc"):
            if side == "source" and action == "enospc":
                continue
            d = c.phase(f"{side}-{action}", two_images())
            mk(d)
            mirror(d, **{f"on-{side}-error": action})
            if action == "stop":
                d.wait_status("j", {"paused", "ready", "concluded", "gone"})
                d.wait(0.05)
                d.qmp("query-jobs")
                d.qmp("query-block-jobs")
                d.qmp("block-job-resume", {"device": "j"})
            d.wait_status("j", {"ready", "concluded", "gone"})
            d.wait(0.05)
            jobs = d.ok("query-jobs")
            if any(x["id"] == "j" and x["status"] == "ready" for x in jobs):
                d.qmp("query-block-jobs")
                d.qmp("job-complete", {"id": "j"})
                d.wait_gone("j")
            d.graph("after")
            if side == "target":
                d.qmp("blockdev-del", {"node-name": "tgt"})
                d.qmp("blockdev-del", {"node-name": "src"})
                shell(d, ["qemu-img", "compare", "-U", "src.qcow2", "tgt.qcow2"])


def sc_pause_resume(c: Ctx) -> None:
    d = c.phase("pause", two_images(src_writes=["write -P 0x41 0 8M"]))
    add_pair(d)
    mirror(d, speed=MiB)
    d.poll(lambda j, b, ev: bool(j) and j[0]["current-progress"] > 0)
    d.qmp("job-pause", {"id": "j"})
    d.wait_status("j", {"paused"})
    d.wait(0.3)
    d.qmp("query-jobs")
    d.qmp("query-block-jobs")
    d.qmp("job-pause", {"id": "j"})
    d.qmp("block-job-pause", {"device": "j"})
    d.qmp("job-resume", {"id": "j"})
    d.wait_status("j", {"running"})
    d.qmp("job-resume", {"id": "j"})
    d.qmp("block-job-set-speed", {"device": "j", "speed": 0})
    d.wait_status("j", {"ready", "concluded"})
    d.qmp("block-job-pause", {"device": "j"})
    d.wait_status("j", {"standby"})
    d.wait(0.05)
    d.qmp("query-jobs")
    d.qmp("query-block-jobs")
    d.qmp("block-job-set-speed", {"device": "j", "speed": 4 * MiB}, note="set-speed while standby")
    d.qmp("query-block-jobs")
    d.qmp("block-job-resume", {"device": "j"})
    d.wait_status("j", {"ready", "concluded", "gone"})
    d.qmp("block-job-set-speed", {"device": "j", "speed": 2 * MiB}, note="set-speed while ready")
    d.qmp("query-block-jobs")
    d.qmp("query-jobs")
    d.qmp("block-job-set-speed", {"device": "j", "speed": -5})
    d.wait(0.15)
    d.qmp("block-job-pause", {"device": "j"})
    d.wait_status("j", {"standby"})
    d.qmp("job-complete", {"id": "j"}, note="complete while standby")
    d.poll(lambda *a: True)
    d.wait(0.1)
    d.poll(lambda *a: True)
    d.qmp("block-job-resume", {"device": "j"})
    d.wait_gone("j")
    d.graph("after")


def sc_granularity(c: Ctx) -> None:
    cases = [("default-speed1M", {"speed": MiB}, ()),
             ("gran4096-speed1M", {"speed": MiB, "granularity": 4096}, ()),
             ("buf65536-speed1M", {"speed": MiB, "buf-size": 65536}, ()),
             ("buf65536-gran4096-speed256k", {"speed": 262144, "buf-size": 65536, "granularity": 4096}, ()),
             ("tgt-4k-cluster-default", {}, ("-o", "cluster_size=4k")),
             ("tgt-4k-cluster-speed1M", {"speed": MiB}, ("-o", "cluster_size=4k")),
             ("tgt-2M-cluster-default", {}, ("-o", "cluster_size=2M")),
             ("gran4096-nospeed", {"granularity": 4096}, ())]
    for name, kw, opts in cases:
        d = c.phase(name, two_images(tgt_opts=opts))
        add_pair(d)
        mirror(d, **kw)
        d.poll(lambda j, b, ev: not j or j[0]["status"] in ("ready", "concluded"), interval=0.02, dedupe=False,
               timeout=20)
        d.qmp("query-named-block-nodes", {"flat": True}, note="ready: bitmap granularity")
        d.qmp("job-complete", {"id": "j"})
        d.wait_gone("j")
        d.qmp("blockdev-del", {"node-name": "tgt"})
        d.qmp("blockdev-del", {"node-name": "src"})
        shell(d, ["qemu-img", "map", "--output=json", "-U", "tgt.qcow2"])
        shell(d, ["qemu-img", "compare", "-U", "src.qcow2", "tgt.qcow2"])


def sc_drive_mirror(c: Ctx) -> None:
    def files(wd, steps):
        two_images()(wd, steps)
        img(wd, "t2.qcow2", "64M", steps=steps)
        img(wd, "t3.qcow2", "32M", steps=steps)
    if c.kind == "system":
        drives = ["if=none,id=drive0,file=src.qcow2,format=qcow2"]
        dev = "drive0"
    else:
        drives, dev = None, "src"
    d = c.phase("absolute-paths", files, drives=drives)
    if dev == "src":
        d.qmp("blockdev-add", qcow("src", "src.qcow2"))
    d.qmp("drive-mirror", {"device": dev, "target": "t.qcow2", "format": "qcow2", "sync": "full",
                           "mode": "absolute-paths"})
    jobs = d.ok("query-jobs")
    jid = jobs[0]["id"] if jobs else dev
    d.wait_status(jid, {"ready", "concluded", "gone"})
    d.graph("ready")
    shell(d, ["qemu-img", "info", "-U", "--output=json", "t.qcow2"])
    d.qmp("job-complete", {"id": jid})
    d.wait_gone(jid)
    d.graph("after")
    shell(d, ["qemu-img", "info", "-U", "t.qcow2"])
    shell(d, ["qemu-img", "map", "--output=json", "-U", "t.qcow2"])
    shell(d, ["qemu-img", "compare", "-U", "src.qcow2", "t.qcow2"])

    d = c.phase("existing-and-errors", files, drives=drives)
    if dev == "src":
        d.qmp("blockdev-add", qcow("src", "src.qcow2"))
    d.qmp("drive-mirror", {"device": dev, "target": "missing.qcow2", "format": "qcow2", "sync": "full",
                           "mode": "existing"})
    d.qmp("drive-mirror", {"device": dev, "target": "t2.qcow2", "sync": "full", "mode": "existing",
                           "job-id": "nofmt"}, note="format missing, mode existing")
    for jid in [x["id"] for x in (d.ok("query-jobs") or [])]:
        kill_job(d, jid)
    d.qmp("drive-mirror", {"device": dev, "target": "new-nofmt.qcow2", "sync": "full", "job-id": "nofmt2"},
          note="format missing, mode absolute-paths (default)")
    for jid in [x["id"] for x in (d.ok("query-jobs") or [])]:
        kill_job(d, jid)
    shell(d, ["qemu-img", "info", "-U", "new-nofmt.qcow2"])
    d.qmp("drive-mirror", {"device": dev, "target": "t3.qcow2", "format": "qcow2", "sync": "full",
                           "mode": "existing", "job-id": "small"}, note="existing target of 32M")
    for jid in [x["id"] for x in (d.ok("query-jobs") or [])]:
        kill_job(d, jid)
    d.qmp("drive-mirror", {"device": "nope", "target": "x.qcow2", "format": "qcow2", "sync": "full"})
    d.qmp("drive-mirror", {"device": dev, "target": "t2.qcow2", "format": "qcow2", "sync": "full",
                           "mode": "existing"})
    jobs = d.ok("query-jobs")
    jid = jobs[0]["id"] if jobs else dev
    d.wait_status(jid, {"ready", "concluded", "gone"})
    d.graph("ready existing")
    d.qmp("job-complete", {"id": jid})
    d.wait_gone(jid)
    d.graph("after existing")
    shell(d, ["qemu-img", "compare", "-U", "src.qcow2", "t2.qcow2"])
    d.qmp("drive-mirror", {"device": dev, "target": "t4.qcow2", "format": "qcow2", "sync": "top",
                           "mode": "absolute-paths", "job-id": "top"}, note="sync top on the (pivoted) device")
    for jid in [x["id"] for x in (d.ok("query-jobs") or [])]:
        kill_job(d, jid)


SCENARIOS: dict[str, Callable[[Ctx], None]] = {
    "schema": sc_schema,
    "errors": sc_errors,
    "full-basic": sc_full_basic,
    "full-nulls": sc_full_nulls,
    "writes-after-ready": sc_writes_after_ready,
    "cancel": sc_cancel,
    "sync-top": sc_sync_top,
    "bitmaps": sc_bitmaps,
    "bitmaps-drive0": sc_bitmaps_drive,
    "job-errors": sc_job_errors,
    "pause-resume": sc_pause_resume,
    "granularity": sc_granularity,
    "drive-mirror": sc_drive_mirror,
}


def run_one(kind: str, name: str, out: Path, repeat: int) -> None:
    root = Path(tempfile.mkdtemp(prefix=f"probe-{kind}-{name}-"))
    result: dict = {"scenario": name, "daemon": kind,
                    "version": subprocess.run([QSD if kind == "qsd" else SYSTEM, "--version"], capture_output=True,
                                              text=True).stdout.splitlines()[0], "runs": []}
    for i in range(repeat):
        c = Ctx(kind, root)
        run: dict = {"run": i, "phases": c.phases}
        t0 = time.monotonic()
        try:
            SCENARIOS[name](c)
        except Exception as e:  # noqa: BLE001
            run["exception"] = traceback.format_exc()
            print(f"  {name} run {i}: EXCEPTION {e!r}", file=sys.stderr)
        finally:
            c.close()
        run["seconds"] = round(time.monotonic() - t0, 2)
        result["runs"].append(run)
    (out / kind).mkdir(parents=True, exist_ok=True)
    (out / kind / f"{name}.json").write_text(json.dumps(result, indent=1))
    shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--daemon", choices=["qsd", "system"], default="qsd")
    ap.add_argument("--out", default="/tmp/mirror-rec")
    ap.add_argument("--only", help="comma-separated scenario names")
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    names = a.only.split(",") if a.only else list(SCENARIOS)
    for n in names:
        t = time.monotonic()
        run_one(a.daemon, n, Path(a.out), a.repeat)
        print(f"{a.daemon} {n}: {time.monotonic() - t:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
