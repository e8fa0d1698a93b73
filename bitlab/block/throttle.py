"""I/O throttling as QEMU 7.2 does it: util/throttle.c's leaky buckets and block/throttle-groups.c's groups.

A :class:`ThrottleGroup` (the ``throttle-group`` object) holds one :class:`ThrottleConfig`: six leaky
buckets (bytes and operations; total, read, write), each with an average rate, a burst rate and a
burst length, and ``iops-size``. Its members (``throttle`` filter nodes) share them. A request asks
:meth:`ThrottleGroup.intercept` before it goes on: it goes at once while the buckets have room
(``throttle_compute_wait``: a bucket holds a tenth of a second of its rate, or ``max × burst-length``),
else it queues and a timer on the simulated clock lets the queued requests go one by one, round-robin
over the members (``schedule_next_request``). A drained member's requests skip the limits
(``io_limits_disabled``). Times are the machine's simulated nanoseconds; QEMU uses
``QEMU_CLOCK_REALTIME``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import generic
from .node import BlockNode

THROTTLE_VALUE_MAX = 1_000_000_000_000_000  # include/qemu/throttle.h
UINT_MAX = 0xFFFF_FFFF
NS_PER_S = 1_000_000_000
READ, WRITE = 0, 1
open_nodes = 0  # throttle nodes open in any machine: none, and no request needs to look for one

# BucketType's order (THROTTLE_BPS_TOTAL ... THROTTLE_OPS_WRITE): throttle_is_valid checks them so.
BUCKETS = ("bps-total", "bps-read", "bps-write", "iops-total", "iops-read", "iops-write")
# ThrottleLimits' members in qapi/block-core.json's order (what qom-get answers).
LIMIT_KEYS = tuple(f"{kind}-{d}{suffix}" for kind in ("iops", "bps") for d in ("total", "read", "write")
                   for suffix in ("", "-max", "-max-length")) + ("iops-size",)
# The buckets a read or a write checks (throttle_compute_wait_for), and those it fills (throttle_account).
_CHECKED = (("bps-total", "iops-total", "bps-read", "iops-read"),
            ("bps-total", "iops-total", "bps-write", "iops-write"))
_BYTES = (("bps-total", "bps-read"), ("bps-total", "bps-write"))
_UNITS = (("iops-total", "iops-read"), ("iops-total", "iops-write"))
# throttle_limits_to_config reads the burst lengths in this order (its range check names the first).
_LENGTH_ORDER = ("bps-total", "bps-read", "bps-write", "iops-total", "iops-read", "iops-write")


@dataclass
class Bucket:
    """A LeakyBucket: ``avg``/``max`` in units per second (bytes or operations), ``burst_length`` in
    seconds; ``level``/``burst_level`` what it holds now."""

    avg: int = 0
    max: int = 0
    burst_length: int = 1
    level: float = 0.0
    burst_level: float = 0.0

    def leak(self, delta_ns: int) -> None:
        """throttle_leak_bucket."""
        self.level = max(self.level - self.avg * float(delta_ns) / NS_PER_S, 0.0)
        if self.burst_length > 1:
            self.burst_level = max(self.burst_level - self.max * float(delta_ns) / NS_PER_S, 0.0)

    def wait_ns(self) -> int:
        """throttle_compute_wait: nanoseconds until the bucket has room again (0: none to wait)."""
        if not self.avg:
            return 0
        if not self.max:
            bucket_size, burst_size = self.avg / 10, 0.0
        else:
            bucket_size, burst_size = float(self.max * self.burst_length), self.max / 10
        extra = self.level - bucket_size
        if extra > 0:
            return int(extra * NS_PER_S / self.avg)
        if self.burst_length > 1:
            extra = self.burst_level - burst_size
            if extra > 0:
                return int(extra * NS_PER_S / self.max)
        return 0


@dataclass
class ThrottleConfig:
    """A ThrottleConfig: the six buckets and ``op_size`` (``iops-size``)."""

    buckets: dict[str, Bucket] = field(default_factory=lambda: {name: Bucket() for name in BUCKETS})
    op_size: int = 0

    def copy(self) -> ThrottleConfig:
        return ThrottleConfig({k: Bucket(b.avg, b.max, b.burst_length) for k, b in self.buckets.items()},
                              self.op_size)

    def with_limits(self, limits: dict) -> ThrottleConfig:
        """throttle_limits_to_config: this config with the ThrottleLimits given (members left out keep
        their value), checked (GenericError with QEMU's text)."""
        cfg = self.copy()
        for name in BUCKETS:
            b = cfg.buckets[name]
            b.avg = _u64(limits.get(name, b.avg))
            b.max = _u64(limits.get(f"{name}-max", b.max))
        for name in _LENGTH_ORDER:
            key = f"{name}-max-length"
            if key in limits:
                if limits[key] > UINT_MAX:  # (an int64 compared: a negative one passes, and wraps)
                    raise generic(f"{key} value must be in the range [0, {UINT_MAX}]")
                cfg.buckets[name].burst_length = _u64(limits[key])
        if "iops-size" in limits:
            cfg.op_size = _u64(limits["iops-size"])
        cfg.check()
        return cfg

    def check(self) -> None:
        """throttle_is_valid, in its order and with its texts."""
        b = self.buckets

        def both(kind: str, attr: str) -> bool:
            return bool(getattr(b[f"{kind}-total"], attr)) and bool(getattr(b[f"{kind}-read"], attr)
                                                                 or getattr(b[f"{kind}-write"], attr))

        if both("bps", "avg") or both("iops", "avg") or both("bps", "max") or both("iops", "max"):
            raise generic("bps/iops/max total values and read/write values cannot be used at the same time")
        if self.op_size and not (b["iops-total"].avg or b["iops-read"].avg or b["iops-write"].avg):
            raise generic("iops size requires an iops value to be set")
        for bkt in b.values():
            if bkt.avg > THROTTLE_VALUE_MAX or bkt.max > THROTTLE_VALUE_MAX:
                raise generic(f"bps/iops/max values must be within [0, {THROTTLE_VALUE_MAX}]")
            if not bkt.burst_length:
                raise generic("the burst length cannot be 0")
            if bkt.burst_length > 1 and not bkt.max:
                raise generic("burst length set without burst rate")
            if bkt.max and bkt.burst_length > THROTTLE_VALUE_MAX // bkt.max:
                raise generic("burst length too high for this burst rate")
            if bkt.max and not bkt.avg:
                raise generic("bps_max/iops_max require corresponding bps/iops values")
            if bkt.max and bkt.max < bkt.avg:
                raise generic("bps_max/iops_max cannot be lower than bps/iops")

    def limits(self) -> dict:
        """throttle_config_to_limits: every member, in ThrottleLimits' order."""
        out: dict[str, int] = {}
        for key in LIMIT_KEYS:
            if key == "iops-size":
                out[key] = self.op_size
                continue
            name, _, attr = key.partition("-max")
            bkt = self.buckets[name]
            out[key] = bkt.avg if not attr and key == name else bkt.burst_length if attr == "-length" else bkt.max
        return out

    @property
    def enabled(self) -> bool:
        """throttle_enabled: some average rate is set."""
        return any(b.avg > 0 for b in self.buckets.values())


def _u64(value: int) -> int:
    """An int64 QAPI value as the uint64_t field it lands in (a negative one wraps)."""
    return value & 0xFFFF_FFFF_FFFF_FFFF


class Member:
    """A ThrottleGroupMember (one per ``throttle`` node): its queued requests and timers per direction."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pending = [0, 0]
        self.queues: tuple[deque, deque] = (deque(), deque())
        self.timers: list[Any] = [None, None]
        self.io_limits_disabled = 0


class ThrottleGroup:
    """A ``throttle-group`` object on a machine's scheduler."""

    def __init__(self, name: str, cfg: ThrottleConfig, scheduler: Any) -> None:
        self.name = name
        self.scheduler = scheduler
        self.cfg = cfg.copy()
        self.previous_leak = scheduler.clock.now_ns
        self.members: list[Member] = []  # QLIST_INSERT_HEAD: the newest first
        self.tokens: list[Member | None] = [None, None]
        self.any_timer_armed = [False, False]

    # -- configuration -----------------------------------------------------------------------
    def configure(self, cfg: ThrottleConfig) -> None:
        """throttle_config: the new limits, the buckets empty, the leak clock restarted (timers stay)."""
        self.cfg = cfg.copy()
        self.previous_leak = self.scheduler.clock.now_ns

    def register(self, member: Member) -> None:
        """throttle_group_register_tgm."""
        global open_nodes
        for d in (READ, WRITE):
            if self.tokens[d] is None:
                self.tokens[d] = member
        self.members.insert(0, member)
        open_nodes += 1

    def unregister(self, member: Member) -> None:
        """throttle_group_unregister_tgm (the member has nothing queued: it was drained)."""
        global open_nodes
        for d in (READ, WRITE):
            if self.tokens[d] is member:
                nxt = self._next(member)
                self.tokens[d] = None if nxt is member else nxt
        self.members.remove(member)
        open_nodes -= 1

    # -- util/throttle.c ---------------------------------------------------------------------
    def _leak(self, now: int) -> None:
        delta = now - self.previous_leak
        self.previous_leak = now
        if delta > 0:
            for bkt in self.cfg.buckets.values():
                bkt.leak(delta)

    def wait_ns(self, d: int) -> int:
        """throttle_compute_timer after a leak to now: how long a request of direction ``d`` waits."""
        self._leak(self.scheduler.clock.now_ns)
        return max(self.cfg.buckets[name].wait_ns() for name in _CHECKED[d])

    def account(self, d: int, nbytes: int) -> None:
        """throttle_account."""
        units = nbytes / self.cfg.op_size if self.cfg.op_size and nbytes > self.cfg.op_size else 1.0
        for names, amount in ((_BYTES[d], float(nbytes)), (_UNITS[d], units)):
            for name in names:
                bkt = self.cfg.buckets[name]
                bkt.level += amount
                if bkt.burst_length > 1:
                    bkt.burst_level += amount

    # -- block/throttle-groups.c -------------------------------------------------------------
    def _next(self, member: Member) -> Member:
        i = self.members.index(member) + 1
        return self.members[i] if i < len(self.members) else self.members[0]

    def _next_token(self, member: Member, d: int) -> Member:
        """next_throttle_token."""
        if member.pending[d] and member.io_limits_disabled:
            return member
        start = token = self.tokens[d]
        assert start is not None
        token = self._next(token)
        while token is not start and not token.pending[d]:
            token = self._next(token)
        if token is start and not token.pending[d]:
            token = member
        return token

    def _schedule_timer(self, member: Member, d: int) -> bool:
        """throttle_group_schedule_timer: whether ``member``'s next request of direction ``d`` must wait
        (arming its timer if no timer of the group is armed)."""
        if member.io_limits_disabled:
            return False
        if self.any_timer_armed[d]:
            return True
        wait = self.wait_ns(d)
        if not wait:
            return False
        if not self._armed(member, d):
            self._arm(member, d, wait)
        self.tokens[d] = member
        self.any_timer_armed[d] = True
        return True

    def _armed(self, member: Member, d: int) -> bool:
        timer = member.timers[d]
        return timer is not None and not timer.cancelled

    def _arm(self, member: Member, d: int, delay: int) -> None:
        member.timers[d] = self.scheduler.after(delay, lambda: self._timer_cb(member, d))

    def _timer_cb(self, member: Member, d: int) -> None:
        member.timers[d] = None
        self.any_timer_armed[d] = False
        self._restart_queue(member, d)

    def _restart_queue(self, member: Member, d: int) -> None:
        """throttle_group_restart_queue(_entry): the member's first queued request goes on; with none
        queued, the next member's is scheduled."""
        if member.queues[d]:
            member.queues[d].popleft()()
        else:
            self._schedule_next(member, d, in_coroutine=True)

    def _schedule_next(self, member: Member, d: int, in_coroutine: bool) -> list[Callable[[], None]]:
        """schedule_next_request; returns the queued request it restarts at once (run by the caller after
        the current request went on: the woken coroutine runs when the current one yields)."""
        token = self._next_token(member, d)
        if not token.pending[d]:
            return []
        if self._schedule_timer(token, d):
            return []
        woken: list[Callable[[], None]] = []
        if in_coroutine and member.queues[d]:
            woken.append(member.queues[d].popleft())
            token = member
        else:
            timer = token.timers[d]
            if timer is not None:
                timer.cancel()
            self._arm(token, d, 0)
            self.any_timer_armed[d] = True
        self.tokens[d] = token
        return woken

    def intercept(self, member: Member, nbytes: int, is_write: bool, go: Callable[[], None]) -> bool:
        """throttle_group_co_io_limits_intercept: ``go()`` runs when the request may go on. Returns True
        if it went on at once, False if it was queued."""
        d = WRITE if is_write else READ
        token = self._next_token(member, d)
        must_wait = self._schedule_timer(token, d)
        if must_wait or member.pending[d]:
            member.pending[d] += 1
            member.queues[d].append(lambda: self._resume(member, d, nbytes, go))
            return False
        self._proceed(member, d, nbytes, go)
        return True

    def _resume(self, member: Member, d: int, nbytes: int, go: Callable[[], None]) -> None:
        member.pending[d] -= 1
        self._proceed(member, d, nbytes, go)

    def _proceed(self, member: Member, d: int, nbytes: int, go: Callable[[], None]) -> None:
        self.account(d, nbytes)
        woken = self._schedule_next(member, d, in_coroutine=True)
        go()
        for fn in woken:
            fn()

    def drain_begin(self, member: Member) -> None:
        """throttle_co_drain_begin: limits off for the member; its queued requests go on now
        (throttle_group_restart_tgm)."""
        member.io_limits_disabled += 1
        if member.io_limits_disabled > 1:
            return
        for d in (READ, WRITE):
            timer = member.timers[d]
            if timer is not None and not timer.cancelled:
                timer.cancel()
                self._timer_cb(member, d)
            else:
                self._restart_queue(member, d)

    def drain_end(self, member: Member) -> None:
        member.io_limits_disabled -= 1

    @property
    def queued(self) -> int:
        """Requests waiting in the group."""
        return sum(m.pending[READ] + m.pending[WRITE] for m in self.members)




_admitted = 0  # > 0 while block-copy's job path makes requests whose throttle intercepts it did itself


@contextmanager
def admitted() -> Iterator[None]:
    """Requests made inside pass throttle nodes without waiting: their caller (a job's block-copy, which
    cannot block) went through :meth:`ThrottleGroup.intercept` for them already."""
    global _admitted
    _admitted += 1
    try:
        yield
    finally:
        _admitted -= 1


_deadlines: list[list] = []  # cbw-timeouts in force: [ns, the absolute time once known, struck]


@contextmanager
def timeout(ns: int) -> Iterator[list]:
    """A copy-before-write node's ``cbw-timeout`` over the requests made inside; yields its record, whose
    last item tells afterwards whether a wait went past it (qemu_co_timeout). Measured on both daemons, the
    guest's request still returns only once the copy's requests have passed the throttle (1.61 s for a
    1 s timeout in iotest copy-before-write's case): the copy completes, and the request fails with
    ETIMEDOUT."""
    record = [ns, None, False]
    if ns <= 0:
        yield record
        return
    _deadlines.append(record)
    try:
        yield record
    finally:
        _deadlines.pop()


def block_until(scheduler: Any, done: Callable[[], bool]) -> None:
    """A blocked request: the machine runs on (its jobs, its timers) until ``done()``. A ``cbw-timeout``
    in force starts counting when the request first blocks; a wait past it marks it struck."""
    record = _deadlines[-1] if _deadlines else None
    if record is not None and record[1] is None:
        record[1] = scheduler.clock.now_ns + record[0]
    while not done():
        upcoming = scheduler.next_time
        if upcoming is None:
            raise RuntimeError("bitlab: a blocked request was never let go")
        if record is not None and upcoming > record[1]:
            record[2] = True
        scheduler.step()


def throttle_path(node: BlockNode | None) -> list[ThrottleNode]:
    """The throttle nodes a request to ``node`` passes on its way down through filters (throttle, raw without
    offset or size, blkdebug, copy-before-write's file), the topmost first."""
    return _through_filters(node)[0] if open_nodes else []


def _through_filters(node: BlockNode | None) -> tuple[list[ThrottleNode], BlockNode | None]:
    """The way down from ``node`` through filters: the throttle nodes on it, and the node it ends at."""
    out: list[ThrottleNode] = []
    while node is not None:
        if isinstance(node, ThrottleNode):
            out.append(node)
            node = node.child("file")
        elif node.driver in ("raw", "copy-before-write") and not _raw_window(node):
            node = node.child("file")
        elif node.driver == "blkdebug":
            node = node.child("image")
        else:
            break
    return out, node


def backing_reads(node: BlockNode, offset: int, length: int) -> list[tuple[ThrottleNode, int]]:
    """The throttle nodes a read of ``[offset, offset + length)`` from ``node`` meets in backing chains below
    it, each with the bytes of one request: a format node reads what its own layer does not hold from its
    backing node (a request per unallocated stretch), and so on down the chain."""
    out: list[tuple[ThrottleNode, int]] = []
    if not open_nodes:
        return out
    node = _through_filters(node)[1]
    backing = node.backing if node is not None else None
    if backing is None:
        return out
    starts, ends, allocated = node.is_allocated(offset, length)
    for s, e, held in zip(starts.tolist(), ends.tolist(), allocated.tolist()):
        e = min(e, backing.size)
        if held or e <= s:
            continue
        out += [(throttle, e - s) for throttle in throttle_path(backing)]
        out += backing_reads(backing, s, e - s)
    return out


def _raw_window(node: BlockNode) -> bool:
    return node.driver == "raw" and ("offset" in node.options or "size" in node.options)


def below_format(node: BlockNode) -> ThrottleNode | None:
    """A throttle node in the subtree of a format node's ``file`` (or a raw node's with offset or size):
    requests reach it at host offsets, which bitlab does not throttle."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, ThrottleNode):
            return n
        stack += [child for _, child in n.children]
    return None


class ThrottleNode(BlockNode):
    """The ``throttle`` filter (block/throttle.c): one child, ``file``; a member of its ``throttle-group``.
    Its data path passes everything to the child; the requests' waiting is the machine's (see
    :meth:`ThrottleGroup.intercept`)."""

    driver = "throttle"
    strong_options = ("throttle-group",)

    def __init__(self, node_name: str, *, group: ThrottleGroup, **kw) -> None:
        super().__init__(node_name, **kw)
        self.group = group
        self.member = Member(node_name)
        group.register(self.member)

    @property
    def file(self) -> BlockNode:
        node = self.child("file")
        assert node is not None
        return node

    @property
    def size(self) -> int:
        return self.file.size

    @property
    def image(self):  # the image file below, for format drivers above
        return getattr(self.file, "image", None)

    @property
    def cluster_size(self) -> int | None:
        return self.file.cluster_size  # bdrv_get_info: a filter answers for what it filters

    @property
    def reports_zeroes(self) -> bool:
        return self.file.reports_zeroes  # bdrv_co_block_status_from_file

    def close(self) -> None:
        """throttle_close: drained first (its queued requests go: bdrv_close drains the node), the member
        leaves its group."""
        if self.member.pending[READ] or self.member.pending[WRITE]:
            self.group.drain_begin(self.member)
            self.group.drain_end(self.member)
        self.group.unregister(self.member)

    def move_to(self, group: ThrottleGroup) -> None:
        """throttle_reopen_commit with another group: the member leaves its group and joins that one."""
        self.group.unregister(self.member)
        self.group = group
        group.register(self.member)

    def wait(self, nbytes: int, is_write: bool) -> None:
        """throttle_group_co_io_limits_intercept for a request that blocks its caller (a guest's): the
        machine runs on (its jobs, its timers) until the group lets the request go."""
        if _admitted:
            return
        released: list[bool] = []
        if self.group.intercept(self.member, nbytes, is_write, lambda: released.append(True)):
            return
        block_until(self.group.scheduler, lambda: bool(released))

    def write(self, offset, length, value):
        self.wait(length, True)
        self._dirty(offset, length)
        self.file.write(offset, length, value)

    def write_batch(self, offsets, lengths, values):
        if not _admitted and self.group.cfg.enabled:  # each request waits its turn
            for off, ln, v in zip(np.asarray(offsets).tolist(), np.asarray(lengths).tolist(),
                                  np.asarray(values).tolist()):
                self.write(off, ln, v)
            return
        self._dirty_batch(offsets, lengths)
        self.file.write_batch(offsets, lengths, values)

    def _write_buffer_data(self, offset, length, starts, ends, values, detect):
        self.wait(length, True)
        self._dirty(offset, length)
        self.file.write_buffer(offset, length, starts, ends, values, detect)

    def write_zeroes(self, offset, length, unmap=False):
        self.wait(length, True)
        self._dirty(offset, length)
        self.file.write_zeroes(offset, length, unmap and self.file.discard_unmap)  # (bdrv_co_pwrite_zeroes)

    def write_compressed(self, offset, length, starts, ends, values):
        """throttle_co_pwritev_compressed: a write for the limits, passed on compressed."""
        self.wait(length, True)
        self._dirty(offset, length)
        self.file.write_compressed(offset, length, starts, ends, values)

    def write_compressed_clusters(self, clusters, lengths, starts, ends, values, detect=True, request=None):
        """A backup's compressed writes, a request per cluster of the image below (its block-copy waited at
        this node for them)."""
        if request:
            self._dirty(*request)
        else:
            self._dirty_batch(clusters * self.file.cluster_size, lengths)
        return self.file.write_compressed_clusters(clusters, lengths, starts, ends, values, detect, request)

    def compressed_write_meets_host(self, clusters):
        return self.file.compressed_write_meets_host(clusters)

    def discard(self, offset, length):
        if not self.discard_unmap:
            return
        self.wait(length, True)  # throttle_co_pdiscard: a write for the limits
        self._dirty(offset, length, discard=True)
        self.file.discard(offset, length)

    def read_extents(self, offset, length):
        return self.file.read_extents(offset, length)

    def pread(self, offset, length):
        self.wait(length, False)
        return self.file.pread(offset, length)

    def block_status(self, offset, length):
        return self.file.block_status(offset, length)

    def copy_status(self, offset, length):
        return self.file.copy_status(offset, length)

    def is_allocated(self, offset, length):
        return self.file.is_allocated(offset, length)  # a filter: the node below answers

    def _truncate(self, size):
        self.file.resize(size)


__all__ = ["BUCKETS", "LIMIT_KEYS", "THROTTLE_VALUE_MAX", "Bucket", "Member", "ThrottleConfig", "ThrottleGroup",
           "ThrottleNode", "admitted", "backing_reads", "below_format", "block_until",
           "throttle_path", "timeout"]
