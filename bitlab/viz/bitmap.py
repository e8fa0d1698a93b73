"""Pictures of dirty bitmaps — pure functions: bits in, :class:`matplotlib.figure.Figure` out.

A small bitmap is drawn one cell per bit, in rows of 64 cells. A large one (a 1 TiB disk
at 64 KiB granularity has 16 Mi bits) is drawn as a pixel grid where each pixel covers a
power-of-two run of bits and shows the *fraction* of them that is dirty. The reduction is
numpy only (a popcount table over the packed bytes), never a Python loop per bit.

Nothing here touches pyplot's global state, so the functions are safe in tests, servers
and notebooks alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure

from ..units import format_size

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from ..bitmap import DirtyBitmap

__all__ = ["BitmapGrid", "bitmap_grid", "plot_bitmap", "plot_dirty_bitmap"]

DEFAULT_COLUMNS = 64  # cells per row when every bit gets its own cell
DEFAULT_MAX_CELLS = 16384  # 128 x 128 pixels at most
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


@dataclass(frozen=True)
class BitmapGrid:
    """What :func:`plot_bitmap` draws, before any drawing.

    ``values[r, c]`` is the dirty fraction of the bits in cell ``r * columns + c``
    (exactly 0 or 1 when ``bits_per_cell == 1``); cells past the last bit are masked.
    """

    values: np.ma.MaskedArray
    bits_per_cell: int
    nbits: int
    popcount: int

    @property
    def rows(self) -> int:
        return self.values.shape[0]

    @property
    def columns(self) -> int:
        return self.values.shape[1]

    @property
    def ncells(self) -> int:
        return -(-self.nbits // self.bits_per_cell)


def _packed(bits: Any) -> tuple[np.ndarray, int]:
    """(little-endian packed bytes with zero pad bits, number of bits) of a bit sequence."""
    if hasattr(bits, "tobytes") and hasattr(bits, "endian"):  # bitarray
        endian = bits.endian() if callable(bits.endian) else bits.endian  # a method before bitarray 3
        if endian != "little":
            raise ValueError("bits must be a little-endian bitarray (bit i of byte 0 is bit i)")
        return np.frombuffer(bits.tobytes(), dtype=np.uint8), len(bits)
    flags = np.asarray(bits, dtype=bool).ravel()
    return np.packbits(flags, bitorder="little"), flags.size


def _bits_per_cell(nbits: int, max_cells: int) -> int:
    """1 if every bit fits, else the smallest power of two that brings the cells to max_cells."""
    if max_cells < 1:
        raise ValueError("max_cells must be at least 1")
    k = 1
    while -(-nbits // k) > max_cells:
        k <<= 1
    return k


def _ones_per_cell(raw: np.ndarray, nbits: int, k: int) -> np.ndarray:
    ncells = -(-nbits // k)
    if k % 64 == 0 and hasattr(np, "bitwise_count"):  # whole 64-bit words per cell (numpy >= 2)
        words = k // 64
        want = ncells * words * 8
        if raw.size < want:
            raw = np.concatenate((raw, np.zeros(want - raw.size, dtype=np.uint8)))
        per_word = np.bitwise_count(raw[:want].view(np.uint64))
        return per_word.reshape(ncells, words).sum(axis=1, dtype=np.int64)
    if k % 8 == 0:  # whole bytes per cell: popcount the bytes, sum by reshape
        per_byte = _POPCOUNT[raw]
        want = ncells * (k // 8)
        if per_byte.size < want:
            per_byte = np.concatenate((per_byte, np.zeros(want - per_byte.size, dtype=np.uint8)))
        return per_byte[:want].reshape(ncells, k // 8).sum(axis=1, dtype=np.int64)
    flags = np.unpackbits(raw, bitorder="little", count=nbits)
    if ncells * k > nbits:
        flags = np.concatenate((flags, np.zeros(ncells * k - nbits, dtype=np.uint8)))
    return flags.reshape(ncells, k).sum(axis=1, dtype=np.int64)


def grid_shape(ncells: int, bits_per_cell: int, columns: int | None = None) -> tuple[int, int]:
    """(columns, rows) for ``ncells`` cells: 64 wide for one bit per cell, else roughly square and a
    power of two wide, so rows start at round offsets."""
    if columns is None:
        columns = DEFAULT_COLUMNS if bits_per_cell == 1 else 1 << math.ceil(math.log2(math.sqrt(ncells)))
    columns = max(1, min(columns, ncells))
    return columns, -(-ncells // columns)


def bitmap_grid(bits: Any, *, max_cells: int = DEFAULT_MAX_CELLS, columns: int | None = None) -> BitmapGrid:
    """Lay ``bits`` out as rows of cells, each the dirty fraction of the bits it covers.

    ``bits`` is a little-endian :class:`bitarray.bitarray` (as in
    :class:`bitlab.bitmap.DirtyBitmap`) or anything numpy reads as booleans.
    """
    raw, nbits = _packed(bits)
    if nbits == 0:
        raise ValueError("an empty bitmap has nothing to draw")
    k = _bits_per_cell(nbits, max_cells)
    ones = _ones_per_cell(raw, nbits, k)
    ncells = ones.size
    covered = np.full(ncells, k, dtype=np.int64)
    covered[-1] = nbits - (ncells - 1) * k  # the last cell may cover fewer bits
    fractions = ones / covered
    columns, rows = grid_shape(ncells, k, columns)
    padded = np.full(rows * columns, np.nan)
    padded[:ncells] = fractions
    values = np.ma.masked_invalid(padded.reshape(rows, columns))
    return BitmapGrid(values=values, bits_per_cell=k, nbits=nbits, popcount=int(ones.sum()))


def _tick_steps(n: int, most: int) -> np.ndarray:
    step = max(1, -(-n // most))
    return np.arange(0, n + 1, step)


def grid_figure(rows: int, columns: int, *, title_lines: int, right: float = 1.35, bottom_extra: float = 0.0,
                width: float = 8.0, max_height: float = 9.5) -> tuple[Figure, Axes]:
    """A Figure with one Axes sized for an aspect-equal grid of ``rows`` x ``columns`` cells.

    Margins are fixed in inches (tick labels left, ``title_lines`` of title on top, a colour bar
    of ``right`` inches, ``bottom_extra`` inches for a legend below): no layout engine, which
    would cost more than drawing the picture itself.
    """
    left, bottom, top = 0.95, 0.6 + bottom_extra, 0.2 + 0.22 * title_lines
    ax_w = width - left - right
    ax_h = ax_w * rows / columns
    if ax_h > max_height - top - bottom:
        ax_w, ax_h = ax_w * (max_height - top - bottom) / ax_h, max_height - top - bottom
    height = ax_h + top + bottom
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((left / width, bottom / height, ax_w / width, ax_h / height))
    return fig, ax


def offset_axes(ax: Axes, columns: int, rows: int, cell_bytes: int, *, gaps: bool = False) -> None:
    """Byte-offset ticks and axis labels for a grid of ``rows`` x ``columns`` cells of ``cell_bytes``.

    ``gaps``: thin white lines between the cells (one cell per bit, small grids only).
    """
    row_bytes = columns * cell_bytes
    xt = _tick_steps(columns, 4)
    ax.set_xticks(xt - 0.5, [format_size(int(c) * cell_bytes) for c in xt])
    yt = _tick_steps(rows, 8)
    yt = yt[yt < rows] if rows > 1 else yt[:1]
    ax.set_yticks(yt - 0.5, [format_size(int(r) * row_bytes) for r in yt])
    ax.set_xlabel(f"byte offset within a row (one row = {format_size(row_bytes)})")
    ax.set_ylabel("byte offset of the row")
    if gaps and columns <= 128 and rows <= 128:
        ax.vlines(np.arange(0.5, columns - 1), -0.5, rows - 0.5, colors="white", linewidth=0.6)
        ax.hlines(np.arange(0.5, rows - 1), -0.5, columns - 0.5, colors="white", linewidth=0.6)


def plot_bitmap(
    bits: Any,
    granularity: int,
    size: int,
    *,
    title: str | None = None,
    max_cells: int = DEFAULT_MAX_CELLS,
    columns: int | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Draw a dirty bitmap of a ``size``-byte node with one bit per ``granularity`` bytes.

    Up to ``max_cells`` bits are drawn one cell per bit (rows of ``columns``, default 64);
    above that, each pixel covers a power-of-two run of bits and shows its dirty fraction.
    Axis ticks are byte offsets; the colour map is cividis (colour-blind safe, and readable
    in grey). Draws into ``ax`` if given, else into a new Figure; returns the Figure.
    """
    if granularity < 1 or granularity & (granularity - 1):
        raise ValueError("granularity must be a power of two")
    grid = bitmap_grid(bits, max_cells=max_cells, columns=columns)
    expected = -(-size // granularity)
    if grid.nbits != expected:
        raise ValueError(f"{grid.nbits} bits do not describe {size} bytes at granularity {granularity} "
                         f"(expected {expected} bits)")
    cell_bytes = grid.bits_per_cell * granularity
    per_bit = grid.bits_per_cell == 1

    if ax is None:
        fig, ax = grid_figure(grid.rows, grid.columns, title_lines=1 + (title is not None) + (not per_bit))
    else:
        fig = ax.figure.figure  # the root Figure, also for an Axes in a SubFigure

    cmap = mpl.colormaps["cividis"]
    if per_bit:
        cmap = cmap.resampled(2)
    cmap = cmap.with_extremes(bad="white")  # cells past the end of the disk stay blank
    image = ax.imshow(grid.values, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest",
                      aspect="equal", origin="upper")

    offset_axes(ax, grid.columns, grid.rows, cell_bytes, gaps=per_bit)

    count = grid.popcount * granularity
    info = (f"granularity {format_size(granularity)}, count {count} ({format_size(count)}): "
            f"{grid.popcount} of {grid.nbits} bits dirty")
    if not per_bit:
        info += f"\neach pixel = {grid.bits_per_cell} bits = {format_size(cell_bytes)}"
    ax.set_title(f"{title}\n{info}" if title else info, fontsize="medium")

    # the bar sits in an inset, so it is exactly as tall as the (aspect-equal) picture
    bar = fig.colorbar(image, cax=ax.inset_axes([1.025, 0.0, 0.025, 1.0]))
    if per_bit:
        bar.set_ticks([0.25, 0.75], labels=["clean", "dirty"])
        bar.set_label(f"one bit = {format_size(granularity)}")
    else:
        bar.set_ticks([0.0, 0.25, 0.5, 0.75, 1.0])
        bar.set_label("dirty fraction of the bits in a pixel")
    return fig


def plot_dirty_bitmap(bm: DirtyBitmap, **kw: Any) -> Figure:
    """:func:`plot_bitmap` for a :class:`bitlab.bitmap.DirtyBitmap`, titled with its name."""
    kw.setdefault("title", bm.name if bm.name is not None else "(anonymous bitmap)")
    return plot_bitmap(bm.bits, bm.granularity, bm.size, **kw)
