"""qemu-img ``-U`` reading a qcow2 image a running QEMU has open read-write: the L2 tables as the file holds them.

QEMU writes a changed L2 table back from its cache only on a flush, a new table's ``l2_allocate`` (every dirty
table first) or the node's closing; data clusters reach the file at once. So a backup target's new clusters, a
guest's writes not flushed yet and its zero writes since the last flush are not in the file's tables:
``map -U``, ``check -U``, ``compare -U``, ``convert -U`` and ``measure -U`` see the tables as last written
(bitlab.block.qcow2_disk). Each story is compared with real QEMU 7.2."""

from __future__ import annotations

import pytest

from bitlab import Machine, QemuImgError
from bitlab.conformance.runner import compare, play
from tests.conformance.test_nbd_client import _img, _q

K, M = 1 << 10, 1 << 20


def _io(verb: str, node: str, offset: int, length: int, pattern: int = 0, **flags: bool) -> dict:
    """A guest request without the flush after it (the cache keeps the tables it changed)."""
    return {verb: {"node": node, "offset": offset, "length": length, "pattern": pattern, "flush": False, **flags}}


def _look(name: str, *more: list[str]) -> list[dict]:
    return [_img("map", "--output=json", "-U", name), _img("check", "-U", name), *[_img(*m) for m in more]]


def _qcow2(name: str, size: str, *opts: str) -> list[dict]:
    return [_img("create", "-f", "qcow2", *opts, f"{name}.qcow2", size),
            _q("blockdev-add", {"driver": "qcow2", "node-name": name,
                                "file": {"driver": "file", "filename": f"{name}.qcow2"}})]


GUEST = [  # 4 KiB clusters: an L2 table covers 2 MiB
    *_qcow2("g", "8M", "-o", "cluster_size=4096"),
    _io("write", "g", 0, 64 * K, 0x11), *_look("g.qcow2"),  # (a new table, written empty; its links in the cache)
    _io("write", "g", 3 * M, 16 * K, 0x22), *_look("g.qcow2"),  # (the second table's l2_allocate writes the first)
    _io("write", "g", 128 * K, 8 * K, 0x33), *_look("g.qcow2"),
    _img("convert", "-U", "-O", "raw", "g.qcow2", "c1.img"),
    {"flush": {"node": "g"}}, *_look("g.qcow2", ["compare", "-U", "g.qcow2", "c1.img"]),
    _io("zero", "g", 0, 32 * K), _io("zero", "g", 3 * M, 16 * K, unmap=True),  # (zero flags, freed clusters)
    _io("write", "g", 6 * M, 4 * K, 0x44), *_look("g.qcow2", ["compare", "-U", "g.qcow2", "c1.img"]),
    _img("convert", "-U", "-O", "raw", "g.qcow2", "c2.img"), _img("map", "--output=json", "c2.img"),
    _q("blockdev-del", {"node-name": "g"}), *_look("g.qcow2", ["compare", "g.qcow2", "c2.img"]),
]

BACKUP = [  # a backup target's new clusters, before and after its node's flush (one worker: one host order)
    *_qcow2("s", "4M"), *_qcow2("t", "4M"),
    {"write": {"node": "s", "offset": 0, "length": 64 * K, "pattern": 0x11}},
    {"write": {"node": "s", "offset": M, "length": 128 * K, "pattern": 0x22}},
    _q("blockdev-backup", {"job-id": "j", "device": "s", "target": "t", "sync": "full", "x-perf": {"max-workers": 1}}),
    {"settle-jobs": True},
    *_look("t.qcow2", ["check", "-U", "--output=json", "t.qcow2"], ["compare", "-U", "s.qcow2", "t.qcow2"],
           ["measure", "-U", "--output=json", "-O", "qcow2", "t.qcow2"]),
    {"flush": {"node": "t"}},
    *_look("t.qcow2", ["compare", "-U", "s.qcow2", "t.qcow2"]),
]

MIRROR = [  # a flush through a mirror's filter reaches its source (bdrv_mirror_top_flush); the target is flushed as
    # the job goes ready and as it completes, not as it copies a guest's write in between
    *_qcow2("s", "4M"), *_qcow2("t", "4M"),
    {"write": {"node": "s", "offset": 0, "length": 64 * K, "pattern": 0x11}},
    _q("blockdev-mirror", {"job-id": "m", "device": "s", "target": "t", "sync": "full"}),
    {"wait-job": {"id": "m", "status": "ready"}},
    {"write": {"node": "s", "offset": 2 * M, "length": 64 * K, "pattern": 0x22}}, {"sleep": 0.3},
    *_look("s.qcow2"), *_look("t.qcow2"),
    _q("job-complete", {"id": "m"}), {"wait-job": {"id": "m", "status": "null"}},
    *_look("t.qcow2", ["compare", "-U", "s.qcow2", "t.qcow2"]),
]

