"""Image fleecing: a ``copy-before-write`` node and a ``snapshot-access`` node of the user's own
(block/copy-before-write.c, block/snapshot-access.c).

The plain tests assert QEMU 7.2's values, measured on the system emulator (HMP ``qemu-io``) and
qemu-storage-daemon; the ``qemu`` tests play the same steps on both backends.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bitlab import Machine
from bitlab.conformance.compare import normalise
from bitlab.conformance.gen_fleecing import fleecing_scenario
from bitlab.conformance.report import report
from bitlab.conformance.runner import compare, play
from bitlab.conformance.steps import run_step
from tests.both import on_both
from tests.conformance.test_cbw_parents import _node, _replies
from tests.conformance.test_cbw_parents import _reply as _at

K, M = 1 << 10, 1 << 20


def _q(execute: str, arguments: dict | None = None) -> dict:
    return {"qmp": {"execute": execute, **({"arguments": arguments} if arguments is not None else {})}}


def _image(name: str, file: dict | None = None) -> list[dict]:
    return [{"qemu-img": ["create", "-f", "qcow2", f"{name}.qcow2", "4M"]},
            _q("blockdev-add", {"driver": "qcow2", "node-name": name,
                                "file": file or {"driver": "file", "filename": f"{name}.qcow2"}})]


def _cbw(name: str = "c", **extra: object) -> dict:
    return _q("blockdev-add", {"driver": "copy-before-write", "node-name": name, "file": "a", "target": "t", **extra})


def _io(verb: str, node: str, offset: int, length: int, pattern: int | None = None) -> dict:
    step: dict = {"node": node, "offset": offset, "length": length}
    if pattern is not None:
        step["pattern"] = pattern
    return {verb: step}


def _hmp(node: str, command: str) -> dict:
    return {"hmp": f'qemu-io {node} "{command}"'}


BAD_OPTIONS = [
    _q("blockdev-add", {"driver": "copy-before-write", "node-name": "x", "file": "a"}),
    _q("blockdev-add", {"driver": "copy-before-write", "node-name": "x", "target": "t"}),
    _q("blockdev-add", {"driver": "copy-before-write", "node-name": "x", "file": "nope", "target": "t"}),
    _q("blockdev-add", {"driver": "copy-before-write", "node-name": "x", "file": "a", "target": "nope"}),
    _cbw("x", **{"on-cbw-error": "bogus"}), _cbw("x", **{"cbw-timeout": -1}), _cbw("x", **{"cbw-timeout": 1 << 32}),
    _cbw("x", bitmap={"node": "nope", "name": "b"}), _cbw("x", bitmap={"node": "a", "name": "nope"}),
    _cbw("x", bitmap={"node": "small", "name": "s"}),
    _q("blockdev-add", {"driver": "snapshot-access", "node-name": "x"}),
    _q("blockdev-add", {"driver": "snapshot-access", "node-name": "x", "file": "nope"}),
]


def setup_steps() -> list[dict]:
    """Source a (data in its first MiB), target t, a 1 MiB null-co node with a bitmap."""
    return [*_image("a"), _io("write", "a", 0, M, 0x11), *_image("t"),
            _q("blockdev-add", {"driver": "null-co", "node-name": "small", "size": M}),
            _q("block-dirty-bitmap-add", {"node": "small", "name": "s"})]


def fleecing_steps() -> list[dict]:
    """Bad options; then the filter and the snapshot over it; guest writes through the filter; reads of the
    snapshot; a discard of the snapshot; blockdev-del in the wrong and the right order."""
    return [*setup_steps(), *BAD_OPTIONS,
            _cbw("c", **{"cbw-timeout": 5}),
            _q("blockdev-add", {"driver": "snapshot-access", "node-name": "sa", "file": "c", "discard": "unmap"}),
            _io("write", "a", 32 * K, 16 * K, 0x22), _io("write", "a", 100 * K, 100 * K, 0x23),
            _io("zero", "a", 2 * M, 64 * K),
            _io("read", "a", 32 * K, 16 * K, 0x22), _io("read", "sa", 0, M, 0x11), _io("read", "sa", 2 * M, 64 * K, 0),
            _io("read", "t", 0, 64 * K, 0x11), _io("read", "c", 100 * K, 100 * K, 0x23),
            _q("query-named-block-nodes", {"flat": True}), _q("x-debug-query-block-graph"),
            _io("discard", "sa", 0, 64 * K), _io("discard", "sa", 4 * M - 64 * K, 64 * K),
            _io("write", "a", 0, 4 * K, 0x24), _io("read", "sa", 64 * K, 64 * K, 0x11),
            _q("query-named-block-nodes", {"flat": True}),
            _q("blockdev-del", {"node-name": "a"}), _q("blockdev-del", {"node-name": "t"}),
            _q("blockdev-del", {"node-name": "c"}), _q("blockdev-del", {"node-name": "sa"}),
            _q("blockdev-del", {"node-name": "c"}), _q("query-named-block-nodes", {"flat": True}),
            _io("write", "a", 0, 64 * K, 0x25), _io("read", "t", 0, 4 * K, 0x11)]


def monitor_steps() -> list[dict]:
    """What HMP qemu-io shows of the snapshot (the system emulator): maps, reads that fail, writes."""
    return [*setup_steps(), _cbw("c"),
            _q("blockdev-add", {"driver": "snapshot-access", "node-name": "sa", "file": "c", "discard": "unmap"}),
            _q("blockdev-add", {"driver": "snapshot-access", "node-name": "sb", "file": "a"}),
            _hmp("a", "write -P 0x22 32k 16k"), _hmp("c", "write -P 0x22 32k 16k"),
            _hmp("t", "map"), _hmp("sa", "map"), _hmp("sa", "read -v 196k 16"), _hmp("sa", "write -P 0x44 0 4k"),
            _hmp("sa", "write -z 0 4k"), _hmp("sa", "info"), _hmp("sb", "read 0 64k"), _hmp("sb", "map"),
            _hmp("sb", "discard 0 64k"),
            _hmp("sa", "discard 64k 64k"), _hmp("sa", "read 64k 4k"), _hmp("sa", "read 60k 8k"),
            _hmp("sa", "read -P 0x11 0 4k"), _hmp("sa", "alloc 0 64k"), _hmp("sa", "alloc 64k 64k"),
            _hmp("sa", "map"), _hmp("t", "map"), _hmp("c", "discard 0 1M"), _hmp("c", "read -P 0x11 0 4k"),
            _q("query-named-block-nodes", {"flat": True})]


def bitmap_steps() -> list[dict]:
    """The ``bitmap`` option: only its clusters are copied and readable."""
    return [*setup_steps(), _q("block-dirty-bitmap-add", {"node": "a", "name": "ba", "granularity": 4096}),
            _io("write", "a", 0, 4 * K, 0x12), _io("write", "a", 200 * K, 4 * K, 0x12),
            _q("block-dirty-bitmap-disable", {"node": "a", "name": "ba"}),
            _cbw("c", bitmap={"node": "a", "name": "ba"}),
            _q("blockdev-add", {"driver": "snapshot-access", "node-name": "sa", "file": "c"}),
            _q("query-named-block-nodes", {"flat": True}),
            _io("write", "a", 0, M, 0x22), _io("read", "t", 0, 4 * K, 0x12), _io("read", "t", 64 * K, 4 * K, 0),
            _io("read", "sa", 0, 4 * K, 0x12), _io("read", "sa", 4 * K, 4 * K, 0x11),
            _io("read", "sa", 204 * K, 52 * K, 0x11), _q("query-named-block-nodes", {"flat": True})]


def _failing_target() -> list[dict]:
    return _image("t", {"driver": "blkdebug", "image": {"driver": "file", "filename": "t.qcow2"},
                        "inject-error": [{"event": "write_aio", "errno": 5}]})


def on_error_steps() -> list[dict]:
    """on-cbw-error with a target whose data writes fail: break-guest-write (the default) fails the guest's
    write; break-snapshot lets it through and breaks the snapshot."""
    return [*_image("a"), _io("write", "a", 0, M, 0x11), *_failing_target(),
            _cbw("c"), _q("blockdev-add", {"driver": "snapshot-access", "node-name": "sa", "file": "c"}),
            _io("write", "a", 128 * K, 4 * K, 0x35), _io("read", "a", 128 * K, 4 * K, 0x11),
            _io("read", "sa", 128 * K, 4 * K, 0x11), _q("query-named-block-nodes", {"flat": True}),
            _q("blockdev-del", {"node-name": "sa"}), _q("blockdev-del", {"node-name": "c"}),
            _cbw("c2", **{"on-cbw-error": "break-snapshot"}),
            _q("blockdev-add", {"driver": "snapshot-access", "node-name": "sa2", "file": "c2"}),
            _io("read", "sa2", 64 * K, 4 * K, 0x11),
            _io("write", "a", 0, 4 * K, 0x33), _io("read", "a", 0, 4 * K, 0x33), _io("write", "a", 64 * K, 4 * K, 0x34),
            _io("read", "a", 64 * K, 4 * K, 0x34), _q("query-named-block-nodes", {"flat": True})]


def broken_snapshot_steps() -> list[dict]:
    """After a failed copy with break-snapshot, every snapshot read fails (HMP qemu-io: EACCES)."""
    return [*_image("a"), _io("write", "a", 0, M, 0x11), *_failing_target(),
            _cbw("c", **{"on-cbw-error": "break-snapshot"}),
            _q("blockdev-add", {"driver": "snapshot-access", "node-name": "sa", "file": "c"}),
            _hmp("sa", "read -P 0x11 64k 4k"), _hmp("c", "write -P 0x33 0 4k"), _hmp("sa", "read 64k 4k"),
            _hmp("sa", "map"), _hmp("c", "write -P 0x34 64k 4k"), _hmp("t", "map")]


def push_backup_steps() -> list[dict]:
    """image-fleecing's push backup: a blockdev-backup from the snapshot-access node."""
    return [*_image("a"), _io("write", "a", 0, M, 0x11), *_image("t"),
            _cbw("c"), _q("blockdev-add", {"driver": "snapshot-access", "node-name": "sa", "file": "c"}),
            _io("write", "a", 32 * K, 16 * K, 0x22), _io("zero", "a", 512 * K, 128 * K), *_image("b"),
            _q("blockdev-backup", {"job-id": "j", "device": "sa", "target": "b", "sync": "full"}),
            {"wait-job": {"id": "j", "status": "null"}},
            _io("read", "b", 0, 512 * K, 0x11), _io("read", "b", 512 * K, 512 * K, 0x11),
            _io("read", "b", M, 3 * M, 0), {"qemu-img": ["map", "--output=json", "b.qcow2"]},
            _q("query-named-block-nodes", {"flat": True})]


