"""A qcow2 image that outgrows its refcount table (alloc_refcount_block past the table's end): the new refcount block
is written where it was allocated, then a new table (half as large again as needed) and the blocks it lacks go at the
start of the next stretch of clusters no block counts (qcow2_refcount_area; the file has a hole before them), the old
table is freed, and the allocation that needed the block is tried again (from free_cluster_index, which the old
table's clusters lowered: an allocation that fits there takes them). At 512-byte clusters a one-cluster table
counts 8 MiB of file, at 1 KiB 64 MiB, at 4 KiB 4 GiB (64 KiB: 16 TiB).

Measured with qemu-img and qemu-io 7.2 (the figures asserted without QEMU), then compared step by step on
qemu-storage-daemon: one large write, scattered small ones, a backup and a copy into 512-byte clusters, images
preallocated, a grown image.
"""

from __future__ import annotations

import pytest

from bitlab import Machine
from bitlab.block.qcow2_host import FREE
from tests.both import on_both
from tests.conformance.test_nbd_client import _img, _q, _write
from tests.conformance.test_qcow2_prealloc_data import _del, _offline, _open, _plain, _pre
from tests.conformance.test_raw_allocation import SETTLE, story, tree_block_tolerated

K, M = 1 << 10, 1 << 20

GROWTH = [
    _plain("g1", 16 * M, "cluster_size=512"), _open("g1"), _write("g1", 0, 12 * M, 1), _del("g1"), *_offline("g1"),
    _plain("g2", 16 * M, "cluster_size=512"), _open("g2"),
    *[_write("g2", (i * 37 * K) % (15 * M), 4 * K, 2 + i % 200) for i in range(700)],  # scattered, one by one
    _del("g2"), *_offline("g2"),
    _plain("g3", 100 * M, "cluster_size=1024"), _open("g3"), _write("g3", 0, 70 * M, 3), _del("g3"), *_offline("g3"),
    _plain("src", 16 * M), _open("src"), _write("src", 0, 14 * M, 4), _plain("t", 16 * M, "cluster_size=512"),
    _open("t"), _q("blockdev-backup", {"job-id": "b", "device": "src", "target": "t", "sync": "full",
                                       "x-perf": {"max-workers": 1}}),  # (one worker: QEMU's order fixed)
    SETTLE, _del("t"), *_offline("t"), _del("src"),
    _img("convert", "-O", "qcow2", "-o", "cluster_size=512", "src.qcow2", "cv.qcow2"), *_offline("cv"),
    _pre("metadata", "pm", "16M", "cluster_size=512"), *_offline("pm"),
    _pre("falloc", "pf", "20M", "cluster_size=512"), *_offline("pf"),
    _img("convert", "-O", "qcow2", "-o", "cluster_size=512,preallocation=metadata", "src.qcow2", "cm.qcow2"),
    _img("map", "--output=json", "cm.qcow2"), _img("check", "cm.qcow2"),  # (its size: the host's extent tree varies)
    _plain("r", 4 * M, "cluster_size=512"), _img("resize", "r.qcow2", "30M"), _open("r"), _write("r", 0, 20 * M, 5),
    _del("r"), *_offline("r"),
]


def test_the_table_moves_to_the_next_uncounted_stretch():
    vm = Machine()
    out = story(GROWTH[:9])(vm)
    layout = vm.images["g1.qcow2"].layout
    assert layout.reftable == (16641, 2)  # 99 entries and half again, in whole clusters: 128
    assert layout.refblock_hosts[63:67] == [16129, 16389, 16640, 16902]  # (block 64: past the old table's 64)
    assert len(layout.refblock_hosts) == 99
    assert out[5]["stdout"].endswith("Image end offset: 12864000\n")
    assert layout.free.look(1) == FREE  # the old table's cluster: freed (this write went on where it was)


def test_a_large_image_at_4k_clusters():
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4096", "big.qcow2", "6G")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "b",
                            "file": {"driver": "file", "filename": "big.qcow2"}})
    for gib in range(5):  # (the table counts 4 GiB of file: it grows once)
        vm.write("b", gib << 30, 1 << 30, pattern=7)
    layout = vm.images["big.qcow2"].layout
    assert layout.reftable[1] == 2 and layout.reftable[0] * 4096 >= 4 << 30
    vm.qmp("blockdev-del", {"node-name": "b"})
    assert "No errors were found" in vm.qemu_img("check", "big.qcow2")


@pytest.mark.qemu
def test_matches_qemu():
    want, got = on_both(story(GROWTH))
    assert got == tree_block_tolerated(want, got)
