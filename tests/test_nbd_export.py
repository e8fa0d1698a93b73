"""NBD exports at the QMP level against real QEMU 7.2, beyond the replies test_golden_qemu.py compares.

tests/golden/nbd_export.json (group ``nbd_export`` of tools/golden_scenarios.py) was recorded on
qemu-storage-daemon 7.2: here every step's BLOCK_EXPORT_DELETED events, and how many events came
before the reply, must be what QEMU sent. The seed traces' ``quit`` deletes the recorder's exports;
bitlab's must do the same. Then the rules bitlab adds because it opens no socket.
"""

from __future__ import annotations

import pytest

from bitlab import Machine
from bitlab.conformance import run_step

from . import golden_replay as g
from . import trace_replay

EXPORT_COMMANDS = {"nbd-server-start", "nbd-server-stop", "block-export-add", "block-export-del",
                   "query-block-exports", "nbd-server-add", "nbd-server-remove"}
SCENARIOS = g.scenarios("nbd_export")


def _export_events(events: list[dict]) -> list[dict]:
    return [ev["data"] for ev in events if ev["event"] == "BLOCK_EXPORT_DELETED"]


def _events_before_reply(transcript: list[dict]) -> int:
    """Events between a command and its reply in a slice of ``vm.transcript``."""
    kinds = [entry["kind"] for entry in transcript]
    return kinds[:kinds.index("reply")].count("event")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[sc["name"] for sc in SCENARIOS])
def test_export_events_match_real_qemu(scenario: dict) -> None:
    """Per step: the same BLOCK_EXPORT_DELETED events, and for the export commands the same number
    of events before the reply (QEMU sends them first: deletion completes inside the command)."""
    vm = g.build_machine(scenario)
    deleted = 0
    for rec in scenario["steps"]:
        step = g._subst(rec["step"], "WORKDIR", vm.workdir)
        events_at, transcript_at = len(vm.events), len(vm.transcript)
        run_step(vm, step)
        assert _export_events(vm.events[events_at:]) == _export_events(rec["events"]), rec["step"]
        deleted += len(_export_events(rec["events"]))
        only_exports = all(ev["event"] == "BLOCK_EXPORT_DELETED" for ev in rec["events"])
        if step.get("qmp", {}).get("execute") in EXPORT_COMMANDS and only_exports:
            # (a command's drained section also pauses and resumes running jobs in QEMU: those
            # JOB_STATUS_CHANGE pairs are QEMU's own variation, masked in every job comparison)
            assert _events_before_reply(vm.transcript[transcript_at:]) == rec["events-before-reply"], rec["step"]
    if scenario["name"] in ("server", "export-bitmaps", "export-during-backup", "deprecated-nbd-server-add"):
        assert deleted > 0  # the recording holds deletions to compare


@pytest.mark.parametrize("mode", ["individual", "grouped"])
def test_quit_deletes_the_exports_as_the_seed_trace_shows(mode: str) -> None:
    """The seed traces end with ``quit``: QEMU deletes each export, oldest first, before replying."""
    trace = trace_replay.load(mode)["trace"]
    quit_at = next(i for i, rec in enumerate(trace) if rec["kind"] == "cmd" and rec["execute"] == "quit")
    want = [rec["data"] for rec in trace[quit_at:] if rec["kind"] == "event"]
    assert want == [{"id": "exp-drive0"}, {"id": "exp-drive1"}]
    reply_at = next(i for i, rec in enumerate(trace) if rec["kind"] == "return" and rec["execute"] == "quit")
    assert all(rec["kind"] == "event" for rec in trace[quit_at + 1:reply_at])

    vm, _ = trace_replay.replay(mode)
    assert [e["id"] for e in vm.qmp("query-block-exports")] == ["exp-drive1", "exp-drive0"]  # newest first
    events_at, transcript_at = len(vm.events), len(vm.transcript)
    assert vm.execute({"execute": "quit"}) == {"return": {}}
    assert _export_events(vm.events[events_at:]) == want
    assert _events_before_reply(vm.transcript[transcript_at:]) == len(want)
    assert vm.qmp("query-block-exports") == []


def test_seed_traces_replay_their_nbd_commands() -> None:
    """Nothing of the traces is skipped any more: the recorder's server and exports run on bitlab."""
    sent = [item[0] for kind, item in trace_replay.commands("individual") if kind == "cmd"]
    assert sent.count("nbd-server-start") == 1 and sent.count("block-export-add") == 2


# -- what bitlab adds: it binds nothing, so addresses follow its own rule -----------------------------


def _start(vm: Machine, addr: dict) -> dict:
    return vm.execute({"execute": "nbd-server-start", "arguments": {"addr": addr}})


@pytest.mark.parametrize("path", ["/tmp/x.sock", "../x.sock", "a/../../x.sock"])
def test_unix_socket_outside_the_work_directory_is_refused(path: str) -> None:
    """Nothing exists outside the work directory, as for image files."""
    vm = Machine()
    reply = _start(vm, {"type": "unix", "data": {"path": path}})
    assert reply["error"]["desc"] == f"Failed to bind socket to {path}: No such file or directory"  # QEMU's text
    assert _start(vm, {"type": "unix", "data": {"path": f"{vm.workdir}/sub/x.sock"}}) == {"return": {}}


