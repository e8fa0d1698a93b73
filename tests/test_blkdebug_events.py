"""blkdebug's events as QEMU 7.2 fires them under raw and qcow2 nodes, and the requests its rules fail.

The event sequences below were recorded on QEMU 7.2 with qemu-io's ``break``/``resume`` (a breakpoint on every
event; each suspended request is resumed after its event is noted), images made by ``qemu-img create`` and
written by a qemu-io that then closed them, qemu-io opened with ``-t writeback``. The simulator's blkdebug node
records what it fires (``BlkdebugNode.log``). The matrices run the same stories on qemu-storage-daemon and on
the simulator: one ``inject-error`` rule (``once``) on every event, then guest requests, and compare what the
guest saw, the dirty bitmaps, ``wr_highest_offset``, and ``qemu-img check``/``map`` of the image after.
"""

from __future__ import annotations

import json

import pytest

from bitlab import Machine, QemuImgError, QMPError
from bitlab.block.blkdebug import BLKDEBUG_EVENTS
from tests.both import on_both

K, M = 1 << 10, 1 << 20

# -- the sequences QEMU fires --------------------------------------------------------------------------------

ALLOC_L2 = ["cluster_alloc", "refblock_alloc", "refblock_load", "refblock_update_part", "pwritev", "pwritev_done",
            "l2_alloc_write", "l2_update", "pwritev", "pwritev_done", "l1_update", "pwritev", "pwritev_done"]
ALLOC_DATA = ["cluster_alloc", "refblock_alloc", "refblock_load"]
ZERO_COW = ["cluster_alloc_space", "pwritev_zero", "pwritev_done"]
DATA = ["write_aio", "pwritev", "pwritev_done"]
FLUSHED = ["flush_to_os", "refblock_update_part", "pwritev", "pwritev_done", "l2_update", "pwritev", "pwritev_done",
           "flush_to_disk"]

QCOW2_CASES = {
    "a new image": ([], [], [
        ("write -P 1 512 512", ALLOC_L2 + ALLOC_DATA + ZERO_COW + DATA),
        ("write -P 1 196608 512", ALLOC_DATA + ZERO_COW + DATA),
        ("write -P 2 0 512", DATA),
        ("write -f -P 3 0 512", DATA + FLUSHED),
        ("read 0 512", ["read_aio"]),
        ("read 0 1M", ["read_aio", "read_aio"]),  # two stretches on the host: two tasks
    ]),
    "copy-on-write": ([], [], [
        ("write -P 1 0 512", ALLOC_L2 + ALLOC_DATA + ZERO_COW + DATA),
        # the rest of cluster 0 (in place) and the start of cluster 1 (new, right after it on the host): one piece
        ("write -P 2 65024 1024", ["refblock_alloc", "refblock_load"] + ZERO_COW + DATA),
        ("write -P 3 200000 70000", ALLOC_DATA + ZERO_COW + DATA),
        ("write -P 4 0 131072", DATA),
    ]),
    "a backing file": (["create -f qcow2 b.qcow2 1M"], [("b.qcow2", "write -P 7 0 1M")], [
        ("read 0 512", ["read_backing_aio"]),
        ("write -P 2 512 512", ALLOC_L2 + ALLOC_DATA + ["cow_read", "read_backing_aio", "write_aio", "cow_write",
                                                        "pwritev", "pwritev_done"]),
        ("read 0 4096", ["read_aio"]),
        ("read 60000 10000", ["read_aio", "read_backing_aio"]),
    ]),
    "zero writes": ([], [("t.qcow2", "write -P 7 0 128k")], [
        ("write -z 0 65536", ["l2_load"]),
        ("write -z -u 65536 65536", ["cluster_free", "refblock_alloc", "refblock_load"]),
        ("write -z 131072 512", []),
        ("write -z 200000 512", []),
        ("write -z -u 0 65536", ["cluster_free", "refblock_alloc", "refblock_load"]),
    ]),
    # a cluster freed, then one linked: the refcount cache waits for the L2 cache, which is written first
    "frees, then a link": ([], [("t.qcow2", "write -P 7 0 256k")], [
        ("write -z -u 0 196608", ["l2_load"] + ["cluster_free", "refblock_alloc", "refblock_load"] * 3),
        ("write -P 1 0 512", ALLOC_DATA + ZERO_COW + DATA + ["l2_update", "pwritev", "pwritev_done"]),
    ]),
    "reads of an image opened again": ([], [("t.qcow2", "write -P 7 0 128k"), ("t.qcow2", "write -P 8 512k 64k")], [
        ("read 0 512", ["l2_load", "read_aio"]),
        ("read 300000 512", []),
    ]),
}


