"""qcow2 compressed clusters: qemu-io ``write -c`` and a backup with ``compress``, as QEMU 7.2 writes them.

qcow2_co_pwritev_compressed_task deflates each cluster (raw zlib: 64 KiB of one byte to 79 bytes) and
qcow2_alloc_bytes packs the chunks one after another into host clusters (a chunk may run into the next cluster
only if it follows); a compressed cluster is data without a host offset (``qemu-img map``), allocated, compressed
and fragmented for ``qemu-img check``. Measured on QEMU 7.2 (system emulator: qemu-io over NBD cannot compress).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bitlab import Machine, QemuImgError
from bitlab.block.compress import cluster_sizes
from bitlab.errors import QMPError

from ..both import on_both

K = 1 << 10


def _qemu_io(vm: Machine, node: str, cmd: str) -> str:
    return vm.qemu_io(node, cmd).split("\n")[0]


def _write_story(vm: Machine) -> list:
    """Compressed writes next to a normal one on a 4 MiB image: their replies, the file node's length and the
    image's actual-size, then qemu-img map (JSON, human), check and info's disk size."""
    vm.qemu_img("create", "-f", "qcow2", "a.qcow2", "4M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "a", "file": {"driver": "file", "filename": "a.qcow2",
                                                                           "node-name": "a-file"}})
    out: list = [_qemu_io(vm, "a", cmd) for cmd in (
        "write -c -P 0x11 0 64k", "write -c -P 0x22 64k 64k", "write -P 0x33 128k 64k", "write -c 256k 64k",
        "write -c 0 64k", "write -c 512 64k", "write -c 64k 1k", "write -c -z 320k 64k",
        "write -c -P 0 2M 64k", "read -P 0x22 64k 64k")]
    nodes = {n["node-name"]: n["image"] for n in vm.qmp("query-named-block-nodes", {})}
    out.append((nodes["a-file"]["virtual-size"], nodes["a"]["actual-size"]))
    vm.qmp("blockdev-del", {"node-name": "a"})
    out.append(vm.qemu_img("map", "--output=json", "a.qcow2"))
    try:
        vm.qemu_img("map", "a.qcow2")
    except QemuImgError as err:
        out.append((err.stdout, err.stderr, err.returncode))
    out.append(vm.qemu_img("check", "a.qcow2"))
    out.append([line for line in vm.qemu_img("info", "a.qcow2").splitlines() if "disk size" in line])
    return out


WRITE_STORY = [
    "wrote 65536/65536 bytes at offset 0", "wrote 65536/65536 bytes at offset 65536",
    "wrote 65536/65536 bytes at offset 131072", "wrote 65536/65536 bytes at offset 262144",
    "write failed: Input/output error", "write failed: Invalid argument", "write failed: Invalid argument",
    "wrote 65536/65536 bytes at offset 327680", "wrote 65536/65536 bytes at offset 2097152",
    "read 65536/65536 bytes at offset 65536",
    (458752, 335872),
    '[{ "start": 0, "length": 131072, "depth": 0, "present": true, "zero": false, "data": true},\n'
    '{ "start": 131072, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, '
    '"offset": 393216},\n'
    '{ "start": 196608, "length": 65536, "depth": 0, "present": false, "zero": true, "data": false},\n'
    '{ "start": 262144, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true},\n'
    '{ "start": 327680, "length": 65536, "depth": 0, "present": true, "zero": true, "data": false},\n'
    '{ "start": 393216, "length": 1703936, "depth": 0, "present": false, "zero": true, "data": false},\n'
    '{ "start": 2097152, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true},\n'
    '{ "start": 2162688, "length": 2031616, "depth": 0, "present": false, "zero": true, "data": false}]\n',
    ("Offset          Length          Mapped to       File\n",
     "qemu-img: File contains external, encrypted or compressed clusters.\n", 1),
    "No errors were found on the image.\n5/64 = 7.81% allocated, 80.00% fragmented, 80.00% compressed clusters\n"
    "Image end offset: 458752\n",
    ["disk size: 328 KiB"],
]


def test_write_c_simulated() -> None:
    assert _write_story(Machine()) == WRITE_STORY


@pytest.mark.qemu
def test_write_c_on_both() -> None:
    real, sim = on_both(_write_story, daemon="system")
    assert sim == real == WRITE_STORY


def test_packing_and_file_length() -> None:
    """Chunks of 79 bytes packed one after another after the L2 table (host cluster 5, 64 KiB clusters); a
    reopened image starts a new cluster (free_byte_offset 0 after open); an empty write rounds the file's length
    up to a sector; the last, partial cluster of a disk is padded (one chunk)."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "a.qcow2", "100k")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "a", "file": {"driver": "file", "filename": "a.qcow2"}})
    assert _qemu_io(vm, "a", "write -c -P 7 64k 36k") == "wrote 36864/36864 bytes at offset 65536"
    image = vm.images["a.qcow2"]
    assert image.file_length() == 5 * 64 * K + 84  # (measured: 327764)
    assert _qemu_io(vm, "a", "write -c 0 0") == "wrote 0/0 bytes at offset 0"
    assert image.file_length() == 5 * 64 * K + 512
    layout = image.layout
    assert layout.free_byte_offset == 5 * 64 * K + 84 and layout.compressed_count() == 1
    layout.reopen()
    assert layout.free_byte_offset == 0
    sizes = cluster_sizes(np.array([0, 32 * K]), np.array([32 * K, 100 * K]), np.array([0x11, 0]),
                          np.array([0, 1]), 64 * K)
    assert sizes.tolist() == [80, 78]


