"""Machine: a simulated QEMU 7.2 — block graph, image store, clock, events, QMP."""

from __future__ import annotations

import copy
import marshal
import os
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from . import qemu_img as _qemu_img
from .bitmap import DirtyBitmap
from .block.drivers import QEMU_DRIVERS
from .block.export import BlockExports, NbdConnectError
from .block.graph import BlockGraph
from .block.info import skip_filters
from .block.node import BlockNode
from .block.store import ImageFile, ImageStore
from .clock import DEFAULT_START_NS, SimClock
from .content import Content
from .errors import QMPError, generic
from .guest import GuestIO
from .history import NOTED_COMMANDS, history_of
from .jobs.block_copy import cbw_block_copy
from .jobs.job import JobManager
from .monitor import Monitor
from .qemu_img import Layer, read_chain
from .qemu_img._common import printed_before
from .qmp import TABLE
from .qmp.qapi import wire_order
from .qmp.qemu_io import parse_qemu_io
from .qmp.qom import ObjectRoot
from .sim import Scheduler
from .units import parse_size


def _copy_message(value: Any) -> Any:
    """A deep copy of a wire message for the transcript. Plain data (JSON's types) goes through
    ``marshal`` — bytes made here and read back at once, never input — which is several times
    quicker than rebuilding it in Python; anything else (a caller's own objects) through
    ``copy.deepcopy``."""
    try:
        return marshal.loads(marshal.dumps(value))
    except ValueError:  # marshal takes only the built-in types, exactly
        return copy.deepcopy(value)


