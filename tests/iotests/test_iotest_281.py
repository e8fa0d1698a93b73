"""QEMU 7.2's iotest 281 (blockdev + IOThread interactions), the cases without an IOThread of their own.

Ported (bitlab has no IOThreads: every node is in the main context, which is what these cases reduce to):
- TestBlockdevBackupAbort: a two-action transaction of blockdev-backups whose second has no job-id on a
  node without a device name: refused ("Invalid job ID ''"), the first job (j1, created, never started)
  aborted with it, no job left;
- TestExternalSnapshotAbort: two blockdev-snapshot-sync actions of drive0: refused (the second finds drive0
  already the backing of the first's overlay), which is undone;
- TestDirtyBitmapIOThread: a persistent bitmap added to a qcow2 node.
All replies (and the jobs' events) are compared with the system emulator's.
Left out: TestNBDMirrorIOThread (drive-mirror), TestYieldingAndTimers (NBD client reconnect, throttle).
"""

from __future__ import annotations

import pytest

from bitlab import Machine
from tests.both import on_both
from tests.iotests.harness import Log

OK = {"return": {}}


def nodes(vm, names) -> None:
    for name in names:
        vm.qemu_img("create", "-f", "qcow2", f"{name}.img", "64M")
        vm.qmp("blockdev-add", {"driver": "file", "filename": f"{name}.img", "node-name": f"file_{name}"})
        vm.qmp("blockdev-add", {"driver": "qcow2", "file": f"file_{name}", "node-name": name})


def story(vm) -> list:
    nodes(vm, ("drive0", "drive1", "snap0", "snap1"))
    t = Log(vm)
    since = len(vm.events)
    t.qmp_log("transaction", actions=[
        {"type": "blockdev-backup", "data": {"device": "drive0", "target": "snap0", "sync": "full", "job-id": "j1"}},
        {"type": "blockdev-backup", "data": {"device": "drive1", "target": "snap1", "sync": "full"}}])
    vm.run()
    t.log([(e["event"], e.get("data")) for e in vm.events[since:]])
    t.qmp_log("query-jobs")
    t.qmp_log("transaction", actions=[
        {"type": "blockdev-snapshot-sync", "data": {"node-name": "drive0", "snapshot-file": "snapshot.img",
                                                    "snapshot-node-name": "snap1x", "mode": "absolute-paths",
                                                    "format": "qcow2"}},
        {"type": "blockdev-snapshot-sync", "data": {"node-name": "drive0", "snapshot-file": "/fakesnapshot",
                                                    "snapshot-node-name": "snap2", "mode": "absolute-paths",
                                                    "format": "qcow2"}}])
    t.log(sorted(n["node-name"] for n in vm.qmp("query-named-block-nodes", {"flat": True})))
    t.qmp_log("block-dirty-bitmap-add", node="drive0", name="bitmap1", persistent=True)
    return t.lines


def test_281():
    def status(value: str) -> tuple:
        return ("JOB_STATUS_CHANGE", {"id": "j1", "status": value})

    assert story(Machine()) == [
        {"error": {"class": "GenericError", "desc": "Invalid job ID ''"}},
        [status("created"), status("aborting"), status("concluded"), status("null")], {"return": []},
        {"error": {"class": "GenericError", "desc": "Node 'drive0' is busy: node is used as backing hd of 'snap1x'"}},
        ["drive0", "drive1", "file_drive0", "file_drive1", "file_snap0", "file_snap1", "snap0", "snap1"], OK]


@pytest.mark.qemu
def test_281_on_both():
    want, got = on_both(story, "system")
    assert got == want
