"""The qcow2 host layout's fast paths (bitlab/block/qcow2_host.py) against the general code they stand in for:
both run on the same layout and input (seeded random), and every piece of state must come out the same."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from bitlab.block import qcow2_disk, qcow2_host
from bitlab.block.extents import UNALLOCATED, ZERO, ZERO_ALLOC
from bitlab.block.qcow2_host import SMALL_BATCH, HostLayout


def _lists(value: object) -> object:
    """Arrays (in tuples, lists and dicts) as lists, to compare (a noted table's content merged)."""
    if isinstance(value, qcow2_host.Overlaid):
        return _lists(qcow2_host.content_runs(value))
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def _state(layout: HostLayout) -> dict:
    written = [(np.asarray(o).tolist(), np.asarray(n).tolist()) for o, n in layout.written]
    maps = ("guest", "l2", "free", "written", "discarded", "fs", "_fs_marks", "cow_written", "disk_tables", "disk_op",
            "read_content", "rc_since")
    plain = {k: v for k, v in vars(layout).items() if k not in maps}
    return {"guest": layout.guest.runs(), "l2": layout.l2.runs(), "free": layout.free.runs(), "written": written,
            "discarded": [(s.tolist(), e.tolist()) for s, e in layout.discarded], "fs": layout.fs_blocks().runs(),
            "cow_written": layout.cow_written.runs(), "disk_tables": _lists(layout.stale_tables()),
            "disk_refcounts": qcow2_disk._refcounts(layout).runs(), **plain}


def _same(a: HostLayout, b: HostLayout) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        va, vb = sa[key], sb[key]
        if isinstance(va, tuple) and isinstance(va[0], np.ndarray):
            assert all(np.array_equal(x, y) for x, y in zip(va, vb)), key
        else:
            assert va == vb, key


def _general(layout: HostLayout) -> HostLayout:
    """A copy of the layout whose batches never take the small-batch path."""
    general = copy.deepcopy(layout)
    general._small_batch = lambda reqs: False
    return general


def _written_clusters(layout: HostLayout) -> set[int]:
    out: set[int] = set()
    for o, n in layout.written:
        o, n = np.asarray(o), np.asarray(n)
        for a, b in zip((o // layout.cs).tolist(), (-(-(o + n) // layout.cs)).tolist()):
            out.update(range(a, b))
    return out


def _random_writes(rng: np.random.Generator, n: int, clusters: int, cs: int, longest: int,
                   values: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    off = rng.integers(0, (clusters - longest) * cs, n) // 512 * 512
    ends = off + rng.integers(1, longest * cs, n) // 512 * 512 + 512
    return off, ends, rng.choice(values, n)


def _both_paths(layout: HostLayout, off: np.ndarray, ends: np.ndarray, vals: np.ndarray,
                outcomes: list[bool]) -> HostLayout:
    """One batch merged on a copy of ``layout`` with the small-batch fast path (whether it answered goes to
    ``outcomes``) and on a copy without it: the two must be the same; the first is returned."""
    fast, general = copy.deepcopy(layout), _general(layout)
    fast._small_batch = lambda reqs, f=fast: outcomes.append(HostLayout._small_batch(f, reqs)) or outcomes[-1]
    fast.before_merge(off, ends, vals)
    del fast._small_batch
    general.before_merge(off, ends, vals)
    del general._small_batch
    _same(fast, general)
    return fast


@pytest.mark.parametrize("cs", [65536, 512])
@pytest.mark.parametrize("seed", range(30))
def test_small_batch_is_the_general_batch(seed: int, cs: int) -> None:
    """A few data requests (overlapping, partial clusters, across L2 tables, over hosted clusters and zero
    clusters; with 512-byte clusters some need a new refcount block, where the fast path gives way, as it
    does where a request meets a zero cluster) give the layout, zero flags, caches and metadata writes the
    general path gives."""
    rng = np.random.default_rng(seed)
    clusters = 3 * (cs // 8) if cs == 65536 else 3000
    layout = HostLayout(clusters * cs, cs)
    outcomes: list[bool] = []
    for _ in range(int(rng.integers(0, 6))):  # earlier batches, through the general path
        earlier = [1, 2, 3, ZERO_ALLOC] if seed % 2 else [1, 2, 3]  # (zero clusters, with a host cluster or not)
        off, ends, vals = _random_writes(rng, int(rng.integers(1, 30)), clusters, cs, 40, earlier)
        layout.before_merge(off, ends, vals)
        if layout.written and rng.random() < 0.5:
            layout.flush()
    if rng.random() < 0.3:
        layout.written.clear()
    for _ in range(8):
        n = int(rng.integers(1, SMALL_BATCH + 1))
        longest = int(rng.choice([2, 40, 130 if cs == 65536 else 60]))  # (a request over three L2 tables: one by one)
        off, ends, vals = _random_writes(rng, n, clusters, cs, longest, [1, 2, 5, 7])
        assert not layout.has_holes()
        layout = _both_paths(layout, off, ends, vals, outcomes)
    assert outcomes.count(True) >= (4 if seed % 2 == 0 else 1)  # (the fast path was taken)


def test_small_batch_gives_way_to_a_new_refcount_block() -> None:
    """Reaching past the clusters the refcount blocks cover, the fast path does nothing and says so."""
    cs = 512
    layout = HostLayout(64 << 20, cs)  # 256 host clusters a refcount block; 35 of metadata
    before = copy.deepcopy(layout)
    assert not layout._small_batch([(0, 300, False)])
    _same(layout, before)
    assert layout._small_batch([(0, 200, False)]) and layout.top == 35 + 4 + 200


@pytest.mark.parametrize("holes", [False, True])
@pytest.mark.parametrize("seed", range(10))
def test_zero_writes_and_holes_take_the_general_path(seed: int, holes: bool) -> None:
    """Zero writes, and a file with holes, go the general way (the fast path is not tried)."""
    rng = np.random.default_rng(seed)
    cs = 65536
    layout = HostLayout(1 << 30, cs)
    layout.before_merge(np.array([0]), np.array([10 * cs]), np.array([1]))
    if holes:
        layout.before_merge(np.array([3 * cs]), np.array([4 * cs]), np.array([UNALLOCATED]))
    assert layout.has_holes() == holes
    off, ends, vals = _random_writes(rng, 3, 16384, cs, 4, [1, ZERO, UNALLOCATED])
    calls: list[int] = []
    layout._small_batch = lambda reqs: calls.append(1) or HostLayout._small_batch(layout, reqs)
    layout.before_merge(off, ends, vals)
    zeroing = bool(np.isin(vals, [ZERO, UNALLOCATED]).any())
    assert calls == ([] if zeroing or holes else [1])


@pytest.mark.parametrize("seed", range(20))
def test_zero_writes_into_an_image_hosting_nothing_are_the_general_batch(seed: int) -> None:
    """Zero writes alone (as a new target is zeroed), into an image with no data cluster (L2 tables
    or not, zero clusters or not), give what the general path gives: the fast path takes them unless one
    meets an earlier one (they are disjoint in every other batch here)."""
    rng = np.random.default_rng(seed)
    cs = int(rng.choice([65536, 4096]))
    clusters = 4 * (cs // 8)
    layout = HostLayout(clusters * cs, cs)
    outcomes: list[bool] = []
    for _ in range(4):
        n = int(rng.integers(1, 100))
        off, ends, vals = _random_writes(rng, n, clusters, cs, int(rng.choice([3, 600])), [ZERO, UNALLOCATED])
        disjoint = len(outcomes) % 2 == 0
        if disjoint:  # each write ends before the next starts, on another cluster
            off, ends = np.sort(off) // cs * cs, np.sort(ends)
            ends = np.minimum(ends, np.append(off[1:], clusters * cs))
            keep = np.append(True, off[1:] >= ends[:-1]) & (ends > off)
            off, ends, vals = off[keep], ends[keep], vals[keep]
        layout = _both_paths(layout, off, ends, vals, outcomes)
        assert outcomes[-1] or not disjoint
    assert layout._flags_any()


@pytest.mark.parametrize("seed", range(20))
def test_few_dirty_tables_are_written_back_as_many(seed: int) -> None:
    """Writing back a few dirty L2 tables (looked up one by one) writes what the gathered lookup writes."""
    rng = np.random.default_rng(seed)
    cs = 4096
    layout = HostLayout(64 << 20, cs)  # 32 L2 tables
    off, ends, vals = _random_writes(rng, int(rng.integers(1, 30)), 16384, cs, 600, [1, 2])
    layout.before_merge(off, ends, vals)
    layout.written.clear()
    dirty = set(rng.choice(32, int(rng.integers(1, 2 * SMALL_BATCH)), replace=False).tolist())
    few, many = copy.deepcopy(layout), copy.deepcopy(layout)
    few.dirty_l2 = set(dirty)
    few._write_back_l2()
    index = np.array(sorted(dirty), dtype=np.int64)
    _, _, hosts, _ = many.l2.gather(index, index + 1)
    hosts = hosts[hosts >= 0]
    assert hosts.size  # (some of them exist)
    assert len(few.written) == 1 and not few.dirty_l2
    offsets, lengths = few.drain_written()
    assert offsets.tolist() == (hosts * cs).tolist() and lengths.tolist() == [cs] * hosts.size
    assert offsets.dtype == lengths.dtype == np.int64


@pytest.mark.parametrize("cs", [65536, 4096])
@pytest.mark.parametrize("seed", range(40))
def test_batches_with_zero_writes_are_request_by_request(seed: int, cs: int) -> None:
    """Data writes and zero writes (zero clusters with or without their host cluster, unallocated clusters as
    in a v2 image; partial clusters, overlapping, over data, zero and unallocated clusters) through the batch
    paths leave the layout, zero flags and caches, and write the metadata clusters, that the requests taken
    one by one do: a table is dirty exactly where a request changed an entry of it."""
    rng = np.random.default_rng(seed)
    clusters = 3 * (cs // 8)
    batched = HostLayout(clusters * cs, cs)
    single = copy.deepcopy(batched)
    changed = 0
    for _ in range(6):
        n = int(rng.integers(1, 60))
        off, ends, vals = _random_writes(rng, n, clusters, cs, int(rng.choice([2, 40, 600])),
                                         [1, 2, ZERO, ZERO, UNALLOCATED, ZERO_ALLOC])
        if rng.random() < 0.5:  # aligned to clusters, as qcow2's zero writes are
            off, ends = off // cs * cs, np.minimum(-(-ends // cs) * cs, clusters * cs)
        batched.before_merge(off, ends, vals)
        for o, e, v in zip(off.tolist(), ends.tolist(), vals.tolist()):
            c0, c1 = o // cs, -(-e // cs)
            if v >= 0:
                single._request(c0, c1)
            else:
                single.zero_request(c0, c1, -(-o // cs), c1 if e >= clusters * cs else e // cs, v)
        assert batched.guest == single.guest and batched.l2 == single.l2 and batched.free == single.free
        assert batched.zero_flag == single.zero_flag
        assert batched.dirty_l2 == single.dirty_l2 and batched.dirty_refblocks == single.dirty_refblocks
        assert batched.depends == single.depends
        assert _written_clusters(batched) == _written_clusters(single)
        changed += len(batched.dirty_l2)
        flush = rng.random() < 0.5
        for layout in (batched, single):
            if flush:
                layout.flush()
            layout.written.clear()
    assert changed


@pytest.mark.parametrize("seed", range(20))
def test_zero_writes_back_to_back_are_one_write_each_run(seed: int) -> None:
    """Zero writes back to back (as a backup zeroes its target, chunk after chunk), across L2 tables, some
    setting the zero flag and some clearing it, some tables there already: the small-batch path joins each run
    setting one flag into one write, and leaves what it leaves taking them one by one, and what the general
    path leaves."""
    rng = np.random.default_rng(seed)
    cs = 4096
    clusters = 6 * (cs // 8)
    layout = HostLayout(clusters * cs, cs)
    if seed % 2:  # some tables exist (and zero flags, for odd seeds above 10)
        layout.before_merge(np.array([cs * 600]), np.array([cs * 1800]), np.array([ZERO if seed > 10 else
                                                                                     UNALLOCATED]))
    cuts = np.sort(rng.choice(np.arange(1, clusters), int(rng.integers(2, 100)), replace=False))
    first = int(rng.integers(0, cuts.size - 1))
    off, ends = cuts[first:-1] * cs, cuts[first + 1:] * cs
    vals = rng.choice([ZERO, ZERO, ZERO_ALLOC, UNALLOCATED], off.size)
    if rng.random() < 0.5:  # (one gap)
        gap = int(rng.integers(0, off.size))
        off, ends, vals = np.delete(off, gap), np.delete(ends, gap), np.delete(vals, gap)
    outcomes: list[bool] = []
    joined = _both_paths(layout, off, ends, vals, outcomes)
    assert outcomes == [True]
    one_by_one = copy.deepcopy(layout)
    reqs = [(o // cs, e // cs, v) for o, e, v in zip(off.tolist(), ends.tolist(), vals.tolist())]
    one_by_one.note_tables(off // cs, -(-ends // cs), frees=True)  # (as before_merge does first)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("bitlab.block.qcow2_host._joined", lambda reqs: reqs)
        assert one_by_one._small_batch(reqs)
    _same(joined, one_by_one)


@pytest.mark.parametrize("seed", range(12))
def test_zero_writes_back_to_back_setting_one_flag_are_joined_before_the_batch(seed: int) -> None:
    """Zero writes back to back all setting one zero flag (a backup zeroing a new target) are one request before
    the small batch even sees them (_back_to_back, in numpy): the layout is what the general path and the requests
    taken one by one leave; a gap, a flag that differs or a data write leaves them as they are."""
    rng = np.random.default_rng(seed)
    cs = 4096
    clusters = 6 * (cs // 8)
    layout = HostLayout(clusters * cs, cs)
    cuts = np.sort(rng.choice(np.arange(1, clusters), int(rng.integers(3, 100)), replace=False))
    off, ends = cuts[:-1] * cs, cuts[1:] * cs
    if seed % 3 == 1:  # (partial clusters: back to back in bytes, in clusters only where they meet a cluster's end)
        off, ends = off - 512, ends - 512
    kinds = [UNALLOCATED] if seed % 2 else [ZERO, ZERO_ALLOC]
    vals = rng.choice(kinds, off.size)
    c0, c1 = off // cs, -(-ends // cs)
    joined = qcow2_host._back_to_back(c0, c1, vals, vals.tolist())
    assert joined == (None if seed % 3 == 1 else [(int(c0[0]), int(c1[-1]), int(vals[0]))])
    outcomes: list[bool] = []
    fast = _both_paths(layout, off, ends, vals, outcomes)
    assert outcomes == [joined is not None]  # (writes sharing a partial cluster meet: the general path)
    one_by_one = copy.deepcopy(layout)
    for o, e, v in zip(off.tolist(), ends.tolist(), vals.tolist()):
        one_by_one.zero_request(o // cs, -(-e // cs), -(-o // cs), e // cs, v)
    assert fast.guest == one_by_one.guest and fast.l2 == one_by_one.l2 and fast.zero_flag == one_by_one.zero_flag
    assert fast.dirty_l2 == one_by_one.dirty_l2 and fast.free == one_by_one.free
    gap = np.delete(np.arange(off.size), off.size // 2)
    assert qcow2_host._back_to_back(c0[gap], c1[gap], vals[gap], vals[gap].tolist()) is None
    mixed = vals.copy()
    mixed[-1] = ZERO if seed % 2 else UNALLOCATED
    assert qcow2_host._back_to_back(c0, c1, mixed, mixed.tolist()) is None
    data = vals.copy()
    data[0] = 7
    assert qcow2_host._back_to_back(c0, c1, data, data.tolist()) is None


@pytest.mark.parametrize("seed", range(10))
def test_holes_are_counted_alike_in_few_runs_and_many(seed: int) -> None:
    """has_holes counts the free runs in plain integers for a few runs, with numpy for many: the answer is
    what the free map's runs say either way."""
    rng = np.random.default_rng(seed)
    cs = 65536
    layout = HostLayout(1 << 30, cs)
    layout.before_merge(np.array([0]), np.array([100 * cs]), np.array([1]))
    freed = np.sort(rng.choice(100, [0, 1, 3, 40][seed % 4], replace=False))
    if freed.size:
        layout.release(freed + 7, freed + 8)
    starts, vals = layout.free.runs()
    expected = int((vals == 1).sum()) > 1 or int(starts[-1]) < layout.top or layout.fci > layout.top
    assert layout.has_holes() == expected == bool(freed.size) and (vals.size > 32) == (freed.size == 40)


@pytest.mark.parametrize("seed", range(20))
def test_zero_writes_where_nothing_is_hosted_skip_the_reconcile(seed: int) -> None:
    """Zero writes into an image where neither the content nor the layout has a host cluster leave the layout
    as the reconcile after them would (which then has nothing to do); with zero clusters keeping their host
    cluster or data written, the reconcile runs as before."""
    from bitlab.block.store import ImageStore

    rng = np.random.default_rng(seed)
    cs = 65536
    images = [ImageStore().create("a.qcow2", "qcow2", 64 << 20) for _ in range(2)]
    images[1]._hosts_nothing = lambda: False  # (always the general path)
    skipped = []
    for _ in range(3):
        n = int(rng.integers(1, 20))
        off, ends, vals = _random_writes(rng, n, 1024, cs, 40, [ZERO, UNALLOCATED, ZERO, ZERO_ALLOC, 7])
        if rng.random() < 0.6:
            vals = np.where(vals == ZERO_ALLOC, ZERO, vals) if rng.random() < 0.5 else np.full(n, ZERO)
        skipped.append(images[0]._hosts_nothing())
        for image in images:
            image.data.write_batch(off, ends - off, vals)
            image.data.runs()
        hooks = [image.layout.on_unhost for image in images]  # (each image's own)
        images[1].layout.on_unhost = hooks[0]
        _same(images[0].layout, images[1].layout)
        images[1].layout.on_unhost = hooks[1]
        assert images[0].data == images[1].data
    assert skipped[0]


@pytest.mark.parametrize("seed", range(10))
def test_the_highest_end_of_the_metadata_writes_is_the_drained_writes_highest(seed: int) -> None:
    """drain_written_end (for a file node's highest write) is the highest end of what drain_written returns (its
    entries lists or arrays, as their makers left them), 0 without writes; both empty the writes."""
    rng = np.random.default_rng(seed)
    cs = int(rng.choice([65536, 4096]))
    layout = HostLayout(3 * (cs // 8) * cs, cs)
    for _ in range(int(rng.integers(1, 5))):
        off, ends, vals = _random_writes(rng, int(rng.integers(1, 30)), 3 * (cs // 8), cs, 40, [1, 2, ZERO])
        layout.before_merge(off, ends, vals)
        if rng.random() < 0.5:
            layout.flush()
    assert layout.written and {type(o) for o, _ in layout.written} >= {list}
    ends_of, arrays = copy.deepcopy(layout), copy.deepcopy(layout)
    offsets, lengths = arrays.drain_written()
    assert ends_of.drain_written_end() == int((offsets + lengths).max())
    assert not ends_of.written and not arrays.written and ends_of.drain_written_end() == 0


@pytest.mark.parametrize("seed", range(20))
def test_first_fit_in_plain_ints_is_the_numpy_one(seed: int) -> None:
    """alloc's first fit from free_cluster_index over a few free runs (plain ints) is the numpy search's, for
    files with holes (clusters freed again) and free_cluster_index anywhere; a cluster taken dirties the refcount
    blocks _refcounts_changed would."""
    rng = np.random.default_rng(seed)
    cs = 4096
    layout = HostLayout(64 << 20, cs)
    for _ in range(int(rng.integers(1, 6))):
        layout.alloc(int(rng.integers(1, 3000)))
        if layout.top > 40 and rng.random() < 0.7:
            lo = int(rng.integers(8, layout.top - 4))
            layout.release(np.array([lo]), np.array([lo + int(rng.integers(1, 4))]))
    for _ in range(10):
        layout.fci = int(rng.integers(0, layout.top + 10))
        n = int(rng.integers(1, 40))
        assert layout._first_fit(n) == layout._first_fit_general(n)
    start, n = int(rng.integers(0, 5000)), int(rng.integers(1, 3000))
    by_range, by_arrays = copy.deepcopy(layout), copy.deepcopy(layout)
    by_range._take(start, n)
    by_arrays._take(start, n, counted=False)
    by_arrays._refcounts_changed(np.array([start]), np.array([start + n]))
    assert by_range.dirty_refblocks == by_arrays.dirty_refblocks and by_range.rb_cached == by_arrays.rb_cached


@pytest.mark.parametrize("seed", range(20))
def test_any_missing_table_is_a_missing_table(seed: int) -> None:
    """l2_any_missing (block-copy's yes/no question) says whether l2_missing would list a table, for random
    tables made and ranges asked."""
    rng = np.random.default_rng(seed)
    layout = HostLayout(4 << 30, 65536)  # (8 L2 tables)
    for index in rng.choice(8, size=int(rng.integers(0, 8)), replace=False).tolist():
        layout.touch_l2(index * layout.per_l2, index * layout.per_l2 + 1)
    for _ in range(20):
        lo = int(rng.integers(0, 8))
        hi = int(rng.integers(lo, 8))
        assert layout.l2_any_missing(lo, hi) == bool(layout.l2_missing(lo, hi).size)
