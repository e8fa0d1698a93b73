#!/usr/bin/env python3
"""Widget update times (``make bench``): what a trainee waits for after turning a knob.

  TransactionLab update: the scenario model (``run_seed`` with the bitmaps and bitlab.chain's
  verdicts) plus the redraw (tables, events, the picture shown — the jobs' timeline — as PNG),
  on the simulator                                                      goal < 200 ms median
  and its parts: the model alone, each picture alone;
  SyncModeLab and BitmapExplorer updates, for scale.

Medians of several repeats of ``time.perf_counter``. Nothing here asserts; a missed goal
is printed as MISSED. Standalone: ``python benchmarks/widgets.py``.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

from bitlab.scenarios import DRIVES, run_seed
from bitlab.viz import AtEvent, plot_chain, plot_timeline
from bitlab.widgets import BitmapExplorer, SyncModeLab, TransactionLab
from bitlab.widgets._common import png
from bitlab.widgets.transaction_lab import bitmaps_figure

REPEATS = 9


def median_ms(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    fn()  # warm up (imports, font cache)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    lab = TransactionLab(live=False)
    rows: list[tuple[str, float, float | None]] = []
    for n in (2, 4):
        lab.drives.value = n
        lab.failing.value = DRIVES[n - 1]
        rows.append((f"TransactionLab update, {n} drives (model + redraw)", median_ms(lab.update), 200.0))
    out = run_seed("grouped", "drive1", bitmaps=True, chain=True)
    rows.append(("  the model alone (run_seed, 2 drives, bitmaps, chain)",
                 median_ms(lambda: run_seed("grouped", "drive1", bitmaps=True, chain=True)), None))
    rows.append(("  the timeline picture alone (figure + PNG)",
                 median_ms(lambda: png(plot_timeline(out.events, marks=[(AtEvent(0), "transaction")]))), None))
    rows.append(("  the bitmaps picture alone", median_ms(lambda: png(bitmaps_figure(out))), None))
    rows.append(("  the chain picture alone", median_ms(lambda: png(plot_chain(out.images))), None))
    lab.drives.value = 2
    rows.append(("TransactionLab compare both modes (+ outcome panel)", median_ms(lab.compare_modes, 5), None))
    sm = SyncModeLab(live=False)
    rows.append(("SyncModeLab update (iotest 257 scenario + picture)", median_ms(sm.update), None))
    ex = BitmapExplorer()
    rows.append(("BitmapExplorer write click (QMP + redraw)", median_ms(ex.write_button.click), None))
    width = max(len(r[0]) for r in rows)
    print(f"bitlab widget benchmarks — median of {REPEATS} runs, simulated backend")
    print(f"{'what':<{width}}  {'ms':>8}  {'goal':>8}  verdict")
    for name, ms, goal in rows:
        verdict = "" if goal is None else ("met" if ms < goal else "MISSED")
        goal_text = "" if goal is None else f"< {goal:.0f}"
        print(f"{name:<{width}}  {ms:8.1f}  {goal_text:>8}  {verdict}")


if __name__ == "__main__":
    sys.exit(main())
