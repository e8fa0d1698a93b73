"""qcow2 I/O reaching its file child at host offsets: dirty bitmaps on the file node (data and metadata
writes) and blkdebug ``sector`` rules, with QEMU 7.2's numbers (recorded with qemu-storage-daemon 7.2 and
qemu-system-x86_64 7.2, and compared with the running QEMU below)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from bitlab import Machine
from bitlab.block.qcow2_host import HostLayout

K, M = 1 << 10, 1 << 20


def file_bitmaps(vm: Machine, node: str = "f") -> list[tuple[str, int, str]]:
    """(name, count, sha256) of the bitmaps on ``node``, by name."""
    out = []
    for n in vm.qmp("query-named-block-nodes", {"flat": True}):
        if n["node-name"] == node:
            for b in n.get("dirty-bitmaps", []):
                sha = vm.qmp("x-debug-block-dirty-bitmap-sha256", {"node": node, "name": b["name"]})["sha256"]
                out.append((b["name"], b["count"], sha))
    return sorted(out)


def guest_writes(vm: Machine, commands: list[str]) -> list[tuple[str, int, str]]:
    """A new 1 GiB image opened with a named file node ``f`` holding bitmaps of 512 bytes and 64 KiB
    granularity; qemu-io commands on the qcow2 node ("clear": both bitmaps cleared; "v2" first: a v2 image,
    ``-o compat=0.10``, "backing" first: over an empty backing file; "unmap" first (after them): the qcow2
    node has discard=unmap, which its file node inherits)."""
    v2, backing = commands[:1] == ["v2"], commands[:1] == ["backing"]
    commands = commands[1:] if v2 or backing else commands
    if backing:
        vm.qemu_img("create", "-f", "qcow2", "b.qcow2", "1G")
    vm.qemu_img("create", "-f", "qcow2", *(["-o", "compat=0.10"] if v2 else []),
                *(["-b", "b.qcow2", "-F", "qcow2"] if backing else []), "a.qcow2", "1G")
    unmap = {"discard": "unmap"} if commands[:1] == ["unmap"] else {}
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "n", **unmap,
                            "file": {"driver": "file", "filename": "a.qcow2", "node-name": "f"}})
    commands = commands[1:] if unmap else commands
    for g in (512, 65536):
        vm.qmp("block-dirty-bitmap-add", {"node": "f", "name": f"g{g}", "granularity": g})
    for command in commands:
        if command == "clear":
            for g in (512, 65536):
                vm.qmp("block-dirty-bitmap-clear", {"node": "f", "name": f"g{g}"})
        else:
            vm.qemu_io("n", command)
    return file_bitmaps(vm)


# commands -> ((count at 512 bytes, sha256), (count at 64 KiB, sha256)), from QEMU 7.2
GUEST_CASES = {
    # refcount block (cluster 2, flushed by l2_allocate), the L1 entry (8 bytes in cluster 3), the L2
    # table (4), three data clusters (5-7, written whole: zeroes around the data): 6 clusters at 64 KiB
    "fresh-three-writes": (["write -P 1 0 4k", "write -P 2 1M 4k", "write -P 3 2M 4k"],
                           (328192, "f3cc0ce14a497b4692fe44ee16897f552daabecb448930759c5cb81acc5212d4"),
                           (393216, "a2711478a8193e4e8a8d38570d07cfc4ee4fbe0bfc0a5ba6def691a01c59cc8b")),
    # a data cluster in an existing table: the table and refcount block stay dirty in the caches
    "cached": (["write -P 1 0 4k", "clear", "write -P 2 1M 4k"],
               (65536, "55ce4d1ecab71e1f8e4f06a2e03a127e686cbefbfa9cdbf25115a14e84a97fb0"),
               (65536, "a06f129fc52abf6085679d7cd71dc41ec7580c7f5f73efef6d02dde22bb00994")),
    # ... until a flush writes them back
    "cached-flushed": (["write -P 1 0 4k", "clear", "write -P 2 1M 4k", "flush"],
                       (196608, "207eca5d250444063c58b0a006fca52f33c7711895eb9d8490e427ed7685a89c"),
                       (196608, "e398142931ca52d61ce08a16f68f29270fd272253bf84b7bc800899efb5698ca")),
    # a new L2 table writes back every dirty table (the first one too) and the refcount block
    "new-table": (["write -P 1 0 4k", "clear", "write -P 2 512M 4k"],
                  (262656, "96c8431c0f5a291823339b74f515b5876be741303f62082ae411d0a1aa0199d7"),
                  (327680, "ec6cd88b4b12a4f2fbbb68cc8cb8c27d0b6a65f2dd214a7e5af5babb7988553b")),
    # an in-place write: its bytes only, at the host offset
    "in-place": (["write -P 1 0 4k", "clear", "write -P 2 1000 8000"],
                 (8704, "7cf5de4e5e69afd4b1af502975b25f4b5fe7d9ea5a7496b6c0a538938a26ea28"),
                 (65536, "9d4ac218fb54041e3a70a8e14db1ea1af9f570f4842b4702ef9323f1ad8f0ec4")),
    # ... and a flush after it writes nothing more: no refcount changed, no table entry either
    "in-place-flushed": (["write -P 1 0 4k", "flush", "clear", "write -P 2 1000 8000", "flush"],
                         (8704, "7cf5de4e5e69afd4b1af502975b25f4b5fe7d9ea5a7496b6c0a538938a26ea28"),
                         (65536, "9d4ac218fb54041e3a70a8e14db1ea1af9f570f4842b4702ef9323f1ad8f0ec4")),
    "in-place-second-cluster-flushed": (["write -P 1 0 128k", "flush", "clear", "write -P 2 64k 4k", "flush"],
                                        (4096, "6ae4677dbf8efa0cc7c04b72a478851177ed1d1e58cba6683d300e9d8b52dcf8"),
                                        (65536, "a06f129fc52abf6085679d7cd71dc41ec7580c7f5f73efef6d02dde22bb00994")),
    # a zero write changes the table only (written back by the flush, with the refcount block)
    "zero-flushed": (["write -P 1 0 4k", "clear", "write -z 64k 64k", "flush"],
                     (131072, "cd02c0ea4c41fe48ef1ae448764c28e4dcc1235c535811a82469d55df9081982"),
                     (131072, "0c27700c82d333aa295692f1814040a962d7bc530253af661d97635dd5ed7af9")),
    # a freed cluster: lowering a refcount makes the refcount cache depend on the L2 cache, which
    # depended on it: the dirty refcount block is written at once; the data cluster's discard reaches
    # the file (discard=unmap inherited)
    "discard": (["unmap", "write -P 1 0 128k", "clear", "discard 0 64k"],
                (131072, "47c4dc112718e77156bcec60cb743131136340702c68223716ab23cf29478210"),
                (131072, "dd3168a635e962767dc4501dcef1d88bdfd9825d9c5a55d01dff715e7da9b5ec")),
    "zero-unmap-flushed": (["unmap", "write -P 1 0 128k", "clear", "write -z -u 0 64k", "flush"],
                (196608, "6d33289e037b5830035181a2d5269ebe0aff70b93be07b73203a37175b291cb3"),
                (196608, "dcbe298920b50037fcfb8dda1e57ad49eeeedd8e0ddafc2deed4902c1bc11d3a")),
    "discard-then-new-table": (["unmap", "write -P 1 0 128k", "write -P 1 1M 64k", "clear", "discard 0 64k",
                                "write -P 2 700M 64k", "discard 1M 64k", "flush"],
                (328192, "7c44cba24ca318449918d93acc4f2441f8324da4b56d6f41caf870a98be72e7c"),
                (393216, "2533f740b831c94814a9f7e0a99df2826c6ce5559eb0546c2e3c5e3c6d892feb")),
    # zero_in_l2_slice changes an L2 entry, and dirties its table, only where the entry changes: over zero
    # clusters (with -u too; a partial zero write over one makes it a zero cluster again) the flush writes
    # nothing; over data the zero flag is set (the cluster kept) and the table written; over unallocated
    # clusters (in a v3 image) the flag is set too
    "zero-over-zero-flushed": (["write -z 0 64k", "flush", "clear", "write -z 0 64k", "flush"],
                (0, "5b6fb58e61fa475939767d68a446f97f1bff02c0e5935a3ea8bb51e6515783d8"),
                (0, "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc")),
    "zero-unmap-over-zero-flushed": (["write -z 0 64k", "flush", "clear", "write -z -u 0 64k", "flush"],
                (0, "5b6fb58e61fa475939767d68a446f97f1bff02c0e5935a3ea8bb51e6515783d8"),
                (0, "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc")),
    "zero-part-over-zero-flushed": (["write -z 64k 64k", "flush", "clear", "write -z 68k 4k", "flush"],
                (0, "5b6fb58e61fa475939767d68a446f97f1bff02c0e5935a3ea8bb51e6515783d8"),
                (0, "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc")),
    "zero-over-zero-alloc-flushed": (["write -P 1 0 128k", "write -z 0 64k", "flush", "clear", "write -z 0 64k",
                                      "flush"],
                (0, "b5fdab78d8947eacc864bfeecb4d2100780e5afe1cd8efafb124887913ac49fa"),
                (0, "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc")),
    "zero-over-data-flushed": (["write -P 1 0 128k", "flush", "clear", "write -z 0 64k", "flush"],
                (65536, "bd8b02158324a6c4b3a24b9eaabb41a43007ee7df42441a1fdb76bdbcde48de6"),
                (65536, "5eb6da0e0e522104c6d50b0748e6893762f7f2c00a7163a46ccbb535bfd61a0d")),
    "zero-part-over-unallocated-flushed": (["write -P 1 0 4k", "flush", "clear", "write -z 64k 4k", "flush"],
                (65536, "a202621aff10ecdaaaceaae08099720a9be17e5a002f09786c44020529f0725e"),
                (65536, "5eb6da0e0e522104c6d50b0748e6893762f7f2c00a7163a46ccbb535bfd61a0d")),
    # one zero write over data, zero and zero-keeping clusters, unallocated ones: their table; two zero
    # writes over the same cluster, one over a new table, before one flush
    "zero-over-mixed-flushed": (["write -P 1 0 64k", "write -z 64k 64k", "write -P 1 128k 64k", "write -z 128k 64k",
                                 "flush", "clear", "write -z 0 320k", "flush"],
                (65536, "bd8b02158324a6c4b3a24b9eaabb41a43007ee7df42441a1fdb76bdbcde48de6"),
                (65536, "5eb6da0e0e522104c6d50b0748e6893762f7f2c00a7163a46ccbb535bfd61a0d")),
    "zero-over-zero-clusters-flushed": (["write -P 1 0 64k", "write -z 64k 64k", "write -P 1 128k 64k",
                                         "write -z 128k 64k", "flush", "clear", "write -z 64k 128k", "flush"],
                (0, "b5fdab78d8947eacc864bfeecb4d2100780e5afe1cd8efafb124887913ac49fa"),
                (0, "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc")),
    "zero-twice-flushed": (["write -P 1 0 128k", "flush", "clear", "write -z 0 64k", "write -z 0 64k",
                            "write -z 1M 64k", "flush"],
                (65536, "bd8b02158324a6c4b3a24b9eaabb41a43007ee7df42441a1fdb76bdbcde48de6"),
                (65536, "5eb6da0e0e522104c6d50b0748e6893762f7f2c00a7163a46ccbb535bfd61a0d")),
    # a data write into a zero cluster keeping its host cluster: written whole in place, its entry
    # changed (qcow2_alloc_cluster_link_l2), the table written by the flush
    "data-over-zero-alloc-flushed": (["write -P 1 0 128k", "write -z 0 64k", "flush", "clear", "write -P 2 0 4k",
                                      "flush"],
                (131072, "54570ba419f578e5b1dbe44a4fffbbb4310eeba9b409b6df438bcfe2c18fb993"),
                (131072, "4779cee98e83f1a1592de4f293107545fabab96772e43de89f3437b35f08938f")),
    # discard_in_l2_slice likewise: over an unallocated cluster (no backing file) or a zero cluster
    "discard-unallocated-flushed": (["unmap", "write -P 1 0 4k", "flush", "clear", "discard 64k 64k", "flush"],
                (0, "2ea9ab9198d1638007400cd2c3bef1cc745b864b76011a0e1bc52180ac6452d4"),
                (0, "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc")),
    "discard-zero-flushed": (["unmap", "write -z 0 128k", "flush", "clear", "discard 64k 64k", "flush"],
                (0, "5b6fb58e61fa475939767d68a446f97f1bff02c0e5935a3ea8bb51e6515783d8"),
                (0, "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc")),
    # over a backing file a discard leaves a zero cluster: an unallocated cluster changes, a zero one not
    "backing-discard-unallocated-flushed": (["backing", "unmap", "write -P 1 0 4k", "flush", "clear",
                                             "discard 64k 64k", "flush"],
                (65536, "a202621aff10ecdaaaceaae08099720a9be17e5a002f09786c44020529f0725e"),
                (65536, "5eb6da0e0e522104c6d50b0748e6893762f7f2c00a7163a46ccbb535bfd61a0d")),
    "backing-discard-zero-flushed": (["backing", "unmap", "write -z 0 128k", "flush", "clear", "discard 64k 64k",
                                      "flush"],
                (0, "5b6fb58e61fa475939767d68a446f97f1bff02c0e5935a3ea8bb51e6515783d8"),
                (0, "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc")),
    "backing-zero-over-zero-flushed": (["backing", "write -z 0 128k", "flush", "clear", "write -z 64k 64k", "flush"],
                (0, "5b6fb58e61fa475939767d68a446f97f1bff02c0e5935a3ea8bb51e6515783d8"),
                (0, "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc")),
    # a v2 image: a zero write is a discard, leaving unallocated clusters as they are and freeing data ones
    "v2-zero-over-unallocated-flushed": (["v2", "write -P 1 0 4k", "flush", "clear", "write -z 64k 64k", "flush"],
                (0, "2ea9ab9198d1638007400cd2c3bef1cc745b864b76011a0e1bc52180ac6452d4"),
                (0, "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc")),
    "v2-zero-over-data-flushed": (["v2", "write -P 1 0 128k", "flush", "clear", "write -z 0 64k", "flush"],
                (131072, "4c8cb45ce5f61b26d9d02e511ede466f14e525c7857e4ec84ba3fd4c35a02110"),
                (131072, "0c27700c82d333aa295692f1814040a962d7bc530253af661d97635dd5ed7af9")),
    # without unmap the discard is ignored; the file node sees nothing
    "discard-ignored": (["write -P 1 0 128k", "clear", "discard 0 64k"],
                (0, "b5fdab78d8947eacc864bfeecb4d2100780e5afe1cd8efafb124887913ac49fa"),
                (0, "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc")),
    # Force Unit Access: qcow2 does not support it, so the block layer flushes the node after the write,
    # writing back the L2 table and refcount block (the same bytes as "cached-flushed" / "zero-flushed")
    "fua-write": (["write -P 1 0 4k", "clear", "write -f -P 2 1M 4k"],
                  (196608, "207eca5d250444063c58b0a006fca52f33c7711895eb9d8490e427ed7685a89c"),
                  (196608, "e398142931ca52d61ce08a16f68f29270fd272253bf84b7bc800899efb5698ca")),
    "fua-writev": (["write -P 1 0 4k", "clear", "writev -f -P 2 1M 2k 2k"],
                   (196608, "207eca5d250444063c58b0a006fca52f33c7711895eb9d8490e427ed7685a89c"),
                   (196608, "e398142931ca52d61ce08a16f68f29270fd272253bf84b7bc800899efb5698ca")),
    "fua-zero": (["write -P 1 0 4k", "clear", "write -f -z 1M 64k"],
                 (131072, "cd02c0ea4c41fe48ef1ae448764c28e4dcc1235c535811a82469d55df9081982"),
                 (131072, "0c27700c82d333aa295692f1814040a962d7bc530253af661d97635dd5ed7af9")),
}


@pytest.mark.parametrize("case", sorted(GUEST_CASES))
def test_file_node_bitmaps_see_host_offsets(case):
    commands, (c512, s512), (c64, s64) = GUEST_CASES[case]
    assert guest_writes(Machine(), commands) == [("g512", c512, s512), ("g65536", c64, s64)]


@pytest.mark.qemu
@pytest.mark.parametrize("case", sorted(GUEST_CASES))
def test_file_node_bitmaps_match_real_qemu(case):
    with Machine(backend="qemu") as real:
        want = guest_writes(real, GUEST_CASES[case][0])
    assert guest_writes(Machine(), GUEST_CASES[case][0]) == want


def random_zero_commands(seed: int) -> list[str]:
    """qemu-io commands for :func:`guest_writes`: a v2 image, a backing file or discard=unmap at times; writes,
    zero writes (``-u`` or not) and discards over two L2 tables, whole clusters or not; then a flush, the
    bitmaps cleared, and mostly zero writes and discards, each table dirty or clean as they leave it."""
    rng = random.Random(seed)
    out = ["v2"] if rng.random() < 0.2 else ["backing"] if rng.random() < 0.25 else []
    out += ["unmap"] if rng.random() < 0.5 else []
    n = rng.randint(3, 14)
    for i in range(n):
        if i == n // 2:
            out += ["flush", "clear"]
        kind = rng.choices(["write -P 7", "write -z", "write -z -u", "discard", "flush", "clear"],
                           [5, 4, 2, 2, 2, 1] if i < n // 2 else [1, 5, 2, 2, 1, 0])[0]
        table = rng.choice([0, 0, 0, 512 * 1024])  # (KiB: the first table, or the second)
        if rng.random() < 0.6:
            offset, length = table + 64 * rng.randint(0, 6), 64 * rng.randint(1, 3)
        else:
            offset, length = table + 4 * rng.randint(0, 100), 4 * rng.randint(1, 40)
        out.append(kind if kind in ("flush", "clear") else f"{kind} {offset}k {length}k")
    return out + ["flush"]


@pytest.mark.qemu
@pytest.mark.parametrize("seed", range(60))
def test_random_zero_writes_dirty_what_real_qemu_does(seed):
    commands = random_zero_commands(seed)
    with Machine(backend="qemu") as real:
        want = guest_writes(real, commands)
    assert guest_writes(Machine(), commands) == want


def small_cluster_writes(vm: Machine, cluster_size: int, commands: list[str]) -> list[list[tuple[str, int, str]]]:
    """A 64 MiB image of small clusters (a refcount block covers 8 MiB of file at 4 KiB, 128 KiB at 512 bytes),
    opened with discard=unmap over a file node with a 512-byte bitmap; qemu-io commands ("clear": the bitmap
    cleared); the bitmap after each flush."""
    vm.qemu_img("create", "-f", "qcow2", "-o", f"cluster_size={cluster_size}", "a.qcow2", "64M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "n", "discard": "unmap",
                            "file": {"driver": "file", "filename": "a.qcow2", "node-name": "f"}})
    vm.qmp("block-dirty-bitmap-add", {"node": "f", "name": "b", "granularity": 512})
    out = []
    for command in commands:
        if command == "clear":
            vm.qmp("block-dirty-bitmap-clear", {"node": "f", "name": "b"})
        else:
            vm.qemu_io("n", command)
        if command == "flush":
            out.append(file_bitmaps(vm))
    return out


def test_a_new_refcount_block_writes_its_refcount_table_entry():
    # 9 MiB of data in one request at 4 KiB clusters: the second refcount block, hooked up in the refcount
    # table (8 bytes, a sector of the file's second cluster), then the flush
    got = small_cluster_writes(Machine(), 4096, ["write -P 1 0 9M", "flush", "clear", "write -z 0 9M", "flush"])
    assert got == [[("b", 9466880, "a0b522d88da9b84ce606fe9a5844b5ec3bc2f3f6eb81abdeccec50bc1bf7241e")],
                   [("b", 20480, "d3b3abc91819911c92b5fc230cf2fe9414f47336666ec6420f43415ab772eac3")]]


def random_small_cluster_commands(seed: int) -> tuple[int, list[str]]:
    """A cluster size (4 KiB or 512 bytes) and qemu-io commands for :func:`small_cluster_writes`: writes, zero
    writes and discards over four L2 tables' worth of clusters, some of them long enough to need new
    refcount blocks; a flush and the bitmap cleared halfway."""
    rng = random.Random(seed)
    cs = rng.choice([4096, 512])
    span = cs // 8 * cs  # (bytes an L2 table maps)
    out = []
    n = rng.randint(4, 16)
    for i in range(n):
        if i == n // 2:
            out += ["flush", "clear"]
        kind = rng.choices(["write -P 7", "write -z", "write -z -u", "discard", "flush"], [4, 4, 2, 2, 1])[0]
        offset = rng.randint(0, 3) * span + rng.randint(0, 40) * (cs // 2)
        length = rng.randint(1, 30) * (cs // 2) if rng.random() < 0.7 else rng.randint(1, 3) * span
        out.append(kind if kind == "flush" else f"{kind} {offset} {length}")
    return cs, out + ["flush"]


@pytest.mark.qemu
@pytest.mark.parametrize("seed", range(40))
def test_random_small_cluster_writes_match_real_qemu(seed):
    cs, commands = random_small_cluster_commands(seed)
    with Machine(backend="qemu") as real:
        want = small_cluster_writes(real, cs, commands)
    assert small_cluster_writes(Machine(), cs, commands) == want


def closed_over_file_node(vm: Machine) -> list[tuple[str, int, str]]:
    """blockdev-del of a qcow2 node over a file node of its own: closing flushes the caches."""
    vm.qemu_img("create", "-f", "qcow2", "t.qcow2", "64M")
    vm.qmp("blockdev-add", {"driver": "file", "node-name": "f", "filename": "t.qcow2"})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "tgt", "file": "f"})
    vm.qemu_io("tgt", "write -P 9 0 4k")
    vm.qmp("block-dirty-bitmap-add", {"node": "f", "name": "b", "granularity": 512})
    vm.qemu_io("tgt", "write -P 9 1M 4k")
    vm.qmp("blockdev-del", {"node-name": "tgt"})
    return file_bitmaps(vm)


def test_closing_writes_back_the_caches():
    assert closed_over_file_node(Machine()) == [
        ("b", 196608, "207eca5d250444063c58b0a006fca52f33c7711895eb9d8490e427ed7685a89c")]


def _backup_story(vm: Machine, size: str, source: list[str], target: list[str],
                  granularity: int) -> list[list[tuple[str, int, str]]]:
    """qemu-io ``source`` commands into a new qcow2 ``src``, ``target`` ones into ``tgt`` (its file node ``f``
    then gets bitmap ``b``), a one-worker full backup: the bitmaps after the job, then after a flush."""
    for name in ("src", "t"):
        vm.qemu_img("create", "-f", "qcow2", f"{name}.qcow2", size)
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "src", "file": {"driver": "file",
                                                                            "filename": "src.qcow2"}})
    for command in source:
        vm.qemu_io("src", command)
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "tgt",
                            "file": {"driver": "file", "filename": "t.qcow2", "node-name": "f"}})
    for command in target:
        vm.qemu_io("tgt", command)
    vm.qmp("block-dirty-bitmap-add", {"node": "f", "name": "b", "granularity": granularity})
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "src", "target": "tgt", "sync": "full",
                               "x-perf": {"max-workers": 1}})
    vm.run()
    out = [file_bitmaps(vm)]
    vm.qemu_io("tgt", "flush")
    return out + [file_bitmaps(vm)]


def backup_to_watched_target(vm: Machine) -> list[list[tuple[str, int, str]]]:
    """A backup into a qcow2 target whose file node has bitmaps: after the job, after a flush."""
    return _backup_story(vm, "64M", [f"write -P 5 {off} {ln}" for off, ln in
                                     ((0, 4096), (3 * M, 200 * K), (40 * M, 64 * K), (7 * M + 512, 1000))],
                         ["write -P 9 0 4k"], 512)


def test_backup_writes_target_clusters_at_host_offsets_and_leaves_caches_dirty():
    assert backup_to_watched_target(Machine()) == [
        [("b", 458752, "16dc139a7b82a0526962b52bb3567f221afa2443c540d84b2dd8a29f713d3872")],
        [("b", 589824, "159a9398120ec7b15d26b06f681b4dfc3160a45dcd1969efb85fd386f4785b96")]]


def backup_into_zeroed_target(vm: Machine) -> list[list[tuple[str, int, str]]]:
    """A backup into a 2 GiB target that is zero clusters throughout (four L2 tables, one cluster keeping its
    host cluster): block-copy's zero writes change no entry, its data writes the tables they land in."""
    return _backup_story(vm, "2G", ["write -P 5 0 128k", "write -P 6 1100M 64k", "write -z 1500M 128k"],
                         ["write -P 9 1100M 64k", "write -z 0 1G", "write -z 1G 1G", "flush"], 65536)


