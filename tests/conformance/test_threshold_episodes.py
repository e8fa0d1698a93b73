"""Write-threshold episodes in the random scenarios (bitlab/conformance/gen_threshold.py): their own random
stream (every other step of a seed stays what it was), what the comparison covers (``BLOCK_WRITE_THRESHOLD``
per node, ``query-blockstats`` with only bitlab's known differences masked), and a blkdebug node's
``wr_highest_offset`` compared with real QEMU."""

from __future__ import annotations

import pytest

from bitlab import Machine
from bitlab.conformance import gen_running, gen_threshold, generator
from bitlab.conformance.compare import compare_thresholds, normalise
from bitlab.conformance.runner import check, play

from ..both import on_both
from ..test_blockstats import _masked, file_specific, stats

MiB = 1 << 20


def _threshold_step(step: dict) -> bool:
    return step.get("qmp", {}).get("execute") in ("block-set-write-threshold", "query-blockstats")


def _insertions(without: list[dict], with_: list[dict]) -> list[dict]:
    """The steps of ``with_`` that are not in ``without`` (which must be a subsequence of ``with_``)."""
    extra, i = [], 0
    for step in with_:
        if i < len(without) and step == without[i]:
            i += 1
        else:
            extra.append(step)
    assert i == len(without), "a step of the scenario without thresholds is missing or changed"
    return extra


@pytest.mark.parametrize("seed", [9001, 10001])
def test_threshold_stream_leaves_the_other_steps_alone(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the episodes (and the final query-blockstats) the scenarios are those without, plus threshold
    steps and the guest writes that follow some of them; running scenarios likewise."""
    with_ = [generator.random_scenario(seed, i)["steps"] for i in range(40)]
    running = [gen_running.running_scenario(seed, i)["steps"] for i in range(40)]
    monkeypatch.setattr(generator, "THRESHOLD_CHANCE", 0.0)
    monkeypatch.setattr(gen_threshold, "RUNNING_CHANCE", 0.0)
    real_append = generator._qmp
    monkeypatch.setattr(generator, "_qmp", lambda ex, args=None: (
        {"skip": True} if ex == "query-blockstats" else real_append(ex, args)))
    without = [[s for s in generator.random_scenario(seed, i)["steps"] if "skip" not in s] for i in range(40)]
    plain = [gen_running.running_scenario(seed, i)["steps"] for i in range(40)]
    inserted = [s for a, b in zip(without + plain, with_ + running) for s in _insertions(a, b)]
    kinds = {s["qmp"]["execute"] if "qmp" in s else next(iter(s)) for s in inserted}
    assert kinds == {"block-set-write-threshold", "query-blockstats", "write", "sleep"}
    assert sum(1 for s in inserted if _threshold_step(s)) > 40


def test_episodes_fire_events_on_bitlab() -> None:
    """Some scenarios of a seed fire BLOCK_WRITE_THRESHOLD; the data names the node's threshold."""
    fired = []
    for i in range(25):
        scenario = generator.random_scenario(11001, i)
        armed = {s["qmp"]["arguments"]["node-name"] for s in scenario["steps"]
                 if s.get("qmp", {}).get("execute") == "block-set-write-threshold"}
        for ev in play(scenario, "sim").events:
            if ev["event"] == "BLOCK_WRITE_THRESHOLD":
                assert ev["data"]["node-name"] in armed and ev["data"]["amount-exceeded"] > 0
                fired.append(ev["data"])
    assert len(fired) >= 3


def test_compare_thresholds_per_node() -> None:
    a = {"event": "BLOCK_WRITE_THRESHOLD", "data": {"node-name": "t1", "write-threshold": 4096,
                                                    "amount-exceeded": 61440}}
    b = {"event": "BLOCK_WRITE_THRESHOLD", "data": {"node-name": "t1", "write-threshold": 4096,
                                                    "amount-exceeded": 126976}}
    other = {"event": "BLOCK_WRITE_THRESHOLD", "data": {"node-name": "d0", "write-threshold": 512,
                                                        "amount-exceeded": 3584}}
    job = {"event": "JOB_STATUS_CHANGE", "data": {"id": "j", "status": "running"}}
    assert compare_thresholds([a, other, job], [other, a]) == {}  # per node: the nodes' interleaving is free
    assert compare_thresholds([a, other], [b, other]) == {"t1": ([a["data"]], [b["data"]])}
    assert compare_thresholds([a], []) == {"t1": ([a["data"]], None)}


def test_blockstats_are_compared_whole() -> None:
    """Every node's wr_highest_offset is compared, an automatically named file node's (and a blkdebug node's
    over it) too: bitlab knows it without hearing every write (bitlab/block/wstats.py). Only the auto name's
    digits are masked."""
    auto = {"node-name": "#block123", "stats": stats(4096), "driver-specific": file_specific(1, 512)}
    debug = {"node-name": "#block456", "stats": stats(4096), "parent": auto}
    fmt = {"node-name": "d0", "stats": stats(8192), "parent": {**auto, "node-name": "d0f"}}
    out = normalise([auto, debug, fmt])
    assert out[0] == {**auto, "node-name": "#blockNNN"}
    assert out[1]["stats"]["wr_highest_offset"] == 4096 and out[1]["parent"]["stats"]["wr_highest_offset"] == 4096
    assert out[2] == fmt
    assert normalise([auto]) != normalise([{**auto, "stats": stats(8192)}])


def blkdebug_story(vm: Machine) -> list:
    """qcow2 over blkdebug over a file: both lower nodes hear qcow2's host writes."""
    vm.qemu_img("create", "-f", "qcow2", "k.qcow2", "4M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "k", "file": {
        "driver": "blkdebug", "node-name": "kd", "image": {"driver": "file", "filename": "k.qcow2",
                                                           "node-name": "kf"}}})
    vm.write("k", "1M", "64k")
    vm.write("k", "0", "4k")
    return _masked(vm.qmp("query-blockstats", {"query-nodes": True}), {})


