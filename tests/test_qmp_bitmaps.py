"""Every bitmap command and its errors, with QEMU 7.2's exact classes and texts."""

import pytest

from bitlab import Machine, QMPError

from .both import on_both
from .conftest import add_qcow2


def err(vm, name, args=None):
    with pytest.raises(QMPError) as info:
        vm.qmp(name, args)
    return info.value.error_class, info.value.desc


def bitmaps(vm, node):
    for entry in vm.qmp("query-named-block-nodes", {"flat": True}):
        if entry["node-name"] == node:
            return entry.get("dirty-bitmaps", [])
    raise KeyError(node)


ADD = "block-dirty-bitmap-add"


def test_add_defaults_and_wire_order(qvm):
    qvm.qmp(ADD, {"node": "drive0", "name": "bitmap0"})
    assert bitmaps(qvm, "drive0") == [{"name": "bitmap0", "recording": True, "persistent": False,
                                       "busy": False, "granularity": 65536, "count": 0}]
    assert list(bitmaps(qvm, "drive0")[0]) == ["name", "recording", "persistent", "busy", "granularity", "count"]


def test_default_granularity_follows_cluster_size():
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "-o", "cluster_size=2048", "small.qcow2", "1M")
    vm.qemu_img("create", "-f", "qcow2", "-o", "cluster_size=2M", "large.qcow2", "8M")
    vm.qemu_img("create", "-f", "raw", "r.raw", "1M")
    for node, fmt, fname in [("s", "qcow2", "small.qcow2"), ("l", "qcow2", "large.qcow2"), ("r", "raw", "r.raw")]:
        vm.qmp("blockdev-add", {"driver": fmt, "node-name": node, "file": {"driver": "file", "filename": fname}})
        vm.qmp(ADD, {"node": node, "name": "b"})
    assert [bitmaps(vm, n)[0]["granularity"] for n in ("s", "l", "r")] == [4096, 65536, 65536]


@pytest.mark.parametrize("granularity", [512, 4096, 65536, 1 << 31])
def test_granularity_accepted(qvm, granularity):
    qvm.qmp(ADD, {"node": "drive0", "name": "b", "granularity": granularity})
    assert bitmaps(qvm, "drive0")[0]["granularity"] == granularity


@pytest.mark.parametrize("granularity", [0, 1, 256, 511, 64000, 3 * 65536])
def test_granularity_refused(qvm, granularity):
    assert err(qvm, ADD, {"node": "drive0", "name": "b", "granularity": granularity}) == (
        "GenericError", "Granularity must be power of 2 and at least 512")


@pytest.mark.parametrize("granularity", [1 << 32, -1, -65536])
def test_granularity_out_of_uint32(qvm, granularity):
    assert err(qvm, ADD, {"node": "drive0", "name": "b", "granularity": granularity}) == (
        "GenericError", "Parameter 'granularity' expects uint32_t")


@pytest.mark.parametrize("value", [65536.0, "65536", True, None, [65536], 1 << 64])
def test_granularity_wrong_type(qvm, value):
    # Real QEMU 7.2 names the C type here, not "integer" as its QAPI docs would suggest.
    assert err(qvm, ADD, {"node": "drive0", "name": "b", "granularity": value}) == (
        "GenericError", "Parameter 'granularity' expects uint64")


def test_add_name_checks(qvm):
    assert err(qvm, ADD, {"node": "drive0"}) == ("GenericError", "Parameter 'name' is missing")
    assert err(qvm, ADD, {"name": "b"}) == ("GenericError", "Parameter 'node' is missing")
    assert err(qvm, ADD, {"node": "drive0", "name": ""}) == ("GenericError", "Bitmap name cannot be empty")
    assert err(qvm, ADD, {"node": "drive0", "name": 5}) == (
        "GenericError", "Invalid parameter type for 'name', expected: string")
    long = "b" * 1024
    assert err(qvm, ADD, {"node": "drive0", "name": long}) == ("GenericError", f"Bitmap name too long: {long}")
    qvm.qmp(ADD, {"node": "drive0", "name": "b" * 1023})
    # The limit is in bytes: 512 two-byte characters are too long.
    wide = "é" * 512
    assert err(qvm, ADD, {"node": "drive0", "name": wide}) == ("GenericError", f"Bitmap name too long: {wide}")
    qvm.qmp(ADD, {"node": "drive0", "name": "b0"})
    assert err(qvm, ADD, {"node": "drive0", "name": "b0"}) == ("GenericError", "Bitmap already exists: b0")


def test_add_unknown_node_and_unexpected_member(qvm):
    assert err(qvm, ADD, {"node": "nope", "name": "b"}) == (
        "GenericError", "Cannot find device='nope' nor node-name='nope'")
    assert err(qvm, ADD, {"node": "drive0", "name": "b", "colour": "red"}) == (
        "GenericError", "Parameter 'colour' is unexpected")


