"""qcow2 host layout in write order (bitlab/block/qcow2_host.py): QEMU 7.2's numbers, and the batch path
against the request-by-request one."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess

import numpy as np
import pytest
from bitarray import bitarray

from bitlab import Machine
from bitlab.block.extents import ExtentMap
from bitlab.block.qcow2_host import NONE, HostLayout
from bitlab.block.store import ImageFile, ImageStore, StoredBitmap

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def sessions(commands: list[str]) -> list[list[str]]:
    """qemu-io commands, one qemu-io run (the image opened anew) between ``--`` items."""
    out: list[list[str]] = [[]]
    for command in commands:
        if command == "--":
            out.append([])
        else:
            out[-1].append(command)
    return out


def sim_layout(create: list[str], commands: list[str], size: str = "1G") -> tuple[list[dict], str, int]:
    """qemu-io commands on a new image, as qemu-io opens it: (map entries holding data, check, file length)."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", *create, "a.qcow2", size)
    for session in sessions(commands):
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "n", "discard": "unmap",
                                "file": {"driver": "file", "filename": "a.qcow2"}})
        for command in session:
            vm.qmp("human-monitor-command", {"command-line": f'qemu-io n "{command}"'})
        vm.qmp("blockdev-del", {"node-name": "n"})
    entries = [e for e in json.loads(vm.qemu_img("map", "--output=json", "a.qcow2")) if e["data"]]
    return entries, vm.qemu_img("check", "a.qcow2"), vm.images["a.qcow2"].file_length()


def real_layout(tmp_path, create: list[str], commands: list[str], size: str = "1G") -> tuple[list[dict], str, int]:
    def run(*argv: str) -> str:
        return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=False).stdout

    run("qemu-img", "create", "-q", "-f", "qcow2", *create, "a.qcow2", size)
    for session in sessions(commands):
        run("qemu-io", "-f", "qcow2", *[a for c in session for a in ("-c", c)], "a.qcow2")
    entries = [e for e in json.loads(run("qemu-img", "map", "--output=json", "a.qcow2")) if e["data"]]
    return entries, run("qemu-img", "check", "a.qcow2"), (tmp_path / "a.qcow2").stat().st_size


def offsets(entries: list[dict]) -> list[tuple[int, int, int]]:
    """The data entries with a host offset (compressed clusters have none)."""
    return [(e["start"], e["length"], e["offset"]) for e in entries if "offset" in e]


