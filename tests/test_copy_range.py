"""Backups with x-perf ``use-copy-range``, as QEMU 7.2 copies them (block/block-copy.c).

- copy_range writes the target without detect-zeroes (bdrv_co_copy_range_internal): a drive-backup
  target (``detect-zeroes=unmap``) keeps a cluster the guest filled with zero bytes as data, where a
  read and write would make it a zero cluster. Where copy_range cannot reach a file (blkdebug on the
  way), the first task falls back to read and write for good, and zeroes are detected again.
- Tasks start at 1 MiB (COPY_RANGE_SMALL); the first copy_range that succeeds lets the tasks made after
  it take 16 MiB (COPY_RANGE_FULL). block-copy's loop makes the next task as soon as the last one
  started, before it waits for a worker: with one worker the second task is still 1 MiB, the third
  16 MiB. A throttled job shows it: 1 + 1 + 16 MiB pass the rate limiter before it sleeps.

The expected texts and numbers are real QEMU 7.2's (qemu-storage-daemon).
"""

from __future__ import annotations

import pytest

from bitlab import Machine
from tests.both import on_both

K, M = 1 << 10, 1 << 20

# qemu-img map of the target: 0-192 KiB one task mixing zero bytes and data (data either way), a
# zero-filled data cluster at 2 MiB: data with copy_range, a zero cluster with read and write
MAP_COPY_RANGE = (
    '[{ "start": 0, "length": 196608, "depth": 0, "present": true, "zero": false, "data": true, "offset": 327680},\n'
    '{ "start": 196608, "length": 1900544, "depth": 0, "present": true, "zero": true, "data": false},\n'
    '{ "start": 2097152, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, '
    '"offset": 524288},\n'
    '{ "start": 2162688, "length": 6225920, "depth": 0, "present": true, "zero": true, "data": false}]\n')
MAP_READ_WRITE = (
    '[{ "start": 0, "length": 196608, "depth": 0, "present": true, "zero": false, "data": true, "offset": 327680},\n'
    '{ "start": 196608, "length": 8192000, "depth": 0, "present": true, "zero": true, "data": false}]\n')


def _drive_backup(vm: Machine, use_copy_range: bool | None, blkdebug: bool = False) -> str:
    file: dict = {"driver": "file", "filename": "d0.qcow2"}
    if blkdebug:
        file = {"driver": "blkdebug", "image": file}
    vm.qemu_img("create", "-f", "qcow2", "d0.qcow2", str(8 * M))
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "d0", "file": file})
    vm.write("d0", 0, 128 * K, pattern=0)
    vm.write("d0", 128 * K, 64 * K, pattern=0x41)
    vm.write("d0", 2 * M, 64 * K, pattern=0)
    vm.qemu_img("create", "-f", "qcow2", "t1.qcow2", str(8 * M))
    args: dict = {"job-id": "j", "device": "d0", "target": "t1.qcow2", "format": "qcow2", "mode": "existing",
                  "sync": "full"}
    if use_copy_range is not None:
        args["x-perf"] = {"use-copy-range": use_copy_range}
    vm.qmp("drive-backup", args)
    vm.run()
    return vm.qemu_img("map", "--output=json", "t1.qcow2")


@pytest.mark.parametrize(("use_copy_range", "blkdebug", "expected"), [
    (True, False, MAP_COPY_RANGE), (False, False, MAP_READ_WRITE), (None, False, MAP_READ_WRITE),
    (True, True, MAP_READ_WRITE)])
def test_copy_range_skips_detect_zeroes(use_copy_range: bool | None, blkdebug: bool, expected: str) -> None:
    assert _drive_backup(Machine(), use_copy_range, blkdebug) == expected


def _throttled(vm: Machine, use_copy_range: bool, wait) -> int:
    vm.qemu_img("create", "-f", "qcow2", "d0.qcow2", str(64 * M))
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "d0",
                            "file": {"driver": "file", "filename": "d0.qcow2"}})
    vm.write("d0", 0, 40 * M, pattern=0x41)
    vm.qemu_img("create", "-f", "qcow2", "t1.qcow2", str(64 * M))
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "t1",
                            "file": {"driver": "file", "filename": "t1.qcow2"}})
    # 25 MiB/s: a slice's quota is 2.5 MiB, so requests pass until 2.5 MiB were dispatched
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "d0", "target": "t1", "sync": "full", "speed": 25 * M,
                               "x-perf": {"use-copy-range": use_copy_range, "max-workers": 1}})
    wait()
    offset = vm.qmp("query-block-jobs")[0]["offset"]
    vm.qmp("block-job-set-speed", {"device": "j", "speed": 0})
    vm.run()
    return offset


@pytest.mark.parametrize(("use_copy_range", "offset"), [(True, 18 * M), (False, 3 * M)])
def test_copy_range_chunks(use_copy_range: bool, offset: int) -> None:
    vm = Machine()
    assert _throttled(vm, use_copy_range, lambda: vm.run(until=vm.now + 0.05)) == offset


@pytest.mark.qemu
@pytest.mark.parametrize(("use_copy_range", "blkdebug"), [(True, False), (False, False), (True, True)])
def test_copy_range_targets_on_both(use_copy_range: bool, blkdebug: bool) -> None:
    real, sim = on_both(lambda vm: _drive_backup(vm, use_copy_range, blkdebug))
    assert real == sim == (MAP_COPY_RANGE if use_copy_range and not blkdebug else MAP_READ_WRITE)


@pytest.mark.qemu
@pytest.mark.parametrize(("use_copy_range", "offset"), [(True, 18 * M), (False, 3 * M)])
def test_copy_range_chunks_on_both(use_copy_range: bool, offset: int) -> None:
    real, sim = on_both(lambda vm, wait: _throttled(vm, use_copy_range, wait), wait_s=0.05)
    assert real == sim == offset
