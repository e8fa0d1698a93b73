"""Self-checks for the notebooks' exercises.

Every expected answer is computed by bitlab itself, by playing the exercise's scenario on a
:class:`~bitlab.Machine` (the simulator, or real QEMU under ``BITLAB_BACKEND=qemu``), so an
answer can never drift away from what QEMU does. ``check(name, answer)`` prints
``✓ correct`` or a hint, and never prints the answer itself.

>>> check("dirty-count", None)   # doctest: +SKIP
✎ No answer yet: ...
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .course import count
from .errors import QMPError
from .machine import Machine
from .scenarios import FAIL_ON_READ, run_seed

MiB = 1 << 20


@dataclass(frozen=True)
class Exercise:
    """One exercise: its question, a hint, and how bitlab computes the answer."""

    name: str
    question: str
    hint: str
    solve: Callable[[], Any]
    unordered: bool = False  # the answer is a collection whose order does not matter


def _close(vm: Any) -> None:
    close = getattr(vm, "close", None)
    if close is not None:
        close()


START_WRITES: list[tuple[int | str, int | str]] = [(0, "64k"), ("100k", 1)]


def _start_count() -> int:
    """count of a 64 KiB-granularity bitmap on drive0 after START_WRITES (notebook 00)."""
    vm = Machine()
    try:
        vm.add_drive("drive0", "64M")
        vm.qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "bitmap0", "granularity": 65536})
        for offset, length in START_WRITES:
            vm.write("drive0", offset, length)
        return count(vm, "drive0", "bitmap0")
    finally:
        _close(vm)


DIRTY_COUNT_WRITES: list[tuple[int | str, int | str]] = [
    (0, "4k"), ("60k", "8k"), ("1M", "1M"), (MiB + 512, 512), (32 * MiB - 512, "1k")]


def _dirty_count() -> int:
    vm = Machine()
    try:
        vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "disk", "size": 64 * MiB})
        vm.qmp("block-dirty-bitmap-add", {"node": "disk", "name": "b", "granularity": 65536})
        for offset, length in DIRTY_COUNT_WRITES:
            vm.write("disk", offset, length)
        return count(vm, "disk", "b")
    finally:
        _close(vm)


INCREMENTAL_WRITES: list[tuple[int | str, int | str]] = [(0, "1M"), ("512k", "1M"), ("10M", "100k")]


def _incremental_len() -> int:
    """Bytes an incremental backup copies after a full backup and INCREMENTAL_WRITES (the job's ``len``)."""
    vm = Machine()
    try:
        vm.add_drive("drive0", "64M")
        vm.qmp("transaction", {"actions": [
            {"type": "block-dirty-bitmap-add", "data": {"node": "drive0", "name": "bitmap0", "granularity": 65536}},
            {"type": "drive-backup", "data": {"device": "drive0", "target": "full.qcow2", "sync": "full",
                                              "format": "qcow2"}}]})
        vm.run()
        for offset, length in INCREMENTAL_WRITES:
            vm.write("drive0", offset, length)
        since = len(vm.events)
        vm.qmp("drive-backup", {"device": "drive0", "bitmap": "bitmap0", "sync": "incremental",
                                "target": "incr.qcow2", "format": "qcow2"})
        vm.run()
        done = [e for e in vm.events[since:] if e["event"] == "BLOCK_JOB_COMPLETED"]
        return done[-1]["data"]["len"]
    finally:
        _close(vm)


def _rollback_count() -> int:
    """bitmap0's count after a transaction that clears it and then fails on a duplicate bitmap."""
    vm = Machine()
    try:
        vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "drive0", "size": 64 * MiB})
        vm.qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "bitmap0"})
        vm.write("drive0", 0, "3M")
        try:
            vm.qmp("transaction", {"actions": [
                {"type": "block-dirty-bitmap-clear", "data": {"node": "drive0", "name": "bitmap0"}},
                {"type": "block-dirty-bitmap-add", "data": {"node": "drive0", "name": "bitmap0"}}]})
        except QMPError:
            pass
        return count(vm, "drive0", "bitmap0")
    finally:
        _close(vm)


def _grouped_delete() -> list[str]:
    """Images to delete after the seed's grouped transaction in which drive0's read fails."""
    return run_seed("grouped", failing="drive0").delete


def _individual_keep() -> list[str]:
    """Images to keep after the seed's individual transaction in which drive0's read fails."""
    return run_seed("individual", failing="drive0").keep


