"""blockdev-reopen (block.c: bdrv_reopen_queue_child, bdrv_reopen_multiple, bdrv_reopen_prepare).

Each listed node is queued with the options given (every option not given goes back to its default), then
the children it opened itself (not those added by the monitor): with the options given under their name
(``file.*``), or with their own options when the name is given as a reference to them. Every queued node
is flushed, prepared in queue order (QEMU's checks and texts, in its order), the permissions checked with
the new read-only flags, then the changes are committed, the last queued first. A qcow2 node made
read-only stores its persistent bitmaps while it is prepared, and they become read-only; QEMU 7.2 does not
undo that if the reopen fails later (a writer above the node): the bitmaps stay stored and read-only on a
read-write node. Made read-write, it marks them in use again after the commit.

``backing`` may name another node, or be null: the backing child is replaced or detached (the old one closed if
nothing else holds it). A raw node's ``offset`` and ``size`` may change (raw_reopen_prepare's checks). Not
simulated (refused, naming what): another ``file`` child, copy-before-write and snapshot-access nodes, and a qcow2
node over a blkdebug node with rules (their requests at the flush and for the bitmaps).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import generic
from ..qmp_order import wire_member_order
from . import perms, qcow2_opts
from .blkdebug import option_bool
from .info import is_implicit_filter, skip_implicit_filters
from .ioerror import BlockIOError
from .node import raw_window_error

# bdrv_reset_options_allowed: what every driver lets a reopen leave out
COMMON = frozenset({"node-name", "discard", "cache.direct", "cache.no-flush", "read-only", "auto-read-only",
                    "detect-zeroes"})
# bdrv_reopen_prepare takes these from the options before the driver sees them
GENERIC_TAKEN = frozenset({"discard", "cache.direct", "cache.no-flush", "read-only", "auto-read-only",
                           "detect-zeroes"})
QCOW2_RUNTIME = ("lazy-refcounts", "pass-discard-request", "pass-discard-snapshot", "pass-discard-other",
                 "overlap-check", "cache-size", "l2-cache-size", "l2-cache-entry-size", "refcount-cache-size",
                 "cache-clean-interval")
MUTABLE = {"raw": ("offset", "size"), "file": ("x-check-cache-dropped",)}  # each driver's mutable_opts
NOT_REOPENABLE = ("copy-before-write", "snapshot-access")
NOT_SIMULATED = "bitlab does not simulate "


def flatten(value: Any, prefix: str = "", out: dict | None = None) -> dict:
    """qdict_flatten: nested objects and lists become dotted keys (``file.driver``, ``inject-error.0.event``);
    an empty object or list stays as it is. In QEMU's order of insertion, which decides the QDict order of keys that
    share a hash bucket: the top level's own values where they were, then each nested object's entries as the QDict
    walks it (its hash order), lists in their order."""
    nested = out is not None
    out = {} if out is None else out
    if not nested:  # (the top level's values stay where they are; the nested ones follow, moved in QDict order)
        out.update((key, item) for key, item in value.items() if not (isinstance(item, (dict, list)) and item))
    items = ([(key, value[key]) for key in wire_member_order(tuple(value))] if isinstance(value, dict)
             else enumerate(value))
    for key, item in items:
        name = f"{prefix}{key}"
        if isinstance(item, (dict, list)) and item:
            flatten(item, name + ".", out)
        elif nested:
            out[name] = item
    return out


def unflatten(flat: dict) -> dict:
    """The nested options again (numeric keys become lists)."""
    root: dict = {}
    for key, value in flat.items():
        parts = key.split(".")
        here = root
        for part in parts[:-1]:
            here = here.setdefault(part, {})
        here[parts[-1]] = value
    return _lists(root)


def _lists(value: Any) -> Any:
    if not isinstance(value, dict) or not value:
        return value
    out = {k: _lists(v) for k, v in value.items()}
    if all(k.isdigit() for k in out):
        return [out[k] for k in sorted(out, key=int)]
    return out


def _same(new: Any, old: Any) -> bool:
    """qobject_is_equal: the same JSON type and value (a bool is not an int)."""
    return type(new) is type(old) and new == old


def _own_options(node: Any) -> dict:
    """bs->options: the node's options, flattened, without its children's (bdrv_open removes them)."""
    roles = {role for role, _ in node.children} | {"backing"}
    return {k: v for k, v in flatten(node.options).items() if k.split(".", 1)[0] not in roles}


def _explicit_options(node: Any) -> dict:
    """bs->explicit_options: what it was opened with (taken as given), then what each reopen gave it; inherited
    values (a backing file's read-only, a file's parent's) are not among them."""
    explicit = getattr(node, "explicit_options", None)
    return dict(explicit) if explicit is not None else _own_options(node)


@dataclass
class Entry:
    """One queued node: its new (flattened) options and read-only flag."""

    node: Any
    options: dict
    read_only: bool
    explicit: dict = field(default_factory=dict)  # its explicit options (bdrv_reopen_queue_child's explicit_options)
    backing_missing: bool = False
    new_backing: tuple = ()  # (the new backing node or None,) when the reopen changes it


class Reopen:
    """One blockdev-reopen: :meth:`queue` each listed node, then :meth:`run`."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph
        self.entries: list[Entry] = []

    def _implicit(self, child: Any) -> bool:
        """child->bs->inherits_from == bs: opened by its parent, not added by the monitor or as a device."""
        return child.node_name not in self.graph.monitor_owned and child not in self.graph.devices.values()

    # -- the queue ---------------------------------------------------------------------------
    def queue(self, node: Any, options: dict, *, parent: dict | None = None, role: str = "",
              parent_format: bool = False, keep_old: bool = False) -> None:
        """bdrv_reopen_queue_child: the options given, then those set explicitly before (queued already: there;
        else, with ``keep_old``, the node's), then what the parent passes on, then (``keep_old``) the node's
        others."""
        entry = next((e for e in self.entries if e.node is node), None)
        if entry is not None:  # queued already: what it was given there fills in
            options = {**entry.explicit, **options}
        elif keep_old:
            options = {**_explicit_options(node), **options}
        explicit = dict(options)
        if parent is not None:  # bdrv_inherited_options: the parent's read-only and cache modes by default
            if role == "backing":
                options.setdefault("read-only", True)
            elif "read-only" in parent:
                options.setdefault("read-only", parent["read-only"])
            for key in ("cache.direct", "cache.no-flush"):
                if key in parent:
                    options.setdefault(key, parent[key])
            if parent_format and role == "file":
                options.setdefault("discard", "unmap")
        if keep_old:
            options = {**_own_options(node), **options}
        read_only = option_bool(options.get("read-only", False))
        if entry is None:
            entry = Entry(node, options, read_only, explicit)
            self.entries.append(entry)
        else:
            entry.options, entry.read_only, entry.explicit = options, read_only, explicit
        if not keep_old:
            entry.backing_missing = "backing" not in options and "backing.driver" not in options
        for child_role, child in node.children:
            if not self._implicit(child):
                continue
            if child_role in options:  # a reference: the child as it is, if it is this child
                if options[child_role] != child.node_name:
                    continue
                self.queue(child, {}, parent=options, role=child_role, parent_format=node.driver in ("qcow2", "raw"),
                           keep_old=True)
                continue
            dot = child_role + "."
            sub = {k[len(dot):]: options.pop(k) for k in list(options) if k.startswith(dot)}
            self.queue(child, sub, parent=options, role=child_role, parent_format=node.driver in ("qcow2", "raw"),
                       keep_old=keep_old)

    # -- prepare, permissions, commit ---------------------------------------------------------
    def run(self) -> None:
        """bdrv_reopen_multiple."""
        for entry in self.entries:
            self._refuse(entry)
        for entry in self.entries:
            try:
                entry.node.flush()
            except BlockIOError as err:
                raise generic(f"Error flushing drive: {os.strerror(err.errno)}") from None
        for entry in self.entries:
            self._prepare(entry)
        self._check_perms()
        for entry in reversed(self.entries):
            self._commit(entry)
        for entry in reversed(self.entries):  # bdrv_reopen_commit_post
            if entry.node.driver == "qcow2" and not entry.read_only:
                self.graph.reopen_bitmaps_rw(entry.node)

    def _refuse(self, entry: Entry) -> None:
        """What bitlab does not simulate, before anything changed."""
        node = entry.node
        if node.driver == "qcow2":
            below = node.child("file")
            if below is not None and below.driver == "blkdebug" and (
                    below.options.get("inject-error") or below.options.get("set-state")):
                raise generic(NOT_SIMULATED + f"blockdev-reopen of a qcow2 node over blkdebug rules "
                                              f"('{node.node_name}' over '{below.node_name}')")

    def _prepare(self, entry: Entry) -> None:
        """bdrv_reopen_prepare."""
        node, opts = entry.node, entry.options
        # (discard left out keeps the node's BDRV_O_UNMAP: the flags start from the node's own, and only a
        # discard given changes them)
        unmap = opts["discard"] == "unmap" if "discard" in opts else node.discard_unmap
        if opts.get("detect-zeroes") == "unmap" and not unmap:
            raise generic("setting detect-zeroes to unmap is not allowed without setting discard operation to unmap")
        if node.driver in NOT_REOPENABLE:
            raise generic(f"Block format '{node.driver}' used by node '{self.graph.device_or_node_name(node)}' "
                          "does not support reopening files")
        old = _own_options(node)
        mutable = QCOW2_RUNTIME if node.driver == "qcow2" else MUTABLE.get(node.driver, ())
        for key in wire_member_order(tuple(old)):  # bdrv_reset_options_allowed
            if key not in opts and key not in COMMON and key.split(".", 1)[0] not in mutable:
                raise generic(f"Option '{key}' cannot be reset to its default value")
        taken = set(GENERIC_TAKEN)
        if node.driver == "qcow2":
            runtime = unflatten({k: v for k, v in opts.items() if k.split(".", 1)[0] in QCOW2_RUNTIME})
            error = qcow2_opts.open_error(runtime, node.image) or qcow2_opts.not_simulated(runtime, node.image)
            if error is not None:
                raise generic(error)
            taken |= {k for k in opts if k.split(".", 1)[0] in QCOW2_RUNTIME}
            if entry.read_only:  # qcow2_reopen_bitmaps_ro (read-only already too), then the flush
                self.graph.store_bitmaps_read_only(node)
        elif node.driver == "raw":  # raw_reopen_prepare: the new window's checks (raw_apply_options)
            problem = raw_window_error(opts, node.file.size)
            if problem is not None:
                raise generic(problem)
            taken |= {"offset", "size"}
        elif node.driver == "file":
            taken.add("x-check-cache-dropped")
        elif node.driver == "throttle":  # throttle_reopen_prepare: the group must exist (it may change)
            if opts["throttle-group"] not in self.graph.throttle_groups:
                raise generic(f"Throttle group '{opts['throttle-group']}' does not exist")
            taken.add("throttle-group")
        if node.driver == "qcow2" and entry.backing_missing and (node.child("backing") is not None
                                                                 or node.image.backing_file):
            raise generic(f"backing is missing for '{node.node_name}'")
        self._child_option(entry, "backing")
        self._child_option(entry, "file")
        rest = {k: v for k, v in opts.items() if k not in taken and k not in ("backing", "file")}
        for key in wire_member_order(tuple(rest)):
            new = rest[key]
            if isinstance(new, str):
                child = node.child(key)
                if child is not None and child.node_name == new:
                    continue
            if key not in old or not _same(new, old[key]):
                raise generic(f"Cannot change the option '{key}'")

    def _child_option(self, entry: Entry, role: str) -> None:
        """bdrv_reopen_parse_file_or_backing: the same child is fine; another node (or null) is not simulated."""
        if role not in entry.options:
            return
        node, value = entry.node, entry.options[role]
        new = None
        if value is not None:
            new = self.graph.nodes.get(value)
            if new is None:
                raise generic(f"Cannot find device='' nor node-name='{value}'")
            if _reaches(new, node):
                raise generic(f"Making '{value}' a {role} child of '{node.node_name}' would create a cycle")
        old = node.child(role)
        if old is new:
            return
        if old is not None:
            if skip_implicit_filters(old) is new:
                return
            if is_implicit_filter(old):
                raise generic(f"Cannot replace implicit {role} child of {node.node_name}")
        if (id(node), role) in self.graph.frozen and old is not None:  # bdrv_set_file_or_backing_noperm
            raise generic(f"Cannot change frozen '{role}' link from '{node.node_name}' to '{old.node_name}'")
        if role == "backing":  # (null, or another node: bdrv_set_file_or_backing_noperm)
            entry.new_backing = (new,)
            return
        if old is None and node.driver in ("file", "null-co", "null-aio"):  # (a protocol node: no file child)
            raise generic("Cannot set file child to format node without file child")
        raise generic(NOT_SIMULATED + f"blockdev-reopen giving '{node.node_name}' another {role} child")

    def _check_perms(self) -> None:
        """bdrv_list_refresh_perms with the new read-only flags; on failure the flags go back (a qcow2 node's
        stored bitmaps stay read-only, as in QEMU 7.2)."""
        graph = self.graph
        before = [(e.node, e.node.read_only, list(e.node.children)) for e in self.entries]
        going_ro = {e.node for e in self.entries if e.read_only and not e.node.read_only}
        starts: list = []
        for entry in self.entries:  # (bdrv_reopen_multiple's refresh list: each node, then its old backing, prepended)
            starts.insert(0, entry.node)
            entry.node.read_only = entry.read_only
            if entry.new_backing:
                old = entry.node.child("backing")
                if old is not None:
                    starts.insert(0, old)
                entry.node.children = [(r, c) for r, c in entry.node.children if r != "backing"]
                if entry.new_backing[0] is not None:
                    entry.node.children.append(("backing", entry.new_backing[0]))
        graph.perm_version += 1
        view = perms.PermView(graph)
        for entry in self.entries:  # (a new link is its child's newest parent)
            new = entry.new_backing[0] if entry.new_backing else None
            if new is not None:
                view.parents[new] = [e for e in view.parents.get(new, []) if e.parent is not entry.node]
                view.parents[new].insert(0, perms.Edge("backing", parent=entry.node))
        view.becoming_read_only = going_ro
        text = view.first_error(*starts)
        for node, ro, children in before:
            node.read_only, node.children = ro, children
        graph.perm_version += 1
        if text is not None:
            raise generic(text)
        for entry in self.entries:
            entry.node.read_only = entry.read_only

    def _commit(self, entry: Entry) -> None:
        """bdrv_reopen_commit: the new options (children's kept as they were) and what they set."""
        node, opts = entry.node, entry.options
        kept = {role: node.options[role] for role, _ in node.children if role in node.options}
        if "backing" in node.options:
            kept["backing"] = node.options["backing"]
        if entry.new_backing:
            kept["backing"] = entry.new_backing[0] and entry.new_backing[0].node_name
        own = {k: v for k, v in opts.items() if k.split(".", 1)[0] not in kept}
        node.options = {**unflatten(own), **kept}
        roles = {role for role, _ in node.children} | {"backing"}
        node.explicit_options = {k: v for k, v in entry.explicit.items() if k.split(".", 1)[0] not in roles}
        if "discard" in opts:
            node.discard_unmap = opts["discard"] == "unmap"
        node.detect_zeroes = opts.get("detect-zeroes", "off")
        node.cache_direct = option_bool(opts.get("cache.direct", False))
        node.cache_no_flush = option_bool(opts.get("cache.no-flush", False))
        node.reopens += 1
        self.graph.perm_version += 1
        if node.driver == "throttle" and opts["throttle-group"] != node.group.name:  # throttle_reopen_commit
            node.move_to(self.graph.throttle_groups[opts["throttle-group"]])
        if entry.new_backing:
            self.graph.detach_backing(node)
            if entry.new_backing[0] is not None:
                self.graph.set_backing(node, entry.new_backing[0])



def _reaches(start: Any, target: Any) -> bool:
    """bdrv_recurse_has_child."""
    stack, seen = [start], set()
    while stack:
        node = stack.pop()
        if node is target:
            return True
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(child for _, child in node.children)
    return False


def blockdev_reopen(graph: Any, options_list: list[dict], drain: Callable[[Any], None]) -> None:
    """qmp_blockdev_reopen: each listed node found and ``drain``-ed (the caller ends the drained sections),
    queued, then the reopen."""
    reopen = Reopen(graph)
    for opts in options_list:
        name = opts.get("node-name")
        if name is None:
            raise generic("node-name not specified")
        node = graph.nodes.get(name)
        if node is None:
            raise generic(f"Failed to find node with node-name='{name}'")
        drain(node)
        reopen.queue(node, flatten(opts))
    if reopen.entries:  # (an empty list: QEMU 7.2 asserts, bitlab does nothing)
        reopen.run()


def set_read_only(graph: Any, node: Any, read_only: bool) -> None:
    """bdrv_reopen_set_read_only: the node (and the children it opened itself) read-only or writable, its other
    options kept."""
    reopen = Reopen(graph)
    reopen.queue(node, {"read-only": read_only}, keep_old=True)
    reopen.run()
