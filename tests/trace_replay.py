"""Replay a recorded real-QEMU trace (tests/data/qemu-traces/) on bitlab, step by step."""

from __future__ import annotations

import json
from pathlib import Path

from bitlab import Machine

TRACES = Path(__file__).parent / "data" / "qemu-traces"
SKIP = {"nbd-server-start", "block-export-add", "quit"}  # the recorder's guest-write plumbing
# QEMU's own run-to-run variation (real-qemu.md): a job may finish copying before its
# transaction is aborted, and then reports 'waiting' before 'aborting'.
OPTIONAL = {("status:waiting", "status:aborting")}


def load(mode: str) -> dict:
    return json.loads((TRACES / f"trace-{mode}.json").read_text())


def job_sequences(events: list[dict]) -> dict[str, list]:
    """Per job: its status changes and end events, as the traces' summaries list them."""
    out: dict[str, list] = {}
    for ev in events:
        name, data = ev["event"], ev.get("data", {})
        if name == "JOB_STATUS_CHANGE":
            out.setdefault(data["id"], []).append(f"status:{data['status']}")
        elif name.startswith("BLOCK_JOB_") and name != "BLOCK_JOB_PENDING":
            entry = {"event": name, **{k: v for k, v in data.items() if k != "device"}}
            out.setdefault(data["device"], []).append(entry)
    return out


def without_optional(seq: list) -> list:
    out = []
    for item in seq:
        if out and isinstance(item, str) and isinstance(out[-1], str) and (out[-1], item) in OPTIONAL:
            out.pop()
        out.append(item)
    return out


def bitmaps(vm: Machine) -> dict:
    out = {}
    for node in vm.qmp("query-named-block-nodes", {"flat": True}):
        entries = []
        for bm in node.get("dirty-bitmaps", []):
            if "name" not in bm:
                continue
            entry = {k: bm[k] for k in ("name", "count", "granularity", "recording", "busy", "persistent")}
            entry["sha256"] = vm.qmp("x-debug-block-dirty-bitmap-sha256",
                                     {"node": node["node-name"], "name": bm["name"]})["sha256"]
            entries.append(entry)
        if entries:
            out[node["node-name"]] = entries
    return out


def replay(mode: str) -> tuple[Machine, dict[str, dict]]:
    """Run the trace's commands on a Machine; return per step: bitmaps and job sequences."""
    trace = load(mode)
    prefix = f"ORACLE/work/qsd-nbd-{mode}/"
    vm = Machine()
    size = str(trace["config"]["image_size"])
    steps: dict[str, dict] = {}
    step, first_event = None, 0
    for rec in trace["trace"]:
        kind = rec["kind"]
        if kind == "step":
            step, first_event = rec["name"], len(vm.events)
        elif kind == "cmd" and rec["execute"] not in SKIP:
            args = json.loads(json.dumps(rec.get("arguments")).replace(prefix, ""))
            if rec["execute"] == "blockdev-add":
                file = args["file"]
                filename = file.get("filename") or file["image"]["filename"]
                if filename not in vm.images:
                    vm.qemu_img("create", "-f", "qcow2", filename, size)
            message = {"execute": rec["execute"]}
            if args is not None:
                message["arguments"] = args
            vm.execute(message)
            vm.run()
        elif kind == "guest_io":
            _, _, pattern, offset, length = rec["cmd"].split()
            vm.write(rec["node"], int(offset), int(length), int(pattern, 16))
        elif kind == "bitmaps":
            steps[step] = {"bitmaps": bitmaps(vm), "jobs": job_sequences(vm.events[first_event:])}
    return vm, steps
