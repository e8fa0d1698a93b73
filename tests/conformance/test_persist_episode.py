"""The persistent-bitmap episodes of the random scenarios (bitlab/conformance/gen_persist.py): on their own
stream, so the rest of every scenario stays as it was, and identical on real QEMU 7.2."""

from __future__ import annotations

import json
import random

import pytest

from bitlab.conformance import generator
from bitlab.conformance.gen_persist import Persist, persist_episode
from bitlab.conformance.generator import random_scenario
from bitlab.conformance.runner import check

from .episodes import added_steps


def _touches_pp(step: dict) -> bool:
    text = json.dumps(step)
    return any(mark in text for mark in ('"pp"', '"ppf"', "pp.qcow2", '"ppc'))


def test_other_steps_unchanged(monkeypatch):
    with_episodes = [random_scenario(12100, i)["steps"] for i in range(12)]
    monkeypatch.setattr(generator, "PERSIST_CHANCE", 0.0)
    without = [random_scenario(12100, i)["steps"] for i in range(12)]
    assert sum(any(map(_touches_pp, steps)) for steps in with_episodes) == 4
    for steps, base in zip(with_episodes, without):
        extra = added_steps(steps, base)  # the scenario without episodes, in order, and episode steps
        assert all(_touches_pp(s) or s["qmp"]["execute"] == "query-named-block-nodes" for s in extra)
    assert not any(_touches_pp(s) for steps in without for s in steps)


def test_episode_stores_and_loads():
    steps = random_scenario(12100, 0)["steps"]
    mine = [s for s in steps if _touches_pp(s)]
    assert mine[0] == {"qemu-img": ["create", "-f", "qcow2", "-o", "cluster_size=65536", "pp.qcow2", str(8 << 20)]}
    executes = [s["qmp"]["execute"] for s in mine if "qmp" in s]
    assert "blockdev-del" in executes and executes.count("blockdev-add") >= 2
    assert {"qemu-img": ["info", "pp.qcow2"]} in mine


def test_episodes_do_not_map_the_image():
    """QEMU's map of an image with stored bitmaps varies with the host's page cache: the episodes leave it out."""
    pe = Persist(random.Random(5))
    for _ in range(12):
        assert not [s for s in persist_episode(pe, 8 << 20) if s.get("qemu-img", [None])[0] == "map"]


@pytest.mark.qemu
@pytest.mark.parametrize("index", [0, 7])
def test_identical_on_qemu(index):
    scenario = random_scenario(12100, index)
    assert any(map(_touches_pp, scenario["steps"]))
    assert check(scenario) == []
