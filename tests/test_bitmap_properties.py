"""DirtyBitmap against a simple independent model: a Python set of dirty chunk indices."""

import hashlib
import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bitlab.bitmap import DirtyBitmap

granularities = st.sampled_from([512, 1024, 4096, 65536, 131072])
sizes = st.integers(1, 4 << 20)


def ref_bits(size, gran, ops):
    nbits = -(-size // gran)
    dirty = set()
    for off, ln in ops:
        if ln > 0:
            dirty.update(range(off // gran, min((off + ln - 1) // gran, nbits - 1) + 1))
    return nbits, dirty


def ref_sha256(nbits, dirty):
    words = [0] * -(-nbits // 64)
    for bit in dirty:
        words[bit // 64] |= 1 << (bit % 64)
    return hashlib.sha256(b"".join(struct.pack("<Q", w) for w in words)).hexdigest()


@st.composite
def bitmap_case(draw):
    size = draw(sizes)
    gran = draw(granularities)
    ops = draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 300_000)), max_size=25))
    ops = [(o, min(ln, size - o)) for o, ln in ops]
    return size, gran, ops


@given(bitmap_case())
@settings(max_examples=300)
def test_set_range_count_and_sha256(case):
    size, gran, ops = case
    bm = DirtyBitmap(size, gran)
    for off, ln in ops:
        bm.set_range(off, ln)
    nbits, dirty = ref_bits(size, gran, ops)
    assert bm.nbits == nbits
    assert bm.count == len(dirty) * gran
    assert bm.count % gran == 0
    assert set(bm.bits.search(1)) == dirty
    assert bm.sha256() == ref_sha256(nbits, dirty)


@given(bitmap_case())
@settings(max_examples=300)
def test_batch_equals_single(case):
    size, gran, ops = case
    a, b = DirtyBitmap(size, gran), DirtyBitmap(size, gran)
    for off, ln in ops:
        a.set_range(off, ln)
    if ops:
        arr = np.array(ops, dtype=np.int64)
        b.set_ranges(arr[:, 0], arr[:, 1])
    assert a.bits == b.bits


@given(bitmap_case(), granularities)
@settings(max_examples=300)
def test_merge_across_granularities(case, dst_gran):
    """A source chunk dirties every destination chunk it overlaps (sparse hbitmap_merge)."""
    size, gran, ops = case
    src = DirtyBitmap(size, gran)
    for off, ln in ops:
        src.set_range(off, ln)
    dst = DirtyBitmap(size, dst_gran)
    dst.set_range(0, 1)
    dst.merge_from(src)
    _, src_dirty = ref_bits(size, gran, ops)
    expected_ops = [(0, 1)] + [(b * gran, min(gran, size - b * gran)) for b in src_dirty]
    _, want = ref_bits(size, dst_gran, expected_ops)
    assert set(dst.bits.search(1)) == want
    assert dst.sha256() == ref_sha256(dst.nbits, want)


def test_successor_abdicate_and_reclaim():
    bm = DirtyBitmap(1 << 20, 65536, name="b0")
    bm.set_range(0, 1)
    succ = bm.create_successor()
    assert bm.busy and bm.recording and bm.disabled and not succ.disabled
    succ.set_range(65536 * 3, 1)
    # reclaim: old bits plus new writes
    assert sorted(bm.reclaim().bits.search(1)) == [0, 3]
    assert not bm.busy and not bm.disabled
    succ = bm.create_successor()
    succ.set_range(65536 * 5, 1)
    new = bm.abdicate()
    assert new is succ and new.name == "b0" and sorted(new.bits.search(1)) == [5]


def test_info_member_order_and_inconsistent_flag():
    bm = DirtyBitmap(1 << 20, 65536, name="b0")
    assert list(bm.info()) == ["name", "count", "granularity", "recording", "busy", "persistent"]
    bm.inconsistent = True
    assert bm.info()["inconsistent"] is True
    anon = DirtyBitmap(1 << 20, 65536)
    assert "name" not in anon.info()


def test_dirty_ranges_clamped_to_size():
    bm = DirtyBitmap(100_000, 65536)
    bm.set_range(70_000, 10)
    starts, lengths = bm.dirty_ranges()
    assert starts.tolist() == [65536] and lengths.tolist() == [100_000 - 65536]
