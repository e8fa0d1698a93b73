"""Random write-threshold episodes (block/write-threshold.c).

``block-set-write-threshold`` on a scenario node, its named file node (``d0f``: qcow2's writes at host
offsets), an earlier backup target (``t<n>``; a drive-backup's has no node: refused like a missing node),
or a node that does not exist, at a 512-byte-aligned offset inside the disk (sometimes 0: disarmed), now
and then followed by a guest write on the node that ends past the threshold or not. The steps after it
(guest writes, backups onto the node, copy-before-write) fire ``BLOCK_WRITE_THRESHOLD`` or not; the final
``query-named-block-nodes`` shows what is left armed, ``query-blockstats`` every node's
``wr_highest_offset``.

A throttled backup of :mod:`.gen_running` may get a threshold too, armed before the job starts (on its
target: block-copy's first request and the copy-before-write of guest writes to the source fire it; or on
its source: the guest's writes). Whichever request passes it first is QEMU's while the job is throttled (it
copies one request and then sleeps; copy-before-write happens in the guest write's own request), so a
target's threshold is set back to 0 before the job's speed goes to 0: then block-copy's workers write in
parallel, and which of their requests reaches the node first varies from run to run on QEMU 7.2 (seen:
three different ``amount-exceeded`` for one scenario).

On streams of their own (``{seed}/{index}/threshold``, ``running{seed}/{index}/threshold``), so the other
steps of a scenario stay what they were for every seed.
"""

from __future__ import annotations

import random

from .steps import qmp_step as _qmp

CHANCE = 0.05  # after each op of the random mix, the chance of an episode
RUNNING_CHANCE = 0.4  # the chance that a throttled backup's target or source gets a threshold


def _offset(rng: random.Random, size: int) -> int:
    """A threshold: 0 (disarmed) now and then, else inside the disk, 4 KiB-aligned or only 512-aligned."""
    if rng.random() < 0.1:
        return 0
    return rng.randrange(1, size // 4096) * 4096 if rng.random() < 0.7 else rng.randrange(1, size // 512) * 512


def threshold_episode(rng: random.Random, nodes: list[str], watched: dict[str, int], targets: int,
                      size: int) -> list[dict]:
    """One ``block-set-write-threshold`` (see the module's docstring); ``targets``: backup targets made so far."""
    names = nodes + [f"{n}f" for n in nodes if n in watched] + ["nope"]
    if targets:
        names.append(f"t{rng.randint(1, targets)}")
    node = rng.choice(names)
    threshold = _offset(rng, size)
    steps = [_qmp("block-set-write-threshold", {"node-name": node, "write-threshold": threshold})]
    if node in nodes and rng.random() < 0.5:  # a guest write ending just past it, or just before
        end = min(max(threshold + rng.choice([-512, 512, 4096]), 512), size)
        length = min(rng.choice([512, 4096, 65536]), end)
        steps.append({"write": {"node": node, "offset": end - length, "length": length,
                                "pattern": rng.randrange(1, 256)}})
    return steps


def running_threshold(rng: random.Random | None, node: str, target: str, size: int) -> list[dict]:
    """Before a throttled backup of ``node`` onto ``target`` starts: maybe a threshold on either."""
    if rng is None or rng.random() >= RUNNING_CHANCE:
        return []
    on = target if rng.random() < 0.7 else node
    return [_qmp("block-set-write-threshold", {"node-name": on, "write-threshold": _offset(rng, size)})]


def running_disarm(armed: list[dict], target: str) -> list[dict]:
    """Before a throttled backup onto ``target`` is let go: disarm the threshold ``armed`` put on the target."""
    if armed and armed[0]["qmp"]["arguments"]["node-name"] == target:
        return [_qmp("block-set-write-threshold", {"node-name": target, "write-threshold": 0})]
    return []