def test_backup_zero_writes_leave_zero_clusters_tables_clean():
    # the data clusters (0-1 new, 1100M in place), then the flush: the refcount block and the two tables
    # whose entries changed (guest 0's, and 1100M's, whose zero cluster became data again)
    assert backup_into_zeroed_target(Machine()) == [
        [("b", 196608, "3b22912804dbca700648fcf20db6e972c2a7826e905793acc99f8e819e940a36")],
        [("b", 393216, "6c02fc28dad4c39eca457924c43b3894c23584eceecb35c52008ea848aa2c8c2")]]


def zeroed_after_convert(vm: Machine) -> list[list[tuple[str, int, str]]]:
    """An image qemu-img convert wrote, opened (its caches empty: qemu-img wrote them back on closing it), then
    zero writes over its unallocated clusters, each flushed: each writes its table only."""
    vm.qemu_img("create", "-f", "qcow2", "s.qcow2", "1G")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "s", "file": {"driver": "file", "filename": "s.qcow2"}})
    for command in ("write -z 0 128k", "write -P 1 1M 64k", "write -P 1 2M 64k", "write -z 2M 64k"):
        vm.qemu_io("s", command)
    vm.qmp("blockdev-del", {"node-name": "s"})
    vm.qemu_img("convert", "-O", "qcow2", "s.qcow2", "d.qcow2")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "n",
                            "file": {"driver": "file", "filename": "d.qcow2", "node-name": "f"}})
    vm.qmp("block-dirty-bitmap-add", {"node": "f", "name": "b", "granularity": 512})
    out = []
    for command in ("write -z 0 64k", "write -z 2M 64k"):
        vm.qemu_io("n", command)
        vm.qemu_io("n", "flush")
        out.append(file_bitmaps(vm))
    return out


