"""External snapshots (blockdev-snapshot-sync, blockdev-snapshot): QEMU 7.2's checks and texts, what follows
(the old node read-only, the guest's writes in the overlay, bitmaps that stay behind), transactions that roll
a snapshot back — in the simulator with QEMU's exact texts, and the same stories on real QEMU 7.2."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from bitlab import Machine
from bitlab.errors import QMPError
from tests.both import on_both

AUTO = re.compile(r"#block\d+")
HOST = re.compile(r"disk size: .*|\d+ ops; .*")  # host file layout and timings: not simulated


def _mask(value: Any) -> Any:
    """Host-file layout is not simulated (``actual-size`` left out); automatic node names differ."""
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items() if k != "actual-size"}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    if isinstance(value, str):
        return HOST.sub("", AUTO.sub("#auto", value))
    return value


class Recorder:
    """Runs QMP commands on a machine and keeps each reply (masked) or error text, in order."""

    def __init__(self, vm: Machine) -> None:
        self.vm, self.out = vm, []

    def __call__(self, name: str, args: dict | None = None) -> Any:
        try:
            value = _mask(self.vm.qmp(name, args))
        except QMPError as err:
            value = f"{err.error_class}: {_mask(err.desc)}"
        self.out.append((name, value))
        return value

    def note(self, what: str, value: Any) -> None:
        self.out.append((what, _mask(value)))


def _bitmaps(vm: Machine) -> dict:
    """Per named node: read-only, and its bitmaps' (name, count)."""
    return {n["node-name"]: (n["ro"], [(b.get("name"), b["count"]) for b in n.get("dirty-bitmaps", [])])
            for n in vm.qmp("query-named-block-nodes", {"flat": True}) if not n["node-name"].startswith("#")}


def _txn(*actions: tuple[str, dict], **props: str) -> dict:
    args: dict = {"actions": [{"type": kind, "data": data} for kind, data in actions]}
    if props:
        args["properties"] = {k.replace("_", "-"): v for k, v in props.items()}
    return args


# -- the stories --------------------------------------------------------------------------------------------

def sync_errors_story(vm: Machine) -> list:
    """blockdev-snapshot-sync on a bare qcow2 node: every check in order; then a snapshot whose overlay
    nobody holds (it goes at once, the old node stays read-only)."""
    r = Recorder(vm)
    vm.qemu_img("create", "-f", "qcow2", "base.qcow2", "64M")
    vm.qemu_img("create", "-f", "qcow2", "ovb.qcow2", "64M")
    r("blockdev-add", {"driver": "qcow2", "node-name": "drive0", "file": {"driver": "file", "filename": "base.qcow2"}})
    r("blockdev-add", {"driver": "null-co", "node-name": "null0", "size": 64 << 20})
    r("block-dirty-bitmap-add", {"node": "drive0", "name": "b0"})
    for args in [
        {"node-name": "drive0", "snapshot-file": "ov1.qcow2"},
        {"device": "drive0", "snapshot-file": "ov1.qcow2"},
        {"snapshot-file": "ov1.qcow2", "snapshot-node-name": "ov1"},
        {"node-name": "nope", "snapshot-file": "ov1.qcow2", "snapshot-node-name": "ov1"},
        {"node-name": "drive0", "snapshot-file": "ov1.qcow2", "snapshot-node-name": "drive0"},
        {"node-name": "drive0", "snapshot-file": "ov1.qcow2", "snapshot-node-name": "null0"},
        {"node-name": "drive0", "snapshot-file": "ovx.qcow2", "snapshot-node-name": "ovx", "mode": "existing"},
        {"node-name": "drive0", "snapshot-file": "ovr.img", "snapshot-node-name": "ovx", "format": "raw"},
        {"node-name": "drive0", "snapshot-file": "ovf.img", "snapshot-node-name": "ovx", "format": "file"},
        {"node-name": "drive0", "snapshot-file": "ovz.img", "snapshot-node-name": "ovx", "format": "bogus"},
        {"node-name": "drive0", "snapshot-file": "base.qcow2", "snapshot-node-name": "ovx"},
        {"node-name": "drive0", "snapshot-file": "ov2.qcow2", "snapshot-node-name": "#x"},
        {"node-name": "drive0", "snapshot-file": "ov1.qcow2", "snapshot-node-name": "ov1", "format": "qcow2",
         "mode": "absolute-paths"},
    ]:
        r("blockdev-snapshot-sync", args)
    r.note("files", sorted(f for f in ("ov1.qcow2", "ov2.qcow2", "ovx.qcow2", "ovr.img", "ovf.img")
                           if _exists(vm, f)))
    r.note("ov1 chain", vm.qemu_img("info", "--backing-chain", "ov1.qcow2"))
    r("query-named-block-nodes")
    r("x-debug-query-block-graph")
    r.note("bitmaps", _bitmaps(vm))
    r("blockdev-snapshot-sync", {"node-name": "null0", "snapshot-file": "ovn.qcow2", "snapshot-node-name": "ovn",
                                 "mode": "existing"})
    r("blockdev-snapshot-sync", {"node-name": "drive0", "snapshot-file": "ovb.qcow2", "snapshot-node-name": "ovb",
                                 "mode": "existing"})
    r.note("ovb", vm.qemu_img("info", "ovb.qcow2"))
    return r.out


