"""Backup targets get QEMU 7.2's zero clusters.

What real QEMU does (block/block-copy.c, block/io.c, block/qcow2.c, blockdev.c):

- block-copy cuts its tasks where the source's block status switches between data and zeroes. A
  zero task (zero clusters, unallocated or discarded clusters) is a write-zeroes request without
  BDRV_REQ_MAY_UNMAP: the target's clusters become zero clusters and keep any host cluster.
- A data task (data clusters, including clusters the guest filled with zero bytes) is one read and
  one write request. ``drive-backup`` opens its target with ``detect-zeroes=unmap,discard=unmap``, so
  a data task whose whole buffer is zeroes becomes a write-zeroes request with BDRV_REQ_MAY_UNMAP:
  zero clusters that drop their host clusters. A task mixing data and zero bytes is data, every
  cluster of it. A ``blockdev-backup`` target detects zeroes only if it was opened so (off by default).
- Copy-before-write copies just the clusters a guest write covers: a task of zero bytes there is a
  zero cluster even where the background copy would have joined it to a data cluster.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from bitlab import Machine
from bitlab.jobs import block_copy

K = 65536
SIZE = 8 << 20


B = 16 * K  # a 1 MiB task mixing every kind
# (verb, offset, length, pattern): every kind of cluster, and mixes within one copy task (at most 1 MiB)
SOURCE_WRITES = [
    ("write", 0, K, 0x41), ("write", K, K, 0),  # data, then zero bytes: one task
    ("zero", 2 * K, K, 0), ("write", 3 * K, K, 0x41), ("discard", 3 * K, K, 0),  # a zero cluster, a discarded one
    ("write", 5 * K, 4096, 0), ("zero", 6 * K, 4096, 0),  # parts of clusters
    ("write", 7 * K, K, 0x41), ("zero", 7 * K, 4096, 0), ("write", 8 * K, K, 0), ("zero", 8 * K + 4096, 4096, 0),
    ("write", 10 * K, K, 0), ("write", 11 * K, K, 0), ("zero", 12 * K, K, 0), ("write", 13 * K, K, 0),
    ("write", B, K, 0x41), ("write", B + K, K, 0), ("zero", B + 2 * K, K, 0), ("write", B + 3 * K, K, 0x41),
    ("write", B + 4 * K, K, 0x41), ("discard", B + 4 * K, K, 0), ("write", B + 6 * K, K, 0),
    ("zero", B + 7 * K, K, 0), ("write", B + 8 * K, 8192, 0x42),
    ("write", 2 << 20, 2 << 20, 0),  # 2 MiB of zero bytes: two whole tasks
    ("zero", 4 << 20, 2 << 20, 0), ("write", 6 << 20, 1 << 20, 0x41), ("discard", 6 << 20, 1 << 20, 0),
    ("write", SIZE - K, K, 0),
]


def _source_writes(vm: Machine, writes: list[tuple[str, int, int, int]]) -> None:
    for verb, offset, length, pattern in writes:
        if verb == "write":
            vm.write("src", offset, length, pattern)
        elif verb == "zero":
            vm.write_zeroes("src", offset, length)
        else:
            vm.discard("src", offset, length)


def _cluster_map(vm: Machine, image: str) -> list[tuple[int, int, str]]:
    """``qemu-img map --output=json`` per cluster: zero, data, host offset or not, present, depth (host
    offsets themselves are layout, which bitlab does not model for backup targets)."""
    kinds = []
    for e in json.loads(vm.qemu_img("map", "--output=json", image)):
        flags = "".join(("Z" if e["zero"] else "-", "D" if e["data"] else "-", "o" if "offset" in e else "-",
                         "p" if e["present"] else "-", str(e["depth"])))
        kinds += [flags] * (-(-(e["start"] + e["length"]) // K) - e["start"] // K)
    runs: list[tuple[int, int, str]] = []
    for i, flags in enumerate(kinds):
        if runs and runs[-1][2] == flags:
            runs[-1] = (runs[-1][0], i + 1, flags)
        else:
            runs.append((i, i + 1, flags))
    return runs


def _events(vm: Machine) -> list[tuple[str, dict]]:
    keep = ("status", "type", "len", "offset", "error", "id", "device")
    return [(e["event"], {k: v for k, v in e.get("data", {}).items() if k in keep}) for e in vm.events]


def _file_sizes(vm: Machine) -> list[tuple[str, int]]:
    """The file nodes' sizes: the image files' lengths (L2 tables and data clusters allocated)."""
    return sorted((n["image"]["filename"].rsplit("/", 1)[-1], n["image"]["virtual-size"])
                  for n in vm.qmp("query-named-block-nodes", {"flat": True}) if n["drv"] == "file")


def _prewrite(vm: Machine, image: str, length: int) -> None:
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "pre", "file": {"driver": "file", "filename": image}})
    vm.write("pre", 0, length, 0x77)
    vm.qmp("blockdev-del", {"node-name": "pre"})


def _now(vm: Machine) -> float:
    return vm.now() if callable(vm.now) else vm.now  # a method on the simulator, a property on QEMU


def _start(vm: Machine, case: str) -> None:
    drive = {"job-id": "j", "device": "src", "target": "t.qcow2", "format": "qcow2"}
    if case == "drive-full":
        vm.qmp("drive-backup", drive | {"sync": "full"})
    elif case == "drive-incremental":
        vm.qemu_img("create", "-f", "qcow2", "base.qcow2", str(SIZE))
        vm.qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "t.qcow2", str(SIZE))
        vm.qmp("drive-backup", drive | {"sync": "incremental", "bitmap": "b0", "mode": "existing"})
    elif case == "drive-top":
        vm.qmp("drive-backup", drive | {"sync": "top"})
    elif case.startswith("drive-existing"):  # a target that already holds data: unmap is visible
        opts = ["-o", "compat=0.10"] if case.endswith("v2") else []
        vm.qemu_img("create", "-f", "qcow2", *opts, "t.qcow2", str(SIZE))
        _prewrite(vm, "t.qcow2", 4 << 20)
        vm.qmp("drive-backup", drive | {"sync": "full", "mode": "existing"})
    elif case.startswith("blockdev-"):  # blockdev-backup to a target opened with detect-zeroes off/on/unmap
        detect = case.split("-")[1]
        vm.qemu_img("create", "-f", "qcow2", "t.qcow2", str(SIZE))
        _prewrite(vm, "t.qcow2", 4 << 20)
        opts: dict = {"driver": "qcow2", "node-name": "tgt", "file": {"driver": "file", "filename": "t.qcow2"}}
        if detect != "off":
            opts["detect-zeroes"] = detect
        if detect == "unmap":
            opts["discard"] = "unmap"
        vm.qmp("blockdev-add", opts)
        sync = case.split("-")[2]
        vm.qmp("blockdev-backup", {"job-id": "j", "device": "src", "target": "tgt", "sync": sync}
               | ({"bitmap": "b0"} if sync == "incremental" else {}))
    elif case == "drive-cbw":  # guest writes land in clusters the job has still to copy
        vm.qmp("drive-backup", drive | {"sync": "full", "speed": 1})
        vm.run(until=_now(vm) + 0.01)  # the first task has started; the rate limit holds the rest
        vm.write("src", 11 * K, K, 0x99)  # copies cluster 11 alone: zero bytes, a zero cluster
        vm.write("src", 17 * K, K, 0x99)  # cluster 17 alone (the background copy joins it to cluster 16)
        vm.write("src", (2 << 20) + K, K, 0x99)
        vm.write("src", (2 << 20) + 3 * K, 4096, 0)
        vm.write_zeroes("src", 2 * K, K)
        vm.qmp("block-job-set-speed", {"device": "j", "speed": 0})
    else:
        raise AssertionError(case)


def outcome(vm: Machine, case: str, writes: list[tuple[str, int, int, int]] = SOURCE_WRITES) -> dict:
    """Play ``case`` on ``vm``: the target's map per cluster, the events and the files' lengths."""
    vm.qemu_img("create", "-f", "qcow2", "src.qcow2", str(SIZE))
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "src", "discard": "unmap",
                            "file": {"driver": "file", "filename": "src.qcow2"}})
    vm.qmp("block-dirty-bitmap-add", {"node": "src", "name": "b0", "granularity": K})
    _source_writes(vm, writes)
    _start(vm, case)
    vm.run()
    out = {"events": _events(vm), "sizes": _file_sizes(vm)}
    if case.startswith("blockdev-"):
        vm.qmp("blockdev-del", {"node-name": "tgt"})
    out["map"] = _cluster_map(vm, "t.qcow2")
    return out


CASES = ["drive-full", "drive-incremental", "drive-top", "drive-existing", "drive-existing-v2", "drive-cbw",
         "blockdev-off-full", "blockdev-on-full", "blockdev-unmap-full", "blockdev-off-incremental",
         "blockdev-unmap-top"]


def on_real_qemu(play: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """``play(vm, ...)`` on a fresh machine of the real-QEMU backend, closed afterwards."""
    with Machine(backend="qemu") as real:
        return play(real, *args, **kw)


@pytest.mark.qemu
@pytest.mark.parametrize("case", CASES)
def test_backup_targets_match_real_qemu(case):
    want = on_real_qemu(outcome, case)
    got = outcome(Machine(), case)
    assert got["map"] == want["map"]
    assert got["events"] == want["events"]
    assert got["sizes"] == want["sizes"]


def random_writes(seed: int, shuffle: bool = False) -> list[tuple[str, int, int, int]]:
    """Writes that do not overlap, whole and partial clusters, data, zero bytes and zero writes, in
    ascending order or (``shuffle``) any (qcow2 lays the source's clusters out in write order, and
    block status, hence the copy tasks, follows them)."""
    rng = random.Random(seed)
    writes, pos = [], 0
    while True:
        pos += rng.choice([0, 0, K, 4096, 3 * K])
        length = rng.choice([4096, K, K, 2 * K, 5 * K, 20 * K, 1 << 20])
        if pos + length > SIZE:
            if shuffle:
                rng.shuffle(writes)
            return writes
        verb = rng.choice(["write", "write", "write0", "zero"])
        pattern = rng.choice([0x41, 0x42]) if verb == "write" else 0
        writes.append(("zero" if verb == "zero" else "write", pos, length, pattern))
        pos = -(-(pos + length) // K) * K


@pytest.mark.qemu
@pytest.mark.parametrize("seed", range(12))
def test_random_sources_match_real_qemu(seed):
    case = CASES[seed % len(CASES)]
    # Out of order only where the target frees nothing: freed clusters go to whichever of the job's
    # parallel requests allocates next, which varies from run to run in QEMU (its file length too).
    writes = random_writes(seed, shuffle="unmap" not in case and "existing" not in case)
    want = on_real_qemu(outcome, case, writes)
    assert outcome(Machine(), case, writes) == want


@pytest.mark.parametrize("case", CASES)
def test_bulk_and_per_task_paths_give_the_same_target(case, monkeypatch):
    monkeypatch.setattr(block_copy, "BULK", True)
    bulk = outcome(Machine(), case)
    monkeypatch.setattr(block_copy, "BULK", False)
    assert outcome(Machine(), case) == bulk


# -- QEMU's exact output (recorded on qemu-system-x86_64 7.2, checked above) --------------------------

def _small(vm: Machine, *, drive: bool = True, existing: bool = False, detect: str | None = None) -> tuple[str, list]:
    """1 MiB: cluster 0 data, 1 zero bytes (one task with 0), 2 a zero cluster, 3-4 zero bytes, 6 four
    KiB of zero bytes, 15 zero bytes; a full backup."""
    vm.qemu_img("create", "-f", "qcow2", "src.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "src", "file": {"driver": "file", "filename": "src.qcow2"}})
    vm.write("src", 0, K, 0x41)
    vm.write("src", K, K, 0)
    vm.write_zeroes("src", 2 * K, K)
    vm.write("src", 3 * K, 2 * K, 0)
    vm.write("src", 6 * K, 4096, 0)
    vm.write("src", 15 * K, K, 0)
    if existing:
        vm.qemu_img("create", "-f", "qcow2", "t.qcow2", "1M")
        _prewrite(vm, "t.qcow2", 1 << 20)
    if drive:
        vm.qmp("drive-backup", {"job-id": "j", "device": "src", "target": "t.qcow2", "sync": "full",
                                "format": "qcow2"} | ({"mode": "existing"} if existing else {}))
    else:
        if not existing:
            vm.qemu_img("create", "-f", "qcow2", "t.qcow2", "1M")
        opts = {"detect-zeroes": detect} if detect else {}
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "tgt",
                                "file": {"driver": "file", "filename": "t.qcow2"}} | opts)
        vm.qmp("blockdev-backup", {"job-id": "j", "device": "src", "target": "tgt", "sync": "full"})
    vm.run()
    sizes = [size for _, size in _file_sizes(vm)]
    if not drive:
        vm.qmp("blockdev-del", {"node-name": "tgt"})
    return vm.qemu_img("map", "--output=json", "t.qcow2"), sizes


def test_drive_backup_target_gets_zero_clusters_for_tasks_of_zero_bytes():
    """Clusters 3-4, 6 and 15 hold zero bytes in tasks of their own: zero clusters, no host cluster.
    Cluster 1's zero bytes share a task with cluster 0's data: data."""
    out, sizes = _small(Machine())
    assert out == (
        '[{ "start": 0, "length": 131072, "depth": 0, "present": true, "zero": false, "data": true, '
        '"offset": 327680},\n'
        '{ "start": 131072, "length": 917504, "depth": 0, "present": true, "zero": true, "data": false}]\n')
    assert sizes == [720896]  # header, refcount table and block, L1, one L2 table, two data clusters


def test_blockdev_backup_target_without_detect_zeroes_stores_zero_bytes_as_data():
    out, sizes = _small(Machine(), drive=False)
    entries = [(e["start"], e["length"], e["zero"], e["data"], "offset" in e) for e in json.loads(out)]
    assert entries == [(0, 131072, False, True, True), (131072, 65536, True, False, False),
                       (196608, 131072, False, True, True), (327680, 65536, True, False, False),
                       (393216, 65536, False, True, True), (458752, 524288, True, False, False),
                       (983040, 65536, False, True, True)]
    assert sizes == [720896, 720896]


def test_detected_zeroes_drop_host_clusters_zero_tasks_keep_them():
    """drive-backup mode=existing over a target full of data: zero tasks (clusters 2, 5, 7-14) keep
    their host clusters (an offset in the map), detected zero bytes (3-4, 6, 15) drop theirs."""
    out, sizes = _small(Machine(), existing=True)
    entries = [(e["start"], e["length"], e["zero"], e["data"], "offset" in e) for e in json.loads(out)]
    assert entries == [(0, 131072, False, True, True), (131072, 65536, True, False, True),
                       (196608, 131072, True, False, False), (327680, 65536, True, False, True),
                       (393216, 65536, True, False, False), (458752, 524288, True, False, True),
                       (983040, 65536, True, False, False)]
    assert sizes == [720896]  # the file keeps its length: freed clusters are not given back


def test_detect_zeroes_on_keeps_host_clusters():
    out, sizes = _small(Machine(), drive=False, existing=True, detect="on")
    assert out == (
        '[{ "start": 0, "length": 131072, "depth": 0, "present": true, "zero": false, "data": true, '
        '"offset": 327680},\n'
        '{ "start": 131072, "length": 917504, "depth": 0, "present": true, "zero": true, "data": false, '
        '"offset": 458752}]\n')
    assert sizes == [720896, 1376256]  # src.qcow2, t.qcow2


@pytest.mark.qemu
@pytest.mark.parametrize("kw", [{}, {"drive": False}, {"existing": True}, {"drive": False, "existing": True},
                                {"drive": False, "existing": True, "detect": "on"}])
def test_small_maps_match_real_qemu(kw):
    """The exact outputs above are QEMU's (host offsets compared where one task allocates)."""
    want = on_real_qemu(_small, **kw)
    got = _small(Machine(), **kw)
    assert got[1] == want[1]
    assert _entries(got[0]) == _entries(want[0])
    if kw in ({}, {"drive": False, "existing": True, "detect": "on"}):
        assert got[0] == want[0]


