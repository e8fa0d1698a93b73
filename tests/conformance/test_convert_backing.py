"""``qemu-img convert -B backing -F fmt`` (and ``-o backing_file=…,backing_fmt=…``): a new qcow2 image over a backing
file, holding only what the source's top image holds; ``convert -n -B …`` writes only that into an image that exists.

img_convert then asks the source's top alone for its block status (bdrv_block_status_above down to its backing file,
exclusive): what the top does not allocate is left to the target's backing file (nothing written), unless it starts
past the end of the top's own backing file (zeroes); its data and zero stretches are written as into an image that
exists (the target is not zero-initialised: zero writes, which make zero clusters — or, on a v2 image or over backing
data in part of a cluster, write zeroes). A new target skips the zero stretches past its own backing file's end.
Every step is compared with real QEMU 7.2; the figures asserted without QEMU were measured with qemu-img 7.2.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bitlab import Machine
from bitlab.qemu_img import convert_nbd
from bitlab.qemu_img._common import open_chain
from tests.both import on_both
from tests.conformance.test_nbd_client import SERVER, SOCK, _img, _q, _write
from tests.conformance.test_qcow2_prealloc_data import _del
from tests.conformance.test_qcow2_prealloc_data import _open as _add
from tests.conformance.test_raw_allocation import _zero, story

K, M = 1 << 10, 1 << 20


def _map(file: str) -> dict:
    return _img("map", "--output=json", file)


def _convert(*args: str) -> dict:
    return _img("convert", *args)


CHAIN = [  # base (4 MiB, 3 MiB of data) <- mid (6 MiB) <- top (6 MiB, 4 KiB clusters)
    _img("create", "-f", "qcow2", "base.qcow2", "4M"), _add("base"), _write("base", 0, 3 * M, 0x11), _del("base"),
    _img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "mid.qcow2", "6M"), _add("mid"),
    _write("mid", 512 * K, 8 * K, 0x22), _write("mid", 4 * M + 4 * K, 64 * K, 0x23), _del("mid"),
    _img("create", "-f", "qcow2", "-o", "cluster_size=4096", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2"),
    _add("top"), _write("top", M + 512, K, 0x33), _write("top", 5 * M, 8 * K, 0x34), _write("top", 2 * M, 64 * K, 0),
    _zero("top", 40 * K, 8 * K), _zero("top", 3 * M, 128 * K, unmap=True), _del("top"),
]

NEW = [  # new images over a backing file
    _convert("-B", "mid.qcow2", "-O", "qcow2", "top.qcow2", "a0.qcow2"),  # no backing format
    _convert("-B", "mid.qcow2", "-F", "qcow2", "-O", "qcow2", "top.qcow2", "a1.qcow2"), _map("a1.qcow2"),
    _img("info", "a1.qcow2"), _img("compare", "top.qcow2", "a1.qcow2"), _img("check", "a1.qcow2"),
    _convert("-B", "base.qcow2", "-F", "qcow2", "-O", "qcow2", "top.qcow2", "a2.qcow2"), _map("a2.qcow2"),
    _img("compare", "top.qcow2", "a2.qcow2"),
    _convert("-B", "base.qcow2", "-F", "qcow2", "-O", "qcow2", "mid.qcow2", "a3.qcow2"), _map("a3.qcow2"),
    _convert("-B", "base.qcow2", "-F", "qcow2", "-o", "cluster_size=512", "-O", "qcow2", "mid.qcow2", "a4.qcow2"),
    _map("a4.qcow2"), _img("check", "a4.qcow2"),
    _convert("-B", "base.qcow2", "-F", "qcow2", "-o", "cluster_size=2M", "-O", "qcow2", "top.qcow2", "a5.qcow2"),
    _map("a5.qcow2"), _img("compare", "top.qcow2", "a5.qcow2"),
    _convert("-B", "mid.qcow2", "-F", "qcow2", "-S", "0", "-O", "qcow2", "top.qcow2", "a6.qcow2"), _map("a6.qcow2"),
    _convert("-B", "mid.qcow2", "-F", "qcow2", "-S", "64k", "-O", "qcow2", "top.qcow2", "a7.qcow2"), _map("a7.qcow2"),
    _convert("-B", "mid.qcow2", "-F", "qcow2", "-o", "compat=0.10", "-O", "qcow2", "top.qcow2", "a8.qcow2"),
    _map("a8.qcow2"), _img("check", "a8.qcow2"),
    _convert("-B", "top.qcow2", "-F", "qcow2", "-O", "qcow2", "base.qcow2", "a9.qcow2"), _map("a9.qcow2"),
    _convert("-o", "backing_file=base.qcow2,backing_fmt=qcow2", "-O", "qcow2", "mid.qcow2", "a10.qcow2"),
    _map("a10.qcow2"), _img("info", "a10.qcow2"),
    _convert("-B", "base.qcow2", "-F", "qcow2", "-o", "backing_file=mid.qcow2", "-O", "qcow2", "top.qcow2",
             "a11.qcow2"), _img("info", "a11.qcow2"),  # (-B wins: set after -o)
    _convert("-U", "-B", "base.qcow2", "-F", "qcow2", "-O", "qcow2", "mid.qcow2", "a12.qcow2"), _map("a12.qcow2"),
]

REFUSED = [  # QEMU's errors, in its order
    _convert("-F", "qcow2", "-O", "qcow2", "top.qcow2", "r1.qcow2"),
    _convert("-B", "base.qcow2", "-F", "qcow2", "-O", "raw", "top.qcow2", "r2.raw"),
    _convert("-F", "qcow2", "-O", "raw", "top.qcow2", "r3.raw"),
    _convert("-B", "nonexist.qcow2", "-F", "qcow2", "-O", "qcow2", "top.qcow2", "r4.qcow2"),
    _img("info", "r4.qcow2"),  # (created before it is opened)
    _convert("-B", "base.qcow2", "-F", "bogus", "-O", "qcow2", "top.qcow2", "r5.qcow2"),
    _convert("-o", "backing_file=base.qcow2", "-O", "qcow2", "top.qcow2", "r6.qcow2"),
    _convert("-o", "backing_file=base.qcow2,backing_fmt=qcow2,preallocation=metadata", "-O", "qcow2", "top.qcow2",
             "r7.qcow2"),
    _convert("-B", "r8.qcow2", "-F", "qcow2", "-O", "qcow2", "mid.qcow2", "r8.qcow2"),  # its own backing file
    _img("create", "-u", "-f", "qcow2", "-b", "base.qcow2", "-F", "bogus", "c1.qcow2", "1M"),
    _img("create", "-f", "qcow2", "-F", "bogus", "c2.qcow2", "1M"),
    _img("create", "-f", "qcow2", "-b", "nonexist.qcow2", "-F", "bogus", "c3.qcow2", "1M"),
]

EXISTING = [  # -n -B: the top's stretches alone, into images that exist
    _img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "e1.qcow2", "6M"),
    _convert("-n", "-B", "mid.qcow2", "-O", "qcow2", "top.qcow2", "e1.qcow2"), _map("e1.qcow2"),
    _img("create", "-f", "raw", "e2.img", "6M"),
    _convert("-n", "-B", "x", "-O", "raw", "top.qcow2", "e2.img"), _map("e2.img"),
    _img("create", "-f", "qcow2", "e3.qcow2", "6M"),
    _convert("-n", "-S", "0", "-B", "x", "-O", "qcow2", "top.qcow2", "e3.qcow2"), _map("e3.qcow2"),
    _img("create", "-f", "qcow2", "e4.qcow2", "6M"),  # -S 0 without -B: zero stretches written as data
    _convert("-n", "-S", "0", "-O", "qcow2", "top.qcow2", "e4.qcow2"), _map("e4.qcow2"),
    _img("create", "-f", "qcow2", "e5.qcow2", "6M"), _add("e5"),  # into a running disk, over NBD
    _q("block-dirty-bitmap-add", {"node": "e5", "name": "w"}), SERVER,
    _q("block-export-add", {"type": "nbd", "id": "e5", "node-name": "e5", "writable": True}),
    _convert("-n", "-B", "x", "-O", "raw", "top.qcow2", SOCK.format("e5")),
    _q("x-debug-block-dirty-bitmap-sha256", {"node": "e5", "name": "w"}), _map(SOCK.format("e5")),
]

COMPRESSED = [  # -c -B: whole target clusters, in order; a cluster a status answer ends inside is read whole
    _convert("-c", "-B", "mid.qcow2", "-F", "qcow2", "-O", "qcow2", "top.qcow2", "c1.qcow2"), _map("c1.qcow2"),
    _img("compare", "top.qcow2", "c1.qcow2"), _img("check", "c1.qcow2"),
    _convert("-c", "-B", "base.qcow2", "-F", "qcow2", "-o", "cluster_size=4k", "-O", "qcow2", "top.qcow2",
             "c2.qcow2"), _map("c2.qcow2"), _img("check", "c2.qcow2"),
    _convert("-c", "-B", "base.qcow2", "-F", "qcow2", "-O", "qcow2", "mid.qcow2", "c3.qcow2"), _map("c3.qcow2"),
    _img("check", "c3.qcow2"),
]

STEPS = CHAIN + NEW + REFUSED + EXISTING + COMPRESSED


def _said(out: list, step: dict) -> dict:
    """What ``step`` said: the step itself, or the first one equal to it."""
    return out[next((i for i, s in enumerate(STEPS) if s is step), None) or STEPS.index(step)]


def _runs(out: list, step: dict) -> list[tuple[int, int, int, bool, bool]]:
    return [(r["start"], r["length"], r["depth"], r["zero"], r["data"])
            for r in json.loads(_said(out, step)["stdout"])]


@pytest.fixture(scope="module")
def sim() -> list:
    return story(STEPS)(Machine())


def test_only_the_top_is_copied(sim):
    """a1 over mid: the top's 4 KiB clusters as the target's 64 KiB ones (their rest from mid: copy on write),
    its data cluster of zeroes and its zero clusters as zero clusters; mid's own data left to mid."""
    assert _runs(sim, _map("a1.qcow2")) == [
        (0, 64 * K, 0, False, True),  # (a zero write of 8 KiB: over mid's data, zeroes written, the rest copied)
        (64 * K, 448 * K, 2, False, True), (512 * K, 64 * K, 1, False, True), (576 * K, 448 * K, 2, False, True),
        (M, 64 * K, 0, False, True), (1088 * K, 960 * K, 2, False, True), (2 * M, 64 * K, 0, True, False),
        (2112 * K, 960 * K, 2, False, True), (3 * M, 128 * K, 0, True, False), (3200 * K, 896 * K, 2, True, False),
        (4 * M, 128 * K, 1, False, True), (4224 * K, 896 * K, 1, True, False), (5 * M, 64 * K, 0, False, True),
        (5184 * K, 960 * K, 1, True, False)]
    assert _said(sim, _img("compare", "top.qcow2", "a1.qcow2"))["stdout"] == "Images are identical.\n"
    info = _said(sim, _img("info", "a1.qcow2"))["stdout"]
    assert "backing file: mid.qcow2\nbacking file format: qcow2\n" in info


