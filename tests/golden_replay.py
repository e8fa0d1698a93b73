"""Replay golden transcripts recorded on real QEMU 7.2 (tests/golden/) on bitlab.

Each scenario ran in a fresh qemu-storage-daemon with an empty work directory
(tools/capture_golden.py). Here the same steps run on a fresh Machine and every
reply is compared exactly, after the normalisations listed in :data:`NORMALISE`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bitlab import Machine
from bitlab.conformance import compare_jobs, run_step  # noqa: F401  (compare_jobs: for the tests)
from bitlab.conformance.compare import normalise

GOLDEN = Path(__file__).parent / "golden"

# Where bitlab differs from qemu-storage-daemon on purpose or does not model a detail.
# Each entry: the command (or scenario) and why. tests/test_golden_qemu.py checks that
# every entry still differs, so the list cannot go stale.
DIFFERENT_COMMANDS = {
    "query-version": "bitlab reports QEMU 7.2.0 with package 'bitlab <version>', not Debian's build",
    "query-commands": "bitlab implements a different set of commands",
    "human-monitor-command": "bitlab's monitor is the system emulator's, which has HMP; qsd has none",
    "query-status": "bitlab's monitor is the system emulator's, which has a run state; qsd has none",
}
DIFFERENT_SCENARIOS: dict[str, str] = {}
# Other steps bitlab does not reproduce, with the reason.
DIFFERENT_STEPS: dict[tuple[str, int], str] = {}
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


_normalise = normalise


def build_machine(scenario: dict) -> Machine:
    vm = Machine()
    for drive in scenario.get("drives", []):
        vm.add_drive(drive["id"], drive.get("size", "64M"), drive.get("format", "qcow2"), file=drive.get("file"),
                     blkdebug=drive.get("blkdebug"))
    return vm


def _subst(obj: Any, old: str, new: str) -> Any:
    """Replace a path prefix everywhere in a JSON-like value."""
    return json.loads(json.dumps(obj).replace(json.dumps(old)[1:-1], json.dumps(new)[1:-1]))


GUEST_IO = ("write", "zero", "discard", "flush")
RECORDER_SOCKET = ".recorder-nbd.sock"  # the recorder's own socket lies outside the work directory


class RecorderExports:
    """What tools/capture_golden.py does before guest I/O (``Daemon.ensure_export``): it writes
    through a writable NBD export ``exp-<node>`` of its own, on a server it starts once per daemon.
    The same commands run on bitlab, so the replay sees what QEMU saw (nodes in use, the export in
    ``query-block-exports``, ``NBD server already running``)."""

    def __init__(self) -> None:
        self.started = False
        self.exported: set[str] = set()

    def ensure(self, vm: Machine, node: str) -> dict | None:
        """Export ``node`` as the recorder did; the failing set-up reply, or None."""
        if not self.started:
            reply = vm.execute({"execute": "nbd-server-start", "arguments": {
                "addr": {"type": "unix", "data": {"path": RECORDER_SOCKET}}}})
            if "error" in reply:
                return reply
            self.started = True
        if node not in self.exported:
            reply = vm.execute({"execute": "block-export-add", "arguments": {
                "type": "nbd", "id": f"exp-{node}", "node-name": node, "name": node, "writable": True}})
            if "error" in reply:
                return reply
            self.exported.add(node)
        return None


def replay(scenario: dict, events: list | None = None) -> list[tuple[int, dict, Any, Any]]:
    """Return every mismatch: (index, step, expected, got), known differences included.

    ``events``, if given, receives bitlab's events (for :func:`compare_jobs`).
    """
    vm = build_machine(scenario)
    recorder = RecorderExports()
    bad = []
    for i, rec in enumerate(scenario["steps"]):
        if rec.get("reply", {}).get("crashed"):
            break
        step = _subst(rec["step"], "WORKDIR", vm.workdir)
        if step.get("restart") or step.get("kill"):
            if events is not None:
                events.extend(vm.events)
            vm = vm.restart(clean=bool(step.get("restart")))
            recorder = RecorderExports()
            continue
        kind = next((k for k in GUEST_IO if k in step), None)
        failure = recorder.ensure(vm, step[kind]["node"]) if kind is not None else None
        if "hmp" in step:  # (the recorder kept what the emulator printed during an HMP step only)
            vm.console_take()
            vm.console_take("stderr")
        got = {"ok": False, "setup": failure} if failure is not None else run_step(vm, step)
        got = _subst(got, vm.workdir, "WORKDIR")
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

def golden_events(scenario: dict) -> list[dict]:
    return [ev for rec in scenario["steps"] for ev in rec.get("events", [])]