def _exists(vm: Machine, name: str) -> bool:
    try:
        vm.qemu_img("info", name)
    except Exception:
        return False
    return True


def overlay_story(vm: Machine) -> list:
    """blockdev-snapshot with blockdev-add'ed overlays: what an overlay may be, then a chain of two whose
    top takes the guest's writes while the bitmap on the old node stops counting."""
    r = Recorder(vm)
    for name, fmt in (("base.qcow2", "qcow2"), ("ovn.qcow2", "qcow2"), ("ovm.qcow2", "qcow2"), ("ovr.raw", "raw")):
        vm.qemu_img("create", "-f", fmt, name, "64M")
    vm.qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "ovb.qcow2")
    r("blockdev-add", {"driver": "qcow2", "node-name": "drive0", "file": {"driver": "file", "filename": "base.qcow2"}})
    r("blockdev-add", {"driver": "null-co", "node-name": "null0", "size": 64 << 20})
    r("block-dirty-bitmap-add", {"node": "drive0", "name": "b0"})
    vm.write("drive0", "0", "64k")
    r("blockdev-add", {"driver": "raw", "node-name": "ovr", "file": {"driver": "file", "filename": "ovr.raw"}})
    r("blockdev-add", {"driver": "qcow2", "node-name": "ovb", "file": {"driver": "file", "filename": "ovb.qcow2"},
                       "backing": "null0"})
    for args in [
        {"node": "drive0", "overlay": "drive0"},
        {"node": "nope", "overlay": "drive0"},
        {"node": "drive0", "overlay": "nope"},
        {"node": "drive0", "overlay": "null0"},
        {"node": "drive0", "overlay": "ovr"},
        {"node": "drive0", "overlay": "ovb"},
        {"node": "null0", "overlay": "ovb"},
    ]:
        r("blockdev-snapshot", args)
    r("blockdev-add", {"driver": "qcow2", "node-name": "ovn", "backing": None,
                       "file": {"driver": "file", "filename": "ovn.qcow2"}})
    r("blockdev-snapshot", {"node": "drive0", "overlay": "ovn"})
    vm.write("drive0", "1M", "64k")
    r("block-dirty-bitmap-add", {"node": "ovn", "name": "b1"})
    vm.write("ovn", "2M", "64k")
    r("blockdev-add", {"driver": "qcow2", "node-name": "ovm", "backing": None,
                       "file": {"driver": "file", "filename": "ovm.qcow2"}})
    r("blockdev-snapshot", {"node": "drive0", "overlay": "ovm"})
    r("blockdev-snapshot", {"node": "ovn", "overlay": "ovm"})
    vm.write("drive0", "3M", "64k")
    r.note("bitmaps", _bitmaps(vm))
    r.note("drive0 reads", [vm.guest_io("drive0", f"read -P {p} {o} 64k") for p, o in
                            ((0xCD, "0"), (0xCD, "1M"), (0xCD, "2M"), (0xCD, "3M"), (0, "4M"))])
    r("query-named-block-nodes")
    r("x-debug-query-block-graph")
    r.note("chain", vm.qemu_img("info", "--backing-chain", "-U", "ovm.qcow2"))
    r("blockdev-del", {"node-name": "drive0"})
    r("blockdev-del", {"node-name": "ovn"})
    r("blockdev-del", {"node-name": "ovm"})
    r("blockdev-del", {"node-name": "ovn"})
    r.note("bitmaps after", _bitmaps(vm))
    r("x-debug-query-block-graph")
    return r.out


