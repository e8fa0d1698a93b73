"""Play scenarios on bitlab and on real QEMU 7.2, and say where they differ."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any

from ..machine import Machine
from .compare import compare_jobs, compare_thresholds, normalise
from .generator import random_scenario
from .steps import run_step

# Commands whose replies differ on purpose (see README "Known differences").
DIFFERENT_COMMANDS = {
    "query-version": "bitlab reports package 'bitlab <version>'",
    "query-commands": "bitlab implements a different set of commands",
    "query-qmp-schema": "bitlab's schema describes what bitlab implements",
}


@dataclass
class Outcome:
    """What one backend said: a reply per step, and every event."""

    replies: list[Any] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    error: str | None = None
    daemon: str | None = None  # which QEMU played it (real QEMU's: its kind)


@dataclass
class Difference:
    scenario: str
    step: int | None
    what: str
    expected: Any
    got: Any

    def render(self) -> str:
        head = f"{self.scenario}: {self.what}"
        if self.step is not None:
            head += f" (step {self.step})"
        a = json.dumps(self.expected, indent=1, sort_keys=True).splitlines()
        b = json.dumps(self.got, indent=1, sort_keys=True).splitlines()
        diff = difflib.unified_diff(a, b, "real QEMU 7.2", "bitlab", lineterm="", n=2)
        return head + "\n" + "\n".join(list(diff)[:60])


def play(scenario: dict, backend: str, daemon: str | None = None) -> Outcome:
    """Run every step of ``scenario`` on a fresh machine of ``backend`` ('sim' or 'qemu'; real QEMU's
    ``daemon``: 'qsd', 'system' or 'auto', by default ``BITLAB_QEMU_DAEMON`` or 'auto')."""
    out = Outcome()
    vm = Machine(backend=backend, daemon=daemon)
    try:
        for drive in scenario.get("drives", []):
            vm.add_drive(drive["id"], drive.get("size", "64M"), drive.get("format", "qcow2"),
                         file=drive.get("file"), blkdebug=drive.get("blkdebug"))
        for step in scenario["steps"]:
            if step.get("restart") or step.get("kill"):
                out.events.extend(vm.events)
                vm.events.clear()
                vm = vm.restart(clean=bool(step.get("restart")))
                out.replies.append({"ok": True})
                continue
            out.replies.append(normalise(run_step(vm, step)))
        out.events.extend(vm.events)
    except Exception as err:  # noqa: BLE001 - reported as a difference, with the scenario's seed
        out.error = f"{type(err).__name__}: {err}"
    finally:
        out.daemon = getattr(vm, "kind", None) or getattr(vm, "daemon", None)
        close = getattr(vm, "close", None)
        if close is not None:
            close()
    return out


def compare(scenario: dict, real: Outcome, sim: Outcome) -> list[Difference]:
    name = scenario["name"]
    if real.error or sim.error:
        return [Difference(name, None, "a backend failed", real.error, sim.error)]
    diffs = []
    for i, (step, a, b) in enumerate(zip(scenario["steps"], real.replies, sim.replies)):
        if step.get("qmp", {}).get("execute") in DIFFERENT_COMMANDS:
            continue
        if a != b:
            diffs.append(Difference(name, i, json.dumps(step)[:160], a, b))
    for job, (a, b) in compare_jobs(real.events, sim.events).items():
        diffs.append(Difference(name, None, f"events of job {job}", a, b))
    for node, (a, b) in compare_thresholds(real.events, sim.events).items():
        diffs.append(Difference(name, None, f"BLOCK_WRITE_THRESHOLD events of node {node}", a, b))
    return diffs


def check(scenario: dict, daemon: str | None = None) -> list[Difference]:
    """Play on real QEMU (its ``daemon``) and on bitlab; the differences (empty when identical)."""
    real = play(scenario, "qemu", daemon)
    return compare(scenario, real, play(scenario, "sim", "system" if real.daemon == "system" else None))


def random_run(count: int, seed: int) -> tuple[int, list[Difference]]:
    """Play ``count`` random scenarios of ``seed``; returns (identical, differences)."""
    identical = 0
    diffs: list[Difference] = []
    for index in range(count):
        found = check(random_scenario(seed, index))
        if found:
            diffs += found
        else:
            identical += 1
    return identical, diffs
