"""Scenario steps, run the same way on bitlab and on real QEMU.

A scenario is ``{"name", "steps": [...]}`` (optionally ``"drives": [...]`` for ``-drive``
devices); a step is one of ``{"qmp": message}``, ``{"hmp": line}``, ``{"qemu-img": argv}``,
``{"write"|"zero"|"discard": {"node", "offset", "length"[, "pattern"]}}`` (a zero write may unmap with
``"unmap": true``: ``write -z -u``; a write with ``"fua": true`` is ``write -f``, with ``"compress": true``
``write -c``; ``"flush": false``: no flush
after it),
``{"read": {"node", "offset", "length", "pattern"}}`` (qemu-io ``read -P``), ``{"flush": {"node"}}``,
``{"wait-job": {"id", "status"}}``, ``{"settle-jobs": true}``,
``{"restart": true}`` / ``{"kill": true}`` (the format of tests/golden/).
"""

from __future__ import annotations

from typing import Any

from ..errors import QMPError
from ..qemu_img import QemuImgError


def qmp_step(execute: str, arguments: dict | None = None) -> dict:
    """A scenario step sending one QMP command."""
    msg: dict = {"execute": execute}
    if arguments is not None:
        msg["arguments"] = arguments
    return {"qmp": msg}


def run_step(vm: Any, step: dict) -> Any:
    """Run one step on ``vm`` (a bitlab Machine or a QemuMachine); return its result."""
    if "qemu-img" in step:
        try:
            out = vm.qemu_img(*step["qemu-img"])
            return {"stdout": str(out), "stderr": getattr(out, "stderr", ""), "returncode": 0}
        except QemuImgError as err:
            return {"stdout": err.stdout, "stderr": err.stderr, "returncode": err.returncode}
    if "qmp" in step:
        reply = vm.execute(step["qmp"])
        if "settle" in step:
            vm.run(until=vm.now + step["settle"])
        return reply
    if "hmp" in step:
        return vm.execute({"execute": "human-monitor-command", "arguments": {"command-line": step["hmp"]}})
    if "read" in step:
        io = step["read"]
        out = vm.guest_io(io["node"], f"read -P {io.get('pattern', 0):#x} {io['offset']} {io['length']}")
        return {"stdout": out}
    if "flush" in step:
        vm.guest_io(step["flush"]["node"], "flush")
        return {"ok": True}
    if "wait-job" in step:
        return wait_job(vm, step["wait-job"])
    if "settle-jobs" in step:
        vm.run()
        return {"ok": True}
    if "sleep" in step:
        vm.run(until=vm.now + step["sleep"])
        if step.get("first-requests") and vm.backend == "qemu":
            first_requests(vm, step["first-requests"])
        return {"ok": True}
    for verb in ("write", "discard", "zero"):
        if verb in step:
            io = step[verb]
            flags = ("-f " if io.get("fua") else "") + ("-c " if io.get("compress") else "")
            command = {"write": f"write {flags}-P {io.get('pattern', 0x41):#x}",
                       "zero": "write -z -u" if io.get("unmap") else "write -z", "discard": "discard"}[verb]
            try:
                out = vm.guest_io(io["node"], f"{command} {io['offset']} {io['length']}")
            except QMPError as err:  # the request's BlockBackend cannot take the write permission
                return {"ok": False, "error": err.desc}
            if io.get("flush", True):
                vm.guest_io(io["node"], "flush")  # qemu-io over NBD flushes when it exits
            if "failed" in out:
                return {"ok": False, "stdout": out, "stderr": "", "returncode": 1}
            return {"ok": True}
    raise ValueError(f"unknown step {step}")


FIRST_REQUEST_LIMIT = 5.0  # seconds of real time past the sleep, at most


def first_requests(vm: Any, ids: list[str]) -> None:
    """On real QEMU, after a step's sleep: until each job of ``ids`` has finished its first block-copy request
    (its progress has moved, as block_copy_task_entry counts a request's bytes once written) or is no longer
    running (ended, paused, or gone). The sleep alone assumes the request takes less than that on a loaded
    machine; the simulator's request is done by then in any case. Gives up after FIRST_REQUEST_LIMIT seconds
    (a job that retries a failing request, on-error ignore, never moves)."""
    limit = vm.now + FIRST_REQUEST_LIMIT
    while vm.now < limit:
        jobs = {job["id"]: job for job in vm.qmp("query-jobs")}
        if all(jid not in jobs or jobs[jid]["status"] != "running" or jobs[jid]["current-progress"] > 0
               for jid in ids):
            return
        vm.run(until=vm.now + 0.002)


def wait_job(vm: Any, spec: dict) -> dict:
    """Run until the job reports the status (counting from its latest 'created')."""
    def seen() -> bool:
        start = 0
        for i, ev in enumerate(vm.events):
            data = ev.get("data", {})
            if ev["event"] == "JOB_STATUS_CHANGE" and data.get("id") == spec["id"] and data["status"] == "created":
                start = i
        return any(ev["event"] == "JOB_STATUS_CHANGE" and ev.get("data") == {"status": spec["status"],
                                                                             "id": spec["id"]}
                   for ev in vm.events[start:])
    while not seen():
        if not vm.step():
            return {"timeout": True}
    return {"ok": True}


def random_write(rng: Any, node: str, size: int, lengths: list[int]) -> dict:
    """A guest write of whole 4 KiB blocks at a random place, of one of ``lengths``, with a random pattern."""
    offset = rng.randrange(0, size // 4096) * 4096
    length = min(rng.choice(lengths), size - offset)
    return {"write": {"node": node, "offset": offset, "length": length, "pattern": rng.randrange(1, 256)}}


def random_manage(rng: Any, node: str, name: str) -> dict:
    """A remove, clear, enable or disable of bitmap ``name`` on ``node``."""
    verb = rng.choice(["remove", "clear", "enable", "disable"])
    return qmp_step(f"block-dirty-bitmap-{verb}", {"node": node, "name": name})
