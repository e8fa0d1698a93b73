"""qemu-img convert -S: 0 writes every byte (a fully allocated qcow2 output), other sizes are checked as
qemu-img 7.2 checks them."""

import pytest

from bitlab import Machine, QemuImgError
from tests.both import on_both


def _img(vm, *args):
    try:
        return ("ok", vm.qemu_img(*args))
    except QemuImgError as err:
        return ("err", err.stderr)


def _story(vm) -> list:
    vm.qemu_img("create", "-f", "qcow2", "s.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "s", "file": {"driver": "file", "filename": "s.qcow2"}})
    vm.qemu_io("s", "write -P 1 64k 4k")
    vm.qemu_io("s", "write -z 256k 64k")
    vm.qmp("blockdev-del", {"node-name": "s"})
    return [_img(vm, "convert", "-S", "0", "-O", "qcow2", "s.qcow2", "o0.qcow2"),
            _img(vm, "map", "--output=json", "o0.qcow2"),
            _img(vm, "check", "o0.qcow2"), _img(vm, "convert", "-S", "1000", "-O", "qcow2", "s.qcow2", "o1.qcow2"),
            _img(vm, "convert", "-S", "8k", "-O", "qcow2", "s.qcow2", "o2.qcow2"),
            _img(vm, "map", "--output=json", "o2.qcow2"),
            _img(vm, "convert", "-S", "x", "-O", "qcow2", "s.qcow2", "o4.qcow2"),
            _img(vm, "convert", "-S", "32M", "-O", "qcow2", "s.qcow2", "o5.qcow2")]


def test_texts_and_a_fully_allocated_output():
    got = _story(Machine())
    assert got[1] == ("ok", '[{ "start": 0, "length": 1048576, "depth": 0, "present": true, "zero": false, '
                            '"data": true, "offset": 327680}]\n')
    assert got[3] == got[7] == ("err", "qemu-img: Invalid buffer size for sparse output specified. Valid sizes are "
                                       "multiples of 512 up to 16777216. Select 0 to disable sparse detection (fully "
                                       "allocates output).\n")
    assert got[6][1].startswith("qemu-img: Invalid buffer size for sparse output specified. You may use k, M, G")
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "s.qcow2", "1M")
    with pytest.raises(QemuImgError, match="does not simulate a fully allocated raw output"):
        vm.qemu_img("convert", "-S", "0", "-O", "raw", "s.qcow2", "o.raw")


@pytest.mark.qemu
def test_matches_qemu_img():
    want, got = on_both(_story)
    assert got == want
