"""The seed's partial and grouped failures, event for event against real QEMU 7.2 traces."""

import pytest

from .trace_replay import load, replay, without_optional

MODES = ["individual", "grouped"]


@pytest.fixture(scope="module", params=MODES)
def replayed(request):
    return request.param, load(request.param), replay(request.param)[1]


def test_every_step_has_the_same_bitmaps(replayed):
    mode, trace, steps = replayed
    for step, summary in trace["summary"].items():
        if step == "setup":
            continue
        assert steps[step]["bitmaps"] == summary["bitmaps"], f"{mode}/{step}"


def test_every_job_has_the_same_events(replayed):
    mode, trace, steps = replayed
    for step, summary in trace["summary"].items():
        want = {job: without_optional(seq) for job, seq in summary["jobs"].items()}
        got = {job: without_optional(seq) for job, seq in steps[step]["jobs"].items()}
        assert got == want, f"{mode}/{step}"


def test_partial_failure_outcome():
    """Individual: drive0's bitmap is synced, drive1's keeps its bits for the retry."""
    _, steps = replay("individual")
    counts = {node: bms[0]["count"] for node, bms in steps["incremental"]["bitmaps"].items()}
    assert counts == {"drive0": 0, "drive1": 131072}
    jobs = steps["incremental"]["jobs"]
    assert {"event": "BLOCK_JOB_ERROR", "operation": "read", "action": "report"} in jobs["drive1"]
    assert jobs["drive0"][-3]["event"] == "BLOCK_JOB_COMPLETED" and "error" not in jobs["drive0"][-3]


def test_grouped_failure_outcome():
    """Grouped: drive0 is cancelled although it copied everything; both bitmaps are kept."""
    _, steps = replay("grouped")
    counts = {node: bms[0]["count"] for node, bms in steps["incremental"]["bitmaps"].items()}
    assert counts == {"drive0": 327680, "drive1": 131072}
    cancelled = steps["incremental"]["jobs"]["drive0"][-3]
    assert cancelled == {"event": "BLOCK_JOB_CANCELLED", "len": 327680, "offset": 327680, "speed": 0,
                         "type": "backup"}