LEAKS = [  # one request over a table that exists and one that does not: the new table's l2_allocate writes the refcount
    # block (counting the first table's new clusters) and the L2 cache before the request links them
    *_qcow2("k", "8M", "-o", "cluster_size=4096"),
    {"write": {"node": "k", "offset": 0, "length": 64 * K, "pattern": 0x11}},
    _io("write", "k", 2 * M - 64 * K, 128 * K, 0x22),
    _img("check", "-U", "k.qcow2"), _img("check", "-U", "--output=json", "k.qcow2"),
    _img("check", "-U", "-q", "k.qcow2"),
    _img("map", "--output=json", "-U", "k.qcow2"),
    {"flush": {"node": "k"}}, _img("check", "-U", "k.qcow2"),
]



def _layer(name: str, backing: str | None, **opts: object) -> dict:
    return _q("blockdev-add", {"driver": "qcow2", "node-name": name,
                               "file": {"driver": "file", "filename": f"{name}.qcow2"},
                               **({"backing": backing} if backing is not None else {}), **opts})


JOBS = [  # a commit job's base (reopened read-only as it ends: written back) and a stream job's top (not flushed)
    _img("create", "-f", "qcow2", "b.qcow2", "4M"),
    _img("create", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "m.qcow2"),
    _img("create", "-f", "qcow2", "-b", "m.qcow2", "-F", "qcow2", "t.qcow2"),
    _layer("m", None), {"write": {"node": "m", "offset": 0, "length": 64 * K, "pattern": 0x11}},
    {"write": {"node": "m", "offset": M, "length": 64 * K, "pattern": 0x12}}, _q("blockdev-del", {"node-name": "m"}),
    _layer("b", None, **{"read-only": True}), _layer("m", "b", **{"read-only": True}), _layer("t", "m"),
    {"write": {"node": "t", "offset": 2 * M, "length": 64 * K, "pattern": 0x13}},
    _q("block-commit", {"job-id": "c", "device": "t", "top-node": "m", "base-node": "b"}),
    {"wait-job": {"id": "c", "status": "null"}}, *_look("b.qcow2"),
    _q("block-stream", {"job-id": "s", "device": "t"}), {"wait-job": {"id": "s", "status": "null"}}, *_look("t.qcow2"),
]


SNAPSHOT = [  # external_snapshot_prepare flushes the old node before its other checks: a snapshot that fails
    # afterwards (a name in use, an overlay with a backing file) leaves the caches written back; a failed flush
    # (blkdebug) fails the snapshot with QEMU's text, the tables unwritten
    *_qcow2("a", "4M"),
    _io("write", "a", 0, 64 * K, 0x11), _img("map", "--output=json", "-U", "a.qcow2"),
    _q("blockdev-snapshot-sync", {"node-name": "a", "snapshot-file": "o1.qcow2", "snapshot-node-name": "a"}),
    _img("map", "--output=json", "-U", "a.qcow2"),
    _io("write", "a", M, 64 * K, 0x12), *_qcow2("b", "4M"), _img("create", "-f", "qcow2", "o.qcow2", "4M"),
    _layer("o", "b"),
    _q("blockdev-snapshot", {"node": "a", "overlay": "o"}), *_look("a.qcow2"),
    _img("create", "-f", "qcow2", "d.qcow2", "4M"),
    _q("blockdev-add", {"driver": "qcow2", "node-name": "d", "file": {
        "driver": "blkdebug", "node-name": "dbg", "image": {"driver": "file", "filename": "d.qcow2"},
        "inject-error": [{"event": "flush_to_os", "iotype": "flush", "errno": 5, "once": True}]}}),
    _io("write", "d", 0, 64 * K, 0x13),
    _q("blockdev-snapshot-sync", {"node-name": "d", "snapshot-file": "o2.qcow2", "snapshot-node-name": "o2"}),
    _q("query-named-block-nodes", {"flat": True}), _img("map", "--output=json", "-U", "d.qcow2"),
    _q("blockdev-snapshot-sync", {"node-name": "d", "snapshot-file": "o2.qcow2", "snapshot-node-name": "o2"}),
    _q("query-named-block-nodes", {"flat": True}), *_look("d.qcow2"),
]

