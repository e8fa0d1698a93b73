"""``x-debug-query-block-graph`` as QEMU would answer it without the real backend's hidden NBD exports.

Taking the exports away for the query (``block-export-del``, then adding them back) drains their nodes,
which wakes a backup asleep on its rate limit. Instead the query runs with them in place and its reply
is rewritten:

- each export's BlockBackend (an unnamed ``block-backend`` whose ``root`` link goes to the exported node,
  taking read, and write if writable, sharing all but resize) and its link go; where the user's own exports
  on that node look the same, every way to pick the backend's must give the same graph, or it gives up;
- the links below an exported node take and share what their drivers' ``bdrv_child_perm`` gives for the
  parents left (QEMU 7.2's ``bdrv_default_perms`` and the drivers' own rules, block.c, raw-format.c,
  blkdebug.c, copy-before-write.c); each rule is checked first against the reply itself (the rule applied
  to the parents with the export must give the permissions QEMU shows), and a driver without a known rule
  or a rule that does not reproduce the reply gives up (None: the caller then asks QEMU without them);
- the objects are numbered again as ``bdrv_get_xdbg_block_graph`` numbers them: in walk order, each the
  first time the walk meets it (as a node, or as the child of a link).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..block.perms import (
    ALL,
    CBW_TARGET_PERMS,
    READ,
    RESIZE,
    WRITE,
    WRITE_UNCHANGED,
    cbw_file_perms,
    cow_perms,
    filter_perms,
    storage_perms,
)

BITS = {"consistent-read": READ, "write": WRITE, "write-unchanged": WRITE_UNCHANGED, "resize": RESIZE}
HIGH_FIRST = ("resize", "write-unchanged", "write", "consistent-read")  # the order QEMU lists them in
Perms = tuple[int, int]  # (perm, shared)
MAX_CHOICES = 64  # ways to pick the exports' BlockBackends among alike ones worth trying


@dataclass(frozen=True)
class Export:
    """One of the backend's exports: the node it is attached to, whether it is writable and, where known,
    its place among all the exports on that node (the user's too), oldest first, and how many there are
    (query-block-exports lists them newest first; each made its BlockBackend when it was added)."""

    node: str
    writable: bool
    place: int = 0
    on_node: int = 0


@dataclass(frozen=True)
class NodeInfo:
    """What query-named-block-nodes says of a node that the rules need."""

    driver: str
    read_only: bool
    filename: str = ""
    own_perms: bool = False  # blkdebug: take-child-perms or unshare-child-perms may have been given


def _bits(names: Iterable[str]) -> int:
    perm = 0
    for name in names:
        perm |= BITS[name]
    return perm


def _names(perm: int) -> list[str]:
    return [name for name in HIGH_FIRST if perm & BITS[name]]


# -- the drivers' child permissions (QEMU 7.2): bitlab.block.perms' rules ------------------------------------
def _raw_data(node: NodeInfo) -> list[bool]:
    """raw_open: with an offset or a size the child is a DATA child, else FILTERED (both show in the
    node's json: filename, the driver's strong options); both if that cannot be read."""
    if not node.filename.startswith("json:"):
        return [False]
    try:
        opts = json.loads(node.filename[5:])
    except ValueError:
        return [True, False]
    return [bool(opts.get("offset")) or "size" in opts]


Rule = Callable[[int, int, bool], Perms]  # (cumulative perm, cumulative shared, has parents) -> child perms


def rules(node: NodeInfo, role: str, roles: set[str]) -> list[Rule]:
    """The candidate child_perm rules of ``node``'s ``role`` link (``roles``: all its links' names); [] if
    unknown. Several only where the reply alone cannot tell them apart (the caller checks each)."""
    drv = node.driver
    if drv == "qcow2":
        if role == "backing":
            return [lambda p, s, _: cow_perms(p, s)]
        if role in ("file", "data-file"):
            metadata, data = role == "file", role == "data-file" or "data-file" not in roles
            return [lambda p, s, _: storage_perms(p, s, metadata=metadata, data=data, writable=not node.read_only)]
        return []
    if drv == "raw" and role == "file":
        def raw(data: bool) -> Rule:
            def rule(p: int, s: int, _: bool) -> Perms:
                if not data:
                    return filter_perms(p, s)
                nperm, nshared = storage_perms(p, s, metadata=False, data=True, writable=False)
                return (nperm & ~(WRITE | RESIZE)) | (p & (WRITE | RESIZE)), nshared  # raw_child_perm
            return rule
        return [raw(data) for data in _raw_data(node)]
    if drv == "blkdebug" and role == "image" and not node.own_perms:
        return [lambda p, s, _: filter_perms(p, s)]
    if drv == "throttle" and role == "file":  # bdrv_filter_default_perms
        return [lambda p, s, _: filter_perms(p, s)]
    if drv == "snapshot-access" and role == "file":
        return [lambda p, s, _: (0, ALL)]
    if drv == "copy-before-write":
        if role == "target":
            return [lambda p, s, _: CBW_TARGET_PERMS]
        if role == "file":
            return [cbw_file_perms]
    return []


# -- the walk ----------------------------------------------------------------------------------------------
def _walk(nodes: list[dict], edges: list[dict]) -> list[tuple[dict, list[dict]]] | None:
    """The reply in bdrv_get_xdbg_block_graph's walk order: each object with its links (both lists were
    built by prepending); None if the reply is not in that shape."""
    walk: list[tuple[dict, list[dict]]] = []
    pending = edges[::-1]
    i = 0
    for node in nodes[::-1]:
        own = []
        while i < len(pending) and pending[i]["parent"] == node["id"]:
            own.append(pending[i])
            i += 1
        walk.append((node, own))
    return walk if i == len(pending) else None


def _numbering(walk: list[tuple[dict, list[dict]]]) -> dict[int, int]:
    """xdbg_graph_node_num over the walk: old id -> number (count + 1 the first time it is met)."""
    ids: dict[int, int] = {}
    for node, own in walk:
        ids.setdefault(node["id"], len(ids) + 1)
        for edge in own:
            ids.setdefault(edge["child"], len(ids) + 1)
    return ids


def _choices(walk: list[tuple[dict, list[dict]]], names: dict[int, str], exports: list[Export]) -> list[set[int]]:
    """The ways to pick the exports' BlockBackends from the reply: each export's is an unnamed BlockBackend
    whose one link is a ``root`` link to its node, taking and sharing what it does. Where the unnamed
    BlockBackends on a node are as many as the exports there, they are those exports in the order they were
    added (the walk goes oldest first): one way. Otherwise several alike on one node (the user's own export,
    writable as the backend's) give several ways; [] if an export has none, or past MAX_CHOICES ways."""
    share = _names(ALL & ~RESIZE)
    on_node: dict[str, list[tuple[int, dict]]] = {}
    for node, own in walk:
        if node["type"] == "block-backend" and node["name"] == "" and len(own) == 1 and own[0]["name"] == "root":
            on_node.setdefault(names.get(own[0]["child"], ""), []).append((node["id"], own[0]))
    wanted: dict[tuple[str, bool], int] = {}
    ways: list[list[tuple[int, ...]]] = []
    for exp in exports:
        perm = _names(READ | (WRITE if exp.writable else 0))
        here = on_node.get(exp.node, [])
        if exp.on_node and len(here) == exp.on_node:
            bid, edge = here[exp.place]
            if edge["perm"] != perm or edge["shared-perm"] != share:
                return []
            ways.append([(bid,)])
        else:
            wanted[(exp.node, exp.writable)] = wanted.get((exp.node, exp.writable), 0) + 1
    for (node, writable), count in wanted.items():
        perm = _names(READ | (WRITE if writable else 0))
        alike = [bid for bid, edge in on_node.get(node, []) if edge["perm"] == perm and edge["shared-perm"] == share]
        if len(alike) < count:
            return []
        ways.append(list(itertools.combinations(alike, count)))
    if math.prod(len(w) for w in ways) > MAX_CHOICES:
        return []
    return [set().union(*pick) for pick in itertools.product(*ways)]


def _parents(walk: list[tuple[dict, list[dict]]]) -> dict[int, list[dict]]:
    """Each object's parent links."""
    parents: dict[int, list[dict]] = {}
    for _, own in walk:
        for edge in own:
            parents.setdefault(edge["child"], []).append(edge)
    return parents


def _cumulative(links: list[dict]) -> Perms:
    perm, shared = 0, ALL
    for edge in links:
        perm, shared = perm | _bits(edge["perm"]), shared & _bits(edge["shared-perm"])
    return perm, shared


def _child_perms(node: NodeInfo, edge: dict, roles: set[str], before: tuple[Perms, bool],
                 after: tuple[Perms, bool]) -> Perms | None:
    """The perms of ``edge`` (a link of ``node``) for the parents ``after``; None unless exactly one answer
    is consistent with the reply (the rule applied to ``before`` must give what the link shows)."""
    shown = (_bits(edge["perm"]), _bits(edge["shared-perm"]))
    (perm, shared), parents = before
    answers = {rule(*after[0], after[1]) for rule in rules(node, edge["name"], roles)
               if rule(perm, shared, parents) == shown}
    return answers.pop() if len(answers) == 1 else None


def without_exports(graph: dict, exports: list[Export], infos: dict[str, NodeInfo]) -> dict | None:
    """``graph`` (an x-debug-query-block-graph reply) as it would be without ``exports``; None where that
    cannot be known from the reply (the caller then asks QEMU without them)."""
    walk = _walk(graph["nodes"], graph["edges"])
    if walk is None or any(old != new for old, new in _numbering(walk).items()):
        return None
    names = {node["id"]: node["name"] for node, _ in walk if node["type"] == "block-driver"}
    answers = [_without(walk, names, ours, infos) for ours in _choices(walk, names, exports)]
    if not answers or any(answer is None or answer != answers[0] for answer in answers):
        return None  # (two ways giving two graphs: which BlockBackend is the backend's, the reply cannot tell)
    return {**graph, **answers[0]}


def _without(walk: list[tuple[dict, list[dict]]], names: dict[int, str], ours: set[int],
             infos: dict[str, NodeInfo]) -> dict | None:
    """The nodes and edges of the walk without the BlockBackends ``ours``; None where it cannot tell."""
    kept = [(node, [dict(edge) for edge in own]) for node, own in walk if node["id"] not in ours]
    if not _settle(kept, names, infos, _parents(walk), _parents(kept)):
        return None
    ids = _numbering(kept)
    nodes = [{**node, "id": ids[node["id"]]} for node, _ in kept]
    edges = [{**edge, "parent": ids[edge["parent"]], "child": ids[edge["child"]]} for _, own in kept for edge in own]
    return {"nodes": nodes[::-1], "edges": edges[::-1]}


def _settle(kept: list[tuple[dict, list[dict]]], names: dict[int, str], infos: dict[str, NodeInfo],
            parents_before: dict[int, list[dict]], parents_after: dict[int, list[dict]]) -> bool:
    """Give the nodes' links (in ``kept``, changed in place) the perms for the parents left, parents before
    children; False where a rule is unknown or does not reproduce the reply."""
    links = {node["id"]: own for node, own in kept if node["type"] == "block-driver"}
    waiting = {nid: sum(1 for edge in parents_after.get(nid, []) if edge["parent"] in links) for nid in links}
    ready = [nid for nid, count in waiting.items() if count == 0]
    while ready:
        nid = ready.pop()
        before = (_cumulative(parents_before.get(nid, [])), bool(parents_before.get(nid)))
        after = (_cumulative(parents_after.get(nid, [])), bool(parents_after.get(nid)))
        own = links[nid]
        if before != after and own:
            info = infos.get(names[nid])
            if info is None:
                return False
            roles = {edge["name"] for edge in own}
            for edge in own:
                got = _child_perms(info, edge, roles, before, after)
                if got is None:
                    return False
                edge["perm"], edge["shared-perm"] = _names(got[0]), _names(got[1])
        for edge in own:
            waiting[edge["child"]] -= 1
            if waiting[edge["child"]] == 0:
                ready.append(edge["child"])
    return all(count == 0 for count in waiting.values())
