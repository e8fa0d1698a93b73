"""qcow2 ``preallocation=falloc`` and ``full`` (qemu-img create, convert and resize, blockdev-create), and a resize
with ``--preallocation=metadata``.

qcow2_co_truncate: refcount structures for the new clusters and their L2 tables after the file's last cluster in use
(qcow2_refcount_area: the refcount blocks the table lacks, then a new refcount table; the old one freed), the data
clusters right after them in one run, the file grown over them (``falloc``: allocated, unwritten; ``full``: zeroes
written), then their L2 entries linked table by table (each new L2 table the first free cluster: the old refcount
table's, then past the data). The image is then as large on the host as its disk, and does not look preallocated to
qcow2 (``"zero": false, "data": true``). Growing an image whose disk ends inside its last cluster moves that cluster:
its part before the old end is copied (perform_cow), its old host cluster freed.

Every figure asserted without QEMU was measured with qemu-img 7.2 (tools: filefrag and stat on its files); the
stories compare every step with real QEMU on both daemons. ``HOST_SYNC`` writes the host's page cache back before
sizes are looked at: ``qemu-img convert`` writes its output without flushing it (``cache=unsafe``), and until the host
writes its pages back their blocks still count as unwritten extents (an extent-tree block less).
"""

from __future__ import annotations

import json

import pytest

from bitlab import Machine
from tests.both import on_both
from tests.conformance.test_nbd_client import _img, _q, _write
from tests.conformance.test_raw_allocation import HOST_SYNC, SETTLE, _look, _zero, story, tree_block_tolerated

K, M = 1 << 10, 1 << 20


def _pre(mode: str, name: str, size: str | int, *options: str) -> dict:
    return _img("create", "-f", "qcow2", "-o", ",".join([f"preallocation={mode}", *options]), f"{name}.qcow2",
                str(size))


def _plain(name: str, size: int, *options: str) -> dict:
    return _img("create", "-f", "qcow2", *(["-o", ",".join(options)] if options else []), f"{name}.qcow2", str(size))


def _open(name: str) -> dict:
    return _q("blockdev-add", {"driver": "qcow2", "node-name": name,
                               "file": {"driver": "file", "filename": f"{name}.qcow2"}})


def _del(name: str) -> dict:
    return _q("blockdev-del", {"node-name": name})


def _offline(name: str) -> list[dict]:
    """What qemu-img says of an image nobody has open, and its size once the host wrote its pages back."""
    file = f"{name}.qcow2"
    return [_img("map", "--output=json", file), _img("check", file), HOST_SYNC, _img("info", file), _look("x", file)]


