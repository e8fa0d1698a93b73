"""The job life cycle as the random conformance meets it: QEMU 7.2's answers, found by
``bitlab conformance`` and checked on real QEMU (the ``qemu``-marked tests replay them there)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from bitlab import Machine
from bitlab.conformance import check, random_scenario
from bitlab.conformance.generator import LIFE_CHANCE

# -- detect-zeroes belongs to the node it is set on ------------------------------------------------------


def _open_with_detect_zeroes(vm: Any) -> dict[str, str]:
    vm.qemu_img("create", "-f", "qcow2", "a.qcow2", "1M")
    vm.qemu_img("create", "-f", "raw", "r.raw", "1M")
    vm.qemu_img("create", "-f", "qcow2", "s.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "raw", "node-name": "r", "discard": "unmap", "detect-zeroes": "unmap",
                            "file": {"driver": "file", "filename": "r.raw", "node-name": "rf"}})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "a", "detect-zeroes": "on", "file": {
        "driver": "blkdebug", "node-name": "ab",
        "image": {"driver": "file", "filename": "a.qcow2", "node-name": "af"}}})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "s", "file": {"driver": "file", "filename": "s.qcow2"}})
    # drive-backup opens its target with detect-zeroes=unmap: the target's file node does not get it
    vm.qmp("drive-backup", {"job-id": "j", "device": "s", "target": "t.qcow2", "format": "qcow2", "sync": "full",
                            "auto-dismiss": False, "auto-finalize": False})
    vm.run()
    return {n["node-name"] if not n["node-name"].startswith("#") else f"{n['drv']}:{n['image']['filename']}":
            n["detect_zeroes"] for n in vm.qmp("query-named-block-nodes", {"flat": True})}


def test_detect_zeroes_is_not_inherited_by_children():
    assert _open_with_detect_zeroes(Machine()) == {
        "r": "unmap", "rf": "off", "a": "on", "ab": "off", "af": "off", "s": "off", "file:s.qcow2": "off",
        "qcow2:t.qcow2": "unmap", "file:t.qcow2": "off", "copy-before-write:s.qcow2": "off"}


@pytest.mark.qemu
def test_detect_zeroes_is_not_inherited_by_children_on_real_qemu():
    with Machine(backend="qemu") as vm:
        real = _open_with_detect_zeroes(vm)
    assert real == _open_with_detect_zeroes(Machine())


# -- cancelling a job that an error stopped ----------------------------------------------------------------


def stopped_then_cancelled(clusters: int, sync: str, workers: int, once: bool = True, first: int = 0,
                           gap: int = 131072) -> dict:
    """A backup stopped by a read error (on-source-error stop), then cancelled: backup_loop starts
    one more block-copy call before it sees the cancel; its first tasks still complete, and the
    task created before it waited for a worker too, unless a task failed (the error recurs)."""
    steps: list[dict] = [
        {"qemu-img": ["create", "-f", "qcow2", "s.qcow2", "8M"]},
        {"qemu-img": ["create", "-f", "qcow2", "t.qcow2", "8M"]},
        {"qmp": {"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "s", "file": {
            "driver": "blkdebug", "image": {"driver": "file", "filename": "s.qcow2"},
            "inject-error": [{"event": "read_aio", "errno": 5, "once": once}]}}}},
        {"qmp": {"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "t",
                                                          "file": {"driver": "file", "filename": "t.qcow2"}}}},
    ]
    steps += [{"write": {"node": "s", "offset": first + i * gap, "length": 512, "pattern": 5}} for i in range(clusters)]
    steps += [
        {"qmp": {"execute": "blockdev-backup", "arguments": {
            "job-id": "j", "device": "s", "target": "t", "sync": sync, "on-source-error": "stop",
            "auto-dismiss": False, "x-perf": {"max-workers": workers}}}},
        {"settle-jobs": True},
        {"qmp": {"execute": "query-jobs"}},
        {"qmp": {"execute": "job-cancel", "arguments": {"id": "j"}}},
        {"settle-jobs": True},
        {"qmp": {"execute": "query-jobs"}},
    ]
    return {"name": f"stop-cancel-{clusters}-{sync}-{workers}-{once}-{first}-{gap}", "steps": steps}


CANCELLED = [  # (clusters, sync, max-workers) -> (progress when stopped, when cancelled), from QEMU 7.2
    ((2, "top", 1), (0, 131072, 131072)),
    ((6, "top", 1), (0, 131072, 393216)),
    ((6, "top", 2), (65536, 262144, 393216)),
    ((6, "full", 1), (0, 131072, 8388608)),
    ((6, "full", 2), (65536, 262144, 8388608)),
    ((1, "full", 1), (0, 1114112, 8388608)),
    ((4, "full", 1, False, 5866496, 65536), (5832704, 5832704, 8388608)),  # the spare never runs
    ((4, "full", 1, True, 5866496, 65536), (5832704, 7143424, 8388608)),
    ((4, "top", 1, False, 0, 65536), (0, 0, 262144)),
    # several workers: once the target's L2 table exists, a zero task completes as it starts (no I/O,
    # no worker held), so the last call runs on through every zero task up to the spare
    ((4, "full", 2, True, 0, 65536), (1048576, 8388608, 8388608)),
    ((4, "full", 2, False, 0, 65536), (1048576, 8126464, 8388608)),
    ((4, "full", 3, True, 0, 131072), (131072, 1507328, 8388608)),
    ((6, "full", 3, True, 0, 262144), (262144, 1048576, 8388608)),
    ((6, "full", 4, True, 0, 131072), (196608, 655360, 8388608)),
    ((2, "full", 3, False, 0, 131072), (65536, 8257536, 8388608)),
]
IDS = ["-".join(map(str, case)) for case, _ in CANCELLED]


@pytest.mark.parametrize(("case", "want"), CANCELLED, ids=IDS)
def test_cancel_after_a_stop_completes_a_task_per_worker_and_one_more(case: tuple, want: tuple) -> None:
    from bitlab.conformance import play

    out = play(stopped_then_cancelled(*case), "sim")
    assert out.error is None
    stopped, cancelled = out.replies[-4]["return"][0], out.replies[-1]["return"][0]
    assert (stopped["status"], stopped["current-progress"]) == ("paused", want[0])
    assert cancelled == {"id": "j", "type": "backup", "status": "concluded", "current-progress": want[1],
                         "total-progress": want[2], "error": "Operation canceled"}
    ends = [ev["data"] for ev in out.events if ev["event"] == "BLOCK_JOB_CANCELLED"]
    assert ends == [{"type": "backup", "device": "j", "len": want[2], "offset": want[1], "speed": 0}]


@pytest.mark.qemu
@pytest.mark.parametrize("case", [c for c, _ in CANCELLED], ids=IDS)
def test_cancel_after_a_stop_on_real_qemu(case: tuple) -> None:
    assert check(stopped_then_cancelled(*case)) == []


# -- the generator's life-cycle episodes -------------------------------------------------------------------


def _life_steps(seed: int, count: int) -> list[dict]:
    """The steps of life-cycle episodes (their jobs are lj<n>, their nodes s<n> and lt<n>), and queries."""
    return [step for i in range(count) for step in random_scenario(seed, i)["steps"]
            if '"lj' in json.dumps(step) or step.get("qmp", {}).get("execute", "").startswith("query-")
            or '"s' in json.dumps(step.get("qmp", {}).get("arguments", {}))]


def test_random_scenarios_walk_the_job_life_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every verb, on both command families, with the flags and error policies, appears."""
    from bitlab.conformance import generator

    monkeypatch.setattr(generator, "LIFE_CHANCE", 0.3)
    steps = _life_steps(7, 60)
    executes = {s["qmp"]["execute"] for s in steps if "qmp" in s}
    for verb in ("finalize", "dismiss", "cancel", "pause", "resume", "complete"):
        assert f"job-{verb}" in executes and f"block-job-{verb}" in executes, verb
    assert {"query-jobs", "query-block-jobs", "drive-backup", "transaction", "block-job-set-speed"} <= executes
    text = json.dumps(steps)
    for needle in ('"auto-finalize": false', '"auto-dismiss": false', '"on-source-error": "stop"',
                   '"on-target-error": "enospc"', '"on-source-error": "ignore"', '"force": true',
                   '"mode": "absolute-paths"', '"inject-error"', '"set-state"', '"completion-mode": "grouped"'):
        assert needle in text, needle
    assert 0 < LIFE_CHANCE < 1
    assert any('"driver": "null-co"' in json.dumps(step) for step in steps)