def test_refusals() -> None:
    """What bitlab does not simulate over compressed clusters it refuses: a request over one through blkdebug (its
    rules would see qcow2's steps), a compressed write at a free_byte_offset whose host cluster was freed and taken
    again (QEMU 7.2 writes the chunk there: a corrupt image); raw answers ENOTSUP as QEMU does."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "a.qcow2", "1M")
    vm.qemu_img("create", "-f", "raw", "r.raw", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "a", "discard": "unmap",
                            "file": {"driver": "file", "filename": "a.qcow2"}})
    vm.qmp("blockdev-add", {"driver": "raw", "node-name": "r", "file": {"driver": "file", "filename": "r.raw"}})
    assert _qemu_io(vm, "r", "write -c 0 64k") == "write failed: Operation not supported"
    _qemu_io(vm, "a", "write -c 64k 64k")
    _qemu_io(vm, "a", "write -c 128k 64k")
    vm.qmp("blockdev-del", {"node-name": "a"})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "a", "discard": "unmap",
                            "file": {"driver": "blkdebug", "image": {"driver": "file", "filename": "a.qcow2"}}})
    for cmd, what in (("write 130k 4k", "a write"), ("write -z 128k 64k", "a zero write"),
                      ("discard 0 1M", "a discard")):
        with pytest.raises(QMPError, match=f"bitlab does not simulate {what} over a compressed cluster over blkdebug"):
            vm.qemu_io("a", cmd)
    vm.qmp("blockdev-del", {"node-name": "a"})
    vm.qemu_img("create", "-f", "qcow2", "b.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "b", "file": {"driver": "file", "filename": "b.qcow2"}})
    for cmd in ("write -c 0 64k", "write 0 64k", "write 512k 64k"):  # (the chunk's host cluster freed, then data)
        _qemu_io(vm, "b", cmd)
    with pytest.raises(QMPError, match="bitlab does not simulate a compressed write into a host cluster freed and "
                                       "allocated again"):
        vm.qemu_io("b", "write -c 256k 64k")


def _backup_story(vm: Machine, workers: int) -> list:
    """A compressed full backup (``workers``: x-perf max-workers, 0 for QEMU's default) of data, a zero
    cluster and a partial cluster: the job's end, actual-size, the target's map and check, compare."""
    vm.qemu_img("create", "-f", "qcow2", "s.qcow2", "4M")
    vm.qemu_img("create", "-f", "qcow2", "t.qcow2", "4M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "s", "file": {"driver": "file", "filename": "s.qcow2"}})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "t", "file": {"driver": "file", "filename": "t.qcow2"}})
    vm.write("s", 0, 64 * K, pattern=0x11)
    vm.write("s", 64 * K, 32 * K, pattern=0x22)
    vm.write("s", 192 * K, 128 * K, pattern=0x33)
    vm.guest_io("s", f"write -z {1024 * K} {64 * K}")
    vm.write("s", 2048 * K, 100 * K, pattern=0x44)
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "s", "target": "t", "sync": "full", "compress": True,
                               "x-perf": {"max-workers": workers} if workers else {}})
    vm.run()
    ends = [(e["event"], e["data"].get("error")) for e in vm.events if e["event"] == "BLOCK_JOB_COMPLETED"]
    size = {n["node-name"]: n["image"].get("actual-size") for n in vm.qmp("query-named-block-nodes", {})}["t"]
    vm.qmp("blockdev-del", {"node-name": "t"})
    vm.qmp("blockdev-del", {"node-name": "s"})
    return [ends, size, json.loads(vm.qemu_img("map", "--output=json", "t.qcow2")), vm.qemu_img("check", "t.qcow2"),
            vm.qemu_img("compare", "s.qcow2", "t.qcow2")]


BACKUP_CHECK = ("No errors were found on the image.\n6/64 = 9.38% allocated, 100.00% fragmented, "
                "100.00% compressed clusters\nImage end offset: 393216\n")


def test_compressed_backup_simulated() -> None:
    ends, size, entries, check, compare = _backup_story(Machine(), 1)
    assert ends == [("BLOCK_JOB_COMPLETED", None)] and size == 270336 and check == BACKUP_CHECK
    assert [(e["start"], e["length"], e["zero"], e["data"], e.get("offset")) for e in entries] == [
        (0, 128 * K, False, True, None), (128 * K, 64 * K, True, False, None), (192 * K, 128 * K, False, True, None),
        (320 * K, 1728 * K, True, False, None), (2048 * K, 128 * K, False, True, None),
        (2176 * K, 1920 * K, True, False, None)]
    assert compare == "Images are identical.\n"


@pytest.mark.qemu
@pytest.mark.parametrize("workers", [1, 0])
def test_compressed_backup_on_both(workers: int) -> None:
    real, sim = on_both(lambda vm: _backup_story(vm, workers), daemon="system")
    assert sim == real


def _allocated_target_story(vm: Machine) -> list:
    """A compressed backup (one worker) onto a target whose third cluster already holds data: that task's write
    fails with EIO (qcow2_alloc_compressed_cluster_offset), the job reports it and ends there; then a normal
    backup (one worker) *from* the target, whose compressed clusters are data without a host offset: the new
    image's map. (With several workers QEMU's order of the copies varies: a compressed cluster's read waits for
    its decompression in a thread pool; measured 1 run in 6 reversed.)"""
    for name in ("s", "t", "u"):
        vm.qemu_img("create", "-f", "qcow2", f"{name}.qcow2", "1M")
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": name,
                                "file": {"driver": "file", "filename": f"{name}.qcow2"}})
    vm.write("s", 0, 256 * K, pattern=0x11)
    vm.write("t", 128 * K, 64 * K, pattern=0x22)
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "s", "target": "t", "sync": "full", "compress": True,
                               "x-perf": {"max-workers": 1}})
    vm.run()
    vm.qmp("blockdev-backup", {"job-id": "k", "device": "t", "target": "u", "sync": "full",
                               "x-perf": {"max-workers": 1}})  # (with more, QEMU's order varies: see README)
    vm.run()
    events = [(e["event"], {k: v for k, v in e["data"].items() if k not in ("speed", "type")})
              for e in vm.events if e["event"].startswith("BLOCK_JOB")]
    for name in ("s", "t", "u"):
        vm.qmp("blockdev-del", {"node-name": name})
    return [events, vm.qemu_img("check", "t.qcow2"), json.loads(vm.qemu_img("map", "--output=json", "u.qcow2")),
            vm.qemu_img("compare", "t.qcow2", "u.qcow2")]


def test_compressed_backup_onto_allocated_cluster() -> None:
    events, check, entries, compare = _allocated_target_story(Machine())
    assert events == [
        ("BLOCK_JOB_ERROR", {"device": "j", "operation": "write", "action": "report"}),
        ("BLOCK_JOB_COMPLETED", {"device": "j", "len": 1048576, "offset": 131072, "error": "Input/output error"}),
        ("BLOCK_JOB_COMPLETED", {"device": "k", "len": 1048576, "offset": 1048576})]
    assert "3/16 = 18.75% allocated" in check and "66.67% compressed clusters" in check
    assert [(e["start"], e["length"], e["data"], e.get("offset")) for e in entries] == [
        (0, 192 * K, True, 5 * 64 * K), (192 * K, 832 * K, False, None)]
    assert compare == "Images are identical.\n"


@pytest.mark.qemu
def test_compressed_backup_onto_allocated_cluster_on_both() -> None:
    real, sim = on_both(_allocated_target_story, daemon="system")
    assert sim == real


def _drive_backup_story(vm: Machine) -> list:
    """drive-backup opens its target with ``detect-zeroes: unmap``: a compressed write of a cluster of zeroes
    becomes a zero write (bdrv_aligned_pwritev, before the driver sees the flag), the others compress; so does
    qemu-io ``write -c`` of zeroes on such a node (the whole request)."""
    vm.qemu_img("create", "-f", "qcow2", "s.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "s", "file": {"driver": "file", "filename": "s.qcow2"}})
    vm.write("s", 0, 64 * K, pattern=0)  # data of zeroes
    vm.write("s", 64 * K, 64 * K, pattern=0x33)
    vm.write("s", 192 * K, 4 * K, pattern=0)
    vm.write("s", 196 * K, 4 * K, pattern=0x44)
    vm.qemu_img("create", "-f", "qcow2", "t.qcow2", "1M")
    vm.qmp("drive-backup", {"job-id": "j", "device": "s", "target": "t.qcow2", "format": "qcow2", "mode": "existing",
                            "sync": "full", "compress": True, "x-perf": {"max-workers": 1}})
    vm.run()
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "u", "detect-zeroes": "on",
                            "file": {"driver": "file", "filename": "t.qcow2"}})
    out = [_qemu_io(vm, "u", "write -c -P 0 512k 64k"), _qemu_io(vm, "u", "write -c -P 0 640k 4k")]
    vm.qmp("blockdev-del", {"node-name": "u"})
    vm.qmp("blockdev-del", {"node-name": "s"})
    return out + [json.loads(vm.qemu_img("map", "--output=json", "t.qcow2")), vm.qemu_img("check", "t.qcow2")]


def test_drive_backup_compress_detects_zeroes() -> None:
    *io, entries, check = _drive_backup_story(Machine())
    assert io == ["wrote 65536/65536 bytes at offset 524288", "wrote 4096/4096 bytes at offset 655360"]
    assert [(e["start"], e["length"], e["zero"], e["data"], e.get("offset")) for e in entries] == [
        (0, 64 * K, True, False, None), (64 * K, 64 * K, False, True, None), (128 * K, 64 * K, True, False, None),
        (192 * K, 64 * K, False, True, None), (256 * K, 768 * K, True, False, None)]
    assert "2/16 = 12.50% allocated" in check and "100.00% compressed clusters" in check


@pytest.mark.qemu
def test_drive_backup_compress_on_both() -> None:
    real, sim = on_both(_drive_backup_story, daemon="system")
    assert sim == real


def _failed_requests_story(vm: Machine) -> list:
    """A compressed write that fails (EINVAL unaligned, ENOTSUP on raw, EIO onto an allocated cluster) was a
    request all the same: bdrv_co_write_req_finish dirties its range and moves the highest offset, and the write
    threshold saw it first; an empty one truncates the file to a whole sector, which is no write."""
    vm.qemu_img("create", "-f", "qcow2", "a.qcow2", "1M")
    vm.qemu_img("create", "-f", "raw", "r.raw", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "a",
                            "file": {"driver": "file", "filename": "a.qcow2", "node-name": "af"}})
    vm.qmp("blockdev-add", {"driver": "raw", "node-name": "r", "file": {"driver": "file", "filename": "r.raw",
                                                                         "node-name": "rf"}})
    for node in ("a", "r"):
        vm.qmp("block-dirty-bitmap-add", {"node": node, "name": "b", "granularity": 4096})
    vm.qmp("block-set-write-threshold", {"node-name": "a", "write-threshold": 1000})
    out: list = []
    for node, cmd in (("a", "write -c 512 64k"), ("r", "write -c 0 64k"), ("a", "write -c 64k 64k"),
                      ("a", "write -c 64k 64k"), ("a", "write -c 1M 0")):
        out.append(_qemu_io(vm, node, cmd))
        out.append({n["node-name"]: [b["count"] for b in n.get("dirty-bitmaps", [])]
                    for n in vm.qmp("query-named-block-nodes", {}) if n["node-name"] in ("a", "r")})
    out.append([e["data"] for e in vm.events if e["event"] == "BLOCK_WRITE_THRESHOLD"])
    out.append({s["node-name"]: s["stats"]["wr_highest_offset"]
                for s in vm.qmp("query-blockstats", {"query-nodes": True})})
    return out


def test_failed_compressed_requests_are_requests() -> None:
    out = _failed_requests_story(Machine())
    assert out[:6] == ["write failed: Invalid argument", {"a": [69632], "r": [0]},
                       "write failed: Operation not supported", {"a": [69632], "r": [65536]},
                       "wrote 65536/65536 bytes at offset 65536", {"a": [131072], "r": [65536]}]
    assert out[6] == "write failed: Input/output error" and out[9] == {"a": [131072], "r": [65536]}
    assert out[10] == [{"node-name": "a", "write-threshold": 1000, "amount-exceeded": 65048}]
    assert out[11] == {"a": 131072, "af": 327759, "r": 65536, "rf": 0}


@pytest.mark.qemu
def test_failed_compressed_requests_on_both() -> None:
    real, sim = on_both(_failed_requests_story, daemon="system")
    assert sim == real


def _convert_story(vm: Machine) -> list:
    """qemu-img convert -c: whole target clusters compressed in order (those reading zeroes left out unless -S 0),
    then the file's length rounded up to a sector; raw output refuses compression."""
    vm.qemu_img("create", "-f", "qcow2", "s.qcow2", str(4 * (1 << 20) + 3 * K))
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "s", "file": {"driver": "file", "filename": "s.qcow2"}})
    vm.write("s", 0, 64 * K, pattern=1)
    vm.write("s", 64 * K, 64 * K, pattern=0)  # data of zeroes: left out
    vm.write("s", 200 * K, 4 * K, pattern=2)
    vm.write("s", 1 << 20, 300 * K, pattern=3)
    vm.write("s", 4 * (1 << 20), 3 * K, pattern=4)  # the partial last cluster
    vm.qmp("blockdev-del", {"node-name": "s"})
    out: list = []
    for name, extra in (("a", []), ("b", ["-o", "cluster_size=4096"]), ("c", ["-S", "0"]),
                        ("d", ["-o", "cluster_size=2M"]), ("e", ["-o", "compat=0.10"])):
        vm.qemu_img("convert", "-c", "-O", "qcow2", *extra, "s.qcow2", f"{name}.qcow2")
        out += [json.loads(vm.qemu_img("map", "--output=json", f"{name}.qcow2")),
                vm.qemu_img("check", f"{name}.qcow2"),
                [line for line in vm.qemu_img("info", f"{name}.qcow2").splitlines() if "disk size" in line],
                vm.qemu_img("compare", "s.qcow2", f"{name}.qcow2")]
    try:
        vm.qemu_img("convert", "-c", "-O", "raw", "s.qcow2", "r.raw")
    except QemuImgError as err:
        out.append((err.stderr, err.returncode))
    return out