def test_an_image_is_opened_with_empty_caches():
    # (the table at host cluster 4, bytes 262144-327679 at 512-byte granularity, both times)
    sha = "a202621aff10ecdaaaceaae08099720a9be17e5a002f09786c44020529f0725e"
    assert zeroed_after_convert(Machine()) == [[("b", 65536, sha)], [("b", 65536, sha)]]


@pytest.mark.qemu
@pytest.mark.parametrize("play", [closed_over_file_node, backup_to_watched_target, backup_into_zeroed_target,
                                  zeroed_after_convert])
def test_flushes_and_jobs_match_real_qemu(play):
    with Machine(backend="qemu") as real:
        want = play(real)
    assert play(Machine()) == want


def blkdebug_sectors(vm: Machine, rule: dict) -> list[str]:
    """qcow2 over blkdebug with one inject-error rule: which qemu-io commands fail."""
    vm.qemu_img("create", "-f", "qcow2", "a.qcow2", "1G")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": {
        "driver": "blkdebug", "inject-error": [rule], "image": {"driver": "file", "filename": "a.qcow2"}}})
    out = []
    for command in ("write -P 1 1M 64k", "write -P 2 0 4k", "write -P 3 4k 4k", "read -P 1 1M 64k",
                    "read -P 2 0 4k", "read -P 3 4k 4k", "read 60k 8k"):
        text = vm.qemu_io("n", command)
        out.append(f"{command}: {'failed' if 'failed' in text else 'ok'}")
    return out