def _traced(vm: Machine, prep: list[tuple[str, str]], spec: dict, ops: list[str]) -> list[list[str]]:
    """The events the blkdebug node under ``spec`` fires for each of ``ops``."""
    for image, command in prep:
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "prep", "file": {"driver": "file", "filename": image}})
        vm.qemu_io("prep", command)
        vm.qmp("blockdev-del", {"node-name": "prep"})
    vm.qmp("blockdev-add", spec)
    blk = vm.graph.nodes["dbg"]
    out = []
    for op in ops:
        blk.log = []
        vm.qemu_io("top", op)
        out.append(blk.log)
    return out


def _qcow2_spec(**blkdebug: object) -> dict:
    return {"driver": "qcow2", "node-name": "top", "file": {"driver": "blkdebug", "node-name": "dbg", **blkdebug,
                                                            "image": {"driver": "file", "filename": "t.qcow2"}}}


@pytest.mark.parametrize("case", sorted(QCOW2_CASES))
def test_qcow2_events_in_qemus_order(case: str) -> None:
    images, prep, expected = QCOW2_CASES[case]
    vm = Machine()
    for args in images:
        vm.qemu_img(*args.split())
    vm.qemu_img("create", "-f", "qcow2", *(["-b", "b.qcow2", "-F", "qcow2"] if images else []), "t.qcow2", "1M")
    got = _traced(vm, prep, _qcow2_spec(), [op for op, _ in expected])
    assert dict(zip([op for op, _ in expected], got)) == dict(expected)


def test_qcow2_aligned_blkdebug() -> None:
    """With ``align: 4096`` the data's unaligned write is padded (its read-modify-write's events); qcow2 writes
    its L1 entry as the file's whole aligned block (qcow2_write_l1_entry), no read-modify-write there."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "t.qcow2", "1M")
    got = _traced(vm, [], _qcow2_spec(align=4096), ["write -P 1 512 512", "write -P 2 0 512"])
    rmw = ["pwritev_rmw_head", "pwritev_rmw_tail", "pwritev_rmw_after_head", "pwritev_rmw_after_tail"]
    assert got == [ALLOC_L2 + ALLOC_DATA + ZERO_COW + ["write_aio"] + rmw + ["pwritev", "pwritev_done"],
                   ["write_aio", "pwritev_rmw_tail", "pwritev_rmw_after_tail", "pwritev", "pwritev_done"]]


RAW_ALIGNED = [
    # head and tail in one block: one read, both events before it, both after
    ("write -P 1 0 512", ["write_aio", "pwritev_rmw_tail", "pwritev_rmw_after_tail", "pwritev", "pwritev_done"]),
    ("write -P 2 512 512", ["write_aio", "pwritev_rmw_head", "pwritev_rmw_tail", "pwritev_rmw_after_head",
                            "pwritev_rmw_after_tail", "pwritev", "pwritev_done"]),
    ("write -P 3 1024 8192", ["write_aio", "pwritev_rmw_head", "pwritev_rmw_after_head", "pwritev_rmw_tail",
                              "pwritev_rmw_after_tail", "pwritev", "pwritev_done"]),
    # a write-zeroes request: its padded head and tail are data writes (merged: one), the middle zeroes
    ("write -z 2048 4096", ["pwritev_rmw_head", "pwritev_rmw_tail", "pwritev_rmw_after_head",
                            "pwritev_rmw_after_tail", "pwritev", "pwritev_done"]),
    ("write -z 8192 4096", ["pwritev_zero", "pwritev_done"]),
    ("write -z 2048 10240", ["pwritev_rmw_head", "pwritev_rmw_after_head", "pwritev", "pwritev_done",
                             "pwritev_zero", "pwritev_done"]),
    ("read 512 512", ["read_aio"]),
    ("write -f -P 4 0 4096", ["write_aio", "pwritev", "pwritev_done", "flush_to_os", "flush_to_disk"]),
]


def test_raw_over_an_aligned_blkdebug() -> None:
    vm = Machine()
    vm.qemu_img("create", "-f", "raw", "t.raw", "1M")
    spec = {"driver": "raw", "node-name": "top", "file": {"driver": "blkdebug", "node-name": "dbg", "align": 4096,
                                                          "image": {"driver": "file", "filename": "t.raw"}}}
    assert _traced(vm, [], spec, [op for op, _ in RAW_ALIGNED]) == [events for _, events in RAW_ALIGNED]


def test_rules_newest_first() -> None:
    """Of two inject-error rules on one event the oldest fails the first request; of two set-state rules the
    oldest picks the state (QEMU keeps an event's rules newest first)."""
    vm = Machine()
    vm.qemu_img("create", "-f", "raw", "t.raw", "1M")
    vm.qmp("blockdev-add", {"driver": "raw", "node-name": "top", "file": {
        "driver": "blkdebug", "image": {"driver": "file", "filename": "t.raw"},
        "inject-error": [{"event": "write_aio", "errno": 5, "once": True},
                         {"event": "write_aio", "errno": 28, "once": True}]}})
    assert [vm.write("top", 0, 512).splitlines()[0] for _ in range(3)] == [
        "write failed: Input/output error", "write failed: No space left on device", "wrote 512/512 bytes at offset 0"]


def test_a_repeated_event_goes_round_its_cycle() -> None:
    """Events fired many times in a row (a large discard's ``cluster_free``...): whole turns of a cycle of
    states are skipped, the state is the one an event-by-event walk reaches."""
    vm = Machine()
    vm.qemu_img("create", "-f", "raw", "t.raw", "1M")
    vm.qmp("blockdev-add", {"driver": "raw", "node-name": "top", "file": {
        "driver": "blkdebug", "node-name": "dbg", "image": {"driver": "file", "filename": "t.raw"},
        "set-state": [{"event": "cluster_free", "state": s, "new_state": s % 3 + 1} for s in (1, 2, 3)]}})
    blk = vm.graph.nodes["dbg"]
    blk.fire_sequence(("cluster_free", "refblock_alloc"), 1_000_001)
    assert blk.state == 3  # 1 -> 2 -> 3 -> 1 ...: 1_000_001 steps from 1, and 1_000_001 % 3 == 2


def test_none_fires_as_blkdebug_opens() -> None:
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "t.qcow2", "1M")
    with pytest.raises(QMPError, match="Could not read qcow2 header: Input/output error$"):
        vm.qmp("blockdev-add", _qcow2_spec(**{"inject-error": [{"event": "none", "errno": 5}]}))


