"""Drained sections that pause and resume running jobs, as QEMU 7.2's commands make them.

- qmp_transaction drains all I/O before its actions (bdrv_drain_all), and so do blockdev-backup and drive-backup,
  which are transactions of one action: every running job pauses and resumes, and a throttled backup whose
  remaining clusters copy-before-write has meanwhile copied completes there, before the new actions' checks.
- An export's deletion (block-export-del, nbd-server-stop, quit) drains its node twice: the jobs using that node
  pause and resume twice before BLOCK_EXPORT_DELETED.
- On the system emulator HMP qemu-io on a node name drains it twice as the command ends: a backup (through its
  filter) pauses and resumes, restarts its copy call, and completes there if copy-before-write copied all it had
  left (``Machine(daemon="system")``'s guest writes; before session 24 bitlab drained only mirror, commit and stream
  jobs there).
"""

from __future__ import annotations

import pytest

from bitlab import Machine
from tests.both import on_both

M = 1 << 20


def _node(vm, name: str) -> None:
    vm.qemu_img("create", "-f", "qcow2", f"{name}.qcow2", "4M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": name,
                            "file": {"driver": "file", "filename": f"{name}.qcow2"}})


def _statuses(vm, since: int) -> list[str]:
    return [e["data"]["status"] for e in vm.events[since:] if e["event"] == "JOB_STATUS_CHANGE"]


def drains(vm, wait) -> list:
    for name in ("a", "t", "b"):
        _node(vm, name)
    vm.write("a", 0, "2M", 0x11)
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "a", "target": "t", "sync": "full", "speed": 1})
    wait()
    out = []
    for cmd in (("transaction", {"actions": [{"type": "block-dirty-bitmap-add", "data": {"node": "b", "name": "x"}}]}),
                ("block-dirty-bitmap-add", {"node": "b", "name": "y"}),  # not a transaction: no drain
                ("transaction", {"actions": []})):
        at = len(vm.events)
        vm.qmp(*cmd)
        wait()
        out.append((cmd[0], _statuses(vm, at)))
    return out


def completes(vm, wait) -> list:
    """A throttled incremental backup copies its first chunk and sleeps; a guest write through its filter copies
    the rest; the next blockdev-backup of the node (its drain) ends the first job, which frees the bitmap."""
    _node(vm, "a")
    _node(vm, "t")
    vm.qmp("block-dirty-bitmap-add", {"node": "a", "name": "b0"})
    vm.write("a", 0, "1M", 0x11)
    vm.qmp("blockdev-backup", {"job-id": "j1", "device": "a", "target": "t", "sync": "incremental", "bitmap": "b0",
                               "speed": 1, "x-perf": {"max-chunk": 256 << 10}})
    wait()
    vm.write("a", "64k", "1M", 0x22)  # copy-before-write copies all j1 had left
    at = len(vm.events)
    vm.qmp("blockdev-backup", {"job-id": "j2", "device": "a", "target": "t", "sync": "incremental", "bitmap": "b0",
                               "speed": 1})
    wait()
    return [_statuses(vm, at), [(e["event"], e["data"]["len"], e["data"]["offset"]) for e in vm.events[at:]
                                if e["event"] == "BLOCK_JOB_COMPLETED"]]


def test_every_transaction_drains_the_running_jobs():
    vm = Machine()
    assert drains(vm, lambda: vm.run(until=vm.now + 0.05)) == [
        ("transaction", ["paused", "running"]), ("block-dirty-bitmap-add", []), ("transaction", ["paused", "running"])]


def test_a_backup_with_nothing_left_completes_at_the_next_transaction():
    vm = Machine()
    statuses, completed = completes(vm, lambda: vm.run(until=vm.now + 0.05))
    assert statuses[:7] == ["paused", "running", "waiting", "pending", "concluded", "null", "created"]
    # j1: its megabyte, part copied by the filter; then j2 (b0 free again): the clusters written since, 1-16
    assert completed == [("BLOCK_JOB_COMPLETED", M, M), ("BLOCK_JOB_COMPLETED", M, M)]