def test_zeroes_past_the_backing_files_end_are_left_to_it(sim):
    """a2 over base (4 MiB): what the top does not allocate (within its own backing file, mid: 6 MiB) is left to
    base, and mid's data is not copied (compare finds its first byte); past base's end nothing is written."""
    runs = _runs(sim, _map("a2.qcow2"))
    assert (4 * M, M, 0, True, False) in runs  # (the top's zero stretch there: left to base's end)
    assert _said(sim, _img("compare", "top.qcow2", "a2.qcow2"))["stdout"] == "Content mismatch at offset 524288!\n"


def test_a_v2_target_writes_its_zeroes(sim):
    runs = _runs(sim, _map("a8.qcow2"))
    assert (2 * M, 64 * K, 0, False, True) in runs and (3 * M, 128 * K, 0, False, True) in runs


def test_errors(sim):
    def err(step: dict) -> str:
        return _said(sim, step)["stderr"]

    assert err(NEW[0]) == "qemu-img: Use of backing file requires explicit backing format\n"
    assert err(REFUSED[0]) == ("qemu-img: r1.qcow2: error while converting qcow2: Backing format cannot be used "
                               "without backing file\n")
    assert err(REFUSED[1]) == "qemu-img: Backing file not supported for file format 'raw'\n"
    assert err(REFUSED[2]) == "qemu-img: Backing file format not supported for file format 'raw'\n"
    assert err(REFUSED[3]) == ("qemu-img: Could not open 'r4.qcow2': Could not open backing file: Could not open "
                               "'nonexist.qcow2': No such file or directory\n")
    assert "backing file: nonexist.qcow2\n" in _said(sim, REFUSED[4])["stdout"]
    assert err(REFUSED[5]) == ("qemu-img: r5.qcow2: error while converting qcow2: Parameter 'backing-fmt' does not "
                               "accept value 'bogus'\n")
    assert err(REFUSED[6]) == "qemu-img: Use of backing file requires explicit backing format\n"
    assert err(REFUSED[7]) == ("qemu-img: r7.qcow2: error while converting qcow2: Backing file and preallocation can "
                               "only be used at the same time if extended_l2 is on\n")
    assert err(REFUSED[8]) == ("qemu-img: Could not open 'r8.qcow2': Could not open backing file: Failed to get "
                               "shared \"write\" lock\nIs another process using the image [r8.qcow2]?\n")
    assert err(REFUSED[9]) == "qemu-img: c1.qcow2: Parameter 'backing-fmt' does not accept value 'bogus'\n"
    assert _said(sim, REFUSED[9])["stdout"].startswith("Formatting 'c1.qcow2', fmt=qcow2 ")
    assert err(REFUSED[10]) == "qemu-img: c2.qcow2: Parameter 'backing-fmt' does not accept value 'bogus'\n"
    assert err(REFUSED[11]) == "qemu-img: c3.qcow2: Unknown driver 'bogus'\nCould not open backing image.\n"


