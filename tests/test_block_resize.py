"""block_resize: QEMU 7.2's checks and texts, bitmaps that follow the node's length, qcow2 shrinking and
growing (discarded clusters, the L1 table, the file cut after its last cluster), and iotest 124's
test_growing_before_backup."""

import json
import random
import re

import numpy as np
import pytest

from bitlab import Machine
from tests.both import on_both


def _nodes(vm) -> dict:
    """Per named node: virtual size and its bitmaps' counts (auto-named nodes left out)."""
    return {n["node-name"]: (n["image"]["virtual-size"], [(b["name"], b["count"]) for b in n.get("dirty-bitmaps", [])])
            for n in vm.qmp("query-named-block-nodes", {"flat": True}) if not n["node-name"].startswith("#")}


def _reply(vm, args: dict):
    """block_resize's return or error (automatic node names are numbered in each program's own order)."""
    reply = vm.execute({"execute": "block_resize", "arguments": args})
    if "error" in reply:
        return {**reply["error"], "desc": re.sub(r"#block\d+", "#blockNNN", reply["error"]["desc"])}
    return reply["return"]


RESIZES = [{"node-name": "d0", "size": 68157440}, {"node-name": "d0", "size": -1}, {"node-name": "d0", "size": 1000},
           {"node-name": "d0", "size": 33554432}, {"device": "d0", "size": 1024}, {"node-name": "nope", "size": 1024},
           {"size": 1024}, {"device": "x", "node-name": "d0", "size": 1024}, {"node-name": "d0", "size": "1M"},
           {"node-name": "r0", "size": 2097152}, {"node-name": "r0", "size": 1000},
           {"node-name": "n0", "size": 2097152},
           {"node-name": "f0", "size": 1048576}, {"node-name": "d0", "size": 0}, {"node-name": "d0", "size": 1 << 62},
           {"node-name": "d0", "size": 67108864}]


def _qsd_story(vm) -> list:
    """A qcow2 node with data and bitmaps (on it and on its file), a raw node, null-co: resized every way."""
    vm.qemu_img("create", "-f", "qcow2", "a.qcow2", "64M")
    vm.qemu_img("create", "-f", "raw", "r.raw", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "d0",
                            "file": {"driver": "file", "filename": "a.qcow2", "node-name": "f0"}})
    vm.qmp("blockdev-add", {"driver": "raw", "node-name": "r0",
                            "file": {"driver": "file", "filename": "r.raw", "node-name": "rf"}})
    vm.qmp("blockdev-add", {"driver": "null-co", "node-name": "n0", "size": 1048576})
    vm.qmp("block-dirty-bitmap-add", {"node": "d0", "name": "b0", "granularity": 65536})
    vm.qmp("block-dirty-bitmap-add", {"node": "d0", "name": "p0", "persistent": True})
    vm.qmp("block-dirty-bitmap-add", {"node": "f0", "name": "fb"})
    vm.qemu_io("d0", "write -P 1 0 1M")
    out = []
    for args in RESIZES:
        shas = [vm.qmp("x-debug-block-dirty-bitmap-sha256", {"node": "d0", "name": b})["sha256"] for b in ("b0", "p0")]
        out.append((json.dumps(args), _reply(vm, args), _nodes(vm), shas))
    return out