# -- detect-zeroes on guest writes -----------------------------------------------------------------

def _guest_detect(vm: Machine, detect: str) -> str:
    vm.qemu_img("create", "-f", "qcow2", "g.qcow2", "1M")
    opts = {"detect-zeroes": detect} | ({"discard": "unmap"} if detect == "unmap" else {})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "g", "file": {"driver": "file", "filename": "g.qcow2"}}
           | opts)
    vm.write("g", 0, 2 * K, 0x41)
    vm.write("g", 0, K, 0)  # over data
    vm.write("g", 4 * K, K, 0)  # over nothing
    vm.write("g", 6 * K, 4096, 0)  # part of a cluster that reads zeroes
    vm.write("g", K + 4096, 4096, 0)  # part of a data cluster: zero bytes written as data
    vm.qmp("blockdev-del", {"node-name": "g"})
    return vm.qemu_img("map", "--output=json", "g.qcow2")


def _entries(out: str) -> list[tuple]:
    """Map entries without host offsets (whether there is one is kept)."""
    return [(e["start"], e["length"], e["present"], e["zero"], e["data"], "offset" in e) for e in json.loads(out)]


def test_guest_zero_bytes_on_a_detecting_node_make_zero_clusters():
    """detect-zeroes=on: writes of zero bytes become zero writes (cluster 0 keeps its host cluster,
    cluster 4 gets none, cluster 6 becomes a zero cluster as the rest of it reads zeroes); part of a
    data cluster is written as zero bytes (cluster 1). QEMU's exact output."""
    assert _guest_detect(Machine(), "on") == (
        '[{ "start": 0, "length": 65536, "depth": 0, "present": true, "zero": true, "data": false, "offset": 327680},\n'
        '{ "start": 65536, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, '
        '"offset": 393216},\n'
        '{ "start": 131072, "length": 131072, "depth": 0, "present": false, "zero": true, "data": false},\n'
        '{ "start": 262144, "length": 65536, "depth": 0, "present": true, "zero": true, "data": false},\n'
        '{ "start": 327680, "length": 65536, "depth": 0, "present": false, "zero": true, "data": false},\n'
        '{ "start": 393216, "length": 65536, "depth": 0, "present": true, "zero": true, "data": false},\n'
        '{ "start": 458752, "length": 589824, "depth": 0, "present": false, "zero": true, "data": false}]\n')


