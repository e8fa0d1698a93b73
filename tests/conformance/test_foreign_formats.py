"""A driver bitlab does not simulate, over a file it does (bitlab/block/foreign.py): qemu-img's ``-f vmdk`` on a raw
image, ``-F bochs`` for a backing file, ``create -f null-co``, a module Debian's QEMU does not have; blockdev-add of
such a node over a file node, a qcow2 image whose backing format names one.
QEMU 7.2's drivers turn such files down with texts of their own; bitlab answers with them, and refuses only where
QEMU would open the file (blkdebug, file, preallocate, snapshot-access, a read-write copy-on-read), where its
answer depends on bytes bitlab does not keep (cloop and vdi headers read from a qcow2 file), and where it would
create an image of such a format.

Each command runs for every driver QEMU 7.2 knows (and one it does not) on real qemu-img in a temporary directory
and on bitlab: exit status, stdout and stderr must be equal, or bitlab refuse where it says it does.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from typing import Any

import pytest

from bitlab import Machine, QemuImgError
from bitlab.block import foreign
from bitlab.block.drivers import QEMU_DRIVERS
from bitlab.qmp.create_types import BlockdevCreateOptions
from bitlab.qmp.qapi import Alternate, Array, Builtin, Enum, Struct, Union_
from bitlab.qmp.types import BlockdevOptions

from ..both import on_both

FORMATS = [*sorted(set(QEMU_DRIVERS) - {"raw", "qcow2"}), "nosuch"]  # (raw and qcow2: the other tests')
FILES = [  # (name, qemu-img create arguments, the byte pattern written over it or None)
    ("a.img", "-f raw a.img 1M", None), ("a2.img", "-f raw a2.img 1M", None), ("d.img", "-f raw d.img 1M", 0x4B),
    ("e.img", "-f raw e.img 0", None), ("q.qcow2", "-f qcow2 q.qcow2 1M", None),
    ("v2.qcow2", "-f qcow2 -o compat=0.10 v2.qcow2 1M", None),
]
COMMANDS = [  # F: the format
    "create -f F x.img 1M", "create -f qcow2 -b a.img -F F x.img", "create -f qcow2 -b o.qcow2 -F qcow2 x.img",
    "convert -O F a.img x.img", "convert -f F -O raw a.img x.img", "convert -n -O F a.img a2.img",
    "info -f F a.img", "info -f F d.img", "info -f F e.img", "info -f F q.qcow2", "info -f F v2.qcow2",
    "info -f F missing.img", "info -U -f F a.img", "info --backing-chain o.qcow2",
    "check -f F a.img", "map -f F a.img", "map -f F d.img", "map o.qcow2", "compare -f F -F raw a.img a.img",
    "amend -f F -o size=2M a.img", "resize -f F a.img 2M", "commit -f F a.img",
    "rebase -u -F F -b a.img q.qcow2", "rebase -F F -b a.img q.qcow2", "rebase -u -f F -b a.img q.qcow2",
    "convert -O qcow2 -B a.img -F F a2.img x.qcow2", "create -f qcow2 -o backing_file=a.img,backing_fmt=F x.img",
    "measure -f F a.img", "measure -O F --size 1M", "check -r leaks -f F a.img",
    "info --image-opts driver=F,file.filename=a.img",
]
CREATES = ("create -f F ", "convert -O F ")


def _refusal_expected(command: str, fmt: str) -> bool:
    """Where bitlab refuses: QEMU opens the file (or, for ``o.qcow2``, its backing file) with the driver, reads a
    header bitlab has no bytes of, or creates an image of that format."""
    if fmt in foreign.OPENS:
        return True
    if fmt in ("cloop", "vdi") and "qcow2" in command.split()[-1]:
        return True
    return command.startswith(CREATES) and (fmt in foreign.CREATABLE or fmt == "luks")


def _line(command: str, fmt: str) -> list[str]:
    return [fmt if word == "F" else word for word in shlex.split(command)]


def _sim(vm: Machine, args: list[str]) -> tuple[int, str, str]:
    try:
        out = vm.qemu_img(*args)
        return 0, str(out), out.stderr
    except QemuImgError as err:
        return err.returncode, err.stdout, err.stderr


def sim_run(command: str, fmt: str) -> tuple[int, str, str]:
    vm = Machine()
    for name, create, pattern in FILES:
        vm.qemu_img("create", "-q", *shlex.split(create))
        if pattern is not None:
            vm.qmp("blockdev-add", {"driver": "raw", "node-name": "w", "file": {"driver": "file", "filename": name}})
            vm.qemu_io("w", f"write -P {pattern:#x} 0 1M")
            vm.qmp("blockdev-del", {"node-name": "w"})
    _sim(vm, ["create", "-q", "-f", "qcow2", "-u", "-b", "a.img", "-F", fmt, "o.qcow2", "1M"])
    return _sim(vm, _line(command, fmt))


class RealFiles:
    """The files made once on real qemu-img, copied for every command (``o.qcow2``, over ``a.img`` as the format,
    made in each copy)."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="bitlab-foreign-")
        base = self.base = os.path.join(self._dir.name, "base")
        os.mkdir(base)
        for name, create, pattern in FILES:
            subprocess.run(["qemu-img", "create", "-q", *shlex.split(create)], cwd=base, check=True)
            if pattern is not None:
                subprocess.run(["qemu-io", "-f", "raw", "-c", f"write -P {pattern:#x} 0 1M", name], cwd=base,
                               check=True, capture_output=True)

    def run(self, command: str, fmt: str) -> tuple[int, str, str]:
        cwd = os.path.join(self._dir.name, "case")
        shutil.rmtree(cwd, ignore_errors=True)
        subprocess.run(["cp", "-a", self.base, cwd], check=True)  # (holes stay where they are)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "a.img", "-F", fmt, "o.qcow2", "1M"],
                       cwd=cwd, capture_output=True)
        out = subprocess.run(["qemu-img", *_line(command, fmt)], cwd=cwd, capture_output=True, text=True, timeout=60)
        return out.returncode, out.stdout, out.stderr

    def close(self) -> None:
        self._dir.cleanup()


