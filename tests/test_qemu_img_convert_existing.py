"""qemu-img convert -n (bitlab/qemu_img/convert.py ``_into_existing``): restoring into an image that exists, as
qemu-img 7.2 does it into a raw file — its checks and texts, the source's data written and its zero stretches
punched as holes, the rest of a larger file kept."""

from __future__ import annotations

import pytest

from bitlab import Machine
from tests.both import on_both
from tests.imgrun import img

M = 1 << 20
CASES = [["-n", "src.qcow2", "nope.raw"], ["-n", "src.qcow2", "small.raw"], ["-n", "-o", "x=1", "nope", "big.raw"],
         ["-n", "-O", "bogus", "src.qcow2", "big.raw"], ["-n", "-c", "src.qcow2", "big.raw"],
         ["-n", "--bitmaps", "src.qcow2", "big.raw"], ["-n", "src.qcow2", "big.raw"]]


def story(vm) -> list:
    vm.qemu_img("create", "-q", "-f", "qcow2", "src.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "s", "file": {"driver": "file", "filename": "src.qcow2"}})
    vm.write("s", 0, "64k", 0x11)
    vm.write("s", "512k", "4k", 0x22)
    vm.write("s", "700k", "10k", 0)
    vm.qmp("blockdev-del", {"node-name": "s"})
    vm.qemu_img("create", "-q", "-f", "raw", "big.raw", "2M")
    vm.qemu_img("create", "-q", "-f", "raw", "small.raw", "512k")
    vm.qmp("blockdev-add", {"driver": "raw", "node-name": "b", "file": {"driver": "file", "filename": "big.raw"}})
    vm.write("b", 0, "2M", 0x55)
    vm.qmp("blockdev-del", {"node-name": "b"})
    out = [img(vm, "convert", *case) for case in CASES]
    out += [img(vm, "map", "--output=json", "-f", "raw", "big.raw"),
            vm.qemu_img("info", "-f", "raw", "big.raw").splitlines()[3],  # disk size: what is not a hole
            img(vm, "compare", "-f", "qcow2", "-F", "raw", "src.qcow2", "big.raw")]
    vm.qmp("blockdev-add", {"driver": "raw", "node-name": "b", "file": {"driver": "file", "filename": "big.raw"}})
    out += [vm.qemu_io("b", cmd).splitlines()[0] for cmd in ("read -P 0x11 0 64k", "read -P 0 64k 448k",
                                                             "read -P 0x22 512k 4k", "read -P 0x55 1M 1M")]
    getattr(vm, "close", lambda: None)()
    return out


def test_simulated() -> None:
    out = story(Machine())
    assert out[:6] == [
        ("err", "qemu-img: Could not open 'nope.raw': Could not open 'nope.raw': No such file or directory\n", 1),
        ("err", "qemu-img: output file is smaller than input file\n", 1),
        ("err", "qemu-img: -o has no effect when skipping image creation\n", 1),
        ("err", "qemu-img: Could not open 'big.raw': Unknown driver 'bogus'\n", 1),
        ("err", "qemu-img: Compression not supported for this file format\n", 1),
        ("err", "qemu-img: Format driver 'raw' does not support bitmaps\n", 1)]
    assert out[6] == ("ok", "")
    assert out[8] == "disk size: 1.07 MiB"  # 64 KiB + 4 KiB of data, 1 MiB kept: the zeroes are holes
    assert out[9] == ("err", "", 1)  # (the larger file's 0x55 past the source: a content mismatch, exit 1)
    assert all(line.startswith("read ") for line in out[10:])


@pytest.mark.qemu
def test_matches_qemu_img() -> None:
    want, got = on_both(story)
    assert got == want