def test_life_cycle_episodes_stay_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    """What would make real QEMU's outcome depend on timing, or never settle, is never generated: an
    error that recurs with 'ignore' (endless retries), a stop inside a grouped transaction (the others
    wait forever), a sync 'none' job left running at a settle, more than one worker but for a fresh
    source's read errors onto a qcow2 node, a grouped
    transaction's failing member on raw over null-co that a sync 'top' would leave with nothing to read,
    a sync 'none' job kept (paused) over a failing target while the mix may write on its source (copy-before-
    write in parallel onto it), a write threshold on a target several workers copy to; and no host layout
    (qemu-img map, check) of a target that several workers copied to."""
    from bitlab.conformance import generator

    monkeypatch.setattr(generator, "LIFE_CHANCE", 0.3)
    several = mapped = kept_off = armed = 0
    for index in range(150):
        steps = random_scenario(3, index)["steps"]
        endless: set[str] = set()  # life-cycle jobs of sync 'none'
        running: set[str] = set()
        added: dict[str, dict] = {}
        parallel: set[str] = set()  # files of targets copied by several workers
        for pos, step in enumerate(steps):
            if step.get("qemu-img", [""])[0] in ("map", "check"):
                assert step["qemu-img"][-1] not in parallel, step
                mapped += 1
            msg = step.get("qmp", {})
            args = msg.get("arguments", {})
            file = args.get("file")  # a node name (the create episodes) or a definition
            if msg.get("execute") == "blockdev-add" and isinstance(file, dict) and file.get("inject-error"):
                rule = args["file"]["inject-error"][0]  # (a copy-range episode's blkdebug may have no rule)
                assert rule.get("once") or not _ignored(steps, args["node-name"]), step
            if msg.get("execute") == "blockdev-add":
                added[args["node-name"]] = args
            life = str(args.get("job-id", "")).startswith("lj")
            if msg.get("execute") == "block-set-write-threshold" and args["node-name"].startswith("lt"):
                job = steps[pos + 1]["qmp"]  # armed right before the backup onto it, which has one worker
                assert job["execute"] == "blockdev-backup" and job["arguments"]["target"] == args["node-name"]
                assert job["arguments"]["x-perf"]["max-workers"] == 1
                armed += 1
            if msg.get("execute") in ("blockdev-backup", "drive-backup") and life:
                workers = args["x-perf"]["max-workers"]
                several += workers > 1
                if workers > 1:  # only a fresh source's read errors, onto a qcow2 node over a plain file
                    parallel.add(added[args["target"]]["file"]["filename"])
                    source, target = added[args["device"]], added.get(args["target"], {})
                    assert msg["execute"] == "blockdev-backup" and source["node-name"].startswith("s")
                    assert source["driver"] == "qcow2" and target["driver"] == "qcow2"
                    assert target["file"]["driver"] == "file"
                    assert args["sync"] != "full" or any(  # its first task reads (and fails)
                        st.get("write", {}).get("node") == args["device"] and st["write"]["offset"] < 65536
                        for st in steps)
                # drive-backup's target detects zeroes: null-co's read buffers hold what memory held
                assert msg["execute"] == "blockdev-backup" or not args["device"].startswith("sn")
                if args["sync"] == "none":
                    endless.add(args["job-id"])
                    running.add(args["job-id"])
                    if not re.fullmatch(r"sn?\d+", args["device"]) and _has_error(steps, args["target"]):
                        assert steps[pos + 1]["qmp"]["execute"] in ("job-cancel", "block-job-cancel"), step
                        kept_off += 1
            if msg.get("execute") == "transaction" and '"lj' in json.dumps(args):
                for action in args["actions"]:
                    assert not action["data"]["device"].startswith("sn") or action["data"]["sync"] == "full"
                    for side, key in (("source", "device"), ("target", "target")):
                        if action["data"].get(f"on-{side}-error") == "stop":
                            assert not _has_error(steps, action["data"][key]), step
            if msg.get("execute") in ("job-pause", "block-job-pause", "job-cancel", "block-job-cancel"):
                running.discard(args.get("id", args.get("device")))  # a running job is never user-paused
            if msg.get("execute") in ("job-resume", "block-job-resume"):
                running |= {args.get("id", args.get("device"))} & endless
            if "settle-jobs" in step:
                assert not running, (index, running)
    assert several >= 10 and mapped >= 10 and kept_off >= 1 and armed >= 10


