"""The blkdebug episodes of the random scenarios (bitlab/conformance/gen_blkdebug.py): on their own stream, so the
rest of every scenario stays as it was, shaped to keep clear of the known differences, and identical on real
QEMU 7.2."""

from __future__ import annotations

import json
import random

import pytest

from bitlab.conformance import generator
from bitlab.conformance.gen_blkdebug import Blkdebugs, _fails_l1_flush, blkdebug_episode, blkdebug_scenario
from bitlab.conformance.generator import random_scenario
from bitlab.conformance.runner import check

from .episodes import added_steps


def _touches_be(step: dict) -> bool:
    return '"be' in json.dumps(step)  # (its images be<n>.*, nodes be<n>, be<n>d, be<n>f, bet<n>, jobs bej<n>)


def _episode_step(step: dict) -> bool:
    return _touches_be(step) or step == {"settle-jobs": True} or step.get("qmp", {}).get("execute") in (
        "query-blockstats", "query-named-block-nodes", "query-jobs")


def test_other_steps_unchanged(monkeypatch):
    with_episodes = [random_scenario(18300, i)["steps"] for i in range(12)]
    monkeypatch.setattr(generator, "BLKDEBUG_CHANCE", 0.0)
    without = [random_scenario(18300, i)["steps"] for i in range(12)]
    assert any(any(map(_touches_be, steps)) for steps in with_episodes)
    for steps, base in zip(with_episodes, without):
        assert all(map(_episode_step, added_steps(steps, base)))
    assert not any(_touches_be(s) for steps in without for s in steps)


def _episodes(count: int) -> list[tuple[dict, list[dict]]]:
    """(the blkdebug node's options, the episode's steps) of ``count`` episodes."""
    out = []
    for n in range(count):
        steps = blkdebug_episode(Blkdebugs(random.Random(n)), 1 << 20)
        debug = next(s["qmp"]["arguments"] for s in steps if s.get("qmp", {}).get("arguments", {}).get(
            "driver") == "blkdebug")
        out.append((debug, steps))
    return out


def test_raw_images_are_flushed_only_by_fua_writes():
    raw = [steps for _, steps in _episodes(300) if steps[0]["qemu-img"][2] == "raw"]
    assert raw
    io = [next(iter(s.values())) for steps in raw for s in steps if {"write", "zero", "discard"} & s.keys()]
    assert io and all(i["flush"] is False for i in io)
    assert not any("flush" in s for steps in raw for s in steps)
    assert any(i.get("fua") for i in io)


def test_no_check_where_an_l1_flush_may_fail():
    seen = 0
    for debug, steps in _episodes(300):
        if _fails_l1_flush(debug):
            seen += 1
            assert not any("qemu-img" in s and s["qemu-img"][0] == "check" for s in steps)
    assert seen
    assert _fails_l1_flush({"inject-error": [{"event": "l1_update", "iotype": "flush"}]})
    assert _fails_l1_flush({"inject-error": [{"event": "pwritev_done", "state": 2}],
                            "set-state": [{"event": "l1_update", "state": 1, "new_state": 2}]})
    assert not _fails_l1_flush({"inject-error": [{"event": "l1_update"}]})


@pytest.mark.qemu
@pytest.mark.parametrize("index", [52, 70])
def test_identical_on_qemu(index):
    assert check(blkdebug_scenario(18311, index)) == []
