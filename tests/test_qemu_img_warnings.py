"""What qemu-img 7.2 warns on its way, on stderr, whether it then succeeds (:class:`bitlab.QemuImgOutput`'s
``stderr``) or fails (:class:`bitlab.QemuImgError`'s, before the error): here a raw image whose format was probed,
opened to write (raw_open's warning), and not when it is only read or its format given."""

from __future__ import annotations

import pytest

from bitlab import Machine, QemuImgError

from .both import on_both

PROBED = ("WARNING: Image format was not specified for 'r.img' and probing guessed raw.\n         Automatically "
          "detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n"
          "         Specify the 'raw' format explicitly to remove the restrictions.\n")
CASES = [("resize", "r.img", "2M"), ("resize", "-f", "raw", "r.img", "3M"), ("resize", "-q", "r.img", "4M"),
         ("check", "r.img"), ("check", "-r", "leaks", "r.img"), ("check", "-f", "raw", "-r", "all", "r.img"),
         ("info", "r.img"), ("map", "r.img")]


def _story(vm: Machine) -> list:
    vm.qemu_img("create", "-q", "-f", "raw", "r.img", "1M")
    out = []
    for args in CASES:
        try:
            said = vm.qemu_img(*args)
            out.append((0, said.stderr))
        except QemuImgError as err:
            out.append((err.returncode, err.stderr))
    return out


def test_texts() -> None:
    unsupported = "qemu-img: This image format does not support checks\n"
    assert _story(Machine()) == [(0, PROBED), (0, ""), (0, PROBED), (63, unsupported), (63, PROBED + unsupported),
                                 (63, unsupported), (0, ""), (0, "")]


@pytest.mark.qemu
def test_matches_qemu() -> None:
    real, sim = on_both(_story)
    assert sim == real