def _ignored(steps: list[dict], node: str) -> bool:
    for step in steps:
        args = step.get("qmp", {}).get("arguments", {})
        if step.get("qmp", {}).get("execute") in ("blockdev-backup", "drive-backup") and node in (
                args.get("device"), args.get("target")):
            side = "source" if args.get("device") == node else "target"
            if args.get(f"on-{side}-error") == "ignore":
                return True
    return False


def _has_error(steps: list[dict], node: str) -> bool:
    text = json.dumps([s for s in steps if s.get("qmp", {}).get("arguments", {}).get("node-name") == node])
    return "inject-error" in text


# -- a failed data write leaves its L2 table behind -------------------------------------------------------


def failed_target_write(once: bool) -> dict:
    """A backup whose first target write fails (on-target-error report): qcow2 has allocated and
    written the L2 table before the data write failed, so the target file keeps it."""
    steps: list[dict] = [
        {"qemu-img": ["create", "-f", "qcow2", "s.qcow2", "8M"]},
        {"qemu-img": ["create", "-f", "qcow2", "t.qcow2", "8M"]},
        {"qmp": {"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "s",
                                                          "file": {"driver": "file", "filename": "s.qcow2"}}}},
        {"qmp": {"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "t", "file": {
            "driver": "blkdebug", "node-name": "tb",
            "image": {"driver": "file", "filename": "t.qcow2", "node-name": "tf"},
            "inject-error": [{"event": "write_aio", "errno": 5, "once": once}]}}}},
        {"write": {"node": "s", "offset": 1 << 20, "length": 65536, "pattern": 7}},
        {"qmp": {"execute": "blockdev-backup", "arguments": {"job-id": "j", "device": "s", "target": "t",
                                                             "sync": "top", "x-perf": {"max-workers": 1}}}},
        {"settle-jobs": True},
        {"qmp": {"execute": "query-named-block-nodes", "arguments": {"flat": True}}},
        {"qemu-img": ["create", "-f", "qcow2", "u.qcow2", "8M"]},
        {"qmp": {"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "u",
                                                          "file": {"driver": "file", "filename": "u.qcow2"}}}},
        {"qmp": {"execute": "blockdev-backup", "arguments": {"job-id": "k", "device": "s", "target": "u",
                                                             "sync": "top", "x-perf": {"max-workers": 1}}}},
        {"settle-jobs": True},
        {"qmp": {"execute": "query-named-block-nodes", "arguments": {"flat": True}}},
    ]
    return {"name": f"failed-target-write-{once}", "steps": steps}