def guest(mode: str) -> list[dict]:
    """Preallocated images of several cluster sizes; guest writes in place, zero writes keeping clusters or not, a
    discard; a full backup into a preallocated target, which is then grown; a copy, an overlay; blockdev-create."""
    images = ("a", "b", "c", "v2", "h")
    return [
        _pre(mode, "a", "64M"), _pre(mode, "b", "8M", "cluster_size=4096"), _pre(mode, "c", "3M", "cluster_size=512"),
        _pre(mode, "v2", "8M", "compat=0.10"), _pre(mode, "h", "100M", "cluster_size=2M"),
        *[step for name in images for step in (_img("info", f"{name}.qcow2"), _img("map", "--output=json",
                                                                                    f"{name}.qcow2"),
                                               _img("check", f"{name}.qcow2"))],
        _open("a"), _look("a", "a.qcow2"),
        _write("a", 0, 4 * K, 0x11), _write("a", 64 * K + 512, 512, 0x12), _write("a", M, M, 0x13),
        _look("a", "a.qcow2"),
        _zero("a", 4 * M, 64 * K), _zero("a", 5 * M + 4 * K, 4 * K), _zero("a", 6 * M, 128 * K, unmap=True),
        _look("a", "a.qcow2"), {"discard": {"node": "a", "offset": 8 * M, "length": M}}, _look("a", "a.qcow2"),
        _img("map", "--output=json", "-U", "a.qcow2"), _img("check", "-U", "a.qcow2"),
        _write("a", 20 * M, 3 * M, 0x14), _look("a", "a.qcow2"),
        _pre(mode, "u", "64M"), _open("u"),
        _q("blockdev-backup", {"job-id": "j2", "device": "a", "target": "u", "sync": "full"}), SETTLE,
        _img("map", "--output=json", "-U", "u.qcow2"), _q("block_resize", {"node-name": "u", "size": 80 * M}),
        _del("a"), _del("u"), _img("check", "u.qcow2"), _look("x", "u.qcow2"),
        _img("convert", "-O", "qcow2", "a.qcow2", "conv.qcow2"), _look("x", "conv.qcow2"),
        _img("compare", "a.qcow2", "conv.qcow2"), _img("measure", "-O", "qcow2", "a.qcow2"),
        _img("create", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "ov.qcow2"), _open("ov"),
        _write("ov", 2 * M, 64 * K, 0x31), _look("ov", "ov.qcow2"),
        _q("blockdev-create", {"job-id": "c1", "options": {"driver": "file", "filename": "bc.qcow2", "size": 0}}),
        SETTLE, _q("blockdev-add", {"driver": "file", "node-name": "bcf", "filename": "bc.qcow2"}),
        _q("blockdev-create", {"job-id": "c2", "options": {"driver": "qcow2", "file": "bcf", "size": 4 * M,
                                                           "preallocation": mode}}), SETTLE, _q("query-jobs"),
        _q("blockdev-add", {"driver": "qcow2", "node-name": "bc", "file": "bcf"}), _look("bc", "bc.qcow2"),
        _img("check", "-U", "bc.qcow2"),
    ]


def _resize(name: str, size: str | int, mode: str) -> dict:
    return _img("resize", f"--preallocation={mode}", f"{name}.qcow2", str(size))


def resize(mode: str) -> list[dict]:
    """qemu-img resize --preallocation: a last cluster the old disk ends inside (data, none, data and zeroes), whole
    clusters, 512-byte and 4 KiB clusters (new refcount blocks), clusters freed at the file's end, an image
    preallocated already; its refusals."""
    other = {"falloc": "full", "full": "metadata", "metadata": "falloc"}[mode]
    return [
        _plain("p", M + 512), _open("p"), _write("p", M, 512, 0x55), _write("p", 0, 4 * K, 0x66), _del("p"),
        _resize("p", 2 * M, mode), *_offline("p"), _open("p"), _write("p", M + 4 * K, 4 * K, 0x77), _del("p"),
        *_offline("p"),
        _plain("q", 4 * M), _open("q"), _write("q", 0, 4 * M, 0x11), _del("q"), _resize("q", "+3M", mode),
        *_offline("q"),
        _plain("s", M, "cluster_size=512"), _open("s"), _write("s", 100 * K, 8 * K, 0x22), _del("s"),
        _resize("s", 5 * M, mode), *_offline("s"),
        _plain("t", 8 * M), _open("t"), _write("t", 0, 8 * M, 0x33), {"discard": {"node": "t", "offset": 6 * M,
                                                                                  "length": 2 * M}},
        _del("t"), _resize("t", 10 * M, mode), *_offline("t"),
        _pre("metadata", "m", 4 * M), _resize("m", 6 * M, mode), *_offline("m"),
        _pre(mode, "f", 4 * M), _resize("f", 7 * M, other), *_offline("f"),
        _plain("u", M + 512), _open("u"), _write("u", 0, 4 * K, 0x44), _del("u"), _resize("u", 3 * M, mode),
        *_offline("u"),
        _plain("z", M + 1024), _open("z"), _write("z", M - 64 * K, 128 * K, 0x45), _zero("z", M, 1024), _del("z"),
        _resize("z", 3 * M, mode), *_offline("z"),
        _plain("k", 2 * M, "cluster_size=4096"), _open("k"), _write("k", 0, 2 * M, 0x46), _del("k"),
        _resize("k", 40 * M, mode), *_offline("k"),
        _plain("e", 4 * M), _resize("e", 4 * M, mode), _resize("e", M, mode),
    ]