# host clusters: L2 table 4 (sectors 512-639), guest 1M at 5 (640-767), guest 0 at 6 (768-895)
SECTOR_CASES = {
    "read-guest-0": {"event": "read_aio", "sector": 770, "iotype": "read"},
    "read-guest-1M": {"event": "read_aio", "sector": 700, "iotype": "read"},
    "write-data": {"event": "write_aio", "sector": 770, "iotype": "write"},
    "write-around-data": {"event": "write_aio", "sector": 832, "iotype": "write"},  # the zeroes around it
    "metadata-sector": {"event": "write_aio", "sector": 520},  # in the L2 table: metadata is not checked
}
SECTOR_RESULTS = {  # from QEMU 7.2
    "read-guest-0": ["ok", "ok", "ok", "ok", "failed", "ok", "ok"],
    "read-guest-1M": ["ok", "ok", "ok", "failed", "ok", "ok", "ok"],
    "write-data": ["ok", "failed", "ok", "ok", "failed", "ok", "ok"],  # (read -P 2 0 4k: pattern mismatch)
    "write-around-data": ["ok"] * 7,
    "metadata-sector": ["ok"] * 7,
}


@pytest.mark.parametrize("case", sorted(SECTOR_CASES))
def test_blkdebug_sector_rules_match_host_sectors(case):
    got = [line.rsplit(": ", 1)[1] for line in blkdebug_sectors(Machine(), SECTOR_CASES[case])]
    assert got == SECTOR_RESULTS[case]


