"""QEMU's iotest 257 (bitmap sync modes), reproduced row by row (reference §11).

Each row: backup #1 with sync × bitmap-mode × failure, then a recovery backup #2.
The expected numbers are those of tests/qemu-iotests/257.out (QEMU 7.2 = 9.1 here).
"""

import pytest

from bitlab import Machine
from bitlab.syncmodes import GRANULARITY, Iotest257Run

# iotest 257's writes, blkdebug rules and steps come from bitlab.syncmodes (SyncModeLab's model);
# the expected numbers below are QEMU's own.
G = GRANULARITY

# sync, bitmap-mode, failure: #1 end event (len, offset), bits after #1, after G3, #2 len, after #2
MATRIX = [
    ("bitmap", "never", "sim", ("CANCELLED", 393216, 393216), 10, 15, 983040, 15),
    ("bitmap", "never", "int", ("COMPLETED", 393216, 65536), 6, 14, 917504, 14),
    ("bitmap", "never", "ok", ("COMPLETED", 393216, 393216), 10, 15, 983040, 15),
    ("bitmap", "on-success", "sim", ("CANCELLED", 393216, 393216), 10, 15, 983040, 0),
    ("bitmap", "on-success", "int", ("COMPLETED", 393216, 65536), 6, 14, 917504, 0),
    ("bitmap", "on-success", "ok", ("COMPLETED", 393216, 393216), 7, 12, 786432, 0),
    ("bitmap", "always", "sim", ("CANCELLED", 393216, 393216), 7, 12, 786432, 0),
    ("bitmap", "always", "int", ("COMPLETED", 393216, 65536), 5, 13, 851968, 0),
    ("bitmap", "always", "ok", ("COMPLETED", 393216, 393216), 7, 12, 786432, 0),
    ("full", "on-success", "sim", ("CANCELLED", 67108864, 67108864), 10, 15, 983040, 0),
    ("full", "on-success", "int", ("COMPLETED", 67108864, 983040), 6, 14, 917504, 0),
    ("full", "on-success", "ok", ("COMPLETED", 67108864, 67108864), 7, 12, 786432, 0),
    ("full", "always", "sim", ("CANCELLED", 67108864, 67108864), 7, 12, 786432, 0),
    ("full", "always", "int", ("COMPLETED", 67108864, 983040), 1009, 1014, 66453504, 0),
    ("full", "always", "ok", ("COMPLETED", 67108864, 67108864), 7, 12, 786432, 0),
    ("top", "on-success", "sim", ("CANCELLED", 458752, 458752), 10, 15, 983040, 0),
    ("top", "on-success", "int", ("COMPLETED", 458752, 65536), 6, 14, 917504, 0),
    ("top", "on-success", "ok", ("COMPLETED", 458752, 458752), 7, 12, 786432, 0),
    ("top", "always", "sim", ("CANCELLED", 458752, 458752), 7, 12, 786432, 0),
    ("top", "always", "int", ("COMPLETED", 458752, 65536), 6, 14, 917504, 0),
    ("top", "always", "ok", ("COMPLETED", 458752, 458752), 7, 12, 786432, 0),
]


def bitmap0(vm):
    node = next(n for n in vm.qmp("query-named-block-nodes", {"flat": True}) if n["node-name"] == "drive0")
    return next(b for b in node["dirty-bitmaps"] if b.get("name") == "bitmap0")


@pytest.mark.parametrize("sync,mode,failure,end1,bits1,bits_g3,len2,bits2", MATRIX,
                         ids=[f"{r[0]}-{r[1]}-{r[2]}" for r in MATRIX])
def test_257_row(sync, mode, failure, end1, bits1, bits_g3, len2, bits2):
    vm = Machine()
    run = Iotest257Run(vm, failure == "int")
    run.write_group(0)
    run.reference()
    vm.qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "bitmap0", "granularity": G})
    run.write_group(1)
    assert bitmap0(vm)["count"] == 393216
    run.reference()
    if failure == "int":
        vm.qemu_io("drive0", "flush")
    run.target("backup_target")
    since = run.backup("backup_1", "backup_target", sync, mode)
    if failure != "int":
        assert vm.qmp("query-jobs")[0]["status"] == "pending"
        run.write_group(2)
        frozen = bitmap0(vm)
        assert (frozen["busy"], frozen["recording"], frozen["count"]) == (True, True, 393216)
        vm.qmp("job-cancel" if failure == "sim" else "job-finalize", {"id": "backup_1"})
        vm.run()
    ev = run.end_event(since, "backup_1")
    assert (ev["event"].removeprefix("BLOCK_JOB_"), ev["data"]["len"], ev["data"]["offset"]) == end1
    assert ("error" in ev["data"]) == (failure == "int")
    assert bitmap0(vm)["count"] == bits1 * G
    run.write_group(3)
    assert bitmap0(vm)["count"] == bits_g3 * G
    run.reference()
    run.target("backup_target_2")
    since = run.backup("backup_2", "backup_target_2", "bitmap", mode)
    vm.qmp("job-finalize", {"id": "backup_2"})
    vm.run()
    ev = run.end_event(since, "backup_2")
    assert ev["event"] == "BLOCK_JOB_COMPLETED" and ev["data"]["len"] == ev["data"]["offset"] == len2
    assert bitmap0(vm)["count"] == bits2 * G