def test_same_name_on_two_nodes_and_newest_first(qvm):
    add_qcow2(qvm, "drive1")
    for name in ("A", "B", "C"):
        qvm.qmp(ADD, {"node": "drive0", "name": name})
    qvm.qmp(ADD, {"node": "drive1", "name": "A"})
    assert [b["name"] for b in bitmaps(qvm, "drive0")] == ["C", "B", "A"]
    qvm.qmp("block-dirty-bitmap-remove", {"node": "drive0", "name": "B"})
    qvm.qmp(ADD, {"node": "drive0", "name": "B"})
    assert [b["name"] for b in bitmaps(qvm, "drive0")] == ["B", "C", "A"]
    assert [b["name"] for b in bitmaps(qvm, "drive1")] == ["A"]


def test_persistent_only_on_qcow2():
    vm = Machine()
    vm.qemu_img("create", "-f", "raw", "r.raw", "64M")
    vm.qmp("blockdev-add", {"driver": "raw", "node-name": "r", "file": {"driver": "file", "filename": "r.raw"}})
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "n", "size": 1 << 20})
    for node in ("r", "n"):
        assert err(vm, ADD, {"node": node, "name": "b", "persistent": True}) == (
            "GenericError", f"Can't store persistent bitmaps to {node}: Operation not supported")
    add_qcow2(vm, "q")
    vm.qmp(ADD, {"node": "q", "name": "b", "persistent": True})
    assert bitmaps(vm, "q")[0]["persistent"] is True
    long = "p" * 1024
    assert err(vm, ADD, {"node": "q", "name": long, "persistent": True}) == (
        "GenericError", f"Can't make bitmap '{long}' persistent in 'q': Name length exceeds maximum (1023 characters)")


def _taken_name(vm) -> list:
    """A persistent add of a name in use: qcow2 v3 and v2 say it is taken before their own checks."""
    vm.qemu_img("create", "-f", "qcow2", "t3.qcow2", "8M")
    vm.qemu_img("create", "-f", "qcow2", "-o", "compat=0.10", "t2.qcow2", "8M")
    vm.qemu_img("bitmap", "--add", "t3.qcow2", "stored")
    out = []
    for node in ("t3", "t2"):
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": node,
                                "file": {"driver": "file", "filename": f"{node}.qcow2", "node-name": f"{node}f"}})
        vm.qmp(ADD, {"node": node, "name": "y"})
        vm.qmp(ADD, {"node": f"{node}f", "name": "y"})
        for args in ({"name": "y", "persistent": True}, {"name": "y", "persistent": True, "granularity": 1000},
                     {"name": "stored", "persistent": True}):
            for where in (node, f"{node}f"):
                try:
                    out.append(vm.qmp(ADD, {"node": where, **args}))
                except QMPError as error:
                    out.append(error.desc)
    return out


def test_persistent_name_taken():
    got = _taken_name(Machine())
    taken = "Bitmap already exists: y"
    assert got[:6] == [taken, "Can't store persistent bitmaps to t3f: Operation not supported",
                       "Granularity must be power of 2 and at least 512",
                       "Granularity must be power of 2 and at least 512",
                       "Bitmap already exists: stored",
                       "Can't store persistent bitmaps to t3f: Operation not supported"]
    assert got[6] == taken  # (not "Cannot store dirty bitmaps in qcow2 v2 files")


@pytest.mark.qemu
def test_persistent_name_taken_matches_qemu():
    want, got = on_both(_taken_name)
    assert got == want


def test_disabled_bitmap_ignores_writes(qvm):
    qvm.qmp(ADD, {"node": "drive0", "name": "off", "disabled": True})
    qvm.qmp(ADD, {"node": "drive0", "name": "on"})
    qvm.write("drive0", 0, "64k")
    counts = {b["name"]: (b["count"], b["recording"]) for b in bitmaps(qvm, "drive0")}
    assert counts == {"off": (0, False), "on": (65536, True)}


@pytest.mark.parametrize("cmd", ["block-dirty-bitmap-remove", "block-dirty-bitmap-clear",
                                 "block-dirty-bitmap-enable", "block-dirty-bitmap-disable",
                                 "x-debug-block-dirty-bitmap-sha256"])
def test_lookup_errors(qvm, cmd):
    assert err(qvm, cmd, {"node": "nope", "name": "b"}) == ("GenericError", "Node 'nope' not found")
    assert err(qvm, cmd, {"node": "drive0", "name": "b"}) == ("GenericError", "Dirty bitmap 'b' not found")
    assert err(qvm, cmd, {"node": "drive0"}) == ("GenericError", "Parameter 'name' is missing")


