"""A backup while the guest writes: what real QEMU 7.2 shows between the start and the end.

The plain tests assert QEMU's numbers (taken from qemu-storage-daemon 7.2 runs, repeated: they
do not vary); the ``qemu`` tests play the same steps on both backends.
"""

from __future__ import annotations

import json
import random
import re

import pytest

from bitlab import Machine
from bitlab.conformance import random_scenario
from bitlab.conformance.gen_running import SETTLE, running_backup, running_scenario
from bitlab.conformance.generator import _State
from bitlab.conformance.report import report
from bitlab.conformance.runner import compare, play
from bitlab.conformance.steps import run_step

M = 1 << 20


def _qmp(execute: str, arguments: dict | None = None) -> dict:
    return {"qmp": {"execute": execute, **({"arguments": arguments} if arguments is not None else {})}}


def _setup() -> list[dict]:
    """A 4 MiB source with data in its first 2 MiB, and an empty target."""
    steps: list[dict] = []
    for name in ("d0", "t"):
        steps += [{"qemu-img": ["create", "-f", "qcow2", f"{name}.qcow2", "4M"]},
                  _qmp("blockdev-add", {"driver": "qcow2", "node-name": name,
                                        "file": {"driver": "file", "filename": f"{name}.qcow2"}})]
    steps.insert(2, {"write": {"node": "d0", "offset": 0, "length": 2 * M, "pattern": 2}})
    return steps


def _throttled(chunk: int | None = None) -> dict:
    args: dict = {"job-id": "j", "device": "d0", "target": "t", "sync": "full", "speed": 1}
    if chunk is not None:
        args["x-perf"] = {"max-chunk": chunk}
    return _qmp("blockdev-backup", args)


def _write_at_0(chunk: int | None = None) -> list[dict]:
    """A throttled full backup, and at once a guest write on its first request's first cluster."""
    return [*_setup(), _throttled(chunk), {"write": {"node": "d0", "offset": 0, "length": 512, "pattern": 3}},
            _qmp("query-jobs"), _qmp("job-cancel", {"id": "j"}), {"settle-jobs": True}]


def _cancel_sync_none() -> list[dict]:
    """job-cancel of a sync=none backup, then a query and a guest write before time runs."""
    return [*_setup(), _qmp("blockdev-backup", {"job-id": "n", "device": "d0", "target": "t", "sync": "none"}),
            {"write": {"node": "d0", "offset": 3 * M, "length": 512, "pattern": 4}},
            _qmp("job-cancel", {"id": "n"}), _qmp("query-block-jobs"),
            {"write": {"node": "d0", "offset": 3 * M + 65536, "length": 512, "pattern": 5}},
            {"settle-jobs": True}, {"flush": {"node": "t"}},
            {"qemu-img": ["compare", "-U", "d0.qcow2", "t.qcow2"]}]


def _discard_during_backup() -> list[dict]:
    """A discard through the copy-before-write filter, on a source opened with discard=unmap."""
    return [{"qemu-img": ["create", "-f", "qcow2", "d0.qcow2", "4M"]},
            _qmp("blockdev-add", {"driver": "qcow2", "node-name": "d0", "discard": "unmap",
                                  "file": {"driver": "file", "filename": "d0.qcow2", "discard": "unmap"}}),
            {"write": {"node": "d0", "offset": 0, "length": 2 * M, "pattern": 2}},
            _qmp("block-dirty-bitmap-add", {"node": "d0", "name": "b0"}),
            *_setup()[3:],
            _qmp("blockdev-backup", {"job-id": "j", "device": "d0", "target": "t", "sync": "none"}),
            {"discard": {"node": "d0", "offset": M, "length": M}},
            _qmp("query-named-block-nodes", {"flat": True}), _qmp("query-block-jobs"),
            _qmp("job-cancel", {"id": "j"}), {"settle-jobs": True},
            {"qemu-img": ["map", "--output=json", "-U", "d0.qcow2"]},
            {"discard": {"node": "d0", "offset": M, "length": M}},  # without the filter: discarded
            _qmp("query-named-block-nodes", {"flat": True}),
            {"qemu-img": ["map", "--output=json", "-U", "d0.qcow2"]}]


def _drive_backup_target() -> list[dict]:
    """drive-backup opens its target with detect-zeroes=unmap; the target's file node does not inherit it."""
    return [*_setup()[:4], _qmp("drive-backup", {"job-id": "j", "device": "d0", "target": "t.qcow2", "sync": "full",
                                                 "format": "qcow2", "mode": "existing", "speed": 1}),
            {"write": {"node": "d0", "offset": 0, "length": 512, "pattern": 3}},
            _qmp("query-named-block-nodes", {"flat": True}), _qmp("job-cancel", {"id": "j"}), {"settle-jobs": True}]