@pytest.mark.parametrize("once", [True, False])
def test_a_failed_data_write_keeps_the_l2_table(once: bool) -> None:
    from bitlab.conformance import play

    out = play(failed_target_write(once), "sim")
    sizes = {n["node-name"]: n["image"]["virtual-size"] for n in out.replies[7]["return"]}
    assert (sizes["tf"], sizes["tb"]) == (327680, 327680)  # header, refcounts, L1, and the L2 table
    sizes = {n["node-name"]: n["image"]["virtual-size"] for n in out.replies[-1]["return"]}
    assert sizes["tf"] == 327680
    ends = [ev["data"] for ev in out.events if ev["event"] == "BLOCK_JOB_COMPLETED"]
    assert ends == [{"type": "backup", "device": "j", "len": 65536, "offset": 0, "speed": 0,
                     "error": "Input/output error"},
                    {"type": "backup", "device": "k", "len": 65536, "offset": 65536, "speed": 0}]


@pytest.mark.qemu
@pytest.mark.parametrize("once", [True, False])
def test_a_failed_data_write_keeps_the_l2_table_on_real_qemu(once: bool) -> None:
    assert check(failed_target_write(once)) == []


def test_life_cycle_episodes_leave_the_other_steps_as_they_were(monkeypatch: pytest.MonkeyPatch) -> None:
    """The episodes draw from their own random stream: without them, every seed gives the steps it
    gave before they existed."""
    from bitlab.conformance import generator

    monkeypatch.setattr(generator, "_life", lambda st, lf, size: [{"episode": lf.rng.random()}])
    marked = [random_scenario(11, i)["steps"] for i in range(60)]
    monkeypatch.setattr(generator, "LIFE_CHANCE", 0.0)
    plain = [random_scenario(11, i)["steps"] for i in range(60)]
    assert sum(1 for steps in marked for s in steps if "episode" in s) > 20
    assert [[s for s in steps if "episode" not in s] for steps in marked] == plain


