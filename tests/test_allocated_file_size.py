"""``actual-size`` of raw nodes and filters (bdrv_get_allocated_file_size): what the node below takes on the
host — raw and copy-before-write ask their child, qcow2 sums its file, null-co says 0, blkdebug cannot tell."""

from __future__ import annotations

import pytest

from bitlab import Machine
from bitlab.conformance.steps import run_step
from tests.both import on_both

M = 1 << 20

STEPS = [
    {"qemu-img": ["create", "-f", "raw", "r.img", "64M"]},
    {"qemu-img": ["create", "-f", "qcow2", "t.qcow2", "64M"]},
    {"qmp": {"execute": "blockdev-add", "arguments": {"driver": "raw", "node-name": "r",
                                                      "file": {"driver": "file", "filename": "r.img"}}}},
    {"write": {"node": "r", "offset": 0, "length": M}},
    {"qmp": {"execute": "blockdev-add", "arguments": {"driver": "raw", "node-name": "rn",
                                                      "file": {"driver": "null-co"}}}},
    {"qmp": {"execute": "blockdev-add", "arguments": {"driver": "raw", "node-name": "rb", "file": {
        "driver": "blkdebug", "image": {"driver": "file", "filename": "r.img"}}, "read-only": True}}},
    {"qmp": {"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "t",
                                                      "file": {"driver": "file", "filename": "t.qcow2"}}}},
    {"qmp": {"execute": "blockdev-add", "arguments": {"driver": "copy-before-write", "node-name": "cbw",
                                                      "file": "r", "target": "t"}}},
]


def sizes(vm) -> dict:
    return {n["node-name"]: n["image"].get("actual-size") for n in vm.qmp("query-named-block-nodes", {"flat": True})
            if not n["node-name"].startswith("#")}


def story(vm) -> dict:
    for step in STEPS:
        run_step(vm, step)
    return sizes(vm)


def test_raw_and_filters_show_what_their_file_takes():
    got = story(Machine())
    assert got["r"] == got["cbw"] == M  # the megabyte written, as the host file system allocates it
    assert got["rn"] == 0
    assert got["rb"] is None  # blkdebug: -ENOTSUP, no actual-size
    assert got["t"] == 200704  # qcow2: its file (a new image's header, tables and refcounts)


@pytest.mark.qemu
@pytest.mark.parametrize("daemon", ["qsd", "system"])
def test_matches_qemu(daemon):
    want, got = on_both(story, daemon)
    assert got == want
