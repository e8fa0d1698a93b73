"""bitlab.viz.compare: categories per cell, hatches and legend — what is drawn, not pixels."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from bitarray import bitarray  # noqa: E402

from bitlab.bitmap import DirtyBitmap  # noqa: E402
from bitlab.viz import compare_grid, plot_bitmap_compare  # noqa: E402
from bitlab.viz.compare import BOTH, MIXED, NEITHER, ONLY_A, ONLY_B, STYLES  # noqa: E402

MiB, TiB = 1 << 20, 1 << 40


def flags(n: int, ones: list[int]) -> np.ndarray:
    f = np.zeros(n, dtype=bool)
    f[ones] = True
    return f


def to_bits(f: np.ndarray) -> bitarray:
    bits = bitarray(endian="little")
    bits.frombytes(np.packbits(f, bitorder="little").tobytes())
    return bits[: f.size]


A = flags(1024, [0, 1, 2, 3, 100, 101, 500])
B = flags(1024, [2, 3, 4, 5, 101, 700, 701, 702])


def test_cell_per_bit_categories_and_counts():
    grid = compare_grid(A, B)
    assert grid.bits_per_cell == 1 and grid.categories.shape == (16, 64)
    cats = np.ma.getdata(grid.categories).ravel()
    assert cats[[0, 1, 100, 500]].tolist() == [ONLY_A] * 4
    assert cats[[4, 5, 700, 701, 702]].tolist() == [ONLY_B] * 5
    assert cats[[2, 3, 101]].tolist() == [BOTH] * 3
    assert (cats == NEITHER).sum() == 1024 - 12
    assert grid.counts == {"neither": 1012, "both": 3, "only a": 4, "only b": 5}


def test_bitarray_and_bool_inputs_agree_and_partial_row_is_masked():
    a, b = flags(100, [1, 99]), flags(100, [99, 50])
    g1, g2 = compare_grid(a, b), compare_grid(to_bits(a), to_bits(b))
    np.testing.assert_array_equal(np.ma.filled(g1.categories, -1), np.ma.filled(g2.categories, -1))
    mask = np.ma.getmaskarray(g1.categories).ravel()
    assert g1.categories.shape == (2, 64) and not mask[:100].any() and mask[100:].all()
    assert g1.counts == {"neither": 97, "both": 1, "only a": 1, "only b": 1}


def test_drawn_image_hatches_and_legend():
    fig = plot_bitmap_compare(A, B, granularity=65536, size=64 * MiB)
    ax = fig.axes[0]
    [image] = ax.images
    np.testing.assert_array_equal(np.ma.getdata(image.get_array()), np.ma.getdata(compare_grid(A, B).categories))
    hatched = {p.get_gid(): p for p in ax.patches if (p.get_gid() or "").startswith("hatch:")}
    assert set(hatched) == {"hatch:both", "hatch:only before", "hatch:only after"}
    assert hatched["hatch:only before"].get_hatch() == STYLES[ONLY_A][1] == "//"
    assert hatched["hatch:only after"].get_hatch() == STYLES[ONLY_B][1]
    # runs merged within a row: bits 0-1 (row 0), 100 (row 1), 500 (row 7)
    rects = hatched["hatch:only before"].get_path().vertices.reshape(-1, 5, 2)
    boxes = sorted(tuple(r[0]) + tuple(r[2]) for r in rects.tolist())
    assert boxes == [(-0.5, -0.5, 1.5, 0.5), (35.5, 0.5, 36.5, 1.5), (51.5, 6.5, 52.5, 7.5)]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["neither: 1012 bits", "both: 3 bits", "only before: 4 bits", "only after: 5 bits"]
    hatches = [h.get_hatch() or "" for h in ax.get_legend().legend_handles]
    assert len(set(hatches)) == 4  # told apart by hatching too, not only by colour
    title = ax.get_title()
    assert title.startswith("before vs after\n")
    assert "granularity 64 KiB, 1024 bits: only before 4, only after 5, both 3" in title
    assert "one row = 4 MiB" in ax.get_xlabel() and "byte offset" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0 B", "1 MiB", "2 MiB", "3 MiB", "4 MiB"]


def test_a_bitmap_and_its_successor():
    bm = DirtyBitmap(64 * MiB, 65536, name="bitmap0")
    bm.set_range(0, 4 * 65536)
    succ = bm.create_successor()
    succ.set_range(2 * 65536, 65536)
    succ.set_range(40 * MiB, 65536)
    fig = plot_bitmap_compare(bm, succ, labels=("bitmap0", "successor"), title="frozen bitmap and successor")
    ax = fig.axes[0]
    assert ax.get_title().startswith("frozen bitmap and successor\n")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["neither: 1019 bits", "both: 1 bits", "only bitmap0: 3 bits", "only successor: 1 bits"]
    cats = np.ma.getdata(ax.images[0].get_array()).ravel()
    assert cats[[0, 1, 3]].tolist() == [ONLY_A] * 3 and cats[2] == BOTH and cats[640] == ONLY_B


def test_16_mi_bits_reduced_without_hiding_differences():
    n = 16 * MiB
    rng = np.random.default_rng(11)
    fa = rng.random(n) < 0.001
    fb = fa.copy()
    fb[: 1 << 20] = True                 # the successor also has the first 64 GiB
    fb[5 << 20: 6 << 20] = False         # and lacks a stretch the bitmap has
    fb[(9 << 20) + 7] = not fb[(9 << 20) + 7]    # one bit differs: its pixel must show it
    fig = plot_bitmap_compare(to_bits(fa), to_bits(fb), ("bitmap0", "successor"), granularity=65536, size=TiB,
                              max_cells=4096)
    ax = fig.axes[0]
    cats = np.ma.getdata(ax.images[0].get_array())
    assert cats.shape == (64, 64)
    k = n // 4096
    oa = (fa & ~fb).reshape(-1, k).any(axis=1)
    ob = (fb & ~fa).reshape(-1, k).any(axis=1)
    bo = (fa & fb).reshape(-1, k).any(axis=1)
    want = np.where(oa & ob, MIXED, np.where(oa, ONLY_A, np.where(ob, ONLY_B, np.where(bo, BOTH, NEITHER))))
    np.testing.assert_array_equal(cats.ravel(), want)
    assert cats.ravel()[(9 << 20) // k] in (ONLY_A, ONLY_B)
    grid = compare_grid(to_bits(fa), to_bits(fb), max_cells=4096)
    assert grid.counts == {"neither": int((~fa & ~fb).sum()), "both": int((fa & fb).sum()),
                           "only a": int((fa & ~fb).sum()), "only b": int((fb & ~fa).sum())}
    assert f"each pixel = {k} bits = 256 MiB" in ax.get_title()
    assert [t.get_text() for t in ax.get_yticklabels()][:2] == ["0 B", "128 GiB"]


def test_mixed_pixels_get_their_own_legend_entry():
    a, b = flags(64, [0, 9]), flags(64, [1])
    grid = compare_grid(a, b, max_cells=8)  # 8 bits per pixel
    assert np.ma.getdata(grid.categories).ravel().tolist() == [MIXED, ONLY_A] + [NEITHER] * 6
    fig = plot_bitmap_compare(a, b, granularity=512, size=64 * 512, max_cells=8)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[-1] == "only before and only after bits in one pixel"


def test_rejects_mismatches():
    with pytest.raises(ValueError, match="differ in length"):
        compare_grid(flags(10, []), flags(11, []))
    with pytest.raises(ValueError, match="granularity and size"):
        plot_bitmap_compare(A, B)
    with pytest.raises(ValueError, match="differ in granularity"):
        plot_bitmap_compare(DirtyBitmap(MiB, 65536), DirtyBitmap(MiB, 131072))
    with pytest.raises(ValueError, match="1024 bits do not describe 33554432 bytes.*expected 512 bits"):
        plot_bitmap_compare(A, B, granularity=65536, size=32 * MiB)
