"""The VM's run state: ``stop``, ``cont``, ``query-status`` and the STOP and RESUME events
(monitor/qmp-cmds.c, softmmu/cpus.c, softmmu/runstate.c and block/io.c at v7.2.0).

bitlab's monitor is the system emulator's; its VM has no vCPUs (``-M none``), so a paused VM
changes nothing for the guest's I/O (qemu-io writes go on) nor for jobs, which keep running.
What ``stop`` does to the block layer is do_vm_stop's, run even when the VM is paused already
(then without the STOP event): every node drained (each block job pauses and resumes) and
every top-level node flushed (bdrv_flush_all).
"""

from __future__ import annotations

from typing import Any

from ..block.ioerror import BlockIOError
from ..block.node import BlockNode
from .commands import TABLE
from .qapi import BOOL, Enum, m, struct

RunState = Enum("RunState", (
    "debug", "inmigrate", "internal-error", "io-error", "paused", "postmigrate", "prelaunch", "finish-migrate",
    "restore-vm", "running", "save-vm", "shutdown", "suspended", "watchdog", "guest-panicked", "colo",
))
StatusInfo = struct("StatusInfo", m("running", BOOL), m("singlestep", BOOL), m("status", RunState))


def flush_order(graph: Any) -> list[BlockNode]:
    """The nodes bdrv_flush_all flushes, in its order (bdrv_first / bdrv_next): the root of every
    BlockBackend (devices, exports) in the order they were made, a root with several taken at its
    newest one (bdrv_first_blk: the head of its parents list); then the nodes ``blockdev-add`` made
    that no BlockBackend holds, in the order they were added."""
    backends = sorted(
        [(graph.born.get(("device", name), 0), ("device", name), root) for name, root in graph.devices.items()]
        + [(graph.born.get(("blk", id(blk)), 0), ("blk", id(blk)), blk.node) for blk in graph.blks],
        key=lambda item: item[0])
    newest: dict[int, tuple[int, tuple]] = {}
    for _, key, root in backends:
        linked = graph.link_order.get(key, 0)
        if id(root) not in newest or linked > newest[id(root)][0]:
            newest[id(root)] = (linked, key)
    order = [root for _, key, root in backends if newest[id(root)][1] == key]
    order += [node for name, node in graph.nodes.items() if name in graph.monitor_owned and id(node) not in newest]
    return order


def flush_all(graph: Any) -> None:
    """bdrv_flush_all: each node of :func:`flush_order` flushed; a failure does not stop the others,
    and ``stop`` ignores what it returns."""
    for node in flush_order(graph):
        try:
            node.flush()
        except BlockIOError:
            pass


def vm_stop(vm: Any) -> None:
    """vm_stop(RUN_STATE_PAUSED), do_vm_stop: a running VM pauses and sends STOP; then, paused
    before or not, bdrv_drain_all and bdrv_flush_all."""
    if vm.runstate == "running":
        vm.runstate = "paused"
        vm.emit("STOP")
    vm.jobs.drain_all(list(vm.graph.nodes.values()))
    flush_all(vm.graph)


def vm_cont(vm: Any) -> None:
    """qmp_cont: every block job's I/O status back to ``ok`` (a job an error stopped stays paused),
    then vm_start: RESUME if the VM was not running; nothing else while it runs."""
    for job in vm.jobs.jobs:
        if job.is_block_job:
            job.io_status = "ok"
    if vm.runstate != "running":
        vm.runstate = "running"
        vm.emit("RESUME")


def status_line(vm: Any) -> str:
    """HMP ``info status``."""
    return f"VM status: {vm.runstate}\r\n"


@TABLE.command("stop")
def qmp_stop(vm: Any, args: dict) -> None:
    vm_stop(vm)


@TABLE.command("cont")
def qmp_cont(vm: Any, args: dict) -> None:
    vm_cont(vm)


@TABLE.command("query-status", returns=StatusInfo)
def qmp_query_status(vm: Any, args: dict) -> dict:
    return {"running": vm.runstate == "running", "singlestep": False, "status": vm.runstate}
