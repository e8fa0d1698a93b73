"""block-dirty-bitmap-merge's error order in QEMU 7.2 (found by the random conformance run, seed 2002):
for each source in turn, a missing source first, then a busy target, then the source itself."""

from __future__ import annotations

import pytest

from bitlab.conformance.runner import compare, play


def _qmp(execute: str, arguments: dict) -> dict:
    return {"qmp": {"execute": execute, "arguments": arguments}}


MERGES = [  # (sources, target) -> QEMU 7.2's error
    (["nope"], "b0", "Dirty bitmap 'nope' not found"),
    ([{"node": "d0", "name": "nope"}], "b0", "Dirty bitmap 'nope' not found"),
    ([{"node": "d0", "name": "b2"}], "b0", "Bitmap 'b0' is currently in use by another operation and cannot be used"),
    (["b1"], "b0", "Bitmap 'b0' is currently in use by another operation and cannot be used"),
    (["b0"], "b1", "Bitmap 'b0' is currently in use by another operation and cannot be used"),
    ([{"node": "d0", "name": "b2"}, "nope"], "b1",
     "Bitmaps are of different sizes (destination size is 8388608, source size is 4194304) and can't be merged"),
    (["nope", {"node": "d0", "name": "b2"}], "b1", "Dirty bitmap 'nope' not found"),
]


def _scenario() -> dict:
    """d1's b0 is busy (exported over NBD); d0 is half d1's size."""
    steps: list[dict] = []
    for name, size in (("d0", "4M"), ("d1", "8M")):
        steps += [{"qemu-img": ["create", "-f", "qcow2", f"{name}.qcow2", size]},
                  _qmp("blockdev-add", {"driver": "qcow2", "node-name": name,
                                        "file": {"driver": "file", "filename": f"{name}.qcow2"}})]
    steps += [_qmp("block-dirty-bitmap-add", {"node": n, "name": b}) for n, b in (("d1", "b0"), ("d1", "b1"),
                                                                                  ("d0", "b2"))]
    steps += [_qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}}),
              _qmp("block-export-add", {"type": "nbd", "id": "e", "node-name": "d1", "name": "x", "writable": True,
                                        "bitmaps": ["b0"]})]
    steps += [_qmp("block-dirty-bitmap-merge", {"node": "d1", "target": target, "bitmaps": sources})
              for sources, target, _ in MERGES]
    return {"name": "merge-order", "steps": steps}


def test_merge_errors_in_qemu_order():
    replies = play(_scenario(), "sim").replies[-len(MERGES):]
    assert [r["error"]["desc"] for r in replies] == [desc for _, _, desc in MERGES]


@pytest.mark.qemu
def test_merge_errors_on_real_qemu():
    scenario = _scenario()
    assert compare(scenario, play(scenario, "qemu"), play(scenario, "sim")) == []
