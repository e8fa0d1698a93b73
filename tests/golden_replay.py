"""Replay golden transcripts recorded on real QEMU 7.2 (tests/golden/) on bitlab.

Each scenario ran in a fresh qemu-storage-daemon with an empty work directory
(tools/capture_golden.py). Here the same steps run on a fresh Machine and every
reply is compared exactly, after the normalisations listed in :data:`NORMALISE`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bitlab import Machine, QemuImgError

GOLDEN = Path(__file__).parent / "golden"

# What real QEMU does differently from run to run, or by host, masked on both sides
# (tools/capture_golden.py applies the same masks when recording).
MASKS = [
    (re.compile(r"(#block\d+)\d\d"), r"\1NN"),  # two random digits of automatic node names
    # ... and their counter: QEMU's also counts temporary nodes (e.g. what drive-backup's
    # image creation opens), which bitlab does not create
    (re.compile(r"#block\d+NN"), "#blockNNN"),
    (re.compile(r"disk size: .*"), "disk size: DISK_SIZE"),  # host file system allocation
    (re.compile(r'"actual-size": \d+'), '"actual-size": null'),  # the same, in JSON text
    (re.compile(r"ops; .*"), "ops; TIMING"),  # qemu-io's measured rate
]
HOST_KEYS = {"actual-size"}  # host file system allocation, in QMP replies

# Where bitlab differs from qemu-storage-daemon on purpose or does not model a detail.
# Each entry: the command (or scenario) and why. tests/test_golden_qemu.py checks that
# every entry still differs, so the list cannot go stale.
DIFFERENT_COMMANDS = {
    "query-version": "bitlab reports QEMU 7.2.0 with package 'bitlab <version>', not Debian's build",
    "query-commands": "bitlab implements a different set of commands",
    "human-monitor-command": "bitlab's monitor is the system emulator's, which has HMP; qsd has none",
    "query-block-exports": "NBD exports are not simulated",
    "block-export-add": "NBD exports are not simulated",
    "block-export-del": "NBD exports are not simulated",
}
DIFFERENT_SCENARIOS = {
    "busy-via-nbd-export": "NBD exports (which make bitmaps busy) are not simulated",
}
# Steps whose real outcome depends on the recorder's own NBD export (it writes through one).
NBD_ARTIFACT_STEPS = {("del", 16), ("del", 18)}
# Other steps bitlab does not reproduce, with the reason.
DIFFERENT_STEPS = {
    ("nodes-and-arguments", 44): "compressed clusters' size in the host file is not modelled",
}
# qcow2 files holding persistent bitmaps: bitlab does not lay out the bitmap directory and
# tables in the host file, so the file node's length differs.
PERSISTENT_LAYOUT = {"persistent", "persistent-read-only-node", "persistent-inconsistent-after-kill",
                     "remove-persistent", "info-with-bitmaps"}


def known_difference(scenario: str, index: int, record: dict) -> str | None:
    """Why this recorded step may differ from real QEMU, or None if it must match exactly.

    Command-level differences apply where QEMU ran the command (not where it refused the
    message before dispatch).
    """
    if scenario in DIFFERENT_SCENARIOS:
        return DIFFERENT_SCENARIOS[scenario]
    if (scenario, index) in NBD_ARTIFACT_STEPS:
        return "the recorder's NBD export still holds the node"
    if (scenario, index) in DIFFERENT_STEPS:
        return DIFFERENT_STEPS[(scenario, index)]
    message = record["step"].get("qmp", {})
    if "exec-oob" in message:
        return None
    return DIFFERENT_COMMANDS.get(message.get("execute"))


def _mask_file_lengths(obj: Any) -> Any:
    if isinstance(obj, dict) and isinstance(obj.get("return"), list):
        for entry in obj["return"]:
            if isinstance(entry, dict) and entry.get("drv") == "file":
                entry["image"]["virtual-size"] = "QCOW2_LAYOUT"
    return obj


def groups() -> list[str]:
    return sorted(p.stem for p in GOLDEN.glob("*.json"))


def scenarios(group: str) -> list[dict]:
    return json.loads((GOLDEN / f"{group}.json").read_text())["scenarios"]


def _normalise(obj: Any) -> Any:
    if isinstance(obj, str) and obj.startswith("json:") and '"blkdebug"' in obj:
        # Known difference: the member order of blkdebug's flattened rules inside json:
        # filenames is not modelled exactly for several rules; compare them as JSON.
        return "json:" + json.dumps(json.loads(obj[5:]), sort_keys=True)
    if isinstance(obj, dict):
        return {k: (None if k in HOST_KEYS else _normalise(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_normalise(v) for v in obj]
    if isinstance(obj, str):
        for pattern, repl in MASKS:
            obj = pattern.sub(repl, obj)
    return obj


def run_step(vm: Machine, step: dict) -> Any:
    if "qemu-img" in step:
        try:
            return {"stdout": vm.qemu_img(*step["qemu-img"]), "stderr": "", "returncode": 0}
        except QemuImgError as err:
            return {"stdout": err.stdout, "stderr": err.stderr, "returncode": err.returncode}
    if "qmp" in step:
        reply = vm.execute(step["qmp"])
        if "settle" in step:
            vm.run(until=vm.now + step["settle"])
        return reply
    if "hmp" in step:
        return vm.execute({"execute": "human-monitor-command", "arguments": {"command-line": step["hmp"]}})
    if "flush" in step:
        vm.guest_io(step["flush"]["node"], "flush")
        return {"ok": True}
    if "wait-job" in step:
        return _wait_job(vm, step["wait-job"])
    if "settle-jobs" in step:
        return _settle_jobs(vm)
    if "sleep" in step:
        vm.run(until=vm.now + step["sleep"])
        return {"ok": True}
    for verb in ("write", "discard", "zero"):
        if verb in step:
            io = step[verb]
            command = {"write": f"write -P {io.get('pattern', 0x41):#x}", "zero": "write -z",
                       "discard": "discard"}[verb]
            out = vm.guest_io(io["node"], f"{command} {io['offset']} {io['length']}")  # NBD: above filters
            if io.get("flush", True):
                vm.guest_io(io["node"], "flush")  # qemu-io over NBD flushes when it exits
            if "failed" in out:
                return {"ok": False, "stdout": out, "stderr": "", "returncode": 1}
            return {"ok": True}
    raise ValueError(f"unknown step {step}")


def _wait_job(vm: Machine, spec: dict) -> dict:
    """Run the simulation until the job reports the status (counting from its latest 'created')."""
    def seen() -> bool:
        start = 0
        for i, ev in enumerate(vm.events):
            data = ev.get("data", {})
            if ev["event"] == "JOB_STATUS_CHANGE" and data.get("id") == spec["id"] and data["status"] == "created":
                start = i
        return any(ev["event"] == "JOB_STATUS_CHANGE" and ev["data"] == {"status": spec["status"], "id": spec["id"]}
                   for ev in vm.events[start:])
    while not seen():
        if not vm.step():
            return {"timeout": True}
    return {"ok": True}


def _settle_jobs(vm: Machine) -> dict:
    """Run until no job moves by itself: none left, or all concluded, pending or paused."""
    def settled() -> bool:
        return all(j["status"] in ("concluded", "pending", "paused") for j in vm.qmp("query-jobs"))
    while not settled():
        if not vm.step():
            break
    return {"ok": True}


def build_machine(scenario: dict) -> Machine:
    vm = Machine()
    for drive in scenario.get("drives", []):
        vm.add_drive(drive["id"], drive.get("size", "64M"), drive.get("format", "qcow2"), file=drive.get("file"),
                     blkdebug=drive.get("blkdebug"))
    return vm


def _subst(obj: Any, old: str, new: str) -> Any:
    """Replace a path prefix everywhere in a JSON-like value."""
    return json.loads(json.dumps(obj).replace(json.dumps(old)[1:-1], json.dumps(new)[1:-1]))


def replay(scenario: dict, events: list | None = None) -> list[tuple[int, dict, Any, Any]]:
    """Return every mismatch: (index, step, expected, got), known differences included.

    ``events``, if given, receives bitlab's events (for :func:`compare_jobs`).
    """
    vm = build_machine(scenario)
    bad = []
    for i, rec in enumerate(scenario["steps"]):
        if rec.get("reply", {}).get("crashed"):
            break
        step = _subst(rec["step"], "WORKDIR", vm.workdir)
        if step.get("restart") or step.get("kill"):
            if events is not None:
                events.extend(vm.events)
            vm = vm.restart(clean=bool(step.get("restart")))
            continue
        got = _subst(run_step(vm, step), vm.workdir, "WORKDIR")
        want = rec["reply"]
        if scenario["name"] in PERSISTENT_LAYOUT:
            got, want = _mask_file_lengths(_normalise(got)), _mask_file_lengths(_normalise(want))
        if "hmp" in step:
            got = {**got, "stdout": vm.console_take(), "stderr": vm.console_take("stderr")}
            want = {**want, "stdout": rec.get("stdout", ""), "stderr": rec.get("stderr", "")}
        if _normalise(got) != _normalise(want):
            bad.append((i, rec["step"], want, got))
    if events is not None:
        events.extend(vm.events)
    return bad


# -- job events ----------------------------------------------------------------------------

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


def canonical(seq: list) -> list:
    """QEMU's own run-to-run variation, removed: an optional 'waiting' before 'aborting', and
    'paused', 'running' pairs from drained sections of other jobs' commands."""
    out: list = []
    for item in seq:
        if item == "aborting" and out and out[-1] == "waiting":
            out.pop()
        if item == "running" and out and out[-1] == "paused" and len(out) >= 2 and out[-2] == "running":
            out.pop()
            continue
        out.append(item)
    return out


def compare_jobs(golden: list[dict], ours: list[dict]) -> dict:
    """Jobs whose canonical event sequences differ: {job: (expected, got)}."""
    want = {k: canonical(v) for k, v in job_sequences(golden).items()}
    got = {k: canonical(v) for k, v in job_sequences(ours).items()}
    return {k: (want.get(k), got.get(k)) for k in set(want) | set(got) if want.get(k) != got.get(k)}


def golden_events(scenario: dict) -> list[dict]:
    return [ev for rec in scenario["steps"] for ev in rec.get("events", [])]
