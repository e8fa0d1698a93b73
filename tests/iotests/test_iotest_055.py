"""QEMU 7.2's iotest 055 (drive-backup and blockdev-backup, alone and in a transaction), less compression.

Ported, for each of drive-backup (new ``target.img``) and blockdev-backup (onto ``drive1``), alone and as a
one-action transaction: cancel (BLOCK_JOB_CANCELLED of type backup); pause (block-job-pause, the offset stays
put while time passes, resume, completion with offset = len, the target then reads as the source: ``qemu-img
compare``); the refusals, whose exact replies are compared with the system emulator's: a missing target with
``mode: existing``, an unknown format, missing devices and targets, the source as its own target, a negative
speed (at creation and in block-job-set-speed), a failing action followed by Abort leaving no job
(TestSingleDrive, TestSingleTransaction, TestSetSpeed). TestSetSpeed: the default speed 0, set-speed 8 MiB/s
and the ``speed`` option (4 MiB/s) as query-block-jobs shows them.
Where 055 holds a job back with blkdebug breakpoints (``pause_drive``, which bitlab's qemu-io lacks), a
job here starts at speed 1 (cancel, pause; it is set to 0 before the resume) or stops at a read error
(``on-source-error: stop``, TestSetSpeed), so that it still runs when the next command comes, on real QEMU too.
Left out: TestDriveCompression (``compress``: another helper's work), the CD-ROM ``medium not found`` cases
(bitlab has no removable media).
"""

from __future__ import annotations

import pytest

from bitlab import Machine, QemuImgError
from tests.both import on_both
from tests.iotests.harness import Log

M = 1 << 20
OK = {"return": {}}
TARGETS = {"drive-backup": "target.img", "blockdev-backup": "drive1"}
PAUSED = {"error": {"class": "GenericError", "desc": "The block job for device 'drive0' is currently paused"}}
READ_FAILS = {"inject-error": [{"event": "read_aio", "errno": 5}]}


def setup(vm, blkdebug: dict | None = None) -> None:
    """TestSingleDrive.setUp: drive0 with four writes, drive1 an empty image of the same size."""
    vm.qemu_img("create", "-f", "qcow2", "test.img", "64M")
    vm.qemu_img("create", "-f", "qcow2", "blockdev-target.img", "64M")
    vm.add_drive("drive0", file="test.img", blkdebug=blkdebug)
    vm.add_drive("drive1", file="blockdev-target.img")
    for pattern, off, length in ((0x5D, 0, 65536), (0xD5, M, 32768), (0xDC, 32 * M, 126976),
                                 (0xDC, 67043328, 65536)):
        vm.write("drive0", off, length, pattern)


def start(t: Log, cmd: str, transaction: bool, **args) -> dict:
    args = {"device": "drive0", "target": TARGETS[cmd], "sync": "full", **args}
    if transaction:
        return t.qmp_log("transaction", actions=[{"type": cmd, "data": args}])
    return t.qmp_log(cmd, **args)


def cancel(vm, cmd: str, transaction: bool) -> list:
    setup(vm)
    t = Log(vm)
    start(t, cmd, transaction, speed=1)
    t.qmp_log("block-job-cancel", device="drive0")
    data = t.event_wait("BLOCK_JOB_CANCELLED")["data"]
    t.log((data["type"], data["len"]))
    t.qmp_log("query-block-jobs")
    return t.lines


def pause(vm, cmd: str, transaction: bool, wait) -> list:
    setup(vm)
    t = Log(vm)
    start(t, cmd, transaction, speed=1)
    t.qmp_log("block-job-pause", device="drive0")
    wait()
    offset = t.qmp("query-block-jobs")["return"][0]["offset"]
    wait()
    t.log(t.qmp("query-block-jobs")["return"][0]["offset"] == offset)
    t.qmp_log("block-job-set-speed", device="drive0", speed=0)
    t.qmp_log("block-job-resume", device="drive0")
    data = t.event_wait("BLOCK_JOB_COMPLETED")["data"]
    t.log((data["offset"] == data["len"], data["len"], data.get("error")))
    vm.qemu_io("drive0", "flush")
    if cmd == "blockdev-backup":
        vm.qemu_io("drive1", "flush")
    t.log(vm.qemu_img("compare", "-U", "test.img", "target.img" if cmd == "drive-backup" else "blockdev-target.img"))
    return t.lines


