"""Random external-snapshot episodes (blockdev.c external_snapshot_*, block.c bdrv_append).

On a stream of their own (``{seed}/{index}/snapshot``) and with names of their own (a disk ``sb`` with a
bitmap, overlays ``sv<n>``), so the other steps of a scenario stay what they were for every seed. An episode
either tries what QEMU refuses, on the scenario's nodes or on ``sb``'s chain (an overlay node name missing or
taken, a missing node or overlay, the node as its own overlay, an overlay with a backing file, an old node
that is another's backing file, ``mode: existing`` without the file, a format without backing files), or
puts a blockdev-add'ed overlay (``"backing": null``) on top of ``sb``'s chain — alone, or in a transaction
with a new bitmap on the overlay, sometimes rolled back by a later ``abort`` — or rolls back a
``blockdev-snapshot-sync`` (the image it made stays). Then a guest write to ``sb`` (it lands in the top
overlay: its bitmaps count it, the old nodes' do not) and the nodes' bitmaps.

Half the episodes (their own stream, ``{seed}/{index}/snapshot-peek``) also peek: a guest write to ``sb`` left
unflushed before the snapshot, the final write unflushed, and ``qemu-img map -U`` / ``check -U`` of the old top's
and the new top's images after them: external_snapshot_prepare flushes the old node before its checks (a refused
snapshot too), the commit's read-only reopen writes it back, the new overlay keeps its tables in its cache.

Only ``sb`` gets overlays: below one, a scenario node would be read-only and out of its guest's way, and the
mix's running backups of it would wait on nothing in bitlab (their cancel completes on a later request there,
at once on QEMU). A ``blockdev-snapshot-sync`` that succeeds is left out: on qemu-storage-daemon nothing holds
its overlay, so it goes at once.
"""

from __future__ import annotations

import random

from .steps import qmp_step as _qmp

CHANCE = 0.04  # after each op of the random mix, the chance of an episode


class Snapshots:
    """What the episodes of one scenario share: their random stream, names, and each node's top."""

    def __init__(self, rng: random.Random, nodes: list[str], peeks: random.Random | None = None,
                 peek_chance: float = 0.5) -> None:
        self.rng = rng
        self.peeks = peeks  # the peeking stream (None: no peeks)
        self.peek_chance = peek_chance
        self.count = 0
        self.nodes = nodes  # the scenario's nodes: refusals only
        self.top: str | None = None  # the top of sb's chain, once sb is made

    def new_name(self) -> str:
        self.count += 1
        return f"sv{self.count}"


def _overlay(name: str, size: int, backing: str | None = None) -> list[dict]:
    args: dict = {"driver": "qcow2", "node-name": name, "file": {"driver": "file", "filename": f"{name}.qcow2"},
                  "backing": backing}
    return [{"qemu-img": ["create", "-f", "qcow2", f"{name}.qcow2", str(size)]}, _qmp("blockdev-add", args)]


def _look(peeks: random.Random, image: str) -> dict:
    """A reader of ``image`` without the file lock: its map, or its check."""
    if peeks.random() < 0.7:
        return {"qemu-img": ["map", "--output=json", "-U", image]}
    return {"qemu-img": ["check", "-U", image]}


