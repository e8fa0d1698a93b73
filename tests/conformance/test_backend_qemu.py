"""Machine(backend="qemu") itself, on qemu-storage-daemon and on the system emulator."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import socket
import threading
from pathlib import Path

import pytest

from bitlab import Machine
from bitlab.backends import nbd
from bitlab.backends import qemu as backend
from bitlab.backends.qemu import DAEMON_ENV, QSD, SYSTEM, QemuDaemonError, QemuMachine, QemuNotFound, qemu_missing
from bitlab.conformance import normalise, random_scenario
from bitlab.conformance.runner import compare, play
from bitlab.errors import QMPError
from bitlab.qemu_img import QemuImgError
from bitlab.qmp.hmp import QemuIoError
from bitlab.scenarios import run_seed

pytestmark = pytest.mark.qemu
M = 1 << 20


@pytest.fixture(autouse=True)
def _no_daemon_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DAEMON_ENV, raising=False)


@pytest.fixture(params=["qsd", "system"])
def daemon(request: pytest.FixtureRequest) -> str:
    if shutil.which(SYSTEM if request.param == "system" else QSD) is None:
        pytest.skip(f"{request.param} is not installed")
    return request.param


def add_qcow2(vm, name: str, size: str = "64M") -> None:
    vm.qemu_img("create", "-f", "qcow2", f"{name}.qcow2", size)
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": name,
                            "file": {"driver": "file", "filename": f"{name}.qcow2"}})


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


# -- choosing and starting the daemon --------------------------------------------------------
def test_auto_starts_nothing_until_first_use_then_qsd():
    with Machine(backend="qemu") as vm:
        assert isinstance(vm, QemuMachine) and vm.kind is None and not vm.started
        vm.qemu_img("create", "-f", "qcow2", "d0.qcow2", "1M")  # qemu-img needs no daemon
        vm.run()
        assert not vm.step() and vm.kind is None
        assert vm.qmp("query-jobs") == []
        assert vm.kind == "qsd" and vm.startup_ms is not None


@pytest.mark.parametrize("first", ["add_drive", "hmp", "execute"])
def test_auto_picks_the_system_emulator_for_devices_and_hmp(first):
    if shutil.which(SYSTEM) is None:
        pytest.skip("the system emulator is not installed")
    with Machine(backend="qemu") as vm:
        if first == "add_drive":
            assert vm.add_drive("drive0", "1M")
        elif first == "hmp":
            assert "No active jobs" in vm.hmp("info block-jobs")
        else:
            vm.execute({"execute": "human-monitor-command", "arguments": {"command-line": "info block"}})
        assert vm.kind == "system"


def test_devices_on_qsd_are_a_clear_error():
    with Machine(backend="qemu") as vm:
        vm.qmp("query-jobs")
        for call in (lambda: vm.add_drive("drive0"), lambda: vm.hmp("info block"),
                     lambda: vm.qmp("human-monitor-command", {"command-line": "info block"})):
            with pytest.raises(QemuDaemonError, match=r"system emulator.*daemon='system'"):
                call()
        # on the wire, qemu-storage-daemon's own answer
        reply = vm.execute({"execute": "human-monitor-command", "arguments": {"command-line": "info block"}})
        assert reply["error"]["class"] == "CommandNotFound"
    with QemuMachine(daemon="qsd") as vm, pytest.raises(QemuDaemonError):
        vm.add_drive("drive0")  # before anything else too


def test_environment_forces_a_daemon(monkeypatch):
    if shutil.which(SYSTEM) is None:
        pytest.skip("the system emulator is not installed")
    monkeypatch.setenv(DAEMON_ENV, "system")
    with Machine(backend="qemu") as vm:
        vm.qmp("query-jobs")
        assert vm.kind == "system"
    monkeypatch.setenv(DAEMON_ENV, "qsd")
    with Machine(backend="qemu") as vm, pytest.raises(QemuDaemonError, match=f"{DAEMON_ENV}=qsd"):
        vm.add_drive("drive0")
    with pytest.raises(ValueError, match="daemon must be one of"):
        QemuMachine(daemon="kvm")


def test_start_and_stop_leave_no_process_and_kill_only_their_own(daemon, monkeypatch):
    killed: list[int] = []
    real_kill = os.kill

    def kill(pid: int, sig: int) -> None:
        if sig != 0:  # signal 0 only asks whether a process lives (stale work directories' owners)
            killed.append(pid)
        real_kill(pid, sig)

    monkeypatch.setattr(os, "kill", kill)
    vm = QemuMachine(daemon=daemon)
    vm.qmp("query-jobs")
    first = vm._proc.pid
    vm.restart(clean=False)
    assert killed == [first] and gone(first)
    second = vm._proc.pid
    vm.restart()
    assert killed == [first] and gone(second)
    third, workdir = vm._proc.pid, vm.workdir
    vm.close()
    assert killed == [first] and gone(third) and not os.path.exists(workdir)
    with pytest.raises(RuntimeError, match="closed"):
        vm.qmp("query-jobs")


def test_context_manager_stops_qemu_even_after_an_error(daemon):
    with pytest.raises(QMPError, match="Failed to find node with node-name='nope'"), \
            QemuMachine(daemon=daemon) as vm:
        pid = None
        vm.qmp("query-jobs")
        pid = vm._proc.pid
        vm.qmp("blockdev-del", {"node-name": "nope"})
    assert pid is not None and gone(pid)
    assert not vm.started and not os.path.exists(vm.workdir)


def test_a_machine_the_garbage_collector_takes_quits_its_qemu(daemon):
    """In a running event loop (a Jupyter kernel) the QMP client lives on a worker thread of its own; a
    machine in a reference cycle is collected together with that thread's pool, whose weak references
    are cleared first (its worker ends). Stopping QEMU from ``__del__`` then waited forever; the
    machine's finalizer keeps the client until QEMU has quit."""

    async def in_a_loop() -> tuple[int, str]:
        vm = QemuMachine(daemon=daemon)
        vm.qmp("query-jobs")
        assert type(vm._qmp).__name__ == "_OwnThread"
        vm.cycle = vm  # only the cyclic collector frees it
        return vm._proc.pid, vm.workdir

    pid, workdir = asyncio.run(in_a_loop())
    collector = threading.Thread(target=gc.collect, daemon=True)
    collector.start()
    collector.join(60)
    assert not collector.is_alive(), "the garbage collector hangs stopping QEMU"
    assert gone(pid) and not os.path.exists(workdir)