def refusals(vm) -> list:
    setup(vm)
    t = Log(vm)
    for transaction in (False, True):
        # (the first round's speed -1 makes target.img: QEMU creates the image before it checks the speed)
        new = "target2.img" if transaction else "target.img"
        start(t, "drive-backup", transaction, mode="existing", target=new)
        start(t, "drive-backup", transaction, format="spaghetti-noodles", target=new)
        start(t, "drive-backup", transaction, device="nonexistent", target=new)
        start(t, "blockdev-backup", transaction, device="nonexistent", target="drive0")
        start(t, "blockdev-backup", transaction, target="nonexistent")
        start(t, "blockdev-backup", transaction, device="nonexistent", target="nonexistent")
        start(t, "blockdev-backup", transaction, target="drive0")
        start(t, "drive-backup", transaction, speed=-1, target=new)
        start(t, "blockdev-backup", transaction, speed=-1)
    for action in ({"type": "drive-backup", "data": {"device": "nonexistent", "mode": "existing",
                                                     "target": "target.img", "sync": "full"}},
                   {"type": "blockdev-backup", "data": {"device": "nonexistent", "target": "drive1", "sync": "full"}},
                   {"type": "blockdev-backup", "data": {"device": "drive0", "target": "nonexistent", "sync": "full"}}):
        t.qmp_log("transaction", actions=[action, {"type": "abort", "data": {}}])
        t.qmp_log("query-block-jobs")
    return t.lines


def set_speed(vm, cmd: str) -> list:
    setup(vm, READ_FAILS)
    t = Log(vm)
    speeds = lambda: [(j["device"], j["speed"]) for j in t.qmp("query-block-jobs")["return"]]  # noqa: E731
    for speed in (None, 4 * M):
        start(t, cmd, False, on_source_error="stop", **({} if speed is None else {"speed": speed}))
        t.log(t.event_wait("BLOCK_JOB_ERROR")["data"])
        t.log(speeds())
        if speed is None:
            t.qmp_log("block-job-set-speed", device="drive0", speed=8 * M)
            t.log(speeds())
            t.qmp_log("block-job-set-speed", device="drive0", speed=-1)
        t.qmp_log("block-job-cancel", device="drive0")  # (a job stopped by an error is paused as by the user)
        t.qmp_log("block-job-cancel", device="drive0", force=True)
        data = t.event_wait("BLOCK_JOB_CANCELLED")["data"]
        t.log((data["type"], data["speed"]))
    return t.lines


CASES = [(cmd, txn) for txn in (False, True) for cmd in TARGETS]


@pytest.mark.parametrize("cmd,transaction", CASES)
def test_055_cancel(cmd, transaction):
    assert cancel(Machine(), cmd, transaction) == [OK, OK, ("backup", 64 * M), {"return": []}]


@pytest.mark.parametrize("cmd,transaction", CASES)
def test_055_pause(cmd, transaction):
    vm = Machine()
    lines = pause(vm, cmd, transaction, lambda: vm.run(until=vm.now + 1))
    assert lines == [OK, OK, True, OK, OK, (True, 64 * M, None), "Images are identical.\n"]


def test_055_refusals():
    lines = refusals(Machine())
    errors = [line["error"]["desc"] for line in lines if "error" in line]
    assert errors[:9] == [
        "Could not open 'target.img': No such file or directory", "Unknown file format 'spaghetti-noodles'",
        "Cannot find device='nonexistent' nor node-name='nonexistent'",
        "Cannot find device='nonexistent' nor node-name='nonexistent'",
        "Cannot find device='nonexistent' nor node-name='nonexistent'",
        "Cannot find device='nonexistent' nor node-name='nonexistent'",
        "Source and target cannot be the same", *["Parameter 'speed' expects a non-negative value"] * 2]
    assert errors[9:18] == [errors[0].replace("target", "target2"), *errors[1:9]]
    assert lines[18:] == [{"error": {"class": "GenericError", "desc": errors[2]}}, {"return": []}] * 3


@pytest.mark.parametrize("cmd", TARGETS)
def test_055_set_speed(cmd):
    error = {"device": "drive0", "operation": "read", "action": "stop"}
    assert set_speed(Machine(), cmd) == [
        OK, error, [("drive0", 0)], OK, [("drive0", 8 * M)],
        {"error": {"class": "GenericError", "desc": "Parameter 'speed' expects a non-negative value"}}, PAUSED, OK,
        ("backup", 8 * M), OK, error, [("drive0", 4 * M)], PAUSED, OK, ("backup", 4 * M)]


@pytest.mark.qemu
@pytest.mark.parametrize("cmd,transaction", CASES)
def test_055_cancel_and_pause_on_both(cmd, transaction):
    assert on_both(lambda vm: cancel(vm, cmd, transaction), "system")[0] == cancel(Machine(), cmd, transaction)
    want, got = on_both(lambda vm, wait: pause(vm, cmd, transaction, wait), "system", wait_s=0.2)
    assert got == want


@pytest.mark.qemu
def test_055_refusals_on_both():
    want, got = on_both(refusals, "system")
    assert got == want


@pytest.mark.qemu
@pytest.mark.parametrize("cmd", TARGETS)
def test_055_set_speed_on_both(cmd):
    want, got = on_both(lambda vm: set_speed(vm, cmd), "system")
    assert got == want


def test_qemu_img_create_unknown_format():
    """Found beside 055's ``format: spaghetti-noodles`` (which drive-backup now answers as QEMU does)."""
    with pytest.raises(QemuImgError) as err:
        Machine().qemu_img("create", "-f", "spaghetti-noodles", "x.img", "1M")
    assert err.value.stderr == "qemu-img: x.img: Unknown file format 'spaghetti-noodles'\n"
