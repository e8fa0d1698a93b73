"""Backup-chain diagrams — image verdicts in, :class:`matplotlib.figure.Figure` out.

One row per drive; each image is a box, placed one column right of its backing file, with an
arrow pointing at the backing file (a full backup has none). A box says, in words, whether the
image is valid and whether to keep it ("keep" / "delete: <reason>"), and its stripe says the
same with a cividis colour and a hatch. Images are duck-typed (:class:`ChainImage`), so this
module does not depend on :mod:`bitlab.chain`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import matplotlib as mpl
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Patch, Rectangle

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["ChainArrow", "ChainBox", "ChainImage", "ChainLayout", "chain_layout", "plot_chain"]

BOX_W, BOX_H, STRIPE_W = 0.78, 0.82, 0.07
WRAP = 34  # characters per line of a reason


class ChainImage(Protocol):
    """What :func:`plot_chain` reads from an image (e.g. ``bitlab.chain.ImageVerdict``)."""

    @property
    def image(self) -> str: ...
    @property
    def drive(self) -> str | None: ...
    @property
    def backing(self) -> str | None: ...
    @property
    def valid(self) -> bool: ...
    @property
    def keep(self) -> bool: ...
    @property
    def reason(self) -> str: ...


def _styles() -> dict[tuple[bool, bool], tuple[str, tuple[float, ...], str]]:
    """(valid, keep) → (legend text, cividis colour, hatch)."""
    cividis = mpl.colormaps["cividis"]
    return {(True, True): ("valid, keep", cividis(0.92), ""),
            (True, False): ("valid, delete", cividis(0.6), "//"),
            (False, True): ("invalid, keep", cividis(0.4), ".."),
            (False, False): ("invalid, delete", cividis(0.08), "xx")}


STYLES = _styles()


@dataclass(frozen=True)
class ChainBox:
    """One image as drawn: ``column`` = backing hops from the chain's base, ``row`` from the top."""

    image: str
    drive: str
    column: int
    row: int
    valid: bool
    keep: bool
    label: str  # "keep" or "delete: <reason>"
    reason: str
    listed: bool = True  # False: a backing file named by an image but not in the input

    @property
    def style(self) -> str:
        """The legend entry of the box ("valid, keep", …; "not listed" for a placeholder)."""
        return STYLES[(self.valid, self.keep)][0] if self.listed else "not listed"


@dataclass(frozen=True)
class ChainArrow:
    """``image`` is backed by ``backing`` (the arrow points at the backing file)."""

    image: str
    backing: str


@dataclass(frozen=True)
class ChainLayout:
    """Everything :func:`plot_chain` draws."""

    boxes: tuple[ChainBox, ...]
    arrows: tuple[ChainArrow, ...]
    drives: tuple[tuple[str, float], ...]  # (drive, centre row) top to bottom
    rows: int
    columns: int

    def box(self, image: str) -> ChainBox:
        for b in self.boxes:
            if b.image == image:
                return b
        raise KeyError(image)


def chain_layout(images: Sequence[ChainImage]) -> ChainLayout:
    """Place ``images``: a row band per drive (in order of first appearance), columns by backing depth."""
    by_name = {img.image: img for img in images}
    if len(by_name) != len(images):
        raise ValueError("an image is listed twice")
    drive_of = {img.image: img.drive if img.drive is not None else "(no drive)" for img in images}
    placeholders: dict[str, str] = {}  # backing files that are not listed -> drive of the first image using them
    for img in images:
        if img.backing is not None and img.backing not in by_name:
            placeholders.setdefault(img.backing, drive_of[img.image])

    depth: dict[str, int] = {}

    def depth_of(name: str) -> None:
        path: list[str] = []
        while name not in depth:
            if name in path:
                raise ValueError(f"backing files form a loop: {' -> '.join([*path, name])}")
            img = by_name.get(name)
            if img is None or img.backing is None:
                depth[name] = 0
                break
            path.append(name)
            name = img.backing
        d = depth[name]
        for n in reversed(path):
            d += 1
            depth[n] = d

    order = list(placeholders) + [img.image for img in images]
    for name in order:
        depth_of(name)
    drives: list[str] = []
    for name in [img.image for img in images] + list(placeholders):
        d = drive_of.get(name, placeholders.get(name))
        if d not in drives:
            drives.append(d)

    boxes: list[ChainBox] = []
    bands: list[tuple[str, float]] = []
    top = 0
    for d in drives:
        slots: dict[int, int] = {}
        names = [n for n in placeholders if placeholders[n] == d] + [i.image for i in images if drive_of[i.image] == d]
        for name in names:
            col = depth[name]
            slot = slots.get(col, 0)
            slots[col] = slot + 1
            img = by_name.get(name)
            if img is None:
                boxes.append(ChainBox(name, d, col, top + slot, False, True, "not listed", "", listed=False))
            else:
                label = "keep" if img.keep else f"delete: {img.reason}"
                boxes.append(ChainBox(name, d, col, top + slot, bool(img.valid), bool(img.keep), label, img.reason))
        height = max(slots.values())
        bands.append((d, top + (height - 1) / 2))
        top += height
    arrows = tuple(ChainArrow(img.image, img.backing) for img in images if img.backing is not None)
    columns = 1 + max((b.column for b in boxes), default=0)
    return ChainLayout(tuple(boxes), arrows, tuple(bands), top, columns)


