"""query-named-block-nodes entries are cached (bitlab/block/info.py NodeInfoCache): a cached
entry must never be stale, and a reply must never share objects with the cache."""

import random

import pytest

from bitlab import Machine, QMPError
from bitlab.block.info import block_device_info
from bitlab.qmp_order import wire_order


def fresh(vm: Machine, flat: bool) -> list[dict]:
    """The entries built from scratch, without the cache (what the command returned before it)."""
    return [wire_order(block_device_info(node, flat=flat)) for node in vm.graph.newest_first()]


def check(vm: Machine) -> None:
    for flat in (True, False):
        got = vm.qmp("query-named-block-nodes", {"flat": flat})
        want = fresh(vm, flat)
        assert got == want
        assert [list(entry) for entry in got] == [list(entry) for entry in want]  # member order too


def machine() -> Machine:
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "base.qcow2", "4M")
    vm.qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2", "4M")
    vm.qemu_img("create", "-f", "qcow2", "t.qcow2", "4M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "top",
                            "file": {"driver": "file", "filename": "top.qcow2"}})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "dbg", "file": {
        "driver": "blkdebug", "node-name": "dbg-b", "image": {"driver": "file", "filename": "t.qcow2"}}})
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "null", "size": 4 << 20})
    vm.qemu_img("create", "-f", "raw", "r.raw", "4M")
    vm.qmp("blockdev-add", {"driver": "raw", "node-name": "raw", "file": {"driver": "file", "filename": "r.raw"}})
    return vm


def test_a_write_that_allocates_shows_at_once():
    """actual-size follows the image file; the second query must not reuse the first one's entry."""
    vm = machine()
    sizes = [entry["image"]["actual-size"] for entry in vm.qmp("query-named-block-nodes", {"flat": True})
             if entry["node-name"] == "top"]
    vm.write("top", 0, 65536, 0x41)
    after = [entry["image"]["actual-size"] for entry in vm.qmp("query-named-block-nodes", {"flat": True})
             if entry["node-name"] == "top"]
    # what the file allocates, in 4 KiB blocks: a new image's header, refcount table and block whole and
    # the L1 table's block; then an L2 table and a data cluster, whole
    assert (sizes, after) == ([(3 * 16 + 1) * 4096], [(3 * 16 + 1 + 2 * 16) * 4096])
    check(vm)


def test_bitmaps_and_stored_bitmaps_are_never_stale():
    vm = machine()
    check(vm)
    vm.qmp("block-dirty-bitmap-add", {"node": "top", "name": "b0", "persistent": True})
    check(vm)
    vm.write("top", 65536, 4096, 0x42)
    check(vm)
    vm.qmp("block-dirty-bitmap-disable", {"node": "top", "name": "b0"})
    check(vm)
    vm.qmp("block-dirty-bitmap-remove", {"node": "top", "name": "b0"})
    check(vm)


def test_a_reply_shares_nothing_with_the_cache():
    vm = machine()
    vm.qmp("block-dirty-bitmap-add", {"node": "top", "name": "b0"})
    for flat in (True, False):
        top = next(e for e in vm.qmp("query-named-block-nodes", {"flat": flat}) if e["node-name"] == "top")
        top["image"]["virtual-size"] = -1
        top["cache"]["direct"] = "changed"
        top["dirty-bitmaps"][0]["count"] = -1
        top["image"]["format-specific"]["data"]["compat"] = "changed"
        if not flat:
            top["image"]["backing-image"]["filename"] = "changed"
    check(vm)


def test_graph_changes_show_at_once():
    """A backup's filter comes and goes; nodes are added and deleted; a backing file is opened."""
    vm = machine()
    check(vm)
    vm.qemu_img("create", "-f", "qcow2", "tgt.qcow2", "4M")  # (base.qcow2 is top's backing file: locked)
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "tgt",
                            "file": {"driver": "file", "filename": "tgt.qcow2"}, "backing": None})
    check(vm)
    vm.write("top", 0, 65536, 0x43)
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "top", "target": "tgt", "sync": "full"})
    check(vm)
    vm.step()
    check(vm)
    vm.run()
    check(vm)
    vm.qmp("blockdev-del", {"node-name": "tgt"})
    check(vm)
    vm.qmp("blockdev-del", {"node-name": "null"})
    check(vm)