@pytest.fixture(scope="module")
def real_files():
    files = RealFiles()
    yield files
    files.close()


@pytest.mark.qemu
@pytest.mark.parametrize("command", COMMANDS)
def test_as_qemu_img_for_every_driver(real_files: RealFiles, command: str) -> None:
    differ, refused = [], []
    for fmt in FORMATS:
        want, got = real_files.run(command, fmt), sim_run(command, fmt)
        if got == want:
            continue
        if "bitlab does not simulate" in got[2] and _refusal_expected(command, fmt):
            refused.append(fmt)
            continue
        differ.append((fmt, want, got))
    assert differ == []
    assert all(want != "" for want in refused)


def _stderr(command: str, fmt: str) -> str:
    return sim_run(command, fmt)[2]


def test_the_texts_of_drivers_that_turn_a_file_down():
    """A few of the texts (recorded from qemu-img 7.2), checked without QEMU."""
    assert _stderr("info -f F a.img", "vmdk") == "qemu-img: Could not open 'a.img': invalid VMDK image descriptor\n"
    assert _stderr("info -f F e.img", "vmdk") == \
        "qemu-img: Could not open 'e.img': File is too small, not a valid image\n"
    assert _stderr("info -f F q.qcow2", "qcow") == "qemu-img: Could not open 'q.qcow2': qcow (v1) does not support " \
        "qcow version 3\nTry the 'qcow2' driver instead.\n"
    assert "qcow version 2\n" in _stderr("info -f F v2.qcow2", "qcow")
    assert _stderr("info -f F d.img", "vdi") == "qemu-img: Could not open 'd.img': Unsupported VDI image size " \
        "(size is 0x4b4b4b4b4b4b4b4b, max supported is 0x1fffff8000000)\n"
    assert _stderr("info -f F a.img", "vdi") == \
        "qemu-img: Could not open 'a.img': Image not in VDI format (bad signature 00000000)\n"
    assert _stderr("info -f F d.img", "cloop") == \
        "qemu-img: Could not open 'd.img': block_size 1263225675 must be a multiple of 512\n"
    assert _stderr("info -f F a.img", "luks") == "qemu-img: Could not open 'a.img': Volume is not in LUKS format\n"
    assert _stderr("map -f F a.img", "luks") == \
        "qemu-img: Could not open 'a.img': Parameter 'key-secret' is required for cipher\n"
    assert _stderr("resize -f F a.img 2M", "bochs") == "qemu-img: Could not open 'a.img': Image is read-only\n"
    assert _stderr("info -f F missing.img", "nbd") == \
        "qemu-img: Could not open 'missing.img': File name string for NBD must start with 'nbd:'\n"
    module = "qemu: module block-block-curl not found, do you want to install qemu-block-extra package?\n"
    assert _stderr("info -f F a.img", "https") == f"{module}qemu-img: Could not open 'a.img': Unknown driver 'https'\n"
    assert _stderr("create -f F x.img 1M", "ftp") == f"{module}qemu-img: x.img: Unknown file format 'ftp'\n"
    assert _stderr("rebase -u -F F -b a.img q.qcow2", "http") == f"{module}qemu-img: Invalid format name: 'http'\n"
    assert _stderr("create -f F x.img 1M", "null-co") == \
        "qemu-img: x.img: Format driver 'null-co' does not support image creation\n"
    assert _stderr("create -f qcow2 -b a.img -F F x.img", "bochs") == \
        "qemu-img: x.img: Image not in Bochs format\nCould not open backing image.\n"
    assert _stderr("amend -f F -o size=2M a.img", "file") == \
        "qemu-img: Format driver 'file' does not support option amendment\n"
    dmg = "".join(f"qemu: module block-block-dmg-{m} not found, do you want to install qemu-block-extra package?\n"
                  for m in ("bz2", "lzfse"))
    assert _stderr("map o.qcow2", "dmg") == f"{dmg}qemu-img: Could not open 'o.qcow2': Could not open backing file: " \
        "Could not locate UDIF trailer in dmg file\n"
    assert _stderr("info -f F a.img", "blkdebug") == "qemu-img: bitlab does not simulate the image format 'blkdebug'\n"


