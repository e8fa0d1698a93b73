"""query-blockstats (bitlab/qmp/cmd_wstats.py) as QEMU 7.2 answers for what bitlab does: every counter a
device model keeps stays 0, ``wr_highest_offset`` follows the write requests that reached each node, a
file node counts the discards it did; -drive devices at BlockBackend level, nodes with ``query-nodes``."""

from __future__ import annotations

import re
from typing import Any

import pytest

from bitlab import Machine

from .both import on_both

MiB = 1 << 20
COUNTERS = ("rd_bytes", "wr_bytes", "unmap_bytes", "rd_operations", "wr_operations", "flush_operations",
            "unmap_operations", "rd_total_time_ns", "wr_total_time_ns", "flush_total_time_ns", "unmap_total_time_ns",
            "wr_highest_offset", "rd_merged", "wr_merged", "unmap_merged", "failed_rd_operations",
            "failed_wr_operations", "failed_flush_operations", "failed_unmap_operations", "invalid_rd_operations",
            "invalid_wr_operations", "invalid_flush_operations", "invalid_unmap_operations")


def stats(highest: int, blk: bool = False) -> dict:
    """BlockDeviceStats with every counter 0 but ``wr_highest_offset``."""
    out: dict = dict.fromkeys(COUNTERS, 0)
    out["wr_highest_offset"] = highest
    return {**out, "account_invalid": blk, "account_failed": blk, "timed_stats": []}


def file_specific(nb: int = 0, nbytes: int = 0) -> dict:
    return {"driver": "file", "discard-nb-ok": nb, "discard-nb-failed": 0, "discard-bytes-ok": nbytes}


def test_wire_order_of_an_entry() -> None:
    """Members as QEMU's QDict sends them (the hash order of the names, see bitlab/qmp_order.py)."""
    vm = Machine()
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "z", "size": MiB})
    reply = vm.execute({"execute": "query-blockstats", "arguments": {"query-nodes": True}})["return"]
    assert list(reply[0]) == ["stats", "node-name"]
    assert list(reply[0]["stats"])[:4] == ["unmap_operations", "unmap_merged", "flush_total_time_ns",
                                           "wr_highest_offset"]


def test_nodes_exact() -> None:
    vm = Machine()
    assert vm.qmp("query-blockstats") == []  # qemu-storage-daemon: no named BlockBackend
    vm.qemu_img("create", "-f", "qcow2", "a.qcow2", "4M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "n",
                            "file": {"driver": "file", "filename": "a.qcow2", "node-name": "f"}})
    vm.qemu_img("create", "-f", "raw", "r.img", "4M")
    vm.qmp("blockdev-add", {"driver": "raw", "node-name": "r", "discard": "unmap",
                            "file": {"driver": "file", "filename": "r.img", "node-name": "rf", "discard": "unmap"}})
    vm.write("n", "1M", "64k")
    vm.write_zeroes("n", "2M", "4k")
    vm.discard("n", "3M", "64k")  # discard=ignore: it never reaches the node
    vm.write("r", "0", "8k")
    vm.discard("r", "3M", "1M")  # a discard moves no wr_highest_offset, the file counts it
    vm.discard("r", "0", "4k")
    f = {"node-name": "f", "stats": stats(vm.graph.nodes["f"].image.file_length()), "driver-specific": file_specific()}
    rf = {"node-name": "rf", "stats": stats(8192), "driver-specific": file_specific(2, MiB + 4096)}
    assert vm.qmp("query-blockstats", {"query-nodes": True}) == [  # oldest first: a file before its parent
        f, {"node-name": "n", "stats": stats(2 * MiB + 4096), "parent": f},
        rf, {"node-name": "r", "stats": stats(8192), "parent": rf},
    ]
    assert vm.qmp("query-blockstats") == []


