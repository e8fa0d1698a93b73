"""A qcow2 node opening persistent bitmaps over blkdebug (qcow2_load_dirty_bitmaps): it reads the bitmap
directory, then each bitmap's table and data clusters; opened read-write, update_ext_header_and_dir_in_place
writes the header, the directory and the header twice more, each header followed by a flush. A rule armed by
``reftable_load`` (or by the writes' own ``pwritev_done``) fails one of those requests: QEMU's error names it,
and the image is left as QEMU leaves it (unchanged, bitmaps in use, or bitmaps dropped: unknown to bitlab)."""

from __future__ import annotations

import json

import pytest

from bitlab import Machine, QMPError
from bitlab.qemu_img import QemuImgError
from tests.both import on_both

EIO = "Input/output error"
# Where the image's bitmap metadata is (64 KiB clusters, sectors of 512 bytes): two bitmaps, bm0 (64 KiB
# granularity: one data cluster) then bm1 (512 bytes: data clusters 0 and 2 hold bits, 1 is a zero entry).
# test_where_the_metadata_is checks these against the simulator's layout; QEMU's answers below check them too.
BM0_DATA, BM0_TABLE, BM1_DATA0, BM1_DATA2, BM1_TABLE, DIRECTORY = 1408, 1536, 1664, 1792, 1920, 2048
NOWHERE = 2200  # (cluster 17: nothing is read there)


def _image(vm: Machine, name: str) -> None:
    vm.qemu_img("create", "-f", "qcow2", name, "1G")
    vm.qemu_img("bitmap", "--add", "-g", "65536", name, "bm0")
    vm.qemu_img("bitmap", "--add", "-g", "512", name, "bm1")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "w", "file": {"driver": "file", "filename": name}})
    for offset in (0, 512 << 20):
        vm.write("w", offset, 65536, 0x5A)
    vm.qmp("blockdev-del", {"node-name": "w"})


def _open(vm: Machine, name: str, node: str, blk_rules: dict, read_only: bool = False) -> str:
    blk = {"driver": "blkdebug", "image": {"driver": "file", "filename": name}, **blk_rules}
    try:
        vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": node, "file": blk, "read-only": read_only})
    except QMPError as err:
        return err.desc
    counts = [(b["name"], b["count"]) for b in vm.qmp("query-named-block-nodes", {"flat": True})[0]["dirty-bitmaps"]]
    vm.qmp("blockdev-del", {"node-name": node})
    return f"opened {counts}"


def _after(vm: Machine, name: str) -> list:
    """What the image says afterwards: its bitmaps' flags (qemu-img info) and qemu-img check's verdict."""
    info = json.loads(vm.qemu_img("info", "--output=json", name))["format-specific"]["data"].get("bitmaps")
    check = vm.qemu_img("check", name).splitlines()[0]
    return [[(b["name"], b["flags"]) for b in info or []], check]


def read_story(vm: Machine) -> dict:
    """A rule armed by ``reftable_load`` on each sector the open reads (and one it does not), read-write and
    read-only: the open's answer, then the image's bitmaps and check."""
    out = {}
    for i, (sector, read_only) in enumerate([(s, ro) for ro in (False, True) for s in
                                             (DIRECTORY, BM0_TABLE, BM0_DATA, BM1_DATA0, BM1_DATA2, BM1_TABLE,
                                              NOWHERE)]):
        name = f"r{i}.qcow2"
        _image(vm, name)
        rule = {"event": "reftable_load", "errno": 5, "sector": sector}
        key = f"{'ro' if read_only else 'rw'} sector={sector}"
        out[key] = _open(vm, name, f"n{i}", {"inject-error": [rule]}, read_only)
        if read_only or not out[key].startswith("opened"):  # (see test_storing_bitmaps_over_a_rule_is_unknown)
            out[key + " after"] = _after(vm, name)
    return out


# the requests that mark the bitmaps in use: header, flush, directory, header, flush, header, flush
MARK_STEPS = [("write", 1), ("flush", 1), ("write", 2), ("write", 3), ("flush", 3), ("write", 4), ("flush", 4)]


def _fail(iotype: str, k: int) -> dict:
    """Rules failing the k-th write of the open (or the flush after it): set-state counts ``pwritev_done``."""
    rules: dict = {"inject-error": [{"event": "pwritev" if iotype == "write" else "pwritev_done", "state": k,
                                     "iotype": iotype, "errno": 5}]}
    if k > 1:
        rules["set-state"] = [{"event": "pwritev_done", "state": i, "new_state": i + 1} for i in range(1, k)]
    return rules


