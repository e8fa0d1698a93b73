"""SyncModeLab: sync mode × bitmap mode × outcome → the bitmap afterwards, as in iotest 257.

Each setting plays :func:`bitlab.syncmodes.run_sync_mode`: backup #1 with the chosen modes
succeeds, fails on a read or is cancelled, then a recovery backup #2 runs. Combinations
QEMU refuses show QEMU's error text. **Whole matrix** tabulates every combination.
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as w
import matplotlib as mpl
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..syncmodes import BITMAP_MODES, GRANULARITY, OUTCOMES, SYNCS, SyncModeResult, run_sync_mode
from ..viz import bitmap_grid
from ._common import WidgetBase, backend_picker, error_html, png, table

STAGES = ("before", "after #1", "after #2")
WHY = {  # reference §4.4: what happens to the bitmap at the end of backup #1
    ("on-success", True): "the job succeeded: the bitmap becomes its successor (only writes made during the job)",
    ("on-success", False): "the job did not succeed: the successor is merged back (nothing is lost)",
    ("always", True): "the job succeeded: the bitmap becomes its successor",
    ("always", False): "always: the successor, plus the clusters the job had not copied yet",
    ("never", True): "never: the successor is merged back, the bitmap is never cleared",
    ("never", False): "never: the successor is merged back, the bitmap is never cleared",
}


def result_rows(res: SyncModeResult) -> list[list[Any]]:
    """The numbers of one scenario, as iotest 257 prints them (bits at 64 KiB)."""
    return [["bitmap0 before backup #1 (write group G1)", f"{res.bits_before} bits"],
            ["backup #1 ended", f"{(res.end1 or '').removeprefix('BLOCK_JOB_')} len {res.len1}, offset {res.offset1}"
             + (f", error {res.error1}" if res.error1 else "")],
            ["bitmap0 after backup #1", f"{res.bits1} bits ({res.bits1 * GRANULARITY} bytes)"],
            ["after write group G3", f"{res.bits_g3} bits"],
            ["recovery backup #2 (sync bitmap) copied", f"{res.len2} bytes"],
            ["bitmap0 after backup #2", f"{res.bits2} bits ({res.bits2 * GRANULARITY} bytes)"]]


class SyncModeLab(WidgetBase):
    """Controls: ``backend``, ``sync``, ``bitmap_mode``, ``outcome`` (ToggleButtons), ``live``,
    buttons ``run`` and ``matrix_button``. Shown: ``summary`` (HTML), ``picture`` (PNG: bitmap0
    before backup #1, after it, after backup #2), ``matrix`` (HTML, every combination).
    Data: ``result`` (the last :class:`~bitlab.syncmodes.SyncModeResult`), ``results`` (the matrix).
    """

    def __init__(self, backend: str = "sim", *, sync: str = "bitmap", bitmap_mode: str = "on-success",
                 outcome: str = "success", live: bool = True) -> None:
        self.result: SyncModeResult | None = None
        self.results: dict[tuple[str, str, str], SyncModeResult] = {}
        self.backend, self.backend_note = backend_picker(backend)
        self.sync = w.ToggleButtons(options=SYNCS, value=sync, description="Sync",
                                    tooltips=["copy everything", "copy what the top layer allocated",
                                              "copy only what the guest overwrites (copy-before-write)",
                                              "bitmap + on-success", "copy the bitmap's clusters"])
        self.bitmap_mode = w.ToggleButtons(options=BITMAP_MODES, value=bitmap_mode, description="Bitmap mode",
                                           tooltips=["clear the bitmap only if the job succeeds",
                                                     "clear what was copied, whatever happens",
                                                     "never clear the bitmap"],
                                           style={"description_width": "initial"})
        self.outcome = w.ToggleButtons(options=OUTCOMES, value=outcome, description="Backup #1",
                                       tooltips=["the job completes", "a read fails (blkdebug EIO)",
                                                 "job-cancel while the job is pending"])
        self.live = w.Checkbox(value=live, description="Run on every change", indent=False)
        self.run = w.Button(description="Run", icon="play", tooltip="play iotest 257's scenario with these modes")
        self.matrix_button = w.Button(description="Whole matrix", icon="table",
                                      tooltip="every sync × bitmap mode × outcome (45 runs)")
        self.summary = w.HTML()
        self.picture = w.Image(format="png", layout=w.Layout(max_width="760px"))
        self.matrix = w.HTML()
        self.run.on_click(lambda _: self.update())
        self.matrix_button.on_click(lambda _: self.show_matrix())
        for control in (self.sync, self.bitmap_mode, self.outcome):
            control.observe(self._changed, names="value")
        self.backend.observe(self._backend_changed, names="value")
        self.widget = w.VBox([self.backend, self.backend_note, self.sync, self.bitmap_mode, self.outcome,
                              w.HBox([self.run, self.matrix_button, self.live]), self.summary, self.picture,
                              self.matrix])
        if live:
            self.update()

    def _changed(self, _change: dict) -> None:
        if self.live.value:
            self.update()

    def _backend_changed(self, change: dict) -> None:
        self.live.value = change["new"] == "sim"
        self._changed(change)

    def update(self) -> SyncModeResult | None:
        """Play the scenario for the current settings and show the bitmap afterwards."""
        try:
            res = run_sync_mode(self.sync.value, self.bitmap_mode.value, self.outcome.value,
                                backend=self.backend.value, bitmaps=True)
        except Exception as err:  # noqa: BLE001  (shown, not raised into the UI)
            self.summary.value = error_html(str(err) or repr(err))
            return None
        self.result = res
        head = (f"<b>blockdev-backup</b> sync <code>{res.sync}</code>, bitmap <code>bitmap0</code>, "
                f"bitmap-mode <code>{res.bitmap_mode}</code>; backup #1: <b>{res.outcome}</b>")
        if res.error is not None:
            self.summary.value = f"{head}<br>QEMU refuses it: {error_html(res.error)}"
            self.picture.value = png(bitmaps_figure(res))
            return res
        why = WHY[(res.bitmap_mode, res.end1 == "BLOCK_JOB_COMPLETED" and res.error1 is None)]
        self.summary.value = f"{head}<br>{html.escape(why)}" + table(["step", "result"], result_rows(res))
        self.picture.value = png(bitmaps_figure(res))
        return res

    def show_matrix(self) -> dict[tuple[str, str, str], SyncModeResult]:
        """Every combination on the chosen backend, as one table."""
        self.results = {(s, m, o): run_sync_mode(s, m, o, backend=self.backend.value)
                        for s in SYNCS for m in BITMAP_MODES for o in OUTCOMES}
        rows = []
        for (s, m, o), res in self.results.items():
            if res.error is not None:
                rows.append([s, m, o, "refused: " + res.error, "", "", ""])
            else:
                rows.append([s, m, o, f"{res.end1.removeprefix('BLOCK_JOB_')} ({res.len1}, {res.offset1})",
                             res.bits1, res.bits_g3, res.bits2])
        self.matrix.value = table(["sync", "bitmap-mode", "backup #1", "#1 ended (len, offset)",
                                   "bits after #1", "after G3", "after #2"], rows,
                                  caption="iotest 257: bitmap0's dirty bits (64 KiB each)")
        return self.results


def bitmaps_figure(res: SyncModeResult) -> Figure:
    """bitmap0 at the stages of the scenario, one cell per 64 KiB bit (rows of 64)."""
    stages = [s for s in STAGES if s in res.bitmaps]
    fig = Figure(figsize=(10.0, 2.2))
    cmap = mpl.colormaps["cividis"].resampled(2).with_extremes(bad="white")
    for i, stage in enumerate(stages):
        grid = bitmap_grid(res.bitmaps[stage].bits)
        ax = fig.add_axes((0.02 + i * 0.33, 0.08, 0.3, 0.7))
        ax.imshow(grid.values, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest", aspect="equal")
        ax.set_title(f"bitmap0 {stage}{' backup #1' if stage == 'before' else ''}:\n{grid.popcount} bits dirty",
                     fontsize="small")
        ax.set_axis_off()
    refused = f" — refused: {res.error}" if res.error else ""
    fig.suptitle(f"sync {res.sync}, bitmap-mode {res.bitmap_mode}, backup #1 {res.outcome}{refused}",
                 fontsize="medium")
    fig.legend(handles=[Patch(facecolor=cmap(0.0), edgecolor="grey", label="clean"),
                        Patch(facecolor=cmap(1.0), edgecolor="grey", label="dirty")],
               loc="lower right", fontsize="small", frameon=False, ncols=2)
    return fig
