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
    (re.compile(r"disk size: .*"), "disk size: DISK_SIZE"),  # host file system allocation
    (re.compile(r'"actual-size": \d+'), '"actual-size": null'),  # the same, in JSON text
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
        return vm.execute(step["qmp"])
    for verb in ("write", "discard", "zero"):
        if verb in step:
            io = step[verb]
            command = {"write": f"write -P {io.get('pattern', 0xCD):#x}", "zero": "write -z",
                       "discard": "discard"}[verb]
            out = vm.qemu_io(io["node"], f"{command} {io['offset']} {io['length']}")
            if "failed" in out:
                return {"ok": False, "stdout": out, "stderr": "", "returncode": 1}
            return {"ok": True}
    raise ValueError(f"unknown step {step}")


def _subst(obj: Any, old: str, new: str) -> Any:
    """Replace a path prefix everywhere in a JSON-like value."""
    return json.loads(json.dumps(obj).replace(json.dumps(old)[1:-1], json.dumps(new)[1:-1]))


def replay(scenario: dict) -> list[tuple[int, dict, Any, Any]]:
    """Return every mismatch: (index, step, expected, got), known differences included."""
    vm = Machine()
    bad = []
    for i, rec in enumerate(scenario["steps"]):
        if rec.get("reply", {}).get("crashed"):
            break
        step = _subst(rec["step"], "WORKDIR", vm.workdir)
        if step.get("restart") or step.get("kill"):
            vm = vm.restart(clean=bool(step.get("restart")))
            continue
        got = _subst(run_step(vm, step), vm.workdir, "WORKDIR")
        want = rec["reply"]
        if scenario["name"] in PERSISTENT_LAYOUT:
            got, want = _mask_file_lengths(_normalise(got)), _mask_file_lengths(_normalise(want))
        if _normalise(got) != _normalise(want):
            bad.append((i, rec["step"], want, got))
    return bad