def device_story(vm: Machine) -> list:
    """A -drive device: snapshots by device name (automatic overlay names), query-block, writes and bitmaps,
    a backup of the device afterwards, and the op blocker of a running backup."""
    r = Recorder(vm)
    vm.add_drive("drive0", "64M", node_name="d0")
    vm.qemu_img("create", "-f", "qcow2", "tgt.qcow2", "64M")
    r("block-dirty-bitmap-add", {"node": "drive0", "name": "b0"})
    vm.write("drive0", "0", "64k")
    r("blockdev-snapshot-sync", {"device": "drive0", "snapshot-file": "drive0.qcow2"})
    r("blockdev-snapshot-sync", {"device": "drive0", "snapshot-file": "ov1.qcow2"})
    r("blockdev-snapshot-sync", {"device": "drive0", "snapshot-file": "ov1.qcow2"})
    vm.write("drive0", "1M", "64k")
    r("query-block")
    r("block-dirty-bitmap-add", {"node": "drive0", "name": "b1"})
    vm.write("drive0", "2M", "64k")
    r.note("bitmaps", _bitmaps(vm))
    r("blockdev-del", {"node-name": "d0"})
    r("blockdev-snapshot-sync", {"node-name": "d0", "snapshot-file": "ov9.qcow2", "snapshot-node-name": "ov9"})
    r("blockdev-snapshot-sync", {"device": "drive0", "snapshot-file": "ov2.qcow2", "format": "qcow2",
                                 "snapshot-node-name": "ov2"})
    r("query-block")
    r("x-debug-query-block-graph")
    r("blockdev-add", {"driver": "qcow2", "node-name": "tgt", "file": {"driver": "file", "filename": "tgt.qcow2"}})
    r("blockdev-backup", {"device": "drive0", "target": "tgt", "sync": "full", "job-id": "j", "speed": 1})
    r("blockdev-snapshot-sync", {"device": "drive0", "snapshot-file": "ov3.qcow2"})
    r("blockdev-snapshot-sync", {"node-name": "tgt", "snapshot-file": "ov3.qcow2", "snapshot-node-name": "ov3"})
    r("block-job-cancel", {"device": "j", "force": True})
    vm.run()
    r.note("chain", vm.qemu_img("info", "--backing-chain", "-U", "ov2.qcow2"))
    return r.out


def transaction_story(vm: Machine) -> list:
    """Snapshots in transactions: rolled back by a later failing action (the created image stays), the
    completion mode check, and the documentation's pattern: a snapshot and a new bitmap on the overlay."""
    r = Recorder(vm)
    vm.add_drive("drive0", "64M", node_name="d0")
    vm.qemu_img("create", "-f", "qcow2", "ovm.qcow2", "64M")
    r("block-dirty-bitmap-add", {"node": "drive0", "name": "b0"})
    r("blockdev-add", {"driver": "qcow2", "node-name": "ovm", "backing": None,
                       "file": {"driver": "file", "filename": "ovm.qcow2"}})
    r("transaction", _txn(("blockdev-snapshot-sync", {"device": "drive0", "snapshot-file": "ovt.qcow2",
                                                      "snapshot-node-name": "ovt"}), ("abort", {})))
    r.note("ovt", vm.qemu_img("info", "-U", "ovt.qcow2"))
    r("transaction", _txn(("blockdev-snapshot", {"node": "d0", "overlay": "ovm"}),
                          ("block-dirty-bitmap-add", {"node": "nope", "name": "x"})))
    r("transaction", _txn(("blockdev-snapshot", {"node": "d0", "overlay": "ovm"}),
                          ("block-dirty-bitmap-add", {"node": "ovm", "name": "b1"}), completion_mode="grouped"))
    r("query-block")
    r("x-debug-query-block-graph")
    r.note("bitmaps", _bitmaps(vm))
    r("transaction", _txn(("blockdev-snapshot", {"node": "d0", "overlay": "ovm"}),
                          ("block-dirty-bitmap-add", {"node": "ovm", "name": "b1"})))
    r("transaction", _txn(("blockdev-snapshot-sync", {"device": "drive0", "snapshot-file": "ov2.qcow2",
                                                      "snapshot-node-name": "ov2"}),
                          ("block-dirty-bitmap-add", {"node": "ov2", "name": "b2"}),
                          ("block-dirty-bitmap-disable", {"node": "ovm", "name": "b1"})))
    vm.write("drive0", "1M", "64k")
    r.note("bitmaps", _bitmaps(vm))
    r("query-block")
    r("x-debug-query-block-graph")
    return r.out


