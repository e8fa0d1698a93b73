"""``qemu-img amend``: a qcow2 image's version upgraded (v2 to v3: persistent bitmaps need it) and downgraded, its
size changed exactly, and QEMU 7.2's errors for what an image keeps as it is, in qcow2_amend_options' order.

A downgrade makes zero clusters unallocated (no backing file: they read zeroes either way). The story is compared
with real QEMU 7.2 step by step; the texts asserted without QEMU were measured with qemu-img 7.2.
"""

from __future__ import annotations

import json

import pytest

from bitlab import Machine
from tests.both import on_both
from tests.conformance.test_convert_backing import _add, _del, _map
from tests.conformance.test_nbd_client import _img, _q, _write
from tests.conformance.test_raw_allocation import _zero, story

K, M = 1 << 10, 1 << 20


def _amend(*args: str) -> dict:
    return _img("amend", *args)


V2 = [_img("create", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "4M"), _add("v2"), _write("v2", 0, 128 * K, 0x11),
      _zero("v2", M, 64 * K), _del("v2"), _map("v2.qcow2")]

ERRORS = [
    _amend("v2.qcow2"), _amend("-o", "compat=1.1"), _amend("-o", "compat=1.1", "a.qcow2", "b.qcow2"),
    _amend("-o", "compat=1.1", "nonexist.qcow2"), _amend("-o", "bogus=1", "v2.qcow2"),
    _amend("-o", "cluster_size=4k", "v2.qcow2"), _amend("-o", "preallocation=full", "v2.qcow2"),
    _amend("-o", "nocow=on", "v2.qcow2"), _amend("-o", "size=abc", "v2.qcow2"), _amend("-o", "compat=2", "v2.qcow2"),
    _amend("-o", "compat=", "v2.qcow2"), _amend("-o", "refcount_bits=3", "v2.qcow2"),
    _amend("-o", "refcount_bits=3,compat=2", "v2.qcow2"), _amend("-o", "refcount_bits=8", "v2.qcow2"),
    _amend("-o", "lazy_refcounts=on", "v2.qcow2"), _amend("-o", "backing_file=x", "v2.qcow2"),
    _amend("-o", "data_file=x", "v2.qcow2"), _amend("-o", "data_file_raw=on", "v2.qcow2"),
    _amend("-o", "data_file_raw=off", "v2.qcow2"), _amend("-o", "encrypt.keyslot=1", "v2.qcow2"),
    _amend("-t", "bogus", "-o", "compat=1.1", "v2.qcow2"), _img("info", "v2.qcow2"),
]

VERSIONS = [
    _amend("-o", "compat=1.1,backing_file=x", "v2.qcow2"), _img("info", "v2.qcow2"),  # (upgraded before the error)
    _amend("-o", "compat=0.10", "v2.qcow2"), _img("info", "v2.qcow2"),
    _amend("-q", "-o", "compat=v3", "-o", "size=6M", "v2.qcow2"), _img("info", "v2.qcow2"), _map("v2.qcow2"),
    _img("check", "v2.qcow2"),
    _add("v2"), _zero("v2", 2 * M, 128 * K), _zero("v2", 3 * M, 64 * K), _del("v2"), _map("v2.qcow2"),
    _amend("-o", "compat=0.10,size=3M", "v2.qcow2"), _img("info", "v2.qcow2"), _map("v2.qcow2"),
    _img("check", "v2.qcow2"),
    _amend("-o", "size=1000", "v2.qcow2"), _amend("-o", "size=0", "v2.qcow2"), _img("info", "v2.qcow2"),
]

OTHERS = [
    _amend("-f", "raw", "-o", "size=1M", "v2.qcow2"),
    _img("create", "-f", "raw", "r.img", "1M"), _amend("-o", "size=2M", "r.img"),
    _amend("-f", "raw", "-o", "size=2M", "r.img"),
    _img("create", "-f", "qcow2", "-b", "v2.qcow2", "-F", "qcow2", "ov.qcow2"),
    _amend("-o", "backing_file=v2.qcow2", "ov.qcow2"),
    _amend("-o", "backing_file=v2.qcow2,backing_fmt=qcow2", "ov.qcow2"),
    _amend("-o", "backing_fmt=qcow2", "ov.qcow2"),
    _add("ov"), _amend("-o", "compat=0.10", "ov.qcow2"), _amend("-o", "compat=0.10", "v2.qcow2"), _del("ov"),
    _img("create", "-f", "qcow2", "bm.qcow2", "1M"), _img("bitmap", "--add", "bm.qcow2", "b0"),
    _amend("-o", "compat=1.1", "bm.qcow2"), _img("info", "bm.qcow2"), _amend("--force", "-o", "compat=1.1", "bm.qcow2"),
]

