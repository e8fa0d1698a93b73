"""Transactions and backup jobs: the shortcuts their prepare and run take, against what they stand in for.

Each test fails if a shortcut gave anything but what the general code gives (or if work a shortcut
removed came back).
"""

from __future__ import annotations

import copy

from bitlab import Machine
from bitlab.jobs import block_copy
from bitlab.machine import _frozen
from bitlab.qmp_order import wire_order

M = 1 << 20


def test_a_blkdebug_source_classifies_the_first_task_once(monkeypatch) -> None:
    """Over blkdebug only zero tasks may be batched: the bulk path makes the per-task path's first task to
    see whether it is one, and the per-task path takes that task as it is (block status asked once)."""
    starts: list[int] = []
    real = block_copy.BlockCopy.classify

    def counted(self, start: int, end: int):
        starts.append(start)
        return real(self, start, end)

    monkeypatch.setattr(block_copy.BlockCopy, "classify", counted)
    vm = Machine()
    vm.add_drive("drive0", "4M", blkdebug={"inject-error": []})
    vm.write("drive0", 0, 65536, 0x11)  # the first task reads data
    vm.add_drive("target0", "4M")
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "drive0", "target": "target0", "sync": "full"})
    vm.run()
    assert starts.count(0) == 1
    assert vm.contents("target0") == vm.contents("drive0") == [(0, 65536, 0x11), (65536, 4 * M, 0)]


def test_job_status_changes_are_in_wire_order() -> None:
    """JOB_STATUS_CHANGE's data is built in wire order: exactly what wire_order makes of it."""
    vm = Machine()
    vm.add_drive("drive0", "4M")
    vm.add_drive("target0", "4M")
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "drive0", "target": "target0", "sync": "full"})
    vm.run()
    changes = [ev["data"] for ev in vm.events if ev["event"] == "JOB_STATUS_CHANGE"]
    assert [c["status"] for c in changes] == ["created", "running", "paused", "running", "waiting",
                                                "pending", "concluded", "null"]
    for data in changes:
        expected = wire_order({"id": data["id"], "status": data["status"]})
        assert list(data.items()) == list(expected.items())


def test_frozen_image_is_a_copy_with_its_own_runs() -> None:
    """A backup's captured image: copy.copy of the file, its runs copied, no host layout."""
    vm = Machine()
    vm.add_drive("drive0", "4M")
    vm.write("drive0", 0, 65536, 0x11)
    image = vm.images["drive0.qcow2"]
    image.layout  # noqa: B018 (built: the copy must not keep it)
    frozen, plain = _frozen(image), copy.copy(image)
    assert type(frozen) is type(image)
    assert frozen.__dict__.keys() == plain.__dict__.keys()
    assert all(frozen.__dict__[k] is plain.__dict__[k] for k in plain.__dict__ if k not in ("data", "_layout"))
    assert frozen._layout is None and frozen.data is not image.data
    assert frozen.data.runs()[0].tolist() == image.data.runs()[0].tolist()
    vm.write("drive0", 0, 65536, 0x22)  # the live file changes, the copy does not
    assert frozen.data.runs()[1].tolist() != image.data.runs()[1].tolist()


def _replace_node_reference(graph, old, new) -> None:
    """BlockGraph._replace_node as first written: new's subtree walked first, every node's links listed
    (the BlockBackends and guests then move as the graph moves them)."""
    from bitlab.block.node import subtree_ids

    inside = subtree_ids(new, lambda node: node.children)
    moved: list[tuple] = []
    for parent in list(graph.nodes.values()):
        roles = [role for role, child in parent.children if child is old]
        if roles and id(parent) not in inside:
            moved += [(id(parent), role) for role in roles]
            graph._replace_child(parent, old, new, graph.link_order)
    graph._move_backends(old, new, moved)


def _graph_state(vm: Machine) -> tuple:
    """Every node's links and parent count, the device's node, and every link's order stamp (by names)."""
    g = vm.graph
    names = {id(n): name for name, n in g.nodes.items()}
    links = {name: [(role, child.node_name) for role, child in n.children] for name, n in g.nodes.items()}
    order = sorted((str(names.get(a, a)), b, stamp) for (a, b), stamp in g.link_order.items())
    return links, {d: n.node_name for d, n in g.devices.items()}, order, {n: g.nodes[n].parents for n in g.nodes}


