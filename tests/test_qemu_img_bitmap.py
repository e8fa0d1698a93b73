"""qemu-img bitmap: img_bitmap's argument handling and texts, its actions as the QMP bitmap commands on the
image opened read-write, and what it leaves stored (qemu-img info, check, and the bitmaps a daemon loads),
against qemu-img 7.2."""


import pytest

from bitlab import Machine
from tests.both import on_both
from tests.imgrun import img as _img

M = 1 << 20
CASES = [["a.qcow2", "x"], ["--add", "a.qcow2"], ["--add", "a.qcow2", "x", "y"],
         ["-g", "4096", "--remove", "a.qcow2", "x"],
         ["-F", "qcow2", "--add", "a.qcow2", "x"], ["-b", "b.qcow2", "--add", "a.qcow2", "x"],
         ["-g", "1000", "--add", "a.qcow2", "x"], ["-g", "-5", "--add", "a.qcow2", "x"],
         ["-g", "1k", "--add", "a.qcow2", "x"], ["-g", "256", "--add", "a.qcow2", "y"],
         ["-g", "4G", "--add", "a.qcow2", "y"], ["-g", "0", "--add", "a.qcow2", "g0"],
         ["-g", "99E", "--add", "a.qcow2", "y"], ["--add", "r.img", "x"], ["--add", "v2.qcow2", "x"],
         ["--add", "a.qcow2", "x"], ["--add", "--add", "a.qcow2", "z"],
         ["--disable", "--enable", "--clear", "--merge", "x", "a.qcow2", "z"], ["--merge", "nope", "a.qcow2", "z"],
         ["--merge", "x", "-b", "b.qcow2", "a.qcow2", "z"], ["--merge", "x", "-b", "nope.qcow2", "a.qcow2", "z"],
         ["--remove", "--remove", "a.qcow2", "z"], ["--add", "a.qcow2", ""], ["--bogus", "a.qcow2", "x"],
         ["--merge"], ["--add", "nope.qcow2", "q"], ["--clear", "a.qcow2", "nope"],
         ["--add", "-b", "a.qcow2", "--merge=x", "b.qcow2", "m"], ["--disable", "b.qcow2", "m"],
         ["-g", "2M", "--add", "b.qcow2", "big"], ["--merge", "m", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2", "x"],
         ["-f", "qcow2", "--add", "-g512", "a.qcow2", "s"], ["--add", "used.qcow2", "u"]]





def _story(vm) -> list:
    for name in ("a.qcow2", "b.qcow2", "used.qcow2"):
        vm.qemu_img("create", "-f", "qcow2", name, str(8 * M))
    vm.qemu_img("create", "-f", "raw", "r.img", str(M))
    vm.qemu_img("create", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", str(M))
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "u", "file": {"driver": "file", "filename": "used.qcow2"}})
    vm.write("u", 0, 65536)
    out = [(case, _img(vm, "bitmap", *case)) for case in CASES]
    for name in ("a.qcow2", "b.qcow2"):
        out += [_img(vm, "info", name), _img(vm, "check", name)]
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "a", "file": {"driver": "file", "filename": "a.qcow2"}})
    vm.write("a", M, 4096)
    out.append([(b["name"], b["count"], b["recording"], b["granularity"], b["persistent"])
                for n in vm.qmp("query-named-block-nodes", {"flat": True}) if n["node-name"] == "a"
                for b in n.get("dirty-bitmaps", [])])
    return out