BITMAPS = [  # a v2 image cannot hold persistent bitmaps: upgraded, it can
    _img("create", "-f", "qcow2", "-o", "compat=0.10", "old.qcow2", "8M"), _add("old"),
    _q("block-dirty-bitmap-add", {"node": "old", "name": "b0", "persistent": True}), _del("old"),
    _img("bitmap", "--add", "old.qcow2", "b0"), _amend("-o", "compat=1.1", "old.qcow2"), _add("old"),
    _q("block-dirty-bitmap-add", {"node": "old", "name": "b0", "persistent": True}), _write("old", M, 64 * K, 0x22),
    _del("old"), _img("info", "old.qcow2"),
    _amend("-o", "compat=1.1", "old.qcow2"), _img("check", "old.qcow2"),  # (opened read-write: bitmaps stored again)
    _amend("-o", "bogus=1", "old.qcow2"), _img("check", "old.qcow2"), _q("blockdev-add", {
        "driver": "qcow2", "node-name": "old", "file": {"driver": "file", "filename": "old.qcow2", "node-name": "of"}}),
    _q("query-named-block-nodes", {"flat": True}),
    _q("x-debug-block-dirty-bitmap-sha256", {"node": "old", "name": "b0"}),
]



def _downgraded(n: str) -> list[dict]:
    """An image with two persistent bitmaps (one holding set bits) downgraded."""
    return [_img("create", "-f", "qcow2", f"{n}.qcow2", "8M"), _add(n), _write(n, 0, 128 * K, 0x11),
            _q("block-dirty-bitmap-add", {"node": n, "name": "b0", "persistent": True}), _write(n, 2 * M, 64 * K, 0x12),
            _q("block-dirty-bitmap-add", {"node": n, "name": "b1", "persistent": True, "granularity": 512,
                                          "disabled": True}),
            _del(n), _amend("-o", "compat=0.10", f"{n}.qcow2")]


DOWNGRADES = [  # the bitmaps stay in the v2 header, which no reader loads: inconsistent, their clusters leaked
    *_downgraded("dg1"), _img("info", "dg1.qcow2"), _map("dg1.qcow2"), _img("check", "dg1.qcow2"),
    _add("dg1"), _q("query-named-block-nodes", {"flat": True}), _del("dg1"),  # (read-write: the header rewritten)
    _img("check", "dg1.qcow2"), _img("check", "-r", "leaks", "dg1.qcow2"), _img("check", "dg1.qcow2"),
    *_downgraded("dg2"), _img("bitmap", "--remove", "dg2.qcow2", "b0"), _img("check", "dg2.qcow2"),
    _img("check", "-r", "all", "dg2.qcow2"),
    *_downgraded("dg3"), _amend("-o", "compat=1.1", "dg3.qcow2"), _img("info", "dg3.qcow2"), _img("check", "dg3.qcow2"),
    *_downgraded("dg4"), _q("blockdev-add", {"driver": "qcow2", "node-name": "dg4", "read-only": True,
                                              "file": {"driver": "file", "filename": "dg4.qcow2"}}),
    _img("check", "-U", "dg4.qcow2"), _del("dg4"), _img("check", "dg4.qcow2"),
    _img("bitmap", "--add", "dg4.qcow2", "b9"), _img("check", "dg4.qcow2"),
]



def _looks(n: str) -> list[dict]:
    return [_map(f"{n}.qcow2"), _img("check", f"{n}.qcow2"), _img("info", "--output=json", f"{n}.qcow2")]


EXPANDED = [  # qcow2_expand_zero_clusters: zero clusters keeping host clusters, and over a backing file's data
    _img("create", "-f", "qcow2", "zb.qcow2", "8M"), _add("zb"), _write("zb", 0, 4 * M, 0x33), _del("zb"),
    _img("create", "-f", "qcow2", "z1.qcow2", "8M"), _add("z1"), _write("z1", 0, 2 * M, 0x11),
    _zero("z1", 64 * K, 192 * K), _zero("z1", M, 64 * K), _zero("z1", 5 * M, 128 * K), _del("z1"), *_looks("z1"),
    _amend("-o", "compat=0.10", "z1.qcow2"), *_looks("z1"),
    _img("create", "-f", "qcow2", "-b", "zb.qcow2", "-F", "qcow2", "z2.qcow2", "8M"), _add("z2"),
    _write("z2", 3 * M, 128 * K, 0x22), _zero("z2", 0, 192 * K), _zero("z2", 3 * M, 64 * K),
    _zero("z2", 2 * M, 64 * K), _zero("z2", 6 * M, 64 * K), _del("z2"), *_looks("z2"),
    _amend("-o", "compat=0.10", "z2.qcow2"), *_looks("z2"), _img("compare", "z2.qcow2", "zb.qcow2"),
]

