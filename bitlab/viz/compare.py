"""Two dirty bitmaps overlaid — bits in, :class:`matplotlib.figure.Figure` out.

Each cell is one of: neither, both, only in the first, only in the second (a bitmap and its
successor, or one bitmap before and after a backup). Above ``max_cells`` bits a cell is a pixel
covering a power-of-two run of bits; a pixel holding bits that are in one bitmap only shows
that difference (and "differ both ways" if it holds both kinds), so no difference is ever
hidden by a reduction. Colours are from the cividis family *and* every category has its own
hatching and legend entry. Everything is numpy on the packed bytes, so 16 Mi bits are cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import matplotlib as mpl
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, PathPatch
from matplotlib.path import Path

from ..units import format_size
from .bitmap import (
    DEFAULT_MAX_CELLS,
    _bits_per_cell,
    _ones_per_cell,
    _packed,
    grid_figure,
    grid_shape,
    offset_axes,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["CATEGORIES", "CompareGrid", "compare_grid", "plot_bitmap_compare"]

NEITHER, BOTH, ONLY_A, ONLY_B, MIXED = range(5)
CATEGORIES = ("neither", "both", "only a", "only b", "differ both ways")


def _styles() -> list[tuple[tuple[float, ...], str, str]]:
    """(face colour, hatch, hatch colour) per category code: cividis family, every one hatched differently."""
    cividis = mpl.colormaps["cividis"]
    return [((0.93, 0.93, 0.93, 1.0), "", "black"),  # neither: light grey, plain
            (cividis(0.45), "..", "black"),           # both
            (cividis(0.05), "//", "white"),           # only a: dark blue
            (cividis(1.0), "\\\\", "black"),          # only b: yellow
            (cividis(0.75), "xx", "black")]           # both kinds of difference in one pixel


STYLES = _styles()


@dataclass(frozen=True)
class CompareGrid:
    """What :func:`plot_bitmap_compare` draws: a category code (see :data:`CATEGORIES`) per cell.

    ``counts`` are exact numbers of *bits* per category over the whole bitmaps.
    """

    categories: np.ma.MaskedArray
    bits_per_cell: int
    nbits: int
    counts: dict[str, int]

    @property
    def rows(self) -> int:
        return self.categories.shape[0]

    @property
    def columns(self) -> int:
        return self.categories.shape[1]


def compare_grid(a: Any, b: Any, *, max_cells: int = DEFAULT_MAX_CELLS, columns: int | None = None) -> CompareGrid:
    """Classify the cells of two equally long bit sequences (little-endian bitarrays or booleans)."""
    raw_a, nbits = _packed(a)
    raw_b, nbits_b = _packed(b)
    if nbits != nbits_b:
        raise ValueError(f"the bitmaps differ in length: {nbits} and {nbits_b} bits")
    if nbits == 0:
        raise ValueError("an empty bitmap has nothing to draw")
    k = _bits_per_cell(nbits, max_cells)
    # pad bits are zero in both, so they count as "neither" and are not counted below
    only_a = _ones_per_cell(raw_a & ~raw_b, nbits, k)
    only_b = _ones_per_cell(raw_b & ~raw_a, nbits, k)
    both = _ones_per_cell(raw_a & raw_b, nbits, k)
    codes = np.where(both > 0, BOTH, NEITHER).astype(np.int8)
    codes[only_a > 0] = ONLY_A
    codes[only_b > 0] = ONLY_B
    codes[(only_a > 0) & (only_b > 0)] = MIXED
    ncells = codes.size
    columns, rows = grid_shape(ncells, k, columns)
    padded = np.full(rows * columns, -1, dtype=np.int8)
    padded[:ncells] = codes
    cats = np.ma.masked_less(padded.reshape(rows, columns), 0)
    n_a, n_b, n_both = int(only_a.sum()), int(only_b.sum()), int(both.sum())
    counts = {"neither": nbits - n_a - n_b - n_both, "both": n_both, "only a": n_a, "only b": n_b}
    return CompareGrid(categories=cats, bits_per_cell=k, nbits=nbits, counts=counts)


def _runs(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(row, first column, length, code) of every run of equal codes within a row."""
    rows, cols = codes.shape
    change = np.ones((rows, cols), dtype=bool)
    change[:, 1:] = codes[:, 1:] != codes[:, :-1]
    starts = np.flatnonzero(change)
    lengths = np.diff(np.append(starts, rows * cols))
    return starts // cols, starts % cols, lengths, codes.ravel()[starts]


def _rects_path(row: np.ndarray, col: np.ndarray, length: np.ndarray) -> Path:
    """One compound path of the runs' rectangles: Agg hatches it in one pass (a collection of
    thousands of hatched rectangles takes seconds)."""
    x0, x1 = col - 0.5, col + length - 0.5
    y0, y1 = row - 0.5, row + 0.5
    verts = np.stack([np.stack([x0, y0], -1), np.stack([x1, y0], -1), np.stack([x1, y1], -1),
                      np.stack([x0, y1], -1), np.stack([x0, y0], -1)], axis=1).reshape(-1, 2)
    codes = np.tile(np.array([Path.MOVETO, Path.LINETO, Path.LINETO, Path.LINETO, Path.CLOSEPOLY],
                             dtype=Path.code_type), row.size)
    return Path(verts, codes)


