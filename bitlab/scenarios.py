"""The seed's scenario, ready to run: two drives, an anchor, guest writes, and an
incremental transaction in which one drive's backup fails.

:func:`run_seed` generalises it with keyword arguments (up to four drives, the read at
which the failing drive's backup fails, the sync mode of the second transaction, pictures
of the bitmaps before and after), which is what ``bitlab.widgets.TransactionLab`` turns.

It issues exactly the QMP of QEMU's bitmaps documentation ("Partial Transactional
Failures" and "Grouped Completion Mode"): ``drive-backup`` with ``"device": "drive0"``,
``"mode": "existing"`` targets created with ``qemu-img create -b``. The result says,
per drive, what each job reported and what the bitmap holds before and after.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import chain as _chain
from .bitmap import DirtyBitmap
from .machine import Machine

GRANULARITY = 65536
# The writes of the recorded real-QEMU traces (shared/reference/qemu-traces).
SEED_WRITES = [("drive0", 0, 65536, 0x41), ("drive0", 126976, 8192, 0x42), ("drive0", 1048576, 131072, 0x43),
               ("drive1", 0, 65536, 0x44), ("drive1", 33554432, 65536, 0x45)]
# Writes for drives the seed does not have (drive2, drive3), in the same spirit.
EXTRA_WRITES = [("drive2", 0, 65536, 0x46), ("drive2", 16777216, 196608, 0x47),
                ("drive3", 4194304, 65536, 0x48), ("drive3", 4325376, 65536, 0x49), ("drive3", 50331648, 131072, 0x4A)]
DRIVES = ("drive0", "drive1", "drive2", "drive3")
SYNC_MODES = ("incremental", "bitmap", "full")
# The first guest write arms the rule; the backup's next read of the drive fails once with EIO.
FAIL_ON_READ = {"set-state": [{"event": "write_aio", "state": 1, "new_state": 2}],
                "inject-error": [{"event": "read_aio", "state": 2, "iotype": "read", "errno": 5, "once": True}]}


def fail_on_read(after: int = 0) -> dict:
    """blkdebug rules: armed by the first guest write, then ``after`` reads succeed and the next
    read fails once with EIO. ``after=0`` is :data:`FAIL_ON_READ`.

    Each read moves blkdebug's state one step on (``set-state`` on ``read_aio``); the error
    rule waits in the state reached after ``after`` reads, as iotest 257 counts its reads.
    """
    if after < 0:
        raise ValueError("after must be >= 0")
    if after == 0:
        return FAIL_ON_READ
    steps = [{"event": "read_aio", "state": s, "new_state": s + 1} for s in range(2, after + 2)]
    return {"set-state": [FAIL_ON_READ["set-state"][0], *steps],
            "inject-error": [{**FAIL_ON_READ["inject-error"][0], "state": after + 2}]}


@dataclass
class DriveOutcome:
    """What happened to one drive's incremental backup."""

    drive: str
    image: str
    events: list[dict] = field(default_factory=list)  # this job's events, in order
    end: str = ""  # BLOCK_JOB_COMPLETED or BLOCK_JOB_CANCELLED
    error: str | None = None
    count_before: int = 0
    count_after: int = 0
    bitmap_before: DirtyBitmap | None = None  # the bits, when run_seed(..., bitmaps=True)
    bitmap_after: DirtyBitmap | None = None

    @property
    def valid(self) -> bool:
        """The image holds a complete incremental backup only if its job completed without error."""
        return self.end == "BLOCK_JOB_COMPLETED" and self.error is None

    @property
    def statuses(self) -> list[str]:
        return [e["data"]["status"] for e in self.events if e["event"] == "JOB_STATUS_CHANGE"]

    @property
    def progress(self) -> tuple[int, int] | None:
        """``(offset, len)`` of the job's end event, or None if it has not ended."""
        end = next((e for e in self.events if e["event"] == self.end), None)
        return None if end is None else (end["data"]["offset"], end["data"]["len"])


@dataclass
class SeedOutcome:
    """Per-drive outcomes of one run, the machine it ran on (closed on real QEMU) and the
    transaction sent; ``events`` are all events from the transaction on, ``sync`` its sync mode."""

    mode: str
    drives: dict[str, DriveOutcome]
    machine: Machine
    transaction: dict  # the QMP sent
    events: list[dict] = field(default_factory=list)
    sync: str = "incremental"
    failing: str | None = None
    fail_after: int = 0
    images: list[_chain.ImageVerdict] = field(default_factory=list)  # bitlab.chain's verdicts, if asked
    advice: dict[str, _chain.DriveAdvice] = field(default_factory=dict)

    @property
    def keep(self) -> list[str]:
        return [d.image for d in self.drives.values() if d.valid]

    @property
    def delete(self) -> list[str]:
        return [d.image for d in self.drives.values() if not d.valid]


def incremental_action(drive: str, n: int = 1) -> dict:
    """The seed's action for one drive, verbatim."""
    return {"type": "drive-backup",
            "data": {"device": drive, "bitmap": f"bitmap{drive[-1]}", "format": "qcow2", "mode": "existing",
                     "sync": "incremental", "target": f"d{drive[-1]}-incr-{n}.qcow2"}}


def target_image(drive: str, sync: str = "incremental", n: int = 1) -> str:
    """The image a backup of ``drive`` writes: an overlay of the full backup, or a new full one."""
    return f"d{drive[-1]}-full-{n + 1}.qcow2" if sync == "full" else f"d{drive[-1]}-incr-{n}.qcow2"