def test_convert_c_simulated() -> None:
    out = _convert_story(Machine())
    assert out[1] == ("No errors were found on the image.\n8/65 = 12.31% allocated, 100.00% fragmented, "
                      "100.00% compressed clusters\nImage end offset: 393216\n")
    assert all(o == "Images are identical.\n" for o in out[3:20:4])
    assert out[-1] == ("qemu-img: Compression not supported for this file format\n", 1)


@pytest.mark.qemu
def test_convert_c_on_both() -> None:
    real, sim = on_both(_convert_story, daemon="system")
    assert sim == real


def _rewrite_story(vm: Machine, discard: str) -> list:
    """Normal, partial, zero and discard requests over compressed clusters packed into one host cluster (opened
    with ``discard``; a 512-byte bitmap on the file node sees qcow2's writes and the discards it passes), then a
    compressed write at free_byte_offset in the host cluster they freed: replies, bitmap counts, actual-size,
    then map, check and disk size."""
    vm.qemu_img("create", "-f", "qcow2", "a.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "a", "discard": discard,
                            "file": {"driver": "file", "filename": "a.qcow2", "node-name": "af", "discard": "unmap"}})
    vm.qmp("block-dirty-bitmap-add", {"node": "af", "name": "f", "granularity": 512})
    out: list = []
    for cmd in ("write -c -P 1 0 64k", "write -c -P 2 64k 64k", "write -c -P 3 128k 64k", "write -c -P 4 192k 64k",
                "write -P 9 64k 64k", "write -P 8 132k 4k", "write -z 192k 4k", "write -z 0 64k",
                "write -c -P 5 256k 64k", "write -c -P 6 320k 64k", "discard 256k 128k", "write -c -P 7 512k 64k",
                "read -P 9 64k 64k", "read -P 3 128k 4k", "read -P 8 132k 4k", "read -P 0 0 64k"):
        out.append(_qemu_io(vm, "a", cmd))
    vm.write("a", 516 * K, 4 * K, pattern=0x77)  # (a guest write: part of a compressed cluster)
    nodes = {n["node-name"]: n for n in vm.qmp("query-named-block-nodes", {})}
    out.append([b["count"] for b in nodes["af"]["dirty-bitmaps"]])
    out.append((nodes["af"]["image"]["virtual-size"], nodes["a"]["image"]["actual-size"]))
    vm.qmp("blockdev-del", {"node-name": "a"})
    out.append(json.loads(vm.qemu_img("map", "--output=json", "a.qcow2")))
    out.append(vm.qemu_img("check", "a.qcow2"))
    out.append([line for line in vm.qemu_img("info", "a.qcow2").splitlines() if "disk size" in line])
    return out


