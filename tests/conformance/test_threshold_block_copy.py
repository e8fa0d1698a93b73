"""Write thresholds on a backup's target and on the target's file node, with one worker (``x-perf``
``max-workers: 1``: QEMU writes the tasks in order). A data task is one write request whatever runs its buffer
holds (two patterns and zeroes in one 64 KiB job cluster here), and a raw target passes each request to its file
node as it is; a threshold fires on the first request past it, between the writes of the tasks before and the
request's own (so a file node's event from an earlier task's host writes comes first).

With several workers QEMU's order depends on timing (a zero task writes as it starts, a data task after its
read; which of them reach the file first varies from run to run), so only one worker is compared here.
"""

from __future__ import annotations

import pytest

from bitlab import Machine

from ..both import on_both

K = 1 << 10
# (threshold on the target, on its file node)
THRESHOLDS = {"first task": (2 * K, 1 * K), "file first": (300 * K, 100 * K), "late data": (520 * K, 530 * K)}


def _story(vm: Machine, fmt: str, target: int, file: int) -> list[tuple[str, int]]:
    """A 1 MiB qcow2 source with data at 0 (4 KiB of 1, 4 KiB of 2), 200 KiB and 500-600 KiB, backed up in full
    onto a new ``fmt`` target armed at ``target`` over a file node armed at ``file``: the threshold events."""
    vm.qemu_img("create", "-f", "qcow2", "s.qcow2", "1M")
    vm.qemu_img("create", "-f", fmt, "t.img", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "s", "file": {"driver": "file", "filename": "s.qcow2"}})
    vm.qmp("blockdev-add", {"driver": fmt, "node-name": "t",
                            "file": {"driver": "file", "filename": "t.img", "node-name": "tf"}})
    for offset, length, pattern in ((0, 4 * K, 1), (4 * K, 4 * K, 2), (200 * K, 4 * K, 3), (500 * K, 100 * K, 4)):
        vm.write("s", offset, length, pattern=pattern)
    vm.qmp("block-set-write-threshold", {"node-name": "t", "write-threshold": target})
    vm.qmp("block-set-write-threshold", {"node-name": "tf", "write-threshold": file})
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "s", "target": "t", "sync": "full",
                               "x-perf": {"max-workers": 1}})
    vm.run()
    return [(e["data"]["node-name"], e["data"]["write-threshold"] + e["data"]["amount-exceeded"])
            for e in vm.events if e["event"] == "BLOCK_WRITE_THRESHOLD"]


# the events as (node, end of the request that crossed), from qemu-storage-daemon 7.2
EXPECTED = {
    ("raw", "first task"): [("t", 64 * K), ("tf", 64 * K)],  # the first data task, one request of 64 KiB
    ("raw", "file first"): [("tf", 192 * K), ("t", 448 * K)],  # the zero task 192-448 KiB crosses 300 KiB
    ("raw", "late data"): [("t", 640 * K), ("tf", 640 * K)],
    ("qcow2", "first task"): [("t", 64 * K), ("tf", 192 * K)],  # qcow2 writes its metadata and data on the file
    ("qcow2", "file first"): [("tf", 192 * K), ("t", 448 * K)],
    ("qcow2", "late data"): [("t", 640 * K), ("tf", 640 * K)],
}


@pytest.mark.parametrize("fmt,case", list(EXPECTED))
def test_thresholds_see_whole_requests_in_task_order(fmt: str, case: str) -> None:
    assert _story(Machine(), fmt, *THRESHOLDS[case]) == EXPECTED[fmt, case]


@pytest.mark.qemu
@pytest.mark.parametrize("fmt,case", list(EXPECTED))
def test_same_on_qemu(fmt: str, case: str) -> None:
    real, sim = on_both(lambda vm: _story(vm, fmt, *THRESHOLDS[case]))
    assert sim == real
