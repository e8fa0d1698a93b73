"""A format QEMU 7.2 has no driver for is unknown to it (bdrv_find_format), in each tool's words; a format QEMU
knows but bitlab does not simulate is refused as such."""

from __future__ import annotations

import pytest

from bitlab import Machine, QemuImgError

from .both import on_both

UNKNOWN = [("create", "-f", "spaghetti-noodles", "x.img", "1M"), ("info", "-f", "spaghetti", "s.qcow2"),
           ("info", "-f", "spaghetti", "nothing.img"), ("map", "-f", "spaghetti", "s.qcow2"),
           ("convert", "-O", "spaghetti", "s.qcow2", "o.x"), ("check", "-f", "spaghetti", "s.qcow2"),
           ("check", "-f", "raw", "s.qcow2"), ("check", "-f", "qcow2", "r.raw"), ("map", "-f", "spaghetti", "no.img")]


def _story(vm: Machine) -> list:
    vm.qemu_img("create", "-f", "qcow2", "s.qcow2", "1M")
    vm.qemu_img("create", "-f", "raw", "r.raw", "1M")
    out = []
    for args in UNKNOWN:
        try:
            vm.qemu_img(*args)
            out.append(None)
        except QemuImgError as err:
            out.append((err.stderr, err.returncode))
    return out


def test_unknown_formats_simulated() -> None:
    assert _story(Machine()) == [
        ("qemu-img: x.img: Unknown file format 'spaghetti-noodles'\n", 1),
        ("qemu-img: Could not open 's.qcow2': Unknown driver 'spaghetti'\n", 1),
        ("qemu-img: Could not open 'nothing.img': Unknown driver 'spaghetti'\n", 1),
        ("qemu-img: Could not open 's.qcow2': Unknown driver 'spaghetti'\n", 1),
        ("qemu-img: Unknown file format 'spaghetti'\n", 1),
        ("qemu-img: Could not open 's.qcow2': Unknown driver 'spaghetti'\n", 1),
        ("qemu-img: This image format does not support checks\n", 63),
        ("qemu-img: Could not open 'r.raw': Image is not in qcow2 format\n", 1),
        ("qemu-img: Could not open 'no.img': Unknown driver 'spaghetti'\n", 1)]


def test_known_but_not_simulated() -> None:
    """Making an image of such a format, or opening one with a driver that would open it (the texts of those that
    turn the file down: tests/conformance/test_foreign_formats.py)."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "s.qcow2", "1M")
    for fmt, args in (("vmdk", ("create", "-f", "vmdk", "v.vmdk", "1M")), ("file", ("info", "-f", "file", "s.qcow2")),
                      ("preallocate", ("map", "-f", "preallocate", "s.qcow2"))):
        with pytest.raises(QemuImgError, match=f"bitlab does not simulate the image format '{fmt}'"):
            vm.qemu_img(*args)


@pytest.mark.qemu
def test_unknown_formats_on_both() -> None:
    real, sim = on_both(_story)
    assert sim == real