def test_texts_sizes_and_bitmaps():
    """As qemu-storage-daemon 7.2 answered (recorded)."""
    got = {args: (reply, nodes) for args, reply, nodes, _ in _qsd_story(Machine())}
    grow, shrink = json.dumps(RESIZES[0]), json.dumps(RESIZES[3])
    # growing: the bitmaps grow with clean bits; the header's size field dirties the file's first cluster
    assert got[grow] == ({}, {"n0": (1048576, []), "r0": (1048576, []), "rf": (1048576, []),
                              "d0": (68157440, [("p0", 1048576), ("b0", 1048576)]), "f0": (1376256, [("fb", 1310720)])})
    # shrinking rewrites the refcount table too
    assert got[shrink][1]["f0"] == (1376256, [("fb", 1376256)])
    assert got[json.dumps(RESIZES[1])][0] == {"class": "GenericError", "desc": "Parameter 'size' expects a >0 size"}
    assert got[json.dumps(RESIZES[2])][0]["desc"] == "The new size must be a multiple of 512"
    assert got[json.dumps(RESIZES[4])][0]["desc"] == "Cannot find device='d0' nor node-name=''"
    assert got[json.dumps(RESIZES[7])] == ({}, got[json.dumps(RESIZES[7])][1])  # a device that is not: the node
    assert got[json.dumps(RESIZES[7])][1]["d0"] == (1024, [("p0", 65536), ("b0", 65536)])
    assert got[json.dumps(RESIZES[7])][1]["f0"] == (393216, [("fb", 393216)])  # cut after the data cluster
    assert got[json.dumps(RESIZES[8])][0]["desc"] == "Invalid parameter type for 'size', expected: integer"
    assert got[json.dumps(RESIZES[10])][1]["r0"] == (1024, [])  # a 1000-byte file: a 1024-byte node
    assert got[json.dumps(RESIZES[11])][0]["desc"] == "Image format driver does not support resize"
    assert got[json.dumps(RESIZES[12])][0]["desc"] == (
        "Permission conflict on node 'f0': permissions 'resize' are both required by an unnamed block device (uses "
        "node 'f0' as 'root' child) and unshared by node 'd0' (uses node 'f0' as 'file' child).")
    assert got[json.dumps(RESIZES[13])][1]["f0"] == (262144, [("fb", 262144)])  # no L2 table left
    assert got[json.dumps(RESIZES[14])][0]["desc"] == "Failed to grow the L1 table: File too large"


def test_bitmap_sha256_after_resizing():
    shas = [s for *_, s in _qsd_story(Machine())]
    assert shas[1] == shas[2] and shas[1][0] == shas[1][1]
    assert shas[1][0].startswith("1485f0eb6c82f2ef")  # grown to 65 MiB (QEMU 7.2's sum)
    assert shas[4][0].startswith("9f0a4f1b805c05c9")  # shrunk to 32 MiB


@pytest.mark.qemu
def test_resizing_matches_qemu_storage_daemon():
    want, got = on_both(_qsd_story)
    assert got == want


def _busy_story(vm, wait) -> list:
    """A device during a backup (its filter and target are in use; its source is held by the filter's
    permissions), an export, an overlay that grows past its backing file's end (zeroes written:
    allocated), a v2 image shrunk, an L1 table that must grow."""
    vm.add_drive("drive0", "64M", node_name="node0")
    for args in (["-f", "qcow2", "t.qcow2", "64M"], ["-f", "qcow2", "base.qcow2", "64M"],
                 ["-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "ov.qcow2", "32M"],
                 ["-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "64M"]):
        vm.qemu_img("create", *args)
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "tgt", "file": {"driver": "file", "filename": "t.qcow2",
                                                                            "node-name": "tf"}})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "ov",
                            "file": {"driver": "file", "filename": "ov.qcow2", "node-name": "ovf"}})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "v2",
                            "file": {"driver": "file", "filename": "v2.qcow2", "node-name": "v2f"}})
    for node, name in (("drive0", "b0"), ("ovf", "ofb"), ("v2f", "vfb"), ("tf", "tfb")):
        vm.qmp("block-dirty-bitmap-add", {"node": node, "name": name})
    vm.qemu_io("drive0", "write -P 1 0 1M")
    vm.qemu_io("v2", "write -P 1 0 1M")
    out = []
    vm.qmp("blockdev-backup", {"device": "drive0", "target": "tgt", "sync": "full", "speed": 1, "job-id": "j"})
    wait()
    for args in ({"device": "drive0", "size": 1 << 27}, {"node-name": "node0", "size": 1 << 27},
                 {"node-name": "tgt", "size": 1 << 27}):
        out.append(_reply(vm, args))
    vm.qmp("block-job-cancel", {"device": "j", "force": True})
    wait()
    out.append(_reply(vm, {"device": "drive0", "size": 68157440}))
    vm.qmp("nbd-server-start", {"addr": {"type": "unix", "data": {"path": "nbd.sock"}}})
    vm.qmp("block-export-add", {"type": "nbd", "id": "e", "node-name": "tgt"})
    out.append(_reply(vm, {"node-name": "tgt", "size": 1 << 27}))
    vm.qmp("block-export-del", {"id": "e"})
    for args in ({"node-name": "ov", "size": 1 << 26}, {"node-name": "v2", "size": 1 << 20},
                 {"node-name": "tgt", "size": 1 << 30}):
        out.append(_reply(vm, args))
    out += [_nodes(vm), vm.qemu_io("ov", "map"), vm.qemu_io("drive0", "map")]
    return out


