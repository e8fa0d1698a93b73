"""Errors opening a backing chain: each level prepends ``Could not open backing file: `` (block.c
bdrv_open_backing_file), for blockdev-add and for qemu-img create's check of its ``-b`` image's chain."""

from __future__ import annotations

import pytest

from bitlab import Machine, QemuImgError
from tests.both import on_both

LOCK = 'Failed to get shared "write" lock'


def _file(name: str) -> dict:
    return {"driver": "file", "filename": name}


def _try(fn, *args):
    try:
        return fn(*args)
    except QemuImgError as err:
        return f"QemuImgError: {err.stderr}"
    except Exception as err:  # noqa: BLE001 - the QMP error's text is what is compared
        return getattr(err, "desc", repr(err))


def story(vm) -> list:
    img = vm.qemu_img
    img("create", "-f", "qcow2", "a.qcow2", "64M")
    img("create", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2")
    img("create", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "c.qcow2")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "a", "file": _file("a.qcow2")})  # a.qcow2 held RW
    out = [_try(vm.qmp, "blockdev-add", {"driver": "qcow2", "node-name": "c", "file": _file("c.qcow2")}),
           _try(vm.qmp, "blockdev-add", {"driver": "qcow2", "node-name": "b", "file": _file("b.qcow2")}),
           _try(vm.qmp, "blockdev-add", {"driver": "qcow2", "node-name": "c3", "file": _file("c.qcow2"),
                                         "backing": {"driver": "qcow2", "file": _file("a.qcow2")}})]
    vm.qmp("blockdev-del", {"node-name": "a"})
    img("create", "-f", "qcow2", "-u", "-b", "x.qcow2", "-F", "qcow2", "d.qcow2", "64M")
    out.append(_try(img, "create", "-f", "qcow2", "-b", "d.qcow2", "-F", "qcow2", "e.qcow2"))
    img("create", "-f", "qcow2", "-b", "d.qcow2", "-F", "qcow2", "-u", "e.qcow2", "64M")
    out.append(_try(img, "create", "-f", "qcow2", "-b", "e.qcow2", "-F", "qcow2", "f.qcow2", "64M"))
    out.append(_try(vm.qmp, "blockdev-add", {"driver": "qcow2", "node-name": "e", "file": _file("e.qcow2")}))
    return out


def test_every_level_says_so():
    assert story(Machine()) == [
        f"Could not open backing file: Could not open backing file: {LOCK}",
        f"Could not open backing file: {LOCK}",
        f"Could not open backing file: {LOCK}",
        "QemuImgError: qemu-img: e.qcow2: Could not open backing file: Could not open 'x.qcow2': No such file or "
        "directory\nCould not open backing image.\n",
        "QemuImgError: qemu-img: f.qcow2: Could not open backing file: Could not open backing file: Could not open "
        "'x.qcow2': No such file or directory\nCould not open backing image.\n",
        "Could not open backing file: Could not open backing file: Could not open 'x.qcow2': No such file or "
        "directory",
    ]


@pytest.mark.qemu
@pytest.mark.parametrize("daemon", ["qsd", "system"])
def test_matches_qemu(daemon):
    want, got = on_both(story, daemon)
    assert got == want


def named_story(vm) -> list:
    """Backing options without ``file.filename`` over an image that names its backing file: that name is passed
    down to the first protocol node (bdrv_open_backing_file), which a reference or a blkdebug image of its own
    cannot take."""
    img = vm.qemu_img
    img("create", "-f", "qcow2", "base.qcow2", "64M")
    img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2", "64M")
    img("create", "-f", "qcow2", "-b", "top.qcow2", "-F", "qcow2", "over.qcow2", "64M")
    vm.qmp("blockdev-add", {"driver": "file", "node-name": "bf", "filename": "base.qcow2"})
    top = {"driver": "qcow2", "node-name": "top", "file": _file("top.qcow2")}
    out = []
    for file in ("bf", {"driver": "blkdebug", "image": "bf"}, {"driver": "blkdebug", "image": _file("base.qcow2")}):
        out.append(_try(vm.qmp, "blockdev-add", {**top, "backing": {"driver": "qcow2", "file": file}}))
    out.append(_try(vm.qmp, "blockdev-add", {"driver": "qcow2", "node-name": "over", "file": _file("over.qcow2"),
                                             "backing": {**top, "backing": {"driver": "qcow2", "file": "bf"}}}))
    out.append(_try(vm.qmp, "blockdev-add", {**top, "backing": {"driver": "raw", "file": _file("base.qcow2")}}))
    return out


def test_a_named_backing_file_reaches_the_protocol_node():
    ref = "Cannot reference an existing block device with additional options or a new filename"
    assert named_story(Machine()) == [
        f"Could not open backing file: {ref}", f"Could not open backing file: {ref}",
        "Could not open backing file: Can't specify 'file' and 'filename' options at the same time",
        f"Could not open backing file: Could not open backing file: {ref}", {},
    ]


@pytest.mark.qemu
@pytest.mark.parametrize("daemon", ["qsd", "system"])
def test_a_named_backing_file_as_in_qemu(daemon):
    want, got = on_both(named_story, daemon)
    assert got == want