def test_into_images_that_exist(sim):
    assert _runs(sim, _map("e4.qcow2")) == [(0, 6 * M, 0, False, True)]  # -S 0: every stretch written as data
    e3 = _runs(sim, _map("e3.qcow2"))  # -S 0 -B: the top's stretches alone (its zero clusters written as data too)
    assert [(r[0], r[1]) for r in e3 if r[4]] == [(0, 64 * K), (M, 64 * K), (2 * M, 64 * K), (3 * M, 128 * K),
                                                  (5 * M, 64 * K)]


def test_compressed(sim):
    """c1: the top's 4 KiB clusters in 64 KiB target clusters: clusters 0 (its zero write inside mid's data), 16
    and 80 (its data) read whole and compressed; its zero clusters as zero clusters."""
    runs = _runs(sim, _map("c1.qcow2"))
    assert [r[:2] for r in runs if r[2] == 0 and r[4]] == [(0, 64 * K), (M, 64 * K), (5 * M, 64 * K)]
    assert "100.00% compressed clusters" in _said(sim, _img("check", "c1.qcow2"))["stdout"]
    assert _said(sim, _img("compare", "top.qcow2", "c1.qcow2"))["stdout"] == "Images are identical.\n"


def test_an_empty_backing_file_name_is_refused():
    """qemu-img 7.2 crashes there (SIGSEGV): bitlab says so rather than make something up."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "s.qcow2", "1M")
    out = story([_convert("-B", "", "-F", "qcow2", "-O", "qcow2", "s.qcow2", "t.qcow2")])(vm)
    assert "segmentation fault" in out[0]["stderr"] and out[0]["returncode"] == 1


@pytest.mark.parametrize("seed", range(40))
def test_the_plan_is_the_walk(seed):
    """convert_nbd.requests for a target with a backing file (the top's answers alone, the new target's backing
    end) equals img_convert's walk, on random two-layer chains of 512 B to 64 KiB clusters."""
    rng = np.random.default_rng(seed)
    vm = Machine()
    cs_base, cs_top = (int(2 ** rng.integers(9, 17)) for _ in range(2))
    base_size = int(rng.integers(1, 64)) * 64 * K + int(rng.integers(0, 2)) * 512
    size = base_size + int(rng.integers(0, 3)) * 128 * K
    vm.qemu_img("create", "-f", "qcow2", "-o", f"cluster_size={cs_base}", "b.qcow2", str(base_size))
    vm.qemu_img("create", "-f", "qcow2", "-o", f"cluster_size={cs_top}", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2",
                str(size))
    for name, end in (("b", base_size), ("t", size)):
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": name, "file": {"driver": "file",
                                                                              "filename": f"{name}.qcow2"}})
        for _ in range(int(rng.integers(1, 12))):
            off = int(rng.integers(0, end // 512)) * 512
            n = min(int(rng.integers(1, 64)) * 512, end - off)
            kind = int(rng.integers(0, 3))
            if kind == 2:
                vm.qmp("human-monitor-command", {"command-line": f'qemu-io {name} "write -z {off} {n}"'})
            else:
                vm.write(name, off, n, 0 if kind else int(rng.integers(1, 255)))
        vm.qmp("blockdev-del", {"node-name": name})
    chain = open_chain(vm.images, vm.graph.store_key, "t.qcow2", "qcow2")
    sparse = int(rng.choice([0, 512, 4096, 65536]))
    end = int(rng.integers(0, size // 512 + 2)) * 512
    for backing_end in (None, end):
        got = convert_nbd.requests(chain, size, sparse, True, backing_end)
        walk = convert_nbd.requests_walk(chain, size, sparse, True, backing_end)
        assert [("zero" if z else "data", int(o), int(n)) for o, n, z in zip(*got)] == walk


@pytest.mark.qemu
def test_matches_qemu():
    want, got = on_both(story(STEPS), "qsd")
    assert got == want