# -- qcow2 host clusters in write order: block status ends a data extent where they stop being contiguous ---


@pytest.mark.qemu
def test_block_copy_tasks_follow_host_contiguity():
    """Guest clusters 1-2 written before cluster 0: the first task is cluster 0 alone (its host cluster
    comes after theirs), so the cancelled retry after a stop copies clusters 0 and 1-2 (3), not 0-2
    and 3-5 (6, as if laid out in guest order)."""
    scenario = stopped_then_cancelled(1, "full", 1)
    at = next(i for i, step in enumerate(scenario["steps"]) if "write" in step)
    scenario["steps"][at:at + 1] = [{"write": {"node": "s", "offset": 109568, "length": 65536, "pattern": 1}},
                                    {"write": {"node": "s", "offset": 33280, "length": 512, "pattern": 2}},
                                    {"write": {"node": "s", "offset": 427008, "length": 65536, "pattern": 3}}]
    assert check(scenario) == []


# -- raw over blkdebug over null-co: events, block status, allocation --------------------------------------

NULL = {"driver": "null-co", "size": 1 << 20}


def raw_null_backup(source: dict, target: dict, sync: str, policy: str) -> dict:
    """A backup between nodes without files: raw fires read_aio/write_aio on its file (blkdebug), and
    null-co answers block status with neither data nor zeroes (without read-zeroes)."""
    return {"name": f"raw-null-{sync}-{policy}", "steps": [
        {"qmp": {"execute": "blockdev-add", "arguments": {"node-name": "s", **source}}},
        {"qmp": {"execute": "blockdev-add", "arguments": {"node-name": "t", **target}}},
        {"qmp": {"execute": "blockdev-backup", "arguments": {
            "job-id": "j", "device": "s", "target": "t", "sync": sync, "on-source-error": policy,
            "on-target-error": policy, "auto-dismiss": False, "x-perf": {"max-workers": 1}}}},
        {"settle-jobs": True},
        {"qmp": {"execute": "query-block-jobs"}},
    ]}


def _raw_over(event: str | None, read_zeroes: bool = False) -> dict:
    inner = {**NULL, "read-zeroes": read_zeroes} if read_zeroes else NULL
    if event is None:
        return {"driver": "raw", "file": inner}
    return {"driver": "raw", "file": {"driver": "blkdebug", "image": inner,
                                      "inject-error": [{"event": event, "errno": 5, "once": True}]}}


RAW_NULL = [  # (source, target, sync) -> (status, offset, len, io-status) when settled, from QEMU 7.2
    ((_raw_over("read_aio"), NULL, "full"), ("paused", 0, 1 << 20, "failed")),  # null-co is read as data
    ((_raw_over("read_aio"), NULL, "top"), ("concluded", 0, 0, "ok")),  # ... and allocates nothing
    ((_raw_over(None, True), NULL, "top"), ("concluded", 1 << 20, 1 << 20, "ok")),  # read-zeroes: zeroes
    ((NULL, _raw_over("write_aio"), "full"), ("paused", 0, 1 << 20, "failed")),  # a block-copy write
]


