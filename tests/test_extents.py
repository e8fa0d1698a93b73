"""ExtentMap against a byte-by-byte reference model."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bitlab.block import extents
from bitlab.block.extents import UNALLOCATED, ExtentMap

writes = st.lists(st.tuples(st.integers(0, 300), st.integers(0, 80), st.integers(-1, 5)), max_size=40)


def reference(size, ops):
    ref = [UNALLOCATED] * size
    for off, ln, val in ops:
        for x in range(off, min(off + ln, size)):
            ref[x] = val
    return ref


def written(size, ops):
    """A map of ``size`` bytes after the single writes ``ops``."""
    emap = ExtentMap(size)
    for off, ln, val in ops:
        emap.write(off, ln, val)
    return emap


def flatten(emap):
    starts, ends, vals = emap.extents()
    out = []
    for s, e, v in zip(starts, ends, vals):
        out += [int(v)] * int(e - s)
    return out


@given(st.integers(1, 300), writes)
@settings(max_examples=300)
def test_single_writes_match_reference(size, ops):
    emap = ExtentMap(size)
    for off, ln, val in ops:
        emap.write(off, ln, val)
    assert flatten(emap) == reference(size, ops)


@given(st.integers(1, 300), writes)
@settings(max_examples=300)
def test_each_write_read_at_once_matches_reference(size, ops):
    """A read after every write merges one pending write at a time (the single-write path of ``_flush``)."""
    emap = ExtentMap(size)
    for i, (off, ln, val) in enumerate(ops):
        emap.write(off, ln, val)
        assert flatten(emap) == reference(size, ops[: i + 1])
        starts, vals = emap.runs()
        assert starts[0] == 0 and (vals[1:] != vals[:-1]).all()  # compact: no two neighbours alike


@given(st.integers(1, 300), writes)
@settings(max_examples=200)
def test_write_on_a_few_runs_is_the_general_one(size, ops):
    """``_write_now`` on plain integers (a map of a few runs) leaves exactly the runs the numpy path does."""
    small, general = ExtentMap(size), ExtentMap(size)
    for off, ln, val in ops:
        small._write_now(off, ln, val)
        saved, extents.SMALL_RUNS = extents.SMALL_RUNS, 0
        try:
            general._write_now(off, ln, val)
        finally:
            extents.SMALL_RUNS = saved
        assert small._starts.dtype == general._starts.dtype == small._vals.dtype == np.int64
        assert small._starts.tolist() == general._starts.tolist() and small._vals.tolist() == general._vals.tolist()


@given(st.integers(1, 300), writes, st.lists(st.tuples(st.integers(0, 320), st.integers(0, 120)), max_size=8))
@settings(max_examples=200)
def test_look_ups_on_a_few_runs_are_the_general_ones(size, ops, queries):
    """``value_at`` and ``extents`` on plain integers (a map of a few runs) answer as the numpy path does."""
    emap = written(size, ops)
    emap.runs()
    small = [(emap.value_at(min(off, size - 1)), [a.tolist() for a in emap.extents(off, ln)]) for off, ln in queries]
    small.append((None, [a.tolist() for a in emap.extents()]))
    saved, extents.SMALL_RUNS = extents.SMALL_RUNS, 0
    try:
        general = [(emap.value_at(min(off, size - 1)), [a.tolist() for a in emap.extents(off, ln)])
                   for off, ln in queries]
        general.append((None, [a.tolist() for a in emap.extents()]))
    finally:
        extents.SMALL_RUNS = saved
    assert small == general


@given(st.integers(1, 300), writes, st.lists(st.tuples(st.integers(0, 320), st.integers(0, 120)), max_size=8))
@settings(max_examples=200)
def test_any_in_is_the_gathered_values_looked_at(size, ops, queries):
    """``any_in`` answers, range by range, what ``gather``'s pieces of each range and the reference model say."""
    emap = written(size, ops)
    picks = lambda v: v >= 2  # noqa: E731
    starts = np.array([q[0] for q in queries], dtype=np.int64)
    ends = starts + np.array([q[1] for q in queries], dtype=np.int64)
    got = emap.any_in(starts, ends, picks).tolist()
    _, _, vals, ptr = emap.gather(starts, ends)
    ref = reference(size, ops)
    assert got == [bool(picks(vals[ptr[i]:ptr[i + 1]]).any()) for i in range(len(queries))]
    assert got == [any(v >= 2 for v in ref[a:b]) for a, b in zip(starts.tolist(), ends.tolist())]