def test_a_job_keeps_its_nodes_from_resizing():
    sim = Machine()
    got = _busy_story(sim, lambda: sim.run(until=sim.now + 0.2))
    assert got[0] == {"class": "GenericError", "desc": "Device 'drive0' is in use"}  # the device's root: the filter
    assert got[1]["desc"].startswith("Permission conflict on node 'node0': permissions 'resize' are both required "
                                     "by an unnamed block device (uses node 'node0' as 'root' child) and unshared by "
                                     "node '#block")
    assert got[2] == {"class": "GenericError", "desc": "Device '(null)' is in use"}
    assert got[3] == {}
    # an NBD export does not share the resize permission
    assert got[4]["desc"].startswith("Permission conflict on node 'tgt': permissions 'resize' are both required")
    assert got[9] == ("32 MiB (0x2000000) bytes not allocated at offset 0 bytes (0x0)\n"
                      "32 MiB (0x2000000) bytes     allocated at offset 32 MiB (0x2000000)\n")


@pytest.mark.qemu
def test_jobs_exports_overlays_and_l1_growth_match_the_system_emulator():
    want, got = on_both(_busy_story, "system", 0.2)
    assert got == want


def _filter_story(vm) -> list:
    """blkdebug between a format node and its file passes the truncate on; qcow2 over blkdebug shrinks
    and grows its L1 table (a new table at the file's end: the file ends where its entries end)."""
    vm.qemu_img("create", "-f", "raw", "r.raw", "1M")
    vm.qemu_img("create", "-f", "qcow2", "q.qcow2", "64M")
    vm.qmp("blockdev-add", {"driver": "raw", "node-name": "r0", "file": {
        "driver": "blkdebug", "node-name": "bd", "image": {"driver": "file", "filename": "r.raw", "node-name": "rf"}}})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "q0", "file": {
        "driver": "blkdebug", "node-name": "qbd",
        "image": {"driver": "file", "filename": "q.qcow2", "node-name": "qf"}}})
    for node in ("bd", "rf", "qbd", "qf", "r0", "q0"):
        vm.qmp("block-dirty-bitmap-add", {"node": node, "name": "m", "granularity": 512})
    vm.qemu_io("q0", "write -P 1 0 2M")
    vm.qemu_io("r0", "write -P 1 0 4k")
    out = []
    for args in ({"node-name": "r0", "size": 2097152}, {"node-name": "bd", "size": 524288},
                 {"node-name": "q0", "size": 1048576}, {"node-name": "q0", "size": 1 << 30}):
        out.append((_reply(vm, args), _nodes(vm)))
    return out + [vm.qemu_io("q0", "map")]


def test_filters_pass_it_on_and_a_new_l1_table_ends_the_file():
    got = _filter_story(Machine())
    assert got[3][1]["qf"] == (1376768, [("m", 1246720)])  # 21 clusters and the new table's 16 bytes, rounded up
    assert got[1][1]["rf"] == (524288, [("m", 4096)])


@pytest.mark.qemu
def test_filters_match_the_system_emulator():
    want, got = on_both(_filter_story, "system")
    assert got == want


def _resize_scenarios(count: int) -> list[dict]:
    from bitlab.conformance.generator import random_scenario

    found = []
    for index in range(400):
        scenario = random_scenario(4711, index)
        if any(step.get("qmp", {}).get("execute") == "block_resize" for step in scenario["steps"]):
            found.append(scenario)
        if len(found) == count:
            break
    return found


