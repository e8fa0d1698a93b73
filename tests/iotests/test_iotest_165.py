"""QEMU 7.2's iotest 165 (persistent dirty bitmaps across boots, one of them read-only).

Ported: ``test_persistent`` whole (a persistent bitmap on a 1 GiB qcow2 drive, writes through HMP qemu-io,
its SHA-256 after a clean quit, a read-only boot that must lose nothing, a read-write boot, more writes, one
more boot), and ``test_reopen_rw`` whole: on the read-only boot the bitmap loads with its hash, a guest write
fails with ``Block node is read-only`` and changes nothing; ``blockdev-reopen`` read-write marks the stored
bitmap in use again (qemu-img info -U shows its flags before and after) and the next writes are recorded.
iotests' ``vm.shutdown()`` is a clean quit: ``vm.restart()`` here, then the drive again, as
``vm.launch()`` starts QEMU with the same ``-drive``. Compared with the system emulator.
"""

from __future__ import annotations

import json

import pytest

from bitlab import Machine
from tests.both import on_both

REGIONS1 = ((0x0fff00, 0x10000), (0x200000, 0x100000))
REGIONS2 = ((0x10000000, 0x20000), (0x3fff0000, 0x10000))


def _boot(vm, read_only: bool = False):
    vm = vm.restart()
    vm.add_drive("drive0", file="disk", node_name="node0", read_only=read_only)
    return vm


def _write(vm, regions) -> list[str]:
    return [vm.hmp(f'qemu-io drive0 "write {offset} {count}"') for offset, count in regions]


def _sha(vm) -> str:
    return vm.qmp("x-debug-block-dirty-bitmap-sha256", {"node": "drive0", "name": "bitmap0"})["sha256"]


def story(vm) -> list:
    """test_persistent, then test_reopen_rw's read-only part."""
    vm.qemu_img("create", "-f", "qcow2", "disk", str(1 << 30))
    vm.add_drive("drive0", file="disk", node_name="node0")
    vm.qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "bitmap0", "persistent": True})
    out: list = _write(vm, REGIONS1)
    sha1 = _sha(vm)
    vm = _boot(vm, read_only=True)  # (must not lose the bitmap: "Persistent bitmaps are lost" would be an error)
    vm = _boot(vm)
    out.append(_sha(vm) == sha1)
    out += _write(vm, REGIONS2)
    sha2 = _sha(vm)
    vm = _boot(vm)
    out += [_sha(vm) == sha2, sha1 != sha2]
    vm.qmp("block-dirty-bitmap-clear", {"node": "drive0", "name": "bitmap0"})
    _write(vm, REGIONS1)
    out.append(_sha(vm) == sha1)
    vm = _boot(vm, read_only=True)
    out.append(_sha(vm) == sha1)
    out += _write(vm, REGIONS2)  # read-only: refused, the bitmap unchanged
    out += [_sha(vm) == sha1, _bitmaps(vm), _flags(vm)]
    vm.qmp("blockdev-reopen", {"options": [{"node-name": "node0", "driver": "qcow2",
                                            "file": {"driver": "file", "filename": "disk"}, "read-only": False}]})
    out.append(_flags(vm))  # in use again
    out += _write(vm, REGIONS2)  # read-write: the bitmap records it
    out += [_sha(vm) == sha2, _bitmaps(vm)]
    getattr(vm, "close", lambda: None)()
    return out


def _bitmaps(vm) -> list:
    return [(b["name"], b["count"], b["recording"], b["persistent"]) for dev in vm.qmp("query-block")
            for b in dev.get("inserted", {}).get("dirty-bitmaps", [])]


def _flags(vm) -> list:
    """The stored bitmap's flags, as qemu-img info -U shows them."""
    info = json.loads(vm.qemu_img("info", "-U", "--output=json", "disk"))
    return [(b["name"], b["flags"]) for b in info["format-specific"]["data"].get("bitmaps", [])]


def test_bitlab() -> None:
    out = story(Machine())
    assert out[:2] == ["", ""]
    assert out[2] is True and out[5:8] == [True, True, True] and out[8] is True
    assert out[9:11] == ["Block node is read-only\r\n"] * 2
    assert out[11] is True
    assert out[12] == [("bitmap0", 1179648, True, True)]  # 18 clusters of 64 KiB: regions1
    assert out[13] == [("bitmap0", ["auto"])]  # stored, not in use: the node is read-only
    assert out[14] == [("bitmap0", ["in-use", "auto"])]  # blockdev-reopen read-write marks it in use
    assert out[15:17] == ["", ""]  # the writes go through now
    assert out[17] is True  # regions1 and regions2 recorded: the hash test_reopen_rw expects
    assert out[18] == [("bitmap0", 1179648 + 196608, True, True)]


@pytest.mark.qemu
def test_matches_qemu() -> None:
    want, got = on_both(story, daemon="system")
    assert got == want
