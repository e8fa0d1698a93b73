"""block-set-write-threshold and BLOCK_WRITE_THRESHOLD (bitlab/block/wstats.py), as QEMU 7.2 does them:
the first write, write-zeroes or (passed-on) discard request reaching the node whose end passes the
threshold sends the event, and the threshold goes back to 0."""

from __future__ import annotations

from typing import Any

import pytest

from bitlab import Machine
from bitlab.errors import QMPError

from .both import on_both

MiB = 1 << 20


def _qcow2(vm: Machine, name: str, size: str = "4M", **opts: Any) -> None:
    vm.qemu_img("create", "-f", "qcow2", f"{name}.qcow2", size)
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": name, **opts,
                            "file": {"driver": "file", "filename": f"{name}.qcow2", "node-name": f"{name}-file"}})


def _thresholds(vm: Machine) -> dict[str, int]:
    return {e["node-name"]: e["write_threshold"] for e in vm.qmp("query-named-block-nodes")}


def _events(vm: Machine, names: tuple[str, ...] = ("BLOCK_WRITE_THRESHOLD",)) -> list[tuple]:
    return [(e["event"], list(e.get("data", {}).items())) for e in vm.events if e["event"] in names]


def guest_story(vm: Machine) -> dict:
    """Guest requests on a qcow2 node and on its file node (host offsets)."""
    _qcow2(vm, "n")
    out: dict = {"missing": vm.execute({"execute": "block-set-write-threshold",
                                        "arguments": {"node-name": "nope", "write-threshold": 5}})}
    vm.qmp("block-set-write-threshold", {"node-name": "n", "write-threshold": MiB})
    vm.qmp("block-set-write-threshold", {"node-name": "n-file", "write-threshold": 300000})
    out["armed"] = _thresholds(vm)
    vm.write("n", "960k", "64k")  # ends at the threshold: not past it
    out["at"] = _thresholds(vm)
    vm.write("n", "1M", "64k")
    vm.write("n", "0", "4k")
    out["fired"] = _thresholds(vm)
    vm.qmp("block-set-write-threshold", {"node-name": "n", "write-threshold": 2 * MiB})
    vm.discard("n", "0", "4M")  # discard=ignore: the request never reaches the node
    vm.write_zeroes("n", "3M", "4k")
    out["events"] = _events(vm)
    return out


def test_guest_requests_exact() -> None:
    got = guest_story(Machine())
    assert got["missing"] == {"error": {"class": "GenericError", "desc": "Device 'nope' not found"}}
    assert got["armed"] == {"n": MiB, "n-file": 300000}
    assert got["at"] == {"n": MiB, "n-file": 0}  # the file node got host writes past 300000 already
    assert got["fired"] == {"n": 0, "n-file": 0}
    assert got["events"] == [
        # qcow2 wrote the new L2 table (host 256k..320k) before the data cluster after it: 327680 - 300000
        ("BLOCK_WRITE_THRESHOLD", [("node-name", "n-file"), ("write-threshold", 300000), ("amount-exceeded", 27680)]),
        ("BLOCK_WRITE_THRESHOLD", [("node-name", "n"), ("write-threshold", MiB), ("amount-exceeded", 65536)]),
        ("BLOCK_WRITE_THRESHOLD", [("node-name", "n"), ("write-threshold", 2 * MiB),
                                   ("amount-exceeded", 3 * MiB + 4096 - 2 * MiB)]),
    ]


def test_discard_counts_where_passed_on() -> None:
    vm = Machine()
    _qcow2(vm, "n", discard="unmap")
    vm.write("n", "0", "1M")
    vm.qmp("block-set-write-threshold", {"node-name": "n", "write-threshold": 4096})
    vm.discard("n", "0", "64k")
    assert _events(vm) == [("BLOCK_WRITE_THRESHOLD", [("node-name", "n"), ("write-threshold", 4096),
                                                      ("amount-exceeded", 65536 - 4096)])]