def more_steps() -> list[dict]:
    """A filter with discard=unmap (copies, then discards below), write-zeroes with unmap through it, an NBD
    export of the snapshot, a backup of the source while the filter sits over it, a second filter on top."""
    return [*_image("a"), _io("write", "a", 0, M, 0x11), *_image("t"), *_image("u"), *_image("b"),
            _cbw("c", discard="unmap"),
            _q("blockdev-add", {"driver": "snapshot-access", "node-name": "sa", "file": "c"}),
            _io("discard", "a", 0, 128 * K),
            {"zero": {"node": "a", "offset": 256 * K, "length": 64 * K, "unmap": True}},
            _io("read", "t", 0, 128 * K, 0x11), _io("read", "t", 256 * K, 64 * K, 0x11), _io("read", "a", 0, 64 * K, 0),
            _q("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}}),
            _q("block-export-add", {"type": "nbd", "id": "e", "node-name": "sa"}),
            _q("block-export-add", {"type": "nbd", "id": "e2", "node-name": "c", "writable": True}),
            _q("query-block-exports"), _q("blockdev-del", {"node-name": "sa"}),
            _q("block-export-del", {"id": "e"}), {"settle-jobs": True},
            _q("blockdev-backup", {"job-id": "j", "device": "a", "target": "b", "sync": "full",
                                   "filter-node-name": "f"}),
            {"wait-job": {"id": "j", "status": "null"}}, _io("read", "b", 0, 128 * K, 0),
            _io("read", "b", 128 * K, 128 * K, 0x11),
            _q("blockdev-add", {"driver": "copy-before-write", "node-name": "c2", "file": "c", "target": "u"}),
            _io("write", "a", 512 * K, 64 * K, 0x55), _io("read", "u", 512 * K, 64 * K, 0x11),
            _io("read", "t", 512 * K, 64 * K, 0x11), _q("query-named-block-nodes", {"flat": True}),
            _q("x-debug-query-block-graph"), _q("blockdev-del", {"node-name": "c"}),
            _q("blockdev-del", {"node-name": "c2"}), _q("blockdev-del", {"node-name": "c"}),
            _io("write", "a", 768 * K, 64 * K, 0x56), _io("read", "t", 768 * K, 64 * K, 0)]


def device_steps() -> list[dict]:
    """A filter over a device's node: the device stays where it is (no qom-set here) and writes past the filter;
    once the device has written, the filter can have no parent (it would share no writes on the node), and a write
    through the filter by its name meets the same conflict."""
    return [_io("write", "drive0", 0, M, 0x11), *_image("t"),
            _q("blockdev-add", {"driver": "copy-before-write", "node-name": "c", "file": "drive0", "target": "t"}),
            _io("write", "drive0", 0, 64 * K, 0x21), _io("read", "t", 0, 64 * K, 0),
            _q("blockdev-add", {"driver": "snapshot-access", "node-name": "sa", "file": "c"}),
            _io("write", "drive0", 64 * K, 64 * K, 0x22),
            _io("write", "c", 128 * K, 64 * K, 0x23),
            _io("read", "t", 128 * K, 64 * K, 0x11), _q("query-block"), _q("query-named-block-nodes"),
            _q("x-debug-query-block-graph"),
            _q("blockdev-del", {"node-name": "sa"}), _io("write", "drive0", 64 * K, 64 * K, 0x22),
            _q("blockdev-del", {"node-name": "c"})]


def unmap_steps(how: str = "cbw", source_unmap: bool = False) -> list[dict]:
    """``write -z -u`` through a copy-before-write filter (a user's or a backup's): bdrv_co_pwrite_zeroes keeps the
    unmap flag only if the source was opened with discard=unmap."""
    source: dict = {"driver": "qcow2", "node-name": "a", "file": {"driver": "file", "filename": "a.qcow2"}}
    if source_unmap:
        source["discard"] = "unmap"
    start = _q("blockdev-backup", {"job-id": "j", "device": "a", "target": "t", "sync": "none"}) if how == "backup" \
        else _cbw("c")
    return [{"qemu-img": ["create", "-f", "qcow2", "-o", "cluster_size=4096", "a.qcow2", "4M"]},
            _q("blockdev-add", source), _io("write", "a", 0, 2 * M, 0x11), *_image("t"), start,
            {"zero": {"node": "a", "offset": 0, "length": 128 * K, "unmap": True}},
            {"zero": {"node": "a", "offset": 1823232, "length": 64 * K, "unmap": True}},
            {"zero": {"node": "a", "offset": 3020800, "length": 60 * K}},
            _q("query-named-block-nodes", {"flat": True}), {"qemu-img": ["map", "-U", "--output=json", "a.qcow2"]}]


def failed_discard_steps() -> list[dict]:
    """A discard through a filter with discard=unmap goes in bdrv_co_pdiscard's pieces (a head up to the first
    cluster boundary, the middle, a tail): a copy that fails in the head fails the discard before the rest."""
    failing = {"driver": "blkdebug", "image": {"driver": "file", "filename": "t.qcow2"},
               "inject-error": [{"event": "write_aio", "errno": 5}]}
    return [*_image("a"), _io("write", "a", 0, 2 * M, 0x11), *_image("t", failing), _cbw("c", discard="unmap"),
            _io("discard", "a", 1480192, M), _q("query-named-block-nodes", {"flat": True}),
            _io("write", "a", 1480192, M, 0x22), _q("query-named-block-nodes", {"flat": True})]


def _err(desc: str) -> dict:
    return {"error": {"class": "GenericError", "desc": desc}}


def _counts(node: dict) -> list[int]:
    return [bm["count"] for bm in node.get("dirty-bitmaps", [])]


def test_option_checks_say_what_qemu_says():
    steps = fleecing_steps()
    replies = _replies(steps)
    assert [_at(steps, replies, step) for step in BAD_OPTIONS] == [
        _err("Parameter 'target' is missing"), _err("Parameter 'file' is missing"),
        _err("Cannot find device='nope' nor node-name='nope'"), _err("Cannot find device='nope' nor node-name='nope'"),
        _err("Parameter 'on-cbw-error' does not accept value 'bogus'"),
        _err("Parameter 'cbw-timeout' expects uint32_t"), _err("Parameter 'cbw-timeout' expects uint32_t"),
        _err("Node 'nope' not found"), _err("Dirty bitmap 'nope' not found"),
        _err("Cannot create block-copy-state: Failed to merge bitmap 's' to internal copy-bitmap: Bitmaps are of "
             "different sizes (destination size is 4194304, source size is 1048576) and can't be merged"),
        _err("Parameter 'file' is missing"), _err("Cannot find device='nope' nor node-name='nope'")]


def test_guest_writes_copy_their_clusters_and_the_snapshot_keeps_the_old_data():
    steps = fleecing_steps()
    replies = _replies(steps)
    reads = {json.dumps(s): r["stdout"].splitlines()[0] for s, r in zip(steps, replies) if "read" in s}
    # 7.2's hbitmap_status: the overwritten clusters 0-3 end before the read's end, so they come from the source
    assert reads.pop(json.dumps(_io("read", "sa", 0, M, 0x11))) == \
        "Pattern verification failed at offset 0, 1048576 bytes"
    assert all(line.startswith("read ") for line in reads.values())
    nodes = _at(steps, replies, _q("query-named-block-nodes", {"flat": True}))["return"]
    c, sa, a = _node(nodes, "c"), _node(nodes, "sa"), _node(nodes, "a")
    # access (all), done: clusters 0-3 (writes at 32k and 100k..200k) and the one at 2 MiB (write-zeroes)
    assert _counts(c) == [4 * M, 5 * 64 * K] and _counts(a) == [4 * M - 5 * 64 * K]
    assert (c["image"]["format"], c["image"]["cluster-size"], c["file"], c["ro"]) == (
        "copy-before-write", 64 * K, "a.qcow2", False)
    assert sa["image"] == {"virtual-size": 4 * M, "filename": "a.qcow2", "format": "snapshot-access",
                           "actual-size": sa["image"]["actual-size"]}
    graph = _at(steps, replies, _q("x-debug-query-block-graph"))["return"]
    names = {n["id"]: n["name"] for n in graph["nodes"]}
    links = {(names[e["parent"]], e["name"], names[e["child"]]): (e["perm"], e["shared-perm"]) for e in graph["edges"]}
    assert links[("sa", "file", "c")] == ([], ["resize", "write-unchanged", "write", "consistent-read"])
    assert links[("c", "file", "a")] == ([], ["write-unchanged", "consistent-read"])
    assert links[("c", "target", "t")] == (["write"], ["write-unchanged", "write", "consistent-read"])


def test_a_discard_of_the_snapshot_drops_its_clusters_from_access_and_copy():
    steps = fleecing_steps()
    replies = _replies(steps)
    nodes = _at(steps, replies, _q("query-named-block-nodes", {"flat": True}), 1)["return"]
    # the two discarded clusters leave access (and the copy: the write at 0 copies nothing more)
    assert _counts(_node(nodes, "c")) == [4 * M - 2 * 64 * K, 5 * 64 * K]
    assert _counts(_node(nodes, "a")) == [4 * M - 6 * 64 * K]  # (cluster 0 was copied already)
    dels = [_at(steps, replies, _q("blockdev-del", {"node-name": n})) for n in ("a", "t")]
    assert dels == [_err("Block device a is in use"), _err("Block device t is in use")]
    assert [r for s, r in zip(steps, replies) if s == _q("blockdev-del", {"node-name": "c"})] == [
        _err("Block device c is in use"), {"return": {}}]
    last = _at(steps, replies, _q("query-named-block-nodes", {"flat": True}), 2)["return"]
    assert _counts(_node(last, "a")) == [] and {n["drv"] for n in last} == {"qcow2", "file", "null-co"}


def test_what_hmp_qemu_io_shows_of_the_snapshot():
    steps = monitor_steps()
    replies = _replies(steps)
    got = {s["hmp"]: r for s, r in zip(steps, replies) if "hmp" in s}
    assert got['qemu-io a "write -P 0x22 32k 16k"'] == {"return": (
        "Permission conflict on node 'a': permissions 'write' are both required by an unnamed block device "
        "(uses node 'a' as 'root' child) and unshared by node 'c' (uses node 'a' as 'file' child).\r\n")}
    vm = Machine()
    for step in steps[:10]:
        play_one(vm, step)
    assert vm.qemu_io("sa", "read -v 196k 16").startswith(
        "00031000:  11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11  ................\n")
    assert vm.qemu_io("sa", "write -P 0x44 0 4k") == "write failed: Operation not supported\n"
    assert vm.qemu_io("sa", "info") == "format name: snapshot-access\n"
    assert vm.qemu_io("sb", "read 0 64k") == "read failed: Operation not supported\n"
    assert vm.hmp('qemu-io sb "map"') == "Failed to get allocation status: Operation not supported\r\n"
    assert vm.qemu_io("sa", "discard 64k 64k").startswith("discard 65536/65536 bytes at offset 65536\n")
    assert vm.qemu_io("sa", "read 60k 8k") == "read failed: Permission denied\n"
    assert vm.qemu_io("sa", "alloc 64k 64k") == "is_allocated failed: Permission denied\n"
    assert vm.qemu_io("sa", "alloc 0 64k") == "65536/65536 bytes allocated at offset 0 bytes\n"
    assert vm.hmp('qemu-io sa "map"') == "Failed to get allocation status: Permission denied\r\n"
    with pytest.raises(Exception, match="bitlab refuses this: QEMU 7.2 aborts"):
        vm.qemu_io("sa", "discard 70k 64k")


def play_one(vm: Machine, step: dict) -> None:
    run_step(vm, step)


def test_the_bitmap_option_copies_and_shows_only_its_clusters():
    steps = bitmap_steps()
    replies = _replies(steps)
    before, after = (r["return"] for s, r in zip(steps, replies) if s == _q("query-named-block-nodes", {"flat": True}))
    assert _counts(_node(before, "c")) == [2 * 64 * K, 0]
    assert _counts(_node(after, "c")) == [2 * 64 * K, 16 * 64 * K]
    reads = [r["stdout"].splitlines()[0] for s, r in zip(steps, replies) if "read" in s]
    assert reads == ["read 4096/4096 bytes at offset 0", "read 4096/4096 bytes at offset 65536",
                     "read 4096/4096 bytes at offset 0", "read 4096/4096 bytes at offset 4096",
                     "read 53248/53248 bytes at offset 208896"]


def test_on_cbw_error_breaks_the_guest_write_or_the_snapshot():
    steps = on_error_steps()
    replies = _replies(steps)
    failed = _at(steps, replies, _io("write", "a", 128 * K, 4 * K, 0x35))
    assert failed == {"ok": False, "stdout": "write failed: Input/output error\n", "stderr": "", "returncode": 1}
    first, second = (r["return"] for s, r in zip(steps, replies) if s == _q("query-named-block-nodes", {"flat": True}))
    assert _counts(_node(first, "c")) == [4 * M, 0] and _counts(_node(second, "c2")) == [4 * M, 0]
    assert all(r == {"ok": True} for s, r in zip(steps[-6:], replies[-6:]) if "write" in s)
    steps = broken_snapshot_steps()
    replies = _replies(steps)
    assert [r["return"].splitlines()[0] if r["return"] else "" for s, r in zip(steps, replies) if "hmp" in s] == [
        "", "", "", "Failed to get allocation status: Permission denied", "", ""]
    vm = Machine()
    for step in steps:
        play_one(vm, step)
    assert vm.qemu_io("sa", "read 64k 4k") == "read failed: Permission denied\n"
    assert vm.qemu_io("t", "map") == "4 MiB (0x400000) bytes not allocated at offset 0 bytes (0x0)\n"


@pytest.mark.qemu
@pytest.mark.parametrize("daemon", ["qsd", "system"])
@pytest.mark.parametrize("make", [fleecing_steps, bitmap_steps, on_error_steps, push_backup_steps, more_steps,
                                  failed_discard_steps])
def test_fleecing_as_in_qemu(make, daemon):
    scenario = {"name": make.__name__, "steps": make()}
    real, sim = play(scenario, "qemu", daemon), play(scenario, "sim")
    assert [d.render() for d in compare(scenario, real, sim)] == []


@pytest.mark.qemu
@pytest.mark.parametrize("make", [monitor_steps, broken_snapshot_steps, device_steps])
def test_hmp_qemu_io_on_the_snapshot_as_in_qemu(make):
    scenario = {"name": make.__name__, "steps": make(), "drives": [{"id": "drive0", "size": "4M"}]}
    real, sim = play(scenario, "qemu", "system"), play(scenario, "sim")
    assert [d.render() for d in compare(scenario, real, sim)] == []


def test_a_push_backup_from_the_snapshot_copies_the_point_in_time_content():
    """block-copy's tasks end where the snapshot's block status answers end (each stretch of done clusters
    apart), so the data the guest overwrote comes from the target; but 7.2's hbitmap_status asks the source
    for the status of a stretch of done clusters that ends before the range asked, and the guest's zero write
    there (512 KiB..640 KiB) makes block-copy write zeroes, not the snapshot's data."""
    steps = push_backup_steps()
    replies = _replies(steps)
    reads = [r["stdout"].splitlines()[0] for s, r in zip(steps, replies) if "read" in s]
    assert reads == ["read 524288/524288 bytes at offset 0",
                     "Pattern verification failed at offset 524288, 524288 bytes",
                     "read 3145728/3145728 bytes at offset 1048576"]
    assert _at(steps, replies, {"wait-job": {"id": "j", "status": "null"}})["ok"] is True


def _readme_example() -> str:
    """The code block of README's "Image fleecing" section."""
    text = (Path(__file__).parents[2] / "README.md").read_text()
    section = text[text.index("### Image fleecing"):]
    return section[section.index("```python\n") + 10:section.index("```\n", section.index("```python"))]


def _run_readme_example(vm: Machine) -> list[str]:
    """Run the README's example on ``vm``; what each ``vm.read`` printed (its first line)."""
    reads: list[str] = []
    read = vm.read
    vm.read = lambda *args: reads.append(read(*args).splitlines()[0])  # type: ignore[method-assign]
    exec(_readme_example(), {"vm": vm})  # noqa: S102 - the README's own example
    return reads


README_READS = ["read 65536/65536 bytes at offset 65536"] * 3


def test_the_readme_example():
    assert _run_readme_example(Machine()) == README_READS


@pytest.mark.qemu
@pytest.mark.parametrize("daemon", ["qsd", "system"])
def test_the_readme_example_on_qemu(daemon):
    with Machine(backend="qemu", daemon=daemon) as vm:
        assert _run_readme_example(vm) == README_READS


def test_a_filter_deleted_under_another_gives_the_guest_back_to_the_one_below():
    """After the top filter goes, the source's guest writes through the filter below it again (an export
    keeps that one): its target gets the copy."""
    steps = more_steps()
    replies = _replies(steps)
    dels = [r for s, r in zip(steps, replies) if s.get("qmp", {}).get("execute") == "blockdev-del"]
    assert dels == [_err("Node sa is in use"), _err("Node c is in use"), {"return": {}}, _err("Node c is in use")]
    assert replies[-2] == {"ok": True}
    assert replies[-1]["stdout"].startswith("Pattern verification failed at offset 786432, 65536 bytes\n")


def test_zero_writes_through_the_filter_unmap_only_on_a_source_opened_with_discard_unmap():
    maps = {}
    for source_unmap in (False, True):
        steps = unmap_steps("cbw", source_unmap)
        maps[source_unmap] = _replies(steps)[-1]["stdout"]
    assert '{ "start": 0, "length": 131072, "depth": 0, "present": true, "zero": true, "data": false, "offset": ' \
        in maps[False]  # zero clusters that keep their host clusters
    assert '{ "start": 0, "length": 131072, "depth": 0, "present": true, "zero": true, "data": false}' in maps[True]


@pytest.mark.qemu
@pytest.mark.parametrize("how", ["cbw", "backup"])
@pytest.mark.parametrize("source_unmap", [False, True])
def test_zero_writes_through_the_filter_as_in_qemu(how, source_unmap):
    scenario = {"name": "unmap", "steps": unmap_steps(how, source_unmap)}
    real, sim = play(scenario, "qemu", "qsd"), play(scenario, "sim")
    assert [d.render() for d in compare(scenario, real, sim)] == []


def test_random_fleecing_episodes():
    """``--focus fleecing``: reproducible, and the episodes hold what they are there for."""
    assert fleecing_scenario(3, 4) == fleecing_scenario(3, 4) != fleecing_scenario(3, 5)
    steps = [s for i in range(30) for s in fleecing_scenario(3, i)["steps"]]
    adds = [s["qmp"]["arguments"] for s in steps if s.get("qmp", {}).get("execute") == "blockdev-add"]
    cbws = [a for a in adds if a["driver"] == "copy-before-write"]
    assert {a.get("on-cbw-error") for a in cbws} >= {None, "break-guest-write", "break-snapshot"}
    assert any("bitmap" in a for a in cbws) and any("cbw-timeout" in a for a in cbws)
    assert any(a.get("file", {}).get("driver") == "blkdebug" for a in adds if a["driver"] == "qcow2")
    assert any(s.get("read", {}).get("node", "").startswith("fa") for s in steps)
    assert any(s.get("discard", {}).get("node", "").startswith("fa") for s in steps)
    assert any(s.get("qmp", {}).get("execute") == "blockdev-backup" for s in steps)
    assert all(play(fleecing_scenario(3, i), "sim").error is None for i in range(10))


@pytest.mark.qemu
def test_conformance_report_focused_on_fleecing():
    text, bad = report(3, 19801, focus="fleecing")
    assert bad == 0 and "scenarios run                3" in text


def test_a_discard_through_the_filter_copies_piece_by_piece():
    steps = failed_discard_steps()
    replies = _replies(steps)
    assert replies[-4] == {"ok": False, "stdout": "discard failed: Input/output error\n", "stderr": "", "returncode": 1}
    after_discard, after_write = (_node(r["return"], "a") for s, r in zip(steps, replies) if "qmp" in s
                                  and s["qmp"]["execute"] == "query-named-block-nodes")
    # the discard's head (cluster 22, data) failed first: nothing copied; the write's one call copied the
    # zero clusters 32..38 (its data tasks failed)
    assert _counts(after_discard) == [4 * M] and _counts(after_write) == [4 * M - 7 * 64 * K]


def nested_story(vm: Machine) -> list:
    """Children given as options: a ``file`` is opened before its parent is named (bdrv_open_inherit), a
    copy-before-write ``target`` after; queries list the newest first."""
    for name in ("source", "temp"):
        vm.qemu_img("create", "-f", "qcow2", name, "1M")
    out = [vm.qmp("blockdev-add", {
        "node-name": "cbw", "driver": "copy-before-write", "cbw-timeout": 3,
        "file": {"driver": "qcow2", "file": {"driver": "file", "filename": "source"}},
        "target": {"driver": "qcow2",
                   "file": {"driver": "blkdebug", "image": {"driver": "file", "filename": "temp"}}}}),
        vm.qmp("blockdev-add", {"node-name": "access", "driver": "snapshot-access", "file": {
            "driver": "copy-before-write", "file": {"driver": "null-co"}, "target": {"driver": "null-co"}}})]
    out += [normalise(vm.qmp("query-named-block-nodes")), normalise(vm.qmp("query-named-block-nodes", {"flat": True})),
            normalise(vm.qmp("x-debug-query-block-graph")), vm.qmp("blockdev-del", {"node-name": "access"}),
            vm.qmp("blockdev-del", {"node-name": "cbw"}), normalise(vm.qmp("query-named-block-nodes", {"flat": True}))]
    return out


def test_nested_children_are_named_in_qemu_order():
    nodes = nested_story(Machine())[3]
    assert [(n["drv"], n["node-name"]) for n in nodes] == [
        ("snapshot-access", "access"), ("null-co", "#blockNNN"), ("copy-before-write", "#blockNNN"),
        ("null-co", "#blockNNN"), ("qcow2", "#blockNNN"), ("file", "#blockNNN"), ("blkdebug", "#blockNNN"),
        ("copy-before-write", "cbw"), ("qcow2", "#blockNNN"), ("file", "#blockNNN")]


@pytest.mark.qemu
@pytest.mark.parametrize("daemon", ["qsd", "system"])
def test_nested_children_as_in_qemu(daemon):
    real, simulated = on_both(nested_story, daemon)
    assert real == simulated


BIGGER_TARGET = [
    {"qemu-img": ["create", "-f", "qcow2", "a.qcow2", "4M"]},
    {"qemu-img": ["create", "-f", "qcow2", "big.qcow2", "8M"]},
    _q("blockdev-add", {"driver": "qcow2", "node-name": "a", "file": {"driver": "file", "filename": "a.qcow2"}}),
    _io("write", "a", 0, 4 * M, 0x11),
    _q("blockdev-add", {"driver": "qcow2", "node-name": "big", "file": {"driver": "file", "filename": "big.qcow2"}}),
    _q("blockdev-add", {"driver": "copy-before-write", "node-name": "c", "file": "a", "target": "big"}),
    _io("write", "c", 3 * M, 64 * K, 0x22),
    _q("blockdev-add", {"driver": "snapshot-access", "node-name": "s", "file": "c"}),
    {"read": {"node": "s", "offset": 3 * M, "length": 64 * K, "pattern": 0x11}},  # the point in time
    _q("query-named-block-nodes", {"flat": True}),
    _q("x-debug-query-block-graph"),
]


def test_a_target_larger_than_the_source_takes_the_copies():
    vm = Machine()
    replies = [run_step(vm, step) for step in BIGGER_TARGET]
    assert all("error" not in r for r in replies if isinstance(r, dict))
    assert vm.contents("big", 3 * M, 64 * K) == [(3 * M, 3 * M + 64 * K, 0x11)]  # the old data, copied
    vm.qmp("blockdev-del", {"node-name": "s"})
    vm.qmp("blockdev-del", {"node-name": "c"})
    vm.qemu_img("create", "-f", "qcow2", "small.qcow2", "2M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "small",
                            "file": {"driver": "file", "filename": "small.qcow2"}})
    with pytest.raises(Exception, match="smaller than its file .* QEMU 7.2 aborts"):
        vm.qmp("blockdev-add", {"driver": "copy-before-write", "node-name": "c", "file": "a", "target": "small"})


@pytest.mark.qemu
@pytest.mark.parametrize("daemon", ["system", "qsd"])
def test_a_larger_target_as_in_qemu(daemon):
    scenario = {"name": "bigger-target", "steps": BIGGER_TARGET}
    real, sim = play(scenario, "qemu", daemon), play(scenario, "sim")
    assert [d.render() for d in compare(scenario, real, sim)] == []
