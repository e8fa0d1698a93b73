"""x-debug-query-block-graph on qemu-storage-daemon with the real backend's hidden NBD exports in place.

Taking the exports away for the query drained their nodes and woke a backup asleep on its rate limit
(``bitlab conformance --seed 14013``, scenario 66): the backend now leaves them in place and rewrites the
reply (bitlab.backends.xdbg_hide). The graphs below are qemu-storage-daemon 7.2's replies with the exports
and without them (taken away), for a throttled backup of d0 to t, a raw node with offset and size on t's
file (read-only), and a blkdebug node over null-co.
"""

from __future__ import annotations

import copy

import pytest

from bitlab.backends.xdbg_hide import Export, NodeInfo, without_exports
from bitlab.conformance.runner import compare, play

M = 1 << 20
R, W, U, Z = "consistent-read", "write", "write-unchanged", "resize"


def _edge(parent: int, child: int, name: str, perm: list[str], shared: list[str]) -> dict:
    return {"parent": parent, "child": child, "name": name, "perm": perm, "shared-perm": shared}


def _nodes(pairs: list[tuple[int, str, str]]) -> list[dict]:
    return [{"id": i, "type": kind, "name": name} for i, kind, name in pairs]


WITH = {"nodes": _nodes([(8, "block-driver", "#block423"), (14, "block-driver", "#block347"),
                         (6, "block-driver", "bd"), (4, "block-driver", "r"), (13, "block-driver", "#block261"),
                         (2, "block-driver", "t"), (12, "block-driver", "#block182"), (11, "block-driver", "d0"),
                         (10, "block-driver", "#block014"), (9, "block-job", "j"), (7, "block-backend", ""),
                         (5, "block-backend", ""), (3, "block-backend", ""), (1, "block-backend", "")]),
        "edges": [_edge(8, 11, "file", [W, R], [U, R]), _edge(8, 2, "target", [W], [U, W, R]),
                  _edge(6, 14, "image", [W, R], [U, W, R]), _edge(4, 13, "file", [R], [U, W, R]),
                  _edge(2, 12, "file", [Z, W, R], [U, R]), _edge(11, 10, "file", [Z, W, R], [U, R]),
                  _edge(9, 8, "main node", [], [Z, U, W, R]), _edge(9, 2, "target", [], [Z, U, W, R]),
                  _edge(7, 8, "root", [W, R], [U, W, R]), _edge(5, 6, "root", [W, R], [U, W, R]),
                  _edge(3, 4, "root", [R], [U, W, R]), _edge(1, 2, "root", [W, R], [U, W, R])]}
WITHOUT = {"nodes": _nodes([(3, "block-driver", "#block423"), (10, "block-driver", "#block347"),
                            (9, "block-driver", "bd"), (8, "block-driver", "r"), (7, "block-driver", "#block261"),
                            (2, "block-driver", "t"), (6, "block-driver", "#block182"), (5, "block-driver", "d0"),
                            (4, "block-driver", "#block014"), (1, "block-job", "j")]),
           "edges": [_edge(3, 5, "file", [], [U, R]), _edge(3, 2, "target", [W], [U, W, R]),
                     _edge(9, 10, "image", [], [Z, U, W, R]), _edge(8, 7, "file", [], [U, W, R]),
                     _edge(2, 6, "file", [Z, W, R], [U, R]), _edge(5, 4, "file", [Z, W, R], [U, R]),
                     _edge(1, 3, "main node", [], [Z, U, W, R]), _edge(1, 2, "target", [], [Z, U, W, R])]}
EXPORTS = [Export("#block423", True), Export("bd", True), Export("r", False), Export("t", True)]
RAW_FILENAME = 'json:{"offset": 0, "driver": "raw", "size": 65536, "file": {"driver": "file", "filename": "t.qcow2"}}'
INFOS = {"#block423": NodeInfo("copy-before-write", False, "d0.qcow2"), "bd": NodeInfo("blkdebug", False),
         "r": NodeInfo("raw", True, RAW_FILENAME), "t": NodeInfo("qcow2", False, "t.qcow2"),
         "d0": NodeInfo("qcow2", False, "d0.qcow2")}


def test_the_exports_leave_the_reply_as_qemu_shows_it_without_them():
    assert without_exports(copy.deepcopy(WITH), EXPORTS, INFOS) == WITHOUT


def test_nothing_to_hide_leaves_the_reply_alone():
    assert without_exports(copy.deepcopy(WITHOUT), [], INFOS) == WITHOUT


@pytest.mark.parametrize("infos", [
    {**INFOS, "bd": NodeInfo("blkdebug", False, "", own_perms=True)},  # take-child-perms: not in the reply
    {**INFOS, "#block423": NodeInfo("throttle", False)},  # a driver without a known rule
    {k: v for k, v in INFOS.items() if k != "r"},  # a node not described
])
def test_what_the_reply_cannot_tell_is_asked_again(infos):
    assert without_exports(copy.deepcopy(WITH), EXPORTS, infos) is None


def test_a_rule_that_does_not_reproduce_the_reply_gives_up():
    graph = copy.deepcopy(WITH)
    graph["edges"][2]["perm"] = [R]  # blkdebug taking less than it would pass through
    assert without_exports(graph, EXPORTS, INFOS) is None