def in_use_story(vm: Machine) -> list:
    """An overlay a user's NBD export reads is in use; a writable export of the node refuses a read-only
    overlay (the permission check of bdrv_append) and moves up onto a writable one."""
    r = Recorder(vm)
    for name in ("a", "o1", "o2"):
        vm.qemu_img("create", "-f", "qcow2", f"{name}.qcow2", "64M")
    r("blockdev-add", {"driver": "qcow2", "node-name": "a", "file": {"driver": "file", "filename": "a.qcow2"}})
    r("blockdev-add", {"driver": "qcow2", "node-name": "o1", "backing": None,
                       "file": {"driver": "file", "filename": "o1.qcow2"}})
    r("blockdev-add", {"driver": "qcow2", "node-name": "o2", "read-only": True, "backing": None,
                       "file": {"driver": "file", "filename": "o2.qcow2"}})
    r("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}})
    r("block-export-add", {"type": "nbd", "id": "e1", "node-name": "o1", "writable": False})
    r("blockdev-snapshot", {"node": "a", "overlay": "o1"})
    r("block-export-del", {"id": "e1"})
    r("block-export-add", {"type": "nbd", "id": "e2", "node-name": "a", "writable": True})
    r("blockdev-snapshot", {"node": "a", "overlay": "o2"})
    r("blockdev-snapshot", {"node": "a", "overlay": "o1"})
    r("query-block-exports")
    r("x-debug-query-block-graph")
    r.note("bitmaps", _bitmaps(vm))
    return r.out


def during_backup_story(vm: Machine) -> list:
    """A snapshot of a backup's source by node name while the job runs (no op blocker on the source): the
    overlay takes the source's place under the job's filter, the guest's writes go through the filter into
    the overlay, and the target still gets the source's point in time."""
    r = Recorder(vm)
    vm.add_drive("drive0", "64M", node_name="d0")
    vm.qemu_img("create", "-f", "qcow2", "tgt.qcow2", "64M")
    r("blockdev-add", {"driver": "qcow2", "node-name": "tgt", "file": {"driver": "file", "filename": "tgt.qcow2"}})
    r("block-dirty-bitmap-add", {"node": "drive0", "name": "b0"})
    vm.write("drive0", "0", "64k")
    r("blockdev-backup", {"device": "drive0", "target": "tgt", "sync": "full", "job-id": "j", "speed": 1,
                          "filter-node-name": "f"})
    r("blockdev-snapshot-sync", {"node-name": "d0", "snapshot-file": "ov.qcow2", "snapshot-node-name": "ov"})
    r("x-debug-query-block-graph")
    vm.write("drive0", "1M", "64k")
    r.note("bitmaps", _bitmaps(vm))
    r("block-job-set-speed", {"device": "j", "speed": 0})
    vm.run()
    r("query-block")
    r("x-debug-query-block-graph")
    r.note("bitmaps", _bitmaps(vm))
    r("blockdev-del", {"node-name": "tgt"})  # written back: qemu-img sees what the job wrote
    r.note("target", vm.qemu_img("compare", "-U", "tgt.qcow2", "drive0.qcow2"))
    return r.out


STORIES = {"sync-errors": (sync_errors_story, "qsd"), "overlay": (overlay_story, "qsd"),
           "device": (device_story, "system"), "transaction": (transaction_story, "system"),
           "in-use": (in_use_story, "qsd"), "during-backup": (during_backup_story, "system")}


@pytest.mark.qemu
@pytest.mark.parametrize("name", STORIES)
def test_story_as_on_qemu(name: str) -> None:
    story, daemon = STORIES[name]
    want, got = on_both(story, daemon=daemon)
    assert len(got) == len(want)
    for w, g in zip(want, got):
        assert g == w, json.dumps(w)[:400]


# -- simulator only: QEMU 7.2's texts, measured --------------------------------------------------------------

def test_sync_error_texts() -> None:
    out = dict(enumerate(sync_errors_story(Machine())))
    texts = [value for name, value in out.values() if name == "blockdev-snapshot-sync"]
    assert texts == [
        "GenericError: New overlay node-name missing",
        "GenericError: Cannot find device='drive0' nor node-name=''",
        "GenericError: Cannot find device='' nor node-name=''",
        "GenericError: Cannot find device='' nor node-name='nope'",
        "GenericError: New overlay node-name already in use",
        "GenericError: New overlay node-name already in use",
        "GenericError: Could not open 'ovx.qcow2': No such file or directory",
        "GenericError: Backing file not supported for file format 'raw'",
        "GenericError: Backing file not supported for file format 'file'",
        "GenericError: Unknown file format 'bogus'",
        "GenericError: Error: Trying to create an image with the same filename as the backing file",
        "GenericError: Invalid node-name: '#x'",
        {},
        "GenericError: Could not open 'ovn.qcow2': No such file or directory",
        {},
    ]
    assert out[16] == ("files", ["ov1.qcow2", "ov2.qcow2"])  # made before the node name was refused: it stays
    assert out[20] == ("bitmaps", {"null0": (False, []), "drive0": (True, [("b0", 0)])})


def test_during_backup() -> None:
    out = dict(during_backup_story(Machine()))
    assert out["target"] == "Images are identical.\n"
    assert out["bitmaps"] == {"ov": (False, []), "tgt": (False, []), "d0": (True, [("b0", 65536)])}


def test_in_use_texts() -> None:
    out = in_use_story(Machine())
    assert [value for name, value in out if name == "blockdev-snapshot"] == [
        "GenericError: The overlay is already in use", "GenericError: Block node is read-only", {}]
    assert dict(out)["query-block-exports"] == [{"node-name": "o1", "shutting-down": False, "type": "nbd",
                                                 "id": "e2"}]


def test_overlay_error_texts() -> None:
    out = overlay_story(Machine())
    texts = [value for name, value in out if name == "blockdev-snapshot"]
    assert texts[:7] == [
        "GenericError: Making 'drive0' a backing child of 'drive0' would create a cycle",
        "GenericError: Cannot find device='nope' nor node-name='nope'",
        "GenericError: Cannot find device='nope' nor node-name='nope'",
        "GenericError: The overlay does not support backing images",
        "GenericError: The overlay does not support backing images",
        "GenericError: The overlay already has a backing image",
        "GenericError: Node 'null0' is busy: node is used as backing hd of 'ovb'",
    ]
    assert texts[7:] == [{}, "GenericError: Node 'drive0' is busy: node is used as backing hd of 'ovn'", {}]
    assert dict(out)["bitmaps"] == {"ovm": (False, []), "ovn": (True, [("b1", 65536)]), "ovb": (False, []),
                                    "ovr": (False, []), "null0": (False, []), "drive0": (True, [("b0", 65536)])}


def test_bare_node_overlay_goes_at_once() -> None:
    """Nothing holds a new overlay over a node without parents: it is closed when the command ends, and the
    old node stays read-only with its bitmaps (QEMU 7.2 does the same)."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "a.qcow2", "64M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "a", "file": {"driver": "file", "filename": "a.qcow2"}})
    vm.qmp("block-dirty-bitmap-add", {"node": "a", "name": "b", "persistent": True})
    vm.qmp("blockdev-snapshot-sync", {"node-name": "a", "snapshot-file": "o.qcow2", "snapshot-node-name": "o"})
    assert "o" not in vm.graph.nodes and vm.graph.nodes["a"].read_only
    assert vm.graph.nodes["a"].bitmaps[0].readonly
    with pytest.raises(QMPError, match="Bitmap 'b' is readonly and cannot be modified"):
        vm.qmp("block-dirty-bitmap-clear", {"node": "a", "name": "b"})
    assert json.loads(vm.qemu_img("info", "--output=json", "o.qcow2"))["backing-filename"] == "a.qcow2"


def test_guest_writes_go_to_the_overlay() -> None:
    """After a snapshot of a device the old node's bitmap stops counting; one added on the device counts."""
    vm = Machine()
    vm.add_drive("drive0", "64M", node_name="d0")
    vm.qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "b0"})
    vm.write("drive0", "0", "64k")
    vm.qmp("blockdev-snapshot-sync", {"device": "drive0", "snapshot-file": "o.qcow2", "snapshot-node-name": "o"})
    vm.qmp("block-dirty-bitmap-add", {"node": "drive0", "name": "b1"})
    vm.write("drive0", "1M", "128k")
    assert vm.dirty_bitmap("d0", "b0").count == 65536
    assert vm.dirty_bitmap("o", "b1").count == 131072
    assert vm.contents("drive0", 0, "2M") == [(0, 65536, 0xCD), (65536, 1 << 20, 0), (1 << 20, (1 << 20) + 131072,
                                                                                        0xCD),
                                              ((1 << 20) + 131072, 2 << 20, 0)]
    assert vm.graph.nodes["d0"].read_extents(1 << 20, 65536)[2].tolist() == [0]


