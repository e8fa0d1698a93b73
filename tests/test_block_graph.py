"""x-debug-query-block-graph (bitlab/block/xdbg.py) against QEMU 7.2.

QEMU numbers each BlockBackend, block job and node the first time its walk meets it (BlockBackends
oldest first, jobs newest first, nodes oldest first) and sends both lists in reverse walk order. The
expected graph below is the system emulator's answer (automatic node names' numbers left out); the
``qemu`` tests play the stories on real qemu-storage-daemon / qemu-system-x86_64 and on bitlab.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from bitlab import Machine
from bitlab.block.xdbg import link_lines

from .both import on_both
from .graphs import block_graph, random_graph

M = 1 << 20
ALL = ["resize", "write-unchanged", "write", "consistent-read"]
QCOW2_FILE = (["resize", "write", "consistent-read"], ["write-unchanged", "consistent-read"])


def _node(vm: Machine, name: str, image: str, **extra: object) -> None:
    vm.qemu_img("create", "-f", "qcow2", image, "64M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": name,
                            "file": {"driver": "file", "filename": image, "node-name": name + "F"}, **extra})


def drive_backup_running(vm: Machine) -> dict:
    """The system emulator: drive0 written through HMP qemu-io, backed up (slowly) to a node of its own."""
    vm.add_drive("drive0", "64M")
    _node(vm, "tgt", "t.qcow2")
    vm.qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "b0"})
    vm.write("drive0", 0, M, 0x11)
    vm.qmp("blockdev-backup", {"device": "drive0", "target": "tgt", "sync": "full", "speed": 1, "job-id": "j1"})
    return block_graph(vm)


def _edge(parent: int, child: int, name: str, perm: list[str], shared: list[str]) -> dict:
    return {"parent": parent, "child": child, "name": name, "perm": perm, "shared-perm": shared}


# qemu-system-x86_64 7.2, drive_backup_running: 1 drive0's BlockBackend, 2 the filter, 3 the job, 4 tgt,
# 5 drive0's file node, 6 drive0's qcow2 node, 7 tgtF
DRIVE_BACKUP_RUNNING = {
    "nodes": [
        {"id": 2, "type": "block-driver", "name": "#block"},
        {"id": 4, "type": "block-driver", "name": "tgt"},
        {"id": 7, "type": "block-driver", "name": "tgtF"},
        {"id": 6, "type": "block-driver", "name": "#block"},
        {"id": 5, "type": "block-driver", "name": "#block"},
        {"id": 3, "type": "block-job", "name": "j1"},
        {"id": 1, "type": "block-backend", "name": "drive0"},
    ],
    "edges": [
        _edge(2, 6, "file", ["write", "consistent-read"], ["write-unchanged", "consistent-read"]),
        _edge(2, 4, "target", ["write"], ["write-unchanged", "write", "consistent-read"]),
        _edge(4, 7, "file", *QCOW2_FILE),
        _edge(6, 5, "file", *QCOW2_FILE),
        _edge(3, 2, "main node", [], ALL),
        _edge(3, 4, "target", [], ALL),
        _edge(1, 2, "root", ["write", "consistent-read"], ALL),
    ],
}


def test_graph_during_a_backup_as_the_system_emulator_sends_it():
    got = drive_backup_running(Machine())
    assert got == DRIVE_BACKUP_RUNNING
    assert Machine().qmp("x-debug-query-block-graph") == {"nodes": [], "edges": []}


def test_wire_member_order_as_qemu():
    vm = Machine()
    drive_backup_running(vm)
    reply = vm.execute({"execute": "x-debug-query-block-graph"})["return"]
    assert list(reply) == ["edges", "nodes"]
    assert list(reply["nodes"][0]) == ["name", "type", "id"]
    assert list(reply["edges"][0]) == ["name", "parent", "shared-perm", "perm", "child"]


def test_a_job_lets_go_of_its_nodes_when_cleaned_up():
    """Pending (auto-finalize off): the job still holds the filter and the target; once finalized it is
    listed (concluded, auto-dismiss off) without links; dismissed, it is gone."""
    vm = Machine()
    _node(vm, "a", "a.qcow2")
    _node(vm, "t", "t.qcow2")
    vm.qmp("blockdev-backup", {"device": "a", "target": "t", "sync": "full", "job-id": "j",
                               "auto-finalize": False, "auto-dismiss": False})
    vm.run()
    pending = block_graph(vm)
    assert {e["name"] for e in pending["edges"] if e["parent"] == _id(pending, "j")} == {"main node", "target"}
    vm.qmp("job-finalize", {"id": "j"})
    vm.run()
    concluded = block_graph(vm)
    assert _id(concluded, "j") is not None
    assert not [e for e in concluded["edges"] if _id(concluded, "j") in (e["parent"], e["child"])]
    assert not any(n["name"] == "#block" for n in concluded["nodes"] if n["type"] == "block-driver"
                   and n["name"] not in ("a", "aF", "t", "tF"))
    vm.qmp("job-dismiss", {"id": "j"})
    assert _id(block_graph(vm), "j") is None


def _id(graph: dict, name: str) -> int | None:
    return next((node["id"] for node in graph["nodes"] if node["name"] == name), None)


# -- stories played on real QEMU 7.2 and on bitlab ---------------------------------------------

def exports_and_two_jobs(vm: Machine) -> list[dict]:
    """qemu-storage-daemon: exports (writable and not) on two nodes, a backup of each: one finishes and
    waits to be dismissed, the other runs on slowly; the graph at each step."""
    for name in ("a", "b", "t1", "t2"):
        _node(vm, name, f"{name}.qcow2")
    vm.qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "x.sock"}}})
    vm.qmp("block-export-add", {"type": "nbd", "id": "e1", "node-name": "a", "writable": True})
    vm.qmp("block-export-add", {"type": "nbd", "id": "e2", "node-name": "b"})
    graphs = [block_graph(vm)]
    vm.qmp("blockdev-backup", {"device": "a", "target": "t1", "sync": "full", "job-id": "j1", "auto-dismiss": False})
    vm.run()
    graphs.append(block_graph(vm))
    vm.qmp("blockdev-backup", {"device": "b", "target": "t2", "sync": "full", "job-id": "j2", "speed": 1,
                               "x-perf": {"max-chunk": 65536}})
    graphs.append(block_graph(vm))
    vm.qmp("block-export-del", {"id": "e1"})
    vm.qmp("job-dismiss", {"id": "j1"})
    graphs.append(block_graph(vm))
    return graphs


def devices_exports_and_drive_backup(vm: Machine) -> list[dict]:
    """The system emulator: a drive added after an export (BlockBackends in the order they were made), an
    overlay over a read-only backing file, a drive-backup whose target image is opened for the job."""
    _node(vm, "base", "base.qcow2", **{"read-only": True})
    vm.qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "ov.qcow2")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "ov", "backing": "base",
                            "file": {"driver": "file", "filename": "ov.qcow2"}})
    vm.qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "x.sock"}}})
    vm.qmp("block-export-add", {"type": "nbd", "id": "e", "node-name": "base"})
    vm.add_drive("drive0", "64M")
    graphs = [block_graph(vm)]
    vm.write("drive0", 0, M, 0x22)
    vm.qmp("drive-backup", {"device": "drive0", "target": "d.qcow2", "format": "qcow2", "sync": "full",
                            "job-id": "jd", "speed": 1, "x-perf": {"max-chunk": 65536}})
    _node(vm, "sn", "sn.qcow2")
    vm.qmp("blockdev-backup", {"device": "ov", "target": "sn", "sync": "none", "job-id": "jn"})
    graphs.append(block_graph(vm))
    vm.qmp("block-job-cancel", {"device": "jd"})
    vm.qmp("block-job-cancel", {"device": "jn"})
    vm.run()
    graphs.append(block_graph(vm))
    return graphs


def grouped_transaction_fails(vm: Machine) -> list[dict]:
    """A grouped transaction whose second action fails: nothing is left of the first job."""
    for name in ("a", "t1", "t2"):
        _node(vm, name, f"{name}.qcow2")
    reply = vm.execute({"execute": "transaction", "arguments": {
        "actions": [{"type": "blockdev-backup", "data": {"device": "a", "target": "t1", "sync": "full",
                                                          "job-id": "j1"}},
                    {"type": "blockdev-backup", "data": {"device": "a", "target": "nope", "sync": "full",
                                                          "job-id": "j2"}}],
        "properties": {"completion-mode": "grouped"}}})
    assert "error" in reply
    return [block_graph(vm)]


def backup_refused_after_its_filter(vm: Machine) -> dict:
    """A second backup of a node under a running backup's filter fails at the max-chunk check, after
    bdrv_cbw_append: its own filter came and went, and the first filter's link to the node was detached
    and attached again (now its newest child). Conformance seed 1169654802, scenario 165."""
    _node(vm, "d0", "d0.qcow2")
    _node(vm, "t6", "t6.qcow2")
    vm.qemu_img("create", "-f", "qcow2", "-o", "cluster_size=131072", "t7.qcow2", "64M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "t7", "file": {"driver": "file", "filename": "t7.qcow2"}})
    slow = {"sync": "full", "speed": 1, "x-perf": {"max-chunk": 65536}}
    vm.qmp("blockdev-backup", {"job-id": "j6", "device": "d0", "target": "t6", **slow})
    reply = vm.execute({"execute": "blockdev-backup", "arguments": {"job-id": "j7", "device": "d0", "target": "t7",
                                                                    **slow}})
    assert reply["error"]["desc"] == "Required max-chunk (65536) is less than backup cluster size (131072)"
    return block_graph(vm)


STORIES: list[tuple[Callable[[Machine], object], str]] = [
    (drive_backup_running, "system"),
    (exports_and_two_jobs, "qsd"),
    (exports_and_two_jobs, "system"),
    (devices_exports_and_drive_backup, "system"),
    (grouped_transaction_fails, "qsd"),
    (backup_refused_after_its_filter, "qsd"),
]


@pytest.mark.qemu
@pytest.mark.parametrize("story, daemon", STORIES, ids=[f"{s.__name__}-{d}" for s, d in STORIES])
def test_graph_as_real_qemu(story, daemon):
    real, sim = on_both(story, daemon=daemon)
    assert sim == real


def test_links_as_text_in_walk_order():
    assert link_lines(DRIVE_BACKUP_RUNNING) == [
        "drive0 -root-> #block: takes read write; shares all",
        "j1 -target-> tgt: takes nothing; shares all",
        "j1 -main node-> #block: takes nothing; shares all",
        "#block -file-> #block: takes read write resize; shares read unchanged",
        "tgt -file-> tgtF: takes read write resize; shares read unchanged",
        "#block -target-> tgt: takes write; shares read write unchanged",
        "#block -file-> #block: takes read write; shares read unchanged",
    ]
    exported = {"nodes": [{"id": 1, "type": "block-backend", "name": ""},
                          {"id": 2, "type": "block-driver", "name": "a"}],
                "edges": [{"parent": 1, "child": 2, "name": "root", "perm": ["consistent-read"],
                           "shared-perm": ["write-unchanged", "write", "consistent-read"]}]}
    assert link_lines(exported) == ["(export) -root-> a: takes read; shares read write unchanged"]


@pytest.mark.qemu
def test_random_graphs_as_qemu_shows_them():
    """Random graphs of file, qcow2, raw and blkdebug nodes (with child permissions), read-only or not,
    nodes taken by reference: the whole graph as each daemon shows it."""
    for seed in range(12):
        for daemon in ("system", "qsd"):
            real, sim = on_both(lambda vm, seed=seed: block_graph(random_graph(random.Random(seed), 8, True, vm)),
                                daemon=daemon)
            assert sim == real, (seed, daemon)


def test_a_refused_backup_reattaches_the_links_its_filter_moved():
    graph = backup_refused_after_its_filter(Machine())
    names = {n["id"]: n["name"] for n in graph["nodes"]}
    filter_links = [(e["name"], names[e["child"]]) for e in graph["edges"] if names[e["parent"]] == "#block"
                    and names[e["child"]] in ("d0", "t6")]
    assert filter_links == [("target", "t6"), ("file", "d0")]  # walk order reversed: 'file' is the newest child

