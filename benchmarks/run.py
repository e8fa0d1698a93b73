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
  (e) an incremental backup of 1,000,000 random dirty 64 KiB clusters between 1 TiB
      nodes, null-co and qcow2 (block-copy's bulk path)                  goal < 1 s
      (and compressed, null-co onto qcow2)                               goal < 10 s
      and the per-task path for scale
  (f) the seed scenario (tests/data/qemu-traces) replayed in-process, and the same
      commands on a real qemu-storage-daemon (guest writes with qemu-io over NBD),
      with a check that both give the same bitmaps and job events       goal >= 100x
      and where each side's time goes: the daemon's start, qemu-img create, each kind
      of command (a transaction until its jobs are gone), qemu-io's guest writes
  (h) blockdev-mirror, sync full, of a 1 TiB null-co node into an empty qcow2 node, until ready
  (i) a pull-mode backup tool's ``qemu-img map`` over NBD of a 1 TiB qcow2 export whose bitmap 1M scattered
      64 KiB writes dirtied: with ``x-dirty-bitmap`` (1.8M entries) and plain ``base:allocation``
  (j) a restore into a running disk: ``qemu-img convert -n`` of a 1 TiB qcow2 backup with 1M scattered 64 KiB
      clusters into a writable NBD export of an empty 1 TiB qcow2 disk (2M requests, at once), and of a 16 GiB
      backup with 10k clusters into a disk with 10k of its own (zero writes free clusters: request by request)

Times are medians of several repeats of ``time.perf_counter`` measurements.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import hashlib
import json
import logging
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bitlab import Machine
from bitlab.backends.qemu import qmp_chardev
from bitlab.bitmap import DirtyBitmap
from bitlab.jobs import block_copy

TiB = 1 << 40
GRANULARITY = 64 << 10
NWRITES = 1_000_000
WRITE_SIZE = 4096
SEED = 20240601
REPEATS = 5
QSD = "/usr/bin/qemu-storage-daemon"
QSD_RUNS = 5  # the seed scenario on qemu-storage-daemon: its time varies by a third from run to run (median)


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


def python_calls(fn: Callable[[], object], runs: int = 5) -> int:
    """Python function calls per run of ``fn`` (cProfile's count, after one warm-up run): a figure that,
    unlike wall time, does not depend on what else the machine is doing."""
    fn()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(runs):
        fn()
    prof.disable()
    return round(pstats.Stats(prof).total_calls / runs)  # type: ignore[attr-defined]


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
            proc = subprocess.Popen([QSD, "--chardev", qmp_chardev(sock),
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


# -- block-copy: backups of many dirty clusters ---------------------------------------------------
BACKUP_CLUSTERS = 1_000_000


def dirty_machine(kind: str, nclusters: int, seed: int = 1) -> Machine:
    """Two 1 TiB nodes (null-co, or qcow2 over file) and ``nclusters`` random dirty 64 KiB clusters."""
    vm = Machine()
    for name in ("src", "dst"):
        if kind == "null-co":
            vm.qmp("blockdev-add", {"driver": "null-co", "node-name": name, "size": TiB})
        else:
            vm.qemu_img("create", "-f", "qcow2", f"{name}.qcow2", str(TiB))
            vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": name,
                                    "file": {"driver": "file", "filename": f"{name}.qcow2"}})
    vm.qmp("block-dirty-bitmap-add", {"node": "src", "name": "b", "granularity": GRANULARITY})
    rng = np.random.default_rng(seed)
    offsets = np.sort(rng.choice(TiB // GRANULARITY, nclusters, replace=False)) * GRANULARITY
    vm.write_batch("src", offsets, GRANULARITY)
    return vm


def incremental_backup(vm: Machine) -> dict:
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "src", "target": "dst", "sync": "incremental",
                               "bitmap": "b"})
    vm.run()
    return next(e["data"] for e in reversed(vm.events) if e["event"] == "BLOCK_JOB_COMPLETED")


def time_backup(kind: str, nclusters: int, *, repeats: int = 3, bulk: bool = True) -> tuple[float, dict, float]:
    """Median wall time of the backup alone (set-up excluded), its end event, its simulated time."""
    state: dict = {}

    def setup() -> None:
        state["vm"] = dirty_machine(kind, nclusters)

    def run() -> None:
        state["done"] = incremental_backup(state["vm"])

    saved = block_copy.BULK
    block_copy.BULK = bulk
    try:
        t = median_seconds(run, setup=setup, repeats=repeats)
    finally:
        block_copy.BULK = saved
    return t, state["done"], state["vm"].now


def time_compressed_backup(nclusters: int) -> tuple[float, dict]:
    """Wall time of a compressed incremental backup (``compress``) of ``nclusters`` random dirty clusters, 1 TiB
    null-co onto a new 1 TiB qcow2 image (set-up excluded), and its end event."""
    vm = Machine()
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "src", "size": TiB})
    vm.qemu_img("create", "-f", "qcow2", "dst.qcow2", str(TiB))
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "dst", "file": {"driver": "file", "filename": "dst.qcow2"}})
    vm.qmp("block-dirty-bitmap-add", {"node": "src", "name": "b", "granularity": GRANULARITY})
    rng = np.random.default_rng(1)
    vm.write_batch("src", np.sort(rng.choice(TiB // GRANULARITY, nclusters, replace=False)) * GRANULARITY, GRANULARITY)
    start = time.perf_counter()
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "src", "target": "dst", "sync": "incremental",
                               "bitmap": "b", "compress": True})
    vm.run()
    elapsed = time.perf_counter() - start
    return elapsed, next(e["data"] for e in reversed(vm.events) if e["event"] == "BLOCK_JOB_COMPLETED")


def bench_block_copy() -> None:
    section(f"(e) incremental backup of random dirty {GRANULARITY // 1024} KiB clusters, 1 TiB source and target "
            "(blockdev-backup + run; set-up excluded)")
    for kind in ("null-co", "qcow2"):
        t, done, sim = time_backup(kind, BACKUP_CLUSTERS)
        ok = done["offset"] == done["len"] == BACKUP_CLUSTERS * GRANULARITY
        add(f"{kind}, {BACKUP_CLUSTERS:,} clusters (bulk path)", t, "s", "< 1 s", met=t < 1.0 and ok)
        add(f"  len = offset = {BACKUP_CLUSTERS:,} x 64 KiB", "yes" if ok else "NO", "")
        add("  simulated duration of the job", sim, "s")
    t10k_bulk, _, _ = time_backup("null-co", 10_000, repeats=REPEATS)
    t100k, _, _ = time_backup("null-co", 100_000)
    add("null-co, 100,000 clusters (bulk path)", t100k, "s")
    add("null-co, 10,000 clusters (bulk path)", t10k_bulk * 1e3, "ms")
    t10k, done, sim = time_backup("null-co", 10_000, repeats=1, bulk=False)
    add("null-co, 10,000 clusters, per-task path (for scale)", t10k * 1e3, "ms", "", t10k / t10k_bulk)
    add("  (ratio = per-task / bulk)", "", "")
    t, done = time_compressed_backup(BACKUP_CLUSTERS)
    ok = done["offset"] == BACKUP_CLUSTERS * GRANULARITY and "error" not in done
    add(f"null-co -> qcow2 compressed, {BACKUP_CLUSTERS:,} clusters", t, "s", "< 10 s", met=t < 10.0 and ok)


def time_mirror() -> tuple[float, dict]:
    """blockdev-mirror (sync full) of a 1 TiB null-co node into an empty 1 TiB qcow2 node, run until ready
    (set-up excluded): every 16 MiB iteration is one zero write."""
    vm = Machine()
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "src", "size": TiB, "read-zeroes": True})
    vm.qemu_img("create", "-f", "qcow2", "mirror-t.qcow2", str(TiB))
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "mirror-t",
                            "file": {"driver": "file", "filename": "mirror-t.qcow2"}})
    t = time.perf_counter()
    vm.qmp("blockdev-mirror", {"job-id": "m", "device": "src", "target": "mirror-t", "sync": "full"})
    vm.run()
    elapsed = time.perf_counter() - t
    return elapsed, vm.qmp("query-block-jobs")[0]