def test_guest_zero_bytes_with_detect_zeroes_unmap_drop_the_host_cluster():
    assert _entries(_guest_detect(Machine(), "unmap")) == [
        (0, 65536, True, True, False, False), (65536, 65536, True, False, True, True),
        (131072, 131072, False, True, False, False), (262144, 65536, True, True, False, False),
        (327680, 65536, False, True, False, False), (393216, 65536, True, True, False, False),
        (458752, 589824, False, True, False, False)]


@pytest.mark.qemu
@pytest.mark.parametrize("detect", ["off", "on", "unmap"])
def test_guest_zero_writes_match_real_qemu(detect):
    """Host offsets compared too, except after an unmap (bitlab does not lay out freed clusters)."""
    want = on_real_qemu(_guest_detect, detect)
    got = _guest_detect(Machine(), detect)
    assert (_entries(got) if detect == "unmap" else got) == (_entries(want) if detect == "unmap" else want)


# -- a disk that ends inside a cluster ---------------------------------------------------------------

def _odd(vm: Machine, target_cluster: int | None) -> tuple[list, list]:
    """1 MiB + 4 KiB: cluster 14 data, the last (partial) cluster zero bytes; a drive-backup onto an
    existing target (of ``target_cluster`` bytes: the job's cluster is max(64 KiB, that))."""
    size = str((1 << 20) + 4096)
    vm.qemu_img("create", "-f", "qcow2", "src.qcow2", size)
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "src", "file": {"driver": "file", "filename": "src.qcow2"}})
    vm.write("src", 14 * K, K, 0x41)
    vm.write("src", 1 << 20, 4096, 0)
    opts = ["-o", f"cluster_size={target_cluster}"] if target_cluster else []
    vm.qemu_img("create", "-f", "qcow2", *opts, "t.qcow2", size)
    vm.qmp("drive-backup", {"job-id": "j", "device": "src", "target": "t.qcow2", "sync": "full", "format": "qcow2",
                            "mode": "existing"})
    vm.run()
    events = [(e["event"], e["data"]["len"], e["data"]["offset"])
              for e in vm.events if e["event"].startswith("BLOCK_JOB")]
    return events, _entries(vm.qemu_img("map", "--output=json", "t.qcow2"))


