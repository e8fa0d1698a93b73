"""Outcome panels — one scenario under several completion modes, side by side.

For each mode (``individual``, ``grouped``): the jobs' timeline on top, and per drive how its
job ended (marker + words), its bitmap's count before → after (hatched bars + numbers), and
whether its image is kept or deleted (the chain diagram's stripe style + words). Outcomes are
duck-typed like :class:`bitlab.scenarios.SeedOutcome`; nothing here runs a scenario.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import matplotlib as mpl
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from .chain import STYLES as IMAGE_STYLES
from .timeline import MARKER_STYLE, AtEvent, plot_timeline

__all__ = ["DriveRow", "Outcome", "outcome_rows", "plot_outcome"]


class DriveResult(Protocol):
    """What is read from one drive's outcome (``bitlab.scenarios.DriveOutcome``)."""

    drive: str
    image: str
    events: list[dict]
    end: str
    error: str | None
    count_before: int
    count_after: int

    @property
    def valid(self) -> bool: ...


class Outcome(Protocol):
    """What is read from one mode's outcome (``bitlab.scenarios.SeedOutcome``).

    ``keep`` (image names) is optional: without it an image is kept when its job completed. A
    ``machine`` with ``events`` (optional) gives the exact order of events within one microsecond.
    """

    mode: str
    drives: dict[str, Any]

    @property
    def keep(self) -> list[str]: ...


def _count_styles() -> dict[str, tuple[tuple[float, ...], str]]:
    cividis = mpl.colormaps["cividis"]
    return {"before": (cividis(0.25), "//"), "after": (cividis(0.85), "..")}


COUNT_STYLES = _count_styles()


@dataclass(frozen=True)
class DriveRow:
    """One drive's line of an outcome panel, as drawn."""

    drive: str
    image: str
    end: str  # "completed", "failed", "cancelled" or "running" (no end event)
    end_text: str  # e.g. "failed: Input/output error"
    count_before: int
    count_after: int
    valid: bool
    keep: bool

    @property
    def decision(self) -> str:
        """``keep``, or ``delete (job failed)`` / ``(job cancelled)`` / …"""
        return "keep" if self.keep else f"delete (job {self.end})"

    @property
    def image_text(self) -> str:
        return f"{self.image}: {self.decision}"


def _drive_row(d: DriveResult, kept: set[str] | None) -> DriveRow:
    if d.end == "BLOCK_JOB_COMPLETED":
        end = "failed" if d.error is not None else "completed"
    elif d.end == "BLOCK_JOB_CANCELLED":
        end = "cancelled"
    else:
        end = "running"
    text = f"failed: {d.error}" if end == "failed" else end
    valid = bool(d.valid)
    keep = valid if kept is None else d.image in kept
    return DriveRow(d.drive, d.image, end, text, int(d.count_before), int(d.count_after), valid, keep)


def outcome_rows(outcomes: Mapping[str, Outcome]) -> dict[str, list[DriveRow]]:
    """Per mode, one :class:`DriveRow` per drive (in the outcome's drive order)."""
    rows = {}
    for mode, out in outcomes.items():
        kept = set(out.keep) if hasattr(out, "keep") else None
        rows[mode] = [_drive_row(d, kept) for d in out.drives.values()]
    return rows


def _ordered_events(out: Outcome) -> list[dict]:
    """The drives' job events in the order the machine emitted them (by timestamp if unknown)."""
    events = [e for d in out.drives.values() for e in d.events]
    machine = getattr(out, "machine", None)
    emitted = getattr(machine, "events", None)
    if emitted is not None:
        where = {id(e): i for i, e in enumerate(emitted)}
        if all(id(e) in where for e in events):
            return sorted(events, key=lambda e: where[id(e)])
    return sorted(events, key=lambda e: (e["timestamp"]["seconds"], e["timestamp"]["microseconds"]))


