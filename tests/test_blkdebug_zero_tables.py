"""A zero write or discard over several L2 tables fails in one of them (blkdebug): qcow2 carries it out table by
table (qcow2_cluster_zeroize, qcow2_cluster_discard), so the tables before the failing one keep the change (their
clusters zero, or freed) while the request fails; the discards of the clusters it freed are dropped with the
failure (qcow2_process_discards). Images of 4 KiB clusters: an L2 table maps 2 MiB."""

from __future__ import annotations

import json

import pytest

from bitlab import Machine, QMPError
from bitlab.qemu_img import QemuImgError
from tests.both import on_both

MIB = 1 << 20
# where the L2 tables of a fresh image written at 0, 2 and 4 MiB (2 MiB each) lie: after the header, the refcount
# table and block, the L1 table, then each table before its 512 data clusters (test_where_the_tables_are)
L2_SECTORS = [32, 4136, 8240]
# (operation, offset, length, table whose l2_load read fails, the rule's iotype)
CASES = [("write -z", 0, 6 * MIB, 1, "read"), ("write -z", 0, 6 * MIB, 2, "read"),
         ("write -z -u", 0, 6 * MIB, 1, "read"), ("discard", 0, 6 * MIB, 1, "read"),
         ("discard", 0, 6 * MIB, 2, "read"), ("write -z", 1024, 5 * MIB, 2, "read"),
         ("discard", 3 * MIB + 512, 2 * MIB, 2, "read"), ("write -z", 0, 6 * MIB, 0, "read"),
         ("write -z -u", 4096, 4 * MIB, 2, "read")]


def _image(vm: Machine, name: str) -> None:
    vm.qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4096", name, "8M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "w", "file": {"driver": "file", "filename": name}})
    vm.write("w", 0, 6 * MIB, 0x5A)
    vm.qmp("blockdev-del", {"node-name": "w"})


def story(vm: Machine) -> dict:
    """Each case on a new image: the request's answer (an error), then qemu-img map and check of the image."""
    out = {}
    for i, (verb, offset, length, table, iotype) in enumerate(CASES):
        name = f"z{i}.qcow2"
        _image(vm, name)
        rule = {"event": "l2_load", "iotype": iotype, "errno": 5, "sector": L2_SECTORS[table]}
        blk = {"driver": "blkdebug", "image": {"driver": "file", "filename": name}, "inject-error": [rule]}
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": f"n{i}", "file": blk, "discard": "unmap"})
        key = f"{verb} {offset} {length} fails in table {table}"
        try:
            out[key] = vm.guest_io(f"n{i}", f"{verb} {offset} {length}")
        except QMPError as err:
            out[key] = err.desc
        vm.qmp("blockdev-del", {"node-name": f"n{i}"})
        out[key + ": map"] = [(m["start"], m["length"], m["zero"], m["data"], m.get("offset"))
                              for m in json.loads(vm.qemu_img("map", "--output=json", name))]
        out[key + ": check"] = vm.qemu_img("check", name).splitlines()[1]
    return out


def test_where_the_tables_are() -> None:
    vm = Machine()
    _image(vm, "x.qcow2")
    layout = vm.images["x.qcow2"].layout
    assert [int(layout.l2.value_at(t)) * 4096 // 512 for t in range(3)] == L2_SECTORS


def test_tables_before_the_failure_keep_the_change() -> None:
    out = story(Machine())
    data = [(0, 2 * MIB, False, True, 20480), (2 * MIB, 2 * MIB, False, True, 2121728),
            (4 * MIB, 2 * MIB, False, True, 4222976), (6 * MIB, 2 * MIB, True, False, None)]
    # table 0 done, table 1's read failed: the first 2 MiB read as zeroes; without unmap its clusters stay
    assert out[f"write -z 0 {6 * MIB} fails in table 1"].startswith("write failed: Input/output error")
    assert out[f"write -z 0 {6 * MIB} fails in table 1: map"] == [(0, 2 * MIB, True, False, 20480), *data[1:]]
    assert out[f"write -z 0 {6 * MIB} fails in table 1: check"].startswith("1536/2048 = 75.00% allocated")
    # with unmap (and a discard) they are freed
    assert out[f"write -z -u 0 {6 * MIB} fails in table 1: map"] == [(0, 2 * MIB, True, False, None), *data[1:]]
    assert out[f"discard 0 {6 * MIB} fails in table 1: map"] == [(0, 2 * MIB, True, False, None), *data[1:]]
    assert out[f"discard 0 {6 * MIB} fails in table 1: check"].startswith("1024/2048 = 50.00% allocated")
    # tables 0 and 1 done
    assert out[f"discard 0 {6 * MIB} fails in table 2: map"] == [(0, 4 * MIB, True, False, None), *data[2:]]
    # the first table's read failed: nothing changed
    assert out[f"write -z 0 {6 * MIB} fails in table 0: map"] == data


@pytest.mark.qemu
def test_tables_before_the_failure_match_qemu() -> None:
    real, sim = on_both(story)
    assert real == sim


# qcow2_free_clusters ignores a failed update_refcount: the cluster keeps its refcount (a leak) and the refcount
# block stays out of the cache, so the next update of it reads it again
LOST = [([0, 2, 4], "discard", 1024, 2 * MIB), ([0], "discard", 2 * MIB - 4096, 2 * MIB)]


def lost_story(vm: Machine) -> dict:
    """A rule armed by ``cluster_free`` fails the refcount block's read as a discard frees its first cluster."""
    out = {}
    for i, (written, verb, offset, length) in enumerate(LOST):
        name = f"l{i}.qcow2"
        vm.qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4096", name, "8M")
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "w", "file": {"driver": "file", "filename": name}})
        for table in written:
            vm.write("w", table * MIB, 2 * MIB, 0x5A)
        vm.qmp("blockdev-del", {"node-name": "w"})
        blk = {"driver": "blkdebug", "image": {"driver": "file", "filename": name},
               "inject-error": [{"event": "cluster_free", "iotype": "read", "errno": 5}]}
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": f"n{i}", "file": blk, "discard": "unmap"})
        try:
            out[name] = vm.guest_io(f"n{i}", f"{verb} {offset} {length}").splitlines()[0]
        except QMPError as err:
            out[name] = err.desc
        vm.qmp("blockdev-del", {"node-name": f"n{i}"})
    return out


