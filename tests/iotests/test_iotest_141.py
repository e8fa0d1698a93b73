"""QEMU 7.2's iotest 141 (blockdev-del of a node a block job uses), drive-backup case.

Ported: a qcow2 node ``drv0`` over a chain b <- m <- t (1 MiB each), drive-backup ``sync: none`` to a new
qcow2 ``o.qcow2`` (QEMU prints bdrv_img_create's "Formatting" line on its stdout, with ``t.qcow2`` as the
backing file), blockdev-del of drv0 refused ("Node 'drv0' is busy: node is used as backing hd of
'NODE_NAME'", the target's generated node name filtered as the iotest does), block-job-cancel, the events
(aborting, BLOCK_JOB_CANCELLED len 1048576 offset 0, concluded, null), then blockdev-del succeeds.
The installed QEMU 7.2.22 (system emulator) also sends the drain's paused/running pair right after running
(drive-backup runs as a one-action transaction; 219.out shows the pair too), which upstream's 141.out does
not show: the installed QEMU wins, bitlab sends it.
The drive-mirror, active block-commit, non-active block-commit and block-stream cases: ported below
(``job_story``), compared with 141.out's events and on the system emulator.
drive-backup's bdrv_img_create prints its "Formatting" line on stdout as qemu-img create does
(test_141_formatting_line).
On qemu-storage-daemon the backend's own NBD exports of drv0 are taken down and put back around
blockdev-del, which drains the job twice more (two more paused/running pairs that are the harness's, not
the story's): the comparison runs on the system emulator.
"""

from __future__ import annotations

import json
import re

import pytest

from bitlab import Machine
from tests.both import on_both
from tests.iotests.harness import Log

FORMATTING = ("Formatting 'o.qcow2', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib "
              "size=1048576 backing_file=t.qcow2 backing_fmt=qcow2 lazy_refcounts=off refcount_bits=16\n")


def story(vm) -> list:
    vm.qemu_img("create", "-f", "qcow2", "b.qcow2", "1M")
    vm.qemu_img("create", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "m.qcow2", "1M")
    vm.qemu_img("create", "-f", "qcow2", "-b", "m.qcow2", "-F", "qcow2", "t.qcow2", "1M")
    t = Log(vm)
    t.qmp_log("blockdev-add", node_name="drv0", driver="qcow2", file={"driver": "file", "filename": "t.qcow2"})
    vm.console_take()
    t.qmp_log("drive-backup", job_id="job0", device="drv0", target="o.qcow2", format="qcow2", sync="none")
    formatting = vm.console_take()  # (compared on its own: see test_141_formatting_line)
    t.log(json.loads(re.sub(r"#block\d{3,}", "NODE_NAME", json.dumps(t.qmp("blockdev-del", node_name="drv0")))))
    t.qmp_log("block-job-cancel", device="job0")
    vm.run()
    t.qmp_log("blockdev-del", node_name="drv0")
    t.log([(e["event"], e.get("data")) for e in vm.events])
    return [*t.lines, formatting]


def status(value: str) -> tuple:
    return ("JOB_STATUS_CHANGE", {"id": "job0", "status": value})


def test_141_drive_backup():
    ok = {"return": {}}
    assert story(Machine())[:-1] == [
        ok, ok,
        {"error": {"class": "GenericError",
                   "desc": "Node 'drv0' is busy: node is used as backing hd of 'NODE_NAME'"}},
        ok, ok,
        [status("created"), status("running"), status("paused"), status("running"), status("aborting"),
         ("BLOCK_JOB_CANCELLED", {"device": "job0", "len": 1048576, "offset": 0, "speed": 0, "type": "backup"}),
         status("concluded"), status("null")]]


def test_141_formatting_line():
    assert story(Machine())[-1] == FORMATTING


@pytest.mark.qemu
def test_141_drive_backup_on_both():
    want, got = on_both(story, "system")
    assert got == want and want[-1] == FORMATTING


