"""QEMU 7.2's block permissions over bitlab's graph (block.c, block/copy-before-write.c).

Every edge into a node (a node's child link, or a BlockBackend's ``root`` link: devices, exports,
qemu-io, jobs) takes permissions and shares permissions. A node's links to its children take
what the driver's ``child_perm`` derives from the node's cumulative parents (what they all take,
what they all share). Before a graph change is kept, QEMU walks the nodes it touched in
topological order (``bdrv_topological_dfs``) and, for each, checks every ordered pair of
parents (newest first, as ``bs->parents`` lists them: ``bdrv_parent_perms_conflict``), then
that no writer sits on a read-only node (``bdrv_node_refresh_perm``). The first failure is the
error, with QEMU's text, and nothing changes.

bitlab checks on a :class:`PermView` of the graph with the change applied, never on the graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from ..errors import QMPError, generic
from .node import BlockNode, subtree_ids

READ, WRITE, WRITE_UNCHANGED, RESIZE = 1, 2, 4, 8
ALL = READ | WRITE | WRITE_UNCHANGED | RESIZE
PERM_NAMES = ((READ, "consistent read"), (WRITE, "write"), (WRITE_UNCHANGED, "write unchanged"), (RESIZE, "resize"))
QAPI_NAMES = {READ: "consistent-read", WRITE: "write", WRITE_UNCHANGED: "write-unchanged", RESIZE: "resize"}
EXPORT_SHARED = ALL & ~RESIZE  # an NBD export shares everything but resize (nbd_export_create)
UNNAMED = "an unnamed block device"
BLK_CACHE = True  # False: check_blk builds its view every time (tests compare the two)
VERIFY_CACHE = False  # True (the test suite): a check the cache passes is made again, AssertionError if it fails


def perm_names(perm: int) -> str:
    """bdrv_perm_names: ``write, resize``."""
    return ", ".join(name for bit, name in PERM_NAMES if perm & bit)


def qapi_perms(perm: int) -> list[str]:
    """The BlockPermission names of ``perm`` (x-debug-query-block-graph lists them high bit first)."""
    return [QAPI_NAMES[bit] for bit in (RESIZE, WRITE_UNCHANGED, WRITE, READ) if perm & bit]


def lock_error(perm: int, shared: int, others: list[tuple[int, int]]) -> str | None:
    """file-posix's locks (raw_check_lock_bytes): a file descriptor taking ``perm`` and sharing ``shared``,
    against the (perm, shared) of the others open on the same file. Each holds a lock byte per permission
    it takes and per permission it does not share; taking a permission another does not share, or not
    sharing one another takes, fails, in permission order."""
    held = unshared = 0
    for other_perm, other_shared in others:
        held |= other_perm
        unshared |= ALL & ~other_shared
    for bit, name in PERM_NAMES:
        if perm & bit & unshared:
            return f'Failed to get "{name}" lock'
    for bit, name in PERM_NAMES:
        if not shared & bit and held & bit:
            return f'Failed to get shared "{name}" lock'
    return None


def is_lock_error(text: str) -> bool:
    """Whether an error's text is one of :func:`lock_error`'s (qemu-img adds a hint to those)."""
    return text.startswith(('Failed to get "', 'Failed to get shared "'))


@dataclass(eq=False, slots=True)
class Blk:
    """A BlockBackend's root link (or a job's link): fixed permissions and how QEMU names its user."""

    desc: str
    perm: int
    shared: int = ALL
    role: str = "root"


@dataclass(eq=False, slots=True)
class Edge:
    """One parent link into a node: from a node (``parent``) or a BlockBackend (``blk``)."""

    role: str
    parent: BlockNode | None = None
    blk: Blk | None = None

    def user(self) -> str:
        """bdrv_child_user_desc."""
        return f"node '{self.parent.node_name}'" if self.parent is not None else self.blk.desc  # type: ignore[union-attr]


def filter_perms(perm: int, shared: int) -> tuple[int, int]:
    """bdrv_filter_default_perms: everything passes through."""
    return perm & ALL, shared & ALL


def cow_perms(perm: int, shared: int) -> tuple[int, int]:
    """bdrv_default_perms_for_cow (a backing child)."""
    return perm & READ, ((WRITE | RESIZE) if shared & WRITE else 0) | READ | WRITE_UNCHANGED


def storage_perms(perm: int, shared: int, *, metadata: bool, data: bool, writable: bool) -> tuple[int, int]:
    """bdrv_default_perms_for_storage (a METADATA and/or DATA child)."""
    perm, shared = filter_perms(perm, shared)
    if metadata:
        if writable:
            perm |= WRITE | RESIZE
        perm |= READ
        shared &= ~(WRITE | RESIZE)
    if data:
        shared &= ~RESIZE
        if perm & WRITE_UNCHANGED:
            perm |= WRITE
        if perm & WRITE:
            perm |= RESIZE
    return perm, shared


CBW_TARGET_PERMS = (WRITE, ALL & ~RESIZE)  # cbw_child_perm's target: write, sharing all but resize


def cbw_file_perms(perm: int, shared: int, has_parents: bool) -> tuple[int, int]:
    """cbw_child_perm's file: a filter's, but with parents it reads to copy before a write and shares no
    writes or resizes."""
    nperm, nshared = filter_perms(perm, shared)
    if has_parents:
        if perm & WRITE:
            nperm |= READ
        nshared &= ~(WRITE | RESIZE)
    return nperm, nshared


def child_perm(node: BlockNode, role: str, perm: int, shared: int, has_parents: bool) -> tuple[int, int]:
    """The driver's bdrv_child_perm for ``node``'s ``role`` child, from ``node``'s cumulative perms."""
    driver = node.driver
    if driver == "copy-before-write":
        return CBW_TARGET_PERMS if role == "target" else cbw_file_perms(perm, shared, has_parents)
    if driver == "snapshot-access":  # snapshot_access_child_perm: nothing taken, all shared
        return 0, ALL
    if driver == "commit_top":  # bdrv_commit_top_child_perm: nothing taken, all shared
        return 0, ALL
    if driver == "copy-on-read":  # cor_child_perm: read, write and resize passed through, write-unchanged taken
        through = READ | WRITE | RESIZE
        return (perm & through) | WRITE_UNCHANGED, (shared & through) | (ALL & ~through)
    if driver == "mirror_top":  # bdrv_mirror_top_child_perm: a filter's, nothing once the job stops; an active
        if node.stop:  # commit's takes no consistent read (unshared above its base) and shares writes
            return 0, ALL
        nperm, nshared = filter_perms(perm, shared)
        return (nperm & ~READ, nshared | WRITE) if node.is_commit else (nperm, nshared)
    if driver == "qcow2" and role == "backing":
        return cow_perms(perm, shared)
    if driver == "qcow2":  # a DATA | METADATA child
        return storage_perms(perm, shared, metadata=True, data=True, writable=not node.read_only)
    nperm, nshared = filter_perms(perm, shared)  # raw (no offset or size), blkdebug: filters
    if driver == "blkdebug":
        nperm |= _perm_set(node.options.get("take-child-perms", []))
        nshared &= ~_perm_set(node.options.get("unshare-child-perms", []))
    return nperm, nshared


