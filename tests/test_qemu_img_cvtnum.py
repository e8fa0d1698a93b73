"""qemu-img's cvtnum for every size argument that takes it (create's size, map's --start-offset and --max-length,
convert -S, bitmap -g, measure --size): what does not parse gets the suffix help, a size of 2^64 or more the
range, as QEMU 7.2 reports them (measured with qemu-img 7.2.22)."""

from __future__ import annotations

import pytest

from bitlab import Machine
from bitlab.qemu_img import QemuImgError
from tests.both import on_both

HELP = ("qemu-img: Invalid {} specified. You may use k, M, G, T, P or E suffixes for\n"
        "qemu-img: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.")
RANGE = "qemu-img: Invalid {} specified. Must be between 0 and 9223372036854775807."
CASES = {  # name in the message, then the command with SIZE where the size goes
    "image size": ["create", "-f", "raw", "x.img", "SIZE"],
    "start offset": ["map", "--start-offset=SIZE", "y.qcow2"],
    "max length": ["map", "--max-length", "SIZE", "y.qcow2"],
    "buffer size for sparse output": ["convert", "-S", "SIZE", "y.qcow2", "z.img"],
    "granularity": ["bitmap", "--add", "-g", "SIZE", "y.qcow2", "b"],
}
SIZES = {"8E": RANGE, "16E": RANGE, "99999999999999999999": RANGE, "x": HELP, "1.5": HELP}


def story(vm: Machine) -> dict:
    vm.qemu_img("create", "-q", "-f", "qcow2", "y.qcow2", "1M")
    out = {}
    for name, argv in CASES.items():
        for size in SIZES:
            try:
                vm.qemu_img(*[arg.replace("SIZE", size) for arg in argv])
                out[(name, size)] = "accepted"
            except QemuImgError as err:
                out[(name, size)] = str(err)
    return out


def test_cvtnum_texts() -> None:
    got = story(Machine())
    for name in CASES:
        for size, text in SIZES.items():
            assert got[(name, size)] == text.format(name)


@pytest.mark.qemu
def test_cvtnum_texts_on_qemu() -> None:
    real, sim = on_both(story)
    assert sim == real
