"""Random throttling episodes (util/throttle.c, block/throttle-groups.c, block/throttle.c, qom's object-add).

On a stream of their own (``{seed}/{index}/throttle``) and with names of their own (groups ``tz0`` and ``tz1``,
an image ``tp`` with its qcow2 node ``tpq`` under the throttle node ``tp``, a target ``tt``), so the other steps of
a scenario stay what they were for every seed. An episode adds a group (valid limits or limits QEMU refuses,
in ``limits`` or the legacy properties), reads and changes it (``qom-get``, ``qom-set``, ``qom-list``), puts the
throttle node over ``tpq`` and writes through it, backs it up or backs a scenario node up into a throttled
target, moves the node into the other group (``blockdev-reopen``), and takes things down again (``object-del``
of a group in use first). The limits let a request wait a few tenths of a second at most (the daemon's clock
runs in real time, bitlab's is simulated: the waits stay long against the daemon's own latencies and short
for the run).
"""

from __future__ import annotations

import random

from .steps import qmp_step as _qmp

CHANCE = 0.03  # after each op of the random mix, the chance of an episode
K, M = 1 << 10, 1 << 20
RATES = [4 * M, 8 * M, 16 * M]


class Throttles:
    """What the episodes of one scenario share: their random stream, the groups and ``tp``'s state."""

    def __init__(self, rng: random.Random, nodes: list[str]) -> None:
        self.rng = rng
        self.nodes = nodes
        self.groups: list[str] = []
        self.node_group: str | None = None  # tp's group while the throttle node exists
        self.made = False  # tp.qcow2 exists
        self.jobs = 0


def _limits(rng: random.Random) -> dict:
    """Limits QEMU takes, or now and then ones it refuses."""
    rate = rng.choice(RATES)
    kind = rng.choice(["bps-total", "bps-write", "bps-read", "iops-total"])
    limits: dict = {kind: rate if kind.startswith("bps") else rng.choice([20, 50])}
    roll = rng.random()
    if roll < 0.15:
        limits[f"{kind}-max"] = limits[kind] * 2
        limits[f"{kind}-max-length"] = rng.choice([1, 2])
    elif roll < 0.2:
        limits["bps-read" if kind == "bps-total" else "bps-total"] = M  # total with read/write: refused
    elif roll < 0.25:
        limits[f"{kind}-max"] = limits[kind] // 2  # max below avg: refused
    elif roll < 0.28:
        limits["iops-size"] = 4096 if kind == "iops-total" else 0
    return limits


def _group(th: Throttles) -> list[dict]:
    rng = th.rng
    name = "tz0" if "tz0" not in th.groups else "tz1" if "tz1" not in th.groups else rng.choice(th.groups)
    limits = _limits(rng)
    if rng.random() < 0.2:  # the legacy properties instead
        args = {"qom-type": "throttle-group", "id": name, **{f"x-{k}": v for k, v in limits.items()}}
    else:
        args = {"qom-type": "throttle-group", "id": name, "limits": limits}
    if name not in th.groups:  # (it may have been refused: then the steps naming it fail on both sides alike)
        th.groups.append(name)
    return [_qmp("object-add", args), _qmp("qom-list", {"path": "/objects"})]


