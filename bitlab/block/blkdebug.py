"""``blkdebug``: rules that inject I/O errors when the driver above reports events.

As in block/blkdebug.c: the state starts at 1; an event runs every rule registered
for it whose ``state`` is 0 or the current state, newest first. ``set-state`` rules pick the next
state (the oldest one taken wins); ``inject-error`` rules become the *active* rules (replacing the
previous set), and the next request of a matching I/O type (default: read, write, write-zeroes,
discard, flush; block-status only when named) and sector, if given, fails with ``errno``; a ``once``
rule is then removed for good. ``none`` fires as the node opens (blkdebug_open), so its rules are armed
at once: the first request fails.

The events bitlab fires, measured on QEMU 7.2 (qemu-io ``break``/``resume`` and inject-error rules):

- on this node itself, block/io.c's for each write request reaching it: ``pwritev`` (``pwritev_zero``
  for a write-zeroes request), then the rule check, then ``pwritev_done`` (after a failed one too); with
  ``align``, an unaligned request is padded (bdrv_pad_request): ``pwritev_rmw_head``/``pwritev_rmw_tail``,
  the read of the blocks around it, ``pwritev_rmw_after_head``/``pwritev_rmw_after_tail`` (one read, and the
  events in this order, when both fall in one buffer), and a write-zeroes request's unaligned head and tail
  become data writes; reads, writes and the bitmaps and ``wr_highest_offset`` of this node and of the file
  below count the padded range. A failed read-modify-write read is ignored by QEMU 7.2, which writes
  whatever its bounce buffer held around the data: bitlab refuses to guess (GenericError). The limits are
  not merged upward: the node above sends its requests as they are, this node pads them.
- from raw above: ``read_aio`` before a read, ``write_aio`` before a write; ``flush_to_os`` and (if it was
  written since its last flush) ``flush_to_disk`` for a flush of the raw node, and its own flush checked
  only if something was written to it since its last one (bdrv_co_flush's write generations; a FUA write's
  flush comes before the raw node counts that write, after this node did).
- from qcow2 above, in QEMU's order (:mod:`.qcow2_trace`): the open's reads (header, L1 table,
  ``reftable_load``, the refcount table, the header extensions, the backing file's name: QEMU's error texts
  when one fails), and for each operation its
  metadata steps (``cluster_alloc``, ``refblock_alloc``, ``refblock_load``, ``refblock_update_part``,
  ``l2_alloc_write``, ``l2_update``, ``l1_update``, ``l2_load``, ``cluster_free``) and data steps
  (``write_aio``, ``cluster_alloc_space``, ``cow_read``, ``read_backing_aio``, ``cow_write``, ``read_aio``),
  each request of its own failing as QEMU fails it.

Never fired (bitlab has no compressed clusters, internal snapshots, vmstate, copy-on-read, nor
``qemu-img commit``'s make-empty): ``l2_update_compressed``, ``l2_alloc_cow_read``, ``read_compressed``,
``write_compressed``, ``vmstate_load``, ``vmstate_save``, ``cluster_alloc_bytes``, ``cor_write``,
``empty_image_prepare``. Not simulated, refused (GenericError) where a rule may see them: a new refcount
block's (``refblock_alloc_*``, ``reftable_grow``/``reftable_update``), a qcow2 resize's (``l1_grow_*``,
``l1_shrink_*``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np

from ..errors import generic
from ..qmp_order import wire_order
from .extents import clip_runs
from .ioerror import BlockIOError
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
DEFAULT_IOTYPES = frozenset(IO_TYPES) - {"block-status"}  # a rule without iotype (add_rule's default mask)
EIO = 5
TASKS = 8  # QCOW2_MAX_WORKERS: the tasks of a request qcow2 starts before it waits for one to end
_RULE_MEMBERS = {
    "inject-error": ("event", "state", "iotype", "errno", "sector", "once", "immediately"),
    "set-state": ("event", "state", "new_state"),
}


def _int(value: int | str) -> int:
    return int(value, 0) if isinstance(value, str) else int(value)


def option_bool(value: bool | str) -> bool:
    """A boolean option as QemuOpts reads it: typed, or -drive's on/off strings."""
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
        self.once = option_bool(opts.get("once", False))
        self.immediately = option_bool(opts.get("immediately", False))
        self.iotypes = {opts["iotype"]} if "iotype" in opts else DEFAULT_IOTYPES


