"""What a qcow2 node writes to its file node for persistent bitmaps while it is open
(qcow2-bitmap.c): opened read-write, it marks the stored bitmaps in use (the header, the directory in
place, the header twice more); removing a stored bitmap writes a new directory, flushes its caches,
writes the header and discards the bitmap's data clusters. The file node's ``wr_highest_offset``
(query-blockstats) and its bitmaps see them."""

from __future__ import annotations

import pytest

from bitlab import Machine
from bitlab.conformance.runner import check
from bitlab.conformance.steps import qmp_step as q

ADD = {"driver": "qcow2", "node-name": "pp", "file": {"driver": "file", "filename": "pp.qcow2", "node-name": "ppf"}}


def _steps(after_reopen: list[dict], cluster_size: int = 65536) -> list[dict]:
    return [{"qemu-img": ["create", "-f", "qcow2", "-o", f"cluster_size={cluster_size}", "pp.qcow2", "8388608"]},
            q("blockdev-add", ADD),
            q("block-dirty-bitmap-add", {"node": "pp", "name": "p0", "persistent": True}),
            q("block-dirty-bitmap-add", {"node": "pp", "name": "p1", "persistent": True}),
            {"write": {"node": "pp", "offset": 0, "length": 65536, "pattern": 5}},
            q("blockdev-del", {"node-name": "pp"}), q("blockdev-add", ADD), *after_reopen,
            q("query-blockstats", {"query-nodes": True})]


def _remove(name: str) -> dict:
    return q("block-dirty-bitmap-remove", {"node": "pp", "name": name})


def _highest(vm: Machine, node: str) -> int:
    stats = vm.execute({"execute": "query-blockstats", "arguments": {"query-nodes": True}})["return"]
    return next(e["stats"]["wr_highest_offset"] for e in stats if e["node-name"] == node)


def _reopened(vm: Machine) -> None:
    from bitlab.conformance.steps import run_step

    for step in _steps([])[:-1]:
        run_step(vm, step)


def test_open_marks_bitmaps_in_use_through_the_file_node():
    vm = Machine()
    _reopened(vm)
    # the directory (two 32-byte entries) is the file's 11th cluster: 10 * 64 KiB + 64 (QEMU 7.2: 655424)
    assert _highest(vm, "ppf") == 655424
    assert _highest(vm, "pp") == 0


def test_removing_a_stored_bitmap_writes_a_new_directory():
    vm = Machine()
    _reopened(vm)
    vm.execute({"execute": "block-dirty-bitmap-add", "arguments": {"node": "ppf", "name": "fb"}})
    vm.execute(_remove("p0")["qmp"])
    assert _highest(vm, "ppf") == 720928  # a new one-entry directory in cluster 11 (QEMU 7.2: 720928)
    # the file node's bitmap: the header, the flushed refcount block, p0's data cluster (discarded when
    # freed) and the new directory (QEMU 7.2: the same four clusters)
    bits = vm.dirty_bitmap("ppf", "fb").bits
    assert [i for i in range(len(bits)) if bits[i]] == [0, 2, 8, 11]


@pytest.mark.qemu
@pytest.mark.parametrize("cluster_size", [65536, 4096])
@pytest.mark.parametrize("after", [[], [_remove("p0")], [_remove("p1")], [_remove("p0"), _remove("p1")],
                                   [q("transaction", {"actions": [{"type": "block-dirty-bitmap-remove",
                                                                   "data": {"node": "pp", "name": "p1"}}]})]])
def test_file_node_writes_match_qemu(after, cluster_size):
    assert check({"name": "persist-file-writes", "steps": _steps(after, cluster_size)}) == []


@pytest.mark.qemu
@pytest.mark.parametrize("file_discard", [None, "ignore", "unmap"])
def test_removed_bitmaps_data_clusters_are_discarded_unless_ignored(file_discard):
    file = {**ADD["file"], **({"discard": file_discard} if file_discard else {})}
    add = {**ADD, "file": file}
    steps = [step if step.get("qmp", {}).get("execute") != "blockdev-add" else q("blockdev-add", add)
             for step in _steps([q("block-dirty-bitmap-add", {"node": "ppf", "name": "fb"}), _remove("p0"),
                                 q("x-debug-block-dirty-bitmap-sha256", {"node": "ppf", "name": "fb"})])]
    assert check({"name": "persist-discards", "steps": steps}) == []


# A loaded bitmap (p0), a new one (p1), then qemu-img removes p1: which clusters the tables held decides
# where the last directory goes. qcow2_store_persistent_dirty_bitmaps stores in the new directory's order
# (the loaded bitmaps first), so p1's freed table lies after p0's old one.
ORDER_STEPS = [
    {"qemu-img": ["create", "-f", "qcow2", "-o", "cluster_size=1048576", "pp.qcow2", "8388608"]},
    q("blockdev-add", ADD), q("block-dirty-bitmap-add", {"node": "pp", "name": "p0", "persistent": True}),
    q("blockdev-del", {"node-name": "pp"}), q("blockdev-add", ADD),
    q("block-dirty-bitmap-add", {"node": "pp", "name": "p1", "persistent": True}),
    q("blockdev-del", {"node-name": "pp"}),
    {"qemu-img": ["bitmap", "--merge", "p1", "--remove", "pp.qcow2", "p1"]},
    q("blockdev-add", ADD), q("query-blockstats", {"query-nodes": True})]


def test_bitmaps_are_stored_in_directory_order():
    from bitlab.conformance.steps import run_step

    vm = Machine()
    for step in ORDER_STEPS[:-1]:
        run_step(vm, step)
    assert _highest(vm, "ppf") == 7 * (1 << 20) + 32  # the directory in cluster 7 (QEMU 7.2: 7340064)


@pytest.mark.qemu
@pytest.mark.parametrize("seed,index,daemon", [(12028, 121, None), (12058, 141, None), (12023, 110, "system"),
                                               (14001, 115, None)])
def test_scenarios_that_differed_match_qemu(seed, index, daemon):
    from bitlab.conformance.generator import random_scenario

    assert check(random_scenario(seed, index), daemon) == []
