"""TransactionLab: the seed's incremental transaction with the knobs a trainee wants to turn.

Number of drives, which drive's backup fails and at which of its reads (a blkdebug
``inject-error`` rule, :func:`bitlab.scenarios.fail_on_read`), completion mode, sync mode;
**Run** plays :func:`bitlab.scenarios.run_seed` and shows what each job reported, each
bitmap before and after, and which images to keep or delete. **Compare both modes** plays
the same scenario in ``individual`` and ``grouped`` mode and shows them side by side.
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as w
import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..scenarios import DRIVES, SYNC_MODES, SeedOutcome, fail_on_read, run_seed
from ..units import format_size
from ..viz import AtEvent, bitmap_grid, plot_chain, plot_outcome, plot_timeline
from ._common import WidgetBase, backend_picker, error_html, png, pre, table

MODES = ("individual", "grouped")
MAX_READS = 8


VIEWS = ("timeline", "bitmaps", "chain")


def drive_rows(out: SeedOutcome) -> list[list[Any]]:
    """One row per drive: what its job reported, its bitmap, its image and the verdict
    (:mod:`bitlab.chain`'s when the outcome has it, else: keep an image whose job completed)."""
    verdict = {v.image: v for v in out.images}
    rows = []
    for d in out.drives.values():
        offset, length = d.progress or (0, 0)
        v = verdict.get(d.image)
        keep = v.keep if v is not None else d.valid
        rows.append([d.drive, d.end.removeprefix("BLOCK_JOB_") or "—", d.error or "", f"{offset}/{length}",
                     f"{d.count_before} → {d.count_after}", d.image, "keep" if keep else "delete"])
    return rows


HEADER = ["drive", "job ended", "error", "offset/len", "bitmap count before → after", "image", "verdict"]


def advice_rows(out: SeedOutcome) -> list[list[Any]]:
    """Per drive, :func:`bitlab.chain.advise`'s keep / delete and the next incremental's base."""
    return [[a.drive, ", ".join(a.keep) or "—", ", ".join(a.delete) or "—",
             f"{a.next_sync} on {a.next_base}" if a.next_base else a.next_sync, a.reason]
            for a in out.advice.values()]


ADVICE_HEADER = ["drive", "keep", "delete", "next backup", "why"]


class TransactionLab(WidgetBase):
    """Controls: ``backend``, ``drives`` (2–4), ``failing`` (a drive or None), ``fail_after``
    (reads of that drive's backup that succeed before one fails), ``mode`` (completion mode),
    ``sync`` (incremental / bitmap / full), ``bitmap_mode`` (for bitmap and full), ``live``
    (re-run on every change), buttons ``run`` and ``compare``.

    Shown: ``summary`` (HTML: per drive what its job did and its image's verdict; then
    :mod:`bitlab.chain`'s advice: keep, delete, the next incremental's base), ``picture`` (PNG of
    the ``view`` chosen: the jobs' ``timeline``, the ``bitmaps`` before and after, or the backup
    ``chain``; only the chosen one is drawn), ``events`` (the transaction and its events),
    ``comparison`` and ``comparison_picture`` (both modes side by side).
    Data: ``result`` (the last :class:`~bitlab.scenarios.SeedOutcome`), ``results`` (mode →
    outcome, after a comparison), ``blkdebug`` (the rules of the failing drive).
    """

    def __init__(self, backend: str = "sim", *, drives: int = 2, failing: str | None = "drive1",
                 mode: str = "individual", sync: str = "incremental", live: bool = True) -> None:
        self.result: SeedOutcome | None = None
        self.results: dict[str, SeedOutcome] = {}
        self.backend, self.backend_note = backend_picker(backend)
        self.drives = w.BoundedIntText(value=drives, min=2, max=len(DRIVES), description="Drives",
                                       tooltip="drives in the transaction (2 to 4)")
        self.failing = w.Dropdown(options=self._failing_options(drives), value=failing, description="Failing drive",
                                  tooltip="the drive whose backup hits an injected read error (EIO)",
                                  style={"description_width": "initial"})
        self.fail_after = w.BoundedIntText(value=0, min=0, max=MAX_READS, description="Reads before",
                                           tooltip="reads of the failing drive's backup that succeed "
                                                   "before one fails (0 = the first read fails)")
        self.mode = w.ToggleButtons(options=MODES, value=mode, description="Completion",
                                    tooltips=["each job completes or fails on its own",
                                              "if one job fails, the others are cancelled"])
        self.sync = w.ToggleButtons(options=SYNC_MODES, value=sync, description="Sync",
                                    tooltips=["copy the bitmap's clusters; the bitmap is synced on success",
                                              "copy the bitmap's clusters; bitmap-mode decides its fate",
                                              "copy everything into a new full image; the bitmap is synced"])
        self.bitmap_mode = w.Dropdown(options=("on-success", "always"), value="on-success", description="Bitmap mode",
                                      tooltip="bitmap-mode for sync bitmap and full",
                                      disabled=sync == "incremental", style={"description_width": "initial"})
        self.live = w.Checkbox(value=live, description="Run on every change", indent=False)
        self.run = w.Button(description="Run", icon="play", tooltip="play the scenario with these settings")
        self.compare = w.Button(description="Compare both modes", icon="columns",
                                tooltip="play it in individual and in grouped mode, side by side")
        self.view = w.ToggleButtons(options=VIEWS, value="timeline", description="Picture",
                                    tooltips=["each job's states and events, the transaction marked",
                                              "each bitmap before and after the transaction",
                                              "the backup images, their backing files, keep or delete"])
        self.summary = w.HTML()
        self.status = w.HTML()
        self.events = w.HTML(layout=w.Layout(max_height="300px", overflow="auto"))
        self.picture = w.Image(format="png", layout=w.Layout(max_width="800px"))
        self.drawn: str | None = None  # the view the picture shows
        self.figure: Figure | None = None  # ... and its Figure
        self.comparison = w.HTML()
        self.comparison_picture = w.Image(format="png", layout=w.Layout(max_width="1000px"))
        self.run.on_click(lambda _: self.update())
        self.compare.on_click(lambda _: self.compare_modes())
        self.drives.observe(self._drives_changed, names="value")
        self.sync.observe(self._sync_changed, names="value")
        for control in (self.failing, self.fail_after, self.mode, self.bitmap_mode):
            control.observe(self._changed, names="value")
        self.backend.observe(self._backend_changed, names="value")
        self.view.observe(lambda _: self.draw(), names="value")
        self.widget = w.VBox([
            self.backend, self.backend_note, w.HBox([self.drives, self.failing, self.fail_after]),
            self.mode, w.HBox([self.sync, self.bitmap_mode]), w.HBox([self.run, self.compare, self.live]),
            self.status, self.summary, self.view, self.picture, self.events, self.comparison,
            self.comparison_picture])
        if live:
            self.update()

    # -- controls -----------------------------------------------------------------------------
    @staticmethod
    def _failing_options(n: int) -> list[tuple[str, str | None]]:
        return [("none", None), *[(d, d) for d in DRIVES[:n]]]

    def _drives_changed(self, change: dict) -> None:
        keep = self.failing.value if self.failing.value in DRIVES[:change["new"]] else None
        self.failing.unobserve(self._changed, names="value")
        self.failing.options = self._failing_options(change["new"])
        self.failing.value = keep
        self.failing.observe(self._changed, names="value")
        self._changed(change)

    def _sync_changed(self, change: dict) -> None:
        self.bitmap_mode.disabled = change["new"] == "incremental"
        self._changed(change)

    def _backend_changed(self, change: dict) -> None:
        self.live.value = change["new"] == "sim"  # a real QEMU run takes about a second
        self._changed(change)

    def _changed(self, _change: dict) -> None:
        if self.live.value:
            self.update()

    @property
    def blkdebug(self) -> dict | None:
        """The blkdebug rules put under the failing drive (None when no drive fails)."""
        return None if self.failing.value is None else fail_on_read(self.fail_after.value)

    def _play(self, mode: str) -> SeedOutcome:
        return run_seed(mode, self.failing.value, DRIVES[:self.drives.value], backend=self.backend.value,
                        sync=self.sync.value, bitmap_mode=self.bitmap_mode.value, fail_after=self.fail_after.value,
                        bitmaps=True, chain=True)

    # -- runs ---------------------------------------------------------------------------------
    def update(self) -> SeedOutcome | None:
        """Play the scenario with the current settings and redraw everything."""
        try:
            out = self._play(self.mode.value)
        except Exception as err:  # noqa: BLE001  (a failed run is shown, not raised into the UI)
            self.status.value = error_html(str(err) or repr(err))
            return None
        self.result, self.status.value = out, ""
        failing = "no drive fails" if out.failing is None else (
            f"{out.failing}'s backup fails on read #{out.fail_after + 1} (blkdebug inject-error, EIO)")
        self.summary.value = table(HEADER, drive_rows(out),
                                   caption=f"{out.mode} completion, sync {out.sync}: {failing}")
        keep = [i.image for i in out.images if i.keep]
        delete = [i.image for i in out.images if not i.keep]
        self.summary.value += (f"<p><b>Keep:</b> {html.escape(', '.join(keep) or 'nothing')}<br>"
                               f"<b>Delete:</b> {html.escape(', '.join(delete) or 'nothing')}</p>")
        self.summary.value += table(ADVICE_HEADER, advice_rows(out), caption="bitlab.chain.advise")
        rows = [_event_row(i, ev) for i, ev in enumerate(out.events)]
        fault = "" if out.failing is None else (
            f"<b>{html.escape(out.failing)}'s file node</b> (blkdebug between qcow2 and its file)"
            + pre({"driver": "blkdebug", "image": {"driver": "file", "filename": f"{out.failing}.qcow2"},
                   **fail_on_read(out.fail_after)}))
        self.events.value = (fault + "<b>The transaction and its events</b>"
                             + pre({"execute": "transaction", "arguments": out.transaction})
                             + table(["#", "event", "job", "status / len, offset, error"], rows))
        self.draw()
        return out

    def draw(self) -> None:
        """Draw the chosen view of the last result (only that one: each takes a while)."""
        out = self.result
        if out is None:
            return
        if self.view.value == "timeline":
            fig = plot_timeline(out.events, marks=[(AtEvent(0), "transaction")],
                                title=f"{out.mode} completion, sync {out.sync}: the jobs' states and events")
        elif self.view.value == "bitmaps":
            fig = bitmaps_figure(out)
        else:
            fig = plot_chain(out.images, title=f"backup chains after the {out.mode} transaction")
        self.picture.value, self.drawn, self.figure = png(fig), self.view.value, fig

    def compare_modes(self) -> dict[str, SeedOutcome]:
        """Play the scenario in both completion modes; show them side by side."""
        try:
            self.results = {mode: self._play(mode) for mode in MODES}
        except Exception as err:  # noqa: BLE001
            self.status.value = error_html(str(err) or repr(err))
            return {}
        cells = "".join(f"<td style='vertical-align:top;padding-right:24px'>"
                        f"{table(HEADER, drive_rows(out), caption=f'{mode} completion')}</td>"
                        for mode, out in self.results.items())
        self.comparison.value = f"<table><tr>{cells}</tr></table>"
        self.comparison_picture.value = png(plot_outcome(self.results))
        return self.results


def _event_row(i: int, ev: dict) -> list[Any]:
    data = ev.get("data", {})
    job = data.get("id", data.get("device", ""))
    if ev["event"] == "JOB_STATUS_CHANGE":
        what = data["status"]
    elif "len" in data:
        what = f"len {data['len']}, offset {data['offset']}" + (f", error {data['error']}" if "error" in data else "")
    else:
        what = ", ".join(f"{k} {v}" for k, v in data.items() if k not in ("id", "device", "type"))
    return [i, ev["event"], job, what]


def bitmaps_figure(out: SeedOutcome) -> Figure:
    """Each drive's bitmap before (left) and after (right) the transaction, one cell per bit
    (rows of 64), in one picture; counts and job endings are written next to them."""
    grids = [(d, bitmap_grid(d.bitmap_before.bits), bitmap_grid(d.bitmap_after.bits))
             for d in out.drives.values() if d.bitmap_before is not None and d.bitmap_after is not None]
    if not grids:
        raise ValueError("run_seed(..., bitmaps=True) keeps the bitmaps this picture needs")
    rows, cols = grids[0][1].values.shape
    gap = 2
    canvas = np.ma.array(np.zeros((len(grids) * (rows + gap + 1), 2 * cols + gap)), mask=True)
    height = 10.0 * 0.78 * canvas.shape[0] / canvas.shape[1] + 0.9  # aspect-equal cells, room for the texts
    fig = Figure(figsize=(10.0, height))
    ax = fig.add_axes((0.2, 0.45 / height, 0.78, 1 - 0.9 / height))
    for i, (d, before, after) in enumerate(grids):
        top = i * (rows + gap + 1) + 1
        canvas[top:top + rows, :cols] = before.values
        canvas[top:top + rows, cols + gap:] = after.values
        ended = d.end.removeprefix("BLOCK_JOB_").lower() + (" with error" if d.error else "")
        ax.text(-2, top + rows / 2, f"{d.drive}: {before.popcount} → {after.popcount} bits\n{ended}\n"
                f"{'keep' if d.valid else 'delete'} {d.image}", ha="right", va="center", fontsize="small")
    cmap = mpl.colormaps["cividis"].resampled(2).with_extremes(bad="white")
    ax.imshow(canvas, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest", aspect="equal")
    ax.set_xticks([cols / 2, cols + gap + cols / 2], ["before the transaction", "after it"])
    ax.set_yticks([])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    g = grids[0][0].bitmap_before.granularity
    ax.set_title(f"Bitmaps, one cell per {format_size(g)} cluster, rows of {cols} "
                 f"({out.mode} completion, sync {out.sync})", fontsize="medium")
    ax.legend(handles=[Patch(facecolor=cmap(0.0), edgecolor="grey", label="clean"),
                       Patch(facecolor=cmap(1.0), edgecolor="grey", label="dirty")],
              loc="upper left", bbox_to_anchor=(-0.26, 1.0), fontsize="small", frameon=False)
    return fig
