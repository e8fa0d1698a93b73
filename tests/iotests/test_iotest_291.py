"""QEMU 7.2's iotest 291 (qemu-img bitmap, convert --bitmaps, merging bitmaps across a backing chain), which
tests/qemu-img-bitmaps repeats.

Ported, each qemu-img and qemu-io step compared with qemu-img 7.2's output (qemu-io's timing line filtered
as _filter_qemu_io does, qemu-img info's disk size as the host's): two bitmaps on a backing image and three on
its overlay made, cleared, disabled and enabled offline around guest writes; convert --bitmaps into raw
(refused) and qcow2 (only the top layer's bitmaps); a bitmap merged in from the backing file (``-b``),
another removed through ``--image-opts``; ``rebase -u`` and a merge from the overlay into its own backing
file (both opened without their backing files, so no lock conflict). 291 then reads each bitmap through
qemu-nbd's ``x-dirty-bitmap`` map; bitlab has no NBD clients, so the port opens the image and compares each
bitmap's dirty ranges and SHA-256 instead (on real QEMU read through bitlab's NBD client).

Then tests/qemu-img-bitmaps' last part: the image left open read-write by a crash (``qemu-io -c abort``; here
the machine's restart without a clean quit), so its bitmaps are in use; a bitmap added and one removed
offline, and convert --bitmaps refused for the inconsistent ones, then with --skip-broken-bitmaps (whose
warnings on stderr bitlab's ``qemu_img`` does not return on success).
"""

from __future__ import annotations

import re

import pytest

from bitlab import Machine
from tests.both import on_both
from tests.imgrun import img as _img

TIMING = re.compile(r"\n[^\n]* ops; [^\n]*\n")



def _io(vm, filename: str, command: str) -> str:
    """qemu-io -c COMMAND -f qcow2 FILENAME, as the monitor's qemu-io on the image opened for it."""
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "io", "file": {"driver": "file", "filename": filename}})
    out = vm.qemu_io("io", command)
    vm.qmp("blockdev-del", {"node-name": "io"})
    return TIMING.sub("\n", out)


def story(vm) -> list:
    out = [_img(vm, "create", "-f", "qcow2", "t.base", "10M"),
           _img(vm, "bitmap", "--add", "-f", "qcow2", "t.base", "b0"),
           _io(vm, "t.base", "w 3M 1M"),
           _img(vm, "create", "-f", "qcow2", "-b", "t.base", "-F", "qcow2", "t.orig", "10M"),
           _io(vm, "t.orig", "w 0 1M"),
           _img(vm, "bitmap", "--add", "-g", "512k", "-f", "qcow2", "t.orig", "b1"),
           _img(vm, "bitmap", "--add", "--disable", "-f", "qcow2", "t.orig", "b2"),
           _io(vm, "t.orig", "w 3M 1M"),
           _img(vm, "bitmap", "--clear", "-f", "qcow2", "t.orig", "b1"),
           _io(vm, "t.orig", "w 1M 1M"),
           _img(vm, "bitmap", "--disable", "-f", "qcow2", "t.orig", "b1"),
           _img(vm, "bitmap", "--enable", "-f", "qcow2", "t.orig", "b2"),
           _io(vm, "t.orig", "w 2M 1M"),
           "=== Bitmap preservation not possible to non-qcow2 ===",
           _img(vm, "convert", "--bitmaps", "-O", "raw", "t.orig", "t"),
           "=== Convert with bitmap preservation ===",
           _img(vm, "convert", "--bitmaps", "-O", "qcow2", "t.orig", "t"),
           _img(vm, "info", "t"),
           _img(vm, "bitmap", "--add", "--disable", "-f", "qcow2", "t", "b0"),
           _img(vm, "bitmap", "--add", "--merge", "b0", "-b", "t.base", "-F", "qcow2", "-f", "qcow2", "t", "tmp"),
           _img(vm, "bitmap", "--merge", "tmp", "-f", "qcow2", "t", "b0"),
           _img(vm, "bitmap", "--remove", "--image-opts", "driver=qcow2,file.driver=file,file.filename=t", "tmp"),
           _img(vm, "info", "t"),
           "=== Merge from top layer into backing image ===",
           _img(vm, "rebase", "-u", "-F", "qcow2", "-b", "t.base", "t"),
           _img(vm, "bitmap", "--add", "--merge", "b2", "-b", "t", "-F", "qcow2", "-f", "qcow2", "t.base", "b3"),
           _img(vm, "info", "--backing-chain", "t"),
           "=== Check bitmap contents ==="]
    for filename, names in (("t", ("b0", "b1", "b2")), ("t.base", ("b3",))):
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "n", "backing": None,
                                "file": {"driver": "file", "filename": filename}})
        for name in names:
            starts, lengths = vm.dirty_bitmap("n", name).dirty_ranges()
            out.append((name, list(zip(starts.tolist(), lengths.tolist())),
                        vm.qmp("x-debug-block-dirty-bitmap-sha256", {"node": "n", "name": name})["sha256"]))
        vm.qmp("blockdev-del", {"node-name": "n"})
    out.append("=== Check handling of inconsistent bitmap ===")  # (tests/qemu-img-bitmaps goes on so)
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": {"driver": "file", "filename": "t"}})
    vm = vm.restart(clean=False)  # qemu-io -c abort: the image was open read-write, its bitmaps left in use
    out += [_img(vm, "bitmap", "--add", "t", "b4"), _img(vm, "bitmap", "--remove", "t", "b1"), _img(vm, "info", "t"),
            _img(vm, "convert", "--bitmaps", "-O", "qcow2", "t", "t.copy"), _img(vm, "info", "t.copy"),
            _img(vm, "convert", "--bitmaps", "--skip-broken-bitmaps", "-O", "qcow2", "t", "t.copy"),
            _img(vm, "info", "t.copy")]
    getattr(vm, "close", lambda: None)()
    return out


def test_bitlab():
    out = story(Machine())
    assert out[14] == ("err", "qemu-img: Format driver 'raw' does not support bitmaps\n", 1)
    info = out[26][1]
    assert "image: t.base\n" in info and "name: b3\n" in info and "name: tmp\n" not in info
    M = 1 << 20
    # 291.out's maps (the ranges x-dirty-bitmap reports as "data": false): b0 merged from the base, b1 cleared
    # before one write, b2 enabled for the last write only, b3 merged from b2
    assert [(name, ranges) for name, ranges, _ in out[28:32]] == [
        ("b0", [(3 * M, M)]), ("b1", [(M, M)]), ("b2", [(2 * M, M)]), ("b3", [(2 * M, M)])]
    assert out[33:35] == [("ok", ""), ("ok", "")]
    assert "                [0]: in-use\n                [1]: auto\n            name: b2\n" in out[35][1]
    assert out[36] == ("err", "qemu-img: Cannot copy inconsistent bitmap 'b0'\nTry --skip-broken-bitmaps, or use "
                              "'qemu-img bitmap --remove' to delete it\n", 1)
    assert out[37] == ("err", "qemu-img: Could not open 't.copy': Could not open 't.copy': No such file or "
                              "directory\n", 1)
    assert out[38] == ("ok", "") and "name: b4\n" in out[39][1] and "name: b2\n" not in out[39][1]


@pytest.mark.qemu
def test_matches_qemu():
    want, got = on_both(story)
    assert got == want