def _perm_set(names: list[str]) -> int:
    by_name = {name: bit for bit, name in QAPI_NAMES.items()}
    perm = 0
    for name in names:
        perm |= by_name.get(name, 0)
    return perm


def device_blk(graph: Any, name: str) -> Blk:
    """A device's BlockBackend: reads (and what qemu-io through the monitor made it take), sharing all."""
    return Blk(f"block device '{name}'", graph.device_perm.get(name, READ))


def export_blk(exp: Any) -> Blk:
    """A block export's BlockBackend: reads, writes if writable, sharing all but resize."""
    return Blk(UNNAMED, READ | (WRITE if getattr(exp, "writable", False) else 0), EXPORT_SHARED)


_newest_first = itemgetter(0)  # a stamped link's stamp


class PermView:
    """A copy of the graph's links, newest parent first, that a change can be tried on."""

    def __init__(self, graph: Any) -> None:
        # (keyed by the nodes themselves: a node hashes by identity, with no call to id())
        self.children: dict[BlockNode, list[tuple[str, BlockNode]]] = {}
        self.parents: dict[BlockNode, list[Edge]] = {}
        self._cumulative: dict[BlockNode, tuple[int, int]] = {}  # memo of cumulative(), cleared by every change
        self.files: dict[int, list[BlockNode]] = {}  # id(image) -> the file nodes open on it (their locks)
        self.becoming_read_only: set[BlockNode] = set()  # nodes a blockdev-reopen makes read-only
        stamped: list[tuple[int, BlockNode, Edge]] = []  # (when the link was made, its child, the link)
        add = stamped.append
        when = graph.link_order.get
        children = self.children
        files = self.files
        for node in graph.nodes.values():
            links = node.children
            if links:  # (a node without children has no entry: every reader defaults to none)
                children[node] = links[::-1]  # QLIST_INSERT_HEAD: newest first
                key = id(node)
                for role, child in links:
                    add((when((key, role), 0), child, Edge(role, node)))
            if node.driver == "file" and node.options.get("locking") != "off":  # (locking=off: no lock bytes)
                files.setdefault(id(node.image), []).append(node)
        for name, root in graph.devices.items():
            stamped.append((when(("device", name), 0), root, Edge("root", blk=device_blk(graph, name))))
        for exp in graph.blks:
            stamped.append((when(("blk", id(exp)), 0), exp.node, Edge("root", blk=export_blk(exp))))
        for _, node, blk, key in graph.job_blks:  # a mirror or commit job's links
            stamped.append((when(key, 0), node, Edge(blk.role, blk=blk)))
        for name in graph.job_held:  # the backup job's 'main node' link: it takes nothing, shares all
            node = graph.nodes.get(name)
            if node is not None and node.driver not in ("mirror_top", "commit_top", "copy-on-read"):
                stamped.append((0, node, Edge("main node", blk=Blk("a block job", 0))))
        stamped.sort(key=_newest_first, reverse=True)  # (a stable sort: equal stamps keep their order)
        parents = self.parents
        for _, child, edge in stamped:
            got = parents.get(child)
            if got is None:
                parents[child] = [edge]
            else:
                got.append(edge)

    # -- changes (each new link is the newest parent of its child) -------------------------
    def attach(self, parent: BlockNode, role: str, child: BlockNode) -> None:
        """bdrv_attach_child."""
        self._cumulative.clear()
        self.children.setdefault(parent, []).insert(0, (role, child))
        self.parents.setdefault(child, []).insert(0, Edge(role, parent=parent))

    def add_blk(self, node: BlockNode, blk: Blk) -> None:
        """blk_insert_bs (or a job's block_job_add_bdrv)."""
        self._cumulative.clear()
        self.parents.setdefault(node, []).insert(0, Edge(blk.role, blk=blk))

    def set_blk(self, node: BlockNode, desc: str, perm: int, shared: int | None = None) -> None:
        """blk_set_perm on the (newest) BlockBackend of ``node`` described ``desc`` (``shared``: as
        it was, unless given)."""
        self._cumulative.clear()
        for edge in self.parents.get(node, []):
            if edge.blk is not None and edge.blk.desc == desc:
                edge.blk = Blk(desc, perm, edge.blk.shared if shared is None else shared, edge.blk.role)
                return

    def replace(self, old: BlockNode, new: BlockNode) -> None:
        """bdrv_replace_node: ``old``'s parents outside ``new``'s subtree move to ``new``."""
        self._cumulative.clear()
        inside = subtree_ids(new, lambda node: self.children.get(node, []))
        keep, moved = [], []
        for edge in self.parents.get(old, []):
            (keep if edge.parent is not None and id(edge.parent) in inside else moved).append(edge)
        self.parents[old] = keep
        for edge in moved:  # each goes to the head of new's list: their order reverses
            self.parents.setdefault(new, []).insert(0, edge)
            if edge.parent is not None:  # and to the head of its parent's children (detached, attached again)
                links = self.children[edge.parent]
                self.children[edge.parent] = [(edge.role, new)] + [
                    link for link in links if not (link[1] is old and link[0] == edge.role)]

    # -- permissions ------------------------------------------------------------------------
    def edge_perms(self, node: BlockNode, edge: Edge) -> tuple[int, int]:
        """What a parent link into ``node`` takes and shares."""
        if edge.blk is not None:
            return edge.blk.perm, edge.blk.shared
        parent = edge.parent
        assert parent is not None
        perm, shared = self.cumulative(parent)
        return child_perm(parent, edge.role, perm, shared, bool(self.parents.get(parent)))

    def cumulative(self, node: BlockNode) -> tuple[int, int]:
        """bdrv_get_cumulative_perm."""
        got = self._cumulative.get(node)
        if got is None:
            perm, shared = 0, ALL
            for edge in self.parents.get(node, []):
                p, s = self.edge_perms(node, edge)
                perm, shared = perm | p, shared & s
            got = self._cumulative[node] = (perm, shared)
        return got

    def topological(self, *starts: BlockNode) -> list[BlockNode]:
        """bdrv_topological_dfs from each start in turn (later starts' nodes come first): QEMU prepends
        each node to the list once its children are done, so the list is the post-order reversed."""
        post: list[BlockNode] = []
        found: set[BlockNode] = set()
        children = self.children
        for start in starts:
            if start in found:
                continue
            found.add(start)
            stack = [(start, iter(children.get(start, ())))]  # the walk's path: each node, its next links
            while stack:
                node, links = stack[-1]
                for _, child in links:
                    if child not in found:  # go down to the first child not seen yet
                        found.add(child)
                        below = children.get(child)
                        if below is None:  # no children: done at once
                            post.append(child)
                            continue
                        stack.append((child, iter(below)))
                        break
                else:  # every child done: the node is
                    stack.pop()
                    post.append(node)
        post.reverse()
        return post

    def conflict(self, node: BlockNode) -> str | None:
        """bdrv_parent_perms_conflict, then bdrv_node_refresh_perm's read-only check."""
        edges = self.parents.get(node, [])
        if len(edges) < 2 and not node.read_only:
            return None  # no pair of parents to conflict, no read-only check: nothing to compute
        return self.conflict_general(node, edges)

    def conflict_general(self, node: BlockNode, edges: list[Edge]) -> str | None:
        """:meth:`conflict` over every ordered pair of ``edges`` (``node``'s parents), perms computed."""
        perms = [self.edge_perms(node, edge) for edge in edges]
        name = node.node_name
        for a, (_, a_shared) in zip(edges, perms):
            for b, (b_perm, _) in zip(edges, perms):
                if a is not b and b_perm & ~a_shared:
                    return (f"Permission conflict on node '{name}': permissions '{perm_names(b_perm & ~a_shared)}' "
                            f"are both required by {b.user()} (uses node '{name}' as '{b.role}' child) and "
                            f"unshared by {a.user()} (uses node '{name}' as '{a.role}' child).")
        if node.read_only and any(p & (WRITE | WRITE_UNCHANGED) for p, _ in perms):
            if node in self.becoming_read_only:  # (bdrv_is_writable_after_reopen: writable before the reopen)
                return f"Read-only block node '{name}' cannot support read-write users"
            return "Block node is read-only"
        return None

    def first_error(self, *starts: BlockNode) -> str | None:
        """The first conflict below ``starts`` in QEMU's order, or None (:meth:`conflict` of each node, its
        shortcut written out: a node with no parents, or one parent and not read-only, has nothing to check)."""
        parents = self.parents
        for node in self.topological(*starts):
            edges = parents.get(node)
            if edges and (len(edges) > 1 or node.read_only):
                text = self.conflict_general(node, edges)
                if text is not None:
                    return text
            if node.driver == "file" and len(self.files.get(id(node.image), ())) > 1:
                text = self.lock_conflict(node)
                if text is not None:
                    return text
        return None

    def lock_conflict(self, node: BlockNode) -> str | None:
        """The file driver's set_perm: ``node``'s locks against the other file nodes open on its file."""
        holders = self.files.get(id(node.image), [])
        if not any(other is node for other in holders):  # locking=off: it neither holds nor tests a lock
            return None
        perm, shared = self.cumulative(node)
        return lock_error(perm, shared, [self.cumulative(other) for other in holders if other is not node])

    def check(self, *starts: BlockNode, prefix: str = "") -> None:
        """bdrv_list_refresh_perms over the nodes below ``starts``: QEMU's first error, raised."""
        text = self.first_error(*starts)
        if text is not None:
            raise generic(prefix + text)


