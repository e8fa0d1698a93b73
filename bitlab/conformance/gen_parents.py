"""Random episodes around the parents of a backup's source (block.c ``bdrv_replace_node``).

A fresh source ``ps<n>`` with data, an overlay ``po<n>`` whose ``backing`` is that source, and
sometimes an earlier ``sync=none`` backup of the source (drive-backup onto an existing image, whose
backing link the job sets, or blockdev-backup onto a node). Then a throttled backup of the source:
its copy-before-write filter takes the source's place under the overlay and the earlier target.
While it runs: reads through the overlay, queries (``json:`` filenames, ``backing-image`` chains),
query-block, blockdev-del of the overlay or the source, a second backup (of the overlay, or of the
source again), throttled or run to its end. Then every job ends (cancelled, or its speed lifted),
in random order, and the graph is queried again.

In half of the episodes (``writers``) permissions come into play (bitlab/block/perms.py): guest
writes to the source while the overlay holds it (through the filters above it; refused while a
backup of the overlay makes the overlay's backing link share no writes), and NBD exports of the
source, writable or not, before any backup or while they run (refused while the source's own filter
or the overlay's backup share no writes; one made before the backups moves up to the source's filter,
and a backup of the overlay then fails on its write permission). Their filters are all named, as
the permission errors name them.

Stays away from what differs for other reasons: overlay writes only before any backup and in
ascending order (qcow2's host layout), a query only after a started job's first request has surely
finished (``SETTLE``), and ``settle-jobs`` only when no sync=none job is left.
"""

from __future__ import annotations

import random

from .gen_running import SETTLE
from .steps import qmp_step as _qmp

K, M = 1 << 10, 1 << 20
CHANCE = 0.02  # after each op of the random mix, the chance of an episode


def _qcow2(name: str, size: int, backing: str | None = None) -> list[dict]:
    args: dict = {"driver": "qcow2", "node-name": name, "file": {"driver": "file", "filename": f"{name}.qcow2"}}
    if backing is not None:
        args["backing"] = backing
    return [{"qemu-img": ["create", "-f", "qcow2", f"{name}.qcow2", str(size)]}, _qmp("blockdev-add", args)]