@pytest.mark.qemu
@pytest.mark.parametrize(("story", "daemon"), [(drains, "qsd"), (drains, "system"), (completes, "qsd")],
                         ids=["drains-qsd", "drains-system", "completes-qsd"])
def test_matches_qemu(story, daemon):
    """(``completes`` on qemu-storage-daemon only: on the system emulator the guest's write is HMP qemu-io,
    whose own drain wakes and ends j1 already: README, Known differences.)"""
    want, got = on_both(story, daemon, wait_s=0.1)
    assert got == want


def exports(vm, wait) -> list:
    """Exports of a job's target, of an unrelated node and of its source, deleted one by one or by
    nbd-server-stop: what the job sees of each command."""
    for name in ("a", "t", "b"):
        _node(vm, name)
    vm.write("a", 0, "2M", 0x11)
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "a", "target": "t", "sync": "full", "speed": 1})
    wait()
    server = ("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "n.sock"}}})
    out = []
    for cmd in (server, ("block-export-add", {"type": "nbd", "id": "e1", "node-name": "t"}),
                ("block-export-del", {"id": "e1"}),
                ("block-export-add", {"type": "nbd", "id": "e2", "node-name": "b"}),
                ("block-export-del", {"id": "e2"}),
                ("block-export-add", {"type": "nbd", "id": "e3", "node-name": "a"}),
                ("nbd-server-stop", {}), server,
                ("block-export-add", {"type": "nbd", "id": "e5", "node-name": "a"}),
                ("block-export-del", {"id": "e5", "mode": "hard"})):
        at = len(vm.events)
        vm.qmp(*cmd)
        wait()
        out.append([e["data"].get("status", e["event"]) for e in vm.events[at:]
                    if e["event"] in ("JOB_STATUS_CHANGE", "BLOCK_EXPORT_DELETED")])
    return out


def test_an_export_deletion_drains_its_node_twice():
    vm = Machine()
    twice = ["paused", "running", "paused", "running", "BLOCK_EXPORT_DELETED"]
    assert exports(vm, lambda: vm.run(until=vm.now + 0.05)) == [
        [], [], twice, [], ["BLOCK_EXPORT_DELETED"], [], twice, [], [], twice]


@pytest.mark.qemu
def test_export_deletions_match_the_system_emulator():
    """(On qemu-storage-daemon the backend's own exports stand aside for some of these commands: more drains.)"""
    want, got = on_both(exports, "system", wait_s=0.1)
    assert got == want


def quits(vm, wait) -> list:
    """quit with an export of a running backup's target: what QEMU sends after the reply."""
    for name in ("a", "t"):
        _node(vm, name)
    vm.qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}})
    vm.qmp("block-export-add", {"type": "nbd", "id": "e1", "node-name": "t", "writable": False})
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "a", "target": "t", "sync": "full", "speed": 1})
    wait()
    at = len(vm.events)
    assert vm.qmp("quit") == {}
    if vm.backend != "sim":
        vm._proc.wait(30)
        while vm._collect(wait=0.2):
            pass
    return [(e["event"], e.get("data", {}).get("status", e.get("data"))) for e in vm.events[at:]]


