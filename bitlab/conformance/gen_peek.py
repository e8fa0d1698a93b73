"""Random peek episodes (``--focus peek``): ``qemu-img -U`` reading images a running QEMU holds open read-write.

QEMU writes a changed L2 table back from its cache only on a flush, a new table's ``l2_allocate`` or the node's
closing, so what such a reader sees lags behind the guest (bitlab.block.qcow2_disk). On a stream of their own
(``{seed}/{index}/peek``) and with names of their own (images ``pk<n>.qcow2``, nodes ``pk<n>``, backup targets
``pkt<n>``, jobs ``pkj<n>``, raw copies ``pkc<n>.img``), so the other steps of a scenario stay what they were for
every seed. An episode opens a qcow2 image of 64 KiB or 4 KiB clusters (at 4 KiB an 8 MiB disk has four L2 tables:
a write into a stretch without one writes the others back first), then does a few of: guest writes and zero writes
(``write -z``, ``-u`` or not), each flushed or not, flushes, peeks (``map -U``, ``check -U``, ``compare -U`` with a
disk of the scenario or a target, ``convert -U`` into a raw copy and its map, ``measure -U``) and one-worker backups
of the image into a new target (``max-workers`` 1: its host clusters in guest order) peeked at in turn; it ends with
the nodes closed and the image's map and check, as the file holds them then.

Some episodes of 4 KiB clusters (a stream of their own, ``{seed}/{index}/peek-fill``) first fill the disk, 1 MiB a
write, flushed but the last maybe: the file outgrows the 8 MiB its first refcount block counts, and the last write (a
backup target's copy later) needs a new one, which writes the caches back (alloc_refcount_block).

Some episodes (their own stream again, ``{seed}/{index}/peek-resize``: the others stay as they were) end with a
``block_resize`` of the image, larger or smaller, between guest writes left unflushed, peeked at after it: a
qcow2 resize writes both caches back as it ends (qcow2_update_options renews them).
"""

from __future__ import annotations

import random

from .steps import qmp_step as _qmp
from .steps import random_write

CHANCE = 0.03  # after each op of the random mix, the chance of an episode
RESIZE_CHANCE = 0.4  # the chance that an episode ends with a resize
FILL_CHANCE = 0.3  # the chance that an episode of 4 KiB clusters starts by filling its disk
K, M = 1 << 10, 1 << 20
CLUSTERS = [65536, 4096]
LENGTHS = [4096, 65536, 1 << 20]
ACTIONS = ["write", "write", "write", "zero", "flush", "peek", "peek", "backup"]


class Peeks:
    """What the episodes of one scenario share: their random stream, counters and the scenario's disks."""

    def __init__(self, rng: random.Random, disks: list[str], resizes: random.Random | None = None,
                 fills: random.Random | None = None) -> None:
        self.rng = rng
        self.resizes = resizes  # the resizes' stream (None: no resizes)
        self.fills = fills  # the fills' stream (None: no fills)
        self.disks = disks
        self.images = 0
        self.targets = 0
        self.copies = 0


def _peek(pk: Peeks, image: str, others: list[str]) -> list[dict]:
    """One reader's look at ``image`` (a file name) without the file lock."""
    rng = pk.rng
    kind = rng.choice(["map", "map", "check", "compare", "convert", "measure"])
    if kind == "map":
        return [{"qemu-img": ["map", "--output=json", "-U", image]}]
    if kind == "check":
        return [{"qemu-img": ["check", "-U", *(["--output=json"] if rng.random() < 0.3 else []), image]}]
    if kind == "compare":
        return [{"qemu-img": ["compare", "-U", image, rng.choice(others)]}]
    if kind == "measure":
        return [{"qemu-img": ["measure", "-U", "--output=json", "-O", "qcow2", image]}]
    pk.copies += 1
    copy = f"pkc{pk.copies}.img"
    return [{"qemu-img": ["convert", "-U", "-O", "raw", image, copy]},
            {"qemu-img": ["map", "--output=json", copy]}]


