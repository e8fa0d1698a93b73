"""``transaction`` as QEMU 7.2 runs it (blockdev.c qmp_transaction, BlkActionState).

Every action is prepared in order (doing its real work at once); if one fails,
every prepared action — the failing one included — is aborted in reverse order;
otherwise all are committed in order (jobs start here). Clean runs last, in order
(a backup's drained section ends there). In 7.2 each non-backup action checks the
completion mode itself, inside its prepare.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import QMPError, generic
from ..jobs.job import JobTxn
from .cmd_backup import blockdev_backup_prepare, drive_backup_prepare
from .cmd_bitmap import ALLOW_RO, BUSY, DEFAULT, RO, add_bitmap, check_bitmap, merge_bitmaps, unstore
from .cmd_snapshot import ExternalSnapshot, check_op_blockers, root_node, snapshot_capable
from .commands import TABLE
from .types import (
    BlockdevBackup,
    BlockdevSnapshot,
    BlockdevSnapshotDeleteInternal,
    BlockdevSnapshotInternal,
    BlockdevSnapshotSync,
    DriveBackup,
    TransactionArgs,
)

BACKUP_ACTIONS = ("blockdev-backup", "drive-backup")


class Action:
    """One BlkActionState: prepare, then commit or abort, then clean."""

    def __init__(self, vm: Any, kind: str, data: dict, mode: str, txn: JobTxn | None) -> None:
        self.vm, self.kind, self.data, self.mode, self.txn = vm, kind, data, mode, txn

    def check_completion_mode(self) -> None:
        """action_check_completion_mode (7.2 spelling: capital T)."""
        if self.mode != "individual":
            raise generic(f"Action '{self.kind}' does not support Transaction property completion-mode = "
                          f"{self.mode}")

    def prepare(self) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...

    def clean(self) -> None: ...


class AbortAction(Action):
    def prepare(self) -> None:
        raise generic("Transaction aborted using Abort action")


class BitmapAdd(Action):
    created = None

    def prepare(self) -> None:
        self.check_completion_mode()
        self.created = add_bitmap(self.vm, self.data)

    def abort(self) -> None:
        if self.created is not None:
            node = self.vm.graph.lookup_node(self.data["node"])
            node.bitmaps.remove(self.created)


class BitmapClear(Action):
    bitmap = None
    backup = None

    def prepare(self) -> None:
        self.check_completion_mode()
        _, self.bitmap = self.vm.graph.lookup_bitmap(self.data["node"], self.data["name"])
        check_bitmap(self.bitmap, DEFAULT)
        self.backup = self.bitmap.snapshot()
        self.bitmap.clear()

    def abort(self) -> None:
        if self.backup is not None:
            self.bitmap.restore(self.backup)


class BitmapEnable(Action):
    bitmap = None
    enable = True
    was_enabled = False  # as in QEMU's zeroed BlkActionState when the check fails

    def prepare(self) -> None:
        self.check_completion_mode()
        try:
            _, self.bitmap = self.vm.graph.lookup_bitmap(self.data["node"], self.data["name"])
        except QMPError as err:
            if not self.enable:
                raise
            raise QMPError(f"{err.desc} (bitlab answers this: QEMU 7.2 crashes (SIGSEGV) when a transaction's "
                           "block-dirty-bitmap-enable does not find its bitmap: its abort disables a NULL bitmap)",
                           err.error_class) from None
        check_bitmap(self.bitmap, ALLOW_RO)
        self.was_enabled = not self.bitmap.disabled
        self.bitmap.disabled = not self.enable

    def abort(self) -> None:
        """block_dirty_bitmap_enable_abort: disable again unless it was enabled. (QEMU 7.2
        crashes here when the lookup failed; bitlab skips it.)"""
        if self.bitmap is not None and not self.was_enabled:
            self.bitmap.disabled = True


class BitmapDisable(BitmapEnable):
    enable = False

    def abort(self) -> None:
        """block_dirty_bitmap_disable_abort: enable again if it was enabled."""
        if self.bitmap is not None and self.was_enabled:
            self.bitmap.disabled = False


class BitmapMerge(Action):
    bitmap = None
    backup = None

    def prepare(self) -> None:
        self.check_completion_mode()
        _, target = self.vm.graph.lookup_bitmap(self.data["node"], self.data["target"])
        backup = target.snapshot()
        self.bitmap = merge_bitmaps(self.vm, self.data)
        self.backup = backup

    def abort(self) -> None:
        if self.backup is not None:
            self.bitmap.restore(self.backup)


class BitmapRemove(Action):
    node = None
    bitmap = None

    def prepare(self) -> None:
        self.check_completion_mode()
        self.node, bm = self.vm.graph.lookup_bitmap(self.data["node"], self.data["name"])
        check_bitmap(bm, BUSY | RO)
        unstore(self.node, bm)
        self.bitmap = bm
        bm.busy = True  # later actions of this transaction see it busy

    def commit(self) -> None:
        self.bitmap.busy = False
        self.node.bitmaps.remove(self.bitmap)

    def abort(self) -> None:
        if self.bitmap is not None:
            self.bitmap.busy = False


class Backup(Action):
    source = None
    job = None

    def prepare(self) -> None:
        prepare = blockdev_backup_prepare if self.kind == "blockdev-backup" else drive_backup_prepare
        try:
            self.source, self.job = prepare(self.vm, self.data, self.txn)
        except QMPError as err:
            self.source = getattr(err, "drained", None)
            raise

    def commit(self) -> None:
        if self.job is not None:
            self.job.start()

    def abort(self) -> None:
        if self.job is not None:
            self.job.cancel(True)

    def clean(self) -> None:
        if self.source is not None:
            self.vm.jobs.drain_end(self.source)


class Snapshot(Action):
    """external_snapshot_*: blockdev-snapshot-sync and blockdev-snapshot (bitlab.qmp.cmd_snapshot)."""

    state = None

    def prepare(self) -> None:
        self.check_completion_mode()
        self.state = ExternalSnapshot(self.vm, self.kind, self.data)
        self.state.prepare()

    def commit(self) -> None:
        if self.state is not None:
            self.state.commit()

    def abort(self) -> None:
        if self.state is not None:
            self.state.abort()

    def clean(self) -> None:
        if self.state is not None:
            self.state.clean()


class InternalSnapshot(Action):
    """internal_snapshot_prepare's checks, in its order with its texts; bitlab does not simulate internal
    snapshots themselves."""

    def prepare(self) -> None:
        self.check_completion_mode()
        device = self.data["device"]
        node = root_node(self.vm.graph, device)
        check_op_blockers(self.vm, node)
        if node.read_only:
            raise generic(f"Device '{device}' is read only")
        if not snapshot_capable(node):
            raise generic(f"Block format '{node.driver}' used by device '{device}' does not support internal "
                          "snapshots")
        if not self.data["name"]:
            raise generic("Name is empty")
        raise generic(f"bitlab does not simulate the transaction action '{self.kind}'")


ACTIONS: dict[str, type[Action]] = {
    "abort": AbortAction,
    "block-dirty-bitmap-add": BitmapAdd,
    "block-dirty-bitmap-remove": BitmapRemove,
    "block-dirty-bitmap-clear": BitmapClear,
    "block-dirty-bitmap-enable": BitmapEnable,
    "block-dirty-bitmap-disable": BitmapDisable,
    "block-dirty-bitmap-merge": BitmapMerge,
    "blockdev-backup": Backup,
    "drive-backup": Backup,
    "blockdev-snapshot": Snapshot,
    "blockdev-snapshot-internal-sync": InternalSnapshot,
    "blockdev-snapshot-sync": Snapshot,
}


def run_transaction(vm: Any, actions: list[dict], properties: dict | None) -> None:
    """qmp_transaction: all I/O drained first (bdrv_drain_all: every running job pauses and resumes, and a
    backup whose copy was all done meanwhile by copy-before-write completes), then the actions."""
    vm.jobs.drain_all(list(vm.graph.nodes.values()))
    mode = (properties or {}).get("completion-mode", "individual")
    txn = JobTxn() if mode != "individual" else None
    states: list[Action] = []
    try:
        for action in actions:
            state = ACTIONS[action["type"]](vm, action["type"], action["data"], mode, txn)
            states.append(state)
            state.prepare()
    except QMPError:
        for state in reversed(states):
            state.abort()
        for state in states:
            state.clean()
        raise
    for state in states:
        state.commit()
    for state in states:
        state.clean()


@TABLE.command("transaction", TransactionArgs)
def qmp_transaction(vm: Any, args: dict) -> None:
    run_transaction(vm, args["actions"], args.get("properties"))


def _one_action(kind: str) -> Callable[[Any, dict], None]:
    """A command that is a transaction of one action of its own name (blockdev_do_action)."""
    def handler(vm: Any, args: dict) -> None:
        run_transaction(vm, [{"type": kind, "data": args}], None)
    return handler


for _kind, _args in (("blockdev-backup", BlockdevBackup), ("drive-backup", DriveBackup),
                     ("blockdev-snapshot-sync", BlockdevSnapshotSync), ("blockdev-snapshot", BlockdevSnapshot),
                     ("blockdev-snapshot-internal-sync", BlockdevSnapshotInternal)):
    TABLE.command(_kind, _args)(_one_action(_kind))


@TABLE.command("blockdev-snapshot-delete-internal-sync", BlockdevSnapshotDeleteInternal)
def qmp_blockdev_snapshot_delete_internal_sync(vm: Any, args: dict) -> dict:
    """QEMU's checks in its order; no image here holds an internal snapshot (bitlab makes none), so a
    snapshot-capable node never has the one asked for."""
    device, snap_id, name = args["device"], args.get("id"), args.get("name")
    node = root_node(vm.graph, device)
    if snap_id is None and name is None:
        raise generic("Name or id must be provided")
    check_op_blockers(vm, node)
    if not snapshot_capable(node):
        raise generic("Failed to get a snapshot list: Operation not supported")
    raise generic(f"Snapshot with id '{snap_id if snap_id is not None else 'null'}' and name "
                  f"'{name if name is not None else 'null'}' does not exist on device '{device}'")


__all__ = ["BACKUP_ACTIONS", "run_transaction"]