@pytest.mark.qemu
@pytest.mark.parametrize("case", sorted(SECTOR_CASES))
def test_blkdebug_sector_rules_match_real_qemu(case):
    with Machine(backend="qemu") as real:
        want = blkdebug_sectors(real, SECTOR_CASES[case])
    assert blkdebug_sectors(Machine(), SECTOR_CASES[case]) == want


# -- the layout's bookkeeping ---------------------------------------------------------------------
def test_host_pieces_split_where_host_clusters_stop_being_contiguous():
    layout = HostLayout(1 << 30, 65536)
    layout._request(16, 17)  # L2 table at 4, guest cluster 16 at 5
    layout._request(0, 2)  # guest clusters 0-1 at 6-7
    idx, host, n = layout.host_pieces(np.array([100, 16 * 65536]), np.array([3 * 65536, 16 * 65536 + 10]))
    assert idx.tolist() == [0, 1]  # cluster 2 has no host cluster
    assert host.tolist() == [6 * 65536 + 100, 5 * 65536]
    assert n.tolist() == [2 * 65536 - 100, 10]
    idx, host, n = layout.host_pieces(np.array([15 * 65536]), np.array([18 * 65536]))
    assert (idx.tolist(), host.tolist(), n.tolist()) == ([0], [5 * 65536], [65536])