def bench_mirror() -> None:
    section("(h) blockdev-mirror, sync full, 1 TiB into an empty qcow2 node, until ready (set-up excluded)")
    t, job = time_mirror()
    ok = job["ready"] and job["offset"] == job["len"] == TiB
    add("null-co source (65,536 iterations of 16 MiB, zero writes)", t, "s")
    add("  ready, len = offset = 1 TiB", "yes" if ok else "NO", "")


def time_pull_map() -> tuple[float, float, int]:
    """qemu-img map over NBD of a 1 TiB qcow2 node exported with a bitmap that 1M scattered 64 KiB writes dirtied:
    (seconds for the bitmap's map via x-dirty-bitmap, seconds for base:allocation's, lines of the first)."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "pull.qcow2", str(TiB))
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "pull",
                            "file": {"driver": "file", "filename": "pull.qcow2"}})
    vm.qmp("block-dirty-bitmap-add", {"node": "pull", "name": "b"})
    vm.write_batch("pull", np.unique(np.random.default_rng(SEED).integers(0, TiB // 65536, 1_000_000)) * 65536,
                   65536, 0x11)
    vm.qmp("block-dirty-bitmap-disable", {"node": "pull", "name": "b"})
    vm.qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}})
    vm.qmp("block-export-add", {"type": "nbd", "id": "pull", "node-name": "pull", "bitmaps": ["b"]})
    t = time.perf_counter()
    out = vm.qemu_img("map", "--output=json", "--image-opts",
                      "driver=nbd,server.type=unix,server.path=nbd.sock,export=pull,x-dirty-bitmap=qemu:dirty-bitmap:b")
    t_bitmap = time.perf_counter() - t
    t = time.perf_counter()
    vm.qemu_img("map", "--output=json", "nbd+unix:///pull?socket=nbd.sock")
    return t_bitmap, time.perf_counter() - t, out.count("\n")


def bench_pull_map() -> None:
    section("(i) a pull-mode backup tool's qemu-img map over NBD, 1 TiB qcow2 export, 1M dirty 64 KiB clusters")
    t_bitmap, t_alloc, lines = time_pull_map()
    add(f"x-dirty-bitmap=qemu:dirty-bitmap:b ({lines:,} entries)", t_bitmap, "s")
    add("base:allocation", t_alloc, "s")


def time_restore(size: int, clusters: int, own: int) -> float:
    """Seconds of ``qemu-img convert -n`` of a qcow2 backup of ``size`` bytes with ``clusters`` scattered 64 KiB
    clusters into a writable NBD export of a qcow2 disk of that size with ``own`` of its own and a bitmap."""
    vm = Machine()
    rng = np.random.default_rng(SEED)
    for name, n in (("backup", clusters), ("disk", own)):
        vm.qemu_img("create", "-f", "qcow2", f"{name}.qcow2", str(size))
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": name,
                                "file": {"driver": "file", "filename": f"{name}.qcow2"}})
        if n:
            vm.write_batch(name, np.sort(rng.choice(size // 65536, n, replace=False)) * 65536, 65536, 0x22)
    vm.qmp("blockdev-del", {"node-name": "backup"})
    vm.qmp("block-dirty-bitmap-add", {"node": "disk", "name": "b"})
    vm.qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}})
    vm.qmp("block-export-add", {"type": "nbd", "id": "disk", "node-name": "disk", "writable": True})
    t = time.perf_counter()
    vm.qemu_img("convert", "-n", "-O", "raw", "backup.qcow2", "nbd+unix:///disk?socket=nbd.sock")
    return time.perf_counter() - t


def bench_restore() -> None:
    section("(j) a restore into a running disk: qemu-img convert -n of a qcow2 backup into a writable NBD export")
    add("1 TiB backup, 1M clusters, into an empty disk (2M requests)", time_restore(TiB, 1_000_000, 0), "s")
    add("16 GiB backup, 10k clusters, into a disk with 10k (request by request)",
        time_restore(16 << 30, 10_000, 10_000), "s")


# -- the seed scenario, in-process and on real QEMU -----------------------------------------------
def _seed_replay() -> types.ModuleType:
    """tests/trace_replay.py (replay(mode), Summary, commands(mode))."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests import trace_replay

    return trace_replay