def _opt_str(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


# Where the simulated machine's files appear to live (absolute paths must be inside).
DEFAULT_WORKDIR = "/var/lib/bitlab"


def _frozen(image: ImageFile) -> ImageFile:
    """A copy of an image file to read its content from later: its runs copied, nothing rebuilt (no host
    layout, no locks: a reader needs neither)."""
    frozen = object.__new__(type(image))  # copy.copy's own steps for a plain instance, without its dispatch
    frozen.__dict__.update(image.__dict__, data=image.data.copy(), _layout=None)
    return frozen


class EventSink:
    """A machine's QMP events: stamped with its clock, kept in its event list and transcript, passed to
    its listeners. The machine's parts that emit (jobs, exports, write thresholds) hold this, not the
    machine: no reference cycle runs through them, and a machine nobody holds is freed at once."""

    __slots__ = ("clock", "events", "transcript", "listeners")

    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        self.events: list[dict] = []
        self.transcript: list[dict] = []
        self.listeners: list[Callable[[dict], None]] = []

    def emit(self, event: str, data: dict | None = None) -> dict:
        """Record a QMP event stamped with the simulated clock."""
        return self.emit_wire(event, None if data is None else wire_order(data))

    def emit_wire(self, event: str, data: dict | None) -> dict:
        """:meth:`emit` of ``data`` already in wire order: a new dict of scalars that no caller keeps
        (as :func:`wire_order` would have made it)."""
        micros = self.clock.now_ns // 1000  # (the timestamp's members are in wire order already)
        msg = {"timestamp": {"seconds": micros // 1_000_000, "microseconds": micros % 1_000_000}, "event": event}
        if data is not None:
            msg["data"] = data
        self.events.append(msg)
        self.transcript.append({"kind": "event", "message": msg})
        if self.listeners:
            for listener in list(self.listeners):
                listener(msg)
        return msg


class Machine(GuestIO, Monitor):
    """A simulated QEMU 7.2, driven by QMP.

    >>> vm = Machine()
    >>> vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "drive0", "size": 64 << 20})
    {}
    """

    backend = "sim"

    def __new__(cls, *args: Any, backend: str | None = None, **kwargs: Any) -> Any:
        """``Machine(backend="qemu")`` (or ``BITLAB_BACKEND=qemu``) gives the same API over real QEMU."""
        if (backend or os.environ.get("BITLAB_BACKEND", "sim")) == "qemu":
            from .backends.qemu import QemuMachine

            return QemuMachine(**kwargs)
        return super().__new__(cls)

    def __init__(self, *, seed: int = 0, start_ns: int = DEFAULT_START_NS, images: ImageStore | None = None,
                 workdir: str = DEFAULT_WORKDIR, clock: SimClock | None = None,
                 scheduler: Scheduler | None = None, backend: str | None = None,
                 daemon: str | None = None) -> None:
        self._start_ns = start_ns
        self.images = images if images is not None else ImageStore()
        self.workdir = workdir
        self.graph = BlockGraph(self.images, workdir, seed=seed, machine=True)
        self.clock = clock if clock is not None else SimClock(start_ns)
        self.scheduler = scheduler if scheduler is not None else Scheduler(self.clock)
        self.sink = EventSink(self.clock)
        self.listeners = self.sink.listeners  # called with every event as it is emitted
        self.jobs = JobManager(self.sink.emit, self.scheduler, self.sink.emit_wire)
        # (the scheduler, not a bound method: the graph holds no reference back to the machine)
        self.graph.block_copy_factory = partial(cbw_block_copy, scheduler=self.scheduler)
        self.exports = BlockExports(self.graph.blks, self.sink.emit, self.graph._drop_unowned,  # NBD server, exports
                                    self.jobs.drain_section)
        # qemu-img's NBD client reaches this machine's NBD server (weakly: the store holds no cycle to the machine)
        self.images.nbd = partial(_nbd_connect, weakref.ref(self.exports), workdir)
        self.objects = ObjectRoot(self.scheduler)  # object-add's /objects: throttle groups
        self.graph.throttle_groups = self.objects.groups
        self.jobs.throttle_drain, self.jobs.throttle_groups = self.graph.drain_throttles, self.objects.groups
        self.events = self.sink.events
        self.transcript = self.sink.transcript  # every QMP message and reply, in order
        self.console: list[str] = []  # what the emulator prints on stdout (qemu-io output from HMP)
        self.console_err: list[str] = []  # ... and on stderr
        self.runstate = "running"  # the VM's RunState: "running" or, after ``stop``, "paused"
        # whose exit ``quit`` is: qemu-storage-daemon's (exports closed before the reply) unless "system"
        self.daemon = daemon or "qsd"

    # -- QMP ----------------------------------------------------------------------
    def execute(self, message: dict) -> dict:
        """Run one wire-shaped QMP message and return the wire-shaped reply."""
        self.transcript.append({"kind": "cmd", "message": _copy_message(message)})
        events_at = len(self.events)
        reply = TABLE.dispatch(self, message)
        quitting = message.get("execute") == "quit" and "return" in reply
        system = self.daemon == "system"
        if quitting and not system:
            self.exports.close_all()  # qemu-storage-daemon's exit: each export goes before the reply is sent
        self.transcript.append({"kind": "reply", "message": reply})
        if quitting:
            if system:  # the system emulator's main loop: SHUTDOWN, then qemu_cleanup closes the exports
                self.emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
                self.exports.close_all()
            self.jobs.cancel_sync_all()  # QEMU's exit after the reply: its jobs cancelled, each to the end
        if message.get("execute") in NOTED_COMMANDS and "return" in reply:
            history_of(self).note_command(self, message, reply, events_at)
        return reply

    def dirty_bitmap(self, node: str, name: str) -> DirtyBitmap:
        """A snapshot of bitmap ``name`` on ``node`` (bits and flags) for pictures and checks;
        QEMU's errors for a node or bitmap that does not exist."""
        _, bm = self.graph.lookup_bitmap(node, name)
        return DirtyBitmap(size=bm.size, granularity=bm.granularity, name=bm.name, disabled=not bm.recording,
                           busy=bm.busy, persistent=bm.persistent, inconsistent=bm.inconsistent,
                           readonly=bm.readonly, bits=bm.bits.copy())

    def emit(self, event: str, data: dict | None = None) -> dict:
        """Record a QMP event stamped with the simulated clock (:meth:`EventSink.emit`)."""
        return self.sink.emit(event, data)

    # -- naming -------------------------------------------------------------------
    def device_name(self, node: BlockNode) -> str:
        """bdrv_get_device_name: the device whose root is this node (or the filter above it), else ''."""
        view = self.graph.filter_view(node)
        for device, root in self.graph.devices.items():
            if root is node or root is view:
                return device
        return ""

    def device_or_node_name(self, node: BlockNode) -> str:
        """bdrv_get_device_or_node_name: the device above the node, else its node name."""
        return self.graph.device_or_node_name(node)

    # -- simulated time -----------------------------------------------------------
    def step(self) -> bool:
        """Run the next scheduled simulation event; False when nothing is left."""
        return self.scheduler.step()

    def run(self, until: float | None = None) -> None:
        """Run until idle, or until the simulated time ``until`` (seconds since the machine's epoch)."""
        until_ns = None if until is None else self._start_ns + int(until * 1_000_000_000)
        self.scheduler.run(until_ns)

    @property
    def now(self) -> float:
        """Simulated seconds since the machine started."""
        return (self.clock.now_ns - self._start_ns) / 1_000_000_000

    # -- drives (the system emulator's -drive if=none) ------------------------------
    def add_drive(self, name: str, size: int | str = "64M", format: str = "qcow2", *, file: str | None = None,
                  blkdebug: dict | None = None, node_name: str | None = None, read_only: bool = False) -> str:
        """Like ``-drive if=none,id=NAME,file=FILE,format=FORMAT[,node-name=…][,readonly=on]``: a device over a
        node tree (nodes auto-named unless ``node_name`` is given).

        ``blkdebug={"inject-error": [...], "set-state": [...]}`` puts a blkdebug node between the
        format node and its file. The image is created if it does not exist. Returns the root
        node's name.
        """
        if name in self.graph.devices or name in self.graph.nodes:
            raise generic(f"Duplicate ID '{name}' for drive")
        filename = file or f"{name}.{format}"
        if self.graph.store_key(filename) not in self.images:
            self.qemu_img("create", "-f", format, filename, str(size))
        file_opts: dict = {"driver": "file", "filename": filename}
        if blkdebug is not None:
            # -drive options are strings (QemuOpts): 2 -> "2", True -> "on"; no rule, no option
            rules = {key: [{k: _opt_str(v) for k, v in rule.items()} for rule in blkdebug[key]]
                     for key in ("inject-error", "set-state") if blkdebug.get(key)}
            file_opts = {"driver": "blkdebug", "image": file_opts, **rules}
        opts: dict = {"driver": format, "file": file_opts}
        if node_name is not None:
            opts["node-name"] = node_name
        node = self.graph.open(opts, read_only=read_only)
        self.graph.devices[name] = node
        self.graph.new_backend(("device", name))
        return node.node_name

    def create_image(self, filename: str, fmt: str, size: int, backing: BlockNode | None,
                     open_backing: bool = True) -> None:
        """bdrv_img_create, as drive-backup uses it. With ``open_backing`` False (sync=none's
        BDRV_O_NO_BACKING) the backing file is only named in the new image, not opened. Errors
        carry bdrv_img_create's message alone (no file name prefix, no hint line); a format QEMU has no
        driver for fails first, as bdrv_find_format does. It prints what qemu-img create prints."""
        if fmt not in QEMU_DRIVERS:
            raise generic(f"Unknown file format '{fmt}'")
        args = ["create", "-f", fmt]
        if backing is not None:
            args += ["-b", backing.filename, "-F", backing.driver] + ([] if open_backing else ["-u"])
        try:
            self.console.append(self.qemu_img(*args, filename, str(size)))  # (its "Formatting '…'" line, on stdout)
        except _qemu_img.QemuImgError as err:  # (the block modules it looked for: on the emulator's stderr)
            printed = printed_before(err)
            first = err.stderr[len(printed):].strip().splitlines()[0].removeprefix("qemu-img: ")
            raise QMPError(first.removeprefix(f"{filename}: "), printed=printed) from None

    def probe_format(self, filename: str) -> str:
        key = self.graph.store_key(filename)
        if key not in self.images:
            raise generic(f"Could not open '{filename}': No such file or directory")
        return self.images[key].fmt

    def close_node(self, name: str) -> None:
        self.graph.delete(name)

    # -- guest I/O ----------------------------------------------------------------
    def _node(self, name: str) -> BlockNode:
        """The node a guest's I/O to ``name`` (device or node) enters."""
        return self.graph.guest_view(self.graph.devices.get(name) or self.graph.lookup_node(name))

    def hmp(self, command_line: str) -> str:
        """human-monitor-command through QMP; returns the monitor's reply text."""
        return self.qmp("human-monitor-command", {"command-line": command_line})

    def console_take(self, stream: str = "stdout") -> str:
        """What the emulator printed on ``stdout`` or ``stderr`` since the last call."""
        lines = self.console if stream == "stdout" else self.console_err
        text = "".join(lines)
        lines.clear()
        return text

    def qemu_io(self, node: str, command: str) -> str:
        """``qemu-io NODE "COMMAND"`` via the human monitor, as an operator would.

        Returns qemu-io's output (which QEMU prints on its stdout, not in the QMP reply).
        """
        req = parse_qemu_io(command)  # fail early on nonsense, like qemu-io's parser
        self.console_take()
        self.console_take("stderr")
        reply = self.hmp(f'qemu-io {node} "{command}"')
        if reply and req.verb == "info":  # its format-specific lines come through the monitor
            return self.console_take() + reply.replace("\r\n", "\n") + self.console_take("stderr")
        if reply:
            raise QMPError(reply.strip().removeprefix("Error: "))
        return self.console_take() + self.console_take("stderr")

    def guest_name(self, name: str) -> str:
        """Where a guest's I/O to a device or node enters: the device itself, or for a bare node
        the topmost filter above it (during a backup, the copy-before-write filter)."""
        if name in self.graph.devices:
            return name
        node = self.graph.nodes.get(name)
        if node is None:
            return name  # (the monitor's qemu-io then says QEMU's text: no such device or node)
        return self.graph.guest_view(node).node_name

    def guest_io(self, node: str, command: str) -> str:
        """A guest's request (qemu-io through the monitor, addressed where the guest sits)."""
        return self.qemu_io(self.guest_name(node), command)

    def write_batch(self, node: str, offsets: Any, lengths: Any, patterns: Any = 0xCD) -> None:
        """Many guest writes at once, applied in order, straight to the engine (no QMP).

        ``offsets`` and ``lengths`` are arrays (or scalars) of bytes; millions are fine. Bytes are
        stored as given: a node's ``detect-zeroes`` does not turn zero patterns into zero writes here
        (``vm.write`` does, as QEMU does per request).
        """
        target = self._node(node)
        offs = np.asarray(offsets, dtype=np.int64)
        lens = np.broadcast_to(np.asarray(lengths, dtype=np.int64), offs.shape)
        if offs.size and (offs.min() < 0 or (offs + lens).max() > target.size):
            raise ValueError(f"write beyond the end of node '{target.node_name}' ({target.size} bytes)")
        vals = np.broadcast_to(np.asarray(patterns, dtype=np.int64), offs.shape)
        target.write_batch(offs, lens, vals)

    def contents(self, node: str, offset: int | str = 0, length: int | str | None = None) -> list[tuple]:
        """What a guest reads, as runs ``(start, end, value)``; value is the pattern byte."""
        target = self._node(node)
        off = parse_size(offset)
        ln = target.size - off if length is None else parse_size(length)
        starts, ends, vals = target.read_extents(off, ln)
        return [(int(s), int(e), int(v)) for s, e, v in zip(starts, ends, vals)]

    # -- what bitlab.history and bitlab.chain ask of a backend --------------------------
    def _image_key(self, path: str) -> str:
        """A file's name in the image store."""
        return self.graph.store_key(path)

    def _file_of(self, node: BlockNode) -> str | None:
        """The image file under a node (through format and blkdebug layers), or None (null-co)."""
        image = getattr(node, "image", None)
        if image is not None:
            return image.name
        for role in ("file", "image"):
            child = node.child(role)
            if child is not None:
                return self._file_of(child)
        return None

    def _node_file(self, name: str) -> str | None:
        return self._file_of(self.graph.lookup_node(name))

    def _drive_name(self, name: str) -> str:
        """A device's name for a device or its root node; other nodes keep their name."""
        if name in self.graph.devices:
            return name
        node = self.graph.nodes.get(name)
        return self.device_or_node_name(node) if node is not None else name

    def _write_generation(self, name: str) -> int:
        """Changes so far to the drive's image files (their version counters, summed down its backing chain:
        after an external snapshot the overlay's count on, from what the old top had)."""
        node = self.graph.devices.get(name) or self.graph.nodes.get(name)
        while node is not None and node.driver == "copy-before-write":  # a backup's filter: what it filters
            node = node.child("file")
        total = 0
        while node is not None:
            file = self._file_of(node)
            if file is not None and file in self.images:
                total += self.images[file].data.version
            node = node.backing
        return total

    def _capture_content(self, name: str) -> Callable[[], Content]:
        """What a guest of ``name`` reads now, exactly: the drive's image chain is copied (cheap copies of
        its runs) and read, as qemu-img would read it, only if someone asks. A node's own content: a backup's
        filter reads the same, a snapshot's overlay above it (where the guest's writes now go) does not."""
        node = self.graph.filter_view(self.graph.devices.get(name) or self.graph.lookup_node(name))
        frozen: list[Layer] = []
        below: BlockNode | None = node
        while below is not None:  # (the chain the node has open: not always the one its image names)
            below = skip_filters(below)
            file = self._file_of(below)
            if file is None or file not in self.images:  # null-co and friends: read now
                content = Content.from_runs(node.size, *node.read_extents(0, node.size))
                return lambda: content
            frozen.append(Layer(file, _frozen(self.images[file])))
            below = below.backing
        return lambda: Content.from_runs(frozen[0].size, *read_chain(frozen, 0, frozen[0].size))

    # -- images -------------------------------------------------------------------
    def qemu_img(self, *args: str) -> str:
        """Run ``qemu-img`` on this machine's image store; returns its stdout (a :class:`QemuImgOutput`: its
        ``stderr`` holds the warnings qemu-img printed).

        Raises :class:`bitlab.QemuImgError` with qemu-img's message on failure.
        """
        return _qemu_img.run(self.images, [str(a) for a in args], self.graph.store_key)

    # -- life ---------------------------------------------------------------------
    def restart(self, *, clean: bool = True) -> Machine:
        """A new machine over the same image files, after a clean quit or a kill.

        A clean quit stores persistent bitmaps; after a kill they reload inconsistent.
        """
        if clean:
            self.exports.close_all()  # as at quit: each export goes, with its BLOCK_EXPORT_DELETED
        self.graph.close_all(clean=clean)
        return Machine(images=self.images, start_ns=self.clock.now_ns, workdir=self.workdir, backend="sim",
                       daemon=self.daemon)


def _nbd_connect(exports: weakref.ref, workdir: str, kind: str, where: str, name: str, context: str | None,
                 write: bool = False) -> Any:
    """The image store's ``nbd`` hook: :meth:`BlockExports.connect` of a machine still alive."""
    alive = exports()
    if alive is None:
        raise NbdConnectError(f"Failed to connect to '{where}': "
                              f"{'No such file or directory' if kind == 'unix' else 'Connection refused'}")
    return alive.connect(kind, where, name, context, workdir, write)