def test_missing_qemu_is_one_clear_message(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    assert qemu_missing() == [QSD, "qemu-img"]
    assert qemu_missing("system") == [SYSTEM, "qemu-img"]
    with pytest.raises(QemuNotFound, match="apt-get install --no-install-recommends qemu-system-common qemu-utils"):
        Machine(backend="qemu")
    with pytest.raises(QemuNotFound, match="qemu-system-x86_64, qemu-img are not installed.*"
                                           "install --no-install-recommends qemu-system-x86 qemu-utils"):
        QemuMachine(daemon="system")


def test_auto_without_qsd_uses_the_system_emulator(monkeypatch):
    if shutil.which(SYSTEM) is None:
        pytest.skip("the system emulator is not installed")
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == QSD else real_which(name, *a, **k))
    with Machine(backend="qemu") as vm:
        vm.qmp("query-jobs")
        assert vm.kind == "system"


def test_auto_add_drive_without_the_system_emulator_names_its_package(monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == SYSTEM else real_which(name, *a, **k))
    with Machine(backend="qemu") as vm, pytest.raises(QemuNotFound, match="qemu-system-x86"):
        vm.add_drive("drive0")


# -- images, QMP, events, time --------------------------------------------------------------
def test_qemu_img_errors_are_qemu_img_errors():
    with Machine(backend="qemu") as vm:
        with pytest.raises(QemuImgError) as info:
            vm.qemu_img("info", "nope.qcow2")
        assert info.value.returncode == 1 and "Could not open 'nope.qcow2'" in info.value.stderr
        vm.qemu_img("create", "-f", "qcow2", "a.qcow2", "1M")
        assert "virtual size: 1 MiB" in vm.qemu_img("info", "a.qcow2")
        assert vm.kind is None  # qemu-img runs without a daemon


