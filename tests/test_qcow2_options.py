"""blockdev-add's qcow2 options that change nothing bitlab simulates (overlap-check) or that bitlab's
images never allow (encrypt), against qemu-storage-daemon 7.2: QEMU's replies, texts and node entries."""

from __future__ import annotations

import pytest

from bitlab import Machine
from bitlab.conformance.compare import normalise

from .both import on_both

# (options added to a qcow2 blockdev-add, QEMU 7.2's error text or None)
CASES = [
    ({"overlap-check": "none"}, None),
    ({"overlap-check": "cached"}, None),
    ({"overlap-check": {"bitmap-directory": True, "template": "constant"}}, None),
    ({"overlap-check": "bogus"}, "Parameter 'overlap-check' does not accept value 'bogus'"),
    ({"overlap-check": {"template": "none", "l2": False}}, "Parameter 'overlap-check.l2' is unexpected"),
    ({"overlap-check": {"template": "bogus"}}, "Parameter 'template' does not accept value 'bogus'"),
    ({"overlap-check": 5}, "Invalid parameter type for 'overlap-check', expected: Qcow2OverlapChecks"),
    ({"encrypt": {"format": "aes", "key-secret": "s0"}},
     "No encryption in image header, but options specified format 'aes'"),
    ({"encrypt": {"format": "luks"}}, "No encryption in image header, but options specified format 'luks'"),
    ({"encrypt": {}}, "Parameter 'encrypt.format' is missing"),
    ({"encrypt": {"format": "bogus"}}, "Parameter 'format' does not accept value 'bogus'"),
]


def story(vm: Machine) -> list:
    """Each case on a fresh node name; after a success, the node's entry (then it is deleted)."""
    vm.qemu_img("create", "-f", "qcow2", "a.qcow2", "64M")
    out = []
    for i, (extra, _) in enumerate(CASES):
        reply = vm.execute({"execute": "blockdev-add", "arguments": {
            "driver": "qcow2", "node-name": f"n{i}", "file": {"driver": "file", "filename": "a.qcow2"}, **extra}})
        if "error" in reply:
            out.append(reply["error"])
            continue
        out.append(normalise(vm.qmp("query-named-block-nodes", {"flat": True})))
        vm.qmp("blockdev-del", {"node-name": f"n{i}"})
    return out


def test_texts_as_qemu():
    got = story(Machine())
    for (extra, text), reply in zip(CASES, got, strict=True):
        if text is None:
            assert isinstance(reply, list) and reply[0]["node-name"].startswith("n"), extra
        else:
            assert reply == {"class": "GenericError", "desc": text}, extra
    # overlap-check changes neither the node's file name nor anything else query-named-block-nodes shows
    assert got[0][0]["file"] == "a.qcow2" and got[0] == [{**got[1][0], "node-name": "n0"}, got[1][1]]


@pytest.mark.qemu
def test_on_both_backends():
    real, sim = on_both(story)
    assert sim == real
