"""The Machine API over a real QEMU 7.2.

``Machine(backend="qemu")`` (or ``BITLAB_BACKEND=qemu``) runs a real QEMU in a private
temporary work directory, talks QMP over a unix socket with ``qemu.qmp``, and offers the
simulator's methods: ``qmp``, ``execute``, ``events``, ``write``/``discard``/``read``,
``qemu_img``, ``add_drive``, ``run``, ``step``. Two daemons can stand behind it:

- **qemu-storage-daemon** (``daemon="qsd"``): QMP and the block layer only, no devices.
  Guest I/O goes, as a guest's would, through an NBD export of the node (see
  :mod:`bitlab.backends.nbd`): every node made by ``blockdev-add`` is exported right away,
  so that during a backup its export sits above the copy-before-write filter; the export
  is removed before a ``blockdev-del`` of the node (and put back if that fails). Writes
  never flush; ``guest_io(node, "flush")`` does. I/O to any other node exports it for that
  one request, like HMP ``qemu-io`` on a node name; an NBD export never shares the resize
  permission, though, so the file node under a format node cannot be reached even to read
  (QEMU's permission conflict), where HMP ``qemu-io`` can read it.
- **the system emulator** (``daemon="system"``): ``qemu-system-x86_64 -M none``, headless,
  with ``-drive`` devices added through HMP ``drive_add`` and guest I/O through HMP
  ``qemu-io``.

``daemon="auto"`` (the default; ``BITLAB_QEMU_DAEMON`` may set another) starts nothing until
first use: ``add_drive``, HMP, ``stop``, ``cont`` or ``query-status`` first starts the system
emulator, anything else qemu-storage-daemon. The backend's own helper commands (exports, its server, job polls,
lookups) are kept out of ``transcript`` (they are listed in ``backstage``). It always stops
its own QEMU (QMP ``quit``, then SIGKILL of only its own PID).

The backend's NBD plumbing is invisible. Its exports' ids and names begin with ``bitlab-``
(reserved), ``query-block-exports`` and ``BLOCK_EXPORT_DELETED`` leave them out, and commands
whose answers they would change run with them out of the way: ``blockdev-add`` of a parent,
``blockdev-del``, the permission-checking :data:`PERMISSION_COMMANDS`, and the backup commands
(the export of each source; it comes back above the new filter). ``x-debug-query-block-graph`` runs with
them in place, its reply rewritten as without them (:mod:`bitlab.backends.xdbg_hide`): taking them away
drains their nodes. QEMU has one NBD
server: the backend's own listens on ``<workdir>/.nbd.sock`` (qemu-storage-daemon starts with
it; otherwise it is started when needed and no server runs). A user's ``nbd-server-start`` /
``-stop`` and NBD ``block-export-add`` / ``nbd-server-add`` are answered as on a QEMU without
the backend's server and exports (they are removed for the command and come back after it); a server the
user starts is used by the backend too, and when the user stops it (QEMU deletes the user's
exports, with their events) the backend's exports come back on a server of its own.

qemu-io's report lines carry real timings on both daemons; bitlab's simulator prints
``00.00 sec (inf bytes/sec and inf ops/sec)`` instead.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..bitmap import DirtyBitmap
from ..content import Content
from ..errors import QMPError
from ..guest import GuestIO
from ..history import NOTED_COMMANDS, history_of
from ..monitor import Monitor, command, reply_value
from ..qemu_img import QemuImgError, QemuImgOutput, cmdline
from ..qemu_img import nbd as qemu_img_nbd
from ..qmp.qemu_io import Request, parse_qemu_io
from . import nbd, xdbg_hide

SYSTEM = "qemu-system-x86_64"
QSD = "qemu-storage-daemon"
DAEMONS = ("auto", "qsd", "system")
DAEMON_ENV = "BITLAB_QEMU_DAEMON"
CONNECT_ATTEMPT_S = 5.0  # one attempt to reach a starting QEMU's monitor (see QemuMachine._connected)


def qmp_chardev(path: str | os.PathLike[str], ident: str = "qmp0") -> str:
    """The ``-chardev`` value of a QMP monitor socket at ``path`` that is safe to connect to at once.

    ``wait=on``: QEMU accepts its first client before its main loop starts. With ``wait=off``, a
    client connecting during start-up can be seen by two watchers of the listening socket; one
    accepts it and the other blocks in ``accept4`` for ever, with the main loop (QEMU 7.2, under
    load: 3 start-ups hung in 900; with ``wait=on`` none in 6,000).
    """
    return f"socket,id={ident},path={path},server=on,wait=on"


PACKAGE_OF = {QSD: "qemu-system-common", SYSTEM: "qemu-system-x86", "qemu-img": "qemu-utils",
              "qemu-io": "qemu-utils"}
PACKAGES = "qemu-system-x86 qemu-system-common qemu-utils"  # everything both daemons need
SETTLED = ("concluded", "pending", "paused")
ENDING = {"job-complete", "block-job-complete", "job-cancel", "block-job-cancel"}  # a ready mirror then goes on
PRIVATE_PREFIX = "bitlab-"  # export ids and names reserved for the backend's own NBD exports
EXPORT_PREFIX = PRIVATE_PREFIX + "guest-"  # id and name of the export of a node for guest I/O
BITMAP_EXPORT = PRIVATE_PREFIX + "bitmap"  # id and name of the export that dirty_bitmap reads
BITMAP_KEY = "#bitmap"  # its key in QemuMachine._exports (no node can be named so)
NBD_EXPORTERS = {"block-export-add", "nbd-server-add"}  # commands that need a running NBD server
# commands that name the user's NBD exports (QemuMachine._note_export)
EXPORT_NAMING = {"block-export-add", "nbd-server-add", "block-export-del", "nbd-server-remove", "nbd-server-stop"}

# Commands whose permission checks the backend's exports (writable, never sharing resize) would change: they run
# with those exports out of the way, as on a QEMU without them.
PERMISSION_COMMANDS = {"block_resize", "blockdev-reopen", "blockdev-create", "blockdev-mirror", "drive-mirror",
                       "block-commit", "block-stream"}
# The graph dump, which would show them: it runs with them in place (taking them away drains their nodes, which
# wakes a backup asleep on its rate limit) and its reply is rewritten as without them (see xdbg_hide).
GRAPH_QUERY = "x-debug-query-block-graph"
OWN_PERMS_OPTIONS = {"take-child-perms", "unshare-child-perms"}  # blkdebug options the graph shows no trace of
# Commands that insert a backup's filter: they run with the backend's exports of their sources out of the way
# (bitlab's guest holds no BlockBackend; an export above the filter would make it share no writes on the source
# already when it replaces the source, not only once the job links to it), which come back above the filter.
BACKUP_COMMANDS = {"blockdev-backup", "drive-backup", "transaction"}
BACKUP_ACTIONS = {"blockdev-backup", "drive-backup"}
SNAPSHOT_ACTIONS = {"blockdev-snapshot-sync", "blockdev-snapshot"}  # external snapshots: see _snapshot
CHILD_KEYS = {"file", "backing", "data-file", "image", "raw", "test", "target", "children"}


class QemuNotFound(RuntimeError):
    """Real QEMU is not installed."""

    def __init__(self, missing: list[str]) -> None:
        packages = " ".join(dict.fromkeys(PACKAGE_OF.get(tool, tool) for tool in missing))
        super().__init__(
            f"Machine(backend='qemu') needs real QEMU 7.2, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed. On Debian 12: "
            f"apt-get install --no-install-recommends {packages}")


NBD_UNANSWERED = ("alloc", "map", "info", "truncate")  # qemu-io commands NBD cannot carry to qemu-storage-daemon
SYSTEM_COMMANDS = ("human-monitor-command", "stop", "cont", "query-status")  # the system emulator's alone


class QemuDaemonError(RuntimeError):
    """The scenario needs what the running daemon cannot do (devices, HMP and the run state on qsd)."""


def qemu_missing(daemon: str = "auto") -> list[str]:
    """The QEMU programs that ``daemon`` ("auto", "qsd" or "system") needs and cannot find.

    "auto" needs qemu-img and one of the daemons (the system emulator can do everything).
    """
    missing = [] if shutil.which("qemu-img") else ["qemu-img"]
    if daemon == "system":
        wanted = [SYSTEM]
    elif daemon == "qsd" or shutil.which(SYSTEM) is None:
        wanted = [QSD]
    else:
        wanted = []
    return [tool for tool in wanted if shutil.which(tool) is None] + missing


def _opt(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _child_refs(value: Any, key: str = "") -> list[str]:
    """Node names that a blockdev-add's options refer to as children ("file": "f0")."""
    if isinstance(value, dict):
        return [name for k, v in value.items() for name in _child_refs(v, k)]
    if isinstance(value, list):
        return [name for v in value for name in _child_refs(v, key)]
    return [value] if isinstance(value, str) and key in CHILD_KEYS else []


