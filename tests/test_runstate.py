"""``stop``, ``cont``, ``query-status``, their events and HMP commands, as QEMU 7.2's system emulator has them.

Measured on ``qemu-system-x86_64 -M none`` 7.2: ``stop`` sends STOP only when the VM runs, but drains and
flushes every time (do_vm_stop); ``cont`` resets the block jobs' I/O status, then sends RESUME only when the
VM was paused (vm_prepare_start); jobs and qemu-io go on while it is paused. The ``qemu`` tests play the
same stories on both backends.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from bitlab import Machine
from bitlab.backends.qemu import QemuDaemonError
from bitlab.qmp.cmd_runstate import flush_order
from tests.both import on_both

M = 1 << 20


def _names(vm: Any, since: int = 0) -> list[tuple[str, Any]]:
    return [(ev["event"], ev.get("data")) for ev in vm.events[since:]]


def _io(vm: Any, node: str, command: str) -> str:
    """A guest's qemu-io request; its output without timings (QEMU's are real, bitlab's ``inf``)."""
    return re.sub(r"; .*\n", "\n", vm.guest_io(node, command))


# -- stop, cont, query-status ---------------------------------------------------------------


def _sequence(vm: Any) -> list:
    out: list = []
    for execute in ("query-status", "stop", "query-status", "stop", "query-status", "cont", "query-status",
                    "cont", "query-status"):
        at = len(vm.events)
        out.append((json.dumps(vm.execute({"execute": execute})), [name for name, _ in _names(vm, at)]))
    return out


SEQUENCE = [
    ('{"return": {"status": "running", "singlestep": false, "running": true}}', []),
    ('{"return": {}}', ["STOP"]),
    ('{"return": {"status": "paused", "singlestep": false, "running": false}}', []),
    ('{"return": {}}', []),  # paused already: no event
    ('{"return": {"status": "paused", "singlestep": false, "running": false}}', []),
    ('{"return": {}}', ["RESUME"]),
    ('{"return": {"status": "running", "singlestep": false, "running": true}}', []),
    ('{"return": {}}', []),  # running already: vm_prepare_start returns at once
    ('{"return": {"status": "running", "singlestep": false, "running": true}}', []),
]


def _errors(vm: Any) -> list:
    return [vm.execute(message) for message in (
        {"execute": "stop", "arguments": {"x": 1}}, {"execute": "cont", "arguments": {"force": True}},
        {"execute": "query-status", "arguments": {"x": 1}}, {"execute": "stop", "arguments": []},
        {"execute": "cont", "arguments": {}, "id": 7})]


ERRORS = [
    {"error": {"class": "GenericError", "desc": "Parameter 'x' is unexpected"}},
    {"error": {"class": "GenericError", "desc": "Parameter 'force' is unexpected"}},
    {"error": {"class": "GenericError", "desc": "Parameter 'x' is unexpected"}},
    {"error": {"class": "GenericError", "desc": "QMP input member 'arguments' must be an object"}},
    {"return": {}, "id": 7},
]


def test_schema_and_command_list() -> None:
    vm = Machine()
    names = {c["name"] for c in vm.qmp("query-commands")}
    assert {"stop", "cont", "query-status"} <= names
    schema = {e["name"]: e for e in vm.qmp("query-qmp-schema")}
    assert schema["STOP"]["meta-type"] == schema["RESUME"]["meta-type"] == "event"
    ret = schema[schema["query-status"]["ret-type"]]
    assert [(mem["name"], mem["type"]) for mem in ret["members"][:2]] == [("running", "bool"), ("singlestep", "bool")]
    assert "paused" in schema[ret["members"][2]["type"]]["values"]


def _hmp(vm: Any) -> list:
    out = []
    for line in ("info status", "stop", "info status", "s", "c", "info status", "cont", "stop foo", "s x",
                 "cont x", "c x", "info status x", "info block-jobs x", "  stop  ", "info  status", "cont"):
        at = len(vm.events)
        out.append((line, vm.hmp(line), [name for name, _ in _names(vm, at)]))
    return out