def test_only_local_inet_addresses() -> None:
    vm = Machine()
    for addr in ({"type": "inet", "data": {"host": "0.0.0.0", "port": "10809"}},
                 {"type": "vsock", "data": {"cid": "2", "port": "10809"}}):
        assert "listens only on a unix socket in its work directory or on 127.0.0.1 / localhost" in \
            _start(vm, addr)["error"]["desc"]
    reply = _start(vm, {"type": "inet", "data": {"host": "127.0.0.1", "port": "abc"}})
    assert reply["error"]["desc"] == ("address resolution failed for 127.0.0.1:abc: Servname not supported for "
                                      "ai_socktype")  # qemu-storage-daemon 7.2's text
    assert _start(vm, {"type": "inet", "data": {"host": "localhost", "port": "10809"}}) == {"return": {}}
    assert vm.exports.server is not None and vm.exports.server.addr["host"] == "localhost"


def test_only_nbd_exports_are_simulated() -> None:
    vm = Machine()
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "n0", "size": 1 << 20})
    fuse = {"type": "fuse", "id": "f0", "node-name": "n0", "mountpoint": "mnt"}
    reply = vm.execute({"execute": "block-export-add", "arguments": fuse})
    assert reply["error"]["desc"] == "bitlab simulates only NBD exports, not 'fuse'"
    # the checks common to every export type come first, as in QEMU's blk_exp_add
    reply = vm.execute({"execute": "block-export-add", "arguments": {**fuse, "node-name": "nope"}})
    assert reply["error"]["desc"] == "Cannot find device='' nor node-name='nope'"


def test_pull_mode_backup_bitmap_is_busy_while_exported() -> None:
    """A pull-mode incremental backup: freeze the bitmap (disable it), export it read-only, release it."""
    vm = Machine()
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "n0", "size": 64 << 20})
    vm.qmp("block-dirty-bitmap-add", {"node": "n0", "name": "b0"})
    vm.write("n0", 0, "128k")
    vm.qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}})
    vm.qmp("block-dirty-bitmap-disable", {"node": "n0", "name": "b0"})
    vm.qmp("block-export-add", {"type": "nbd", "id": "pull", "node-name": "n0", "bitmaps": ["b0"]})
    snapshot = vm.dirty_bitmap("n0", "b0")
    assert (snapshot.busy, snapshot.count) == (True, 131072)
    reply = vm.execute({"execute": "block-dirty-bitmap-remove", "arguments": {"node": "n0", "name": "b0"}})
    assert reply["error"]["desc"] == "Bitmap 'b0' is currently in use by another operation and cannot be used"
    vm.qmp("block-export-del", {"id": "pull"})
    assert vm.events[-1]["data"] == {"id": "pull"}
    assert vm.dirty_bitmap("n0", "b0").busy is False
    vm.qmp("block-dirty-bitmap-remove", {"node": "n0", "name": "b0"})


def test_deleting_an_export_of_a_backup_filter_keeps_the_backup_running() -> None:
    """The export's BlockBackend was the filter's only parent; the filter still belongs to its job."""
    vm = Machine()
    for name in ("n0", "t0"):
        vm.qmp("blockdev-add", {"driver": "null-co", "node-name": name, "size": 64 << 20})
    vm.qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}})
    vm.qmp("blockdev-backup", {"job-id": "j0", "device": "n0", "target": "t0", "sync": "full", "speed": 1 << 20,
                               "filter-node-name": "cbw0"})
    vm.qmp("block-export-add", {"type": "nbd", "id": "e0", "node-name": "cbw0"})
    vm.qmp("block-export-del", {"id": "e0"})
    assert "cbw0" in [n["node-name"] for n in vm.qmp("query-named-block-nodes", {"flat": True})]
    vm.qmp("block-job-set-speed", {"device": "j0", "speed": 0})
    vm.run()
    assert [ev["event"] for ev in vm.events if ev["event"].startswith("BLOCK_JOB")] == ["BLOCK_JOB_COMPLETED"]


@pytest.mark.parametrize("clean", [True, False])
def test_restart_ends_the_exports(clean: bool) -> None:
    """A clean restart quits (each export deleted, with its event); a kill just ends everything."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "d0.qcow2", "64M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "drive0", "file": {"driver": "file",
                                                                              "filename": "d0.qcow2"}})
    vm.qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "b0", "persistent": True, "disabled": True})
    vm.qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}})
    vm.qmp("block-export-add", {"type": "nbd", "id": "e0", "node-name": "drive0", "bitmaps": ["b0"]})
    new = vm.restart(clean=clean)
    assert _export_events(vm.events) == ([{"id": "e0"}] if clean else [])
    assert new.qmp("query-block-exports") == [] and new.exports.server is None
    new.qmp("blockdev-add", {"driver": "qcow2", "node-name": "drive0", "file": {"driver": "file",
                                                                               "filename": "d0.qcow2"}})
    bitmaps = new.qmp("query-named-block-nodes", {"flat": True})[0].get("dirty-bitmaps", [])
    # stored at the clean close (not busy once reloaded); a kill never stored it
    assert [(bm["name"], bm["busy"]) for bm in bitmaps] == ([("b0", False)] if clean else [])