SYNC_WRITES: list[tuple[int | str, int | str]] = [(0, "64k"), ("1M", "64k"), ("2M", "64k"), ("3M", "64k"),
                                                  ("8M", "2M")]


def _sync_mode_count(mode: str) -> int:
    """bitmap0's count after an incremental backup with ``bitmap-mode`` ``mode`` whose read fails."""
    vm = Machine()
    try:
        vm.add_drive("drive0", "64M", blkdebug=FAIL_ON_READ)
        vm.qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "bitmap0", "granularity": 65536})
        for offset, length in SYNC_WRITES:
            vm.write("drive0", offset, length)
        vm.qmp("drive-backup", {"device": "drive0", "bitmap": "bitmap0", "sync": "bitmap", "bitmap-mode": mode,
                                "target": "b.qcow2", "format": "qcow2"})
        vm.run()
        return count(vm, "drive0", "bitmap0")
    finally:
        _close(vm)


def _sync_modes() -> list[str]:
    """The ``sync`` values drive-backup accepts, asked of the running QEMU's schema."""
    from . import introspect

    vm = Machine()
    try:
        return introspect.enum_values(vm.qmp("query-qmp-schema"), "drive-backup", "sync")
    finally:
        _close(vm)


def _grouped_cancel_offset() -> int:
    """The ``offset`` of drive0's BLOCK_JOB_CANCELLED in the seed's grouped run (drive1 fails)."""
    out = run_seed("grouped", failing="drive1")
    ends = [e for e in out.drives["drive0"].events if e["event"] == "BLOCK_JOB_CANCELLED"]
    return ends[-1]["data"]["offset"]


FLEECE_WRITES: list[tuple[int | str, int | str]] = [(0, "64k"), ("32k", "64k"), ("2M", "64k")]


def _fleece_bytes() -> int:
    """Bytes allocated in the fleece image after FLEECE_WRITES through a fleecing graph (notebook 08)."""
    vm = Machine()
    try:
        vm.qemu_img("create", "-f", "qcow2", "disk.qcow2", "4M")
        vm.qemu_img("create", "-f", "qcow2", "fleece.qcow2", "4M")
        for name in ("disk", "fleece"):
            vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": name,
                                    "file": {"driver": "file", "filename": f"{name}.qcow2"}})
        vm.write("disk", 0, "1M", 0x11)
        vm.qmp("blockdev-add", {"driver": "copy-before-write", "node-name": "cbw", "file": "disk",
                                "target": "fleece"})
        vm.qmp("blockdev-add", {"driver": "snapshot-access", "node-name": "snap", "file": "cbw"})
        for offset, length in FLEECE_WRITES:
            vm.write("disk", offset, length, 0x22)
        return int(vm.qemu_io("fleece", "alloc 0 4M").split("/")[0])
    finally:
        _close(vm)


def _reopen_count() -> int:
    """count of a persistent bitmap after a boot that writes 1 MiB, a read-only boot whose write is refused,
    blockdev-reopen read-write and a 64 KiB write at 1056 KiB (notebook 09)."""
    vm = Machine()
    try:
        vm.qemu_img("create", "-f", "qcow2", "disk.qcow2", "64M")
        vm.add_drive("drive0", file="disk.qcow2", node_name="d0")
        vm.qmp("block-dirty-bitmap-add", {"node": "d0", "name": "b0", "persistent": True})
        vm.write("drive0", 0, "1M", 0x11)
        vm = vm.restart()
        vm.add_drive("drive0", file="disk.qcow2", node_name="d0", read_only=True)
        try:
            vm.write("drive0", "1M", "64k", 0x22)
        except QMPError:
            pass  # Block node is read-only
        vm.qmp("blockdev-reopen", {"options": [{"driver": "qcow2", "node-name": "d0",
                                                "file": {"driver": "file", "filename": "disk.qcow2"}}]})
        vm.write("drive0", "1056k", "64k", 0x33)
        return count(vm, "drive0", "b0")
    finally:
        _close(vm)


THROTTLED_BACKUP_LIMITS = {"bps-write": 2 * MiB}