def _bitmap_setup() -> list[dict]:
    """Four dirty clusters at 1 MiB in bitmap b0, and an empty target."""
    steps = _setup()
    steps[2] = {"write": {"node": "d0", "offset": M, "length": 4 * 65536, "pattern": 2}}
    return [*steps[:2], _qmp("block-dirty-bitmap-add", {"node": "d0", "name": "b0"}), *steps[2:]]


def _copied_while_asleep() -> list[dict]:
    """A guest write copies what the throttled job had left: the job still sleeps on the rate limit."""
    return [*_bitmap_setup(),
            _qmp("blockdev-backup", {"job-id": "j", "device": "d0", "target": "t", "sync": "incremental",
                                     "bitmap": "b0", "speed": 1, "x-perf": {"max-chunk": 65536}}),
            {"write": {"node": "d0", "offset": M, "length": 4 * 65536, "pattern": 3}},
            {"sleep": 0.05}, _qmp("query-jobs"), _qmp("job-cancel", {"id": "j"}), {"settle-jobs": True},
            _qmp("x-debug-block-dirty-bitmap-sha256", {"node": "d0", "name": "b0"})]


def _speed_wakes_the_job() -> list[dict]:
    """block-job-set-speed wakes a job sleeping on the rate limit (block_copy_kick)."""
    return [*_setup(), _throttled(65536), {"sleep": 0.05}, _qmp("query-jobs"),
            _qmp("block-job-set-speed", {"device": "j", "speed": 0}), {"sleep": 0.3}, _qmp("query-jobs"),
            {"settle-jobs": True}]


def _play_sim(steps: list[dict]) -> list:
    return play({"name": "t", "steps": steps}, "sim").replies


def test_the_first_request_starts_with_the_command():
    # block_copy_async enters its coroutine at once: the first 1 MiB is no longer dirty in the
    # block-copy bitmap when blockdev-backup returns
    vm = Machine()
    for step in _setup():
        run_step(vm, step)
    vm.execute(_throttled()["qmp"])
    d0 = next(n for n in vm.qmp("query-named-block-nodes", {"flat": True}) if n["node-name"] == "d0")
    assert [b["count"] for b in d0["dirty-bitmaps"]] == [3 * M]


@pytest.mark.parametrize("chunk", [65536, None])
def test_a_guest_write_waits_for_the_throttled_request_on_its_range(chunk):
    steps = _write_at_0(chunk)
    replies = _play_sim(steps)
    progress = replies[steps.index(_qmp("query-jobs"))]["return"][0]["current-progress"]
    assert progress == (65536 if chunk else M)  # QEMU: the write returned after that request


def test_cancelling_a_sync_none_backup_ends_it_before_the_next_command():
    vm = Machine()
    steps = _cancel_sync_none()
    for step in steps[: steps.index(_qmp("job-cancel", {"id": "n"}))]:
        run_step(vm, step)
    vm.events.clear()
    assert vm.execute({"execute": "job-cancel", "arguments": {"id": "n"}}) == {"return": {}}
    assert [(e["event"], e["data"]) for e in vm.events] == [
        ("JOB_STATUS_CHANGE", {"status": "aborting", "id": "n"}),
        ("BLOCK_JOB_CANCELLED", {"device": "n", "len": 4 * M, "offset": 65536, "speed": 0, "type": "backup"}),
        ("JOB_STATUS_CHANGE", {"status": "concluded", "id": "n"}),
        ("JOB_STATUS_CHANGE", {"status": "null", "id": "n"})]
    assert vm.qmp("query-block-jobs") == []
    replies = _play_sim(steps)
    # the write after the cancel is not copied: the target holds only the cluster at 3 MiB
    assert replies[-1] == {"stdout": "Content mismatch at offset 0!\n", "stderr": "", "returncode": 1}


def test_a_discard_during_a_backup_stops_at_the_filter():
    steps = _discard_during_backup()
    replies = _play_sim(steps)
    count = [next(b["count"] for n in r["return"] if n["node-name"] == "d0"
                  for b in n["dirty-bitmaps"] if b.get("name") == "b0") for r in (replies[8], replies[14])]
    assert count == [0, M]  # QEMU: not dirtied through the filter, dirtied without it
    assert replies[9]["return"][0]["offset"] == 0  # nothing copied before the discard
    assert '"start": 1048576, "length": 1048576' not in replies[12]["stdout"]  # not discarded
    assert '{ "start": 1048576, "length": 1048576, "depth": 0, "present": true, "zero": true, "data": false}' \
        in replies[15]["stdout"]