def test_a_lost_refcount_update_exact() -> None:
    vm = Machine()
    # the discard goes on without it; in the second, the new L2 table's allocation reads the block again, and fails
    assert lost_story(vm) == {"l0.qcow2": f"discard {2 * MIB}/{2 * MIB} bytes at offset 1024",
                              "l1.qcow2": "discard failed: Input/output error"}
    for name in ("l0.qcow2", "l1.qcow2"):  # (leaked clusters: bitlab does not model them)
        with pytest.raises(QemuImgError, match="a refcount block read failed as node 'n[01]' freed clusters"):
            vm.qemu_img("check", name)


@pytest.mark.qemu
def test_a_lost_refcount_update_matches_qemu() -> None:
    with Machine(backend="qemu") as vm:
        real = lost_story(vm)
        for name in ("l0.qcow2", "l1.qcow2"):
            with pytest.raises(QemuImgError, match="Leaked cluster"):
                vm.qemu_img("check", name)
    assert real == lost_story(Machine())


# A discard over a range without an L2 table allocates one (qcow2_cluster_discard's get_cluster_table), whose L1
# entry is written and flushed (bdrv_pwrite_sync): the blkdebug node is flushed after its last write, so the guest's
# flush that follows fires ``flush_to_disk`` on it (qcow2 was written) without reaching its rules, and the rule it
# armed fails the next request: the write.
FLUSHED = {"discard over no L2 table": [("discard", 262144, 196608)],
           "unaligned discard over no L2 table": [("discard", 257024, 204800)],
           "discard of part of a cluster": [("discard", 1024, 2048)],
           "write then discard": [("write", 0, 4096), ("discard", 257024, 204800)],
           "zero write": [("write -z", 262144, 196608)]}


def flushed_story(vm: Machine) -> dict:
    """Each case on a new image, a rule on ``flush_to_disk`` (once): the requests, each followed by a flush (as
    qemu-io over NBD flushes as it exits), then a write elsewhere."""
    out = {}
    for i, (name, ops) in enumerate(FLUSHED.items()):
        vm.qemu_img("create", "-f", "qcow2", f"f{i}.qcow2", "4M")
        vm.qmp("blockdev-add", {"driver": "file", "node-name": f"f{i}", "filename": f"f{i}.qcow2"})
        vm.qmp("blockdev-add", {"driver": "blkdebug", "node-name": f"d{i}", "image": f"f{i}", "discard": "unmap",
                                "inject-error": [{"event": "flush_to_disk", "errno": 5, "once": True}]})
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": f"q{i}", "file": f"d{i}", "discard": "unmap"})
        replies = []
        for verb, offset, length in [*ops, ("write -P 0x13", 1839104, 512)]:
            replies.append(vm.guest_io(f"q{i}", f"{verb} {offset} {length}").splitlines()[0])
            vm.guest_io(f"q{i}", "flush")
        out[name] = replies[-1]
    return out


def test_a_flush_after_an_allocating_discard_exact() -> None:
    failed, wrote = "write failed: Input/output error", "wrote 512/512 bytes at offset 1839104"
    assert flushed_story(Machine()) == {
        "discard over no L2 table": failed, "unaligned discard over no L2 table": failed,
        "discard of part of a cluster": failed,  # (nothing written below: the node's flush never reaches the rule)
        "write then discard": wrote,  # (the first flush reached the rule: it failed that flush, once)
        "zero write": wrote}  # (the blkdebug node was written after its last flush: the flush uses the rule up)