# -- blockdev-add: such a driver over a file node, and a qcow2 image whose backing format names one ---------------

QMP_FORMATS = sorted(foreign.FORMATS)
CHILDREN = [{"driver": "file", "filename": "a.img"}, "fa", "fro", {"driver": "file", "filename": "q.qcow2"},
            {"driver": "file", "filename": "e.img"}, {"driver": "file", "filename": "missing.img"}]
BACKING_FORMATS = ["ftp", "blkreplay", "copy-before-write", "vmdk", "bochs", "dmg", "luks", "qcow", "nbd", "null-co",
                   "vvfat", "quorum", "blkverify", "host_device", "preallocate"]
HELD_FORMATS = ["vmdk", "bochs", "luks"]  # over a file a qcow2 node has open read-write


def _qmp_story(vm: Machine) -> list:
    """Each driver over each file (read-write and read-only), then qcow2 images whose backing format is another
    driver: every reply, and the nodes left after (an inline file child is closed again)."""
    vm.qemu_img("create", "-q", "-f", "raw", "a.img", "1M")
    vm.qemu_img("create", "-q", "-f", "qcow2", "q.qcow2", "1M")
    vm.qemu_img("create", "-q", "-f", "raw", "e.img", "0")
    vm.qmp("blockdev-add", {"driver": "file", "node-name": "fa", "filename": "a.img"})
    vm.qmp("blockdev-add", {"driver": "file", "node-name": "fro", "filename": "q.qcow2", "read-only": True})
    out = []
    for fmt in QMP_FORMATS:
        for child in CHILDREN:
            for ro in (False, True):
                out.append(vm.execute({"execute": "blockdev-add", "arguments": {
                    "driver": fmt, "node-name": "x", "file": child, "read-only": ro}}))
                vm.execute({"execute": "blockdev-del", "arguments": {"node-name": "x"}})
    vm.qemu_img("create", "-q", "-f", "raw", "b.img", "1M")
    vm.qemu_img("create", "-q", "-f", "qcow2", "h.qcow2", "1M")  # (held by a qcow2 node: its file locks first)
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "hq", "file": {"driver": "file", "filename": "h.qcow2"}})
    for fmt, base in [*((fmt, "b.img") for fmt in BACKING_FORMATS), *((fmt, "h.qcow2") for fmt in HELD_FORMATS)]:
        vm.qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", base, "-F", fmt, f"o-{fmt}.qcow2", "1M")
        out.append(vm.execute({"execute": "blockdev-add", "arguments": {
            "driver": "qcow2", "node-name": "x", "file": {"driver": "file", "filename": f"o-{fmt}.qcow2"}}}))
        vm.execute({"execute": "blockdev-del", "arguments": {"node-name": "x"}})
    out.append(vm.execute({"execute": "blockdev-add", "arguments": {"driver": "ftp", "node-name": "x",
                                                                    "url": "ftp://h/y"}}))
    out.append(vm.console_take("stderr"))  # (the block modules QEMU looked for)
    out.append(sorted("#block" if n["node-name"].startswith("#block") else n["node-name"]  # (QEMU's numbers vary)
                      for n in vm.qmp("query-named-block-nodes", {"flat": True})))
    return out