def _extra(label: str, name: str) -> str:
    return f'{label}: extraneous characters at the end of line\r\nTry "help {name}" for more information\r\n'


HMP = [
    ("info status", "VM status: running\r\n", []),
    ("stop", "", ["STOP"]),
    ("info status", "VM status: paused\r\n", []),
    ("s", "", []),
    ("c", "", ["RESUME"]),
    ("info status", "VM status: running\r\n", []),
    ("cont", "", []),
    ("stop foo", _extra("stop|s", "stop"), []),
    ("s x", _extra("stop|s", "s"), []),
    ("cont x", _extra("cont|c", "cont"), []),
    ("c x", _extra("cont|c", "c"), []),
    ("info status x", _extra("status", "info status"), []),
    ("info block-jobs x", _extra("block-jobs", "info block-jobs"), []),
    ("  stop  ", "", ["STOP"]),
    ("info  status", "VM status: paused\r\n", []),
    ("cont", "", ["RESUME"]),
]


@pytest.mark.qemu
def test_the_real_backend_takes_the_system_emulator() -> None:
    """qemu-storage-daemon has none of these commands: with daemon "auto" one of them first starts the system
    emulator; on qemu-storage-daemon ``qmp`` says why, ``execute`` gives its own CommandNotFound."""
    with Machine(backend="qemu", daemon="auto") as vm:
        assert vm.qmp("query-status") == {"status": "running", "singlestep": False, "running": True}
        assert vm.kind == "system"
    with Machine(backend="qemu", daemon="qsd") as vm:
        with pytest.raises(QemuDaemonError, match=r"^stop needs QEMU's system emulator"):
            vm.qmp("stop")
        assert vm.execute({"execute": "cont"}) == {
            "error": {"class": "CommandNotFound", "desc": "The command cont has not been found"}}
        assert vm.kind == "qsd"


# -- jobs: drained and resumed by every stop, running while the VM is paused -----------------------


def _two_nodes(vm: Any, names: tuple[str, ...] = ("d0", "t")) -> None:
    for name in names:
        vm.qemu_img("create", "-f", "qcow2", f"{name}.qcow2", "4M")
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": name,
                                "file": {"driver": "file", "filename": f"{name}.qcow2"}})


def _throttled(vm: Any) -> list:
    """A throttled backup: stop (paused and resumed by the drain), stop again (the same, no STOP),
    cont, cont; the job runs on while the VM is paused; then it gets its speed and completes."""
    _two_nodes(vm)
    vm.write("d0", 0, 2 * M, 2)
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "d0", "target": "t", "sync": "full", "speed": 1})
    at = len(vm.events)
    # (no guest write here: on the system emulator HMP qemu-io drains the node, pausing the job twice more)
    out: list = [vm.qmp("stop"), vm.qmp("query-jobs"), vm.qmp("stop")]
    out += [_names(vm, at), vm.qmp("cont"), vm.qmp("cont")]
    at = len(vm.events)
    vm.qmp("stop")
    vm.qmp("block-job-set-speed", {"device": "j", "speed": 0})
    vm.run(until=vm.now + 1)
    out += [_names(vm, at), vm.qmp("query-status")]
    return out


def _status(name: str, job: str = "j") -> tuple[str, dict]:
    return ("JOB_STATUS_CHANGE", {"status": name, "id": job})


THROTTLED = [
    {}, [{"current-progress": M, "status": "running", "total-progress": 4 * M, "type": "backup", "id": "j"}],
    {},
    [("STOP", None), _status("paused"), _status("running"), _status("paused"), _status("running")],
    {}, {},
    [("STOP", None), _status("paused"), _status("running"), _status("waiting"), _status("pending"),
     ("BLOCK_JOB_COMPLETED", {"device": "j", "len": 4 * M, "offset": 4 * M, "speed": 0, "type": "backup"}),
     _status("concluded"), _status("null")],
    {"status": "paused", "singlestep": False, "running": False},
]