# (create options, qemu-io commands, size) -> (start, length, host offset) of the data, check's last two
# lines, file length: from QEMU 7.2 (qemu-img map --output=json, qemu-img check, stat)
CASES = {
    # 300 compressed 4 KiB clusters (chunks of about 20 bytes, some across two host clusters), 250 of them
    # overwritten (new clusters; host cluster 5 loses its last chunk and is free: the next L2 table takes it),
    # 10 zeroed; refcounts and check as QEMU 7.2 counts them
    "compressed-freed": ((["-o", "cluster_size=4096"],
                          [f"write -c -P {i % 200 + 1} {i * 4}k 4k" for i in range(300)]
                          + ["write -P 7 0 1000k", "write -z 1080k 40k", "write -P 8 3M 64k", "write -P 9 3200k 4k"],
                          "4M"),
                         ([(0, 1024000, 28672), (3145728, 65536, 1052672), (3276800, 4096, 1118208)],
                          "307/1024 = 29.98% allocated, 13.03% fragmented, 13.03% compressed clusters\n"
                          "Image end offset: 1122304\n", 1122304)),
    "out-of-order": (([], ["write -P 1 1M 64k", "write -P 2 0 64k"], "1G"),
                     ([(0, 65536, 393216), (1048576, 65536, 327680)],
                      "2/16384 = 0.01% allocated, 50.00% fragmented, 0.00% compressed clusters\n"
                      "Image end offset: 458752\n", 458752)),
    "discard-then-reuse": (([], ["write -P 1 0 192k", "discard 64k 64k", "write -P 2 1M 128k", "write -P 3 2M 64k"],
                            "1G"),  # the freed cluster is too small for two; the next search starts past it
                           ([(0, 65536, 327680), (131072, 65536, 458752), (1048576, 131072, 524288),
                             (2097152, 65536, 655360)],
                            "5/16384 = 0.03% allocated, 20.00% fragmented, 0.00% compressed clusters\n"
                            "Image end offset: 720896\n", 720896)),
    "reopened-reuses": (([], ["write -P 1 0 192k", "discard 64k 64k", "write -P 2 1M 128k", "--",
                              "write -P 3 2M 64k"], "1G"),  # a new qemu-io searches from cluster 0 again
                        ([(0, 65536, 327680), (131072, 65536, 458752), (1048576, 131072, 524288),
                          (2097152, 65536, 393216)],
                         "5/16384 = 0.03% allocated, 40.00% fragmented, 0.00% compressed clusters\n"
                         "Image end offset: 655360\n", 655360)),
    "zero-unmap-frees": (([], ["write -P 1 0 128k", "write -z -u 0 64k", "write -P 3 1M 64k"], "1G"),
                         ([(65536, 65536, 393216), (1048576, 65536, 327680)],
                          "2/16384 = 0.01% allocated, 50.00% fragmented, 0.00% compressed clusters\n"
                          "Image end offset: 458752\n", 458752)),
    "zero-keeps-host-cluster": (([], ["write -P 1 0 128k", "write -z 0 64k", "write -P 3 0 64k", "write -P 4 1M 64k"],
                                 "1G"),
                                ([(0, 131072, 327680), (1048576, 65536, 458752)],
                                 "3/16384 = 0.02% allocated, 0.00% fragmented, 0.00% compressed clusters\n"
                                 "Image end offset: 524288\n", 524288)),
    "discard-gives-an-l2-table": (([], ["discard 0 64k"], "1G"), ([], "Image end offset: 327680\n", 327680)),
    "v2-zero-write": ((["-o", "compat=0.10"], ["write -z 600M 64k"], "1G"), ([], "Image end offset: 327680\n", 327680)),
    "v2-discard-then-reuse": ((["-o", "compat=0.10"], ["write -P 1 0 64k", "discard 0 64k", "write -P 2 1M 64k"], "1G"),
                              ([(1048576, 65536, 327680)],
                               "1/16384 = 0.01% allocated, 0.00% fragmented, 0.00% compressed clusters\n"
                               "Image end offset: 393216\n", 393216)),
    "l2-boundary-in-one-request": (([], ["write -P 1 511M 2M"], "1G"),
                                   ([(535822336, 1048576, 327680), (536870912, 1048576, 1441792)],
                                    "32/16384 = 0.20% allocated, 0.00% fragmented, 0.00% compressed clusters\n"
                                    "Image end offset: 2490368\n", 2490368)),
    "second-refcount-block": ((["-o", "cluster_size=512"], ["write -P 1 0 200k"], "64M"),  # 256 clusters a block
                              ([(0, 32768, 18432), (32768, 32768, 51712), (65536, 32768, 84992),
                                (98304, 32768, 118272), (131072, 32768, 152064), (163840, 32768, 185344),
                                (196608, 8192, 218624)],
                               "400/131072 = 0.31% allocated, 0.00% fragmented, 0.00% compressed clusters\n"
                               "Image end offset: 226816\n", 226816)),
    # qemu-img check counts a cluster fragmented where its host cluster does not follow the previous host cluster
    # of its L2 table, the unallocated entries between left out: the run written across the two tables (2044k)
    # leaves the second table's first cluster followed by the one at 2056k (check_refcounts_l2)
    "fragments-table-by-table": ((["-o", "cluster_size=4096"], ["write -P 1 0 4k", "write -P 2 2112k 4k",
                                                                 "write -P 3 2044k 8k", "write -P 4 2056k 4k"], "8M"),
                                 ([(0, 4096, 20480), (2093056, 8192, 32768), (2105344, 4096, 40960),
                                   (2162688, 4096, 28672)],
                                  "5/2048 = 0.24% allocated, 40.00% fragmented, 0.00% compressed clusters\n"
                                  "Image end offset: 45056\n", 45056)),
    # the last request's clusters of its second L2 table continue its first table's (qcow2_alloc_clusters_at)
    # and reach the first cluster no refcount block covers (256): the new block takes that cluster (the first
    # free one from free_cluster_index, the request's clusters counted so far in use), the rest follow it
    "refcount-block-inside-a-request": ((["-o", "cluster_size=512"], ["write -P 1 0 512", "write -P 2 36k 512",
                                                                       "write -P 3 1M 92k", "write -P 4 20k 20k"],
                                         "64M"),
                                        ([(0, 512, 18432), (20480, 15360, 115712), (35840, 1024, 131584),
                                          (36864, 512, 19456), (37376, 3584, 132608), (1048576, 32768, 20480),
                                          (1081344, 32768, 53760), (1114112, 28672, 87040)],
                                         "225/131072 = 0.17% allocated, 1.78% fragmented, 0.00% compressed clusters\n"
                                         "Image end offset: 136192\n", 136192)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_layout_as_qemu(case: str) -> None:
    (create, commands, size), (want_map, want_check, want_length) = CASES[case]
    entries, check, length = sim_layout(create, commands, size)
    assert offsets(entries) == want_map
    assert check.endswith(want_check)
    assert length == want_length


@pytest.mark.qemu
@pytest.mark.parametrize("case", list(CASES))
def test_layout_cases_are_qemus(tmp_path, case: str) -> None:
    """The numbers above are real QEMU's."""
    (create, commands, size), (want_map, want_check, want_length) = CASES[case]
    entries, check, length = real_layout(tmp_path, create, commands, size)
    assert (offsets(entries), check.endswith(want_check), length) == (want_map, True, want_length)


def test_v2_commit_discards_table_by_table() -> None:
    """qemu-img commit empties a v2 top by discarding every cluster, L2 table by L2 table: each stretch
    without a table gets one (in the clusters just freed first), and the file keeps growing (QEMU 7.2)."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "-o", "compat=0.10", "b.qcow2", "4G")
    vm.qemu_img("create", "-f", "qcow2", "-o", "compat=0.10", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": {"driver": "file", "filename": "t.qcow2"}})
    vm.qmp("human-monitor-command", {"command-line": 'qemu-io n "write -P 1 1M 64k"'})
    vm.qmp("human-monitor-command", {"command-line": 'qemu-io n "write -P 2 3G 64k"'})
    vm.qmp("blockdev-del", {"node-name": "n"})
    assert vm.qemu_img("check", "t.qcow2").endswith("Image end offset: 524288\n")
    vm.qemu_img("commit", "t.qcow2")
    assert vm.qemu_img("check", "t.qcow2") == "No errors were found on the image.\nImage end offset: 786432\n"
    assert vm.images["t.qcow2"].file_length() == 786432
    assert vm.qemu_img("check", "b.qcow2").endswith("Image end offset: 524288\n")


def _layout_of(clusters: int, writes: list[tuple[int, int, int]], *, batch: bool, holes: bool) -> HostLayout:
    """Writes ``(offset, length, value)`` on a fresh image (or one with freed clusters first), as one batch
    or flushed one by one."""
    cs = 65536
    layout = HostLayout(clusters * cs, cs)
    data = ExtentMap(clusters * cs)
    if holes:  # clusters 0-9 written, then 3-4 and 7 freed
        layout.before_merge(np.array([0]), np.array([10 * cs]), np.array([1]))
        layout.before_merge(np.array([3 * cs, 7 * cs]), np.array([5 * cs, 8 * cs]), np.array([-2, -2]))
    offs = np.array([w[0] for w in writes], dtype=np.int64)
    ends = offs + np.array([w[1] for w in writes], dtype=np.int64)
    vals = np.array([w[2] for w in writes], dtype=np.int64)
    if batch:
        layout.before_merge(offs, ends, vals)
    else:
        for i in range(offs.size):
            layout._request(int(offs[i] // cs), int(-(-ends[i] // cs))) if vals[i] >= 0 else \
                layout.before_merge(offs[i:i + 1], ends[i:i + 1], vals[i:i + 1])
    data.write_batch(offs, ends - offs, vals)
    return layout


@pytest.mark.parametrize("seed", range(6))
def test_batch_allocates_as_request_by_request(seed: int) -> None:
    """The cumulative-sum path gives what QEMU's request-by-request allocation gives: random writes
    (overlapping, partial clusters, across L2 tables, zero writes among them)."""
    rng = np.random.default_rng(seed)
    clusters = 3 * 8192  # three L2 tables
    cs = 65536
    writes = []
    for _ in range(300):
        off = int(rng.integers(0, clusters * cs - 4 * cs)) // 512 * 512
        writes.append((off, int(rng.choice([512, cs, 3 * cs, 2 * cs + 4096])), int(rng.choice([1, 2, -2]))))
    a = _layout_of(clusters, writes, batch=True, holes=False)
    b = _layout_of(clusters, writes, batch=False, holes=False)
    assert a.guest == b.guest and a.l2 == b.l2 and a.free == b.free and a.top == b.top
    assert (a.guest.extents()[2] != NONE).any()


def test_holes_are_filled_first_fit() -> None:
    """With freed clusters, a request takes the first hole it fits from free_cluster_index on: two
    clusters skip the one-cluster hole at 7 and take 3-4 (freed clusters lower the index)."""
    cs = 65536
    layout = _layout_of(8192, [(100 * cs, 2 * cs, 5), (200 * cs, cs, 6)], batch=True, holes=True)
    s, e, v = layout.hosted(100, 201)
    assert (s + v).tolist() == [3 + 5, 7 + 5]  # host clusters after the 5 of metadata and the L2 table


def test_million_cluster_batch_is_one_cumulative_sum() -> None:
    """1 TiB, 100,000 scattered clusters in one batch: every L2 table (2048) and data cluster once, in
    order, and refcount blocks every 32768 host clusters."""
    size = 1 << 40
    cs = 65536
    rng = np.random.default_rng(1)
    clusters = np.sort(rng.choice(size // cs, 100_000, replace=False))
    layout = HostLayout(size, cs)
    layout.before_merge(clusters * cs, clusters * cs + cs, np.full(clusters.size, 7))
    tables = np.unique(clusters // 8192).size
    meta = 4  # header, refcount table and block, L1 table (2048 entries: one cluster)
    assert layout.l2_count() == tables
    assert layout.refblocks == -(-layout.top // 32768) == 4  # 104,000-odd host clusters
    assert layout.top == meta + tables + clusters.size + layout.refblocks - 1
    assert layout.used_clusters() == layout.top
    s, e, v = layout.hosted()
    assert int((e - s).sum()) == clusters.size
    assert (s[1:] + v[1:] > s[:-1] + v[:-1]).all()  # in guest order, as written


# -- persistent bitmaps: their data clusters, tables and directory take host clusters too -------------

def bitmap_sessions(vm: Machine, remove: bool) -> list:
    """Three sessions on a 64 MiB image with persistent bitmaps (one set, one cleared, one of 512-byte
    granularity): qemu-img check and the data's host offsets after the second and third."""
    node = {"driver": "qcow2", "node-name": "n", "file": {"driver": "file", "filename": "b.qcow2"}}

    def data_map() -> list[tuple[int, int, int]]:
        return offsets([e for e in json.loads(vm.qemu_img("map", "--output=json", "b.qcow2")) if e["data"]])

    vm.qemu_img("create", "-q", "-f", "qcow2", "b.qcow2", "64M")
    vm.qmp("blockdev-add", node)
    vm.qmp("block-dirty-bitmap-add", {"node": "n", "name": "bm0", "persistent": True})
    vm.qmp("block-dirty-bitmap-add", {"node": "n", "name": "empty", "persistent": True, "granularity": 4096})
    vm.qmp("block-dirty-bitmap-add", {"node": "n", "name": "longer-name-than-that", "persistent": True,
                                      "granularity": 512})
    vm.write("n", 0, 65536, 1)
    vm.qmp("block-dirty-bitmap-clear", {"node": "n", "name": "empty"})
    vm.qmp("blockdev-del", {"node-name": "n"})
    out: list = [vm.qemu_img("check", "b.qcow2")]
    vm.qmp("blockdev-add", node)
    vm.write("n", 1 << 20, 65536, 2)
    if remove:  # removed at once: a new directory, the bitmap's clusters freed
        vm.qmp("block-dirty-bitmap-remove", {"node": "n", "name": "bm0"})
        vm.write("n", 3 << 20, 3 * 65536, 2)
    vm.qmp("block-dirty-bitmap-add", {"node": "n", "name": "bm1", "persistent": True})
    vm.write("n", 2 << 20, 65536, 2)
    vm.qmp("blockdev-del", {"node-name": "n"})
    out += [vm.qemu_img("check", "b.qcow2"), data_map()]
    vm.qmp("blockdev-add", node)  # opened again: the clusters freed on close are found from cluster 0 on
    vm.write("n", 5 << 20, 2 * 65536, 2)
    vm.write("n", 7 << 20, 65536, 2)
    vm.qmp("blockdev-del", {"node-name": "n"})
    return out + [vm.qemu_img("check", "b.qcow2"), data_map()]


def _check(allocated: str, end: int) -> str:
    return f"No errors were found on the image.\n{allocated}, 0.00% compressed clusters\nImage end offset: {end}\n"


BITMAP_SESSIONS = {  # QEMU 7.2 (qemu-storage-daemon), checked below
    False: [_check("1/1024 = 0.10% allocated, 0.00% fragmented", 786432),
            _check("3/1024 = 0.29% allocated, 33.33% fragmented", 1507328),
            [(0, 65536, 327680), (1048576, 65536, 786432), (2097152, 65536, 851968)],
            _check("6/1024 = 0.59% allocated, 33.33% fragmented", 1900544),
            [(0, 65536, 327680), (1048576, 65536, 786432), (2097152, 65536, 851968), (5242880, 131072, 393216),
             (7340032, 65536, 524288)]],
    True: [_check("1/1024 = 0.10% allocated, 0.00% fragmented", 786432),
           _check("6/1024 = 0.59% allocated, 50.00% fragmented", 1441792),
           [(0, 65536, 327680), (1048576, 65536, 786432), (2097152, 65536, 917504), (3145728, 196608, 589824)],
           _check("9/1024 = 0.88% allocated, 44.44% fragmented", 1835008),
           [(0, 65536, 327680), (1048576, 65536, 786432), (2097152, 65536, 917504), (3145728, 196608, 589824),
            (5242880, 131072, 393216), (7340032, 65536, 524288)]],
}


@pytest.mark.parametrize("remove", [False, True])
def test_persistent_bitmaps_take_host_clusters(remove: bool) -> None:
    """On close each bitmap is written anew (a cluster for each data cluster with a set bit, then its
    table: the node's newest first), then a new directory; the old directory and the bitmaps' old
    clusters are freed, and the next session's writes reuse them."""
    assert bitmap_sessions(Machine(), remove) == BITMAP_SESSIONS[remove]


@pytest.mark.qemu
@pytest.mark.parametrize("remove", [False, True])
def test_persistent_bitmap_layout_is_qemus(remove: bool) -> None:
    with Machine(backend="qemu") as real:
        assert bitmap_sessions(real, remove) == BITMAP_SESSIONS[remove]


def inconsistent_close(vm: Machine, remove: bool) -> list[str]:
    """Bitmaps left in use by a kill, loaded inconsistent, then the image closed: with nothing to write, QEMU
    leaves the bitmap directory where it is (need_write); a removal rewrites it at once."""
    node = {"driver": "qcow2", "node-name": "n", "file": {"driver": "file", "filename": "k.qcow2"}}
    vm.qemu_img("create", "-f", "qcow2", "k.qcow2", "8M")
    vm.qmp("blockdev-add", node)
    vm.qmp("block-dirty-bitmap-add", {"node": "n", "name": "x", "persistent": True})
    vm.qmp("block-dirty-bitmap-add", {"node": "n", "name": "y", "persistent": True, "disabled": True})
    vm.write("n", 0, 1 << 20, 5)
    vm = vm.restart()
    vm.qmp("blockdev-add", node)  # (in use from here on)
    vm = vm.restart(clean=False)
    vm.qmp("blockdev-add", node)
    if remove:
        vm.qmp("block-dirty-bitmap-remove", {"node": "n", "name": "x"})
    vm.qmp("blockdev-del", {"node-name": "n"})
    out = [vm.qemu_img("check", "k.qcow2"), vm.qemu_img("info", "k.qcow2").split("bitmaps:")[1]]
    getattr(vm, "close", lambda: None)()  # (a restarted real machine is not the one a with-block closes)
    return out


INCONSISTENT_CLOSE = {  # QEMU 7.2 (qemu-storage-daemon), checked below
    False: [_check("16/128 = 12.50% allocated, 0.00% fragmented", 1638400),
            "\n        [0]:\n            flags:\n                [0]: in-use\n            name: y\n"
            "            granularity: 65536\n        [1]:\n            flags:\n                [0]: in-use\n"
            "                [1]: auto\n            name: x\n            granularity: 65536\n"
            "    refcount bits: 16\n    corrupt: false\n    extended l2: false\n"],
    True: [_check("16/128 = 12.50% allocated, 0.00% fragmented", 1703936),
           "\n        [0]:\n            flags:\n                [0]: in-use\n            name: y\n"
           "            granularity: 65536\n    refcount bits: 16\n    corrupt: false\n    extended l2: false\n"],
}


@pytest.mark.parametrize("remove", [False, True])
def test_closing_with_only_inconsistent_bitmaps_writes_nothing(remove: bool) -> None:
    assert inconsistent_close(Machine(), remove) == INCONSISTENT_CLOSE[remove]


@pytest.mark.qemu
@pytest.mark.parametrize("remove", [False, True])
def test_closing_with_only_inconsistent_bitmaps_is_qemus(remove: bool) -> None:
    assert inconsistent_close(Machine(backend="qemu"), remove) == INCONSISTENT_CLOSE[remove]


def unstored_removal(vm: Machine, txn: bool) -> str:
    """A persistent bitmap removed before it was ever stored (by the command or in a transaction) leaves the
    image alone: on close the stored bitmap's new table and directory reuse the clusters freed last time."""
    node = {"driver": "qcow2", "node-name": "n", "file": {"driver": "file", "filename": "u.qcow2"}}
    vm.qemu_img("create", "-f", "qcow2", "u.qcow2", "8M")
    vm.qemu_img("bitmap", "--add", "u.qcow2", "kept")
    vm.qemu_img("bitmap", "--clear", "u.qcow2", "kept")  # (stored anew: the first table and directory freed)
    vm.qmp("blockdev-add", node)
    vm.qmp("block-dirty-bitmap-add", {"node": "n", "name": "new", "persistent": True})
    remove = {"node": "n", "name": "new"}
    if txn:
        vm.qmp("transaction", {"actions": [{"type": "block-dirty-bitmap-remove", "data": remove}]})
    else:
        vm.qmp("block-dirty-bitmap-remove", remove)
    vm.qmp("blockdev-del", {"node-name": "n"})
    return vm.qemu_img("check", "u.qcow2")


UNSTORED_REMOVAL = "No errors were found on the image.\nImage end offset: 393216\n"  # QEMU 7.2, checked below


@pytest.mark.parametrize("txn", [False, True])
def test_removing_an_unstored_bitmap_leaves_the_image(txn: bool) -> None:
    assert unstored_removal(Machine(), txn) == UNSTORED_REMOVAL


@pytest.mark.qemu
@pytest.mark.parametrize("txn", [False, True])
def test_removing_an_unstored_bitmap_is_qemus(txn: bool) -> None:
    with Machine(backend="qemu") as real:
        assert unstored_removal(real, txn) == UNSTORED_REMOVAL


def reused_tail(vm: Machine) -> list[int]:
    """The file's length (its node's virtual size) when its partly written last cluster (a bitmap directory)
    is freed and taken again by a data write: the file then ends where that cluster does."""
    node = {"driver": "qcow2", "node-name": "n", "file": {"driver": "file", "filename": "t.qcow2", "node-name": "f"}}
    vm.qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4096", "t.qcow2", "8M")
    vm.qmp("blockdev-add", node)
    vm.qmp("block-dirty-bitmap-add", {"node": "n", "name": "b", "persistent": True, "disabled": True})
    vm.qmp("blockdev-del", {"node-name": "n"})
    vm.qmp("blockdev-add", node)

    def length() -> int:
        return next(n["image"]["virtual-size"] for n in vm.qmp("query-named-block-nodes", {"flat": True})
                    if n["node-name"] == "f")

    out = [length()]
    vm.qmp("block-dirty-bitmap-remove", {"node": "n", "name": "b"})
    vm.write("n", 5 << 20, 4096, 7)
    return out + [length()]


def test_a_reused_last_cluster_is_written_whole() -> None:
    assert reused_tail(Machine()) == [20992, 24576]


@pytest.mark.qemu
def test_a_reused_last_cluster_is_qemus() -> None:
    with Machine(backend="qemu") as real:
        assert reused_tail(real) == [20992, 24576]


def test_an_image_made_from_content_is_laid_out_in_guest_order() -> None:
    """A copy of an image (its content only, as the machine's history keeps) gets the layout of clusters
    written in ascending guest order: here the same as the original's, zero clusters (keeping their host
    cluster or not) included."""
    import dataclasses

    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "a.qcow2", "1G")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": {"driver": "file", "filename": "a.qcow2"}})
    for offset in (0, 600 * MiB, 601 * MiB):
        vm.write("n", offset, 65536, 1)
    vm.qemu_io("n", "write -z 600M 64k")  # (keeps its host cluster)
    vm.qemu_io("n", "write -z 2M 128k")
    image = vm.images["a.qcow2"]
    copy = dataclasses.replace(image, data=image.data.copy())
    assert copy.layout is not image.layout
    assert copy.layout.guest == image.layout.guest
    assert copy.layout.zero_flag == image.layout.zero_flag
    assert copy.layout.zero_flag.runs()[0].tolist() == [0, 32, 34, 9600, 9601]
    assert copy.file_length() == image.file_length() == 589824  # L2, data, L2, two data after 4 clusters


def test_content_and_layout_agree_after_odd_zero_writes() -> None:
    """A zero run over the only written bytes of a cluster leaves it without data: the layout frees its
    host cluster (and a write into an unhosted cluster through ZERO_ALLOC gets one), whatever wrote it."""
    from bitlab.block.extents import ZERO, ZERO_ALLOC
    from bitlab.block.store import ImageStore

    image = ImageStore().create("a.qcow2", "qcow2", 1 << 30)
    image.data.write(0, 512, 7)
    image.data.write(65536, 512, 7)
    assert image.allocated_clusters() == 2
    image.data.write(0, 512, ZERO)
    assert image.allocated_clusters() == 1 and image.layout.used_clusters() == 6  # 4 + L2 + one data
    image.data.write(3 * 65536, 65536, ZERO_ALLOC)
    s, e, v = image.layout.hosted()
    assert list(zip(s.tolist(), e.tolist(), (s + v).tolist())) == [(1, 2, 6), (3, 4, 5)]


@pytest.mark.qemu
@pytest.mark.parametrize("seed", range(4))
def test_small_clusters_many_refcount_blocks_as_qemu(tmp_path, seed: int) -> None:
    """512-byte clusters (a refcount block every 256 host clusters): random writes out of order, discards,
    unmapping zero writes and reopens give QEMU's map, check and file length."""
    import random

    rng = random.Random(seed)
    commands = []
    for i in range(25):
        a, n = rng.randrange(0, 3000) * 512, rng.randrange(1, 120) * 512
        commands.append(rng.choice([f"write -P {i + 1} {a} {n}"] * 3 + [f"discard {a} {n}", f"write -z -u {a} {n}"]))
        if rng.random() < 0.1:
            commands.append("--")
    real = real_layout(tmp_path, ["-o", "cluster_size=512"], commands, "64M")
    sim = sim_layout(["-o", "cluster_size=512"], commands, "64M")
    assert real[2] > 256 * 512  # (past the first refcount block)
    assert (offsets(sim[0]), sim[1], sim[2]) == (offsets(real[0]), real[1], real[2])


def test_assigning_an_images_bitmaps_writes_its_directory() -> None:
    """``ImageFile.bitmaps`` is set through a descriptor: assigning it on a laid-out image writes a new bitmap
    directory (and frees the old), creating the image does not; reading it and every other field are plain."""
    image = ImageStore().create("a.qcow2", "qcow2", 64 << 20)
    assert image.bitmaps == [] and image.layout.directory is None and image.layout.top == 4
    image.bitmaps = [StoredBitmap("b", 65536, bitarray(1024))]
    first = image.layout.directory
    assert first is not None and [b.name for b in image.bitmaps] == ["b"]
    image.bitmaps = image.bitmaps + [StoredBitmap("c", 65536, bitarray(1024))]
    assert image.layout.directory not in (None, first)
    image.bitmaps = []
    assert image.layout.directory is None and image.bitmaps == []
    assert "bitmaps" in {f.name for f in dataclasses.fields(ImageFile)} and image.__dict__["bitmaps"] == []
    assert repr(image).count("bitmaps=[]") == 1 and image == copy.copy(image)
