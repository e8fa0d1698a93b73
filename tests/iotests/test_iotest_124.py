"""QEMU 7.2's iotest 124 (incremental backups), the cases tests/test_iotests_misc.py does not play.

Ported: test_incremental_simple and its granularities (test_small_granularity 32 KiB,
test_large_granularity 128 KiB): an anchor full backup, bitmap0, a "hollow" incremental, then twice three
writes (an overwrite, a new stretch, a partial overlap) and an incremental onto a qcow2 over the previous
one; test_larger_cluster_target (a 128 KiB-cluster anchor and incremental, rebased afterwards);
test_incremental_transaction (two bitmaps cleared with a full backup in one transaction, then one
incremental through each). After each incremental a full reference backup; at the end every incremental
(with its chain) is compared with its reference (``qemu-img compare``), as check_backups does. Each job's
BLOCK_JOB_COMPLETED (len = offset, as 124 checks) and the bitmap's count before each incremental are
compared with the system emulator's. (test_sync_dirty_bitmap_*, test_transaction_failure,
test_incremental_failure/_pause and test_growing_before_backup: tests/test_iotests_misc.py.)
"""

from __future__ import annotations

import pytest

from bitlab import Machine
from tests.both import on_both
from tests.iotests.harness import Log

WRITES = ((("0xab", 0, 512), ("0xfe", "16M", "256k"), ("0x64", "32736k", "64k")),
          (("0x9a", 0, 512), ("0x55", "8M", "352k"), ("0x78", "15872k", "1M")))


class Story:
    """124's TestIncrementalBackupBase, for drive0 only."""

    def __init__(self, vm) -> None:
        self.vm, self.t = vm, Log(vm)
        self.incrementals: list[tuple[str, str]] = []  # (incremental, its reference)
        vm.qemu_img("create", "-f", "qcow2", "drive0.qcow2", "64M")
        vm.add_drive("drive0", file="drive0.qcow2")
        self.writes((("0x41", 0, 512), ("0xd5", "1M", "32k"), ("0xdc", "32M", "124k")))

    def writes(self, patterns) -> None:
        for pattern, off, length in patterns:
            self.vm.qemu_io("drive0", f"write -P{pattern} {off} {length}")
        self.vm.qemu_io("drive0", "flush")

    def backup(self, **args) -> None:
        """do_qmp_backup: the job, and what its BLOCK_JOB_COMPLETED says."""
        self.t.qmp_log("drive-backup", device="drive0", format="qcow2", **args)
        data = self.t.event_wait("BLOCK_JOB_COMPLETED", {"device": "drive0"})["data"]
        self.t.log((data["len"], data["offset"], data.get("error")))

    def count(self, name: str) -> int:
        info = next(b for b in self.vm.qmp("query-block") if b["device"] == "drive0")
        return next(b["count"] for b in info["inserted"]["dirty-bitmaps"] if b["name"] == name)

    def incremental(self, bitmap: str = "bitmap0", cluster: str | None = None, backing: bool = True) -> None:
        n = len(self.incrementals)
        target, ref = f"{bitmap}-incr-{n}.qcow2", f"{bitmap}-ref-{n}.qcow2"
        parent = self.incrementals[-1][0] if self.incrementals and backing else "drive0-full.qcow2"
        opts = ["-o", f"cluster_size={cluster}"] if cluster else []
        self.vm.qemu_img("create", "-f", "qcow2", *opts, *(["-b", parent, "-F", "qcow2"] if backing else []),
                         target, "64M")
        self.t.log(self.count(bitmap))
        self.backup(sync="incremental", bitmap=bitmap, target=target, mode="existing")
        self.backup(sync="full", target=ref)
        self.incrementals.append((target, ref))

    def check(self) -> None:
        for target, ref in self.incrementals:
            self.t.log(self.vm.qemu_img("compare", "-U", target, ref))