def test_abort_rolls_back_and_keeps_the_image() -> None:
    vm = Machine()
    vm.add_drive("drive0", "64M", node_name="d0")
    with pytest.raises(QMPError, match="Transaction aborted using Abort action"):
        vm.qmp("transaction", _txn(("blockdev-snapshot-sync", {"device": "drive0", "snapshot-file": "o.qcow2"}),
                                   ("abort", {})))
    assert vm.graph.devices["drive0"].node_name == "d0" and not vm.graph.nodes["d0"].read_only
    assert sorted(vm.graph.nodes) == sorted(["d0", vm.graph.nodes["d0"].child("file").node_name])
    assert "o.qcow2" in vm.images


# -- bitlab.chain: an overlay is not a backup image ------------------------------------------------------------

def chain_story(vm: Machine) -> list:
    """The documentation's pattern: a full backup with b0, writes, then a snapshot and a new bitmap b1 on the
    overlay at once; b0 stays behind (a backup of the device cannot find it), and an incremental backup with
    b1 has no image of b1's point in time below it (the overlay's backing file is not a backup)."""
    from bitlab import chain

    r = Recorder(vm)
    vm.add_drive("drive0", "64M", node_name="d0")
    r("transaction", _txn(("block-dirty-bitmap-add", {"node": "drive0", "name": "b0"}),
                          ("drive-backup", {"device": "drive0", "target": "full.qcow2", "sync": "full"})))
    vm.run()
    vm.write("drive0", "0", "64k")
    r("transaction", _txn(("blockdev-snapshot-sync", {"device": "drive0", "snapshot-file": "ov.qcow2",
                                                      "snapshot-node-name": "ov"}),
                          ("block-dirty-bitmap-add", {"node": "ov", "name": "b1"})))
    vm.write("drive0", "1M", "64k")
    r("drive-backup", {"device": "drive0", "target": "inc1.qcow2", "sync": "incremental", "bitmap": "b0"})
    r("drive-backup", {"device": "drive0", "target": "inc2.qcow2", "sync": "incremental", "bitmap": "b1"})
    vm.run()
    r.note("verdicts", [(v.image, v.valid, v.reason) for v in chain.verdicts(vm)])
    r.note("advice", {d: (a.keep, a.delete, a.next_sync, a.reason) for d, a in chain.advise(vm).items()})
    return r.out