def convert(mode: str) -> list[dict]:
    """qemu-img convert -o preallocation into a new qcow2 image: its data written into the clusters in place, the
    source's zeroes skipped (the output reads zeroes: bdrv_has_zero_init), or written with -S 0; -S 64k writes short
    zero stretches inside data as data (is_allocated_sectors_min)."""
    out = [
        _plain("s", 8 * M), _open("s"), _write("s", 0, 4 * K, 0x11), _write("s", M, 128 * K, 0x12),
        _write("s", 2 * M, 64 * K, 0), _zero("s", 3 * M, 64 * K), _write("s", 4 * M + 512, 1024, 0x13),
        _write("s", 8 * M - 4 * K, 4 * K, 0x14), _del("s"), _img("create", "-f", "raw", "r.img", "3M"),
    ]
    for i, (args, options) in enumerate([((), ()), (("-S", "0"), ()), ((), ("cluster_size=4096",)),
                                         ((), ("cluster_size=512",)), (("-S", "64k"), ()),
                                         ((), ("compat=0.10",))]):
        out += [_img("convert", "-O", "qcow2", *args, "-o", ",".join([f"preallocation={mode}", *options]),
                     "s.qcow2", f"c{i}.qcow2"), *_offline(f"c{i}"), _img("compare", "s.qcow2", f"c{i}.qcow2")]
    return out + [_img("convert", "-f", "raw", "-O", "qcow2", "-o", f"preallocation={mode}", "r.img", "cr.qcow2"),
                  *_offline("cr")]


def _over_blkdebug(name: str, sector: int) -> dict:
    return _q("blockdev-add", {"driver": "qcow2", "node-name": name, "file": {
        "driver": "blkdebug", "inject-error": [{"event": "reftable_load", "sector": sector, "once": True}],
        "image": {"driver": "file", "filename": "f.qcow2"}}})


RELOCATED = [  # the refcount table where the preallocation moved it (cluster 4): read there as qcow2 opens the
    # image (a rule on its sector fails the open, one on cluster 1's not), rewritten there by a shrink (seen by a
    # bitmap on the file node)
    _pre("falloc", "f", "8M"), _over_blkdebug("b1", 512), _over_blkdebug("b2", 128),
    _q("query-named-block-nodes", {"flat": True}),
    _q("blockdev-add", {"driver": "file", "node-name": "ff", "filename": "f.qcow2"}),
    _q("block-dirty-bitmap-add", {"node": "ff", "name": "fb", "granularity": 512}),
    _q("blockdev-add", {"driver": "qcow2", "node-name": "f", "file": "ff"}),
    _write("f", 0, 64 * K, 3), _q("block_resize", {"node-name": "f", "size": M}),
    _q("x-debug-block-dirty-bitmap-sha256", {"node": "ff", "name": "fb"}),
    _q("query-named-block-nodes", {"flat": True}),
]


def _zero_pieces() -> list[dict]:
    """A zero write over parts of two clusters qcow2 refuses to zero (preallocated, or data) is written as zero
    bytes piece by piece (bdrv_co_do_pwrite_zeroes): a blkdebug rule failing the first piece's write stops it there
    (bitlab wrote the second piece until session 29)."""
    steps: list[dict] = []
    for i, (mode, event) in enumerate([("metadata", "pwritev"), ("falloc", "pwritev"), ("full", "pwritev"),
                                       ("metadata", "pwritev_done"), ("off", "pwritev")]):
        file = f"z{i}.qcow2"
        steps.append(_img("create", "-f", "qcow2", "-o", f"preallocation={mode}", file, "4M"))
        if mode == "off":
            steps += [_q("blockdev-add", {"driver": "qcow2", "node-name": f"w{i}",
                                          "file": {"driver": "file", "filename": file}}), _write(f"w{i}", 0, M, 7),
                      _del(f"w{i}")]
        steps += [_q("blockdev-add", {"driver": "qcow2", "node-name": f"n{i}", "file": {
                      "driver": "blkdebug", "inject-error": [{"event": event, "once": True}],
                      "image": {"driver": "file", "filename": file}}}),
                  _zero(f"n{i}", 60 * K, 8 * K), _zero(f"n{i}", 2 * M - 4 * K, 72 * K), _del(f"n{i}"),
                  _img("map", "--output=json", file), _img("check", file)]
    return steps