def throttle_episode(th: Throttles, size: int) -> list[dict]:
    """One episode; see the module docstring."""
    rng = th.rng
    steps: list[dict] = []
    if not th.groups or rng.random() < 0.3:
        steps += _group(th)
        steps.append(_qmp("qom-get", {"path": rng.choice(["tz0", "/objects/tz0", "/objects/tz1"]),
                                      "property": "limits"}))
        return steps
    group = rng.choice(th.groups)
    roll = rng.random()
    if th.node_group is None and roll < 0.5:
        if not th.made:
            th.made = True
            steps.append({"qemu-img": ["create", "-f", "qcow2", "tp.qcow2", str(size)]})
        steps.append(_qmp("blockdev-add", {"driver": "throttle", "node-name": "tp", "throttle-group": group,
                                           "file": {"driver": "qcow2", "node-name": "tpq",
                                                    "file": {"driver": "file", "filename": "tp.qcow2"}}}))
        th.node_group = group  # (if the group was refused, the node is too: the steps after it fail alike)
        steps.append(_qmp("query-named-block-nodes"))
        return steps
    if th.node_group is not None and roll < 0.65:
        for _ in range(rng.randint(1, 3)):
            offset = rng.randrange(0, size // (64 * K)) * 64 * K
            length = min(rng.choice([4 * K, 64 * K, 256 * K, M]), size - offset)
            steps.append({"write": {"node": "tp", "offset": offset, "length": length}})
        return steps
    if roll < 0.75:
        value = _limits(rng)
        steps.append(_qmp("qom-set", {"path": f"/objects/{group}", "property": "limits", "value": value}))
        steps.append(_qmp("qom-get", {"path": f"/objects/{group}", "property": "limits"}))
        return steps
    if th.node_group is not None and roll < 0.85:
        th.jobs += 1
        jid = f"tj{th.jobs}"
        if rng.random() < 0.5:  # the throttled node backed up
            steps.append({"qemu-img": ["create", "-f", "qcow2", f"{jid}.qcow2", str(size)]})
            steps.append(_qmp("blockdev-add", {"driver": "qcow2", "node-name": jid,
                                               "file": {"driver": "file", "filename": f"{jid}.qcow2"}}))
            steps.append(_qmp("blockdev-backup", {"device": "tp", "target": jid, "sync": rng.choice(["full", "top"]),
                                                  "job-id": jid}))
        else:  # a scenario node backed up into a throttled target
            steps.append(_qmp("blockdev-backup", {"device": rng.choice(th.nodes), "target": "tp", "sync": "top",
                                                  "job-id": jid}))
        # (no cancel or pause: whether a job with little to copy is still there for them is QEMU's timing;
        # tests/conformance/test_throttle.py pauses and cancels throttled backups in stories that wait for it)
        steps.append({"wait-job": {"id": jid, "status": "null"}})
        return steps
    if th.node_group is not None and roll < 0.92:
        other = rng.choice(th.groups + ["nosuch"])
        steps.append(_qmp("blockdev-reopen", {"options": [{
            "driver": "throttle", "node-name": "tp", "throttle-group": other, "file": "tpq"}]}))
        if other in th.groups:
            th.node_group = other
        return steps
    steps.append(_qmp("object-del", {"id": group}))  # refused while the node uses it
    if th.node_group is not None and rng.random() < 0.6:
        steps.append(_qmp("blockdev-del", {"node-name": "tp"}))
        th.node_group = None
        steps.append(_qmp("object-del", {"id": group}))
        if group in th.groups:
            th.groups.remove(group)
    return steps


def throttle_scenario(seed: int, index: int = 0) -> dict:
    """A scenario of such episodes alone (``bitlab conformance --focus throttle``): one or two qcow2 nodes of
    8 MiB with data, then three to twelve episodes, then the nodes and the block graph."""
    rng = random.Random(f"{seed}/{index}/throttle-focus")
    nodes = ["d0", "d1"][: rng.randint(1, 2)]
    steps: list[dict] = []
    for node in nodes:
        steps.append({"qemu-img": ["create", "-f", "qcow2", f"{node}.qcow2", str(8 * M)]})
        steps.append(_qmp("blockdev-add", {"driver": "qcow2", "node-name": node,
                                           "file": {"driver": "file", "filename": f"{node}.qcow2"}}))
        offset = rng.randrange(0, 8) * M
        steps.append({"write": {"node": node, "offset": offset, "length": rng.choice([64 * K, M, 2 * M])}})
    th = Throttles(random.Random(f"{seed}/{index}/throttle"), nodes)
    for _ in range(rng.randint(3, 12)):
        steps += throttle_episode(th, 8 * M)
    steps += [_qmp("query-named-block-nodes", {"flat": True}), _qmp("x-debug-query-block-graph"),
              _qmp("qom-list", {"path": "/objects"})]
    return {"name": f"throttle-{seed}-{index}", "steps": steps}


__all__ = ["CHANCE", "Throttles", "throttle_episode", "throttle_scenario"]