def job_story(vm, case: str) -> list:
    """141's test_blockjob for the drive-mirror, active commit and non-active commit cases: the job started on
    drv0 (over t <- m <- b), blockdev-del refused while it runs, block-job-cancel, blockdev-del, the events."""
    vm.qemu_img("create", "-f", "qcow2", "b.qcow2", "1M")
    vm.qemu_img("create", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "m.qcow2", "1M")
    vm.qemu_img("create", "-f", "qcow2", "-b", "m.qcow2", "-F", "qcow2", "t.qcow2", "1M")
    t = Log(vm)
    if case in ("commit", "stream"):  # (qemu-io 'write 0 1M' on m.qcow2, or b.qcow2: something to do)
        image = "m" if case == "commit" else "b"
        t.qmp("blockdev-add", node_name=image, driver="qcow2", file={"driver": "file", "filename": f"{image}.qcow2"},
              backing=None)
        vm.write(image, 0, 1 << 20)
        t.qmp("blockdev-del", node_name=image)
    t.qmp_log("blockdev-add", node_name="drv0", driver="qcow2", file={"driver": "file", "filename": "t.qcow2"})
    vm.console_take()
    if case == "mirror":
        t.qmp_log("drive-mirror", job_id="job0", device="drv0", target="o.qcow2", format="qcow2", sync="none")
        t.event_wait("BLOCK_JOB_READY")
    elif case == "active":
        t.qmp_log("block-commit", job_id="job0", device="drv0")
        t.event_wait("BLOCK_JOB_READY")
    elif case == "stream":
        t.qmp_log("block-stream", job_id="job0", device="drv0", speed=1)
    else:
        t.qmp_log("block-commit", job_id="job0", device="drv0", top="m.qcow2", speed=1)
    t.qmp_log("blockdev-del", node_name="drv0")
    t.qmp_log("block-job-cancel", device="job0")
    t.event_wait("JOB_STATUS_CHANGE", {"status": "null"})
    t.qmp_log("blockdev-del", node_name="drv0")
    t.log([(e["event"], e.get("data")) for e in vm.events])
    return t.lines


def _end(kind: str, length: int, offset: int, speed: int, event: str = "BLOCK_JOB_COMPLETED") -> tuple:
    return (event, {"device": "job0", "len": length, "offset": offset, "speed": speed, "type": kind})


@pytest.mark.parametrize("case, busy, events", [
    ("mirror", "mirror", ["created", "running", "ready", _end("mirror", 0, 0, 0, "BLOCK_JOB_READY"), "waiting",
                          "pending", _end("mirror", 0, 0, 0), "concluded", "null"]),
    ("active", "commit", ["created", "running", "ready", _end("commit", 0, 0, 0, "BLOCK_JOB_READY"), "waiting",
                          "pending", _end("commit", 0, 0, 0), "concluded", "null"]),
    ("commit", "commit", ["created", "running", "aborting", _end("commit", 1 << 20, 512 << 10, 1,
                                                                  "BLOCK_JOB_CANCELLED"), "concluded", "null"]),
    ("stream", "stream", ["created", "running", "aborting", _end("stream", 1 << 20, 512 << 10, 1,
                                                                  "BLOCK_JOB_CANCELLED"), "concluded", "null"]),
])
def test_141_jobs(case, busy, events):
    """141.out: the job's node cannot go while it runs; after the cancel it can. (A ready mirror or active
    commit cancelled plainly completes; the commit job, 1 byte/s, has copied one 512 KiB chunk.)"""
    ok = {"return": {}}
    lines = job_story(Machine(), case)
    assert lines[:-1] == [ok, ok, {"error": {"class": "GenericError", "desc": f"Node 'drv0' is busy: block device is "
                                                                             f"in use by block job: {busy}"}},
                          ok, ok]
    assert [data["status"] if name == "JOB_STATUS_CHANGE" else (name, data) for name, data in lines[-1]] == events


@pytest.mark.qemu
@pytest.mark.parametrize("case", ["mirror", "active", "commit", "stream"])
def test_141_jobs_on_both(case):
    want, got = on_both(lambda vm: job_story(vm, case), "system")
    assert got == want