def test_replace_node_is_the_reference_walk() -> None:
    """Random graphs with a device and nodes over nodes (a node inside the new node's subtree among the old
    one's parents, too, as a sync=none target is): moving every parent of a node to a new filter above it
    gives the links, link order and parent counts the reference walk gives."""
    import random

    from bitlab.block.cbw import CbwNode
    from tests.graphs import random_graph

    inside = compared = 0
    for seed in range(30):
        states = []
        for replace in (lambda g, o, n: g._replace_node(o, n), _replace_node_reference):
            rng = random.Random(seed)
            vm = random_graph(random.Random(seed), 8)
            nodes = list(vm.graph.nodes.values())
            if not nodes:
                break
            vm.graph.devices["dev"] = nodes[0]
            vm.graph.new_backend(("device", "dev"))
            old = rng.choice(nodes)
            new = CbwNode(f"f{seed}", cluster_size=65536, before_write=lambda o, n: None, size=64 << 20)
            vm.graph.nodes[new.node_name] = new
            vm.graph._attach(new, "file", old)
            others = [n for n in nodes if n is not old and id(n) not in _below(old)]
            if others and rng.random() < 0.5:  # a parent of old inside new's subtree: it keeps its link
                other = rng.choice(others)
                vm.graph._attach(other, "backing", old)
                vm.graph._attach(new, "target", other)
                inside += replace is _replace_node_reference
            replace(vm.graph, old, new)
            states.append(_graph_state(vm))
        assert states[:1] == states[1:]
        compared += len(states) == 2
    assert inside > 0 and compared > 20


def _below(node) -> set[int]:
    from bitlab.block.node import subtree_ids

    return subtree_ids(node, lambda n: n.children)


def test_a_backup_uses_exactly_its_node_ids() -> None:
    """BackupJob.uses (identity tests) is Job.uses (membership in node_ids) for every node of the graph."""
    from bitlab.jobs.job import Job

    vm = Machine()
    vm.add_drive("drive0", "4M")
    vm.add_drive("target0", "4M")
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "drive0", "target": "target0", "sync": "full",
                               "auto-finalize": False})
    (job,) = vm.jobs.jobs
    nodes = list(vm.graph.nodes.values())
    assert sum(job.uses(n) for n in nodes) == 3
    assert all(job.uses(n) == Job.uses(job, n) for n in nodes)


def test_the_job_link_check_a_backup_skips_would_pass() -> None:
    """BackupCheck.job skips its check when the filter had a parent and replace()'s check passed: on random
    graphs (devices and exports on random nodes, backups between random nodes) the skipped check, run on the
    view anyway, finds nothing; where the filter had no parent the check runs, and sometimes fails."""
    import random

    from bitlab.block import perms
    from bitlab.errors import QMPError
    from tests.graphs import random_graph

    outcomes = set()
    for seed in range(60):
        rng = random.Random(seed)
        vm = random_graph(rng, 8, child_perms=True)
        nodes = list(vm.graph.nodes.values())
        if len(nodes) < 2:
            continue
        for node in rng.sample(nodes, rng.randint(0, 2)):  # devices on some nodes
            name = f"dev{len(vm.graph.devices)}"
            vm.graph.devices[name] = node
            vm.graph.new_backend(("device", name))
        for _ in range(4):
            source, target = rng.sample(nodes, 2)
            check = perms.BackupCheck(vm.graph, source, target, "#f")
            try:
                check.create(target)
                check.replace()
            except QMPError:
                continue
            had_parents = bool(check.view.parents.get(check.cbw))
            check.view.add_blk(check.cbw, perms.Blk("backup job 'j'", 0, perms.ALL, "main node"))
            error = check.view.first_error(check.cbw)
            if had_parents:
                assert error is None
            outcomes.add((had_parents, error is None))
    assert {(True, True), (False, True), (False, False)} <= outcomes
