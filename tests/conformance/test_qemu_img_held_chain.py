"""qemu-img on a chain while a running QEMU holds one of its images (the top or the backing file, read-write or
read-only): qemu-img opens the backing files read-only, sharing no writes (bdrv_default_perms_for_cow), so a base a
running QEMU writes to fails every command that opens the chain without ``-U`` (``Could not open backing file:
Failed to get shared "write" lock`` / ``Is another process using the image [base.qcow2]?``), ``rebase -U`` too
(its ``-U`` is for the new backing file only); ``-U`` reads share it. Compared with qemu-storage-daemon."""

from __future__ import annotations

import re
import shlex

import pytest

from bitlab import Machine, QemuImgError

AUTO = re.compile(r"#block\d+")
DISK = re.compile(r"disk size: .*|\"actual-size\": \d+")
SETUP = ["create -q -f qcow2 base.qcow2 4M", "create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 4M",
         "create -q -f qcow2 plain.qcow2 4M"]


def _file(name: str) -> dict:
    return {"driver": "file", "filename": name}


HOLDS = {
    "top-rw": [{"driver": "qcow2", "node-name": "n", "file": _file("top.qcow2")}],
    "top-ro": [{"driver": "qcow2", "node-name": "n", "read-only": True, "file": _file("top.qcow2")}],
    "base-rw": [{"driver": "qcow2", "node-name": "n", "file": _file("base.qcow2")}],
    "base-rw-below-a-top": [{"driver": "qcow2", "node-name": "n", "backing": None, "file": _file("top.qcow2")},
                            {"driver": "qcow2", "node-name": "b", "file": _file("base.qcow2")}],
}
READS = ["info top.qcow2", "info -U --backing-chain top.qcow2", "check top.qcow2", "check -U top.qcow2",
         "check base.qcow2", "map top.qcow2", "map -U top.qcow2", "compare -U top.qcow2 base.qcow2",
         "compare top.qcow2 plain.qcow2", "convert -U -O qcow2 top.qcow2 o.qcow2", "convert -O qcow2 top.qcow2 o.qcow2",
         "measure -U top.qcow2", "create -q -f qcow2 -b top.qcow2 -F qcow2 n.qcow2",
         "create -q -f qcow2 -b base.qcow2 -F qcow2 n.qcow2"]
WRITES = ["commit top.qcow2", "rebase -u -b plain.qcow2 -F qcow2 top.qcow2", "rebase -b plain.qcow2 -F qcow2 top.qcow2",
          "rebase -U -b plain.qcow2 -F qcow2 top.qcow2", "resize top.qcow2 8M", "resize base.qcow2 8M",
          "amend -o compat=0.10 top.qcow2", "bitmap --add top.qcow2 x", "bitmap --add base.qcow2 x",
          "check -r leaks base.qcow2"]


def _img(vm: Machine, line: str) -> tuple[int, str, str]:
    try:
        out = vm.qemu_img(*shlex.split(line))
        return 0, DISK.sub("DISK", str(out)), AUTO.sub("#block", out.stderr)
    except QemuImgError as err:
        return err.returncode, DISK.sub("DISK", err.stdout), AUTO.sub("#block", err.stderr)


def held(backend: str, hold: str, commands: list[str]) -> list[tuple[int, str, str]]:
    """The images, QEMU holding ``hold``'s nodes, then ``commands``."""
    vm = Machine(backend=backend)
    try:
        for line in SETUP:
            vm.qemu_img(*shlex.split(line))
        for args in HOLDS[hold]:
            vm.qmp("blockdev-add", args)
        return [_img(vm, line) for line in commands]
    finally:
        getattr(vm, "close", lambda: None)()


LOCKED = ("qemu-img: Could not open 'top.qcow2': Could not open backing file: Failed to get shared \"write\" lock\n"
          "Is another process using the image [base.qcow2]?\n")


def test_a_base_a_running_qemu_writes_to():
    out = dict(zip(READS, held("sim", "base-rw", READS)))
    for line in ("check top.qcow2", "map top.qcow2", "convert -O qcow2 top.qcow2 o.qcow2"):
        assert out[line] == (1, "", LOCKED), line
    assert out["compare top.qcow2 plain.qcow2"] == (2, "", LOCKED)
    assert out["map -U top.qcow2"][0] == out["check -U top.qcow2"][0] == 0
    writes = dict(zip(WRITES, [held("sim", "base-rw", [line])[0] for line in WRITES]))
    for line in ("commit top.qcow2", "rebase -U -b plain.qcow2 -F qcow2 top.qcow2", "resize top.qcow2 8M",
                 "amend -o compat=0.10 top.qcow2"):
        assert writes[line] == (1, "", LOCKED), line
    assert writes["rebase -u -b plain.qcow2 -F qcow2 top.qcow2"] == (0, "", "")  # (the image alone)


@pytest.mark.qemu
@pytest.mark.parametrize("hold", sorted(HOLDS))
def test_matches_qemu(hold):
    assert held("sim", hold, READS) == held("qemu", hold, READS)
    for line in WRITES:  # (each on images of its own)
        assert held("sim", hold, [line]) == held("qemu", hold, [line]), line
