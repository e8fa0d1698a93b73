"""QEMU 7.2's iotest 246 (persistent bitmaps across a resize): a 64 GiB qcow2 drive, four boots.

Ported whole, the log compared with the system emulator's and asserted exactly against 246.out: three
persistent bitmaps of three granularities and a transient one; after a clean quit the persistent ones load
again (in the bitmap directory's order); a bitmap added, the drive grown to 70 GiB with HMP ``block_resize``,
another added; after the next boot one added, one removed, the drive shrunk to 50 GiB, one added and one
removed; the fourth boot loads the five left, and removes them all. ``query-block``'s ``dirty-bitmaps`` are
shown per device, as the iotest's ``query_bitmaps`` does. (iotests' ``vm.shutdown()`` is a clean quit;
``vm.launch()`` starts QEMU again with the same ``-drive``.)
"""

from __future__ import annotations

import pytest

from bitlab import Machine
from tests.both import on_both
from tests.iotests.harness import Log

SIZE = 64 << 30
IMG = "img.qcow2"


def _bitmaps(vm) -> dict:
    return {"bitmaps": {dev["device"]: dev.get("inserted", {}).get("dirty-bitmaps", [])
                        for dev in vm.qmp("query-block")}}


def _boot(vm):
    """iotests' vm.shutdown() then vm.launch(): a clean quit, QEMU again with drive0 on the same image."""
    vm = vm.restart()
    if not any(dev["device"] == "drive0" for dev in vm.qmp("query-block")):
        vm.add_drive("drive0", file=IMG)
    return vm


def _flush_and_boot(t: Log):
    """The bitmaps as the iotest logs them, a clean quit and the next boot, whose bitmaps are logged too."""
    t.lines.append(_bitmaps(t.vm))
    t.vm = _boot(t.vm)
    t.lines.append(_bitmaps(t.vm))
    return t.vm


def story(vm) -> list:
    lines: list = []
    vm.qemu_img("create", "-f", "qcow2", IMG, str(SIZE))
    vm.add_drive("drive0", file=IMG)
    t = Log(vm)
    t.lines = lines
    t.qmp_log("block-dirty-bitmap-add", node="drive0", name="Small", granularity=32 * 1024, persistent=True)
    t.qmp_log("block-dirty-bitmap-add", node="drive0", name="Medium", persistent=True)
    t.qmp_log("block-dirty-bitmap-add", node="drive0", name="Large", granularity=128 * 1024, persistent=True)
    t.qmp_log("block-dirty-bitmap-add", node="drive0", name="Transient", persistent=False)
    vm = _flush_and_boot(t)
    t.qmp_log("block-dirty-bitmap-add", node="drive0", name="New", persistent=True)
    t.qmp_log("human-monitor-command", command_line="block_resize drive0 70G")
    t.qmp_log("block-dirty-bitmap-add", node="drive0", name="Newtwo", persistent=True)
    vm = _flush_and_boot(t)
    t.qmp_log("block-dirty-bitmap-add", node="drive0", name="NewB", persistent=True)
    t.qmp_log("block-dirty-bitmap-remove", node="drive0", name="New")
    t.qmp_log("human-monitor-command", command_line="block_resize drive0 50G")
    t.qmp_log("block-dirty-bitmap-add", node="drive0", name="NewC", persistent=True)
    t.qmp_log("block-dirty-bitmap-remove", node="drive0", name="Newtwo")
    vm = _boot(vm)
    t.vm = vm
    lines.append(_bitmaps(vm))
    for name in ("Small", "Medium", "Large", "NewB", "NewC"):
        t.qmp_log("block-dirty-bitmap-remove", node="drive0", name=name)
    lines.append(_bitmaps(vm))
    lines.append(vm.qemu_img("info", "-U", IMG).split("\n")[2])  # (the virtual size the image was left with)
    getattr(vm, "close", lambda: None)()
    return lines


def _names(line: dict) -> list[tuple[str, int]]:
    return [(b["name"], b["granularity"]) for b in line["bitmaps"]["drive0"]]


def test_bitlab():
    lines = story(Machine())
    ok = {"return": {}}
    assert lines[:4] == [ok] * 4
    assert _names(lines[4]) == [("Transient", 65536), ("Large", 131072), ("Medium", 65536), ("Small", 32768)]
    assert _names(lines[5]) == [("Small", 32768), ("Medium", 65536), ("Large", 131072)]
    assert lines[6:9] == [ok, {"return": ""}, ok]
    assert _names(lines[9]) == [("Newtwo", 65536), ("New", 65536), ("Small", 32768), ("Medium", 65536),
                                ("Large", 131072)]
    assert _names(lines[10]) == [("New", 65536), ("Newtwo", 65536), ("Small", 32768), ("Medium", 65536),
                                 ("Large", 131072)]
    assert lines[11:16] == [ok, ok, {"return": ""}, ok, ok]
    assert _names(lines[16]) == [("NewB", 65536), ("NewC", 65536), ("Small", 32768), ("Medium", 65536),
                                 ("Large", 131072)]
    assert all(b == {**b, "busy": False, "count": 0, "persistent": True, "recording": True}
               for b in lines[16]["bitmaps"]["drive0"])
    assert lines[17:22] == [ok] * 5 and lines[22] == {"bitmaps": {"drive0": []}}
    assert lines[23] == "virtual size: 50 GiB (53687091200 bytes)"


@pytest.mark.qemu
def test_matches_qemu():
    want, got = on_both(story, daemon="system")
    assert got == want