def check_attach(graph: Any, parent: BlockNode, role: str, child: BlockNode) -> None:
    """bdrv_attach_child of an existing node (blockdev-add taking it by reference)."""
    text = attach_error_alone(graph, parent, role, child)
    if text is not None:
        if text:
            raise generic(text)
        return
    view = PermView(graph)
    view.attach(parent, role, child)
    view.check(child)


def attach_error_alone(graph: Any, parent: BlockNode, role: str, child: BlockNode) -> str | None:
    """What :func:`check_attach` finds without a view, where the new link is all there is: a child with
    no parents and no children, a parent nothing uses (its link takes what the driver takes for no
    parents; alone, it conflicts with nothing but a read-only child). ``""``: no error; None: not so."""
    if child.children or not _unused(graph, child) or not _unused(graph, parent) or shares_file(graph, child):
        return None
    perm, _ = child_perm(parent, role, 0, ALL, False)
    return "Block node is read-only" if child.read_only and perm & (WRITE | WRITE_UNCHANGED) else ""


def add_links(view: PermView, links: list[tuple[BlockNode, Blk]]) -> None:
    """A job's BlockBackends and links (blk_insert_bs, block_job_add_bdrv), one after the other in ``view``: the
    first a permission check refuses raises its error."""
    for node, blk in links:
        view.add_blk(node, blk)
        error = view.first_error(node)
        if error is not None:
            raise generic(error)