def test_events_are_collected_and_helpers_stay_backstage(daemon):
    with QemuMachine(daemon=daemon) as vm:
        add_qcow2(vm, "d0", "4M")
        add_qcow2(vm, "t0", "4M")
        vm.write("d0", 0, 65536, 0x41)
        vm.qmp("blockdev-backup", {"job-id": "j0", "device": "d0", "target": "t0", "sync": "full"})
        vm.run()
        statuses = [e["data"]["status"] for e in vm.events if e["event"] == "JOB_STATUS_CHANGE"]
        assert statuses[0] == "created" and statuses[-3:] == ["pending", "concluded", "null"]
        assert any(e["event"] == "BLOCK_JOB_COMPLETED" for e in vm.events)
        vm.qmp("blockdev-del", {"node-name": "t0"})
        sent = [m["message"]["execute"] for m in vm.transcript if m["kind"] == "cmd"]
        write = [] if daemon == "qsd" else ["human-monitor-command"]  # the system emulator's guest I/O is HMP
        assert sent == ["blockdev-add", "blockdev-add", *write, "blockdev-backup", "blockdev-del"]
        assert not any(e["event"] == "BLOCK_EXPORT_DELETED" for e in vm.events)
        helpers = {m["message"]["execute"] for m in vm.backstage}
        assert "query-jobs" in helpers and ("block-export-add" in helpers) == (daemon == "qsd")


def test_run_timeout_is_clear_and_step_ends(daemon):
    with QemuMachine(daemon=daemon) as vm:
        add_qcow2(vm, "d0", "4M")
        add_qcow2(vm, "t0", "4M")
        vm.qmp("blockdev-backup", {"job-id": "j0", "device": "d0", "target": "t0", "sync": "none"})
        with pytest.raises(TimeoutError, match=r"jobs did not settle within 0.2 s: .*'id': 'j0'"):
            vm.run(timeout=0.2)
        vm.qmp("job-cancel", {"id": "j0"})
        while vm.step(timeout=5):
            pass
        assert vm.events[-1]["data"] == {"status": "null", "id": "j0"}
        assert vm.qmp("query-jobs") == []


# -- guest I/O -------------------------------------------------------------------------------
def io_texts(vm) -> list[str]:
    add_qcow2(vm, "d0", "4M")
    return [vm.write("d0", 0, "64k", 0x41), vm.read("d0", 0, "64k", 0x41), vm.read("d0", 0, "64k", 0x42),
            vm.write_zeroes("d0", "1M", "128k"), vm.read("d0", "1M", 512, 0), vm.discard("d0", "2M", "64k"),
            vm.guest_io("d0", "flush"), vm.read("d0", "4M", 512), vm.write("d0", "3M", "2M", 0x43)]


def test_guest_io_texts_are_the_simulators(daemon):
    with QemuMachine(daemon=daemon) as vm:
        real = io_texts(vm)
    sim = io_texts(Machine())
    assert normalise(real) == normalise(sim)
    assert real[2].startswith("Pattern verification failed at offset 0, 65536 bytes\nread 65536/65536 bytes")
    assert real[7] == "read failed: Input/output error\n"
    assert real[0].split("\n")[1].startswith("64 KiB, 1 ops; 00.")


