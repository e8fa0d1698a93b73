"""QEMU 7.2's iotest 223 (NBD exports with dirty bitmaps, read by qemu-img's NBD client), ported.

A 4 MiB qcow2 image with 4 KiB clusters, 2 MiB of data at 1 MiB; bitmaps ``b`` (64 KiB granularity) and ``b2``
(512 bytes) record a 512-byte write at 512 and 2 MiB at 2 MiB; ``b`` is disabled, a null-co node holds an empty
``b3``. The NBD server exports the image three times (``nbd-server-add`` with ``b``, a writable ``n2`` with
``b2``, ``block-export-add`` of ``n3`` with the other node's ``b3``) and ``qemu-img map`` reads each export's
``base:allocation`` and, with ``x-dirty-bitmap``, its bitmap: dirty ranges show as ``"data": false``.
223 writes under the bitmaps with qemu-io on the image file between two QEMU runs (persistent bitmaps); here
the writes go through the node. 223's qemu-io reads over NBD and its qemu-nbd half are left out; its maps with
``--max-length``/``--start-offset`` run against the QMP server's export of ``b2``.
"""

from __future__ import annotations

import pytest

from bitlab.conformance.runner import compare, play
from tests.nbdmap import map_json

K, M = 1 << 10, 1 << 20
IMG = "driver=nbd,server.type=unix,server.path=nbd.sock"


def _q(execute: str, arguments: dict | None = None) -> dict:
    return {"qmp": {"execute": execute, **({"arguments": arguments} if arguments is not None else {})}}


def _map(*args: str) -> dict:
    return {"qemu-img": ["map", "--output=json", *args]}


def steps() -> list[dict]:
    return [
        {"qemu-img": ["create", "-f", "qcow2", "-o", "cluster_size=4k", "t.qcow2", "4M"]},
        _q("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": {"driver": "file", "filename": "t.qcow2"}}),
        {"write": {"node": "n", "offset": M, "length": 2 * M, "pattern": 0x11}},
        _q("block-dirty-bitmap-add", {"node": "n", "name": "b", "granularity": 64 * K}),
        _q("block-dirty-bitmap-add", {"node": "n", "name": "b2", "granularity": 512}),
        {"write": {"node": "n", "offset": 512, "length": 512, "pattern": 0x22}},
        {"write": {"node": "n", "offset": 2 * M, "length": 2 * M, "pattern": 0x33}},
        _q("block-dirty-bitmap-disable", {"node": "n", "name": "b"}),
        _q("blockdev-add", {"driver": "null-co", "node-name": "null", "size": 4 * M}),
        _q("block-dirty-bitmap-add", {"node": "null", "name": "b3"}),
        _q("nbd-server-add", {"device": "n"}),
        _q("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}}),
        _q("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd1.sock"}}}),
        _q("nbd-server-add", {"device": "n", "bitmap": "b"}),
        _q("nbd-server-add", {"device": "nosuch"}),
        _q("nbd-server-add", {"device": "n"}),
        _q("nbd-server-add", {"device": "n", "name": "n2", "bitmap": "b2"}),
        _q("nbd-server-add", {"device": "n", "name": "n2", "bitmap": "b3"}),
        _q("nbd-server-add", {"device": "n", "name": "n2", "writable": True, "description": "some text",
                              "bitmap": "b2"}),
        _q("block-export-add", {"type": "nbd", "node-name": "n", "id": "n3", "name": "n3",
                                "bitmaps": [{"node": "null", "name": "b3"}]}),
        _map("--image-opts", f"{IMG},export=n"),
        _map("--image-opts", f"{IMG},export=n,x-dirty-bitmap=qemu:dirty-bitmap:b"),
        _map("--image-opts", f"{IMG},export=n2,x-dirty-bitmap=qemu:dirty-bitmap:b2"),
        _map("--image-opts", f"{IMG},export=n3,x-dirty-bitmap=qemu:dirty-bitmap:b3"),
        _map("--image-opts", "--max-length=12345", f"{IMG},export=n2,x-dirty-bitmap=qemu:dirty-bitmap:b2"),
        _map("--image-opts", "--start-offset=12345", f"{IMG},export=n2,x-dirty-bitmap=qemu:dirty-bitmap:b2"),
        _q("nbd-server-remove", {"name": "n"}),
        _q("nbd-server-remove", {"name": "n2"}),
        _q("nbd-server-remove", {"name": "n2"}),
        _q("nbd-server-stop"),
        _q("nbd-server-stop"),
    ]


EXPECTED_MAPS = [  # 223.out, in order (the last two from its qemu-nbd half, same bitmap and options)
    map_json((0, 4096, True, False, True), (4096, 1044480, True, True, False), (1048576, 3145728, True, False, True)),
    map_json((0, 65536, False, False, False), (65536, 2031616, True, False, True),
          (2097152, 2097152, False, False, False)),
    map_json((0, 512, True, False, True), (512, 512, False, False, False), (1024, 2096128, True, False, True),
          (2097152, 2097152, False, False, False)),
    map_json((0, 4194304, True, False, True)),
    map_json((0, 512, True, False, True), (512, 512, False, False, False), (1024, 11321, True, False, True)),
    map_json((12345, 2084807, True, False, True), (2097152, 2097152, False, False, False)),
]


def _err(desc: str) -> dict:
    return {"error": {"class": "GenericError", "desc": desc}}


def test_the_maps_of_223():
    story = steps()
    out = play({"name": "223", "steps": story}, "sim")
    assert out.error is None
    maps = [r for s, r in zip(story, out.replies) if "qemu-img" in s and s["qemu-img"][0] == "map"]
    assert [m["stdout"] for m in maps] == EXPECTED_MAPS
    assert all(m["returncode"] == 0 for m in maps)


def test_the_qmp_replies_of_223():
    story = steps()
    out = play({"name": "223", "steps": story}, "sim")
    replies = [r for s, r in zip(story, out.replies) if "qmp" in s][6:]
    assert replies == [
        _err("NBD server not running"), {"return": {}}, _err("NBD server already running"), {"return": {}},
        _err("Cannot find device='nosuch' nor node-name='nosuch'"), _err("Block export id 'n' is already in use"),
        _err("Enabled bitmap 'b2' incompatible with readonly export"), _err("Bitmap 'b3' is not found"),
        {"return": {}}, {"return": {}}, {"return": {}}, {"return": {}}, _err("Export 'n2' is not found"),
        {"return": {}}, _err("NBD server not running")]


@pytest.mark.qemu
def test_223_as_in_qemu():
    scenario = {"name": "iotest-223", "steps": steps()}
    real, sim = play(scenario, "qemu", "qsd"), play(scenario, "sim")
    assert [d.render() for d in compare(scenario, real, sim)] == []