def _resize(rng: random.Random, node: str, size: int) -> list[dict]:
    """A write left unflushed, ``block_resize`` of ``node`` (``size`` now), a peek, then a write into what the
    disk is now (unflushed) and a peek again."""
    new = rng.choice([2 * size, size + 64 * K, size + 4 * K, size // 2, size - 64 * K, size - 4 * K])
    steps = [random_write(rng, node, size, LENGTHS), _qmp("block_resize", {"node-name": node, "size": new})]
    steps[0]["write"]["flush"] = False
    image = f"{node}.qcow2"
    steps += [{"qemu-img": ["map", "--output=json", "-U", image]}, {"qemu-img": ["check", "-U", image]},
              random_write(rng, node, new, LENGTHS), {"qemu-img": ["map", "--output=json", "-U", image]}]
    steps[-2]["write"]["flush"] = False
    return steps


def peek_episode(pk: Peeks, size: int) -> list[dict]:
    """One episode (see the module's docstring)."""
    rng = pk.rng
    pk.images += 1
    node = f"pk{pk.images}"
    cluster = rng.choice(CLUSTERS)
    steps = [{"qemu-img": ["create", "-f", "qcow2", *(["-o", f"cluster_size={cluster}"] if cluster != 65536 else []),
                           f"{node}.qcow2", str(size)]},
             _qmp("blockdev-add", {"driver": "qcow2", "node-name": node,
                                   "file": {"driver": "file", "filename": f"{node}.qcow2"}})]
    others = [f"{d}.qcow2" for d in pk.disks]
    targets: list[str] = []
    if cluster == 4096 and pk.fills is not None and pk.fills.random() < FILL_CHANCE:
        steps += [{"write": {"node": node, "offset": i * M, "length": M, "pattern": 0x61 + i, "flush": True}}
                  for i in range(size // M)]
        steps[-1]["write"]["flush"] = pk.fills.random() < 0.5  # (the last write needs a new refcount block)
    for _ in range(rng.randint(3, 9)):
        action = rng.choice(ACTIONS)
        if action == "write":
            step = random_write(rng, node, size, LENGTHS)
            step["write"]["flush"] = rng.random() < 0.4
            steps.append(step)
        elif action == "zero":
            offset = rng.randrange(0, size // 4096) * 4096
            steps.append({"zero": {"node": node, "offset": offset, "length": min(rng.choice(LENGTHS), size - offset),
                                   "unmap": rng.random() < 0.5, "flush": rng.random() < 0.4}})
        elif action == "flush":
            steps.append({"flush": {"node": node}})
        elif action == "peek":
            steps += _peek(pk, f"{node}.qcow2", others + [f"{t}.qcow2" for t in targets])
        else:
            pk.targets += 1
            target = f"pkt{pk.targets}"
            targets.append(target)
            steps += [{"qemu-img": ["create", "-f", "qcow2", f"{target}.qcow2", str(size)]},
                      _qmp("blockdev-add", {"driver": "qcow2", "node-name": target,
                                            "file": {"driver": "file", "filename": f"{target}.qcow2"}}),
                      _qmp("blockdev-backup", {"job-id": f"pkj{pk.targets}", "device": node, "target": target,
                                               "sync": rng.choice(["full", "top"]), "x-perf": {"max-workers": 1}}),
                      {"settle-jobs": True}]
            steps += _peek(pk, f"{target}.qcow2", [f"{node}.qcow2"])
    if pk.resizes is not None and pk.resizes.random() < RESIZE_CHANCE:
        steps += _resize(pk.resizes, node, size)
    for name in [*targets, node]:
        steps.append(_qmp("blockdev-del", {"node-name": name}))
    steps += [{"qemu-img": ["map", "--output=json", f"{node}.qcow2"]}, {"qemu-img": ["check", f"{node}.qcow2"]}]
    return steps


def peek_scenario(seed: int, index: int = 0) -> dict:
    """A scenario of such episodes alone (``bitlab conformance --focus peek``): one qcow2 disk of 8 MiB with data
    (to compare with), then one to three episodes."""
    rng = random.Random(f"{seed}/{index}/peek-focus")
    size = 8 * M
    steps: list[dict] = [{"qemu-img": ["create", "-f", "qcow2", "d0.qcow2", str(size)]},
                         _qmp("blockdev-add", {"driver": "qcow2", "node-name": "d0",
                                               "file": {"driver": "file", "filename": "d0.qcow2"}})]
    for _ in range(rng.randint(0, 3)):
        steps.append(random_write(rng, "d0", size, LENGTHS))
    pk = Peeks(random.Random(f"{seed}/{index}/peek"), ["d0"], random.Random(f"{seed}/{index}/peek-resize"),
               random.Random(f"{seed}/{index}/peek-fill"))
    for _ in range(rng.randint(1, 3)):
        steps += peek_episode(pk, size)
    steps.append(_qmp("query-named-block-nodes", {"flat": True}))
    return {"name": f"peek-{seed}-{index}", "steps": steps}


__all__ = ["CHANCE", "Peeks", "peek_episode", "peek_scenario"]