def _throttled_backup_seconds() -> int:
    """Whole seconds (rounded down) a full backup of an 8 MiB disk holding 1 MiB of data takes into a target
    throttled at THROTTLED_BACKUP_LIMITS (notebook 10)."""
    vm = Machine(daemon="system")
    try:
        vm.add_drive("drive0", "8M")
        vm.write("drive0", 0, "1M", 0x11)
        vm.qemu_img("create", "-f", "qcow2", "target.qcow2", "8M")
        vm.qmp("object-add", {"qom-type": "throttle-group", "id": "tg", "limits": THROTTLED_BACKUP_LIMITS})
        vm.qmp("blockdev-add", {"driver": "throttle", "node-name": "target", "throttle-group": "tg",
                                "file": {"driver": "qcow2", "file": {"driver": "file", "filename": "target.qcow2"}}})
        start = vm.now
        vm.qmp("blockdev-backup", {"device": "drive0", "target": "target", "sync": "full", "job-id": "j"})
        vm.run()
        return int(vm.now - start)
    finally:
        _close(vm)


MIRROR_WRITES: list[tuple[int | str, int | str]] = [(0, "4k"), ("100k", "64k"), ("1M", "1M"), ("1536k", "1M"),
                                                    ("40M", 1)]


def _mirror_len() -> int:
    """The ``len`` of BLOCK_JOB_READY for a drive-mirror (``sync: full``, into a new qcow2 image) of a fresh
    64 MiB qcow2 drive after MIRROR_WRITES (notebook 11)."""
    vm = Machine(daemon="system")
    try:
        vm.add_drive("drive0", "64M")
        for offset, length in MIRROR_WRITES:
            vm.write("drive0", offset, length, 0x11)
        since = len(vm.events)
        vm.qmp("drive-mirror", {"device": "drive0", "target": "new.qcow2", "format": "qcow2", "sync": "full",
                                "mode": "absolute-paths"})
        vm.run()
        ready = [e for e in vm.events[since:] if e["event"] == "BLOCK_JOB_READY"]
        vm.qmp("block-job-cancel", {"device": "drive0", "force": True})
        return ready[-1]["data"]["len"]
    finally:
        _close(vm)


COMMIT_WRITES_BEFORE: list[tuple[int | str, int | str]] = [(0, "64k"), ("3M", "128k")]
COMMIT_WRITES_OVERLAY: list[tuple[int | str, int | str]] = [(0, "4k"), ("1M", "4k"), ("3040k", "128k")]


def _commit_count() -> int:
    """b0's count after COMMIT_WRITES_BEFORE, an external snapshot, COMMIT_WRITES_OVERLAY into the overlay and an
    active block-commit completed with job-complete, on a fresh 64 MiB qcow2 drive (notebook 12)."""
    vm = Machine(daemon="system")
    try:
        vm.add_drive("drive0", "64M")
        vm.qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "b0", "granularity": 65536})
        for offset, length in COMMIT_WRITES_BEFORE:
            vm.write("drive0", offset, length, 0x11)
        vm.qmp("blockdev-snapshot-sync", {"device": "drive0", "snapshot-file": "overlay.qcow2", "format": "qcow2"})
        for offset, length in COMMIT_WRITES_OVERLAY:
            vm.write("drive0", offset, length, 0x22)
        vm.qmp("block-commit", {"device": "drive0"})
        vm.run()
        vm.qmp("job-complete", {"id": "drive0"})
        vm.run()
        return count(vm, "drive0", "b0")
    finally:
        _close(vm)