def test_device_name_is_not_a_node_name() -> None:
    vm = Machine()
    vm.add_drive("drive0", "1M", node_name="d0")
    with pytest.raises(QMPError, match="^GenericError: Device 'drive0' not found$"):
        vm.qmp("block-set-write-threshold", {"node-name": "drive0", "write-threshold": 1})
    vm.qmp("block-set-write-threshold", {"node-name": "d0", "write-threshold": 1})
    assert vm.qmp("query-block")[0]["inserted"]["write_threshold"] == 1


def backup_story(vm: Machine) -> list[tuple]:
    """A full backup onto an armed target: block-copy's zero task writes first (it has nothing to read),
    so the event names the end of the disk, between the job's running and waiting."""
    _qcow2(vm, "s")
    _qcow2(vm, "t")
    vm.write("s", "0", "3M")
    vm.qmp("block-set-write-threshold", {"node-name": "t", "write-threshold": MiB + 1000})
    vm.qmp("blockdev-backup", {"device": "s", "target": "t", "sync": "full", "job-id": "j"})
    vm.run(until=vm.now + 1.0)
    return _events(vm, ("BLOCK_WRITE_THRESHOLD", "JOB_STATUS_CHANGE"))


def _status(s: str) -> tuple:
    return ("JOB_STATUS_CHANGE", [("status", s), ("id", "j")])  # (wire order)


def test_backup_target_exact() -> None:
    got = backup_story(Machine())
    assert got == [_status("created"), _status("running"), _status("paused"), _status("running"),
                   ("BLOCK_WRITE_THRESHOLD", [("node-name", "t"), ("write-threshold", MiB + 1000),
                                              ("amount-exceeded", 4 * MiB - MiB - 1000)]),
                   _status("waiting"), _status("pending"), _status("concluded"), _status("null")]


def test_batch_first_crossing_only() -> None:
    vm = Machine()
    _qcow2(vm, "n")
    vm.qmp("block-set-write-threshold", {"node-name": "n", "write-threshold": 100000})
    vm.write_batch("n", [0, 200000, 131072, 3 * MiB], [4096, 512, 4096, 4096])
    assert _events(vm) == [("BLOCK_WRITE_THRESHOLD", [("node-name", "n"), ("write-threshold", 100000),
                                                      ("amount-exceeded", 200512 - 100000)])]
    assert _thresholds(vm)["n"] == 0


@pytest.mark.qemu
@pytest.mark.parametrize("daemon", ["qsd", "system"])
def test_guest_requests_match_qemu(daemon: str) -> None:
    real, sim = on_both(guest_story, daemon=daemon)
    assert real == sim


@pytest.mark.qemu
def test_backup_target_matches_qemu() -> None:
    real, sim = on_both(backup_story)
    assert real == sim


def shrink_story(vm: Machine) -> list[dict]:
    """A qcow2 shrink as its file node sees it (qcow2_co_truncate): the discards of the clusters it frees
    first (the file node takes them: discard=unmap, as a child opened with its parent), then the caches the
    refcount table's rewrite flushes, then that table and the header: each threshold names the first request
    past it (seed 1477672338 scenario 14 found the order)."""
    _qcow2(vm, "s", "8M")
    vm.write("s", 0, 64 * 1024)
    vm.write("s", 4 * MiB + 4096, 512)
    vm.write("s", 8 * MiB - 65536, 65536)
    out = []
    for threshold in (1000, 70000, 200000, 300000):
        vm.qmp("block-set-write-threshold", {"node-name": "s-file", "write-threshold": threshold})
        first = len(vm.events)
        vm.qmp("block_resize", {"node-name": "s", "size": 4 * MiB})
        vm.qmp("block_resize", {"node-name": "s", "size": 8 * MiB})
        vm.write("s", 8 * MiB - 65536, 65536)
        vm.write("s", 4 * MiB + 4096, 512)
        out += [e["data"] for e in vm.events[first:] if e["event"] == "BLOCK_WRITE_THRESHOLD"][:1]
    return out


@pytest.mark.qemu
def test_shrink_order_matches_qemu() -> None:
    real, sim = on_both(shrink_story)
    assert real == sim and len(sim) == 4