class _Run:
    """The state of one :meth:`BlkdebugNode.run`."""

    __slots__ = ("items", "done", "entries", "failed", "failed_tasks", "pool_failed", "main", "soft", "lost", "where",
                 "stopped")

    def __init__(self, items: list) -> None:
        self.items = items
        self.done = [False] * len(items)
        self.entries: list[tuple[str, object]] = []  # cache entries whose writes failed
        self.failed: BlockIOError | None = None  # the operation's error (the first)
        self.failed_tasks: list[int] = []  # the items that began the tasks that failed
        self.pool_failed = False  # a task ended failed (qcow2 starts no further piece)
        self.main = False  # the driver's own steps failed, not only its tasks
        self.soft = 0  # inside what may fail unnoticed
        self.lost: dict[object, tuple[int, int]] = {}  # refcount blocks whose read failed unnoticed: not cached
        self.where: dict[int, int] = {}  # a task's item -> the step it is at
        self.stopped: int | None = None  # the item where qcow2 started no further piece (a task had failed)


class BlkdebugNode(BlockNode):
    """A pass-through node with error injection; its child is ``image``."""

    driver = "blkdebug"

    def __init__(self, node_name: str, *, inject_error: list[dict], set_state: list[dict], **kw) -> None:
        super().__init__(node_name, **kw)
        self.state = 1
        self.rules = [Rule("inject-error", r) for r in inject_error] + [Rule("set-state", r) for r in set_state]
        self.active: list[Rule] = []
        self.align = max(_int(self.options.get("align") or 0), 1)  # bs->bl.request_alignment
        self.log: list[str] | None = None  # the events fired here, when a caller asks (tests, tools)
        self.refcounts_lost = False  # a refcount block read failed where qcow2 ignores it (see run)
        self.uncached: set = set()  # the refcount blocks whose reads failed so in the last run, never read since
        self.debug_event("none")  # blkdebug_open's last step: rules on "none" are armed at once

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
    def _waiting(self, events: frozenset[str]) -> list[Rule]:
        """The rules one of ``events`` may run during an operation that fires them: in the current state, or in
        one the set-state rules they run may lead to."""
        states, rules = {self.state}, [rule for rule in self.rules if rule.event in events]
        grew = True
        while grew:
            grew = False
            for rule in rules:
                if rule.kind == "set-state" and (not rule.state or rule.state in states) \
                        and rule.new_state not in states:
                    states.add(rule.new_state)
                    grew = True
        return [rule for rule in rules if not rule.state or rule.state in states]

    def sees(self, events: frozenset[str]) -> bool:
        """Whether an operation of a driver above that may fire ``events`` (and make requests) must go step by
        step here: a rule is armed (it may fail one of its requests), a rule may run on one of the events, or
        a caller logs them. Otherwise its events change nothing, and no request can fail."""
        return bool(self.active) or self.log is not None or bool(self._waiting(events))

    def fails_flushes(self) -> bool:
        """Whether an inject-error rule may fail a flush request (one without a ``sector``: a flush has none)."""
        return any(rule.kind == "inject-error" and rule.offset == -1 and "flush" in rule.iotypes for rule in self.rules)

    def may_fail(self, events: frozenset[str]) -> bool:
        """Whether a request may fail in an operation that fires (some of) ``events``: a rule is armed, or an
        inject-error rule may run on one of them."""
        return bool(self.active) or any(rule.kind == "inject-error" for rule in self._waiting(events))

    def debug_event(self, name: str, times: int = 1) -> None:
        """blkdebug_debug_event, ``times`` in a row. QEMU keeps each event's rules newest first
        (QLIST_INSERT_HEAD; inject-error rules are added before set-state ones) and takes them in
        that order: the first inject-error rule it takes clears the active list, each one goes to its
        head; the state a set-state rule picks wins over those taken after it."""
        if times != 1:
            self.fire_sequence((name,), times)
            return
        if self.log is not None:
            self.log.append(name)
        new_state, injected = None, False
        for rule in reversed(self.rules):
            if rule.event != name or (rule.state and rule.state != self.state):
                continue
            if rule.kind == "inject-error":
                if not injected:
                    self.active = []
                    injected = True
                self.active.insert(0, rule)
            elif new_state is None:
                new_state = rule.new_state
        if new_state is not None:
            self.state = new_state

    def hears_host_writes(self) -> bool:
        return bool(self.bitmaps) or self.inner.hears_host_writes()

    def note_write(self, offsets, lengths, discard=False) -> None:
        if not discard and self.align > 1 and len(offsets):  # the file below sees the padded requests
            offsets, lengths = self._padded_batch(offsets, lengths)
        super().note_write(offsets, lengths, discard)
        self.inner.note_write(offsets, lengths, discard)

    def debug_check(self, iotype: str, offset: int | None, length: int) -> None:
        """rule_check: raise BlockIOError if an active rule matches this request (``sector`` is an offset in
        the image *file*: a qcow2 node's requests come at their host offsets); ``offset`` None is a request no
        sector rule matches."""
        for rule in self.active:
            hit = rule.offset == -1 or (offset is not None and length and offset <= rule.offset < offset + length)
            if hit and iotype in rule.iotypes:
                if rule.once:
                    self.active.remove(rule)
                    self.rules.remove(rule)
                raise BlockIOError(rule.errno, "read" if iotype == "read" else "write", rule.immediately)

    # -- the block layer's request path into this node (block/io.c) --------------------------
    def _padded(self, offset: int, length: int) -> tuple[int, int]:
        """bdrv_pad_request: the request widened to whole blocks of ``align``."""
        a = self.align
        return offset // a * a, -(-(offset + length) // a) * a

    def _padded_batch(self, offsets, lengths) -> tuple[np.ndarray, np.ndarray]:
        offsets = np.asarray(offsets, dtype=np.int64)
        ends = offsets + np.asarray(lengths, dtype=np.int64)
        a = self.align
        lo = offsets // a * a
        return lo, -(-ends // a) * a - lo

    def _rmw(self, offset: int, length: int) -> None:
        """bdrv_padding_rmw_read: the aligned blocks around an unaligned write are read first, one read
        if head and tail fall in one buffer (merge_reads), with their events. QEMU 7.2 ignores a failed
        read and writes whatever its bounce buffer held around the data: bitlab refuses to guess."""
        for _ in self._rmw_steps(offset, length):
            pass

    def _rmw_steps(self, offset: int, length: int) -> Iterator[None]:
        """:meth:`_rmw` as a coroutine: it waits (yields) for each read."""
        a = self.align
        end = offset + length
        head, tail = offset % a, -end % a
        lo, hi = offset - head, end + tail
        buf_len = 2 * a if hi - lo > a and head and tail else a
        merge = hi - lo == buf_len
        if head or merge:
            if head:
                self.debug_event("pwritev_rmw_head")
            if merge and tail:
                self.debug_event("pwritev_rmw_tail")
            self._rmw_read(lo, buf_len if merge else a)
            yield
            if head:
                self.debug_event("pwritev_rmw_after_head")
            if merge and tail:
                self.debug_event("pwritev_rmw_after_tail")
            if merge:
                return
        if tail:
            self.debug_event("pwritev_rmw_tail")
            self._rmw_read(hi - a, a)
            yield
            self.debug_event("pwritev_rmw_after_tail")

    def _rmw_read(self, offset: int, length: int) -> None:
        try:
            self.debug_check("read", offset, length)
        except BlockIOError as err:
            raise generic(f"bitlab does not simulate a failed read-modify-write read (blkdebug "
                          f"'{self.node_name}', align {self.align}: errno {err.errno}): QEMU 7.2 ignores the "
                          "error and writes whatever its bounce buffer held around the data") from None

    def request(self, iotype: str, offset: int, length: int, host: bool = False) -> None:
        """bdrv_aligned_pwritev of one aligned write or write-zeroes request on this node: its events, the
        rule check (BlockIOError), and, failed or not, what bdrv_co_write_req_finish counts (``host``: a
        format driver's write, which the node below sees too, growing the file)."""
        for _ in self._request_steps(iotype, offset, length, host):
            pass

    def _request_steps(self, iotype: str, offset: int, length: int, host: bool = False) -> Iterator[None]:
        """:meth:`request` as a coroutine: it waits (yields) for the I/O after the rule check; a failing rule
        not ``immediately`` reschedules the request first (blkdebug's inject_error), then it fails."""
        self.debug_event("pwritev_zero" if iotype == "write-zeroes" else "pwritev")
        try:
            self.debug_check(iotype, offset, length)
        except BlockIOError as err:
            if not err.immediately:
                yield
            self.debug_event("pwritev_done")
            self._dirty(offset, length)
            raise
        yield
        self.debug_event("pwritev_done")
        if host:
            self.note_write(np.array([offset]), np.array([length]))
        else:
            self._dirty(offset, length)

    def flush_request(self) -> None:
        """bdrv_co_flush of this node by a driver above (bdrv_flush(bs->file->bs)): its flush reaches the
        rules only if something was written since the last one."""
        if self.write_gen != self.flushed_gen:
            gen = self.write_gen
            self.debug_check("flush", 0, 0)
            self.flushed_gen = gen

    def read_request(self, offset: int, length: int) -> tuple[int, int]:
        """A read request from a driver above: padded, then checked; the padded range."""
        lo, hi = self._padded(offset, length)
        self.debug_check("read", lo, hi - lo)
        return lo, hi

    def _read_steps(self, offset: int, length: int) -> Iterator[None]:
        """:meth:`read_request` as a coroutine: it waits (yields) for the read, or, failing not
        ``immediately``, to be rescheduled before it fails."""
        try:
            self.read_request(offset, length)
        except BlockIOError as err:
            if not err.immediately:
                yield
            raise
        yield

    def _store_padded(self, lo: int, hi: int, starts, ends, vals) -> None:
        """The image gets the padded request ``[lo, hi)``: the blocks' old bytes around the runs written."""
        first, last = int(starts[0]) if len(starts) else hi, int(ends[-1]) if len(ends) else lo
        parts = [(np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64),
                  np.asarray(vals, dtype=np.int64))]
        for a, b in ((lo, first), (last, hi)):
            if b > a:
                s, e, v = self.inner.read_extents(a, b - a)
                s, e, v, _ = clip_runs(s, e, v, np.array([a]), np.array([b]))
                parts.append((s, e, v))
        s = np.concatenate([p[0] for p in parts])
        order = np.argsort(s, kind="stable")
        e = np.concatenate([p[1] for p in parts])[order]
        v = np.concatenate([p[2] for p in parts])[order]
        self.inner.write_batch(s[order], e - s[order], v)

    def fire_sequence(self, names: tuple[str, ...], times: int) -> None:
        """Events ``names`` in this order, the whole sequence ``times`` over (the state settles into a
        cycle: only the repeats that can change something are taken)."""
        seen: dict[tuple, int] = {}
        i = 0
        while i < times:
            key = (self.state, tuple(map(id, self.active)))
            if key in seen and self.log is None:  # (a cycle: skip whole turns of it)
                period = i - seen[key]
                i += (times - i) // period * period
                seen.clear()
                if i >= times:
                    break
            seen[key] = i
            for name in names:
                self.debug_event(name)
            i += 1

    def host_write(self, offset: int, length: int, zeroes: bool = False) -> None:
        """A write (or write-zeroes) request of a format driver above, whose data it keeps itself: padded
        as any request, checked, and, once it succeeded, seen by the node below."""
        for _ in self._host_write_steps(offset, length, zeroes):
            pass

    def _host_write_steps(self, offset: int, length: int, zeroes: bool = False) -> Iterator[None]:
        """:meth:`host_write` as a coroutine: it yields wherever QEMU waits for I/O."""
        lo, hi = self._padded(offset, length)
        if (lo, hi) == (offset, offset + length):
            yield from self._request_steps("write-zeroes" if zeroes else "write", offset, length, host=True)
            return
        yield from self._rmw_steps(offset, length)
        if not zeroes:
            yield from self._request_steps("write", lo, hi - lo, host=True)
            return
        for p_lo, p_hi, zero in self._zero_pieces(offset, length):
            yield from self._request_steps("write-zeroes" if zero else "write", p_lo, p_hi - p_lo, host=True)

    def _zero_pieces(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        """bdrv_co_do_zero_pwritev's requests for an unaligned write-zeroes: the padded head (the whole buffer
        when head and tail fall in one), the aligned middle (zeroes), the padded tail: (start, end, zeroes)."""
        a = self.align
        end = offset + length
        lo, hi = self._padded(offset, length)
        buf_len = 2 * a if hi - lo > a and offset % a and end % a else a
        pieces = []
        pos = offset
        if offset % a or hi - lo == buf_len:
            pieces.append((lo, lo + (buf_len if hi - lo == buf_len else a), False))
            pos = pieces[-1][1]
        if end - pos >= a and pos < end:
            pieces.append((pos, pos + (end - pos) // a * a, True))
            pos = pieces[-1][1]
        if pos < end:
            pieces.append((pos, pos + a, False))
        return pieces

    def run(self, items: list) -> list[tuple[str, object]]:
        """The events and requests of a format driver's operation, in order (see qcow2_host's log): ``("ev", name,
        times)``, ``("seq", names, times)``, ``("w"|"z"|"r", offset, length, kind, key)``, ``("f",)`` a flush,
        ``("d", offset, length)`` a discard (its failure ignored), ``("call", fn)`` work elsewhere (a backing
        file's read), ``("end", cache)``: a cache written entry by entry goes on after a failed write and fails
        at its end (qcow2_cache_write), ``("links", +1/-1)`` around the tasks' links of their new clusters into
        L2 tables (qcow2_alloc_cluster_link_l2, with its dependency flush: left out when every task failed, as
        QEMU links only a task whose data was written), ``("soft", +1/-1)`` around what may fail unnoticed
        (qcow2_cache_set_dependency's flushes, qcow2_free_clusters' refcount updates: a refcount block whose
        read failed there is read again at its next ``("rc", block)``), and ``("task", ...)`` ...
        ``("task-end",)`` around the steps of a piece that qcow2 runs as a parallel task (aio_task_pool).

        A task runs until it waits for its first I/O (a request checked and sent on, or a failing one
        rescheduled); meanwhile qcow2 allocates and starts the next pieces, up to :data:`TASKS` tasks at once
        (then it waits for the oldest to end). Once the last piece has started, or the operation failed, the
        tasks waiting go on, one after another in the order they started, before what follows the pieces. A task
        whose request fails ends, and the operation fails at its end; once a task has ended failed (at once, for
        a rule failing ``immediately``), qcow2 allocates and starts no further piece (``stopped``: the item
        there). Returns the cache entries whose writes
        failed ((kind, key): they stay dirty); BlockIOError carries them too (``entries``), with ``at`` (the
        item that failed first), ``done`` (which items were carried out), ``tasks`` (the items that began the
        tasks that failed) and ``main`` (whether a step outside the tasks failed: the operation stopped there)."""
        run = _Run(items)
        ends: dict[int, int] = {}  # a "task" item -> its "task-end" item
        begun = 0
        for at, item in enumerate(items):
            if item[0] == "task":
                begun = at
            elif item[0] == "task-end":
                ends[begun] = at
        last = max(ends.values(), default=-1)
        waiting: list[tuple[int, Iterator[None]]] = []  # tasks started, waiting for their I/O: (item, steps)
        begun_tasks = 0
        at = 0
        while at < len(items):
            item = items[at]
            op = item[0]
            if op == "links" and item[1] > 0 and begun_tasks and len(run.failed_tasks) == begun_tasks:
                at = items.index(("links", -1), at) + 1  # (no task wrote its data: none links)
                continue
            if op == "task":
                begun_tasks += 1
                if len(waiting) >= TASKS:  # (aio_task_pool_wait_slot)
                    self._task_on(run, *waiting.pop(0))
                steps = self._task_steps(run, at, ends[at])
                try:
                    next(steps)
                    waiting.append((at, steps))
                except StopIteration:
                    pass
                except BlockIOError as err:
                    self._task_failed(run, at, err)
                at = ends[at] + 1
                if run.pool_failed and at <= last:  # (the loop's aio_task_pool_status: no further piece)
                    run.stopped = at
                    break
                if at > last:  # (aio_task_pool_wait_all)
                    while waiting:
                        self._task_on(run, *waiting.pop(0))
                continue
            try:
                for _ in self._step(run, item):
                    pass
                run.done[at] = True
            except BlockIOError as err:
                if op == "w" and item[3] in ("rb", "l2"):
                    run.entries.append((item[3], item[4]))
                if run.soft:  # (a refcount block read failed there: that refcount update is lost, a cluster leaks)
                    if op == "r" and item[3] == "rb":
                        run.lost[item[4]] = item[1], item[2]
                        self.refcounts_lost = True
                    elif op == "rc":
                        self.refcounts_lost = True
                    at += 1
                    continue
                if err is not run.failed:  # (a cache write-back's failure raised at its end keeps its place)
                    err.at, err.entries = at, run.entries  # type: ignore[attr-defined]
                if op == "w" and item[3] in ("rb", "l2"):
                    if run.failed is None:
                        run.failed = err
                    at += 1
                    continue
                run.failed, run.main = err, True  # (the driver's own error wins over its tasks')
                break
            at += 1
        while waiting:  # (the tasks started go on after a failure of the operation's own steps)
            self._task_on(run, *waiting.pop(0))
        self.uncached = set(run.lost)
        failed = run.failed
        if failed is not None:
            failed.done, failed.tasks, failed.main = run.done, run.failed_tasks, run.main  # type: ignore[attr-defined]
            failed.stopped = run.stopped  # type: ignore[attr-defined]
            raise failed
        return run.entries

    def _step(self, run: _Run, item: tuple) -> Iterator[None]:
        """One step of the operation, as a coroutine that yields wherever QEMU waits for I/O (but a backing file's
        read: see :meth:`_task_steps`)."""
        op = item[0]
        if op == "ev":
            self.debug_event(item[1], item[2])
        elif op == "seq":
            self.fire_sequence(item[1], item[2])
        elif op == "w" or op == "z":
            yield from self._host_write_steps(item[1], item[2], zeroes=op == "z")
        elif op == "r":
            yield from self._read_steps(item[1], item[2])
            if item[3] == "rb":
                run.lost.pop(item[4], None)
        elif op == "rc" and item[1] in run.lost:  # (its next update_refcount reads it again: qcow2_cache_get)
            yield from self._read_steps(*run.lost[item[1]])
            del run.lost[item[1]]
        elif op == "f":
            self.flush_request()
        elif op == "d":  # (qcow2_process_discards: a failed discard is only traced)
            try:
                self.discard(item[1], item[2])
            except BlockIOError:
                pass
        elif op == "call":
            item[1]()
        elif op == "links":  # (the tasks' links: see run)
            pass
        elif op == "soft":
            run.soft += item[1]
        elif op == "end" and run.failed is not None and not run.soft and not run.failed_tasks:
            raise run.failed

    def _task_steps(self, run: _Run, first: int, end: int) -> Iterator[None]:
        """The steps of the task between items ``first`` ("task") and ``end`` ("task-end"), as a coroutine that
        yields wherever QEMU's task waits for I/O; ``run.where[first]``: the step under way."""
        items = run.items
        for at in range(first + 1, end):
            run.where[first] = at
            item = items[at]
            if item[0] not in ("ev", "w", "z", "r", "call"):
                raise AssertionError(f"no {item[0]!r} step in a qcow2 task")
            yield from self._step(run, item)
            if item[0] == "call":  # (the backing file's read: the task waits for it)
                yield
            run.done[at] = True

    def _task_on(self, run: _Run, first: int, steps: Iterator[None]) -> None:
        """A task that waited goes on to its end."""
        try:
            for _ in steps:
                pass
        except BlockIOError as err:
            self._task_failed(run, first, err)

    @staticmethod
    def _task_failed(run: _Run, first: int, err: BlockIOError) -> None:
        """The task begun at item ``first`` ended with ``err``: the operation fails at its end."""
        run.failed_tasks.append(first)
        run.pool_failed = True
        if run.failed is None:
            err.at, err.entries = run.where[first], run.entries  # type: ignore[attr-defined]
            run.failed = err


    # -- I/O passes through -------------------------------------------------------------
    def write(self, offset, length, value):
        unmap = self.zero_detected() if value == 0 else None
        if unmap is not None:
            self.write_zeroes(offset, length, unmap=unmap)
            return
        lo, hi = self._padded(offset, length)
        if (lo, hi) == (offset, offset + length):
            self.request("write", offset, length)
            self.inner.write(offset, length, value)
            return
        self._rmw(offset, length)
        self.request("write", lo, hi - lo)
        self._store_padded(lo, hi, [offset], [offset + length], [value])

    def write_batch(self, offsets, lengths, values):
        """One write request (a block-copy buffer) whose data comes as runs."""
        if not len(offsets):
            return
        start, end = int(offsets[0]), int(offsets[-1] + lengths[-1])
        lo, hi = self._padded(start, end - start)
        if (lo, hi) != (start, end):
            self._rmw(start, end - start)
            self.request("write", lo, hi - lo)
            offsets = np.asarray(offsets, dtype=np.int64)
            self._store_padded(lo, hi, offsets, offsets + np.asarray(lengths, dtype=np.int64),
                               np.broadcast_to(np.asarray(values, dtype=np.int64), offsets.shape))
            return
        self.debug_event("pwritev")
        try:
            self.debug_check("write", start, end - start)
        finally:
            self.debug_event("pwritev_done")
            self._dirty_batch(offsets, lengths)
        self.inner.write_batch(offsets, lengths, values)

    def write_zeroes(self, offset, length, unmap=False):
        """bdrv_co_do_zero_pwritev: an unaligned head and tail are read first and written as data (one write
        if both fall in one buffer); the aligned middle is a write-zeroes request."""
        end = offset + length
        lo, hi = self._padded(offset, length)
        if (lo, hi) == (offset, end):
            self.request("write-zeroes", offset, length)
            self.inner.write_zeroes(offset, length, unmap and self.inner.discard_unmap)  # (bdrv_co_pwrite_zeroes)
            return
        self._rmw(offset, length)
        for p_lo, p_hi, zero in self._zero_pieces(offset, length):
            self.request("write-zeroes" if zero else "write", p_lo, p_hi - p_lo)
            if zero:
                self.inner.write_zeroes(p_lo, p_hi - p_lo, unmap and self.inner.discard_unmap)
            else:
                self._store_padded(p_lo, p_hi, [max(p_lo, offset)], [min(p_hi, end)], [0])

    def discard(self, offset, length):
        """bdrv_co_pdiscard: dropped without discard=unmap; the range is counted whole, then passed on in
        pieces at the alignment (``opt-discard``, else ``align``); blkdebug turns a piece shorter than
        ``align`` away (ENOTSUP; QEMU 7.2 divides by zero there unless ``opt-discard`` is set) and checks
        the others."""
        if not self.discard_unmap:
            return
        self._dirty(offset, length, discard=True)
        r = self.align
        a = max(r, _int(self.options.get("opt-discard") or 0))
        head, tail = offset % a, (offset + length) % a
        while length > 0:
            num = length
            if head:
                num = min(length, a - head)
                if num % r:
                    num %= r
                head = (head + num) % a
            elif tail:
                if num > a:
                    num -= tail
                elif tail % r and tail > r:
                    tail %= r
                    num -= tail
            if num >= r:
                self.debug_check("discard", offset, num)
                self.inner.discard(offset, num)
            offset, length = offset + num, length - num

    def read_extents(self, offset, length):
        return self.inner.read_extents(offset, length)

    def pread(self, offset, length):
        lo, hi = self.read_request(offset, length)
        if (lo, hi) == (offset, offset + length):
            return self.inner.pread(offset, length)
        s, e, v = self.inner.pread(lo, hi - lo)
        s, e, v, _ = clip_runs(s, e, v, np.array([offset]), np.array([offset + length]))
        return s, e, v

    def _flush_to_disk(self) -> None:
        self.debug_check("flush", 0, 0)

    def _store(self, offset, length, value):
        self.inner._store(offset, length, value)

    def _store_batch(self, offsets, lengths, values):
        self.inner._store_batch(offsets, lengths, values)

    def _unmap(self, offset, length):
        self.inner.discard(offset, length)