def test_qemu_io_rejects_what_qemu_io_rejects():
    with QemuMachine(daemon="qsd") as vm:
        add_qcow2(vm, "d0", "1M")
        with pytest.raises(QemuIoError, match='command "frobnicate" not found'):
            vm.qemu_io("d0", "frobnicate")
        with pytest.raises(QMPError, match="Cannot find device='' nor node-name='nope'"):
            vm.write("nope", 0, 512)


def test_writing_to_a_format_nodes_file_meets_qemus_permission_conflict(daemon):
    with QemuMachine(daemon=daemon) as vm:
        vm.qemu_img("create", "-f", "qcow2", "d0.qcow2", "4M")
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "d0",
                                "file": {"driver": "file", "node-name": "f-d0", "filename": "d0.qcow2"}})
        with pytest.raises(QMPError) as info:
            vm.qemu_io("f-d0", "write -P 0x41 0 512")
        assert info.value.desc == (
            "Permission conflict on node 'f-d0': permissions 'write' are both required by an unnamed block device "
            "(uses node 'f-d0' as 'root' child) and unshared by node 'd0' (uses node 'f-d0' as 'file' child).")
        if daemon == "qsd":  # the request's own export is gone again (the backend's exports are hidden)
            assert [e["id"] for e in vm._helper_value("query-block-exports")] == ["bitlab-guest-d0"]
            assert vm.qmp("query-block-exports") == []


def test_writes_do_not_flush_and_flush_does(daemon):
    rules = {"set-state": [{"event": "flush_to_disk", "state": 1, "new_state": 2}],
             "inject-error": [{"event": "read_aio", "state": 2, "iotype": "read", "errno": 5}]}

    def play_it(vm) -> list[str]:
        vm.qemu_img("create", "-f", "qcow2", "d0.qcow2", "4M")
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "d0", "file": {
            "driver": "blkdebug", **rules, "image": {"driver": "file", "filename": "d0.qcow2"}}})
        return [vm.write("d0", 0, 65536, 0x41), vm.read("d0", 0, 65536, 0x41), vm.guest_io("d0", "flush"),
                vm.read("d0", 0, 65536, 0x41)]

    with QemuMachine(daemon=daemon) as vm:
        real = play_it(vm)
    assert normalise(real) == normalise(play_it(Machine()))
    assert real[1].startswith("read 65536/65536") and real[3] == "read failed: Input/output error\n"


def test_the_export_sits_above_a_backups_filter():
    with QemuMachine(daemon="qsd") as vm:
        add_qcow2(vm, "d0", "8M")
        add_qcow2(vm, "t0", "8M")
        vm.write("d0", 4 * M, 65536, 0x41)
        vm.qmp("blockdev-backup", {"job-id": "j0", "device": "d0", "target": "t0", "sync": "none"})
        filt = vm.guest_name("d0")
        nodes = {n["node-name"]: n for n in vm.qmp("query-named-block-nodes", {"flat": True})}
        assert nodes[filt]["drv"] == "copy-before-write"
        assert vm.write("d0", 4 * M, 65536, 0x44).startswith("wrote 65536/65536")
        # the guest's write went through the filter: the old data is in the target
        assert vm.read("t0", 4 * M, 65536, 0x41).startswith("read 65536/65536")
        # blockdev-del fails while the job holds the node (QEMU's text, as bitlab's), and the
        # guest keeps its export above the filter
        reply = vm.execute({"execute": "blockdev-del", "arguments": {"node-name": "d0"}})
        sim = Machine()
        add_qcow2(sim, "d0", "8M")
        add_qcow2(sim, "t0", "8M")
        sim.qmp("blockdev-backup", {"job-id": "j0", "device": "d0", "target": "t0", "sync": "none"})
        assert reply == sim.execute({"execute": "blockdev-del", "arguments": {"node-name": "d0"}})
        assert vm.guest_name("d0") == filt and vm.write("d0", 0, 512, 0x45).startswith("wrote")
        vm.qmp("job-cancel", {"id": "j0"})
        vm.run()
        assert vm.guest_name("d0") == "d0"
        assert vm.execute({"execute": "blockdev-del", "arguments": {"node-name": "d0"}}) == {"return": {}}
        assert {e["id"] for e in vm._helper_value("query-block-exports")} == {"bitlab-guest-t0"}
        assert vm.qmp("query-block-exports") == []