def test_texts():
    got = dict((" ".join(case), result) for case, result in _story(Machine())[:len(CASES)])
    assert got["a.qcow2 x"] == ("err", "qemu-img: Need at least one of --add, --remove, --clear, --enable, "
                                       "--disable, or --merge\n", 1)
    assert got["--add a.qcow2"] == ("err", "qemu-img: Expecting filename and bitmap name\n", 1)
    assert got["-g 4096 --remove a.qcow2 x"] == ("err", "qemu-img: granularity only supported with --add\n", 1)
    assert got["-F qcow2 --add a.qcow2 x"] == ("err", "qemu-img: -F only supported with -b\n", 1)
    assert got["-b b.qcow2 --add a.qcow2 x"] == (
        "err", "qemu-img: Merge bitmap source file only supported with --merge\n", 1)
    assert got["-g 1000 --add a.qcow2 x"] == (
        "err", "qemu-img: Operation add on bitmap x failed: Granularity must be power of 2 and at least 512\n", 1)
    assert got["-g 4G --add a.qcow2 y"] == got["-g 1000 --add a.qcow2 x"][:1] + (
        "qemu-img: Operation add on bitmap y failed: Granularity must be power of 2 and at least 512\n", 1)
    assert got["-g -5 --add a.qcow2 x"] == ("err", "qemu-img: Invalid granularity specified. You may use k, M, G, T, "
                                                   "P or E suffixes for\nqemu-img: kilobytes, megabytes, gigabytes, "
                                                   "terabytes, petabytes and exabytes.\n", 1)
    assert got["-g 1k --add a.qcow2 x"] == ("ok", "")
    assert got["--add a.qcow2 x"] == (
        "err", "qemu-img: Operation add on bitmap x failed: Bitmap already exists: x\n", 1)
    assert got["--add --add a.qcow2 z"] == (
        "err", "qemu-img: Operation add on bitmap z failed: Bitmap already exists: z\n", 1)
    assert got["--remove --remove a.qcow2 z"] == (  # the first --add of z above was stored, the first remove too
        "err", "qemu-img: Operation remove on bitmap z failed: Dirty bitmap 'z' not found\n", 1)
    assert got["--add v2.qcow2 x"][1].endswith(": Cannot store dirty bitmaps in qcow2 v2 files\n")
    assert got["--merge"] == ("err", "qemu-img: missing argument for option '--merge'\n"
                                     "Try 'qemu-img --help' for more information\n", 1)
    assert got["--add used.qcow2 u"][1].startswith(
        "qemu-img: Could not open 'used.qcow2': Failed to get \"write\" lock")


def test_stored():
    out = _story(Machine())
    info_a = out[len(CASES)][1]
    assert "name: x\n            granularity: 1024\n" in info_a  # (merged from b's disabled m: still enabled)
    assert "name: s\n            granularity: 512\n" in info_a and "name: z" not in info_a
    assert out[-1] == [("s", 4096, True, 512, True), ("g0", 65536, True, 65536, True), ("x", 4096, True, 1024, True)]


@pytest.mark.qemu
def test_matches_qemu_img():
    want, got = on_both(_story)
    assert got == want


CONVERT = [["--bitmaps", "-O", "qcow2", "src.qcow2", "c1.qcow2"], ["--skip-broken-bitmaps", "-O", "qcow2", "src.qcow2",
                                                                   "c2.qcow2"],
           ["--bitmaps", "-O", "raw", "src.qcow2", "c3.raw"], ["--bitmaps", "-O", "qcow2", "r.img", "c4.qcow2"],
           ["--bitmaps", "-O", "qcow2", "-o", "cluster_size=4096", "src.qcow2", "c5.qcow2"],
           ["--bitmaps", "-O", "qcow2", "broken.qcow2", "c6.qcow2"],
           ["--bitmaps", "--skip-broken-bitmaps", "-O", "qcow2", "broken.qcow2", "c7.qcow2"]]


def _convert_story(vm) -> list:
    """convert --bitmaps: the source's persistent bitmaps (bits, granularity, enabled or not) in the new image."""
    node = {"driver": "qcow2", "node-name": "s", "file": {"driver": "file", "filename": "src.qcow2"}}
    vm.qemu_img("create", "-f", "qcow2", "src.qcow2", str(8 * M))
    vm.qemu_img("create", "-f", "raw", "r.img", str(M))
    vm.qmp("blockdev-add", node)
    vm.qmp("block-dirty-bitmap-add", {"node": "s", "name": "a", "persistent": True, "granularity": 512})
    vm.qmp("block-dirty-bitmap-add", {"node": "s", "name": "b", "persistent": True})
    vm.write("s", M, 3 * 65536)
    vm.qmp("block-dirty-bitmap-disable", {"node": "s", "name": "b"})
    vm.qmp("block-dirty-bitmap-add", {"node": "s", "name": "c", "persistent": True, "granularity": 1 << 20})
    vm.write("s", 5 * M, 4096)
    vm.qmp("blockdev-del", {"node-name": "s"})
    vm.qemu_img("create", "-f", "qcow2", "broken.qcow2", str(M))
    vm.qemu_img("bitmap", "--add", "broken.qcow2", "ok")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "k",
                            "file": {"driver": "file", "filename": "broken.qcow2"}})
    vm.qmp("block-dirty-bitmap-add", {"node": "k", "name": "left", "persistent": True})
    vm = vm.restart(clean=False)  # 'ok' was loaded (in use): inconsistent from now on; 'left' never stored
    out: list = [(case, _img(vm, "convert", *case)) for case in CONVERT]
    for name in ("c1.qcow2", "c5.qcow2", "c7.qcow2"):
        out += [_img(vm, "info", name), _img(vm, "check", name)]
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "c", "file": {"driver": "file", "filename": "c1.qcow2"}})
    out += [vm.qmp("x-debug-block-dirty-bitmap-sha256", {"node": "c", "name": name}) for name in "abc"]
    getattr(vm, "close", lambda: None)()
    return out


