"""``x-debug-query-block-graph``: the graph as QEMU 7.2's bdrv_get_xdbg_block_graph walks it.

QEMU walks every BlockBackend (oldest first) with its root link, then every block job (newest
first) with its links in the order its list holds them (newest first), then every node (oldest
first) with its children (newest first). Each object gets a number the first time the walk meets
it, as a node or as the child of a link; both lists are built by prepending, so they come out
in reverse walk order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .perms import ALL, Edge, PermView, device_blk, export_blk, qapi_perms


class _Walk:
    """The numbering and the two lists (XDbgBlockGraphConstructor)."""

    def __init__(self) -> None:
        self.ids: dict[int, int] = {}
        self.nodes: list[dict] = []
        self.edges: list[dict] = []

    def num(self, obj: object) -> int:
        """xdbg_graph_node_num: the object's number, a new one (count + 1) the first time."""
        return self.ids.setdefault(id(obj), len(self.ids) + 1)

    def node(self, obj: object, kind: str, name: str) -> None:
        self.nodes.append({"id": self.num(obj), "type": kind, "name": name})

    def edge(self, parent: object, child: object, role: str, perm: int, shared: int) -> None:
        self.edges.append({"parent": self.num(parent), "child": self.num(child), "name": role,
                           "perm": qapi_perms(perm), "shared-perm": qapi_perms(shared)})


def block_graph(graph: Any, jobs: Iterable[Any]) -> dict:
    """XDbgBlockGraph of ``graph`` and the machine's ``jobs`` (newest first, as the job list holds them)."""
    walk = _Walk()
    backends: list[tuple[int, object, str, Any, Any]] = []  # (born, the backend, its name, its root, Blk)
    for name, root in graph.devices.items():
        backends.append((graph.born.get(("device", name), 0), ("device", name), name, root, device_blk(graph, name)))
    for exp in graph.blks:
        backends.append((graph.born.get(("blk", id(exp)), 0), exp, "", exp.node, export_blk(exp)))
    links = {}  # a mirror or commit job's links: (job, role, node) -> Blk; its BlockBackends
    for owner, node, blk, key in graph.job_blks:
        if blk.role == "root":
            backends.append((graph.link_order.get(key, 0), blk, "", node, blk))
        else:
            links[(owner, blk.role, id(node))] = blk
    backends.sort(key=lambda item: item[0])
    for _, key, name, root, blk in backends:
        walk.node(key, "block-backend", name)
        walk.edge(key, root, "root", blk.perm, blk.shared)
    for job in jobs:
        if not job.is_block_job:
            continue
        walk.node(job, "block-job", job.id)
        for role, node in reversed(job.block_links()):  # block_job_add_bdrv prepends: newest first
            blk = links.get((id(job), role, id(node)))  # a backup's own links take nothing and share all
            walk.edge(job, node, role, blk.perm if blk else 0, blk.shared if blk else ALL)
    view = PermView(graph)
    for node in graph.nodes.values():
        walk.node(node, "block-driver", node.node_name)
        for role, child in reversed(node.children):  # QLIST_INSERT_HEAD: the newest child first
            perm, shared = view.edge_perms(child, Edge(role, parent=node))
            walk.edge(node, child, role, perm, shared)
    return {"nodes": walk.nodes[::-1], "edges": walk.edges[::-1]}


SHORT = {"consistent-read": "read", "write": "write", "write-unchanged": "unchanged", "resize": "resize"}


def perm_words(perms: Sequence[str]) -> str:
    """A link's ``perm`` or ``shared-perm`` in words, low bit first (QEMU lists them high bit first),
    shortened: ``read write resize``; ``all`` for all four, ``nothing`` for none."""
    if len(perms) == len(SHORT):
        return "all"
    return " ".join(SHORT.get(p, p) for p in reversed(perms)) or "nothing"


def unnamed_backend(graph: dict, node_id: int) -> str:
    """What an unnamed BlockBackend of a reply is: a block job's on its target (it takes no consistent read:
    a mirror's) or an export."""
    takes = [e["perm"] for e in graph["edges"] if e["parent"] == node_id]
    return "job target" if takes and all("consistent-read" not in p for p in takes) else "export"


def link_lines(graph: dict) -> list[str]:
    """Each link of an ``x-debug-query-block-graph`` reply in QEMU's walk order, as
    ``parent -role-> child: takes …; shares …`` (an unnamed BlockBackend shows as ``(export)``, a mirror's
    target's as ``(job target)``)."""
    names = {n["id"]: n["name"] or f"({unnamed_backend(graph, n['id'])})" for n in graph["nodes"]}
    return [f"{names[e['parent']]} -{e['name']}-> {names[e['child']]}: takes {perm_words(e['perm'])}; "
            f"shares {perm_words(e['shared-perm'])}" for e in reversed(graph["edges"])]
