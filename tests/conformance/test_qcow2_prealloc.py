"""qcow2 ``preallocation=metadata`` (qemu-img create, blockdev-create): preallocate_co gives every cluster its L2
entry and a host cluster, as one request over the disk would (each L2 table, then its clusters), and grows the file
to the last of them; nothing is written into them, so the file stays sparse (a 64 MiB disk: 260 KiB on the host),
the image looks preallocated to qcow2 (its block status asks the file: ``"zero": true, "data": true``), writes go
into the clusters in place (their other blocks stay holes), and a zero write that keeps a cluster keeps its holes.
``falloc`` and ``full``: tests/conformance/test_qcow2_prealloc_data.py.
"""

from __future__ import annotations

import json

import pytest

from bitlab import Machine
from tests.both import on_both
from tests.conformance.test_nbd_client import _img, _q, _write
from tests.conformance.test_raw_allocation import SETTLE, _look, _looks, _zero, story, tree_block_tolerated

K, M = 1 << 10, 1 << 20


def _pre(name: str, size: str, *options: str) -> dict:
    return _img("create", "-f", "qcow2", "-o", ",".join(["preallocation=metadata", *options]), f"{name}.qcow2", size)


def _open(name: str) -> dict:
    return _q("blockdev-add", {"driver": "qcow2", "node-name": name,
                               "file": {"driver": "file", "filename": f"{name}.qcow2"}})


IMAGES = [_pre("a", "64M"), _pre("b", "8M", "cluster_size=4096"), _pre("c", "1M", "cluster_size=512"),
          _pre("v2", "8M", "compat=0.10"), _pre("huge", "10G", "cluster_size=2M")]
LOOKS = [step for name in ("a", "b", "c", "v2", "huge") for step in (
    _img("info", f"{name}.qcow2"), _img("map", "--output=json", f"{name}.qcow2"), _img("check", f"{name}.qcow2"))]

GUEST = [  # writes in place, zero writes (keeping clusters, and unmapping), a discard, a backup from and into
    *IMAGES, *LOOKS, _open("a"), _look("a", "a.qcow2"),
    _write("a", 0, 4 * K, 0x11), _write("a", 64 * K + 512, 512, 0x12), _write("a", M, M, 0x13), _look("a", "a.qcow2"),
    _zero("a", 4 * M, 64 * K), _zero("a", 5 * M + 4 * K, 4 * K), _zero("a", 6 * M, 128 * K, unmap=True),
    _look("a", "a.qcow2"), {"discard": {"node": "a", "offset": 8 * M, "length": M}}, _look("a", "a.qcow2"),
    _img("map", "--output=json", "-U", "a.qcow2"), _img("check", "-U", "a.qcow2"),
    _img("create", "-f", "qcow2", "t.qcow2", "64M"), _open("t"),
    _q("blockdev-backup", {"job-id": "j", "device": "a", "target": "t", "sync": "full"}), SETTLE,
    _look("t", "t.qcow2"), _img("map", "--output=json", "-U", "t.qcow2"),
    _pre("u", "64M"), _open("u"),
    _q("blockdev-backup", {"job-id": "j2", "device": "a", "target": "u", "sync": "full"}), SETTLE,
    _look("u", "u.qcow2"), _img("map", "--output=json", "-U", "u.qcow2"),
    _q("blockdev-del", {"node-name": "a"}),
    _img("convert", "-O", "qcow2", "a.qcow2", "conv.qcow2"), _look("x", "conv.qcow2"),
    _img("compare", "a.qcow2", "conv.qcow2"), _img("measure", "-O", "qcow2", "a.qcow2"),
    _q("blockdev-create", {"job-id": "c1", "options": {"driver": "file", "filename": "bc.qcow2", "size": 0}}), SETTLE,
    _q("blockdev-add", {"driver": "file", "node-name": "bcf", "filename": "bc.qcow2"}),
    _q("blockdev-create", {"job-id": "c2", "options": {"driver": "qcow2", "file": "bcf", "size": 4 * M,
                                                       "preallocation": "metadata"}}), SETTLE, _q("query-jobs"),
    _q("blockdev-add", {"driver": "qcow2", "node-name": "bc", "file": "bcf"}), _look("bc", "bc.qcow2"),
    _img("check", "-U", "bc.qcow2"),
]