def test_a_failed_read_modify_write_read_is_refused() -> None:
    """QEMU 7.2 ignores it and writes its bounce buffer's bytes around the data (stale memory): not guessed."""
    vm = Machine()
    vm.qemu_img("create", "-f", "raw", "t.raw", "1M")
    vm.qmp("blockdev-add", {"driver": "raw", "node-name": "top", "file": {
        "driver": "blkdebug", "align": 4096, "image": {"driver": "file", "filename": "t.raw"},
        "inject-error": [{"event": "pwritev_rmw_head", "errno": 5}]}})
    vm.write("top", 0, 4096)
    with pytest.raises(QMPError, match="does not simulate a failed read-modify-write read"):
        vm.write("top", 512, 512)


# -- the same stories on real QEMU ----------------------------------------------------------------------------

OPS = [("write", 512, 512), ("write", 196608, 512), ("zero", 0, 65536), ("write", 70000, 512),
       ("discard", 65536, 65536), ("read", 0, M), ("flush",), ("write", 300000, 512), ("zero-unmap", 196608, 65536),
       ("flush",), ("read", 300000, 512)]
COMMANDS = {"write": "write -P 0x11 {} {}", "zero": "write -z {} {}", "zero-unmap": "write -z -u {} {}",
            "discard": "discard {} {}", "read": "read -P 0 {} {}", "flush": "flush"}


def _matrix(vm: Machine, fmt: str, events: list[str], align: int = 0, rule: dict | None = None,
            ops: list[tuple] = OPS, bitmaps: bool = True) -> dict:
    """For each event: an image of ``fmt``, its file node and a blkdebug node with one ``once`` rule on it
    (``rule``: more members) added by themselves, the format node over them; a bitmap on the file node (and
    on the blkdebug node over raw; none without ``bitmaps``); then ``ops``; what the guest saw, the bitmaps'
    counts and the nodes' ``wr_highest_offset``; then the nodes closed, ``qemu-img check`` and ``map`` of a qcow2
    image."""
    out: dict = {}
    for i, event in enumerate(events):
        image, f, d, top = f"i{i}.img", f"f{i}", f"d{i}", f"n{i}"
        vm.qemu_img("create", "-f", fmt, image, "1M")
        # (not discard=unmap: qcow2 freeing a cluster it failed to write past the file's end discards it, and
        # QEMU 7.2 asserts when that discard reaches a file node with a bitmap)
        vm.qmp("blockdev-add", {"driver": "file", "node-name": f, "filename": image})
        debug = {"driver": "blkdebug", "node-name": d, "image": f, "discard": "unmap",
                 "inject-error": [{"event": event, "errno": 5, "once": True, **(rule or {})}]}
        try:
            vm.qmp("blockdev-add", debug | ({"align": align} if align else {}))
            vm.qmp("blockdev-add", {"driver": fmt, "node-name": top, "file": d, "discard": "unmap"})
        except QMPError as err:
            out[event] = err.desc
            continue
        for node in ([f] + ([d] if fmt == "raw" else [])) * bitmaps:
            vm.qmp("block-dirty-bitmap-add", {"node": node, "name": "b", "granularity": 512})
        seen = [vm.guest_io(top, COMMANDS[op[0]].format(*op[1:])).split("\n")[0] for op in ops]
        nodes = {n["node-name"]: n for n in vm.qmp("query-named-block-nodes", {"flat": True})}
        stats = {s["node-name"]: s["stats"]["wr_highest_offset"]
                 for s in vm.qmp("query-blockstats", {"query-nodes": True})}
        result = {"seen": seen, "bitmaps": [b["count"] for n in (d, f) for b in nodes[n].get("dirty-bitmaps", [])],
                  "wr_highest_offset": [stats[n] for n in (top, d, f)]}
        for node in (top, d, f):
            vm.qmp("blockdev-del", {"node-name": node})
        if fmt == "qcow2":
            result["check"] = vm.qemu_img("check", image)
            result["map"] = json.loads(vm.qemu_img("map", "--output=json", image))
        out[event] = result
    return out