def test_convert_bitmaps():
    out = _convert_story(Machine())
    got = dict((" ".join(case), result) for case, result in out[:len(CONVERT)])
    assert got["--bitmaps -O qcow2 src.qcow2 c1.qcow2"] == ("ok", "")
    assert got["--skip-broken-bitmaps -O qcow2 src.qcow2 c2.qcow2"] == (
        "err", "qemu-img: Use of --skip-broken-bitmaps requires --bitmaps\n", 1)
    assert got["--bitmaps -O raw src.qcow2 c3.raw"] == (
        "err", "qemu-img: Format driver 'raw' does not support bitmaps\n", 1)
    assert got["--bitmaps -O qcow2 broken.qcow2 c6.qcow2"] == (
        "err", "qemu-img: Cannot copy inconsistent bitmap 'ok'\n"
               "Try --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it\n", 1)
    info = out[len(CONVERT)][1]
    assert info.index("name: c\n") < info.index("name: b\n") < info.index("name: a\n")  # (the source's order)
    assert "flags:\n            name: b\n" in info  # (disabled: no 'auto')
    assert "bitmaps" not in out[len(CONVERT) + 4][1]  # c7: the inconsistent one skipped


@pytest.mark.qemu
def test_convert_bitmaps_match_qemu_img():
    want, got = on_both(_convert_story)
    assert got == want



def _commit_story(vm) -> list:
    """qemu-img commit over images with persistent bitmaps: the base (back to read-only after the job) and the
    top (closed) store theirs anew, so their new tables and directories come after what they hold."""
    out = []
    for flags in ([], ["-d"]):
        vm.qemu_img("create", "-f", "qcow2", "b.qcow2", str(8 * M))
        vm.qemu_img("bitmap", "--add", "b.qcow2", "x")
        vm.qemu_img("create", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2")
        vm.qemu_img("bitmap", "--add", "-g", "512", "t.qcow2", "tx")
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "t", "file": {"driver": "file", "filename": "t.qcow2"}})
        vm.write("t", M, M)
        vm.qmp("blockdev-del", {"node-name": "t"})
        out.append(_img(vm, "commit", *flags, "t.qcow2"))
        out += [_img(vm, verb, name) for name in ("b.qcow2", "t.qcow2") for verb in ("check", "info")]
    return out


def test_commit_stores_bitmaps_anew():
    out = _commit_story(Machine())
    assert out[0] == ("ok", "Image committed.\n")
    assert out[1] == ("ok", "No errors were found on the image.\n16/128 = 12.50% allocated, 0.00% fragmented, "
                            "0.00% compressed clusters\nImage end offset: 1703936\n")


@pytest.mark.qemu
def test_commit_bitmaps_match_qemu_img():
    want, got = on_both(_commit_story)
    assert got == want


def _no_backing_story(vm) -> list:
    """img_bitmap opens the image and the ``-b`` source with BDRV_O_NO_BACKING: a missing backing file does
    not matter, and a source whose backing file is the image itself takes no lock on it."""
    vm.qemu_img("create", "-f", "qcow2", "b.qcow2", str(8 * M))
    vm.qemu_img("bitmap", "--add", "b.qcow2", "b0")
    vm.qemu_img("create", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2", str(8 * M))
    vm.qemu_img("create", "-u", "-f", "qcow2", "-b", "gone.qcow2", "-F", "qcow2", "m.qcow2", str(8 * M))
    out = [_img(vm, "bitmap", "--add", "t.qcow2", "t0"),
           _img(vm, "bitmap", "--add", "--merge", "t0", "-b", "t.qcow2", "-F", "qcow2", "-f", "qcow2", "b.qcow2", "b1"),
           _img(vm, "bitmap", "--add", "m.qcow2", "m0"),
           _img(vm, "bitmap", "--add", "--merge", "m0", "-b", "m.qcow2", "b.qcow2", "b2"),
           _img(vm, "bitmap", "--merge", "b0", "-b", "b.qcow2", "m.qcow2", "m0")]
    return out + [_img(vm, "info", name) for name in ("b.qcow2", "m.qcow2")]


def test_opens_without_backing():
    out = _no_backing_story(Machine())
    assert out[:5] == [("ok", "")] * 5
    assert "name: b1\n" in out[5][1] and "name: b2\n" in out[5][1]
    assert "name: m0\n" in out[6][1]


@pytest.mark.qemu
def test_opens_without_backing_match_qemu_img():
    want, got = on_both(_no_backing_story)
    assert got == want
