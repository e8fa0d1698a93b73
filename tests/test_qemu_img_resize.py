"""qemu-img resize: img_resize's argument handling and texts, then the same truncate as block_resize
(tests/test_block_resize.py), against qemu-img 7.2."""

import json
import re

import pytest

from bitlab import Machine, QemuImgError
from tests.both import on_both

CASES = [["r1.qcow2", "+1M"], ["r1.qcow2", "65M"], ["r1.qcow2", "32M"], ["--shrink", "r1.qcow2", "32M"],
         ["r1.qcow2", "-1M"], ["--shrink", "r1.qcow2", "-1M"], ["r1.qcow2", "1000"], ["r1.qcow2"],
         ["r1.qcow2", "0"], ["--shrink", "r1.qcow2", "0"], ["r1.qcow2", "abc"], ["r1.qcow2", "-abc"],
         ["r1.raw", "2M"], ["r1.raw", "1000"], ["--shrink", "r1.raw", "1000"], ["-f", "qcow2", "r1.raw", "1M"],
         ["nope.qcow2", "1M"], ["-q", "r1.qcow2", "70M"], ["--preallocation=xyz", "r1.qcow2", "80M"],
         ["r1.qcow2", "8E"], ["r1.qcow2", "-100M"], ["ov.qcow2", "64M"], ["r1.qcow2", "1G"],
         ["r1.qcow2", "1000000000000000T"], ["used.qcow2", "2M"]]
HOST = re.compile(r'"actual-size": \d+')  # what the host file system allocates


def _img(vm, *args):
    try:
        out = vm.qemu_img(*args)
        return ("ok", str(out), out.stderr)  # (a success's warnings too)
    except QemuImgError as err:
        return ("err", err.stderr, err.returncode)


def _story(vm) -> list:
    for args in (["r1.qcow2", "64M"], ["base.qcow2", "64M"], ["used.qcow2", "1M"]):
        vm.qemu_img("create", "-f", "qcow2", *args)
    vm.qemu_img("create", "-f", "raw", "r1.raw", "1M")
    vm.qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "ov.qcow2", "32M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "u", "file": {"driver": "file", "filename": "used.qcow2"}})
    out = [(case, _img(vm, "resize", *case)) for case in CASES]
    for name in ("r1.qcow2", "ov.qcow2"):
        out += [HOST.sub('"actual-size": 0', _img(vm, "info", "--output=json", name)[1]),
                _img(vm, "map", "--output=json", name), _img(vm, "check", name)]
    return out


def test_texts():
    got = dict((json.dumps(case), result) for case, result in _story(Machine())[:len(CASES)])
    assert got[json.dumps(["r1.qcow2", "+1M"])] == ("ok", "Image resized.\n", "")
    assert got[json.dumps(["r1.raw", "2M"])] == ("ok", "Image resized.\n", (  # (a raw image probed, opened to write)
        "WARNING: Image format was not specified for 'r1.raw' and probing guessed raw.\n         Automatically "
        "detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n"
        "         Specify the 'raw' format explicitly to remove the restrictions.\n"))
    assert got[json.dumps(["r1.qcow2", "32M"])] == ("err", (
        "qemu-img: Use the --shrink option to perform a shrink operation.\n"
        "qemu-img: warning: Shrinking an image will delete all data beyond the shrunken image's end. Before "
        "performing such an operation, make sure there is no important data there.\n"), 1)
    assert got[json.dumps(["r1.qcow2", "1000"])][1].startswith("qemu-img: Use the --shrink option")
    assert got[json.dumps(["r1.qcow2", "0"])] == ("err", "qemu-img: New image size must be positive\n", 1)
    assert got[json.dumps(["r1.qcow2", "8E"])] == got[json.dumps(["r1.qcow2", "0"])]  # (int64: negative)
    assert got[json.dumps(["r1.qcow2"])] == ("err", "qemu-img: Not enough arguments\n"
                                                    "Try 'qemu-img --help' for more information\n", 1)
    assert got[json.dumps(["r1.qcow2", "1000000000000000T"])] == (
        "err", "qemu-img: Value '1000000000000000T' is out of range for parameter 'size'\n", 1)
    assert got[json.dumps(["--preallocation=xyz", "r1.qcow2", "80M"])] == (
        "err", "qemu-img: Invalid preallocation mode 'xyz'\n", 1)
    assert got[json.dumps(["-q", "r1.qcow2", "70M"])] == ("ok", "", "")
    assert got[json.dumps(["used.qcow2", "2M"])][1].startswith('qemu-img: Could not open \'used.qcow2\': Failed to '
                                                               'get "write" lock')


@pytest.mark.qemu
def test_matches_qemu_img():
    want, got = on_both(_story)
    assert got == want