RESIZE = [  # qcow2_co_truncate ends with qcow2_update_options, which flushes the L2 table and refcount block caches
    # before it makes new ones: after a resize, larger (its L1 table grown or not) or smaller, the file holds them
    *_qcow2("r", "8M", "-o", "cluster_size=4096"),
    _io("write", "r", 0, 64 * K, 0x11), *_look("r.qcow2"),
    _q("block_resize", {"node-name": "r", "size": 64 * M}), *_look("r.qcow2"),
    _io("write", "r", 40 * M, 64 * K, 0x12), _q("block_resize", {"node-name": "r", "size": 70 * M}), *_look("r.qcow2"),
    _io("write", "r", 5 * M, 8 * K, 0x13), _io("zero", "r", 0, 32 * K, unmap=True),
    _q("block_resize", {"node-name": "r", "size": 4 * M}), *_look("r.qcow2"),
    *_qcow2("q", "8M"), _io("write", "q", M, 64 * K, 0x14),
    _q("block_resize", {"node-name": "q", "size": 1024 * M}), *_look("q.qcow2"),
]

REFBLOCK = [  # 4 KiB clusters: a refcount block counts 8 MiB of file. A request needing a new one writes the L2 cache
    # back, then the refcount blocks (the allocation's clusters below the old end counted, the new block counting itself
    # only), then counts its clusters again (alloc_refcount_block, -EAGAIN); a backup target crosses it in a batch
    *_qcow2("f", "32M", "-o", "cluster_size=4096"), *_qcow2("g", "32M", "-o", "cluster_size=4096"),
    {"write": {"node": "f", "offset": 0, "length": 7 * M + 200 * K, "pattern": 0x11}},
    *[_io("write", "f", (16 + 2 * i) * M + 64 * K, 256 * K, 0x20 + i) for i in range(3)], *_look("f.qcow2"),
    _io("write", "f", 26 * M, 256 * K, 0x30), *_look("f.qcow2"),
    _io("zero", "f", 27 * M, M), _io("write", "f", 27 * M + 4 * K, 64 * K, 0x31), *_look("f.qcow2"),
    _q("blockdev-backup", {"job-id": "j", "device": "f", "target": "g", "sync": "full", "x-perf": {"max-workers": 1}}),
    {"settle-jobs": True}, *_look("g.qcow2"),
    _q("blockdev-del", {"node-name": "g"}), _q("blockdev-del", {"node-name": "f"}),
    *_look("f.qcow2"), *_look("g.qcow2"),
]

WIDE = [  # 512-byte clusters: an L2 table maps 32 KiB. A request over several new tables is allocated piece by piece
    # under qcow2's lock; a piece's task links once its data is written and the lock is free, which the host's I/O
    # timing decides: bitlab's rule (a task links as the allocation of the piece two after it ends) is QEMU's choice
    # for 3, 5, 6 and 7 such pieces, measured (for 4 and 8, QEMU's tasks link one piece sooner)
    *[step for n, (first, clusters) in enumerate([(3014, 128), (3008, 192), (3008, 320), (3008, 384), (3008, 448)])
      for step in [*_qcow2(f"w{n}", "2M", "-o", "cluster_size=512"),
                   _io("write", f"w{n}", first * 512, clusters * 512, 0x40 + n), *_look(f"w{n}.qcow2")]],
]

MERGED = [  # guest writes bitlab merges at once when a reader comes (a peek episode's): a zero write freeing clusters
    # (the refcount cache then waits for the L2 cache), then a write needing a new table, whose l2_allocate writes
    # every dirty table back as the writes before it left them (seed 501483770, scenario 145 of the mix)
    *_qcow2("pk", "8M", "-o", "cluster_size=4096"),
    {"write": {"node": "pk", "offset": 7282688, "length": M, "pattern": 237, "flush": True}},
    _io("write", "pk", 5976064, M, 2), _io("zero", "pk", 7806976, 581632, unmap=True),
    _io("write", "pk", 3350528, M, 79),
    _img("measure", "-U", "--output=json", "-O", "qcow2", "pk.qcow2"), *_look("pk.qcow2"),
    # a write, one over two new tables (whose l2_allocate writes the first table back), then a zero write freeing
    # the first write's clusters: the file's first table maps them, with the data they held when it was written
    # (seed 263373213, scenario 188 of the mix)
    *_qcow2("pz", "8M", "-o", "cluster_size=4096"),
    _io("write", "pz", 3694592, 64 * K, 79), _io("write", "pz", 6029312, M, 212),
    _io("zero", "pz", 2899968, M, unmap=True),
    _img("convert", "-U", "-O", "raw", "pz.qcow2", "pz.img"), _img("map", "--output=json", "pz.img"),
    *_look("pz.qcow2"), _q("blockdev-del", {"node-name": "pz"}), _img("compare", "pz.qcow2", "pz.img"),
]