def test_chain_after_snapshot() -> None:
    out = dict(chain_story(Machine()))
    assert out["verdicts"] == [
        ("full.qcow2", True, "complete full backup of drive0"),
        ("inc2.qcow2", False, "b1 held the changes since an image of that point (none exists), but the image's "
                              "backing file is none: restoring it would lose writes")]
    assert out["drive-backup"] == {}


@pytest.mark.qemu
def test_chain_after_snapshot_as_on_qemu() -> None:
    want, got = on_both(chain_story, daemon="system")
    assert got == want


def readme_story(vm: Machine) -> list:
    """README's example: no events; the old node's persistent bitmap read-only, a non-persistent one still
    clearable; the overlay's new bitmap counts the guest's write."""
    r = Recorder(vm)
    vm.add_drive("drive0", "64M", node_name="d0")
    r("block-dirty-bitmap-add", {"node": "drive0", "name": "b0"})
    r("block-dirty-bitmap-add", {"node": "drive0", "name": "p", "persistent": True})
    events_at = len(vm.events)
    r("transaction", _txn(("blockdev-snapshot-sync", {"device": "drive0", "snapshot-file": "top.qcow2",
                                                      "snapshot-node-name": "top"}),
                          ("block-dirty-bitmap-add", {"node": "top", "name": "b1"})))
    vm.write("drive0", "1M", "64k")
    r.note("events", vm.events[events_at:])
    r("blockdev-del", {"node-name": "d0"})
    r("block-dirty-bitmap-clear", {"node": "d0", "name": "p"})
    r("block-dirty-bitmap-clear", {"node": "d0", "name": "b0"})
    r("block-dirty-bitmap-remove", {"node": "d0", "name": "p"})
    r.note("bitmaps", _bitmaps(vm))
    return r.out


def test_readme_story() -> None:
    assert readme_story(Machine())[3:] == [
        ("events", []),
        ("blockdev-del", "GenericError: Node 'd0' is busy: node is used as backing hd of 'top'"),
        ("block-dirty-bitmap-clear", "GenericError: Bitmap 'p' is readonly and cannot be modified"),
        ("block-dirty-bitmap-clear", {}),
        ("block-dirty-bitmap-remove", "GenericError: Bitmap 'p' is readonly and cannot be modified"),
        ("bitmaps", {"top": (False, [("b1", 65536)]), "d0": (True, [("p", 0), ("b0", 0)])}),
    ]