def _write(rng: random.Random, size: int, flush: bool = True) -> dict:
    offset = rng.randrange(0, size // 512) * 512
    io = {"node": "sb", "offset": offset, "length": min(64 << 10, size - offset), "pattern": rng.randrange(1, 256)}
    return {"write": io if flush else {**io, "flush": False}}


def snapshot_episode(sn: Snapshots, size: int) -> list[dict]:
    """One episode (see the module's docstring)."""
    rng = sn.rng
    steps: list[dict] = []
    if sn.top is None:
        sn.top = "sb"
        steps += _overlay("sb", size)[:1] + [
            _qmp("blockdev-add", {"driver": "qcow2", "node-name": "sb",
                                  "file": {"driver": "file", "filename": "sb.qcow2"}}),
            _qmp("block-dirty-bitmap-add", {"node": "sb", "name": "b0", "granularity": rng.choice([512, 65536])})]
    peeks = sn.peeks if sn.peeks is not None and sn.peeks.random() < sn.peek_chance else None
    if peeks is not None:
        steps.append(_write(peeks, size, flush=False))
    steps += _episode(sn, size, peeks)
    return steps


def _episode(sn: Snapshots, size: int, peeks: random.Random | None) -> list[dict]:
    """The snapshot (or what QEMU refuses), then the write and the queries."""
    rng = sn.rng
    steps: list[dict] = []
    node = "sb"
    top = sn.top
    assert top is not None
    kind = rng.choices(["refused", "append", "txn", "rollback"], weights=[3, 3, 3, 1])[0]
    if kind == "refused":
        if rng.random() < 0.5:
            node = top = rng.choice(sn.nodes)
        name = sn.new_name()
        tries = [
            ("blockdev-snapshot-sync", {"node-name": top, "snapshot-file": f"{name}.qcow2"}),
            ("blockdev-snapshot-sync", {"node-name": "nope", "snapshot-file": f"{name}.qcow2",
                                        "snapshot-node-name": name}),
            ("blockdev-snapshot-sync", {"node-name": top, "snapshot-file": f"{name}.qcow2",
                                        "snapshot-node-name": rng.choice(sn.nodes)}),
            ("blockdev-snapshot-sync", {"node-name": top, "snapshot-file": f"{name}.qcow2",
                                        "snapshot-node-name": name, "mode": "existing"}),
            ("blockdev-snapshot-sync", {"node-name": node, "snapshot-file": f"{name}.qcow2",
                                        "snapshot-node-name": name, "format": "raw"}),
            ("blockdev-snapshot", {"node": top, "overlay": top}),
            ("blockdev-snapshot", {"node": top, "overlay": "nope"}),
            ("blockdev-snapshot", {"node": "nope", "overlay": top}),
        ]
        if top != node:  # the old node is the overlay's backing file now
            tries.append(("blockdev-snapshot", {"node": node, "overlay": top}))
        for execute, args in rng.sample(tries, rng.randint(1, 3)):
            steps.append(_qmp(execute, args))
        if peeks is not None:
            steps.append(_look(peeks, f"{top}.qcow2"))
        return steps
    name = sn.new_name()
    if kind == "rollback":
        steps.append(_qmp("transaction", {"actions": [
            {"type": "blockdev-snapshot-sync", "data": {"node-name": top, "snapshot-file": f"{name}.qcow2",
                                                        "snapshot-node-name": name}},
            {"type": "abort", "data": {}}]}))
        steps.append({"qemu-img": ["info", "-U", f"{name}.qcow2"]})
    else:
        steps += _overlay(name, size)
        action = {"type": "blockdev-snapshot", "data": {"node": top, "overlay": name}}
        if kind == "append":
            steps.append(_qmp("blockdev-snapshot", action["data"]))
            sn.top = name
        else:
            actions = [action, {"type": "block-dirty-bitmap-add",
                                "data": {"node": name, "name": "b0", "granularity": rng.choice([512, 65536])}}]
            aborted = rng.random() < 0.3
            if aborted:
                actions.append({"type": "abort", "data": {}})
            steps.append(_qmp("transaction", {"actions": actions}))
            if not aborted:
                sn.top = name
    if peeks is not None:
        steps.append(_look(peeks, f"{top}.qcow2"))
    steps.append(_write(rng, size, flush=peeks is None or peeks.random() < 0.5))
    if peeks is not None:
        steps.append(_look(peeks, f"{sn.top}.qcow2"))
    steps.append(_qmp("query-named-block-nodes", {"flat": True}))
    steps.append(_qmp("x-debug-block-dirty-bitmap-sha256", {"node": "sb", "name": "b0"}))
    return steps


def snapshot_scenario(seed: int, index: int = 0) -> dict:
    """A scenario of such episodes alone (``bitlab conformance --focus snapshot``): two qcow2 disks of 8 MiB (the
    refusals' other nodes), one with data, then two to five episodes, every one of them peeking."""
    rng = random.Random(f"{seed}/{index}/snapshot-focus")
    size = 8 << 20
    steps: list[dict] = []
    for disk in ("d0", "d1"):
        steps += [{"qemu-img": ["create", "-f", "qcow2", f"{disk}.qcow2", str(size)]},
                  _qmp("blockdev-add", {"driver": "qcow2", "node-name": disk,
                                        "file": {"driver": "file", "filename": f"{disk}.qcow2"}})]
    offset = rng.randrange(0, size // 65536) * 65536
    steps.append({"write": {"node": "d0", "offset": offset, "length": 65536, "pattern": 0x5A, "flush": False}})
    sn = Snapshots(random.Random(f"{seed}/{index}/snapshot"), ["d0", "d1"],
                   random.Random(f"{seed}/{index}/snapshot-peek"), peek_chance=1.0)
    for _ in range(rng.randint(2, 5)):
        steps += snapshot_episode(sn, size)
    steps += [{"qemu-img": ["map", "--output=json", "-U", "d0.qcow2"]}, _qmp("query-named-block-nodes", {"flat": True})]
    return {"name": f"snapshot-{seed}-{index}", "steps": steps}


__all__ = ["CHANCE", "Snapshots", "snapshot_episode", "snapshot_scenario"]