@pytest.mark.qemu
@pytest.mark.parametrize("name,steps,daemon", [("merged", MERGED, "qsd"), ("merged", MERGED, "system"),
                                               ("leaks", LEAKS, "qsd"), ("jobs", JOBS, "qsd"), ("guest", GUEST, "qsd"),
                                               ("guest", GUEST, "system"),
                                               ("backup", BACKUP, "qsd"), ("mirror", MIRROR, "qsd"),
                                               ("mirror", MIRROR, "system"), ("snapshot", SNAPSHOT, "qsd"),
                                               ("snapshot", SNAPSHOT, "system"), ("resize", RESIZE, "qsd"),
                                               ("resize", RESIZE, "system"), ("refblock", REFBLOCK, "qsd"),
                                               ("refblock", REFBLOCK, "system"), ("wide", WIDE, "qsd")])
def test_readers_without_the_cache_see_the_tables_as_written(name, steps, daemon):
    scenario = {"name": name, "steps": steps}
    real, sim = play(scenario, "qemu", daemon), play(scenario, "sim", daemon)
    assert real.error is None
    assert [d.render() for d in compare(scenario, real, sim)] == []


def test_a_backup_target_is_unallocated_to_a_reader_until_its_node_flushes() -> None:
    """(The simulator alone: the stories above compare it with QEMU.) Until a flush the file's only L2 table is
    the empty one l2_allocate wrote; a guest's unflushed write likewise; closing the node writes everything."""
    vm = Machine()
    for name in ("s", "t"):
        vm.qemu_img("create", "-f", "qcow2", f"{name}.qcow2", "4M")
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": name,
                                "file": {"driver": "file", "filename": f"{name}.qcow2"}})
    vm.write("s", 0, 64 * K, 0x11)
    vm.guest_io("s", "flush")
    vm.write("s", M, 64 * K, 0x22)  # (not flushed)
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "s", "target": "t", "sync": "full"})
    vm.run()
    assert vm.qemu_img("map", "--output=json", "-U", "t.qcow2") == (
        '[{ "start": 0, "length": 4194304, "depth": 0, "present": false, "zero": true, "data": false}]\n')
    assert vm.qemu_img("check", "-U", "t.qcow2") == "No errors were found on the image.\nImage end offset: 327680\n"
    mapped = vm.qemu_img("map", "--output=json", "-U", "s.qcow2")
    assert '"start": 0, "length": 65536' in mapped and '"start": 1048576' not in mapped
    with pytest.raises(QemuImgError, match="Content mismatch at offset 0!"):
        vm.qemu_img("compare", "-U", "s.qcow2", "t.qcow2")
    vm.guest_io("t", "flush")
    with pytest.raises(QemuImgError, match="Content mismatch at offset 1048576!"):  # (the source's is stale now)
        vm.qemu_img("compare", "-U", "s.qcow2", "t.qcow2")
    vm.guest_io("s", "flush")
    assert vm.qemu_img("compare", "-U", "s.qcow2", "t.qcow2") == "Images are identical.\n"
    vm.write("t", 2 * M, 4 * K, 0x33)
    vm.qmp("blockdev-del", {"node-name": "t"})  # (closing writes the tables back)
    with pytest.raises(QemuImgError, match="Content mismatch at offset 2097152!"):
        vm.qemu_img("compare", "-U", "s.qcow2", "t.qcow2")


