"""The external-snapshot episodes of the random scenarios (bitlab/conformance/gen_snapshot.py): on their own
stream (the rest of every scenario stays as it was), their peeks on a stream of their own again (the episodes stay
what they were but for the writes they leave unflushed), and identical on real QEMU 7.2 — the peeks see the
old node flushed by every snapshot's prepare, refused ones too."""

from __future__ import annotations

import json
import random
import re

import pytest

from bitlab.conformance import generator
from bitlab.conformance.gen_snapshot import Snapshots, snapshot_episode, snapshot_scenario
from bitlab.conformance.generator import random_scenario
from bitlab.conformance.runner import check

from .episodes import added_steps

MINE = re.compile(r'"s[bv]\d*"|s[bv]\d*\.qcow2')


QUERY = {"qmp": {"execute": "query-named-block-nodes", "arguments": {"flat": True}}}


def _mine(step: dict) -> bool:
    return MINE.search(json.dumps(step)) is not None


def test_other_steps_unchanged(monkeypatch):
    with_episodes = [random_scenario(26004, i)["steps"] for i in range(30)]
    monkeypatch.setattr(generator, "SNAPSHOT_CHANCE", 0.0)
    without = [random_scenario(26004, i)["steps"] for i in range(30)]
    assert sum(any(map(_mine, steps)) for steps in with_episodes) == 10
    for steps, base in zip(with_episodes, without):
        # (a refused snapshot of a scenario node, and a peek at its image, name that node; the episode's query)
        assert all(_mine(s) or "snapshot" in json.dumps(s) or "-U" in s.get("qemu-img", []) or s == QUERY
                   for s in added_steps(steps, base))
    assert not any(_mine(s) for steps in without for s in steps)


def _episodes(peeks: random.Random | None, seed: int) -> list[dict]:
    sn = Snapshots(random.Random(seed), ["d0", "d1"], peeks, peek_chance=1.0)
    return [s for _ in range(6) for s in snapshot_episode(sn, 8 << 20)]


def _unflushed(step: dict) -> dict:
    return {"write": {k: v for k, v in step["write"].items() if k != "flush"}} if "write" in step else step


def test_peeks_only_add_steps_and_leave_writes_unflushed():
    for seed in range(20):
        plain = _episodes(None, seed)
        peeking = _episodes(random.Random(f"peek{seed}"), seed)
        extra = added_steps([_unflushed(s) for s in peeking], plain)
        assert extra and all("write" in s or "-U" in s.get("qemu-img", []) for s in extra)
        assert all(s["write"].get("flush", True) for s in plain if "write" in s)


def test_focus_scenarios_peek_around_refused_and_taken_snapshots():
    steps = [s for i in range(30) for s in snapshot_scenario(26005, i)["steps"]]
    reads = {s["qemu-img"][0] for s in steps if "-U" in s.get("qemu-img", [])}
    assert reads == {"map", "check", "info"}
    assert {s["write"].get("flush", True) for s in steps if "write" in s} == {True, False}
    kinds = {s["qmp"]["execute"] for s in steps if "snapshot" in s.get("qmp", {}).get("execute", "")}
    assert kinds == {"blockdev-snapshot", "blockdev-snapshot-sync"}


@pytest.mark.qemu
@pytest.mark.parametrize("daemon", ["qsd", "system"])
@pytest.mark.parametrize("index", range(4))
def test_snapshot_scenarios_as_in_qemu(index, daemon):
    """(Before external_snapshot_prepare's flush was simulated, 22 of 30 such scenarios differed.)"""
    assert [d.render() for d in check(snapshot_scenario(26006, index), daemon)] == []
