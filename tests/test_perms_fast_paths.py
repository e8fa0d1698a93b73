"""The permission checks' fast path (bitlab/block/perms.py ``attach_error_alone``) against the general
view it stands in for, on random graphs (seeded)."""

from __future__ import annotations

import random

import pytest

from bitlab import Machine
from bitlab.block import perms
from bitlab.block.node import BlockNode
from tests.graphs import random_graph


def _general(vm: Machine, parent: BlockNode, role: str, child: BlockNode) -> str:
    view = perms.PermView(vm.graph)
    view.attach(parent, role, child)
    return view.first_error(child) or ""


@pytest.mark.parametrize("seed", range(25))
def test_attach_alone_is_the_general_check(seed: int) -> None:
    """Random graphs (files, qcow2 and raw over them, read-only or not, devices, blkdebug): wherever the
    fast path answers, the permission view gives the same error (or none); it answers for some."""
    rng = random.Random(seed)
    vm = random_graph(rng, 7)
    vm.qemu_img("create", "-f", "qcow2", "loose.qcow2", "64M")  # a file of its own: no other node's locks
    vm.qmp("blockdev-add", {"driver": "file", "node-name": "loose", "filename": "loose.qcow2",
                            "read-only": rng.random() < 0.5})
    answered = 0
    nodes = list(vm.graph.nodes.values())
    for _ in range(80):
        child = rng.choice(nodes + [vm.graph.nodes["loose"]] * 3)
        new = BlockNode(f"new{_}")  # a node being opened (not in the graph yet)
        new.driver = rng.choice(["qcow2", "raw", "blkdebug", "copy-before-write"])  # type: ignore[misc]
        parent = rng.choice(nodes + [new, new, new])
        if parent is child:
            continue
        role = rng.choice(["file", "backing", "target", "image"])
        for ro in (False, True):
            parent.read_only = ro if parent is new else parent.read_only
            fast = perms.attach_error_alone(vm.graph, parent, role, child)
            if fast is not None:
                answered += 1
                assert fast == _general(vm, parent, role, child)
    assert answered > 0


def test_attach_alone_declines_a_child_in_use() -> None:
    """A child something uses already, or one with children, goes to the view."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "a.qcow2", "64M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "q", "file": {"driver": "file", "filename": "a.qcow2"}})
    q = vm.graph.nodes["q"]
    file = q.children[0][1]
    stand_in = perms.FilterStandIn("cbw")
    assert perms.attach_error_alone(vm.graph, stand_in, "file", file) is None
    assert perms.attach_error_alone(vm.graph, stand_in, "file", q) is None
    # a file node nothing uses, on a file another node has open: their locks may meet
    vm.qmp("blockdev-add", {"driver": "file", "node-name": "f2", "filename": "a.qcow2"})
    assert perms.attach_error_alone(vm.graph, stand_in, "file", vm.graph.nodes["f2"]) is None