@given(st.integers(1, 300), writes, writes, st.lists(st.integers(0, 299), max_size=8), st.booleans())
@settings(max_examples=200)
def test_look_is_value_at_and_merges_nothing_while_a_few_single_writes_are_pending(size, merged, pending, at, few):
    """``look`` answers what ``value_at`` answers; with a few single writes pending (and no batch) it leaves
    them pending, on a map of a few runs or many."""
    pending = pending[:extents.SMALL_PENDING] if few else pending
    emap = written(size, merged)
    emap.runs()
    for off, ln, val in pending:
        emap.write(off, ln, val)
    waiting = emap.pending
    want = written(size, merged + pending)
    saved = extents.SMALL_RUNS
    try:
        for small in (saved, 0):
            extents.SMALL_RUNS = small
            got = [emap.look(min(x, size - 1)) for x in at]
            assert emap.pending == (waiting if waiting <= extents.SMALL_PENDING else 0) or not at
            assert got == [want.value_at(min(x, size - 1)) for x in at]
    finally:
        extents.SMALL_RUNS = saved


def test_a_new_map_shares_read_only_arrays_and_every_change_makes_its_own():
    a, b = ExtentMap(100), ExtentMap(200)
    assert a.runs()[0] is b.runs()[0] and not a.runs()[0].flags.writeable
    a.write(10, 5, 7)
    starts, vals = a.runs()
    assert starts.flags.writeable and vals.flags.writeable
    assert b.runs()[0].tolist() == [0] and b.runs()[1].tolist() == [UNALLOCATED]
    for arr in a.extents() + b.extents():
        arr[...] = 0  # what extents() returns is the caller's own
    assert b.extents()[2].tolist() == [UNALLOCATED] and a.value_at(12) == 7


@given(st.integers(1, 300), writes,
       st.lists(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 80), st.integers(-1, 5)), min_size=2,
                         max_size=8), max_size=6))
@settings(max_examples=300)
def test_a_few_writes_merged_one_by_one_are_the_vectorised_merge(size, first, batches):
    """Batches of up to ``SMALL_MERGE`` pending writes on a few runs are merged one after the other in
    plain integers: the runs are exactly those the vectorised merge leaves (overlapping, unsorted,
    back to back, past the end)."""
    small, general = ExtentMap(size), ExtentMap(size)
    for emap in (small, general):
        for off, ln, val in first:
            emap.write(off, ln, val)
        emap.runs()
    for batch in batches:
        for emap, threshold in ((small, extents.SMALL_RUNS), (general, 0)):
            for off, ln, val in batch:
                emap.write(off, ln, val)  # (merged at the next read: one chunk of the log)
            saved, extents.SMALL_RUNS = extents.SMALL_RUNS, threshold
            try:
                emap.runs()
            finally:
                extents.SMALL_RUNS = saved
        assert small._starts.tolist() == general._starts.tolist() and small._vals.tolist() == general._vals.tolist()
        assert small._starts.dtype == small._vals.dtype == np.int64


@given(st.integers(1, 300), writes, writes)
@settings(max_examples=300)
def test_batch_equals_sequential(size, first, ops):
    a, b = ExtentMap(size), ExtentMap(size)
    for off, ln, val in first:
        a.write(off, ln, val)
        b.write(off, ln, val)
    for off, ln, val in ops:
        a.write(off, ln, val)
    if ops:
        arr = np.array(ops, dtype=np.int64)
        b.write_batch(arr[:, 0], arr[:, 1], arr[:, 2])
    assert a == b
    assert flatten(b) == reference(size, first + ops)


def test_runs_are_compact_and_sparse():
    emap = ExtentMap(1 << 40)
    assert len(emap) == 1
    emap.write(0, 65536, 7)
    emap.write(65536, 65536, 7)
    assert len(emap) == 2  # one run of 7, one unallocated
    assert emap.allocated_bytes() == 131072


def test_extents_clip_to_window():
    emap = ExtentMap(100)
    emap.write(10, 20, 3)
    starts, ends, vals = emap.extents(15, 30)
    assert starts.tolist() == [15, 30] and ends.tolist() == [30, 45] and vals.tolist() == [3, UNALLOCATED]


def test_touched_mask_and_range_items_match_their_loops():
    from bitlab.block.extents import range_items, touched_mask

    rng = np.random.default_rng(5)
    first = rng.integers(0, 50, 30)
    count = rng.integers(0, 6, 30)
    want = np.zeros(60, dtype=bool)
    items = []
    for f, c in zip(first.tolist(), count.tolist()):
        want[f:f + c] = True
        items += range(f, f + c)
    assert touched_mask(first, first + count, 60).tolist() == want.tolist()
    assert range_items(first, count).tolist() == items
