"""QEMU 7.2's iotest 185 (QEMU exits while jobs still run), backup case, and the other states a backup
can be in when ``quit`` comes.

Ported: a full drive-backup of a 64 MiB qcow2 node at 64 KiB/s, ``quit`` half a second later: after the
reply QEMU drains all nodes (the job pauses), force-cancels it (it leaves the pause, aborting) and waits
for it: BLOCK_JOB_CANCELLED with the offset it had reached (1 MiB on the installed 7.2.22, whose first
block-copy request is 1 MiB; 185.out, of an older QEMU, says 65536), concluded, null.
Added, same mechanism (job_cancel_sync_all, newest job first): a job left pending (auto-finalize off), one
left concluded (auto-dismiss off: only dismissed), one paused by the user, a ``sync: none`` job, and two
jobs of a grouped transaction.
Ported too: 185's mirror case (drive-mirror at 64 KiB/s, quit while it runs: cancelled where it had got to),
and beyond it a mirror that is ready when ``quit`` comes (cancelled by force: no switch-over).
Ported too: 185's commit case (the commit job of the middle image at 64 KiB/s: one 512 KiB chunk, then asleep
until quit cancels it), its active commit case (4 MiB to copy, done in one iteration) and its stream case (one
512 KiB chunk pulled into the top, len the whole disk). The stories are compared with
the system emulator's, SHUTDOWN event (first after the reply) included: ``Machine(daemon="system")`` quits as
the system emulator does. (On qemu-storage-daemon the backend's own NBD exports of every node, closed at the
exit, drain each job twice more.) 185 builds its
chain with blockdev-snapshot-sync and writes through the guest; here the source is a fresh image.
"""

from __future__ import annotations

import pytest

from bitlab import Machine
from tests.both import on_both
from tests.iotests.harness import Log

K, M = 1 << 10, 1 << 20


def quit_and_wait(vm) -> None:
    """``quit``; on real QEMU, the events it sends until it has exited."""
    assert vm.qmp("quit") == {}
    if vm.backend != "sim":
        vm._proc.wait(30)
        while vm._collect(wait=0.2):
            pass


def node(vm, name: str) -> None:
    vm.qemu_img("create", "-f", "qcow2", f"{name}.qcow2", "64M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": name,
                            "file": {"driver": "file", "filename": f"{name}.qcow2"}})


def events_after(vm, since: int) -> list:
    return [(e["event"], e.get("data")) for e in vm.events[since:]]


def chain(vm) -> None:
    """base <- mid <- top, 64 MiB each, 4 MiB of data in mid, opened with one blockdev-add as ``top``."""
    vm.qemu_img("create", "-f", "qcow2", "base.qcow2", "64M")
    for name, below in (("mid", "base"), ("top", "mid")):
        vm.qemu_img("create", "-f", "qcow2", "-b", f"{below}.qcow2", "-F", "qcow2", f"{name}.qcow2", "64M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "w", "file": {"driver": "file", "filename": "mid.qcow2"},
                            "backing": None})
    vm.write("w", 0, 4 * M)
    vm.qmp("blockdev-del", {"node-name": "w"})
    opts: dict | None = None
    for name in ("base", "mid", "top"):
        opts = {"driver": "qcow2", "node-name": name, "file": {"driver": "file", "filename": f"{name}.qcow2"},
                **({"backing": opts} if opts else {})}
    vm.qmp("blockdev-add", opts)


def story(vm, wait, case: str) -> list:
    node(vm, "disk")
    node(vm, "disk2")
    t = Log(vm)
    backup = {"device": "disk", "target": "copy.qcow2", "format": "qcow2", "sync": "full", "speed": 65536,
              "job-id": "job0"}
    if case == "185":
        t.qmp_log("drive-backup", **backup)
    elif case == "pending":
        t.qmp_log("drive-backup", **{**backup, "speed": 0, "auto-finalize": False})
    elif case == "concluded":
        t.qmp_log("drive-backup", **{**backup, "speed": 0, "auto-dismiss": False})
    elif case == "user-paused":
        t.qmp_log("drive-backup", **backup)
        t.qmp_log("job-pause", id="job0")
    elif case == "sync-none":
        t.qmp_log("drive-backup", **{**backup, "sync": "none"})
    elif case == "mirror":  # 185's mirror case: drive-mirror at 64 KiB/s into a new image
        vm.write("disk", 0, 4 * M)
        t.qmp_log("drive-mirror", **{k: v for k, v in backup.items() if k != "job-id"}, job_id="job0")
    elif case == "mirror-ready":  # beyond 185: a mirror ready and waiting for job-complete
        vm.write("disk", 0, 4 * M)
        t.qmp_log("drive-mirror", **{**{k: v for k, v in backup.items() if k != "job-id"}, "speed": 0}, job_id="job0")
    elif case in ("commit", "active-commit", "stream"):  # 185's chain: base <- mid (4 MiB written) <- top
        chain(vm)
        args = {"device": "top", "speed": 65536, "job-id": "job0"}
        if case == "commit":
            args.update({"top-node": "mid", "base-node": "base"})
        t.qmp_log("block-stream" if case == "stream" else "block-commit", **args)
    elif case == "grouped":
        t.qmp_log("transaction", actions=[
            {"type": "drive-backup", "data": {**backup, "job-id": f"job{i}", "device": d, "target": f"c{i}.qcow2"}}
            for i, d in enumerate(("disk", "disk2"))], properties={"completion-mode": "grouped"})
    wait()
    t.log([(j["id"], j["status"], j["current-progress"]) for j in t.qmp("query-jobs")["return"]])
    since = len(vm.events)
    quit_and_wait(vm)
    t.log(events_after(vm, since))
    return t.lines