def mark_story(vm: Machine, safe: bool = True) -> dict:
    """Each request of the in-use marking failed in turn: the open's answer; where QEMU leaves the image with its
    bitmaps' autoclear bit set (``safe``), its bitmaps and check, and what a plain read-only open then loads."""
    out = {}
    for i, (iotype, k) in enumerate(MARK_STEPS):
        name = f"m{i}.qcow2"
        _image(vm, name)
        key = f"{iotype} {k}"
        out[key] = _open(vm, name, f"n{i}", _fail(iotype, k))
        if safe and key in ("write 1", "flush 4"):
            out[key + " after"] = _after(vm, name)
            vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": f"o{i}", "read-only": True,
                                    "file": {"driver": "file", "filename": name}})
            out[key + " reopened"] = [(b["name"], b["count"], b.get("inconsistent", False)) for b in
                                      vm.qmp("query-named-block-nodes", {"flat": True})[0].get("dirty-bitmaps", [])]
            vm.qmp("blockdev-del", {"node-name": f"o{i}"})
    return out


CHECK_OK = "No errors were found on the image."
BOTH = [("bm0", ["auto"]), ("bm1", ["auto"])]


def test_where_the_metadata_is() -> None:
    vm = Machine()
    _image(vm, "x.qcow2")
    image = vm.images["x.qcow2"]
    assert image.directory_range() == (DIRECTORY * 512, 64)
    assert image.layout.bitmap_clusters == {"bm0": [(BM0_DATA // 128, 1), (BM0_TABLE // 128, 1)],
                                           "bm1": [(BM1_DATA0 // 128, 1), (BM1_DATA2 // 128, 1),
                                                   (BM1_TABLE // 128, 1)]}


def test_bitmap_reads_exact() -> None:
    out = read_story(Machine())
    for mode in ("rw", "ro"):
        assert out[f"{mode} sector={DIRECTORY}"] == f"Failed to read bitmap directory: {EIO}"
        assert out[f"{mode} sector={BM0_TABLE}"] == \
            f"Could not read bitmap_table table from image for bitmap 'bm0': {EIO}"
        assert out[f"{mode} sector={BM0_DATA}"] == f"Could not read bitmap 'bm0' from image: {EIO}"
        for sector in (BM1_DATA0, BM1_DATA2):
            assert out[f"{mode} sector={sector}"] == f"Could not read bitmap 'bm1' from image: {EIO}"
        assert out[f"{mode} sector={BM1_TABLE}"] == \
            f"Could not read bitmap_table table from image for bitmap 'bm1': {EIO}"
        assert out[f"{mode} sector={NOWHERE}"] == "opened [('bm1', 131072), ('bm0', 131072)]"
        for sector in (DIRECTORY, BM0_TABLE, BM0_DATA, BM1_DATA0, BM1_DATA2, BM1_TABLE):
            assert out[f"{mode} sector={sector} after"] == [BOTH, CHECK_OK]  # (a failed read changes nothing)
    assert out[f"ro sector={NOWHERE} after"] == [BOTH, CHECK_OK]


def closing_story(vm: Machine) -> str:
    """The rule armed at open that no request matched is still armed when the node closes and stores its
    bitmaps: on QEMU one of the new clusters' writes fails, and the bitmaps stay in use."""
    _image(vm, "c.qcow2")
    rule = {"event": "reftable_load", "errno": 5, "sector": NOWHERE}
    return _open(vm, "c.qcow2", "n", {"inject-error": [rule]})


def test_storing_bitmaps_over_a_rule_is_unknown() -> None:
    vm = Machine()
    assert closing_story(vm) == "opened [('bm1', 131072), ('bm0', 131072)]"
    with pytest.raises(QemuImgError, match="'n' stored its persistent bitmaps through blkdebug '#block"):
        vm.qemu_img("info", "c.qcow2")


def test_marking_in_use_exact() -> None:
    vm = Machine()
    out = mark_story(vm)
    mark = f"Can't update bitmap directory: {EIO}"
    assert {key: out[key] for key in (f"{i} {k}" for i, k in MARK_STEPS)} == {f"{i} {k}": mark for i, k in MARK_STEPS}
    # the first header write failed: nothing changed; the last flush failed: the bitmaps are left in use
    assert out["write 1 after"] == [BOTH, CHECK_OK]
    assert out["write 1 reopened"] == [("bm1", 131072, False), ("bm0", 131072, False)]
    assert out["flush 4 after"] == [[("bm0", ["in-use", "auto"]), ("bm1", ["in-use", "auto"])], CHECK_OK]
    assert out["flush 4 reopened"] == [("bm1", 0, True), ("bm0", 0, True)]
    # in between, the header on disk has the bitmaps' autoclear bit unset: QEMU drops them, leaking their clusters
    for i in (1, 2, 3, 4, 5):
        with pytest.raises(QemuImgError, match=f"bitlab does not know what QEMU 7.2 left in 'm{i}.qcow2'"):
            vm.qemu_img("info", f"m{i}.qcow2")
        with pytest.raises(QMPError, match="could not mark its persistent bitmaps in use"):
            vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "again",
                                    "file": {"driver": "file", "filename": f"m{i}.qcow2"}})


@pytest.mark.qemu
def test_bitmap_reads_match_qemu() -> None:
    real, sim = on_both(read_story)
    assert real == sim


@pytest.mark.qemu
def test_marking_in_use_matches_qemu() -> None:
    real, sim = on_both(mark_story)
    assert real == sim


@pytest.mark.qemu
def test_marking_in_use_leaves_bitmaps_dropped_on_qemu() -> None:
    """What bitlab refuses to guess: QEMU drops the bitmaps and leaks their clusters."""
    with Machine(backend="qemu") as vm:
        mark_story(vm, safe=False)
        for i in (1, 2, 3, 4, 5):
            info = json.loads(vm.qemu_img("info", "--output=json", f"m{i}.qcow2"))
            assert "bitmaps" not in info["format-specific"]["data"]
            with pytest.raises(QemuImgError, match="Leaked cluster 11 refcount=1 reference=0"):
                vm.qemu_img("check", f"m{i}.qcow2")


@pytest.mark.qemu
def test_storing_bitmaps_over_a_rule_fails_on_qemu() -> None:
    with Machine(backend="qemu") as vm:
        assert closing_story(vm) == "opened [('bm1', 131072), ('bm0', 131072)]"
        assert _after(vm, "c.qcow2") == [[("bm0", ["in-use", "auto"]), ("bm1", ["in-use", "auto"])], CHECK_OK]


def _armed(vm: Machine, image: str, node: str, sector: int | None, once: bool = True) -> None:
    """A new image (see :func:`_image`) opened as ``node`` over blkdebug, a rule armed by the open's first write (the
    in-use marking's header) failing reads (of ``sector``, or any)."""
    _image(vm, image)
    rule: dict = {"event": "pwritev", "iotype": "read", "errno": 5, "once": once}
    if sector is not None:
        rule["sector"] = sector
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": node, "file": {
        "driver": "blkdebug", "image": {"driver": "file", "filename": image}, "inject-error": [rule]}})


def query_story(vm: Machine) -> dict:
    """An image with a stored bitmap opened over blkdebug, a rule armed by the open's first write (the in-use
    marking's header) failing reads of the bitmap directory: query-named-block-nodes reads it for each image
    info it builds (the image's bitmaps in ``format-specific``), and fails with it."""
    out = {}
    for i, once in enumerate([True, False]):
        _armed(vm, f"q{i}.qcow2", f"n{i}", DIRECTORY, once)
        for k, flat in enumerate([True, False, True]):
            try:
                nodes = vm.qmp("query-named-block-nodes", {"flat": flat})
                out[f"once={once} query {k}"] = [n["node-name"] for n in nodes if n["drv"] == "qcow2"]
            except QMPError as err:
                out[f"once={once} query {k}"] = err.desc
        vm.qmp("blockdev-del", {"node-name": f"n{i}"})
    return out


def test_queries_read_the_directory_exact() -> None:
    failed = f"Failed to read bitmap directory: {EIO}"
    assert query_story(Machine()) == {
        "once=True query 0": failed, "once=True query 1": ["n0"], "once=True query 2": ["n0"],
        "once=False query 0": failed, "once=False query 1": failed, "once=False query 2": failed}


@pytest.mark.qemu
def test_queries_read_the_directory_on_qemu() -> None:
    real, sim = on_both(query_story)
    assert real == sim


def remove_story(vm: Machine) -> dict:
    """block-dirty-bitmap-remove of a persistent bitmap: qcow2 reads the bitmap directory first (a stored bitmap's
    or not), and a rule armed by the open's first write fails that read: the command fails, nothing changes."""
    out = {}
    for i, (sector, name) in enumerate([(DIRECTORY, "bm0"), (DIRECTORY, "new"), (None, "bm1")]):
        image = f"d{i}.qcow2"
        _armed(vm, image, f"n{i}", sector)
        if name == "new":
            vm.qmp("block-dirty-bitmap-add", {"node": f"n{i}", "name": "new", "persistent": True})
        try:
            vm.qmp("block-dirty-bitmap-remove", {"node": f"n{i}", "name": name})
            out[f"remove {name}"] = "removed"
        except QMPError as err:
            out[f"remove {name}"] = err.desc
        out[f"remove {name}: left"] = [b["name"] for b in
                                       vm.qmp("query-named-block-nodes", {"flat": True})[0]["dirty-bitmaps"]]
        vm.qmp("blockdev-del", {"node-name": f"n{i}"})
        out[f"remove {name}: stored"] = _after(vm, image)[0]
    return out


def test_removing_reads_the_directory_exact() -> None:
    failed = f"Failed to read bitmap directory: {EIO}"
    assert remove_story(Machine()) == {
        "remove bm0": failed, "remove bm0: left": ["bm1", "bm0"], "remove bm0: stored": BOTH,
        "remove new": failed, "remove new: left": ["new", "bm1", "bm0"],
        "remove new: stored": [*BOTH, ("new", ["auto"])],
        "remove bm1": failed, "remove bm1: left": ["bm1", "bm0"], "remove bm1: stored": BOTH}


def test_removing_a_stored_bitmap_under_rules_is_refused() -> None:
    """What follows the read (a new directory, the caches, the header, the bitmap's clusters freed) is not traced
    for blkdebug: refused where a rule may see it, with nothing changed."""
    vm = Machine()
    _image(vm, "s.qcow2")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "n", "file": {
        "driver": "blkdebug", "node-name": "b", "image": {"driver": "file", "filename": "s.qcow2"},
        "inject-error": [{"event": "cluster_alloc", "errno": 5}]}})
    with pytest.raises(QMPError, match="bitlab does not simulate the blkdebug events and requests of removing a "
                                       "persistent bitmap from 's.qcow2' \\(blkdebug 'b'"):
        vm.qmp("block-dirty-bitmap-remove", {"node": "n", "name": "bm0"})
    assert [b.name for b in vm.images["s.qcow2"].bitmaps] == ["bm0", "bm1"]