def test_blockdev_del_and_child_references_as_in_the_simulator():
    scenario = {"name": "exports-out-of-the-way", "steps": [
        {"qemu-img": ["create", "-f", "qcow2", "d0.qcow2", "4M"]},
        {"qmp": {"execute": "blockdev-add", "arguments": {"driver": "file", "node-name": "f0",
                                                           "filename": "d0.qcow2"}}},
        {"qmp": {"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "bad", "file": "f0",
                                                           "cache": {"direct": 5}}}},
        {"qmp": {"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "q0", "file": "f0"}}},
        {"write": {"node": "q0", "offset": 0, "length": 65536, "pattern": 0x41}},
        {"qmp": {"execute": "blockdev-del", "arguments": {"node-name": "f0"}}},
        {"qmp": {"execute": "blockdev-del", "arguments": {"node-name": "q0"}}},
        {"qmp": {"execute": "blockdev-del", "arguments": {"node-name": "f0"}}},
        {"qmp": {"execute": "query-named-block-nodes", "arguments": {"flat": True}}},
    ]}
    real = play(scenario, "qemu")
    assert compare(scenario, real, play(scenario, "sim")) == []
    assert real.replies[2]["error"]["desc"] == "Invalid parameter type for 'cache.direct', expected: boolean"
    assert real.replies[3] == {"return": {}}  # f0's export stood aside (qcow2 does not share write on its file)
    assert real.replies[-1] == {"return": []}


# -- scenarios against the simulator ---------------------------------------------------------
def bitmaps_after_kill(vm) -> list:
    add_qcow2(vm, "d0", "8M")
    vm.qmp("block-dirty-bitmap-add", {"node": "d0", "name": "p", "persistent": True})
    vm.qmp("block-dirty-bitmap-add", {"node": "d0", "name": "v"})
    vm.write("d0", 0, 65536, 0x41)
    vm = vm.restart()
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "d0", "file": {"driver": "file", "filename": "d0.qcow2"}})
    vm.write("d0", M, 65536, 0x42)
    before = vm.qmp("x-debug-block-dirty-bitmap-sha256", {"node": "d0", "name": "p"})
    vm = vm.restart(clean=False)
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "d0", "file": {"driver": "file", "filename": "d0.qcow2"}})
    node = next(n for n in vm.qmp("query-named-block-nodes", {"flat": True}) if n["node-name"] == "d0")
    err = vm.execute({"execute": "block-dirty-bitmap-clear", "arguments": {"node": "d0", "name": "p"}})
    return [before, node["dirty-bitmaps"], err]


def test_restart_after_a_kill_leaves_persistent_bitmaps_inconsistent(daemon):
    with QemuMachine(daemon=daemon) as vm:
        real = bitmaps_after_kill(vm)
    assert real == bitmaps_after_kill(Machine())
    assert real[1][0]["inconsistent"] is True
    assert real[2]["error"]["desc"] == "Bitmap 'p' is inconsistent and cannot be used"