class Parents:
    """What the episodes of one scenario share: their random stream and a counter for names."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.count = 0
        self.names = 0
        self.server = False  # an NBD server was started (for the episodes' exports)
        self.writers = False  # this episode writes the source and exports it (its filters are named)

    def name(self, prefix: str) -> str:
        self.names += 1
        return f"{prefix}{self.count}x{self.names}"


def parents_episode(pr: Parents, size: int = 4 * M) -> list[dict]:
    """One episode (see the module docstring)."""
    rng = pr.rng
    pr.count += 1
    n = pr.count
    src, ov = f"ps{n}", f"po{n}"
    pr.writers = rng.random() < 0.5
    steps = _qcow2(src, size)
    patterns = [0]
    offsets = sorted(rng.randrange(0, size // (64 * K)) * 64 * K for _ in range(rng.randint(1, 3)))
    for offset in offsets:  # ascending: qcow2 lays the clusters out in guest order, as bitlab does
        patterns.append(rng.randrange(1, 256))
        steps.append({"write": {"node": src, "offset": offset, "length": min(rng.choice([64 * K, M]), size - offset),
                                "pattern": patterns[-1]}})
    steps += _qcow2(ov, size, backing=src)
    if rng.random() < 0.5:
        patterns.append(rng.randrange(1, 256))
        steps.append({"write": {"node": ov, "offset": rng.randrange(0, size // 512) * 512,
                                "length": rng.choice([512, 4 * K, 64 * K]), "pattern": patterns[-1]}})
    if pr.writers and rng.random() < 0.5:  # an export before any backup: the filter takes it over
        steps += _export(pr, src)
    jobs: dict[str, str] = {}  # job id -> sync, of the jobs that end below
    started = [0]

    def job_id() -> str:
        started[0] += 1
        return f"pj{n}x{started[0]}"

    if rng.random() < 0.4:  # an earlier sync=none backup of the source: its target's backing is the source
        jid = job_id()
        named = {"filter-node-name": pr.name("pf")} if pr.writers else {}
        if rng.random() < 0.6:
            image = pr.name("pn")
            steps += [{"qemu-img": ["create", "-f", "qcow2", f"{image}.qcow2", str(size)]},
                      _qmp("drive-backup", {"job-id": jid, "device": src, "target": f"{image}.qcow2",
                                            "sync": "none", "format": "qcow2", "mode": "existing", **named})]
        else:
            target = pr.name("pt")
            steps += [*_qcow2(target, size), _qmp("blockdev-backup", {"job-id": jid, "device": src,
                                                                      "target": target, "sync": "none", **named})]
        jobs[jid] = "none"
    steps += _backup(pr, src, job_id(), jobs, size, throttled=True)
    on_overlay: list[str] = []  # throttled backups of the overlay (they run until they end below)
    overlay = True  # po<n> still there (a blockdev-del of it succeeds while no job holds it)
    for _ in range(rng.randint(2, 6)):
        what = rng.choices(["read", "query", "block", "del", "second", "write", "export"],
                           weights=[6, 5, 1, 2, 3] + ([4, 2] if pr.writers else [0, 0]))[0]
        if what == "write":  # the guest's BlockBackend on the source takes write
            patterns.append(rng.randrange(1, 256))
            offset = rng.randrange(0, size // 512) * 512
            steps.append({"write": {"node": src, "offset": offset, "pattern": patterns[-1],
                                    "length": min(rng.choice([512, 64 * K]), size - offset)}})
        elif what == "export":
            steps += _export(pr, src)
        elif what == "read":
            offset = rng.randrange(0, size // 512) * 512
            node = ov if overlay and rng.random() < 0.8 else src
            steps.append({"read": {"node": node, "offset": offset, "pattern": rng.choice(patterns),
                                   "length": min(rng.choice([512, 64 * K, M]), size - offset)}})
        elif what == "query":
            steps.append(_qmp("query-named-block-nodes", {"flat": True} if rng.random() < 0.4 else None))
        elif what == "block":
            steps.append(_qmp("query-block"))
        elif what == "del":
            node = rng.choice([ov, src])
            steps.append(_qmp("blockdev-del", {"node-name": node}))
            if node == ov and (not on_overlay or pr.writers):  # deleted: nothing holds it (with writers, a
                overlay = False  # backup of the overlay may have failed: it may be gone, left alone from now)
        elif len(jobs) < 6:
            device = ov if overlay and rng.random() < 0.75 else src
            jid = job_id()
            steps += _backup(pr, device, jid, jobs, size, throttled=rng.random() < 0.5)
            if device == ov and jid in jobs:
                on_overlay.append(jid)
    order = list(jobs)
    rng.shuffle(order)
    for jid in order:  # every job ends: cancelled, or run to its end
        if jobs[jid] == "none" or rng.random() < 0.5:
            steps.append(_qmp("job-cancel", {"id": jid}))
        else:
            steps.append(_qmp("block-job-set-speed", {"device": jid, "speed": 0}))
        steps.append({"wait-job": {"id": jid, "status": "null"}})
        if rng.random() < 0.5:
            steps.append(_qmp("query-named-block-nodes", {"flat": True} if rng.random() < 0.4 else None))
            steps.append(_qmp("x-debug-query-block-graph"))
    steps.append(_qmp("query-named-block-nodes"))
    steps.append(_qmp("x-debug-query-block-graph"))
    if rng.random() < 0.5:
        steps.append(_qmp("blockdev-del", {"node-name": ov}))
    return steps


def _export(pr: Parents, node: str) -> list[dict]:
    """An NBD export of ``node``, writable or not (the server started first)."""
    steps = []
    if not pr.server:
        steps.append(_qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "parents.sock"}}}))
        pr.server = True
    export_id = pr.name("px")
    steps.append(_qmp("block-export-add", {"type": "nbd", "id": export_id, "node-name": node,
                                           "writable": pr.rng.random() < 0.7}))
    return steps


def _backup(pr: Parents, device: str, jid: str, jobs: dict[str, str], size: int, *, throttled: bool) -> list[dict]:
    """A full backup of ``device`` onto a new node (throttled: one request, then asleep; else run to its
    end and its target read), sometimes with a named filter."""
    rng = pr.rng
    target = pr.name("pt")
    steps = _qcow2(target, size)
    args: dict = {"job-id": jid, "device": device, "target": target, "sync": "full"}
    if pr.writers or rng.random() < 0.5:
        args["filter-node-name"] = pr.name("pf")
    if throttled:
        args.update(speed=1, **{"x-perf": {"max-chunk": 65536}})
    steps.append(_qmp("blockdev-backup", args))
    if throttled:
        jobs[jid] = "full"
        steps.append({"sleep": SETTLE, "first-requests": [jid]})
    else:
        steps += [{"wait-job": {"id": jid, "status": "null"}},
                  {"read": {"node": target, "offset": 0, "length": size, "pattern": 0}}]
    return steps


def parents_scenario(seed: int, index: int = 0, size: int = 4 * M) -> dict:
    """A scenario of one to three such episodes (``bitlab conformance --focus parents``)."""
    rng = random.Random(f"parents{seed}/{index}")
    pr = Parents(rng)
    steps: list[dict] = []
    for _ in range(rng.randint(1, 3)):
        steps += parents_episode(pr, size)
    steps.append(_qmp("query-named-block-nodes", {"flat": True}))
    return {"name": f"parents-{seed}-{index}", "steps": steps}
