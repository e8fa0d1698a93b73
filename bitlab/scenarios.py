"""The seed's scenario, ready to run: two drives, an anchor, guest writes, and an
incremental transaction in which one drive's backup fails.

It issues exactly the QMP of QEMU's bitmaps documentation ("Partial Transactional
Failures" and "Grouped Completion Mode"): ``drive-backup`` with ``"device": "drive0"``,
``"mode": "existing"`` targets created with ``qemu-img create -b``. The result says,
per drive, what each job reported and what the bitmap holds before and after.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .machine import Machine

GRANULARITY = 65536
# The writes of the recorded real-QEMU traces (shared/reference/qemu-traces).
SEED_WRITES = [("drive0", 0, 65536, 0x41), ("drive0", 126976, 8192, 0x42), ("drive0", 1048576, 131072, 0x43),
               ("drive1", 0, 65536, 0x44), ("drive1", 33554432, 65536, 0x45)]
# The first guest write arms the rule; the backup's next read of the drive fails once with EIO.
FAIL_ON_READ = {"set-state": [{"event": "write_aio", "state": 1, "new_state": 2}],
                "inject-error": [{"event": "read_aio", "state": 2, "iotype": "read", "errno": 5, "once": True}]}


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

    @property
    def valid(self) -> bool:
        """The image holds a complete incremental backup only if its job completed without error."""
        return self.end == "BLOCK_JOB_COMPLETED" and self.error is None

    @property
    def statuses(self) -> list[str]:
        return [e["data"]["status"] for e in self.events if e["event"] == "JOB_STATUS_CHANGE"]


@dataclass
class SeedOutcome:
    mode: str
    drives: dict[str, DriveOutcome]
    machine: Machine
    transaction: dict  # the QMP sent

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


def run_seed(mode: str = "individual", failing: str | None = "drive1", drives: tuple[str, ...] = ("drive0", "drive1"),
             writes: list[tuple[str, int, int, int]] | None = None, backend: str | None = None) -> SeedOutcome:
    """Play the seed scenario; ``failing`` names the drive whose backup read fails (or None).

    ``backend="qemu"`` plays it on real QEMU (the machine is closed afterwards).
    """
    vm = Machine(backend=backend)
    try:
        return _play_seed(vm, mode, failing, drives, writes)
    finally:
        close = getattr(vm, "close", None)
        if close is not None:
            close()


def _play_seed(vm: Machine, mode: str, failing: str | None, drives: tuple[str, ...],
               writes: list[tuple[str, int, int, int]] | None) -> SeedOutcome:
    for drive in drives:
        vm.add_drive(drive, "64M", blkdebug=FAIL_ON_READ if drive == failing else None)
    # New incremental backup anchor point: bitmaps and full backups at one point in time.
    anchor = [{"type": "block-dirty-bitmap-add", "data": {"node": d, "name": f"bitmap{d[-1]}",
                                                          "granularity": GRANULARITY}} for d in drives]
    anchor += [{"type": "drive-backup", "data": {"device": d, "target": f"d{d[-1]}-full.qcow2",
                                                 "sync": "full", "format": "qcow2"}} for d in drives]
    vm.qmp("transaction", {"actions": anchor})
    vm.run()
    for drive, offset, length, pattern in writes if writes is not None else SEED_WRITES:
        if drive in drives:
            vm.write(drive, offset, length, pattern)
    outcome = {d: DriveOutcome(d, f"d{d[-1]}-incr-1.qcow2") for d in drives}
    for d in drives:
        vm.qemu_img("create", "-f", "qcow2", "-b", f"d{d[-1]}-full.qcow2", "-F", "qcow2", f"d{d[-1]}-incr-1.qcow2")
        outcome[d].count_before = bitmap_count(vm, d)
    transaction = {"actions": [incremental_action(d) for d in drives]}
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
    return SeedOutcome(mode, outcome, vm, transaction)


def bitmap_count(vm: Machine, drive: str) -> int:
    info = next(b for b in vm.qmp("query-block") if b["device"] == drive)
    bm = next(b for b in info["inserted"]["dirty-bitmaps"] if b.get("name") == f"bitmap{drive[-1]}")
    return bm["count"]