def test_random_scenarios_resize_their_nodes_now_and_then():
    """The generator's resize episodes (their own random stream): a resize, a write across the old end,
    the bitmaps, then back to the first size."""
    scenarios = _resize_scenarios(6)
    assert len(scenarios) == 6
    sizes = {step["qmp"]["arguments"]["size"] for s in scenarios for step in s["steps"]
             if step.get("qmp", {}).get("execute") == "block_resize"}
    assert 8 << 20 in sizes and len(sizes) >= 4


@pytest.mark.qemu
def test_random_resize_episodes_match_real_qemu():
    from bitlab.conformance.runner import compare, play

    for scenario in _resize_scenarios(4):
        real = play(scenario, "qemu")
        assert real.error is None
        assert compare(scenario, real, play(scenario, "sim")) == []


def _stored_bitmap_story(vm) -> list:
    """An image reopened with a stored persistent bitmap (its directory ends the file, partly written),
    resized both ways, closed, checked; a read-only node refuses."""
    vm.qemu_img("create", "-f", "qcow2", "a.qcow2", "64M")
    add = {"driver": "qcow2", "node-name": "d0", "file": {"driver": "file", "filename": "a.qcow2", "node-name": "f0"}}
    vm.qmp("blockdev-add", add)
    vm.qmp("block-dirty-bitmap-add", {"node": "d0", "name": "p0", "persistent": True})
    vm.qemu_io("d0", "write -P 1 0 1M")
    vm.qmp("blockdev-del", {"node-name": "d0"})
    vm.qmp("blockdev-add", add)
    vm.qmp("block-dirty-bitmap-add", {"node": "f0", "name": "fb"})
    out = [_nodes(vm)]
    for size in (1 << 27, 1 << 25):
        out += [_reply(vm, {"node-name": "d0", "size": size}), _nodes(vm)]
    out.append(vm.qmp("x-debug-block-dirty-bitmap-sha256", {"node": "d0", "name": "p0"}))
    vm.qmp("blockdev-del", {"node-name": "d0"})
    out += [vm.qemu_img("check", "a.qcow2"), vm.qemu_img("map", "--output=json", "a.qcow2")]
    info = json.loads(vm.qemu_img("info", "--output=json", "a.qcow2"))
    out.append({k: v for k, v in info.items() if k not in ("actual-size", "filename")})
    vm.qmp("blockdev-add", {**add, "read-only": True})
    out.append(_reply(vm, {"node-name": "d0", "size": 1 << 26}))
    return out


def test_a_reopened_image_with_a_stored_bitmap():
    got = _stored_bitmap_story(Machine())
    assert got[0]["f0"] == (1507840, [("fb", 0)])  # 23 clusters and the bitmap directory's bytes
    assert got[-1] == {"class": "GenericError", "desc": "Image is read-only"}


@pytest.mark.qemu
def test_a_reopened_image_with_a_stored_bitmap_matches_qemu_storage_daemon():
    want, got = on_both(_stored_bitmap_story)
    assert got == want


def _inconsistent_story(vm) -> list:
    """Stored bitmaps left in use by a kill come back inconsistent: a qcow2 resize checks each stored
    bitmap in the directory's order (qcow2_truncate_bitmaps_check) until they are removed."""
    vm.qemu_img("create", "-f", "qcow2", "a.qcow2", "64M")
    add = {"driver": "qcow2", "node-name": "d0", "file": {"driver": "file", "filename": "a.qcow2"}}
    vm.qmp("blockdev-add", add)
    vm.qmp("block-dirty-bitmap-add", {"node": "d0", "name": "p0", "persistent": True})
    vm.qmp("block-dirty-bitmap-add", {"node": "d0", "name": "p1", "persistent": True, "disabled": True})
    vm.qmp("blockdev-del", {"node-name": "d0"})
    vm.qmp("blockdev-add", add)
    vm.restart(clean=False)
    vm.qmp("blockdev-add", add)
    out = [_reply(vm, {"node-name": "d0", "size": 1 << 27})]
    for name in ("p0", "p1"):
        vm.qmp("block-dirty-bitmap-remove", {"node": "d0", "name": name})
        out.append(_reply(vm, {"node-name": "d0", "size": 1 << 27}))
    return out


def test_inconsistent_stored_bitmaps_block_a_resize():
    assert _inconsistent_story(Machine()) == [
        {"class": "GenericError", "desc": "Bitmap 'p1' is inconsistent and cannot be used"},
        {"class": "GenericError", "desc": "Bitmap 'p1' is inconsistent and cannot be used"}, {}]