FILE_BITMAP = [  # blockdev-create onto a file node with a dirty bitmap: it sees qcow2_co_create's writes, not the data
    # clusters a preallocation grew the file over (ftruncate, posix_fallocate, file-posix's zeroes), and it grows to
    # the file's length (bitlab marked the whole file until session 29)
    step for i, mode in enumerate(["off", "metadata", "falloc", "full"]) for step in (
        _q("blockdev-create", {"job-id": f"f{i}", "options": {"driver": "file", "filename": f"b{i}.qcow2", "size": 0}}),
        SETTLE, _q("blockdev-add", {"driver": "file", "node-name": f"bf{i}", "filename": f"b{i}.qcow2"}),
        _q("block-dirty-bitmap-add", {"node": f"bf{i}", "name": "fb", "granularity": 65536}),
        _q("blockdev-create", {"job-id": f"c{i}", "options": {"driver": "qcow2", "file": f"bf{i}", "size": 8 * M + 512,
                                                              "preallocation": mode}}), SETTLE,
        _q("query-named-block-nodes", {"flat": True}), _q("x-debug-block-dirty-bitmap-sha256",
                                                          {"node": f"bf{i}", "name": "fb"}))]


TRUNCATE = [  # HMP qemu-io truncate -m on a running qcow2 node over a file node with a bitmap: the file grows without a
    # write at its end (wr_highest_offset keeps the metadata's), its bitmap takes the new length
    _img("create", "-f", "qcow2", "a.qcow2", "4M"), _q("blockdev-add", {"driver": "file", "node-name": "af",
                                                                         "filename": "a.qcow2"}),
    _q("block-dirty-bitmap-add", {"node": "af", "name": "fb", "granularity": 65536}),
    _q("blockdev-add", {"driver": "qcow2", "node-name": "a", "file": "af"}), _write("a", 0, 64 * K, 5),
    *[step for mode, size in (("falloc", 6 * M), ("full", 8 * M), ("metadata", 10 * M), ("falloc", 10 * M + 512))
      for step in ({"hmp": f'qemu-io a "truncate -m {mode} {size}"'}, _q("query-named-block-nodes", {"flat": True}),
                   _q("x-debug-block-dirty-bitmap-sha256", {"node": "af", "name": "fb"}),
                   _q("query-blockstats", {"query-nodes": True}))],
]


def _layout(vm: Machine, name: str) -> tuple:
    layout = vm.images[name].layout
    return layout.reftable, layout.refblock_hosts, layout.l2.look(0), layout.guest.peek(0)


@pytest.mark.parametrize("mode", ["falloc", "full"])
def test_a_new_image_is_allocated_on_the_host(mode):
    vm = Machine()
    out = story(guest(mode)[:20])(vm)
    # 64 MiB: header, L2 table (in the old refcount table's cluster), refcount block, L1 table, refcount table, data
    assert _layout(vm, "a.qcow2") == ((4, 1), [2], 1, 5)
    assert json.loads(out[6]["stdout"]) == [{"start": 0, "length": 64 * M, "depth": 0, "present": True,
                                             "zero": False, "data": True, "offset": 5 * 64 * K}]
    assert out[7]["stdout"].endswith("1024/1024 = 100.00% allocated, 0.00% fragmented, 0.00% compressed clusters\n"
                                     "Image end offset: 67436544\n")
    assert "disk size: 64.3 MiB" in vm.qemu_img("info", "a.qcow2")
    # 3 MiB at 512-byte clusters: 24 new refcount blocks from the old file's end, then the table; 96 L2 tables
    layout = vm.images["c.qcow2"].layout
    assert layout.reftable == (29, 1) and layout.refblock_hosts == [2, *range(5, 29)]
    assert layout.l2.look(0) == 1 and layout.l2.look(1) == 30 + 6144 and layout.guest.peek(0) == 30