def _unpack(bm: Any) -> tuple[Any, int | None, int | None]:
    if hasattr(bm, "bits") and hasattr(bm, "granularity"):
        return bm.bits, bm.granularity, bm.size
    return bm, None, None


def plot_bitmap_compare(
    a: Any,
    b: Any,
    labels: Sequence[str] = ("before", "after"),
    *,
    granularity: int | None = None,
    size: int | None = None,
    title: str | None = None,
    max_cells: int = DEFAULT_MAX_CELLS,
    columns: int | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Overlay bitmaps ``a`` and ``b`` (``DirtyBitmap`` objects, or bits with ``granularity`` and ``size``).

    Cells show neither / both / only ``labels[0]`` / only ``labels[1]`` by colour, hatching and
    legend, with byte-offset axes. Draws into ``ax`` if given; returns the Figure.
    """
    bits_a, gran_a, size_a = _unpack(a)
    bits_b, gran_b, size_b = _unpack(b)
    for given, name in ((gran_a, "granularity"), (gran_b, "granularity"), (size_a, "size"), (size_b, "size")):
        if given is None:
            continue
        want = granularity if name == "granularity" else size
        if want is not None and want != given:
            raise ValueError(f"the bitmaps differ in {name}: {want} and {given}")
        if name == "granularity":
            granularity = given
        else:
            size = given
    if granularity is None or size is None:
        raise ValueError("granularity and size are needed for bits that are not DirtyBitmaps")
    if granularity < 1 or granularity & (granularity - 1):
        raise ValueError("granularity must be a power of two")
    la, lb = labels
    grid = compare_grid(bits_a, bits_b, max_cells=max_cells, columns=columns)
    expected = -(-size // granularity)
    if grid.nbits != expected:
        raise ValueError(f"{grid.nbits} bits do not describe {size} bytes at granularity {granularity} "
                         f"(expected {expected} bits)")
    per_bit = grid.bits_per_cell == 1
    present = set(np.unique(np.ma.compressed(grid.categories)).tolist())
    cell_bytes = grid.bits_per_cell * granularity

    if ax is None:
        fig, ax = grid_figure(grid.rows, grid.columns, title_lines=2 + (not per_bit), right=0.3,
                              bottom_extra=0.3 * (2 + (MIXED in present)) + 0.1)  # 2 or 3 legend rows
    else:
        fig = ax.figure.figure

    cmap = ListedColormap([face for face, _, _ in STYLES], name="cividis-compare").with_extremes(bad=(1, 1, 1, 0))
    ax.imshow(grid.categories, cmap=cmap, vmin=-0.5, vmax=len(STYLES) - 0.5, interpolation="nearest",
              aspect="equal", origin="upper")
    names = ["neither", "both", f"only {la}", f"only {lb}", f"only {la} and only {lb} bits"]
    row, col, length, code = _runs(np.ma.filled(grid.categories, -1))
    for c, (_, hatch, hatch_colour) in enumerate(STYLES):
        pick = code == c
        if not hatch or not pick.any():
            continue
        # add_artist, not add_patch: the image already set the limits, and add_patch would walk every segment
        ax.add_artist(PathPatch(_rects_path(row[pick], col[pick], length[pick]), facecolor="none",
                                edgecolor=hatch_colour, linewidth=0, hatch=hatch, gid=f"hatch:{names[c]}"))
    offset_axes(ax, grid.columns, grid.rows, cell_bytes, gaps=per_bit)

    counts = grid.counts
    bits_of = [counts["neither"], counts["both"], counts["only a"], counts["only b"]]
    handles = []
    for c, (face, hatch, hatch_colour) in enumerate(STYLES):
        if c == MIXED and MIXED not in present:
            continue
        text = f"{names[c]}: {bits_of[c]} bits" if c < MIXED else f"{names[c]} in one pixel"
        handles.append(Patch(facecolor=face, hatch=hatch, edgecolor=hatch_colour, linewidth=0, label=text))
    # below the tick labels and the axis label, whatever the height of the picture
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), borderaxespad=3.6, ncols=2,
              fontsize="small", frameon=False, handleheight=1.6, handlelength=2.6)

    info = (f"granularity {format_size(granularity)}, {grid.nbits} bits: only {la} {counts['only a']}, "
            f"only {lb} {counts['only b']}, both {counts['both']}")
    if not per_bit:
        info += (f"\neach pixel = {grid.bits_per_cell} bits = {format_size(cell_bytes)}; "
                 "a pixel with any bit in one bitmap only shows that difference")
    heading = title if title else f"{la} vs {lb}"
    ax.set_title(f"{heading}\n{info}", fontsize="medium")
    return fig
