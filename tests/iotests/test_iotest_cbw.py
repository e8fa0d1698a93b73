"""QEMU 7.2's iotest tests/copy-before-write (TestCbwError): its on-cbw-error and cbw-timeout cases.

Ported, compared with the system emulator and asserted exactly: a copy-before-write node ``cbw`` opened with
its source and, as its target, a qcow2 image over blkdebug whose first data write fails (``once``); a
snapshot-access node ``access`` over it; HMP ``qemu-io cbw "write 0 1M"`` and ``qemu-io access "read 0 1M"``.
With ``break-snapshot`` the guest's write succeeds and the snapshot read fails (EACCES); with
``break-guest-write`` the write fails (EIO) and the snapshot still reads. The source gets its data over a node
of its own first (the iotest runs the qemu-io tool on the image).

The ``cbw-timeout`` cases: the target is a ``throttle`` node (group ``group0``, 300 KiB/s of writes) over qcow2,
``cbw-timeout`` 1 s. The first 512 KiB write copies at once (the bucket is empty); the second one's copy waits
(512 - 30) KiB / 300 KiB/s = 1.6 s at the throttle, so it times out after 1 s: with ``break-guest-write`` the
guest's write fails (ETIMEDOUT) and the snapshot still reads; with ``break-snapshot`` the write succeeds and the
snapshot is gone. Either way the write returns only once the copy has passed the throttle (measured: 1.61 s).
"""

from __future__ import annotations

import pytest

from bitlab import Machine
from tests.both import on_both
from tests.iotests.harness import Log

OK = {"return": {}}


def _source(vm, t: Log) -> None:
    """setUp: both images, the source written (over a node of its own: the iotest runs the qemu-io tool)."""
    for name in ("source", "temp"):
        vm.qemu_img("create", "-f", "qcow2", name, "1M")
    t.qmp_log("blockdev-add", node_name="s", driver="qcow2", file={"driver": "file", "filename": "source"})
    vm.qemu_io("s", "write 0 1M")
    t.qmp_log("blockdev-del", node_name="s")


def story(vm, on_cbw_error: str) -> list:
    t = Log(vm)
    _source(vm, t)
    t.qmp_log("blockdev-add", node_name="cbw", driver="copy-before-write", on_cbw_error=on_cbw_error,
              file={"driver": "qcow2", "file": {"driver": "file", "filename": "source"}},
              target={"driver": "qcow2", "file": {
                  "driver": "blkdebug", "image": {"driver": "file", "filename": "temp"},
                  "inject-error": [{"event": "write_aio", "errno": 5, "immediately": False, "once": True}]}})
    t.qmp_log("blockdev-add", node_name="access", driver="snapshot-access", file="cbw")
    vm.console_take()
    for command in ('qemu-io cbw "write 0 1M"', 'qemu-io access "read 0 1M"'):
        t.qmp_log("human-monitor-command", command_line=command)
        t.log([line if "ops;" not in line else "TIMING" for line in vm.console_take().splitlines()])
    return t.lines


WANT = {
    "break-snapshot": [["wrote 1048576/1048576 bytes at offset 0", "TIMING"], ["read failed: Permission denied"]],
    "break-guest-write": [["write failed: Input/output error"], ["read 1048576/1048576 bytes at offset 0", "TIMING"]],
}


@pytest.mark.parametrize("on_cbw_error", list(WANT))
def test_on_cbw_error(on_cbw_error):
    first, second = WANT[on_cbw_error]
    assert story(Machine(), on_cbw_error) == [OK, OK, OK, OK, {"return": ""}, first, {"return": ""}, second]


@pytest.mark.qemu
@pytest.mark.parametrize("on_cbw_error", list(WANT))
def test_on_cbw_error_as_in_qemu(on_cbw_error):
    real, simulated = on_both(lambda vm: story(vm, on_cbw_error), daemon="system")
    assert real == simulated


def timeout_story(vm, on_cbw_error: str) -> list:
    t = Log(vm)
    _source(vm, t)
    t.qmp_log("object-add", qom_type="throttle-group", id="group0", limits={"bps-write": 300 * 1024})
    t.qmp_log("blockdev-add", node_name="cbw", driver="copy-before-write", on_cbw_error=on_cbw_error,
              cbw_timeout=1, file={"driver": "qcow2", "file": {"driver": "file", "filename": "source"}},
              target={"driver": "throttle", "throttle-group": "group0",
                      "file": {"driver": "qcow2", "file": {"driver": "file", "filename": "temp"}}})
    t.qmp_log("blockdev-add", node_name="access", driver="snapshot-access", file="cbw")
    vm.console_take()
    for command in ('qemu-io cbw "write 0 512K"', 'qemu-io cbw "write 512K 512K"', 'qemu-io access "read 0 1M"'):
        t.qmp_log("human-monitor-command", command_line=command)
        t.log([line if "ops;" not in line else "TIMING" for line in vm.console_take().splitlines()])
    return t.lines


TIMEOUT_WANT = {
    "break-guest-write": [["wrote 524288/524288 bytes at offset 0", "TIMING"], ["write failed: Connection timed out"],
                          ["read 1048576/1048576 bytes at offset 0", "TIMING"]],
    "break-snapshot": [["wrote 524288/524288 bytes at offset 0", "TIMING"],
                       ["wrote 524288/524288 bytes at offset 524288", "TIMING"], ["read failed: Permission denied"]],
}


@pytest.mark.parametrize("on_cbw_error", list(TIMEOUT_WANT))
def test_cbw_timeout(on_cbw_error):
    vm = Machine()
    lines = timeout_story(vm, on_cbw_error)
    outputs = lines[6::2]
    assert lines[:6] == [OK] * 5 + [{"return": ""}] and outputs == TIMEOUT_WANT[on_cbw_error]
    assert all(line == {"return": ""} for line in lines[5::2])


@pytest.mark.qemu
@pytest.mark.parametrize("on_cbw_error", list(TIMEOUT_WANT))
def test_cbw_timeout_as_in_qemu(on_cbw_error):
    real, simulated = on_both(lambda vm: timeout_story(vm, on_cbw_error), daemon="system")
    assert real == simulated


def test_a_timed_out_write_returns_when_its_copy_has_passed():
    vm = Machine()
    _source(vm, Log(vm))
    vm.qmp("object-add", {"qom-type": "throttle-group", "id": "group0", "limits": {"bps-write": 300 * 1024}})
    vm.qmp("blockdev-add", {"node-name": "cbw", "driver": "copy-before-write", "on-cbw-error": "break-guest-write",
                            "cbw-timeout": 1, "file": {"driver": "qcow2", "file": {"driver": "file",
                                                                                   "filename": "source"}},
                            "target": {"driver": "throttle", "throttle-group": "group0", "file": {
                                "driver": "qcow2", "file": {"driver": "file", "filename": "temp"}}}})
    vm.qemu_io("cbw", "write 0 512K")
    start = vm.clock.now_ns
    assert vm.qemu_io("cbw", "write 512K 512K") == "write failed: Connection timed out\n"
    assert abs(vm.clock.now_ns - start - (512 - 30) * 1024 * 10 ** 9 / (300 * 1024)) < 1_000_000