def test_five_gigabytes_need_more_refcount_blocks():
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "-o", "preallocation=falloc", "g.qcow2", "5G")
    assert _layout(vm, "g.qcow2") == ((6, 1), [2, 4, 5], 1, 7)  # (QEMU 7.2: refcount blocks 2, 4-5, table 6)
    assert vm.images["g.qcow2"].layout.l2.look(1) == 7 + 81920
    assert "Image end offset: 5369757696" in vm.qemu_img("check", "g.qcow2")


def test_a_grown_last_cluster_moves():
    vm = Machine()
    out = story(resize("falloc")[:11])(vm)
    assert json.loads(out[6]["stdout"])[-1] == {"start": M, "length": M, "depth": 0, "present": True, "zero": False,
                                                "data": True, "offset": 8 * 64 * K}  # (after the new refcount table)
    assert "17/32 = 53.12% allocated, 5.88% fragmented" in out[7]["stdout"]  # (the old cluster 5 is free)
    assert vm.images["p.qcow2"].data.value_at(M) == 0x55  # its first 512 bytes copied


def test_a_failed_first_piece_stops_a_zero_write():
    out = story(_zero_pieces()[:6])(Machine())
    assert out[2]["stdout"] == "write failed: Input/output error\n"  # the first piece's write of zero bytes
    assert out[5]["stdout"].startswith('[{ "start": 0, "length": 2093056, "depth": 0, "present": true, "zero": true')
    # (neither piece of the first zero write reached the file; the second zero write's head did: data)


def test_a_terabyte():
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "-o", "preallocation=falloc", "big.qcow2", "1T")
    assert "16777216/16777216 = 100.00% allocated" in vm.qemu_img("check", "big.qcow2")
    assert "disk size: 1 TiB" in vm.qemu_img("info", "big.qcow2")


def test_preallocation_shrinking_or_with_a_backing_file():
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "b.qcow2", "1M")
    vm.qemu_img("create", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "o.qcow2")
    with pytest.raises(Exception, match="Preallocation can only be used for growing images"):
        vm.qemu_img("resize", "--preallocation=full", "o.qcow2", "1M")
    with pytest.raises(Exception, match="bitlab does not simulate resizing a qcow2 node with a backing file"):
        vm.qemu_img("resize", "--preallocation=full", "o.qcow2", "2M")


STORIES = {"guest": guest, "resize": resize, "convert": convert, "relocated": lambda mode: RELOCATED,
           "zero-pieces": lambda mode: _zero_pieces(), "file-bitmap": lambda mode: FILE_BITMAP,
           "truncate": lambda mode: TRUNCATE}


@pytest.mark.qemu
@pytest.mark.parametrize("name,mode,daemon", [
    ("guest", "falloc", "qsd"), ("guest", "full", "qsd"), ("guest", "falloc", "system"),
    ("resize", "falloc", "qsd"), ("resize", "full", "qsd"), ("resize", "metadata", "qsd"),
    ("convert", "falloc", "qsd"), ("convert", "full", "qsd"), ("convert", "metadata", "qsd"),
    ("relocated", "falloc", "qsd"), ("zero-pieces", "", "qsd"), ("file-bitmap", "", "qsd"),
    ("truncate", "", "system")])
def test_matches_qemu(name, mode, daemon):
    want, got = on_both(story(STORIES[name](mode)), daemon)
    assert got == tree_block_tolerated(want, got)