def simple(vm, granularity: int | None = None) -> list:
    s = Story(vm)
    s.backup(sync="full", target="drive0-full.qcow2")
    s.t.qmp_log("block-dirty-bitmap-add", node="drive0", name="bitmap0",
                **({} if granularity is None else {"granularity": granularity}))
    s.incremental()
    for patterns in WRITES:
        s.writes(patterns)
        s.incremental()
    s.check()
    return s.t.lines


def larger_cluster_target(vm) -> list:
    s = Story(vm)
    vm.qemu_img("create", "-f", "qcow2", "-o", "cluster_size=128k", "drive0-full.qcow2", "64M")
    s.backup(sync="full", target="drive0-full.qcow2", mode="existing")
    s.t.qmp_log("block-dirty-bitmap-add", node="drive0", name="bitmap0")
    s.writes(WRITES[0])
    s.incremental(cluster="128k", backing=False)
    vm.qemu_img("rebase", "-f", "qcow2", "-u", "-b", "drive0-full.qcow2", "-F", "qcow2", s.incrementals[0][0])
    s.check()
    return s.t.lines


def incremental_transaction(vm) -> list:
    s = Story(vm)
    s.t.qmp_log("block-dirty-bitmap-add", node="drive0", name="bitmap0")
    s.writes(WRITES[0])
    s.t.qmp_log("block-dirty-bitmap-add", node="drive0", name="bitmap1")
    s.t.qmp_log("transaction", actions=[
        {"type": "block-dirty-bitmap-clear", "data": {"node": "drive0", "name": "bitmap0"}},
        {"type": "block-dirty-bitmap-clear", "data": {"node": "drive0", "name": "bitmap1"}},
        {"type": "drive-backup", "data": {"device": "drive0", "target": "drive0-full.qcow2", "sync": "full",
                                          "format": "qcow2"}}])
    data = s.t.event_wait("BLOCK_JOB_COMPLETED", {"device": "drive0"})["data"]
    s.t.log((data["len"], data["offset"]))
    s.writes(WRITES[1])
    s.incremental("bitmap0")
    s.incrementals.clear()  # (bitmap1's chain starts again at the full backup)
    s.incremental("bitmap1")
    s.incrementals = [("bitmap0-incr-0.qcow2", "bitmap0-ref-0.qcow2"), *s.incrementals]
    s.check()
    return s.t.lines


def full(length: int) -> tuple:
    return (length, length, None)


M = 1 << 20
OK = {"return": {}}
SAME = "Images are identical.\n"


@pytest.mark.parametrize("granularity,counts,lens", [
    (None, (0, 458752, 1507328), (0, 458752, 1507328)),
    (32768, (0, 360448, 1441792), (0, 458752, 1507328)),  # the job copies whole 64 KiB clusters
    (131072, (0, 655360, 1572864), (0, 655360, 1572864))])
def test_124_incremental_simple(granularity, counts, lens):
    want = [OK, full(64 * M), OK]
    for count, length in zip(counts, lens):
        want += [count, OK, full(length), OK, full(64 * M)]
    assert simple(Machine(), granularity) == [*want, SAME, SAME, SAME]


def test_124_larger_cluster_target():
    assert larger_cluster_target(Machine()) == [OK, full(64 * M), OK, 458752, OK, full(655360), OK, full(64 * M),
                                                SAME]


def test_124_incremental_transaction():
    assert incremental_transaction(Machine()) == [
        OK, OK, OK, (64 * M, 64 * M), *[1507328, OK, full(1507328), OK, full(64 * M)] * 2, SAME, SAME]


@pytest.mark.qemu
@pytest.mark.parametrize("story", [simple, lambda vm: simple(vm, 32768), lambda vm: simple(vm, 131072),
                                   larger_cluster_target, incremental_transaction],
                         ids=["simple", "small_granularity", "large_granularity", "larger_cluster_target",
                              "incremental_transaction"])
def test_124_on_both(story):
    want, got = on_both(story, "system")
    assert got == want
