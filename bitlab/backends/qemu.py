"""The Machine API over a real QEMU 7.2.

``Machine(backend="qemu")`` (or ``BITLAB_BACKEND=qemu``) starts QEMU's system emulator
headless (``qemu-system-x86_64 -M none``: QMP, HMP ``qemu-io`` for guest writes, ``-drive``
devices through HMP ``drive_add``) in a private temporary work directory, talks QMP over a
unix socket with ``qemu.qmp``, and offers the simulator's methods: ``qmp``, ``execute``,
``events``, ``write``/``discard``/``read``, ``qemu_img``, ``add_drive``, ``run``, ``step``.
It always stops its own QEMU (QMP ``quit``, then only its own PID).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import QMPError
from ..qemu_img import QemuImgError
from ..units import parse_size

SYSTEM = "qemu-system-x86_64"
PACKAGES = "qemu-system-x86 qemu-system-common qemu-utils"
SETTLED = ("concluded", "pending", "paused")


class QemuNotFound(RuntimeError):
    """Real QEMU is not installed."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__(
            f"Machine(backend='qemu') needs real QEMU 7.2, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed. On Debian 12: "
            f"apt-get install --no-install-recommends {PACKAGES}")


def qemu_missing() -> list[str]:
    return [tool for tool in (SYSTEM, "qemu-img", "qemu-io") if shutil.which(tool) is None]