def _draw_rows(ax: Any, rows: Sequence[DriveRow], scale: int) -> None:
    """Three columns in data units x ∈ [0, 4.1]: job end, bitmap count bars, image decision."""
    n = len(rows)
    for y, r in enumerate(rows):
        if r.end in MARKER_STYLE:  # the timeline's marker for the job's last event
            ax.scatter([0.08], [y], marker=MARKER_STYLE[r.end][0], s=110, c="black", edgecolors="white",
                       linewidths=1.2, zorder=4, gid=f"end:{r.drive}")
        ax.text(0.16, y, r.end_text, ha="left", va="center", fontsize="small", wrap=True, gid=f"end-text:{r.drive}")
        for k, (which, count) in enumerate((("before", r.count_before), ("after", r.count_after))):
            colour, hatch = COUNT_STYLES[which]
            width = 0.5 * count / scale if scale else 0.0
            yy = y - 0.32 + k * 0.34
            ax.add_patch(Rectangle((1.3, yy), width, 0.28, facecolor=colour, hatch=hatch,
                                   edgecolor="white" if which == "before" else "black", linewidth=0,
                                   gid=f"count-{which}:{r.drive}"))
            ax.text(1.32 + width, yy + 0.14, f"{which} {count}", ha="left", va="center", fontsize="small",
                    gid=f"count-text-{which}:{r.drive}")
        _, colour, hatch = IMAGE_STYLES[(r.valid, r.keep)]
        ax.add_patch(Rectangle((2.7, y - 0.3), 0.06, 0.6, facecolor=colour, hatch=hatch,
                               edgecolor="white" if sum(colour[:3]) < 1.2 else "black", linewidth=0,
                               gid=f"image:{r.drive}"))
        ax.text(2.8, y, f"{r.image}\n{r.decision}", ha="left", va="center", fontsize="small",
                gid=f"image-text:{r.drive}")
    for x, head in ((0.0, "job end"), (1.3, "bitmap count (bytes)"), (2.7, "image")):
        ax.text(x, -0.65, head, ha="left", va="bottom", fontsize="small", fontweight="bold")
    ax.set_xlim(0, 4.1)
    ax.set_ylim(n - 0.5, -0.85)
    ax.set_yticks(range(n), [r.drive for r in rows])
    ax.set_xticks([])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)


def plot_outcome(outcomes: Mapping[str, Outcome], *, title: str | None = None) -> Figure:
    """Draw ``{mode: outcome}`` side by side: each mode's job timeline, then per drive the job's end,
    the bitmap count before → after, and keep / delete for its image."""
    if not outcomes:
        raise ValueError("no outcomes to draw")
    rows = outcome_rows(outcomes)
    ndrives = max(len(r) for r in rows.values())
    scale = max((max(r.count_before, r.count_after) for rs in rows.values() for r in rs), default=0)
    # fixed margins in inches (a layout engine would cost more than the drawing); placed once the
    # legend's size is known
    fig = Figure()
    handles: dict[str, Any] = {}
    columns = []
    for mode, out in outcomes.items():
        top, bottom = fig.add_axes((0, 0, 1, 1)), fig.add_axes((0, 0, 1, 1))
        events = _ordered_events(out)
        if events:
            plot_timeline(events, ax=top, title="jobs: states and events", legend=False,
                          marks=[(AtEvent(0), "transaction")])
            for h, label in zip(*top.get_legend_handles_labels(), strict=True):
                handles.setdefault(label, h)
        else:
            top.set_axis_off()
        _draw_rows(bottom, rows[mode], scale)
        bottom.set_title("per drive: job end, bitmap count, image", fontsize="medium")
        columns.append((mode, top, bottom))
    cividis_patches = [Patch(facecolor=c, hatch=h, edgecolor="white" if which == "before" else "black",
                             linewidth=0, label=f"count {which}") for which, (c, h) in COUNT_STYLES.items()]
    used = {(r.valid, r.keep) for rs in rows.values() for r in rs}
    image_patches = [Patch(facecolor=c, hatch=h, edgecolor="white" if sum(c[:3]) < 1.2 else "black", linewidth=0,
                           label=f"image {text}") for key, (text, c, h) in IMAGE_STYLES.items() if key in used]
    entries = [*handles.values(), *cividis_patches, *image_patches]

    col_w, head, tl_h, gap, rows_h = 6.4, 0.95, 0.45 + 0.7 * ndrives, 0.95, 0.35 + 0.75 * ndrives
    legend_h = 0.25 * -(-len(entries) // 6) + 0.25
    width, height = col_w * len(columns), head + tl_h + gap + rows_h + legend_h
    fig.set_size_inches(width, height)
    for c, (mode, top, bottom) in enumerate(columns):
        x0 = c * col_w
        top.set_position(((x0 + 0.95) / width, (height - head - tl_h) / height, (col_w - 1.2) / width,
                          tl_h / height))
        bottom.set_position(((x0 + 0.75) / width, legend_h / height, (col_w - 0.85) / width, rows_h / height))
        fig.text((x0 + col_w / 2) / width, 1 - 0.42 / height, f"completion-mode: {mode}", ha="center", va="top",
                 fontweight="bold", fontsize="large", gid=f"mode:{mode}")
    fig.legend(entries, [*handles, *(p.get_label() for p in cividis_patches), *(p.get_label() for p in image_patches)],
               loc="lower center", bbox_to_anchor=(0.5, 0.0), ncols=6, fontsize="small", frameon=False,
               handleheight=1.5)
    fig.suptitle(title if title else "the same scenario under each completion mode")
    return fig