def test_the_system_emulators_quit_sends_shutdown_then_closes_the_exports():
    vm = Machine(daemon="system")
    got = quits(vm, lambda: vm.run(until=vm.now + 0.1))
    assert got[0] == ("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
    assert [name for name, _ in got].index("BLOCK_EXPORT_DELETED") == 5  # after its node's two drains
    vm = Machine()  # qemu-storage-daemon's: the exports went before the reply, no SHUTDOWN
    assert "SHUTDOWN" not in [name for name, _ in quits(vm, lambda: vm.run(until=vm.now + 0.1))]


@pytest.mark.qemu
def test_quit_matches_the_system_emulator():
    want, got = on_both(quits, "system", wait_s=0.1)
    assert got == want


def two_backups(vm, wait) -> list:
    """A throttled backup j of ``a``, then a quick one k of the same node: k's filter goes under j's, k's
    prepare drains ``a`` (j pauses), k starts paused, both resume (the newest first), and k's end drops its
    filter with ``a`` drained once more (j pauses and resumes again)."""
    for name in ("a", "t", "t2"):
        _node(vm, name)
    vm.write("a", 0, "2M", 0x11)
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "a", "target": "t", "sync": "full", "speed": 1})
    wait()
    at = len(vm.events)
    vm.qmp("blockdev-backup", {"job-id": "k", "device": "a", "target": "t2", "sync": "full"})
    wait()
    return [(e["data"]["id"], e["data"]["status"]) for e in vm.events[at:] if e["event"] == "JOB_STATUS_CHANGE"]


def test_a_backups_end_drains_its_source_for_the_other_jobs():
    vm = Machine()
    assert two_backups(vm, lambda: vm.run(until=vm.now + 0.2)) == [
        ("j", "paused"), ("j", "running"),  # the transaction's bdrv_drain_all
        ("j", "paused"), ("k", "created"), ("k", "running"), ("k", "paused"),  # k's prepare drains a
        ("k", "running"), ("j", "running"),  # the drained section ends: the newest job first
        ("k", "waiting"), ("k", "pending"), ("j", "paused"), ("j", "running"),  # k's filter dropped
        ("k", "concluded"), ("k", "null")]


@pytest.mark.qemu
def test_two_backups_match_the_system_emulator():
    want, got = on_both(two_backups, "system", wait_s=0.2)
    assert got == want


def stacked(vm, wait) -> list:
    """Two throttled backups of one node (k's filter under j's), j cancelled (dropping its filter reaches no
    other job: k's is below), a grouped transaction and a drive-backup of another node (each transaction drains
    k), then k's end."""
    for name in ("a", "b", "t", "t2", "t3"):
        _node(vm, name)
    vm.write("a", 0, "2M", 0x11)
    vm.write("b", 0, "2M", 0x22)
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "a", "target": "t", "sync": "full", "speed": 1})
    wait()
    steps = [("blockdev-backup", {"job-id": "k", "device": "a", "target": "t2", "sync": "full", "speed": 1}),
             ("block-job-cancel", {"device": "j"}),
             ("transaction", {"actions": [
                 {"type": "blockdev-backup", "data": {"job-id": "g1", "device": "b", "target": "t3", "sync": "full"}},
                 {"type": "blockdev-backup", "data": {"job-id": "g2", "device": "b", "target": "t", "sync": "full"}}],
                 "properties": {"completion-mode": "grouped"}}),
             ("drive-backup", {"job-id": "d", "device": "b", "target": "new.qcow2", "format": "qcow2", "sync": "full",
                               "mode": "absolute-paths"}),
             ("block-job-set-speed", {"device": "k", "speed": 0})]
    out = []
    for cmd in steps:
        at = len(vm.events)
        vm.qmp(*cmd)
        wait()
        out.append([(e["data"].get("id", e["data"].get("device")), e["data"].get("status", e["event"]))
                    for e in vm.events[at:] if e["event"] in ("JOB_STATUS_CHANGE", "BLOCK_JOB_COMPLETED",
                                                              "BLOCK_JOB_CANCELLED")])
    return out


def test_dropping_a_filter_reaches_only_the_jobs_above_it():
    vm = Machine()
    out = stacked(vm, lambda: vm.run(until=vm.now + 0.2))
    assert out[1] == [("j", "aborting"), ("j", "BLOCK_JOB_CANCELLED"), ("j", "concluded"), ("j", "null")]
    assert out[2][:2] == out[3][:2] == [("k", "paused"), ("k", "running")]  # each transaction's drain


