"""QEMU 7.2's iotest 219 (job-* and block-job-* verbs through a job's life).

Ported: the four drive-backup life cycles (auto-finalize × auto-dismiss) on a 4 MiB qcow2 node fully
written, at 256 KiB/s: pause/resume in RUNNING with each of block-job-pause/job-pause × block-job-resume/
job-resume (the event, query-jobs' exact progress before and after), complete/finalize/dismiss refused in
RUNNING (job-* and block-job-*), block-job-set-speed 0, the events to PENDING, the verbs refused in PENDING
and CONCLUDED, job-finalize and job-dismiss, query-jobs empty at the end. The log is compared line by line
with what 219.out shows for the backup jobs (timestamps filtered as the iotest does; the first query-jobs'
progress is FILTERED there too).
Beyond 219 (``other_states``): every job-* and block-job-* verb on a job left ``waiting`` by its grouped
transaction and on one ``paused`` by the user, then the group cancelled, compared with the system emulator.
The drive-mirror life cycle (``mirror_lifecycle``, 219's first): buf-size 64 KiB at 256 KiB/s, pause/resume in
RUNNING (65536 a step), the verbs refused there, block-job-set-speed 0, READY, pause/resume in READY (STANDBY),
finalize and dismiss refused there, job-complete, WAITING, PENDING, CONCLUDED, NULL, as 219.out shows it.

The backups run with ``x-perf: {"max-chunk": 65536}``: the installed QEMU 7.2.22 copies 1 MiB per block-copy
request by default (measured; bitlab too, ``test_219_default_chunk*``), so 219 as written pauses at 1, 2, 3 MiB and
its job is done before the fourth pause; one cluster per request gives 219.out's progress (65536 per step).
"""

from __future__ import annotations

import pytest

from bitlab import Machine
from tests.both import on_both
from tests.iotests.harness import TIMESTAMP, Log

IMG_SIZE = 4 << 20
VERBS_IN = {"running": ("complete", "finalize", "dismiss"), "pending": ("pause", "complete", "dismiss"),
            "concluded": ("pause", "complete", "finalize")}


def setup(vm) -> None:
    vm.qemu_img("create", "-f", "qcow2", "disk.img", str(IMG_SIZE))
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "drive0-node",
                            "file": {"driver": "file", "filename": "disk.img"}})
    vm.write("drive0-node", 0, IMG_SIZE)


def pause_resume(t: Log) -> None:
    """219's test_pause_resume."""
    for pause_cmd, pause_arg in (("block-job-pause", "device"), ("job-pause", "id")):
        for resume_cmd, resume_arg in (("block-job-resume", "device"), ("job-resume", "id")):
            t.log(f"=== Testing {pause_cmd}/{resume_cmd} ===")
            t.qmp_log(pause_cmd, **{pause_arg: "job0"})
            t.poll(lambda: any(j["id"] == "job0" and j["status"] in ("paused", "standby")
                               for j in t.qmp("query-jobs")["return"]))
            t.log(t.event_wait("JOB_STATUS_CHANGE"))
            result = t.qmp_log("query-jobs")
            old = result["return"][0]["current-progress"]
            total = result["return"][0]["total-progress"]
            t.qmp_log(resume_cmd, **{resume_arg: "job0"})
            t.log(t.event_wait("JOB_STATUS_CHANGE"))
            if old < total:
                t.log(t.poll(lambda old=old: (r := t.qmp("query-jobs"))["return"][0]["current-progress"] != old and r))
            else:
                t.qmp_log("query-jobs")


def refuse(t: Log, state: str) -> None:
    """The verbs 219 sends in ``state`` that are refused there: job-*, then block-job-* (by device or id)."""
    for verb in VERBS_IN[state]:
        t.qmp_log(f"job-{verb}", id="job0")
    for verb in VERBS_IN[state]:
        t.qmp_log(f"block-job-{verb}", **({"id": "job0"} if verb in ("finalize", "dismiss") else {"device": "job0"}))


