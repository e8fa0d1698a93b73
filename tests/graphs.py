"""Random block graphs for the permission tests (seeded: the same ``rng`` gives the same graph)."""

from __future__ import annotations

import json
import random
import re

from bitlab import Machine
from bitlab.errors import QMPError


def random_graph(rng: random.Random, most: int, child_perms: bool = False, vm: Machine | None = None) -> Machine:
    """Four 64 MiB qcow2 images, then 2 to ``most`` nodes over them: file nodes, qcow2 and raw over a new
    file node or (raw) over an existing node, blkdebug (with random ``take-child-perms`` /
    ``unshare-child-perms`` if ``child_perms``), read-only or not; nodes QEMU refuses are left out. On
    ``vm`` if given (real QEMU too), else on a new simulator."""
    vm = Machine() if vm is None else vm
    for i in range(4):
        vm.qemu_img("create", "-f", "qcow2", f"i{i}.qcow2", "64M")
    for i in range(rng.randint(2, most)):
        image = f"i{rng.randrange(4)}.qcow2"
        ro = rng.random() < 0.4
        kind = rng.choice(["file", "qcow2", "raw", "ref", "blkdebug"])
        file = {"driver": "file", "filename": image, "read-only": ro or rng.random() < 0.3}
        if kind == "file":
            opts = {**file, "node-name": f"n{i}"}
        elif kind == "ref" and (names := [n["node-name"] for n in vm.qmp("query-named-block-nodes")][::-1]):
            opts = {"driver": "raw", "node-name": f"n{i}", "read-only": ro, "file": rng.choice(names)}
        elif kind == "blkdebug":
            opts = {"driver": "blkdebug", "node-name": f"n{i}", "image": file}
            if child_perms:
                opts["take-child-perms"] = rng.sample(["write", "resize", "consistent-read"], rng.randint(0, 2))
                opts["unshare-child-perms"] = rng.sample(["write", "resize"], rng.randint(0, 1))
                opts = {k: v for k, v in opts.items() if v != []}
        else:
            opts = {"driver": "qcow2" if kind != "raw" else "raw", "node-name": f"n{i}", "read-only": ro, "file": file}
        try:
            vm.qmp("blockdev-add", opts)
        except QMPError:
            pass
    return vm


def block_graph(vm: Machine) -> dict:
    """``x-debug-query-block-graph`` with automatic node names' numbers left out (QEMU's counter and
    random digits), its lists as sent."""
    return json.loads(re.sub(r'"#block\d+"', '"#block"', json.dumps(vm.qmp("x-debug-query-block-graph"))))


def node_edges(vm: Machine) -> list[tuple[str, str, str, list[str], list[str]]]:
    """The graph's node-to-node links from ``x-debug-query-block-graph``: (parent, role, child, perm, shared)."""
    graph = vm.qmp("x-debug-query-block-graph")
    names = {node["id"]: node["name"] for node in graph["nodes"] if node["type"] == "block-driver"}
    return [(names[e["parent"]], e["name"], names[e["child"]], e["perm"], e["shared-perm"])
            for e in graph["edges"] if e["parent"] in names]