def _part(execute: str) -> str:
    """The part of the seed scenario a command belongs to (make bench's breakdown)."""
    if execute == "transaction":
        return "transaction (until its jobs are gone)"
    if execute in ("query-named-block-nodes", "blockdev-add", "blockdev-del", "x-debug-block-dirty-bitmap-sha256"):
        return execute
    return "other commands"


Parts = dict[str, list]  # part of the scenario -> [seconds, count]


def _took(parts: Parts, part: str, since: float) -> None:
    entry = parts.setdefault(part, [0.0, 0])
    entry[0] += time.perf_counter() - since
    entry[1] += 1


async def _qsd_seed(mode: str, workdir: str, parts: Parts | None = None) -> list[dict]:
    """Send a recorded seed trace's commands (tests/trace_replay.py ``records``) to a fresh
    qemu-storage-daemon, guest writes with qemu-io over the trace's NBD exports; per step, the
    bitmaps and job sequences, summarised from the commands' replies as the in-process replay does.
    ``parts`` adds up the seconds (and count) of each part of the scenario (see :func:`_part`)."""
    from qemu.qmp import QMPClient

    from tests.trace_replay import Summary, job_sequences, records

    parts = {} if parts is None else parts

    def took(part: str, since: float) -> None:
        _took(parts, part, since)

    sock = os.path.join(workdir, "qmp.sock")
    t_spawn = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(QSD, "--chardev", qmp_chardev(sock),
                                                "--monitor", "chardev=qmp0", stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL, cwd=workdir)
    qmp = QMPClient("bitlab-bench-seed")
    for _ in range(500):  # the socket appears a few ms after spawn
        try:
            await qmp.connect(sock)
            break
        except Exception:  # keep polling until the daemon listens
            await asyncio.sleep(0.002)
    else:
        raise RuntimeError("could not connect to qemu-storage-daemon")
    took("start", t_spawn)
    steps: list[dict] = []
    summary = Summary()
    first_event = 0
    nbd_sock = None
    try:
        for kind, item in records(mode, workdir + "/"):
            if kind == "step":
                first_event = len(qmp.events.history)
            elif kind == "cmd":
                execute, args_json = item
                args = json.loads(args_json)
                if execute == "nbd-server-start":
                    nbd_sock = args["addr"]["data"]["path"]
                t_cmd = time.perf_counter()
                reply = await qmp.execute(execute, args)
                summary.reply(execute, args, reply)
                if execute == "transaction":  # wait until every job is gone
                    ids = {a["data"]["job-id"] for a in args["actions"] if "job-id" in a["data"]}
                    while ids:
                        ev = await qmp.events.get()
                        if ev["event"] == "JOB_STATUS_CHANGE" and ev["data"]["status"] == "null":
                            ids.discard(ev["data"]["id"])
                took(_part(execute), t_cmd)
            elif kind == "guest_io":
                t_io = time.perf_counter()
                io = await asyncio.create_subprocess_exec(
                    "qemu-io", "-f", "raw", f"nbd+unix:///{item['node']}?socket={nbd_sock}", "-c", item["cmd"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                await io.wait()
                took("guest write", t_io)
            elif kind == "bitmaps":
                events = [dict(e) for e in qmp.events.history[first_event:]]
                steps.append({"bitmaps": summary.bitmaps(), "jobs": job_sequences(events)})
        t_quit = time.perf_counter()
        with contextlib.suppress(Exception):
            await qmp.execute("quit")
    finally:
        with contextlib.suppress(EOFError, ConnectionError):  # the daemon may close the socket first after quit
            await qmp.disconnect()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.terminate()
            await proc.wait()
    took("quit", t_quit)
    return steps


def run_qsd_seed(trace: dict, parts: Parts | None = None) -> tuple[float, float, list[dict]]:
    """The seed scenario on real QEMU: (seconds with qemu-img, seconds of the daemon session, steps); ``parts``
    adds up the seconds of each part (see :func:`_qsd_seed`)."""
    parts = {} if parts is None else parts
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bitlab-seed-") as tmp:
        prefix = f"ORACLE/work/qsd-nbd-{trace['mode']}/"
        files = set()
        for rec in trace["trace"]:
            if rec["kind"] == "cmd" and rec["execute"] == "blockdev-add":
                file = rec["arguments"]["file"]
                files.add((file.get("filename") or file["image"]["filename"]).replace(prefix, ""))
        for name in sorted(files):
            t_img = time.perf_counter()
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", os.path.join(tmp, name),
                            str(trace["config"]["image_size"])], check=True)
            _took(parts, "qemu-img create", t_img)
        t1 = time.perf_counter()
        steps = asyncio.run(_qsd_seed(trace["mode"], tmp, parts))
        t2 = time.perf_counter()
    return t2 - t0, t2 - t1, steps