@pytest.mark.qemu
def test_readme_story_as_on_qemu() -> None:
    want, got = on_both(readme_story, daemon="system")
    assert got == want


# -- blockdev-snapshot-internal-sync: QEMU's refusals (internal snapshots are not simulated) -------------------

def internal_story(vm: Machine) -> list:
    r = Recorder(vm)
    vm.add_drive("drive0", "64M", node_name="d0")
    vm.add_drive("drive1", "64M", "raw", node_name="r0")
    r("blockdev-add", {"driver": "null-co", "node-name": "n0"})
    vm.qemu_img("create", "-f", "qcow2", "ro.qcow2", "64M")
    r("blockdev-add", {"driver": "qcow2", "node-name": "ro", "read-only": True,
                       "file": {"driver": "file", "filename": "ro.qcow2"}})

    def internal(device: str, name: str = "s", **props: str) -> None:
        r("transaction", _txn(("blockdev-snapshot-internal-sync", {"device": device, "name": name}), **props))

    internal("nope")
    internal("drive0", completion_mode="grouped")
    internal("drive0", "")
    internal("drive1")
    internal("n0")
    internal("ro")
    r("blockdev-snapshot-sync", {"device": "drive0", "snapshot-file": "o1.qcow2", "snapshot-node-name": "o1"})
    internal("d0")
    return r.out


def test_internal_snapshot_refusals() -> None:
    texts = [value for name, value in internal_story(Machine()) if name == "transaction"]
    assert texts == [
        "GenericError: Cannot find device='nope' nor node-name='nope'",
        "GenericError: Action 'blockdev-snapshot-internal-sync' does not support Transaction property "
        "completion-mode = grouped",
        "GenericError: Name is empty",
        "GenericError: Block format 'raw' used by device 'drive1' does not support internal snapshots",
        "GenericError: Block format 'null-co' used by device 'n0' does not support internal snapshots",
        "GenericError: Device 'ro' is read only",
        "GenericError: Need a root block node",
    ]
    vm = Machine()
    vm.add_drive("drive0", "64M")
    with pytest.raises(QMPError, match="bitlab does not simulate the transaction action "
                                       "'blockdev-snapshot-internal-sync'"):
        vm.qmp("transaction", _txn(("blockdev-snapshot-internal-sync", {"device": "drive0", "name": "s"})))


@pytest.mark.qemu
def test_internal_snapshot_refusals_as_on_qemu() -> None:
    want, got = on_both(internal_story, daemon="system")
    assert got == want


def bare_node_story(vm: Machine) -> list:
    """A guest of a bare node follows it up to the overlays of two snapshots (one in a transaction with a
    backup of the old node, whose filter goes between them), on either daemon."""
    r = Recorder(vm)
    for name in ("a", "o1", "o2", "t"):
        vm.qemu_img("create", "-f", "qcow2", f"{name}.qcow2", "64M")
    r("blockdev-add", {"driver": "qcow2", "node-name": "a", "file": {"driver": "file", "filename": "a.qcow2"}})
    r("blockdev-add", {"driver": "qcow2", "node-name": "t", "file": {"driver": "file", "filename": "t.qcow2"}})
    r("block-dirty-bitmap-add", {"node": "a", "name": "b0"})
    for name in ("o1", "o2"):
        r("blockdev-add", {"driver": "qcow2", "node-name": name, "backing": None,
                           "file": {"driver": "file", "filename": f"{name}.qcow2"}})
    vm.write("a", "0", "64k")
    r("blockdev-snapshot", {"node": "a", "overlay": "o1"})
    vm.write("a", "1M", "64k")
    r("transaction", _txn(("blockdev-snapshot", {"node": "o1", "overlay": "o2"}),
                          ("blockdev-backup", {"device": "a", "target": "t", "sync": "full", "job-id": "j"})))
    vm.write("a", "2M", "64k")
    vm.run()
    r.note("reads", [vm.read("a", o, "64k", 0xCD) for o in ("0", "1M", "2M")])
    r.note("bitmaps", _bitmaps(vm))
    r("x-debug-query-block-graph")
    return r.out


@pytest.mark.qemu
@pytest.mark.parametrize("daemon", ["qsd", "system"])
def test_bare_node_guest_follows_as_on_qemu(daemon: str) -> None:
    want, got = on_both(bare_node_story, daemon=daemon)
    assert got == want
    assert dict(got)["bitmaps"]["o2"] == (False, [])


