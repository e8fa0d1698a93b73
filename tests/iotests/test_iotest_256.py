"""QEMU 7.2's iotest 256 (full and incremental backups of two drives in transactions), without IOThreads.

Ported: two 64 MiB qcow2 drives; each target made by two blockdev-create jobs (file, then qcow2, each
dismissed as iotests' run_job does) and blockdev-add; a transaction adding bitmap0/bitmap1 and starting the
two full blockdev-backups (j0, j1: BLOCK_JOB_COMPLETED len = offset = 64 MiB); then new targets and a
transaction of two incremental backups (j2, j3: len = offset = 0, nothing was written). The replies and
the BLOCK_JOB_COMPLETED events are asserted as 256.out shows them and compared with the system emulator's.
Left out: the IOThreads and virtio-scsi devices 256 puts the drives in (bitlab has one context; the story
is the same in it).
"""

from __future__ import annotations

import pytest

from bitlab import Machine
from tests.both import on_both
from tests.iotests.harness import Log

SIZE = 64 << 20
OK = {"return": {}}


def run_job(t: Log, job_id: str, dismiss: bool) -> None:
    """iotests' run_job: wait for the job's end; a job that stays concluded is dismissed."""
    t.poll(lambda: not any(j["id"] == job_id and j["status"] not in ("concluded",)
                           for j in t.qmp("query-jobs")["return"]))
    if dismiss:
        t.qmp_log("job-dismiss", id=job_id)


def create_target(t: Log, filename: str, name: str) -> None:
    t.qmp_log("blockdev-create", job_id="job1", options={"driver": "file", "filename": filename, "size": 0})
    run_job(t, "job1", True)
    t.qmp_log("blockdev-add", driver="file", node_name=f"file_{filename}", filename=filename)
    t.qmp_log("blockdev-create", job_id="job2", options={"driver": "qcow2", "file": f"file_{filename}", "size": SIZE})
    run_job(t, "job2", True)
    t.qmp_log("blockdev-add", driver="qcow2", node_name=name, file=f"file_{filename}")


def completed(t: Log, job_id: str) -> dict:
    """run_job's wait for the job's own end (QEMU ends j2 and j3, which copy nothing, in either order)."""
    return t.log(t.event_wait("BLOCK_JOB_COMPLETED", {"device": job_id}))


def story(vm) -> list:
    for i in (0, 1):
        vm.qemu_img("create", "-f", "qcow2", f"img{i}", str(SIZE))
        vm.add_drive(f"drive{i}", file=f"img{i}")
    t = Log(vm)
    for kind, sync, bitmaps in (("full", "full", True), ("incr", "incremental", False)):
        create_target(t, f"img0-{kind}", f"img0-{kind}")
        create_target(t, f"img1-{kind}", f"img1-{kind}")
        jobs = ("j0", "j1") if bitmaps else ("j2", "j3")
        actions = [{"type": "block-dirty-bitmap-add", "data": {"node": f"drive{i}", "name": f"bitmap{i}"}}
                   for i in (0, 1)] if bitmaps else []
        actions += [{"type": "blockdev-backup", "data": {
            "device": f"drive{i}", "target": f"img{i}-{kind}", "sync": sync, "job-id": jobs[i],
            **({} if bitmaps else {"bitmap": f"bitmap{i}"})}} for i in (0, 1)]
        t.qmp_log("transaction", actions=actions)
        for job in jobs:
            completed(t, job)
    return t.lines


def test_256():
    def done(job: str, length: int) -> dict:
        return {"data": {"device": job, "len": length, "offset": length, "speed": 0, "type": "backup"},
                "event": "BLOCK_JOB_COMPLETED", "timestamp": {"microseconds": "USECS", "seconds": "SECS"}}

    targets = [OK] * 6 * 2  # per target: create, dismiss, add, create, dismiss, add
    assert story(Machine()) == [*targets, OK, done("j0", SIZE), done("j1", SIZE),
                                *targets, OK, done("j2", 0), done("j3", 0)]


@pytest.mark.qemu
def test_256_on_both():
    want, got = on_both(story, "system")
    assert got == want
