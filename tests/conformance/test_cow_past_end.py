"""A write into a disk's last, partial cluster that gets a host cluster now: its copy on write reaches past the
end of the disk, which qcow2's is_zero_cow never takes for zeroes, so QEMU 7.2 writes the new cluster whole,
zeroes included (strace: one pwritev of the cluster), where inside the disk it zeroes it with fallocate
(unwritten blocks). The difference shows where block status asks the file (an image QEMU takes for one with
preallocated metadata: here a 2 MiB-cluster image whose compressed cluster holds a host cluster of a few bytes),
so the stories end with such a write and ``qemu-img map``. (Found by ``bitlab conformance --focus compress``,
seed 1 scenario 0.)"""

from __future__ import annotations

import json

import pytest

from bitlab import Machine
from bitlab.block import hostfs

from ..both import on_both

K, M = 1 << 10, 1 << 20
SIZE = 4 * M + 35 * K  # two 2 MiB clusters and a partial one of 35 KiB


def _story(vm: Machine, offset: int, length: int, backup: bool) -> list:
    vm.qemu_img("create", "-f", "qcow2", "-o", "cluster_size=2M", "z.qcow2", str(SIZE))
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "z", "file": {"driver": "file", "filename": "z.qcow2"}})
    if backup:  # the last job cluster copied onto the target: one write of the partial cluster
        vm.qemu_img("create", "-f", "qcow2", "s.qcow2", str(SIZE))
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "s",
                                "file": {"driver": "file", "filename": "s.qcow2"}})
        vm.write("s", offset, length, pattern=0x5A)
        vm.qmp("blockdev-backup", {"job-id": "j", "device": "s", "target": "z", "sync": "top",
                                   "x-perf": {"max-workers": 1}})
        vm.run()
        vm.qmp("blockdev-del", {"node-name": "s"})
    else:
        vm.write("z", offset, length, pattern=0x98)
    vm.qemu_io("z", "write -c -P 0x11 0 2M")
    vm.qmp("blockdev-del", {"node-name": "z"})
    return json.loads(vm.qemu_img("map", "--output=json", "z.qcow2"))


CASES = [(4 * M + 4 * K, 4 * K, False), (4 * M, 35 * K, False), (4 * M, 4 * K, True)]


@pytest.mark.parametrize("offset, length, backup", CASES)
def test_the_cluster_is_written_whole(offset: int, length: int, backup: bool) -> None:
    vm = Machine()
    entries = _story(vm, offset, length, backup)
    s, e, v = vm.images["z.qcow2"].host_blocks()
    host = next(x["offset"] for x in entries if x["start"] == 4 * M)
    first = host // hostfs.BLOCK  # the last cluster's blocks: all written
    i = int((s <= first).nonzero()[0][-1])
    assert v[i] == hostfs.WRITTEN and e[i] >= (host + 2 * M) // hostfs.BLOCK
    assert [(x["start"], x["length"], x["data"], x.get("offset")) for x in entries][-1] == (
        4 * M, 35 * K, True, host)


@pytest.mark.qemu
@pytest.mark.parametrize("offset, length, backup", CASES)
def test_same_on_qemu(offset: int, length: int, backup: bool) -> None:
    real, sim = on_both(lambda vm: _story(vm, offset, length, backup), daemon="system")
    assert sim == real