@pytest.mark.parametrize(("case", "want"), RAW_NULL, ids=[str(i) for i in range(len(RAW_NULL))])
def test_raw_over_blkdebug_over_null_co(case: tuple, want: tuple) -> None:
    from bitlab.conformance import play

    out = play(raw_null_backup(*case, "stop"), "sim")
    job = out.replies[-1]["return"][0]
    assert (job["status"], job["offset"], job["len"], job["io-status"]) == want


@pytest.mark.qemu
@pytest.mark.parametrize("case", [c for c, _ in RAW_NULL], ids=[str(i) for i in range(len(RAW_NULL))])
def test_raw_over_blkdebug_over_null_co_on_real_qemu(case: tuple) -> None:
    assert check(raw_null_backup(*case, "stop")) == []


def null_stopped_then_cancelled(target: dict, once: bool) -> dict:
    """raw over blkdebug over null-co, stopped by a read error, then cancelled: when neither node's I/O
    yields (null-co), backup_loop's last block-copy call copies everything before the job sees the
    cancel; a qcow2 target's writes yield, so only the task and the spare complete."""
    source = {"driver": "raw", "file": {"driver": "blkdebug", "image": {"driver": "null-co", "size": 4 << 20},
                                        "inject-error": [{"event": "read_aio", "errno": 5, "once": once}]}}
    steps = [{"qemu-img": ["create", "-f", "qcow2", "t.qcow2", "4M"]},
             {"qmp": {"execute": "blockdev-add", "arguments": {"node-name": "s", **source}}},
             {"qmp": {"execute": "blockdev-add", "arguments": {"node-name": "t", **target}}},
             {"qmp": {"execute": "blockdev-backup", "arguments": {
                 "job-id": "j", "device": "s", "target": "t", "sync": "full", "on-source-error": "stop",
                 "x-perf": {"max-workers": 1}}}},
             {"settle-jobs": True},
             {"qmp": {"execute": "job-cancel", "arguments": {"id": "j"}}},
             {"settle-jobs": True}]
    return {"name": f"null-stop-cancel-{target['driver']}-{once}", "steps": steps}


NULL_CANCELLED = [  # (target, once) -> the cancelled job's offset, from QEMU 7.2
    (({"driver": "null-co", "size": 4 << 20}, True), 4 << 20),
    (({"driver": "null-co", "size": 4 << 20}, False), 0),  # the error recurs: nothing more
    (({"driver": "qcow2", "file": {"driver": "file", "filename": "t.qcow2"}}, True), 2 << 20),
]


@pytest.mark.parametrize(("case", "want"), NULL_CANCELLED, ids=["null", "null-recurring", "qcow2"])
def test_cancel_after_a_stop_between_nodes_without_files(case: tuple, want: int) -> None:
    from bitlab.conformance import play

    out = play(null_stopped_then_cancelled(*case), "sim")
    ends = [ev["data"] for ev in out.events if ev["event"] == "BLOCK_JOB_CANCELLED"]
    assert ends == [{"type": "backup", "device": "j", "len": 4 << 20, "offset": want, "speed": 0}]


@pytest.mark.qemu
@pytest.mark.parametrize("case", [c for c, _ in NULL_CANCELLED], ids=["null", "null-recurring", "qcow2"])
def test_cancel_after_a_stop_between_nodes_without_files_on_real_qemu(case: tuple) -> None:
    assert check(null_stopped_then_cancelled(*case)) == []


# -- copy-before-write: one failing task does not stop the others of the range -----------------------------


