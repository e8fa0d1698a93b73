"""QEMU 7.2's iotest 056 (drive-backup: sync top and none, overlapping writes, auto-dismiss).

Ported (each case's checks, as the iotest asserts them, plus the replies and job events on the way):
- TestSyncModesNoneAndTop.test_complete_top: a qcow2 over a raw backing file, four writes on top; a ``sync:
  top`` drive-backup to a new image completes and ``qemu-img compare`` finds it identical to the source
  (QEMU's create_image fills the backing with a sector-numbered pattern: here a few pattern writes stand in).
- test_cancel_sync_none: a ``sync: none`` backup, a guest write of 0x5e at 0 and a flush, cancel: the target
  holds the old 0x41 (copy-before-write copied the cluster first).
- BackupTest.test_overlapping_writes: a throttled (speed 1) full backup, guest writes at [1M+64k, +64k) and
  then [1M, 2M), set-speed 0: the target equals a reference backup taken before the writes.
- test_dismiss_false / _true / _bad_id / _collision: auto-dismiss on and off, ``block-job-dismiss`` of a
  missing job (DeviceNotActive), a new job under the id of a concluded one refused.
- test_dismiss_premature / _erroneous: a blockdev-backup onto a target over blkdebug whose first write
  fails, ``on-target-error: stop``: BLOCK_JOB_ERROR, the job paused, dismiss refused in 'paused', resume,
  completion with offset = len, then (auto-dismiss off) concluded and dismissed.
Left out: TestBeforeWriteNotifier (blkdebug ``break``/``resume`` on a node's request, HMP ``qemu-io
drive0 "break …"``): bitlab's qemu-io has no breakpoint commands.
056.out holds only unittest's dots: what the iotest asserts is asserted here; the whole log is compared with
the system emulator's (its ``-drive`` devices and HMP qemu-io, as the iotest uses them).
"""

from __future__ import annotations

import json

import pytest

from bitlab import Machine
from tests.both import on_both
from tests.iotests.harness import Log

M = 1 << 20
OK = {"return": {}}


def jobs_log(vm) -> list:
    """The job events, without timestamps."""
    return [(e["event"], e.get("data")) for e in vm.events if e["event"] != "JOB_STATUS_CHANGE"]


def sync_modes_setup(vm) -> None:
    """056's TestSyncModesNoneAndTop.setUp (the backing's content by pattern writes)."""
    vm.qemu_img("create", "-f", "raw", "backing.img", "64M")
    vm.qmp("blockdev-add", {"driver": "raw", "node-name": "bk", "file": {"driver": "file", "filename": "backing.img"}})
    for pattern, off, length in ((0x11, 0, M), (0x22, 32 * M + 64 * 1024, 3 * M), (0x33, 63 * M, M)):
        vm.write("bk", off, length, pattern)
    vm.qmp("blockdev-del", {"node-name": "bk"})
    vm.qemu_img("create", "-f", "qcow2", "-b", "backing.img", "-F", "raw", "test.img")
    vm.add_drive("drive0", file="test.img")
    for pattern, off, length in ((0x41, 0, 512), (0xD5, M, 32 * 1024), (0xDC, 32 * M, 124 * 1024),
                                 (0xDC, 67043328, 64 * 1024)):
        vm.write("drive0", off, length, pattern)


def complete_top(vm) -> list:
    sync_modes_setup(vm)
    t = Log(vm)
    t.qmp_log("query-block-jobs")
    t.qmp_log("drive-backup", device="drive0", sync="top", format="qcow2", target="target.img")
    vm.run()
    t.qmp_log("query-block-jobs")
    t.log(jobs_log(vm))
    vm.qemu_io("drive0", "flush")  # (056 shuts the VM down before it compares)
    t.log(vm.qemu_img("compare", "-U", "test.img", "target.img"))
    # where the target's clusters lie in its file varies from run to run on QEMU (the job's 64 workers race
    # for the qcow2 allocations): only what is allocated, at which depth, is compared
    t.log([{k: v for k, v in entry.items() if k != "offset" or entry["depth"]}
           for entry in json.loads(vm.qemu_img("map", "--output=json", "-U", "target.img"))])
    return t.lines