@pytest.mark.qemu
def test_stacked_backups_match_the_system_emulator():
    want, got = on_both(stacked, "system", wait_s=0.2)
    assert got == want


def snapshots(vm, wait) -> list:
    """External snapshots while two throttled backups run: the transaction's drain reaches both jobs, the
    snapshot's drained section only the job using its node (a refused one drains as well)."""
    for name in ("a", "b", "t", "t2"):
        _node(vm, name)
    vm.write("a", 0, "2M", 0x11)
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "a", "target": "t", "sync": "full", "speed": 1})
    vm.qmp("blockdev-backup", {"job-id": "k", "device": "b", "target": "t2", "sync": "full", "speed": 1})
    wait()
    out = []
    for node in ("a", "t", "b"):
        at = len(vm.events)
        try:
            vm.qmp("transaction", {"actions": [{"type": "blockdev-snapshot-sync", "data": {
                "node-name": node, "snapshot-file": f"{node}s.qcow2", "snapshot-node-name": f"{node}s"}}]})
        except Exception as err:  # noqa: BLE001 - t is a backup's target: refused
            out.append(str(err))
        wait()
        out.append([(e["data"]["id"], e["data"]["status"]) for e in vm.events[at:]
                    if e["event"] == "JOB_STATUS_CHANGE"])
    return out


def test_a_snapshot_drains_all_then_its_node():
    vm = Machine()
    drain_all = [("j", "paused"), ("k", "paused"), ("j", "running"), ("k", "running")]
    assert snapshots(vm, lambda: vm.run(until=vm.now + 0.1)) == [
        drain_all + [("j", "paused"), ("j", "running")],
        "GenericError: Node 't' is busy: block device is in use by block job: backup",
        drain_all + [("j", "paused"), ("j", "running")],
        drain_all + [("k", "paused"), ("k", "running")]]


@pytest.mark.qemu
def test_snapshots_match_the_system_emulator():
    want, got = on_both(snapshots, "system", wait_s=0.1)
    assert got == want


def hmp_drain_steps() -> list[dict]:
    """A throttled backup of a 2 MiB disk whose guest writes copy-before-write the rest: the second write's drains
    end the job's sleep, its copy call finds nothing left."""
    from tests.conformance.stories import q, write

    images = [step for name in ("d", "t") for step in (
        {"qemu-img": ["create", "-f", "qcow2", f"{name}.qcow2", "2M"]},
        q("blockdev-add", {"driver": "qcow2", "node-name": name,
                           "file": {"driver": "file", "filename": f"{name}.qcow2"}}))]
    return [*images,
            write("d", 0, 2 * M, 0x11),
            q("blockdev-backup", {"job-id": "j", "device": "d", "target": "t", "sync": "full", "speed": 1}),
            write("d", M, M, 0x22), q("query-jobs"), write("d", 0, M, 0x23), q("query-jobs"), {"settle-jobs": True},
            {"read": {"node": "t", "offset": 0, "length": 2 * M, "pattern": 0x11}}]


def test_hmp_qemu_io_drains_a_backup_on_the_system_emulator():
    from bitlab.conformance.steps import run_step

    vm = Machine(daemon="system")
    replies = [run_step(vm, step) for step in hmp_drain_steps()]
    assert replies[7]["return"] == []  # done before the first query: no job left
    assert _statuses(vm, 0) == ["created", "running", "paused", "running", "paused", "running", "waiting", "pending",
                                "concluded", "null"]
    assert replies[-1]["stdout"].startswith("read 2097152/2097152 bytes")  # the point-in-time data, verified


@pytest.mark.qemu
def test_hmp_qemu_io_drains_match_the_system_emulator():
    from bitlab.conformance.runner import compare, play

    scenario = {"name": "hmp-drains", "steps": hmp_drain_steps()}
    real, sim = play(scenario, "qemu", "system"), play(scenario, "sim", "system")
    assert [d.render() for d in compare(scenario, real, sim)] == []