def cbw_write_fails() -> dict:
    """A guest write over clusters 1-3 under a sync 'none' backup whose target fails its first data
    write: the data task (clusters 1-2) fails, so does the guest write, but the zero task (cluster 3)
    ran beside it and completed."""
    return {"name": "cbw-partial-failure", "steps": [
        {"qemu-img": ["create", "-f", "qcow2", "d.qcow2", "1M"]},
        {"qemu-img": ["create", "-f", "qcow2", "t.qcow2", "1M"]},
        {"qmp": {"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "d",
                                                          "file": {"driver": "file", "filename": "d.qcow2"}}}},
        {"write": {"node": "d", "offset": 65536, "length": 131072, "pattern": 1}},
        {"qmp": {"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "t", "file": {
            "driver": "blkdebug", "image": {"driver": "file", "filename": "t.qcow2"},
            "inject-error": [{"event": "write_aio", "errno": 5, "once": True}]}}}},
        {"qmp": {"execute": "blockdev-backup", "arguments": {"job-id": "j", "device": "d", "target": "t",
                                                             "sync": "none"}}},
        {"write": {"node": "d", "offset": 70000, "length": 160000, "pattern": 2}},
        {"qmp": {"execute": "query-jobs"}},
        {"write": {"node": "d", "offset": 70000, "length": 160000, "pattern": 3}},
        {"qmp": {"execute": "query-jobs"}},
        {"qmp": {"execute": "job-cancel", "arguments": {"id": "j"}}},
        {"settle-jobs": True},
    ]}


def test_copy_before_write_completes_the_other_tasks_of_a_failing_range():
    from bitlab.conformance import play

    out = play(cbw_write_fails(), "sim")
    assert out.replies[6] == {"ok": False, "stdout": "write failed: Input/output error\n", "stderr": "",
                              "returncode": 1}
    assert out.replies[7]["return"][0]["current-progress"] == 65536
    assert out.replies[8] == {"ok": True}  # the error was once: clusters 1-2 are copied now
    assert out.replies[9]["return"][0]["current-progress"] == 196608


@pytest.mark.qemu
def test_copy_before_write_completes_the_other_tasks_of_a_failing_range_on_real_qemu():
    assert check(cbw_write_fails()) == []


# -- a merge checks its target before each source ----------------------------------------------------------


def merge_into_busy(bitmaps: list, target: str) -> dict:
    """Bitmap b is busy (its incremental backup waits pending); merges into and from it."""
    return {"name": f"merge-{target}-{'-'.join(bitmaps)}", "steps": [
        {"qemu-img": ["create", "-f", "qcow2", "d.qcow2", "1M"]},
        {"qemu-img": ["create", "-f", "qcow2", "t.qcow2", "1M"]},
        {"qmp": {"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "d",
                                                          "file": {"driver": "file", "filename": "d.qcow2"}}}},
        {"qmp": {"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "t",
                                                          "file": {"driver": "file", "filename": "t.qcow2"}}}},
        {"qmp": {"execute": "block-dirty-bitmap-add", "arguments": {"node": "d", "name": "b"}}},
        {"qmp": {"execute": "block-dirty-bitmap-add", "arguments": {"node": "d", "name": "c"}}},
        {"qmp": {"execute": "blockdev-backup", "arguments": {"job-id": "j", "device": "d", "target": "t",
                                                             "sync": "incremental", "bitmap": "b",
                                                             "auto-finalize": False}}},
        {"settle-jobs": True},
        {"qmp": {"execute": "block-dirty-bitmap-merge", "arguments": {"node": "d", "target": target,
                                                                      "bitmaps": bitmaps}}},
    ]}


BUSY_TEXT = "Bitmap 'b' is currently in use by another operation and cannot be used"
MERGES = [  # (sources, target) -> QEMU 7.2's error
    ((["c", "x"], "b"), BUSY_TEXT),  # the target, checked at the first source, before 'x' is looked up
    ((["x", "c"], "b"), "Dirty bitmap 'x' not found"),
    ((["c", "b"], "c"), BUSY_TEXT),  # a busy source
]


@pytest.mark.parametrize(("case", "want"), MERGES, ids=["target-busy", "missing-first", "source-busy"])
def test_merge_checks_the_target_before_each_source(case: tuple, want: str) -> None:
    from bitlab.conformance import play

    out = play(merge_into_busy(*case), "sim")
    assert out.replies[-1] == {"error": {"class": "GenericError", "desc": want}}


@pytest.mark.qemu
@pytest.mark.parametrize("case", [c for c, _ in MERGES], ids=["target-busy", "missing-first", "source-busy"])
def test_merge_checks_the_target_before_each_source_on_real_qemu(case: tuple) -> None:
    assert check(merge_into_busy(*case)) == []
