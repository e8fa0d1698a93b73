"""bitlab.viz: check WHAT is drawn (image data, titles, labels), never pixels."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from bitarray import bitarray  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from bitlab import Machine  # noqa: E402
from bitlab.bitmap import DirtyBitmap  # noqa: E402
from bitlab.viz import bitmap_grid, plot_bitmap, plot_dirty_bitmap  # noqa: E402

MiB, GiB, TiB = 1 << 20, 1 << 30, 1 << 40


def _bits(nbits: int, ones: list[int]) -> bitarray:
    bits = bitarray(nbits, endian="little")
    bits.setall(0)
    for i in ones:
        bits[i] = 1
    return bits


def _image(fig: Figure):
    main = fig.axes[0]
    assert len(main.images) == 1
    return main, main.images[0].get_array()


def test_small_bitmap_one_cell_per_bit():
    # 64 MiB at 64 KiB: 1024 bits -> 16 rows of 64 cells
    ones = [0, 1, 16, 17, 1023]
    fig = plot_bitmap(_bits(1024, ones), 65536, 64 * MiB)
    assert isinstance(fig, Figure)
    ax, data = _image(fig)
    expected = np.zeros(1024)
    expected[ones] = 1.0
    assert data.shape == (16, 64)
    assert not np.ma.getmaskarray(data).any()
    np.testing.assert_array_equal(np.ma.getdata(data).ravel(), expected)


def test_labels_and_title_say_what_is_drawn():
    fig = plot_bitmap(_bits(1024, [0, 1, 16, 17, 18]), 65536, 64 * MiB, title="bitmap0")
    ax, _ = _image(fig)
    title = ax.get_title()
    assert title.startswith("bitmap0\n")
    assert "granularity 64 KiB" in title
    assert "count 327680 (320 KiB)" in title
    assert "5 of 1024 bits dirty" in title
    assert "one row = 4 MiB" in ax.get_xlabel()
    assert "byte offset" in ax.get_ylabel()
    xlabels = [t.get_text() for t in ax.get_xticklabels()]
    assert xlabels == ["0 B", "1 MiB", "2 MiB", "3 MiB", "4 MiB"]
    ylabels = [t.get_text() for t in ax.get_yticklabels()]
    assert ylabels[0] == "0 B" and "8 MiB" in ylabels
    # the colour bar explains the colours in words
    bar = ax.images[0].colorbar.ax
    assert [t.get_text() for t in bar.get_yticklabels()] == ["clean", "dirty"]
    assert "64 KiB" in bar.get_ylabel()


def test_colormap_is_cividis():
    fig = plot_bitmap(_bits(8, [3]), 512, 4096)
    assert fig.axes[0].images[0].get_cmap().name.startswith("cividis")


def test_partial_last_row_is_masked_not_clean():
    # 100 bits in rows of 64: the last 28 cells are past the end of the disk
    fig = plot_bitmap(_bits(100, [99]), 512, 100 * 512 - 1)  # partial last granule still one bit
    _, data = _image(fig)
    assert data.shape == (2, 64)
    mask = np.ma.getmaskarray(data).ravel()
    assert not mask[:100].any() and mask[100:].all()
    assert data.ravel()[99] == 1.0
    assert data.ravel()[:99].sum() == 0


def test_large_bitmap_reduced_to_fractions():
    # 1 TiB at 64 KiB = 16 Mi bits
    nbits = 16 * MiB
    rng = np.random.default_rng(7)
    flags = rng.random(nbits) < 0.01
    flags[: 1 << 20] = True  # the first 64 GiB all dirty
    bits = bitarray(endian="little")
    bits.frombytes(np.packbits(flags, bitorder="little").tobytes())
    max_cells = 4096
    fig = plot_bitmap(bits, 65536, TiB, max_cells=max_cells)
    ax, data = _image(fig)
    assert data.size <= max_cells
    pixels = np.ma.compressed(data)
    assert pixels.size <= max_cells
    assert np.all((pixels >= 0) & (pixels <= 1))
    assert np.isclose(pixels.mean(), flags.sum() / nbits)
    per_pixel = nbits // pixels.size
    np.testing.assert_allclose(pixels, flags.reshape(-1, per_pixel).mean(axis=1))
    assert pixels[0] == 1.0
    title = ax.get_title()
    assert f"{int(flags.sum())} of {nbits} bits dirty" in title
    assert f"each pixel = {per_pixel} bits" in title
    # 4096 bits = 256 MiB per pixel, 64 pixels = 16 GiB per row, 64 rows
    assert data.shape == (64, 64)
    assert [t.get_text() for t in ax.get_xticklabels()][-1] == "16 GiB"
    assert [t.get_text() for t in ax.get_yticklabels()][:3] == ["0 B", "128 GiB", "256 GiB"]
    assert "fraction" in ax.images[0].colorbar.ax.get_ylabel()


def test_reduction_with_a_short_last_pixel():
    # 10 bits, 4 per pixel: pixels cover 4, 4 and 2 bits
    flags = np.array([1, 0, 0, 0, 1, 1, 1, 1, 0, 1], dtype=bool)
    grid = bitmap_grid(flags, max_cells=3)
    assert grid.bits_per_cell == 4
    np.testing.assert_allclose(np.ma.compressed(grid.values), [0.25, 1.0, 0.5])


def test_bits_per_cell_not_a_byte_multiple():
    flags = np.zeros(20, dtype=bool)
    flags[[0, 1, 5]] = True
    grid = bitmap_grid(flags, max_cells=10)  # 2 bits per cell
    assert grid.bits_per_cell == 2
    np.testing.assert_allclose(np.ma.compressed(grid.values)[:3], [1.0, 0.0, 0.5])


def test_plot_dirty_bitmap_from_a_machine():
    vm = Machine()
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "drive0", "size": 64 * MiB})
    vm.qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "bitmap0", "granularity": 65536})
    vm.write("drive0", 126976, 8192)  # straddles clusters 1 and 2
    bm = vm.graph.nodes["drive0"].bitmaps[0]
    fig = plot_dirty_bitmap(bm)
    ax, data = _image(fig)
    assert np.flatnonzero(np.ma.getdata(data).ravel()).tolist() == [1, 2]
    assert ax.get_title().startswith("bitmap0\n")
    assert "count 131072" in ax.get_title()


def test_anonymous_bitmap_title():
    bm = DirtyBitmap(4 * MiB, 65536)
    fig = plot_dirty_bitmap(bm)
    assert fig.axes[0].get_title().startswith("(anonymous bitmap)")


def test_draws_into_given_axes():
    fig = Figure()
    ax = fig.add_subplot()
    out = plot_bitmap(_bits(64, [5]), 65536, 4 * MiB, ax=ax)
    assert out is fig
    assert ax.images and np.ma.getdata(ax.images[0].get_array()).ravel()[5] == 1.0


def test_rejects_bits_that_do_not_match_the_size():
    with pytest.raises(ValueError, match="expected 1024 bits"):
        plot_bitmap(_bits(1000, []), 65536, 64 * MiB)
    with pytest.raises(ValueError, match="power of two"):
        plot_bitmap(_bits(1024, []), 65535, 64 * MiB)


def test_big_endian_bitarray_rejected():
    with pytest.raises(ValueError, match="little-endian"):
        bitmap_grid(bitarray("0101", endian="big"))


def test_no_pyplot_state_left_behind():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plot_bitmap(_bits(1024, [1]), 65536, 64 * MiB)
    assert plt.get_fignums() == before


def test_show_publishes_png_only(monkeypatch):
    import IPython.display

    from bitlab.viz import show

    published = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw=False: published.append((obj, raw)))
    assert show(plot_bitmap(_bits(64, [1]), 65536, 4 * MiB)) is None
    [(bundle, raw)] = published
    assert raw is True
    assert list(bundle) == ["image/png"]
    assert bundle["image/png"].startswith(b"\x89PNG")


@pytest.mark.parametrize("nbits", [1000, 4096, 5000])
@pytest.mark.parametrize("k", [1, 2, 8, 16, 64, 128])
def test_every_reduction_path_counts_exactly(nbits, k):
    # bits per cell: not whole bytes (unpack), whole bytes (byte table), whole 64-bit words (bitwise_count)
    rng = np.random.default_rng(nbits + k)
    flags = rng.random(nbits) < 0.3
    grid = bitmap_grid(flags, max_cells=-(-nbits // k))
    assert grid.bits_per_cell == k
    padded = np.zeros(-(-nbits // k) * k, dtype=bool)
    padded[:nbits] = flags
    ones = padded.reshape(-1, k).sum(axis=1)
    covered = np.full(ones.size, k)
    covered[-1] = nbits - (ones.size - 1) * k
    np.testing.assert_allclose(np.ma.compressed(grid.values), ones / covered)
    assert grid.popcount == flags.sum()
    # a bitarray input (pad bits of its last byte are zero) gives the same
    bits = bitarray(endian="little")
    bits.frombytes(np.packbits(flags, bitorder="little").tobytes())
    np.testing.assert_array_equal(np.ma.compressed(bitmap_grid(bits[:nbits], max_cells=ones.size).values),
                                  np.ma.compressed(grid.values))
