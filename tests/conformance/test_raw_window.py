"""A raw node's ``offset`` and ``size`` options: a window into its file (raw_apply_options, raw_adjust_offset). The
node is ``size`` bytes long (or what the file holds past ``offset``), every request, read and block status lands at
``offset`` in the file, a request past the window fails (the block layer's EIO), a window with a size cannot be
resized; QEMU's texts for an offset past the file, a window past its end and a size not a multiple of 512;
blockdev-reopen moves or drops the window with the same checks. Compared with qemu-storage-daemon: on the system
emulator HMP ``qemu-io`` leaves its writes unflushed, and the host's page cache then shows the data a zero write
replaced (README, known differences).
"""

from __future__ import annotations

import pytest

from bitlab import Machine
from tests.both import on_both
from tests.conformance.test_nbd_client import _img, _q, _write
from tests.conformance.test_raw_allocation import SETTLE, _look, _looks, _zero, story

K, M = 1 << 10, 1 << 20


def _window(name: str, file: str, **options) -> dict:
    return _q("blockdev-add", {"driver": "raw", "node-name": name, **options,
                               "file": {"driver": "file", "filename": file}})


WINDOWS = [
    _img("create", "-f", "raw", "w.img", "4M"), _img("create", "-f", "raw", "v.img", "4M"),
    _window("e1", "w.img", offset=5 * M), _window("e2", "w.img", offset=M, size=4 * M),
    _window("e3", "w.img", size=1000),
    _window("e4", "w.img", offset=100, size=512), _q("blockdev-del", {"node-name": "e4"}),
    _window("e5", "w.img", offset=4 * M), _q("blockdev-del", {"node-name": "e5"}),  # (empty: allowed)
    _window("d", "w.img", offset=512 * K, size=2 * M), _window("t", "v.img", offset=3 * M),
    _q("query-named-block-nodes", {"flat": True}),
    _write("d", 0, M, 0x22), _zero("d", 256 * K, 256 * K), _zero("d", M, 512 * K),
    _write("d", 2 * M - 4 * K, 8 * K, 0x33),  # past the window: EIO
    _write("t", 0, 4 * K, 0x44), _write("t", M - 512, 512, 0x45), _write("t", M - 512, 1024, 0x46),
    {"discard": {"node": "d", "offset": 0, "length": 64 * K}},
    _look("d", "w.img"), _look("t", "v.img"),
    _q("block_resize", {"node-name": "d", "size": 4 * M}), _q("block_resize", {"node-name": "t", "size": 2 * M}),
    _q("query-named-block-nodes", {"flat": True}), _look("t", "v.img"),
    _img("create", "-f", "qcow2", "q.qcow2", "2M"),
    _q("blockdev-add", {"driver": "qcow2", "node-name": "q", "file": {"driver": "file", "filename": "q.qcow2"}}),
    _q("blockdev-backup", {"job-id": "j", "device": "d", "target": "q", "sync": "full"}), SETTLE,
    _look("q", "q.qcow2"),
    _q("blockdev-add", {"driver": "raw", "node-name": "ro", "read-only": True, "offset": 512 * K, "size": M,
                        "file": {"driver": "file", "filename": "w.img", "read-only": True}}),
    _q("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}}),
    _q("block-export-add", {"type": "nbd", "id": "x", "node-name": "ro"}),
    _img("map", "--output=json", "-f", "raw", "nbd+unix:///ro?socket=nbd.sock"),
]


def _reopen(**options) -> dict:
    return _q("blockdev-reopen", {"options": [{"driver": "raw", "node-name": "d", "file": "wf", **options}]})


REOPENED = [  # blockdev-reopen moves the window (raw_reopen_prepare: the same checks), or takes it away
    _img("create", "-f", "raw", "w.img", "4M"),
    _q("blockdev-add", {"driver": "file", "node-name": "wf", "filename": "w.img"}),
    _q("blockdev-add", {"driver": "raw", "node-name": "d", "file": "wf", "offset": 512 * K, "size": 2 * M}),
    _write("d", 0, 64 * K, 0x22),
    _reopen(offset=5 * M), _reopen(offset=M, size=4 * M), _reopen(size=1000), _reopen(offset=M, size=M),
    _q("query-named-block-nodes", {"flat": True}), _write("d", 0, 64 * K, 0x33), _reopen(),
    _q("query-named-block-nodes", {"flat": True}), _img("map", "--output=json", "-U", "w.img"),
]


def test_a_window_into_the_file():
    out = story(WINDOWS)(Machine())
    errors = [o["error"]["desc"] for o in out[2:5]]
    assert errors == ["Offset (5242880) cannot be greater than size of the containing file (4194304)",
                      "The sum of offset (1048576) and size (4194304) has to be smaller or equal to the  actual size "
                      "of the containing file (4194304)",
                      "Specified size is not multiple of 512"]
    sizes = {n["node-name"]: n["image"]["virtual-size"] for n in out[11]["return"]}
    assert sizes["d"] == 2 * M and sizes["t"] == M
    assert out[15]["stdout"] == out[18]["stdout"] == "write failed: Input/output error\n"
    file_map = _looks(out)[0]["map"]  # the window's writes land 512 KiB into the file
    assert [(r["start"], r["data"]) for r in file_map][:5] == [
        (0, True), (4096, False), (512 * K, True), (768 * K, False), (M, True)]
    assert out[22]["error"]["desc"] == "Cannot resize fixed-size raw disks"


def test_a_window_moves():
    out = story(REOPENED)(Machine())
    assert out[4]["error"]["desc"] == "Offset (5242880) cannot be greater than size of the containing file (4194304)"
    sizes = [{n["node-name"]: n["image"]["virtual-size"] for n in o["return"]} for o in (out[8], out[11])]
    assert sizes[0]["d"] == M and sizes[1]["d"] == 4 * M  # moved and shrunk; then the whole file


@pytest.mark.qemu
@pytest.mark.parametrize("name,steps", [("windows", WINDOWS), ("reopened", REOPENED)])
def test_matches_qemu(name, steps):
    want, got = on_both(story(steps), "qsd")
    assert got == want
