"""``qemu-img map`` (and what else asks block status) of qcow2 images QEMU 7.2 takes for ones with preallocated
metadata (qcow2_detect_metadata_preallocation): the same operations on real QEMU and on bitlab, over cluster
sizes. Stored persistent bitmaps bring an image there (their table and directory fill a few bytes of a cluster
each); map then asks the host file system about every data cluster (SEEK_DATA), whose never-written blocks are
``"zero": true, "data": true``. Discards punch holes where the file node unmaps; a partial write into a new
cluster zeroes it first unless its copy on write copies a backing file's data (bitlab/block/hostfs.py).

``actual-size`` (st_blocks) is compared where bitlab's file has more than four extents already: the host file
system may add an extent-tree block to a file with fewer, when it fragments the file on the disk."""

from __future__ import annotations

import json

import pytest

from bitlab import Machine
from bitlab.block import hostfs

from ..both import on_both

K, M = 1 << 10, 1 << 20
CLUSTERS = [512, 4096, 65536, M, 2 * M]


def _open(vm: Machine, name: str = "a", **opts) -> None:
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": name,
                            "file": {"driver": "file", "filename": f"{name}.qcow2"}} | opts)


def _new(vm: Machine, cs: int, name: str = "a", backing: bool = False, **opts) -> None:
    extra = ["-b", "base.qcow2", "-F", "qcow2"] if backing else []
    vm.qemu_img("create", "-f", "qcow2", "-o", f"cluster_size={cs}", *extra, f"{name}.qcow2", "8M")
    _open(vm, name, **opts)


def _close(vm: Machine, name: str = "a") -> None:
    vm.qmp("blockdev-del", {"node-name": name})


def _looked_at(vm: Machine, *names: str, synced: bool = True) -> dict:
    """Each image's map, its ``actual-size``, and (bitlab) whether its file has an extent tree already
    (``synced``: written back; qemu-img convert writes its target with cache=unsafe, and the host file system
    has not split its extents yet when info asks)."""
    out = {}
    for name in names:
        images = getattr(vm, "images", None)  # (the simulator's)
        tree = None if images is None else synced and hostfs.extent_count(images[f"{name}.qcow2"].host_blocks()) > 4
        out[name] = {"map": vm.qemu_img("map", "--output=json", f"{name}.qcow2"), "tree": tree,
                     "size": json.loads(vm.qemu_img("info", "--output=json", f"{name}.qcow2"))["actual-size"]}
    return out


def _comparable(got: dict, sim: dict) -> dict:
    """``got`` without the sizes the host file system may make a block larger (see the module's docstring)."""
    out = {}
    for key, value in got.items():
        if isinstance(value, dict) and "tree" in value:
            value = {"map": value["map"]} | ({"size": value["size"]} if sim[key]["tree"] else {})
        elif isinstance(value, dict):
            value = _comparable(value, sim[key])
        out[key] = value
    return out


def bitmaps(vm: Machine, cs: int) -> dict:
    """Persistent bitmaps stored twice (the old data clusters discarded), partial writes between."""
    _new(vm, cs)
    vm.qmp("block-dirty-bitmap-add", {"node": "a", "name": "b0", "persistent": True})
    vm.qmp("block-dirty-bitmap-add", {"node": "a", "name": "b1", "persistent": True, "granularity": 512})
    vm.write("a", 8 * K, 4 * K, pattern=0x11)
    vm.write("a", M, 4 * K, pattern=0x12)
    _close(vm)
    first = _looked_at(vm, "a")
    _open(vm)
    vm.write("a", 2 * M + 4 * K, 8 * K, pattern=0x13)
    vm.qmp("block-dirty-bitmap-add", {"node": "a", "name": "b2", "persistent": True})
    _close(vm)
    return {"first": first, "then": _looked_at(vm, "a")}


def discards(vm: Machine, cs: int) -> dict:
    """Clusters freed and punched (discard, write -z -u), kept as zero clusters (write -z), written again in
    part; then a bitmap stored."""
    _new(vm, cs, discard="unmap")
    vm.write("a", 0, 3 * M, pattern=0x11)
    vm.guest_io("a", "discard 0 1M")
    vm.guest_io("a", "write -z -u 1M 512k")
    vm.guest_io("a", "write -z 2M 256k")
    vm.write("a", 8 * K, 4 * K, pattern=0x12)
    vm.write("a", 2 * M + 8 * K, 4 * K, pattern=0x13)
    vm.qmp("block-dirty-bitmap-add", {"node": "a", "name": "b0", "persistent": True})
    _close(vm)
    return _looked_at(vm, "a")


