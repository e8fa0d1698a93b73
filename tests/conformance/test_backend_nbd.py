"""NBD exports on both backends: the real backend's own NBD plumbing must not show.

``Machine(backend="qemu")`` writes as a guest through NBD exports of its own on QEMU's one NBD
server. The golden group ``nbd_export`` (recorded on a bare qemu-storage-daemon 7.2) and the seed
traces' NBD commands run here on the simulator and on the real backend: every reply, every
export event (and how many came before the reply), every job's events and every step's bitmaps
must be the same, and the real backend must still reproduce what the bare QEMU recorded.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bitlab import Machine
from bitlab.backends.qemu import QSD, qmp_chardev
from bitlab.conformance import compare_jobs, normalise, run_step
from bitlab.errors import QMPError

from .. import golden_replay as g
from .. import trace_replay

pytestmark = pytest.mark.qemu
SCENARIOS = g.scenarios("nbd_export")
EXPORT_COMMANDS = {"nbd-server-start", "nbd-server-stop", "block-export-add", "block-export-del",
                   "query-block-exports", "nbd-server-add", "nbd-server-remove", "quit"}
JOB_EVENTS = ("JOB_STATUS_CHANGE", "BLOCK_JOB_")


def _other_events(events: list[dict]) -> list[tuple[str, Any]]:
    """Every event that is not a job's (jobs are compared with QEMU's own variation masked)."""
    return [(ev["event"], ev.get("data")) for ev in events if not ev["event"].startswith(JOB_EVENTS)]


def play(scenario: dict, vm: Any) -> tuple[list[dict], list[dict]]:
    """Run a golden scenario on ``vm`` as tests/golden_replay.py does (the recorder's own exports
    for its guest writes included); per step: the normalised reply, the other events and how many
    events came before the reply; and every event."""
    recorder = g.RecorderExports()
    steps: list[dict] = []
    events: list[dict] = []
    try:
        for drive in scenario.get("drives", []):
            vm.add_drive(drive["id"], drive.get("size", "64M"), drive.get("format", "qcow2"),
                         file=drive.get("file"), blkdebug=drive.get("blkdebug"))
        for rec in scenario["steps"]:
            if rec.get("reply", {}).get("crashed"):
                break
            step = g._subst(rec["step"], "WORKDIR", vm.workdir)
            if step.get("restart") or step.get("kill"):
                events.extend(vm.events)
                vm.events.clear()
                vm = vm.restart(clean=bool(step.get("restart")))
                recorder = g.RecorderExports()
                steps.append({"reply": None, "events": [], "before": 0})
                continue
            kind = next((k for k in g.GUEST_IO if k in step), None)
            failure = recorder.ensure(vm, step[kind]["node"]) if kind is not None else None
            events_at, transcript_at = len(vm.events), len(vm.transcript)
            reply = {"ok": False, "setup": failure} if failure is not None else run_step(vm, step)
            kinds = [entry["kind"] for entry in vm.transcript[transcript_at:]]
            before = kinds[:kinds.index("reply")].count("event") if "reply" in kinds else 0
            steps.append({"reply": normalise(g._subst(reply, vm.workdir, "WORKDIR")),
                          "events": _other_events(vm.events[events_at:]), "before": before})
        events.extend(vm.events)
    finally:
        close = getattr(vm, "close", None)
        if close is not None:
            close()
    return steps, events


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[sc["name"] for sc in SCENARIOS])
def test_nbd_export_scenarios_are_the_same_on_both_backends(scenario: dict) -> None:
    real, real_events = play(scenario, Machine(backend="qemu"))
    sim, sim_events = play(scenario, Machine())
    assert len(real) == len(sim) == len(scenario["steps"])
    for i, (rec, a, b) in enumerate(zip(scenario["steps"], real, sim)):
        if g.known_difference(scenario["name"], i, rec) is None:
            assert a["reply"] == b["reply"], (i, rec["step"])
            if a["reply"] is not None:  # the real backend still answers what the bare QEMU recorded
                assert a["reply"] == normalise(rec["reply"]), (i, rec["step"])
        assert a["events"] == b["events"], (i, rec["step"])
        if rec["step"].get("qmp", {}).get("execute") in EXPORT_COMMANDS and not a["events"] == []:
            assert a["before"] == b["before"], (i, rec["step"])
    assert compare_jobs(real_events, sim_events) == {}
    shown = [ev for ev in real_events if ev["event"] == "BLOCK_EXPORT_DELETED"]
    assert not [ev for ev in shown if ev["data"]["id"].startswith("bitlab-")]
    assert len(shown) == sum(1 for rec in scenario["steps"] for ev in rec["events"]
                             if ev["event"] == "BLOCK_EXPORT_DELETED")


@pytest.mark.parametrize("mode", ["individual", "grouped"])
def test_seed_traces_nbd_commands_on_the_real_backend(mode: str) -> None:
    """The traces start the recorder's server and export drive0/drive1 under the names "drive0" and
    "drive1", then write as a guest: on the real backend too, with the same per-step bitmaps and
    job events as on the simulator and as recorded."""
    with Machine(backend="qemu") as vm:
        real_vm, real = trace_replay.replay(mode, vm)
        exports = real_vm.qmp("query-block-exports")
        assert sorted(e["id"] for e in exports) == ["exp-drive0", "exp-drive1"]
        events_at = len(real_vm.events)
        assert real_vm.execute({"execute": "quit"}) == {"return": {}}
        assert [ev["data"] for ev in real_vm.events[events_at:]] == [{"id": "exp-drive0"}, {"id": "exp-drive1"}]
    _, sim = trace_replay.replay(mode)
    assert list(real) == list(sim) and len(real) > 3
    for step in real:
        assert real[step]["bitmaps"] == sim[step]["bitmaps"], step
        assert {job: trace_replay.without_optional(seq) for job, seq in real[step]["jobs"].items()} == \
            {job: trace_replay.without_optional(seq) for job, seq in sim[step]["jobs"].items()}, step
    for step, summary in trace_replay.load(mode)["summary"].items():  # and as recorded on the bare QEMU
        if step != "setup":
            assert real[step]["bitmaps"] == summary["bitmaps"], step
        assert {job: trace_replay.without_optional(seq) for job, seq in real[step]["jobs"].items()} == \
            {job: trace_replay.without_optional(seq) for job, seq in summary["jobs"].items()}, step


# -- the backend's server and the user's -------------------------------------------------------------


def add_qcow2(vm: Any, name: str, size: str = "4M") -> None:
    vm.qemu_img("create", "-f", "qcow2", f"{name}.qcow2", size)
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": name,
                            "file": {"driver": "file", "filename": f"{name}.qcow2"}})


def server_lifecycle(vm: Any) -> list[Any]:
    """A user's server around guest writes: stopped when none runs, started, exported (under the
    name of a node the backend also exports), stopped; guest I/O keeps working throughout."""
    add_qcow2(vm, "drive0")
    out: list[Any] = [vm.write("drive0", 0, 65536, 0x41), vm.qmp("query-block-exports")]
    out.append(vm.execute({"execute": "nbd-server-stop"}))
    out.append(vm.execute({"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e0",
                                                                       "node-name": "drive0"}}))
    out.append(vm.execute({"execute": "nbd-server-start", "arguments": {
        "addr": {"type": "unix", "data": {"path": "nbd.sock"}}}}))
    out.append(vm.execute({"execute": "block-export-add", "arguments": {
        "type": "nbd", "id": "exp-drive0", "node-name": "drive0", "name": "drive0", "writable": True}}))
    out += [vm.write("drive0", 0, 65536, 0x42), vm.read("drive0", 0, 65536, 0x42), vm.qmp("query-block-exports")]
    out.append(vm.execute({"execute": "blockdev-del", "arguments": {"node-name": "drive0"}}))
    out.append(vm.execute({"execute": "nbd-server-start", "arguments": {
        "addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": "0"}}}}))
    out.append(vm.execute({"execute": "nbd-server-stop"}))
    out += [vm.write("drive0", 65536, 65536, 0x43), vm.read("drive0", 0, 65536, 0x42), vm.qmp("query-block-exports")]
    out.append(vm.execute({"execute": "nbd-server-start", "arguments": {
        "addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": "0"}}}}))
    out += [vm.write("drive0", 0, 65536, 0x44), vm.read("drive0", 0, 65536, 0x44)]
    out.append(vm.execute({"execute": "blockdev-del", "arguments": {"node-name": "drive0"}}))
    out.append(vm.execute({"execute": "nbd-server-stop"}))
    out.append(vm.execute({"execute": "nbd-server-stop"}))
    out.append([(ev["event"], ev["data"]) for ev in vm.events])
    return out


def test_a_users_server_and_guest_io_together():
    with Machine(backend="qemu") as vm:
        real = server_lifecycle(vm)
        helpers = [m["message"]["execute"] for m in vm.backstage]
        sent = [m["message"]["execute"] for m in vm.transcript if m["kind"] == "cmd"]
    sim = server_lifecycle(Machine())
    assert normalise(real) == normalise(sim)
    assert real[1] == [] and real[2]["error"]["desc"] == "NBD server not running"
    assert real[3]["error"]["desc"] == "NBD server not running" and real[5] == {"return": {}}
    assert real[8] == [{"node-name": "drive0", "shutting-down": False, "type": "nbd", "id": "exp-drive0"}]
    assert real[9]["error"]["desc"] == "Node drive0 is in use"
    assert real[10]["error"]["desc"] == "NBD server already running"
    assert real[11] == {"return": {}} and real[13].startswith("read 65536/65536") and real[14] == []
    assert real[18] == real[19] == {"return": {}} and real[20]["error"]["desc"] == "NBD server not running"
    assert real[-1] == [("BLOCK_EXPORT_DELETED", {"id": "exp-drive0"})]
    # the backend's own server came and went backstage, never in the user's transcript
    assert helpers.count("nbd-server-start") >= 2 and "nbd-server-stop" in helpers
    assert sent.count("nbd-server-start") == 3 and sent.count("nbd-server-stop") == 4


def export_during_backup(vm: Any) -> list[Any]:
    """A user's export of a node under backup, its server stopped meanwhile: the guest's writes
    still go through the backup's filter (the old data reaches the target)."""
    add_qcow2(vm, "d0", "8M")
    add_qcow2(vm, "t0", "8M")
    vm.write("d0", 0, 65536, 0x41)
    vm.qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}})
    vm.qmp("block-export-add", {"type": "nbd", "id": "pull", "node-name": "d0"})
    vm.qmp("blockdev-backup", {"job-id": "j0", "device": "d0", "target": "t0", "sync": "none",
                               "filter-node-name": "cbw0"})
    out = [vm.qmp("query-block-exports"), vm.execute({"execute": "nbd-server-stop"}),
           vm.write("d0", 0, 65536, 0x42), vm.read("t0", 0, 65536, 0x41), vm.read("d0", 0, 65536, 0x42),
           vm.qmp("query-block-exports"), vm.execute({"execute": "blockdev-del", "arguments": {"node-name": "d0"}})]
    vm.qmp("job-cancel", {"id": "j0"})
    vm.run()
    out.append(vm.execute({"execute": "blockdev-del", "arguments": {"node-name": "d0"}}))
    out.append([(ev["event"], ev["data"]) for ev in vm.events if ev["event"] == "BLOCK_EXPORT_DELETED"])
    return out


