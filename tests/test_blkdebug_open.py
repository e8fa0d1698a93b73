"""What a qcow2 node reads from its file as it opens (qcow2_do_open), as a blkdebug rule armed by ``reftable_load``
sees it: after the refcount table, each header extension's 8-byte header (the data of the backing format's and of
the bitmaps extension), then the backing file's name. A ``sector`` rule matches where that sector is in the request,
which blkdebug's ``align`` pads to whole blocks: QEMU's error text names the read that failed."""

from __future__ import annotations

import pytest

from bitlab import Machine, QMPError
from tests.both import on_both

# (image: plain / with a backing file / v2 with one / with a stored bitmap, align, sector of the rule)
CASES = [("plain", 4096, 0), ("plain", 512, 0), ("plain", 512, 1), ("plain", 0, 0), ("backing", 4096, 0),
         ("backing", 512, 1), ("backing", 0, 1), ("v2", 512, 0), ("bitmap", 512, 1), ("bitmap", 512, 0),
         ("plain", 4096, 128)]


def open_story(vm: Machine) -> dict:
    """For each case, a new image, then a qcow2 node over blkdebug over its file: the blockdev-add's answer."""
    vm.qemu_img("create", "-f", "qcow2", "base.qcow2", "1M")
    out = {}
    for i, (kind, align, sector) in enumerate(CASES):
        name = f"i{i}.qcow2"
        opts = ["-o", "compat=0.10"] if kind == "v2" else []
        if kind in ("backing", "v2"):
            opts += ["-b", "base.qcow2", "-F", "qcow2"]
        vm.qemu_img("create", "-f", "qcow2", *opts, name, "1M")
        if kind == "bitmap":
            vm.qemu_img("bitmap", "--add", name, "bm0")
        blk = {"driver": "blkdebug", "image": {"driver": "file", "filename": name},
               "inject-error": [{"event": "reftable_load", "errno": 5, "sector": sector}]}
        if align:
            blk["align"] = align
        try:
            vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": f"n{i}", "file": blk, "backing": None})
            out[f"{kind} align={align} sector={sector}"] = "opened"
            vm.qmp("blockdev-del", {"node-name": f"n{i}"})
        except QMPError as err:
            out[f"{kind} align={align} sector={sector}"] = err.desc
    return out


EIO = "Input/output error"


def test_open_reads_exact() -> None:
    assert open_story(Machine()) == {
        "plain align=4096 sector=0": f"qcow2_read_extension: ERROR: pread fail from offset 112: {EIO}",
        "plain align=512 sector=0": f"qcow2_read_extension: ERROR: pread fail from offset 112: {EIO}",
        "plain align=512 sector=1": "opened",  # the end marker, 504 to 512, stays in the first block
        "plain align=0 sector=0": "opened",  # nothing read from byte 0 after the refcount table
        "backing align=4096 sector=0": f"qcow2_read_extension: ERROR: pread fail from offset 112: {EIO}",
        "backing align=512 sector=1": f"qcow2_read_extension: ERROR: pread fail from offset 520: {EIO}",
        "backing align=0 sector=1": "opened",  # the name is read from 528
        "v2 align=512 sector=0": f"qcow2_read_extension: ERROR: pread fail from offset 72: {EIO}",
        "bitmap align=512 sector=1": f"bitmaps_ext: Could not read ext header: {EIO}",  # its data at 512
        "bitmap align=512 sector=0": f"qcow2_read_extension: ERROR: pread fail from offset 112: {EIO}",
        "plain align=4096 sector=128": f"Could not initialize refcount handling: {EIO}",  # the refcount table
    }


@pytest.mark.qemu
def test_open_reads_match_qemu() -> None:
    real, sim = on_both(open_story)
    assert real == sim