def test_progress_counts_the_last_cluster_whole():
    """QEMU's progress counts whole clusters of the job (block-copy's ``req.bytes``): ``len`` is the
    disk rounded up to the job's cluster. The partial last cluster of zero bytes is a zero cluster."""
    events, entries = _odd(Machine(), None)
    assert events == [("BLOCK_JOB_COMPLETED", 1114112, 1114112)]
    assert entries == [(0, 917504, True, True, False, False), (917504, 65536, True, False, True, True),
                       (983040, 69632, True, True, False, False)]
    events, entries = _odd(Machine(), 2 << 20)
    assert events == [("BLOCK_JOB_COMPLETED", 2097152, 2097152)]
    assert entries == [(0, 1052672, True, False, True, True)]


@pytest.mark.qemu
@pytest.mark.parametrize("target_cluster", [None, 4096, 2 << 20])
def test_partial_last_cluster_matches_real_qemu(target_cluster, monkeypatch):
    want = on_real_qemu(_odd, target_cluster)
    assert _odd(Machine(), target_cluster) == want
    monkeypatch.setattr(block_copy, "BULK", False)
    assert _odd(Machine(), target_cluster) == want


# -- tasks end where the source's block status answer ends ---------------------------------------------

def _layers(vm: Machine) -> str:
    """Cluster 0 data in the overlay, cluster 1 zero bytes in its backing file: two status extents, two
    tasks, so the target detects cluster 1's zeroes (one task of both would be data)."""
    vm.qemu_img("create", "-f", "qcow2", "b.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "b", "file": {"driver": "file", "filename": "b.qcow2"}})
    vm.write("b", K, K, 0)
    vm.write("b", 8 * K, K, 0x42)
    vm.qmp("blockdev-del", {"node-name": "b"})
    vm.qemu_img("create", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "src.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "src", "file": {"driver": "file", "filename": "src.qcow2"}})
    vm.write("src", 0, K, 0x41)
    vm.write("src", 7 * K, K, 0)
    vm.qmp("drive-backup", {"job-id": "j", "device": "src", "target": "t.qcow2", "sync": "full", "format": "qcow2"})
    vm.run()
    return vm.qemu_img("map", "--output=json", "t.qcow2")


def test_a_backing_file_extent_is_a_task_of_its_own():
    assert _entries(_layers(Machine())) == [
        (0, 65536, True, False, True, True), (65536, 458752, True, True, False, False),
        (524288, 65536, True, False, True, True), (589824, 458752, True, True, False, False)]


def _big_cluster(vm: Machine) -> tuple[str, list]:
    """A target with 2 MiB clusters: the job's cluster is 2 MiB. In [0, 2M) the status answer at 0
    (unallocated up to the zero cluster at 1M) is shorter than that: QEMU copies the cluster as data.
    [2M, 4M) is one unallocated extent: a zero cluster."""
    vm.qemu_img("create", "-f", "qcow2", "src.qcow2", "4M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "src", "file": {"driver": "file", "filename": "src.qcow2"}})
    vm.write_zeroes("src", 1 << 20, K)
    vm.qemu_img("create", "-f", "qcow2", "-o", "cluster_size=2M", "t.qcow2", "4M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "tgt", "file": {"driver": "file", "filename": "t.qcow2"}})
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "src", "target": "tgt", "sync": "full"})
    vm.run()
    events = [(e["event"], e["data"]["len"]) for e in vm.events if e["event"].startswith("BLOCK_JOB")]
    vm.qmp("blockdev-del", {"node-name": "tgt"})
    return vm.qemu_img("map", "--output=json", "t.qcow2"), events


@pytest.mark.parametrize("bulk", [True, False])
def test_a_status_extent_shorter_than_the_job_cluster_is_copied_as_data(bulk, monkeypatch):
    monkeypatch.setattr(block_copy, "BULK", bulk)
    assert _big_cluster(Machine()) == (
        '[{ "start": 0, "length": 2097152, "depth": 0, "present": true, "zero": false, "data": true, '
        '"offset": 10485760},\n'
        '{ "start": 2097152, "length": 2097152, "depth": 0, "present": true, "zero": true, "data": false}]\n',
        [("BLOCK_JOB_COMPLETED", 4194304)])


@pytest.mark.qemu
def test_status_extents_match_real_qemu():
    want = on_real_qemu(_layers)
    want = want, on_real_qemu(_big_cluster)
    got = _layers(Machine()), _big_cluster(Machine())
    assert _entries(got[0]) == _entries(want[0])
    assert got[1] == want[1]


def _big_source_clusters(vm: Machine, use_copy_range: bool = False) -> str:
    """A source of 2 MiB clusters (one written 64 KiB into), backed up in job clusters of 64 KiB onto a node
    that does not detect zeroes: the whole 2 MiB cluster is data to block status, so the second 1 MiB task
    (which starts inside it and holds no written byte) copies data too."""
    vm.qemu_img("create", "-f", "qcow2", "-o", "cluster_size=2097152", "src.qcow2", str(SIZE))
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "src", "file": {"driver": "file", "filename": "src.qcow2"}})
    vm.write("src", 596480, K, 0x92)
    vm.qemu_img("create", "-f", "qcow2", "tgt.qcow2", str(SIZE))
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "tgt", "file": {"driver": "file", "filename": "tgt.qcow2"}})
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "src", "target": "tgt", "sync": "full",
                               "x-perf": {"max-workers": 1, "use-copy-range": use_copy_range}})
    vm.run()
    vm.qmp("blockdev-del", {"node-name": "tgt"})
    return vm.qemu_img("map", "--output=json", "tgt.qcow2")