SIMULATED = [e for e in BLKDEBUG_EVENTS if e not in ("refblock_alloc_hookup", "refblock_alloc_write",
                                                     "refblock_alloc_write_blocks", "refblock_alloc_write_table",
                                                     "refblock_alloc_switch_table", "reftable_grow",
                                                     "reftable_update")]


@pytest.mark.qemu
def test_every_event_under_qcow2_on_both() -> None:
    real, sim = on_both(lambda vm: _matrix(vm, "qcow2", SIMULATED))
    assert sim == real


@pytest.mark.qemu
def test_every_event_under_qcow2_without_bitmaps_on_both() -> None:
    """Nothing hears the qcow2 node's writes to its file: they still count in blkdebug's write generation."""
    real, sim = on_both(lambda vm: _matrix(vm, "qcow2", SIMULATED, bitmaps=False))
    assert sim == real


def test_a_flush_after_writes_nobody_hears_reaches_blkdebug() -> None:
    """No bitmap on the file nodes: the qcow2 node's writes still reached blkdebug (bdrv_co_write_req_finish counts
    them in its write generation), so the flush that armed the rule reaches it and fails (qemu-io prints nothing
    for a failed flush), and the next write finds no rule left."""
    got = _matrix(Machine(), "qcow2", ["flush_to_disk"], bitmaps=False)["flush_to_disk"]["seen"]
    assert got[6:8] == ["", "wrote 512/512 bytes at offset 300000"]


@pytest.mark.qemu
@pytest.mark.parametrize("rule", [{"iotype": "read"}, {"iotype": "flush"}, {"iotype": "discard"}, {"sector": 256}],
                         ids=["read", "flush", "discard", "sector"])
def test_rule_members_under_qcow2_on_both(rule: dict) -> None:
    events = ["none", "write_aio", "cluster_alloc", "refblock_load", "l2_update", "cluster_free", "flush_to_os",
              "pwritev_done", "read_aio"]
    real, sim = on_both(lambda vm: _matrix(vm, "qcow2", events, rule=rule))
    assert sim == real


RAW_OPS = [("write", 512, 512), ("write", 8192, 512), ("zero", 12288, 8192), ("write", 70000, 512),
           ("discard", 65536, 65536), ("read", 0, 4096), ("flush",), ("write", 300000, 4096), ("flush",),
           ("read", 600, 100)]
IO_EVENTS = ["none", "write_aio", "read_aio", "flush_to_os", "flush_to_disk", "pwritev", "pwritev_zero",
             "pwritev_done", "pwritev_rmw_after_head", "pwritev_rmw_after_tail"]


@pytest.mark.qemu
@pytest.mark.parametrize("align", [0, 4096])
def test_io_events_under_raw_on_both(align: int) -> None:
    """Rules that may see a read-modify-write read are left out (bitlab refuses their outcome)."""
    real, sim = on_both(lambda vm: _matrix(vm, "raw", IO_EVENTS, align, {"iotype": "write"} if align else None,
                                           RAW_OPS))
    assert sim == real


def _padding(vm: Machine) -> list:
    """Writes at unaligned offsets through a raw node over blkdebug with ``align: 4096``: the blkdebug node and the
    file count the padded requests; the raw node counts what it was sent."""
    vm.qemu_img("create", "-f", "raw", "a.raw", "1M")
    vm.qmp("blockdev-add", {"node-name": "f0", "driver": "file", "filename": "a.raw"})
    vm.qmp("blockdev-add", {"node-name": "d0", "driver": "blkdebug", "align": 4096, "image": "f0"})
    vm.qmp("blockdev-add", {"node-name": "r0", "driver": "raw", "file": "d0"})
    out = []
    for offset, length in [(512, 512), (8192, 512), (12288 + 100, 5000), (40960, 4096), (65536 - 512, 1024)]:
        for n in ("r0", "d0", "f0"):
            vm.qmp("block-dirty-bitmap-add", {"node": n, "name": "b", "granularity": 512})
        vm.write("r0", offset, length)
        nodes = {n["node-name"]: n for n in vm.qmp("query-named-block-nodes", {"flat": True})}
        stats = {s["node-name"]: s["stats"]["wr_highest_offset"]
                 for s in vm.qmp("query-blockstats", {"query-nodes": True})}
        out.append({n: (nodes[n]["dirty-bitmaps"][0]["count"], stats[n]) for n in ("r0", "d0", "f0")})
        for n in ("r0", "d0", "f0"):
            vm.qmp("block-dirty-bitmap-remove", {"node": n, "name": "b"})
    return out