def test_drive_exact() -> None:
    """-drive devices: BlockBackend level (account-invalid/-failed on, as -drive's defaults), the backing
    chain under ``backing``."""
    vm = Machine()
    vm.add_drive("drive0", "4M", node_name="base")
    vm.qmp("blockdev-snapshot-sync", {"device": "drive0", "snapshot-file": "over.qcow2", "format": "qcow2",
                                      "snapshot-node-name": "over"})
    vm.hmp('qemu-io drive0 "write 64k 4k"')
    (entry,) = vm.qmp("query-blockstats")
    base_file = vm.graph.nodes["base"].child("file")
    over_file = vm.graph.nodes["over"].child("file")
    assert entry == {
        "device": "drive0", "node-name": "over", "stats": stats(65536 + 4096, blk=True),
        "parent": {"node-name": over_file.node_name, "stats": stats(over_file.image.file_length()),
                   "driver-specific": file_specific()},
        "backing": {"node-name": "base", "stats": stats(0),
                    "parent": {"node-name": base_file.node_name, "stats": stats(0),
                               "driver-specific": file_specific()}},
    }


def _masked(value: Any, names: dict[str, str]) -> Any:
    """Auto-generated node names (``#block`` and a random number) by order of appearance."""
    if isinstance(value, dict):
        return {k: _masked(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, names) for v in value]
    if isinstance(value, str) and re.fullmatch(r"#block\d+", value):
        return names.setdefault(value, f"#auto{len(names)}")
    return value


def drive_story(vm: Machine) -> list:
    vm.add_drive("drive0", "4M")
    vm.add_drive("drive1", "4M", format="raw")
    vm.hmp('qemu-io drive0 "write 0 64k"')
    vm.hmp('qemu-io drive0 "write -z 2M 64k"')
    vm.hmp('qemu-io drive1 "write 1M 4k"')
    vm.hmp('qemu-io drive1 "discard 0 64k"')
    vm.qmp("blockdev-snapshot-sync", {"device": "drive0", "snapshot-file": "over.qcow2", "format": "qcow2",
                                      "snapshot-node-name": "over"})
    vm.hmp('qemu-io drive0 "write 64k 4k"')
    names: dict[str, str] = {}
    return _masked([vm.qmp("query-blockstats"), vm.qmp("query-blockstats", {"query-nodes": True})], names)


def qsd_story(vm: Machine) -> list:
    """Nodes, an NBD export, a full backup onto a fresh target, discards through raw to a file."""
    for name in ("s", "t"):
        vm.qemu_img("create", "-f", "qcow2", f"{name}.qcow2", "4M")
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": name,
                                "file": {"driver": "file", "filename": f"{name}.qcow2", "node-name": f"{name}f"}})
    vm.qemu_img("create", "-f", "raw", "r.img", "4M")
    vm.qmp("blockdev-add", {"driver": "raw", "node-name": "r", "discard": "unmap",
                            "file": {"driver": "file", "filename": "r.img", "node-name": "rf", "discard": "unmap"}})
    vm.qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}})
    vm.qmp("block-export-add", {"type": "nbd", "id": "e", "node-name": "s", "writable": True})
    vm.write("s", "0", "3M")
    vm.write("r", "1M", "64k")
    vm.discard("r", "0", "2M")
    vm.qmp("blockdev-backup", {"device": "s", "target": "t", "sync": "full", "job-id": "j"})
    vm.run(until=vm.now + 1.0)
    out = [vm.qmp("query-blockstats"), vm.qmp("query-blockstats", {"query-nodes": True})]
    vm.qmp("block-export-del", {"id": "e"})
    vm.qmp("nbd-server-stop")
    return out


@pytest.mark.qemu
def test_drives_match_qemu() -> None:
    real, sim = on_both(drive_story, daemon="system")
    assert real == sim


@pytest.mark.qemu
def test_qsd_matches_qemu() -> None:
    real, sim = on_both(qsd_story)
    assert real == sim
    assert real[0] == []  # the real backend's own exports are anonymous BlockBackends: not listed


def backup_filter_story(vm: Machine) -> list:
    """A running drive-backup: the device's BlockBackend sits on the backup's filter (the device's node
    under ``parent`` and ``backing``); a guest write passes the thresholds of the filter and of the node."""
    vm.add_drive("drive0", "4M", node_name="d0")
    vm.hmp('qemu-io drive0 "write 0 3M"')
    vm.qmp("drive-backup", {"device": "drive0", "target": "b.qcow2", "sync": "full", "format": "qcow2",
                            "job-id": "j", "speed": 65536})
    (cbw,) = [n["node-name"] for n in vm.qmp("query-named-block-nodes") if n["drv"] == "copy-before-write"]
    vm.qmp("block-set-write-threshold", {"node-name": cbw, "write-threshold": 4096})
    vm.qmp("block-set-write-threshold", {"node-name": "d0", "write-threshold": 3 * MiB + 100})
    vm.hmp('qemu-io drive0 "write 3M 64k"')
    out = [[e["data"] for e in vm.events if e["event"] == "BLOCK_WRITE_THRESHOLD"], vm.qmp("query-blockstats")]
    vm.qmp("job-cancel", {"id": "j"})
    vm.run(until=vm.now + 0.5)
    return _masked(out, {})


