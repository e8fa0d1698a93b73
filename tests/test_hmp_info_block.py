"""HMP ``info block [-n] [-v] [device]`` (block/monitor/block-hmp-cmds.c hmp_info_block, print_block_info): the
devices, or the named nodes, with read-only, cache modes, backing file, detect-zeroes and (``-v``) the images'
bdrv_image_info_dump. Compared with the system emulator, the host's disk sizes and automatic node names masked."""

from __future__ import annotations

import re

import pytest

from bitlab import Machine
from tests.both import on_both

COMMANDS = ("info block", "info block -v", "info block drive1", "info block nul", "info block -n", "info block -n -v",
            "info block nosuch", "info block -v drive0", "info block -n nul")


def _mask(text: str) -> str:
    return re.sub(r"#block\d+", "#blockN", re.sub(r"disk size: .*", "disk size: X", text))


def story(vm) -> list[tuple[str, str]]:
    vm.qemu_img("create", "-f", "qcow2", "base.qcow2", "64M")
    vm.qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "disk.qcow2")
    vm.add_drive("drive0", file="disk.qcow2", node_name="d0")
    vm.add_drive("drive1", "32M", format="raw")
    vm.qmp("block-dirty-bitmap-add", {"node": "d0", "name": "b0", "persistent": True})
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "nul", "size": 1 << 20})
    out = [(cmd, _mask(vm.hmp(cmd))) for cmd in COMMANDS]
    vm.qmp("blockdev-reopen", {"options": [{
        "driver": "qcow2", "node-name": "d0", "file": {"driver": "file", "filename": "disk.qcow2"},
        "backing": {"driver": "qcow2", "file": {"driver": "file", "filename": "base.qcow2"}}, "read-only": True,
        "detect-zeroes": "on", "cache": {"no-flush": True}}]})
    out.append(("after blockdev-reopen", _mask(vm.hmp("info block drive0"))))
    return out


def test_devices_nodes_and_their_flags():
    got = dict(story(Machine(daemon="system")))
    assert got["info block"].startswith(
        "drive0 (d0): disk.qcow2 (qcow2)\r\n    Removable device: not locked, tray closed\r\n"
        "    Cache mode:       writeback\r\n    Backing file:     base.qcow2 (chain depth: 1)\r\n"
        "\r\ndrive1 (#blockN): ")
    assert got["info block drive1"].startswith("\r\ndrive1")  # (the blank line before the list's second entry)
    assert got["info block nul"] == "nul: json:{\"driver\": \"null-co\", \"size\": 1048576} (null-co)\r\n" \
                                    "    Cache mode:       writeback\r\n"
    assert got["info block nosuch"] == ""
    assert "\r\nImages:\r\nimage: disk.qcow2\r\n" in got["info block -v drive0"]
    assert "\r\nimage: base.qcow2\r\n" in got["info block -v drive0"]  # the chain, image by image
    assert got["after blockdev-reopen"] == (
        "drive0 (d0): disk.qcow2 (qcow2, read-only)\r\n    Removable device: not locked, tray closed\r\n"
        "    Cache mode:       writeback, ignore flushes\r\n    Backing file:     base.qcow2 (chain depth: 1)\r\n"
        "    Detect zeroes:    on\r\n")


@pytest.mark.qemu
def test_matches_the_system_emulator():
    want, got = on_both(story, "system")
    assert got == want