def _cluster_set(offsets: np.ndarray, lengths: np.ndarray, cs: int) -> set[int]:
    out: set[int] = set()
    for o, n in zip(offsets.tolist(), lengths.tolist()):
        out.update(range(o // cs, -(-(o + n) // cs)))
    return out


@pytest.mark.parametrize("cs", [4096, 512])
@pytest.mark.parametrize("seed", range(40))
def test_batch_path_writes_back_what_requests_one_by_one_do(seed, cs):
    """The cumulative-sum path (a batch of requests into a file without holes) places the clusters, leaves
    the caches and writes the clusters the request-by-request path does; with 512-byte clusters across
    several refcount blocks (256 host clusters each), some placed inside a request's allocation."""
    rng = np.random.default_rng(seed)
    size = 64 * M  # 4 KiB: 512 clusters per L2 table, 2048 per refcount block; 512 B: 64 and 256
    n = int(rng.integers(1, 40) if cs == 4096 else rng.integers(30, 80))
    longest = 40 if cs == 4096 else int(rng.choice([100, 700]))
    c0 = rng.integers(0, (size // cs - longest) if cs == 4096 else 6000, n)
    c1 = c0 + rng.integers(1, longest, n)
    zero = rng.random(n) < 0.2
    # (as before_merge gives _batch: no zero write meets an earlier request, no data write an earlier zero write)
    keep = [i for i in range(n) if not any(c0[j] < c1[i] and c0[i] < c1[j] and (zero[i] or zero[j]) for j in range(i))]
    c0, c1, zero = c0[keep], c1[keep], zero[keep]
    a, b = HostLayout(size, cs), HostLayout(size, cs)
    a._batch(c0, c1, ~zero, zero)
    for lo, hi, z in zip(c0.tolist(), c1.tolist(), zero.tolist()):
        if z:
            b.zero_request(lo, hi, lo, lo)
        else:
            b._request(lo, hi)
    assert a.end_cluster() == b.end_cluster()
    assert a.guest == b.guest and a.l2 == b.l2 and a.free == b.free
    assert a.refblock_hosts == b.refblock_hosts
    assert cs == 4096 or a.refblocks > 2
    assert a.dirty_l2 == b.dirty_l2
    assert a.dirty_refblocks == b.dirty_refblocks
    assert a.depends == b.depends
    assert _cluster_set(*a.drain_written(), cs) == _cluster_set(*b.drain_written(), cs)
    a.flush()
    b.flush()
    assert _cluster_set(*a.drain_written(), cs) == _cluster_set(*b.drain_written(), cs)


@pytest.mark.qemu
def test_fua_writes_match_the_system_emulator():
    """HMP qemu-io's FUA writes (the GUEST_CASES test above sends them over NBD, with NBD's FUA flag)."""
    for commands, *_ in [case for name, case in GUEST_CASES.items() if name.startswith("fua-")]:
        with Machine(backend="qemu", daemon="system") as real:
            want = guest_writes(real, commands)
        assert guest_writes(Machine(), commands) == want