PADDED = [
    {"r0": (512, 1024), "d0": (4096, 4096), "f0": (4096, 4096)},
    {"r0": (512, 8704), "d0": (4096, 12288), "f0": (4096, 12288)},
    {"r0": (5120, 17388), "d0": (8192, 20480), "f0": (8192, 20480)},
    {"r0": (4096, 45056), "d0": (4096, 45056), "f0": (4096, 45056)},
    {"r0": (1024, 66048), "d0": (8192, 69632), "f0": (8192, 69632)},
]


def test_align_pads_what_blkdebug_and_the_file_count() -> None:
    assert _padding(Machine()) == PADDED


@pytest.mark.qemu
def test_align_padding_on_both() -> None:
    real, sim = on_both(_padding)
    assert real == sim == PADDED


def _pieces_after_a_failure(vm: Machine) -> list[str]:
    """A read of three data stretches not contiguous on the host: qcow2 reads them as parallel tasks, so after the
    second one's read fails (not ``immediately``) the third one's task still starts: its ``read_aio`` arms the
    next rule, which fails its read, and the reads after see no rule left."""
    vm.qemu_img("create", "-f", "qcow2", "t.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "top", "file": {
        "driver": "blkdebug", "image": {"driver": "file", "filename": "t.qcow2"},
        "set-state": [{"event": "read_aio", "state": s, "new_state": s + 1} for s in (1, 2, 3)],
        "inject-error": [{"event": "read_aio", "state": 2, "errno": 5, "once": True},
                         {"event": "read_aio", "state": 3, "errno": 28, "once": True}]}})
    for offset in (0, 196608, 458752):
        vm.write("top", offset, 512, pattern=0x11)
    return [vm.guest_io("top", f"read -P 0x11 {o} {n}").splitlines()[0]
            for o, n in ((0, 1 << 20), (0, 512), (196608, 512), (458752, 512))]


PIECES = ["read failed: Input/output error", "read 512/512 bytes at offset 0", "read 512/512 bytes at offset 196608",
          "read 512/512 bytes at offset 458752"]


def test_the_pieces_of_a_read_go_on_after_a_failure() -> None:
    assert _pieces_after_a_failure(Machine()) == PIECES


@pytest.mark.qemu
def test_the_pieces_of_a_read_on_both() -> None:
    real, sim = on_both(_pieces_after_a_failure)
    assert real == sim == PIECES


def test_a_new_refcount_block_is_refused() -> None:
    """A write that needs a new refcount block (512-byte clusters: one covers 128 KiB of file) while a rule may
    see it: bitlab refuses it and leaves the image as it was."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "-o", "cluster_size=512", "t.qcow2", "1M")
    vm.qmp("blockdev-add", _qcow2_spec(**{"inject-error": [{"event": "pwritev_done", "errno": 5, "iotype": "read"}]}))
    vm.write("top", 0, 64 * K)
    before = vm.qemu_img("map", "--output=json", "-U", "t.qcow2")
    with pytest.raises(QMPError, match="does not simulate the requests of a new qcow2 refcount block"):
        vm.write("top", 64 * K, 128 * K)
    assert vm.qemu_img("map", "--output=json", "-U", "t.qcow2") == before


def _write_pieces_after_a_failure(vm: Machine) -> list:
    """A write over two new clusters, one written before (in place, not next to them on the host) and another
    new one: three pieces, which qcow2 writes as parallel tasks. The first one's zero write fails once (not
    ``immediately``): the write fails, but the other pieces' data lands."""
    vm.qemu_img("create", "-f", "qcow2", "t.qcow2", "2M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "top", "file": {
        "driver": "blkdebug", "node-name": "dbg", "image": {"driver": "file", "filename": "t.qcow2"},
        "set-state": [{"event": "cluster_alloc_space", "state": 1, "new_state": 2}],
        "inject-error": [{"event": "cluster_alloc_space", "state": 2, "errno": 5, "once": True}]}})
    vm.write("top", 1922048, 512, pattern=0x11)  # cluster 29 (the first zero write moves the state on)
    out = [vm.write("top", 1782784, 204800, pattern=0x22).splitlines()[0]]  # clusters 27-28, 29, 30
    out += [vm.guest_io("top", f"read -P {p:#x} {o} 512").splitlines()[0]
            for o, p in ((1782784, 0), (1900544, 0x22), (1966080, 0x22))]
    vm.qmp("blockdev-del", {"node-name": "top"})
    out.append(json.loads(vm.qemu_img("map", "--output=json", "t.qcow2")))
    return out