def overlay(vm: Machine, cs: int) -> dict:
    """Partial writes into an overlay: over the backing file's data (copied), over its zero cluster, over
    nothing, into the overlay's own zero cluster (zeroed first); then a bitmap stored."""
    vm.qemu_img("create", "-f", "qcow2", "base.qcow2", "8M")
    _open(vm, "base")
    vm.write("base", 0, 2 * M, pattern=0x22)
    vm.guest_io("base", "write -z 3M 64k")
    _close(vm, "base")
    _new(vm, cs, backing=True)
    vm.write("a", 8 * K, 4 * K, pattern=0x11)
    vm.write("a", 3 * M + 8 * K, 4 * K, pattern=0x11)
    vm.write("a", 5 * M + 8 * K, 4 * K, pattern=0x11)
    vm.guest_io("a", "write -z 1M 1M")
    vm.write("a", M + 8 * K, 4 * K, pattern=0x11)
    vm.qmp("block-dirty-bitmap-add", {"node": "a", "name": "b0", "persistent": True})
    _close(vm)
    return _looked_at(vm, "a")


def _stored(vm: Machine, cs: int) -> None:
    """An image with a stored bitmap and two partial writes."""
    _new(vm, cs)
    vm.qmp("block-dirty-bitmap-add", {"node": "a", "name": "b0", "persistent": True})
    vm.write("a", 8 * K, 4 * K, pattern=0x11)
    vm.write("a", 2 * M, 4 * K, pattern=0x12)
    _close(vm)


def backup(vm: Machine, cs: int) -> dict:
    """A full backup of such an image, opened again with ``cache.direct``: block-copy's block status asks the file
    (never-written stretches of a job cluster or more become zero writes on the target). Without O_DIRECT the
    backup's reads and the kernel's read-ahead leave blocks in the host's page cache, where SEEK_DATA finds data
    while the job runs and after it (measured: then QEMU's target map varied from run to run, and its source map
    always differed from one without a page cache)."""
    _stored(vm, cs)
    _open(vm, cache={"direct": True})
    _new(vm, 65536, "t")
    return _backed_up(vm, "full")


def _backed_up(vm: Machine, sync: str) -> dict:
    """A backup of ``a`` into ``t`` (one worker), both closed after it: what they look like."""
    vm.qmp("blockdev-backup", {"job-id": "j", "device": "a", "target": "t", "sync": sync,
                               "x-perf": {"max-workers": 1}})
    vm.run()
    _close(vm, "t")
    _close(vm)
    return _looked_at(vm, "t", "a")


def copied(vm: Machine, cs: int) -> dict:
    """qemu-img convert of such an image, compare -s of the two (a block status mismatch) and compare (the same):
    compare reads them, and leaves what it read in the host's page cache (so it comes last)."""
    _stored(vm, cs)
    out = {"convert": vm.qemu_img("convert", "-O", "qcow2", "a.qcow2", "c.qcow2")}
    try:
        vm.qemu_img("compare", "-s", "a.qcow2", "c.qcow2")
    except Exception as err:  # noqa: BLE001 - QemuImgError on both backends
        out["compare -s"] = str(err)
    out["compare"] = vm.qemu_img("compare", "a.qcow2", "c.qcow2")
    return out | _looked_at(vm, "c", synced=False)


@pytest.mark.qemu
@pytest.mark.parametrize("story", [bitmaps, discards, overlay, backup, copied])
@pytest.mark.parametrize("cs", CLUSTERS)
def test_same_on_qemu(cs, story):
    real, sim = on_both(lambda vm: story(vm, cs))
    assert _comparable(sim, sim) == _comparable(real, sim)


def asked_early(vm: Machine, cs: int, early: bool) -> dict:
    """qcow2 looks for preallocated metadata once, when something first asks the node for block status: here
    (``early``) a zero write over part of a preallocated cluster (is_zero asks about the rest of the cluster,
    though the cluster holds data and the write falls back to writing zeroes) while the file holds the metadata
    alone, so the image is taken for a preallocated one for as long as it stays open, after the data written
    next has filled the file; otherwise the backup asks first, too late. A ``sync: top`` backup of it into an
    image made the same way: where the source's file has holes, the answers are zeroes, which the job writes as
    zero clusters that keep their host clusters, or data."""
    for name in ("a", "t"):
        vm.qemu_img("create", "-f", "qcow2", "-o", f"cluster_size={cs},preallocation=metadata", f"{name}.qcow2",
                    "4M")
        _open(vm, name)
    if early:
        vm.guest_io("a", f"write -z {cs + cs // 4} {cs // 4}")
    vm.write("a", 3 * cs, 4 * M - 3 * cs, pattern=0x11)
    return _backed_up(vm, "top")


@pytest.mark.qemu
@pytest.mark.parametrize("early", [True, False])
@pytest.mark.parametrize("cs", [4096, 65536])
def test_detected_when_first_asked(cs, early):
    real, sim = on_both(lambda vm: asked_early(vm, cs, early))
    assert _comparable(sim, sim) == _comparable(real, sim)