def backup_action(drive: str, sync: str = "incremental", n: int = 1, bitmap_mode: str = "on-success") -> dict:
    """The transaction action backing up ``drive``: the seed's action for ``incremental``; for
    ``bitmap`` and ``full`` the same with ``bitmap-mode`` (a full backup with the bitmap
    starts a new chain and, on success, clears the bitmap)."""
    if sync not in SYNC_MODES:
        raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}")
    action = incremental_action(drive, n)
    if sync != "incremental":
        action["data"].update({"sync": sync, "bitmap-mode": bitmap_mode, "target": target_image(drive, sync, n)})
    return action


def run_seed(mode: str = "individual", failing: str | None = "drive1", drives: tuple[str, ...] = ("drive0", "drive1"),
             writes: list[tuple[str, int, int, int]] | None = None, backend: str | None = None, *,
             sync: str = "incremental", bitmap_mode: str = "on-success", fail_after: int = 0,
             bitmaps: bool = False, chain: bool = False) -> SeedOutcome:
    """Play the seed scenario; ``failing`` names the drive whose backup read fails (or None).

    ``backend="qemu"`` plays it on real QEMU (the machine is closed afterwards).
    Keyword arguments vary it: ``sync`` of the second transaction (``incremental``, ``bitmap``
    with ``bitmap_mode``, or ``full``), ``fail_after`` reads that succeed before the failing one
    (:func:`fail_on_read`), ``bitmaps=True`` keeps each bitmap's bits before and after, and
    ``chain=True`` adds :mod:`bitlab.chain`'s verdicts and advice (judged before a real QEMU
    is closed). Drives are ``drive0`` … ``drive3``.
    """
    if mode not in ("individual", "grouped"):
        raise ValueError("mode must be 'individual' or 'grouped'")
    unknown = [d for d in (*drives, failing) if d is not None and d not in DRIVES]
    if unknown:
        raise ValueError(f"drives are named {', '.join(DRIVES)}, not {unknown[0]!r}")
    vm = Machine(backend=backend)
    try:
        out = _play_seed(vm, mode, failing, drives, writes, sync=sync, bitmap_mode=bitmap_mode,
                         fail_after=fail_after, bitmaps=bitmaps)
        if chain:
            report = _chain.analyse(vm)
            out.images, out.advice = list(report.images.values()), report.advice
        return out
    finally:
        close = getattr(vm, "close", None)
        if close is not None:
            close()


def _play_seed(vm: Machine, mode: str, failing: str | None, drives: tuple[str, ...],
               writes: list[tuple[str, int, int, int]] | None, *, sync: str = "incremental",
               bitmap_mode: str = "on-success", fail_after: int = 0, bitmaps: bool = False) -> SeedOutcome:
    # the root node of each drive: vm.dirty_bitmap takes a node name (real QEMU's backend wants one)
    nodes = {drive: vm.add_drive(drive, "64M", blkdebug=fail_on_read(fail_after) if drive == failing else None)
             for drive in drives}
    # New incremental backup anchor point: bitmaps and full backups at one point in time.
    anchor = [{"type": "block-dirty-bitmap-add", "data": {"node": d, "name": f"bitmap{d[-1]}",
                                                          "granularity": GRANULARITY}} for d in drives]
    anchor += [{"type": "drive-backup", "data": {"device": d, "target": f"d{d[-1]}-full.qcow2",
                                                 "sync": "full", "format": "qcow2"}} for d in drives]
    vm.qmp("transaction", {"actions": anchor})
    vm.run()
    for drive, offset, length, pattern in writes if writes is not None else SEED_WRITES + EXTRA_WRITES:
        if drive in drives:
            vm.write(drive, offset, length, pattern)
    outcome = {d: DriveOutcome(d, target_image(d, sync)) for d in drives}
    for d in drives:
        if sync == "full":
            vm.qemu_img("create", "-f", "qcow2", target_image(d, sync), "64M")
        else:
            vm.qemu_img("create", "-f", "qcow2", "-b", f"d{d[-1]}-full.qcow2", "-F", "qcow2", target_image(d, sync))
        outcome[d].count_before = bitmap_count(vm, d)
        if bitmaps:
            outcome[d].bitmap_before = vm.dirty_bitmap(nodes[d], f"bitmap{d[-1]}")
    transaction = {"actions": [backup_action(d, sync, bitmap_mode=bitmap_mode) for d in drives]}
    if mode != "individual":
        transaction["properties"] = {"completion-mode": mode}
    since = len(vm.events)
    vm.qmp("transaction", transaction)
    vm.run()
    for ev in vm.events[since:]:
        data = ev.get("data", {})
        job = data.get("id") if ev["event"] in ("JOB_STATUS_CHANGE", "BLOCK_JOB_PENDING") else data.get("device")
        if job in outcome:
            outcome[job].events.append(ev)
            if ev["event"] in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"):
                outcome[job].end, outcome[job].error = ev["event"], data.get("error")
    for d in drives:
        outcome[d].count_after = bitmap_count(vm, d)
        if bitmaps:
            outcome[d].bitmap_after = vm.dirty_bitmap(nodes[d], f"bitmap{d[-1]}")
    return SeedOutcome(mode, outcome, vm, transaction, events=list(vm.events[since:]), sync=sync,
                       failing=failing, fail_after=fail_after)


def bitmap_count(vm: Machine, drive: str) -> int:
    info = next(b for b in vm.qmp("query-block") if b["device"] == drive)
    bm = next(b for b in info["inserted"]["dirty-bitmaps"] if b.get("name") == f"bitmap{drive[-1]}")
    return bm["count"]