def test_the_pieces_of_a_write_go_on_after_a_failure() -> None:
    got = _write_pieces_after_a_failure(Machine())
    assert got[:4] == ["write failed: Input/output error", "read 512/512 bytes at offset 1782784",
                       "read 512/512 bytes at offset 1900544", "read 512/512 bytes at offset 1966080"]


@pytest.mark.qemu
def test_the_pieces_of_a_write_on_both() -> None:
    real, sim = on_both(_write_pieces_after_a_failure)
    assert real == sim


def _failed_task_then_flush(vm: Machine) -> list[str]:
    """A write that allocates its L2 table fails in its data task: the table was written when it was allocated
    and no link marked it dirty again, so the next flush writes no L2 table (no ``l2_update``: the state stays
    2 and the next write's data is not failed)."""
    vm.qemu_img("create", "-f", "qcow2", "t.qcow2", "4M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "top", "file": {
        "driver": "blkdebug", "image": {"driver": "file", "filename": "t.qcow2"},
        "set-state": [{"event": "cluster_alloc_space", "state": 1, "new_state": 2},
                      {"event": "l2_update", "state": 2, "new_state": 3}],
        "inject-error": [{"event": "cluster_alloc_space", "iotype": "write", "errno": 5, "once": True},
                         {"event": "write_aio", "state": 3, "errno": 28, "once": True}]}})
    out = [vm.write("top", 616960, 204800).splitlines()[0], vm.guest_io("top", "flush"),
           vm.write("top", 2000000, 512).splitlines()[0]]
    vm.qmp("blockdev-del", {"node-name": "top"})
    return out + [vm.qemu_img("check", "t.qcow2")]


def test_a_failed_task_leaves_its_l2_table_clean() -> None:
    assert _failed_task_then_flush(Machine()) == [
        "write failed: Input/output error", "", "wrote 512/512 bytes at offset 2000000",
        "No errors were found on the image.\n1/64 = 1.56% allocated, 0.00% fragmented, 0.00% compressed clusters\n"
        "Image end offset: 393216\n"]


@pytest.mark.qemu
def test_a_failed_task_and_a_flush_on_both() -> None:
    real, sim = on_both(_failed_task_then_flush)
    assert real == sim


def _l1_flush_fails(vm: Machine, repair: bool) -> list[str]:
    """The flush after an L2 table's L1 entry fails: l2_allocate frees the table again, but the entry on disk
    points at it. A later allocation of that table writes the entry again (``repair``)."""
    vm.qemu_img("create", "-f", "qcow2", "t.qcow2", "1M")
    vm.qmp("blockdev-add", _qcow2_spec(**{"inject-error": [
        {"event": "l1_update", "iotype": "flush", "errno": 5, "once": True}]}))
    out = [vm.write("top", 0, 512).splitlines()[0], vm.read("top", 0, 512, pattern=0).splitlines()[0]]
    if repair:
        out.append(vm.write("top", 65536, 512).splitlines()[0])
    vm.qmp("blockdev-del", {"node-name": "top"})
    try:
        return out + [vm.qemu_img("check", "t.qcow2")]
    except QemuImgError as err:
        return out + [str(err)]


def test_a_failed_l1_flush_is_refused_when_the_image_is_used_again() -> None:
    got = _l1_flush_fails(Machine(), repair=False)
    assert got[:2] == ["write failed: Input/output error", "read 512/512 bytes at offset 0"]
    assert "bitlab does not know what QEMU 7.2 left in 't.qcow2'" in got[2]
    assert "failed to flush an L1 table entry it wrote" in got[2]


@pytest.mark.qemu
def test_a_failed_l1_flush_leaves_qemu_a_corrupt_image() -> None:
    with Machine(backend="qemu") as vm:
        got = _l1_flush_fails(vm, repair=False)
    assert "ERROR cluster 4 refcount=0 reference=1" in got[2]
    assert "ERROR OFLAG_COPIED L2 cluster: l1_index=0 l1_entry=8000000000040000 refcount=0" in got[2]


@pytest.mark.qemu
def test_a_failed_l1_flush_then_the_table_again_on_both() -> None:
    real, sim = on_both(lambda vm: _l1_flush_fails(vm, repair=True))
    assert real == sim
    assert sim[3].startswith("No errors were found on the image.\n1/16 = 6.25% allocated")


