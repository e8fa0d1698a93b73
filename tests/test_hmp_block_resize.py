"""HMP ``block_resize device size`` (bitlab/qmp/hmp.py): monitor/hmp.c's argument reading ("device:B,size:o":
a size without a unit is MiB) and qmp_block_resize's errors, against the system emulator."""

import pytest

from bitlab import Machine
from tests.both import on_both

HELP = 'Try "help block_resize" for more information\r\n'
CASES = ["block_resize drive0 100", "block_resize drive0 70G", "block_resize drive0", "block_resize",
         "block_resize nope 1G", "block_resize drive0 1.5", "block_resize drive0 1x", "block_resize drive0 -1",
         "block_resize drive0 0", "block_resize drive0 64M extra", "block_resize drive0 100k",
         "block_resize drive0 16E", "block_resize drive0 8E", "block_resize  drive0   65M  ",
         "block_resize drive0 0x100", 'block_resize "drive0" 2M', "block_resize node0 3M"]


def story(vm) -> list:
    vm.add_drive("drive0", size="64M", node_name="node0")
    out = []
    for line in CASES:
        reply = vm.qmp("human-monitor-command", {"command-line": line})
        size = [dev["inserted"]["image"]["virtual-size"] for dev in vm.qmp("query-block")
                if dev["device"] == "drive0"]
        out.append((line, reply, size[0]))
    getattr(vm, "close", lambda: None)()
    return out


def test_texts():
    got = {line: (reply, size) for line, reply, size in story(Machine())}
    assert got["block_resize drive0 100"] == ("", 100 << 20)
    assert got["block_resize drive0 1.5"] == ("", 3 << 19)
    assert got["block_resize drive0 0x100"] == ("", 256 << 20)
    assert got["block_resize drive0 100k"] == ("", 100 << 10)
    assert got["block_resize drive0"][0] == "invalid size\r\n" + HELP
    assert got["block_resize drive0 8E"][0] == "invalid size\r\n" + HELP
    assert got["block_resize"][0] == "block_resize: block device name expected\r\n" + HELP
    assert got["block_resize drive0 1x"][0] == "block_resize: extraneous characters at the end of line\r\n" + HELP
    assert got["block_resize nope 1G"][0] == "Error: Cannot find device='nope' nor node-name=''\r\n"
    assert got["block_resize node0 3M"][0] == "Error: Cannot find device='node0' nor node-name=''\r\n"


@pytest.mark.qemu
def test_matches_system_emulator():
    want, got = on_both(story, daemon="system")
    assert got == want
