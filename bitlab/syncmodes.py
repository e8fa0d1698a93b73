"""Backup sync modes × bitmap modes × outcomes: QEMU's iotest 257 as a model.

:func:`run_sync_mode` plays one scenario of tests/qemu-iotests/257 (reference §11) on a
machine: write group G0, a full reference backup, ``bitmap0`` added, G1, another
reference, then **backup #1** with the chosen ``sync`` and ``bitmap-mode`` that succeeds,
fails on a read (blkdebug, the test's ``intermediate`` failure) or is cancelled while
pending (the test's ``simulated`` failure, after G2 was written during the job); then G3
and a **recovery backup #2** (``sync=bitmap``). Combinations QEMU refuses come back with
QEMU's error text instead (``sync=none`` with a bitmap, ``never`` with full/top,
``incremental`` with anything but ``on-success``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .bitmap import DirtyBitmap
from .errors import QMPError
from .machine import Machine

SYNCS = ("full", "top", "none", "incremental", "bitmap")
BITMAP_MODES = ("on-success", "always", "never")
OUTCOMES = ("success", "failure", "cancel")
# bitlab's outcome names -> iotest 257's failure names
IOTEST_FAILURE = {"success": "ok", "failure": "int", "cancel": "sim"}
GRANULARITY = 65536
NODE_SIZE = 64 << 20
GROUPS = {
    0: [(0x0000000, GRANULARITY), (0x0100000, GRANULARITY), (0x2000000, GRANULARITY), (0x3FF0000, GRANULARITY)],
    1: [(0x0000000, GRANULARITY), (0x00F8000, GRANULARITY), (0x2008000, GRANULARITY), (0x3FE0000, GRANULARITY)],
    2: [(0x0010000, GRANULARITY), (0x00E8000, GRANULARITY), (0x2018000, GRANULARITY), (0x3FE0000, 0x20000)],
    3: [(0x0010000, 0x30000), (0x00D8000, GRANULARITY), (0x2028000, GRANULARITY), (0x3FC0000, GRANULARITY)],
}
# iotest 257's intermediate failure: the flush arms it, the second read after it fails once.
BLKDEBUG = {
    "set-state": [{"event": "flush_to_disk", "state": 1, "new_state": 2},
                  {"event": "read_aio", "state": 2, "new_state": 3}],
    "inject-error": [{"event": "read_aio", "errno": 5, "state": 3, "immediately": False, "once": True}],
}


@dataclass
class SyncModeResult:
    """What one scenario did. Bit counts are ``count // granularity``; bitmaps are snapshots.

    ``error`` is QEMU's reply text when backup #1 was refused (then nothing else ran).
    """

    sync: str
    bitmap_mode: str
    outcome: str
    error: str | None = None
    end1: str | None = None  # BLOCK_JOB_COMPLETED / BLOCK_JOB_CANCELLED of backup #1
    error1: str | None = None  # the "error" member of that event
    len1: int = 0
    offset1: int = 0
    bits_before: int = 0  # bitmap0 before backup #1 (G1)
    bits1: int = 0  # after backup #1
    bits_g3: int = 0  # after G3
    len2: int = 0  # recovery backup #2
    bits2: int = 0  # after backup #2
    bitmaps: dict[str, DirtyBitmap] = field(default_factory=dict)  # "before", "after #1", "after #2"
    events: list[dict] = field(default_factory=list)  # backup #1's events

    @property
    def accepted(self) -> bool:
        return self.error is None

    @property
    def row(self) -> tuple:
        """The result as a row of tests/test_iotest_257.py's MATRIX."""
        end = None if self.end1 is None else (self.end1.removeprefix("BLOCK_JOB_"), self.len1, self.offset1)
        return (self.sync, self.bitmap_mode, IOTEST_FAILURE[self.outcome], end, self.bits1, self.bits_g3,
                self.len2, self.bits2)