def _opt(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


class QemuMachine:
    """A real QEMU 7.2 behind bitlab's Machine API."""

    backend = "qemu"

    def __init__(self, *, timeout: float = 30.0, **_ignored: Any) -> None:
        missing = qemu_missing()
        if missing:
            raise QemuNotFound(missing)
        from qemu.qmp import ConnectError  # imported late: an optional extra
        from qemu.qmp.legacy import QEMUMonitorProtocol

        self._protocol = QEMUMonitorProtocol
        self._connect_error = ConnectError
        self.timeout = timeout
        self.workdir = tempfile.mkdtemp(prefix="bitlab-qemu-")
        self.events: list[dict] = []
        self.transcript: list[dict] = []
        self.console: list[str] = []
        self._proc: subprocess.Popen | None = None
        self._qmp: Any = None
        self._out_pos = 0
        self._t0 = time.monotonic()
        self._start()

    # -- process ----------------------------------------------------------------------
    def _start(self) -> None:
        sock = os.path.join(self.workdir, ".qmp.sock")
        if os.path.exists(sock):
            os.unlink(sock)
        self._out = Path(self.workdir, ".qemu.out")
        argv = [SYSTEM, "-M", "none", "-nodefaults", "-display", "none", "-accel", "tcg",
                "-chardev", f"socket,id=qmp0,path={sock},server=on,wait=off", "-mon", "chardev=qmp0,mode=control"]
        if shutil.which("stdbuf"):
            argv = ["stdbuf", "-o0", "-e0", *argv]
        with open(self._out, "ab") as out:
            self._proc = subprocess.Popen(argv, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                qmp = self._protocol(sock)
                qmp.connect(negotiate=True)
                break
            except (OSError, self._connect_error):
                if self._proc.poll() is not None:
                    raise RuntimeError(f"QEMU exited at start: {self._out.read_text(errors='replace')}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError("QEMU's QMP socket did not come up") from None
                time.sleep(0.005)
        qmp.settimeout(self.timeout)
        self._qmp = qmp
        self._out_pos = self._out.stat().st_size

    def close(self) -> None:
        """Quit QEMU (QMP quit, then SIGKILL of our own PID only if it lingers)."""
        if self._qmp is not None:
            try:
                self._qmp.cmd_obj({"execute": "quit"})
            except Exception:  # noqa: BLE001 - it may already be gone
                pass
            try:
                self._qmp.close()
            except Exception:  # noqa: BLE001
                pass
            self._qmp = None
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()

    def __enter__(self) -> QemuMachine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __del__(self) -> None:
        if getattr(self, "_proc", None) is not None:
            self.close()

    def restart(self, *, clean: bool = True) -> QemuMachine:
        """Quit (clean) or SIGKILL QEMU, then start a new one over the same files."""
        if clean:
            self.close()
        else:
            proc, self._proc = self._proc, None
            if proc is not None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            if self._qmp is not None:
                try:
                    self._qmp.close()
                except Exception:  # noqa: BLE001
                    pass
                self._qmp = None
        self._start()
        return self

    # -- QMP ----------------------------------------------------------------------------
    def execute(self, message: dict) -> dict:
        self.transcript.append({"kind": "cmd", "message": message})
        reply = self._qmp.cmd_obj(message)
        self._collect()
        self.transcript.append({"kind": "reply", "message": reply})
        return reply

    def qmp(self, name: str, arguments: dict | None = None) -> Any:
        message: dict = {"execute": name}
        if arguments is not None:
            message["arguments"] = arguments
        reply = self.execute(message)
        if "error" in reply:
            raise QMPError(reply["error"]["desc"], reply["error"]["class"])
        return reply["return"]

    def _collect(self, wait: float | bool = False) -> int:
        """Move the events QEMU sent into ``events``; optionally wait for the first one."""
        count = 0
        try:
            ev = self._qmp.pull_event(wait=wait)
        except TimeoutError:  # nothing arrived within ``wait``
            return 0
        while ev is not None:
            self.events.append(ev)
            self.transcript.append({"kind": "event", "message": ev})
            count += 1
            ev = self._qmp.pull_event(wait=False)
        return count

    # -- time -----------------------------------------------------------------------------
    @property
    def now(self) -> float:
        return time.monotonic() - self._t0

    def _settled(self) -> bool:
        return all(job["status"] in SETTLED for job in self.qmp("query-jobs"))

    def run(self, until: float | None = None, timeout: float | None = None) -> None:
        """Wait until every job has settled (none left, or concluded, pending or paused), or until
        ``until`` seconds since start; raise TimeoutError after ``timeout`` seconds."""
        limit = time.monotonic() + (timeout or self.timeout)
        while True:
            if until is not None and self.now >= until:
                return
            if until is None and self._settled():
                self._collect()
                return
            if time.monotonic() > limit:
                raise TimeoutError(f"jobs did not settle within {timeout or self.timeout} s: "
                                   f"{self.qmp('query-jobs')}")
            self._collect(wait=0.002)

    def step(self, timeout: float | None = None) -> bool:
        """Wait for the next QMP event; False when no job is left to produce one."""
        if self._collect():
            return True
        if self._settled():
            return False
        return bool(self._collect(wait=timeout or self.timeout))

    # -- images and drives -----------------------------------------------------------------
    def qemu_img(self, *args: str) -> str:
        out = subprocess.run(["qemu-img", *map(str, args)], cwd=self.workdir, capture_output=True, text=True,
                             timeout=60)
        if out.returncode != 0:
            raise QemuImgError(out.stderr, out.returncode, out.stdout)
        return out.stdout

    def add_drive(self, name: str, size: int | str = "64M", format: str = "qcow2", *, file: str | None = None,
                  blkdebug: dict | None = None, node_name: str | None = None) -> str:
        """``-drive if=none,id=NAME,...`` added at run time with HMP ``drive_add``."""
        filename = file or f"{name}.{format}"
        if not os.path.exists(os.path.join(self.workdir, filename)):
            self.qemu_img("create", "-f", format, filename, str(size))
        opts = [f"if=none,id={name},format={format}"]
        if node_name is not None:
            opts.append(f"node-name={node_name}")
        if blkdebug is None:
            opts.append(f"file={filename}")
        else:
            opts += ["file.driver=blkdebug", f"file.image.filename={filename}"]
            for key in ("set-state", "inject-error"):
                for i, rule in enumerate(blkdebug.get(key, [])):
                    opts += [f"file.{key}.{i}.{k}={_opt(v)}" for k, v in rule.items()]
        reply = self.hmp(f"drive_add 0 {','.join(opts)}")
        if reply.strip() not in ("", "OK"):
            raise QMPError(reply.strip())
        root = next(b for b in self.qmp("query-block") if b["device"] == name)
        return root["inserted"]["node-name"]

    # -- guest I/O --------------------------------------------------------------------------
    def hmp(self, command_line: str) -> str:
        return self.qmp("human-monitor-command", {"command-line": command_line})

    def console_take(self, stream: str = "stdout") -> str:
        """What QEMU printed since the last call (stdout and stderr share one file here)."""
        data = self._out.read_bytes()
        text, self._out_pos = data[self._out_pos:].decode(errors="replace"), len(data)
        return text

    def qemu_io(self, node: str, command: str) -> str:
        self.console_take()
        reply = self.hmp(f'qemu-io {node} "{command}"')
        if reply:
            raise QMPError(reply.strip().removeprefix("Error: "))
        return self.console_take()

    def guest_name(self, name: str) -> str:
        """A device, or for a bare node the copy-before-write filter above it during a backup."""
        if any(b["device"] == name for b in self.qmp("query-block")):
            return name
        for node in self.qmp("query-named-block-nodes", {"flat": True}):
            if node["drv"] == "copy-before-write" and node["image"].get("filename") == self._filename(name):
                return node["node-name"]
        return name

    def _filename(self, node_name: str) -> str | None:
        for node in self.qmp("query-named-block-nodes", {"flat": True}):
            if node["node-name"] == node_name:
                return node["file"]
        return None

    def guest_io(self, node: str, command: str) -> str:
        return self.qemu_io(self.guest_name(node), command)

    def write(self, node: str, offset: int | str, length: int | str, pattern: int = 0xCD) -> str:
        return self.guest_io(node, f"write -P {pattern:#x} {parse_size(offset)} {parse_size(length)}")

    def write_zeroes(self, node: str, offset: int | str, length: int | str) -> str:
        return self.guest_io(node, f"write -z {parse_size(offset)} {parse_size(length)}")

    def discard(self, node: str, offset: int | str, length: int | str) -> str:
        return self.guest_io(node, f"discard {parse_size(offset)} {parse_size(length)}")

    def read(self, node: str, offset: int | str, length: int | str, pattern: int | None = None) -> str:
        opt = f"-P {pattern:#x} " if pattern is not None else ""
        return self.guest_io(node, f"read {opt}{parse_size(offset)} {parse_size(length)}")