@pytest.mark.qemu
def test_a_flush_after_an_allocating_discard_matches_qemu() -> None:
    real, sim = on_both(flushed_story)
    assert real == sim


def later_story(vm: Machine) -> dict:
    """What a failed or flushed multi-table request leaves for the next one, on images of 4 KiB clusters:
    a discard whose first table's entry changes before the next table's allocation flushes the L2 cache (the
    table is clean afterwards: the guest's flush writes nothing, so ``flush_to_disk`` does not reach the rule);
    a zero write whose refcount block cannot be read (it stays out of the cache: the next allocation reads it)."""
    cases = {"discard": ([0], "discard 2093056 4194304", {"event": "flush_to_disk", "errno": 5, "once": True}, ""),
             "zero write": ([2], "write -z -u 3145728 3145728",
                            {"event": "refblock_load", "iotype": "read", "errno": 5}, ""),
             # v2: no zero clusters, so a zero write without a backing file is a discard (table by table too)
             "v2 zero write": ([0], "write -z 4096 5242880", {"event": "l2_alloc_write", "errno": 5, "once": True},
                               ",compat=0.10"),
             "v2 discard": ([0, 2, 4], "discard 0 2097152", {"event": "cluster_free", "iotype": "read", "errno": 5},
                            ",compat=0.10")}
    out = {}
    for i, (name, (written, request, rule, compat)) in enumerate(cases.items()):
        image = f"n{i}.qcow2"
        vm.qemu_img("create", "-f", "qcow2", "-o", f"cluster_size=4096{compat}", image, "8M")
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "w", "file": {"driver": "file", "filename": image}})
        for table in written:
            vm.write("w", table * MIB, 2 * MIB, 0x5A)
        vm.qmp("blockdev-del", {"node-name": "w"})
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": f"q{i}", "discard": "unmap", "file": {
            "driver": "blkdebug", "image": {"driver": "file", "filename": image}, "inject-error": [rule]}})
        replies = []
        for command in (request, "flush", "write -P 0x13 7340032 512"):
            reply = vm.guest_io(f"q{i}", f"{command}")
            replies.append(reply.splitlines()[0] if reply else "")
        out[name] = replies
        if name == "v2 zero write":  # (the first table's clusters unallocated, the write's cluster the second freed)
            vm.qmp("blockdev-del", {"node-name": f"q{i}"})
            out[name + ": data"] = [(m["start"], m["length"], m.get("offset")) for m in
                                    json.loads(vm.qemu_img("map", "--output=json", image)) if m["data"]]
    return out


def test_what_a_request_leaves_for_the_next_exact() -> None:
    failed = "write failed: Input/output error"
    assert later_story(Machine()) == {"discard": ["discard 4194304/4194304 bytes at offset 2093056", "", failed],
                                      "zero write": [failed, "", failed],
                                      "v2 zero write": [failed, "", "wrote 512/512 bytes at offset 7340032"],
                                      "v2 zero write: data": [(0, 4096, 20480), (7340032, 4096, 28672)],
                                      "v2 discard": ["discard 2097152/2097152 bytes at offset 0", "", failed]}


@pytest.mark.qemu
def test_what_a_request_leaves_for_the_next_matches_qemu() -> None:
    real, sim = on_both(later_story)
    assert real == sim


def placed_story(vm: Machine) -> list:
    """A discard over three tables (the middle one without an L2 table) that fails reading the third table's:
    the first table's clusters were freed before the middle table was allocated, which takes the first of them;
    the next allocation comes after it (qemu-img map shows where a later write's cluster went)."""
    vm.qemu_img("create", "-f", "qcow2", "-o", "cluster_size=4096", "p.qcow2", "8M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "w", "file": {"driver": "file", "filename": "p.qcow2"}})
    for table in (0, 4):
        vm.write("w", table * MIB, 2 * MIB, 0x5A)
    vm.qmp("blockdev-del", {"node-name": "w"})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "q", "discard": "unmap", "file": {
        "driver": "blkdebug", "image": {"driver": "file", "filename": "p.qcow2"},
        "inject-error": [{"event": "l2_alloc_write", "iotype": "read", "errno": 5, "once": True}]}})
    replies = [vm.guest_io("q", command).splitlines()[0] for command in ("discard 4096 5242880",
                                                                       "write -P 0x13 7340032 512")]
    vm.qmp("blockdev-del", {"node-name": "q"})
    return [*replies, [(m["start"], m.get("offset")) for m in json.loads(vm.qemu_img("map", "--output=json", "p.qcow2"))
                       if m["data"]]]


def test_a_failed_discard_places_the_next_cluster_exact() -> None:
    assert placed_story(Machine()) == ["discard failed: Input/output error", "wrote 512/512 bytes at offset 7340032",
                                       [(0, 20480), (4194304, 2121728), (7340032, 32768)]]


@pytest.mark.qemu
def test_a_failed_discard_places_the_next_cluster_on_qemu() -> None:
    real, sim = on_both(placed_story)
    assert real == sim