def check_blk(graph: Any, node: BlockNode, perm: int, shared: int = ALL, desc: str = UNNAMED) -> None:
    """blk_insert_bs of a new BlockBackend taking ``perm``."""
    if _alone(graph, node):  # nothing else uses it, and what it takes below does not change
        if node.read_only and perm & (WRITE | WRITE_UNCHANGED):
            raise generic("Block node is read-only")
        return
    # The same check on an unchanged graph passes again (a guest's writes one after another): the key holds
    # all a view reads that may change — graph.perm_version (links, nodes, filters, read-only flags), the
    # BlockBackends' count (exports come with a stamp, go without one), what each device takes — and the
    # node (its id: no node is opened or closed without a new version) and the new BlockBackend.
    key = (graph.perm_version, len(graph.blks), tuple(graph.device_perm.items()), perm, shared, desc)
    checked = graph.blk_checked
    if BLK_CACHE and checked is not None and checked[1] == id(node) and checked[0] == key:
        if VERIFY_CACHE:
            _verify_blk(graph, node, Blk(desc, perm, shared))
        return
    view = PermView(graph)
    view.add_blk(node, Blk(desc, perm, shared))
    view.check(node)
    graph.blk_checked = (key, id(node))


def _verify_blk(graph: Any, node: BlockNode, blk: Blk) -> None:
    """The check :func:`check_blk`'s cache passed, made on a new view: a stale cache (a graph change that did
    not bump ``graph.perm_version``) is an AssertionError, not a wrong answer."""
    view = PermView(graph)
    view.add_blk(node, blk)
    try:
        view.check(node)
    except QMPError as err:
        raise AssertionError(f"check_blk's cache passed a check that fails now: {err.desc}") from err


