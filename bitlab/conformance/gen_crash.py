"""Random crash episodes: QEMU killed at the end of a scenario (``vm.restart(clean=False)``: README, "QEMU killed").

From seed :data:`CRASH_SINCE` on, a scenario ends now and then (:data:`CRASH_CHANCE`, on a stream of its own:
``{seed}/{index}/crash``) with a few guest writes nobody flushes, the jobs left to settle (a job paused or idle:
no request in flight, whose timing would be QEMU's), the kill, and then what ``qemu-img`` finds in the scenario's
disks (``check``, ``map``) and backup targets (``check -q``: their host offsets follow the order of their workers'
reads, which QEMU does not fix), one disk repaired (``check -r leaks|all``) and checked again.
Older seeds keep the scenarios they had.
"""

from __future__ import annotations

import random

from .steps import random_write

CRASH_SINCE = 29000
CRASH_CHANCE = 0.15


def crash_episode(rng: random.Random, nodes: list[str], targets: int, size: int) -> list[dict]:
    """The episode's steps: writes on the scenario's nodes, settle, kill, the images looked at."""
    steps = [random_write(rng, rng.choice(nodes), size, [4096, 65536, 1 << 20, 3 << 20])
             for _ in range(rng.randint(0, 3))]
    steps += [{"settle-jobs": True}, {"kill": True}]
    disks = [f"{node}.qcow2" for node in nodes]
    for file in disks:
        steps += [{"qemu-img": ["check", file]}, {"qemu-img": ["map", "--output=json", file]}]
    # a backup target's host offsets follow the order its workers' reads completed in (README, known differences):
    # its exit status alone (leaks, corruptions)
    steps += [{"qemu-img": ["check", "-q", f"t{n}.qcow2"]} for n in range(1, targets + 1)]
    file = rng.choice(disks)
    steps += [{"qemu-img": ["check", "-r", rng.choice(["leaks", "all"]), file]}, {"qemu-img": ["check", file]}]
    return steps