EXERCISES: dict[str, Exercise] = {ex.name: ex for ex in [
    Exercise("start-count", "count after a 64 KiB write at 0 and a 1-byte write at 100 KiB",
             "count is in bytes: the number of 64 KiB chunks touched, times 65536.", _start_count),
    Exercise("dirty-count", "count after five writes on a fresh 64 KiB-granularity bitmap",
             "list the 64 KiB chunks each write touches (first = offset // 65536, "
             "last = (offset + length - 1) // 65536), take the union, multiply by 65536.", _dirty_count),
    Exercise("incremental-len", "bytes the incremental backup copies (its job's len)",
             "an incremental copies whole dirty chunks; overlapping writes dirty a chunk once.", _incremental_len),
    Exercise("rollback-count", "bitmap0's count after the failed transaction",
             "a transaction is all or nothing: when one action fails, every earlier action is undone.",
             _rollback_count),
    Exercise("grouped-delete", "images to delete after the grouped run where drive0 fails",
             "in grouped mode one failure cancels every job of the transaction.", _grouped_delete,
             unordered=True),
    Exercise("individual-keep", "images to keep after the individual run where drive0 fails",
             "in individual mode each job completes or fails on its own.", _individual_keep, unordered=True),
    Exercise("sync-on-success", "count after a failing sync=bitmap backup with bitmap-mode on-success",
             "on-success clears the bitmap only when the job succeeds.", lambda: _sync_mode_count("on-success")),
    Exercise("sync-always", "count after a failing sync=bitmap backup with bitmap-mode always",
             "always: the bitmap keeps exactly the clusters that were not copied.",
             lambda: _sync_mode_count("always")),
    Exercise("sync-modes", "the values drive-backup's 'sync' accepts",
             "ask the schema: introspect.enum_values(schema, 'drive-backup', 'sync').", _sync_modes, unordered=True),
    Exercise("grouped-cancel-offset", "offset of drive0's BLOCK_JOB_CANCELLED in the grouped seed run",
             "drive0 had finished copying before drive1 failed; len is the dirty bytes, not the disk size.",
             _grouped_cancel_offset),
    Exercise("fleece-bytes", "bytes the fleece image holds after three guest writes through the filter",
             "each write copies, once, every 64 KiB cluster it touches that was not copied yet — "
             "even one the disk holds no data in.", _fleece_bytes),
    Exercise("reopen-count", "count of b0 after a read-only boot, blockdev-reopen read-write and one more write",
             "the read-only boot's write was refused and recorded nothing; a 64 KiB write that starts in the "
             "middle of a 64 KiB cluster touches two.", _reopen_count),
    Exercise("throttled-backup-seconds", "whole seconds, rounded down, a full backup of the 8 MiB disk takes into "
             "a target throttled at 2 MiB/s of writes",
             "the job writes all 8 MiB, zero clusters too, in 1 MiB requests; the first goes at once, each later "
             "one waits until the bucket holds no more than a tenth of a second of the rate (0.2 MiB).",
             _throttled_backup_seconds),
    Exercise("mirror-len", "len of BLOCK_JOB_READY for a drive-mirror (sync full, into a new image) after five "
             "guest writes on a fresh 64 MiB qcow2 drive",
             "a drive-mirror into a new image copies what the source allocates, not the whole disk: qcow2 "
             "allocates whole 64 KiB clusters, however small the write; a cluster written twice is copied once.",
             _mirror_len),
    Exercise("commit-count", "count of b0 (on the base) after two writes, an external snapshot, three writes into "
             "the overlay and an active block-commit completed with job-complete",
             "the snapshot's writes reach the base only through the commit, which copies every 64 KiB cluster the "
             "overlay allocates (however small the write) and writes it into the base; b0 records those writes "
             "on top of what it had before the snapshot, and a cluster dirty twice counts once.", _commit_count),
]}

_SOLVED: dict[tuple[str, str], Any] = {}


def _backend() -> str:
    return os.environ.get("BITLAB_BACKEND", "sim")


def solution(name: str) -> Any:
    """The answer to exercise ``name``, computed by bitlab (cached per backend)."""
    key = (name, _backend())
    if key not in _SOLVED:
        _SOLVED[key] = EXERCISES[name].solve()
    return _SOLVED[key]


def _normal(value: Any, unordered: bool) -> Any:
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_normal(v, False) for v in value]
        return sorted(items, key=repr) if unordered else items
    if isinstance(value, str):
        return value.strip()
    return value


def is_correct(name: str, answer: Any) -> bool:
    """Whether ``answer`` is the answer to exercise ``name`` (order ignored where it does not matter)."""
    ex = EXERCISES[name]
    return _normal(answer, ex.unordered) == _normal(solution(name), ex.unordered)


def check(name: str, answer: Any) -> None:
    """Print ``✓ correct`` or a hint for exercise ``name`` (returns nothing, so a notebook cell shows
    just the verdict; :func:`is_correct` gives the bool)."""
    if name not in EXERCISES:
        raise KeyError(f"no exercise {name!r}; known: {', '.join(EXERCISES)}")
    ex = EXERCISES[name]
    if answer is None or answer is ...:
        print(f"✎ No answer yet: put yours in my_answer and run this cell again.\n  Hint: {ex.hint}")
    elif is_correct(name, answer):
        print("✓ correct")
    else:
        print(f"✗ not yet ({ex.question}).\n  Hint: {ex.hint}")
