"""The host file under a qcow2 image (bitlab/block/hostfs.py), in the simulator: its 4 KiB blocks, what it
allocates, and QEMU's check for preallocated metadata. Expected figures were measured on QEMU 7.2 over ext4
(``stat``'s ``st_blocks``, SEEK_DATA/SEEK_HOLE, ``qemu-img map``); tests/conformance/test_prealloc_map.py runs
the same cases on both backends."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest

from bitlab import Machine
from bitlab.block import hostfs
from bitlab.block.extents import ExtentMap
from bitlab.block.hostfs import HOLE, UNWRITTEN, WRITTEN

K, M = 1 << 10, 1 << 20


def _image(vm: Machine, cs: int, size: str = "8M", bitmap: bool = False,
           writes: tuple[tuple[int, int], ...] = ()) -> Machine:
    vm.qemu_img("create", "-f", "qcow2", "-o", f"cluster_size={cs}", "a.qcow2", size)
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "a", "file": {"driver": "file", "filename": "a.qcow2"}})
    if bitmap:
        vm.qmp("block-dirty-bitmap-add", {"node": "a", "name": "b0", "persistent": True})
    for offset, length in writes:
        vm.write("a", offset, length, pattern=0x11)
    vm.qmp("blockdev-del", {"node-name": "a"})
    return vm


def _blocks(vm: Machine) -> list[tuple[int, int, int]]:
    s, e, v = vm.images["a.qcow2"].host_blocks()
    return list(zip(s.tolist(), e.tolist(), v.tolist()))


def _size(vm: Machine) -> int:
    return json.loads(vm.qemu_img("info", "--output=json", "a.qcow2"))["actual-size"]


@pytest.mark.parametrize("cs,allocated", [(512, 20480), (4096, 16384), (65536, 200704), (2 * M, 6295552)])
def test_a_new_image_allocates_what_create_wrote(cs, allocated):
    """qcow2_co_create writes the header, refcount table and block whole, and the L1 table's entries."""
    vm = _image(Machine(), cs, "64M")
    assert _size(vm) == allocated
    assert _blocks(vm) == [(0, -(-allocated // 4096), WRITTEN)]


def test_a_partial_write_zeroes_its_cluster_first():
    """4 KiB into a new 64 KiB cluster: the cluster is zeroed (unwritten blocks), then the data written; five
    extents take a tree block (st_blocks 82 blocks: 49 + 16 + 16 + 1, measured)."""
    vm = _image(Machine(), 65536, "64M", writes=((8 * K, 4 * K),))
    assert _blocks(vm) == [(0, 49, WRITTEN), (49, 64, HOLE), (64, 80, WRITTEN), (80, 82, UNWRITTEN),
                           (82, 83, WRITTEN), (83, 96, UNWRITTEN)]
    assert _size(vm) == 335872


def test_stored_bitmaps_make_the_image_look_preallocated():
    """A bitmap's table and the directory fill a few bytes of a cluster each: 9 clusters with a reference in a
    file allocating 6 (100 blocks), at least max(6 * 10 / 9, 6 + 2) = 8: qemu-img map asks the file, whose
    holes and unwritten blocks in data clusters are zeroes (measured)."""
    vm = _image(Machine(), 65536, bitmap=True, writes=((8 * K, 4 * K),))
    assert _size(vm) == 409600
    assert vm.images["a.qcow2"].metadata_preallocated()
    assert json.loads(vm.qemu_img("map", "--output=json", "a.qcow2")) == [
        {"start": 0, "length": 8192, "depth": 0, "present": True, "zero": True, "data": True, "offset": 327680},
        {"start": 8192, "length": 4096, "depth": 0, "present": True, "zero": False, "data": True, "offset": 335872},
        {"start": 12288, "length": 53248, "depth": 0, "present": True, "zero": True, "data": True, "offset": 339968},
        {"start": 65536, "length": 8323072, "depth": 0, "present": False, "zero": True, "data": False}]


def test_without_bitmaps_map_does_not_ask_the_file():
    vm = _image(Machine(), 65536, writes=((8 * K, 4 * K),))
    assert not vm.images["a.qcow2"].metadata_preallocated()
    assert json.loads(vm.qemu_img("map", "--output=json", "a.qcow2"))[0] == {
        "start": 0, "length": 65536, "depth": 0, "present": True, "zero": False, "data": True, "offset": 327680}


@pytest.mark.parametrize("real,count,detected", [(18, 19, False), (18, 20, True), (27, 29, False), (27, 30, True),
                                                 (0, 1, False), (0, 2, True)])
def test_the_threshold_is_qemus(real, count, detected):
    """MAX(real_clusters * 10 / 9, real_clusters + 2) clusters with a reference, real_clusters the file's
    allocation in whole clusters (rounded down)."""
    cs = 65536
    layout = SimpleNamespace(cs=cs, used_before=lambda end: count)
    assert hostfs.metadata_preallocated(layout, 100 * cs, real * cs + cs - 4096) is detected


def test_a_copy_on_write_of_the_backing_files_data_writes_the_cluster_whole():
    """A partial write into a new cluster: zeroed first where the backing chain has no data there (unallocated,
    a zero cluster, or the cluster itself a zero cluster), copied (written whole) where it has (measured)."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "base.qcow2", "8M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "b", "file": {"driver": "file", "filename": "base.qcow2"}})
    vm.write("b", 0, 128 * K, pattern=0x11)
    vm.guest_io("b", "write -z 192k 64k")
    vm.qmp("blockdev-del", {"node-name": "b"})
    vm.qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "a.qcow2")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "a", "file": {"driver": "file", "filename": "a.qcow2"}})
    vm.write("a", 8 * K, 4 * K, pattern=0x22)  # over the backing file's data: copied
    vm.guest_io("a", "write -z 64k 64k")
    vm.write("a", 72 * K, 4 * K, pattern=0x22)  # into a zero cluster over the backing file's data: zeroed
    vm.write("a", 200 * K, 4 * K, pattern=0x22)  # over a zero cluster of the backing file: zeroed
    vm.write("a", 264 * K, 4 * K, pattern=0x22)  # over nothing: zeroed
    vm.qmp("blockdev-del", {"node-name": "a"})
    assert _blocks(vm) == [(0, 49, WRITTEN), (49, 64, HOLE), (64, 96, WRITTEN), (96, 98, UNWRITTEN),
                           (98, 99, WRITTEN), (99, 114, UNWRITTEN), (114, 115, WRITTEN), (115, 130, UNWRITTEN),
                           (130, 131, WRITTEN), (131, 144, UNWRITTEN)]


def test_discards_punch_holes_where_the_file_unmaps():
    """Clusters freed with their discard passed to a file node with discard=unmap lose their blocks; a write
    into a zero cluster left by the discard zeroes its new cluster first (measured: 466 blocks)."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "a.qcow2", "8M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "a", "discard": "unmap",
                            "file": {"driver": "file", "filename": "a.qcow2"}})
    vm.write("a", 0, 3 * M, pattern=0x11)
    vm.guest_io("a", "discard 0 1M")
    vm.guest_io("a", "write -z -u 1M 512k")
    vm.guest_io("a", "write -z 2M 256k")
    vm.write("a", 8 * K, 4 * K, pattern=0x22)
    vm.qmp("blockdev-del", {"node-name": "a"})
    assert _blocks(vm) == [(0, 49, WRITTEN), (49, 64, HOLE), (64, 80, WRITTEN), (80, 82, UNWRITTEN),
                           (82, 83, WRITTEN), (83, 96, UNWRITTEN), (96, 464, HOLE), (464, 848, WRITTEN)]
    assert _size(vm) == 1908736


def test_bitmaps_stored_anew_discard_their_old_data_clusters():
    """A clean close stores every bitmap in new clusters and discards the old data clusters (QCOW2_DISCARD_ALWAYS):
    a file opened with its qcow2 node unmaps by default (measured: st_blocks 1096, the first data cluster a hole)."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "a.qcow2", "8M")
    opened = {"driver": "qcow2", "node-name": "a", "file": {"driver": "file", "filename": "a.qcow2"}}
    vm.qmp("blockdev-add", opened)
    vm.qmp("block-dirty-bitmap-add", {"node": "a", "name": "b0", "persistent": True})
    vm.qmp("block-dirty-bitmap-add", {"node": "a", "name": "b1", "persistent": True, "granularity": 512})
    vm.write("a", 8 * K, 4 * K, pattern=0x11)
    vm.qmp("blockdev-del", {"node-name": "a"})
    vm.qmp("blockdev-add", opened)
    vm.write("a", 2 * M + 4 * K, 8 * K, pattern=0x11)
    vm.qmp("block-dirty-bitmap-add", {"node": "a", "name": "b2", "persistent": True})
    vm.qmp("blockdev-del", {"node-name": "a"})
    assert (96, 112, HOLE) in _blocks(vm)  # b0's first data cluster
    assert _size(vm) == 561152


@pytest.mark.parametrize("extents,blocks", [(1, 0), (4, 0), (5, 1), (340, 1), (341, 2), (340 * 4, 4),
                                            (340 * 4 + 1, 6)])
def test_the_extent_tree(extents, blocks):
    assert hostfs.tree_blocks(extents) == blocks


def test_punch_frees_whole_blocks_only():
    fs = hostfs.new_fs()
    hostfs.mark(fs, np.array([0]), np.array([64 * K]))
    hostfs.punch(fs, np.array([512, 8 * K]), np.array([1024, 9 * K]))  # a partial block is zeroed, and stays
    hostfs.cut(fs, 40 * K)
    s, e, v = fs.extents(0, 16)
    assert list(zip(s.tolist(), e.tolist(), v.tolist())) == [(0, 2, WRITTEN), (2, 4, HOLE), (4, 10, WRITTEN),
                                                             (10, 16, HOLE)]


@pytest.mark.parametrize("cs", [4096, 65536, 2 * M])
def test_the_plain_path_is_the_general_one(cs):
    """ImageFile.allocated_size's short cut (hostfs.plain_allocation) against the block map it stands in for,
    over random writes, zero writes and discards (the short cut answers only while nothing was freed)."""
    rng = random.Random(cs)
    answered = 0
    for _ in range(30):
        vm = Machine()
        vm.qemu_img("create", "-f", "qcow2", "-o", f"cluster_size={cs}", "a.qcow2", "16M")
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "a", "discard": "unmap",
                                "file": {"driver": "file", "filename": "a.qcow2"}})
        image = vm.images["a.qcow2"]
        for _ in range(rng.randint(1, 8)):
            offset, length = rng.randrange(0, 16 * M // 512) * 512, rng.choice([512, 4 * K, 60 * K, 200 * K, M])
            length = min(length, 16 * M - offset)
            kind = rng.random()
            if kind < 0.7:
                vm.write("a", offset, length, pattern=rng.randrange(1, 256))
            elif kind < 0.85:
                vm.guest_io("a", f"write -z {offset} {length}")
            else:
                vm.guest_io("a", f"discard {offset} {length}")
            plain = hostfs.plain_allocation(image.layout, image.data, image.file_length())
            if plain is not None:
                answered += 1
                assert plain == hostfs.allocated_size(image.host_blocks())
    assert answered > 20


def test_peek_is_value_at_without_a_merge():
    rng = random.Random(7)
    emap = ExtentMap(1 << 20, fill=-1)
    for _ in range(200):
        offset = rng.randrange(0, 1 << 20)
        if rng.random() < 0.5:
            emap.write(offset, rng.randrange(1, 1 << 16), rng.randrange(0, 9))
        else:
            offs = np.array(sorted(rng.sample(range(1 << 20), 3)))
            emap.write_batch(offs, np.full(3, 4096), rng.randrange(0, 9))
        probe = rng.randrange(0, 1 << 20)
        pending = emap.pending
        peeked = emap.peek(probe)
        assert emap.pending == pending
        assert peeked == emap.value_at(probe)