def test_a_small_scenario_is_the_same_as_in_the_simulator(daemon, monkeypatch):
    monkeypatch.setenv(DAEMON_ENV, daemon)
    scenario = {"name": "incremental", "steps": [
        {"qemu-img": ["create", "-f", "qcow2", "d0.qcow2", "8M"]},
        {"qmp": {"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "d0",
                                                           "file": {"driver": "file", "filename": "d0.qcow2"}}}},
        {"qemu-img": ["create", "-f", "qcow2", "t0.qcow2", "8M"]},
        {"qmp": {"execute": "blockdev-add", "arguments": {"driver": "qcow2", "node-name": "t0",
                                                           "file": {"driver": "file", "filename": "t0.qcow2"}}}},
        {"qmp": {"execute": "block-dirty-bitmap-add", "arguments": {"node": "d0", "name": "b0"}}},
        {"write": {"node": "d0", "offset": 0, "length": 65536, "pattern": 0x41}},
        {"write": {"node": "d0", "offset": 126976, "length": 8192, "pattern": 0x42}},
        {"zero": {"node": "d0", "offset": 4 * M, "length": 131072}},
        {"qmp": {"execute": "transaction", "arguments": {"actions": [
            {"type": "blockdev-backup", "data": {"job-id": "j0", "device": "d0", "target": "t0",
                                                 "sync": "incremental", "bitmap": "b0"}},
            {"type": "block-dirty-bitmap-add", "data": {"node": "d0", "name": "b1"}}]}}},
        {"settle-jobs": True},
        {"qmp": {"execute": "query-named-block-nodes", "arguments": {"flat": True}}},
        {"qmp": {"execute": "x-debug-block-dirty-bitmap-sha256", "arguments": {"node": "d0", "name": "b0"}}},
    ]}
    real = play(scenario, "qemu")
    assert real.error is None
    assert compare(scenario, real, play(scenario, "sim")) == []
    for index in range(3):
        random = random_scenario(20260101, index)
        assert compare(random, play(random, "qemu"), play(random, "sim")) == []


def test_the_seed_scenario_picks_the_system_emulator():
    if shutil.which(SYSTEM) is None:
        pytest.skip("the system emulator is not installed")
    real = run_seed("grouped", "drive1", backend="qemu")
    assert real.machine.kind == "system"
    sim = run_seed("grouped", "drive1", backend="sim")
    assert (real.keep, real.delete) == (sim.keep, sim.delete)


# -- qemu-io's texts -------------------------------------------------------------------------
def test_qemu_io_number_formats():
    # as qemu-io 7.2 prints them (checked against /usr/bin/qemu-io)
    assert [nbd.cvtstr(v) for v in (512, 1536, 65536, 1000000, 3 << 20, 2.5941 * (1 << 30))] == \
        ["512 bytes", "1.500 KiB", "64 KiB", "976.562 KiB", "3 MiB", "2.594 GiB"]
    assert nbd.timestr(0.0123) == "00.01 sec" and nbd.timestr(3725.5) == "1:02:05.50"
    assert nbd.report("wrote", 0, 65536, 0.5) == \
        "wrote 65536/65536 bytes at offset 0\n64 KiB, 1 ops; 00.50 sec (128 KiB/sec and 2.0000 ops/sec)\n"


def _dirty_bitmap_on(vm, writes: list[tuple[int, int]], granularity: int):
    add_qcow2(vm, "d0")
    vm.qmp("block-dirty-bitmap-add", {"node": "d0", "name": "b", "granularity": granularity})
    for offset, length in writes:
        vm.write("d0", offset, length)
    return vm.dirty_bitmap("d0", "b")


@pytest.mark.parametrize("granularity", [512, 65536, 1 << 21])
def test_dirty_bitmap_bits_read_over_nbd_match_the_simulator(daemon, granularity):
    writes = [(0, 4096), (61440, 8192), (M, M), (M + 512, 512), (32 * M - 512, 1024), (64 * M - 4096, 4096)]
    with Machine(backend="qemu", daemon=daemon) as vm:
        real = _dirty_bitmap_on(vm, writes, granularity)
        assert not [e for e in vm.transcript if "export" in str(e["message"].get("execute", ""))]
        with pytest.raises(QMPError) as err:
            vm.dirty_bitmap("d0", "nope")
        assert err.value.desc == "Dirty bitmap 'nope' not found"
        assert [e["node-name"] for e in vm._helper_value("query-block-exports")] == (["d0"] if daemon == "qsd" else [])
        assert vm.qmp("query-block-exports") == []
    sim = _dirty_bitmap_on(Machine(), writes, granularity)
    assert real.bits == sim.bits and real.bits.count() > 0
    assert (real.granularity, real.size, real.name, real.disabled) == (sim.granularity, sim.size, "b", False)


