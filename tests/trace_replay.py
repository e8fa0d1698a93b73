"""Replay a recorded real-QEMU trace (tests/data/qemu-traces/) on bitlab, step by step.

Both the replay here and the benchmark's run on qemu-storage-daemon (benchmarks/run.py) send
exactly the trace's commands and summarise each step from those commands' own replies (the last
``query-named-block-nodes`` and the ``x-debug-block-dirty-bitmap-sha256`` answers), as the
recorder did: neither side sends a command the trace does not hold.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from bitlab import Machine

TRACES = Path(__file__).parent / "data" / "qemu-traces"
SKIP: set[str] = set()  # every traced command runs on bitlab too (records() leaves out the final quit)
# QEMU's own run-to-run variation (real-qemu.md): a job may finish copying before its
# transaction is aborted, and then reports 'waiting' before 'aborting'.
OPTIONAL = {("status:waiting", "status:aborting")}
BITMAP_KEYS = ("name", "count", "granularity", "recording", "busy", "persistent")


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


class Summary:
    """A step's bitmaps, built from the replies of the trace's own query commands."""

    def __init__(self) -> None:
        self.nodes: list[dict] = []
        self.shas: dict[tuple[str, str], str] = {}

    def reply(self, execute: str, arguments: dict | None, value: object) -> None:
        """Take note of one command's return value."""
        if execute == "query-named-block-nodes":
            self.nodes = value  # type: ignore[assignment]
        elif execute == "x-debug-block-dirty-bitmap-sha256":
            assert arguments is not None and isinstance(value, dict)
            self.shas[(arguments["node"], arguments["name"])] = value["sha256"]

    def bitmaps(self) -> dict[str, list[dict]]:
        """Per node: its named bitmaps' flags and counts, with their sha256 where it was asked for."""
        out = {}
        for node in self.nodes:
            entries = [{**{k: bm[k] for k in BITMAP_KEYS}, "sha256": self.shas.get((node["node-name"], bm["name"]))}
                       for bm in node.get("dirty-bitmaps", []) if "name" in bm]
            if entries:
                out[node["node-name"]] = entries
        return out


def records(mode: str, root: str = "") -> list[tuple[str, object]]:
    """The trace's records, with the recorder's work directory replaced by ``root`` in every path:
    ("cmd", (execute, arguments as JSON)), ("guest_io", record), ("step", record), ("bitmaps", record)."""
    trace = load(mode)
    prefix = f"ORACLE/work/qsd-nbd-{mode}/"
    out: list[tuple[str, object]] = []
    for rec in trace["trace"]:
        kind = rec["kind"]
        if kind == "cmd" and rec["execute"] != "quit":
            out.append(("cmd", (rec["execute"], json.dumps(rec.get("arguments")).replace(prefix, root))))
        elif kind in ("guest_io", "step", "bitmaps"):
            out.append((kind, rec))
    return out


@cache
def commands(mode: str) -> list[tuple[str, object]]:
    """:func:`records` for bitlab: paths relative to the machine's work directory; the NBD server and
    the exports the recorder wrote through run too (bitlab's guest writes do not need them)."""
    return [(kind, item) for kind, item in records(mode)
            if kind != "cmd" or item[0] not in SKIP]  # type: ignore[index]


def replay(mode: str, vm: Machine | None = None) -> tuple[Machine, dict[str, dict]]:
    """Run the trace's commands on ``vm`` (a new simulator by default); return per step: bitmaps and
    job sequences."""
    vm = Machine() if vm is None else vm
    size = str(load_config(mode)["image_size"])
    steps: dict[str, dict] = {}
    step, first_event, summary = None, 0, Summary()
    for kind, item in commands(mode):
        if kind == "step":
            step, first_event = item["name"], len(vm.events)  # type: ignore[index]
        elif kind == "cmd":
            execute, args_json = item  # type: ignore[misc]
            args = json.loads(args_json)  # every command gets arguments of its own
            if execute == "blockdev-add":
                file = args["file"]
                filename = file.get("filename") or file["image"]["filename"]
                made = filename in vm.images if hasattr(vm, "images") else Path(vm.workdir, filename).exists()
                if not made:
                    vm.qemu_img("create", "-f", "qcow2", filename, size)
            message = {"execute": execute}
            if args is not None:
                message["arguments"] = args
            reply = vm.execute(message)
            vm.run()
            summary.reply(execute, args, reply.get("return"))
        elif kind == "guest_io":
            _, _, pattern, offset, length = item["cmd"].split()  # type: ignore[index]
            vm.write(item["node"], int(offset), int(length), int(pattern, 16))  # type: ignore[index]
        elif kind == "bitmaps":
            steps[step] = {"bitmaps": summary.bitmaps(), "jobs": job_sequences(vm.events[first_event:])}
    return vm, steps


@cache
def load_config(mode: str) -> dict:
    return load(mode)["config"]