def shares_file(graph: Any, node: BlockNode) -> bool:
    """A file node whose file another file node has open too (their locks may meet)."""
    return node.driver == "file" and any(other is not node and other.driver == "file" and other.image is node.image
                                         for other in graph.nodes.values())  # (locking=off ones too: the view knows)


def file_locks(graph: Any, image: Any) -> list[tuple[int, int]]:
    """What each file node open on ``image`` takes and shares (its locks), for another process."""
    if not any(node.driver == "file" and node.image is image for node in graph.nodes.values()):
        return []
    view = PermView(graph)
    return [view.cumulative(node) for node in view.files.get(id(image), ())]


def _alone(graph: Any, node: BlockNode) -> bool:
    """No parent of any kind, and a driver whose links below take the same whatever its parents take
    (a writable qcow2 always writes its file; file and null-co have no children)."""
    return _unused(graph, node) and not shares_file(graph, node) and (
        node.driver in ("file", "null-co", "null-aio") or (node.driver == "qcow2" and not node.read_only))


def _unused(graph: Any, node: BlockNode) -> bool:
    """No parent of any kind: no node, device, export or job uses it."""
    if node.parents or node.node_name in graph.job_held:
        return False
    return not (any(root is node for root in graph.devices.values()) or any(blk.node is node for blk in graph.blks))