def test_clear_enable_disable_are_idempotent(qvm):
    qvm.qmp(ADD, {"node": "drive0", "name": "b"})
    qvm.write("drive0", "1M", "128k")
    qvm.qmp("block-dirty-bitmap-enable", {"node": "drive0", "name": "b"})
    qvm.qmp("block-dirty-bitmap-disable", {"node": "drive0", "name": "b"})
    qvm.qmp("block-dirty-bitmap-disable", {"node": "drive0", "name": "b"})
    assert bitmaps(qvm, "drive0")[0]["count"] == 131072
    assert bitmaps(qvm, "drive0")[0]["recording"] is False
    qvm.qmp("block-dirty-bitmap-clear", {"node": "drive0", "name": "b"})
    assert bitmaps(qvm, "drive0")[0]["count"] == 0
    assert bitmaps(qvm, "drive0")[0]["recording"] is False


def test_busy_readonly_inconsistent_checks(qvm):
    qvm.qmp(ADD, {"node": "drive0", "name": "b"})
    bm = qvm.graph.nodes["drive0"].find_bitmap("b")
    bm.busy = True
    busy = "Bitmap 'b' is currently in use by another operation and cannot be used"
    for cmd in ("block-dirty-bitmap-remove", "block-dirty-bitmap-clear", "block-dirty-bitmap-enable",
                "block-dirty-bitmap-disable"):
        assert err(qvm, cmd, {"node": "drive0", "name": "b"}) == ("GenericError", busy)
    bm.busy, bm.inconsistent = False, True
    inconsistent = "Bitmap 'b' is inconsistent and cannot be used"
    assert err(qvm, "block-dirty-bitmap-clear", {"node": "drive0", "name": "b"}) == ("GenericError", inconsistent)
    assert err(qvm, "block-dirty-bitmap-enable", {"node": "drive0", "name": "b"}) == ("GenericError", inconsistent)
    bm.inconsistent, bm.readonly = False, True
    readonly = "Bitmap 'b' is readonly and cannot be modified"
    assert err(qvm, "block-dirty-bitmap-clear", {"node": "drive0", "name": "b"}) == ("GenericError", readonly)
    assert err(qvm, "block-dirty-bitmap-remove", {"node": "drive0", "name": "b"}) == ("GenericError", readonly)
    qvm.qmp("block-dirty-bitmap-disable", {"node": "drive0", "name": "b"})  # ALLOW_RO
    bm.readonly, bm.inconsistent = False, True
    qvm.qmp("block-dirty-bitmap-remove", {"node": "drive0", "name": "b"})  # inconsistent ones can go
    assert bitmaps(qvm, "drive0") == []


MERGE = "block-dirty-bitmap-merge"


def test_merge_forms_and_granularities(qvm):
    add_qcow2(qvm, "drive1")
    qvm.qmp(ADD, {"node": "drive0", "name": "a", "granularity": 65536})
    qvm.qmp(ADD, {"node": "drive0", "name": "fine", "granularity": 4096})
    qvm.qmp(ADD, {"node": "drive1", "name": "ext", "granularity": 131072})
    qvm.qmp(ADD, {"node": "drive0", "name": "t", "granularity": 65536, "disabled": True})
    qvm.write("drive0", 126976, 8192)  # two 64K clusters, two 4K chunks
    qvm.write("drive1", "4M", 512)  # one 128K chunk = two 64K chunks
    qvm.qmp(MERGE, {"node": "drive0", "target": "t", "bitmaps": ["fine", {"node": "drive1", "name": "ext"}]})
    target = next(b for b in bitmaps(qvm, "drive0") if b["name"] == "t")
    assert target["count"] == 4 * 65536 and target["recording"] is False
    qvm.qmp(MERGE, {"node": "drive0", "target": "a", "bitmaps": ["a"]})  # into itself
    assert next(b for b in bitmaps(qvm, "drive0") if b["name"] == "a")["count"] == 131072