def test_stopping_the_users_server_during_a_backup():
    with Machine(backend="qemu") as vm:
        real = export_during_backup(vm)
    sim = export_during_backup(Machine())
    assert normalise(real) == normalise(sim)
    assert real[0] == [{"node-name": "cbw0", "shutting-down": False, "type": "nbd", "id": "pull"}]
    assert real[3].startswith("read 65536/65536") and real[5] == [] and real[7] == {"return": {}}
    assert real[6]["error"]["desc"] == "Block device d0 is in use"  # the backup's, though no export holds d0
    assert real[-1] == [("BLOCK_EXPORT_DELETED", {"id": "pull"})]


@pytest.mark.parametrize("daemon", ["qsd", "system"])
def test_dirty_bitmap_reads_over_the_users_server(daemon: str) -> None:
    """dirty_bitmap's own export goes on the user's server when one runs, and leaves nothing behind
    (the system emulator has no server of its own until dirty_bitmap needs one)."""
    with Machine(backend="qemu", daemon=daemon) as vm:
        add_qcow2(vm, "d0")
        vm.qmp("block-dirty-bitmap-add", {"node": "d0", "name": "b"})
        vm.write("d0", 65536, 65536)
        vm.qmp("nbd-server-start", {"addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": "0"}}})
        assert vm.dirty_bitmap("d0", "b").count == 65536
        assert vm.qmp("query-block-exports") == []
        with pytest.raises(QMPError, match="NBD server already running"):
            vm.qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}})
        vm.qmp("nbd-server-stop")
        assert vm.dirty_bitmap("d0", "b").count == 65536
        assert [ev for ev in vm.events if ev["event"] == "BLOCK_EXPORT_DELETED"] == []


