"""The job paths' fast paths against the general code they stand in for.

Each fast path (bitlab/jobs/block_copy.py, bitlab/block/extents.py) must give exactly what
the general path gives: these tests run both on the same input, or check against a model.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bitlab import Machine
from bitlab.block.extents import UNALLOCATED, ExtentMap
from bitlab.jobs import block_copy
from bitlab.jobs.block_copy import LATENCY_NS, BlockCopy

M = 1 << 20


def _block_copy(vm: Machine, node: str) -> BlockCopy:
    source = vm.graph.nodes[node]
    return BlockCopy(source, source, 65536, vm.scheduler, lambda done, remaining: None)


runs = st.lists(st.tuples(st.integers(0, 300), st.integers(1, 40)), max_size=40)


@given(runs, st.integers(0, 299), st.integers(1, 60), st.integers(1, 700))
@settings(max_examples=300, deadline=None)
def test_few_dirty_runs_match_the_numpy_search(ranges, start, max_runs, max_clusters):
    vm = Machine()
    vm.add_drive("d", 300 * 65536, node_name="n")
    bcs = _block_copy(vm, "n")
    bcs.bitmap.clear()
    for off, ln in ranges:
        bcs.bitmap.set_range(off * 65536, ln * 65536)
    first = bcs.bitmap.bits.find(1, start)
    if first < 0:
        return
    fast = bcs._dirty_runs(first, max_runs, max_clusters)
    few = bcs._few_dirty_runs(first, max_runs, max_clusters)
    block_copy.FEW_RUNS, saved = 0, block_copy.FEW_RUNS  # the numpy path only
    try:
        assert bcs._few_dirty_runs(first, max_runs, max_clusters) is None
        slow = bcs._dirty_runs(first, max_runs, max_clusters)
    finally:
        block_copy.FEW_RUNS = saved
    assert fast[0].tolist() == slow[0].tolist() and fast[1].tolist() == slow[1].tolist()
    assert fast[0].dtype == slow[0].dtype == np.int64
    if few is not None:  # at most FEW_RUNS runs: the bitarray search answered
        assert len(few[0]) <= block_copy.FEW_RUNS
    else:  # it gives up only when the answer has more
        assert len(slow[0]) > block_copy.FEW_RUNS


def test_few_dirty_runs_give_up_past_their_limit():
    vm = Machine()
    vm.add_drive("d", 64 * M, node_name="n")
    bcs = _block_copy(vm, "n")
    bcs.bitmap.clear()
    for i in range(block_copy.FEW_RUNS + 1):
        bcs.bitmap.set_range(2 * i * 65536, 65536)
    assert bcs._few_dirty_runs(0, 1000, 10**6) is None
    rs, re = bcs._dirty_runs(0, 1000, 10**6)
    assert rs.tolist() == [2 * i for i in range(block_copy.FEW_RUNS + 1)]
    assert (re - rs).tolist() == [1] * (block_copy.FEW_RUNS + 1)


def _replayed(size: int, base: list[tuple[int, int, int]], offsets, lengths, values) -> np.ndarray:
    ref = np.full(size, UNALLOCATED, dtype=np.int64)
    for off, ln, val in base:
        ref[off : off + ln] = val
    for off, ln, val in zip(offsets, lengths, values):
        ref[off : off + ln] = val
    return ref


@given(st.integers(1, 400), st.lists(st.tuples(st.integers(0, 399), st.integers(1, 50), st.integers(-2, 3)),
                                     max_size=6),
       st.integers(0, 399), st.lists(st.integers(1, 30), min_size=2, max_size=20), st.integers(-3, 3))
@settings(max_examples=300, deadline=None)
def test_back_to_back_writes_of_one_value_merge_as_one(size, base, at, lengths, value):
    """The merge's fast path (a job's zero tasks: contiguous, one value) against a byte model."""
    emap = ExtentMap(size)
    base = [(off, min(ln, size - off), val) for off, ln, val in base if off < size]
    for off, ln, val in base:
        emap.write(off, ln, val)
    emap.extents()  # merged: the batch below is the only pending write
    offsets = at + np.concatenate(([0], np.cumsum(lengths)[:-1]))
    keep = offsets < size
    offsets, lens = offsets[keep], np.array(lengths)[keep]
    version = emap.version
    emap.write_batch(offsets, lens, value)
    assert emap.version == version + (1 if offsets.size else 0)
    ref = _replayed(size, base, offsets.tolist(), [min(ln, size - off) for off, ln in zip(offsets, lens)],
                    [value] * offsets.size)
    starts, ends, vals = emap.extents()
    assert np.repeat(vals, ends - starts).tolist() == ref.tolist()
    assert (vals[1:] != vals[:-1]).all()
    assert starts[0] == 0 and ends[-1] == size


def test_a_whole_disk_zero_batch_plans_one_wave():
    """A full backup of an empty drive: 64 zero tasks of 1 MiB, one wave of 64 workers."""
    vm = Machine()
    vm.add_drive("d", 64 * M, node_name="n")
    vm.qemu_img("create", "-f", "qcow2", "t.qcow2", str(64 * M))
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "t", "file": {"driver": "file", "filename": "t.qcow2"}})
    bcs = BlockCopy(vm.graph.nodes["n"], vm.graph.nodes["t"], 65536, vm.scheduler, lambda d, r: None)
    call = block_copy.Call(64, block_copy.MAX_BUFFER, lambda c: None)
    offsets, nbytes, zero, nclusters, wave_start, end = bcs._plan(call)
    now = vm.clock.now_ns
    assert offsets.tolist() == list(range(0, 64 * M, M))
    assert nbytes.tolist() == [M] * 64 and zero.all() and nclusters == 1024
    assert wave_start.tolist() == [now] and end == now + LATENCY_NS
    call = block_copy.Call(5, block_copy.MAX_BUFFER, lambda c: None)  # 13 waves; a step's horizon (now) takes one
    offsets, nbytes, zero, nclusters, wave_start, end = bcs._plan(call)
    assert offsets.tolist() == list(range(0, 5 * M, M)) and wave_start.tolist() == [now]
    assert end == now + LATENCY_NS and nclusters == 80


@given(st.integers(1, 120), st.lists(st.tuples(st.integers(0, 119), st.integers(1, 40), st.integers(-1, 1)),
                                     min_size=1, max_size=25))
@settings(max_examples=300, deadline=None)
def test_single_writes_keep_the_runs_compact(size, writes):
    """One write at a time (each merged alone): few values, so a write often meets its own value."""
    emap = ExtentMap(size)
    ref = np.full(size, UNALLOCATED, dtype=np.int64)
    for off, ln, val in writes:
        if off >= size:
            continue
        emap.write(off, ln, val)
        ref[off : off + ln] = val
        starts, ends, vals = emap.extents()
        assert np.repeat(vals, ends - starts).tolist() == ref.tolist()
        assert (vals[1:] != vals[:-1]).all()


def test_a_write_that_ends_where_a_run_of_its_value_starts_joins_it():
    emap = ExtentMap(100)
    emap.write(50, 10, 5)
    emap.extents()
    emap.write(40, 10, 5)
    starts, ends, vals = emap.extents()
    assert starts.tolist() == [0, 40, 60] and ends.tolist() == [40, 60, 100] and vals.tolist() == [-1, 5, -1]


def test_timers_run_in_time_then_scheduling_order_and_cancelled_ones_never():
    from bitlab.clock import SimClock
    from bitlab.sim import Scheduler

    sched = Scheduler(SimClock(0))
    ran: list[tuple[str, int]] = []

    def note(name: str):
        return lambda: ran.append((name, sched.clock.now_ns))

    sched.at(30, note("c"))
    sched.at(10, note("a1"))
    dropped = sched.at(10, note("dropped"))
    sched.at(10, note("a2"))
    sched.after(20, note("b"))
    dropped.cancel()
    assert sched.next_time == 10
    assert sched.run(until_ns=20) == 3
    assert ran == [("a1", 10), ("a2", 10), ("b", 20)] and sched.clock.now_ns == 20
    sched.at(5, note("late"))  # in the past: runs now, after nothing else
    assert sched.step() and ran[-1] == ("late", 20)
    assert sched.run() == 1 and ran[-1] == ("c", 30) and sched.next_time is None and not sched.step()


def test_run_with_nothing_scheduled_is_the_loop() -> None:
    """Scheduler.run's shortcut (nothing scheduled, no time to reach) leaves what the loop leaves: no step,
    the clock and the horizon as they were; a cancelled timer is pruned either way, and run(until) still
    moves the clock."""
    from bitlab.clock import SimClock
    from bitlab.sim import Scheduler

    sched = Scheduler(SimClock(1000))
    assert sched.run() == 0
    assert (sched.clock.now_ns, sched.horizon_ns, sched._heap) == (1000, None, [])
    ran: list[int] = []
    sched.after(5, lambda: ran.append(1)).cancel()
    assert sched.run() == 0
    assert (sched.clock.now_ns, ran, sched._heap) == (1000, [], [])
    assert sched.run(until_ns=2000) == 0
    assert sched.clock.now_ns == 2000