def test_merge_errors_leave_target_unchanged(qvm):
    vm = qvm
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "half", "size": 32 << 20})
    vm.qmp(ADD, {"node": "drive0", "name": "t"})
    vm.qmp(ADD, {"node": "drive0", "name": "s"})
    vm.qmp(ADD, {"node": "half", "name": "h"})
    vm.write("drive0", 0, 1)
    vm.qmp("block-dirty-bitmap-clear", {"node": "drive0", "name": "s"})
    vm.write("drive0", "1M", 1)
    before = vm.qmp("x-debug-block-dirty-bitmap-sha256", {"node": "drive0", "name": "t"})
    assert err(vm, MERGE, {"node": "drive0", "target": "t", "bitmaps": ["s", "missing"]}) == (
        "GenericError", "Dirty bitmap 'missing' not found")
    assert err(vm, MERGE, {"node": "drive0", "target": "t", "bitmaps": [{"node": "half", "name": "h"}]}) == (
        "GenericError", "Bitmaps are of different sizes (destination size is 67108864, source size is 33554432) "
                        "and can't be merged")
    assert err(vm, MERGE, {"node": "drive0", "target": "t", "bitmaps": [{"node": "x", "name": "h"}]}) == (
        "GenericError", "Node 'x' not found")
    assert err(vm, MERGE, {"node": "drive0", "target": "nope", "bitmaps": ["s"]}) == (
        "GenericError", "Dirty bitmap 'nope' not found")
    assert err(vm, MERGE, {"node": "drive0", "target": "t", "bitmaps": "s"}) == (
        "GenericError", "Invalid parameter type for 'bitmaps', expected: array")
    assert err(vm, MERGE, {"node": "drive0", "target": "t", "bitmaps": [5]}) == (
        "GenericError", "Invalid parameter type for 'null', expected: BlockDirtyBitmapOrStr")
    assert err(vm, MERGE, {"node": "drive0", "target": "t", "bitmaps": [{"node": "drive0"}]}) == (
        "GenericError", "Parameter 'bitmaps[0].name' is missing")
    assert vm.qmp("x-debug-block-dirty-bitmap-sha256", {"node": "drive0", "name": "t"}) == before


def test_merge_empty_list_is_refused_not_crashed(qvm):
    qvm.qmp(ADD, {"node": "drive0", "name": "t"})
    cls, desc = err(qvm, MERGE, {"node": "drive0", "target": "t", "bitmaps": []})
    assert cls == "GenericError" and "QEMU 7.2 crashes" in desc


def test_sha256_of_empty_and_written(qvm):
    qvm.qmp(ADD, {"node": "drive0", "name": "b"})
    empty = qvm.qmp("x-debug-block-dirty-bitmap-sha256", {"node": "drive0", "name": "b"})
    # 1024 bits = 128 zero bytes
    assert empty == {"sha256": "38723a2e5e8a17aa7950dc008209944e898f69a7bd10a23c839d341e935fd5ca"}


def test_dirty_bitmap_is_a_snapshot_with_qemus_lookup_errors():
    vm = Machine()
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "d0", "size": 1 << 20})
    vm.qmp("block-dirty-bitmap-add", {"node": "d0", "name": "b", "granularity": 65536})
    vm.write("d0", 0, 512)
    snap = vm.dirty_bitmap("d0", "b")
    assert (snap.name, snap.granularity, snap.size, snap.bits.count()) == ("b", 65536, 1 << 20, 1)
    snap.bits.setall(1)
    assert vm.qmp("query-named-block-nodes")[0]["dirty-bitmaps"][0]["count"] == 65536
    with pytest.raises(QMPError) as err:
        vm.dirty_bitmap("d0", "x")
    assert err.value.desc == "Dirty bitmap 'x' not found"
    with pytest.raises(QMPError) as err:
        vm.dirty_bitmap("nope", "b")
    assert err.value.desc == "Node 'nope' not found"


ENABLE_MISSING = {"execute": "transaction", "arguments": {"actions": [
    {"type": "block-dirty-bitmap-add", "data": {"node": "drive0", "name": "b0"}},
    {"type": "block-dirty-bitmap-enable", "data": {"node": "drive0", "name": "nope"}}]}}


def test_a_transactions_enable_of_a_missing_bitmap_says_qemu_crashes(qvm):
    """QEMU 7.2's block_dirty_bitmap_enable_abort disables the bitmap its prepare did not find (NULL): bitlab
    answers, and says so; the other actions are rolled back. A disable action, or the command alone, answers as
    QEMU does."""
    reply = qvm.execute(ENABLE_MISSING)
    assert reply["error"]["desc"] == (
        "Dirty bitmap 'nope' not found (bitlab answers this: QEMU 7.2 crashes (SIGSEGV) when a transaction's "
        "block-dirty-bitmap-enable does not find its bitmap: its abort disables a NULL bitmap)")
    assert qvm.qmp("query-named-block-nodes")[0].get("dirty-bitmaps") is None  # (b0 rolled back)
    disable = {"execute": "transaction", "arguments": {"actions": [
        {"type": "block-dirty-bitmap-disable", "data": {"node": "drive0", "name": "nope"}}]}}
    assert qvm.execute(disable)["error"]["desc"] == "Dirty bitmap 'nope' not found"
    with pytest.raises(QMPError, match="^GenericError: Dirty bitmap 'nope' not found$"):
        qvm.qmp("block-dirty-bitmap-enable", {"node": "drive0", "name": "nope"})


@pytest.mark.qemu
def test_qemu_crashes_on_a_transactions_enable_of_a_missing_bitmap():
    with Machine(backend="qemu") as vm:
        add_qcow2(vm, "drive0")
        with pytest.raises(Exception, match="Disconnected"):  # (the daemon is gone: SIGSEGV)
            vm.execute(ENABLE_MISSING)
