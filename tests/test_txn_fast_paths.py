"""Transactions and backup jobs: the shortcuts their prepare and run take, against what they stand in for.

Each test fails if a shortcut gave anything but what the general code gives (or if work a shortcut
removed came back).
"""

from __future__ import annotations

import copy

from bitlab import Machine
from bitlab.jobs import block_copy
from bitlab.machine import _frozen
from bitlab.qmp_order import wire_order

M = 1 << 20


def test_a_blkdebug_source_classifies_the_first_task_once(monkeypatch) -> None:
    """Over blkdebug only zero tasks may be batched: the bulk path makes the per-task path's first task to
    see whether it is one, and the per-task path takes that task as it is (block status asked once)."""
    starts: list[int] = []
    real = block_copy.BlockCopy.classify

    def counted(self, start: int, end: int):
        starts.append(start)
        return real(self, start, end)

    monkeypatch.setattr(block_copy.BlockCopy, "classify", counted)
    vm = Machine()
    vm.add_drive("drive0", "4M", blkdebug={"inject-error": []})
    vm.write("drive0", 0, 65536, 0x11)  # the first task reads data
    vm.add_drive("target0", "4M")
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "drive0", "target": "target0", "sync": "full"})
    vm.run()
    assert starts.count(0) == 1
    assert vm.contents("target0") == vm.contents("drive0") == [(0, 65536, 0x11), (65536, 4 * M, 0)]


def test_job_status_changes_are_in_wire_order() -> None:
    """JOB_STATUS_CHANGE's data is built in wire order: exactly what wire_order makes of it."""
    vm = Machine()
    vm.add_drive("drive0", "4M")
    vm.add_drive("target0", "4M")
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "drive0", "target": "target0", "sync": "full"})
    vm.run()
    changes = [ev["data"] for ev in vm.events if ev["event"] == "JOB_STATUS_CHANGE"]
    assert [c["status"] for c in changes] == ["created", "running", "paused", "running", "waiting",
                                                "pending", "concluded", "null"]
    for data in changes:
        expected = wire_order({"id": data["id"], "status": data["status"]})
        assert list(data.items()) == list(expected.items())


def test_frozen_image_is_a_copy_with_its_own_runs() -> None:
    """A backup's captured image: copy.copy of the file, its runs copied, no host layout."""
    vm = Machine()
    vm.add_drive("drive0", "4M")
    vm.write("drive0", 0, 65536, 0x11)
    image = vm.images["drive0.qcow2"]
    image.layout  # noqa: B018 (built: the copy must not keep it)
    frozen, plain = _frozen(image), copy.copy(image)
    assert type(frozen) is type(image)
    assert frozen.__dict__.keys() == plain.__dict__.keys()
    assert all(frozen.__dict__[k] is plain.__dict__[k] for k in plain.__dict__ if k not in ("data", "_layout"))
    assert frozen._layout is None and frozen.data is not image.data
    assert frozen.data.runs()[0].tolist() == image.data.runs()[0].tolist()
    vm.write("drive0", 0, 65536, 0x22)  # the live file changes, the copy does not
    assert frozen.data.runs()[1].tolist() != image.data.runs()[1].tolist()