BIG_SOURCE_CLUSTERS_MAP = (
    '[{ "start": 0, "length": 2097152, "depth": 0, "present": true, "zero": false, "data": true, "offset": 327680},\n'
    '{ "start": 2097152, "length": 6291456, "depth": 0, "present": true, "zero": true, "data": false}]\n')


@pytest.mark.parametrize(("use_copy_range", "bulk"), [(False, True), (False, False), (True, True)])
def test_source_clusters_larger_than_the_job_cluster_are_data_whole(use_copy_range, bulk, monkeypatch):
    monkeypatch.setattr(block_copy, "BULK", bulk)  # (copy_range copies task by task)
    assert _big_source_clusters(Machine(), use_copy_range) == BIG_SOURCE_CLUSTERS_MAP


@pytest.mark.qemu
@pytest.mark.parametrize("use_copy_range", [False, True])
def test_source_clusters_larger_than_the_job_cluster_match_real_qemu(use_copy_range):
    real = on_real_qemu(_big_source_clusters, use_copy_range)
    assert real == _big_source_clusters(Machine(), use_copy_range) == BIG_SOURCE_CLUSTERS_MAP


def _small_source_clusters(vm: Machine, cluster: int) -> str:
    """A source of small clusters (4 KiB written), backed up in job clusters of 64 KiB: qcow2 answers block
    status for one L2 table at a time (qcow2_get_host_offset), which maps 32 KiB at 512-byte clusters, so every
    answer is shorter than the job cluster and every job cluster is copied as data; at 1 KiB a table maps
    128 KiB, and the zero tasks are cut at its ends."""
    return _one_write_backed_up(vm, cluster, SIZE, 8192, 0x93)


