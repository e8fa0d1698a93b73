"""bitlab.course: the notebooks' shared helpers."""

from __future__ import annotations

import json

import pytest

from bitlab import Machine, course


def test_bitmaps_of_a_device_and_of_a_node() -> None:
    vm = Machine()
    root = vm.add_drive("drive0", "64M")
    vm.qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "b0", "granularity": 65536})
    vm.write("drive0", 126976, 8192)
    assert course.count(vm, "drive0", "b0") == 131072
    assert course.bitmaps(vm, root) == course.bitmaps(vm, "drive0")
    with pytest.raises(KeyError):
        course.bitmaps(vm, "nope")
    with pytest.raises(KeyError):
        course.count(vm, "drive0", "nope")


def test_wire_prints_the_last_messages(capsys: pytest.CaptureFixture[str]) -> None:
    vm = Machine()
    vm.execute({"execute": "query-block", "id": 7})
    course.wire(vm)
    assert capsys.readouterr().out == '-> {"execute": "query-block", "id": 7}\n<- {"return": [], "id": 7}\n'


def test_events_and_statuses_of_one_backup(capsys: pytest.CaptureFixture[str]) -> None:
    vm = Machine()
    vm.add_drive("drive0", "1M")
    since = len(vm.events)
    vm.qmp("drive-backup", {"device": "drive0", "target": "t.qcow2", "sync": "full", "format": "qcow2"})
    vm.run()
    assert course.statuses(vm, "drive0", since) == ["created", "running", "paused", "running", "waiting", "pending",
                                                     "concluded", "null"]
    assert [e["event"] for e in course.events(vm, since, "BLOCK_JOB")] == ["BLOCK_JOB_COMPLETED"]
    course.show_events(vm, since)
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == course.events(vm, since, "BLOCK_JOB")


def test_wire_skips_events_unless_asked(capsys: pytest.CaptureFixture[str]) -> None:
    vm = Machine()
    vm.add_drive("drive0", "1M")
    vm.qmp("drive-backup", {"device": "drive0", "target": "t.qcow2", "sync": "full", "format": "qcow2"})
    course.wire(vm)
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line[3:]).get("execute") for line in lines] == ["drive-backup", None]
    assert lines[1] == '<- {"return": {}}'
    course.wire(vm, 2, events=True)
    assert '"event": "JOB_STATUS_CHANGE"' in capsys.readouterr().out


def test_show_events_by_job_groups_each_jobs_events(capsys: pytest.CaptureFixture[str]) -> None:
    vm = Machine()
    vm.events[:] = [{"event": "BLOCK_JOB_ERROR", "data": {"device": "drive1", "n": 1}},
                    {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "drive0"}},
                    {"event": "BLOCK_JOB_COMPLETED", "data": {"device": "drive1", "n": 2}}]
    course.show_events(vm, by_job=True)
    printed = [json.loads(line)["data"] for line in capsys.readouterr().out.splitlines()]
    assert printed == [{"device": "drive0"}, {"device": "drive1", "n": 1}, {"device": "drive1", "n": 2}]


def test_outcomes_of_the_seeds_individual_run() -> None:
    from bitlab.scenarios import run_seed

    out = run_seed("individual")
    assert course.outcomes(out.machine, 0) == {"drive0": "completed", "drive1": "failed: Input/output error"}
    grouped = run_seed("grouped")
    since = len(grouped.machine.events) - sum(len(d.events) for d in grouped.drives.values())
    assert course.outcomes(grouped.machine, since) == {"drive0": "cancelled", "drive1": "failed: Input/output error"}


def test_show_nodes_prints_each_node_with_its_bitmaps(capsys: pytest.CaptureFixture[str]) -> None:
    vm = Machine(daemon="system")
    vm.add_drive("drive0", "1M", file="d0.qcow2")
    vm.qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "b0", "granularity": 65536})
    vm.write("drive0", 0, "64k")
    vm.qmp("blockdev-snapshot-sync", {"device": "drive0", "snapshot-file": "ov.qcow2", "format": "qcow2"})
    names = [n["node-name"] for n in vm.qmp("query-named-block-nodes", {"flat": True})]
    course.show_nodes(vm)
    assert capsys.readouterr().out.splitlines() == [
        f"qcow2      ov.qcow2     read-write {names[0]}",
        f"file       ov.qcow2     read-write {names[1]}",
        f"qcow2      d0.qcow2     read-only  {names[2]}  bitmaps: b0 count 65536",
        f"file       d0.qcow2     read-only  {names[3]}",
    ]
    vm.qmp("block-commit", {"device": "drive0"})
    vm.run()
    course.show_nodes(vm)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("mirror_top ov.qcow2     read-write #block")
    assert out[1].endswith("  bitmaps: (anonymous) count 0")