def running_phase(t: Log, job: str, auto_finalize: bool, auto_dismiss: bool, **args: object) -> None:
    """219's test_job_lifecycle up to ``block-job-set-speed 0``: the job started at 256 KiB/s, its first events,
    pause/resume in RUNNING, the verbs refused there."""
    t.log("")
    t.log("")
    t.log(f"Starting block job: {job} (auto-finalize: {auto_finalize}; auto-dismiss: {auto_dismiss})")
    t.qmp_log(job, job_id="job0", device="drive0-node", target="copy.img", sync="full", speed=262144, **args)
    result = t.qmp("query-jobs")
    for j in result["return"]:
        j["current-progress"] = j["total-progress"] = "FILTERED"
    t.log(result)
    t.log(t.event_wait("JOB_STATUS_CHANGE"))
    t.log(t.event_wait("JOB_STATUS_CHANGE"))
    t.poll(lambda: t.qmp("query-jobs")["return"][0]["total-progress"] >= IMG_SIZE)
    t.log("")
    t.log("Pause/resume in RUNNING")
    pause_resume(t)
    refuse(t, "running")
    t.qmp_log("block-job-set-speed", device="job0", speed=0)


def lifecycle(t: Log, auto_finalize: bool, auto_dismiss: bool) -> None:
    """219's test_job_lifecycle for drive-backup."""
    running_phase(t, "drive-backup", auto_finalize, auto_dismiss, x_perf={"max-chunk": 65536},
                  **{"auto-finalize": auto_finalize, "auto-dismiss": auto_dismiss})
    t.log("")
    t.log("Waiting for PENDING state...")
    for _ in range(4):  # (219 waits for four changes here, as for mirror: paused, running, waiting, pending)
        t.log(t.event_wait("JOB_STATUS_CHANGE"))
    if not auto_finalize:
        t.qmp_log("query-jobs")
        refuse(t, "pending")
        t.qmp_log("job-finalize", id="job0")
    t.log(t.event_wait("JOB_STATUS_CHANGE"))
    if not auto_dismiss:
        t.qmp_log("query-jobs")
        refuse(t, "concluded")
        t.qmp_log("job-dismiss", id="job0")
    t.log(t.event_wait("JOB_STATUS_CHANGE"))
    t.qmp_log("query-jobs")


def mirror_lifecycle(t: Log) -> None:
    """219's test_job_lifecycle for drive-mirror (has_ready)."""
    running_phase(t, "drive-mirror", True, True, buf_size=65536)
    t.log("")
    t.log("Waiting for READY state...")
    t.event_wait("BLOCK_JOB_READY")
    t.log(t.event_wait("JOB_STATUS_CHANGE"))
    t.qmp_log("query-jobs")
    t.log("")
    t.log("Pause/resume in READY")
    pause_resume(t)
    for verb in ("finalize", "dismiss"):
        t.qmp_log(f"job-{verb}", id="job0")
    for verb in ("finalize", "dismiss"):
        t.qmp_log(f"block-job-{verb}", id="job0")
    t.qmp_log("job-complete", id="job0")
    t.log("")
    t.log("Waiting for PENDING state...")
    for _ in range(4):  # waiting, pending, concluded, null
        t.log(t.event_wait("JOB_STATUS_CHANGE"))
    t.qmp_log("query-jobs")


def mirror_expected() -> list:
    """219.out's lines for the drive-mirror life cycle."""
    ok = {"return": {}}
    lines: list = ["", "", "Starting block job: drive-mirror (auto-finalize: True; auto-dismiss: True)", ok,
                   jobs("running", "FILTERED", "FILTERED", "mirror"), ev("created"), ev("running"), "",
                   "Pause/resume in RUNNING"]
    progress = 65536
    for pause in ("block-job-pause", "job-pause"):
        for resume in ("block-job-resume", "job-resume"):
            lines += [f"=== Testing {pause}/{resume} ===", ok, ev("paused"), jobs("paused", progress, kind="mirror"),
                      ok, ev("running"), jobs("running", progress + 65536, kind="mirror")]
            progress += 65536
    lines += [refused("running", verb) for verb in VERBS_IN["running"]] * 2
    lines += [ok, "", "Waiting for READY state...", ev("ready"), jobs("ready", IMG_SIZE, kind="mirror"), "",
              "Pause/resume in READY"]
    for pause in ("block-job-pause", "job-pause"):
        for resume in ("block-job-resume", "job-resume"):
            lines += [f"=== Testing {pause}/{resume} ===", ok, ev("standby"), jobs("standby", IMG_SIZE, kind="mirror"),
                      ok, ev("ready"), jobs("ready", IMG_SIZE, kind="mirror")]
    lines += [refused("ready", verb) for verb in ("finalize", "dismiss")] * 2
    return [*lines, ok, "", "Waiting for PENDING state...", ev("waiting"), ev("pending"), ev("concluded"),
            ev("null"), {"return": []}]