class Iotest257Run:
    """iotest 257's machinery on one machine: drive0 (with the failing blkdebug layer when
    ``failure``), its write groups, full reference backups, targets and backups of bitmap0."""

    def __init__(self, vm: Machine, failure: bool) -> None:
        self.vm, self.refs = vm, 0
        vm.qemu_img("create", "-f", "qcow2", "drive0.qcow2", "64M")
        file: dict = {"driver": "file", "filename": "drive0.qcow2"}
        if failure:
            file = {"driver": "blkdebug", "image": file, **BLKDEBUG}
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "drive0", "file": file})

    def write_group(self, n: int) -> None:
        for offset, length in GROUPS[n]:
            self.vm.write("drive0", offset, length, 0x40 + n)

    def target(self, name: str) -> None:
        self.vm.qemu_img("create", "-f", "qcow2", f"{name}.qcow2", "64M")
        self.vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": name,
                                     "file": {"driver": "file", "filename": f"{name}.qcow2"}})

    def reference(self) -> None:
        name = f"ref{self.refs}"
        self.refs += 1
        self.target(name)
        self.vm.qmp("blockdev-backup", {"job-id": name, "device": "drive0", "target": name, "sync": "full"})
        self.vm.run()

    def backup(self, job_id: str, target: str, sync: str, mode: str) -> int:
        since = len(self.vm.events)
        self.vm.qmp("blockdev-backup", {
            "job-id": job_id, "device": "drive0", "target": target, "sync": sync, "bitmap": "bitmap0",
            "bitmap-mode": mode, "auto-finalize": False, "filter-node-name": "backup-top",
            "x-perf": {"max-workers": 1}})
        self.vm.run()
        return since

    def end_event(self, since: int, job_id: str) -> dict:
        return next(ev for ev in self.vm.events[since:]
                    if ev["event"] in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED") and ev["data"]["device"] == job_id)

    def bitmap(self) -> DirtyBitmap:
        return self.vm.dirty_bitmap("drive0", "bitmap0")

    def bits(self) -> int:
        node = next(n for n in self.vm.qmp("query-named-block-nodes", {"flat": True}) if n["node-name"] == "drive0")
        return next(b for b in node["dirty-bitmaps"] if b.get("name") == "bitmap0")["count"] // GRANULARITY


def run_sync_mode(sync: str, bitmap_mode: str, outcome: str = "success", *, backend: str | None = None,
                  bitmaps: bool = False) -> SyncModeResult:
    """Play iotest 257's scenario for one ``sync`` × ``bitmap_mode`` × ``outcome``.

    ``bitmaps=True`` keeps bitmap0's bits before backup #1, after it and after backup #2.
    ``backend="qemu"`` runs it on real QEMU's system emulator (the flush that arms the
    failure is an HMP qemu-io command); the machine is closed afterwards.
    """
    if sync not in SYNCS or bitmap_mode not in BITMAP_MODES or outcome not in OUTCOMES:
        raise ValueError(f"sync in {SYNCS}, bitmap_mode in {BITMAP_MODES}, outcome in {OUTCOMES}")
    vm = Machine(backend=backend, daemon="system") if backend == "qemu" else Machine(backend=backend)
    try:
        return _play(vm, sync, bitmap_mode, outcome, bitmaps)
    finally:
        close = getattr(vm, "close", None)
        if close is not None:
            close()


def _play(vm: Machine, sync: str, mode: str, outcome: str, keep: bool) -> SyncModeResult:
    res = SyncModeResult(sync, mode, outcome)
    run = Iotest257Run(vm, outcome == "failure")
    run.write_group(0)
    run.reference()
    vm.qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "bitmap0", "granularity": GRANULARITY})
    run.write_group(1)
    res.bits_before = run.bits()
    if keep:
        res.bitmaps["before"] = run.bitmap()
    run.reference()
    if outcome == "failure":
        vm.qemu_io("drive0", "flush")
    run.target("backup_target")
    try:
        since = run.backup("backup_1", "backup_target", sync, mode)
    except QMPError as err:
        res.error = err.desc
        return res
    if outcome != "failure":
        run.write_group(2)
        vm.qmp("job-cancel" if outcome == "cancel" else "job-finalize", {"id": "backup_1"})
        vm.run()
    end = run.end_event(since, "backup_1")
    res.events = [ev for ev in vm.events[since:] if ev.get("data", {}).get("id", ev.get("data", {}).get("device"))
                  == "backup_1"]
    res.end1, res.error1 = end["event"], end["data"].get("error")
    res.len1, res.offset1 = end["data"]["len"], end["data"]["offset"]
    res.bits1 = run.bits()
    if keep:
        res.bitmaps["after #1"] = run.bitmap()
    run.write_group(3)
    res.bits_g3 = run.bits()
    run.reference()
    run.target("backup_target_2")
    since = run.backup("backup_2", "backup_target_2", "bitmap", mode)
    vm.qmp("job-finalize", {"id": "backup_2"})
    vm.run()
    res.len2 = run.end_event(since, "backup_2")["data"]["len"]
    res.bits2 = run.bits()
    if keep:
        res.bitmaps["after #2"] = run.bitmap()
    return res
