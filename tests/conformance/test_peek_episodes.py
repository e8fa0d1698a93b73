"""The peek episodes of the random scenarios (bitlab/conformance/gen_peek.py): qemu-img ``-U`` reading images QEMU
holds open read-write, on their own stream (the rest of every scenario stays as it was) and identical on real QEMU
7.2."""

from __future__ import annotations

import json
import re

import pytest

from bitlab.conformance import generator
from bitlab.conformance.gen_peek import peek_scenario
from bitlab.conformance.generator import random_scenario
from bitlab.conformance.runner import check

from .episodes import added_steps

MINE = re.compile(r'"pk[tj]?\d+"|pk[tc]?\d+\.(qcow2|img)')


def _mine(step: dict) -> bool:
    return MINE.search(json.dumps(step)) is not None


def test_other_steps_unchanged(monkeypatch):
    with_episodes = [random_scenario(26001, i)["steps"] for i in range(12)]
    monkeypatch.setattr(generator, "PEEK_CHANCE", 0.0)
    without = [random_scenario(26001, i)["steps"] for i in range(12)]
    assert sum(any(map(_mine, steps)) for steps in with_episodes) == 6
    for steps, base in zip(with_episodes, without):
        assert all(_mine(s) or "settle-jobs" in s or "flush" in s for s in added_steps(steps, base))
    assert not any(_mine(s) for steps in without for s in steps)


def test_episodes_read_without_the_lock_and_back_up_with_one_worker():
    steps = [s for i in range(40) for s in peek_scenario(26002, i)["steps"]]
    reads = [s["qemu-img"] for s in steps if "qemu-img" in s and "-U" in s["qemu-img"]]
    assert {r[0] for r in reads} == {"map", "check", "compare", "convert", "measure"}
    backups = [s["qmp"]["arguments"] for s in steps if s.get("qmp", {}).get("execute") == "blockdev-backup"]
    assert backups and all(b["x-perf"] == {"max-workers": 1} for b in backups)
    writes = [s["write"] for s in steps if "write" in s and s["write"]["node"].startswith("pk")]
    assert {w["flush"] for w in writes} == {True, False}


@pytest.mark.qemu
@pytest.mark.parametrize("index", range(8))
def test_peek_scenarios_as_in_qemu(index):
    assert [d.render() for d in check(peek_scenario(26003, index))] == []


@pytest.mark.qemu
@pytest.mark.parametrize("index", [16, 80])
def test_requests_taken_together_write_back_as_in_qemu(index):
    """Steps whose writes bitlab merges as one batch (nothing read between them) across a new L2 table's
    write-back: a zero write's flags before it (80), a data link before a later request's zeroing allocates a
    table (16). Both differed until the write-back inside a batch kept the links and flags made before it."""
    assert [d.render() for d in check(peek_scenario(25022, index))] == []