def _two_jobs(vm: Any, crossed: bool) -> list:
    """Job ``a`` (started first) backs up ``s2``, ``b`` then ``s1``, onto ``t2`` and ``t1`` (``crossed``) or
    ``t1`` and ``t2``: the drain pauses each job at its first linked node (its target, not its source, then
    its filter) and resumes it at its last (its filter)."""
    _two_nodes(vm, ("s1", "s2", "t1", "t2"))
    vm.write("s1", 0, 2 * M, 2)
    vm.write("s2", 0, 2 * M, 3)
    targets = ("t2", "t1") if crossed else ("t1", "t2")
    vm.qmp("blockdev-backup", {"job-id": "a", "device": "s2", "target": targets[0], "sync": "full", "speed": 1})
    vm.qmp("blockdev-backup", {"job-id": "b", "device": "s1", "target": targets[1], "sync": "full", "speed": 1})
    at = len(vm.events)
    vm.qmp("stop")
    vm.hmp("cont")
    out = _names(vm, at)
    vm.qmp("job-cancel", {"id": "a"})
    vm.qmp("job-cancel", {"id": "b"})
    return out


def _two_jobs_events(first: str) -> list:
    return [("STOP", None), _status("paused", first), _status("paused", "ab".replace(first, "")),
            _status("running", "a"), _status("running", "b"), ("RESUME", None)]


def _error_stop(vm: Any, cancel: bool) -> list:
    """A backup an error stopped: ``cont`` (the VM running) resets its io-status and leaves it paused;
    a stop pauses it no further. Then cancelled (it retries once more, copying the rest) or resumed."""
    vm.qemu_img("create", "-f", "qcow2", "s.qcow2", "4M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "s", "file": {
        "driver": "blkdebug", "image": {"driver": "file", "filename": "s.qcow2"},
        "inject-error": [{"event": "read_aio", "errno": 5, "once": True}]}})
    _two_nodes(vm, ("t",))
    vm.write("s", 0, M, 1)
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "s", "target": "t", "sync": "full",
                               "on-source-error": "stop"})
    vm.run(until=vm.now + 0.5)
    status = [(job["io-status"], job["status"], job["paused"]) for job in vm.qmp("query-block-jobs")]
    at = len(vm.events)
    vm.qmp("cont")
    status += [(job["io-status"], job["status"], job["paused"]) for job in vm.qmp("query-block-jobs")]
    vm.qmp("stop")
    vm.qmp("cont")
    vm.qmp("job-cancel" if cancel else "job-resume", {"id": "j"})
    vm.run(until=vm.now + 0.5)
    return [status, _names(vm, at)]


def _error_stop_events(cancel: bool) -> list:
    end = ([_status("aborting"),
            ("BLOCK_JOB_CANCELLED", {"device": "j", "len": 4 * M, "offset": 4 * M, "speed": 0, "type": "backup"})]
           if cancel else
           [_status("waiting"), _status("pending"),
            ("BLOCK_JOB_COMPLETED", {"device": "j", "len": 4 * M, "offset": 4 * M, "speed": 0, "type": "backup"})])
    return [[("failed", "paused", True), ("ok", "paused", True)],
            [("STOP", None), ("RESUME", None), _status("running"), *end, _status("concluded"), _status("null")]]


# -- the flush: bdrv_flush_all at every stop ----------------------------------------------------------