STEPS = V2 + ERRORS + VERSIONS + OTHERS + BITMAPS + DOWNGRADES + EXPANDED


@pytest.fixture(scope="module")
def sim() -> list:
    return story(STEPS)(Machine())


def _said(out: list, step: dict) -> dict:
    """What ``step`` (the very object, in its group) said."""
    return out[next(i for i, s in enumerate(STEPS) if s is step)]


def test_errors(sim):
    def err(step: dict) -> str:
        return _said(sim, step)["stderr"]

    assert err(ERRORS[0]) == "qemu-img: Must specify options (-o)\nTry 'qemu-img --help' for more information\n"
    assert err(ERRORS[2]) == "qemu-img: Expecting one image file name\n"
    assert err(ERRORS[5]) == ("qemu-img: Invalid parameter 'cluster_size'\nThis option is only supported for image "
                              "creation\n")
    assert err(ERRORS[7]) == "qemu-img: Invalid parameter 'nocow'\n"  # (file-posix's: not qcow2's creation options)
    assert err(ERRORS[9]) == "qemu-img: Unknown compatibility level 2\n"
    assert err(ERRORS[12]) == "qemu-img: Unknown compatibility level 2\n"  # (compat looked at before refcount_bits)
    assert err(ERRORS[13]) == ("qemu-img: Refcount widths other than 16 bits require compatibility level 1.1 or "
                               "above (use compat=1.1 or greater)\n")
    assert err(ERRORS[14]) == ("qemu-img: Lazy refcounts only supported with compatibility level 1.1 and above (use "
                               "compat=1.1 or greater)\n")
    assert err(ERRORS[15]) == "qemu-img: Cannot amend the backing file\nYou can use 'qemu-img rebase' instead.\n"
    assert err(ERRORS[16]) == "qemu-img: data-file can only be set for images that use an external data file\n"
    assert err(ERRORS[17]) == "qemu-img: data-file-raw cannot be set on existing images\n"
    assert _said(sim, ERRORS[18])["returncode"] == 0
    assert err(ERRORS[19]) == "qemu-img: Can't amend encryption options - encryption not present\n"
    assert err(OTHERS[0]) == "qemu-img: Format driver 'raw' does not support option amendment\n"
    assert err(OTHERS[5]) == err(ERRORS[15])  # (the same file without its format: still a change)
    assert _said(sim, OTHERS[6])["returncode"] == 0
    assert 'Failed to get "write" lock' in err(OTHERS[9])


def test_versions(sim):
    def info(step: dict) -> str:
        return _said(sim, step)["stdout"]

    assert "compat: 1.1\n" in info(VERSIONS[1])  # upgraded, though the backing file could not change
    assert "compat: 0.10\n" in info(VERSIONS[3])
    assert "virtual size: 6 MiB" in info(VERSIONS[5]) and "compat: 1.1\n" in info(VERSIONS[5])
    after = [(r["start"], r["length"], r["present"]) for r in json.loads(info(VERSIONS[15]))]
    assert after == [(0, 128 * K, True), (128 * K, 3 * M - 128 * K, False)]  # the zero clusters unallocated
    assert "virtual size: 3 MiB" in info(VERSIONS[14]) and "compat: 0.10\n" in info(VERSIONS[14])
    assert _said(sim, VERSIONS[17])["stderr"] == "qemu-img: The new size must be a multiple of 512\n"
    assert "virtual size: 3 MiB" in info(VERSIONS[19])  # (size=0: no change)
    assert "bitmaps:" in info(OTHERS[15])


def test_bitmaps_need_the_upgrade(sim):
    assert _said(sim, BITMAPS[2])["error"]["desc"] == ("Can't make bitmap 'b0' persistent in 'old': Cannot store "
                                                       "dirty bitmaps in qcow2 v2 files")
    assert _said(sim, BITMAPS[7]) == {"return": {}}
    info = _said(sim, BITMAPS[10])["stdout"]
    assert "    bitmaps:\n        [0]:\n            flags:\n                [0]: auto\n" in info