def story(vm) -> list:
    setup(vm)
    t = Log(vm)
    mirror_lifecycle(t)
    for auto_finalize in (True, False):
        for auto_dismiss in (True, False):
            lifecycle(t, auto_finalize, auto_dismiss)
    return t.lines


def ev(status: str) -> dict:
    return {"data": {"id": "job0", "status": status}, "event": "JOB_STATUS_CHANGE", "timestamp": TIMESTAMP}


def jobs(status: str, current: int | str, total: int | str = IMG_SIZE, kind: str = "backup") -> dict:
    return {"return": [{"current-progress": current, "id": "job0", "status": status, "total-progress": total,
                        "type": kind}]}


def refused(state: str, verb: str) -> dict:
    return {"error": {"class": "GenericError",
                      "desc": f"Job 'job0' in state '{state}' cannot accept command verb '{verb}'"}}


def expected(auto_finalize: bool, auto_dismiss: bool) -> list:
    """219.out's lines for one drive-backup life cycle."""
    ok = {"return": {}}
    lines: list = ["", "", f"Starting block job: drive-backup (auto-finalize: {auto_finalize}; "
                   f"auto-dismiss: {auto_dismiss})", ok, jobs("running", "FILTERED", "FILTERED"),
                   ev("created"), ev("running"), "", "Pause/resume in RUNNING"]
    progress = 65536
    for pause in ("block-job-pause", "job-pause"):
        for resume in ("block-job-resume", "job-resume"):
            lines += [f"=== Testing {pause}/{resume} ===", ok, ev("paused"), jobs("paused", progress), ok,
                      ev("running"), jobs("running", progress + 65536)]
            progress += 65536
    lines += [refused("running", verb) for verb in VERBS_IN["running"]] * 2
    lines += [ok, "", "Waiting for PENDING state...", ev("paused"), ev("running"), ev("waiting"), ev("pending")]
    if not auto_finalize:
        lines += [jobs("pending", IMG_SIZE), *[refused("pending", verb) for verb in VERBS_IN["pending"]] * 2, ok]
    lines.append(ev("concluded"))
    if not auto_dismiss:
        lines += [jobs("concluded", IMG_SIZE), *[refused("concluded", verb) for verb in VERBS_IN["concluded"]] * 2,
                  ok]
    return [*lines, ev("null"), {"return": []}]


def test_219_as_the_out_file():
    """The simulator's log is 219.out, line by line (its drive-mirror life cycle, then the four backups)."""
    want = mirror_expected() + [line for af in (True, False) for ad in (True, False) for line in expected(af, ad)]
    assert story(Machine()) == want


def test_219_default_chunk():
    """Without x-perf, 7.2.22 copies 1 MiB per request: the pauses land at 1, 2 and 3 MiB."""
    vm = Machine()
    setup(vm)
    t = Log(vm)
    t.qmp_log("drive-backup", job_id="job0", device="drive0-node", target="copy.img", sync="full", speed=262144)
    t.qmp_log("job-pause", id="job0")
    assert t.qmp("query-jobs") == jobs("paused", 1 << 20)


@pytest.mark.qemu
def test_219_on_both():
    """On the system emulator, as 219's VM (qemu-storage-daemon's backend adds drains of its own exports)."""
    want, got = on_both(story, "system")
    assert got == want


