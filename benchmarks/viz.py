#!/usr/bin/env python3
"""bitlab.viz speed (``make bench``): building and rendering the pictures, a table like run.py's.

Each figure is built *and* rendered: the Figure is attached to an Agg canvas and
``fig.canvas.draw()`` runs (a bare ``Figure``'s canvas does not render). The 16 Mi-bit
bitmap is a 1 TiB disk at 64 KiB granularity: 1 % random dirty clusters and a dirty first
64 GiB (seeded). Times are medians of 5. Nothing here asserts; a missed goal prints MISSED.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
from bitarray import bitarray
from matplotlib.backends.backend_agg import FigureCanvasAgg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROWS, add, median_seconds, print_table, section  # noqa: E402

from bitlab.scenarios import run_seed  # noqa: E402
from bitlab.viz import (  # noqa: E402
    AtEvent,
    bitmap_grid,
    compare_grid,
    plot_bitmap,
    plot_bitmap_compare,
    plot_outcome,
    plot_timeline,
)

TiB = 1 << 40
GRANULARITY = 64 << 10
NBITS = TiB // GRANULARITY  # 16 Mi
SEED = 20240601
REPEATS = 5


def bits_16mi(seed: int = SEED) -> tuple[bitarray, bitarray]:
    """A 16 Mi-bit bitmap and a 'successor-like' second one that differs in a few places."""
    rng = np.random.default_rng(seed)
    a = rng.random(NBITS) < 0.01
    a[: 1 << 20] = True
    b = a.copy()
    b[5 << 20: 6 << 20] = False
    b |= rng.random(NBITS) < 0.002
    out = []
    for flags in (a, b):
        bits = bitarray(endian="little")
        bits.frombytes(np.packbits(flags, bitorder="little").tobytes())
        out.append(bits)
    return out[0], out[1]


def median_cpu_seconds(fn, repeats: int = REPEATS) -> float:
    """Median process CPU time of ``fn``: what it costs when the machine is not shared."""
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def rendered(build) -> None:
    fig = build()
    FigureCanvasAgg(fig)
    fig.canvas.draw()


def main() -> int:
    t0 = time.perf_counter()
    print(f"bitlab.viz benchmarks — median of {REPEATS} repeats, Agg rendering included\n")
    a, b = bits_16mi()
    section("(g) pictures")
    draw_bitmap = lambda: rendered(lambda: plot_bitmap(a, GRANULARITY, TiB))  # noqa: E731
    t = median_seconds(draw_bitmap, repeats=REPEATS)
    add("16 Mi-bit bitmap: plot_bitmap + canvas.draw()", t * 1e3, "ms", "< 150 ms", met=t < 0.150)
    t = median_cpu_seconds(draw_bitmap)
    add("  the same, process CPU time (wall time above includes waiting for a shared CPU)", t * 1e3, "ms",
        "< 150 ms", met=t < 0.150)
    t_grid = median_seconds(lambda: bitmap_grid(a), repeats=REPEATS)
    add("  of which the reduction to 128 x 128 pixels (bitmap_grid)", t_grid * 1e3, "ms")
    draw_compare = lambda: rendered(lambda: plot_bitmap_compare(a, b, ("bitmap0", "successor"),  # noqa: E731
                                                                granularity=GRANULARITY, size=TiB))
    t = median_seconds(draw_compare, repeats=REPEATS)
    add("16 Mi-bit compare overlay: plot_bitmap_compare + canvas.draw()", t * 1e3, "ms")
    add("  the same, process CPU time", median_cpu_seconds(draw_compare) * 1e3, "ms")
    t_cmp = median_seconds(lambda: compare_grid(a, b), repeats=REPEATS)
    add("  of which the classification (compare_grid)", t_cmp * 1e3, "ms")

    outcomes = {mode: run_seed(mode) for mode in ("individual", "grouped")}
    events = outcomes["grouped"].machine.events
    created = [i for i, e in enumerate(events) if e["event"] == "JOB_STATUS_CHANGE"
               and e["data"]["status"] == "created"]
    t = median_seconds(lambda: rendered(lambda: plot_timeline(events, marks=[(AtEvent(created[2]), "transaction")])),
                       repeats=REPEATS)
    add("seed timeline, 4 jobs (plot_timeline + canvas.draw())", t * 1e3, "ms")
    t = median_seconds(lambda: rendered(lambda: plot_outcome(outcomes)), repeats=REPEATS)
    add("seed outcome panel, both modes (plot_outcome + canvas.draw())", t * 1e3, "ms")
    print_table(ROWS)
    print(f"\ntotal viz benchmark time {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
