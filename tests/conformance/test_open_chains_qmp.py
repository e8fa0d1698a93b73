"""The QMP side of test_qemu_img_opens' set-ups (a lost base, chains that loop, a base named raw): blockdev-add
with the image's own chain, without it (``backing: null``) or with another node as its backing, a drive-backup or
drive-mirror into such an image (``mode: existing``) or from such a node into a new one, an external snapshot onto
one; every reply (automatic node names masked), job and named node compared with qemu-storage-daemon."""

from __future__ import annotations

import json
import os
import re
import shlex

import pytest

from bitlab import Machine, QemuImgError
from bitlab.errors import QMPError

from .test_qemu_img_opens import SETUPS

AUTO = re.compile(r"#block\d+")


def _file(name: str) -> dict:
    return {"driver": "file", "filename": name}


PLAIN = ("blockdev-add", {"driver": "qcow2", "node-name": "p", "file": _file("plain.qcow2")})
CASES = {
    "add": [("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": _file("top.qcow2")})],
    "no-backing": [("blockdev-add", {"driver": "qcow2", "node-name": "n", "backing": None, "file": _file("top.qcow2")}),
                   ("query-named-block-nodes", {"flat": True})],
    "other-backing": [PLAIN, ("blockdev-add", {"driver": "qcow2", "node-name": "n", "backing": "p",
                                               "file": _file("top.qcow2")}),
                      ("query-named-block-nodes", {"flat": True})],
    "backup-into": [PLAIN, ("drive-backup", {"device": "p", "target": "top.qcow2", "format": "qcow2",
                                             "mode": "existing", "sync": "full", "job-id": "j"}),
                    ("query-jobs", {})],
    "backup-from": [("blockdev-add", {"driver": "qcow2", "node-name": "n", "backing": None,
                                      "file": _file("top.qcow2")}),
                    ("drive-backup", {"device": "n", "target": "t.qcow2", "format": "qcow2", "sync": "top",
                                      "job-id": "j"}),
                    ("query-jobs", {})],
    "mirror-into": [PLAIN, ("drive-mirror", {"device": "p", "target": "top.qcow2", "format": "qcow2",
                                             "mode": "existing", "sync": "full", "job-id": "j"}),
                    ("query-jobs", {})],
    "snapshot-onto": [PLAIN, ("blockdev-snapshot-sync", {"node-name": "p", "snapshot-file": "top.qcow2",
                                                         "mode": "existing", "format": "qcow2"}),
                      ("query-named-block-nodes", {"flat": True})],
}



def _images(vm: Machine, setup: str) -> None:
    for line in SETUPS[setup]:
        if line.startswith("mkdir "):
            if vm.backend != "sim":  # (bitlab's work directory has every directory)
                os.makedirs(os.path.join(vm.workdir, line[6:]))
        elif not line.startswith("rm "):
            vm.qemu_img(*shlex.split(line))
        elif vm.backend == "sim":
            vm.images.remove(line[3:])
        else:
            os.remove(os.path.join(vm.workdir, line[3:]))


def story(vm: Machine, setup: str, case: str) -> list:
    """The set-up's images, then the case's commands (each followed by ``vm.run()``); their outcomes."""
    try:
        _images(vm, setup)
    except QemuImgError as err:
        return [("qemu-img", err.stderr)]
    out: list = []
    for name, args in CASES[case]:
        try:
            value = vm.qmp(name, args)
            vm.run()
        except QMPError as err:
            out.append(("error", AUTO.sub("#block", str(err))))
            continue
        if name == "query-named-block-nodes":
            value = [(n["node-name"], n["ro"], n.get("backing_file"), n["image"].get("backing-filename"))
                     for n in value]
        elif name == "query-jobs":
            value = [(job["id"], job["status"], job.get("error")) for job in value]
        out.append(("ok", AUTO.sub("#block", json.dumps(value))))
    return out


def test_a_node_opened_without_its_chain_is_backed_up_from_what_it_reads():
    """``backing: null`` over an image whose base is gone: its drive-backup works (the point in time it notes is
    the node's own content, not the missing chain's); the read-only open of a loop is refused."""
    assert story(Machine(), "gone", "backup-from") == [("ok", "{}"), ("ok", "{}"), ("ok", "[]")]
    assert story(Machine(), "self", "add") == [  # (top.qcow2 again below itself: its read-write open's lock)
        ("error", 'GenericError: Could not open backing file: Failed to get shared "write" lock')]
    vm = Machine()  # read-only, nothing stops it: QEMU never answers (measured), bitlab refuses
    _images(vm, "self")
    with pytest.raises(QMPError, match=r"^GenericError: Could not open backing file: Could not open backing file: "
                                       r"bitlab does not simulate a backing chain that loops \('top.qcow2' is a"):
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "r", "read-only": True, "file": _file("high.qcow2")})


@pytest.mark.qemu
@pytest.mark.parametrize("setup", ["gone", "loop", "self", "raw", "not-qcow2"])
def test_matches_qemu(setup):
    differences = []
    for case in CASES:  # (each opens its image read-write: a loop back to it meets its lock, QEMU answers)
        real_vm = Machine(backend="qemu")
        try:
            real = story(real_vm, setup, case)
        finally:
            real_vm.close()
        sim = story(Machine(), setup, case)
        if real != sim:
            differences.append(f"{setup} {case}:\n  real: {real}\n  sim:  {sim}")
    assert not differences, "\n".join(differences)


def _loop_through_a_directory(vm: Machine) -> list:
    """``base.qcow2`` names ``sub/top.qcow2``, which names ``../base.qcow2``: opened to write, the lock of the first
    open stops it one level down (the same file, another name)."""
    _images(vm, "sub-loop")
    try:
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": _file("base.qcow2")})
    except QMPError as err:
        return [str(err)]
    return ["ok"]


def test_a_loop_through_a_directory():
    assert _loop_through_a_directory(Machine()) == [
        'GenericError: Could not open backing file: Could not open backing file: Failed to get shared "write" lock']
    vm = Machine()
    _images(vm, "sub-loop")
    with pytest.raises(QMPError, match="bitlab does not simulate a backing chain more than 100 images deep"):
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "r", "read-only": True, "file": _file("base.qcow2")})


@pytest.mark.qemu
def test_a_loop_through_a_directory_matches_qemu():
    real_vm = Machine(backend="qemu")
    try:
        real = _loop_through_a_directory(real_vm)
    finally:
        real_vm.close()
    assert _loop_through_a_directory(Machine()) == real