def _fua_writes(vm: Machine) -> list[str]:
    """A FUA write's flush comes before the write's completion counts it (bdrv_co_write_req_finish): the raw
    node's first one fires no ``flush_to_disk`` (nothing written since its open), the next one after a plain
    write does, and the armed rule fails that flush, so the write."""
    vm.qemu_img("create", "-f", "raw", "t.raw", "2M")
    vm.qmp("blockdev-add", {"driver": "raw", "node-name": "top", "file": {
        "driver": "blkdebug", "image": {"driver": "file", "filename": "t.raw"},
        "inject-error": [{"event": "flush_to_disk", "errno": 5, "once": True}]}})
    return [vm.guest_io("top", command).splitlines()[0] for command in (
        "write -f 1195520 65536", "write 1842176 512", "write -f 1328640 204800", "write -f 0 512")]


FUA = ["wrote 65536/65536 bytes at offset 1195520", "wrote 512/512 bytes at offset 1842176",
       "write failed: Input/output error", "wrote 512/512 bytes at offset 0"]


def test_a_fua_writes_flush_counts_what_came_before() -> None:
    assert _fua_writes(Machine()) == FUA


@pytest.mark.qemu
def test_fua_writes_on_both() -> None:
    real, sim = on_both(_fua_writes)
    assert real == sim == FUA


def _dependency_flush_fails(vm: Machine) -> list[str]:
    """A flush whose L2 table waits for the refcount block cache: that cache's flush fails, so the table is not
    written (it stays dirty, and the dependency stays); the next flush writes it (``l2_update``), arming a rule
    that fails the next read."""
    vm.qemu_img("create", "-f", "qcow2", "t.qcow2", "2M")
    vm.qmp("blockdev-add", _qcow2_spec(**{"inject-error": [
        {"event": "l2_update", "errno": 28, "once": True, "iotype": "read"},
        {"event": "cluster_alloc_space", "errno": 5, "once": True, "iotype": "flush", "immediately": True}]}))
    commands = ["write -z -u 1696768 65536", "flush", "write -P 7 769536 204800", "flush", "read -P 7 770048 4096",
                "flush", "read -P 7 770048 4096"]
    return [(vm.guest_io("top", command).splitlines() or [""])[0] for command in commands]


DEPENDENCY = ["wrote 65536/65536 bytes at offset 1696768", "", "wrote 204800/204800 bytes at offset 769536", "",
              "read 4096/4096 bytes at offset 770048", "", "read failed: No space left on device"]


def test_a_failed_dependency_flush_leaves_the_table_dirty() -> None:
    assert _dependency_flush_fails(Machine()) == DEPENDENCY


@pytest.mark.qemu
def test_a_failed_dependency_flush_on_both() -> None:
    real, sim = on_both(_dependency_flush_fails)
    assert real == sim == DEPENDENCY


def _discards_before_a_table(vm: Machine, rules: list[dict], inspect: bool) -> list:
    """4 KiB clusters: guest clusters 1-16 on host clusters 24-39 (L2 table 0), 1024-1040 on 7-23 (table 2), no
    table 1. ``write -z -u`` over them frees table 0's stretch, then makes table 1 (``cluster_alloc``: qcow2 passes
    the discard cached so far first, alloc_clusters_noref), then frees table 2's stretch (its discard passed at
    the request's end). What the guest saw, the file node's (discard-nb-ok, discard-bytes-ok), and (``inspect``)
    qemu-img check and map after the nodes closed."""
    vm.qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4096", "l.qcow2", "8M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "l", "file": {"driver": "file", "filename": "l.qcow2"}})
    for offset, length in ((0, 4096), (4 * M, 4096), (4 * M + 4096, 64 * K), (4096, 64 * K)):
        vm.write("l", offset, length, pattern=0x71)
    vm.qmp("blockdev-del", {"node-name": "l"})
    vm.qmp("blockdev-add", {"driver": "file", "filename": "l.qcow2", "node-name": "lf", "discard": "unmap"})
    vm.qmp("blockdev-add", {"driver": "blkdebug", "node-name": "ld", "image": "lf", "discard": "unmap",
                            "inject-error": rules})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "l", "discard": "unmap", "file": "ld"})
    out: list = [vm.guest_io("l", f"write -z -u 4096 {4 * M + 64 * K}").splitlines()[0]]
    stats = next(s for s in vm.qmp("query-blockstats", {"query-nodes": True}) if s.get("node-name") == "lf")
    out += [stats["driver-specific"]["discard-nb-ok"], stats["driver-specific"]["discard-bytes-ok"]]
    for node in ("l", "ld", "lf"):
        vm.qmp("blockdev-del", {"node-name": node})
    if inspect:
        out += [vm.qemu_img("check", "l.qcow2"), json.loads(vm.qemu_img("map", "--output=json", "l.qcow2"))]
    return out