def test_blkdebug_hears_qcow2_writes() -> None:
    """Header, refcount table and block, L1, L2, then two data clusters: the file ends at 448 KiB."""
    kf = {"node-name": "kf", "stats": stats(458752), "driver-specific": file_specific()}
    kd = {"node-name": "kd", "stats": stats(458752), "parent": kf}
    assert blkdebug_story(Machine()) == [kd, kf, {"node-name": "k", "stats": stats(MiB + 65536), "parent": kd}]


@pytest.mark.qemu
def test_blkdebug_matches_qemu() -> None:
    real, sim = on_both(blkdebug_story)
    assert real == sim


@pytest.mark.qemu
def test_threshold_scenarios_match_qemu() -> None:
    """Scenarios whose threshold events once differed (a running backup's target armed while block-copy's
    workers or a copy-before-write over several clusters wrote in parallel: QEMU's order varies; a guest
    write sent right after the job started) or whose blockstats did (resizes, blkdebug)."""
    for index in (24, 37, 132):
        assert check(generator.random_scenario(11001, index)) == []
    for index in (5, 165):
        assert check(gen_running.running_scenario(11004, index)) == []


def test_running_target_thresholds_are_at_the_end_or_disarmed() -> None:
    """A throttled backup's target is armed in its last 64 KiB, or disarmed right after the job's first
    request (a wait, then 0)."""
    seen = set()
    for i in range(60):
        steps = gen_running.running_scenario(11004, i)["steps"]
        for j, step in enumerate(steps):
            args = step.get("qmp", {}).get("arguments", {})
            if step.get("qmp", {}).get("execute") != "block-set-write-threshold" or not args["node-name"][0] == "t":
                continue
            value = args["write-threshold"]
            if value >= 8 * MiB - 65536:
                seen.add("end")
            elif value and steps[j + 1]["qmp"]["execute"] == "blockdev-backup":
                job = steps[j + 1]["qmp"]["arguments"]["job-id"]
                assert steps[j + 2:j + 4] == [{"sleep": gen_threshold.WAIT, "first-requests": [job]},
                                              {"qmp": {"execute": "block-set-write-threshold", "arguments": {
                                                  "node-name": args["node-name"], "write-threshold": 0}}}]
                seen.add("first")
    assert seen == {"end", "first"}
