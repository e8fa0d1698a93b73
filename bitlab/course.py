"""Small helpers the notebooks share: print the wire, read bitmaps, pick events.

They work on either backend (simulator or real QEMU) and only read what QMP reports.
"""

from __future__ import annotations

import json
from typing import Any

from .block.xdbg import link_lines


def wire(vm: Any, n: int = 2, *, events: bool = False) -> None:
    """Print the last ``n`` QMP messages of ``vm.transcript`` as wire JSON (``->`` to QEMU, ``<-`` back);
    events count and print only with ``events=True``."""
    entries = [e for e in vm.transcript if events or e["kind"] != "event"]
    for entry in entries[-n:] if n else []:
        arrow = "->" if entry["kind"] == "cmd" else "<-"
        print(arrow, json.dumps(entry["message"]))


def bitmaps(vm: Any, name: str) -> list[dict]:
    """The ``dirty-bitmaps`` list of a device (from ``query-block``) or a node (``query-named-block-nodes``)."""
    for dev in vm.qmp("query-block"):
        if dev.get("device") == name and "inserted" in dev:
            return dev["inserted"].get("dirty-bitmaps", [])
    for info in vm.qmp("query-named-block-nodes", {"flat": True}):
        if info["node-name"] == name:
            return info.get("dirty-bitmaps", [])
    raise KeyError(f"no device or node named {name!r}")


def count(vm: Any, name: str, bitmap: str) -> int:
    """The ``count`` (dirty bytes) of the named bitmap on a device or node."""
    for bm in bitmaps(vm, name):
        if bm.get("name") == bitmap:
            return bm["count"]
    raise KeyError(f"no bitmap {bitmap!r} on {name!r}")


def show_bitmaps(vm: Any, name: str) -> None:
    """Print each bitmap of a device or node on one line: name, count, and the flags QMP reports."""
    for bm in bitmaps(vm, name):
        flags = [flag for flag in ("recording", "persistent", "busy", "inconsistent") if bm.get(flag)]
        print(f"{bm.get('name', '(anonymous)'):8} count {bm['count']:>9}  {' '.join(flags)}")


def show_nodes(vm: Any) -> None:
    """Print each node of ``query-named-block-nodes`` on one line: driver, image file, read-only or read-write,
    the node's name, then its bitmaps with their counts. (The name comes after the padded columns: QEMU's
    automatic names, ``#block…``, vary in length from run to run.)"""
    for info in vm.qmp("query-named-block-nodes", {"flat": True}):
        marks = [f"{bm.get('name', '(anonymous)')} count {bm['count']}" for bm in info.get("dirty-bitmaps") or []]
        access = "read-only" if info["ro"] else "read-write"
        line = f"{info['drv']:10} {info['file']:12} {access:10} {info['node-name']}"
        print(line + (f"  bitmaps: {', '.join(marks)}" if marks else ""))


def stored_bitmaps(vm: Any, filename: str) -> list[tuple[str, list[str]]]:
    """The bitmaps a qcow2 image holds on disk, with their flags (``qemu-img info -U``: the image may be open)."""
    info = json.loads(vm.qemu_img("info", "-U", "--output=json", filename))
    return [(bm["name"], bm["flags"]) for bm in info.get("format-specific", {}).get("data", {}).get("bitmaps", [])]


def events(vm: Any, since: int = 0, prefix: str = "") -> list[dict]:
    """The events emitted after the first ``since``, whose names start with ``prefix``."""
    return [e for e in vm.events[since:] if e["event"].startswith(prefix)]


def _job(event: dict) -> str:
    data = event.get("data", {})
    return str(data.get("device", data.get("id", "")))


def show_events(vm: Any, since: int = 0, prefix: str = "BLOCK_JOB", *, by_job: bool = False) -> None:
    """Print the matching events as wire JSON, one a line; ``by_job=True`` groups them per job (in order
    within each job), since the interleaving of two jobs' events varies from run to run in QEMU itself."""
    selected = events(vm, since, prefix)
    for event in sorted(selected, key=_job) if by_job else selected:
        print(json.dumps(event))


def statuses(vm: Any, job: str, since: int = 0) -> list[str]:
    """The job's ``JOB_STATUS_CHANGE`` statuses, in order."""
    return [e["data"]["status"] for e in events(vm, since, "JOB_STATUS_CHANGE") if e["data"]["id"] == job]


def outcomes(vm: Any, since: int = 0) -> dict[str, str]:
    """How each backup job that ended after ``since`` ended: ``completed``, ``failed: ERROR`` or ``cancelled``."""
    ends: dict[str, str] = {}
    for event in events(vm, since, "BLOCK_JOB_"):
        data = event.get("data", {})
        if event["event"] == "BLOCK_JOB_COMPLETED":
            ends[data["device"]] = f"failed: {data['error']}" if "error" in data else "completed"
        elif event["event"] == "BLOCK_JOB_CANCELLED":
            ends[data["device"]] = "cancelled"
    return dict(sorted(ends.items()))


def show_graph(vm: Any) -> None:
    """Print every link of the block graph (``x-debug-query-block-graph``), in QEMU's walk order."""
    for line in link_lines(vm.qmp("x-debug-query-block-graph")):
        print(line)