def test_a_downgrade_loses_the_bitmaps(sim):
    """QEMU 7.2 downgrades the image and keeps the bitmaps extension in its v2 header, without the autoclear bit v2
    has no room for: every open warns that the bitmaps are inconsistent and loads none, a read-write open drops the
    extension, and their tables, data cluster and directory are leaked until ``check -r``."""
    warning = ("qemu-img: warning: This qcow2 v2 image contains bitmaps, but they may have been modified by a "
               "program without persistent bitmap support; so now they must all be considered inconsistent\nSome "
               "clusters may be leaked, run 'qemu-img check -r' on the image file to fix.")
    leaks = "".join(f"Leaked cluster {c} refcount=1 reference=0\n" for c in (12, 13, 14, 15))
    d = DOWNGRADES
    assert _said(sim, d[7]) == {"stdout": "", "stderr": "", "returncode": 0}
    assert "compat: 0.10\n" in _said(sim, d[8])["stdout"] and "bitmaps" not in _said(sim, d[8])["stdout"]
    assert _said(sim, d[10]) == {"stdout": "\n4 leaked clusters were found on the image.\nThis means waste of disk "
                                           "space, but no harm to data.\n3/128 = 2.34% allocated, 0.00% fragmented, "
                                           "0.00% compressed clusters\nImage end offset: 1048576\n",
                                 "stderr": warning + leaks, "returncode": 3}
    assert "dirty-bitmaps" not in _said(sim, d[12])["return"][0]
    assert _said(sim, d[14])["stderr"] == leaks  # (the extension gone: no warning)
    assert "4 leaked clusters\n" in _said(sim, d[15])["stdout"] and _said(sim, d[15])["returncode"] == 0
    assert _said(sim, d[16])["stdout"].endswith("No errors were found on the image.\n3/128 = 2.34% allocated, 0.00% "
                                                "fragmented, 0.00% compressed clusters\nImage end offset: 524288\n")
    assert _said(sim, d[25])["stderr"] == warning + ("qemu-img: Operation remove on bitmap b0 failed: Dirty bitmap "
                                                     "'b0' not found\n")


def test_zero_clusters_are_expanded(sim):
    """A zero cluster keeping its host cluster becomes a data cluster there; over a backing file a plain one gets a
    host cluster of its own (guest order: the first free ones); without one it is unallocated."""
    def runs(step: dict) -> list:
        return [(r["start"], r["length"], r["depth"], r["zero"], r.get("offset")) for r in
                json.loads(_said(sim, step)["stdout"])]

    x = EXPANDED
    assert _said(sim, x[14]) == {"stdout": "", "stderr": "", "returncode": 0}
    assert runs(x[15]) == [(0, 2 * M, 0, False, 327680), (2 * M, 6 * M, 0, True, None)]
    assert runs(x[30])[:3] == [(0, 192 * K, 0, False, 458752), (192 * K, 1856 * K, 1, False, 524288),
                               (2 * M, 64 * K, 0, False, 655360)]
    assert _said(sim, x[33])["stdout"].startswith("Content mismatch at offset 0!")


@pytest.mark.qemu
def test_matches_qemu():
    want, got = on_both(story(STEPS), "qsd")
    assert got == want


def test_persist_episodes_amend_from_their_seed_on():
    """The persistent-bitmap episodes of the random mix run qemu-img amend now and then from AMEND_SINCE on (a
    stream of its own)."""
    from bitlab.conformance.gen_persist import AMEND_SINCE
    from bitlab.conformance.generator import random_scenario

    def amends(seed: int) -> int:
        return sum(step.get("qemu-img", [""])[0] == "amend" for i in range(80)
                   for step in random_scenario(seed, i)["steps"])

    assert amends(AMEND_SINCE - 1) == 0 and amends(AMEND_SINCE) > 0


def test_persist_episodes_downgrade_from_their_seed_on():
    """From DOWNGRADE_SINCE on, an amend of the random persistent-bitmap episodes may downgrade a v3 image (a stream
    of its own: the scenarios of older seeds stay as they were)."""
    from bitlab.conformance.gen_persist import DOWNGRADE_SINCE
    from bitlab.conformance.generator import random_scenario

    def downgrades(seed: int) -> int:
        return sum(step.get("qemu-img", [""])[:3] in (["amend", "-o", "compat=0.10"], ["amend", "-o", "compat=v2"])
                   for i in range(120) for step in random_scenario(seed, i)["steps"])

    assert downgrades(DOWNGRADE_SINCE - 1) == 0 and downgrades(DOWNGRADE_SINCE) > 0


def test_persist_episodes_write_zeroes_from_their_seed_on():
    """From ZEROES_SINCE on, the persistent-bitmap episodes write zeroes now and then (a stream of their own): the
    zero clusters a downgrade expands."""
    from bitlab.conformance.gen_persist import ZEROES_SINCE
    from bitlab.conformance.generator import random_scenario

    def zeroes(seed: int) -> int:
        return sum(step.get("zero", {}).get("node") == "pp" for i in range(120)
                   for step in random_scenario(seed, i)["steps"])

    assert zeroes(ZEROES_SINCE - 1) == 0 and zeroes(ZEROES_SINCE) > 0