class _Timed:
    """Wraps a Machine's methods so that each outer call adds its time to ``parts`` (a command's
    ``vm.run()`` counts with that command: its jobs)."""

    def __init__(self, parts: Parts) -> None:
        self.parts, self.busy, self.last = parts, False, "other commands"

    def wrap(self, method: Callable, part: Callable[..., str | None]) -> Callable:
        def call(*args: Any, **kw: Any) -> Any:
            name = part(*args)
            if self.busy or name is None:  # (a method the replay called may call another: time the outer one)
                return method(*args, **kw)
            self.busy, t = True, time.perf_counter()
            try:
                return method(*args, **kw)
            finally:
                self.busy = False
                if name == "run":
                    self.parts[self.last][0] += time.perf_counter() - t
                else:
                    _took(self.parts, name, t)
                    self.last = name
        return call


def sim_seed_parts(trace_replay: types.ModuleType, mode: str, runs: int = 20) -> Parts:
    """The in-process replay's time by part of the scenario, split as :func:`_qsd_seed` splits real QEMU's."""
    parts: Parts = {}
    for _ in range(runs):
        t0 = time.perf_counter()
        vm = Machine()
        _took(parts, "start", t0)
        timed = _Timed(parts)
        vm.execute = timed.wrap(vm.execute, lambda message: _part(message["execute"]))  # type: ignore[method-assign]
        vm.run = timed.wrap(vm.run, lambda *a: "run")  # type: ignore[method-assign]
        vm.write = timed.wrap(vm.write, lambda *a: "guest write")  # type: ignore[method-assign]
        vm.qemu_img = timed.wrap(  # type: ignore[method-assign]
            vm.qemu_img, lambda *a: "qemu-img create" if a[0] == "create" else None)
        trace_replay.replay(mode, vm)
    return {k: [v[0] / runs, v[1] / runs] for k, v in parts.items()}