@pytest.mark.qemu
@pytest.mark.parametrize("discard", ["ignore", "unmap"])
def test_requests_over_compressed_on_both(discard: str) -> None:
    real, sim = on_both(lambda vm: _rewrite_story(vm, discard), daemon="system")
    assert sim == real


def test_requests_over_compressed_simulated() -> None:
    """The chunks of four compressed clusters share host cluster 5 (refcount 4): a full and a partial write give
    their clusters new host clusters (6, 7: the COW copies the rest), a partial zero write is a write of zeroes, a
    whole one frees the chunk (its discard passed with ``discard=unmap``); the host cluster, free again, lowers
    free_cluster_index and keeps free_byte_offset, where the next compressed writes go (QEMU 7.2, measured)."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "a.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "a", "file": {"driver": "file", "filename": "a.qcow2"}})
    for i in range(4):
        _qemu_io(vm, "a", f"write -c -P {i + 1} {64 * i}k 64k")
    image = vm.images["a.qcow2"]
    layout = image.layout
    clusters, offsets, sizes = layout.chunks(0, 16)
    assert clusters.tolist() == [0, 1, 2, 3] and sizes.tolist() == [79] * 4
    assert offsets.tolist() == [5 * 64 * K + 79 * i for i in range(4)] and layout.free_byte_offset == 5 * 64 * K + 316
    for cmd in ("write -P 9 64k 64k", "write -P 8 132k 4k", "write -z 192k 4k"):
        _qemu_io(vm, "a", cmd)
    assert image.layout is layout  # (the writes pending reach it)
    assert layout.chunks(0, 16)[0].tolist() == [0] and layout.free.look(5) == 0  # (in use: one chunk left)
    assert layout.hosted()[0].tolist() == [1] and layout.hosted()[2].tolist() == [5]  # guest 1-3 at host 6-8
    _qemu_io(vm, "a", "write -z 0 64k")
    assert image.layout.compressed_count() == 0 and layout.free.look(5) == 1 and layout.fci == 5
    assert layout.free_byte_offset == 5 * 64 * K + 316
    _qemu_io(vm, "a", "write -c -P 5 256k 64k")
    assert image.layout.chunks(0, 16)[1].tolist() == [5 * 64 * K + 316] and layout.free.look(5) == 0
    vm.qmp("blockdev-del", {"node-name": "a"})
    assert vm.qemu_img("check", "a.qcow2") == ("No errors were found on the image.\n4/16 = 25.00% allocated, "
                                               "25.00% fragmented, 25.00% compressed clusters\n"
                                               "Image end offset: 589824\n")


def _chain_steps(sc) -> None:
    """A base and a top holding compressed clusters (some of the top's writes over the base's), queried, rebased
    safely onto nothing and back with -u, then committed into the base (whose host layout QEMU does not fix:
    masked), queried again; a second chain rebased safely onto another image."""
    mib = 1 << 20
    sc.create(mib)
    sc.io("img0.qcow2", ["write -c -P 0x11 0 64k", "write -c -P 0x22 64k 64k", "write -c -P 0x33 128k 64k",
                         "write -P 0x44 512k 64k"])
    sc.create(mib)
    sc.io("img1.qcow2", ["write -c -P 0x55 256k 64k", "write -c -P 0x66 320k 64k", "write -P 0x77 64k 64k",
                         "write -z 128k 64k", "write -P 0x12 768k 64k"])  # (whole clusters: see README)
    sc.queries()
    sc.img("rebase", "-b", "", "img1.qcow2")  # (safe: the base's clusters copied where the top has none)
    sc.backing["img1.qcow2"] = None
    sc.queries()
    sc.img("rebase", "-u", "-b", "img0.qcow2", "-F", "qcow2", "img1.qcow2")
    sc.backing["img1.qcow2"] = "img0.qcow2"
    sc.img("commit", "img1.qcow2")
    sc.unordered.add("img0.qcow2")  # (the mirror job's copies land in no fixed order: QEMU reads compressed
    sc.queries()                    # clusters in a thread pool)
    sc.create(mib)
    sc.io("img2.qcow2", ["write -c -P 0x21 0 64k", "write -P 0x31 64k 64k"])
    sc.img("rebase", "-b", "img0.qcow2", "-F", "qcow2", "img2.qcow2")
    sc.backing["img2.qcow2"] = "img0.qcow2"
    sc.queries()


@pytest.mark.qemu
def test_commit_and_rebase_on_both() -> None:
    from .test_qemu_img_chains import _fixed
    assert _fixed(_chain_steps) == []


def _shrink_story(vm: Machine) -> list:
    """Shrinks through compressed clusters: qemu-img resize --shrink (a cluster the new end cuts keeps its chunk,
    and shows its bytes again after a grow), then block_resize of a node over a file node with a bitmap (the
    chunks' host cluster freed: its discard passes, QCOW2_DISCARD_ALWAYS, and the file is cut)."""
    vm.qemu_img("create", "-f", "qcow2", "a.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "a", "file": {"driver": "file", "filename": "a.qcow2"}})
    out = [_qemu_io(vm, "a", cmd) for cmd in ("write -c -P 1 0 64k", "write -c -P 2 64k 64k", "write -P 5 128k 64k",
                                               "write -c -P 3 512k 64k", "write -c -P 4 576k 64k")]
    vm.qmp("blockdev-del", {"node-name": "a"})
    out.append(vm.qemu_img("resize", "--shrink", "a.qcow2", "100k"))
    out.append(vm.qemu_img("resize", "a.qcow2", "1M"))
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "a", "file": {"driver": "file", "filename": "a.qcow2",
                                                                           "node-name": "af"}})
    vm.qmp("block-dirty-bitmap-add", {"node": "af", "name": "f", "granularity": 64 * K})  # (README: 512 aborts)
    out += [_qemu_io(vm, "a", cmd) for cmd in ("read -P 2 64k 64k", "read -P 0 128k 64k",
                                               "write -c -P 6 320k 64k", "write -c -P 7 384k 64k")]
    vm.qmp("block_resize", {"node-name": "a", "size": 320 * K})
    nodes = {n["node-name"]: n for n in vm.qmp("query-named-block-nodes", {})}
    out.append((nodes["af"]["dirty-bitmaps"][0]["count"], nodes["af"]["image"]["virtual-size"]))
    vm.qmp("blockdev-del", {"node-name": "a"})
    out += [json.loads(vm.qemu_img("map", "--output=json", "a.qcow2")), vm.qemu_img("check", "a.qcow2"),
            [line for line in vm.qemu_img("info", "a.qcow2").splitlines() if "disk size" in line]]
    return out