# -- permission answers: the backend's exports stand aside --------------------------------------------


class BareQemu:
    """A qemu-storage-daemon with nothing of bitlab's: the judge of what a user must see."""

    def __init__(self, workdir: Path) -> None:
        from qemu.qmp.legacy import QEMUMonitorProtocol
        from qemu.qmp.protocol import ConnectError

        self.workdir = workdir
        sock = str(workdir / "bare.sock")
        self.proc = subprocess.Popen([QSD, "--chardev", qmp_chardev(sock, "m"),
                                      "--monitor", "chardev=m"], cwd=workdir, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Connect once the socket exists; a connection made while the monitor is still being set up
        # can fail its negotiation under load: try again. Waiting is on the process (it may exit).
        for _ in range(5000):
            if self.proc.poll() is not None:
                raise RuntimeError(f"qemu-storage-daemon exited with {self.proc.returncode}")
            if os.path.exists(sock):
                try:
                    self.qmp = QEMUMonitorProtocol(sock)
                    self.qmp.connect()
                    break
                except (OSError, ConnectError):
                    pass
            try:
                self.proc.wait(0.002)
            except subprocess.TimeoutExpired:
                pass
        else:
            raise RuntimeError("qemu-storage-daemon's QMP socket did not come up")

    def execute(self, message: dict) -> dict:
        return self.qmp.cmd_obj(message)

    def qemu_img(self, *args: str) -> str:
        return subprocess.run(["qemu-img", *args], cwd=self.workdir, check=True, capture_output=True,
                              text=True).stdout

    def close(self) -> None:
        for call in (lambda: self.qmp.cmd_obj({"execute": "quit"}), self.qmp.close):
            try:
                call()
            except EOFError:  # QEMU may close the socket before its reply is read
                pass
        self.proc.wait(10)


def permission_steps(vm: Any) -> list[dict]:
    """Commands whose permission checks a hidden writable export (sharing no resize) would change,
    with a user's export present too."""
    vm.qemu_img("create", "-f", "qcow2", "d0.qcow2", "4M")
    vm.qemu_img("create", "-f", "qcow2", "d1.qcow2", "4M")
    steps = [
        {"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "d0", "file": {
            "driver": "file", "node-name": "f0", "filename": "d0.qcow2"}}},
        {"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "d1", "file": {
            "driver": "file", "node-name": "f1", "filename": "d1.qcow2"}}},
        {"execute": "block_resize", "arguments": {"node-name": "d0", "size": 8 << 20}},
        {"execute": "blockdev-reopen", "arguments": {"options": [{"driver": "qcow2", "node-name": "d0",
                                                                  "read-only": True, "file": "f0"}]}},
        {"execute": "blockdev-reopen", "arguments": {"options": [{"driver": "qcow2", "node-name": "d0",
                                                                  "read-only": False, "file": "f0"}]}},
        {"execute": "nbd-server-start", "arguments": {"addr": {"type": "unix", "data": {"path": "u.sock"}}}},
        {"execute": "block-export-add", "arguments": {"type": "nbd", "id": "e1", "node-name": "d1",
                                                      "writable": True}},
        {"execute": "block_resize", "arguments": {"node-name": "d1", "size": 8 << 20}},
        {"execute": "block_resize", "arguments": {"node-name": "d0", "size": 16 << 20}},
        {"execute": "blockdev-del", "arguments": {"node-name": "d1"}},
        {"execute": "block-export-del", "arguments": {"id": "e1"}},
        {"execute": "query-block-exports"},
        {"execute": "blockdev-del", "arguments": {"node-name": "d1"}},
        {"execute": "query-named-block-nodes", "arguments": {"flat": True}},
    ]
    return [vm.execute(message) for message in steps]