@pytest.mark.qemu
def test_removing_reads_the_directory_on_qemu() -> None:
    real, sim = on_both(remove_story)
    assert real == sim


def device_story(vm: Machine) -> dict:
    """The same for a device's drive (``-drive file.driver=blkdebug,...``): query-block builds its image info too."""
    _image(vm, "dev.qcow2")
    vm.add_drive("drive0", "1G", file="dev.qcow2", blkdebug={
        "inject-error": [{"event": "pwritev", "iotype": "read", "errno": 5, "sector": DIRECTORY}]})
    out = {}
    for k in range(2):
        for query in ("query-block", "query-named-block-nodes"):
            try:
                out[f"{query} {k}"] = len(vm.qmp(query))
            except QMPError as err:
                out[f"{query} {k}"] = err.desc
    return out


def test_device_queries_read_the_directory_exact() -> None:
    failed = f"Failed to read bitmap directory: {EIO}"
    assert device_story(Machine()) == {f"{q} {k}": failed for k in range(2)
                                       for q in ("query-block", "query-named-block-nodes")}


@pytest.mark.qemu
def test_device_queries_read_the_directory_on_qemu() -> None:
    real, sim = on_both(device_story, daemon="system")
    assert real == sim


def resize_story(vm: Machine) -> dict:
    """block_resize of an image with stored bitmaps reads the bitmap directory first (qcow2_truncate_bitmaps_check):
    a rule armed by the open's first write fails it, and the resize with it (the image keeps its size)."""
    out = {}
    for i, (sector, size) in enumerate([(DIRECTORY, 2 << 30), (None, 2 << 30), (DIRECTORY, 512 << 20)]):
        image = f"s{i}.qcow2"
        _armed(vm, image, f"n{i}", sector)
        try:
            vm.qmp("block_resize", {"node-name": f"n{i}", "size": size})
            out[f"resize {i}"] = "resized"
        except QMPError as err:
            out[f"resize {i}"] = err.desc
        vm.qmp("blockdev-del", {"node-name": f"n{i}"})
        out[f"resize {i}: size"] = json.loads(vm.qemu_img("info", "--output=json", image))["virtual-size"]
    return out


def test_resizing_reads_the_directory_exact() -> None:
    assert resize_story(Machine()) == {key: value for i in range(3) for key, value in (
        (f"resize {i}", f"Failed to read bitmap directory: {EIO}"), (f"resize {i}: size", 1 << 30))}


@pytest.mark.qemu
def test_resizing_reads_the_directory_on_qemu() -> None:
    real, sim = on_both(resize_story)
    assert real == sim