@pytest.mark.qemu
def test_inconsistent_stored_bitmaps_match_qemu_storage_daemon():
    want, got = on_both(_inconsistent_story)
    assert got == want


def _backing_story(vm, wait) -> list:
    """A node that is another's backing file is op-blocked (bdrv_backing_attach): an overlay's base, and
    the source of a drive-backup sync=none (the new target's backing), until the job is gone."""
    vm.qemu_img("create", "-f", "qcow2", "base.qcow2", "8M")
    vm.qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "ov.qcow2", "8M")
    vm.qemu_img("create", "-f", "qcow2", "d0.qcow2", "8M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "base",
                            "file": {"driver": "file", "filename": "base.qcow2"}})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "ov", "backing": "base",
                            "file": {"driver": "file", "filename": "ov.qcow2"}})
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "d0", "file": {"driver": "file", "filename": "d0.qcow2"}})
    out = [_reply(vm, {"node-name": "base", "size": 1 << 24}), _reply(vm, {"node-name": "ov", "size": 1 << 24})]
    vm.qmp("drive-backup", {"job-id": "j", "device": "d0", "sync": "none", "target": "t.qcow2", "format": "qcow2"})
    out.append(_reply(vm, {"node-name": "d0", "size": 1 << 24}))
    vm.qmp("block-job-cancel", {"device": "j"})
    wait()
    return out + [_reply(vm, {"node-name": "d0", "size": 1 << 24})]


def test_a_backing_node_is_in_use():
    sim = Machine()
    in_use = {"class": "GenericError", "desc": "Device '(null)' is in use"}
    assert _backing_story(sim, sim.run) == [in_use, {}, in_use, {}]


@pytest.mark.qemu
def test_a_backing_node_is_in_use_on_qemu_storage_daemon():
    want, got = on_both(_backing_story, "qsd", 0.3)
    assert got == want


def _index_past_the_end_story(vm) -> list:
    """A shrink frees clusters after free_cluster_index had moved past an earlier free one (a two-cluster
    write did not fit there), and cuts the file below them: the next write allocates from the index,
    leaving a hole (conformance seed 4101, scenario 149)."""
    vm.qemu_img("create", "-f", "qcow2", "d0.qcow2", "8M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "d0",
                            "file": {"driver": "file", "filename": "d0.qcow2", "node-name": "d0f"}})
    out = []
    for op, *args in [("w", 7200768, 4096), ("w", 1779200, 4096), ("w", 3171840, 262144), ("r", 4194304),
                      ("r", 8388608), ("w", 7887360, 65536), ("w", 6886400, 262144), ("r", 931328),
                      ("r", 8388608), ("w", 1738752, 262144)]:
        if op == "w":
            vm.guest_io("d0", f"write -P 0x11 {args[0]} {args[1]}")
            vm.guest_io("d0", "flush")
        else:
            vm.qmp("block_resize", {"node-name": "d0", "size": args[0]})
        out.append(_nodes(vm)["d0f"][0])
    return [out, json.loads(vm.qemu_img("map", "-U", "--output=json", "d0.qcow2"))[1]]


def test_allocation_after_a_shrink_starts_at_the_free_cluster_index():
    lengths, data = _index_past_the_end_story(Machine())
    assert lengths == [393216, 458752, 786432, 786432, 786432, 917504, 1245184, 327680, 327680, 720896]
    assert data == {"start": 1703936, "length": 327680, "depth": 0, "present": True, "zero": False, "data": True,
                    "offset": 393216}  # cluster 5 stays free: a hole


@pytest.mark.qemu
def test_allocation_after_a_shrink_matches_qemu_storage_daemon():
    real, sim = on_both(_index_past_the_end_story)
    assert sim == real


# -- a grow after a shrink into a cluster ---------------------------------------------------------------------
def _reads(vm, node: str, pattern: int, offset: int, length: int) -> bool:
    """Whether ``[offset, offset + length)`` of ``node`` reads as ``pattern`` bytes (qemu-io ``read -P``)."""
    return "Pattern verification failed" not in vm.qemu_io(node, f"read -P {pattern:#x} {offset} {length}")