def test_permission_answers_are_a_bare_qemus(tmp_path: Path) -> None:
    bare = BareQemu(tmp_path)
    try:
        want = permission_steps(bare)
    finally:
        bare.close()
    with Machine(backend="qemu") as vm:
        vm.qemu_img("create", "-f", "qcow2", "x.qcow2", "1M")
        got = permission_steps(vm)
        assert vm.write("d0", 0, 65536).startswith("wrote 65536/65536")  # guest I/O still works
    got, want = g._subst(got, vm.workdir, "WORKDIR"), g._subst(want, str(tmp_path), "WORKDIR")
    assert normalise(got) == normalise(want)
    assert got[2] == {"return": {}} and got[3] == {"return": {}}  # a hidden export shares no resize, holds write


def test_guest_io_over_a_users_server_on_a_long_socket_name():
    """QEMU binds a relative unix socket name in its directory: 100 characters there are fine for it,
    and guest I/O still reaches the server although the absolute name is too long for a socket."""
    name = "s" * 96 + ".sok"
    with Machine(backend="qemu") as vm:
        add_qcow2(vm, "d0")
        assert len(os.path.join(vm.workdir, name)) > 108
        vm.qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": name}}})
        assert vm.write("d0", 0, 512, 0x41).startswith("wrote 512/512")
        assert vm.read("d0", 0, 512, 0x41).startswith("read 512/512")
        vm.qmp("block-dirty-bitmap-add", {"node": "d0", "name": "b"})
        vm.write("d0", 65536, 512)
        assert vm.dirty_bitmap("d0", "b").count == 65536  # read by qemu-img over the same server


