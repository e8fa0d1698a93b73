"""A machine's history as backups need it: guest writes, bitmap commands and backup starts.

Both backends note every successful QMP command here, and every guest write made through
``write``/``write_zeroes``/``discard``. A backup's *point in time* is the moment its command
(or transaction) returned: the content of the drive then is captured — read exactly on the
simulator, replayed from the noted writes on real QEMU — so :mod:`bitlab.chain` can later
prove a backup image by restoring it and comparing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .content import Content

BITMAP_COMMANDS = {"block-dirty-bitmap-add": "add", "block-dirty-bitmap-remove": "remove",
                   "block-dirty-bitmap-clear": "clear", "block-dirty-bitmap-enable": "enable",
                   "block-dirty-bitmap-disable": "disable", "block-dirty-bitmap-merge": "merge"}
BACKUP_COMMANDS = ("drive-backup", "blockdev-backup")
NOTED_COMMANDS = frozenset({"transaction", *BITMAP_COMMANDS, *BACKUP_COMMANDS})


@dataclass
class Write:
    """A guest write noted in order: ``value`` is the byte it leaves (0 for zeroes/discard)."""

    seq: int
    target: str
    offset: int
    length: int
    value: int


@dataclass
class BitmapOp:
    """A successful bitmap command (standalone or a transaction action)."""

    seq: int
    events_at: int  # how many events the machine had emitted before the command
    op: str  # add, remove, clear, enable, disable, merge
    node: str
    drive: str  # the device above the node, else the node (resolved when noted)
    name: str
    args: dict
    generation: int  # the node's write generation at that moment


@dataclass
class BackupStart:
    """A backup job started by a successful command: what it copies, from when, to where."""

    seq: int
    events_at: int
    job: str
    device: str
    drive: str  # the device's name, also when addressed by its root node's name
    target: str  # drive-backup: the file; blockdev-backup: the target node
    target_file: str | None  # the image file the job writes (None for a node without a plain file)
    sync: str
    bitmap: str | None
    bitmap_mode: str | None
    completion_mode: str  # "individual" or "grouped" ("individual" outside a transaction)
    transaction: int | None  # seq of the transaction, if it came in one
    generation: int  # the device's write generation at the point in time
    snapshot: Callable[[], Content] = field(repr=False)  # what the device read then, computed on demand
    _content: Content | None = field(default=None, repr=False)

    @property
    def content(self) -> Content:
        """What the device read at the point in time."""
        if self._content is None:
            self._content = self.snapshot()
        return self._content


@dataclass
class History:
    """Everything noted so far, in order (``seq`` numbers are shared by all entries)."""

    entries: list[Any] = field(default_factory=list)

    @property
    def seq(self) -> int:
        return len(self.entries)

    @property
    def writes(self) -> list[Write]:
        return [e for e in self.entries if isinstance(e, Write)]

    @property
    def backups(self) -> list[BackupStart]:
        return [e for e in self.entries if isinstance(e, BackupStart)]

    def note_write(self, target: str, offset: int, length: int, value: int) -> None:
        self.entries.append(Write(self.seq, target, offset, length, value))

    def generation(self, names: set[str]) -> int:
        """How many noted writes went to any of ``names`` (a drive's device and node names)."""
        return sum(1 for w in self.writes if w.target in names)

    def replay(self, names: set[str], size: int) -> Content:
        """The content of a drive created blank, after the noted writes to it."""
        writes = [w for w in self.writes if w.target in names]
        if not writes:
            return Content.blank(size)
        return Content.blank(size).overlay([w.offset for w in writes], [w.offset + w.length for w in writes],
                                           [w.value for w in writes])

    def note_command(self, vm: Any, message: dict, reply: dict, events_at: int) -> None:
        """Note a command that succeeded (failed ones change nothing: a transaction rolls back);
        ``events_at`` is how many events the machine had before the command was sent."""
        if not isinstance(reply, dict) or "return" not in reply or not isinstance(message.get("arguments"), dict):
            return
        name, args = message.get("execute"), message["arguments"]
        if name == "transaction":
            tx = self.seq
            props = args.get("properties") if isinstance(args.get("properties"), dict) else {}
            for action in args.get("actions", []):
                self._note_action(vm, action.get("type"), action.get("data", {}), tx,
                                  props.get("completion-mode", "individual"), events_at)
        else:
            self._note_action(vm, name, args, None, "individual", events_at)

    def _note_action(self, vm: Any, name: Any, data: dict, tx: int | None, mode: str, events_at: int) -> None:
        if name in BITMAP_COMMANDS:
            node = data.get("node", "")
            args = dict(data)
            if BITMAP_COMMANDS[name] == "merge":  # sources named by node: resolve their drives now
                args["bitmaps"] = [{**b, "drive": vm._drive_name(b["node"])} if isinstance(b, dict) else b
                                   for b in data.get("bitmaps", [])]
            self.entries.append(BitmapOp(self.seq, events_at, BITMAP_COMMANDS[name], node, vm._drive_name(node),
                                         data.get("name", ""), args, vm._write_generation(node)))
        elif name in BACKUP_COMMANDS:
            device = data["device"]
            target = data["target"]
            target_file = target if name == "drive-backup" else vm._node_file(target)
            self.entries.append(BackupStart(
                self.seq, events_at, data.get("job-id") or device, device, vm._drive_name(device), target,
                vm._image_key(target_file) if target_file else None, data.get("sync", ""), data.get("bitmap"),
                data.get("bitmap-mode", "on-success") if data.get("bitmap") else None, mode, tx,
                vm._write_generation(device), vm._capture_content(device)))


def history_of(vm: Any) -> History:
    """The machine's history (created on first use)."""
    hist = vm.__dict__.get("_history")
    if hist is None:
        hist = vm.__dict__["_history"] = History()
    return hist
