"""The compressed-cluster scenarios (bitlab/conformance/gen_compress.py, ``--focus compress``): shaped to keep
clear of what QEMU does not fix and of what bitlab refuses, and identical on real QEMU 7.2."""

from __future__ import annotations

import pytest

from bitlab.conformance.gen_compress import compress_scenario
from bitlab.conformance.report import FOCUS
from bitlab.conformance.runner import check, play


def test_focus_is_listed():
    assert FOCUS["compress"] is compress_scenario


def test_scenarios_are_deterministic_and_varied():
    assert compress_scenario(7, 3) == compress_scenario(7, 3)
    scenarios = [compress_scenario(7, i) for i in range(60)]
    steps = [s for sc in scenarios for s in sc["steps"]]
    backups = [s["qmp"]["arguments"] for s in steps if s.get("qmp", {}).get("execute") in ("blockdev-backup",
                                                                                             "drive-backup")]
    compressed = [b for b in backups if b.get("compress")]
    assert compressed and all(b["x-perf"] == {"max-workers": 1} for b in backups)
    assert {b["sync"] for b in compressed} == {"full", "top", "bitmap"}
    assert {b.get("mode") for b in compressed} == {None, "existing", "absolute-paths"}
    writes = [s["write"] for s in steps if "write" in s and s["write"].get("compress")]
    assert any(w["offset"] % (64 << 10) for w in writes)  # unaligned: EINVAL
    assert all(sc["drives"][0]["id"] == "drive0" for sc in scenarios)
    assert any(s.get("qemu-img", [""])[0] == "convert" and "-c" in s["qemu-img"] for s in steps)
    assert any(s.get("qemu-img", [""])[:2] == ["resize", "--shrink"] for s in steps)
    assert any(s.get("zero", {}).get("unmap") for s in steps)  # (zero writes over compressed clusters only)
    reopened = [s for s in steps if s.get("qmp", {}).get("execute") == "blockdev-del"
                and s["qmp"]["arguments"]["node-name"].startswith("s")]
    assert reopened
    for sc in scenarios:  # a node a backup reads (but the drive) was opened without the page cache (gen_compress)
        opened: dict[str, dict] = {}
        for step in sc["steps"]:
            execute, args = step.get("qmp", {}).get("execute"), step.get("qmp", {}).get("arguments", {})
            if execute == "blockdev-add":
                opened[args["node-name"]] = args
            elif execute in ("blockdev-backup", "drive-backup") and args["device"] != "drive0":
                assert opened[args["device"]].get("cache") == {"direct": True}


def test_nothing_is_refused_on_the_simulator():
    """No scenario meets what bitlab does not simulate (a refusal would be a difference on every run)."""
    for i in range(80):
        out = play(compress_scenario(11, i), "sim")
        assert out.error is None, (i, out.error)
        assert not any("bitlab does not" in str(r) for r in out.replies), i


@pytest.mark.qemu
@pytest.mark.parametrize("index", [0, 5])
def test_identical_on_qemu(index):
    assert check(compress_scenario(1, index)) == []
