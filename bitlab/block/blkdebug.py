"""``blkdebug``: rules that inject I/O errors when the driver above reports events.

As in block/blkdebug.c: the state starts at 1; an event runs every rule registered
for it whose ``state`` is 0 or the current state. ``set-state`` rules pick the next
state; ``inject-error`` rules become the *active* rules (replacing the previous
set), and the next request of a matching I/O type (and sector, if given) fails with
``errno``; a ``once`` rule is then removed for good.

bitlab's qcow2 and raw nodes report ``read_aio`` and ``write_aio`` for data reads and
writes, ``cluster_alloc`` and ``l2_update`` when a write allocates clusters, and
``flush_to_os``/``flush_to_disk`` for flushes; QEMU reports many more (metadata
events) that bitlab does not model.
"""

from __future__ import annotations

import functools

from ..qmp_order import wire_order
from .node import BlockNode, round_sector

BLKDEBUG_EVENTS = (
    "l1_update", "l1_grow_alloc_table", "l1_grow_write_table", "l1_grow_activate_table", "l2_load",
    "l2_update", "l2_update_compressed", "l2_alloc_cow_read", "l2_alloc_write", "read_aio",
    "read_backing_aio", "read_compressed", "write_aio", "write_compressed", "vmstate_load",
    "vmstate_save", "cow_read", "cow_write", "reftable_load", "reftable_grow", "reftable_update",
    "refblock_load", "refblock_update", "refblock_update_part", "refblock_alloc",
    "refblock_alloc_hookup", "refblock_alloc_write", "refblock_alloc_write_blocks",
    "refblock_alloc_write_table", "refblock_alloc_switch_table", "cluster_alloc",
    "cluster_alloc_bytes", "cluster_free", "flush_to_os", "flush_to_disk", "pwritev_rmw_head",
    "pwritev_rmw_after_head", "pwritev_rmw_tail", "pwritev_rmw_after_tail", "pwritev",
    "pwritev_zero", "pwritev_done", "empty_image_prepare", "l1_shrink_write_table",
    "l1_shrink_free_l2_clusters", "cor_write", "cluster_alloc_space", "none",
)
IO_TYPES = ("read", "write", "write-zeroes", "discard", "flush", "block-status")
EIO = 5
_RULE_MEMBERS = {
    "inject-error": ("event", "state", "iotype", "errno", "sector", "once", "immediately"),
    "set-state": ("event", "state", "new_state"),
}


class BlockIOError(Exception):
    """An I/O request failed with ``errno`` (positive)."""

    def __init__(self, errno: int, operation: str, immediately: bool = False) -> None:
        super().__init__(f"{operation} failed: errno {errno}")
        self.errno = errno
        self.operation = operation
        self.immediately = immediately


def _int(value: int | str) -> int:
    return int(value, 0) if isinstance(value, str) else int(value)


def _bool(value: bool | str) -> bool:
    return value in (True, "on", "true", "yes") if isinstance(value, str) else bool(value)


# blkdebug_strong_runtime_opts besides the rules: any of them keeps the json: filename
_STRONG_OPTIONS = ("config", "align", "max-transfer", "opt-write-zero", "max-write-zero", "opt-discard", "max-discard")


class Rule:
    """One inject-error or set-state rule (from QMP, or as -drive option strings)."""

    def __init__(self, kind: str, opts: dict) -> None:
        self.kind = kind
        self.event = opts["event"]
        self.state = _int(opts.get("state", 0))
        self.new_state = _int(opts["new_state"]) if "new_state" in opts else None
        self.errno = _int(opts.get("errno", EIO))
        sector = _int(opts.get("sector", -1))
        self.offset = -1 if sector == -1 else sector * 512
        self.once = _bool(opts.get("once", False))
        self.immediately = _bool(opts.get("immediately", False))
        self.iotypes = {opts["iotype"]} if "iotype" in opts else set(IO_TYPES)