@pytest.mark.parametrize("size", [4 * M, 16 * M, 1024 * M])  # (smaller; larger, the L1 table grown or not)
def test_a_resize_writes_the_caches_back(size) -> None:
    """(The simulator alone: RESIZE above compares it with QEMU.) qcow2_update_options at a resize's end."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4096", "r.qcow2", "8M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "r", "file": {"driver": "file", "filename": "r.qcow2"}})
    vm.write("r", M, 64 * K, 0x11)  # (not flushed)
    assert '"present": true' not in vm.qemu_img("map", "--output=json", "-U", "r.qcow2")
    vm.qmp("block_resize", {"node-name": "r", "size": size})
    assert '{ "start": 1048576, "length": 65536, "depth": 0, "present": true' in vm.qemu_img(
        "map", "--output=json", "-U", "r.qcow2")
    assert vm.qemu_img("check", "-U", "r.qcow2").startswith("No errors were found on the image.\n")


def test_check_finds_the_clusters_a_written_refcount_block_counts_and_no_written_table_references() -> None:
    """(The simulator alone; LEAKS above compares it with QEMU.) A request over an L2 table that exists and one that
    does not: the new table's l2_allocate writes the refcount block, counting the first table's 16 new clusters,
    and the L2 cache before the request links them; a flush writes the links."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4096", "k.qcow2", "8M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "k", "file": {"driver": "file", "filename": "k.qcow2"}})
    vm.write("k", 0, 64 * K, 0x11)
    vm.guest_io("k", "flush")
    vm.write("k", 2 * M - 64 * K, 128 * K, 0x22)
    with pytest.raises(QemuImgError) as err:
        vm.qemu_img("check", "-U", "k.qcow2")
    assert err.value.returncode == 3
    assert err.value.stderr == "".join(f"Leaked cluster {c} refcount=1 reference=0\n" for c in range(21, 37))
    assert err.value.stdout == ("\n16 leaked clusters were found on the image.\nThis means waste of disk space, but no "
                                "harm to data.\n16/2048 = 0.78% allocated, 0.00% fragmented, 0.00% compressed "
                                "clusters\nImage end offset: 155648\n")
    vm.guest_io("k", "flush")
    assert vm.qemu_img("check", "-U", "k.qcow2") == ("No errors were found on the image.\n48/2048 = 2.34% allocated, "
                                                     "0.00% fragmented, 0.00% compressed clusters\n"
                                                     "Image end offset: 221184\n")


def test_a_shrink_frees_the_refcount_block_left_counting_nothing() -> None:
    """(The simulator alone: peek scenarios 26201/41 and /49 compare it with QEMU.) A filled 8 MiB disk of 4 KiB
    clusters needs a second refcount block; shrunk to 4 MiB, that block counts only itself: qcow2_shrink_reftable
    drops it and the file ends after the last cluster in use."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4096", "f.qcow2", "8M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "f", "file": {"driver": "file", "filename": "f.qcow2"}})
    for i in range(8):
        vm.write("f", i * M, M, 0x61 + i)
    vm.guest_io("f", "flush")
    assert vm.qemu_img("check", "-U", "f.qcow2").endswith("Image end offset: 8425472\n")  # (2057 clusters)
    vm.qmp("block_resize", {"node-name": "f", "size": 4 * M})
    assert vm.qemu_img("check", "-U", "f.qcow2") == (
        "No errors were found on the image.\n1024/1024 = 100.00% allocated, 0.00% fragmented, 0.00% compressed "
        "clusters\nImage end offset: 4218880\n")


def test_a_table_written_back_in_a_batch_holds_the_data_its_earlier_writes_left() -> None:
    """(The simulator alone: MERGED above compares it with QEMU.) Three guest requests bitlab merges at once when
    qemu-img comes: the third's zero write frees clusters of the first's, in a table the second's new tables wrote
    back, so the file still maps them, and ``convert -U`` copies the first write's bytes (bitlab copied zeroes,
    reading the content as it was before all three)."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4096", "pz.qcow2", "8M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "pz", "file": {"driver": "file", "filename": "pz.qcow2"}})
    vm.write("pz", 3694592, 64 * K, 79)
    vm.write("pz", 6029312, M, 212)
    vm.guest_io("pz", "write -z -u 2899968 1048576")
    assert vm.qemu_img("map", "--output=json", "-U", "pz.qcow2") == (
        '[{ "start": 0, "length": 3694592, "depth": 0, "present": false, "zero": true, "data": false},\n'
        '{ "start": 3694592, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, '
        '"offset": 20480},\n'
        '{ "start": 3760128, "length": 4628480, "depth": 0, "present": false, "zero": true, "data": false}]\n')
    vm.qemu_img("convert", "-U", "-O", "raw", "pz.qcow2", "pz.img")
    assert vm.qemu_img("compare", "-U", "pz.qcow2", "pz.img") == "Images are identical.\n"
    vm.qmp("blockdev-del", {"node-name": "pz"})  # (closing writes the zero write's table back)
    with pytest.raises(QemuImgError, match="Content mismatch at offset 3694592!"):
        vm.qemu_img("compare", "pz.qcow2", "pz.img")