def _add(vm, node: str, image: str) -> None:
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": node, "file": {"driver": "file", "filename": image}})


def _regrow_story(vm) -> list:
    """qcow2 disks (64 KiB clusters) shrunk into cluster 1 (to 100 KiB) and grown again, without a backing file:
    a data cluster shows its old bytes again (grown inside the cluster, then past it), a zero cluster (``write
    -z -u`` to the end: all of it, or ``write -z``: keeping its host cluster) reads zeroes whole and a backup
    copies it as zeroes, a cluster given a host cluster again after the shrink reads its COW's zeroes."""
    K = 1 << 10
    out = []
    for n, zero in enumerate([None, "write -z -u", "write -z", "write -z -u, write -P 0x22 64k 4k"]):
        node, image = f"d{n}", f"d{n}.qcow2"
        vm.qemu_img("create", "-f", "qcow2", image, "1M")
        _add(vm, node, image)
        vm.qemu_io(node, "write -P 0x11 0 256k")
        vm.qmp("block_resize", {"node-name": node, "size": 100 * K})
        for command in (zero or "").split(", "):
            if command:
                vm.qemu_io(node, f"{command} 64k 36k" if command.startswith("write -z") else command)
        vm.qmp("block_resize", {"node-name": node, "size": 110 * K})
        vm.qmp("block_resize", {"node-name": node, "size": 1 << 20})
        out.append([_reads(vm, node, p, o, ln) for p, o, ln in ((0x11, 100 * K, 28 * K), (0, 100 * K, 28 * K),
                                                                 (0, 68 * K, 32 * K), (0, 128 * K, 64 * K))])
        vm.qemu_img("create", "-f", "qcow2", f"t{n}.qcow2", "1M")
        _add(vm, f"t{n}", f"t{n}.qcow2")
        vm.qmp("blockdev-backup", {"job-id": f"j{n}", "device": node, "target": f"t{n}", "sync": "full",
                                   "x-perf": {"max-workers": 1}})
        vm.run()
        for name in (node, f"t{n}"):
            vm.qmp("blockdev-del", {"node-name": name})
        out += [vm.qemu_img("map", "--output=json", name) for name in (image, f"t{n}.qcow2")]
        out.append(vm.qemu_img("check", f"t{n}.qcow2"))
    return out


def test_a_grow_after_a_shrink_into_a_cluster_shows_that_cluster():
    out = _regrow_story(Machine())
    # [0x11 at 100K..128K, zeroes there, zeroes at 68K..100K, zeroes past the cluster]
    assert out[0::4] == [[True, False, False, True], [False, True, True, True], [False, True, True, True],
                         [False, True, True, True]]
    data = ('[{ "start": 0, "length": 131072, "depth": 0, "present": true, "zero": false, "data": true, '
            '"offset": 327680},')
    short = data.replace("131072", "65536")  # the backup's target: the zero cluster copied as zeroes
    assert [m.splitlines()[0] for m in out[2::4]] == [data, short, short, data]
    assert out[7] == "No errors were found on the image.\n1/16 = 6.25% allocated, 0.00% fragmented, 0.00% compressed " \
                     "clusters\nImage end offset: 393216\n"


@pytest.mark.qemu
def test_a_grow_after_a_shrink_into_a_cluster_matches_qemu_storage_daemon():
    want, got = on_both(_regrow_story)
    assert got == want


