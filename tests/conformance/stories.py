"""Helpers of the job stories (test_mirror, test_commit, test_stream): steps as the conformance runner plays them,
and the simulator's side of a story played alone."""

from __future__ import annotations

from bitlab import Machine
from bitlab.errors import QMPError


def q(execute: str, arguments: dict | None = None) -> dict:
    """A QMP step."""
    return {"qmp": {"execute": execute, **({"arguments": arguments} if arguments is not None else {})}}


def write(node: str, offset: int, length: int, pattern: int = 0x41) -> dict:
    """A guest write step."""
    return {"write": {"node": node, "offset": offset, "length": length, "pattern": pattern}}


def play(steps: list[dict]) -> Machine:
    """The steps on a fresh simulator, failed commands and all."""
    from bitlab.conformance.steps import run_step

    vm = Machine()
    for step in steps:
        try:
            run_step(vm, step)
        except QMPError:
            pass
    return vm


def job_events(vm: Machine, job: str, *, with_type: bool = False) -> list:
    """The job's statuses, and its BLOCK_JOB_* events as (event, [type,] len, offset, error)."""
    out: list = []
    for ev in vm.events:
        data = ev["data"]
        if ev["event"] == "JOB_STATUS_CHANGE" and data["id"] == job:
            out.append(data["status"])
        elif ev["event"].startswith("BLOCK_JOB") and data.get("device", data.get("id")) == job:
            kind = (data.get("type"),) if with_type else ()
            out.append((ev["event"], *kind, data.get("len"), data.get("offset"), data.get("error")))
    return out


def nodes(vm: Machine) -> dict:
    """query-named-block-nodes (flat) by node name."""
    return {n["node-name"]: n for n in vm.qmp("query-named-block-nodes", {"flat": True})}