def check_export(graph: Any, node: BlockNode, writable: bool) -> tuple[str | None, str | None]:
    """blk_exp_add's blk_insert_bs (reads, and writes if writable, sharing all), then
    nbd_export_create's blk_set_perm (sharing all but resize): the error of the first, else of the second."""
    view = PermView(graph)
    blk = Blk(UNNAMED, READ | (WRITE if writable else 0))
    view.add_blk(node, blk)
    inserted = view.first_error(node)
    if inserted is not None:
        return inserted, None
    view.set_blk(node, UNNAMED, blk.perm, EXPORT_SHARED)
    return None, view.first_error(node)


class FilterStandIn(BlockNode):
    """The copy-before-write node a backup is about to open (its links are tried before it exists)."""

    driver = "copy-before-write"


class BackupCheck:
    """bdrv_cbw_append then block_job_create, step by step in QEMU's order (the caller runs the
    checks QEMU makes between them)."""

    def __init__(self, graph: Any, source: BlockNode, target: BlockNode, filter_name: str) -> None:
        self.view = PermView(graph)
        self.source = source
        self.cbw = FilterStandIn(filter_name)
        self.replaced = False  # replace()'s check found nothing below the filter or the source

    def create(self, target: BlockNode) -> None:
        """cbw_open: the filter's links to the source and the target (errors carry no prefix yet:
        bdrv_insert_node adds 'Could not create node: ')."""
        self.view.attach(self.cbw, "file", self.source)
        self.view.check(self.source)
        self.view.attach(self.cbw, "target", target)
        self.view.check(target)

    def replace(self) -> None:
        """bdrv_replace_node(source, filter)."""
        self.view.replace(self.source, self.cbw)
        self.view.check(self.cbw, self.source, prefix="Could not replace node: ")
        self.replaced = True

    def job(self, job_id: str) -> None:
        """block_job_create's link to the filter ('main node': takes nothing, shares all). The link takes
        and unshares nothing, so it conflicts with no other parent and leaves the filter's cumulative
        permissions as they were; if the filter had a parent already, what its links below take stays too
        (cbw_child_perm tells only 'parents or none'), nothing below it changed since replace()'s check
        found no error there, and the check cannot fail: it is skipped."""
        had_parents = bool(self.view.parents.get(self.cbw))
        self.view.add_blk(self.cbw, Blk(f"backup job '{job_id}'", 0, ALL, "main node"))
        if not (had_parents and self.replaced):
            self.view.check(self.cbw)