def _regrow_over_backing_story(vm) -> list:
    """An overlay shrunk into a cluster and grown again over a longer backing file (bdrv_co_truncate's
    BDRV_REQ_ZERO_WRITE): the rest of the old last cluster is written as zero bytes (a data cluster, whether it
    was unallocated or a zero cluster), the new clusters are zero clusters; a v2 overlay fails unless the grow
    stays inside the cluster. The ``compat`` option as ``qemu-img create`` prints it."""
    K = 1 << 10
    out = [vm.qemu_img("create", "-f", "qcow2", "b.qcow2", "8M")]
    _add(vm, "b", "b.qcow2")
    vm.qemu_io("b", "write -P 0x22 0 64k")
    vm.qmp("blockdev-del", {"node-name": "b"})
    for n, (opts, zero) in enumerate([((), False), ((), True), (("-o", "compat=v2"), False)]):
        node, image = f"o{n}", f"o{n}.qcow2"
        out.append(vm.qemu_img("create", "-f", "qcow2", *opts, "-b", "b.qcow2", "-F", "qcow2", image, "1M"))
        _add(vm, node, image)
        vm.qmp("block_resize", {"node-name": node, "size": 100 * K})
        if zero:
            vm.qemu_io(node, "write -z -u 64k 36k")
        out += [_reply(vm, {"node-name": node, "size": 120 * K}), _reply(vm, {"node-name": node, "size": 1 << 20}),
                _nodes(vm)[node]]
        vm.qmp("blockdev-del", {"node-name": node})
        out += [vm.qemu_img("map", "--output=json", image), vm.qemu_img("check", image)]
    return out


def test_a_grow_over_a_longer_backing_file_writes_the_rest_of_the_last_cluster():
    out = _regrow_over_backing_story(Machine())
    assert out[2:5] == [{}, {}, (1 << 20, [])]
    assert '{ "start": 65536, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true' in out[5]
    assert out[13].splitlines()[0].endswith(" compat=v2 backing_file=b.qcow2 backing_fmt=qcow2 lazy_refcounts=off "
                                           "refcount_bits=16")
    assert out[-5:-2] == [{}, {"class": "GenericError", "desc": "Failed to zero out new clusters: Operation not "
                                                                "supported"}, (120 << 10, [])]


@pytest.mark.qemu
def test_a_grow_over_a_longer_backing_file_matches_qemu_storage_daemon():
    want, got = on_both(_regrow_over_backing_story)
    assert got == want


def _v2_grow_fails_story(vm) -> list:
    """A v2 overlay that must grow its L1 table over a longer backing file: the new table is written (its
    file node's bitmap sees it), then the grow fails; the image keeps its size."""
    vm.qemu_img("create", "-f", "qcow2", "b.qcow2", "4G")
    vm.qemu_img("create", "-f", "qcow2", "-o", "compat=0.10", "-b", "b.qcow2", "-F", "qcow2", "o.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "o",
                            "file": {"driver": "file", "filename": "o.qcow2", "node-name": "of"}})
    vm.qmp("block-dirty-bitmap-add", {"node": "of", "name": "x", "granularity": 512})
    out = [_reply(vm, {"node-name": "o", "size": 2 << 30}), _nodes(vm)]
    vm.qmp("blockdev-del", {"node-name": "o"})
    return out + [vm.qemu_img("check", "o.qcow2")]


def test_a_v2_grow_over_a_longer_backing_file_fails_after_its_l1_table_grew():
    out = _v2_grow_fails_story(Machine())
    assert out[:2] == [{"class": "GenericError", "desc": "Failed to zero out new clusters: Operation not supported"},
                       {"o": (1 << 20, []), "of": (262656, [("x", 66560)])}]  # (refcount block, L1 table, header)


@pytest.mark.qemu
def test_a_v2_grow_over_a_longer_backing_file_matches_qemu_storage_daemon():
    want, got = on_both(_v2_grow_fails_story)
    assert got == want


def _cut_cluster_story(vm: Machine) -> dict:
    """A zero cluster (cluster 1 of 64 KiB) written in its second half gets a host cluster: a shrink to 22.5 KiB
    into it keeps it, a data cluster whose data is all past the new end (its first half: the zeroes of its
    copy on write); a grow shows the kept bytes again."""
    vm.qemu_img("create", "-f", "qcow2", "c.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "c", "file": {"driver": "file", "filename": "c.qcow2"}})
    vm.guest_io("c", "write -z -u 65536 65536")
    vm.guest_io("c", "write -P 0xb5 98304 32768")
    vm.qmp("block_resize", {"node-name": "c", "size": 65536 + 23040})
    out: dict = {"read": vm.guest_io("c", "read -P 0 65536 23040").splitlines()[0]}
    vm.qmp("blockdev-del", {"node-name": "c"})
    out["shrunk"] = json.loads(vm.qemu_img("map", "--output=json", "c.qcow2"))
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "c", "file": {"driver": "file", "filename": "c.qcow2"}})
    vm.qmp("block_resize", {"node-name": "c", "size": 262144})
    out["tail"] = vm.guest_io("c", "read -P 0xb5 98304 32768").splitlines()[0]
    vm.qmp("blockdev-del", {"node-name": "c"})
    out["grown"] = json.loads(vm.qemu_img("map", "--output=json", "c.qcow2"))
    return out