class BlkdebugNode(BlockNode):
    """A pass-through node with error injection; its child is ``image``."""

    driver = "blkdebug"

    def __init__(self, node_name: str, *, inject_error: list[dict], set_state: list[dict], **kw) -> None:
        super().__init__(node_name, **kw)
        self.state = 1
        self.rules = [Rule("inject-error", r) for r in inject_error] + [Rule("set-state", r) for r in set_state]
        self.active: list[Rule] = []

    @property
    def inner(self) -> BlockNode:
        node = self.child("image")
        assert node is not None
        return node

    @property
    def image(self):  # the image file below, for format drivers above
        return getattr(self.inner, "image", None)

    @property
    def size(self) -> int:
        return round_sector(self.inner.size)

    @property
    def reports_zeroes(self) -> bool:
        return self.inner.reports_zeroes  # bdrv_co_block_status_from_file

    def is_allocated(self, offset, length):
        return self.inner.is_allocated(offset, length)

    def plain_filename(self) -> str | None:
        """blkdebug_refresh_filename: ``blkdebug::FILE`` while no rule and no other strong option is set
        and the image has a plain name of its own; otherwise the ``json:`` form."""
        if self._rule_options or any(key in self.options for key in _STRONG_OPTIONS):
            return None
        inner = self.inner.plain_filename()
        return None if inner is None else f"blkdebug::{inner}"

    def full_options(self) -> dict:
        """blkdebug's rules are QemuOpts lists, so they appear flattened ("set-state.0.event").

        The order follows QEMU: the driver first, then the strong options prefix by prefix
        (inject-error., set-state.) in the reverse of the flattened dict's hash order, then
        the child. (Derived from QEMU 7.2's ``json:`` filenames; tests/golden checks it.)
        """
        opts: dict = {"driver": "blkdebug"}
        opts.update(self._rule_options)
        opts.update((key, self.options[key]) for key in _STRONG_OPTIONS if key in self.options)
        opts["image"] = self.inner.full_options()
        return opts

    @functools.cached_property  # the options are fixed when the node opens
    def _rule_options(self) -> tuple[tuple[str, object], ...]:
        """The flattened rule options in ``json:`` order (see :meth:`full_options`)."""
        flat: list[tuple[str, object]] = []
        for key in wire_order({"inject-error": 0, "set-state": 0}):
            order = _RULE_MEMBERS[key]
            for i, rule in enumerate(self.options.get(key, [])):
                schema_ordered = {name: rule[name] for name in order if name in rule}
                flat += [(f"{key}.{i}.{name}", value) for name, value in wire_order(schema_ordered).items()]
        walked = list(wire_order(dict(flat)).items())[::-1]
        return tuple((k, v) for prefix in ("inject-error.", "set-state.") for k, v in walked if k.startswith(prefix))

    # -- rules ------------------------------------------------------------------------
    def debug_event(self, name: str) -> None:
        """blkdebug_debug_event."""
        new_state = self.state
        injected = False
        for rule in list(self.rules):
            if rule.event != name or (rule.state and rule.state != self.state):
                continue
            if rule.kind == "inject-error":
                if not injected:
                    self.active = []
                    injected = True
                self.active.insert(0, rule)
            else:
                new_state = rule.new_state
        self.state = new_state

    def checks_sectors(self) -> bool:
        return any(rule.offset != -1 for rule in self.rules) or self.inner.checks_sectors()

    def hears_host_writes(self) -> bool:
        return bool(self.bitmaps) or self.inner.hears_host_writes()

    def note_failed_write(self, offsets, lengths) -> None:
        self._dirty_batch(offsets, lengths)

    def note_write(self, offsets, lengths, discard=False) -> None:
        super().note_write(offsets, lengths, discard)
        self.inner.note_write(offsets, lengths, discard)

    def debug_check(self, iotype: str, offset: int | None, length: int) -> None:
        """rule_check: raise BlockIOError if an active rule matches this request.

        ``sector`` is an offset in the image *file* (qcow2 data: its host offset, see
        :meth:`Qcow2Node._write_data`); ``offset`` None is a request no sector rule matches.
        """
        for rule in self.active:
            hit = rule.offset == -1 or (offset is not None and length and offset <= rule.offset < offset + length)
            if hit and iotype in rule.iotypes:
                if rule.once:
                    self.active.remove(rule)
                    self.rules.remove(rule)
                raise BlockIOError(rule.errno, "read" if iotype == "read" else "write", rule.immediately)

    # -- I/O passes through -------------------------------------------------------------
    def write(self, offset, length, value):
        self._dirty(offset, length)
        self.debug_check("write", offset, length)
        self.inner.write(offset, length, value)

    def write_batch(self, offsets, lengths, values):
        """One write request (a block-copy buffer) whose data comes as runs."""
        self._dirty_batch(offsets, lengths)
        if len(offsets):
            start = int(offsets[0])
            self.debug_check("write", start, int(offsets[-1] + lengths[-1]) - start)
        self.inner.write_batch(offsets, lengths, values)

    def write_zeroes(self, offset, length, unmap=False):
        self._dirty(offset, length)
        self.debug_check("write-zeroes", offset, length)
        self.inner.write_zeroes(offset, length, unmap)

    def read_extents(self, offset, length):
        return self.inner.read_extents(offset, length)

    def pread(self, offset, length):
        self.debug_check("read", offset, length)
        return self.inner.pread(offset, length)

    def flush(self) -> None:
        self.debug_check("flush", 0, 0)

    def _store(self, offset, length, value):
        self.inner._store(offset, length, value)

    def _store_batch(self, offsets, lengths, values):
        self.inner._store_batch(offsets, lengths, values)

    def _unmap(self, offset, length):
        self.inner.discard(offset, length)