def test_dirty_bitmap_of_a_disabled_bitmap(daemon):
    with Machine(backend="qemu", daemon=daemon) as vm:
        add_qcow2(vm, "d0")
        vm.qmp("block-dirty-bitmap-add", {"node": "d0", "name": "b", "disabled": True})
        vm.write("d0", 0, 4096)
        bm = vm.dirty_bitmap("d0", "b")
        assert bm.disabled and bm.bits.count() == 0


def test_numeric_ids_come_back_as_sent(daemon):
    with Machine(backend="qemu", daemon=daemon) as vm:
        for msg_id in (1, [1, {"a": None}], "x"):
            assert vm.execute({"execute": "query-block-jobs", "id": msg_id}) == {"return": [], "id": msg_id}


def test_works_inside_a_running_asyncio_loop(daemon):
    """A Jupyter kernel runs an asyncio loop; qemu.qmp's synchronous client cannot nest in it."""
    import asyncio

    async def inside() -> dict:
        with Machine(backend="qemu", daemon=daemon) as vm:
            add_qcow2(vm, "d0")
            vm.qmp("block-dirty-bitmap-add", {"node": "d0", "name": "b"})
            vm.write("d0", 0, 4096)
            return vm.qmp("x-debug-block-dirty-bitmap-sha256", {"node": "d0", "name": "b"})

    sim = Machine()
    add_qcow2(sim, "d0")
    sim.qmp("block-dirty-bitmap-add", {"node": "d0", "name": "b"})
    sim.write("d0", 0, 4096)
    assert asyncio.run(inside()) == sim.qmp("x-debug-block-dirty-bitmap-sha256", {"node": "d0", "name": "b"})


def test_dirty_bitmap_by_device_name_on_both_backends():
    """``vm.dirty_bitmap("drive0", ...)`` names a -drive device, as the bitmap commands accept."""
    got = []
    for vm in (Machine(), Machine(backend="qemu", daemon="system")):
        try:
            vm.add_drive("drive0", "4M")
            vm.qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "bitmap0"})
            vm.write("drive0", "1M", "64k", 0x41)
            bm = vm.dirty_bitmap("drive0", "bitmap0")
            got.append((bm.bits.count(), bm.granularity, bm.sha256()))
        finally:
            if hasattr(vm, "close"):
                vm.close()
    assert got[0] == got[1] and got[0][0] == 1


def test_a_monitor_that_never_greets_is_dropped_and_tried_again(monkeypatch, tmp_path):
    """A starting QEMU that accepted the connection but sends no greeting: the attempt ends after
    CONNECT_ATTEMPT_S with the connection closed (QEMU's monitor serves one client at a time), and
    the next attempt, which gets a greeting, connects."""
    monkeypatch.setattr(backend, "CONNECT_ATTEMPT_S", 0.05)
    sock_path = str(tmp_path / "m.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(sock_path)
    server.listen(2)
    seen: list[bytes] = []

    def serve() -> None:
        silent, _ = server.accept()
        seen.append(silent.recv(100))  # b"" once the client has given up and closed
        silent.close()
        talk, _ = server.accept()
        talk.sendall(b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, '
                     b'"capabilities": []}}\r\n')
        seen.append(talk.recv(1000))
        talk.sendall(b'{"return": {}}\r\n')
        seen.append(talk.recv(100))
        talk.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with QemuMachine(daemon="qsd", timeout=3600) as vm:  # the whole start's limit: not one attempt's
        with pytest.raises(TimeoutError):
            vm._connected(sock_path)
        qmp = vm._connected(sock_path)
        qmp.close()
    thread.join(5)
    server.close()
    assert seen[0] == b""
    assert b'"qmp_capabilities"' in seen[1]