def cancel_sync_none(vm) -> list:
    sync_modes_setup(vm)
    t = Log(vm)
    t.qmp_log("drive-backup", device="drive0", sync="none", target="target.img")
    t.log(vm.qemu_io("drive0", "write -P0x5e 0 512").splitlines()[0])
    vm.qemu_io("drive0", "flush")  # (aio_flush: bitlab's qemu-io has flush only; the same request)
    t.qmp_log("block-job-cancel", device="drive0")
    vm.run()
    t.log(jobs_log(vm))
    t.qmp_log("blockdev-add", driver="qcow2", node_name="t", backing=None, read_only=True,
              file={"driver": "file", "filename": "target.img"})
    t.log(vm.qemu_io("t", "read -P0x41 0 512").splitlines()[0])
    return t.lines


def backup_setup(vm) -> None:
    for name in ("test", "dest", "dest2", "ref"):
        vm.qemu_img("create", "-f", "qcow2", f"{name}.qcow2", "64M")
    vm.add_drive("drive0", file="test.qcow2")


def writes(vm, patterns) -> None:
    """056's hmp_io_writes: each write, then a flush."""
    for pattern, off, length in patterns:
        vm.qemu_io("drive0", f"write -P{pattern} {off} {length}")
    vm.qemu_io("drive0", "flush")


def wait_completed(t: Log) -> dict:
    """056's qmp_backup_wait: the job's BLOCK_JOB_COMPLETED; what the iotest checks of it."""
    data = t.event_wait("BLOCK_JOB_COMPLETED")["data"]
    return {"error": data.get("error"), "done": data["offset"] == data["len"], "len": data["len"]}


def overlapping_writes(vm) -> list:
    backup_setup(vm)
    t = Log(vm)
    writes(vm, [("42", "0M", "2M")])
    t.qmp_log("drive-backup", device="drive0", format="qcow2", sync="full", target="ref.qcow2", auto_dismiss=False)
    t.log(wait_completed(t))
    t.qmp_log("block-job-dismiss", id="drive0")
    t.qmp_log("drive-backup", device="drive0", format="qcow2", sync="full", target="dest.qcow2", speed=1,
              auto_dismiss=False)
    writes(vm, [("23", f"{1024 + 64}k", "64k"), ("66", "1M", "1M")])
    t.qmp_log("block-job-set-speed", device="drive0", speed=0)
    t.log(wait_completed(t))
    t.qmp_log("block-job-dismiss", id="drive0")
    t.log(vm.qemu_img("compare", "-U", "ref.qcow2", "dest.qcow2"))
    return t.lines


def dismissals(vm) -> list:
    """test_dismiss_false, _true, _bad_id and _collision, one after another on one machine."""
    backup_setup(vm)
    t = Log(vm)
    full = {"device": "drive0", "format": "qcow2", "sync": "full"}
    t.qmp_log("query-block-jobs")
    t.qmp_log("drive-backup", **full, target="dest.qcow2", auto_dismiss=True)
    t.log(wait_completed(t))
    t.qmp_log("query-block-jobs")
    t.qmp_log("drive-backup", **full, target="dest.qcow2", auto_dismiss=False)
    t.log(wait_completed(t))
    t.log([j["status"] for j in t.qmp("query-block-jobs")["return"]])
    t.qmp_log("drive-backup", **full, target="dest2.qcow2", auto_dismiss=False)
    t.qmp_log("block-job-dismiss", id="drive0")
    t.qmp_log("query-block-jobs")
    t.qmp_log("block-job-dismiss", id="foobar")
    t.qmp_log("drive-backup", **full, target="dest2.qcow2", auto_dismiss=False)
    t.log(wait_completed(t))
    t.qmp_log("block-job-dismiss", id="drive0")
    t.qmp_log("query-block-jobs")
    return t.lines


