"""Block status of qcow2 zero clusters that keep their host clusters (QCOW2_SUBCLUSTER_ZERO_ALLOC): like data
clusters, a run of them is one answer only while their host clusters are contiguous in the file
(qcow2_get_host_offset, count_contiguous_subclusters). A full backup onto a target with bigger clusters copies a
job cluster as data when the source's answer from its start is shorter than the job cluster
(block_copy_block_status), so the target gets a data cluster there, not a zero cluster.

Found by CI's random conformance run (seed 1822044462, scenario 82).
"""

from __future__ import annotations

import json

import pytest

from bitlab import Machine

from ..both import on_both

K = 1 << 10


def _story(vm: Machine, scattered: bool) -> tuple[list[tuple], list[tuple], str]:
    """A 4 KiB-cluster source whose guest 64-128 KiB is zero clusters keeping their host clusters (``scattered``:
    the one at 96 KiB was allocated first, elsewhere in the file), backed up in full onto a 64 KiB-cluster
    target: the source's and the target's map entries (start, length, zero, data, host offset), the target's
    qemu-img check."""
    vm.qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4096", "s.qcow2", "1M")
    vm.qemu_img("create", "-f", "qcow2", "t.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "s", "file": {"driver": "file", "filename": "s.qcow2"}})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "t", "file": {"driver": "file", "filename": "t.qcow2"}})
    if scattered:
        vm.write("s", 96 * K, 4 * K, pattern=0x21)
    vm.write("s", 64 * K, 64 * K, pattern=0x22)
    vm.guest_io("s", f"write -z {64 * K} {64 * K}")  # no -u: the clusters keep their host clusters
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "s", "target": "t", "sync": "full",
                               "x-perf": {"max-workers": 1}})
    vm.run()
    vm.qmp("blockdev-del", {"node-name": "t"})
    vm.qmp("blockdev-del", {"node-name": "s"})

    def entries(name: str) -> list[tuple]:
        return [(e["start"], e["length"], e["zero"], e["data"], e.get("offset"))
                for e in json.loads(vm.qemu_img("map", "--output=json", name))]

    return entries("s.qcow2"), entries("t.qcow2"), vm.qemu_img("check", "t.qcow2")


def test_contiguous_zero_clusters_are_one_answer() -> None:
    """Host clusters in a row: one zero answer for the whole job cluster, so the job writes zeroes (without
    MAY_UNMAP, onto an empty target: nothing allocated there)."""
    source, target, check = _story(Machine(), scattered=False)
    assert source == [(0, 64 * K, True, False, None), (64 * K, 64 * K, True, False, 20480),
                      (128 * K, 896 * K, True, False, None)]
    assert target == [(0, 1024 * K, True, False, None)]
    assert check == "No errors were found on the image.\nImage end offset: 327680\n"
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4096", "s.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "s", "file": {"driver": "file", "filename": "s.qcow2"}})
    vm.write("s", 96 * K, 4 * K, pattern=0x21)
    vm.write("s", 64 * K, 64 * K, pattern=0x22)
    vm.guest_io("s", f"write -z {64 * K} {64 * K}")
    s, e, zero = vm.graph.nodes["s"].copy_status(0, 256 * K)
    assert list(zip(s.tolist(), e.tolist(), zero.tolist())) == [
        (0, 64 * K, True), (64 * K, 96 * K, True), (96 * K, 100 * K, True), (100 * K, 128 * K, True),
        (128 * K, 256 * K, True)]


def test_scattered_zero_clusters_end_the_answer() -> None:
    """The cluster at 96 KiB sits elsewhere in the file: the answer from 64 KiB ends there (32 KiB, less than
    the job cluster), so the job copies 64-128 KiB as data; the target's cluster holds data (zeroes)."""
    source, target, check = _story(Machine(), scattered=True)
    assert source == [(0, 64 * K, True, False, None), (64 * K, 32 * K, True, False, 24576),
                      (96 * K, 4 * K, True, False, 20480), (100 * K, 28 * K, True, False, 57344),
                      (128 * K, 896 * K, True, False, None)]
    assert target == [(0, 64 * K, True, False, None), (64 * K, 64 * K, False, True, 327680),
                      (128 * K, 896 * K, True, False, None)]
    assert check == ("No errors were found on the image.\n1/16 = 6.25% allocated, 0.00% fragmented, "
                     "0.00% compressed clusters\nImage end offset: 393216\n")


@pytest.mark.qemu
@pytest.mark.parametrize("scattered", [False, True])
def test_same_on_qemu(scattered: bool) -> None:
    real, sim = on_both(lambda vm: _story(vm, scattered))
    assert sim == real