PART_ORDER = ("start", "qemu-img create", "blockdev-add", "query-named-block-nodes",
              "transaction (until its jobs are gone)", "x-debug-block-dirty-bitmap-sha256", "blockdev-del",
              "other commands", "guest write", "quit")


def _comparable(steps: list[dict], without_optional: Callable) -> list[dict]:
    return [{"bitmaps": s["bitmaps"], "jobs": {k: without_optional(v) for k, v in s["jobs"].items()}}
            for s in steps]


def bench_seed() -> None:
    section("(f) the seed scenario (tests/data/qemu-traces): two 64 MiB qcow2 drives, full backup transaction, "
            "5 guest writes, incremental transaction where drive1's read fails, repair")
    trace_replay = _seed_replay()
    have_qsd = os.path.exists(QSD) and shutil.which("qemu-img") and shutil.which("qemu-io")
    if have_qsd:
        try:
            import qemu.qmp  # noqa: F401
        except ImportError:
            have_qsd = False
    for mode in ("individual", "grouped"):
        t_sim = median_seconds(lambda m=mode: trace_replay.replay(m), number=20)  # (5 x the mean of 20: ~8 ms each)
        add(f"{mode}: bitlab in-process (replay of the trace's commands)", t_sim * 1e3, "ms")
        add(f"{mode}:   Python function calls per replay (cProfile; the same on a busy machine)",
            python_calls(lambda m=mode: trace_replay.replay(m)), "calls")
        if not have_qsd:
            continue
        logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
        trace = trace_replay.load(mode)
        qsd_parts: Parts = {}
        try:
            runs = [run_qsd_seed(trace, qsd_parts) for _ in range(QSD_RUNS)]
        except Exception as exc:  # report, do not crash the whole bench
            add(f"  skipped: qemu-storage-daemon failed: {exc!r}"[:150], "", "")
            continue
        t_total = statistics.median(r[0] for r in runs)
        t_daemon = statistics.median(r[1] for r in runs)
        ratio = t_total / t_sim
        add(f"{mode}: qemu-storage-daemon, with qemu-img create and qemu-io over NBD", t_total * 1e3, "ms",
            ">= 100x", ratio, met=ratio >= 100)
        add(f"{mode}:   the daemon session alone (spawn to quit)", t_daemon * 1e3, "ms", "", t_daemon / t_sim)
        _, sim_steps = trace_replay.replay(mode)
        same = all(_comparable(r[2], trace_replay.without_optional)
                   == _comparable(list(sim_steps.values()), trace_replay.without_optional) for r in runs)
        add(f"{mode}:   bitmaps (count, sha256) and job events per step equal", "yes" if same else "NO", "")
        sim_parts = sim_seed_parts(trace_replay, mode)
        for part in PART_ORDER:  # where each side's time goes (bitlab's figure; ratio = qsd / bitlab)
            q = qsd_parts.get(part, [0.0, 0])
            b = sim_parts.get(part, [0.0, 0])
            n = round(q[1] / len(runs))
            add(f"{mode}:   {part} x{n}: qsd {q[0] / len(runs) * 1e3:.2f} ms, bitlab", b[0] * 1e3, "ms", "",
                q[0] / b[0] if b[0] else None)
    if have_qsd:
        add("  (ratio = real QEMU / bitlab: how many times faster bitlab is)", "", "")
    else:
        add(f"  real QEMU skipped: needs {QSD}, qemu-img, qemu-io and the qemu.qmp package", "", "")


def main() -> int:
    t0 = time.perf_counter()
    print(f"bitlab benchmarks — Python {sys.version.split()[0]}, numpy {np.__version__}, "
          f"median of {REPEATS} repeats\n")
    mem = measure_memory()  # first, so getrusage's high-water mark is the exercise's own
    vm, bm = bench_writes()
    bench_bitmap_ops(bm)
    bench_memory(mem)
    bench_real_qemu(vm)
    del vm, bm
    bench_block_copy()
    bench_mirror()
    bench_pull_map()
    bench_restore()
    bench_seed()
    print_table(ROWS)
    print(f"\ntotal benchmark time {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