def dismissal_failure(vm, auto_dismiss: bool) -> list:
    backup_setup(vm)
    t = Log(vm)
    writes(vm, [("0x9a", 0, 512), ("0x55", "8M", "352k"), ("0x78", "15872k", "1M")])
    t.qmp_log("blockdev-add", node_name="target0", driver="qcow2", file={
        "driver": "blkdebug", "image": {"driver": "file", "filename": "dest.qcow2"},
        "inject-error": [{"event": "write_aio", "errno": 5, "immediately": False, "once": True}]})
    t.qmp_log("blockdev-backup", device="drive0", target="target0", on_target_error="stop", sync="full",
              auto_dismiss=auto_dismiss)
    t.log(t.event_wait("BLOCK_JOB_ERROR")["data"])
    vm.run()
    t.log([j["status"] for j in t.qmp("query-block-jobs")["return"]])
    t.qmp_log("block-job-dismiss", id="drive0")
    t.log([j["status"] for j in t.qmp("query-block-jobs")["return"]])
    t.qmp_log("block-job-resume", device="drive0")
    t.log(wait_completed(t))
    if not auto_dismiss:
        t.log([j["status"] for j in t.qmp("query-block-jobs")["return"]])
        t.qmp_log("block-job-dismiss", id="drive0")
    t.qmp_log("query-block-jobs")
    return t.lines


def test_056_complete_top():
    lines = complete_top(Machine())
    assert lines[:3] == [{"return": []}, OK, {"return": []}]
    assert [e for e, _ in lines[3]] == ["BLOCK_JOB_COMPLETED"]
    assert lines[4] == "Images are identical.\n"
    assert [(e["start"], e["length"]) for e in lines[5] if e["depth"] == 0] == [
        (0, 65536), (M, 65536), (32 * M, 131072), (67043328, 65536)]


def test_056_cancel_sync_none():
    lines = cancel_sync_none(Machine())
    assert lines[1] == "wrote 512/512 bytes at offset 0"
    assert [e for e, _ in lines[3]] == ["BLOCK_JOB_CANCELLED"] and lines[3][0][1]["type"] == "backup"
    assert lines[-1] == "read 512/512 bytes at offset 0"


def test_056_overlapping_writes():
    done = {"error": None, "done": True, "len": 64 * M}
    assert overlapping_writes(Machine()) == [OK, done, OK, OK, OK, done, OK, "Images are identical.\n"]


def test_056_dismissals():
    done = {"error": None, "done": True, "len": 64 * M}
    assert dismissals(Machine()) == [
        {"return": []}, OK, done, {"return": []}, OK, done, ["concluded"],
        {"error": {"class": "GenericError", "desc": "Job ID 'drive0' already in use"}}, OK, {"return": []},
        {"error": {"class": "DeviceNotActive", "desc": "Block job 'foobar' not found"}}, OK, done, OK,
        {"return": []}]


@pytest.mark.parametrize("auto_dismiss", [False, True])
def test_056_dismissal_failure(auto_dismiss):
    lines = dismissal_failure(Machine(), auto_dismiss)
    assert lines[:7] == [
        OK, OK, {"device": "drive0", "operation": "write", "action": "stop"}, ["paused"],
        {"error": {"class": "GenericError", "desc": "Job 'drive0' in state 'paused' cannot accept command verb "
                   "'dismiss'"}}, ["paused"], OK]
    assert lines[7] == {"error": None, "done": True, "len": 64 * M}
    assert lines[8:] == ([] if auto_dismiss else [["concluded"], OK]) + [{"return": []}]


@pytest.mark.qemu
@pytest.mark.parametrize("story", [complete_top, cancel_sync_none, overlapping_writes, dismissals,
                                   lambda vm: dismissal_failure(vm, False), lambda vm: dismissal_failure(vm, True)],
                         ids=["complete_top", "cancel_sync_none", "overlapping_writes", "dismissals",
                              "dismiss_premature", "dismiss_erroneous"])
def test_056_on_both(story):
    want, got = on_both(story, "system")
    assert got == want