def _qmp_refusal_expected(index: int) -> bool:
    """bitlab refuses a cloop or vdi header read from a qcow2 file, and a preallocate backing file (QEMU opens it)."""
    per_format = len(CHILDREN) * 2
    if index < len(QMP_FORMATS) * per_format:
        fmt, child = QMP_FORMATS[index // per_format], CHILDREN[index % per_format // 2]
        return fmt in ("cloop", "vdi") and child in ("fro", {"driver": "file", "filename": "q.qcow2"})
    index -= len(QMP_FORMATS) * per_format
    return index < len(BACKING_FORMATS) and BACKING_FORMATS[index] == "preallocate"


@pytest.mark.qemu
def test_blockdev_add_as_qemu_storage_daemon() -> None:
    real, sim = on_both(_qmp_story)
    assert len(real) == len(sim)
    differ = [(i, want, got) for i, (want, got) in enumerate(zip(real, sim)) if want != got
              and not (isinstance(got, dict) and "bitlab does not simulate" in got.get("error", {}).get("desc", "")
                       and _qmp_refusal_expected(i))]
    assert differ == []


def test_blockdev_add_texts() -> None:
    """A few of its answers (recorded from qemu-storage-daemon 7.2), checked without QEMU."""
    out = _qmp_story(Machine())
    per_format = len(CHILDREN) * 2

    def desc(fmt: str, child: int, ro: bool) -> str:
        return out[QMP_FORMATS.index(fmt) * per_format + child * 2 + ro]["error"]["desc"]

    assert desc("bochs", 0, False) == "Image is read-only" and desc("bochs", 0, True) == "Image not in Bochs format"
    assert desc("vmdk", 2, False) == "Block node is read-only"  # (a read-only file node, attached for writing)
    assert desc("vmdk", 4, True) == "File is too small, not a valid image"
    assert desc("qcow", 3, True) == "qcow (v1) does not support qcow version 3"  # (QMP has no hint)
    assert desc("vhdx", 1, True) == "Could not open 'a.img': Invalid argument"
    assert desc("luks", 0, True) == "Parameter 'key-secret' is required for cipher"
    assert desc("dmg", 5, True) == "Could not open 'missing.img': No such file or directory"
    backing = {fmt: out[len(QMP_FORMATS) * per_format + i]["error"]["desc"] for i, fmt in enumerate(BACKING_FORMATS)
               if "error" in out[len(QMP_FORMATS) * per_format + i]}
    assert backing["copy-before-write"] == "Could not open backing file: Unknown driver 'copy-before-wri'"
    assert backing["null-co"] == \
        "Could not open backing file: The only allowed filename for this driver is 'null-co://'"
    assert backing["host_device"] == "Could not open backing file: 'host_device' driver requires 'b.img' to be " \
        "either a character or block device"
    held = [reply["error"]["desc"] for reply in out[-3 - len(HELD_FORMATS):-3]]
    assert held == 2 * ['Could not open backing file: Failed to get shared "write" lock'] + [
        "Could not open backing file: Parameter 'key-secret' is required for cipher"]
    assert out[-3] == {"error": {"class": "GenericError", "desc": "Unknown driver 'ftp'"}}
    modules = "qemu: module block-block-{} not found, do you want to install qemu-block-extra package?\n".format
    assert out[-2].endswith(modules("curl") + modules("dmg-bz2") + modules("dmg-lzfse") + modules("curl"))
    assert out[-1] == ["#block", "fa", "fro", "hq"]


# -- blockdev-add: each driver's own members, as QEMU's input visitor checks them --------------------------------

REFUSED_DRIVERS = {"blkverify", "nbd", "nvme", "vvfat"}  # (what QEMU does next needs a server, a device, a dir)


def _fill(qtype: Any) -> Any:
    """The smallest well-typed value of ``qtype`` (a name where a node name or a file name goes)."""
    if isinstance(qtype, Builtin):
        return {"str": "x", "bool": False, "number": 0.0, "null": None}.get(qtype.name, 0)
    if isinstance(qtype, Enum):
        return qtype.values[0]
    if isinstance(qtype, Array):
        return []
    if isinstance(qtype, Alternate):
        return "x" if any(isinstance(c, Builtin) and c.name == "str" for c in qtype.choices) else _fill(
            qtype.choices[0])
    members = qtype.all_members() if isinstance(qtype, Struct) else qtype.base.all_members()
    out = {mem.name: _fill(mem.type) for mem in members if not mem.optional}
    if isinstance(qtype, Union_):
        out.update(_fill(qtype.variants[out[qtype.discriminator]]))
    return out


def _wrong(qtype: Any) -> Any:
    """A value of another JSON type than ``qtype`` takes."""
    if isinstance(qtype, Builtin) and qtype.name in ("str", "any"):
        return 1
    if isinstance(qtype, Alternate):  # (a node name or options: not a list)
        return []
    return "1" if not isinstance(qtype, Enum) else "no-such-value"


def _member_cases(union: Union_, extra: dict, *, well_typed: bool) -> list[dict]:
    """For each branch of ``union``: its smallest well-typed arguments (with ``extra``; if ``well_typed``), each
    member of a wrong type, each mandatory member missing, one member too many."""
    cases = []
    for driver, variant in sorted(union.variants.items()):
        base = {"driver": driver, **extra, **_fill(variant)}
        if well_typed:
            cases.append(base)
        for mem in variant.all_members():
            cases.append({**base, mem.name: _wrong(mem.type)})
            if not mem.optional:
                cases.append({key: value for key, value in base.items() if key != mem.name})
        cases.append({**base, "zz": 1})
    return cases


def _driver_cases() -> list[dict]:
    return _member_cases(BlockdevOptions, {"node-name": "x"}, well_typed=True)


def _driver_story(vm: Machine) -> list:
    out = []
    for args in _driver_cases():
        out.append(vm.execute({"execute": "blockdev-add", "arguments": args}))
        vm.execute({"execute": "blockdev-del", "arguments": {"node-name": "x"}})
    return out


@pytest.mark.qemu
def test_every_drivers_members_as_qemu_storage_daemon() -> None:
    """Every branch of BlockdevOptions, 42 drivers: well-typed smallest arguments (names that name nothing, or the
    node itself), each member of a wrong type, each mandatory member missing, one member too many."""
    real, sim = on_both(_driver_story)
    cases = _driver_cases()
    differ = [(cases[i], want, got) for i, (want, got) in enumerate(zip(real, sim)) if want != got
              and not (cases[i]["driver"] in REFUSED_DRIVERS and "bitlab does not simulate" in str(got))]
    assert differ == []


def test_driver_members_texts() -> None:
    """A few of those answers (recorded from qemu-storage-daemon 7.2), checked without QEMU."""
    vm = Machine()

    def desc(args: dict) -> str:
        return vm.execute({"execute": "blockdev-add", "arguments": args})["error"]["desc"]

    assert desc({"driver": "http", "node-name": "x"}) == "Parameter 'url' is missing"
    assert desc({"driver": "vmdk", "node-name": "x", "file": "x"}) == "Cannot find device='x' nor node-name='x'"
    assert desc({"driver": "blkdebug", "node-name": "x", "image": "x"}) == \
        "Making 'x' a image child of 'x' would create a cycle"
    assert desc({"driver": "null-co", "node-name": "x", "latency-ns": "1"}) == "Parameter 'latency-ns' expects uint64"
    assert desc({"driver": "null-co", "node-name": "x", "latency-ns": -1}) == "latency-ns is invalid"
    assert desc({"driver": "host_device", "node-name": "x", "filename": "x"}) == \
        "Could not open 'x': No such file or directory"
    assert desc({"driver": "quorum", "node-name": "x", "children": [], "vote-threshold": 0}) == \
        "Number of provided children must be 1 or more"
    assert vm.qmp("query-named-block-nodes") == []


def _create_cases() -> list[dict]:
    """blockdev-create's options for each driver (not the well-typed smallest ones: they start a job QEMU runs and
    bitlab refuses for most drivers)."""
    return _member_cases(BlockdevCreateOptions, {}, well_typed=False)


def _create_story(vm: Machine) -> list:
    return [vm.execute({"execute": "blockdev-create", "arguments": {"job-id": "j", "options": options}})
            for options in _create_cases()]


@pytest.mark.qemu
def test_every_create_drivers_members_as_qemu_storage_daemon() -> None:
    real, sim = on_both(_create_story)
    assert [(case, want, got) for case, want, got in zip(_create_cases(), real, sim) if want != got] == []


def test_a_size_is_visited_as_a_uint64() -> None:
    """QMP's input visitor has no type_size of its own (only the command line's keyval visitor has)."""
    reply = Machine().execute({"execute": "blockdev-create", "arguments": {"job-id": "j", "options": {
        "driver": "file", "filename": "x", "size": "1"}}})
    assert reply["error"]["desc"] == "Parameter 'options.size' expects uint64"


# -- drive-backup, drive-mirror and blockdev-snapshot-sync with such a format --------------------------------------

def _drive_story(vm: Machine) -> list:
    """Each format for a target made (absolute-paths) or an image that exists (a raw one): QEMU's errors; where QEMU
    runs the job or opens the node, bitlab refuses (the job is stopped again, on both)."""
    vm.qemu_img("create", "-q", "-f", "qcow2", "q.qcow2", "4M")
    vm.qemu_img("create", "-q", "-f", "raw", "e.img", "4M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "q", "file": {"driver": "file", "filename": "q.qcow2"}})
    out = []
    for fmt in FORMATS:
        for mode in ("absolute-paths", "existing"):
            target = "e.img" if mode == "existing" else f"n-{fmt}.img"
            for command, args in (
                    ("drive-backup", {"job-id": "j", "device": "q", "target": target, "sync": "full", "format": fmt,
                                      "mode": mode}),
                    ("drive-mirror", {"job-id": "j", "device": "q", "target": target, "sync": "full", "format": fmt,
                                      "mode": mode}),
                    ("blockdev-snapshot-sync", {"node-name": "q", "snapshot-file": target, "snapshot-node-name": "s",
                                                "format": fmt, "mode": mode})):
                reply = vm.execute({"execute": command, "arguments": args})
                out.append(reply)
                if "return" in reply:
                    vm.execute({"execute": "block-job-cancel", "arguments": {"device": "j", "force": True}})
                    vm.run(until=vm.now + 0.5)
    return out


@pytest.mark.qemu
def test_drive_targets_and_overlays_as_qemu_storage_daemon() -> None:
    real, sim = on_both(_drive_story)
    assert [(i, want, got) for i, (want, got) in enumerate(zip(real, sim))
            if want != got and "bitlab does not simulate" not in str(got)] == []
    refused = [i for i, (want, got) in enumerate(zip(real, sim)) if want != got]
    assert len(refused) <= 45  # (blkdebug, file, copy-on-read, preallocate, snapshot-access, ... QEMU opens)


def test_drive_target_texts() -> None:
    out = _drive_story(Machine())
    per_format = 6

    def desc(fmt: str, index: int) -> str:
        return out[FORMATS.index(fmt) * per_format + index]["error"]["desc"]

    assert desc("vmdk", 3) == "invalid VMDK image descriptor"  # (drive-backup into e.img, existing)
    assert desc("bochs", 0) == "Format driver 'bochs' does not support image creation"
    assert desc("null-co", 4) == "The only allowed filename for this driver is 'null-co://'"
    assert desc("qed", 5) == "Image not in QED format"  # (the overlay: e.img opened as qed)
    assert desc("bochs", 2) == "Format driver 'bochs' does not support image creation"
    assert desc("ftp", 0) == "Unknown file format 'ftp'"


# -- blockdev-reopen with each driver's options ------------------------------------------------------------------

def _reopen_story(vm: Machine) -> list:
    """Each branch's member cases as a reopen of a qcow2 node, then (the first 40) of a null-co node: which option
    QEMU names as changed depends on how qdict_flatten inserts nested keys (``server.host`` and ``server.port`` share
    a hash bucket)."""
    vm.qemu_img("create", "-q", "-f", "qcow2", "q.qcow2", "4M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "x",
                            "file": {"driver": "file", "filename": "q.qcow2", "node-name": "xf"}})
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "n"})
    cases = _member_cases(BlockdevOptions, {"node-name": "x"}, well_typed=True)
    cases += _member_cases(BlockdevOptions, {"node-name": "n"}, well_typed=True)[:40]
    out = [vm.execute({"execute": "blockdev-reopen", "arguments": {"options": [args]}}) for args in cases]
    return out + [[n["node-name"] for n in vm.qmp("query-named-block-nodes", {"flat": True})]]


@pytest.mark.qemu
def test_reopen_with_every_drivers_options_as_qemu_storage_daemon() -> None:
    real, sim = on_both(_reopen_story)
    assert [(i, want, got) for i, (want, got) in enumerate(zip(real, sim)) if want != got] == []


def test_reopen_texts() -> None:
    vm = Machine()
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "n"})
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "m"})
    server = {"driver": "nbd", "node-name": "n", "server": {"type": "inet", "host": "h", "port": "1"}}
    assert vm.execute({"execute": "blockdev-reopen", "arguments": {"options": [server]}})["error"]["desc"] == \
        "Cannot change the option 'server.host'"  # (port was flattened first: host heads their bucket)
    file = {"driver": "bochs", "node-name": "n", "file": "m"}
    assert vm.execute({"execute": "blockdev-reopen", "arguments": {"options": [file]}})["error"]["desc"] == \
        "Cannot set file child to format node without file child"