SMALL = [  # 4 KiB and 512-byte clusters, a backup into a preallocated image, an incremental one, a resize
    _pre("b", "8M", "cluster_size=4096"), _pre("c", "2M", "cluster_size=512"), _pre("d", "16M"),
    _open("b"), _open("c"), _open("d"),
    _write("b", 0, 6 * K, 0x11), _write("b", 2 * M, 4 * K, 0), _zero("b", 3 * M, 12 * K), _zero("b", 4 * M + 512, 1024),
    {"discard": {"node": "b", "offset": 5 * M, "length": 64 * K}}, _look("b", "b.qcow2"),
    _write("c", 0, 6 * K, 0x11), _zero("c", 64 * K, 4 * K), _write("c", M, 700, 0x12), _look("c", "c.qcow2"),
    _write("d", 0, 8 * M, 0x21), _zero("d", 10 * M, 2 * M),
    _q("block-dirty-bitmap-add", {"node": "d", "name": "bm"}), _write("d", 12 * M, 64 * K, 0x33),
    _pre("inc", "16M"), _open("inc"),
    _q("blockdev-backup", {"job-id": "j2", "device": "d", "target": "inc", "sync": "incremental", "bitmap": "bm"}),
    SETTLE, _look("inc", "inc.qcow2"), _img("map", "--output=json", "-U", "inc.qcow2"),
    _q("blockdev-del", {"node-name": "inc"}), _img("check", "inc.qcow2"), _img("info", "inc.qcow2"),
    _q("block_resize", {"node-name": "c", "size": 4 * M}), _look("c", "c.qcow2"),
    _q("blockdev-del", {"node-name": "c"}), _img("check", "c.qcow2"), _img("map", "--output=json", "c.qcow2"),
    _img("create", "-f", "qcow2", "-b", "d.qcow2", "-F", "qcow2", "-o", "preallocation=metadata", "ov.qcow2"),
]


TAIL_AND_MIRROR = [  # a disk that ends inside its last cluster (the rest of it written: its copy on write); a mirror
    # copies what a preallocated source's holes read (BDRV_BLOCK_DATA with ZERO), in place into a preallocated target
    _pre("t64", "4194341"), _pre("t2k", "4194341", "cluster_size=2048"), _pre("t2m", "1M", "cluster_size=2M"),
    *[step for name in ("t64", "t2k", "t2m") for step in (_open(name), _look(name, f"{name}.qcow2"),
                                                           _img("map", "--output=json", "-U", f"{name}.qcow2"))],
    _pre("src", "8M"), _open("src"), _write("src", M, 64 * K, 0x21), _write("src", 8 * M - 64 * K, 64 * K, 0x22),
    _pre("dst", "8M"),
    _q("blockdev-add", {"driver": "qcow2", "node-name": "dst",
                        "file": {"driver": "file", "filename": "dst.qcow2", "node-name": "dstf"}}),
    _q("blockdev-mirror", {"job-id": "m", "device": "src", "target": "dst", "sync": "full"}),
    {"wait-job": {"id": "m", "status": "ready"}}, _q("job-cancel", {"id": "m"}), SETTLE,
    _q("query-blockstats", {"query-nodes": True}), _look("dst", "dst.qcow2"),
    _img("map", "--output=json", "-U", "dst.qcow2"),
]


def test_a_preallocated_image_is_sparse_and_looks_preallocated():
    out = story(GUEST)(Machine())
    assert json.loads(out[6]["stdout"]) == [{"start": 0, "length": 64 * M, "depth": 0, "present": True, "zero": True,
                                             "data": True, "offset": 5 * 64 * K}]  # (after header, refcounts, L1, L2)
    assert "1024/1024 = 100.00% allocated" in out[7]["stdout"]
    sizes = [o["actual-size"][0] for o in _looks(out)]
    assert sizes[0] == 260 * K  # a.qcow2: header, refcounts, L1 and L2 tables; its 64 MiB of clusters are holes
    assert sizes[1] - sizes[0] == 4 * K + 4 * K + M  # the writes' blocks only: no cluster allocated whole
    # a zero write keeping a cluster keeps its holes; the partial one is written as zero bytes (its block), and the
    # file now has more than four extents (an extent-tree block)
    assert sizes[2] == sizes[1] + 4 * K + 4 * K


def test_a_partial_last_cluster_is_written_past_the_end():
    looks = _looks(story(TAIL_AND_MIRROR[:12])(Machine()))
    # 64 KiB clusters: the last one written whole (its first block in part); 2 MiB: from the disk's end only
    assert [o["actual-size"][0] for o in looks] == [331776, 53248, 9441280]
    assert looks[0]["map"][-1] == {"start": 4 * M, "length": 512, "depth": 0, "present": True, "zero": False,
                                   "data": True, "offset": 4521984}


def test_a_terabyte_preallocated():
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "-o", "preallocation=metadata", "big.qcow2", "1T")
    info = vm.qemu_img("info", "big.qcow2")
    assert "disk size: 160 MiB" in info  # 2048 L2 tables and 32 refcount blocks (QEMU 7.2: the same)
    assert vm.images["big.qcow2"].file_length() == 1099679662080


@pytest.mark.qemu
@pytest.mark.parametrize("name,steps,daemon", [("guest", GUEST, "qsd"), ("guest", GUEST, "system"),
                                               ("small", SMALL, "qsd"), ("tail", TAIL_AND_MIRROR, "qsd")])
def test_matches_qemu(name, steps, daemon):
    want, got = on_both(story(steps), daemon)
    assert got == tree_block_tolerated(want, got)
