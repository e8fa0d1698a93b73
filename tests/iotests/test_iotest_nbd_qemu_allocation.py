"""QEMU 7.2's iotest tests/nbd-qemu-allocation, ported: an overlay exported with its allocation depth, read by
qemu-img's NBD client as ``base:allocation`` and as ``qemu:allocation-depth`` (``x-dirty-bitmap``).

A 4 MiB base with 2 MiB of data at 0, a 4 MiB overlay with 2 MiB at 1 MiB. The iotest serves it with ``qemu-nbd -A``
(the default export name ''); here the QMP NBD server exports it with ``allocation-depth: true`` under the same name.
Its depth map reads depth 1 (the overlay) as a hole, 2 (the base) as data and zeroes, 0 (nowhere) as data.
"""

from __future__ import annotations

import pytest

from bitlab import Machine
from bitlab.conformance.runner import compare, play
from bitlab.conformance.steps import run_step
from tests.nbdmap import map_json

M = 1 << 20
URL = "nbd+unix://?socket=nbd.sock"


def _q(execute: str, arguments: dict) -> dict:
    return {"qmp": {"execute": execute, "arguments": arguments}}


def steps() -> list[dict]:
    return [{"qemu-img": ["create", "-f", "qcow2", "t.qcow2.base", "4M"]},
            _q("blockdev-add", {"driver": "qcow2", "node-name": "base",
                                "file": {"driver": "file", "filename": "t.qcow2.base"}}),
            {"write": {"node": "base", "offset": 0, "length": 2 * M, "pattern": 0x11}},
            _q("blockdev-del", {"node-name": "base"}),
            {"qemu-img": ["create", "-f", "qcow2", "-b", "t.qcow2.base", "-F", "qcow2", "t.qcow2", "4M"]},
            _q("blockdev-add", {"driver": "qcow2", "node-name": "top", "read-only": True,
                                "file": {"driver": "file", "filename": "t.qcow2"}}),
            {"qemu-img": ["map", "--output=json", "-U", "t.qcow2"]},
            _q("blockdev-del", {"node-name": "top"}),
            _q("blockdev-add", {"driver": "qcow2", "node-name": "top",
                                "file": {"driver": "file", "filename": "t.qcow2"}}),
            {"write": {"node": "top", "offset": M, "length": 2 * M, "pattern": 0x22}},
            _q("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}}),
            _q("block-export-add", {"type": "nbd", "id": "e", "node-name": "top", "name": "",
                                    "allocation-depth": True}),
            {"qemu-img": ["map", "--output=json", "-f", "raw", URL]},
            {"qemu-img": ["map", "--output=json", "--image-opts",
                          "driver=nbd,server.type=unix,server.path=nbd.sock,x-dirty-bitmap=qemu:allocation-depth"]}]


def test_the_maps_of_nbd_qemu_allocation():
    vm, maps = Machine(), []
    for step in steps():
        out = run_step(vm, step)
        if "qemu-img" in step and step["qemu-img"][0] == "map" and "nbd" in step["qemu-img"][-1]:
            maps.append(out["stdout"])
    assert maps == [  # the .out's last two maps, OFFSET filled in
        map_json((0, 3 * M, True, False, True), (3 * M, M, True, True, False)),
        map_json((0, M, True, True, True), (M, 2 * M, False, False, False), (3 * M, M, True, False, True))]


@pytest.mark.qemu
def test_nbd_qemu_allocation_as_in_qemu():
    scenario = {"name": "nbd-qemu-allocation", "steps": steps()}
    real, sim = play(scenario, "qemu", "qsd"), play(scenario, "sim")
    assert [d.render() for d in compare(scenario, real, sim)] == []