def test_detect_zeroes_is_not_inherited_by_a_file_child():
    nodes = _play_sim(_drive_backup_target())[6]["return"]
    target = next(n for n in nodes if n["image"]["filename"] == "t.qcow2" and n["drv"] == "qcow2")
    target_file = next(n for n in nodes if n["image"]["filename"] == "t.qcow2" and n["drv"] == "file")
    assert (target["detect_zeroes"], target_file["detect_zeroes"]) == ("unmap", "off")


def test_a_job_asleep_on_the_rate_limit_ends_only_when_it_wakes():
    replies = _play_sim(_copied_while_asleep())
    assert replies[9] == {"return": [{"current-progress": 262144, "status": "running", "total-progress": 262144,
                                      "type": "backup", "id": "j"}]}
    assert replies[10] == {"return": {}}  # cancelled: everything was copied, the job had not ended


def test_a_new_speed_wakes_the_job():
    replies = _play_sim(_speed_wakes_the_job())
    assert replies[7]["return"][0]["current-progress"] == 65536
    assert replies[10] == {"return": []}  # done 0.3 s after the new speed


def test_random_running_backups_use_tiny_speeds_and_check_content():
    st = _State(random.Random(3), ["d0", "d1"])
    steps = [s for _ in range(20) for s in running_backup(st, 8 * M)]
    starts = [s["qmp"]["arguments"] for s in steps if s.get("qmp", {}).get("execute") == "blockdev-backup"]
    assert starts and all(a["speed"] == 1 and a["x-perf"]["max-chunk"] in (65536, 131072, 4 * 65536, 4 * 131072)
                          for a in starts)
    assert any(a["x-perf"]["max-chunk"] > 131072 for a in starts)  # a first request of several clusters
    assert sum(1 for s in steps if s.get("qemu-img", [""])[0] == "compare") >= 20
    sleeps = [(pos, s) for pos, s in enumerate(steps) if s.get("sleep")]
    assert sleeps and all("first-requests" in s for _, s in sleeps) and any(s["first-requests"] for _, s in sleeps)
    for pos, sleep in sleeps:  # jobs started before, of a sync that copies
        before = json.dumps(steps[:pos])
        assert all(f'"job-id": "{job}", "device": ' in before for job in sleep["first-requests"])
        assert not any(re.search(f'"job-id": "{job}", "device": "[^"]*", "target": "[^"]*", "sync": "none"', before)
                       for job in sleep["first-requests"])


def test_focused_scenarios_are_seeded_and_hold_running_backups():
    assert running_scenario(4, 2) == running_scenario(4, 2) != running_scenario(4, 3)
    starts = [s for i in range(5) for s in running_scenario(1, i)["steps"] if s.get("qemu-img", [""])[0] == "convert"]
    assert len(starts) >= 5  # one a scenario at least


def _first_request_waited() -> list[dict]:
    """A throttled full backup (64 KiB a request), a sleep until its first request has been written; its
    progress."""
    return [*_setup(), _throttled(65536), {"sleep": SETTLE, "first-requests": ["j"]}, _qmp("query-jobs"),
            _qmp("job-cancel", {"id": "j"}), {"settle-jobs": True}]


@pytest.mark.qemu
def test_a_sleep_waits_for_the_first_requests_on_real_qemu() -> None:
    """On real QEMU the step returns once the job's first request has been written (its progress moved)."""
    scenario = {"name": "first-requests", "steps": _first_request_waited()}
    real = play(scenario, "qemu")
    assert [(j["status"], j["current-progress"]) for j in real.replies[-3]["return"]] == [("running", 65536)]
    assert compare(scenario, real, play(scenario, "sim")) == []


@pytest.mark.qemu
def test_conformance_report_focused_on_running_backups():
    text, bad = report(2, 94, focus="running")
    assert bad == 0 and "scenarios run                2" in text


@pytest.mark.qemu
@pytest.mark.parametrize("make", [_write_at_0, _cancel_sync_none, _discard_during_backup, _drive_backup_target,
                                  _copied_while_asleep, _speed_wakes_the_job])
def test_on_real_qemu(make):
    scenario = {"name": make.__name__, "steps": make()}
    real = play(scenario, "qemu")
    assert real.error is None
    assert compare(scenario, real, play(scenario, "sim")) == []


@pytest.mark.qemu
def test_a_random_scenario_with_running_backups_on_real_qemu():
    scenario = random_scenario(5, 1)
    assert any(s.get("qmp", {}).get("arguments", {}).get("speed") == 1 for s in scenario["steps"])
    assert compare(scenario, play(scenario, "qemu"), play(scenario, "sim")) == []