def _filenames(value: Any) -> set[str]:
    """The files a blockdev-add's options open (every ``file`` driver's ``filename``)."""
    if isinstance(value, dict):
        own = {value["filename"]} if value.get("driver") == "file" and isinstance(value.get("filename"), str) else set()
        return own.union(*(_filenames(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_filenames(v) for v in value))
    return set()


def _keys(value: Any) -> set[str]:
    """Every key of a command's arguments, at any depth."""
    if isinstance(value, dict):
        return set(value).union(*(_keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_keys(v) for v in value))
    return set()


def _backup_sources(name: str | None, args: object) -> list[str]:
    """The nodes a backup command (or a transaction's backup actions) backs up."""
    if name not in BACKUP_COMMANDS or not isinstance(args, dict):
        return []
    actions = args.get("actions", []) if name == "transaction" else [{"type": name, "data": args}]
    if not isinstance(actions, list):
        return []
    return [a["data"]["device"] for a in actions if isinstance(a, dict) and a.get("type") in BACKUP_ACTIONS
            and isinstance(a.get("data"), dict) and isinstance(a["data"].get("device"), str)]


def _snapshots(name: str | None, args: object) -> dict[str, str] | None:
    """The external snapshots a command (or a transaction's actions) takes: old node -> overlay node (as
    named in the arguments), or None if it takes none."""
    if not isinstance(args, dict) or name not in SNAPSHOT_ACTIONS | {"transaction"}:
        return None
    actions = args.get("actions", []) if name == "transaction" else [{"type": name, "data": args}]
    if not isinstance(actions, list):
        return None
    found: dict[str, str] = {}
    snapshots = [a["data"] for a in actions if isinstance(a, dict) and a.get("type") in SNAPSHOT_ACTIONS
                 and isinstance(a.get("data"), dict)]
    for data in snapshots:
        old = data.get("node", data.get("node-name", data.get("device")))
        new = data.get("overlay", data.get("snapshot-node-name"))
        if isinstance(old, str) and isinstance(new, str):
            found[old] = new
    return found if snapshots else None


def _private(export_id: object) -> bool:
    """Whether an export id is one of the backend's own (hidden from the user)."""
    return isinstance(export_id, str) and export_id.startswith(PRIVATE_PREFIX)


_LIVE: weakref.WeakSet[QemuMachine] = weakref.WeakSet()


WORKDIR_PREFIX = "bitlab-qemu-"
OWNER_FILE = ".owner"  # the PID of the Python that made the work directory


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_workdirs(tmp: str | None = None) -> list[str]:
    """Remove work directories whose Python died without closing its machine (say a kernel killed with
    SIGKILL: its QEMU stops by --pdeathsig, but nobody removed the files); returns what was removed."""
    tmp = tmp or tempfile.gettempdir()
    removed = []
    for path in Path(tmp).glob(WORKDIR_PREFIX + "*"):
        owner = path / OWNER_FILE
        try:
            if path.stat().st_uid != os.getuid():
                continue
            pid = int(owner.read_text())
        except (OSError, ValueError, KeyError):
            continue  # not ours, or from an older bitlab: left alone
        if not _alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


@atexit.register
def _stop_all() -> None:
    """At interpreter exit, stop every QEMU still running (a Jupyter kernel's globals are never closed, and
    a QEMU in its own session would outlive the kernel). QMP may be unusable by now (its worker thread is
    shut down), so each QEMU gets SIGTERM — QEMU's clean quit — and SIGKILL if it lingers."""
    procs = []
    for vm in list(_LIVE):
        proc = getattr(vm, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            procs.append((vm, proc))
    deadline = time.monotonic() + 3.0
    for vm, proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        vm._proc = None
        shutil.rmtree(vm.workdir, ignore_errors=True)


class _Held:
    """What a QemuMachine holds outside itself: its QEMU process, its QMP client, its work directory.

    A machine nobody refers to any more is stopped by a ``weakref.finalize`` of this, not by
    ``__del__``: the cyclic garbage collector takes a machine together with its QMP client's worker
    thread pool (a Jupyter kernel's :class:`_OwnThread`), and clears the pool's weak references
    first, which ends its worker thread; a ``quit`` sent from ``__del__`` then waited for that
    thread forever (a notebook hung so on real QEMU). The finalizer keeps the client alive until
    QEMU has quit."""

    __slots__ = ("proc", "qmp", "workdir")

    def __init__(self, workdir: str) -> None:
        self.proc: subprocess.Popen | None = None
        self.qmp: Any = None
        self.workdir = workdir

    def release(self) -> None:
        """QMP quit (SIGKILL of our own PID if QEMU lingers), then remove the private work directory."""
        qmp, proc = self.qmp, self.proc
        self.qmp = self.proc = None
        if qmp is not None:
            with contextlib.suppress(Exception):  # it may already be gone
                qmp.cmd_obj({"execute": "quit"})
            with contextlib.suppress(Exception):
                qmp._sync(qmp._qmp.disconnect(), 5)
        if proc is not None:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


class _Every:
    """Every option: a command line the real qemu-img took, which bitlab only reads."""

    def __contains__(self, key: object) -> bool:
        return True


_EVERY_OPTION = _Every()


class QemuMachine(GuestIO, Monitor):
    """A real QEMU 7.2 (qemu-storage-daemon or the system emulator) behind bitlab's Machine API.

    ``daemon`` is what was asked for ("auto", "qsd", "system"); ``kind`` is what runs
    ("qsd" or "system"), None until first use; ``startup_ms`` how long the latest start took
    until QMP answered.
    """

    backend = "qemu"

    def __init__(self, *, daemon: str | None = None, timeout: float = 30.0, **_ignored: Any) -> None:
        daemon = daemon or os.environ.get(DAEMON_ENV) or "auto"
        if daemon not in DAEMONS:
            raise ValueError(f"daemon must be one of {', '.join(DAEMONS)}, not {daemon!r}")
        missing = qemu_missing(daemon)
        if missing:
            raise QemuNotFound(missing)
        try:
            from qemu.qmp import ConnectError  # imported late: an optional extra
            from qemu.qmp.legacy import QEMUMonitorProtocol
        except ImportError as err:
            raise ImportError("Machine(backend='qemu') needs the QMP client: pip install 'qemu.qmp>=0.0.3' "
                              "(or pip install 'qemu-bitlab[qemu]')") from err

        self._protocol = QEMUMonitorProtocol
        self._connect_error = ConnectError
        self.daemon = daemon
        self.kind: str | None = None
        self.timeout = timeout
        remove_stale_workdirs()
        self.workdir = tempfile.mkdtemp(prefix=WORKDIR_PREFIX)
        Path(self.workdir, OWNER_FILE).write_text(str(os.getpid()))
        self.events: list[dict] = []
        self.transcript: list[dict] = []
        self.backstage: list[dict] = []  # the backend's own helper commands and their replies
        self.console: list[str] = []
        self.startup_ms: float | None = None
        self._held = _Held(self.workdir)  # its QEMU process and QMP client (properties _proc, _qmp)
        self._finalizer = weakref.finalize(self, self._held.release)
        self._finalizer.atexit = False  # at exit, _stop_all stops QEMU (QMP may be unusable by then)
        self._closed = False
        self._exports: dict[str, str] = {}  # the node addressed -> id (= NBD name) of the backend's export
        self._user_exports: dict[str, tuple[str, str]] = {}  # the user's NBD exports: id -> (NBD name, node)
        self._mirror_sources: dict[str, str] = {}  # a mirror job's id -> the node it mirrors
        self._switching: dict[str, dict[str, str | None]] = {}  # a completing mirror's id -> its source's export
        self._ending: set[str] = set()  # jobs told to complete or cancel: a ready one is on its way out
        self._read_only: set[str] = set()  # nodes whose export is read-only (the node is)
        self._overlays: dict[str, str] = {}  # system emulator: a snapshotted node -> the overlay put above it
        self._server: nbd.Address | None = None  # where QEMU's one NBD server listens, if it runs
        self._users_server = False  # whether it was started by the user (else by the backend)
        self._out = Path(self.workdir, ".qemu.out")
        self._out_pos = 0
        self._nbd_sock = os.path.join(self.workdir, ".nbd.sock")
        self._t0 = time.monotonic()

    # -- process ----------------------------------------------------------------------
    @property
    def _proc(self) -> subprocess.Popen | None:
        return self._held.proc

    @_proc.setter
    def _proc(self, proc: subprocess.Popen | None) -> None:
        self._held.proc = proc

    @property
    def _qmp(self) -> Any:
        return self._held.qmp

    @_qmp.setter
    def _qmp(self, qmp: Any) -> None:
        self._held.qmp = qmp

    @property
    def started(self) -> bool:
        """Whether a QEMU process runs for this machine now."""
        return self._qmp is not None

    def _ensure(self, device: str | None = None) -> str:
        """Start QEMU on first use and return its kind; ``device`` names a use that needs the
        system emulator (``add_drive``, HMP, the run state's commands)."""
        if self._closed:
            raise RuntimeError("this QemuMachine is closed")
        if self.kind is None:
            if self.daemon == "qsd" and device is not None:
                raise QemuDaemonError(self._device_message(device))
            want_system = self.daemon == "system" or device is not None or shutil.which(QSD) is None
            if want_system and shutil.which(SYSTEM) is None:
                raise QemuNotFound([SYSTEM])
            self.kind = "system" if want_system else "qsd"
            try:
                self._start()
            except BaseException:
                self.kind = None
                raise
        elif device is not None and self.kind == "qsd":
            raise QemuDaemonError(self._device_message(device))
        return self.kind

    def _device_message(self, what: str) -> str:
        forced = f" ({DAEMON_ENV}={os.environ[DAEMON_ENV]})" if os.environ.get(DAEMON_ENV) == self.daemon else ""
        return (f"{what} needs QEMU's system emulator (-drive devices, HMP, stop/cont), but this machine runs "
                f"qemu-storage-daemon{forced}, which has none of them. Use Machine(backend='qemu', daemon='system'), "
                f"or with daemon='auto' call add_drive, hmp, stop, cont or query-status before anything else.")

    def _argv(self, sock: str) -> list[str]:
        chardev = qmp_chardev(sock)
        # setpriv --pdeathsig: QEMU gets SIGTERM (its clean quit) when the thread that started it dies, so a
        # Jupyter kernel that is killed (nbval stops kernels with SIGKILL) leaves no QEMU behind
        guard = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []
        if self.kind == "qsd":  # with the backend's NBD server: without it, 7 in 800 random scenarios (two run at
            # once) lost qemu-storage-daemon 7.2 at its first commands, once with "free(): invalid next size (fast)"
            return [*guard, QSD, "--chardev", chardev, "--monitor", "chardev=qmp0",
                    "--nbd-server", f"addr.type=unix,addr.path={self._nbd_sock}"]
        argv = [SYSTEM, "-M", "none", "-nodefaults", "-display", "none", "-accel", "tcg",
                "-chardev", chardev, "-mon", "chardev=qmp0,mode=control"]
        return [*guard, "stdbuf", "-o0", "-e0", *argv] if shutil.which("stdbuf") else [*guard, *argv]

    def _start(self) -> None:
        sock = os.path.join(self.workdir, ".qmp.sock")
        for path in (sock, self._nbd_sock):
            if os.path.exists(path):
                os.unlink(path)
        self._exports.clear()
        self._user_exports.clear()
        self._server, self._users_server = None, False
        begin = time.monotonic()
        with open(self._out, "ab") as out:
            self._proc = subprocess.Popen(self._argv(sock), cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        _LIVE.add(self)
        deadline = begin + self.timeout
        while True:
            try:
                if not os.path.exists(sock):  # not listening yet (spares qemu.qmp's error log)
                    raise OSError("no QMP socket yet")
                qmp = _client(lambda: self._connected(sock))
                break
            except (OSError, self._connect_error):
                if self._proc.poll() is not None:
                    self._proc = None
                    raise RuntimeError(f"QEMU exited at start: {self._out.read_text(errors='replace')}") from None
                if time.monotonic() > deadline:
                    self._stop(kill=True)
                    raise TimeoutError("QEMU's QMP socket did not come up") from None
                time.sleep(0.002)
        qmp.settimeout(self.timeout)
        self._qmp = qmp
        if self.kind == "qsd":  # started with its NBD server (see _argv)
            self._server = self._nbd_sock
        self.startup_ms = (time.monotonic() - begin) * 1000
        self._out_pos = self._out.stat().st_size

    def _connected(self, sock: str) -> Any:
        qmp = self._protocol(sock)
        # The legacy client's connect and close wait without limit; a QEMU that accepted the
        # connection but never greets (seen under heavy load, twice in a CI run) must not hang
        # bitlab: each attempt gets a few seconds, then the connection is dropped (QEMU's monitor
        # serves one client, and takes the next once this one is gone) and _start tries again
        # until its deadline.
        try:
            qmp._sync(qmp._qmp.connect(sock), min(self.timeout, CONNECT_ATTEMPT_S))
        except BaseException:
            with contextlib.suppress(Exception):
                qmp._sync(qmp._qmp.disconnect(), 1.0)
            raise
        return qmp

    def _stop(self, *, kill: bool = False) -> None:
        """QMP quit (or SIGKILL when ``kill``); SIGKILL of our own PID only if it lingers."""
        proc, self._proc = self._proc, None
        if kill and proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # first: nothing may be stored cleanly
        if self._qmp is not None:
            if not kill:
                try:
                    self._qmp.cmd_obj({"execute": "quit"})
                    self._collect()  # what QEMU sent before its reply (a user's exports, deleted)
                except Exception:  # noqa: BLE001 - it may already be gone
                    pass
            try:
                self._qmp._sync(self._qmp._qmp.disconnect(), 5)
            except Exception:  # noqa: BLE001 - gone, or stuck: the process is killed below
                pass
            self._qmp = None
        if proc is not None:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        self._exports.clear()
        self._user_exports.clear()
        self._server, self._users_server = None, False

    def close(self) -> None:
        """Quit QEMU (QMP quit, then SIGKILL of our own PID only if it lingers) and remove the
        private work directory."""
        self._stop()
        self._closed = True
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> QemuMachine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def restart(self, *, clean: bool = True) -> QemuMachine:
        """Quit (clean) or SIGKILL QEMU, then start the same kind again over the same files."""
        if self._closed:
            raise RuntimeError("this QemuMachine is closed")
        if self.kind is not None:
            self._stop(kill=not clean)
            self._start()
        return self

    # -- QMP ----------------------------------------------------------------------------
    def execute(self, message: dict) -> dict:
        """Send one wire-shaped QMP message; its reply (recorded in ``transcript``).

        ``human-monitor-command``, ``stop``, ``cont`` or ``query-status`` as the first command starts the
        system emulator (daemon "auto"); later, qemu-storage-daemon gives its own CommandNotFound reply.
        """
        reply = self._execute(message)
        name, args = message.get("execute"), message.get("arguments")
        if name in EXPORT_NAMING and isinstance(args, dict) and isinstance(reply, dict) and "return" in reply:
            self._note_export(name, args)
        return reply

    def _note_export(self, name: str, args: dict) -> None:
        """The user's NBD exports by id: (their NBD name, their node), for :meth:`_note_restore`."""
        if name == "block-export-add" and args.get("type") == "nbd":
            self._user_exports[args["id"]] = (args.get("name") or args["node-name"], args["node-name"])
        elif name == "nbd-server-add":
            self._user_exports[args["device"]] = (args.get("name") or args["device"], args["device"])
        elif name in ("block-export-del", "nbd-server-remove"):
            key = args.get("id") if name == "block-export-del" else next(
                (k for k, (n, _) in self._user_exports.items() if n == args.get("name")), None)
            self._user_exports.pop(key, None)
        elif name == "nbd-server-stop":
            self._user_exports.clear()

    def _execute(self, message: dict) -> dict:
        name = message.get("execute")
        first_hmp = name in SYSTEM_COMMANDS and self.kind is None and self.daemon != "qsd"
        kind = self._ensure(name if first_hmp else None)
        if kind == "qsd" and isinstance(message.get("arguments"), dict):
            if name == "blockdev-add":
                return self._blockdev_add(message)
            if name == "blockdev-del":
                return self._blockdev_del(message)
        if name in ("nbd-server-start", "nbd-server-stop") or name in NBD_EXPORTERS:
            return self._nbd_server_command(message)
        snapshots = _snapshots(name, message.get("arguments"))
        if snapshots is not None and kind == "qsd" and self._exports:
            return self._snapshot(message, snapshots)
        if name == GRAPH_QUERY and self._exports:
            return self._graph_query(message)
        if self._switching:
            self._switched()
        if name in ENDING and isinstance(message.get("arguments"), dict):
            args = message["arguments"]
            self._ending.add(str(args.get("id", args.get("device"))))
        if name in ("job-complete", "block-job-complete") and kind == "qsd":
            return self._complete_mirror(message)
        if name in PERMISSION_COMMANDS and self._exports:
            moved = self._stand_aside(server=False)
            try:
                reply = self._send(message)
                if name == "blockdev-create" and "return" in reply:
                    self._wait_created(message["arguments"].get("job-id"))
                if name in ("blockdev-mirror", "drive-mirror", "block-commit", "block-stream") and "return" in reply:
                    args = message["arguments"]
                    self._mirror_sources[args.get("job-id") or args["device"]] = args["device"]
                    if args["device"] in moved:  # its export comes back above the job's filter, as bdrv_append
                        at = moved[args["device"]] or args["device"]  # had put it
                        moved[args["device"]] = self._filter_above(at) or at
                return reply
            finally:
                self._come_back(moved)
        if name in NOTED_COMMANDS:
            self._collect()
        events_at = len(self.events)
        sources = _backup_sources(name, message.get("arguments")) if kind == "qsd" else []
        if any(node in self._exports for node in sources):
            # each comes back above the filter over where it was (a snapshot's overlay stays above it)
            moved = {node: self._unexport(node) or node for node in dict.fromkeys(sources) if node in self._exports}
            try:
                reply = self._send(message)
            finally:
                self._come_back({node: self._filter_above(at) or at for node, at in moved.items()})
        else:
            reply = self._send(message)
        if snapshots and "return" in reply:  # the system emulator: a guest of the old node follows it up
            self._overlays.update(snapshots)
        if name in NOTED_COMMANDS and isinstance(reply, dict) and "return" in reply:
            history_of(self).note_command(self, message, reply, events_at)
        return reply

    def _complete_mirror(self, message: dict) -> dict:
        """``job-complete`` of a mirror: its switch-over moves every parent of the source to the target, the
        backend's export of the source too, which would keep a target nothing else holds open (a drive-mirror
        image). The export stands aside until the job has ended, then comes back on the source, as on a QEMU
        without it."""
        args = message.get("arguments") or {}
        job_id = args.get("id", args.get("device"))
        source = self._mirror_sources.get(job_id) if isinstance(job_id, str) else None
        if source is None or source not in self._exports:
            return self._send(message)
        self._unexport(source)
        moved: dict[str, str | None] = {source: None}  # (back on the source itself: the filter will be gone)
        reply = self._send(message)
        if "return" in reply:
            self._switching[job_id] = moved
        else:
            self._come_back(moved)
        return reply

    def _switched(self) -> None:
        """The exports of the completing mirrors that have ended come back (see :meth:`_complete_mirror`)."""
        jobs = {job["id"]: job["status"] for job in self._helper_value("query-jobs")}
        for job_id, moved in list(self._switching.items()):
            if jobs.get(job_id, "null") in ("concluded", "null", "aborting"):
                del self._switching[job_id]
                self._mirror_sources.pop(job_id, None)
                self._come_back(moved)

    # -- what bitlab.history and bitlab.chain ask of a backend ------------------------------
    def _image_key(self, path: str) -> str:
        """A file's name relative to the work directory (where qemu-img and QEMU run)."""
        if os.path.isabs(path):
            return os.path.relpath(path, self.workdir)
        return os.path.normpath(path)

    def _node_file(self, name: str) -> str | None:
        nodes = self._helper_value("query-named-block-nodes", {"flat": True})
        node = next((n for n in nodes if n["node-name"] == name), None)
        if node is None or node["drv"] == "null-co" or node["file"].startswith(("json:", "null-")):
            return None
        return node["file"]

    def _aliases(self, name: str) -> set[str]:
        """A drive's device name and root node name, whichever ``name`` is."""
        for block in self._helper_value("query-block"):
            root = block.get("inserted", {}).get("node-name")
            if name in (block["device"], root):
                return {block["device"], root} - {None, ""}
        return {name}

    def _drive_name(self, name: str) -> str:
        for block in self._helper_value("query-block"):
            if name in (block["device"], block.get("inserted", {}).get("node-name")) and block["device"]:
                return block["device"]
        return name

    def _write_generation(self, name: str) -> int:
        """Writes noted so far to the drive (only bitlab's write/write_zeroes/discard are seen)."""
        return history_of(self).generation(self._aliases(name))

    def _capture_content(self, name: str) -> Callable[[], Content]:
        """The drive's content replayed from the noted guest writes (drives start blank)."""
        nodes = self._helper_value("query-named-block-nodes", {"flat": True})
        names = self._aliases(name)
        size = next(n["image"]["virtual-size"] for n in nodes if n["node-name"] in names or n["node-name"] == name)
        content = history_of(self).replay(names, size)
        return lambda: content

    def _send(self, message: dict) -> dict:
        self.transcript.append({"kind": "cmd", "message": message})
        reply = self._exchange(message)
        if message.get("execute") == "query-block-exports" and isinstance(reply.get("return"), list):
            reply = {**reply, "return": [e for e in reply["return"] if not _private(e.get("id"))]}
        self.transcript.append({"kind": "reply", "message": reply})
        return reply

    def _exchange(self, message: dict) -> dict:
        """One command and its reply, and the events QEMU sent meanwhile."""
        if "id" in message and not isinstance(message["id"], str):
            # QEMU echoes any JSON id; qemu.qmp accepts only strings: send a string, put it back
            reply = self._qmp.cmd_obj({**message, "id": json.dumps(message["id"])})
            if isinstance(reply, dict) and "id" in reply:
                reply = {**reply, "id": message["id"]}
        else:
            reply = self._qmp.cmd_obj(message)
        self._collect()
        return reply

    def _graph_query(self, message: dict) -> dict:
        """x-debug-query-block-graph with the backend's exports in place, answered as without them (see
        :mod:`bitlab.backends.xdbg_hide`); where the reply cannot tell, asked again with them out of the way."""
        entry = {"kind": "cmd", "message": message}
        self.transcript.append(entry)
        reply = self._exchange(message)
        hidden = self._hide_exports(reply["return"]) if isinstance(reply.get("return"), dict) else None
        if hidden is not None or "error" in reply:
            reply = {**reply, "return": hidden} if hidden is not None else reply
            self.transcript.append({"kind": "reply", "message": reply})
            return reply
        self.transcript.remove(entry)
        self.backstage.append({"message": message, "reply": reply})
        moved = self._stand_aside(server=False)
        try:
            return self._send(message)
        finally:
            self._come_back(moved)

    def _hide_exports(self, graph: dict) -> dict | None:
        """``graph`` as without the backend's exports, or None where it cannot tell."""
        ids = {export_id: node for node, export_id in self._exports.items() if node != BITMAP_KEY}
        infos = self._helper_value("query-block-exports")[::-1]  # (QEMU lists the newest first)
        on_node = [info["node-name"] for info in infos]
        exports = [xdbg_hide.Export(info["node-name"], ids[info["id"]] not in self._read_only,
                                    on_node[:i].count(info["node-name"]), on_node.count(info["node-name"]))
                   for i, info in enumerate(infos) if info["id"] in ids]
        if len(exports) != len(ids):
            return None
        own_perms = any(OWN_PERMS_OPTIONS & _keys(entry["message"].get("arguments"))
                        for entry in self.transcript if entry["kind"] == "cmd"
                        and entry["message"].get("execute") in ("blockdev-add", "blockdev-reopen"))
        nodes = {node["node-name"]: xdbg_hide.NodeInfo(node["drv"], node["ro"], node["file"], own_perms)
                 for node in self._helper_value("query-named-block-nodes", {"flat": True})}
        return xdbg_hide.without_exports(graph, exports, nodes)

    def qmp(self, name: str, arguments: dict | None = None) -> Any:
        """Run a command; its value, or :class:`QMPError` with QEMU's class and text."""
        if name in SYSTEM_COMMANDS:
            self._ensure(name)  # on qemu-storage-daemon: a clear error rather than CommandNotFound
        return super().qmp(name, arguments)

    def _helper(self, name: str, arguments: dict | None = None) -> dict:
        """A command of the backend's own: listed in ``backstage``, not in ``transcript``."""
        message = command(name, arguments)
        reply = self._qmp.cmd_obj(message)
        self.backstage.append({"message": message, "reply": reply})
        self._collect()
        return reply

    def _helper_value(self, name: str, arguments: dict | None = None) -> Any:
        return reply_value(self._helper(name, arguments))

    def _collect(self, wait: float | bool = False) -> int:
        """Move the events QEMU sent into ``events``; optionally wait for the first one."""
        count = 0
        try:
            ev = self._qmp.pull_event(wait=wait)
        except TimeoutError:  # nothing arrived within ``wait``
            return 0
        while ev is not None:
            if not (ev.get("event") == "BLOCK_EXPORT_DELETED" and _private(ev.get("data", {}).get("id"))):
                self.events.append(ev)
                self.transcript.append({"kind": "event", "message": ev})
                count += 1
            ev = self._qmp.pull_event(wait=False)
        return count

    # -- NBD: QEMU's one server, shared with the user ----------------------------------------
    def _own_server(self) -> nbd.Address:
        """Where the NBD server listens; started on the backend's private socket if none runs."""
        if self._server is None:
            if os.path.exists(self._nbd_sock):
                os.unlink(self._nbd_sock)
            reply_value(self._helper("nbd-server-start", {"addr": {"type": "unix",
                                                                    "data": {"path": self._nbd_sock}}}))
            self._server, self._users_server = self._nbd_sock, False
        return self._server

    def _stand_aside(self, *, server: bool = True) -> dict[str, str | None]:
        """Remove the backend's exports, and (``server``) its own server: QEMU then is as the user
        left it. Returns where each export was attached, for :meth:`_come_back`."""
        moved = {node: self._unexport(node) for node in list(self._exports)}
        if server and self._server is not None and not self._users_server:
            self._helper("nbd-server-stop")
            self._server = None
        return moved

    def _come_back(self, moved: dict[str, str | None]) -> None:
        """Export again what :meth:`_stand_aside` removed, on whichever server runs now."""
        for node, attached in moved.items():
            if node != BITMAP_KEY:
                self._export(node, attached)

    def _nbd_server_command(self, message: dict) -> dict:
        """The user's ``nbd-server-start`` / ``-stop`` or NBD ``block-export-add`` / ``nbd-server-add``,
        answered by QEMU as if the backend had no NBD server and no exports of its own.

        A server the user starts is the one QEMU server from then on: the backend exports there
        too. When the user stops it, the backend's exports go first (the user's are deleted by
        QEMU with their events) and come back on a server of the backend's own."""
        name = message.get("execute")
        args = message.get("arguments")
        exporting = name in NBD_EXPORTERS and (name == "nbd-server-add" or
                                              (isinstance(args, dict) and args.get("type") == "nbd"))
        if (name in NBD_EXPORTERS and not exporting) or (self._users_server and name != "nbd-server-stop") \
                or (self._server is None and not self._exports):
            reply = self._send(message)  # nothing of the backend's is in the way
            if name == "nbd-server-start" and "return" in reply:
                self._server, self._users_server = self._address(args), True
            return reply
        moved = self._stand_aside()
        try:
            reply = self._send(message)
            if "return" in reply and name == "nbd-server-start":
                self._server, self._users_server = self._address(args), True
            elif "return" in reply and name == "nbd-server-stop":
                self._server, self._users_server = None, False
        finally:
            self._come_back(moved)
        return reply

    def _address(self, args: dict) -> nbd.Address:
        """Where the user's NBD server listens (``nbd-server-start``'s ``addr``); "" where bitlab's
        client cannot connect (a vsock address)."""
        addr = args["addr"]
        data = addr.get("data", {})
        if addr.get("type") == "unix":
            return "\0" + data["path"] if data.get("abstract") else os.path.join(self.workdir, data["path"])
        if addr.get("type") == "inet":
            try:
                port = int(data["port"]) if str(data["port"]).isdigit() else socket.getservbyname(data["port"])
                return data["host"], port or self._listening_port()
            except (OSError, RuntimeError):
                return ""
        return ""

    def _reachable_server(self) -> nbd.Address:
        """The running NBD server's address for bitlab's own clients (one started if none runs)."""
        server = self._own_server()
        if not server:
            raise RuntimeError("bitlab's guest I/O cannot reach the NBD server you started (only unix "
                               "sockets and TCP are supported); stop it with nbd-server-stop")
        return server

    def _listening_port(self) -> int:
        """The TCP port QEMU chose for ``"port": "0"`` (the kernel's table of its listening sockets)."""
        assert self._proc is not None
        fds = Path(f"/proc/{self._proc.pid}/fd")
        inodes = {os.readlink(fd)[8:-1] for fd in fds.iterdir() if os.readlink(fd).startswith("socket:[")}
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                    return int(fields[1].rsplit(":", 1)[1], 16)
        raise RuntimeError("the NBD server's TCP port was not found")

    # -- the backend's NBD exports (guest I/O on qemu-storage-daemon) -------------------------
    def _export(self, node: str, attach: str | None = None, *, writable: bool = True) -> dict | None:
        """Export ``node`` over NBD as ``bitlab-guest-<node>`` (attached to ``attach`` if given);
        None, or the error reply. A read-only node is exported read-only."""
        self._own_server()
        args = {"type": "nbd", "id": EXPORT_PREFIX + node, "node-name": attach or node, "name": EXPORT_PREFIX + node,
                "writable": writable}
        reply = self._helper("block-export-add", args)
        read_only = writable and "error" in reply and "read-only" in reply["error"]["desc"]
        if read_only:
            reply = self._helper("block-export-add", {**args, "writable": False})
        if "error" in reply:
            return reply
        self._exports[node] = args["id"]
        if read_only:
            self._read_only.add(node)
        return None

    def _export_node(self, node: str) -> str | None:
        """The node the export of ``node`` is attached to now (a filter above it during a backup)."""
        export_id = self._exports.get(node)
        for info in self._helper_value("query-block-exports"):
            if info["id"] == export_id:
                return info["node-name"]
        return None

    def _unexport(self, node: str) -> str | None:
        """Remove the export of ``node`` and wait until it is gone; where it was attached."""
        export_id = self._exports.pop(node, None)
        self._read_only.discard(node)
        if export_id is None:
            return None
        attached = None
        for info in self._helper_value("query-block-exports"):
            if info["id"] == export_id:
                attached = info["node-name"]
        self._helper("block-export-del", {"id": export_id})
        deadline = time.monotonic() + self.timeout
        while any(info["id"] == export_id for info in self._helper_value("query-block-exports")):
            if time.monotonic() > deadline:
                raise TimeoutError(f"NBD export {export_id} was not removed")
            time.sleep(0.001)
        return attached

    def _blockdev_add(self, message: dict) -> dict:
        """blockdev-add, then export the new node; exports of nodes it takes as children go first."""
        args = message["arguments"]
        moved = {name: self._unexport(name) for name in dict.fromkeys(_child_refs(args)) if name in self._exports}
        aside: dict[str, str | None] = {}
        if self._exports and self._opened(_filenames(args)):  # a file open already: the exports' write locks
            aside = self._stand_aside(server=False)  # would meet the new node's (a bare QEMU has none)
        reply = self._send(message)
        if "error" in reply:
            for name, attached in moved.items():
                self._export(name, attached)
        self._come_back(aside)
        if "return" in reply and isinstance(args.get("node-name"), str):
            self._export(args["node-name"])
        return reply

    def _opened(self, filenames: set[str]) -> bool:
        """Whether a file node has one of ``filenames`` open (by the name QEMU reports)."""
        if not filenames:
            return False
        keys = {self._image_key(name) for name in filenames}
        return any(node["drv"] == "file" and self._image_key(node["image"]["filename"]) in keys
                   for node in self._helper_value("query-named-block-nodes", {"flat": True}))

    def _snapshot(self, message: dict, snapshots: dict[str, str]) -> dict:
        """An external snapshot on qemu-storage-daemon: the backend's exports (BlockBackends that would keep
        a new overlay alive, or make an exported overlay "in use") stand aside, as on a QEMU without them.
        If it worked, an export that was on a snapshotted node comes back on the top of its new chain — the
        overlay, if it is still there (one over a node without parents goes at once) — as the guest's view
        moves there in bitlab; the others come back where they were."""
        noted = message.get("execute") in NOTED_COMMANDS
        if noted:
            self._collect()
        moved = self._stand_aside(server=False)
        events_at = len(self.events)
        reply: dict = {}
        try:
            reply = self._send(message)
        finally:
            self._snapshot_come_back(moved, snapshots if "return" in reply else {})
        if noted and "return" in reply:
            history_of(self).note_command(self, message, reply, events_at)
        return reply

    def _snapshot_come_back(self, moved: dict[str, str | None], snapshots: dict[str, str]) -> None:
        """Export again what stood aside for a snapshot: up to the overlays (above a backup's filter, if a
        transaction started one there), or where it was if that cannot be."""
        for node, attached in moved.items():
            if node == BITMAP_KEY:
                continue
            was = attached or node
            place = was
            while place in snapshots:
                place = snapshots[place]
            if snapshots:
                place = self._filter_above(place) or place
            if place == was or self._export(node, place) is not None:
                self._export(node, attached)

    def _blockdev_del(self, message: dict) -> dict:
        """blockdev-del without the backend's exports in the way: the node's own, and those that came up
        onto it with a snapshot (put back if the command fails; those go back to their own node if not)."""
        node = message["arguments"].get("node-name")
        if not isinstance(node, str):
            return self._send(message)
        on_node = {info["id"] for info in self._helper_value("query-block-exports") if info["node-name"] == node}
        moved = {key: self._unexport(key) for key in list(self._exports)
                 if key == node or (key != BITMAP_KEY and self._exports[key] in on_node)}
        reply = self._send(message)
        for key, attached in moved.items():
            if "error" in reply:
                self._export(key, attached)
            elif key != node:
                self._export(key)
        return reply

    # -- time -----------------------------------------------------------------------------
    @property
    def now(self) -> float:
        """Seconds since the machine was made."""
        return time.monotonic() - self._t0

    def _wait_created(self, job_id: Any) -> None:
        """Until the create job has written its image: an export added while it runs on the node aborts
        QEMU 7.2 (``bdrv_do_drained_begin_quiesce: Assertion `!qemu_in_coroutine()' failed``)."""
        limit = time.monotonic() + self.timeout
        while any(job["id"] == job_id and job["status"] == "running" for job in self._helper_value("query-jobs")):
            if time.monotonic() > limit:
                raise TimeoutError(f"create job {job_id!r} did not finish within {self.timeout} s")
            self._collect(wait=0.002)

    def _settled(self, ready: bool = False) -> bool:
        """No job runs: each is concluded, pending or paused, or (``ready``) a mirror waiting for job-complete
        that was not told to complete or cancel."""
        jobs = self._helper_value("query-jobs")
        self._ending &= {job["id"] for job in jobs}
        return all(job["status"] in SETTLED or (ready and job["status"] == "standby") or (
            ready and job["status"] == "ready" and job["id"] not in self._ending) for job in jobs)

    def run(self, until: float | None = None, timeout: float | None = None) -> None:
        """Wait until every job has settled (none left, or concluded, pending or paused), or until
        ``until`` seconds since start; raise TimeoutError after ``timeout`` seconds."""
        limit = time.monotonic() + (timeout or self.timeout)
        if not self.started:
            if until is not None:
                time.sleep(max(0.0, until - self.now))
            return
        while True:
            if until is not None and self.now >= until:
                return
            if until is None and self._settled(ready=True):
                self._collect()
                if self._switching:
                    self._switched()
                return
            if time.monotonic() > limit:
                jobs = self._helper_value("query-jobs")
                raise TimeoutError(f"jobs did not settle within {timeout or self.timeout} s: {jobs}")
            self._collect(wait=0.002)

    def step(self, timeout: float | None = None) -> bool:
        """Wait for the next QMP event; False when no job is left to produce one."""
        if not self.started:
            return False
        before = len(self.events)
        self._collect()
        if self._switching:
            self._switched()
        settled = self._settled()  # its reply may come after the events that settled the jobs
        if len(self.events) > before:
            return True
        if settled:
            return False
        return bool(self._collect(wait=timeout or self.timeout))

    # -- images and drives -----------------------------------------------------------------
    def qemu_img(self, *args: str) -> str:
        """Real qemu-img in the work directory; its stdout (a :class:`QemuImgOutput`, ``stderr`` its warnings), or
        :class:`QemuImgError`. Without ``-U`` it meets
        the file locks of the QEMU running here: the backend's own guest exports (which write every top
        node) stand aside meanwhile if it opens a file QEMU has open, as on a QEMU without them."""
        args = tuple(map(str, args))
        aside: dict[str, str | None] = {}
        if self._exports and not {"-U", "--force-share"} & set(args):
            files = {arg for arg in args if os.path.isfile(os.path.join(self.workdir, arg))}
            if self._opened(files):
                aside = self._stand_aside(server=False)
        try:
            out = subprocess.run(["qemu-img", *args], cwd=self.workdir, capture_output=True, text=True, timeout=60)
        finally:
            self._come_back(aside)
        if out.returncode != 0:
            raise QemuImgError(out.stderr, out.returncode, out.stdout)
        self._note_restore(args)
        return QemuImgOutput(out.stdout, out.stderr)

    def _note_restore(self, args: tuple[str, ...]) -> None:
        """A restore into a running disk (``convert -n`` into one of the user's NBD exports here): the history
        notes what it wrote — the source's content, zeroes too — as writes to the export's node, so the point in
        time of a later backup still replays (drives start blank: see :meth:`_capture_content`)."""
        if len(args) < 3 or args[0] != "convert" or "-n" not in args:
            return
        try:
            opts, positional = cmdline.parse("convert", list(args[1:]), _EVERY_OPTION)
            where = qemu_img_nbd.from_filename(positional[-1])
        except QemuImgError:
            return  # (not an NBD name: a file, which no guest of this machine reads)
        node = next((n for name, n in self._user_exports.values() if name == (where.export or "")), None)
        if node is None:
            return
        tmp = ".bitlab-restored.raw"
        fmt = ["-f", opts["-f"]] if "-f" in opts else []
        subprocess.run(["qemu-img", "convert", "-U", *fmt, "-O", "raw", positional[0], tmp], cwd=self.workdir,
                       capture_output=True, check=True, timeout=60)
        try:
            content = Content.from_bytes(np.fromfile(os.path.join(self.workdir, tmp), dtype=np.uint8))
        finally:
            os.unlink(os.path.join(self.workdir, tmp))
        history = history_of(self)
        target = self._drive_name(node)  # (a drive's by its device name: a job's filter may be its root later)
        for a, b, v in zip(content.starts.tolist(), content.ends.tolist(), content.vals.tolist()):
            history.note_write(target, a, b - a, v)

    def dirty_bitmap(self, node: str, name: str) -> DirtyBitmap:
        """The bits of bitmap ``name`` on ``node``, read as a client would: an NBD export of the
        bitmap (``qemu:dirty-bitmap:NAME``) mapped with qemu-img, checked against QEMU's sha256.
        ``node`` may name a device, as the bitmap commands accept."""
        sha = self._helper_value("x-debug-block-dirty-bitmap-sha256", {"node": node, "name": name})
        node = next((b["inserted"]["node-name"] for b in self._helper_value("query-block")
                     if b["device"] == node and "inserted" in b), node)
        info = next(i for i in self._helper_value("query-named-block-nodes", {"flat": True}) if i["node-name"] == node)
        flags = next(b for b in info.get("dirty-bitmaps", []) if b.get("name") == name)
        bm = DirtyBitmap(size=info["image"]["virtual-size"], granularity=flags["granularity"], name=name,
                         disabled=not flags["recording"], busy=flags["busy"], persistent=flags["persistent"],
                         inconsistent=flags.get("inconsistent", False))
        had_server = self._server is not None
        server = self._reachable_server()
        export = {"type": "nbd", "id": BITMAP_EXPORT, "node-name": node, "name": BITMAP_EXPORT,
                  "writable": not bm.disabled, "bitmaps": [name]}
        try:
            reply = self._helper("block-export-add", export)
            if "error" in reply and "read-only" in reply["error"]["desc"]:
                reply = self._helper("block-export-add", {**export, "writable": False})
            reply_value(reply)
            self._exports[BITMAP_KEY] = BITMAP_EXPORT
            try:
                with nbd.reachable(server if isinstance(server, str) else "") as path:
                    where = (f"server.type=unix,server.path={path}" if isinstance(server, str) else
                             f"server.type=inet,server.host={server[0]},server.port={server[1]}")
                    opts = f"driver=nbd,{where},export={BITMAP_EXPORT},x-dirty-bitmap=qemu:dirty-bitmap:{name}"
                    extents = json.loads(self.qemu_img("map", "--output=json", "--image-opts", opts))
            finally:
                self._unexport(BITMAP_KEY)
        finally:
            if not had_server and not self._exports:  # started for this read only
                self._helper("nbd-server-stop")
                self._server = None
        dirty = [e for e in extents if not e["data"]]  # NBD reports dirty areas as holes
        bm.set_ranges(np.array([e["start"] for e in dirty], dtype=np.int64),
                      np.array([e["length"] for e in dirty], dtype=np.int64))
        if bm.sha256() != sha["sha256"]:
            raise RuntimeError(f"bitmap {name!r} read over NBD does not match QEMU's sha256")
        return bm

    def add_drive(self, name: str, size: int | str = "64M", format: str = "qcow2", *, file: str | None = None,
                  blkdebug: dict | None = None, node_name: str | None = None, read_only: bool = False) -> str:
        """``-drive if=none,id=NAME,...`` added at run time with HMP ``drive_add`` (system emulator)."""
        self._ensure("add_drive")
        filename = file or f"{name}.{format}"
        if not os.path.exists(os.path.join(self.workdir, filename)):
            self.qemu_img("create", "-f", format, filename, str(size))
        opts = [f"if=none,id={name},format={format}"]
        if node_name is not None:
            opts.append(f"node-name={node_name}")
        if read_only:
            opts.append("readonly=on")
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
        # (the block graph names the device's root node without building image infos, which would read a qcow2
        # image's bitmap directory: over blkdebug, an armed rule may fail that read or be used up by it)
        graph = self._helper_value("x-debug-query-block-graph")
        names = {node["id"]: node["name"] for node in graph["nodes"]}
        device = next(node["id"] for node in graph["nodes"] if node["type"] == "block-backend" and node["name"] == name)
        return names[next(edge["child"] for edge in graph["edges"] if edge["parent"] == device)]

    # -- guest I/O --------------------------------------------------------------------------
    def hmp(self, command_line: str) -> str:
        """human-monitor-command (system emulator only); the monitor's reply text."""
        return self.qmp("human-monitor-command", {"command-line": command_line})

    def console_take(self, stream: str = "stdout") -> str:
        """What QEMU printed since the last call (stdout and stderr share one file here)."""
        if not self._out.exists():
            return ""
        data = self._out.read_bytes()
        text, self._out_pos = data[self._out_pos:].decode(errors="replace"), len(data)
        return text

    def qemu_io(self, node: str, command: str) -> str:
        """One qemu-io command on ``node``; qemu-io's output.

        System emulator: HMP ``qemu-io``. qemu-storage-daemon: over the node's NBD export
        (which, like a guest's device, sits above a backup's filter), without a flush.
        """
        if self._ensure() == "qsd":
            req = parse_qemu_io(command)  # qemu-io's own complaints, as bitlab raises them
            return self._nbd_io(node, req) if req.verb else ""
        self.console_take()
        reply = self.hmp(f'qemu-io {node} "{command}"')
        if reply and parse_qemu_io(command).verb == "info":  # its format-specific lines come through the monitor
            return self.console_take() + reply.replace("\r\n", "\n")
        if reply:
            raise QMPError(reply.strip().removeprefix("Error: "))
        return self.console_take()

    def _nbd_io(self, node: str, req: Request, attach: str | None = None) -> str:
        if req.verb in NBD_UNANSWERED or req.compress:
            what = "write -c" if req.compress else req.verb
            raise QemuDaemonError(f"qemu-io '{what}' needs the block layer itself, which NBD does not reach: "
                                  "use the system emulator (Machine(backend='qemu', daemon='system'), or add_drive "
                                  "first), or block_resize for truncate")
        temporary = node not in self._exports
        if temporary:  # not a blockdev-add'ed node: exported for this request only (at ``attach`` if given),
            # and like HMP qemu-io's own BlockBackend it takes the write permission only to write or discard
            failed = self._export(node, attach, writable=req.verb in ("write", "discard"))
            if failed is not None:
                reply_value(failed)
        try:
            if req.verb in ("write", "discard") and node in self._read_only:
                # (over NBD: EPERM; a guest's BlockBackend, like HMP qemu-io's, cannot take the permission)
                raise QMPError("Block node is read-only")
            return nbd.qemu_io(self._reachable_server(), EXPORT_PREFIX + node, req, self.timeout)
        finally:
            if temporary:
                self._unexport(node)
            self._collect()

    def guest_name(self, name: str) -> str:
        """Where a guest's I/O to ``name`` enters: a device, or for a bare node the
        copy-before-write filter above it during a backup (on qsd: where its export sits)."""
        if self._ensure() == "qsd":
            return (self._export_node(name) if name in self._exports else None) or name
        if any(b["device"] == name for b in self._helper_value("query-block")):
            return name
        name = self._overlay_above(name)
        # the topmost filter: backups of one node stack their filters (the newest lowest), and only
        # the top one shares the write permission on its child
        return self._filter_above(name) or name

    def guest_io(self, node: str, command: str) -> str:
        """A guest's request to ``node`` (a device, or a node as a guest would see it).

        On qemu-storage-daemon a node without an export of its own (one a ``blockdev-add`` took as a
        child) gets one for the request where a guest would enter: above a backup's filter, as bitlab
        and the system emulator address it."""
        if self._ensure() == "qsd":
            if node in self._exports:
                return self.qemu_io(node, command)
            req = parse_qemu_io(command)
            filtered = self._filter_above(node)
            return self._nbd_io(node, req, filtered) if req.verb else ""
        return self.qemu_io(self.guest_name(node), command)

    def _overlay_above(self, name: str) -> str:
        """The top overlay that snapshots put above node ``name`` (each still holding the node below as its
        backing file, through a backup's filter maybe), or ``name``: where bitlab's guest of the node went."""
        if name not in self._overlays:
            return name
        graph, drivers = self._graph_view()
        names = {node["id"]: node["name"] for node in graph["nodes"]}
        below = {(names[edge["parent"]], edge["name"]): names[edge["child"]] for edge in graph["edges"]
                 if edge["parent"] in names and edge["child"] in names}
        while name in self._overlays:
            over = self._overlays[name]
            child = below.get((over, "backing"))
            while child is not None and drivers.get(child) == "copy-before-write":
                child = below.get((child, "file"))
            if child != name:
                break
            name = over
        return name

    def _graph_view(self) -> tuple[dict, dict[str, str]]:
        """``x-debug-query-block-graph`` and each node's driver, taken while the graph stood still: a job
        ending between two queries removes its filter (asked again until the drivers before and after
        the graph agree)."""
        drivers = None
        for _ in range(20):
            graph = self._helper_value("x-debug-query-block-graph")
            after = {node["node-name"]: node["drv"]
                     for node in self._helper_value("query-named-block-nodes", {"flat": True})}
            if after == drivers:
                break
            drivers = after
        return graph, after

    def _filter_above(self, name: str) -> str | None:
        """The topmost job filter over node ``name`` (copy-before-write and copy-on-read up their 'file' link,
        mirror_top up its 'backing' link), if any."""
        graph, drivers = self._graph_view()
        role = {node: "file" if drv in ("copy-before-write", "copy-on-read") else "backing"
                for node, drv in drivers.items() if drv in ("copy-before-write", "mirror_top", "copy-on-read")}
        names = {node["id"]: node["name"] for node in graph["nodes"]}
        above = {names[edge["child"]]: names[edge["parent"]] for edge in graph["edges"]
                 if role.get(names[edge["parent"]]) == edge["name"]}
        top = None
        while name in above:
            name = top = above[name]
        return top


class _OwnThread:
    """A synchronous QMP client kept on a thread of its own.

    qemu.qmp's synchronous client drives an asyncio loop with ``run_until_complete``, which
    cannot run where a loop is already running (a Jupyter kernel): there, every call is
    handed to one worker thread with a loop of its own.
    """

    def __init__(self, make: Callable[[], Any]) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bitlab-qmp")
        try:
            self._obj = self._pool.submit(make).result()
        except BaseException:
            self._pool.shutdown(wait=False)
            raise

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._obj, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: self._pool.submit(attr, *args, **kwargs).result()

    def _sync(self, future: Any, timeout: float | None = None) -> Any:
        return self._pool.submit(self._obj._sync, future, timeout).result()

    def close(self) -> None:
        try:
            self._pool.submit(self._obj.close).result()
        finally:
            self._pool.shutdown(wait=False)


def _client(make: Callable[[], Any]) -> Any:
    """``make()`` here, or on a thread of its own when an asyncio loop already runs here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return make()
    return _OwnThread(make)