def restart_with_an_export(vm: Any, clean: bool) -> list[Any]:
    add_qcow2(vm, "drive0", "64M")
    vm.write("drive0", 0, 512)
    vm.qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "b0", "persistent": True, "disabled": True})
    vm.qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}})
    vm.qmp("block-export-add", {"type": "nbd", "id": "e0", "node-name": "drive0", "bitmaps": ["b0"]})
    new = vm.restart(clean=clean)
    out = [[(ev["event"], ev["data"]) for ev in vm.events], new.qmp("query-block-exports")]
    new.qmp("blockdev-add", {"driver": "qcow2", "node-name": "drive0",
                             "file": {"driver": "file", "filename": "drive0.qcow2"}})
    nodes = new.qmp("query-named-block-nodes", {"flat": True})
    out.append([(bm["name"], bm["busy"]) for bm in nodes[0].get("dirty-bitmaps", [])])
    out += [new.execute({"execute": "nbd-server-stop"}), new.write("drive0", 0, 512)]
    return out


@pytest.mark.parametrize("clean", [True, False])
def test_restart_with_a_users_export(clean: bool) -> None:
    """A clean restart quits: the user's export is deleted with its event (and nothing of the
    backend's shows); after either restart no server runs, and guest I/O works."""
    with Machine(backend="qemu") as vm:
        real = restart_with_an_export(vm, clean)
    assert normalise(real) == normalise(restart_with_an_export(Machine(), clean))
    assert real[0] == ([("BLOCK_EXPORT_DELETED", {"id": "e0"})] if clean else [])
    assert real[3]["error"]["desc"] == "NBD server not running" and real[4].startswith("wrote 512/512")


def _read_only_writes(vm: Any) -> list:
    """A guest's writes to a node opened read-only: refused as its BlockBackend cannot take the permission."""
    vm.qemu_img("create", "-f", "qcow2", "ro.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "ro", "read-only": True,
                            "file": {"driver": "file", "filename": "ro.qcow2"}})
    return [run_step(vm, {verb: {"node": "ro", "offset": 0, "length": 65536}}) for verb in ("write", "zero", "discard")]


@pytest.mark.parametrize("daemon", ["qsd", "system"])
def test_writes_to_a_read_only_node(daemon: str) -> None:
    refused = {"ok": False, "error": "Block node is read-only"}
    assert _read_only_writes(Machine()) == [refused] * 3
    with Machine(backend="qemu", daemon=daemon) as real:
        assert _read_only_writes(real) == [refused] * 3