def _flush(vm: Any) -> list:
    """blkdebug rules moved on by the flushes of ``stop``: ``flush_to_os`` at each (paused already or
    not), ``flush_to_disk`` only when the node was written since; the second rule's error shows which
    state the node reached."""
    vm.qemu_img("create", "-f", "qcow2", "d0.qcow2", "4M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "d0", "file": {
        "driver": "blkdebug", "image": {"driver": "file", "filename": "d0.qcow2"},
        "set-state": [{"event": "flush_to_os", "state": 1, "new_state": 2},
                      {"event": "flush_to_os", "state": 2, "new_state": 3},
                      {"event": "flush_to_disk", "state": 3, "new_state": 4}],
        "inject-error": [{"event": "write_aio", "state": 3, "errno": 28, "once": True},
                         {"event": "write_aio", "state": 4, "errno": 5, "once": True}]}})
    out = [_io(vm, "d0", "write -P 1 0 64k")]
    vm.qmp("stop")  # flush_to_os: state 2
    out.append(_io(vm, "d0", "write -P 1 64k 64k"))
    vm.qmp("stop")  # paused: no STOP, but flush_to_os (state 3) and, after that write, flush_to_disk (state 4)
    out.append(_io(vm, "d0", "write -P 1 128k 64k"))  # EIO, not ENOSPC
    vm.hmp("cont")
    vm.hmp("stop")
    out += [_io(vm, "d0", "write -P 1 192k 64k"), [name for name, _ in _names(vm)]]
    return out


FLUSH = ["wrote 65536/65536 bytes at offset 0\n64 KiB, 1 ops\n",
         "wrote 65536/65536 bytes at offset 65536\n64 KiB, 1 ops\n",
         "write failed: Input/output error\n",
         "wrote 65536/65536 bytes at offset 196608\n64 KiB, 1 ops\n",
         ["STOP", "RESUME", "STOP"]]


def test_flush_order() -> None:
    """BlockBackends' roots first (devices and exports, in the order they were made), then the nodes
    ``blockdev-add`` made that none holds; a node under two BlockBackends once, at the newest."""
    vm = Machine()
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "n0", "size": M})
    root = vm.add_drive("drive0", "1M")
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "n1", "size": M})
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "n2", "size": M})
    vm.qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}})
    vm.qmp("block-export-add", {"type": "nbd", "id": "e1", "node-name": "n1"})
    vm.qmp("block-export-add", {"type": "nbd", "id": "e2", "node-name": root})
    # the drive's root comes at e2, its newest BlockBackend (bdrv_first_blk), after e1's n1
    assert [node.node_name for node in flush_order(vm.graph)] == ["n1", root, "n0", "n2"]


# -- every story on the simulator, and on both backends ----------------------------------------------

def _commands(vm: Any) -> list:
    """The commands' replies, events and errors, QMP and HMP (no data member in STOP or RESUME)."""
    return [_sequence(vm), _errors(vm), _hmp(vm), all(set(ev) == {"timestamp", "event"} for ev in vm.events)]


STORIES = {
    "commands": (_commands, [SEQUENCE, ERRORS, HMP, True]),
    "throttled-backup": (_throttled, THROTTLED),
    "two-jobs": (lambda vm: _two_jobs(vm, False), _two_jobs_events("a")),
    "two-jobs-crossed": (lambda vm: _two_jobs(vm, True), _two_jobs_events("b")),
    "error-stop-cancel": (lambda vm: _error_stop(vm, True), _error_stop_events(True)),
    "error-stop-resume": (lambda vm: _error_stop(vm, False), _error_stop_events(False)),
    "flush": (_flush, FLUSH),
}
"""Name -> (story, what it returns on QEMU 7.2's system emulator: measured, and on bitlab)."""


@pytest.mark.parametrize("name", STORIES)
def test_simulator(name: str) -> None:
    story, want = STORIES[name]
    assert story(Machine()) == want


def _pause_order_free(events: list) -> list:
    """The two jobs' ``paused`` events in either order: a job busy in its rate-limited copy call when the drain
    comes pauses once backup_pause's cancel has woken it, so QEMU's order varies on a loaded machine (README
    "Known differences"); bitlab pauses them in the drain's order."""
    return [events[0], sorted(events[1:3], key=repr), *events[3:]]


@pytest.mark.qemu
@pytest.mark.parametrize("name", STORIES)
def test_on_both(name: str) -> None:
    story, want = STORIES[name]
    real, simulated = on_both(story, daemon="system")
    assert simulated == want
    if name.startswith("two-jobs"):
        real, want = _pause_order_free(real), _pause_order_free(want)
    assert real == want
