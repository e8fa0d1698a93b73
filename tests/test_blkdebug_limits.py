"""blkdebug's request limits, as QEMU 7.2 checks and uses them (block/blkdebug.c blkdebug_open, block/block-copy.c).

- blkdebug_open checks ``align`` (a power of two below INT_MAX), then ``max-transfer``, ``opt-write-zero``,
  ``max-write-zero``, ``opt-discard`` and ``max-discard``: each below INT_MAX and a multiple of the alignment (at
  least the file's request alignment, 1 byte), each maximum also of its optimum. ``Cannot meet constraints with
  <option> <value>``.
- ``max-transfer`` reaches the nodes above (bdrv_merge_limits), and block-copy's tasks take at most the smaller of
  source's and target's, aligned down to the job's cluster; below one cluster, one cluster a task
  (COPY_READ_WRITE_CLUSTER). A throttled backup's first request shows it.

The expected texts and numbers are real QEMU 7.2's (qemu-storage-daemon).
"""

from __future__ import annotations

import pytest

from bitlab import Machine, QMPError
from tests.both import on_both

M = 1 << 20

# (options, QEMU's error or None)
CASES = [
    ({"max-transfer": 1000}, None),
    ({"align": 4096, "max-transfer": 1000}, "Cannot meet constraints with max-transfer 1000"),
    ({"align": 4096, "max-transfer": 8192}, None),
    ({"max-transfer": 2147483647}, "Cannot meet constraints with max-transfer 2147483647"),
    ({"align": 512, "opt-write-zero": 1000}, "Cannot meet constraints with opt-write-zero 1000"),
    ({"opt-write-zero": 4096, "max-write-zero": 6144}, "Cannot meet constraints with max-write-zero 6144"),
    ({"opt-write-zero": 4096, "max-write-zero": 8192}, None),
    ({"align": 4096, "opt-discard": 2048}, "Cannot meet constraints with opt-discard 2048"),
    ({"opt-discard": 3000, "max-discard": 4000}, "Cannot meet constraints with max-discard 4000"),
    ({"opt-discard": 3000, "max-discard": 6000}, None),
    ({"align": 3}, "Cannot meet constraints with align 3"),
    ({"align": 1 << 30, "max-transfer": 1 << 30}, None),
    ({"max-discard": 2147483647}, "Cannot meet constraints with max-discard 2147483647"),
    ({"align": 8192, "max-transfer": 4096, "opt-write-zero": 5}, "Cannot meet constraints with max-transfer 4096"),
]


def _open_all(vm: Machine) -> list[str | None]:
    vm.qemu_img("create", "-f", "qcow2", "d0.qcow2", str(8 * M))
    answers: list[str | None] = []
    for i, (options, _) in enumerate(CASES):
        file = {"driver": "blkdebug", "image": {"driver": "file", "filename": "d0.qcow2"}, **options}
        try:
            vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": f"n{i}", "file": file})
        except QMPError as err:
            answers.append(err.desc)
            continue
        answers.append(None)
        vm.qmp("blockdev-del", {"node-name": f"n{i}"})
    return answers


def test_constraints() -> None:
    assert _open_all(Machine()) == [error for _, error in CASES]


def _first_request(vm: Machine, max_transfer: int, wait) -> int:
    vm.qemu_img("create", "-f", "qcow2", "d0.qcow2", str(8 * M))
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "d0", "file": {
        "driver": "blkdebug", "max-transfer": max_transfer, "image": {"driver": "file", "filename": "d0.qcow2"}}})
    vm.write("d0", 0, 3 * M, pattern=0x41)
    vm.qemu_img("create", "-f", "qcow2", "t1.qcow2", str(8 * M))
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "t1",
                            "file": {"driver": "file", "filename": "t1.qcow2"}})
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "d0", "target": "t1", "sync": "full", "speed": 1,
                               "x-perf": {"max-workers": 1}})
    wait()
    offset = vm.qmp("query-block-jobs")[0]["offset"]
    vm.qmp("block-job-set-speed", {"device": "j", "speed": 0})
    vm.run()
    return offset


FIRST_REQUESTS = [(65536, 65536), (4096, 65536), (1000, 65536), (262144, 262144), (3 * M, M)]


@pytest.mark.parametrize(("max_transfer", "offset"), FIRST_REQUESTS)
def test_max_transfer_caps_block_copy_tasks(max_transfer: int, offset: int) -> None:
    vm = Machine()
    assert _first_request(vm, max_transfer, lambda: vm.run(until=vm.now + 0.05)) == offset


@pytest.mark.qemu
def test_constraints_on_both() -> None:
    real, sim = on_both(_open_all)
    assert real == sim == [error for _, error in CASES]


@pytest.mark.qemu
@pytest.mark.parametrize(("max_transfer", "offset"), FIRST_REQUESTS)
def test_max_transfer_on_both(max_transfer: int, offset: int) -> None:
    real, sim = on_both(lambda vm, wait: _first_request(vm, max_transfer, wait), wait_s=0.05)
    assert real == sim == offset


def _read_error_in_a_big_cluster(vm: Machine) -> dict:
    """A read of part of a 2 MiB qcow2 cluster that holds data elsewhere reads the host cluster: blkdebug's
    read_aio fires (the backup's first 1 MiB task fails, nothing is copied)."""
    vm.qemu_img("create", "-f", "qcow2", "-o", "cluster_size=2097152", "s.qcow2", str(4 * M))
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "s", "file": {
        "driver": "blkdebug", "image": {"driver": "file", "filename": "s.qcow2"},
        "inject-error": [{"event": "read_aio", "errno": 5, "once": True}]}})
    vm.write("s", 1630208, 512, pattern=0x41)
    vm.qmp("drive-backup", {"job-id": "j", "device": "s", "sync": "full", "target": "t.qcow2", "format": "qcow2",
                            "x-perf": {"max-workers": 1}})
    vm.run()
    return [e["data"] for e in vm.events if e["event"] == "BLOCK_JOB_COMPLETED"][0]


READ_ERROR_COMPLETED = {"device": "j", "len": 4194304, "offset": 0, "speed": 0, "type": "backup",
                        "error": "Input/output error"}


def test_a_read_inside_a_data_cluster_reads_the_file() -> None:
    assert _read_error_in_a_big_cluster(Machine()) == READ_ERROR_COMPLETED


@pytest.mark.qemu
def test_a_read_inside_a_data_cluster_on_both() -> None:
    real, sim = on_both(_read_error_in_a_big_cluster)
    assert real == sim == READ_ERROR_COMPLETED
