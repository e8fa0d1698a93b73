"""The run-state scenarios (bitlab/conformance/gen_runstate.py, ``--focus runstate``): ``stop``, ``cont`` and
``query-status`` in throttled backups, error-stopped backups and blkdebug flush stories, on the system emulator,
identical on real QEMU 7.2."""

from __future__ import annotations

import random

import pytest

from bitlab.backends.qemu import QemuDaemonError
from bitlab.conformance.gen_runstate import runstate_scenario, with_runstate
from bitlab.conformance.report import FOCUS, report
from bitlab.conformance.runner import check, play
from bitlab.conformance.steps import qmp_step

RUNSTATE = {"stop", "cont", "query-status"}


def _kinds(scenario: dict) -> set[str]:
    names = {a.get("node-name", "") for s in scenario["steps"]
             for a in [s.get("qmp", {}).get("arguments") or {}] if s.get("qmp", {}).get("execute") == "blockdev-add"}
    return {kind for kind, prefix in (("backup", "d0"), ("error", "rs"), ("flush", "rf"))
            if any(n.startswith(prefix) for n in names)}


def _is_runstate(step: dict) -> bool:
    return "hmp" in step or step.get("qmp", {}).get("execute") in RUNSTATE


def test_focus_is_listed() -> None:
    assert FOCUS["runstate"] is runstate_scenario


def test_scenarios_are_deterministic_and_varied() -> None:
    assert runstate_scenario(7, 3) == runstate_scenario(7, 3)
    assert runstate_scenario(7, 3) != runstate_scenario(7, 4)
    scenarios = [runstate_scenario(7, i) for i in range(60)]
    for sc in scenarios:  # the system emulator first (daemon "auto"), and a run-state command in every episode
        assert _is_runstate(sc["steps"][0])
    assert set().union(*map(_kinds, scenarios)) == {"backup", "error", "flush"}
    steps = [s for sc in scenarios for s in sc["steps"]]
    hmp = {s["hmp"] for s in steps if "hmp" in s}
    assert {"stop", "s", "cont", "c", "info status", "stop foo"} <= hmp
    assert any(s.get("qmp", {}).get("arguments") == {"x": 1} for s in steps)
    rules = [s["qmp"]["arguments"]["file"] for s in steps if s.get("qmp", {}).get("execute") == "blockdev-add"
             and s["qmp"]["arguments"]["node-name"].startswith("rf")]
    assert {r["event"] for f in rules for r in f["set-state"]} == {"flush_to_os", "flush_to_disk"}
    for f in rules:  # one rule an event arms at a time (README "Known differences": stop flushes a raw blkdebug child)
        armed = [(r["event"], r["state"]) for r in f["inject-error"]]
        assert len(armed) == len(set(armed))
    formats = {s["qmp"]["arguments"]["driver"] for s in steps if s.get("qmp", {}).get("execute") == "blockdev-add"
               and s["qmp"]["arguments"]["node-name"].startswith("rf")}
    assert formats == {"qcow2", "raw"}
    backups = [s["qmp"]["arguments"] for s in steps if s.get("qmp", {}).get("execute") == "blockdev-backup"
               and s["qmp"]["arguments"]["job-id"].startswith("rj")]
    assert {b.get("on-source-error", b.get("on-target-error")) for b in backups} == {"stop", "enospc"}


def test_runstate_steps_go_only_where_jobs_have_settled() -> None:
    """Never between a job's start (or speed 0, or a cancel) and its settle step; where allowed, always with
    a chance of 1."""
    write = {"write": {"node": "d0", "offset": 4096, "length": 512, "pattern": 1}}
    settle_write = {"write": {"node": "d0", "offset": 0, "length": 512, "pattern": 2}}
    start = qmp_step("blockdev-backup", {"job-id": "j", "device": "d0", "target": "t", "sync": "full"})
    query = qmp_step("query-jobs")
    steps = [write, start, write, {"sleep": 0.05}, query, qmp_step("block-job-set-speed", {"device": "j", "speed": 0}),
             query, {"settle-jobs": True}, start, settle_write, query, qmp_step("job-cancel", {"id": "j"}), query]
    out = with_runstate(random.Random(1), steps, chance=1.0)
    kept = [i for i, s in enumerate(out) if not _is_runstate(s)]
    assert [out[i] for i in kept] == steps
    before = [_is_runstate(out[i - 1]) if i else False for i in kept]
    assert before == [True, True, False, False, True, True, False, False, True, False, True, True, False]


def test_qsd_is_a_clear_error() -> None:
    with pytest.raises(QemuDaemonError, match=r"^--focus runstate needs QEMU's system emulator"):
        report(1, 1, focus="runstate", daemon="qsd")


def test_nothing_is_refused_on_the_simulator() -> None:
    """Every step runs on bitlab: no refusal, no failed backend, no wait that never ends."""
    for i in range(60):
        out = play(runstate_scenario(11, i), "sim")
        assert out.error is None, (i, out.error)
        assert not any("bitlab does not" in str(r) or r == {"timeout": True} for r in out.replies), i


@pytest.mark.qemu
@pytest.mark.parametrize("index", [0, 1, 5, 7])  # backup and error, flush (raw), backup and flush, error and flush
def test_identical_on_qemu(index: int) -> None:
    assert check(runstate_scenario(19701, index)) == []