def _box_text(box: ChainBox) -> str:
    if not box.listed:
        return f"{box.image}\n(not listed)"
    lines = [box.image, "valid" if box.valid else "INVALID"]
    lines += textwrap.wrap(box.label, WRAP, max_lines=4, placeholder=" …")
    if box.keep and box.reason:
        lines += textwrap.wrap(f"({box.reason})", WRAP, max_lines=3, placeholder=" …")
    return "\n".join(lines)


def plot_chain(images: Sequence[ChainImage], *, title: str | None = None, ax: Axes | None = None) -> Figure:
    """Draw backup chains: a row per drive, image boxes left→right along backing arrows.

    Valid / invalid and keep / delete are told by a cividis stripe with its own hatch, by the
    legend, and in words inside each box. Draws into ``ax`` if given; returns the Figure.
    """
    layout = chain_layout(images)
    if ax is None:
        fig = Figure(figsize=(1.2 + 3.3 * layout.columns, 1.6 + 1.45 * layout.rows), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure.figure

    if not layout.boxes:  # e.g. before any backup: say so rather than fail
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no backup images", ha="center", va="center", transform=ax.transAxes, gid="empty")
        ax.set_title(title if title else "backup chains", fontsize="medium")
        return fig
    where = {b.image: b for b in layout.boxes}
    for b in layout.boxes:
        x0, y0 = b.column - BOX_W / 2, b.row - BOX_H / 2
        if b.listed:
            _, colour, hatch = STYLES[(b.valid, b.keep)]
            tint = tuple(0.78 + 0.22 * c for c in colour[:3])
            ax.add_patch(FancyBboxPatch((x0, y0), BOX_W, BOX_H, boxstyle="round,pad=0,rounding_size=0.04",
                                        facecolor=tint, edgecolor=colour, linewidth=1.6, gid=f"box:{b.image}"))
            ax.add_patch(Rectangle((x0, y0), STRIPE_W, BOX_H, facecolor=colour, hatch=hatch,
                                   edgecolor="white" if sum(colour[:3]) < 1.2 else "black", linewidth=0,
                                   gid=f"stripe:{b.image}"))
        else:
            ax.add_patch(FancyBboxPatch((x0, y0), BOX_W, BOX_H, boxstyle="round,pad=0,rounding_size=0.04",
                                        facecolor="white", edgecolor="grey", linestyle="--", linewidth=1.2,
                                        gid=f"box:{b.image}"))
        name, _, rest = _box_text(b).partition("\n")
        ax.text(x0 + STRIPE_W + 0.03, y0 + 0.07, name, ha="left", va="top", fontsize=8.5, fontweight="bold",
                gid=f"name:{b.image}")
        ax.text(x0 + STRIPE_W + 0.03, y0 + 0.22, rest, ha="left", va="top", fontsize=7.5, gid=f"text:{b.image}")
    for a in layout.arrows:
        src, dst = where[a.image], where[a.backing]
        ax.annotate("", xy=(dst.column + BOX_W / 2, dst.row), xytext=(src.column - BOX_W / 2, src.row),
                    arrowprops={"arrowstyle": "-|>", "color": "black", "linewidth": 1.2,
                                "connectionstyle": "arc3,rad=0.0", "shrinkA": 0, "shrinkB": 0},
                    gid=f"arrow:{a.image}->{a.backing}")

    ax.set_xlim(-0.5, layout.columns - 0.5)
    ax.set_ylim(layout.rows - 0.5, -0.5)
    ax.set_xticks(range(layout.columns), ["base" if c == 0 else f"+{c}" for c in range(layout.columns)])
    ax.set_xlabel("backing files from the base image (arrows point at the backing file)")
    ax.set_yticks([y for _, y in layout.drives], [d for d, _ in layout.drives])
    ax.set_ylabel("drive")
    for d, _ in layout.drives[1:]:  # a thin line between the drives' bands
        ax.axhline(min(b.row for b in layout.boxes if b.drive == d) - 0.5, color="grey", linewidth=0.6)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title if title else "backup chains: valid / invalid, keep / delete", fontsize="medium")
    used = {b.style for b in layout.boxes}
    handles = [Patch(facecolor=colour, hatch=hatch, edgecolor="white" if sum(colour[:3]) < 1.2 else "black",
                     linewidth=0, label=text) for text, colour, hatch in STYLES.values() if text in used]
    if "not listed" in used:
        handles.append(Patch(facecolor="white", edgecolor="grey", linestyle="--", label="not listed"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), borderaxespad=3.0,
              ncols=len(handles), fontsize="small", frameon=False, handleheight=1.6, handlelength=2.2)
    return fig
