"""The discard-option episodes of the random scenarios (bitlab/conformance/gen_discard.py): on their own stream,
so the rest of every scenario stays as it was, and identical on real QEMU 7.2."""

from __future__ import annotations

import json
import random

import pytest

from bitlab.conformance import generator
from bitlab.conformance.gen_discard import Discards, _range, discard_episode
from bitlab.conformance.generator import random_scenario
from bitlab.conformance.runner import check

from .episodes import added_steps


def _touches_dq(step: dict) -> bool:
    return "dq" in json.dumps(step)  # (its nodes dq<n>, dq<n>f, dq<n>d, dqt<n>, its images, jobs dqj<n>)


def _episode_step(step: dict) -> bool:
    """A step only an episode makes: on its own nodes and images, or the job settling and the counters."""
    return _touches_dq(step) or step == {"settle-jobs": True} or step.get("qmp", {}) == {
        "execute": "query-blockstats", "arguments": {"query-nodes": True}}


def test_other_steps_unchanged(monkeypatch):
    with_episodes = [random_scenario(16500, i)["steps"] for i in range(12)]
    monkeypatch.setattr(generator, "DISCARD_CHANCE", 0.0)
    without = [random_scenario(16500, i)["steps"] for i in range(12)]
    assert sum(any(map(_touches_dq, steps)) for steps in with_episodes) == 4
    for steps, base in zip(with_episodes, without):
        extra = added_steps(steps, base)  # the scenario without episodes, in order, and episode steps
        assert all(map(_episode_step, extra))
    assert not any(_touches_dq(s) for steps in without for s in steps)


def test_episode_opens_counts_and_checks():
    steps = discard_episode(Discards(random.Random("16500/0/discard")), 8 << 20)
    assert steps[0] == {"qemu-img": ["create", "-f", "qcow2", "dq1.qcow2", str(8 << 20)]}
    adds = [s["qmp"]["arguments"] for s in steps if s.get("qmp", {}).get("execute") == "blockdev-add"]
    assert any(a.get("node-name") == "dq1" and a["driver"] == "qcow2" for a in adds)
    assert {"qmp": {"execute": "blockdev-del", "arguments": {"node-name": "dq1"}}} in steps
    assert steps[-2:] == [{"qemu-img": ["map", "--output=json", "dq1.qcow2"]}, {"qemu-img": ["check", "dq1.qcow2"]}]
    # detect-zeroes=unmap always comes with discard=unmap, and never on a file node
    for _ in range(40):
        for step in discard_episode(Discards(random.Random(_)), 8 << 20):
            for args in [step.get("qmp", {}).get("arguments", {})]:
                for opts in (args, args.get("file") if isinstance(args.get("file"), dict) else {}):
                    if opts.get("detect-zeroes") == "unmap":
                        assert opts["discard"] == "unmap" and opts["driver"] == "qcow2"


def test_images_and_targets_have_64k_or_4k_clusters():
    # 4 KiB: an 8 MiB disk has four L2 tables, which a freeing request may have to make
    creates = [s["qemu-img"] for seed in range(30) for s in discard_episode(Discards(random.Random(seed)), 8 << 20)
               if s.get("qemu-img", [None])[0] == "create"]
    assert {tuple(c[3:5]) if c[3] == "-o" else "default" for c in creates} == {("-o", "cluster_size=4096"), "default"}
    assert any(c[-2].startswith("dqt") and "cluster_size=4096" in c for c in creates)


@pytest.mark.qemu
@pytest.mark.parametrize("index", [0, 5, 9])  # 5, 9: 4 KiB clusters
def test_identical_on_qemu(index):
    scenario = random_scenario(16500, index)
    assert any(map(_touches_dq, scenario["steps"]))
    assert check(scenario) == []


def _grows_after_a_shrink_into_a_cluster(steps: list[dict]) -> bool:
    """Whether the episode's disk (dq1) is shrunk to a size inside one of its clusters, then grown."""
    create = next(step["qemu-img"] for step in steps if "dq1.qcow2" in step.get("qemu-img", []))
    cluster = next((int(o.split("=")[1]) for o in create if o.startswith("cluster_size=")), 65536)
    size, cut = int(create[-1]), False
    for step in steps:
        if step.get("qmp", {}).get("execute") == "block_resize":
            new = step["qmp"]["arguments"]["size"]
            if cut and new > size:
                return True
            cut = new < size and new % cluster != 0 if new != size else cut
            size = new
    return False


def test_episodes_grow_a_disk_after_a_shrink_into_a_cluster():
    """The rest of that cluster then reads as the cluster does (tests/test_block_resize.py), so the episodes
    grow such disks again."""
    episodes = [discard_episode(Discards(random.Random(f"18020/{n}/discard")), 8 << 20) for n in range(30)]
    grown = [n for n, steps in enumerate(episodes) if _grows_after_a_shrink_into_a_cluster(steps)]
    assert grown == [6, 8, 9, 19, 26, 28]


@pytest.mark.qemu
def test_a_grow_after_a_shrink_into_a_data_cluster_then_a_backup_on_qemu():
    steps = discard_episode(Discards(random.Random("18020/151/discard")), 8 << 20)
    assert _grows_after_a_shrink_into_a_cluster(steps)
    assert check({"name": "18020/151", "steps": steps}) == []


def test_requests_on_a_disk_shrunk_below_4k():
    """A shrink may leave less than 4 KiB: the requests after it are 512-byte aligned (random scenario
    1012931046/179 raised there)."""
    rng = random.Random(1)
    for _ in range(200):
        offset, length = _range(rng, 2048)
        assert offset % 512 == 0 and length > 0 and offset + length <= 2048
    assert random_scenario(1012931046, 179)["steps"]