@pytest.mark.qemu
def test_219_default_chunk_on_both():
    def pauses(vm) -> list:
        setup(vm)
        t = Log(vm)
        t.qmp("drive-backup", job_id="job0", device="drive0-node", target="copy.img", sync="full", speed=262144)
        t.poll(lambda: t.qmp("query-jobs")["return"][0]["total-progress"] >= IMG_SIZE)
        seen = []
        for i in range(3):
            t.qmp("job-pause", id="job0")
            seen.append(t.poll(lambda: (r := t.qmp("query-jobs")["return"][0])["status"] == "paused" and r))
            old = seen[-1]["current-progress"]
            if i < 2:
                t.qmp("job-resume", id="job0")
                t.poll(lambda old=old: t.qmp("query-jobs")["return"][0]["current-progress"] != old)
        t.qmp("job-cancel", id="job0")
        vm.run()
        return [j["current-progress"] for j in seen]

    want, got = on_both(pauses)
    assert got == want == [1 << 20, 2 << 20, 3 << 20]


def other_states(vm) -> list:
    """Beyond 219: every verb on a job left ``waiting`` by its grouped transaction, and on one ``paused``."""
    for name in ("d0", "d1", "t0", "t1"):
        vm.qemu_img("create", "-f", "qcow2", f"{name}.qcow2", "4M")
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": name,
                                "file": {"driver": "file", "filename": f"{name}.qcow2"}})
    t = Log(vm)
    t.qmp_log("transaction", actions=[
        {"type": "blockdev-backup", "data": {"device": "d0", "target": "t0", "sync": "full", "job-id": "a"}},
        {"type": "blockdev-backup", "data": {"device": "d1", "target": "t1", "sync": "none", "job-id": "b"}}],
              properties={"completion-mode": "grouped"})
    t.poll(lambda: [j["status"] for j in t.qmp("query-jobs")["return"]] == ["running", "waiting"])
    t.qmp_log("query-jobs")
    for job, state_verbs in (("a", ("pause", "resume", "complete", "finalize", "dismiss")),):
        for verb in state_verbs:
            t.qmp_log(f"job-{verb}", id=job)
        for verb in ("pause", "resume", "complete"):
            t.qmp_log(f"block-job-{verb}", device=job)
        t.qmp_log("block-job-set-speed", device=job, speed=1)
        t.qmp_log("block-job-finalize", id=job)
        t.qmp_log("block-job-dismiss", id=job)
    t.qmp_log("job-pause", id="b")
    t.poll(lambda: t.qmp("query-jobs")["return"][0]["status"] == "paused")
    for verb in ("pause", "complete", "finalize", "dismiss"):
        t.qmp_log(f"job-{verb}", id="b")
    t.qmp_log("block-job-pause", device="b")
    t.qmp_log("block-job-set-speed", device="b", speed=1)
    t.qmp_log("block-job-cancel", device="b")
    t.qmp_log("query-block-jobs")
    t.qmp_log("job-resume", id="b")
    t.qmp_log("job-resume", id="b")
    t.qmp_log("job-cancel", id="b")
    vm.run()
    t.log([(e["event"], e.get("data")) for e in vm.events if e["event"] != "JOB_STATUS_CHANGE"])
    t.qmp_log("query-jobs")
    return t.lines


def test_219_waiting_and_paused():
    lines = other_states(Machine())
    not_paused = "Can't resume a job that was not paused"
    waiting = [f"Job 'a' in state 'waiting' cannot accept command verb '{verb}'" if verb else not_paused
               for verb in ("pause", None, "complete", "finalize", "dismiss", "pause", None, "complete", "set-speed",
                            "finalize", "dismiss")]
    assert [line["error"]["desc"] for line in lines[2:13]] == waiting
    assert lines[14] == {"error": {"class": "GenericError", "desc": "Job is already paused"}}
    assert lines[20] == {"error": {"class": "GenericError", "desc": "The block job for device 'b' is currently paused"}}
    assert [(e, d["device"], d["offset"]) for e, d in lines[-2]] == [("BLOCK_JOB_CANCELLED", "b", 0),
                                                                    ("BLOCK_JOB_CANCELLED", "a", IMG_SIZE)]


@pytest.mark.qemu
def test_219_waiting_and_paused_on_both():
    want, got = on_both(other_states, "system")
    assert got == want
