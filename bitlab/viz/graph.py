"""Block-graph diagrams — an ``x-debug-query-block-graph`` reply in, a Figure out.

Layers top to bottom: whatever has no parent (BlockBackends: devices and exports; block jobs;
nodes nothing uses), then each node one layer below its lowest parent. Every link is an arrow from
parent to child labelled with its role and what it takes (``takes``) and lets others do
(``shares``), in QEMU's permission names shortened: read (consistent-read), write, unchanged
(write-unchanged), resize. A job's links are dashed: they take nothing. The reply is the same on
bitlab and on real QEMU, so the picture is too; give ``nodes`` (a ``query-named-block-nodes``
reply) to name each node's driver.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import matplotlib as mpl
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Patch

from ..block.xdbg import perm_words, unnamed_backend

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["GraphBox", "GraphLayout", "GraphLink", "graph_layout", "plot_block_graph"]

BOX_W, BOX_H, LAYER_H = 1.7, 0.62, 1.75
FILTER_DRIVERS = ("copy-before-write", "throttle", "mirror_top", "commit_top", "copy-on-read")  # drawn as filters
KINDS = {"block-backend": "BlockBackend", "block-job": "block job", "block-driver": "node"}


def _styles() -> dict[str, tuple[tuple[float, ...], str]]:
    """Box kind → (cividis colour, hatch): BlockBackends, jobs, filters, other nodes."""
    cividis = mpl.colormaps["cividis"]
    return {"block-backend": (cividis(0.95), ""), "block-job": (cividis(0.55), "//"),
            "filter": (cividis(0.75), ".."), "block-driver": (cividis(0.25), "")}


STYLES = _styles()
LEGEND = {"block-backend": "BlockBackend (device, export)", "block-job": "block job",
          "filter": "copy-before-write filter", "block-driver": "node"}


@dataclass(frozen=True)
class GraphBox:
    """One BlockBackend, job or node: ``layer`` from the top, ``x`` its centre within the layer."""

    id: int
    kind: str  # XDbgBlockGraphNodeType, or "filter" for a copy-before-write node
    name: str
    label: str
    layer: int
    x: float


@dataclass(frozen=True)
class GraphLink:
    """A parent's link to a child, with what it takes and shares (QEMU's names)."""

    parent: int
    child: int
    role: str
    perm: tuple[str, ...]
    shared: tuple[str, ...]
    job: bool  # a block job's link

    @property
    def label(self) -> str:
        return f"{self.role}\ntakes {perm_words(self.perm)}\nshares {perm_words(self.shared)}"


@dataclass(frozen=True)
class GraphLayout:
    """Everything :func:`plot_block_graph` draws."""

    boxes: tuple[GraphBox, ...]
    links: tuple[GraphLink, ...]
    layers: int
    width: int  # boxes in the widest layer

    def box(self, name: str) -> GraphBox:
        """The box of a node, job or device named ``name`` (an unnamed BlockBackend has no name)."""
        for b in self.boxes:
            if b.name == name:
                return b
        raise KeyError(name)


def _label(kind: str, name: str, driver: str | None, unnamed: str = "export") -> str:
    if kind == "block-backend":
        if name:
            return f"{name}\nBlockBackend"
        return f"BlockBackend\n(unnamed: {'an export' if unnamed == 'export' else 'a ' + unnamed})"
    if kind == "block-job":
        return f"{name}\nblock job"
    return f"{name}\n{driver}" if driver else name


def graph_layout(graph: Mapping[str, Any], nodes: Sequence[Mapping[str, Any]] | None = None) -> GraphLayout:
    """Place the boxes of an ``x-debug-query-block-graph`` reply: layers by longest path from a box
    without parents, each layer ordered (QEMU's walk order first) to keep links from crossing."""
    drivers = {n["node-name"]: n["drv"] for n in nodes or () if "node-name" in n}
    info = {n["id"]: n for n in graph["nodes"]}
    walk = sorted(info)  # ids are numbered in QEMU's walk order
    parents: dict[int, list[int]] = {i: [] for i in walk}
    for e in graph["edges"]:
        parents[e["child"]].append(e["parent"])
    layer: dict[int, int] = {}

    def depth(i: int, seen: tuple[int, ...] = ()) -> int:
        if i not in layer:
            if i in seen:
                raise ValueError(f"the graph has a loop through {info[i]['name']!r}")
            layer[i] = 1 + max((depth(p, (*seen, i)) for p in parents[i]), default=-1)
        return layer[i]

    for i in walk:
        depth(i)
    rows: list[list[int]] = [[] for _ in range(1 + max(layer.values(), default=-1))]
    for i in walk:
        rows[layer[i]].append(i)
    width = max((len(row) for row in rows), default=0)
    pos: dict[int, float] = {}

    def place(row: list[int]) -> None:  # centred in the widest layer
        pos.update({i: (width - len(row)) / 2 + k for k, i in enumerate(row)})

    for row in rows[:1]:
        place(row)
    for row in rows[1:]:  # each below the mean of its parents (a stable sort keeps walk order on ties)
        row.sort(key=lambda i: sum(pos[p] for p in parents[i]) / len(parents[i]))
        place(row)
    boxes = []
    for row in rows:
        for i in row:
            n = info[i]
            kind = "filter" if drivers.get(n["name"]) in FILTER_DRIVERS else n["type"]
            boxes.append(GraphBox(i, kind, n["name"], _label(n["type"], n["name"], drivers.get(n["name"]),
                                                             unnamed_backend(graph, i)),
                                  layer[i], pos[i]))
    job_ids = {n["id"] for n in graph["nodes"] if n["type"] == "block-job"}
    links = tuple(GraphLink(e["parent"], e["child"], e["name"], tuple(e["perm"]), tuple(e["shared-perm"]),
                            e["parent"] in job_ids) for e in reversed(graph["edges"]))  # walk order
    return GraphLayout(tuple(boxes), links, len(rows), width)


def _spread(links: Sequence[GraphLink], where: Mapping[int, GraphBox], end: Callable[[GraphLink], int],
            other_x: Callable[[GraphLink], float]) -> list[float]:
    """Per link, its horizontal offset from the centre of the box at ``end``: 0 for a box's only
    link, else spread over half the box's width in the order of ``other_x``."""
    groups: dict[int, list[int]] = {}
    for k, link in enumerate(links):
        groups.setdefault(end(link), []).append(k)
    out = [0.0] * len(links)
    for ks in groups.values():
        ks.sort(key=lambda k: other_x(links[k]))
        step = BOX_W / 2 / max(len(ks) - 1, 1)
        for j, k in enumerate(ks):
            out[k] = (j - (len(ks) - 1) / 2) * step if len(ks) > 1 else 0.0
    return out


def plot_block_graph(graph: Mapping[str, Any], *, nodes: Sequence[Mapping[str, Any]] | None = None,
                     title: str | None = None, perms: bool = True, ax: Axes | None = None) -> Figure:
    """Draw an ``x-debug-query-block-graph`` reply: boxes in layers, an arrow per link (dashed for a
    job's), each labelled with its role and, with ``perms``, what it takes and shares. Draws into
    ``ax`` if given; returns the Figure."""
    layout = graph_layout(graph, nodes)
    if ax is None:
        fig = Figure(figsize=(1.5 + 2.9 * max(layout.width, 2), 1.4 + 1.9 * max(layout.layers, 1)),
                     layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure.figure
    ax.set_axis_off()
    ax.set_title(title if title else "block graph (x-debug-query-block-graph)", fontsize="medium")
    if not layout.boxes:
        ax.text(0.5, 0.5, "no BlockBackends, jobs or nodes", ha="center", va="center", transform=ax.transAxes,
                gid="empty")
        return fig
    scale = 2.6  # horizontal units per box slot
    where = {b.id: b for b in layout.boxes}
    for b in layout.boxes:
        colour, hatch = STYLES[b.kind]
        tint = tuple(0.8 + 0.2 * c for c in colour[:3])
        ax.add_patch(FancyBboxPatch((b.x * scale - BOX_W / 2, b.layer * LAYER_H - BOX_H / 2), BOX_W, BOX_H,
                                    boxstyle="round,pad=0,rounding_size=0.08", facecolor=tint, edgecolor=colour,
                                    hatch=hatch, linewidth=1.6, gid=f"box:{b.id}"))
        name, _, rest = b.label.partition("\n")
        ax.text(b.x * scale, b.layer * LAYER_H - 0.08, name, ha="center", va="center", fontsize=8.5,
                fontweight="bold", gid=f"name:{b.id}")
        if rest:
            ax.text(b.x * scale, b.layer * LAYER_H + 0.16, rest, ha="center", va="center", fontsize=7.5,
                    gid=f"kind:{b.id}")
    into = Counter(link.child for link in layout.links)
    out_of = Counter(link.parent for link in layout.links)
    # several links leave (enter) a box side by side, ordered by where they go (come from)
    leave = _spread(layout.links, where, lambda link: link.parent, lambda link: where[link.child].x)
    enter = _spread(layout.links, where, lambda link: link.child, lambda link: where[link.parent].x)
    gap = LAYER_H - BOX_H
    for k, link in enumerate(layout.links):
        src, dst = where[link.parent], where[link.child]
        start = (src.x * scale + leave[k], src.layer * LAYER_H + BOX_H / 2)
        end = (dst.x * scale + enter[k], dst.layer * LAYER_H - BOX_H / 2)
        # the label sits in the gap below the parent: nearer the parent where links meet at the child,
        # nearer the child where they fan out from the parent
        f = 0.3 if into[link.child] > 1 else 0.7 if out_of[link.parent] > 1 else 0.5
        t = f * gap / (end[1] - start[1])
        ax.annotate("", xy=end, xytext=start,
                    arrowprops={"arrowstyle": "-|>", "color": "0.35" if link.job else "black", "linewidth": 1.1,
                                "linestyle": "--" if link.job else "-", "shrinkA": 0, "shrinkB": 0},
                    gid=f"link:{link.parent}->{link.child}:{link.role}")
        text = link.label if perms else link.role
        ax.text(start[0] + t * (end[0] - start[0]), start[1] + t * (end[1] - start[1]), text, ha="center",
                va="center", fontsize=6.5, bbox={"boxstyle": "round,pad=0.15", "facecolor": "white",
                                                 "edgecolor": "none", "alpha": 0.85}, gid=f"label:{k}")
    ax.set_xlim(-scale / 2 - 0.2, (layout.width - 0.5) * scale + 0.2)
    ax.set_ylim((layout.layers - 1) * LAYER_H + 0.7, -0.7)
    kinds = [kind for kind in STYLES if any(b.kind == kind for b in layout.boxes)]
    ax.legend(handles=[Patch(facecolor=STYLES[k][0], hatch=STYLES[k][1], label=LEGEND[k]) for k in kinds],
              loc="lower center", bbox_to_anchor=(0.5, -0.02), ncol=len(kinds), fontsize=7.5, frameon=False)
    return fig
