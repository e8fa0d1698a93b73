"""Random write-threshold episodes (block/write-threshold.c).

``block-set-write-threshold`` on a scenario node, its named file node (``d0f``: qcow2's writes at host
offsets), an earlier backup target (``t<n>``; a drive-backup's has no node: refused like a missing node),
or a node that does not exist, at a 512-byte-aligned offset inside the disk (sometimes 0: disarmed), now
and then followed by a guest write on the node that ends past the threshold or not. The steps after it
(guest writes, backups onto the node, copy-before-write) fire ``BLOCK_WRITE_THRESHOLD`` or not; the final
``query-named-block-nodes`` shows what is left armed, ``query-blockstats`` every node's
``wr_highest_offset``.

A throttled backup of :mod:`.gen_running` may get a threshold too, armed before the job starts: on its source
(the guest's writes fire it), or on its target, where block-copy's tasks and copy-before-write's copies run in
parallel (a guest write over several job clusters copies them at once; so do the job's workers once its speed
is 0): which of them reaches the node first varies from run to run on QEMU 7.2 (seen: two ``amount-exceeded``
alternating for one scenario, three for another). So a target's threshold is either

- in the target's last 64 KiB (``end``): every request that passes it ends at the end of the disk (job
  clusters are aligned), so the event is the same whichever comes first; it stays armed; or
- anywhere (``first``): the job copies its first request and sleeps (throttled), the scenario waits for it
  (``sleep``: on bitlab's clock a guest write sent at once would reach the filter first), and disarms it.

On streams of their own (``{seed}/{index}/threshold``, ``running{seed}/{index}/threshold``), so the other
steps of a scenario stay what they were for every seed.
"""

from __future__ import annotations

import random

from .steps import qmp_step as _qmp

CHANCE = 0.05  # after each op of the random mix, the chance of an episode
RUNNING_CHANCE = 0.4  # the chance that a throttled backup's target or source gets a threshold
WAIT = 0.05  # seconds: a started job's first request has surely been written on real QEMU (gen_running.SETTLE)


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


def running_threshold(rng: random.Random | None, node: str, target: str, size: int,
                      job: str) -> tuple[list[dict], list[dict]]:
    """Around a throttled backup ``job`` of ``node`` onto ``target`` (see the module's docstring): the steps
    before it starts, and those right after."""
    if rng is None or rng.random() >= RUNNING_CHANCE:
        return [], []
    if rng.random() < 0.3:
        return [_set(node, _offset(rng, size))], []
    if rng.random() < 0.6:  # end
        return [_set(target, size - rng.randrange(1, 129) * 512)], []
    return [_set(target, _offset(rng, size))], [{"sleep": WAIT, "first-requests": [job]}, _set(target, 0)]


def _set(node: str, threshold: int) -> dict:
    return _qmp("block-set-write-threshold", {"node-name": node, "write-threshold": threshold})