def test_an_export_not_in_the_reply_gives_up():
    assert without_exports(copy.deepcopy(WITH), [*EXPORTS, Export("d0", True)], INFOS) is None


def _alike(middle: bool) -> dict:
    """The user's own writable export on t (BlockBackend 1), with or without a read-only one on u next
    (3), then the backend's on t (5 or 3)."""
    last = 5 if middle else 3
    nodes = [(4 if middle else 5, "block-driver", "u"), (6 if middle else 4, "block-driver", "#block1"),
             (2, "block-driver", "t"), (last, "block-backend", "")]
    edges = [_edge(2, nodes[1][0], "file", [Z, W, R], [U, R]), _edge(last, 2, "root", [W, R], [U, W, R])]
    if middle:
        nodes.append((3, "block-backend", ""))
        edges.append(_edge(3, 4, "root", [R], [U, W, R]))
    return {"nodes": _nodes([*nodes, (1, "block-backend", "")]),
            "edges": [*edges, _edge(1, 2, "root", [W, R], [U, W, R])]}


def test_alike_backends_side_by_side_leave_one_graph():
    got = without_exports(_alike(False), [Export("t", True)], {"t": NodeInfo("qcow2", False)})
    assert got == {"nodes": _nodes([(4, "block-driver", "u"), (3, "block-driver", "#block1"),
                                    (2, "block-driver", "t"), (1, "block-backend", "")]),
                   "edges": [_edge(2, 3, "file", [Z, W, R], [U, R]), _edge(1, 2, "root", [W, R], [U, W, R])]}


def test_alike_backends_apart_cannot_be_told():
    # without 1: 3 -> u is numbered 1; without 5: 1 -> t is: which one is the backend's, the reply cannot say
    assert without_exports(_alike(True), [Export("t", True)], {"t": NodeInfo("qcow2", False)}) is None


NEWEST_IS_OURS = {"nodes": _nodes([(4, "block-driver", "u"), (5, "block-driver", "#block1"), (2, "block-driver", "t"),
                                     (3, "block-backend", ""), (1, "block-backend", "")]),
                  "edges": [_edge(2, 5, "file", [Z, W, R], [U, R]), _edge(3, 4, "root", [R], [U, W, R]),
                            _edge(1, 2, "root", [W, R], [U, W, R])]}
OLDEST_IS_OURS = {"nodes": _nodes([(2, "block-driver", "u"), (5, "block-driver", "#block1"), (4, "block-driver", "t"),
                                   (3, "block-backend", ""), (1, "block-backend", "")]),
                  "edges": [_edge(4, 5, "file", [Z, W, R], [U, R]), _edge(3, 4, "root", [W, R], [U, W, R]),
                            _edge(1, 2, "root", [R], [U, W, R])]}


@pytest.mark.parametrize("place, want", [(1, NEWEST_IS_OURS), (0, OLDEST_IS_OURS)])
def test_the_exports_order_tells_alike_backends_apart(place, want):
    # query-block-exports: two exports on t, the backend's the newer (1) or the older (0)
    assert without_exports(_alike(True), [Export("t", True, place, 2)], {"t": NodeInfo("qcow2", False)}) == want


def _qmp(execute: str, arguments: dict | None = None) -> dict:
    return {"qmp": {"execute": execute, **({"arguments": arguments} if arguments is not None else {})}}


def _asleep_then_graph() -> list[dict]:
    """seed 14013 scenario 66, reduced: a guest write copies all a throttled backup had left while it sleeps
    on its rate limit; the graph query must not wake it (it still runs, and can be cancelled)."""
    steps: list[dict] = []
    for name in ("d0", "t"):
        steps += [{"qemu-img": ["create", "-f", "qcow2", f"{name}.qcow2", "4M"]},
                  _qmp("blockdev-add", {"driver": "qcow2", "node-name": name,
                                        "file": {"driver": "file", "filename": f"{name}.qcow2"}})]
    return [*steps, _qmp("block-dirty-bitmap-add", {"node": "d0", "name": "b0"}),
            {"write": {"node": "d0", "offset": M, "length": 4 * 65536, "pattern": 2}},
            _qmp("blockdev-backup", {"job-id": "j", "device": "d0", "target": "t", "sync": "incremental",
                                     "bitmap": "b0", "speed": 1, "x-perf": {"max-chunk": 65536}}),
            {"write": {"node": "d0", "offset": M, "length": 4 * 65536, "pattern": 3}},
            {"sleep": 0.05}, _qmp("x-debug-query-block-graph"), {"sleep": 0.05}, _qmp("query-jobs"),
            _qmp("job-cancel", {"id": "j"}), {"settle-jobs": True}]


def test_the_graph_query_does_not_wake_a_sleeping_backup():
    replies = play({"name": "t", "steps": _asleep_then_graph()}, "sim").replies
    assert replies[-3] == {"return": [{"current-progress": 262144, "status": "running", "total-progress": 262144,
                                       "type": "backup", "id": "j"}]}
    assert replies[-2] == {"return": {}}


@pytest.mark.qemu
def test_the_graph_query_does_not_wake_a_sleeping_backup_on_real_qemu():
    scenario = {"name": "asleep-then-graph", "steps": _asleep_then_graph()}
    real = play(scenario, "qemu", "qsd")
    assert real.error is None
    assert compare(scenario, real, play(scenario, "sim")) == []
