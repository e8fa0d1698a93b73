"""Comparing what two QEMUs (real, or bitlab) said: masks for what legitimately varies."""

from __future__ import annotations

import json
import re
from typing import Any

# What real QEMU does differently from run to run, or by host, masked on both sides.
MASKS = [
    (re.compile(r"(#block\d+)\d\d"), r"\1NN"),  # two random digits of automatic node names
    # ... and their counter: QEMU's also counts temporary nodes (e.g. what drive-backup's
    # image creation opens), which bitlab does not create
    (re.compile(r"#block\d+NN"), "#blockNNN"),
    (re.compile(r"disk size: .*"), "disk size: DISK_SIZE"),  # host file system allocation
    (re.compile(r'"actual-size": \d+'), '"actual-size": null'),  # the same, in JSON text
    (re.compile(r"ops; .*"), "ops; TIMING"),  # qemu-io's measured rate
]
HOST_KEYS = {"actual-size", "timestamp"}  # host file system allocation; wall-clock time


def normalise(obj: Any) -> Any:
    """``obj`` with every mask applied (recursively)."""
    if isinstance(obj, str) and obj.startswith("json:") and '"blkdebug"' in obj:
        # bitlab does not reproduce the member order of blkdebug's flattened rules inside
        # json: filenames for several rules exactly; compare them as JSON.
        return "json:" + json.dumps(json.loads(obj[5:]), sort_keys=True)
    if isinstance(obj, dict):
        return {k: (None if k in HOST_KEYS else normalise(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [normalise(v) for v in obj]
    if isinstance(obj, str):
        for pattern, repl in MASKS:
            obj = pattern.sub(repl, obj)
    return obj


def job_sequences(events: list[dict]) -> dict[str, list]:
    """Per job: its status changes and BLOCK_JOB_* events (data without the device)."""
    out: dict[str, list] = {}
    for ev in events:
        name, data = ev["event"], ev.get("data", {})
        if name == "JOB_STATUS_CHANGE":
            out.setdefault(data["id"], []).append(data["status"])
        elif name.startswith("BLOCK_JOB_"):
            job = data.get("device", data.get("id"))
            out.setdefault(job, []).append({"event": name, **{k: v for k, v in data.items() if k != "device"}})
    return out


def threshold_events(events: list[dict]) -> dict[str, list]:
    """Per node: its ``BLOCK_WRITE_THRESHOLD`` events' data, in order."""
    out: dict[str, list] = {}
    for ev in events:
        if ev["event"] == "BLOCK_WRITE_THRESHOLD":
            out.setdefault(ev["data"]["node-name"], []).append(ev["data"])
    return out


def compare_thresholds(expected: list[dict], got: list[dict]) -> dict:
    """Nodes whose ``BLOCK_WRITE_THRESHOLD`` events differ: {node: (expected, got)}."""
    want, have = threshold_events(expected), threshold_events(got)
    return {k: (want.get(k), have.get(k)) for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)}


def canonical(seq: list) -> list:
    """QEMU's own run-to-run variation removed: an optional 'waiting' before 'aborting', and
    'paused', 'running' pairs from the drained sections of commands (also other jobs'), and a ready job's
    'standby', 'ready' pairs likewise."""
    out: list = []
    for item in seq:
        if item == "aborting" and out and out[-1] == "waiting":
            out.pop()
        if item == "running" and out and out[-1] == "paused" and len(out) >= 2 and out[-2] == "running":
            out.pop()
            continue
        if item == "ready" and out and out[-1] == "standby" and _last_status(out[:-1]) == "ready":
            out.pop()
            continue
        out.append(item)
    return out


def _last_status(seq: list) -> str | None:
    """The last status of a job's sequence (its end events are dicts)."""
    for item in reversed(seq):
        if isinstance(item, str):
            return item
    return None


def compare_jobs(expected: list[dict], got: list[dict]) -> dict:
    """Jobs whose canonical event sequences differ: {job: (expected, got)}."""
    want = {k: canonical(v) for k, v in job_sequences(expected).items()}
    have = {k: canonical(v) for k, v in job_sequences(got).items()}
    return {k: (want.get(k), have.get(k)) for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)}