CASES = ["185", "pending", "concluded", "user-paused", "sync-none", "grouped", "mirror", "mirror-ready", "commit",
         "active-commit", "stream"]


def status(job: str, value: str) -> tuple:
    return ("JOB_STATUS_CHANGE", {"id": job, "status": value})


def cancelled(job: str, offset: int, speed: int = 65536, device: str | None = None) -> tuple:
    return ("BLOCK_JOB_CANCELLED", {"device": device or job, "len": 64 * M, "offset": offset, "speed": speed,
                                    "type": "backup"})


def test_185_backup():
    vm = Machine()
    lines = story(vm, lambda: vm.run(until=vm.now + 0.5), "185")
    assert lines == [{"return": {}}, [("job0", "running", M)], [
        status("job0", "paused"), status("job0", "running"), status("job0", "aborting"), cancelled("job0", M),
        status("job0", "concluded"), status("job0", "null")]]


def test_185_mirror():
    vm = Machine()
    lines = story(vm, lambda: vm.run(until=vm.now + 0.5), "mirror")
    """The new image reads as zeroes: only the 4 MiB written are copied, in one iteration (up to buf-size), then
    the rate limit holds the job asleep until quit cancels it."""
    assert lines[1] == [("job0", "running", 4 * M)]
    assert lines[2] == [status("job0", "paused"), status("job0", "running"), status("job0", "aborting"),
                        ("BLOCK_JOB_CANCELLED", {"device": "job0", "len": 4 * M, "offset": 4 * M, "speed": 65536,
                                                 "type": "mirror"}),
                        status("job0", "concluded"), status("job0", "null")]


@pytest.mark.parametrize("case, length, offset", [("commit", 64 * M, 512 * K), ("active-commit", 4 * M, 4 * M),
                                                  ("stream", 64 * M, 512 * K)])
def test_185_commit_and_stream(case, length, offset):
    """185.out: the commit job has copied one 512 KiB chunk (len: the whole disk), the active commit the 4 MiB
    in one iteration, the stream job one 512 KiB chunk; quit cancels them where they are."""
    vm = Machine()
    lines = story(vm, lambda: vm.run(until=vm.now + 0.5), case)
    assert lines[1] == [("job0", "running", offset)]
    assert lines[2] == [status("job0", "paused"), status("job0", "running"), status("job0", "aborting"),
                        ("BLOCK_JOB_CANCELLED", {"device": "job0", "len": length, "offset": offset, "speed": 65536,
                                                 "type": "stream" if case == "stream" else "commit"}),
                        status("job0", "concluded"), status("job0", "null")]


def test_185_pending_and_concluded_jobs():
    vm = Machine()
    lines = story(vm, lambda: vm.run(until=vm.now + 0.5), "pending")
    assert lines[1:] == [[("job0", "pending", 64 * M)], [
        status("job0", "aborting"), cancelled("job0", 64 * M, 0), status("job0", "concluded"), status("job0", "null")]]
    vm = Machine()
    lines = story(vm, lambda: vm.run(until=vm.now + 0.5), "concluded")
    assert lines[1:] == [[("job0", "concluded", 64 * M)], [status("job0", "null")]]


@pytest.mark.qemu
@pytest.mark.parametrize("case", CASES)
def test_185_on_both(case):
    want, got = on_both(lambda vm, wait: story(vm, wait, case), "system", wait_s=0.5)
    assert want[-1][0] == ("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
    assert got == want