def test_a_cut_data_cluster_stays_data_with_its_data_past_the_end():
    out = _cut_cluster_story(Machine())
    assert out["read"] == "read 23040/23040 bytes at offset 65536"
    assert [(e["start"], e["length"], e["data"], e.get("offset")) for e in out["shrunk"]] == [
        (0, 65536, False, None), (65536, 23040, True, 327680)]
    assert out["tail"] == "read 32768/32768 bytes at offset 98304"
    assert [(e["start"], e["length"], e["data"]) for e in out["grown"]][:2] == [(0, 65536, False), (65536, 65536, True)]


@pytest.mark.qemu
def test_a_cut_data_cluster_matches_qemu_storage_daemon():
    want, got = on_both(_cut_cluster_story)
    assert got == want


def _discard_order_story(vm: Machine) -> list[dict]:
    """Guest clusters 12, 5 and 10 written in that order (host clusters side by side): a shrink to 9 clusters
    frees guest 10, then 12, whose host clusters do not touch. qcow2 passes the discards to its file node in the
    order its list holds them (update_refcount_discard: as freed, touching ones joined), so a write threshold
    on the file node (discards count, bdrv_co_write_req_prepare) fires on guest 10's host cluster first."""
    vm.qemu_img("create", "-f", "qcow2", "o.qcow2", "1M")
    vm.qmp("blockdev-add", {"driver": "qcow2", "node-name": "o",
                            "file": {"driver": "file", "filename": "o.qcow2", "node-name": "of"}})
    for cluster in (12, 5, 10):
        vm.guest_io("o", f"write -P 0x33 {cluster * 65536} 65536")
    vm.qmp("block-set-write-threshold", {"node-name": "of", "write-threshold": 330000})
    vm.qmp("block_resize", {"node-name": "o", "size": 9 * 65536})
    return [{key: e["data"][key] for key in ("node-name", "amount-exceeded")}
            for e in vm.events if e["event"] == "BLOCK_WRITE_THRESHOLD"]


def test_a_shrink_passes_its_discards_in_qcow2s_list_order():
    assert _discard_order_story(Machine()) == [{"node-name": "of", "amount-exceeded": 524288 - 330000}]


@pytest.mark.qemu
def test_a_shrink_passes_its_discards_in_qcow2s_list_order_on_qemu():
    want, got = on_both(_discard_order_story)
    assert got == want


def _discard_list_stepwise(freed: list[int]) -> list[list[int]]:
    """update_refcount_discard step by step, for single clusters freed in this order: (start, end) entries."""
    out: list[list[int]] = []
    for lo in freed:
        hi = lo + 1
        d = next((x for x in out if x[0] == hi or x[1] == lo), None)
        if d is None:
            out.append([lo, hi])
            continue
        d[0], d[1] = min(d[0], lo), max(d[1], hi)
        for p in list(out):
            if p is not d and p[0] <= d[1] and d[0] <= p[1]:
                out.remove(p)
                d[0], d[1] = min(d[0], p[0]), max(d[1], p[1])
    return out


@pytest.mark.parametrize("seed", range(5))
def test_the_discard_list_is_qemus_step_by_step_list(seed):
    """bitlab orders the stretches of touching freed ranges by their earliest range, at once (numpy): the
    same list as QEMU's step-by-step joining, on random orders of freed clusters."""
    from bitlab.block.qcow2_host import _discard_list

    rng = random.Random(seed)
    for _ in range(400):
        freed = rng.sample(range(60), rng.randint(1, 30))
        starts = np.array(freed, dtype=np.int64)
        got = _discard_list(starts, starts + 1)
        assert [list(pair) for pair in zip(got[0].tolist(), got[1].tolist())] == _discard_list_stepwise(freed)
