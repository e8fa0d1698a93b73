#!/usr/bin/env python3
"""bitlab benchmarks (``make bench``): print a table of figures, goals and ratios.

Benchmarks are not tests: nothing here asserts; a missed goal is printed as MISSED.

Sections
  (a) 1,000,000 random 4 KiB writes into a 1 TiB null-co node with a 64 KiB bitmap
      (16 Mi bits), through ``Machine.write_batch``                       goal < 1 s
  (b) count, merge and sha256 of that bitmap, each against the raw bitarray / hashlib
      operation on the same bits                                          goal <= 3x
      and a merge across granularities (64 KiB into 128 KiB)
  (c) peak memory of the whole 1 TiB exercise (tracemalloc peak, getrusage maxrss),
      measured first, before the other sections grow the process
  (d) with /usr/bin/qemu-storage-daemon: the same QMP queries on real QEMU 7.2 and on
      bitlab, as round-trip times and ratios (skipped with a reason when absent)

Times are medians of several repeats of ``time.perf_counter`` measurements.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bitlab import Machine
from bitlab.bitmap import DirtyBitmap

TiB = 1 << 40
GRANULARITY = 64 << 10
NWRITES = 1_000_000
WRITE_SIZE = 4096
SEED = 20240601
REPEATS = 5
QSD = "/usr/bin/qemu-storage-daemon"


# -- measuring ---------------------------------------------------------------------------------
def timings(fn: Callable[[], object], *, repeats: int = REPEATS, number: int = 1,
            setup: Callable[[], object] | None = None) -> list[float]:
    """Per-call times: for each of ``repeats``, the mean of ``number`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return times


def median_seconds(fn: Callable[[], object], **kw) -> float:
    """Median over several repeats of the mean time of ``number`` calls of ``fn``."""
    return statistics.median(timings(fn, **kw))


@dataclass
class Row:
    name: str
    figure: float | str
    unit: str
    goal: str = ""
    ratio: float | None = None
    verdict: str = ""


ROWS: list[Row] = []


def add(name: str, figure: float | str, unit: str, goal: str = "", ratio: float | None = None,
        met: bool | None = None) -> None:
    verdict = "" if met is None else ("met" if met else "MISSED")
    ROWS.append(Row(name, figure, unit, goal, ratio, verdict))


def section(title: str) -> None:
    ROWS.append(Row(title, "", "", "", None, "section"))


def fmt_figure(x: float | str) -> str:
    if isinstance(x, str):
        return x
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def print_table(rows: list[Row]) -> None:
    head = ("name", "figure", "unit", "goal", "ratio", "verdict")
    cells = [(r.name, fmt_figure(r.figure), r.unit, r.goal, "" if r.ratio is None else f"{r.ratio:.2f}x", r.verdict)
             for r in rows if r.verdict != "section"]
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head))]
    right = {1, 4}  # numbers right-aligned

    def line(cols: tuple) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cols, widths, strict=True))).rstrip()

    print(line(head))
    print("-" * sum(widths) + "-" * 2 * (len(widths) - 1))
    it = iter(cells)
    for i, r in enumerate(rows):
        if r.verdict == "section":
            if i:
                print()
            print(r.name)
        else:
            print(line(next(it)))


# -- the 1 TiB exercise --------------------------------------------------------------------------
def random_writes(seed: int = SEED) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, TiB // WRITE_SIZE, size=NWRITES, dtype=np.int64) * WRITE_SIZE


def big_machine() -> Machine:
    vm = Machine()
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "big", "size": TiB})
    vm.qmp("block-dirty-bitmap-add", {"node": "big", "name": "bitmap0", "granularity": GRANULARITY})
    return vm


def exercise() -> tuple[Machine, DirtyBitmap]:
    """The whole 1 TiB exercise: writes, count, merges, sha256."""
    vm = big_machine()
    vm.write_batch("big", random_writes(), WRITE_SIZE)
    bm = vm.graph.nodes["big"].bitmaps[0]
    _ = bm.count
    other = DirtyBitmap(bm.size, bm.granularity)
    other.merge_from(bm)
    coarse = DirtyBitmap(bm.size, 2 * bm.granularity)
    coarse.merge_from(bm)
    bm.sha256()
    vm.qmp("x-debug-block-dirty-bitmap-sha256", {"node": "big", "name": "bitmap0"})
    vm.qmp("query-named-block-nodes", {"flat": True})
    return vm, bm


def measure_memory() -> dict:
    """Peak memory of :func:`exercise` in this process (call it before anything else is big)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    tracemalloc.start()
    vm, bm = exercise()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    kept = len(bm.bits) // 8
    del vm, bm
    return {"tracemalloc_peak": peak, "maxrss_before": before, "maxrss_after": after, "bitmap_bytes": kept}


# -- sections ------------------------------------------------------------------------------------
def bench_writes() -> tuple[Machine, DirtyBitmap]:
    section(f"(a) {NWRITES:,} random {WRITE_SIZE // 1024} KiB writes, 1 TiB null-co, 64 KiB bitmap (16 Mi bits)")
    offsets = random_writes()
    state: dict = {}

    def setup() -> None:
        state["vm"] = big_machine()

    def run() -> None:
        state["vm"].write_batch("big", offsets, WRITE_SIZE)

    times = timings(run, setup=setup)
    t = statistics.median(times)
    add("write_batch, 1M writes", t, "s", "< 1 s", met=t < 1.0)
    add("  first (cold) run", times[0], "s", "< 1 s", met=times[0] < 1.0)
    add("  per write", t / NWRITES * 1e9, "ns")
    vm = state["vm"]
    bm = vm.graph.nodes["big"].bitmaps[0]
    add("  dirty bits after", bm.bits.count(), "bits")

    def run_wide() -> None:
        state["vm"].write_batch("big", offsets, 128 << 10)

    t2 = median_seconds(run_wide, setup=setup)
    add("same offsets, 128 KiB writes (2-3 bits each)", t2, "s", "< 1 s", met=t2 < 1.0)

    small = Machine()
    small.qmp("blockdev-add", {"driver": "null-co", "node-name": "d", "size": 64 << 20})
    small.qmp("block-dirty-bitmap-add", {"node": "d", "name": "b", "granularity": GRANULARITY})
    t1 = median_seconds(lambda: small.write("d", 0, 4096), number=200)
    add("one write via QMP (HMP qemu-io), for scale", t1 * 1e6, "us")
    return vm, bm


def bench_bitmap_ops(bm: DirtyBitmap) -> None:
    section("(b) bitmap operations on the 16 Mi-bit bitmap vs raw bitarray / hashlib on the same bits")
    n = 20
    bits = bm.bits

    t_count = median_seconds(lambda: bm.count, number=n)
    t_raw_count = median_seconds(lambda: bits.count(), number=n)
    r = t_count / t_raw_count
    add("count (DirtyBitmap.count)", t_count * 1e3, "ms", "<= 3x", r, met=r <= 3)
    add("  raw bitarray.count()", t_raw_count * 1e3, "ms")

    dst = DirtyBitmap(bm.size, bm.granularity)
    raw_dst = dst.bits.copy()
    t_merge = median_seconds(lambda: dst.merge_from(bm), number=n)

    def raw_or() -> None:
        nonlocal raw_dst
        raw_dst |= bits

    t_raw_merge = median_seconds(raw_or, number=n)
    r = t_merge / t_raw_merge
    add("merge, same granularity (merge_from)", t_merge * 1e3, "ms", "<= 3x", r, met=r <= 3)
    add("  raw a |= b", t_raw_merge * 1e3, "ms")

    t_sha = median_seconds(bm.sha256, number=n)
    t_raw_sha = median_seconds(lambda: hashlib.sha256(bits.tobytes()).hexdigest(), number=n)
    r = t_sha / t_raw_sha
    add("sha256 (QEMU's x-debug hash)", t_sha * 1e3, "ms", "<= 3x", r, met=r <= 3)
    add("  raw hashlib.sha256(bits.tobytes())", t_raw_sha * 1e3, "ms")

    coarse = DirtyBitmap(bm.size, 2 * bm.granularity)
    t_cross = median_seconds(lambda: coarse.merge_from(bm), number=5)
    add("merge 64 KiB into 128 KiB (re-grid)", t_cross * 1e3, "ms", "", t_cross / t_raw_merge)
    add("  (ratio to the raw 16 Mi-bit a |= b)", "", "")
    fine = DirtyBitmap(bm.size, bm.granularity // 2)
    t_fine = median_seconds(lambda: fine.merge_from(bm), number=5)
    add("merge 64 KiB into 32 KiB (re-grid)", t_fine * 1e3, "ms", "", t_fine / t_raw_merge)


def bench_memory(mem: dict) -> None:
    section("(c) memory of the whole 1 TiB exercise (writes, count, merges, sha256, QMP queries)")
    MiB = 1 << 20
    add("tracemalloc peak", mem["tracemalloc_peak"] / MiB, "MiB")
    add("maxrss (getrusage) after the exercise", mem["maxrss_after"] / MiB, "MiB")
    add("  maxrss before it (interpreter + imports)", mem["maxrss_before"] / MiB, "MiB")
    add("  maxrss increase for the exercise", (mem["maxrss_after"] - mem["maxrss_before"]) / MiB, "MiB")
    add("  the 16 Mi-bit bitmap itself", mem["bitmap_bytes"] / MiB, "MiB")


async def _qsd_times(sock: str, commands: list[tuple[str, dict]], number: int) -> dict:
    from qemu.qmp import QMPClient

    qmp = QMPClient("bitlab-bench")
    for _ in range(200):  # the socket appears a few ms after spawn
        try:
            await qmp.connect(sock)
            break
        except Exception:  # keep polling until the daemon listens
            await asyncio.sleep(0.01)
    else:
        raise RuntimeError("could not connect to qemu-storage-daemon")
    try:
        await qmp.execute("blockdev-add", {"driver": "null-co", "node-name": "big", "size": TiB})
        await qmp.execute("block-dirty-bitmap-add", {"node": "big", "name": "bitmap0", "granularity": GRANULARITY})
        version = await qmp.execute("query-version")
        out: dict = {"version": "{major}.{minor}.{micro}".format(**version["qemu"]) + f" {version['package']}".rstrip()}
        for name, args in commands:
            reply = await qmp.execute(name, args)
            times = []
            for _ in range(REPEATS):
                t0 = time.perf_counter()
                for _ in range(number):
                    await qmp.execute(name, args)
                times.append((time.perf_counter() - t0) / number)
            out[name] = (statistics.median(times), reply)
        with contextlib.suppress(Exception):
            await qmp.execute("quit")
    finally:
        await qmp.disconnect()
    return out


def bench_real_qemu(dirty_vm: Machine) -> None:
    section("(d) real QEMU: the same queries over QMP on qemu-storage-daemon vs bitlab's vm.qmp")
    if not os.path.exists(QSD):
        add(f"skipped: {QSD} not found", "", "")
        add("  (apt-get install --no-install-recommends qemu-system-common)", "", "")
        return
    try:
        import qemu.qmp  # noqa: F401
    except ImportError:
        add("skipped: Python package qemu.qmp not installed (pip install qemu.qmp)", "", "")
        return
    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)

    sha_cmd = ("x-debug-block-dirty-bitmap-sha256", {"node": "big", "name": "bitmap0"})
    query_cmd = ("query-named-block-nodes", {"flat": True})
    number = 20
    with tempfile.TemporaryDirectory(prefix="bitlab-bench-") as tmp:
        sock = os.path.join(tmp, "qmp.sock")
        log_path = os.path.join(tmp, "qsd.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([QSD, "--chardev", f"socket,id=qmp0,path={sock},server=on,wait=off",
                                     "--monitor", "chardev=qmp0"],
                                    stdout=subprocess.DEVNULL, stderr=log)
        try:
            real = asyncio.run(_qsd_times(sock, [sha_cmd, query_cmd], number))
        except Exception as exc:  # report, do not crash the whole bench
            with open(log_path, errors="replace") as f:
                detail = f.read().strip().replace("\n", " ")[:200]
            add(f"skipped: qemu-storage-daemon failed: {exc!r} {detail}".rstrip(), "", "")
            return
        finally:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait(timeout=5)

    # bitlab in the same state: a fresh 1 TiB null-co node with an empty 64 KiB bitmap
    vm = big_machine()
    add(f"qemu-storage-daemon {real['version']}", "", "")
    for name, args in (sha_cmd, query_cmd):
        t_real, reply_real = real[name]
        t_sim = median_seconds(lambda n=name, a=args: vm.qmp(n, a), number=number)
        t_dirty = median_seconds(lambda n=name, a=args: dirty_vm.qmp(n, a), number=number)
        short = "sha256" if name.startswith("x-debug") else "query-named-block-nodes"
        add(f"{short}: qemu-storage-daemon round trip", t_real * 1e3, "ms")
        add(f"{short}: bitlab vm.qmp (same empty bitmap)", t_sim * 1e3, "ms", "", t_sim / t_real)
        add(f"{short}: bitlab vm.qmp (1M-write bitmap)", t_dirty * 1e3, "ms", "", t_dirty / t_real)
        if short == "sha256":
            same = vm.qmp(name, args) == reply_real
            add("  sha256 of the empty 1 TiB bitmap equals QEMU's", "yes" if same else "NO", "")
        else:
            real_bm = next(n for n in reply_real if n["node-name"] == "big")["dirty-bitmaps"]
            sim_bm = next(n for n in vm.qmp(name, args) if n["node-name"] == "big")["dirty-bitmaps"]
            add("  dirty-bitmaps entry equals QEMU's", "yes" if real_bm == sim_bm else "NO", "")
    add("  (ratio = bitlab / real QEMU)", "", "")


def main() -> int:
    t0 = time.perf_counter()
    print(f"bitlab benchmarks — Python {sys.version.split()[0]}, numpy {np.__version__}, "
          f"median of {REPEATS} repeats\n")
    mem = measure_memory()  # first, so getrusage's high-water mark is the exercise's own
    vm, bm = bench_writes()
    bench_bitmap_ops(bm)
    bench_memory(mem)
    bench_real_qemu(vm)
    print_table(ROWS)
    print(f"\ntotal benchmark time {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