# -- the internal-snapshot commands: QEMU's refusals, then (a qcow2 image) bitlab's "not simulated" or, for a
# delete, "does not exist" (bitlab makes no internal snapshots, so none exists) ------------------------------

INTERNAL_COMMANDS = [
    ("blockdev-snapshot-internal-sync", {"device": "nope", "name": "s"},
     "GenericError: Cannot find device='nope' nor node-name='nope'"),
    ("blockdev-snapshot-internal-sync", {"device": "drive0", "name": ""}, "GenericError: Name is empty"),
    ("blockdev-snapshot-internal-sync", {"device": "drive1", "name": "s"},
     "GenericError: Block format 'raw' used by device 'drive1' does not support internal snapshots"),
    ("blockdev-snapshot-delete-internal-sync", {"device": "nope", "name": "s"},
     "GenericError: Cannot find device='nope' nor node-name='nope'"),
    ("blockdev-snapshot-delete-internal-sync", {"device": "drive0"}, "GenericError: Name or id must be provided"),
    ("blockdev-snapshot-delete-internal-sync", {"device": "drive0", "id": "1"},
     "GenericError: Snapshot with id '1' and name 'null' does not exist on device 'drive0'"),
    ("blockdev-snapshot-delete-internal-sync", {"device": "drive0", "id": "1", "name": "s"},
     "GenericError: Snapshot with id '1' and name 's' does not exist on device 'drive0'"),
    ("blockdev-snapshot-delete-internal-sync", {"device": "drive1", "name": "s"},
     "GenericError: Failed to get a snapshot list: Operation not supported"),
    ("blockdev-snapshot-delete-internal-sync", {"device": "d0", "name": "s"},
     "GenericError: Snapshot with id 'null' and name 's' does not exist on device 'd0'"),
]


def internal_commands_story(vm: Machine) -> list:
    r = Recorder(vm)
    vm.add_drive("drive0", "64M", node_name="d0")
    vm.add_drive("drive1", "64M", "raw", node_name="r0")
    for name, args, _ in INTERNAL_COMMANDS:
        r(name, args)
    return r.out


def test_internal_snapshot_commands() -> None:
    assert [value for _, value in internal_commands_story(Machine())] == [text for *_, text in INTERNAL_COMMANDS]
    vm = Machine()
    vm.add_drive("drive0", "64M")
    with pytest.raises(QMPError, match="bitlab does not simulate the transaction action "
                                       "'blockdev-snapshot-internal-sync'"):
        vm.qmp("blockdev-snapshot-internal-sync", {"device": "drive0", "name": "s"})


@pytest.mark.qemu
def test_internal_snapshot_commands_as_on_qemu() -> None:
    want, got = on_both(internal_commands_story, daemon="system")
    assert got == want


def test_the_old_node_is_flushed_before_the_overlay_is_made() -> None:
    """external_snapshot_prepare's bdrv_flush: a failed flush is the snapshot's error (no overlay made, the node
    still read-write); a snapshot failing after it leaves the tables written back (what ``qemu-img -U`` sees).
    Compared with QEMU 7.2 in tests/conformance/test_stale_l2_tables.py (SNAPSHOT)."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "d.qcow2", "4M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "d", "file": {
        "driver": "blkdebug", "image": {"driver": "file", "filename": "d.qcow2"},
        "inject-error": [{"event": "flush_to_os", "iotype": "flush", "errno": 5, "once": True}]}})
    vm.write("d", 0, 65536, pattern=0x11)  # (not flushed: the tables in the cache)
    unmapped = '[{ "start": 0, "length": 4194304, "depth": 0, "present": false, "zero": true, "data": false}]\n'
    args = {"node-name": "d", "snapshot-file": "o.qcow2", "snapshot-node-name": "o"}
    with pytest.raises(QMPError, match="^GenericError: An IO error has occurred$"):
        vm.qmp("blockdev-snapshot-sync", args)
    assert _bitmaps(vm) == {"d": (False, [])}
    assert vm.qemu_img("map", "--output=json", "-U", "d.qcow2") == unmapped
    assert vm.graph.store_key("o.qcow2") not in vm.images
    with pytest.raises(QMPError, match="^GenericError: New overlay node-name already in use$"):
        vm.qmp("blockdev-snapshot-sync", {**args, "snapshot-node-name": "d"})
    assert vm.qemu_img("map", "--output=json", "-U", "d.qcow2") != unmapped