def test_backup_filter_exact() -> None:
    events, blockstats = backup_filter_story(Machine())
    assert events == [{"node-name": "#auto0", "amount-exceeded": 3 * MiB + 65536 - 4096, "write-threshold": 4096},
                      {"node-name": "d0", "amount-exceeded": 65436, "write-threshold": 3 * MiB + 100}]
    d0 = {"node-name": "d0", "stats": stats(3 * MiB + 65536),
          "parent": {"node-name": "#auto1", "stats": stats(3538944), "driver-specific": file_specific()}}
    assert blockstats == [{"device": "drive0", "node-name": "#auto0", "stats": stats(3 * MiB + 65536, blk=True),
                           "parent": d0, "backing": d0}]
    assert list(blockstats[0]) == ["device", "parent", "stats", "backing", "node-name"]  # (wire order)


@pytest.mark.qemu
def test_backup_filter_matches_qemu() -> None:
    real, sim = on_both(backup_filter_story, daemon="system")
    assert real == sim


def highest_story(vm: Machine) -> dict[str, int]:
    """File nodes that hear nothing but qcow2's writes (no bitmap, no threshold): a file grown then cut by a
    shrink, an image with data opened again and rewritten in place, a grow that writes only the header's size
    field, a named file node left when its qcow2 node went, a blkdebug node with ``align`` over a file."""
    def add(name: str, file: dict | str, **opts: Any) -> None:
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": name, "file": file, **opts})

    def inline(image: str, node: str) -> dict:
        return {"driver": "file", "filename": image, "node-name": node}

    for image in ("s", "o", "g", "n", "d"):
        vm.qemu_img("create", "-f", "qcow2", f"{image}.qcow2", "4M")
    add("s", inline("s.qcow2", "sf"))
    vm.write("s", 0, 3 * MiB)
    vm.qmp("block_resize", {"node-name": "s", "size": MiB})  # qcow2 cuts its file: the highest write stays
    add("o", inline("o.qcow2", "of"))
    vm.write("o", 0, 2 * MiB)
    vm.qmp("blockdev-del", {"node-name": "o"})
    add("o", inline("o.qcow2", "of"))
    vm.write("o", MiB + 4096, 4096)  # in place: not the file's end
    add("g", inline("g.qcow2", "gf"))
    vm.qmp("block_resize", {"node-name": "g", "size": 8 * MiB})  # the header's size field: 8 bytes at 24
    vm.qmp("blockdev-add", inline("n.qcow2", "nf"))
    add("n", "nf")
    vm.write("n", 0, 65536)
    vm.qmp("blockdev-del", {"node-name": "n"})
    add("d", {"driver": "blkdebug", "node-name": "dd", "align": 4096, "image": inline("d.qcow2", "df")})
    vm.qmp("block_resize", {"node-name": "d", "size": 8 * MiB})  # padded to 4096 by blkdebug
    return {s["node-name"]: s["stats"]["wr_highest_offset"] for s in vm.qmp("query-blockstats", {"query-nodes": True})
}


def test_file_highest_without_hearing_exact() -> None:
    K = 65536
    assert highest_story(Machine()) == {
        "sf": 53 * K, "s": 3 * MiB,  # header, refcount table and block, L1, an L2 table, 48 data clusters
        "of": 21 * K + 8192, "o": MiB + 8192,  # guest cluster 16 is host cluster 21
        "gf": 32, "g": 0,
        "nf": 6 * K,
        "df": 4096, "dd": 4096, "d": 0,
    }


@pytest.mark.qemu
def test_file_highest_without_hearing_matches_qemu() -> None:
    real, sim = on_both(highest_story)
    assert real == sim