@pytest.mark.qemu
def test_shrink_through_compressed_on_both() -> None:
    real, sim = on_both(_shrink_story, daemon="system")
    assert sim == real


def test_commit_rebase_shrink_simulated() -> None:
    """qemu-img commit copies a top's compressed clusters into the base as data (normal clusters) and empties the
    top; into a base holding compressed clusters its writes free their chunks; a safe rebase copies into the
    top's unallocated clusters only (its compressed ones stay); a shrink frees the chunks past the new end (their
    host cluster, no chunk left in it, is cut off the file) and keeps the one the end cuts."""
    vm = Machine()
    vm.qemu_img("create", "-f", "qcow2", "base.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "b", "file": {"driver": "file", "filename": "base.qcow2"}})
    for cmd in ("write -c -P 1 0 64k", "write -c -P 2 64k 64k", "write -P 3 512k 64k"):
        _qemu_io(vm, "b", cmd)
    vm.qmp("blockdev-del", {"node-name": "b"})
    vm.qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "t", "file": {"driver": "file", "filename": "top.qcow2"}})
    for cmd in ("write -c -P 4 64k 64k", "write -c -P 5 256k 64k", "write -P 6 768k 4k"):
        _qemu_io(vm, "t", cmd)
    vm.qmp("blockdev-del", {"node-name": "t"})
    assert vm.qemu_img("rebase", "-u", "-b", "", "top.qcow2") == ""
    vm.qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "flat.qcow2")
    assert vm.qemu_img("rebase", "-b", "", "flat.qcow2") == ""  # (safe: the base's content copied as data)
    assert vm.images["flat.qcow2"].layout.compressed_count() == 0
    assert vm.qemu_img("compare", "flat.qcow2", "base.qcow2") == "Images are identical.\n"
    vm.qemu_img("rebase", "-u", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2")
    assert vm.qemu_img("commit", "top.qcow2") == "Image committed.\n"
    base = vm.images["base.qcow2"].layout
    assert base.compressed_count() == 1 and base.chunks(0, 16)[0].tolist() == [0]  # (64k: a new host cluster)
    assert vm.qemu_img("check", "top.qcow2") == "No errors were found on the image.\nImage end offset: 262144\n"
    assert "5/16 = 31.25% allocated" in vm.qemu_img("check", "base.qcow2")
    vm.qemu_img("resize", "--shrink", "base.qcow2", "32k")
    assert vm.qemu_img("check", "base.qcow2") == ("No errors were found on the image.\n1/1 = 100.00% allocated, "
                                                  "100.00% fragmented, 100.00% compressed clusters\n"
                                                  "Image end offset: 393216\n")
