"""The copy-offloading episodes of the random scenarios (bitlab/conformance/gen_copyrange.py): on their own
stream, so the rest of every scenario stays as it was, and identical on real QEMU 7.2."""

from __future__ import annotations

import json
import re

import pytest

from bitlab.conformance import generator
from bitlab.conformance.generator import random_scenario
from bitlab.conformance.runner import check

from .episodes import added_steps

MINE = re.compile(r'"c[rtj]\d+"|c[rt]\d+\.qcow2')


def _touches_cr(step: dict) -> bool:
    return MINE.search(json.dumps(step)) is not None


def test_other_steps_unchanged(monkeypatch):
    with_episodes = [random_scenario(15101, i)["steps"] for i in range(12)]
    monkeypatch.setattr(generator, "COPYRANGE_CHANCE", 0.0)
    without = [random_scenario(15101, i)["steps"] for i in range(12)]
    assert sum(any(map(_touches_cr, steps)) for steps in with_episodes) == 3
    for steps, base in zip(with_episodes, without):
        extra = added_steps(steps, base)  # the scenario without episodes, in order, and episode steps
        assert all(_touches_cr(s) or "settle-jobs" in s or "sleep" in s or s == {"qmp": {"execute": "query-block-jobs"}}
                   for s in extra)
    assert not any(_touches_cr(s) for steps in without for s in steps)


def test_episodes_back_up_with_copy_range():
    backups = [s["qmp"] for i in range(60) for s in random_scenario(15101, i)["steps"]
               if _touches_cr(s) and s.get("qmp", {}).get("execute") in ("drive-backup", "blockdev-backup")]
    assert {b["execute"] for b in backups} == {"drive-backup", "blockdev-backup"}
    perf = [b["arguments"]["x-perf"] for b in backups]
    assert any(p["use-copy-range"] for p in perf) and not all(p["use-copy-range"] for p in perf)
    assert {b["arguments"].get("mode") for b in backups} == {"existing", "absolute-paths", None}
    for b in backups:  # several workers only where QEMU's layout of the target does not depend on timing
        assert b["arguments"]["x-perf"]["max-workers"] == 1 or b["arguments"]["x-perf"]["use-copy-range"]
    targets = {s["qemu-img"][4] for i in range(60) for s in random_scenario(15101, i)["steps"]
               if "qemu-img" in s and s["qemu-img"][0] == "create" and re.search(r"ct\d+\.qcow2", json.dumps(s))}
    assert targets == {"cluster_size=65536", "cluster_size=4096", "cluster_size=2097152"}  # 4 KiB: several L2 tables


@pytest.mark.qemu
@pytest.mark.parametrize("index", [4, 10, 11, 33])  # 33: a 4 KiB-cluster target
def test_identical_on_qemu(index):
    scenario = random_scenario(15101, index)
    assert any(map(_touches_cr, scenario["steps"]))
    assert check(scenario) == []
