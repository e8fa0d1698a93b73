"""The permission checks' fast path (bitlab/block/perms.py ``attach_error_alone``) against the general
view it stands in for, on random graphs (seeded)."""

from __future__ import annotations

import random

import pytest

from bitlab import Machine
from bitlab.block import perms
from bitlab.block.node import BlockNode
from bitlab.errors import QMPError
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


def _blk_story(vm: Machine, rng: random.Random) -> list[str]:
    """qemu-io writes and truncates on random nodes (perms.check_blk) between random graph changes: new
    nodes over existing ones, exports added and deleted, nodes deleted; every reply or error, in order."""
    vm.qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}})
    out: list[str] = []
    exports: list[str] = []
    last = ""
    for step in range(70):
        names = sorted(vm.graph.nodes)
        if not names:
            break
        name = rng.choice(names)
        roll = rng.random()
        try:
            if roll < 0.55:
                if not (last in names and rng.random() < 0.6):  # (the same node again, most often)
                    last = name
                command = rng.choice(["write 0 512", "write -P 0x5 4096 512", "truncate 64M"])
                out.append(vm.hmp(f'qemu-io {last} "{command}"'))
            elif roll < 0.7:
                opts: dict = {"driver": rng.choice(["raw", "blkdebug"]), "node-name": f"s{step}",
                              "read-only": rng.random() < 0.3}
                opts["image" if opts["driver"] == "blkdebug" else "file"] = name
                if opts["driver"] == "blkdebug" and rng.random() < 0.6:
                    opts["unshare-child-perms"] = ["write"]
                out.append(str(vm.qmp("blockdev-add", opts)))
            elif roll < 0.82:
                exports.append(f"e{step}")
                out.append(str(vm.qmp("block-export-add", {"type": "nbd", "id": f"e{step}", "node-name": name,
                                                           "writable": rng.random() < 0.7})))
            elif roll < 0.9 and exports:
                out.append(str(vm.qmp("block-export-del", {"id": exports.pop(rng.randrange(len(exports)))})))
            else:
                out.append(str(vm.qmp("blockdev-del", {"node-name": name})))
        except QMPError as err:
            out.append(f"error: {err.desc}")
    return out


@pytest.mark.parametrize("seed", range(20))
def test_check_blk_cache_is_the_view(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """perms.check_blk's cache of its last check that passed: on random graphs changed between the checks,
    every reply is the one the view built each time gives; the cache spares some views."""
    stories, views = [], []
    built = 0
    real = perms.PermView.__init__

    def counted(self: perms.PermView, graph: object) -> None:
        nonlocal built
        built += 1
        real(self, graph)

    monkeypatch.setattr(perms.PermView, "__init__", counted)
    for cache in (True, False):
        monkeypatch.setattr(perms, "BLK_CACHE", cache)
        built = 0
        rng = random.Random(seed)
        stories.append(_blk_story(random_graph(rng, 6, child_perms=True), rng))
        views.append(built)
    assert stories[0] == stories[1]
    assert views[0] <= views[1]


def _exported_q() -> Machine:
    """A qcow2 node ``q`` exported read-only over NBD, and a guest write on it that passed (the cache holds it)."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "a.qcow2", "64M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "q", "file": {"driver": "file", "filename": "a.qcow2"}})
    vm.qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}})
    vm.qmp("block-export-add", {"type": "nbd", "id": "e", "node-name": "q", "writable": False})
    assert vm.hmp('qemu-io q "write 0 512"') == ""
    return vm


def test_check_blk_cache_goes_stale_on_each_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that passed, then a change its check reads: the next write's check sees it (a new link that
    unshares writes, then that link gone). The same write again builds no view."""
    vm = _exported_q()
    monkeypatch.setattr(perms, "VERIFY_CACHE", False)
    monkeypatch.setattr(perms, "PermView", None)  # (the cache answers: no view is built)
    assert vm.hmp('qemu-io q "write 0 512"') == ""
    monkeypatch.undo()
    vm.qmp("blockdev-add", {"driver": "blkdebug", "node-name": "d", "image": "q", "unshare-child-perms": ["write"]})
    assert vm.hmp('qemu-io q "write 0 512"') == (
        "Permission conflict on node 'q': permissions 'write' are both required by an unnamed block device (uses "
        "node 'q' as 'root' child) and unshared by node 'd' (uses node 'q' as 'image' child).\r\n")
    vm.qmp("blockdev-del", {"node-name": "d"})
    assert vm.hmp('qemu-io q "write 0 512"') == ""


def test_a_stale_check_blk_cache_is_an_assertion_error() -> None:
    """The test suite checks each answer of the cache again: a change the version missed (here a node made
    read-only behind the graph's back) fails loudly instead of letting a write through."""
    assert perms.VERIFY_CACHE  # (tests/conftest.py)
    vm = _exported_q()
    assert vm.hmp('qemu-io q "write 0 512"') == ""  # (the cache answers, and the check agrees)
    vm.graph.nodes["q"].read_only = True  # (no perm_version bump)
    with pytest.raises(AssertionError, match="cache passed a check that fails now: Block node is read-only"):
        vm.hmp('qemu-io q "write 0 512"')