def _one_write_backed_up(vm: Machine, cluster: int, size: int, offset: int, pattern: int) -> str:
    """A qcow2 source of ``cluster``-byte clusters with 4 KiB written at ``offset``, backed up whole by one
    worker onto a new qcow2 target (64 KiB clusters): the target's map."""
    vm.qemu_img("create", "-f", "qcow2", "-o", f"cluster_size={cluster}", "src.qcow2", str(size))
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "src", "file": {"driver": "file", "filename": "src.qcow2"}})
    vm.write("src", offset, 4096, pattern)
    vm.qemu_img("create", "-f", "qcow2", "tgt.qcow2", str(size))
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "tgt", "file": {"driver": "file", "filename": "tgt.qcow2"}})
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "src", "target": "tgt", "sync": "full",
                               "x-perf": {"max-workers": 1}})
    vm.run()
    vm.qmp("blockdev-del", {"node-name": "tgt"})
    return vm.qemu_img("map", "--output=json", "tgt.qcow2")


@pytest.mark.parametrize("bulk", [True, False])
def test_source_clusters_of_512_bytes_are_copied_as_data(bulk, monkeypatch):
    monkeypatch.setattr(block_copy, "BULK", bulk)
    assert _small_source_clusters(Machine(), 512) == (
        '[{ "start": 0, "length": 8388608, "depth": 0, "present": true, "zero": false, "data": true, '
        '"offset": 327680}]\n')


