"""file-posix's locks (bitlab/block/perms.py ``lock_error``): two file nodes on one file, and qemu-img
against the nodes a running QEMU has open, as QEMU 7.2's system emulator answers.

Each file node holds a lock byte for every permission its parents take and for every one they do not
share; taking what another does not share (``Failed to get "write" lock``), or not sharing what another
takes (``Failed to get shared "resize" lock``), fails. A node nobody uses takes nothing, so holds nothing.
On qemu-storage-daemon the real backend's own guest exports write every top node: they stand aside while
a node (or qemu-img) opens a file that is open already.
"""

from __future__ import annotations

import re

import pytest

from bitlab import Machine
from bitlab.qemu_img import QemuImgError

from .both import on_both

F2 = ("blockdev-add", {"driver": "file", "node-name": "f2", "filename": "a.qcow2"})


def blkdebug(image: str, **perms: list[str]) -> tuple[str, dict]:
    return "blockdev-add", {"driver": "blkdebug", "node-name": "b", "image": {"driver": "file", "filename": image},
                            **perms}


def export(node: str, writable: bool) -> tuple[str, dict]:
    return "block-export-add", {"type": "nbd", "id": "e", "node-name": node, "writable": writable}


# (steps after a read-write qcow2 node 'n' on a.qcow2, QEMU's reply to each)
CASES = [
    ([F2, export("f2", True)], ["ok", 'Failed to get "write" lock']),
    ([F2, export("f2", False)], ["ok", 'Failed to get shared "resize" lock']),
    ([blkdebug("a.qcow2", **{"take-child-perms": ["write"]})], ['Failed to get "write" lock']),
    ([blkdebug("a.qcow2", **{"take-child-perms": ["resize"]})], ['Failed to get "resize" lock']),
    ([blkdebug("a.qcow2", **{"take-child-perms": ["consistent-read"]})], ["ok"]),
    ([blkdebug("a.qcow2", **{"unshare-child-perms": ["write"]})], ['Failed to get shared "write" lock']),
    ([blkdebug("c.qcow2", **{"unshare-child-perms": ["write"]}),
      ("blockdev-add", {"driver": "qcow2", "node-name": "q", "file": {"driver": "file", "filename": "c.qcow2"}})],
     ["ok", 'Failed to get "write" lock']),
    ([blkdebug("c.qcow2", **{"unshare-child-perms": ["write"]}),
      ("blockdev-add", {"driver": "qcow2", "node-name": "q", "read-only": True,
                        "file": {"driver": "file", "filename": "c.qcow2", "read-only": True}})], ["ok", "ok"]),
    # a raw node nobody uses takes nothing from its file: it opens beside the qcow2 node
    ([("blockdev-add", {"driver": "raw", "node-name": "r", "file": {"driver": "file", "filename": "a.qcow2"}})],
     ["ok"]),
    ([("blockdev-add", {"driver": "qcow2", "node-name": "q", "file": {"driver": "file", "filename": "a.qcow2"}})],
     ['Failed to get "write" lock']),
    # locking=off: the new node neither tests nor holds a lock
    ([("blockdev-add", {"driver": "qcow2", "node-name": "q",
                        "file": {"driver": "file", "filename": "a.qcow2", "locking": "off"}})], ["ok"]),
]


def _undo(vm: Machine, steps: list) -> None:
    for cmd, args in reversed(steps):
        if cmd == "block-export-add":
            vm.execute({"execute": "block-export-del", "arguments": {"id": "e"}})
            vm.run()
        else:
            vm.execute({"execute": "blockdev-del", "arguments": {"node-name": args["node-name"]}})


def _img(vm: Machine, *args: str) -> str:
    try:
        return vm.qemu_img(*args).splitlines()[0]
    except QemuImgError as err:
        return re.sub(r"\s+", " ", err.stderr.strip())


def story(vm: Machine) -> list:
    for image in ("a.qcow2", "c.qcow2", "d.img"):
        vm.qemu_img("create", "-f", "raw" if image.endswith("img") else "qcow2", image, "64M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": {"driver": "file", "filename": "a.qcow2"}})
    vm.qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "s.sock"}}})
    out = []
    for steps, _ in CASES:
        out.append([vm.execute({"execute": c, "arguments": a}).get("error", {}).get("desc", "ok") for c, a in steps])
        _undo(vm, steps)
    # qemu-img against a running QEMU: a writer, a reader, a node nobody uses, a read-only node
    out.append([_img(vm, "info", "a.qcow2"), _img(vm, "resize", "a.qcow2", "+1M")])
    vm.qmp("blockdev-add", {"driver": "raw", "node-name": "r", "file": {"driver": "file", "filename": "d.img"}})
    out.append([_img(vm, "info", "d.img"), _img(vm, "resize", "-f", "raw", "d.img", "+1M")])
    vm.qmp("block-export-add", {"type": "nbd", "id": "e", "node-name": "r", "writable": False})
    out.append([_img(vm, "info", "d.img"), _img(vm, "resize", "-f", "raw", "d.img", "+1M")])
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "q", "read-only": True,
                            "file": {"driver": "file", "filename": "c.qcow2", "read-only": True}})
    out.append([_img(vm, "info", "c.qcow2"), _img(vm, "resize", "c.qcow2", "+1M")])
    return out


def test_locks_as_qemu():
    got = story(Machine())
    assert got[:len(CASES)] == [replies for _, replies in CASES]
    busy = "qemu-img: Could not open '{0}': Failed to get {1} lock Is another process using the image [{0}]?"
    assert got[len(CASES):] == [
        [busy.format("a.qcow2", 'shared "write"'), busy.format("a.qcow2", '"write"')],
        ["image: d.img", "Image resized."],  # the raw node takes nothing: no lock at all
        ["image: d.img", busy.format("d.img", '"resize"')],  # its read-only export shares no resize
        ["image: c.qcow2", busy.format("c.qcow2", '"write"')],  # a reader: others may read, not write
    ]


@pytest.mark.qemu
@pytest.mark.parametrize("daemon", ["system", "qsd"])
def test_locks_on_real_qemu(daemon):
    real, sim = on_both(story, daemon=daemon)
    assert sim == real


@pytest.mark.parametrize("clean", [True, False])
def test_a_restarted_machine_holds_its_locks(clean):
    """The machine after ``vm.restart()`` is the one qemu-img meets (the one before, gone, held none): its nodes'
    locks refuse a writer as QEMU started again does."""
    vm = Machine(daemon="system")
    vm.qemu_img("create", "-q", "-f", "qcow2", "a.qcow2", "1M")
    vm = vm.restart(clean=clean)
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": {"driver": "file", "filename": "a.qcow2"}})
    with pytest.raises(QemuImgError) as err:
        vm.qemu_img("resize", "a.qcow2", "2M")
    assert err.value.stderr == ("qemu-img: Could not open 'a.qcow2': Failed to get \"write\" lock\n"
                                "Is another process using the image [a.qcow2]?\n")