@pytest.mark.parametrize("seed", range(8))
def test_random_operations_never_read_a_stale_entry(seed):
    """Seeded random sequences of writes, bitmap commands, node changes and job steps: after every
    operation the cached reply equals the one built from scratch. Writes through ``extra`` change
    base.qcow2, which top's backing chain shows (sizes kept up to date in a cached entry)."""
    rng = random.Random(seed)
    vm = machine()
    nodes = ["top", "dbg", "null", "raw", "extra"]
    ops = ["write", "zero", "discard", "bitmap", "remove", "clear", "backup", "step", "run", "add", "del"]
    for _ in range(60):
        op = rng.choice(ops)
        node = rng.choice(nodes)
        try:
            if op == "write":
                vm.write(node, rng.randrange(64) * 65536, rng.choice([512, 65536, 200000]), rng.randrange(256))
            elif op == "zero":
                vm.write_zeroes(node, rng.randrange(64) * 65536, 65536)
            elif op == "discard":
                vm.discard(node, rng.randrange(64) * 65536, 131072)
            elif op == "bitmap":
                vm.qmp("block-dirty-bitmap-add", {"node": node, "name": f"b{rng.randrange(3)}",
                                                  "persistent": node != "null"})
            elif op == "remove":
                vm.qmp("block-dirty-bitmap-remove", {"node": node, "name": f"b{rng.randrange(3)}"})
            elif op == "clear":
                vm.qmp("block-dirty-bitmap-clear", {"node": node, "name": f"b{rng.randrange(3)}"})
            elif op == "backup":
                vm.qmp("blockdev-add", {"driver": "null-co", "node-name": f"t{len(vm.transcript)}",
                                        "size": 4 << 20})
                vm.qmp("blockdev-backup", {"job-id": f"j{len(vm.transcript)}", "device": node,
                                           "target": f"t{len(vm.transcript) - 2}", "sync": "full"})
            elif op == "step":
                vm.step()
            elif op == "run":
                vm.run()
            elif op == "add":
                vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "extra",  # (top's backing file:
                                        "file": {"driver": "file", "filename": "base.qcow2",  # no locks, or
                                                 "locking": "off"}})  # QEMU refuses the write lock)
            elif op == "del":
                vm.qmp("blockdev-del", {"node-name": "extra"})
        except QMPError:
            pass
        check(vm)


def test_a_stored_bitmap_removed_from_an_open_image_shows_at_once():
    """The qcow2 bitmap directory (format-specific) changes while the node stays open."""
    vm = machine()
    vm.qmp("block-dirty-bitmap-add", {"node": "top", "name": "b0", "persistent": True})
    vm.qmp("blockdev-del", {"node-name": "top"})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "top",
                            "file": {"driver": "file", "filename": "top.qcow2"}})
    top = next(e for e in vm.qmp("query-named-block-nodes", {"flat": True}) if e["node-name"] == "top")
    assert top["image"]["format-specific"]["data"]["bitmaps"] == [
        {"name": "b0", "granularity": 65536, "flags": ["in-use", "auto"]}]
    vm.qmp("block-dirty-bitmap-remove", {"node": "top", "name": "b0"})
    top = next(e for e in vm.qmp("query-named-block-nodes", {"flat": True}) if e["node-name"] == "top")
    assert "bitmaps" not in top["image"]["format-specific"]["data"]
    check(vm)


@pytest.mark.parametrize("bitmap", [False, True])
def test_a_reply_built_or_brought_up_to_date_by_its_query_shares_nothing_with_the_cache(bitmap):
    """The entry a query builds goes into that reply as it is, one whose sizes it brings up to date or
    a cached one as a copy (with a dirty bitmap: put together in the order with ``dirty-bitmaps``):
    changing it must not reach the next reply."""
    vm = machine()
    if bitmap:
        vm.qmp("block-dirty-bitmap-add", {"node": "top", "name": "b0"})
    for step in ("built", "sizes", "cached"):
        if step == "sizes":
            vm.write("top", 0, 65536, 0x44)  # (top's entry is kept, its actual-size brought up to date)
        top = next(e for e in vm.qmp("query-named-block-nodes", {"flat": False}) if e["node-name"] == "top")
        top["image"]["actual-size"] = -1
        top["image"]["backing-image"]["virtual-size"] = -1
        top["cache"]["direct"] = "changed"
        top["image"]["format-specific"]["data"]["compat"] = "changed"
        if bitmap:
            top["dirty-bitmaps"][0]["count"] = -1
        check(vm)


def test_a_stale_entry_is_an_assertion_error() -> None:
    """The test suite checks every entry the cache answers with (tests/conftest.py): a field the cache's state
    misses (here one changed behind its back) fails loudly instead of showing an old value."""
    from bitlab.block import info

    assert info.VERIFY_CACHE
    vm = machine()
    check(vm)
    vm.graph.nodes["top"].cache_direct = True  # (never changes after blockdev-add, so not in the state)
    with pytest.raises(AssertionError, match="query-named-block-nodes cache: stale entry for 'top'"):
        vm.qmp("query-named-block-nodes", {"flat": True})