WATCH = {"event": "l2_alloc_write", "iotype": "block-status", "errno": 5, "once": True}  # (replaces the armed rules)
# QEMU 7.2, measured: a rule armed by the new table's cluster_alloc fails the discard of table 0's stretch (64 KiB;
# qcow2 ignores it), so only table 2's (68 KiB) reaches the file; when the new table's write fails, the discard
# passed before it has reached the file (65536 bytes) and the one cached after is dropped with the failure
DISCARDS_BEFORE_A_TABLE = {
    "armed by cluster_alloc": ([{"event": "cluster_alloc", "iotype": "discard", "errno": 5, "once": True}, WATCH],
                               True, ["wrote 4259840/4259840 bytes at offset 4096", 1, 17 * 4096]),
    "none armed": ([WATCH], True, ["wrote 4259840/4259840 bytes at offset 4096", 2, 33 * 4096]),
    "the table's write fails": ([{"event": "l2_alloc_write", "iotype": "write", "errno": 5, "once": True}], False,
                                ["write failed: Input/output error", 1, 16 * 4096]),
}


@pytest.mark.parametrize("case", sorted(DISCARDS_BEFORE_A_TABLE))
def test_discards_passed_before_a_new_table_reach_blkdebug_there(case: str) -> None:
    rules, inspect, expected = DISCARDS_BEFORE_A_TABLE[case]
    assert _discards_before_a_table(Machine(), rules, inspect)[:3] == expected


@pytest.mark.qemu
@pytest.mark.parametrize("case", sorted(DISCARDS_BEFORE_A_TABLE))
def test_discards_passed_before_a_new_table_on_both(case: str) -> None:
    rules, inspect, expected = DISCARDS_BEFORE_A_TABLE[case]
    real, sim = on_both(lambda vm: _discards_before_a_table(vm, rules, inspect))
    assert real[:3] == expected
    assert sim == real


def _holes_punched_through_blkdebug(vm: Machine) -> list:
    """A qcow2 image over a blkdebug node whose rule sees its writes (so they go step by step) over a file node, all
    with ``discard=unmap``: a guest discard and a ``write -z -u`` free clusters, whose discards reach the file node
    through blkdebug and punch holes in the file (``actual-size`` while open and after, and the image's map)."""
    vm.qemu_img("create", "-f", "qcow2", "p.qcow2", "4M")
    vm.qmp("blockdev-add", {"driver": "file", "filename": "p.qcow2", "node-name": "pf", "discard": "unmap"})
    vm.qmp("blockdev-add", {"driver": "blkdebug", "node-name": "pd", "image": "pf", "discard": "unmap",
                            "inject-error": [{"event": "cluster_free", "iotype": "block-status", "errno": 5}]})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "p", "discard": "unmap", "file": "pd"})
    out: list = [vm.write("p", 0, 2 * M, pattern=0x33).splitlines()[0],
                 vm.guest_io("p", "discard 65536 1M").splitlines()[0],
                 vm.guest_io("p", "write -z -u 1572864 524288").splitlines()[0]]
    nodes = {n["node-name"]: n for n in vm.qmp("query-named-block-nodes", {"flat": True})}
    out.append(nodes["pf"]["image"]["actual-size"])
    for node in ("p", "pd", "pf"):
        vm.qmp("blockdev-del", {"node-name": node})
    return out + [json.loads(vm.qemu_img("info", "--output=json", "p.qcow2"))["actual-size"],
                  json.loads(vm.qemu_img("map", "--output=json", "p.qcow2"))]


def test_holes_punched_through_blkdebug() -> None:
    got = _holes_punched_through_blkdebug(Machine())
    assert got[3:5] == [790528, 790528]  # (QEMU 7.2, measured)


@pytest.mark.qemu
def test_holes_punched_through_blkdebug_on_both() -> None:
    """(QEMU's file has an extent-tree block more where ext4 placed its three extents in more pieces on the disk:
    README, "Known differences", the host file system; without the holes it would be 1 MiB and more.)"""
    real, sim = on_both(_holes_punched_through_blkdebug)
    assert sim[:3] + sim[5:] == real[:3] + real[5:]
    assert [r - s for r, s in zip(real[3:5], sim[3:5])] in ([0, 0], [4096, 4096])


def test_a_failed_request_gives_back_a_layout_that_follows_its_image() -> None:
    """The layout a failed request restores (an L2 table's write failed) tells the image itself, not a copy of it, of
    the clusters it frees (the file keeps their blocks: hostfs), and the image's content goes on feeding it."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "t.qcow2", "1M")
    vm.qmp("blockdev-add", _qcow2_spec(**{"inject-error": [{"event": "l2_alloc_write", "errno": 5, "once": True}]}))
    assert vm.write("top", 0, 4096).startswith("write failed: Input/output error")
    image = vm.graph.nodes["top"].image
    layout = image.layout
    assert layout.on_unhost.image() is image and image.data.watch.image() is image  # (held weakly)