@pytest.mark.qemu
@pytest.mark.parametrize("cluster", [512, 1024])
def test_small_source_clusters_match_real_qemu(cluster):
    assert on_real_qemu(_small_source_clusters, cluster) == _small_source_clusters(Machine(), cluster)


def _tail_past_a_table(vm: Machine) -> str:
    """A source of 4 KiB clusters (an L2 table maps 2 MiB) of 4 MiB + 87 bytes (a sector more than 4 MiB): the
    last answer starts at the table boundary at 4 MiB and is 512 bytes long, shorter than the job cluster, so
    that last bit is copied as data (random-18200-93, a copy-range episode)."""
    return _one_write_backed_up(vm, 4096, (4 << 20) + 87, 3965440, 0x08)


def test_the_tail_past_an_l2_table_is_copied_as_data():
    entries = json.loads(_tail_past_a_table(Machine()))
    assert entries[-1] == {"start": 4 << 20, "length": 512, "depth": 0, "present": True, "zero": False, "data": True,
                           "offset": 393216}


@pytest.mark.qemu
def test_the_tail_past_an_l2_table_matches_real_qemu():
    assert on_real_qemu(_tail_past_a_table) == _tail_past_a_table(Machine())


def _unaligned_size(vm: Machine) -> list[str]:
    """A qcow2 image created with a size that is no multiple of 512 (qemu-img rounds it up to a sector,
    silently), written in its last sector and backed up: the last cluster is data to its rounded end."""
    size = 3 * (1 << 20) + 100
    vm.qemu_img("create", "-f", "qcow2", "src.qcow2", str(size))
    vm.qemu_img("create", "-f", "qcow2", "tgt.qcow2", str(size))
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "src", "file": {"driver": "file", "filename": "src.qcow2"}})
    vm.write("src", size - 612, 1024, 0x55)
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "tgt", "file": {"driver": "file", "filename": "tgt.qcow2"}})
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "src", "target": "tgt", "sync": "full"})
    vm.run()
    vm.qmp("blockdev-del", {"node-name": "tgt"})
    vm.qmp("blockdev-del", {"node-name": "src"})
    return [vm.qemu_img("map", "--output=json", image) for image in ("src.qcow2", "tgt.qcow2")]


UNALIGNED_MAP = (
    '[{ "start": 0, "length": 3080192, "depth": 0, "present": false, "zero": true, "data": false},\n'
    '{ "start": 3080192, "length": 66048, "depth": 0, "present": true, "zero": false, "data": true, "offset": %d}]\n')


def test_unaligned_image_sizes_round_up_to_a_sector():
    assert _unaligned_size(Machine()) == [UNALIGNED_MAP % 327680, UNALIGNED_MAP.replace(
        '"present": false', '"present": true') % 327680]


@pytest.mark.qemu
def test_unaligned_image_sizes_match_real_qemu():
    assert on_real_qemu(_unaligned_size) == _unaligned_size(Machine())
