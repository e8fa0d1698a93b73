"""A restore's requests worked out at once (bitlab.qemu_img.convert_nbd.requests) equal img_convert's walk one
status answer and one chunk at a time (requests_walk); written at once (bitlab.block.batch_writes), they leave the
disk, its file and its bitmaps as the same requests written one by one. Seeded random restores of the differential
fuzz (tests/conformance/test_nbd_restore_fuzz.py), small, big (64 MiB, many L2 tables), odd (sizes of no whole
4 KiB block, any ``-S``) and into a qcow2 file (its persistent bitmap makes it look preallocated: qemu-img map then
shows which of its blocks were written)."""

from __future__ import annotations

import pytest

from bitlab import Machine
from bitlab.block import batch_writes
from bitlab.conformance.runner import play
from bitlab.qemu_img import convert_nbd
from tests.conformance.test_nbd_restore_fuzz import restore_scenario

SEEDS = ([(seed, False, False, False) for seed in range(3000, 3040)]
         + [(seed, True, False, False) for seed in range(3100, 3130)]
         + [(seed, False, True, False) for seed in range(3200, 3230)]
         + [(seed, big, False, True) for seed in range(3300, 3330) for big in (False, True)])


def _ids(case: tuple[int, bool, bool, bool]) -> str:
    return f"{case[0]}{'-big' if case[1] else ''}{'-odd' if case[2] else ''}{'-file' if case[3] else ''}"


@pytest.mark.parametrize("case", SEEDS, ids=_ids)
def test_the_plan_is_the_walk(case, monkeypatch):
    plans: list[tuple[list, list]] = []

    def spy(chain, size, sparse):
        got = convert_nbd.requests.__wrapped__(chain, size, sparse)
        plans.append(([("zero" if z else "data", int(o), int(n)) for o, n, z in zip(*got)],
                      convert_nbd.requests_walk(chain, size, sparse)))
        return got

    spy.__wrapped__ = convert_nbd.requests  # type: ignore[attr-defined]
    monkeypatch.setattr(convert_nbd, "requests", spy)
    out = play(restore_scenario(*case), "sim")
    assert out.error is None
    assert len(plans) == 1 and plans[0][1]
    assert plans[0][0] == plans[0][1]


@pytest.mark.parametrize("case", SEEDS, ids=_ids)
def test_written_at_once_as_one_by_one(case, monkeypatch):
    scenario = restore_scenario(*case)
    at_once = play(scenario, "sim")
    ways: list[str | None] = []

    def one_by_one(target, offsets, io, kind, ptr, unmap):
        ways.append(order_needed(target, offsets, io, kind, ptr, unmap))
        return "requests"

    order_needed = batch_writes.order_needed
    monkeypatch.setattr(batch_writes, "order_needed", one_by_one)
    by_one = play(scenario, "sim")
    assert ways, "no restore wrote through batch_writes"
    assert at_once.error is None and by_one.error is None
    assert at_once.replies == by_one.replies
    assert at_once.events == by_one.events


def test_a_chunk_off_the_alignment_goes_sector_by_sector(monkeypatch):
    """A backup chain whose 512-byte top clusters start a data answer 1536 bytes into a 4 KiB block, after the
    top's data in that block: that chunk is walked (a whole-block rule would call its first sectors data)."""
    plans: list[tuple[list, list]] = []
    requests = convert_nbd.requests

    def spy(chain, size, sparse):
        got = requests(chain, size, sparse)
        plans.append(([("zero" if z else "data", int(o), int(n)) for o, n, z in zip(*got)],
                      convert_nbd.requests_walk(chain, size, sparse)))
        return got

    monkeypatch.setattr(convert_nbd, "requests", spy)
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "base.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "b", "file": {"driver": "file", "filename": "base.qcow2"}})
    vm.write("b", 64 * 1024, 4096, 0)  # (written zeroes: allocated, reads as zeroes)
    vm.write("b", 72 * 1024, 4096, 0x33)
    vm.qmp("blockdev-del", {"node-name": "b"})
    vm.qemu_img("create", "-f", "qcow2", "-o", "cluster_size=512", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "t", "file": {"driver": "file", "filename": "top.qcow2"}})
    vm.write("t", 0, 4096, 0x55)
    vm.write("t", 64 * 1024, 1536, 0x44)
    vm.qmp("blockdev-del", {"node-name": "t"})
    vm.qemu_img("create", "-f", "qcow2", "d.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "d", "file": {"driver": "file", "filename": "d.qcow2"}})
    vm.qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}})
    vm.qmp("block-export-add", {"type": "nbd", "id": "d", "node-name": "d", "writable": True})
    vm.qemu_img("convert", "-n", "-O", "raw", "top.qcow2", "nbd+unix:///d?socket=nbd.sock")
    (plan, walk), = plans
    assert plan == walk
    at = walk.index(("data", 65536, 1536))
    assert walk[at:at + 3] == [("data", 65536, 1536), ("zero", 67072, 6656), ("data", 73728, 4096)]
